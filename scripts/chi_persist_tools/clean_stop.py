"""clean-stop: stop a server's platform cleanly before its volume is detached, unless it is gone.
`pulumi up` and `pulumi destroy` run this on this machine as the delete of the provisioning's
clean-stop step."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chi_persist_tools import openssh
from chi_persist_tools.openssh import AGENT, KEY, KEY_VARIABLE, PASSPHRASE_VARIABLE

EXIT_OK = 0  # the platform was stopped and the volume released, or the server is gone
EXIT_FAILED = 1  # the clean stop could not run or failed: do not detach the volume
EXIT_USAGE = 2  # wrong arguments

__all__ = ["KEY_VARIABLE", "PASSPHRASE_VARIABLE", "main"]

NOVA_TIMEOUT_SECONDS = 30
# Nova's answer for a server that is deleted but still listed to an administrator.
GONE_STATUSES = ("DELETED", "SOFT_DELETED")
# A server shut off (a shutdown from inside, `openstack server stop`, recycle's
# --stop-through-nova) runs nothing: its volume was unmounted when it shut down.
SHUT_OFF = ("SHUTOFF",)
SSH_ATTEMPTS = 3
SSH_PAUSE_SECONDS = 10
# ssh exits 255 for its own errors (connect, login); anything else is the remote command's.
SSH_ERROR = 255
# release-volume.sh: something still uses the volume.
RELEASE_REFUSED = 4
# A stack from before the pinned key: how long to wait for the key on the server's console.
CONSOLE_KEY_SECONDS = 60

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

host key (--host-key): the server's key as `type base64` (the stack's output known_hosts
  without the address); ssh accepts that key only. Without it, the key is read from the
  server's console through Nova, as the stack does for a new server.

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


# A remote command's delete would dial SSH before anything else, and wait in vain for a
# server that no longer exists (a lease that ended, a server deleted by hand); this one
# first asks Nova, with the OpenStack provider's own credentials (OS_CLOUD,
# OS_CLIENT_CONFIG_FILE, clouds.yaml, OS_*):
# - the server is gone (404): a warning (the data was not stopped cleanly; PostgreSQL
#   recovers from its journal), and success, so the update goes on;
# - it exists, or Nova cannot say: the remote command (release-volume.sh) runs over SSH
#   with the OpenSSH client, logging in as the provisioning commands do and accepting only
#   the server's pinned host key (--host-key, which the stack read from the server's own
#   console; for a stack from before that, read from the console now); if it cannot run,
#   meets another key, or fails, this fails, with the cause and the fix, and the volume is
#   not detached.
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


@dataclass(frozen=True)
class SshResult:
    returncode: int
    error_lines: list[str]

    @property
    def host_key_refused(self) -> bool:
        return self.returncode == SSH_ERROR and openssh.host_key_refused(self.error_lines)


# The private key comes in the environment (CHI_PERSIST_SSH_PRIVATE_KEY, a secret of the
# stack) and goes to ssh in a file only its owner can read, removed afterwards; its
# passphrase (CHI_PERSIST_SSH_KEY_PASSPHRASE) reaches ssh through SSH_ASKPASS, never a
# file or an argument (chi_persist_tools/openssh.py). Neither is ever printed.
def run_over_ssh(
    host: str,
    port: int,
    user: str,
    login: str,
    host_key: str,
    remote_command: str,
    environ: Mapping[str, str],
    attempts: int = SSH_ATTEMPTS,
    pause: float = SSH_PAUSE_SECONDS,
) -> SshResult:
    """Run `remote_command` on the server; its output passes through, stderr is kept too."""
    try:
        with openssh.session(
            port=port, user=user, login=login, host=host, host_key=host_key,
            environ=environ, purpose="the clean stop",
        ) as ssh:  # fmt: skip
            # The stop may take minutes (PostgreSQL gets two); a dead server ends it in two.
            ssh.options += [
                "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=8",
                "-o", "ClearAllForwardings=yes",
            ]  # fmt: skip
            command = ssh.command(host, remote_command)
            result = SshResult(SSH_ERROR, [])
            for attempt in range(1, attempts + 1):
                result = _ssh_once(command, ssh.environment)
                # Another key at the address is not a network hiccup: never tried again.
                if result.returncode != SSH_ERROR or result.host_key_refused:
                    break
                if attempt == attempts:
                    break
                print(
                    f"clean-stop: ssh to {user}@{host}:{port} failed (try {attempt} of "
                    f"{attempts}): {_last(result.error_lines)}; trying again in {pause:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(pause)
            return result
    except openssh.LoginUnavailable as unavailable:
        raise Failure(*unavailable.lines) from None


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


def console_host_key(server_id: str) -> str:
    """For a stack from before the pinned key: the server's ed25519 key from its console."""
    from chi_persist_tools.host_key import HostKeyUnavailable, read_console_key

    try:
        return read_console_key(server_id, timeout=CONSOLE_KEY_SECONDS, interval=5).line
    except HostKeyUnavailable as unavailable:
        raise Failure(
            f"the stack holds no pinned host key for server {server_id} (it was deployed "
            f"before keys were pinned), and its console does not give one: {unavailable}. "
            "The volume was not detached",
            "fix: run `pulumi up` once (it reads and pins the key), then run this again; a "
            "server that is beyond reach for good: `./chi-persist recycle --stack <netid> "
            "--stop-through-nova` shuts it down through Nova first",
        ) from None


