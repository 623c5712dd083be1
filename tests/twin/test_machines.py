"""The machine driver interface's null implementation, and how `serve` picks a driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.twin.services.machines import MachineError, NullMachines, create_machines

BOOT = {
    "image": "CC-Ubuntu24.04",
    "user_data": b"#cloud-config\n",
    "public_keys": ["ssh-ed25519 AAAA test"],
    "metadata": {"chi-persist": "node"},
    "hostname": "node",
    "mac": "fa:16:3e:00:00:01",
    "fixed_ip": "10.56.0.5",
}


def test_null_machine_states_through_a_life(tmp_path: Path) -> None:
    """building, running, stopped, running again, gone; each action heard as an event."""
    heard: list[tuple[str, str]] = []
    machines = NullMachines(
        tmp_path, boot_seconds=0.0, on_event=lambda sid, action, _: heard.append((sid, action))
    )
    assert machines.state("s1") == "gone"
    machines.boot("s1", **BOOT)
    assert machines.state("s1") == "running"
    disk = tmp_path / "v.img"
    disk.write_bytes(b"\0" * 1024)
    machines.attach("s1", "v" * 36, disk)
    with pytest.raises(MachineError, match="already attached"):
        machines.attach("s1", "v" * 36, disk)
    machines.resize_disk("s1", "v" * 36, 4096)
    assert disk.stat().st_size == 4096
    machines.expose("s1", "127.1.2.3", [22])
    machines.stop("s1")
    assert machines.state("s1") == "stopped"
    machines.start("s1")
    assert machines.state("s1") == "running"
    machines.detach("s1", "v" * 36)
    machines.delete("s1")
    assert machines.state("s1") == "gone"
    assert [action for _, action in heard] == [
        "boot", "attached", "resized", "exposed", "stopped", "start", "detached", "deleted",
    ]  # fmt: skip


def test_null_machines_refuse_what_a_real_driver_refuses(tmp_path: Path) -> None:
    machines = NullMachines(tmp_path, boot_seconds=0.0)
    with pytest.raises(MachineError, match="has no guest image"):
        machines.boot("s1", **{**BOOT, "image": "CC-Ubuntu22.04"})
    machines.boot("s1", **BOOT)
    machines.boot("s2", **BOOT)
    machines.expose("s1", "127.1.2.3", [22])
    with pytest.raises(MachineError, match="already reaches server s1"):
        machines.expose("s2", "127.1.2.3", [22])
    with pytest.raises(MachineError, match="not attached"):
        machines.detach("s1", "nothing")


def test_null_machines_remember_their_servers_stopped_after_a_restart(tmp_path: Path) -> None:
    NullMachines(tmp_path, boot_seconds=0.0).boot("s1", **BOOT)
    again = NullMachines(tmp_path)
    assert again.state("s1") == "stopped"
    again.start("s1")
    assert again.state("s1") in ("building", "running")


def test_injected_failures_and_delays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHI_TWIN_NULL_MACHINES", '{"failures": {"stop": 1}}')
    machines = create_machines("null", tmp_path, lambda *event: None)
    machines.boot("s1", **BOOT)
    with pytest.raises(MachineError, match="injected"):
        machines.stop("s1")
    machines.stop("s1")
    assert machines.state("s1") == "stopped"


def test_unknown_driver_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MachineError, match="unknown machine driver 'vmware'"):
        create_machines("vmware", tmp_path, lambda *event: None)
