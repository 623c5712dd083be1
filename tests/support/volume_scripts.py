"""Running the volume scripts against loop devices, and building what a volume may hold.

Each layout builder writes one kind of content onto a blank loop volume the way a
person or tool would (parted, mkfs, cryptsetup, pvcreate, ...). `DeviceSnapshot`
records the bytes a refused run must leave alone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.block_devices import MIB, LoopVolume, run
from tests.support.paths import REMOTE_SCRIPTS

PREPARE_VOLUME = REMOTE_SCRIPTS / "prepare-volume.sh"
RELEASE_VOLUME = REMOTE_SCRIPTS / "release-volume.sh"
DATA_FILE = "experiments/run-1/metrics.csv"
DATA = b"epoch,accuracy\n1,0.71\n2,0.84\n"


def new_volume_id() -> str:
    """A fresh Cinder-style volume id (a UUID)."""
    return str(uuid.uuid4())


@dataclass
class Server:
    """The places prepare-volume.sh reads and writes on one (pretend) server."""

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
        """Run prepare-volume.sh as the program does, with no terminal on stdin."""
        self.volume_ids.add(volume_id)
        return run(
            "bash",
            str(PREPARE_VOLUME),
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
    """Where prepare-volume.sh takes its per-volume lock."""
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
