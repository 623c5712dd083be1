"""prepare-volume on loop devices that grew: partition and ext4 grow, and not a byte is lost.

Each volume here is filled to its last block with known data before it grows by
1 GiB (as Cinder's extend does), so every growth test is also a data-safety test:
the bytes of every file are compared by hash afterwards.

A mounted volume is grown online, which the kernel allows only with
CAP_SYS_RESOURCE; here the script runs without it, so what is proven is the
refusal that keeps every byte. The online growth itself is proven in a real guest
kernel, on a virtio disk grown while mounted: tests/vm/test_online_growth.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import volume_scripts as layouts
from tests.support.block_devices import MIB, LoopVolume, LoopVolumes, run
from tests.support.volume_scripts import (
    PREPARE_VOLUME_COMMAND,
    DeviceSnapshot,
    KnownData,
    Server,
    assert_mounted_and_recorded,
    assert_untouched,
    attach,
    device_bytes,
    ext4_bytes,
    filesystem_created,
    fill_with_known_data,
    gpt_last_usable_lba,
    grow,
    is_mount_point,
    mounted_targets,
    probe,
    server_fixture,  # noqa: F401 (the fixture "server")
    servers_fixture,  # noqa: F401 (the fixture "servers")
    shrink,
    summary,
)

pytestmark = [pytest.mark.root, pytest.mark.disk]

GREW = re.compile(r"^prepare-volume: volume grew from (\d+) MiB to (\d+) MiB: filesystem resized$")
ONE_GIB_MIB = 1024
# Small enough to fill quickly; the growth is the 1 GiB that matters.
FULL_VOLUME_MIB = 256
NEW_DATA_MIB = FULL_VOLUME_MIB + 64
GPT_SECTORS = 34  # protective MBR, GPT header, 32 sectors of entries
# The capability the kernel asks of whoever resizes a mounted ext4 (EXT4_IOC_RESIZE_FS).
CAP_SYS_RESOURCE = 24


def grew_lines(result: subprocess.CompletedProcess[str]) -> list[re.Match[str]]:
    return [match for line in result.stdout.splitlines() if (match := GREW.match(line))]


def own_layout(volume: LoopVolume, server: Server, volume_id: str) -> str:
    """What prepare-volume makes of a blank volume; returns the filesystem's device."""
    result = server.prepare(volume_id)
    assert result.returncode == 0, result.stdout + result.stderr
    return summary(result)["device"]


def tutorial_layout(volume: LoopVolume, server: Server, volume_id: str) -> str:
    """The tutorial's GPT + ext4 partition, then mounted by prepare-volume."""
    layouts.tutorial_layout(volume, server.root / "scratch")
    result = server.prepare(volume_id)
    assert result.returncode == 0, result.stdout + result.stderr
    return summary(result)["device"]


def whole_disk_layout(volume: LoopVolume, server: Server, volume_id: str) -> str:
    layouts.whole_disk_ext4(volume, server.root / "scratch")
    result = server.prepare(volume_id)
    assert result.returncode == 0, result.stdout + result.stderr
    return summary(result)["device"]


Layout = Callable[[LoopVolume, Server, str], str]
LAYOUTS = [
    pytest.param(own_layout, True, id="own-gpt-partition"),
    pytest.param(tutorial_layout, True, id="tutorial-gpt-partition"),
    pytest.param(whole_disk_layout, False, id="whole-disk-ext4"),
]


def full_volume(
    loop_volumes: LoopVolumes, server: Server, layout: Layout
) -> tuple[LoopVolume, str, str, KnownData]:
    """A small volume in `layout`, mounted and filled to the last block with known data."""
    volume = loop_volumes.make(size_mib=FULL_VOLUME_MIB)
    volume_id = attach(server, volume)
    filesystem = layout(volume, server, volume_id)
    data = fill_with_known_data(server.mount_point)
    assert len(data.digests) > 20
    free = shutil.disk_usage(server.mount_point).free
    assert free < MIB, f"the filesystem is not full: {free} bytes free"
    return volume, volume_id, filesystem, data


def assert_new_space_is_usable(mount_point: Path) -> None:
    """More than the whole old volume is written into the new space and read back intact."""
    extra = fill_with_known_data(mount_point, seed=2, limit_mib=NEW_DATA_MIB, name="new-space")
    written = sum((mount_point / name).stat().st_size for name in extra.digests)
    assert written >= NEW_DATA_MIB * MIB, f"only {written // MIB} MiB fitted in the new space"
    assert extra.changed() == []


def gpt_areas(volume: LoopVolume) -> tuple[bytes, bytes]:
    """The protective MBR, primary GPT and its entries; the backup entries and header."""
    with open(volume.image, "rb") as image:
        head = image.read(GPT_SECTORS * 512)
        image.seek(-(GPT_SECTORS - 1) * 512, os.SEEK_END)
        return head, image.read()


