"""`chi-persist open`: an SSH tunnel to a stack's server, with the stack's login and its pinned key.

The stack is made by the real Pulumi CLI on a student machine (its outputs brought in with
`pulumi stack import`, its config set with `pulumi config set`); the server is OpenSSH's sshd
on port 22 of an address of 127.0.0.0/8, as the stand-in's floating IPs are; the platform's
services are loopback listeners. The tunnel logs in as `cc` on a real server: here the
module's user and the services' ports are the test's (the rest is the command's own code,
run in this process).
"""

from __future__ import annotations

import getpass
import http.server
import os
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.engine.workspace import CLEARED_PREFIXES, StudentMachine, toolchain_skip_reason
from tests.support.loopback_sshd import LoopbackSshd, loopback_sshd, sshd_skip_reason
from tests.support.pulumi_state import outputs_deployment
from tests.support.ssh_keys import make_key
from tests.support.tools import command_argv, command_env, import_tool

tunnel = import_tool("tunnel")
command_line = import_tool("command_line")

pytestmark = [
    pytest.mark.skipif(toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())),
    pytest.mark.skipif(sshd_skip_reason() is not None, reason=str(sshd_skip_reason())),
]


def open_tunnel(*arguments: str, environ: dict[str, str] | None = None) -> int:
    """`chi-persist open ARGUMENTS` in this process: parsed by the command's own parser."""
    parsed = import_tool("cli").build_parser().parse_args(["open", *arguments])
    assert parsed.handler == tunnel.run_command
    environ = dict(os.environ) if environ is None else environ
    return command_line.run_main(
        lambda: tunnel.run(parsed.stack, parsed.stop, parsed.json, environ)
    )


def test_help_names_the_stack_the_stop_and_the_exit_status() -> None:
    completed = subprocess.run(
        command_argv("open", "--help"),
        capture_output=True,
        text=True,
        check=False,
        env=command_env(),
    )
    assert completed.returncode == 0
    for text in ("--stack NETID", "--stop", "8888", "8000", "9000", "9001", "known_hosts",
                 "exit status:"):  # fmt: skip
        assert text in completed.stdout


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        body = f"service on port {self.server.server_address[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """A listener on the server's 127.0.0.1 for each service (ports of the test's choosing)."""
    servers = {}
    for service, _ in tunnel.SERVICES:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[service] = server
    ports = {service: server.server_address[1] for service, server in servers.items()}
    monkeypatch.setattr(tunnel, "SERVICES", tuple(ports.items()))
    yield ports
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackSshd]:
    """sshd on port 22 of a loopback address, as a floating IP; logins as the test's user."""
    address = f"127.{random.randint(100, 200)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    monkeypatch.setattr(tunnel, "SSH_USER", getpass.getuser())
    with loopback_sshd(tmp_path / "sshd", host=address, port=22) as sshd:
        yield sshd


@pytest.fixture
def student(
    tmp_path: Path, server: LoopbackSshd, monkeypatch: pytest.MonkeyPatch
) -> StudentMachine:
    """A student machine whose stack ab1234 holds the server's outputs and a key file."""
    machine = StudentMachine.create(tmp_path / "machine")
    key = make_key(machine.home / ".ssh" / "id_rsa_chameleon")
    server.authorize(Path(f"{key}.pub"))
    outputs = {
        "floating_ip": server.host,
        "known_hosts": f"{server.host} {server.host_key}",
        "platform_access": "tunnel",
    }
    machine.import_state("ab1234", outputs_deployment("ab1234", outputs, ()))
    machine.pulumi("config", "set", "chi-persist:keyPair", "k", "--stack", "ab1234", check=True)
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in machine.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    monkeypatch.setattr(command_line, "PROJECT_DIR", machine.project)
    monkeypatch.setattr(tunnel, "PROJECT_DIR", machine.project)
    return machine


def test_the_tunnel_reaches_every_service_and_stops(
    student: StudentMachine, server: LoopbackSshd, services: dict[str, int], capsys
) -> None:
    """The local URLs answer with the server's services; a second run shows the same tunnel;
    --stop ends it and the ports close."""
    assert open_tunnel("--stack", "ab1234") == 0
    printed = capsys.readouterr().out
    assert f"tunnel to {getpass.getuser()}@{server.host} started" in printed
    opened = tunnel.running("ab1234")
    assert opened is not None
    for service, port in services.items():
        answer = requests.get(opened.urls[service], timeout=10)
        assert answer.text == f"service on port {port}", service
        assert opened.urls[service] in printed
    assert open_tunnel("--stack", "ab1234") == 0
    assert "already running" in capsys.readouterr().out
    assert tunnel.running("ab1234") == opened
    assert open_tunnel("--stack", "ab1234", "--stop") == 0
    assert "is stopped" in capsys.readouterr().out
    host, port = opened.urls["mlflow"].removeprefix("http://").split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=5):
        pass
    assert open_tunnel("--stack", "ab1234", "--stop") == 0
    assert "no tunnel of stack ab1234 runs" in capsys.readouterr().out


def test_a_server_showing_another_key_gets_nothing(
    student: StudentMachine, server: LoopbackSshd, services: dict[str, int], tmp_path: Path, capsys
) -> None:
    """The stack pinned another key than the address shows: no tunnel, the cause and the fix."""
    other = make_key(tmp_path / "other-host-key")
    pinned = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    student.import_state(
        "ab1234",
        outputs_deployment(
            "ab1234",
            {"floating_ip": server.host, "known_hosts": f"{server.host} {pinned}"},
            (),
        ),
    )
    assert open_tunnel("--stack", "ab1234") == 1
    said = capsys.readouterr().err
    assert "does not show the server's pinned host key" in said
    assert f"openstack floating ip show {server.host}" in said
    assert tunnel.running("ab1234") is None


def test_a_stack_without_a_pinned_key_is_told_to_run_pulumi_up(
    student: StudentMachine, server: LoopbackSshd, capsys
) -> None:
    student.import_state("ab1234", outputs_deployment("ab1234", {"floating_ip": server.host}, ()))
    assert open_tunnel("--stack", "ab1234") == 2
    said = capsys.readouterr().err
    assert "no output floating_ip and known_hosts" in said
    assert "pulumi up --stack ab1234" in said


def test_an_empty_passphrase_is_refused_with_the_passphrase_file_fix(
    student: StudentMachine, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """PULUMI_CONFIG_PASSPHRASE set but empty: refused before any pulumi call."""
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "")
    assert open_tunnel("--stack", "ab1234", environ=dict(os.environ)) == 2
    said = capsys.readouterr().err
    assert "PULUMI_CONFIG_PASSPHRASE is set but empty" in said
    assert "PULUMI_CONFIG_PASSPHRASE_FILE" in said
