"""The narrow interface between the twin's services and whatever runs its servers.

Compute and volume models call a `MachineDriver`; they never start a process
themselves. `tests.twin.services.qemu_machines.QemuMachines` runs every server as a qemu
guest; `NullMachines` runs nothing and only keeps the states a driver would
report, for the API's own tests (`serve --machines null`). `create_machines`
picks one by name.

Besides the interface below, a driver may offer `start(server_id)` (os-start of
a stopped server, with its volumes and floating IPs), `failure(server_id)`
(why a server is in state "error") and `console_output(server_id)` (the guest's
serial console so far, for Nova's os-getConsoleOutput); the services use them
when present.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

# (server_id, action, detail): every VM action as the driver performs it.
EventSink = Callable[[str, str, str], None]

QEMU_MODULE = "tests.twin.services.qemu_machines"
# For the API's own tests: JSON {"delays": {action: seconds}, "failures": {action: count}}
# slows NullMachines' actions down or makes the next `count` calls of an action fail.
NULL_MACHINES_ENV = "CHI_TWIN_NULL_MACHINES"
KINDS = ("qemu", "null")
# The Glance images a driver can boot, by name; the QEMU driver's own default is the same.
BOOTABLE_IMAGES = ("CC-Ubuntu24.04",)
# What cloud-init's keys-to-console helper (write-ssh-key-fingerprints) puts around the host
# keys, each line through `logger --stderr -t ec2`.
KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
KEYS_END = "-----END SSH HOST KEY KEYS-----"
CONSOLE_PREFIX = "<14>Dec  4 16:23:52 ec2: "


def generated_host_keys(hostname: str = "localhost") -> list[str]:
    """Public host keys of a new machine, as /etc/ssh/ssh_host_*_key.pub hold them: a fresh
    ed25519 and ecdsa-sha2-nistp256 pair each (the private halves are not kept)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    keys = [ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()]
    return [
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        + f" root@{hostname}"
        for key in keys
    ]


def host_key_block(public_keys: list[str]) -> list[str]:
    """The console lines of cloud-init's host key block for these keys."""
    lines = [KEYS_BEGIN, *public_keys, KEYS_END]
    return [CONSOLE_PREFIX + line for line in lines]


class MachineDriver(Protocol):
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
        """Start the guest and return at once; cloud-init seed from user_data, keys, metadata."""

    def state(self, server_id: str) -> str:
        """building | running | stopped | gone | error."""

    def stop(self, server_id: str) -> None:
        """ACPI shutdown, bounded, then power off."""

    def delete(self, server_id: str) -> None:
        """End the guest and free everything it had."""

    def attach(self, server_id: str, volume_id: str, disk: Path) -> None:
        """Hot-plug `disk` as virtio-blk with serial volume_id[:20]."""

    def detach(self, server_id: str, volume_id: str) -> None: ...

    def resize_disk(self, server_id: str, volume_id: str, size_bytes: int) -> None:
        """Grow an attached disk online (block_resize)."""

    def expose(self, server_id: str, address: str, ports: list[int]) -> None:
        """Forward address:port (127.0.0.0/8) to the guest's same port, for each port."""

    def unexpose(self, server_id: str, address: str) -> None: ...

    def shutdown_all(self) -> None:
        """The service is stopping: nothing of the driver may be left running."""


class MachineError(RuntimeError):
    """A driver could not do what was asked; the message says why."""


