"""A mounted volume grows online in a real guest kernel, by 1 GiB, and keeps every byte.

When a student raises `volumeSize`, Cinder extends the volume while it stays
attached and the program runs its prepare step again with the new `--size-gib`:
prepare-volume grows the partition (growpart) and the mounted ext4 (resize2fs,
through the kernel's online resize, which needs CAP_SYS_RESOURCE: a server's root
has it, a test host's root may not). Here the volume is a virtio disk of a qemu
guest, grown through qemu's monitor (block_resize) while mounted, so the guest
kernel sees a real capacity change, as after Cinder's online extend.

For each layout prepare-volume grows (its own GPT partition, the tutorial's GPT
+ ext4 partition, ext4 on the whole disk):
  - server 1 makes the volume on a blank 1 GiB disk: the program's prepare step on
    the blank disk, or the tutorial's parted + mkfs.ext4 (or a bare mkfs.ext4) and
    then the prepare step;
  - this host fills it to its last block with files of known pseudo-random bytes,
    keeping each file's sha256 (under software emulation the guest writes and hashes
    at a few MB/s; the host does it in seconds);
  - server 2 runs the prepare step (mounted, nothing to grow), the disk grows by
    1 GiB while mounted, the prepare step for the new size grows it in place, more
    data than the old filesystem could hold is written, and a second run is a no-op.

Data safety: afterwards every file written before the growth has its sha256 again,
the filesystem is clean (e2fsck -f -n), it was never unmounted meanwhile (same mount
id), the partition kept its first sector, and the GPT's backup header sits at the
new end of the disk.
"""

from __future__ import annotations

import hashlib
import random
import re
import shlex
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.block_devices import MIB, LoopVolumes, run
from tests.support.program import CommandStep, CopyStep, evaluate_program
from tests.support.volume_scripts import KnownData, fill_with_known_data
from tests.vm.failures import RehearsalError
from tests.vm.image import ensure_image, image_skip_reason, recipe_digest
from tests.vm.rehearsal import (
    Benchmark,
    CommandResult,
    Disk,
    Servers,
    VirtualMachine,
    make_sparse_volume,
    vm_skip_reason,
)

pytestmark = pytest.mark.vm

GIB = 1024 * MIB
STACK = "growth"
VOLUME_GIB = 1
GROWN_GIB = VOLUME_GIB + 1
# Written into the new space: with the old filesystem full, this much more data on
# the volume than the old filesystem's whole size needs the new space to be usable.
NEW_DATA_BYTES = 128 * MIB
SOURCE_SERIAL = "known-data"
FACTS_SCRIPT = Path(__file__).resolve().parent / "volume-facts.sh"
REMOTE_FACTS_SCRIPT = "/home/cc/volume-facts.sh"
NEW_DATA_FILE = "new-space/after-growth.bin"
GPT_SECTORS = 34  # protective MBR, GPT header, 32 sectors of entries
GREW = re.compile(r"^prepare-volume: volume grew from (\d+) MiB to (\d+) MiB: filesystem resized$")


# The tutorial's steps on the disk given as $1: a GPT, one partition 'primary' over
# 0%-100%, ext4 on it.
TUTORIAL_COMMANDS = (
    'parted -s "$1" mklabel gpt && parted -s "$1" mkpart primary ext4 0% 100% '
    '&& udevadm settle && mkfs.ext4 -q "${1}1"'
)
WHOLE_DISK_COMMANDS = 'mkfs.ext4 -q "$1"'


@dataclass
class Layout:
    """One layout prepare-volume grows, and the volume that holds it in this test."""

    name: str
    mount_point: str
    partitioned: bool
    # Shell run as root in the guest, the blank disk as $1, before the prepare step
    # (None: the prepare step itself makes the layout).
    make: str | None
    volume_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    disk: Disk | None = None
    prepare: dict[int, str] = field(default_factory=dict)
    """The program's prepare command for each volume size in GiB."""
    data: KnownData | None = None

    @property
    def link(self) -> str:
        return f"/dev/disk/by-id/virtio-{self.volume_id[:20]}"


def layouts() -> list[Layout]:
    return [
        Layout("own-gpt-partition", "/mnt/own-layout", True, None),
        Layout("tutorial-gpt-partition", "/mnt/tutorial-layout", True, TUTORIAL_COMMANDS),
        Layout("whole-disk-ext4", "/mnt/whole-disk", False, WHOLE_DISK_COMMANDS),
    ]


@dataclass
class ProgramSteps:
    """The program's steps that put its scripts on a server."""

    wait_for_boot: CommandStep
    copy_scripts: CopyStep


def step_named(steps: list[CopyStep | CommandStep], suffix: str) -> CopyStep | CommandStep:
    found = [step for step in steps if step.name.endswith(suffix)]
    assert len(found) == 1, f"expected one step named *{suffix}, found {found}"
    return found[0]


