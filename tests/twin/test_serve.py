"""`tests/twin/serve` itself: the files it writes, a restart that keeps the state, a clean stop."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.twin import steps
from tests.twin.harness import SERVE, Twin, wait_for


def test_ready_clouds_yaml_and_env(twin: Twin) -> None:
    """clouds.yaml (0600) names cloud `twin` as the provider reads it; env points OS_* at it."""
    directory = twin.state_dir
    ready = json.loads((directory / "ready").read_text())
    assert ready["url"] == twin.url and ready["pid"] == twin.pid
    clouds = twin.clouds()
    cloud = clouds["twin"]
    assert cloud["auth_type"] == "v3applicationcredential"
    assert cloud["auth"]["auth_url"] == f"{twin.url}/v3"
    assert (
        cloud["auth"]["application_credential_id"]
        and cloud["auth"]["application_credential_secret"]
    )
    assert (cloud["region_name"], cloud["interface"], cloud["identity_api_version"]) == (
        "KVM@TACC",
        "public",
        3,
    )
    assert stat.S_IMODE((directory / "clouds.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "state.json").stat().st_mode) == 0o600
    shell = subprocess.run(
        ["bash", "-c", f'source "{directory / "env"}" && echo "$OS_CLOUD $OS_CLIENT_CONFIG_FILE"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split() == ["twin", str(directory / "clouds.yaml")]
    assert ipaddress.ip_address(twin.url.split("//")[1].split(":")[0]) == ipaddress.ip_address(
        "127.0.0.1"
    )


def test_credentials_differ_per_state_dir(tmp_path: Path) -> None:
    """No well-known secret: two state dirs, two credentials, two floating IP blocks."""
    first = Twin(tmp_path / "one").start()
    second = Twin(tmp_path / "two").start()
    try:
        one, two = first.clouds()["twin"]["auth"], second.clouds()["twin"]["auth"]
        assert one["application_credential_secret"] != two["application_credential_secret"]
        blocks = []
        for twin in (first, second):
            api = twin.api()
            public = api.get(f"{api.network}/networks", params={"name": "public"}).json()[
                "networks"
            ][0]
            blocks.append(
                api.get(f"{api.network}/subnets/{public['subnets'][0]}").json()["subnet"]["cidr"]
            )
        assert blocks[0] != blocks[1]
    finally:
        assert first.stop() == 0 and second.stop() == 0


def test_state_survives_a_restart(tmp_path: Path, public_key: str) -> None:
    """Everything made before a restart is there after it, with the same ids and addresses; the
    old token still works; a server that was running is SHUTOFF (its VM ended with the twin) and
    starts again with its volume still attached."""
    twin = Twin(tmp_path / "state").start()
    api = twin.api()
    twin.add_keypair("kept", public_key)
    group = steps.security_group(api, "kept", ports=(22,))
    port = steps.port(api, "kept", [group["id"]])
    floating = steps.floating_ip(api, port["id"])
    server = steps.boot(api, "kept", port["id"], "kept")
    volume = steps.volume(api, "kept", 1)
    steps.attach(api, server["id"], volume["id"])
    credential = twin.clouds()["twin"]["auth"]
    before = twin.events()
    assert twin.stop() == 0
    assert not (twin.state_dir / "ready").exists()

    twin.start()
    try:
        assert twin.clouds()["twin"]["auth"] == {**credential, "auth_url": f"{twin.url}/v3"}
        old = requests.get(
            f"{twin.url}/network/v2.0/ports/{port['id']}",
            headers={"X-Auth-Token": api.token},
            timeout=30,
        )
        assert old.status_code == 200
        api = twin.api()
        assert api.get(f"{api.network}/security-groups/{group['id']}").status_code == 200
        shown = api.get(f"{api.network}/floatingips/{floating['id']}").json()["floatingip"]
        assert (shown["floating_ip_address"], shown["port_id"]) == (
            floating["floating_ip_address"],
            port["id"],
        )
        assert api.get(f"{api.compute}/os-keypairs/kept").status_code == 200
        wait_for(lambda: steps.status(api, server["id"]) == "SHUTOFF", what="power state synced")
        assert steps.volume_status(api, volume["id"]) == "in-use"
        attachment = f"{api.compute}/servers/{server['id']}/os-volume_attachments/{volume['id']}"
        assert api.get(attachment).status_code == 200
        api.post(f"{api.compute}/servers/{server['id']}/action", json={"os-start": None})
        wait_for(lambda: steps.status(api, server["id"]) == "ACTIVE")
        after = twin.events()
        assert after[: len(before)] == before
        assert [event["seq"] for event in after] == list(range(1, len(after) + 1))
    finally:
        assert twin.stop() == 0


def test_a_twin_killed_mid_transition_finishes_it_on_restart(tmp_path: Path) -> None:
    """SIGKILL while a volume is being created: after a restart it is available with its file."""
    twin = Twin(tmp_path / "state", settings={"volume_create_seconds": 30}).start()
    api = twin.api()
    response = api.post(
        f"{api.volume}/volumes", json={"volume": {"name": "interrupted", "size": 1}}
    )
    volume_id = response.json()["volume"]["id"]
    assert twin.stop(signal.SIGKILL) == -signal.SIGKILL
    twin.settings = {}
    twin.start()
    try:
        api = twin.api()
        assert steps.volume_status(api, volume_id) == "available"
        assert (twin.state_dir / "volumes" / f"{volume_id}.img").stat().st_size == 1024**3
    finally:
        assert twin.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_everything(tmp_path: Path, signum: int) -> None:
    """Exit 0, DIR/ready gone, the port closed, every machine stopped and the stop logged."""
    twin = Twin(tmp_path / "state").start()
    api = twin.api()
    port = steps.port(api, "doomed", [])
    server = steps.boot(api, "doomed", port["id"])
    url = twin.url
    assert twin.stop(signum) == 0
    assert not (twin.state_dir / "ready").exists()
    host, number = url.split("//")[1].split(":")
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect((host, int(number)))
    machines = json.loads((twin.state_dir / "null-machines.json").read_text())
    assert machines[server["id"]]["power"] == "stopped"
    events = [
        json.loads(line) for line in (twin.state_dir / "events.jsonl").read_text().splitlines()
    ]
    assert events[-1]["action"] == "shutdown_all"
    assert any(
        event.get("action") == "stopped" and event.get("server_id") == server["id"]
        for event in events
    )


def _serve(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SERVE), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--port", "70000"], "is not a TCP port"),
        (["--set", "online_extend=sometimes"], "the value must be JSON"),
        (["--set", 'online_extend="sometimes"'], "online_extend must be one of"),
        (["--set", "colour=1"], "unknown twin setting 'colour'"),
    ],
    ids=["port", "not-json", "bad-choice", "unknown-setting"],
)
def test_bad_arguments_exit_2_saying_why(
    tmp_path: Path, arguments: list[str], fragment: str
) -> None:
    result = _serve("--state-dir", str(tmp_path / "state"), "--machines", "null", *arguments)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr


def test_a_port_in_use_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        number = taken.getsockname()[1]
        result = _serve(
            "--state-dir", str(tmp_path / "state"), "--machines", "null", "--port", str(number)
        )
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{number}" in result.stderr


def test_a_state_of_another_format_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "state.json").write_text(json.dumps({"format_version": 99}))
    result = _serve("--state-dir", str(directory), "--machines", "null")
    assert result.returncode == 2 and "format version 99" in result.stderr


def test_serve_uses_the_qemu_driver_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default is real VMs; without the QEMU driver the reason names `--machines null`."""
    from tests.twin.services import machines

    monkeypatch.setattr(machines.importlib.util, "find_spec", lambda name: None)
    reason = machines.machines_unavailable("qemu")
    assert reason is not None and "--machines null" in reason
    assert machines.machines_unavailable("null") is None
    assert "unknown machine driver" in machines.machines_unavailable("vmware")
    assert "--machines" in SERVE.read_text() and 'default="qemu"' in SERVE.read_text()


def test_serve_refuses_to_run_without_flask() -> None:
    """Run by a Python without the test environment, serve says which Python to use."""
    result = subprocess.run(
        [
            "/usr/bin/python3",
            "-I",
            "-S",
            str(SERVE),
            "--state-dir",
            "/tmp/never-used",
            "--machines",
            "null",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin")},
    )
    assert result.returncode == 2
    assert "run serve with the test environment's Python" in result.stderr
