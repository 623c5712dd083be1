"""Where scripts/remote/platform-backup runs: the stack's server over SSH as cc, logged in as
`pulumi up` logs in. The script and the object store's token go over SSH's standard input; the
command line holds neither."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_USAGE,
    HOW_TO_UNLOCK_SECRETS,
    PROJECT_DIR,
    CommandError,
    PulumiFailed,
    run_pulumi,
)
from components.settings import NAMESPACE

REMOTE_SCRIPT = PROJECT_DIR / "scripts" / "remote" / "platform-backup"
SSH_USER = "cc"
# The script, then the token, on the remote command's standard input: the first line says
# how many bytes of script follow.
BOOTSTRAP = (
    "import sys; size = int(sys.stdin.buffer.readline()); "
    "source = sys.stdin.buffer.read(size); sys.argv[0] = 'platform-backup'; "
    "exec(compile(source, 'platform-backup', 'exec'), {'__name__': '__main__'})"
)


class RemoteFailed(CommandError):
    """platform-backup on the server exited non-zero."""


class Server(Protocol):
    """Where platform-backup runs: the stack's server over SSH, or (in tests) this machine."""

    def run(self, verb: str, arguments: Sequence[str], secrets: Mapping[str, Any] | None) -> Any:
        """platform-backup VERB ARGUMENTS, with the secrets' JSON line on its standard input;
        its JSON result. Progress lines pass through to stderr."""


def script_input(script: bytes, secrets: Mapping[str, Any] | None) -> bytes:
    """What the remote command reads: the script's length, the script, the secrets' line."""
    line = json.dumps(dict(secrets)).encode() + b"\n" if secrets is not None else b""
    return f"{len(script)}\n".encode() + script + line


def remote_command(verb: str, arguments: Sequence[str]) -> str:
    """The command line the server runs: no secret in it, only the verb and its options."""
    return shlex.join(["sudo", "python3", "-c", BOOTSTRAP, verb, *arguments])


def parse_result(stdout: str, verb: str, returncode: int, errors: str) -> Any:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    said = [line for line in errors.splitlines() if "error:" in line] or errors.splitlines()[-3:]
    reason = " ".join(" ".join(said).split()) or "no message"
    raise RemoteFailed(
        f"platform-backup {verb} on the server failed (exit status {returncode}): {reason}",
        exit_code=EXIT_FAILED,
    )


@dataclass
class SshLogin:
    """How to log in as the provisioning steps do: a key (its text) or the ssh agent."""

    key_text: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)


class SshServer:
    """The stack's server, reached over SSH as cc with the stack's own login."""

    def __init__(
        self, address: str, login: SshLogin, mount_point: str, host_key: str, port: int = 22
    ) -> None:
        self.address = address
        self.login = login
        self.mount_point = mount_point
        self.host_key = host_key
        self.port = port

    def run(self, verb: str, arguments: Sequence[str], secrets: Mapping[str, Any] | None) -> Any:
        from chi_persist_tools import openssh

        if verb in ("survey", "backup", "restore", "verify"):
            arguments = ["--mount-point", self.mount_point, *arguments]
        # The same login and the same pinned host key as the clean stop (openssh.session):
        # whoever answers at the address without the server's own key gets nothing.
        environ = dict(os.environ)
        login = openssh.AGENT
        if self.login.key_text is not None:
            login = openssh.KEY
            environ[openssh.KEY_VARIABLE] = self.login.key_text
            if self.login.passphrase:
                environ[openssh.PASSPHRASE_VARIABLE] = self.login.passphrase
        try:
            with openssh.session(
                port=self.port,
                user=SSH_USER,
                login=login,
                host=self.address,
                host_key=self.host_key,
                environ=environ,
                purpose=f"`chi-persist {verb}`",
            ) as ssh:
                command = ssh.command(self.address, remote_command(verb, arguments))
                return run_streaming(
                    command,
                    script_input(REMOTE_SCRIPT.read_bytes(), secrets),
                    ssh.environment,
                    verb,
                )
        except openssh.LoginUnavailable as unavailable:
            raise CommandError(*unavailable.lines, exit_code=EXIT_FAILED) from None