def program_steps(layout: Layout, private_key: Path) -> ProgramSteps:
    """The program's prepare command for the volume at each size, as `pulumi up` would run it."""
    steps: list[CopyStep | CommandStep] = []
    for size in (VOLUME_GIB, GROWN_GIB):
        config = {
            "keyPair": "rehearsal",
            "sshPrivateKeyPath": str(private_key),
            "mountPoint": layout.mount_point,
            "volumeSize": size,
        }
        steps = evaluate_program(STACK, config, volume_id=layout.volume_id).provisioning_steps()
        prepare = step_named(steps, "prepare-volume")
        assert isinstance(prepare, CommandStep)
        assert f"--size-gib {size}" in prepare.create, prepare.create
        layout.prepare[size] = prepare.create
    wait_for_boot = step_named(steps, "wait-for-boot")
    copy_scripts = step_named(steps, "copy-scripts")
    assert isinstance(wait_for_boot, CommandStep) and isinstance(copy_scripts, CopyStep)
    return ProgramSteps(wait_for_boot, copy_scripts)


def install_scripts(vm: VirtualMachine, steps: ProgramSteps, phase: str) -> None:
    """The program's scripts where its steps put them, and the test's facts script."""
    vm.run(steps.wait_for_boot.create, phase)
    vm.copy_into(steps.copy_scripts.source, steps.copy_scripts.remote_path, phase)
    vm.run(f"cat > {REMOTE_FACTS_SCRIPT}", phase, stdin=FACTS_SCRIPT.read_bytes())


def run_and_read_facts(
    vm: VirtualMachine, command: str, layout: Layout, phase: str
) -> tuple[CommandResult, dict[str, str]]:
    """Run a command, then read the volume's facts in the same SSH session.

    The command's own output and exit status are handed back as they were; the
    facts are the "volume-facts:" lines that follow.
    """
    facts = shlex.join(["sudo", "bash", REMOTE_FACTS_SCRIPT, layout.link, layout.mount_point])
    ran = vm.run(f"{command}\nstatus=$?\n{facts} || exit 1\nexit $status", phase)
    lines = ran.stdout.splitlines()
    found = dict(
        line.removeprefix("volume-facts: ").split("=", 1)
        for line in lines
        if line.startswith("volume-facts: ")
    )
    own = "\n".join(line for line in lines if not line.startswith("volume-facts: "))
    return CommandResult(command, ran.returncode, own, ran.stderr), found


def ready_fields(result: CommandResult) -> dict[str, str]:
    """The key=value fields of prepare-volume's closing 'ready:' line."""
    lines = [line for line in result.stdout.splitlines() if "prepare-volume: ready:" in line]
    assert lines, f"prepare-volume printed no 'ready:' line:\n{result.output}"
    return dict(item.split("=", 1) for item in lines[-1].split("ready:", 1)[1].split())


def grew_lines(result: CommandResult) -> list[re.Match[str]]:
    return [match for line in result.stdout.splitlines() if (match := GREW.match(line))]


def make_known_source(path: Path, size: int) -> tuple[Disk, str]:
    """A disk of pseudo-random bytes the guest copies into the new space; and their sha256."""
    data = random.Random(3).randbytes(size)
    path.write_bytes(data)
    return Disk(path, SOURCE_SERIAL), hashlib.sha256(data).hexdigest()


def filesystem_of(volume_device: str, layout: Layout) -> str:
    return f"{volume_device}p1" if layout.partitioned else volume_device


def fill_on_host(layout: Layout, loop_volumes: LoopVolumes, mount_point: Path) -> None:
    """Fill the volume to its last block with known data, from this host, then let it go."""
    assert layout.disk is not None
    volume = loop_volumes.attach(layout.disk.path)
    volume.settle()
    filesystem = filesystem_of(volume.device, layout)
    mount_point.mkdir(parents=True, exist_ok=True)
    run("mount", filesystem, str(mount_point))
    try:
        layout.data = fill_with_known_data(mount_point)
        free = shutil.disk_usage(mount_point).free
        assert free < MIB, f"the filesystem is not full: {free} bytes free"
        assert len(layout.data.digests) > 20
    finally:
        run("umount", str(mount_point))
        loop_volumes.release(volume)