def assert_second_run_changes_nothing(
    server: Server, volume: LoopVolume, volume_id: str, filesystem: str, partitioned: bool
) -> None:
    """Run again: no growth, same filesystem size, and (GPT) the same table at both ends."""
    size = ext4_bytes(filesystem)
    tables = gpt_areas(volume) if partitioned else None
    again = server.prepare(volume_id)
    assert again.returncode == 0, again.stdout + again.stderr
    assert grew_lines(again) == [], again.stdout
    assert "nothing to grow" in again.stdout
    assert ext4_bytes(filesystem) == size
    if partitioned:
        assert gpt_areas(volume) == tables, "the partition table was written again"


def assert_filesystem_is_clean(filesystem: str, mount_point: Path) -> None:
    run("umount", str(mount_point))
    checked = run("e2fsck", "-f", "-n", filesystem, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("layout", "partitioned"), LAYOUTS)
def test_unmounted_volume_that_grew_is_grown_and_keeps_every_byte(
    loop_volumes, server, layout, partitioned
):
    """Data safety: a full volume grown by 1 GiB while detached: same bytes, new space usable."""
    volume, volume_id, filesystem, data = full_volume(loop_volumes, server, layout)
    uuid = probe(filesystem, "UUID")
    created = filesystem_created(filesystem)
    old_size = ext4_bytes(filesystem)
    start = probe(filesystem, "PART_ENTRY_OFFSET") if partitioned else None
    run("umount", str(server.mount_point))
    grow(volume, by_mib=ONE_GIB_MIB)

    result = server.prepare(volume_id)

    assert assert_mounted_and_recorded(server, result, volume_id, server.mount_point) == uuid
    assert summary(result)["device"] == filesystem
    (grew,) = grew_lines(result)
    assert int(grew[1]) == old_size // MIB
    assert int(grew[2]) - int(grew[1]) >= ONE_GIB_MIB - 16
    assert ext4_bytes(filesystem) // MIB == int(grew[2])
    assert "formatted /dev/" not in result.stdout and summary(result)["formatted"] == "no"
    assert filesystem_created(filesystem) == created
    assert data.changed() == [], "files changed while the volume grew"
    if partitioned:
        assert probe(filesystem, "PART_ENTRY_OFFSET") == start, "the partition moved"
        sectors = device_bytes(volume.device) // 512
        assert gpt_last_usable_lba(volume.device) == sectors - GPT_SECTORS, "backup GPT not at end"
    assert_new_space_is_usable(server.mount_point)
    assert_second_run_changes_nothing(server, volume, volume_id, filesystem, partitioned)
    assert data.changed() == []
    assert_filesystem_is_clean(filesystem, server.mount_point)


def without_online_resize(command: list[str]) -> list[str]:
    """`command` run without CAP_SYS_RESOURCE, so the kernel refuses to resize a mounted ext4.

    The capability leaves the bounding and inheritable sets: neither the script nor
    resize2fs can hold it, whatever root may hold on this machine.
    """
    return ["setpriv", "--bounding-set", "-sys_resource", "--inh-caps", "-sys_resource", *command]


def lacks_sys_resource(status: str) -> bool:
    effective = next(line for line in status.splitlines() if line.startswith("CapEff:"))
    return not int(effective.split()[1], 16) >> CAP_SYS_RESOURCE & 1


