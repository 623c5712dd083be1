"""chi-persist open: reach a stack's platform through an SSH tunnel, with only SSH open to it."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chi_persist_tools import openssh
from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    PROJECT_DIR,
    CommandError,
    PulumiFailed,
    check_passphrase,
    run_main,
    run_pulumi,
    selected_stack,
)

SSH_USER = "cc"
# What each local port reaches: the service's port on the server's own 127.0.0.1.
SERVICES = (("jupyter", 8888), ("mlflow", 8000), ("minio_api", 9000), ("minio_console", 9001))
LABELS = {
    "jupyter": "Jupyter",
    "mlflow": "MLflow",
    "minio_api": "MinIO API",
    "minio_console": "MinIO console",
}
START_SECONDS = 120

DESCRIPTION = """\
Start a background SSH tunnel to a stack's server and print the local URLs of its
Jupyter (8888), MLflow (8000), MinIO API (9000) and MinIO console (9001), each on a free
port of this machine's 127.0.0.1. It is how a stack with platformAccess tunnel (only SSH
open) is reached, and it works with public too. The login is the stack's (its key, or the
ssh agent), and only the server's pinned host key (the output known_hosts) is accepted.
Running it again while the tunnel runs prints the same URLs; --stop ends it."""

EPILOG = """\
examples:
  ./chi-persist open --stack ab1234         start (or show) the tunnel, print the URLs
  ./chi-persist open --stack ab1234 --stop  end it
  ./chi-persist check --stack ab1234        goes through the tunnel by itself in tunnel mode

The credentials stay where they are: `pulumi stack output --stack ab1234 --show-secrets
jupyter_url` (its token), mlflow_username and mlflow_password.