def check_on_host(
    layout: Layout, loop_volumes: LoopVolumes, mount_point: Path, new_data_digest: str
) -> None:
    """The grown volume once the guest let it go: clean, every byte as written, GPT at the end."""
    assert layout.disk is not None and layout.data is not None
    assert layout.disk.path.stat().st_size == GROWN_GIB * GIB
    volume = loop_volumes.attach(layout.disk.path)
    volume.settle()
    filesystem = filesystem_of(volume.device, layout)
    checked = run("e2fsck", "-f", "-n", filesystem, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    if layout.partitioned:
        dump = run("sfdisk", "--dump", volume.device).stdout
        last_lba = next(line for line in dump.splitlines() if line.startswith("last-lba:"))
        assert int(last_lba.split()[1]) == GROWN_GIB * GIB // 512 - GPT_SECTORS, dump
    run("mount", "-o", "ro", filesystem, str(mount_point))
    try:
        assert layout.data.changed() == [], "files written before the growth changed"
        new_data = KnownData(mount_point, {NEW_DATA_FILE: new_data_digest})
        assert new_data.changed() == [], "the data written into the new space changed"
    finally:
        run("umount", str(mount_point))
        loop_volumes.release(volume)


def make_volume(vm: VirtualMachine, layout: Layout, phase: str) -> None:
    """Server 1: the layout on the blank disk, mounted by the program's prepare step."""
    command = layout.prepare[VOLUME_GIB]
    if layout.make is not None:
        disk = f'"$(readlink -e {shlex.quote(layout.link)})"'
        command = f"sudo sh -c {shlex.quote(layout.make)} sh {disk} && {command}"
    result = vm.run(command, phase)
    ready = ready_fields(result)
    expected = "yes" if layout.make is None else "no"
    assert ready["formatted"] == expected, result.output
    assert ready["mount_point"] == layout.mount_point


def mount_grow_and_check(
    vm: VirtualMachine, layout: Layout, source: Disk, benchmark: Benchmark
) -> None:
    """Server 2: mount, grow the disk by 1 GiB while mounted, grow in place, write, run again."""
    assert layout.disk is not None
    phase = f"server 2: {layout.name}: mount (the program's step, {VOLUME_GIB} GiB)"
    with benchmark.phase(phase):
        result, before = run_and_read_facts(vm, layout.prepare[VOLUME_GIB], layout, phase)
        assert result.returncode == 0, result.output
        assert ready_fields(result)["formatted"] == "no", result.output
        assert "nothing to grow" in result.stdout and grew_lines(result) == [], result.output
        assert before["device_bytes"] == str(VOLUME_GIB * GIB)
        assert before["mount_id"], f"{layout.mount_point} is not mounted:\n{result.output}"
        assert before["kernel_resized_to"] == "", "the new server's kernel resized it already"

    phase = f"server 2: {layout.name}: disk grows by 1 GiB while mounted"
    with benchmark.phase(phase) as record:
        vm.resize_disk(layout.disk, GROWN_GIB * GIB, phase)
        record.note = "qemu block_resize"

    phase = f"server 2: {layout.name}: grow online (the program's step, {GROWN_GIB} GiB)"
    with benchmark.phase(phase):
        result, after = run_and_read_facts(vm, layout.prepare[GROWN_GIB], layout, phase)
        assert result.returncode == 0, result.output
        assert f"(the volume is {GROWN_GIB} GiB)" in result.stdout, result.output
        assert f"already mounted at {layout.mount_point}" in result.stdout, result.output
        (grew,) = grew_lines(result)
        old_mib, new_mib = int(grew[1]), int(grew[2])
        assert old_mib == int(before["filesystem_bytes"]) // MIB, result.output
        assert new_mib - old_mib >= 1024 - 16, result.output
        assert int(after["filesystem_bytes"]) // MIB == new_mib
        assert after["device_bytes"] == str(GROWN_GIB * GIB)
        assert after["mount_id"] == before["mount_id"], "the volume was unmounted to grow it"
        # The running kernel's own word that it resized the mounted filesystem.
        assert after["kernel_resized_to"] == after["filesystem_blocks"], after
        assert after["filesystem"] == before["filesystem"]
        assert after["data_bytes"] == before["data_bytes"]
        assert ready_fields(result)["formatted"] == "no"
        if layout.partitioned:
            assert "growpart" in result.stdout, result.output
            assert after["partition_start"] == before["partition_start"], "the partition moved"
            assert int(after["gpt_last_lba"]) == GROWN_GIB * GIB // 512 - GPT_SECTORS

    phase = f"server 2: {layout.name}: write into the new space"
    with benchmark.phase(phase) as record:
        target = f"{layout.mount_point}/{NEW_DATA_FILE}"
        copy = shlex.join(["sudo", "mkdir", "-p", str(Path(target).parent)]) + " && " + shlex.join(
            ["sudo", "dd", f"if=/dev/disk/by-id/virtio-{source.serial}", f"of={target}",
             "bs=4M", "iflag=fullblock", "conv=fsync", "status=none"]
        )  # fmt: skip
        result, written = run_and_read_facts(vm, copy, layout, phase)
        assert result.returncode == 0, result.output
        data_bytes = int(written["data_bytes"])
        assert data_bytes == int(after["data_bytes"]) + NEW_DATA_BYTES
        assert data_bytes > int(before["filesystem_bytes"]), (
            f"{data_bytes} bytes of files fit in a filesystem that had "
            f"{before['filesystem_bytes']} bytes before it grew: the new space is not in use"
        )
        old_mib = int(before["filesystem_bytes"]) // MIB
        record.note = f"{data_bytes // MIB} MiB of files; the old filesystem had {old_mib} MiB"

    phase = f"server 2: {layout.name}: run again (nothing to grow)"
    with benchmark.phase(phase):
        result, again = run_and_read_facts(vm, layout.prepare[GROWN_GIB], layout, phase)
        assert result.returncode == 0, result.output
        assert grew_lines(result) == [] and "nothing to grow" in result.stdout, result.output
        assert "growpart" not in result.stdout, result.output
        assert again["filesystem_bytes"] == after["filesystem_bytes"]
        assert again["mount_id"] == before["mount_id"]
        if layout.partitioned:
            for key in ("gpt_head_sha256", "gpt_tail_sha256", "gpt_last_lba"):
                assert again[key] == after[key], f"the partition table was written again ({key})"


def test_mounted_volume_grows_online_by_one_gib_and_keeps_every_byte(
    tmp_path: Path, loop_volumes: LoopVolumes, benchmark_summary
) -> None:
    """Data safety: each layout, full of known data, grows by 1 GiB while mounted; same bytes."""
    for reason in (image_skip_reason(), vm_skip_reason()):
        if reason:
            pytest.skip(reason)

    benchmark = Benchmark()
    servers: Servers | None = None
    failure = ""
    try:
        with benchmark.phase("image: build or reuse") as record:
            image, built = ensure_image()
            record.note = f"{'built' if built else 'cached'} {image.directory}"
        benchmark.facts["image"] = {"digest": recipe_digest(), "built_now": built}

        volumes = layouts()
        with benchmark.phase("evaluate the program under mocks"):
            for layout in volumes:
                steps = program_steps(layout, image.private_key)
                layout.disk = Disk(
                    make_sparse_volume(tmp_path / f"{layout.name}.img", VOLUME_GIB * GIB),
                    layout.volume_id[:20],
                )
        source, new_data_digest = make_known_source(tmp_path / "known-data.img", NEW_DATA_BYTES)
        disks = [layout.disk for layout in volumes if layout.disk is not None]
        servers = Servers(image, tmp_path / "logs", benchmark)
        host_mounts = tmp_path / "host-mounts"

        # --- server 1: the three volumes made on blank disks ---------------------
        with servers.boot("server 1", tmp_path / "server-1.qcow2", disks, fresh_overlay=True) as vm:
            with benchmark.phase("server 1: the program's scripts"):
                install_scripts(vm, steps, "server 1: the program's scripts")
            for layout in volumes:
                phase = f"server 1: {layout.name}: make the volume"
                with benchmark.phase(phase):
                    make_volume(vm, layout, phase)
            phase = "server 1: unmount"
            with benchmark.phase(phase):
                mount_points = [layout.mount_point for layout in volumes]
                vm.run(shlex.join(["sudo", "umount", *mount_points]) + " && sync", phase)

        # --- this host: a semester of data, to the last block ---------------------
        for layout in volumes:
            with benchmark.phase(f"host: {layout.name}: fill with known data") as record:
                fill_on_host(layout, loop_volumes, host_mounts / layout.name)
                assert layout.data is not None
                record.note = f"{len(layout.data.digests)} files"

        # --- server 2: mounted, grown online, written, run again ------------------
        disks_2 = [*disks, source]
        with servers.boot(
            "server 2", tmp_path / "server-2.qcow2", disks_2, fresh_overlay=True
        ) as vm:
            with benchmark.phase("server 2: the program's scripts"):
                install_scripts(vm, steps, "server 2: the program's scripts")
            for layout in volumes:
                mount_grow_and_check(vm, layout, source, benchmark)
            phase = "server 2: unmount"
            with benchmark.phase(phase):
                mount_points = [layout.mount_point for layout in volumes]
                vm.run(shlex.join(["sudo", "umount", *mount_points]) + " && sync", phase)

        # --- this host: every byte, the filesystem, the table -----------------------
        for layout in volumes:
            with benchmark.phase(f"host: {layout.name}: check every byte"):
                check_on_host(layout, loop_volumes, host_mounts / layout.name, new_data_digest)
    except RehearsalError as error:
        failure = f"{error}\n(all logs: {tmp_path / 'logs'})"
    finally:
        if servers is not None:
            servers.stop_all()
            assert servers.leftover_processes() == []
        benchmark_summary(benchmark.table())
    if failure:
        pytest.fail(failure, pytrace=False)
