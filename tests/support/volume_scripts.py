"""Running the volume scripts against loop devices, and building what a volume may hold.

Each layout builder writes one kind of content onto a blank loop volume the way a
person or tool would (parted, mkfs, cryptsetup, pvcreate, ...). `DeviceSnapshot`
records the bytes a refused run must leave alone.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.machinery
import importlib.util
import os
import pwd
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.block_devices import MIB, LoopVolume, link_by_id, run
from tests.support.paths import REMOTE_SCRIPTS

PREPARE_VOLUME = REMOTE_SCRIPTS / "prepare-volume"
# How the program runs it on the server (CopyToRemote does not keep the file's mode).
PREPARE_VOLUME_COMMAND = ("python3", str(PREPARE_VOLUME))
RELEASE_VOLUME = REMOTE_SCRIPTS / "release-volume.sh"
DATA_FILE = "experiments/run-1/metrics.csv"
DATA = b"epoch,accuracy\n1,0.71\n2,0.84\n"


def prepare_volume_module() -> ModuleType:
    """scripts/remote/prepare-volume imported as a module, for its pure functions.

    No bytecode is written: a cache in scripts/remote would be copied to every server.
    """
    name = "prepare_volume"
    if name not in sys.modules:
        loader = importlib.machinery.SourceFileLoader(name, str(PREPARE_VOLUME))
        spec = importlib.util.spec_from_loader(name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        writes_bytecode = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        try:
            sys.modules[name] = module
            loader.exec_module(module)
        finally:
            sys.dont_write_bytecode = writes_bytecode
    return sys.modules[name]


def new_volume_id() -> str:
    """A fresh Cinder-style volume id (a UUID)."""
    return str(uuid.uuid4())


@dataclass
class Server:
    """The places prepare-volume reads and writes on one (pretend) server."""

    root: Path
    by_id_dir: Path = field(init=False)
    fstab: Path = field(init=False)
    mount_point: Path = field(init=False)
    volume_ids: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.by_id_dir = self.root / "dev-disk-by-id"
        self.fstab = self.root / "fstab"
        self.mount_point = self.root / "mnt" / "block"
        self.by_id_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {**os.environ, "BY_ID_DIR": str(self.by_id_dir), "FSTAB": str(self.fstab)}

    def prepare(
        self,
        volume_id: str,
        *extra: str,
        owner: str = "nobody",
        mount_point: Path | None = None,
        timeout: int = 5,
    ) -> subprocess.CompletedProcess[str]:
        """Run prepare-volume as the program does, with no terminal on stdin."""
        self.volume_ids.add(volume_id)
        return run(
            *PREPARE_VOLUME_COMMAND,
            "--volume-id",
            volume_id,
            "--mount-point",
            str(mount_point or self.mount_point),
            "--owner",
            owner,
            "--timeout",
            str(timeout),
            *extra,
            check=False,
            env=self.env(),
        )

    def remove_lock_files(self) -> None:
        """The per-volume lock files the script leaves in /run/lock (one per volume id)."""
        for volume_id in self.volume_ids:
            lock_file(volume_id).unlink(missing_ok=True)


def lock_file(volume_id: str) -> Path:
    """Where prepare-volume takes its per-volume lock."""
    return Path(f"/run/lock/chi-persist-prepare-volume-{volume_id}.lock")


def mounted_targets(device: str) -> list[str]:
    """Where the device or any of its partitions is mounted, from the kernel's view."""
    numbers = {device_number(path) for path in [device, *partitions_of(device)]}
    targets = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if fields[2] in numbers:
                targets.append(fields[4].replace("\\040", " "))
    return targets


def device_number(path: str) -> str:
    """MAJOR:MINOR of a block device."""
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def partitions_of(device: str) -> list[str]:
    """The kernel's partitions of a disk, as /dev paths, in number order."""
    sys_dir = Path(f"/sys/dev/block/{device_number(device)}").resolve()
    found = []
    for entry in sys_dir.iterdir():
        number_file = entry / "partition"
        if number_file.exists():
            found.append((int(number_file.read_text()), f"/dev/{entry.name}"))
    return [path for _, path in sorted(found)]


def probe(path: str, tag: str) -> str:
    """One tag of a low-level blkid probe ('' when absent)."""
    return run("blkid", "-p", "-s", tag, "-o", "value", path, check=False).stdout.strip()