# --- the decision ---------------------------------------------------------------------------


def clean_stop(
    server_id: str,
    host: str,
    port: int,
    user: str,
    login: str,
    host_key: str | None,
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
    if not host_key:
        host_key = console_host_key(server_id)
    result = run_over_ssh(
        host, port, user, login, host_key, remote_command, environ, attempts, pause
    )
    if result.returncode == 0:
        print(f"clean-stop: the platform on server {server_id} is stopped and the volume released")
        return EXIT_OK
    raise Failure(*_failure_lines(server_id, host, port, user, login, host_key, lookup, result))


def _failure_lines(
    server_id: str,
    host: str,
    port: int,
    user: str,
    login: str,
    host_key: str,
    lookup: ServerLookup,
    result: SshResult,
) -> list[str]:
    where = f"{user}@{host}:{port}"
    if result.host_key_refused:
        return [
            f"the clean stop refused {where}: it does not show server {server_id}'s host key "
            f"({_fingerprint(host_key)}, read from that server's own console when it was "
            "made), so whoever answers there is not that server. Nothing was sent to it, and "
            "the volume was not detached",
            f"fix: check that the floating IP {host} is still on this server's port (openstack "
            f"floating ip show {host}: its port must be node-persist-<netid>'s; anyone in the "
            f"project can move it) and that server {server_id} was not rebuilt (openstack "
            "server show); put the address back, then run pulumi again",
        ]
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
    parser = openssh.server_parser("clean-stop", DESCRIPTION, EPILOG)
    parser.add_argument("--user", default="cc", help="SSH user (default cc)")
    parser.add_argument(
        "--login", choices=(KEY, AGENT), required=True, help="how ssh logs in (see below)"
    )
    parser.add_argument(
        "--host-key",
        metavar="'TYPE BASE64'",
        help="the server's pinned host key, the only one ssh accepts (see below)",
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
    if arguments.host_key is not None and _key(arguments.host_key) is None:
        parser.error(
            f"--host-key {arguments.host_key!r} is not a public key `TYPE BASE64`, e.g. the "
            "stack's output known_hosts without its address"
        )
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
            arguments.host_key,
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


def _key(text: str):
    from components.host_keys import parse_key

    return parse_key(text)


def _fingerprint(host_key: str) -> str:
    key = _key(host_key)
    return key.fingerprint if key is not None else host_key
