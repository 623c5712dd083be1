"""prepare-volume on loop devices: formats only blank volumes, mounts ext4, refuses the rest."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import volume_scripts as layouts
from tests.support.block_devices import LoopVolume, LoopVolumes, link_by_id, run
from tests.support.volume_scripts import (
    DATA,
    DATA_FILE,
    FSTAB_LINE,
    NOBODY,
    PREPARE_VOLUME,
    PREPARE_VOLUME_COMMAND,
    DeviceSnapshot,
    assert_mounted_and_recorded,
    assert_untouched,
    assert_verifies,
    attach,
    filesystem_created,
    fstab_lines_for,
    lock_file,
    mounted_targets,
    new_volume_id,
    partitions_of,
    probe,
    server_fixture,  # noqa: F401 (the fixture "server")
    servers_fixture,  # noqa: F401 (the fixture "servers")
    summary,
    write_data,
)

pytestmark = [pytest.mark.root, pytest.mark.disk]

# --- the blank volume ----------------------------------------------------------


def test_blank_volume_is_formatted_once_and_mounted(loop_volume, server):
    """A blank volume gets one GPT partition named chi-persist with ext4, mounted by UUID."""
    volume_id = attach(server, loop_volume)
    result = server.prepare(volume_id)
    uuid = assert_mounted_and_recorded(server, result, volume_id, server.mount_point)
    assert summary(result)["formatted"] == "yes"
    assert result.stdout.count("formatted /dev/") == 1
    partitions = partitions_of(loop_volume.device)
    assert partitions == [summary(result)["device"]]
    assert probe(loop_volume.device, "PTTYPE") == "gpt"
    assert probe(partitions[0], "PART_ENTRY_NAME") == "chi-persist"
    assert probe(partitions[0], "TYPE") == "ext4"
    assert probe(partitions[0], "LABEL") == "block-persist"
    assert mounted_targets(loop_volume.device) == [str(server.mount_point)]
    assert run("findmnt", "-n", "-o", "SOURCE", "--source", f"UUID={uuid}").stdout.strip()
    assert_verifies(server.fstab)


def test_second_run_changes_nothing(loop_volume, server):
    """Run again on the mounted volume: same UUID, same fstab bytes, files kept, no mkfs."""
    volume_id = attach(server, loop_volume)
    first = server.prepare(volume_id)
    uuid = assert_mounted_and_recorded(server, first, volume_id, server.mount_point)
    partition = summary(first)["device"]
    write_data(server.mount_point)
    created = filesystem_created(partition)
    fstab_before = server.fstab.read_bytes()
    fstab_inode = server.fstab.stat().st_ino
    env_before = (server.mount_point / ".chi-persist" / "volume.env").stat()

    second = server.prepare(volume_id)

    assert assert_mounted_and_recorded(server, second, volume_id, server.mount_point) == uuid
    assert summary(second)["formatted"] == "no"
    assert "formatted /dev/" not in second.stdout and "no format" in second.stdout
    assert "already mounted" in second.stdout
    assert filesystem_created(partition) == created
    assert server.fstab.read_bytes() == fstab_before
    assert server.fstab.stat().st_ino == fstab_inode, "fstab was rewritten"
    env_after = (server.mount_point / ".chi-persist" / "volume.env").stat()
    assert (env_after.st_ino, env_after.st_mtime_ns) == (env_before.st_ino, env_before.st_mtime_ns)
    assert (server.mount_point / DATA_FILE).read_bytes() == DATA
    assert mounted_targets(loop_volume.device) == [str(server.mount_point)]


def test_reattach_on_a_new_server_keeps_files_uuid_and_nested_owners(
    loop_volumes: LoopVolumes, servers
):
    """Unmount, attach the image as another device with a fresh fstab: files, UUID, owners kept."""
    first_server = servers("first")
    volume = loop_volumes.make(name="block-persist")
    volume_id = new_volume_id()
    link_by_id(first_server.by_id_dir, volume_id, volume.device)
    first = first_server.prepare(volume_id)
    uuid = assert_mounted_and_recorded(first_server, first, volume_id, first_server.mount_point)
    write_data(first_server.mount_point)
    database = first_server.mount_point / "postgres_data"
    database.mkdir(mode=0o700)
    (database / "PG_VERSION").write_text("16\n")
    os.chown(database, 999, 999)
    os.chown(database / "PG_VERSION", 999, 999)
    created = filesystem_created(summary(first)["device"])
    run("umount", str(first_server.mount_point))
    run("losetup", "-d", volume.device)
    loop_volumes.volumes.remove(volume)

    loop_volumes.make(size_mib=64, name="occupies-the-old-device-name")
    again = run("losetup", "--find", "--show", "--partscan", str(volume.image)).stdout.strip()
    reattached = LoopVolume(image=volume.image, device=again)
    loop_volumes.volumes.append(reattached)
    assert again != volume.device
    new_server = servers("new")
    link_by_id(new_server.by_id_dir, volume_id, again)

    result = new_server.prepare(volume_id)

    assert (
        assert_mounted_and_recorded(new_server, result, volume_id, new_server.mount_point) == uuid
    )
    assert summary(result)["formatted"] == "no"
    assert filesystem_created(summary(result)["device"]) == created
    assert (new_server.mount_point / DATA_FILE).read_bytes() == DATA
    moved = new_server.mount_point / "postgres_data"
    assert (moved.stat().st_uid, moved.stat().st_gid) == (999, 999)
    assert stat.S_IMODE(moved.stat().st_mode) == 0o700
    assert (moved / "PG_VERSION").stat().st_uid == 999
    assert_verifies(new_server.fstab)


def test_top_directory_owner_is_restored_without_touching_nested_owners(loop_volume, server):
    """Only the mount point's own owner is set; directories below keep theirs."""
    volume_id = attach(server, loop_volume)
    assert server.prepare(volume_id).returncode == 0
    nested = server.mount_point / "minio_data"
    nested.mkdir(mode=0o700)
    os.chown(nested, 999, 999)
    os.chown(server.mount_point, 0, 0)

    result = server.prepare(volume_id)

    assert result.returncode == 0, result.stderr
    top = server.mount_point.stat()
    assert (top.st_uid, top.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert (nested.stat().st_uid, nested.stat().st_gid) == (999, 999)
    assert stat.S_IMODE(nested.stat().st_mode) == 0o700


def test_interrupted_first_run_completes(loop_volume, server, tmp_path):
    """The project's partition without a filesystem gets ext4; the table itself is kept."""
    layouts.interrupted_first_run(loop_volume, tmp_path / "scratch")
    table_before = loop_volume.read_head(1024 * 1024)
    partition_uuid = probe(loop_volume.partition(1), "PART_ENTRY_UUID")
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert_mounted_and_recorded(server, result, volume_id, server.mount_point)
    assert summary(result)["formatted"] == "yes"
    assert "interrupted first run" in result.stdout
    assert loop_volume.read_head(1024 * 1024) == table_before
    assert probe(summary(result)["device"], "PART_ENTRY_UUID") == partition_uuid
    assert probe(summary(result)["device"], "TYPE") == "ext4"


def test_mount_point_with_a_space_is_escaped_in_fstab(loop_volume, server):
    """A space in the mount point is written as \\040, and the fstab verifies."""
    volume_id = attach(server, loop_volume)
    mount_point = server.root / "mnt" / "block storage"
    result = server.prepare(volume_id, mount_point=mount_point)
    assert_mounted_and_recorded(server, result, volume_id, mount_point)
    assert "block\\040storage ext4" in server.fstab.read_text()
    assert_verifies(server.fstab)


# --- volumes that hold a filesystem already ------------------------------------------

EXISTING = [
    pytest.param(layouts.tutorial_layout, "1", id="tutorial-gpt-ext4-partition"),
    pytest.param(layouts.whole_disk_ext4, "", id="whole-disk-ext4"),
]


@pytest.mark.parametrize(("layout", "partition"), EXISTING)
def test_existing_ext4_is_mounted_untouched(loop_volume, server, tmp_path, layout, partition):
    """ext4 that holds data is mounted as it is: same UUID, same files, never formatted."""
    layout(loop_volume, tmp_path / "scratch")
    filesystem = loop_volume.partition(int(partition)) if partition else loop_volume.device
    uuid = probe(filesystem, "UUID")
    created = filesystem_created(filesystem)
    gpt_area = 34 * 512  # protective MBR, GPT header and partition entries
    table_before = loop_volume.read_head(gpt_area) if partition else None
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert assert_mounted_and_recorded(server, result, volume_id, server.mount_point) == uuid
    assert summary(result)["device"] == filesystem
    assert summary(result)["formatted"] == "no"
    assert "no format" in result.stdout and "filesystem check: clean" in result.stdout
    assert filesystem_created(filesystem) == created
    assert (server.mount_point / DATA_FILE).read_bytes() == DATA
    if table_before is not None:
        assert loop_volume.read_head(gpt_area) == table_before


# --- volumes that are refused ---------------------------------------------------------

REFUSED = [
    pytest.param(layouts.xfs, ("mkfs.xfs",), "xfs", id="xfs"),
    pytest.param(layouts.btrfs, ("mkfs.btrfs",), "btrfs", id="btrfs"),
    pytest.param(layouts.ext3, ("mkfs.ext3",), "ext3", id="ext3-not-ext4"),
    pytest.param(layouts.swap, ("mkswap",), "swap", id="swap"),
    pytest.param(layouts.luks, ("cryptsetup",), "crypto_LUKS", id="luks"),
    pytest.param(layouts.lvm_member, ("pvcreate",), "LVM2_member", id="lvm-member"),
    pytest.param(layouts.raid_member, ("mdadm",), "linux_raid_member", id="mdadm-member"),
    pytest.param(layouts.dos_table_with_ext4, (), "dos", id="dos-table"),
    pytest.param(layouts.two_partitions, (), "2 partition", id="two-partitions"),
    pytest.param(layouts.gpt_partition_with_xfs, ("mkfs.xfs",), "xfs", id="gpt-partition-xfs"),
    pytest.param(layouts.empty_gpt_table, (), "0 partition", id="gpt-without-partitions"),
    pytest.param(
        layouts.someone_elses_empty_partition, (), "name 'primary'", id="empty-partition-not-ours"
    ),
    pytest.param(
        layouts.damaged_project_filesystem, (), "holds data", id="damaged-ext4-on-our-partition"
    ),
    pytest.param(
        layouts.whole_disk_ext4_with_stale_dos_table, (), "dos ext4", id="ext4-and-stale-dos-table"
    ),
    pytest.param(layouts.unrecognised_data, (), "without any known signature", id="raw-data"),
    pytest.param(layouts.gpt_with_only_its_backup_header, (), "gpt", id="gpt-backup-header-only"),
]


@pytest.mark.parametrize(("layout", "tools", "named"), REFUSED)
def test_other_content_is_refused_without_writing(
    loop_volume, server, tmp_path, layout, tools, named
):
    """Anything but blank or ext4-as-allowed: exit 4, one line naming it, not a byte written."""
    missing = layouts.tool_missing(*tools)
    if missing:
        pytest.skip(missing)
    layout(loop_volume, tmp_path / "scratch")
    loop_volume.settle()
    before = DeviceSnapshot.of(loop_volume)
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    refusal = result.stderr.strip().splitlines()
    assert len(refusal) == 1, result.stderr
    assert "refused" in refusal[0] and "nothing was written" in refusal[0]
    assert named in refusal[0]
    assert "ready:" not in result.stdout
    assert_untouched(loop_volume, before, server)


def test_filesystem_that_fails_its_check_is_not_mounted(loop_volume, server, tmp_path):
    """Errors e2fsck -p cannot fix: exit 4, nothing mounted, no fstab line."""
    layouts.tutorial_layout(loop_volume, tmp_path / "scratch")
    partition = loop_volume.partition(1)
    run("debugfs", "-w", "-R", "clri <2>", partition)
    run("tune2fs", "-E", "force_fsck", partition)
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "filesystem check" in result.stderr and f"e2fsck -f {partition}" in result.stderr
    assert mounted_targets(loop_volume.device) == []
    assert not server.fstab.exists()


def test_copy_of_the_volume_with_the_same_uuid_is_refused(loop_volumes, server, tmp_path):
    """Two devices with one filesystem UUID make mounting by UUID ambiguous: refused."""
    original = loop_volumes.make(size_mib=256, name="original")
    layouts.whole_disk_ext4(original, tmp_path / "scratch")
    copy = loop_volumes.make(size_mib=256, name="copy")
    run("dd", f"if={original.device}", f"of={copy.device}", "bs=4M", "conv=fsync,sparse")
    assert probe(copy.device, "UUID") == probe(original.device, "UUID")
    volume_id = attach(server, original)

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "ambiguous" in result.stderr
    assert mounted_targets(original.device) == [] and mounted_targets(copy.device) == []
    assert not server.fstab.exists()


# --- mounts that are in the way --------------------------------------------------------


def test_mount_point_holding_another_mount_is_refused_and_left_alone(loop_volume, server):
    """A tmpfs on the mount point stays, with its file; the blank device is not touched."""
    server.mount_point.mkdir(parents=True)
    run("mount", "-t", "tmpfs", "-o", "size=8m", "other", str(server.mount_point))
    try:
        (server.mount_point / "keep.txt").write_text("someone else's\n")
        before = DeviceSnapshot.of(loop_volume)
        volume_id = attach(server, loop_volume)

        result = server.prepare(volume_id)

        assert result.returncode == 4, result.stdout + result.stderr
        assert "something else is mounted" in result.stderr
        source = run(
            "findmnt", "-n", "-o", "SOURCE,FSTYPE", "--mountpoint", str(server.mount_point)
        )
        assert source.stdout.split() == ["other", "tmpfs"]
        assert (server.mount_point / "keep.txt").read_text() == "someone else's\n"
        after = DeviceSnapshot.of(loop_volume)
        assert (after.head, after.content) == (before.head, before.content)
        assert mounted_targets(loop_volume.device) == []
        assert not server.fstab.exists()
    finally:
        run("umount", str(server.mount_point), check=False)


def test_volume_mounted_elsewhere_is_refused_and_left_mounted(loop_volume, server, tmp_path):
    """An ext4 volume mounted at another directory is neither formatted nor moved."""
    layouts.tutorial_layout(loop_volume, tmp_path / "scratch")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run("mount", loop_volume.partition(1), str(elsewhere))
    uuid = probe(loop_volume.partition(1), "UUID")
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    assert f"mounted at {elsewhere}" in result.stderr
    assert mounted_targets(loop_volume.device) == [str(elsewhere)]
    assert (elsewhere / DATA_FILE).read_bytes() == DATA
    assert probe(loop_volume.partition(1), "UUID") == uuid
    assert not server.fstab.exists()


# --- finding the device --------------------------------------------------------------

LINK_STYLES = [
    pytest.param("virtio-{short}", id="virtio-20-characters"),
    pytest.param("virtio-{id}", id="virtio-whole-id"),
    pytest.param("scsi-0QEMU_QEMU_HARDDISK_{short}", id="scsi-20-characters"),
    pytest.param("scsi-0QEMU_QEMU_HARDDISK_{id}", id="scsi-whole-id"),
]


@pytest.mark.parametrize("link_name", LINK_STYLES)
def test_device_is_found_by_each_serial_link(loop_volume, server, link_name):
    """virtio-blk (20-character serial) and virtio-scsi (whole id) links both lead to the disk."""
    volume_id = new_volume_id()
    name = link_name.format(short=volume_id[:20], id=volume_id)
    (server.by_id_dir / name).symlink_to(loop_volume.device)

    result = server.prepare(volume_id)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"device: {loop_volume.device} (found as {server.by_id_dir / name})" in result.stdout
    assert summary(result)["device"] == loop_volume.partition(1)


def test_device_that_appears_late_is_found(loop_volume, server):
    """The by-id link appears 3 s after the start: the script waits for it."""
    volume_id = new_volume_id()
    timer = threading.Timer(3, link_by_id, (server.by_id_dir, volume_id, loop_volume.device))
    started = time.monotonic()
    timer.start()
    try:
        result = server.prepare(volume_id, timeout=30)
    finally:
        timer.cancel()
    assert result.returncode == 0, result.stdout + result.stderr
    assert 3 <= time.monotonic() - started < 30
    assert summary(result)["formatted"] == "yes"


def test_device_that_never_appears_fails_within_the_timeout(server):
    """No link within --timeout: exit 3, the id and every path tried named, nothing written."""
    volume_id = new_volume_id()
    started = time.monotonic()
    result = server.prepare(volume_id, timeout=2)
    elapsed = time.monotonic() - started

    assert result.returncode == 3, result.stdout + result.stderr
    assert 2 <= elapsed < 6
    message = result.stderr
    assert volume_id in message
    for name in (
        f"virtio-{volume_id[:20]}",
        f"virtio-{volume_id}",
        f"scsi-0QEMU_QEMU_HARDDISK_{volume_id[:20]}",
        f"scsi-0QEMU_QEMU_HARDDISK_{volume_id}",
    ):
        assert str(server.by_id_dir / name) in message
    assert not server.fstab.exists()
    assert not server.mount_point.exists()


def test_second_run_for_the_same_volume_waits_for_the_first(loop_volume, server):
    """While another run holds the volume lock, a run gives up after --timeout, writing nothing."""
    volume_id = attach(server, loop_volume)
    before = DeviceSnapshot.of(loop_volume)
    lock = lock_file(volume_id)
    holder = subprocess.Popen(
        ["flock", "--no-fork", str(lock), "sleep", "60"], stdin=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while run("flock", "--nonblock", str(lock), "true", check=False).returncode == 0:
            assert time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        started = time.monotonic()
        result = server.prepare(volume_id, timeout=1)
        elapsed = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 4, result.stdout + result.stderr
    assert "another prepare-volume" in result.stderr and str(lock) in result.stderr
    assert elapsed < 5
    assert_untouched(loop_volume, before, server)


def test_links_to_two_different_devices_are_refused(loop_volumes, server):
    """virtio and scsi links for one id leading to two disks: refused, neither touched."""
    first, second = loop_volumes.make(size_mib=256), loop_volumes.make(size_mib=256)
    before = DeviceSnapshot.of(first), DeviceSnapshot.of(second)
    volume_id = new_volume_id()
    link_by_id(server.by_id_dir, volume_id, first.device, style="virtio")
    link_by_id(server.by_id_dir, volume_id, second.device, style="scsi")

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    assert first.device in result.stderr and second.device in result.stderr
    assert_untouched(first, before[0], server)
    assert_untouched(second, before[1], server)


def test_link_to_a_partition_is_refused(loop_volume, server, tmp_path):
    """A serial link must name a whole disk; one that names a partition is refused."""
    layouts.interrupted_first_run(loop_volume, tmp_path / "scratch")
    before = DeviceSnapshot.of(loop_volume)
    volume_id = new_volume_id()
    link_by_id(server.by_id_dir, volume_id, loop_volume.partition(1))

    result = server.prepare(volume_id)

    assert result.returncode == 4, result.stdout + result.stderr
    assert "a partition, not a whole disk" in result.stderr
    assert_untouched(loop_volume, before, server)


# --- fstab ---------------------------------------------------------------------------

FSTAB_CASES = [
    pytest.param("", [], id="no-fstab-yet"),
    pytest.param(
        "# /etc/fstab\nLABEL=cloudimg-rootfs / ext4 discard,errors=remount-ro 0 1\n",
        ["# /etc/fstab", "LABEL=cloudimg-rootfs / ext4 discard,errors=remount-ro 0 1"],
        id="other-lines-kept",
    ),
    pytest.param(
        "proc /proc proc defaults 0 0\n/dev/vdb1 {mp} ext4 defaults 0 0\n"
        "tmpfs /run/x tmpfs defaults 0 0\n",
        ["proc /proc proc defaults 0 0", "tmpfs /run/x tmpfs defaults 0 0"],
        id="tutorial-line-replaced",
    ),
    pytest.param(
        "UUID=0b5d7a5e-3c1f-4d8e-9a2b-6f1e2d3c4b5a {mp} ext4 defaults 0 2\n"
        "# keep me\n/dev/vdb1 {mp}/ ext4 defaults 0 0\n",
        ["# keep me"],
        id="two-stale-lines-become-one",
    ),
    pytest.param(
        "tmpfs /run/y tmpfs defaults 0 0\n/dev/vdb1 {mp} ext4 defaults 0 0\n"
        "tmpfs {mp}/scratch tmpfs defaults 0 0",
        ["tmpfs /run/y tmpfs defaults 0 0", "@", "tmpfs {mp}/scratch tmpfs defaults 0 0"],
        id="kept-before-mounts-below-it",
    ),
]


@pytest.mark.parametrize(("existing", "kept"), FSTAB_CASES)
def test_fstab_keeps_exactly_one_line_for_the_mount_point(loop_volume, server, existing, kept):
    """Stale lines for the mount point are replaced, other lines kept in order."""
    mp = str(server.mount_point)
    if existing:
        server.fstab.write_text(existing.format(mp=mp))
        os.chmod(server.fstab, 0o644)
    volume_id = attach(server, loop_volume)

    result = server.prepare(volume_id)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = server.fstab.read_text().splitlines()
    ours = fstab_lines_for(server.fstab, server.mount_point)
    assert len(ours) == 1 and FSTAB_LINE.match(ours[0])
    expected = [line.format(mp=mp) for line in kept]
    if "@" in expected:
        expected[expected.index("@")] = ours[0]
    else:
        expected.append(ours[0])
    assert lines == expected
    assert stat.S_IMODE(server.fstab.stat().st_mode) == 0o644
    again = server.fstab.read_bytes()
    assert server.prepare(volume_id).returncode == 0
    assert server.fstab.read_bytes() == again


def test_fstab_verifies_clean(loop_volume, server):
    """findmnt --verify on the written fstab reports no error and no warning."""
    server.fstab.write_text("proc /proc proc defaults 0 0\n")
    volume_id = attach(server, loop_volume)
    assert server.prepare(volume_id).returncode == 0
    assert_verifies(server.fstab)


# --- bad input -----------------------------------------------------------------------

VALID_ID = "0b5d7a5e-3c1f-4d8e-9a2b-6f1e2d3c4b5a"
BAD_INPUT = [
    pytest.param([], "--volume-id is required", id="no-arguments"),
    pytest.param(["--volume-id", VALID_ID, "--colour", "blue"], "unknown argument", id="unknown"),
    pytest.param(["--volume-id"], "needs a value", id="missing-value"),
    pytest.param(["--volume-id", ""], "--volume-id is required", id="empty-id"),
    pytest.param(["--volume-id", "0b5d7a5e 3c1f"], "malformed volume id", id="id-with-space"),
    pytest.param(["--volume-id", "../../../etc/passwd"], "malformed volume id", id="id-with-slash"),
    pytest.param(
        ["--volume-id", f"{VALID_ID};reboot"], "malformed volume id", id="id-with-semicolon"
    ),
    pytest.param(["--volume-id", VALID_ID[:20]], "malformed volume id", id="id-truncated"),
    pytest.param(["--volume-id", "block-persist-ab1234"], "malformed volume id", id="volume-name"),
    pytest.param(
        ["--volume-id", VALID_ID, "--mount-point", "mnt/block"],
        "not an absolute path",
        id="relative",
    ),
    pytest.param(["--volume-id", VALID_ID, "--mount-point", "/"], "root directory", id="root-dir"),
    pytest.param(
        ["--volume-id", VALID_ID, "--mount-point", "/mnt/../etc"], "canonical", id="dot-dot"
    ),
    pytest.param(
        ["--volume-id", VALID_ID, "--mount-point", "/mnt/a;b"],
        "may contain only",
        id="mp-semicolon",
    ),
    pytest.param(["--volume-id", VALID_ID, "--timeout", "soon"], "timeout", id="timeout-word"),
    pytest.param(["--volume-id", VALID_ID, "--timeout", "-1"], "timeout", id="timeout-negative"),
    pytest.param(
        ["--volume-id", VALID_ID, "--owner", "no-such-user-here"], "not a user", id="unknown-owner"
    ),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_INPUT)
def test_bad_input_prints_usage_and_touches_nothing(loop_volume, server, arguments, message):
    """Exit 2 with what was wrong and the usage line; the device, fstab, mount point untouched."""
    link_by_id(server.by_id_dir, VALID_ID, loop_volume.device)
    before = DeviceSnapshot.of(loop_volume)
    result = run(*PREPARE_VOLUME_COMMAND, *arguments, check=False, env=server.env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "usage: prepare-volume --volume-id ID" in result.stderr
    assert_untouched(loop_volume, before, server)
    assert not server.mount_point.exists()


@pytest.mark.other_user
def test_not_root_is_refused_with_usage(loop_volume, server, as_nobody):
    """As an ordinary user: exit 2, 'must run as root', nothing touched."""
    link_by_id(server.by_id_dir, VALID_ID, loop_volume.device)
    before = DeviceSnapshot.of(loop_volume)
    nobody = as_nobody(PREPARE_VOLUME)
    command = [
        *nobody.argv,
        "--volume-id", VALID_ID, "--mount-point", "/mnt/nowhere-here", "--owner", "nobody",
    ]  # fmt: skip
    result = run(*command, check=False, env=server.env(), cwd=nobody.cwd)
    assert result.returncode == 2, shlex.join(command) + result.stdout + result.stderr
    assert "must run as root" in result.stderr and "usage:" in result.stderr
    assert_untouched(loop_volume, before, server)
    assert not Path("/mnt/nowhere-here").exists()


def test_help_explains_the_rules():
    """--help prints the usage, the decision table and the exit codes, and exits 0."""
    result = run(*PREPARE_VOLUME_COMMAND, "--help", check=False)
    assert result.returncode == 0
    expected = [
        "usage: prepare-volume",
        "--volume-id ID",
        "virtio-",
        "scsi-0QEMU_QEMU_HARDDISK_",
    ]
    expected += ["refuse", "e2fsck -p", "Exit codes", "BY_ID_DIR", "FSTAB"]
    for words in expected:
        assert words in result.stdout
