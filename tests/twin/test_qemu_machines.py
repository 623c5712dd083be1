"""The twin's servers are real VMs: key pair and user data through cloud-init, hot-plugged
volumes, floating IPs on loopback addresses, clean stops, and no qemu left behind.

Two guests boot once for the module (TCG is slow): A with the program's own first-boot
user data, B with a shell script. The tests then run against them in file order.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.access import PLATFORM_PORTS
from components.project_files import FIRST_BOOT_DIR, PROJECT_ROOT, first_boot_user_data
from tests.twin.services.qemu_machines import (
    SOCKETS_PARENT,
    SOCKETS_PREFIX,
    MachineError,
    QemuMachines,
    config_drive_files,
    loopback_address,
    machines_skip_reason,
    slirp_network,
)
from tests.vm.image import CLOUD, ensure_image

REPO = Path(__file__).resolve().parents[2]
PORTS = sorted(PLATFORM_PORTS.values())
# TCG on a shared 2-core machine: generous, but bounded.
SSH_BOUND_SECONDS = 900
CLOUD_INIT_BOUND_SECONDS = 900
GUEST_POLL_SECONDS = 120
MIB = 1024**2
GIB = 1024**3
NICENESS = 10


@dataclass
class Guest:
    """One booted test server and what it was booted with."""

    server_id: str
    address: str
    key: Path
    hostname: str
    mac: str
    fixed_ip: str
    booted_at: float
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def needs_machines() -> None:
    """Skip without qemu, root or the image tools; otherwise make sure the guest image exists."""
    reason = machines_skip_reason()
    if reason:
        pytest.skip(reason)
    ensure_image(kind=CLOUD)


def make_key(directory: Path, name: str) -> Path:
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


def free_loopback_address() -> str:
    """A 127.x.y.z address on which none of the platform's ports is taken."""
    for _ in range(50):
        address = (
            f"127.{random.randint(100, 250)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        )
        if all(_port_is_free(address, port) for port in PORTS):
            return address
    raise AssertionError("no free loopback address found in 50 tries")


def _port_is_free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def ssh(guest: Guest, command: str, *, key: Path | None = None, timeout: float = 120):
    return subprocess.run(
        [
            "ssh", "-T", "-i", str(key or guest.key),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
            f"cc@{guest.address}", command,
        ],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def run(guest: Guest, command: str, timeout: float = 300) -> str:
    """A command in the guest that must succeed; its stdout."""
    result = ssh(guest, command, timeout=timeout)
    assert result.returncode == 0, (
        f"{command!r} on {guest.server_id} exited {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def wait_for_ssh(machines: QemuMachines, guest: Guest) -> float:
    """Seconds from boot until cc gets in with the guest's key; fails early on a dead guest."""
    deadline = time.monotonic() + SSH_BOUND_SECONDS
    said = ""
    while time.monotonic() < deadline:
        state = machines.state(guest.server_id)
        if state == "error":
            pytest.fail(f"{guest.server_id} failed: {machines.failure(guest.server_id)}")
        if state == "running":
            try:
                result = ssh(guest, "true", timeout=60)
            except subprocess.TimeoutExpired:
                said = "ssh hung for 60s"
            else:
                if result.returncode == 0:
                    return time.monotonic() - guest.booted_at
                said = result.stderr
        time.sleep(3)
    console = machines.console_output(guest.server_id)[-3000:]
    pytest.fail(
        f"cc could not log in to {guest.address} within {SSH_BOUND_SECONDS}s: {said}\n"
        f"--- console ---\n{console}"
    )


def guest_poll(guest: Guest, condition: str) -> str:
    """Wait in the guest (bounded) until a shell condition holds; the condition's last output."""
    script = (
        f"for i in $(seq {GUEST_POLL_SECONDS}); do if {condition}; then exit 0; fi; sleep 1; done; "
        "exit 1"
    )
    return run(guest, script, timeout=GUEST_POLL_SECONDS + 60)


def banner(address: str, port: int = 22, timeout: float = 20) -> str:
    with socket.create_connection((address, port), timeout=timeout) as connection:
        connection.settimeout(timeout)
        return connection.recv(256).decode(errors="replace")


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses a process listens on (IPv4 and IPv6), from /proc."""
    inodes = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(descriptor)
        if with_target.startswith("socket:["):
            inodes.add(with_target[len("socket:[") : -1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            # /proc shows each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words if width == 32 else words[:4])
            found.add((str(address), int(hex_port, 16)))
    return found


def qemu_processes_of(state_dir: Path) -> list[int]:
    """Pids of live qemu processes whose command line names a file under `state_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        is_qemu = bool(command) and command[0].endswith(b"qemu-system-x86_64")
        if is_qemu and any(str(state_dir).encode() in part for part in command):
            pids.append(int(entry.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- no VM needed ---------------------------------------------------------------------------


def test_config_drive_carries_what_nova_delivers() -> None:
    """meta_data.json has the server id as uuid, the keys and the metadata; user data as given."""
    files = config_drive_files(
        "6f1c2f4e-0000-4000-8000-000000000001",
        user_data=b"#cloud-config\n{}\n",
        public_keys=["ssh-ed25519 AAAA student"],
        metadata={"role": "node"},
        hostname="node-persist-ab1234",
    )
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["uuid"] == "6f1c2f4e-0000-4000-8000-000000000001"
    assert list(meta["public_keys"].values()) == ["ssh-ed25519 AAAA student"]
    assert meta["keys"][0]["data"] == "ssh-ed25519 AAAA student"
    assert meta["meta"] == {"role": "node"}
    assert meta["hostname"] == "node-persist-ab1234"
    assert files["openstack/latest/user_data"] == b"#cloud-config\n{}\n"
    no_user_data = config_drive_files(
        "x", user_data=None, public_keys=[], metadata={}, hostname="h"
    )
    assert "openstack/latest/user_data" not in no_user_data


@pytest.mark.parametrize(
    ("fixed_ip", "expected"),
    [
        ("10.56.1.23", {"net": "10.56.1.0/24", "host": "10.56.1.1", "dns": "10.56.1.2",
                        "dhcpstart": "10.56.1.23"}),
        ("10.56.1.1", {"net": "10.56.1.0/24", "host": "10.56.1.2", "dns": "10.56.1.3",
                       "dhcpstart": "10.56.1.1"}),
    ],
)  # fmt: skip
def test_guest_gets_the_ports_fixed_ip(fixed_ip: str, expected: dict[str, str]) -> None:
    """The user-mode network hands out the port's own address, its gateway never colliding."""
    assert slirp_network(fixed_ip) == expected


@pytest.mark.parametrize("fixed_ip", ["10.56.1.0", "10.56.1.255", "127.0.0.5", "nonsense"])
def test_unusable_fixed_ip_is_refused(fixed_ip: str) -> None:
    """A fixed IP a guest cannot hold is refused, naming it."""
    with pytest.raises(MachineError, match=fixed_ip):
        slirp_network(fixed_ip)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.0.0.5", "0.0.0.0", "127.255.255.255", "::1", "localhost"],  # noqa: S104
)
def test_floating_ip_must_be_a_loopback_address_other_than_127_0_0_1(address: str) -> None:
    """Nothing forwarded listens outside 127.0.0.0/8, nor on the machine's own 127.0.0.1."""
    with pytest.raises(MachineError, match="not a loopback address"):
        loopback_address(address)
    assert loopback_address("127.20.0.5") == "127.20.0.5"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server_id": "../escape"}, "server id '../escape'"),
        ({"image": "CC-CentOS8"}, "image 'CC-CentOS8' has no guest image"),
        ({"mac": "fa:16:3e:zz:00:01"}, "MAC address 'fa:16:3e:zz:00:01'"),
        ({"fixed_ip": "10.56.1.300"}, "fixed IP '10.56.1.300'"),
    ],
)
def test_boot_refuses_bad_arguments_before_anything_starts(
    tmp_path: Path, change: dict[str, str], message: str
) -> None:
    """A bad server id, image, MAC or fixed IP is refused at once, and no machine is made."""
    arguments = {
        "server_id": "s1", "image": "CC-Ubuntu24.04", "user_data": None, "public_keys": [],
        "metadata": {}, "hostname": "h", "mac": "fa:16:3e:00:00:01", "fixed_ip": "10.56.1.5",
    } | change  # fmt: skip
    with QemuMachines(tmp_path) as machines:
        with pytest.raises(MachineError, match=re.escape(message)):
            machines.boot(arguments.pop("server_id"), **arguments)
        assert machines.server_ids() == []
        assert machines.state("s1") == "gone"


def test_operations_on_an_unknown_server_say_so(tmp_path: Path) -> None:
    """Attach, detach, stop or expose on a server that has no machine fails naming it."""
    volume = tmp_path / "volume.img"
    volume.write_bytes(b"")
    with QemuMachines(tmp_path / "state") as machines:
        for call in (
            lambda: machines.stop("nope"),
            lambda: machines.attach("nope", "vol", volume),
            lambda: machines.detach("nope", "vol"),
            lambda: machines.expose("nope", "127.20.0.5", [22]),
        ):
            with pytest.raises(MachineError, match="server nope has no machine"):
                call()


# --- real guests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("twin-machines")


@pytest.fixture(scope="module")
def events() -> list[tuple[float, str, str, str]]:
    return []


@pytest.fixture(scope="module")
def machines(work: Path, events: list) -> Iterator[QemuMachines]:
    """The driver under test, on a state dir of its own; every guest gone at the end."""
    reason = machines_skip_reason()
    if reason:
        pytest.skip(reason)
    driver = QemuMachines(
        work / "state",
        niceness=NICENESS,
        on_event=lambda *event: events.append((time.monotonic(), *event)),
    )
    started = time.monotonic()
    driver.prepare_images()  # built once per recipe, before any boot is timed
    driver.image_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    yield driver
    driver.shutdown_all()
    assert qemu_processes_of(work / "state") == []


@pytest.fixture(scope="module")
def guests(
    machines: QemuMachines, work: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Guest]]:
    """Guests A and B booting at once: A with the program's first-boot user data, B a script."""
    booted = {}
    for name, user_data in (
        ("a", first_boot_user_data().encode()),
        ("b", b"#!/bin/sh\necho 'user data ran' > /var/tmp/from-user-data\n"),
    ):
        address = free_loopback_address()
        server_id = str(uuid.uuid4())
        guest = Guest(
            server_id=server_id,
            address=address,
            key=make_key(work, f"key-{name}"),
            hostname=f"node-persist-{name}",
            mac=f"fa:16:3e:00:00:0{ord(name) - ord('a') + 1}",
            fixed_ip=f"10.56.1.{20 + ord(name) - ord('a')}",
            booted_at=time.monotonic(),
        )
        machines.boot(
            server_id,
            image="CC-Ubuntu24.04",
            user_data=user_data,
            public_keys=[guest.key.with_suffix(".pub").read_text().strip()],
            metadata={"chi-persist-netid": f"student-{name}"},
            hostname=guest.hostname,
            mac=guest.mac,
            fixed_ip=guest.fixed_ip,
        )
        machines.expose(server_id, address, PORTS)
        booted[name] = guest
    for guest in booted.values():
        guest.timings["boot to SSH"] = wait_for_ssh(machines, guest)
    yield booted
    lines = [
        f"twin VM timings (TCG, {os.cpu_count()} host cores, nice {NICENESS}, "
        f"load average {os.getloadavg()[0]:.1f}):",
        f"  guest image ready: {machines.image_seconds:.0f}s",  # type: ignore[attr-defined]
    ]
    for name, guest in booted.items():
        lines += [
            f"  guest {name}: {label}: {seconds:.1f}s" for label, seconds in guest.timings.items()
        ]
        lines += [f"  guest {name}: {note}" for note in guest.notes]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


@pytest.mark.vm
def test_key_pair_logs_in_as_cc_and_user_data_wrote_its_files(guests: dict[str, Guest]) -> None:
    """cc gets in with the server's key pair only; the program's write_files landed; sudo works."""
    a, b = guests["a"], guests["b"]
    script = "scripts/remote/install-docker.sh"
    written = run(a, f"sha256sum {FIRST_BOOT_DIR}/{script}").split()[0]
    assert written == hashlib.sha256((PROJECT_ROOT / script).read_bytes()).hexdigest()
    assert run(a, "sudo -n id -u").strip() == "0"
    assert run(a, "hostname").strip() == a.hostname
    refused = ssh(a, "true", key=b.key)
    assert refused.returncode != 0, "B's key opened A: keys are not per server"


@pytest.mark.vm
def test_cloud_init_finishes_and_the_first_boot_script_found_docker(
    guests: dict[str, Guest],
) -> None:
    """`cloud-init status --wait` says done; install-docker.sh ran and found docker present."""
    a = guests["a"]
    status = run(a, "cloud-init status --wait", timeout=CLOUD_INIT_BOUND_SECONDS)
    a.timings["boot to cloud-init done"] = time.monotonic() - a.booted_at
    assert "status: done" in status
    assert run(a, "sudo cloud-init query instance_id").strip() == a.server_id
    meta = json.loads(run(a, "sudo cloud-init query ds.meta_data.meta"))
    assert meta == {"chi-persist-netid": "student-a"}
    output = run(a, "sudo cat /var/log/cloud-init-output.log")
    assert "install-docker: docker and compose already installed: skipping installation" in output
    assert "install-docker: images of /opt/chi-persist/docker/docker-compose.yaml: built" in output
    assert "docker" in run(a, "id -nG cc").split()
    a.notes.append("systemd-analyze: " + run(a, "sudo systemd-analyze time || true").strip())
    a.notes.append(
        "cloud-init stages: "
        + run(a, "sudo cloud-init analyze show 2>/dev/null | grep -E '^(Finished|Total)' || true")
        .strip()
        .replace("\n", "; ")
    )


@pytest.mark.vm
def test_guest_holds_the_ports_address_and_mac(guests: dict[str, Guest]) -> None:
    """DHCP gives the guest the Neutron port's fixed IP; its NIC has the port's MAC."""
    for guest in guests.values():
        addresses = run(guest, "ip -o -4 addr show scope global")
        assert f"inet {guest.fixed_ip}/24" in addresses
        assert guest.mac in run(guest, "cat /sys/class/net/*/address")


@pytest.mark.vm
def test_two_guests_answer_on_port_22_at_once(guests: dict[str, Guest]) -> None:
    """Two floating IPs, two guests, both sshd answering at the same moment on port 22."""
    a, b = guests["a"], guests["b"]
    connections = [socket.create_connection((g.address, 22), timeout=20) for g in (a, b)]
    try:
        banners = [c.recv(256).decode(errors="replace") for c in connections]
    finally:
        for connection in connections:
            connection.close()
    assert all(text.startswith("SSH-2.0-OpenSSH") for text in banners), banners
    assert run(b, "cat /var/tmp/from-user-data").strip() == "user data ran"
    assert run(b, "hostname").strip() == b.hostname


@pytest.mark.vm
def test_nothing_listens_outside_loopback(machines: QemuMachines, guests: dict[str, Guest]) -> None:
    """Each qemu listens only on its floating IP's platform ports, all in 127.0.0.0/8."""
    for guest in guests.values():
        pid = machines.process_id(guest.server_id)
        assert pid is not None
        assert listening_sockets(pid) == {(guest.address, port) for port in PORTS}


@pytest.mark.vm
def test_unexpose_closes_the_floating_ip_and_expose_opens_it_again(
    machines: QemuMachines, guests: dict[str, Guest]
) -> None:
    """A floating IP taken away no longer reaches the guest; given back, sshd answers again."""
    b = guests["b"]
    machines.unexpose(b.server_id, b.address)
    with pytest.raises(ConnectionRefusedError):
        banner(b.address)
    machines.expose(b.server_id, b.address, PORTS)
    assert banner(b.address).startswith("SSH-2.0-")


@pytest.mark.vm
def test_floating_ip_of_another_server_is_refused(
    machines: QemuMachines, guests: dict[str, Guest]
) -> None:
    """One floating IP reaches one server: exposing A's address on B fails, naming both."""
    a, b = guests["a"], guests["b"]
    with pytest.raises(MachineError, match=f"{a.address} already reaches server {a.server_id}"):
        machines.expose(b.server_id, a.address, [22])


@pytest.fixture(scope="module")
def volume(work: Path) -> tuple[str, Path]:
    """A blank sparse 1 GiB volume file, as the twin's Cinder makes one."""
    volume_id = str(uuid.uuid4())
    path = work / "volumes" / f"{volume_id}.img"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        handle.truncate(GIB)
    return volume_id, path


def by_id(volume_id: str) -> str:
    return f"/dev/disk/by-id/virtio-{volume_id[:20]}"


@pytest.mark.vm
def test_attached_volume_appears_by_serial_and_holds_what_is_written(
    machines: QemuMachines, guests: dict[str, Guest], volume: tuple[str, Path]
) -> None:
    """Hot-plugged: the disk shows up by serial (not as vdb), and bytes written land in its file."""
    a = guests["a"]
    volume_id, path = volume
    started = time.monotonic()
    machines.attach(a.server_id, volume_id, path)
    guest_poll(a, f"test -b {by_id(volume_id)}")
    a.timings["attach until the guest sees the disk"] = time.monotonic() - started
    device = run(a, f"readlink -f {by_id(volume_id)}").strip()
    assert device not in ("/dev/vda", "/dev/vdb"), f"the volume is {device}, a fixed name's pick"
    assert run(a, f"sudo blockdev --getsize64 {device}").strip() == str(GIB)

    run(
        a,
        f"head -c {MIB} /dev/urandom > /tmp/marker && "
        f"sudo dd if=/tmp/marker of={device} bs={MIB} seek=1 oflag=direct conv=fsync status=none",
    )
    in_guest = run(a, f"sudo dd if={device} bs={MIB} skip=1 count=1 status=none | sha256sum")
    assert in_guest.split()[0] == run(a, "sha256sum /tmp/marker").split()[0]
    with open(path, "rb") as handle:
        handle.seek(MIB)
        assert hashlib.sha256(handle.read(MIB)).hexdigest() == in_guest.split()[0]


@pytest.mark.vm
def test_attaching_the_same_volume_twice_is_refused(
    machines: QemuMachines, guests: dict[str, Guest], volume: tuple[str, Path]
) -> None:
    """A volume already attached to a server cannot be attached again (there or elsewhere)."""
    volume_id, path = volume
    with pytest.raises(MachineError, match="already attached"):
        machines.attach(guests["a"].server_id, volume_id, path)
    # qemu's image locking keeps a second guest off the same file.
    with pytest.raises(MachineError, match="lock"):
        machines.attach(guests["b"].server_id, volume_id, path)


@pytest.mark.vm
def test_resize_grows_the_disk_the_guest_sees_and_never_shrinks_it(
    machines: QemuMachines, guests: dict[str, Guest], volume: tuple[str, Path]
) -> None:
    """Online extend, whether the volume's file was grown first (as Cinder's extend does) or
    not: the guest sees the new size without a reboot; a smaller size is refused."""
    a = guests["a"]
    volume_id, path = volume
    device = run(a, f"readlink -f {by_id(volume_id)}").strip()
    with open(path, "r+b") as handle:
        handle.truncate(2 * GIB)
    machines.resize_disk(a.server_id, volume_id, 2 * GIB)
    guest_poll(a, f'[ "$(sudo blockdev --getsize64 {device})" = {2 * GIB} ]')
    machines.resize_disk(a.server_id, volume_id, 3 * GIB)
    guest_poll(a, f'[ "$(sudo blockdev --getsize64 {device})" = {3 * GIB} ]')
    assert path.stat().st_size == 3 * GIB
    with pytest.raises(MachineError, match="volumes only grow"):
        machines.resize_disk(a.server_id, volume_id, 2 * GIB)
    assert run(a, f"sudo blockdev --getsize64 {device}").strip() == str(3 * GIB)


@pytest.mark.vm
def test_detach_waits_for_the_guest_and_removes_the_disk(
    machines: QemuMachines, guests: dict[str, Guest], volume: tuple[str, Path]
) -> None:
    """An unplug the guest has not finished in time is an error and the disk stays attached;
    a detach then completes, the disk leaves the guest, and its data stays in the file."""
    a = guests["a"]
    volume_id, path = volume
    impatient = machines.detach_timeout
    machines.detach_timeout = 0.0
    try:
        with pytest.raises(MachineError, match=f"did not release volume {volume_id}"):
            machines.detach(a.server_id, volume_id)
    finally:
        machines.detach_timeout = impatient
    started = time.monotonic()
    machines.detach(a.server_id, volume_id)
    a.timings["detach"] = time.monotonic() - started
    guest_poll(a, f"! test -e {by_id(volume_id)}")
    with pytest.raises(MachineError, match="not attached"):
        machines.detach(a.server_id, volume_id)
    with open(path, "rb") as handle:
        handle.seek(MIB)
        assert any(handle.read(MIB)), "the bytes written through the guest are gone"


@pytest.mark.vm
def test_stop_shuts_the_guest_down_cleanly(
    machines: QemuMachines, guests: dict[str, Guest], events: list
) -> None:
    """os-stop: the ACPI power button turns the guest off well within the bound."""
    a = guests["a"]
    pid = machines.process_id(a.server_id)
    assert pid is not None
    started = time.monotonic()
    machines.stop(a.server_id)
    a.timings["stop (ACPI power-down)"] = time.monotonic() - started
    assert machines.state(a.server_id) == "stopped"
    assert not pid_alive(pid)
    stopped = [detail for _, server, action, detail in events
               if server == a.server_id and action == "stopped"]  # fmt: skip
    assert stopped and stopped[-1].startswith("guest powered off after"), stopped


@pytest.mark.vm
def test_delete_ends_the_guest_and_leaves_its_volume_alone(
    machines: QemuMachines, guests: dict[str, Guest], volume: tuple[str, Path], work: Path
) -> None:
    """Delete frees the server's files; a volume attached to it keeps every byte."""
    a = guests["a"]
    volume_id, path = volume
    machines.attach(a.server_id, volume_id, path)  # recorded on the stopped server
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    machines.delete(a.server_id)
    assert machines.state(a.server_id) == "gone"
    assert not (work / "state" / "machines" / a.server_id).exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.vm
def test_a_new_driver_finds_the_servers_stopped_and_starts_them(
    machines: QemuMachines, guests: dict[str, Guest], work: Path
) -> None:
    """After the service restarts, its servers are there, off; os-start powers one on again
    with its floating IP forwarded."""
    b = guests["b"]
    machines.shutdown_all()
    assert qemu_processes_of(work / "state") == []
    assert machines.state(b.server_id) == "stopped"

    with QemuMachines(work / "state", niceness=NICENESS) as again:
        assert again.server_ids() == [b.server_id]
        assert again.state(b.server_id) == "stopped"
        again.start(b.server_id)
        deadline = time.monotonic() + 120
        while again.state(b.server_id) == "building" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert again.state(b.server_id) == "running", again.failure(b.server_id)
        pid = again.process_id(b.server_id)
        assert pid is not None
        assert listening_sockets(pid) == {(b.address, port) for port in PORTS}
    assert qemu_processes_of(work / "state") == []


@pytest.mark.vm
def test_guest_started_from_a_short_lived_thread_outlives_it(tmp_path: Path) -> None:
    """A boot called from a request thread that ends at once leaves qemu running."""
    needs_machines()
    with QemuMachines(tmp_path, niceness=NICENESS) as machines:
        caller = threading.Thread(
            target=machines.boot,
            args=("short-lived",),
            kwargs={"image": "CC-Ubuntu24.04", "user_data": None, "public_keys": [],
                    "metadata": {}, "hostname": "h", "mac": "fa:16:3e:00:00:09",
                    "fixed_ip": "10.56.1.9"},
        )  # fmt: skip
        caller.start()
        caller.join()
        deadline = time.monotonic() + 120
        while machines.state("short-lived") == "building" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert machines.state("short-lived") == "running", machines.failure("short-lived")
        pid = machines.process_id("short-lived")
        assert pid is not None
        time.sleep(3)
        assert pid_alive(pid) and machines.state("short-lived") == "running"
        machines.delete("short-lived")
        assert not pid_alive(pid)
        assert machines.state("short-lived") == "gone"


DRIVER_PROCESS = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests.twin.services.qemu_machines import QemuMachines
    machines = QemuMachines(Path(sys.argv[1]))
    machines.boot("orphan", image="CC-Ubuntu24.04", user_data=None, public_keys=[],
                  metadata={}, hostname="h", mac="fa:16:3e:00:00:0a", fixed_ip="10.56.1.10")
    while machines.state("orphan") == "building":
        time.sleep(0.2)
    print(machines.state("orphan"), machines.process_id("orphan"), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.vm
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_guest_dies_with_the_process_that_runs_the_driver(tmp_path: Path, how: int) -> None:
    """Killed by SIGKILL or ended by SIGTERM without any cleanup, the driver leaves no qemu;
    the next driver removes the socket directory it left."""
    needs_machines()
    owner = subprocess.Popen(
        [sys.executable, "-c", DRIVER_PROCESS, str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 180)
        assert ready, "the driver's process did not report its guest within 180s"
        line = owner.stdout.readline().split()
        assert line and line[0] == "running", line
        pid = int(line[1])
        assert pid_alive(pid)
        owner.send_signal(how)
        owner.wait(timeout=30)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not pid_alive(pid), f"qemu {pid} outlived its driver's process"
    finally:
        owner.kill()
        owner.wait()
    assert qemu_processes_of(tmp_path) == []
    left = list(SOCKETS_PARENT.glob(f"{SOCKETS_PREFIX}{owner.pid}-*"))
    assert left, "the killed driver's socket directory was expected to stay behind"
    with QemuMachines(tmp_path / "next"):
        assert not any(path.exists() for path in left)
