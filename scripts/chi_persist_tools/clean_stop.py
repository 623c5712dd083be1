"""clean-stop: stop a server's platform cleanly before its volume is detached, unless it is gone.

`pulumi up` and `pulumi destroy` run this as the delete of the provisioning's clean-stop
step, on this machine. A remote command's delete would dial SSH before anything else, and
wait in vain for a server that no longer exists (a lease that ended, a server deleted by
hand); this one first asks Nova, with the OpenStack provider's own credentials (OS_CLOUD,
OS_CLIENT_CONFIG_FILE, clouds.yaml, OS_*):
- the server is gone (404): a warning (the data was not stopped cleanly; PostgreSQL
  recovers from its journal), and success, so the update goes on;
- it exists, or Nova cannot say: the remote command (release-volume.sh) runs over SSH
  with the OpenSSH client, logging in as the provisioning commands do; if it cannot run
  or fails, this fails, with the cause and the fix, and the volume is not detached.

The private key comes in the environment (CHI_PERSIST_SSH_PRIVATE_KEY, a secret of the
stack) and goes to ssh in a file only its owner can read, removed afterwards; its
passphrase (CHI_PERSIST_SSH_KEY_PASSPHRASE) reaches ssh through SSH_ASKPASS, never a
file or an argument. Neither is ever printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0  # the platform was stopped and the volume released, or the server is gone
EXIT_FAILED = 1  # the clean stop could not run or failed: do not detach the volume
EXIT_USAGE = 2  # wrong arguments

KEY_VARIABLE = "CHI_PERSIST_SSH_PRIVATE_KEY"
PASSPHRASE_VARIABLE = "CHI_PERSIST_SSH_KEY_PASSPHRASE"  # noqa: S105 (a name)
KEY, AGENT = "key", "agent"

NOVA_TIMEOUT_SECONDS = 30
# Nova's answer for a server that is deleted but still listed to an administrator.
GONE_STATUSES = ("DELETED", "SOFT_DELETED")
# A server shut off (a shutdown from inside, `openstack server stop`, recycle's
# --stop-through-nova) runs nothing: its volume was unmounted when it shut down.
SHUT_OFF = ("SHUTOFF",)
SSH_CONNECT_TIMEOUT_SECONDS = 30
SSH_ATTEMPTS = 3
SSH_PAUSE_SECONDS = 10
# ssh exits 255 for its own errors (connect, login); anything else is the remote command's.
SSH_ERROR = 255
# release-volume.sh: something still uses the volume.
RELEASE_REFUSED = 4
# SSH_ASKPASS_REQUIRE came with OpenSSH 8.4.
ASKPASS_REQUIRE_VERSION = (8, 4)

DESCRIPTION = """\
Stop a server's platform cleanly (docker compose down, sync, unmount) before its
volume is detached; if Nova says the server no longer exists, or is shut off, warn
and succeed.
Run by `pulumi up` / `pulumi destroy` as the delete of the clean-stop step."""

EPILOG = """\
login (--login):
  key    the private key in $CHI_PERSIST_SSH_PRIVATE_KEY, alone (no agent); with
         $CHI_PERSIST_SSH_KEY_PASSPHRASE when it has a passphrase (OpenSSH 8.4 or later)
  agent  the ssh agent at $SSH_AUTH_SOCK

exit status:
  0  the platform was stopped and the volume unmounted, or the server no longer exists
     or is shut off
  1  the clean stop could not run, or failed: the volume must not be detached yet
  2  wrong arguments"""


@dataclass(frozen=True)
class ServerLookup:
    """What Nova says about the server."""

    gone: bool = False
    status: str | None = None
    """The server's status when it exists."""
    problem: str | None = None
    """Why Nova could not be asked, or what it answered instead: existence unknown."""

    @property
    def exists(self) -> bool:
        return not self.gone and self.problem is None