def filesystem_created(path: str) -> str:
    """The 'Filesystem created' time in an ext4 superblock: it changes only with mkfs."""
    header = run("dumpe2fs", "-h", path).stdout
    return next(line for line in header.splitlines() if line.startswith("Filesystem created:"))


def is_mount_point(path: Path) -> bool:
    return run("mountpoint", "-q", str(path), check=False).returncode == 0


def write_data(directory: Path) -> None:
    """Put a student's file on a mounted volume."""
    target = directory / DATA_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(DATA)


def put_data_on(partition_or_disk: str, scratch: Path) -> None:
    """Mount a filesystem briefly and leave a data file on it."""
    scratch.mkdir(parents=True, exist_ok=True)
    run("mount", partition_or_disk, str(scratch))
    try:
        write_data(scratch)
    finally:
        run("umount", str(scratch))


# --- what a volume may hold ---------------------------------------------------


def tutorial_layout(volume: LoopVolume, scratch: Path) -> None:
    """The tutorial's steps: GPT, one partition 'primary' over 0%-100%, ext4, data."""
    run("parted", "-s", volume.device, "mklabel", "gpt")
    run("parted", "-s", volume.device, "mkpart", "primary", "ext4", "0%", "100%")
    volume.settle()
    run("mkfs.ext4", "-q", volume.partition(1))
    put_data_on(volume.partition(1), scratch)


def whole_disk_ext4(volume: LoopVolume, scratch: Path) -> None:
    """ext4 straight on the device, with data."""
    run("mkfs.ext4", "-q", volume.device)
    put_data_on(volume.device, scratch)


def one_gpt_partition(volume: LoopVolume, name: str, filesystem: str = "ext4") -> None:
    """A GPT table with one partition over the disk (from 1 MiB), and nothing in it."""
    run("parted", "-s", volume.device, "mklabel", "gpt", "mkpart", name, filesystem, "1MiB", "100%")


def interrupted_first_run(volume: LoopVolume, scratch: Path) -> None:
    """What a first run leaves when it stops between partitioning and mkfs."""
    one_gpt_partition(volume, "chi-persist")
    volume.settle()


def xfs(volume: LoopVolume, scratch: Path) -> None:
    run("mkfs.xfs", "-q", volume.device)


def btrfs(volume: LoopVolume, scratch: Path) -> None:
    run("mkfs.btrfs", "-q", volume.device)


def ext3(volume: LoopVolume, scratch: Path) -> None:
    run("mkfs.ext3", "-q", volume.device)


def swap(volume: LoopVolume, scratch: Path) -> None:
    run("mkswap", volume.device)


def luks(volume: LoopVolume, scratch: Path) -> None:
    key = scratch.parent / "luks.key"
    key.write_bytes(os.urandom(32))
    run(
        "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--key-file", str(key),
        "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", volume.device,
    )  # fmt: skip


def lvm_member(volume: LoopVolume, scratch: Path) -> None:
    env = {**os.environ, "LVM_SUPPRESS_FD_WARNINGS": "1"}
    run("pvcreate", "--yes", volume.device, env=env)


