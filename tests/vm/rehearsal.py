"""Drive the rehearsal's virtual machines: boot with qemu, talk SSH, time every phase.

A `VirtualMachine` is one qemu process booting the cached guest image through a
throw-away qcow2 overlay, with the volume (and any other disk) attached as
virtio-blk devices carrying a serial, and SSH forwarded to a loopback port.
Its QMP control socket (a Unix socket in a private directory) lets a test grow
an attached disk while the guest runs, as Cinder's online extend does.
It is a context manager: whatever happens, no qemu process outlives it.
Commands run the way pulumi-command runs them: one non-interactive SSH session
per command, as `cc`, stdin closed, the command string handed to the login shell.

Emulation is TCG unless KVM demonstrably works: with CHI_PERSIST_VM_ACCEL=auto
(the default) the first boot tries KVM and keeps it only if SSH answers within
a minute, falling back to TCG on any failure (nested virtualisation often breaks
KVM guests early); CHI_PERSIST_VM_ACCEL=tcg or =kvm forces one.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.vm.failures import RehearsalError
from tests.vm.image import GuestImage

QEMU = "qemu-system-x86_64"
SSH_USER = "cc"
MEMORY_MIB = 2048
CPUS = 2
# Under software emulation the guest answers SSH in about half a minute; the
# bound leaves room for a slow, busy CI machine (seen here: 240 s to a login
# prompt with a load of 20 on two cores).
SSH_BOUND_SECONDS = 480
# Under KVM a guest that works answers in seconds; beyond this KVM is not used.
KVM_PROBE_SECONDS = 60
POWER_OFF_BOUND_SECONDS = 120
COMMAND_BOUND_SECONDS = 600
SSH_POLL_SECONDS = 2
# qemu answers its control socket at once; the bound covers a machine under load.
QMP_BOUND_SECONDS = 30
# Serial console lines that mean the guest will never answer SSH.
FATAL_CONSOLE_TEXT = (
    "You are in emergency mode",
    "Kernel panic",
    "ALERT!",  # initramfs: root device not found
    "Gave up waiting for root",
)
ACCELERATOR_ENV = "CHI_PERSIST_VM_ACCEL"


@dataclass(frozen=True)
class Disk:
    """A raw image attached as a virtio-blk disk whose serial the guest sees in /dev/disk/by-id."""

    path: Path
    serial: str


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_overlay(image: GuestImage, overlay: Path) -> Path:
    """A fresh copy-on-write overlay of the image's root disk; the image itself is never written."""
    overlay.unlink(missing_ok=True)
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "raw",
         str(overlay)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RehearsalError("overlay", f"qemu-img create {overlay} failed", result.stderr)
    return overlay


def make_sparse_volume(path: Path, size_bytes: int) -> Path:
    """A sparse file standing for a new, blank Cinder volume."""
    with open(path, "wb") as handle:
        handle.truncate(size_bytes)
    return path


def vm_skip_reason() -> str | None:
    """Why a virtual machine cannot be booted here, or None when it can."""
    from shutil import which

    missing = [tool for tool in (QEMU, "qemu-img", "ssh") if which(tool) is None]
    if missing:
        tools = ", ".join(missing)
        return f"missing tools to boot the rehearsal's VM: {tools} (tests/run installs them)"
    return None


def accelerator_preference() -> str:
    """auto (KVM when it demonstrably works, else TCG), tcg or kvm, from CHI_PERSIST_VM_ACCEL."""
    value = os.environ.get(ACCELERATOR_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "tcg", "kvm"):
        raise RehearsalError(
            "configuration",
            f"{ACCELERATOR_ENV}={value!r} is not one of auto, tcg, kvm; unset it or pick one",
        )
    return value