@pytest.mark.parametrize(("layout", "partitioned"), LAYOUTS)
def test_mounted_volume_the_kernel_will_not_resize_keeps_every_byte_and_grows_when_detached(
    loop_volumes, server, layout, partitioned
):
    """Data safety: online resize refused (no CAP_SYS_RESOURCE): exit 1, old size, same bytes.

    The refusal leaves the volume mounted and whole; once unmounted (a recycle), the
    next run grows it before mounting. Online growth that succeeds is proven in a real
    guest kernel: tests/vm/test_online_growth.py.
    """
    probe_caps = run(*without_online_resize(["cat", "/proc/self/status"]))
    assert lacks_sys_resource(probe_caps.stdout), "setpriv did not drop CAP_SYS_RESOURCE"
    volume, volume_id, filesystem, data = full_volume(loop_volumes, server, layout)
    old_size = ext4_bytes(filesystem)
    start = probe(filesystem, "PART_ENTRY_OFFSET") if partitioned else None
    grow(volume, by_mib=ONE_GIB_MIB)

    result = run(
        *without_online_resize(
            [*PREPARE_VOLUME_COMMAND, "--volume-id", volume_id, "--mount-point",
             str(server.mount_point), "--owner", "nobody", "--timeout", "5", "--size-gib", "1"]
        ),
        check=False, env=server.env(),
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert "already mounted" in result.stdout
    assert "could not grow the mounted filesystem" in result.stderr
    assert "with its old size and all its data" in result.stderr
    assert grew_lines(result) == []
    assert ext4_bytes(filesystem) == old_size
    assert mounted_targets(volume.device) == [str(server.mount_point)]
    assert data.changed() == []
    if partitioned:
        # The table was grown online before resize2fs was refused; the partition kept its start.
        assert "grown from" in result.stdout
        assert probe(filesystem, "PART_ENTRY_OFFSET") == start, "the partition moved"
        sectors = device_bytes(volume.device) // 512
        assert gpt_last_usable_lba(volume.device) == sectors - GPT_SECTORS

    run("umount", str(server.mount_point))
    again = server.prepare(volume_id, "--size-gib", "1")

    assert again.returncode == 0, again.stdout + again.stderr
    (grew,) = grew_lines(again)
    assert int(grew[1]) == old_size // MIB
    assert int(grew[2]) - int(grew[1]) >= ONE_GIB_MIB - 16
    assert summary(again)["formatted"] == "no"
    assert data.changed() == []
    assert_new_space_is_usable(server.mount_point)
    assert_filesystem_is_clean(filesystem, server.mount_point)


def test_growth_interrupted_after_the_partition_grew_is_completed(loop_volumes, server):
    """The table already grew (a run stopped before resize2fs): the next run grows the ext4."""
    volume, volume_id, filesystem, data = full_volume(loop_volumes, server, own_layout)
    old_size = ext4_bytes(filesystem)
    run("umount", str(server.mount_point))
    grow(volume, by_mib=ONE_GIB_MIB)
    run("growpart", volume.device, "1")
    volume.settle()

    result = server.prepare(volume_id)

    assert result.returncode == 0, result.stdout + result.stderr
    (grew,) = grew_lines(result)
    assert int(grew[1]) == old_size // MIB
    assert "growpart" not in result.stdout, "the partition was already grown"
    assert data.changed() == []
    assert_new_space_is_usable(server.mount_point)


def test_device_is_awaited_until_it_reaches_the_volume_size(loop_volumes, server):
    """--size-gib 2 on a device still at 1 GiB: the script waits; it grows when the device does."""
    volume = loop_volumes.make(size_mib=ONE_GIB_MIB)
    volume_id = attach(server, volume)
    own_layout(volume, server, volume_id)
    data = fill_with_known_data(server.mount_point, limit_mib=64)
    run("umount", str(server.mount_point))
    timer = threading.Timer(2, grow, (volume, ONE_GIB_MIB))
    timer.start()
    try:
        result = server.prepare(volume_id, "--size-gib", "2", timeout=30)
    finally:
        timer.cancel()
        timer.join()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "size: " in result.stdout and "(the volume is 2 GiB)" in result.stdout
    assert len(grew_lines(result)) == 1
    assert data.changed() == []


def test_device_that_never_reaches_the_volume_size_is_left_untouched(loop_volume, server, tmp_path):
    """--size-gib larger than the device after --timeout: exit 3, nothing written or mounted."""
    layouts.tutorial_layout(loop_volume, tmp_path / "scratch")
    before = DeviceSnapshot.of(loop_volume)
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id, "--size-gib", "3", timeout=2)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "is 2048 MiB, but volume" in result.stderr and "3 GiB" in result.stderr
    assert "./chi-persist recycle" in result.stderr
    assert_untouched(loop_volume, before, server)