class Failure(Exception):
    """The clean stop failed: the lines to print, the first being the cause."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0])
        self.lines = list(lines)


def _compute() -> tuple[Any, str | None]:
    """The stack's OpenStack session (components/openstack_api.py), or why there is none."""
    try:
        from components.openstack_api import CloudUnavailable, OpenStack
    except ModuleNotFoundError as error:
        return None, (
            f"the Python module {error.name!r} is not installed for {sys.executable} "
            "(`pulumi install` installs requirements.txt into the project's venv)"
        )
    try:
        return OpenStack(), None
    except ModuleNotFoundError as error:
        return None, f"the Python module {error.name!r} is not installed for {sys.executable}"
    except CloudUnavailable as error:
        return None, f"no usable OpenStack credentials: {error}"


def look_up_server(server_id: str) -> ServerLookup:
    """Ask Nova for the server, with the credentials the OpenStack provider reads."""
    from components.openstack_api import CloudUnavailable

    api, problem = _compute()
    if api is None:
        return ServerLookup(problem=problem)
    try:
        answer = api.call("compute", "GET", f"/servers/{server_id}", timeout=NOVA_TIMEOUT_SECONDS)
    except CloudUnavailable as error:
        return ServerLookup(problem=str(error))
    if answer.status == 404:
        return ServerLookup(gone=True)
    if answer.status != 200:
        return ServerLookup(problem=f"Nova answered {answer.status}: {answer.error_message}")
    server = answer.body.get("server")
    if not isinstance(server, dict):
        return ServerLookup(problem="Nova answered 200 with a body that is not a server")
    status = str(server.get("status") or "unknown")
    if status.upper() in GONE_STATUSES or server.get("OS-EXT-STS:task_state") == "deleting":
        return ServerLookup(gone=True, status=status)
    return ServerLookup(status=status)


def request_server_stop(server_id: str) -> str | None:
    """POST os-stop (nova/api/openstack/compute/servers.py, ServersController._stop_server):
    202, or 409 when the server is already stopped; None on success, else why not."""
    from components.openstack_api import CloudUnavailable

    api, problem = _compute()
    if api is None:
        return problem
    try:
        answer = api.call(
            "compute", "POST", f"/servers/{server_id}/action", json={"os-stop": None},
            timeout=NOVA_TIMEOUT_SECONDS,
        )  # fmt: skip
    except CloudUnavailable as error:
        return str(error)
    if answer.status in (202, 409):
        return None
    return f"Nova answered {answer.status}: {answer.error_message}"


# --- ssh ------------------------------------------------------------------------------------


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