class NullMachines:
    """A driver without VMs: the states a real one reports, after short delays.

    A server is "building" for `boot_seconds` after `boot`, then "running".
    Its records (attached volumes, exposed addresses) are kept in
    DIR/null-machines.json, so a twin restarted on the same state dir finds
    its servers "stopped", as the QEMU driver does. `delays` slows actions
    down (seconds by action name); `failures` makes the next calls of an
    action fail (count by action name), as a guest that keeps a disk would.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        images: tuple[str, ...] = BOOTABLE_IMAGES,
        boot_seconds: float = 0.3,
        delays: dict[str, float] | None = None,
        failures: dict[str, int] | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.images = tuple(images)
        self.boot_seconds = boot_seconds
        self.delays = dict(delays or {})
        self.failures = dict(failures or {})
        self._on_event = on_event
        self._lock = threading.Lock()
        self._file = Path(state_dir) / "null-machines.json" if state_dir else None
        self._machines: dict[str, dict[str, Any]] = {}
        if self._file is not None and self._file.exists():
            self._machines = json.loads(self._file.read_text())
            for machine in self._machines.values():
                machine["power"] = "stopped"
                machine["ready_at"] = None

    def _event(self, server_id: str, action: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(server_id, action, detail)

    def _save(self) -> None:
        if self._file is not None:
            temporary = self._file.with_suffix(".tmp")
            temporary.write_text(json.dumps(self._machines, indent=1, sort_keys=True))
            temporary.replace(self._file)

    def _act(self, action: str, server_id: str) -> None:
        """The configured delay of `action`, then its configured failure if one is left."""
        time.sleep(self.delays.get(action, 0))
        with self._lock:
            left = self.failures.get(action, 0)
            if left:
                self.failures[action] = left - 1
        if left:
            raise MachineError(
                f"server {server_id}: {action} failed (injected by {NULL_MACHINES_ENV})"
            )

    def _machine(self, server_id: str) -> dict[str, Any]:
        machine = self._machines.get(server_id)
        if machine is None:
            raise MachineError(f"server {server_id} has no machine")
        return machine

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
        self._act("boot", server_id)
        if image not in self.images:
            raise MachineError(
                f"server {server_id}: image {image!r} has no guest image here; "
                f"the twin boots {', '.join(self.images)}"
            )
        with self._lock:
            if server_id in self._machines:
                raise MachineError(f"server {server_id} already has a machine; delete it first")
            self._machines[server_id] = {
                "image": image,
                "hostname": hostname,
                "mac": mac,
                "fixed_ip": fixed_ip,
                "public_keys": list(public_keys),
                "metadata": dict(metadata),
                "user_data": None if user_data is None else base64.b64encode(user_data).decode(),
                "power": "running",
                "ready_at": time.monotonic() + self.boot_seconds,
                "attachments": {},
                "exposed": {},
                "host_keys": generated_host_keys(hostname),
            }
            self._save()
        self._event(server_id, "boot", f"image {image}, {hostname}, {fixed_ip} ({mac})")

    def state(self, server_id: str) -> str:
        with self._lock:
            machine = self._machines.get(server_id)
            if machine is None:
                return "gone"
            if machine["power"] == "stopped":
                return "stopped"
            ready_at = machine["ready_at"]
            if ready_at is not None and time.monotonic() < ready_at:
                return "building"
            return "running"

    def stop(self, server_id: str) -> None:
        self._act("stop", server_id)
        with self._lock:
            self._machine(server_id)["power"] = "stopped"
            self._save()
        self._event(server_id, "stopped", "powered off")

    def start(self, server_id: str) -> None:
        self._act("start", server_id)
        with self._lock:
            machine = self._machine(server_id)
            machine["power"] = "running"
            machine["ready_at"] = time.monotonic() + self.boot_seconds
            self._save()
        self._event(server_id, "start", "powering on")

    def failure(self, server_id: str) -> str | None:
        return None

    def console_output(self, server_id: str) -> str:
        """A first boot's console as a cloud image writes it: once the machine runs, cloud-init's
        host key block with the keys the machine was given at boot, then its final line."""
        with self._lock:
            machine = self._machine(server_id)
            ready_at = machine["ready_at"]
            if ready_at is not None and time.monotonic() < ready_at:
                return "[    0.000000] Linux version 6.1.0-cloud-amd64\n"
            lines = [
                "[    0.000000] Linux version 6.1.0-cloud-amd64",
                "[   12.100000] cloud-init[612]: Cloud-init v. 24.4 running 'modules:final'",
                *host_key_block(machine.get("host_keys") or []),
                "[   14.300000] cloud-init[612]: Cloud-init v. 24.4 finished at "
                "Thu, 04 Dec 2026 16:23:52 +0000. Datasource DataSourceConfigDrive.",
                f"{machine['hostname']} login: ",
            ]
        return "\n".join(lines) + "\n"

    def delete(self, server_id: str) -> None:
        self._act("delete", server_id)
        with self._lock:
            self._machine(server_id)
            del self._machines[server_id]
            self._save()
        self._event(server_id, "deleted", "machine removed")

    def attach(self, server_id: str, volume_id: str, disk: Path) -> None:
        self._act("attach", server_id)
        if not Path(disk).is_file():
            raise MachineError(
                f"server {server_id}: volume {volume_id}'s disk {disk} is not a file"
            )
        with self._lock:
            attachments = self._machine(server_id)["attachments"]
            if volume_id in attachments:
                raise MachineError(f"volume {volume_id} is already attached to server {server_id}")
            # What the guest sees of the disk: its size when plugged in, until resize_disk.
            attachments[volume_id] = {
                "disk": str(disk),
                "serial": volume_id[:20],
                "size": Path(disk).stat().st_size,
            }
            self._save()
        self._event(server_id, "attached", f"volume {volume_id} serial {volume_id[:20]}")

    def detach(self, server_id: str, volume_id: str) -> None:
        self._act("detach", server_id)
        with self._lock:
            attachments = self._machine(server_id)["attachments"]
            if volume_id not in attachments:
                raise MachineError(f"volume {volume_id} is not attached to server {server_id}")
            del attachments[volume_id]
            self._save()
        self._event(server_id, "detached", f"volume {volume_id}")

    def resize_disk(self, server_id: str, volume_id: str, size_bytes: int) -> None:
        self._act("resize_disk", server_id)
        with self._lock:
            attachments = self._machine(server_id)["attachments"]
            if volume_id not in attachments:
                raise MachineError(f"volume {volume_id} is not attached to server {server_id}")
            disk = Path(attachments[volume_id]["disk"])
            if size_bytes < disk.stat().st_size:
                raise MachineError(f"volume {volume_id}: volumes only grow")
            with open(disk, "r+b") as handle:
                handle.truncate(size_bytes)
            attachments[volume_id]["size"] = size_bytes
            self._save()
        self._event(server_id, "resized", f"volume {volume_id} to {size_bytes} bytes")

    def expose(self, server_id: str, address: str, ports: list[int]) -> None:
        self._act("expose", server_id)
        with self._lock:
            for other_id, other in self._machines.items():
                if other_id != server_id and address in other["exposed"]:
                    raise MachineError(
                        f"floating IP {address} already reaches server {other_id}; "
                        f"unexpose it there before exposing it on server {server_id}"
                    )
            self._machine(server_id)["exposed"][address] = sorted(set(ports))
            self._save()
        self._event(server_id, "exposed", f"{address} ports {', '.join(map(str, sorted(ports)))}")

    def unexpose(self, server_id: str, address: str) -> None:
        with self._lock:
            machine = self._machines.get(server_id)
            if machine is None or address not in machine["exposed"]:
                return
            del machine["exposed"][address]
            self._save()
        self._event(server_id, "unexposed", address)

    def shutdown_all(self) -> None:
        with self._lock:
            running = [
                key for key, machine in self._machines.items() if machine["power"] != "stopped"
            ]
            for key in running:
                self._machines[key]["power"] = "stopped"
            self._save()
        for key in running:
            self._event(key, "stopped", "the machine driver shut down")


def machines_unavailable(kind: str) -> str | None:
    """Why the driver `kind` cannot run here, or None."""
    if kind == "null":
        return None
    if kind != "qemu":
        return f"unknown machine driver {kind!r}; choose one of {', '.join(KINDS)}"
    if importlib.util.find_spec(QEMU_MODULE) is None:
        return (
            f"the QEMU machine driver ({QEMU_MODULE.replace('.', '/')}.py) is not in this "
            "checkout; run `serve --machines null` for a twin without VMs"
        )
    module = importlib.import_module(QEMU_MODULE)
    reason = getattr(module, "machines_skip_reason", None)
    return reason() if callable(reason) else None


def create_machines(kind: str, state_dir: Path, on_event: EventSink) -> MachineDriver:
    """The driver named `kind` ("qemu" or "null") keeping its files under `state_dir`."""
    reason = machines_unavailable(kind)
    if reason is not None:
        raise MachineError(reason)
    if kind == "null":
        tuning = json.loads(os.environ.get(NULL_MACHINES_ENV) or "{}")
        return NullMachines(
            state_dir,
            delays=tuning.get("delays"),
            failures=tuning.get("failures"),
            on_event=on_event,
        )
    module = importlib.import_module(QEMU_MODULE)
    return module.QemuMachines(state_dir, on_event=on_event)