exit status:
  0  the tunnel runs (its URLs printed), or --stop ended it (or none ran)
  1  the tunnel could not start (ssh's reason, the cause and the fix are printed)
  2  wrong arguments, or the stack could not be read"""


@dataclass(frozen=True)
class Tunnel:
    """A running tunnel: the server's address and the local URL of each service."""

    stack: str
    address: str
    urls: dict[str, str]


# A Unix socket's path holds at most 104 bytes (macOS; 108 on Linux), and ssh makes its
# control socket at the path plus 17 characters first.
SOCKET_PATH_LIMIT = 104 - 17


def state_directory() -> Path:
    """A private directory for the control sockets: the session's runtime directory when its
    paths are short enough for a socket, else the temporary directory."""
    bases = [os.environ.get("XDG_RUNTIME_DIR"), tempfile.gettempdir(), "/tmp"]
    usable = [
        b for b in bases if b and len(f"{b}/chi-persist-{os.getuid()}/") + 21 <= SOCKET_PATH_LIMIT
    ]
    if not usable:
        raise CommandError(
            f"no directory short enough for an ssh control socket among {bases}",
            "fix: export TMPDIR=/tmp, then run this again",
        )
    directory = Path(usable[0]) / f"chi-persist-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    status = directory.stat()
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise CommandError(
            f"{directory} is not a private directory of yours (owner uid {status.st_uid}, mode "
            f"{oct(status.st_mode & 0o777)}): another user could take over the tunnel",
            f"fix: remove it (rm -r {directory}) and run this again",
            exit_code=EXIT_FAILED,
        )
    return directory


def _paths(stack: str) -> tuple[Path, Path]:
    name = hashlib.sha256(f"{PROJECT_DIR}\0{stack}".encode()).hexdigest()[:16]
    # 16 hex and ".sock": the 21 characters state_directory() counts.
    directory = state_directory()
    return directory / f"{name}.sock", directory / f"{name}.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the stack -------------------------------------------------------------------------------


def _json_of(arguments: list[str]) -> Any:
    try:
        printed = run_pulumi(arguments)
    except PulumiFailed as failure:
        if failure.mentions("no stack named"):
            stack = arguments[arguments.index("--stack") + 1] if "--stack" in arguments else ""
            raise failure.with_fix(
                f"fix: there is no stack named {stack!r}: `pulumi stack ls` lists them"
            ) from None
        raise
    try:
        return json.loads(printed or "{}")
    except json.JSONDecodeError:
        raise CommandError(
            f"pulumi printed something that is not JSON: {printed[:200]!r}",
            "fix: check the Pulumi CLI with `pulumi version` (3.x is needed)",
            exit_code=EXIT_FAILED,
        ) from None


@dataclass(frozen=True)
class Target:
    """Where and how to log in: the server's address, its pinned key, the stack's login."""

    address: str
    host_key: str
    login: str
    environment: dict[str, str]


def target(stack: str, environ: Mapping[str, str]) -> Target:
    """The server and the login of a stack, from its outputs and its config."""
    from components.settings import NAMESPACE, SettingsError, expand_key_path, validate

    outputs = _json_of(["stack", "output", "--json", "--show-secrets", "--stack", stack])
    address = str(outputs.get("floating_ip") or "")
    pinned = str(outputs.get("known_hosts") or "")
    if not address or not pinned.startswith(f"{address} "):
        raise CommandError(
            f"stack {stack} has no output floating_ip and known_hosts (the server's pinned host "
            "key): it was never deployed, or by a version of the program that did not pin keys",
            f"fix: pulumi up --stack {stack}, then run this again",
        )
    config = _json_of(["config", "--json", "--show-secrets", "--stack", stack])
    prefix = f"{NAMESPACE}:"
    values = {
        key[len(prefix) :]: entry.get("value") if isinstance(entry, dict) else entry
        for key, entry in config.items()
        if key.startswith(prefix)
    }
    key_text = values.pop("sshPrivateKey", None) or None
    password = values.pop("sshPrivateKeyPassword", None) or None
    for name in ("allowedCidrs", "existingSecurityGroups"):
        if isinstance(values.get(name), str):
            values[name] = json.loads(values[name])
    try:
        settings = validate(
            values,
            stack,
            private_key_set=key_text is not None,
            private_key_text=key_text,
            password_set=password is not None,
            password=password,
            environment=environ,
        )
    except SettingsError as error:
        raise CommandError(
            "the stack's settings do not give a way to log in:",
            *[f"fix: {problem}" for problem in error.problems],
        ) from None
    environment = dict(environ)
    login = openssh.AGENT
    if settings.ssh_key_source != "agent":
        login = openssh.KEY
        if settings.ssh_key_source == "file":
            key_text = expand_key_path(
                settings.ssh_private_key_path, environ.get("HOME")
            ).read_text()
        environment[openssh.KEY_VARIABLE] = key_text or ""
        if settings.ssh_send_password and password:
            environment[openssh.PASSPHRASE_VARIABLE] = password
    return Target(address, pinned[len(address) + 1 :], login, environment)


# --- the tunnel ------------------------------------------------------------------------------


def _control(socket_path: Path, operation: str, address: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", "none", "-S", str(socket_path), "-O", operation, f"{SSH_USER}@{address}"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def running(stack: str) -> Tunnel | None:
    """The stack's tunnel when its ssh still runs."""
    socket_path, record = _paths(stack)
    if not record.exists() or not socket_path.exists():
        return None
    saved = json.loads(record.read_text())
    if _control(socket_path, "check", saved["address"]).returncode != 0:
        return None
    return Tunnel(stack, saved["address"], dict(saved["urls"]))


# With `platformAccess: tunnel` the server publishes Jupyter (8888), MLflow (8000) and MinIO
# (9000, 9001) on its own 127.0.0.1 only, and the security group opens port 22 alone. This
# command starts one background OpenSSH process (a ControlMaster, so `--stop` can end it) that
# forwards a free port of this machine's 127.0.0.1 to each of them, and prints the local URLs.
# It logs in as the provisioning does (the stack's key alone, or the ssh agent, chosen by the
# same rules: components/settings.py) and accepts only the host key the stack pinned from the
# server's own console (the output `known_hosts`). It works in platformAccess public too.
def start(stack: str, environ: Mapping[str, str]) -> tuple[Tunnel, bool]:
    """The stack's tunnel, started unless it runs: (tunnel, whether this call started it)."""
    found = running(stack)
    if found is not None:
        return found, False
    where = target(stack, environ)
    socket_path, record = _paths(stack)
    socket_path.unlink(missing_ok=True)
    ports = {service: free_port() for service, _ in SERVICES}
    forwards = [
        argument
        for service, remote in SERVICES
        for argument in ("-L", f"127.0.0.1:{ports[service]}:127.0.0.1:{remote}")
    ]
    try:
        with openssh.session(
            port=22, user=SSH_USER, login=where.login, host=where.address,
            host_key=where.host_key, environ=where.environment, purpose="the tunnel",
        ) as ssh:  # fmt: skip
            ssh.options += [
                "-o", "ExitOnForwardFailure=yes",
                "-o", "ServerAliveInterval=30",
                "-o", "ServerAliveCountMax=4",
                "-o", "ControlMaster=yes",
                "-o", "ControlPersist=no",
                "-S", str(socket_path),
                "-f", "-N", *forwards,
            ]  # fmt: skip
            # -f: ssh goes to the background once logged in and forwarding, so the key file
            # and the askpass helper are no longer needed when the block ends.
            result = subprocess.run(
                ssh.command(where.address), env=ssh.environment, capture_output=True,
                text=True, timeout=START_SECONDS, stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
    except openssh.LoginUnavailable as unavailable:
        raise CommandError(*unavailable.lines, exit_code=EXIT_FAILED) from None
    if result.returncode != 0:
        said = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
        if openssh.host_key_refused(result.stderr.splitlines()):
            raise CommandError(
                f"{where.address} does not show the server's pinned host key "
                f"({where.host_key.split()[0]}, the stack's output known_hosts): whoever "
                f"answers there is not the server; nothing was sent to it ({said})",
                f"fix: check that the floating IP is still on the server's port (openstack "
                f"floating ip show {where.address}), then run this again",
                exit_code=EXIT_FAILED,
            )
        raise CommandError(
            f"the tunnel to {SSH_USER}@{where.address} did not start: {said}",
            f"fix: check that the server runs (pulumi stack output --stack {stack}), that this "
            f"machine's address is in chi-persist:allowedCidrs, and that the stack's key or "
            "agent logs in (the ssh_command output), then run this again",
            exit_code=EXIT_FAILED,
        )
    urls = {service: f"http://127.0.0.1:{port}" for service, port in ports.items()}
    record.write_text(json.dumps({"address": where.address, "urls": urls}))
    return Tunnel(stack, where.address, urls), True


def stop(stack: str) -> bool:
    """End the stack's tunnel; False when none ran."""
    socket_path, record = _paths(stack)
    saved = json.loads(record.read_text()) if record.exists() else None
    stopped = False
    if saved is not None and socket_path.exists():
        stopped = _control(socket_path, "exit", saved["address"]).returncode == 0
    record.unlink(missing_ok=True)
    socket_path.unlink(missing_ok=True)
    return stopped


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    parser.add_argument("--stop", action="store_true", help="end the stack's tunnel")
    parser.add_argument(
        "--json", action="store_true", help="print the local URLs as one JSON object"
    )


def print_urls(tunnel: Tunnel, started: bool, stack_flag: str) -> None:
    state = "started" if started else "already running"
    print(f"open: tunnel to {SSH_USER}@{tunnel.address} {state} (host key pinned by the stack)")
    width = max(len(label) for label in LABELS.values())
    for service, _ in SERVICES:
        url = tunnel.urls[service]
        note = ""
        if service == "jupyter":
            url += "/lab"
            note = f"token: pulumi stack output jupyter_url --show-secrets{stack_flag}"
        elif service == "mlflow":
            note = "login: mlflow_username and mlflow_password (pulumi stack output --show-secrets)"
        print(f"  {LABELS[service]:<{width}}  {url}" + (f"   ({note})" if note else ""))
    print(f"open: stop it with: ./chi-persist open{stack_flag} --stop")


def run(stack: str | None, stop_it: bool, as_json: bool, environ: Mapping[str, str]) -> int:
    check_passphrase(dict(environ))
    stack = stack or selected_stack("open")
    stack_flag = f" --stack {stack}"
    if stop_it:
        if stop(stack):
            print(f"open: the tunnel of stack {stack} is stopped")
        else:
            print(f"open: no tunnel of stack {stack} runs")
        return EXIT_OK
    tunnel, started = start(stack, environ)
    if as_json:
        print(json.dumps(tunnel.urls))
    else:
        print_urls(tunnel, started, stack_flag)
    return EXIT_OK


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist open`."""
    return run_main(lambda: run(arguments.stack, arguments.stop, arguments.json, os.environ))