def path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH with every command of /usr/bin but `tools` (and /usr/sbin, /sbin without them)."""
    farm = tmp_path / f"bin-without-{'-'.join(tools)}"
    farm.mkdir()
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for entry in Path(directory).iterdir():
            if entry.name not in tools and not (farm / entry.name).exists():
                (farm / entry.name).symlink_to(entry)
    return str(farm)


def prepare_with_path(server: Server, volume_id: str, path: str) -> subprocess.CompletedProcess:
    return run(
        *PREPARE_VOLUME_COMMAND, "--volume-id", volume_id, "--mount-point",
        str(server.mount_point), "--owner", "nobody", "--timeout", "5",
        check=False, env={**server.env(), "PATH": path},
    )  # fmt: skip


def test_missing_growpart_is_reported_before_anything_is_written(loop_volumes, server, tmp_path):
    """Without growpart (cloud-guest-utils) a grown volume is refused whole: exit 1, untouched."""
    volume = loop_volumes.make(size_mib=ONE_GIB_MIB)
    layouts.tutorial_layout(volume, tmp_path / "scratch")
    grow(volume, by_mib=ONE_GIB_MIB)
    before = DeviceSnapshot.of(volume)
    volume_id = attach(server, volume)

    result = prepare_with_path(server, volume_id, path_without(tmp_path, "growpart"))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "growpart (package cloud-guest-utils)" in result.stderr
    assert "nothing was written" in result.stderr
    assert_untouched(volume, before, server)


def test_volume_that_did_not_grow_needs_no_growing_tools(loop_volume, server, tmp_path):
    """A server without growpart and sfdisk still mounts a volume that has not grown."""
    layouts.tutorial_layout(loop_volume, tmp_path / "scratch")
    volume_id = attach(server, loop_volume)

    result = prepare_with_path(server, volume_id, path_without(tmp_path, "growpart", "sfdisk"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to grow" in result.stdout and grew_lines(result) == []


def test_partition_that_stops_short_of_an_ungrown_disk_is_mounted_not_grown(
    loop_volume, server, tmp_path
):
    """Space after the partition that the device always had is left alone; the volume mounts."""
    layouts.gpt_partition_with_a_gap(loop_volume, tmp_path / "scratch")
    partition = loop_volume.partition(1)
    size = ext4_bytes(partition)
    table = DeviceSnapshot.of(loop_volume).head[: GPT_SECTORS * 512]
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "that space is left as it is" in result.stdout
    assert grew_lines(result) == [] and ext4_bytes(partition) == size
    assert loop_volume.read_head(GPT_SECTORS * 512) == table


# --- what is never grown ------------------------------------------------------------

GROWN_REFUSED = [
    pytest.param(layouts.two_partitions, (), "2 partition", id="two-partitions"),
    pytest.param(
        layouts.gpt_partition_with_a_gap, (), "belongs to no partition", id="gap-after-partition"
    ),
    pytest.param(layouts.dos_table_with_ext4, (), "dos", id="dos-table"),
    pytest.param(layouts.gpt_partition_with_xfs, ("mkfs.xfs",), "xfs", id="gpt-partition-xfs"),
    pytest.param(layouts.lvm_member, ("pvcreate",), "LVM2_member", id="lvm-member"),
]


@pytest.mark.parametrize(("layout", "tools", "named"), GROWN_REFUSED)
def test_grown_volume_of_another_layout_is_refused_without_writing(
    loop_volumes, server, tmp_path, layout, tools, named
):
    """Data safety: a grown volume holding anything else: exit 4, one line, not a byte written."""
    missing = layouts.tool_missing(*tools)
    if missing:
        pytest.skip(missing)
    volume = loop_volumes.make(size_mib=ONE_GIB_MIB)
    layout(volume, tmp_path / "scratch")
    grow(volume, by_mib=ONE_GIB_MIB)
    before = DeviceSnapshot.of(volume)
    volume_id = attach(server, volume)

    result = server.prepare(volume_id, "--size-gib", "2")

    assert result.returncode == 4, result.stdout + result.stderr
    refusal = result.stderr.strip().splitlines()
    assert len(refusal) == 1, result.stderr
    assert "refused" in refusal[0] and "nothing was written" in refusal[0]
    assert named in refusal[0]
    assert_untouched(volume, before, server)


SHRUNK = [
    pytest.param(layouts.tutorial_layout, "PMBR", id="gpt-table-beyond-the-end"),
    pytest.param(layouts.whole_disk_ext4, "larger than the space", id="whole-disk-ext4"),
]


@pytest.mark.parametrize(("layout", "named"), SHRUNK)
def test_volume_smaller_than_its_filesystem_is_refused_without_writing(
    loop_volumes, server, tmp_path, layout, named
):
    """Data safety: a device cut below its filesystem is neither grown, shrunk nor mounted."""
    volume = loop_volumes.make(size_mib=2 * ONE_GIB_MIB)
    layout(volume, tmp_path / "scratch")
    shrink(volume, to_mib=ONE_GIB_MIB)
    before = DeviceSnapshot.of(volume)
    volume_id = attach(server, volume)

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "refused" in result.stderr and named in result.stderr
    assert_untouched(volume, before, server)
    assert not is_mount_point(server.mount_point)


def test_size_option_must_be_a_whole_number_of_gib(loop_volume, server):
    """--size-gib takes the Cinder size: anything but a whole number >= 1 is a usage error."""
    volume_id = attach(server, loop_volume)
    before = DeviceSnapshot.of(loop_volume)
    for value in ("0", "2.5", "two", "-1"):
        result = server.prepare(volume_id, "--size-gib", value)
        assert result.returncode == 2, value + result.stdout + result.stderr
        assert "whole number of GiB" in result.stderr
    assert_untouched(loop_volume, before, server)