def raid_member(volume: LoopVolume, scratch: Path) -> None:
    """An mdadm 1.2 member superblock (4 KiB in), as `mdadm --create` writes it.

    The kernel here has no md driver, so mdadm cannot create an array; the superblock
    is written field by field, with md's checksum, and `mdadm --examine` reads it back.
    """
    max_dev = 2
    block = bytearray(256 + 2 * max_dev)
    struct.pack_into("<IIII", block, 0, 0xA92B4EFC, 1, 0, 0)  # magic, major version 1
    block[16:32] = uuid.uuid4().bytes  # array uuid
    block[32:40] = b"host:md0"
    now = int(time.time())
    struct.pack_into("<QiIQII", block, 64, now, 1, 0, 1_000_000, 0, 2)  # ctime, raid1, 2 disks
    struct.pack_into("<QQQQ", block, 128, 2048, 1_000_000, 8, 0)  # data and super offsets
    block[168:184] = uuid.uuid4().bytes  # device uuid
    struct.pack_into("<QQQ", block, 192, now, 1, 2**64 - 1)  # utime, events, resync offset
    struct.pack_into("<I", block, 220, max_dev)
    struct.pack_into("<HH", block, 256, 0, 0xFFFF)
    total = sum(struct.unpack_from(f"<{len(block) // 4}I", block))
    struct.pack_into("<I", block, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
    with open(volume.device, "r+b") as device:
        device.seek(4096)
        device.write(block)
        device.flush()
        os.fsync(device.fileno())
    examined = run("mdadm", "--examine", volume.device, check=False).stdout
    assert "Raid Level : raid1" in examined, examined


def dos_table_with_ext4(volume: LoopVolume, scratch: Path) -> None:
    """An MBR ('dos') table whose one partition holds ext4 and data."""
    run("parted", "-s", volume.device, "mklabel", "msdos")
    run("parted", "-s", volume.device, "mkpart", "primary", "ext4", "1MiB", "100%")
    volume.settle()
    run("mkfs.ext4", "-q", volume.partition(1))
    put_data_on(volume.partition(1), scratch)


def two_partitions(volume: LoopVolume, scratch: Path) -> None:
    """GPT with two ext4 partitions, data on the first."""
    run(
        "parted", "-s", volume.device, "mklabel", "gpt",
        "mkpart", "chi-persist", "ext4", "1MiB", "50%", "mkpart", "other", "ext4", "50%", "100%",
    )  # fmt: skip
    volume.settle()
    run("mkfs.ext4", "-q", volume.partition(1))
    run("mkfs.ext4", "-q", volume.partition(2))
    put_data_on(volume.partition(1), scratch)


def gpt_partition_with_xfs(volume: LoopVolume, scratch: Path) -> None:
    one_gpt_partition(volume, "chi-persist", "xfs")
    volume.settle()
    run("mkfs.xfs", "-q", volume.partition(1))


def empty_gpt_table(volume: LoopVolume, scratch: Path) -> None:
    run("parted", "-s", volume.device, "mklabel", "gpt")


def someone_elses_empty_partition(volume: LoopVolume, scratch: Path) -> None:
    """One empty GPT partition that this project did not make (name 'primary')."""
    one_gpt_partition(volume, "primary")
    volume.settle()


def damaged_project_filesystem(volume: LoopVolume, scratch: Path) -> None:
    """The project's partition whose ext4 lost its superblock magic: data without a signature."""
    interrupted_first_run(volume, scratch)
    run("mkfs.ext4", "-q", volume.partition(1))
    put_data_on(volume.partition(1), scratch)
    with open(volume.partition(1), "r+b") as partition:
        partition.seek(1024 + 0x38)  # s_magic of the primary superblock
        partition.write(b"\0\0")
        partition.flush()
        os.fsync(partition.fileno())


def whole_disk_ext4_with_stale_dos_table(volume: LoopVolume, scratch: Path) -> None:
    """ext4 on the whole device plus an old MBR in its first sector: ambiguous."""
    whole_disk_ext4(volume, scratch)
    template = scratch.parent / "dos-template.img"
    with open(template, "wb") as handle:
        handle.truncate(16 * MIB)
    run("parted", "-s", str(template), "mklabel", "msdos")
    run("parted", "-s", str(template), "mkpart", "primary", "ext4", "1MiB", "100%")
    sector = template.read_bytes()[:512]
    with open(volume.device, "r+b") as device:
        device.write(sector)
        device.flush()
        os.fsync(device.fileno())


def unrecognised_data(volume: LoopVolume, scratch: Path) -> None:
    """Bytes no prober knows, 1 MiB in (as a raw dump would leave)."""
    with open(volume.device, "r+b") as device:
        device.seek(MIB)
        device.write(b"raw experiment dump, no filesystem\n" * 100)
        device.flush()
        os.fsync(device.fileno())


def gpt_with_only_its_backup_header(volume: LoopVolume, scratch: Path) -> None:
    """A GPT disk whose start was zeroed: only the backup header at the end remains."""
    interrupted_first_run(volume, scratch)
    run("mkfs.ext4", "-q", volume.partition(1))
    with open(volume.device, "r+b") as device:
        device.write(bytes(MIB))
        device.flush()
        os.fsync(device.fileno())


Layout = Callable[[LoopVolume, Path], None]


def tool_missing(*tools: str) -> str | None:
    """Why a layout cannot be built here, or None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)} (tests/debian-packages.txt)" if missing else None


# --- proving nothing was written ------------------------------------------------


def content_digest(image: Path, block_size: int = 64 * 1024) -> str:
    """A digest of the sparse image's content: the offset and bytes of every non-zero block.

    Only allocated ranges are read (SEEK_DATA/SEEK_HOLE); zero blocks are skipped, so
    the digest does not depend on how the file happens to be allocated, only on what
    it holds. Any write that changes a byte of the device changes the digest.
    """
    digest = hashlib.sha256()
    zeros = bytes(block_size)
    with open(image, "rb") as handle:
        descriptor = handle.fileno()
        size = os.fstat(descriptor).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(descriptor, offset, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(descriptor, start, os.SEEK_HOLE)
            position = start - start % block_size
            handle.seek(position)
            while position < end:
                block = handle.read(block_size)
                if block != zeros[: len(block)]:
                    digest.update(f"{position}:".encode())
                    digest.update(block)
                position += block_size
            offset = max(end, position)
    return digest.hexdigest()


@dataclass
class DeviceSnapshot:
    """The first 4 MiB of the device and of each partition, and a digest of all its content."""

    head: bytes
    partition_heads: dict[int, bytes]
    content: str

    @classmethod
    def of(cls, volume: LoopVolume) -> DeviceSnapshot:
        run("blockdev", "--flushbufs", volume.device)
        heads = {}
        table = run(
            "partx", "--show", "--noheadings", "--output", "NR,START", volume.device,
            check=False,
        )  # fmt: skip
        if table.returncode == 0:
            with open(volume.image, "rb") as image:
                for line in table.stdout.splitlines():
                    number, start = (int(value) for value in line.split())
                    image.seek(start * 512)
                    heads[number] = image.read(4 * MIB)
        return cls(volume.read_head(4 * MIB), heads, content_digest(volume.image))


# --- a volume that grew ----------------------------------------------------------

GIB = 1024 * MIB


def grow(volume: LoopVolume, by_mib: int) -> None:
    """Make the device larger, as Cinder's extend does: the image grows, the kernel is told."""
    with open(volume.image, "r+b") as handle:
        handle.truncate(os.path.getsize(volume.image) + by_mib * MIB)
    run("losetup", "--set-capacity", volume.device)
    volume.settle()


def shrink(volume: LoopVolume, to_mib: int) -> None:
    """Cut the device short (what no cloud does, and what growing must never assume)."""
    with open(volume.image, "r+b") as handle:
        handle.truncate(to_mib * MIB)
    run("losetup", "--set-capacity", volume.device)
    volume.settle()


def device_bytes(device: str) -> int:
    return int(run("blockdev", "--getsize64", device).stdout)


def ext4_bytes(path: str) -> int:
    """The filesystem's size from its superblock: block count times block size."""
    header = run("dumpe2fs", "-h", path).stdout
    fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def gpt_last_usable_lba(device: str) -> int:
    """The last usable sector the primary GPT header records (sfdisk's last-lba)."""
    dump = run("sfdisk", "--dump", device).stdout
    return int(next(line for line in dump.splitlines() if line.startswith("last-lba:")).split()[1])


@dataclass
class KnownData:
    """Files of deterministic pseudo-random bytes and the sha256 of each."""

    root: Path
    digests: dict[str, str]

    def changed(self) -> list[str]:
        """Files whose bytes differ from what was written (or that are gone)."""
        changed = []
        for name, digest in self.digests.items():
            path = self.root / name
            if not path.is_file() or _sha256_of(path) != digest:
                changed.append(name)
        return changed


def fill_with_known_data(
    directory: Path, seed: int = 1, limit_mib: int | None = None, name: str = "known-data"
) -> KnownData:
    """Write pseudo-random files under a mounted filesystem until it is full (or `limit_mib`).

    Each file's sha256 is kept, to prove later that not a byte changed.
    """
    generator = random.Random(seed)
    target = directory / name
    target.mkdir(exist_ok=True)
    digests: dict[str, str] = {}
    chunk = 8 * MIB
    written = 0
    number = 0
    while chunk >= 4096 and (limit_mib is None or written < limit_mib * MIB):
        path = target / f"file-{number:05d}.bin"
        data = generator.randbytes(chunk)
        try:
            with open(path, "wb") as handle:
                handle.write(data)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            path.unlink(missing_ok=True)
            chunk //= 4
            continue
        digests[path.relative_to(directory).as_posix()] = hashlib.sha256(data).hexdigest()
        written += chunk
        number += 1
    os.sync()
    return KnownData(directory, digests)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def gpt_partition_with_a_gap(volume: LoopVolume, scratch: Path) -> None:
    """One ext4 partition that stops at three quarters of the disk, with data."""
    run("parted", "-s", volume.device, "mklabel", "gpt", "mkpart", "primary", "ext4", "1MiB", "75%")
    volume.settle()
    run("mkfs.ext4", "-q", volume.partition(1))
    put_data_on(volume.partition(1), scratch)


# --- a pretend server and what a run leaves on it ---------------------------------

FSTAB_LINE = re.compile(
    r"^UUID=(?P<uuid>[0-9a-f-]{36}) (?P<target>\S+) ext4 "
    r"defaults,nofail,x-systemd\.device-timeout=30s 0 2$"
)
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture(name="servers")
def servers_fixture(tmp_path: Path) -> Iterator[Callable[[str], Server]]:
    """Makes servers (temporary by-id directory, fstab, mount point); removes their locks after."""
    made: list[Server] = []

    def make(name: str) -> Server:
        made.append(Server(tmp_path / name))
        return made[-1]

    yield make
    for server in made:
        server.remove_lock_files()


@pytest.fixture(name="server")
def server_fixture(servers: Callable[[str], Server]) -> Server:
    """One server's temporary by-id directory, fstab and mount point."""
    return servers("server")


def attach(server: Server, volume: LoopVolume, style: str = "virtio") -> str:
    """Give the volume an id and the by-id link the hypervisor would make; returns the id."""
    volume_id = new_volume_id()
    link_by_id(server.by_id_dir, volume_id, volume.device, style=style)
    return volume_id


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The fields of the closing 'ready:' line."""
    line = last_line(result)
    assert line.startswith("prepare-volume: ready: "), result.stdout + result.stderr
    fields = line.removeprefix("prepare-volume: ready: ")
    mount_point_start = fields.index(" mount_point=")
    formatted_start = fields.index(" formatted=")
    head = dict(item.split("=", 1) for item in fields[:mount_point_start].split())
    head["mount_point"] = fields[mount_point_start + len(" mount_point=") : formatted_start]
    head["formatted"] = fields[formatted_start + len(" formatted=") :]
    return head


def fstab_lines_for(fstab: Path, mount_point: Path) -> list[str]:
    target = str(mount_point).replace(" ", "\\040")
    return [
        line
        for line in fstab.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#") and line.split()[1] == target
    ]


def assert_verifies(fstab: Path) -> None:
    """findmnt --verify finds neither errors nor warnings in the fstab."""
    verified = run("findmnt", "--verify", "--verbose", "--tab-file", str(fstab), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Success, no errors or warnings detected" in verified.stdout + verified.stderr


def assert_mounted_and_recorded(server: Server, result, volume_id: str, mount_point: Path) -> str:
    """The volume is mounted by its UUID, with one fstab line and volume.env; returns the UUID."""
    assert result.returncode == 0, result.stdout + result.stderr
    fields = summary(result)
    uuid = fields["uuid"]
    assert fields["mount_point"] == str(mount_point)
    assert probe(fields["device"], "UUID") == uuid
    assert os.stat(mount_point).st_dev == os.stat(fields["device"]).st_rdev
    lines = fstab_lines_for(server.fstab, mount_point)
    assert len(lines) == 1, server.fstab.read_text()
    match = FSTAB_LINE.match(lines[0])
    assert match and match["uuid"] == uuid, lines[0]
    metadata = mount_point / ".chi-persist"
    assert stat.S_IMODE(metadata.stat().st_mode) == 0o755
    assert (metadata.stat().st_uid, metadata.stat().st_gid) == (0, 0)
    volume_env = metadata / "volume.env"
    assert volume_env.read_text() == f"VOLUME_ID={volume_id}\nFS_UUID={uuid}\n"
    assert stat.S_IMODE(volume_env.stat().st_mode) == 0o644 and volume_env.stat().st_uid == 0
    top = mount_point.stat()
    assert (top.st_uid, top.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    return uuid


def assert_untouched(volume: LoopVolume, before: DeviceSnapshot, server: Server) -> None:
    """Not one byte written, nothing mounted, no fstab written."""
    after = DeviceSnapshot.of(volume)
    assert after.head == before.head, "the first 4 MiB of the device changed"
    assert after.partition_heads == before.partition_heads, "a partition's first 4 MiB changed"
    assert after.content == before.content, "the device's data changed"
    assert mounted_targets(volume.device) == []
    assert not is_mount_point(server.mount_point)
    assert not server.fstab.exists()
