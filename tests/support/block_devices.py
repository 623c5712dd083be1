"""Real block devices for tests: sparse files behind loop devices, as root.

A test asks for `loop_volume` (a fresh 2 GiB blank device) or calls
`make_loop_volume` for more; every device is unmounted and detached afterwards,
whatever the test did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

MIB = 1024 * 1024
NEEDED_TOOLS = ("losetup", "blkid", "parted", "mkfs.ext4", "mount", "findmnt")


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command with no terminal on stdin, capturing text output."""
    return subprocess.run(
        list(command),
        check=check,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def block_device_skip_reason() -> str | None:
    """Why loop-device tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for loop devices and mount"
    missing = [tool for tool in NEEDED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (tests/run installs them)"
    return None


requires_block_devices = pytest.mark.skipif(
    block_device_skip_reason() is not None, reason=str(block_device_skip_reason())
)


@dataclass
class LoopVolume:
    """A sparse image file attached as a loop device with partition scanning."""

    image: Path
    device: str

    def partition(self, number: int) -> str:
        return f"{self.device}p{number}"

    def read_head(self, size: int = 4 * MIB) -> bytes:
        """The first bytes of the backing file, to prove nothing was written."""
        with open(self.image, "rb") as handle:
            return handle.read(size)

    def settle(self) -> None:
        """Re-read the partition table and wait for the kernel's view to settle."""
        run("partx", "-u", self.device, check=False)
        run("udevadm", "settle", check=False)


def _mounted_from(device: str) -> list[str]:
    listing = run("findmnt", "-rn", "-o", "SOURCE,TARGET", check=False).stdout
    targets = []
    for line in listing.splitlines():
        source, _, target = line.partition(" ")
        if source == device or source.startswith(f"{device}p"):
            targets.append(target.replace("\\x20", " "))
    return targets


def detach(volume: LoopVolume) -> None:
    """Unmount everything from the device and its partitions, then detach it."""
    for target in sorted(_mounted_from(volume.device), key=len, reverse=True):
        run("umount", target, check=False)
    run("losetup", "-d", volume.device, check=False)


class LoopVolumes:
    """Makes loop volumes under a directory and detaches them all at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.volumes: list[LoopVolume] = []

    def make(self, size_mib: int = 2048, name: str | None = None) -> LoopVolume:
        image = self.directory / f"{name or f'volume-{len(self.volumes)}'}.img"
        with open(image, "wb") as handle:
            handle.truncate(size_mib * MIB)
        return self.attach(image)

    def attach(self, image: Path) -> LoopVolume:
        """An existing image (a virtual machine's disk) as a loop device, detached at the end."""
        device = run("losetup", "--find", "--show", "--partscan", str(image)).stdout.strip()
        volume = LoopVolume(image=image, device=device)
        self.volumes.append(volume)
        return volume

    def release(self, volume: LoopVolume) -> None:
        """Unmount and detach one volume now; its image stays."""
        detach(volume)
        self.volumes.remove(volume)

    def close(self) -> None:
        for volume in reversed(self.volumes):
            detach(volume)


@pytest.fixture
def loop_volumes(tmp_path: Path) -> Iterator[LoopVolumes]:
    """A factory of loop volumes, all detached when the test ends."""
    reason = block_device_skip_reason()
    if reason:
        pytest.skip(reason)
    volumes = LoopVolumes(tmp_path)
    try:
        yield volumes
    finally:
        volumes.close()


@pytest.fixture
def loop_volume(loop_volumes: LoopVolumes) -> LoopVolume:
    """One blank 2 GiB loop volume."""
    return loop_volumes.make()


def link_by_id(by_id_dir: Path, volume_id: str, device: str, style: str = "virtio") -> Path:
    """Make the /dev/disk/by-id style link that udev would make for an attached volume.

    style "virtio": virtio-blk's serial, the first 20 characters of the id;
    style "scsi": virtio-scsi's, the whole id.
    """
    by_id_dir.mkdir(parents=True, exist_ok=True)
    if style == "virtio":
        link = by_id_dir / f"virtio-{volume_id[:20]}"
    elif style == "scsi":
        link = by_id_dir / f"scsi-0QEMU_QEMU_HARDDISK_{volume_id}"
    else:
        raise ValueError(f"unknown by-id style {style!r}")
    link.symlink_to(device)
    return link
