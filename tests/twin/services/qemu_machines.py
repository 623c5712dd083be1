"""The stand-in KVM@TACC's servers as real virtual machines: one qemu process per server.

`QemuMachines` implements the twin's machine driver on the machinery of tests/vm:
a server boots the cloud kind of guest image (tests/vm/image.py) through its own
copy-on-write overlay, under TCG unless CHI_PERSIST_VM_ACCEL=kvm. What Nova would
hand the guest comes on a config drive (ISO 9660, label config-2: meta_data.json
with the server id as uuid, the key pair, the metadata, and the user data), which
Debian's cloud-init reads at first boot: it makes `cc` with password-less sudo,
authorizes the key pair and runs the user data. Every guest has one small blank
disk besides its root, so a volume is never the disk a fixed name would pick.

Networking is qemu's user mode (slirp), restricted so the guest reaches nothing
outside: the guest gets the port's fixed IP and MAC by DHCP, and a floating IP
is a loopback address (127.0.0.0/8) whose ports are forwarded to the guest's
while it is exposed. The one thing outside a guest reaches is the twin's own
address (`reach_host`), at the URL its catalog gives clients (127.0.0.1:PORT), as
a real server reaches a site's public endpoints (CHI@TACC's object store from a
KVM@TACC server): qemu forwards an address of the guest's network to it (guestfwd,
one tests/twin/services/host_forward.py per connection), and the config drive's vendor data
makes the guest's own 127.0.0.1:PORT lead there (systemd-socket-proxyd).
Volumes are hot-plugged as virtio-blk disks whose serial is
the first 20 characters of the volume id; detaching waits until the guest has
released the disk. Each qemu is driven through its QMP socket.

Bookkeeping lives in `<state dir>/machines/<server id>/` (machine.json, the root
overlay, the config drive, the blank disk, the console and qemu logs), so a new
driver on the same state dir knows every server; guests do not outlive the
driver's process (the kernel kills qemu when it ends, even by SIGKILL), so after a
restart every server is stopped until `start` is called. QMP sockets live in a
short private directory under /tmp (a Unix socket path is limited to 107 bytes),
named with the driver's pid so that a later driver removes what a killed one left.

States: "building" from `boot` until qemu runs (seconds, or minutes when the
guest image must be built first); "running" while qemu runs (the guest's own boot
then takes minutes under TCG before SSH answers: measured on a busy 2-core
machine with two guests booting at once, 4.5-6.5 minutes to SSH and 1.5-3 more
until cloud-init is done); "stopped" after `stop`, after the guest powered
itself off, or after a restart of the driver; "error" when the boot failed or
qemu died on its own (see `failure`); "gone" after `delete`, or for an id never
booted.

`boot`, `start`, `expose`, `unexpose`, `attach` and `resize_disk` return within
seconds; `stop` waits for the guest to power off (up to `stop_timeout`, 60 s as
Nova, then cuts the power); `detach` waits for the guest to release the disk (up
to `detach_timeout`); `delete` and `shutdown_all` within seconds. Failures raise
`MachineError`, whose message names the server and the cause.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from queue import Queue
from typing import Any

from tests.vm.image import CLOUD, GuestImage, ensure_image, image_skip_reason

LOG = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
NEEDED_TOOLS = (QEMU, "qemu-img", "genisoimage", "setpriv")
ACCELERATOR_ENV = "CHI_PERSIST_VM_ACCEL"
# Glance image names the driver boots, and the guest image each stands for.
DEFAULT_IMAGES: Mapping[str, str] = {"CC-Ubuntu24.04": CLOUD}
MEMORY_MIB = 2048
CPUS = 2
EPHEMERAL_DISK_BYTES = 128 * 1024**2
# Nova's shutdown_timeout and shutdown_retry_interval: an ACPI power-button press
# repeated every 10 s for up to 60 s, then the power is cut.
STOP_TIMEOUT_SECONDS = 60.0
POWERDOWN_RETRY_SECONDS = 10.0
# A guest under TCG on a busy machine can take a while to run its ACPI eject
# handler; the unplug request is repeated meanwhile, as libvirt's callers do.
DETACH_TIMEOUT_SECONDS = 90.0
UNPLUG_RETRY_SECONDS = 10.0
QMP_READY_SECONDS = 60.0
QMP_COMMAND_SECONDS = 30.0
KILL_GRACE_SECONDS = 15.0
NETDEV = "net0"
SERIAL_LENGTH = 20
SERVER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
RECORD = "machine.json"
SOCKETS_PARENT = Path("/tmp")
SOCKETS_PREFIX = "chi-twin-qmp-"
LOG_TAIL_LINES = 30
HOST_FORWARD = Path(__file__).resolve().parent / "host_forward.py"

EventSink = Callable[[str, str, str], None]


class MachineError(RuntimeError):
    """A machine operation could not be done; the message says which server, what and why."""


class QmpError(MachineError):
    """qemu refused a QMP command."""

    def __init__(self, command: str, error: Mapping[str, Any]) -> None:
        self.error_class = str(error.get("class", ""))
        self.description = str(error.get("desc", ""))
        super().__init__(f"qemu refused {command}: {self.error_class}: {self.description}")


def machines_skip_reason() -> str | None:
    """Why guests cannot be booted here, or None when they can."""
    reason = image_skip_reason()
    if reason:
        return reason
    missing = [tool for tool in NEEDED_TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"missing tools to boot the twin's VMs: {', '.join(missing)} (tests/run installs them)"
        )
    return None


def loopback_address(address: str) -> str:
    """The address itself when it is a usable floating IP: in 127.0.0.0/8, not 127.0.0.1."""
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        parsed = None
    if (
        parsed is None
        or parsed not in LOOPBACK
        or parsed in (LOOPBACK.network_address, LOOPBACK.broadcast_address)
        or str(parsed) == "127.0.0.1"
    ):
        raise MachineError(
            f"floating IP {address!r} is not a loopback address other than 127.0.0.1; "
            "the twin's floating IPs are 127.x.y.z, e.g. 127.20.0.5"
        )
    return str(parsed)


def slirp_network(fixed_ip: str) -> dict[str, str]:
    """qemu user-mode network options that hand the guest `fixed_ip` by DHCP, in its /24."""
    try:
        address = ipaddress.IPv4Address(fixed_ip)
    except ValueError:
        raise MachineError(f"fixed IP {fixed_ip!r} is not an IPv4 address") from None
    network = ipaddress.IPv4Network(f"{address}/24", strict=False)
    if address in (network.network_address, network.broadcast_address) or address.is_loopback:
        raise MachineError(f"fixed IP {fixed_ip!r} cannot be a host's address in {network}")
    others = [host for host in network.hosts() if host != address]
    return {
        "net": str(network),
        "host": str(others[0]),
        "dns": str(others[1]),
        "dhcpstart": str(address),
    }


def host_route_address(fixed_ip: str) -> str:
    """The guest network's address whose ports qemu forwards to the host's loopback."""
    network = ipaddress.IPv4Network(f"{fixed_ip}/24", strict=False)
    return str([host for host in network.hosts() if str(host) != fixed_ip][2])


def host_route_vendor_data(ports: list[int], route_address: str) -> dict[str, Any]:
    """Vendor data (what an operator adds to every server's first boot, Nova's
    vendor_data.json, {"cloud-init": ...}) that makes the guest's 127.0.0.1:PORT reach the
    twin through `route_address`:PORT, with a socket-activated systemd-socket-proxyd."""
    lines = ["#!/bin/sh", "# The twin's address, as its catalog gives it, reached from the guest.",
             "set -eu"]  # fmt: skip
    for port in ports:
        unit = f"/etc/systemd/system/twin-route-{port}"
        lines += [
            f"printf '[Socket]\\nListenStream=127.0.0.1:{port}\\n[Install]\\n"
            f"WantedBy=sockets.target\\n' > {unit}.socket",
            f"printf '[Service]\\nExecStart=/usr/lib/systemd/systemd-socket-proxyd "
            f"{route_address}:{port}\\n' > {unit}.service",
        ]
    lines += ["systemctl daemon-reload"]
    lines += [f"systemctl enable --now twin-route-{port}.socket" for port in ports]
    return {"cloud-init": "\n".join(lines) + "\n"}


def config_drive_files(
    server_id: str,
    *,
    user_data: bytes | None,
    public_keys: list[str],
    metadata: Mapping[str, str],
    hostname: str,
    vendor_data: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """The files of Nova's config drive for one server, by path inside the drive.

    The layout and the fields of meta_data.json are Nova's (nova/api/metadata/base.py);
    cloud-init's ConfigDrive source reads `openstack/latest/`.
    """
    names = [f"key-{index}" for index in range(len(public_keys))]
    meta_data = {
        "uuid": server_id,
        "name": hostname,
        "hostname": hostname,
        "launch_index": 0,
        "availability_zone": "nova",
        "meta": dict(metadata),
        "public_keys": dict(zip(names, public_keys, strict=True)),
        "keys": [
            {"name": name, "type": "ssh", "data": key}
            for name, key in zip(names, public_keys, strict=True)
        ],
        "random_seed": base64.b64encode(os.urandom(512)).decode(),
        "devices": [],
    }
    files = {
        "openstack/latest/meta_data.json": json.dumps(meta_data, indent=1).encode(),
        "openstack/latest/vendor_data.json": json.dumps(vendor_data or {}).encode(),
        "openstack/latest/vendor_data2.json": b"{}",
    }
    if user_data is not None:
        files["openstack/latest/user_data"] = user_data
    return files


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])


def _qemu_id(prefix: str, volume_id: str) -> str:
    """A QMP node or device id for a volume: short, and only characters qemu accepts."""
    return f"{prefix}-{hashlib.sha256(volume_id.encode()).hexdigest()[:16]}"


class _Qmp:
    """One QMP session on a qemu's control socket: commands, and the events seen meanwhile."""

    def __init__(self, path: Path, timeout: float = QMP_COMMAND_SECONDS) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            self._socket.settimeout(timeout)
            self._socket.connect(str(path))
            greeting = self._read(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise MachineError(f"{path} did not greet as QMP: {greeting!r}")
            self.execute("qmp_capabilities", timeout=timeout)
        except BaseException:
            self._socket.close()
            raise

    def __enter__(self) -> _Qmp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._socket.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("qemu sent nothing on QMP in time")
            self._socket.settimeout(remaining)
            chunk = self._socket.recv(65536)
            if not chunk:
                raise ConnectionError("qemu closed its QMP socket (did it exit?)")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def execute(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        timeout: float = QMP_COMMAND_SECONDS,
    ) -> Any:
        self._next_id += 1
        request: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        self._socket.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if "event" in message:
                self.events.append(message)
            elif message.get("id") == self._next_id:
                if "error" in message:
                    raise QmpError(command, message["error"])
                return message.get("return")

    def human(self, command_line: str) -> str:
        """A human monitor command; qemu answers with text, empty when it succeeded."""
        answer = self.execute("human-monitor-command", {"command-line": command_line})
        return str(answer or "").strip()

    def wait_for_event(
        self, matches: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """The first event (already seen or arriving within `timeout`) that matches, or None."""
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if matches(event):
                    return self.events.pop(index)
            try:
                message = self._read(deadline)
            except TimeoutError:
                return None
            if "event" in message:
                self.events.append(message)


class _Spawner:
    """Starts every qemu from one thread that lives as long as the driver.

    The kernel's parent-death signal (set by `setpriv --pdeathsig`) fires when the
    *thread* that forked the child ends, not the process: a qemu forked from a
    short-lived request thread would be killed when that request ends.
    """

    def __init__(self) -> None:
        # (command line, log file, working directory, where the started process goes)
        self._requests: Queue[tuple[list[str], Path, Path, Future[subprocess.Popen[bytes]]] | None]
        self._requests = Queue()  # None ends the thread
        self._thread = threading.Thread(target=self._serve, name="qemu-spawner", daemon=True)
        self._thread.start()

    def spawn(self, argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        if not self._thread.is_alive():
            raise MachineError("the machine driver is shut down: no new guest can start")
        result: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((argv, log, cwd, result))
        return result.result(timeout=60)

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            argv, log, cwd, result = request
            try:
                with open(log, "ab") as handle:
                    process = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        cwd=cwd,
                        # Not in the driver's process group: a Ctrl-C meant for the service
                        # must not kill guests before shutdown_all has ended them in order.
                        start_new_session=True,
                    )
            except BaseException as error:  # noqa: BLE001 (handed to the caller)
                result.set_exception(error)
            else:
                result.set_result(process)

    def close(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)


@dataclass
class _Machine:
    """One server's bookkeeping (persisted in machine.json) and its live qemu, if any."""

    directory: Path
    record: dict[str, Any]
    lock: threading.RLock = field(default_factory=threading.RLock)
    process: subprocess.Popen[bytes] | None = None
    starting: threading.Thread | None = None
    cancelled: bool = False
    expected_exit: bool = False
    failure: str | None = None

    @property
    def server_id(self) -> str:
        return str(self.record["server_id"])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def overlay(self) -> Path:
        return self.directory / "root.qcow2"

    @property
    def config_drive(self) -> Path:
        return self.directory / "config-drive.iso"

    @property
    def ephemeral_disk(self) -> Path:
        return self.directory / "ephemeral.img"

    @property
    def serial_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    def save(self) -> None:
        """Write machine.json atomically: a crash leaves the old or the new record, whole."""
        target = self.directory / RECORD
        staging = target.with_name(f".{RECORD}.{os.getpid()}.{threading.get_ident()}")
        staging.write_text(json.dumps(self.record, indent=2, sort_keys=True) + "\n")
        os.replace(staging, target)


class QemuMachines:
    """The twin's machine driver: every server a qemu guest, booted from the cloud guest image.

    `images` maps the Glance image names the driver boots to guest image kinds;
    `on_event(server_id, action, detail)` hears every VM action as it happens (it
    must return quickly and must not call back into the driver).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        images: Mapping[str, str] = DEFAULT_IMAGES,
        memory_mib: int = MEMORY_MIB,
        cpus: int = CPUS,
        niceness: int = 0,
        stop_timeout: float = STOP_TIMEOUT_SECONDS,
        detach_timeout: float = DETACH_TIMEOUT_SECONDS,
        on_event: EventSink | None = None,
    ) -> None:
        self.machines_dir = Path(state_dir).resolve() / "machines"
        self.machines_dir.mkdir(parents=True, exist_ok=True)
        self.images = dict(images)
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.niceness = niceness
        self.stop_timeout = stop_timeout
        self.detach_timeout = detach_timeout
        self._on_event = on_event
        self.accelerator = self._accelerator()
        self._lock = threading.Lock()
        self._closed = False
        self._machines: dict[str, _Machine] = {}
        self._sockets = _socket_directory()
        self._spawner = _Spawner()
        self.host_ports: list[int] = []
        self._load()

    def reach_host(self, ports: list[int]) -> None:
        """Guests booted from now on reach these ports of the host's 127.0.0.1 at their own
        127.0.0.1 (the twin's API, whose catalog gives clients that address)."""
        self.host_ports = sorted(set(ports))

    def __enter__(self) -> QemuMachines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown_all()

    # --- the MachineDriver interface -------------------------------------------------------

    def boot(
        self,
        server_id: str,
        *,
        image: str,
        user_data: bytes | None,
        public_keys: list[str],
        metadata: dict[str, str],
        hostname: str,
        mac: str,
        fixed_ip: str,
    ) -> None:
        """Start building the guest and return at once; `state` says when qemu runs."""
        self._check_server_id(server_id)
        kind = self.images.get(image)
        if kind is None:
            known = ", ".join(sorted(self.images)) or "none"
            raise MachineError(
                f"server {server_id}: image {image!r} has no guest image here; "
                f"the twin boots {known}"
            )
        if not MAC_PATTERN.match(mac):
            raise MachineError(f"server {server_id}: MAC address {mac!r} is not aa:bb:cc:dd:ee:ff")
        slirp_network(fixed_ip)
        with self._lock:
            self._check_open()
            if server_id in self._machines:
                raise MachineError(f"server {server_id} already has a machine; delete it first")
            directory = self.machines_dir / server_id
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir()
            machine = _Machine(
                directory,
                {
                    "server_id": server_id,
                    "image": image,
                    "kind": kind,
                    "hostname": hostname,
                    "mac": mac,
                    "fixed_ip": fixed_ip,
                    "created_at": _now(),
                    "booted": False,
                    "attachments": {},
                    "exposed": {},
                },
            )
            machine.save()
            self._machines[server_id] = machine
            seed = {
                "user_data": user_data,
                "public_keys": list(public_keys),
                "metadata": dict(metadata),
                "hostname": hostname,
            }
            if self.host_ports:
                machine.record["host_ports"] = list(self.host_ports)
                seed["vendor_data"] = host_route_vendor_data(
                    self.host_ports, host_route_address(fixed_ip)
                )
                machine.save()
            machine.starting = threading.Thread(
                target=self._start_guest,
                args=(machine, seed),
                name=f"boot-{server_id}",
                daemon=True,
            )
            self._event(server_id, "boot", f"image {image} ({kind} guest), {self.accelerator}")
            machine.starting.start()

    def state(self, server_id: str) -> str:
        """building | running | stopped | error | gone (see the module's docstring)."""
        machine = self._machines.get(server_id)
        if machine is None:
            return "gone"
        if machine.failure is not None:
            return "error"
        if machine.starting is not None and machine.starting.is_alive():
            return "building"
        if machine.running:
            return "running"
        process = machine.process
        if (
            process is not None
            and process.returncode not in (0, None)
            and not machine.expected_exit
        ):
            machine.failure = (
                f"qemu exited on its own with status {process.returncode}:\n"
                f"{_tail(machine.qemu_log)}"
            )
            self._event(server_id, "error", machine.failure)
            return "error"
        return "stopped"

    def stop(self, server_id: str) -> None:
        """Press the ACPI power button until the guest is off (bounded), then cut the power."""
        machine = self._machine(server_id)
        with machine.lock:
            self._refuse_while_building(machine, "stop")
            if not machine.running:
                return
            machine.expected_exit = True
            self._event(server_id, "powerdown", "ACPI power button pressed")
            started = time.monotonic()
            deadline = started + self.stop_timeout
            while machine.running and time.monotonic() < deadline:
                with (
                    contextlib.suppress(OSError, MachineError, TimeoutError),
                    self._qmp(machine) as qmp,
                ):
                    qmp.execute("system_powerdown")
                self._wait_exit(machine, min(POWERDOWN_RETRY_SECONDS, deadline - time.monotonic()))
            if not machine.running:
                self._event(
                    server_id,
                    "stopped",
                    f"guest powered off after {time.monotonic() - started:.0f}s",
                )
                return
            self._end_process(machine)
            self._event(
                server_id,
                "stopped",
                f"guest still on after {self.stop_timeout:.0f}s of ACPI shutdown: power cut",
            )

    def delete(self, server_id: str) -> None:
        """End the guest at once (no clean shutdown, as Nova's delete) and free everything."""
        machine = self._machine(server_id)
        machine.cancelled = True
        with machine.lock:
            machine.expected_exit = True
            self._end_process(machine)
            self._remove_socket(machine)
            self._remove_directory(machine)
            with self._lock:
                self._machines.pop(server_id, None)
        self._event(server_id, "deleted", "guest ended, its disks and logs removed")

    def attach(self, server_id: str, volume_id: str, disk: Path) -> None:
        """Hot-plug `disk` as a virtio-blk disk with serial volume_id[:20]."""
        disk = Path(disk).resolve()
        if not disk.is_file():
            raise MachineError(
                f"server {server_id}: volume {volume_id}'s disk {disk} is not a file"
            )
        if disk.is_relative_to(self.machines_dir):
            raise MachineError(
                f"server {server_id}: volume disk {disk} lies among the machines' own files, "
                "which a server's delete removes; keep volumes elsewhere"
            )
        machine = self._machine(server_id)
        with machine.lock:
            self._refuse_while_building(machine, "attach a volume to")
            if volume_id in machine.record["attachments"]:
                raise MachineError(f"volume {volume_id} is already attached to server {server_id}")
            attachment = {
                "disk": str(disk),
                "node": _qemu_id("vol", volume_id),
                "device": _qemu_id("disk", volume_id),
                "serial": volume_id[:SERIAL_LENGTH],
            }
            if machine.running:
                with self._qmp(machine) as qmp:
                    self._plug(qmp, attachment)
                detail = f"hot-plugged {disk.name} as virtio serial {attachment['serial']}"
            else:
                detail = f"{disk.name} recorded: plugged in at the next start"
            machine.record["attachments"][volume_id] = attachment
            machine.save()
        self._event(server_id, "attached", f"volume {volume_id}: {detail}")

    def detach(self, server_id: str, volume_id: str) -> None:
        """Unplug a volume's disk; fails (the disk stays) if the guest does not release it."""
        machine = self._machine(server_id)
        with machine.lock:
            self._refuse_while_building(machine, "detach a volume from")
            attachment = machine.record["attachments"].get(volume_id)
            if attachment is None:
                raise MachineError(f"volume {volume_id} is not attached to server {server_id}")
            if machine.running:
                started = time.monotonic()
                with self._qmp(machine) as qmp:
                    self._unplug(machine, qmp, volume_id, attachment)
                detail = f"unplugged; the guest released it in {time.monotonic() - started:.1f}s"
            else:
                detail = "removed from the stopped server"
            del machine.record["attachments"][volume_id]
            machine.save()
        self._event(server_id, "detached", f"volume {volume_id}: {detail}")

    def resize_disk(self, server_id: str, volume_id: str, size_bytes: int) -> None:
        """Grow an attached volume's disk online; shrinking is refused (it would cut data off)."""
        machine = self._machine(server_id)
        with machine.lock:
            attachment = machine.record["attachments"].get(volume_id)
            if attachment is None:
                raise MachineError(f"volume {volume_id} is not attached to server {server_id}")
            if size_bytes <= 0 or size_bytes % 512:
                raise MachineError(
                    f"volume {volume_id}: new size {size_bytes} is not a positive multiple of 512"
                )
            on_disk = Path(attachment["disk"]).stat().st_size
            if size_bytes < on_disk:
                raise MachineError(
                    f"volume {volume_id}: new size {size_bytes} is smaller than its disk "
                    f"({on_disk} bytes); volumes only grow"
                )
            if machine.running:
                with self._qmp(machine) as qmp:
                    seen = self._node_size(qmp, attachment["node"])
                    if size_bytes < seen:
                        raise MachineError(
                            f"volume {volume_id}: new size {size_bytes} is smaller than the "
                            f"guest's disk ({seen} bytes); volumes only grow"
                        )
                    qmp.execute(
                        "block_resize", {"node-name": attachment["node"], "size": size_bytes}
                    )
                detail = f"guest's disk grown online to {size_bytes} bytes"
            else:
                with open(attachment["disk"], "r+b") as handle:
                    handle.truncate(size_bytes)
                detail = f"disk grown to {size_bytes} bytes while the server is off"
        self._event(server_id, "resized", f"volume {volume_id}: {detail}")

    def expose(self, server_id: str, address: str, ports: list[int]) -> None:
        """Forward each `address:port` (a loopback address) to the same port of the guest."""
        address = loopback_address(address)
        wanted = sorted(set(ports))
        bad = [port for port in wanted if not 0 < int(port) < 65536]
        if bad or not wanted:
            raise MachineError(f"server {server_id}: ports {ports!r} are not TCP ports (1-65535)")
        with self._lock:
            for other in self._machines.values():
                if other.server_id != server_id and address in other.record["exposed"]:
                    raise MachineError(
                        f"floating IP {address} already reaches server {other.server_id}; "
                        f"unexpose it there before exposing it on server {server_id}"
                    )
        machine = self._machine(server_id)
        with machine.lock:
            already = set(machine.record["exposed"].get(address, []))
            new = [port for port in wanted if port not in already]
            if machine.running and new:
                with self._qmp(machine) as qmp:
                    self._forward(machine, qmp, address, new)
            machine.record["exposed"][address] = sorted(already | set(new))
            machine.save()
        self._event(server_id, "exposed", f"{address} ports {', '.join(map(str, wanted))}")

    def unexpose(self, server_id: str, address: str) -> None:
        """Stop forwarding `address` to the guest; nothing happens if it was not forwarded."""
        address = loopback_address(address)
        machine = self._machine(server_id)
        with machine.lock:
            ports = machine.record["exposed"].get(address)
            if ports is None:
                return
            if machine.running:
                with self._qmp(machine) as qmp:
                    for port in ports:
                        said = qmp.human(f"hostfwd_remove {NETDEV} tcp:{address}:{port}")
                        if said:
                            LOG.warning("server %s: hostfwd_remove %s:%s: %s", server_id, address,
                                        port, said)  # fmt: skip
            del machine.record["exposed"][address]
            machine.save()
        self._event(server_id, "unexposed", address)

    def shutdown_all(self) -> None:
        """End every guest (the service is stopping): nothing of the driver is left running."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            machines = list(self._machines.values())
        for machine in machines:
            machine.cancelled = True
            machine.expected_exit = True
            if machine.running:
                assert machine.process is not None
                # qemu treats SIGTERM as a quit: it flushes its disks and exits.
                machine.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        for machine in machines:
            self._wait_exit(machine, max(0.0, deadline - time.monotonic()))
            if machine.running:
                assert machine.process is not None
                machine.process.kill()
                machine.process.wait(timeout=KILL_GRACE_SECONDS)
        for machine in machines:
            if machine.starting is not None:
                machine.starting.join(timeout=KILL_GRACE_SECONDS)
        self._spawner.close()
        shutil.rmtree(self._sockets, ignore_errors=True)
        for machine in machines:
            if machine.process is not None:
                self._event(machine.server_id, "stopped", "the machine driver shut down")

    # --- more than the interface: what Nova also does, and what tests look at ---------------

    def start(self, server_id: str) -> None:
        """Power a stopped server on again (os-start) with its disks, volumes and floating IPs."""
        machine = self._machine(server_id)
        with machine.lock:
            self._check_open()
            self._refuse_while_building(machine, "start")
            if machine.running:
                return
            if not machine.record.get("booted"):
                raise MachineError(
                    f"server {server_id} never finished building; delete it and boot a new one"
                )
            machine.failure = None
            machine.expected_exit = False
            machine.starting = threading.Thread(
                target=self._start_guest, args=(machine, None), name=f"start-{server_id}",
                daemon=True,
            )  # fmt: skip
            self._event(server_id, "start", "powering on")
            machine.starting.start()

    def prepare_images(self) -> None:
        """Build (or find) every guest image now, so that no server waits minutes in building."""
        for kind in sorted(set(self.images.values())):
            ensure_image(say=lambda text: LOG.info("%s", text), kind=kind)

    def failure(self, server_id: str) -> str | None:
        """Why the server is in state error, or None."""
        machine = self._machines.get(server_id)
        return None if machine is None else machine.failure

    def console_output(self, server_id: str) -> str:
        """The guest's serial console so far (as Nova's os-getConsoleOutput)."""
        machine = self._machine(server_id)
        return machine.serial_log.read_text(errors="replace") if machine.serial_log.exists() else ""

    def process_id(self, server_id: str) -> int | None:
        """The pid of the server's running qemu, or None."""
        machine = self._machines.get(server_id)
        if machine is None or not machine.running:
            return None
        assert machine.process is not None
        return machine.process.pid

    def server_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._machines)

    # --- inside ------------------------------------------------------------------------------

    def _event(self, server_id: str, action: str, detail: str) -> None:
        LOG.info("server %s: %s: %s", server_id, action, detail)
        if self._on_event is not None:
            try:
                self._on_event(server_id, action, detail)
            except Exception:  # a broken listener must not break the machine
                LOG.exception("the machine event listener failed")

    @staticmethod
    def _accelerator() -> str:
        value = os.environ.get(ACCELERATOR_ENV, "").strip().lower()
        if value not in ("", "auto", "tcg", "kvm"):
            raise MachineError(
                f"{ACCELERATOR_ENV}={value!r} is not one of auto, tcg, kvm; unset it or pick one"
            )
        # KVM only on request: under nested virtualisation a KVM guest dies early, and only
        # a boot shows it.
        return "kvm" if value == "kvm" else "tcg"

    @staticmethod
    def _check_server_id(server_id: str) -> None:
        if not SERVER_ID_PATTERN.match(server_id):
            raise MachineError(
                f"server id {server_id!r} is not 1-64 letters, digits, '-' or '_' "
                "(it names the server's directory)"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise MachineError("the machine driver is shut down: no guest can start")

    def _machine(self, server_id: str) -> _Machine:
        machine = self._machines.get(server_id)
        if machine is None:
            raise MachineError(f"server {server_id} has no machine (never booted, or deleted)")
        return machine

    def _refuse_while_building(self, machine: _Machine, action: str) -> None:
        if machine.starting is not None and machine.starting.is_alive():
            raise MachineError(f"cannot {action} server {machine.server_id} while it is building")

    def _load(self) -> None:
        """Every server a previous driver left; their guests died with it, so they are off."""
        for record_path in sorted(self.machines_dir.glob(f"*/{RECORD}")):
            record = json.loads(record_path.read_text())
            machine = _Machine(record_path.parent, record)
            if not record.get("booted"):
                machine.failure = "the service stopped while this server was being built"
            self._machines[machine.server_id] = machine

    def _socket(self, machine: _Machine) -> Path:
        return self._sockets / f"{machine.server_id}.qmp"

    def _remove_socket(self, machine: _Machine) -> None:
        self._socket(machine).unlink(missing_ok=True)

    def _qmp(self, machine: _Machine) -> _Qmp:
        try:
            return _Qmp(self._socket(machine))
        except (OSError, TimeoutError) as error:
            raise MachineError(
                f"server {machine.server_id}: qemu's control socket does not answer: {error}"
            ) from None

    def _start_guest(self, machine: _Machine, seed: dict[str, Any] | None) -> None:
        """Build what the guest needs (first boot only) and start qemu; failures go to `failure`."""
        try:
            if seed is not None:
                image, _built = ensure_image(
                    say=lambda text: self._event(machine.server_id, "image", text),
                    kind=machine.record["kind"],
                )
            else:
                image = self._image_booted_from(machine)
            with machine.lock:
                if machine.cancelled:
                    return
                if seed is not None:
                    self._make_disks(machine, image, seed)
                self._launch(machine, image)
                machine.record["booted"] = True
                machine.save()
            self._event(machine.server_id, "running", f"qemu pid {machine.process.pid}")
        except Exception as error:  # the boot runs in its own thread: keep the reason
            message = str(error)
            if machine.process is not None:
                machine.expected_exit = True
                self._end_process(machine)
                message += f"\n--- qemu log ---\n{_tail(machine.qemu_log)}"
            if not machine.cancelled:
                machine.failure = message
                self._event(machine.server_id, "error", message)

    @staticmethod
    def _image_booted_from(machine: _Machine) -> GuestImage:
        """The image of the server's first boot: its root overlay is a layer over that disk."""
        image = GuestImage(Path(machine.record["image_dir"]), machine.record["kind"])
        missing = [p for p in (image.disk, image.kernel, image.initrd) if not p.is_file()]
        if missing:
            raise MachineError(
                f"server {machine.server_id}: the guest image it was built from is gone "
                f"({', '.join(map(str, missing))}; a newer recipe replaced it); delete the "
                "server and boot a new one"
            )
        return image

    def _make_disks(self, machine: _Machine, image: GuestImage, seed: dict[str, Any]) -> None:
        machine.record["image_dir"] = str(image.directory)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "raw",
             str(machine.overlay)],
            check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        with open(machine.ephemeral_disk, "wb") as handle:
            handle.truncate(EPHEMERAL_DISK_BYTES)
        staging = machine.directory / "config-drive"
        shutil.rmtree(staging, ignore_errors=True)
        for relative, content in config_drive_files(machine.server_id, **seed).items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        subprocess.run(
            ["genisoimage", "-quiet", "-o", str(machine.config_drive), "-V", "config-2",
             "-J", "-r", "-l", "-ldots", "-allow-lowercase", "-allow-multidot",
             "-input-charset", "utf-8", str(staging)],
            check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(staging)

    def _command_line(self, machine: _Machine, image: GuestImage) -> list[str]:
        record = machine.record
        network = slirp_network(record["fixed_ip"])
        options = [f"user,id={NETDEV},restrict=on"]
        options += [f"{key}={value}" for key, value in network.items()]
        route = host_route_address(record["fixed_ip"])
        if any("," in str(path) for path in (sys.executable, HOST_FORWARD)):
            raise MachineError(
                f"server {machine.server_id}: {sys.executable} or {HOST_FORWARD} holds a comma, "
                "which would split qemu's -netdev option; run the twin from another directory"
            )
        for port in record.get("host_ports", []):
            # One forwarder process per connection; restrict=on leaves explicit forwards open.
            forward = f"{sys.executable} {HOST_FORWARD} 127.0.0.1 {port}"
            options.append(f"guestfwd=tcp:{route}:{port}-cmd:{forward}")
        netdev = ",".join(options)
        prefix = ["setpriv", "--pdeathsig", "KILL", "--"]
        if self.niceness:
            prefix += ["nice", "-n", str(self.niceness)]
        arguments = [
            *prefix, QEMU,
            "-name", f"twin-{machine.server_id}",
            "-machine", "pc", "-accel", self.accelerator,
            "-cpu", "host" if self.accelerator == "kvm" else "max",
            "-m", str(self.memory_mib), "-smp", str(self.cpus),
            "-nodefaults", "-display", "none",
            # Relative to qemu's working directory, the machine's: a comma in the state
            # dir's path would split qemu's option.
            "-serial", f"file:{machine.serial_log.name}",
            "-chardev", f"socket,id=qmp,path={self._socket(machine)},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", image.kernel_command_line,
            "-netdev", netdev,
            "-device", _json({"driver": "virtio-net-pci", "netdev": NETDEV, "mac": record["mac"],
                              "addr": "0x3"}),
        ]  # fmt: skip
        # Fixed slots: root vda, the blank disk vdb; volumes go to the next free slots.
        disks = [
            ("root", "qcow2", machine.overlay, "0x4"),
            ("ephemeral", "raw", machine.ephemeral_disk, "0x5"),
        ]
        for node, driver, path, slot in disks:
            arguments += [
                "-blockdev", _json({"driver": driver, "node-name": node,
                                    "file": {"driver": "file", "filename": str(path)}}),
                "-device", _json({"driver": "virtio-blk-pci", "drive": node, "addr": slot}),
            ]  # fmt: skip
        # Nova's config drive on libvirt/x86: a read-only IDE CD-ROM.
        arguments += [
            "-blockdev", _json({"driver": "raw", "node-name": "config-drive", "read-only": True,
                                "file": {"driver": "file", "filename": str(machine.config_drive),
                                         "read-only": True}}),
            "-device", _json({"driver": "ide-cd", "drive": "config-drive", "bus": "ide.1"}),
        ]  # fmt: skip
        for attachment in record["attachments"].values():
            arguments += [
                "-blockdev", _json(_volume_node(attachment)),
                "-device", _json(_volume_device(attachment)),
            ]  # fmt: skip
        return arguments

    def _launch(self, machine: _Machine, image: GuestImage) -> None:
        self._remove_socket(machine)
        machine.serial_log.write_bytes(b"")
        machine.qemu_log.write_bytes(b"")
        machine.expected_exit = False
        machine.process = self._spawner.spawn(
            self._command_line(machine, image), machine.qemu_log, machine.directory
        )
        deadline = time.monotonic() + QMP_READY_SECONDS
        while True:
            if not machine.running:
                raise MachineError(
                    f"server {machine.server_id}: qemu exited with status "
                    f"{machine.process.returncode} at start"
                )
            try:
                qmp = _Qmp(self._socket(machine), timeout=10)
            except (OSError, TimeoutError, MachineError):
                if time.monotonic() > deadline:
                    raise MachineError(
                        f"server {machine.server_id}: qemu's control socket did not answer "
                        f"within {QMP_READY_SECONDS:.0f}s"
                    ) from None
                time.sleep(0.2)
                continue
            with qmp:
                status = qmp.execute("query-status")
                if status.get("status") != "running":
                    raise MachineError(f"server {machine.server_id}: qemu is {status}, not running")
                for address, ports in machine.record["exposed"].items():
                    self._forward(machine, qmp, address, ports)
            return

    def _forward(self, machine: _Machine, qmp: _Qmp, address: str, ports: list[int]) -> None:
        added: list[int] = []
        for port in ports:
            said = qmp.human(f"hostfwd_add {NETDEV} tcp:{address}:{port}-:{port}")
            if said:
                for undo in added:
                    qmp.human(f"hostfwd_remove {NETDEV} tcp:{address}:{undo}")
                raise MachineError(
                    f"server {machine.server_id}: cannot forward {address}:{port} to the guest "
                    f"(is something else listening there?): qemu says {said!r}"
                )
            added.append(port)

    @staticmethod
    def _plug(qmp: _Qmp, attachment: Mapping[str, str]) -> None:
        qmp.execute("blockdev-add", _volume_node(attachment))
        try:
            qmp.execute("device_add", _volume_device(attachment))
        except MachineError:
            qmp.execute("blockdev-del", {"node-name": attachment["node"]})
            raise

    def _unplug(
        self, machine: _Machine, qmp: _Qmp, volume_id: str, attachment: Mapping[str, str]
    ) -> None:
        device = attachment["device"]

        def deleted(event: dict[str, Any]) -> bool:
            return event.get("event") == "DEVICE_DELETED" and (
                event.get("data", {}).get("device") == device
            )

        deadline = time.monotonic() + self.detach_timeout
        while self._device_present(qmp, device):
            try:
                qmp.execute("device_del", {"id": device})
            except QmpError as error:
                if error.error_class != "DeviceNotFound":
                    raise
                break
            wait = min(UNPLUG_RETRY_SECONDS, deadline - time.monotonic())
            if wait > 0 and qmp.wait_for_event(deleted, wait) is not None:
                break
            if time.monotonic() >= deadline:
                raise MachineError(
                    f"server {machine.server_id} did not release volume {volume_id} within "
                    f"{self.detach_timeout:.0f}s of the unplug request; it stays attached "
                    "(is the guest still booting, or hung?)"
                )
        with contextlib.suppress(QmpError):
            qmp.execute("blockdev-del", {"node-name": attachment["node"]})

    @staticmethod
    def _device_present(qmp: _Qmp, device: str) -> bool:
        children = qmp.execute("qom-list", {"path": "/machine/peripheral"})
        return any(child.get("name") == device for child in children)

    @staticmethod
    def _node_size(qmp: _Qmp, node: str) -> int:
        for found in qmp.execute("query-named-block-nodes", {"flat": True}):
            if found.get("node-name") == node:
                return int(found["image"]["virtual-size"])
        raise MachineError(f"qemu has no block node {node}")

    @staticmethod
    def _wait_exit(machine: _Machine, timeout: float) -> None:
        if machine.process is None or timeout <= 0:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            machine.process.wait(timeout=timeout)

    def _end_process(self, machine: _Machine) -> None:
        """Quit qemu now; SIGKILL it if it does not go."""
        if not machine.running:
            return
        assert machine.process is not None
        machine.process.send_signal(signal.SIGTERM)
        self._wait_exit(machine, KILL_GRACE_SECONDS)
        if machine.running:
            machine.process.kill()
            machine.process.wait(timeout=KILL_GRACE_SECONDS)

    def _remove_directory(self, machine: _Machine) -> None:
        """Remove the server's own files; never a volume (attach refuses disks in here)."""
        if machine.directory.parent != self.machines_dir:
            raise MachineError(f"refusing to remove {machine.directory}: not a machine directory")
        shutil.rmtree(machine.directory, ignore_errors=True)


def _socket_directory() -> Path:
    """A new private directory for this driver's QMP sockets; those of dead drivers go."""
    for directory in SOCKETS_PARENT.glob(f"{SOCKETS_PREFIX}*"):
        owner = directory.name[len(SOCKETS_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(directory, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SOCKETS_PREFIX}{os.getpid()}-", dir=SOCKETS_PARENT))


def _volume_node(attachment: Mapping[str, str]) -> dict[str, Any]:
    return {
        "driver": "raw",
        "node-name": attachment["node"],
        "file": {"driver": "file", "filename": attachment["disk"]},
    }


def _volume_device(attachment: Mapping[str, str]) -> dict[str, Any]:
    return {
        "driver": "virtio-blk-pci",
        "id": attachment["device"],
        "drive": attachment["node"],
        "serial": attachment["serial"],
    }


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))
