"""What the tools that run OpenSSH's `ssh` share: the pinned host key, the login, the options."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

KEY_VARIABLE = "CHI_PERSIST_SSH_PRIVATE_KEY"
PASSPHRASE_VARIABLE = "CHI_PERSIST_SSH_KEY_PASSPHRASE"  # noqa: S105 (a name)
KEY, AGENT = "key", "agent"
# SSH_ASKPASS_REQUIRE came with OpenSSH 8.4.
ASKPASS_REQUIRE_VERSION = (8, 4)
CONNECT_TIMEOUT_SECONDS = 30
# What OpenSSH says when the server's key is not the pinned one (sshconnect.c).
HOST_KEY_REFUSALS = (
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "No ED25519 host key is known",
)


class LoginUnavailable(Exception):
    """ssh cannot be run as asked; `lines` are the cause and the fix."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0])
        self.lines = list(lines)


def known_hosts_line(host: str, port: int, host_key: str) -> str:
    """One known_hosts line for `host_key` (`type base64`) at host:port."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {host_key.strip()}"


def host_key_refused(lines: list[str]) -> bool:
    """Whether ssh's error lines say the server did not show the pinned key."""
    text = "\n".join(lines)
    return any(refusal in text for refusal in HOST_KEY_REFUSALS)


def openssh_version(ssh: str) -> tuple[int, int] | None:
    """(major, minor) of the OpenSSH client, None when it does not say."""
    try:
        result = subprocess.run(
            [ssh, "-V"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stderr + result.stdout
    marker = text.find("OpenSSH_")
    if marker < 0:
        return None
    digits = text[marker + len("OpenSSH_") :].split("p", 1)[0].split(",", 1)[0].split(" ", 1)[0]
    try:
        major, minor = digits.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


@dataclass
class Session:
    """How to run ssh to one server: the options, the environment, and the files they name."""

    ssh: str
    options: list[str]
    environment: dict[str, str]
    batch: bool = True

    def command(self, host: str, *remote: str) -> list[str]:
        batch = ["-o", f"BatchMode={'yes' if self.batch else 'no'}"]
        return [self.ssh, *self.options, *batch, host, *remote]


# The clean stop and `chi-persist open` log in as the provisioning commands do (the stack's key
# alone, or the ssh agent), and accept only the host key the stack pinned from the server's
# own console: a known_hosts file of one line, `StrictHostKeyChecking=yes`, and nothing of the
# user's own ssh configuration or known hosts. The private key comes in the environment and
# goes to ssh in a file only its owner can read, in a private temporary directory removed
# afterwards; its passphrase reaches ssh through SSH_ASKPASS, never a file or an argument.
@contextlib.contextmanager
def session(
    *,
    port: int,
    user: str,
    login: str,
    host: str,
    host_key: str,
    environ: Mapping[str, str],
    purpose: str,
) -> Iterator[Session]:
    """ssh's options for a pinned, non-interactive login; the key file and the known_hosts
    file live only while the block runs."""
    ssh = shutil.which("ssh", path=environ.get("PATH"))
    if ssh is None:
        raise LoginUnavailable(
            f"the OpenSSH client (`ssh`) is not on PATH; {purpose} logs in with it",
            "fix: install it (Debian/Ubuntu: apt install openssh-client; macOS has it), then "
            "run it again",
        )
    child = {
        name: value
        for name, value in environ.items()
        if name not in (KEY_VARIABLE, "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY")
    }
    with tempfile.TemporaryDirectory(prefix="chi-persist-ssh-") as directory:
        known_hosts = Path(directory) / "known_hosts"
        known_hosts.write_text(known_hosts_line(host, port, host_key) + "\n")
        options = [
            # The user's ssh_config is not read, as pulumi-command reads none.
            "-F", "none",
            "-p", str(port),
            "-l", user,
            # Only the key pinned from the server's own console (Nova) is accepted.
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlgorithms={host_key.split()[0]}",
            "-o", "CheckHostIP=no",
            "-o", "UpdateHostKeys=no",
            "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_SECONDS}",
            "-o", "PreferredAuthentications=publickey",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1",
            "-o", "ForwardAgent=no",
        ]  # fmt: skip
        batch = True
        if login == KEY:
            key_text = environ.get(KEY_VARIABLE, "")
            if not key_text.strip():
                raise LoginUnavailable(
                    f"the login is the stack's key, but {KEY_VARIABLE} is empty: there is no "
                    "key to log in with",
                    "fix: the stack's program passes the key; run `pulumi up` so the step holds "
                    "it, then try again",
                )
            key_file = Path(directory) / "key"
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(key_text if key_text.endswith("\n") else key_text + "\n")
            options += ["-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
            if environ.get(PASSPHRASE_VARIABLE):
                version = openssh_version(ssh)
                if version is not None and version < ASKPASS_REQUIRE_VERSION:
                    raise LoginUnavailable(
                        f"the OpenSSH client here is {version[0]}.{version[1]}; a key with a "
                        "passphrase needs 8.4 or later (SSH_ASKPASS_REQUIRE)",
                        "fix: update OpenSSH, or load the key into an agent (eval "
                        '"$(ssh-agent)" && ssh-add <your key>) and pulumi config set '
                        "chi-persist:sshAuth agent, then run pulumi up and try again",
                    )
                batch = False
                askpass = Path(directory) / "askpass"
                # The passphrase stays in the environment; the helper only prints it to ssh.
                askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' \"${PASSPHRASE_VARIABLE}\"\n")
                askpass.chmod(0o700)
                child.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
            else:
                child.pop(PASSPHRASE_VARIABLE, None)
        else:
            child.pop(PASSPHRASE_VARIABLE, None)
            if not environ.get("SSH_AUTH_SOCK"):
                raise LoginUnavailable(
                    "the login is the ssh agent, but SSH_AUTH_SOCK is not set: there is no ssh "
                    "agent to log in with",
                    'fix: start one in this shell: eval "$(ssh-agent)" && ssh-add <your key>, '
                    "then run it again",
                )
        yield Session(ssh=ssh, options=options, environment=child, batch=batch)


def server_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The command line of a step that `pulumi up` runs on this machine against one server:
    its id in Nova, its address and SSH port."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server-id", required=True, help="the server's id in Nova")
    parser.add_argument("--host", required=True, help="the server's address (floating IP)")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    return parser