def kvm_available() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills qemu if the test process dies, even by SIGKILL."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class VirtualMachine:
    """One qemu process for one server; stopping it (or leaving the `with`) kills it for sure."""

    def __init__(
        self,
        name: str,
        image: GuestImage,
        overlay: Path,
        disks: Sequence[Disk],
        log_dir: Path,
        accelerator: str,
        kernel_command_line: str | None = None,
    ) -> None:
        self.name = name
        self.kernel_command_line = kernel_command_line or image.kernel_command_line
        self.image = image
        self.overlay = overlay
        self.disks = list(disks)
        self.accelerator = accelerator
        log_dir.mkdir(parents=True, exist_ok=True)
        slug = "-".join(name.split())
        self.serial_log = log_dir / f"{slug}-serial.log"
        self.qemu_log = log_dir / f"{slug}-qemu.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # A private directory for the QMP socket: short (a Unix socket path has at most
        # 107 bytes) and closed to other users.
        self.control_dir: Path | None = None

    @property
    def qmp_socket(self) -> Path:
        if self.control_dir is None:
            raise RehearsalError(f"{self.name}: monitor", "qemu has not been started")
        return self.control_dir / "qmp.sock"

    def __enter__(self) -> VirtualMachine:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def command_line(self) -> list[str]:
        cpu = "host" if self.accelerator == "kvm" else "max"
        # Fixed PCI slots keep the kernel's disk names stable: root vda, then the others in order.
        arguments = [
            QEMU, "-accel", self.accelerator, "-cpu", cpu,
            "-m", str(MEMORY_MIB), "-smp", str(CPUS),
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            "-serial", f"file:{self.serial_log}",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", self.kernel_command_line,
            "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=net0,addr=0x3",
            "-drive", f"file={self.overlay},if=none,id=root,format=qcow2",
            "-device", "virtio-blk-pci,drive=root,addr=0x4",
        ]  # fmt: skip
        for index, disk in enumerate(self.disks):
            arguments += [
                "-drive", f"file={disk.path},if=none,id=disk{index},format=raw",
                "-device",
                f"virtio-blk-pci,drive=disk{index},serial={disk.serial},addr={0x5 + index:#x}",
            ]  # fmt: skip
        return arguments

    def start(self) -> None:
        if self.running:
            raise RehearsalError(f"{self.name}: boot", "qemu is already running for this server")
        self.port = free_loopback_port()
        self._remove_control_dir()
        self.control_dir = Path(tempfile.mkdtemp(prefix="chi-persist-qmp-"))
        self.serial_log.write_bytes(b"")
        with open(self.qemu_log, "wb") as log:
            self.process = subprocess.Popen(
                self.command_line(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Pull the plug: terminate qemu, and kill it if it does not go."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._remove_control_dir()

    def _remove_control_dir(self) -> None:
        if self.control_dir is not None:
            shutil.rmtree(self.control_dir, ignore_errors=True)

    def qmp(self, command: str, arguments: Mapping[str, Any] | None, phase: str) -> Any:
        """One command on qemu's control socket (QMP); what qemu returns, or a RehearsalError."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        try:
            with self._qmp_connection(phase) as control, control.makefile("rb") as replies:
                greeting = _qmp_reply(replies)
                if "QMP" not in greeting:
                    raise RehearsalError(phase, f"qemu's control socket did not greet: {greeting}")
                for message in ({"execute": "qmp_capabilities"}, request):
                    control.sendall(json.dumps(message).encode() + b"\n")
                    reply = _qmp_reply(replies)
                    if "error" in reply:
                        error = reply["error"]
                        raise RehearsalError(
                            phase,
                            f"qemu refused {message['execute']} "
                            f"{json.dumps(message.get('arguments', {}))}: "
                            f"{error.get('class')}: {error.get('desc')}",
                            logs=self.logs(),
                        )
                return reply.get("return")
        except OSError as error:
            raise RehearsalError(
                phase, f"qemu's control socket {self.qmp_socket}: {error}", logs=self.logs()
            ) from None

    def _qmp_connection(self, phase: str) -> socket.socket:
        """A connection to the control socket, which qemu opens a moment after it starts."""
        deadline = time.monotonic() + QMP_BOUND_SECONDS
        while True:
            control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            control.settimeout(QMP_BOUND_SECONDS)
            try:
                control.connect(str(self.qmp_socket))
            except (FileNotFoundError, ConnectionRefusedError):
                control.close()
                if not self.running or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            else:
                return control

    def resize_disk(self, disk: Disk, size_bytes: int, phase: str) -> None:
        """Grow an attached disk while the guest runs (QMP block_resize), as an online extend does.

        qemu grows the raw file and tells the guest's virtio-blk driver the new capacity.
        """
        if disk not in self.disks:
            raise RehearsalError(phase, f"{disk.path} is not attached to {self.name}")
        device = f"disk{self.disks.index(disk)}"
        self.qmp("block_resize", {"device": device, "size": size_bytes}, phase)
        grown = os.path.getsize(disk.path)
        if grown != size_bytes:
            raise RehearsalError(
                phase, f"block_resize left {disk.path} at {grown} bytes, not {size_bytes}"
            )

    def logs(self) -> dict[str, str]:
        """The qemu and serial console logs, for failure messages."""
        found = {}
        for label, path in (
            ("qemu", self.qemu_log),
            (f"{self.name} serial console", self.serial_log),
        ):
            if path.exists():
                found[label] = path.read_text(errors="replace")
        return found

    def _console_failure(self) -> str | None:
        if not self.serial_log.exists():
            return None
        console = self.serial_log.read_text(errors="replace")
        return next((text for text in FATAL_CONSOLE_TEXT if text in console), None)

    def _qemu_failure(self) -> str | None:
        if not self.qemu_log.exists():
            return None
        text = self.qemu_log.read_text(errors="replace")
        # KVM under nested virtualisation can stop the guest while qemu itself stays up.
        return "KVM internal error" if "KVM internal error" in text else None

    def ssh_arguments(self, *, connect_timeout: int = 10) -> list[str]:
        return [
            "ssh", "-T",
            "-i", str(self.image.private_key),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-p", str(self.port), f"{SSH_USER}@127.0.0.1",
        ]  # fmt: skip

    def wait_for_ssh(self, phase: str, bound: float = SSH_BOUND_SECONDS) -> float:
        """Poll until sshd lets cc in; the seconds it took. Fails early if the guest cannot boot."""
        started = time.monotonic()
        while True:
            if not self.running:
                code = self.process.returncode if self.process else None
                raise RehearsalError(
                    phase, f"qemu exited (status {code}) before SSH answered", logs=self.logs()
                )
            fatal = self._console_failure() or self._qemu_failure()
            if fatal:
                raise RehearsalError(
                    phase, f"the guest's console shows {fatal!r}: it will not boot to SSH",
                    logs=self.logs(),
                )  # fmt: skip
            try:
                last = subprocess.run(
                    [*self.ssh_arguments(connect_timeout=5), "true"],
                    stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
                    timeout=60,
                )  # fmt: skip
                answered, said = last.returncode == 0, last.stderr
            except subprocess.TimeoutExpired:
                answered, said = False, "ssh did not finish within 60s"
            elapsed = time.monotonic() - started
            if answered:
                return elapsed
            if elapsed > bound:
                raise RehearsalError(
                    phase,
                    f"SSH on 127.0.0.1:{self.port} did not let {SSH_USER} in within {bound:.0f}s",
                    said, logs=self.logs(),
                )  # fmt: skip
            time.sleep(SSH_POLL_SECONDS)

    def ssh(
        self, command: str, *, stdin: bytes | None = None, timeout: float = COMMAND_BOUND_SECONDS
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one command string in a new non-interactive SSH session, as pulumi-command does."""
        return subprocess.run(
            [*self.ssh_arguments(), command],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            check=False,
            timeout=timeout,
        )

    def run(
        self,
        command: str,
        phase: str,
        *,
        stdin: bytes | None = None,
        timeout: float = COMMAND_BOUND_SECONDS,
    ) -> CommandResult:
        """Run a command that must succeed; a failure names the phase and shows its output."""
        try:
            result = self.ssh(command, stdin=stdin, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise RehearsalError(
                phase, f"{command!r} did not finish within {timeout:.0f}s",
                _text(error.stdout) + _text(error.stderr), logs=self.logs(),
            ) from None  # fmt: skip
        outcome = CommandResult(
            command, result.returncode, _text(result.stdout), _text(result.stderr)
        )
        if result.returncode != 0:
            raise RehearsalError(
                phase, f"{command!r} exited with {result.returncode}", outcome.output,
                logs={f"{self.name} serial console": self.logs().get(
                    f"{self.name} serial console", "")},
            )  # fmt: skip
        return outcome

    def copy_into(self, source: Path, remote_path: str, phase: str) -> None:
        """Copy a local directory the way pulumi-command's CopyToRemote does.

        Into `remote_path` when that is an existing directory (as SOURCE_NAME below it);
        otherwise `remote_path` is created, with its parents, and receives the contents.
        """
        if not source.is_dir():
            raise RehearsalError(phase, f"the program copies {source}, which is not a directory")
        archive = _tar_of(source)
        quoted = shlex.quote(remote_path)
        remote = (
            f"set -eu; if [ -d {quoted} ]; then tar -x -f - -C {quoted}; "
            f"else mkdir -p {quoted} && tar -x -f - -C {quoted} --strip-components=1; fi"
        )
        self.run(remote, phase, stdin=archive)

    def power_off(self, phase: str, bound: float = POWER_OFF_BOUND_SECONDS) -> None:
        """A clean shutdown from inside the guest; qemu exits when it is done."""
        # The session may be cut by the shutdown itself, so its status says nothing.
        self.ssh("sudo systemctl poweroff", timeout=60)
        assert self.process is not None
        try:
            self.process.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            raise RehearsalError(
                phase, f"the guest did not power off within {bound:.0f}s", logs=self.logs()
            ) from None


@dataclass(frozen=True)
class CommandResult:
    """What one remote command printed, and how it ended."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return "\n".join(part for part in (self.stdout.rstrip(), self.stderr.rstrip()) if part)


def _qmp_reply(replies: Any) -> dict[str, Any]:
    """The next message on a QMP stream that is not an asynchronous event."""
    while True:
        line = replies.readline()
        if not line:
            raise OSError("qemu closed its control socket")
        message = json.loads(line)
        if "event" not in message:
            return message


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def _tar_of(source: Path) -> bytes:
    """A tar archive holding `source` as one top-level directory, modes kept."""
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(source, arcname=source.name, filter=_plain_owner)
    return buffer.getvalue()


def _plain_owner(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


@dataclass
class Phase:
    name: str
    seconds: float
    note: str = ""


@dataclass
class Benchmark:
    """Wall-clock seconds of every phase, in order, printable as a table and saved as JSON."""

    phases: list[Phase] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    failed_phase: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[Phase]:
        """Time a phase; any error inside becomes a RehearsalError that names it."""
        record = Phase(name, 0.0)
        began = time.monotonic()
        try:
            yield record
        except RehearsalError:
            self.failed_phase = self.failed_phase or name
            raise
        except Exception as error:
            self.failed_phase = self.failed_phase or name
            # The message carries everything (pytest's assertion detail included): no chain.
            raise RehearsalError(name, f"{type(error).__name__}: {error}") from None
        finally:
            record.seconds = time.monotonic() - began
            self.phases.append(record)

    @property
    def total_seconds(self) -> float:
        return time.monotonic() - self.started

    def table(self) -> str:
        width = max([len(phase.name) for phase in self.phases] + [len("total")])
        lines = [f"{'phase':<{width}}  {'seconds':>8}  note", f"{'-' * width}  {'-' * 8}  ----"]
        for phase in self.phases:
            lines.append(f"{phase.name:<{width}}  {phase.seconds:>8.1f}  {phase.note}".rstrip())
        lines.append(f"{'total':<{width}}  {self.total_seconds:>8.1f}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "result": "failed" if self.failed_phase else "passed",
            "failed_phase": self.failed_phase,
            **self.facts,
            "total_seconds": round(self.total_seconds, 1),
            "phases": [
                {"name": p.name, "seconds": round(p.seconds, 1), "note": p.note}
                for p in self.phases
            ],
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


class Servers:
    """Boots servers from the image, choosing the accelerator once: KVM only if a boot proves it."""

    def __init__(self, image: GuestImage, work_dir: Path, benchmark: Benchmark) -> None:
        self.image = image
        self.work_dir = work_dir
        self.benchmark = benchmark
        preference = accelerator_preference()
        self.accelerator: str | None = None if preference == "auto" else preference
        if self.accelerator is None and not kvm_available():
            self.accelerator = "tcg"
        self.kvm_refusal = ""
        self.machines: list[VirtualMachine] = []

    @contextmanager
    def boot(
        self, name: str, overlay: Path, disks: Sequence[Disk], *, fresh_overlay: bool
    ) -> Iterator[VirtualMachine]:
        """A running server that answers SSH; qemu is stopped when the block ends."""
        phase = f"{name}: boot to SSH"
        with self.benchmark.phase(phase) as record:
            if fresh_overlay:
                make_overlay(self.image, overlay)
            machine = self._boot_with_probe(name, overlay, disks, phase, fresh_overlay)
            record.note = f"{machine.accelerator}, {len(disks)} extra disk(s)"
        try:
            yield machine
        finally:
            machine.stop()

    def _boot_with_probe(
        self, name: str, overlay: Path, disks: Sequence[Disk], phase: str, fresh_overlay: bool
    ) -> VirtualMachine:
        if self.accelerator is None:
            machine = self._start(name, overlay, disks, "kvm")
            try:
                machine.wait_for_ssh(phase, bound=KVM_PROBE_SECONDS)
            except RehearsalError as error:
                machine.stop()
                qemu_said = machine.logs().get("qemu", "").strip().splitlines()
                self.kvm_refusal = "; ".join([error.problem, *qemu_said[:1]])
                self.accelerator = "tcg"
                if fresh_overlay:
                    make_overlay(self.image, overlay)
            else:
                self.accelerator = "kvm"
                self._record_accelerator()
                return machine
        self._record_accelerator()
        machine = self._start(name, overlay, disks, self.accelerator)
        try:
            machine.wait_for_ssh(phase)
        except BaseException:
            machine.stop()
            raise
        return machine

    def _start(
        self, name: str, overlay: Path, disks: Sequence[Disk], accelerator: str
    ) -> VirtualMachine:
        machine = VirtualMachine(name, self.image, overlay, disks, self.work_dir, accelerator)
        self.machines.append(machine)
        machine.start()
        return machine

    def _record_accelerator(self) -> None:
        self.benchmark.facts["accelerator"] = self.accelerator
        if self.kvm_refusal:
            self.benchmark.facts["kvm_not_used_because"] = self.kvm_refusal

    def stop_all(self) -> None:
        for machine in self.machines:
            machine.stop()

    def leftover_processes(self) -> list[int]:
        return [m.process.pid for m in self.machines if m.process and m.process.poll() is None]