def run_streaming(
    command: Sequence[str], stdin: bytes, environment: Mapping[str, str], verb: str
) -> Any:
    """Run a command, its stdin given, its stderr passed through line by line; its result."""
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(environment),
        start_new_session=True,
    )
    assert process.stdin and process.stdout and process.stderr
    errors: list[str] = []

    def relay() -> None:
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            errors.append(line)
            sys.stderr.write(f"  | {line}" if not line.startswith("  |") else line)
            sys.stderr.flush()

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    try:
        process.stdin.write(stdin)
        process.stdin.close()
    except BrokenPipeError:
        pass
    output = process.stdout.read().decode(errors="replace")
    returncode = process.wait()
    relay_thread.join(timeout=10)
    if returncode == 255 and not output:
        said = "".join(errors[-2:]).strip() or "no message"
        raise CommandError(
            f"could not log in to the server over SSH: {said}",
            "fix: check that the server runs (`pulumi stack output`), that your address is in "
            "chi-persist:allowedCidrs and that your key (or agent) is the key pair's",
            exit_code=EXIT_FAILED,
        )
    return parse_result(output, verb, returncode, "".join(errors))


def _stack_outputs(stack: str) -> dict:
    """The stack's outputs (secrets not shown); empty when there are none or they are not
    JSON."""
    printed = run_pulumi(["stack", "output", "--json", "--stack", stack])
    try:
        outputs = json.loads(printed or "{}")
    except json.JSONDecodeError:
        return {}
    return outputs if isinstance(outputs, dict) else {}


def stack_host_key(stack: str) -> str:
    """The server's host key the stack pinned from its console (`TYPE BASE64`)."""
    line = _stack_outputs(stack).get("known_hosts")
    words = str(line or "").split()
    if len(words) < 3:
        raise CommandError(
            f"stack {stack} has no output known_hosts: its server's host key was never pinned",
            f"fix: `pulumi up --stack {stack}` (it reads the key from the server's console), "
            "then run this again",
            exit_code=EXIT_USAGE,
        )
    return " ".join(words[1:3])


def stack_address(stack: str) -> str:
    address = _stack_outputs(stack).get("floating_ip")
    if not address:
        raise CommandError(
            f"stack {stack} has no output floating_ip: the platform is not deployed",
            f"fix: `pulumi up --stack {stack}`, then run this again",
            exit_code=EXIT_USAGE,
        )
    return str(address)


def stack_login(stack: str, values: Mapping[str, Any]) -> SshLogin:
    """The login `pulumi up` uses (components/settings.py decides it): the stack's secret key,
    its key file, or the ssh agent."""
    from components.settings import SettingsError, expand_key_path, validate

    def secret(name: str) -> str | None:
        try:
            text = run_pulumi(["config", "get", f"{NAMESPACE}:{name}", "--stack", stack])
        except PulumiFailed as failure:
            if failure.mentions("not found") or failure.mentions("configuration key"):
                return None
            if failure.mentions("passphrase"):
                raise failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}") from None
            raise
        return text.rstrip("\n") or None

    key_text = secret("sshPrivateKey")
    password = secret("sshPrivateKeyPassword")
    try:
        settings = validate(
            dict(values),
            stack,
            private_key_set=key_text is not None,
            private_key_text=key_text,
            password_set=password is not None,
            password=password,
        )
    except SettingsError as error:
        raise CommandError(
            *(str(problem) for problem in error.problems), exit_code=EXIT_USAGE
        ) from None
    if settings.ssh_key_source == "agent":
        return SshLogin()
    if settings.ssh_key_source == "config":
        text = key_text
    else:
        text = expand_key_path(settings.ssh_private_key_path).read_text()
    return SshLogin(key_text=text, passphrase=password if settings.ssh_send_password else None)