def ssh_arguments(
    ssh: str, host: str, port: int, user: str, login: str, key_file: Path | None, batch: bool
) -> list[str]:
    """The OpenSSH client's arguments: no config file, public key only, no prompt on a terminal."""
    arguments = [
        ssh,
        # The user's ssh_config is not read, as pulumi-command reads none.
        "-F", "none",
        "-p", str(port),
        "-l", user,
        # A new server has a new host key every time, and the other provisioning steps
        # (pulumi-command) do not check it either: do not let it fail or pile up here.
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={SSH_CONNECT_TIMEOUT_SECONDS}",
        # The stop may take minutes (PostgreSQL gets two); a dead server ends it in two.
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=8",
        "-o", "PreferredAuthentications=publickey",
        "-o", "PasswordAuthentication=no",
        "-o", "KbdInteractiveAuthentication=no",
        "-o", "NumberOfPasswordPrompts=1",
        "-o", "ForwardAgent=no",
        "-o", "ClearAllForwardings=yes",
        "-o", f"BatchMode={'yes' if batch else 'no'}",
    ]  # fmt: skip
    if login == KEY:
        assert key_file is not None
        arguments += ["-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
    return [*arguments, host]


@dataclass(frozen=True)
class SshResult:
    returncode: int
    error_lines: list[str]


def run_over_ssh(
    host: str,
    port: int,
    user: str,
    login: str,
    remote_command: str,
    environ: Mapping[str, str],
    attempts: int = SSH_ATTEMPTS,
    pause: float = SSH_PAUSE_SECONDS,
) -> SshResult:
    """Run `remote_command` on the server; its output passes through, stderr is kept too."""
    ssh = shutil.which("ssh", path=environ.get("PATH"))
    if ssh is None:
        raise Failure(
            "the OpenSSH client (`ssh`) is not on PATH; the clean stop logs in with it",
            "fix: install it (Debian/Ubuntu: apt install openssh-client; macOS has it), then "
            "run pulumi again",
        )
    child = {
        name: value
        for name, value in environ.items()
        if name not in (KEY_VARIABLE, "SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "DISPLAY")
    }
    with tempfile.TemporaryDirectory(prefix="chi-persist-clean-stop-") as directory:
        key_file = None
        batch = True
        if login == KEY:
            key_text = environ.get(KEY_VARIABLE, "")
            if not key_text.strip():
                raise Failure(
                    f"--login key, but {KEY_VARIABLE} is empty: there is no key to log in with",
                    "fix: the stack's program passes the key; run `pulumi up` so the step holds "
                    "it, then try again",
                )
            key_file = Path(directory) / "key"
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(key_text if key_text.endswith("\n") else key_text + "\n")
            if environ.get(PASSPHRASE_VARIABLE):
                version = openssh_version(ssh)
                if version is not None and version < ASKPASS_REQUIRE_VERSION:
                    raise Failure(
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
                raise Failure(
                    "--login agent, but SSH_AUTH_SOCK is not set: there is no ssh agent to log "
                    "in with",
                    'fix: start one in the shell that runs pulumi: eval "$(ssh-agent)" && '
                    "ssh-add <your key>, then run pulumi again",
                )
        command = [*ssh_arguments(ssh, host, port, user, login, key_file, batch), remote_command]
        result = SshResult(SSH_ERROR, [])
        for attempt in range(1, attempts + 1):
            result = _ssh_once(command, child)
            if result.returncode != SSH_ERROR or attempt == attempts:
                break
            print(
                f"clean-stop: ssh to {user}@{host}:{port} failed (try {attempt} of {attempts}): "
                f"{_last(result.error_lines)}; trying again in {pause:g} s",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(pause)
        return result


def _ssh_once(command: list[str], environment: dict[str, str]) -> SshResult:
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=None,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        # No terminal: ssh never prompts on one; the passphrase comes only through askpass.
        start_new_session=True,
    )
    lines: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line.rstrip("\n"))
        sys.stderr.write(line)
        sys.stderr.flush()
    return SshResult(process.wait(), lines)


def _last(lines: Sequence[str]) -> str:
    shown = [line.strip() for line in lines if line.strip()]
    return shown[-1] if shown else "no message"


# --- the decision ---------------------------------------------------------------------------


def clean_stop(
    server_id: str,
    host: str,
    port: int,
    user: str,
    login: str,
    remote_command: str,
    environ: Mapping[str, str],
    attempts: int = SSH_ATTEMPTS,
    pause: float = SSH_PAUSE_SECONDS,
) -> int:
    """Skip the stop only when Nova says the server is gone; otherwise run it or fail."""
    sys.stdout.flush()
    lookup = look_up_server(server_id)
    if lookup.exists and (lookup.status or "").upper() in SHUT_OFF:
        print(
            f"warning: server {server_id} is {lookup.status}: nothing runs on it, and its "
            "shutdown stopped the platform and unmounted the volume (a shutdown that Nova had "
            "to force leaves PostgreSQL to recover from its journal on the next start), so "
            "there is nothing to stop.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_OK
    if lookup.gone:
        print(
            f"warning: server {server_id} no longer exists (Nova: not found): its platform "
            "cannot be stopped cleanly (docker compose down, sync, unmount), and the volume "
            "goes on without it. The data was not stopped cleanly: PostgreSQL recovers from "
            "its journal on the next start; committed data is safe, writes of the last "
            "seconds before the server went away may be lost.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_OK
    if lookup.exists:
        print(
            f"clean-stop: server {server_id} exists (status {lookup.status}): stopping the "
            f"platform over SSH ({user}@{host}:{port})",
            flush=True,
        )
    else:
        print(
            f"warning: could not ask Nova whether server {server_id} still exists "
            f"({lookup.problem}): trying the clean stop over SSH ({user}@{host}:{port})",
            file=sys.stderr,
            flush=True,
        )
    result = run_over_ssh(host, port, user, login, remote_command, environ, attempts, pause)
    if result.returncode == 0:
        print(f"clean-stop: the platform on server {server_id} is stopped and the volume released")
        return EXIT_OK
    raise Failure(*_failure_lines(server_id, host, port, user, login, lookup, result))


def _failure_lines(
    server_id: str,
    host: str,
    port: int,
    user: str,
    login: str,
    lookup: ServerLookup,
    result: SshResult,
) -> list[str]:
    where = f"{user}@{host}:{port}"
    if lookup.exists:
        known = f"server {server_id} exists (status {lookup.status})"
    else:
        known = f"whether server {server_id} still exists is unknown ({lookup.problem})"
    recycle = (
        "if the server is beyond reach for good, `./chi-persist recycle --stack <netid>` skips its "
        "clean stop, after a warning"
    )
    if result.returncode == SSH_ERROR:
        lines = [
            f"the clean stop could not run over SSH on {where}: {_last(result.error_lines)}; "
            f"{known}. "
            "The volume was not detached"
        ]
        if not lookup.exists:
            lines.append(
                "fix: let pulumi see the OpenStack credentials (export OS_CLOUD=<cloud> with "
                "clouds.yaml, or source the openrc file) in the shell that runs it, so the "
                "clean stop can tell whether the server is gone, then run pulumi again"
            )
        how = (
            "the agent at SSH_AUTH_SOCK holds the key of the stack's key pair"
            if login == AGENT
            else "the stack's key (sshPrivateKey / sshPrivateKeyPath) is the key pair's"
        )
        lines.append(
            f"fix: check that the server is ACTIVE (openstack server show {server_id}), that "
            f"this machine's address is in chi-persist:allowedCidrs, and that {how}; then run "
            f"pulumi again; {recycle}"
        )
        return lines
    if result.returncode == RELEASE_REFUSED:
        return [
            f"the clean stop on {where} refused: something on the server still uses the "
            "volume (see release-volume's lines above). The volume was not detached",
            f"fix: ssh {user}@{host}, stop what holds the volume (the lines above name it), "
            "then run pulumi again",
        ]
    return [
        f"the clean stop on {where} failed (exit status {result.returncode}; see "
        "release-volume's lines above). The volume was not detached",
        f"fix: ssh {user}@{host} to see why (sudo journalctl, docker ps), correct it, then run "
        f"pulumi again; {recycle}",
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clean-stop",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server-id", required=True, help="the server's id in Nova")
    parser.add_argument("--host", required=True, help="the server's address (floating IP)")
    parser.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    parser.add_argument("--user", default="cc", help="SSH user (default cc)")
    parser.add_argument(
        "--login", choices=(KEY, AGENT), required=True, help="how ssh logs in (see below)"
    )
    parser.add_argument(
        "--attempts",
        type=int,
        default=SSH_ATTEMPTS,
        help=f"tries when ssh cannot connect or log in (default {SSH_ATTEMPTS})",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=SSH_PAUSE_SECONDS,
        help=f"seconds between those tries (default {SSH_PAUSE_SECONDS})",
    )
    parser.add_argument(
        "remote_command",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND...",
        help="what runs on the server (release-volume.sh and its arguments)",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    remote = list(arguments.remote_command)
    if remote[:1] == ["--"]:
        remote = remote[1:]
    if not remote:
        parser.error("no remote command: give it after --, e.g. -- sudo bash release-volume.sh")
    if not 0 < arguments.port < 65536:
        parser.error(f"--port must be 1 to 65535, not {arguments.port}")
    if arguments.attempts < 1 or arguments.pause < 0:
        parser.error(
            f"--attempts must be 1 or more and --pause 0 or more (seen {arguments.attempts}, "
            f"{arguments.pause})"
        )
    try:
        return clean_stop(
            arguments.server_id,
            arguments.host,
            arguments.port,
            arguments.user,
            arguments.login,
            shlex.join(remote),
            os.environ if environ is None else environ,
            attempts=arguments.attempts,
            pause=arguments.pause,
        )
    except Failure as failure:
        sys.stdout.flush()
        for line in failure.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted: the volume was not detached", file=sys.stderr)
        return 130
