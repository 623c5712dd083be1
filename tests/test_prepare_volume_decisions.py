"""prepare-volume's decisions, driven with probe records: no root, no disk, no command run.

The records are what lsblk, blkid -p, wipefs, partx and sfdisk report for each layout of
tests/test_prepare_volume.py and test_prepare_volume_growth.py, which run the same
layouts on real loop devices.
"""

from __future__ import annotations

import itertools
import json

import pytest

from tests.support.volume_scripts import prepare_volume_module

volume = prepare_volume_module()
Signatures = volume.Signatures
DiskFacts = volume.DiskFacts
PartitionFacts = volume.PartitionFacts
Probe = volume.Probe
GrowthFacts = volume.GrowthFacts
MIB = volume.MIB
GIB = volume.GIB

DEVICE = "/dev/vdb"
PART = "/dev/vdb1"
UUID = "0b5d7a5e-3c1f-4d8e-9a2b-6f1e2d3c4b5a"


def gpt(partitions: int = 1, table_count: int | None = None) -> DiskFacts:
    """A GPT disk as blkid and wipefs see it: protective MBR and the two GPT headers."""
    paths = tuple(f"{DEVICE}{number}" for number in range(1, partitions + 1))
    count = partitions if table_count is None else table_count
    return DiskFacts(DEVICE, Signatures(pttype="gpt", found="PMBR gpt"), paths, count)


def whole(type_: str, found: str | None = None, pttype: str = "") -> DiskFacts:
    """One signature on the whole device, no partition."""
    signatures = Signatures(type=type_, pttype=pttype, uuid=UUID, found=found or type_)
    return DiskFacts(DEVICE, signatures)


def partition(
    type_: str = "", name: str = "chi-persist", found: str | None = None, zero: bool | None = None
) -> PartitionFacts:
    signatures = Signatures(
        type=type_,
        uuid=UUID if type_ else "",
        partition_name=name,
        found=type_ if found is None else found,
    )
    return PartitionFacts(PART, signatures, zero)


NOTHING = Signatures()

# What each layout reads as -> what the device holds, what is done, and words of the line
# that says it. Only the two format rows ever lead to mkfs.
LAYOUTS = [
    pytest.param(
        DiskFacts(DEVICE, NOTHING, zero_ends=True), None,
        "blank", volume.FORMAT_DISK, "nothing (no signature", id="blank",
    ),
    pytest.param(
        gpt(), partition("ext4", name="primary"),
        "gpt", volume.MOUNT_PARTITION, "holds ext4", id="tutorial-gpt-ext4-partition",
    ),
    pytest.param(
        gpt(), partition("ext4"),
        "gpt", volume.MOUNT_PARTITION, "name 'chi-persist'", id="own-gpt-ext4-partition",
    ),
    pytest.param(
        whole("ext4"), None, "ext4", volume.MOUNT_DISK, "ext4 on the whole device",
        id="whole-disk-ext4",
    ),
    pytest.param(
        gpt(), partition(zero=True), "gpt", volume.FORMAT_PARTITION,
        "has no filesystem and is zero", id="interrupted-first-run",
    ),
    pytest.param(whole("xfs"), None, "other", volume.REFUSE, "'xfs'", id="xfs"),
    pytest.param(whole("btrfs"), None, "other", volume.REFUSE, "'btrfs'", id="btrfs"),
    pytest.param(whole("ext3"), None, "other", volume.REFUSE, "TYPE=ext3", id="ext3-not-ext4"),
    pytest.param(whole("swap"), None, "other", volume.REFUSE, "'swap'", id="swap"),
    pytest.param(whole("crypto_LUKS"), None, "other", volume.REFUSE, "crypto_LUKS", id="luks"),
    pytest.param(whole("LVM2_member"), None, "other", volume.REFUSE, "LVM2_member", id="lvm"),
    pytest.param(
        whole("linux_raid_member"), None, "other", volume.REFUSE, "linux_raid_member",
        id="mdadm-member",
    ),
    pytest.param(
        DiskFacts(DEVICE, Signatures(pttype="dos", found="dos"), (PART,), 1), partition("ext4"),
        "other", volume.REFUSE, "PTTYPE=dos", id="dos-table",
    ),
    pytest.param(gpt(2), None, "gpt", volume.REFUSE, "2 partition(s)", id="two-partitions"),
    pytest.param(
        gpt(), partition("xfs"), "gpt", volume.REFUSE, "signatures 'xfs'", id="gpt-partition-xfs"
    ),
    pytest.param(gpt(0), None, "gpt", volume.REFUSE, "0 partition(s)", id="gpt-without-partitions"),
    pytest.param(
        gpt(), partition(name="primary", zero=True), "gpt", volume.REFUSE, "name 'primary'",
        id="empty-partition-not-ours",
    ),
    pytest.param(
        gpt(), partition(zero=False), "gpt", volume.REFUSE, "holds data",
        id="damaged-ext4-on-our-partition",
    ),
    pytest.param(
        DiskFacts(DEVICE, Signatures("ext4", "dos", UUID, "", "dos ext4"), (PART,), 1), None,
        "other", volume.REFUSE, "'dos ext4'", id="ext4-and-stale-dos-table",
    ),
    pytest.param(
        DiskFacts(DEVICE, NOTHING, zero_ends=False), None,
        "data", volume.REFUSE, "without any known signature", id="raw-data",
    ),
    pytest.param(
        DiskFacts(DEVICE, Signatures(found="gpt"), (PART,)), None,
        "other", volume.REFUSE, "signatures 'gpt'", id="gpt-backup-header-only",
    ),
    pytest.param(
        DiskFacts(DEVICE, NOTHING, (PART,)), None,
        "other", volume.REFUSE, "yet the kernel lists partitions /dev/vdb1", id="stale-kernel-list",
    ),
    pytest.param(
        gpt(1, table_count=2), None,
        "other", volume.REFUSE, "2 partition(s) while the kernel lists 1", id="table-unlike-kernel",
    ),
    pytest.param(
        whole("ext4", found="ext4 ext4"), None, "other", volume.REFUSE, "'ext4 ext4'",
        id="ext4-and-another-signature",
    ),
    pytest.param(
        DiskFacts(DEVICE, Signatures("ext4", "", UUID, "", "ext4"), (PART,)), None,
        "other", volume.REFUSE, "1 partition(s)", id="whole-ext4-with-a-kernel-partition",
    ),
    pytest.param(
        gpt(), partition("ext4", found="ext4 xfs"), "gpt", volume.REFUSE, "'ext4 xfs'",
        id="partition-ext4-and-xfs",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("disk", "part", "content", "action", "words"), LAYOUTS)
def test_what_the_volume_holds_decides_what_is_done(disk, part, content, action, words):
    """Each layout: its content, its one action, and the line that names what it holds."""
    probe = volume.probe_of(disk, part)
    assert probe.disk_content == content
    assert volume.decide(probe) == action
    assert words in probe.found
    if action == volume.REFUSE:
        refusal = volume.refusal_of(probe)
        assert refusal.startswith(f"refused: {DEVICE} holds {probe.found}; nothing was written.")
    else:
        assert volume.DECISION_LINES[action].startswith("decision: ")


# Every row that is not a refusal, as the shell script this replaced wrote its `case`
# (disk content | partitions | the only partition's content | its name).
NOT_REFUSED = {
    ("blank", 0, "", ""): "format-disk",
    ("gpt", 1, "ext4", ""): "mount-partition",
    ("gpt", 1, "ext4", "chi-persist"): "mount-partition",
    ("gpt", 1, "ext4", "primary"): "mount-partition",
    ("ext4", 0, "", ""): "mount-disk",
    ("gpt", 1, "empty", "chi-persist"): "format-partition",
}


COMBINATIONS = list(
    itertools.product(
        ["blank", "data", "ext4", "gpt", "other"],
        [0, 1, 2],
        ["", "ext4", "empty", "data", "other"],
        ["", "chi-persist", "primary"],
    )
)


@pytest.mark.parametrize(("disk", "count", "part", "name"), COMBINATIONS)
def test_decision_table_formats_only_a_blank_disk_or_our_empty_partition(disk, count, part, name):
    """Every combination of what a probe can report meets exactly its row of the table."""
    partitions = tuple(f"{DEVICE}{number}" for number in range(1, count + 1))
    probe = Probe(DEVICE, disk, "…", partitions, "", part, name)
    # A name counts only for the one partition of a table.
    expected = NOT_REFUSED.get((disk, count, part, name if count == 1 else ""), "refuse")
    assert volume.decide(probe) == expected


def test_a_blank_looking_device_is_read_before_it_is_called_blank():
    """No signature says nothing about the bytes: their ends must be read before deciding."""
    unread = DiskFacts(DEVICE, NOTHING)
    assert volume.disk_needs_zero_ends(unread)
    with pytest.raises(ValueError):
        volume.probe_of(unread)
    assert not volume.disk_needs_zero_ends(whole("ext4"))
    assert not volume.disk_needs_zero_ends(DiskFacts(DEVICE, NOTHING, (PART,)))
    assert volume.partition_needs_zero_head(Signatures(partition_name="chi-persist"))
    with pytest.raises(ValueError):
        volume.probe_of(gpt(), partition())


def test_only_the_one_partition_of_a_gpt_table_is_looked_into():
    """A dos table's partition, or one of two, never reaches the decision."""
    dos = DiskFacts(DEVICE, Signatures(pttype="dos", found="dos"), (PART,), 1)
    assert volume.probe_of(dos, partition("ext4")).partition_content == ""
    assert volume.probe_of(gpt(2), partition("ext4")).partition_content == ""
    assert volume.probe_of(gpt(), partition("ext4")).partition_uuid == UUID


# --- what the tools print ---------------------------------------------------------------


def test_probe_output_is_read_as_the_tools_print_it():
    """blkid's export lines, wipefs's types (sorted as LC_ALL=C sort), tune2fs, sfdisk, lsblk."""
    export = f"DEVNAME={PART}\nUUID={UUID}\nTYPE=ext4\nPART_ENTRY_NAME=a=b\n"
    assert volume.parse_blkid_export(export) == {
        "DEVNAME": PART, "UUID": UUID, "TYPE": "ext4", "PART_ENTRY_NAME": "a=b",
    }  # fmt: skip
    assert volume.parse_wipefs_types("gpt\ngpt\nPMBR\n\n") == "PMBR gpt"
    assert volume.parse_wipefs_types("") == ""
    header = "Block count:              523776\nBlock size:               4096\n"
    assert volume.parse_superblock_bytes(header) == ("523776", "4096")
    assert volume.parse_superblock_bytes("Inode count: 5\n") == ("", "")
    table = {"partitiontable": {"label": "gpt", "lastlba": 4194270, "sectorsize": 512}}
    assert volume.parse_table_end(json.dumps(table)) == ("512", "4194270")
    assert volume.parse_table_end("not json") == ("", "")
    assert volume.parse_table_end('{"partitiontable": {"label": "gpt"}}') == ("", "")
    listing = {"blockdevices": [{"path": DEVICE, "maj:min": "252:16", "size": GIB}]}
    assert volume.parse_lsblk(json.dumps(listing))[0]["size"] == GIB


# --- growing ---------------------------------------------------------------------------

START = MIB  # the partition's start, as parted's 1MiB and the tutorial's 0% leave it
TABLE_END = 2 * GIB - 33 * 512  # of a 2 GiB disk: the backup entries and header follow
TWO_GIB_PARTITION = TABLE_END - START  # to the table's last usable sector


def whole_disk(disk: int, filesystem: int) -> GrowthFacts:
    return GrowthFacts(DEVICE, DEVICE, disk, filesystem)


def in_partition(
    disk: int, partition_bytes: int, filesystem: int, table_end: int | None = None
) -> GrowthFacts:
    return GrowthFacts(DEVICE, PART, disk, filesystem, START, partition_bytes, table_end)


GROWTH = [
    pytest.param(
        whole_disk(2 * GIB, 2 * GIB), False, False, (), "fills its device (2048 MiB)",
        id="whole-disk-not-grown",
    ),
    pytest.param(
        whole_disk(3 * GIB, 2 * GIB), False, True, ("resize2fs", "e2fsck"),
        "is smaller than its device (3072 MiB): growing it", id="whole-disk-grown",
    ),
    pytest.param(
        whole_disk(2 * GIB + 16 * MIB, 2 * GIB), False, False, (), "nothing to grow",
        id="whole-disk-16-MiB-more-is-rounding",
    ),
    pytest.param(
        whole_disk(2 * GIB + 16 * MIB + 1, 2 * GIB), False, True, ("resize2fs", "e2fsck"),
        "growing it", id="whole-disk-just-over-the-threshold",
    ),
    pytest.param(
        whole_disk(2 * GIB, 2 * GIB + MIB), False, False, (), "nothing to grow",
        id="whole-disk-filesystem-within-1-MiB-of-it",
    ),
    pytest.param(
        in_partition(2 * GIB, TWO_GIB_PARTITION, TWO_GIB_PARTITION), False, False, (),
        "fills its partition", id="partition-not-grown",
    ),
    pytest.param(
        in_partition(3 * GIB, TWO_GIB_PARTITION, TWO_GIB_PARTITION, TABLE_END), True, True,
        ("growpart", "sfdisk", "partx", "resize2fs", "e2fsck"),
        "the device grew to 3072 MiB beyond its partition table: growing partition and filesystem",
        id="partition-grown-by-1-GiB",
    ),
    pytest.param(
        in_partition(3 * GIB, 3 * GIB - START - 33 * 512, TWO_GIB_PARTITION), False, True,
        ("resize2fs", "e2fsck"), "is smaller than its partition", id="table-already-grown",
    ),
    pytest.param(
        in_partition(2 * GIB, 3 * GIB // 2, 3 * GIB // 2, TABLE_END), False, False, (),
        "fills its partition", id="partition-short-of-an-ungrown-disk",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "grow_partition", "grow_filesystem", "tools", "words"), GROWTH)
def test_growth_plan(facts, grow_partition, grow_filesystem, tools, words):
    """Only space the volume gained is grown into; what it needs is named before anything."""
    plan = volume.plan_growth(facts)
    assert plan.refusal is None
    assert (plan.grow_partition, plan.grow_filesystem) == (grow_partition, grow_filesystem)
    assert plan.tools == tools
    assert words in plan.decision
    assert plan.grows == (grow_partition or grow_filesystem)


def test_space_inside_the_table_after_the_partition_is_left_alone():
    """A partition that stops short of a disk that did not grow: said, and nothing grown."""
    plan = volume.plan_growth(in_partition(2 * GIB, 3 * GIB // 2, 3 * GIB // 2, TABLE_END))
    assert plan.notes == (
        f"size: partition {PART} ends 511 MiB before the end of the device, inside its table:"
        " that space is left as it is",
    )


REFUSED_GROWTH = [
    pytest.param(
        in_partition(3 * GIB, 3 * GIB // 2, 3 * GIB // 2, TABLE_END),
        "ends 510 MiB before the end of the space its table covered", id="gap-then-grown",
    ),
    pytest.param(
        in_partition(GIB, TWO_GIB_PARTITION, TWO_GIB_PARTITION),
        "ends at 2047 MiB, beyond the end of /dev/vdb (1024 MiB)", id="partition-beyond-the-end",
    ),
    pytest.param(
        whole_disk(GIB, 2 * GIB), "(2048 MiB) is larger than the space it lives in (1024 MiB)",
        id="whole-disk-shrunk",
    ),
    pytest.param(
        in_partition(2 * GIB, GIB, GIB + 2 * MIB, TABLE_END),
        "is larger than the space it lives in",
        id="filesystem-larger-than-its-partition",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("facts", "words"), REFUSED_GROWTH)
def test_growth_that_could_reach_data_is_refused(facts, words):
    """Data safety: a volume that shrank, or space that belongs to no partition: refused."""
    plan = volume.plan_growth(facts)
    assert plan.refusal is not None and words in plan.refusal
    assert "nothing was written and nothing was mounted" in plan.refusal
    assert not plan.grows and plan.tools == ()


def test_the_table_is_read_only_when_the_partition_stops_short_of_the_device():
    """sfdisk (and the tool check for it) only when growing could depend on the table."""
    assert not volume.needs_table_end(whole_disk(3 * GIB, 2 * GIB))
    assert not volume.needs_table_end(in_partition(2 * GIB, TWO_GIB_PARTITION, GIB))
    assert not volume.needs_table_end(in_partition(GIB, TWO_GIB_PARTITION, GIB))
    assert volume.needs_table_end(in_partition(3 * GIB, TWO_GIB_PARTITION, GIB))
    with pytest.raises(ValueError):
        volume.plan_growth(in_partition(3 * GIB, TWO_GIB_PARTITION, GIB))


# --- fstab ----------------------------------------------------------------------------

MP = "/mnt/block"
ENTRY = volume.fstab_entry(UUID, MP)
FSTABS = [
    pytest.param("", f"{ENTRY}\n", [], id="no-fstab-yet"),
    pytest.param(
        "# /etc/fstab\nLABEL=cloudimg-rootfs / ext4 defaults 0 1\n",
        f"# /etc/fstab\nLABEL=cloudimg-rootfs / ext4 defaults 0 1\n{ENTRY}\n", [],
        id="other-lines-kept",
    ),
    pytest.param(
        "proc /proc proc defaults 0 0\n/dev/vdb1 /mnt/block ext4 defaults 0 0\n",
        f"proc /proc proc defaults 0 0\n{ENTRY}\n", ["/dev/vdb1 /mnt/block ext4 defaults 0 0"],
        id="tutorial-line-replaced",
    ),
    pytest.param(
        "UUID=x /mnt/block ext4 defaults 0 2\n# keep me\n\n/dev/vdb1\t/mnt/block// ext4 defaults\n",
        f"# keep me\n\n{ENTRY}\n",
        ["UUID=x /mnt/block ext4 defaults 0 2", "/dev/vdb1\t/mnt/block// ext4 defaults"],
        id="two-stale-lines-become-one",
    ),
    pytest.param(
        "tmpfs /run/y tmpfs defaults 0 0\ntmpfs /mnt/block/scratch tmpfs defaults 0 0",
        f"tmpfs /run/y tmpfs defaults 0 0\n{ENTRY}\ntmpfs /mnt/block/scratch tmpfs defaults 0 0\n",
        [], id="before-a-mount-below-it-and-a-last-line-without-newline",
    ),
    pytest.param(
        "tmpfs /mnt/blocked tmpfs defaults 0 0\r\n  # /mnt/block in a comment\n",
        f"tmpfs /mnt/blocked tmpfs defaults 0 0\r\n  # /mnt/block in a comment\n{ENTRY}\n", [],
        id="a-longer-name-and-comments-are-not-ours",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("current", "updated", "earlier"), FSTABS)
def test_fstab_keeps_exactly_one_line_for_the_mount_point(current, updated, earlier):
    """Every line for the mount point goes, every other line stays, byte for byte."""
    assert volume.fstab_lines_for(current, MP) == earlier
    assert volume.fstab_with_entry(current, MP, ENTRY) == updated
    assert volume.fstab_with_entry(updated, MP, ENTRY) == updated
    assert volume.fstab_lines_for(updated, MP) == [ENTRY]


def test_a_space_in_the_mount_point_is_written_as_040():
    """fstab separates fields with blanks: a space in the path is \\040, as mountinfo has it."""
    entry = volume.fstab_entry(UUID, "/mnt/block storage")
    assert entry == (
        f"UUID={UUID} /mnt/block\\040storage ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2"
    )
    current = "/dev/vdb1 /mnt/block\\040storage ext4 defaults 0 0\n"
    assert volume.fstab_with_entry(current, "/mnt/block storage", entry) == f"{entry}\n"


# --- the command line ---------------------------------------------------------------------

PARSED = [
    pytest.param(["--volume-id", UUID], {"volume_id": UUID}, id="id"),
    pytest.param(
        [f"--volume-id={UUID}", "--mount-point=/srv/a=b", "--size-gib", "3"],
        {"volume_id": UUID, "mount_point": "/srv/a=b", "size_gib": "3"}, id="with-equals",
    ),
    pytest.param(["--volume-id", "--owner"], {"volume_id": "--owner"}, id="value-like-an-option"),
    pytest.param(["--volume-id", UUID, "--help"], None, id="help"),
    pytest.param(["-h", "--colour"], None, id="help-first"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "values"), PARSED)
def test_options_are_read_as_given(argv, values):
    """Both --option value and --option=value; --help ends the reading."""
    parsed = volume.parse_arguments(argv)
    if values is None:
        assert parsed is None
    else:
        assert parsed == volume.Arguments(**values)


BAD = [
    pytest.param([], "no arguments: --volume-id is required", id="none"),
    pytest.param(["--volume-id"], "option --volume-id needs a value", id="missing-value"),
    pytest.param(["--colour=blue"], "unknown argument '--colour=blue'; see --help", id="unknown"),
    pytest.param(["--help=yes"], "unknown argument '--help=yes'", id="help-with-a-value"),
    pytest.param(["it's"], "unknown argument 'it'\\''s'", id="quoted-as-bash-does"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_options_are_usage_errors(argv, message):
    """Exit 2 with what was wrong and the usage line."""
    with pytest.raises(volume.Stop) as stopped:
        volume.parse_arguments(argv)
    assert stopped.value.code == 2
    assert stopped.value.message.startswith(message)
    assert stopped.value.message.endswith(f"\n{volume.USAGE}")


def test_serial_links_cover_virtio_blk_and_virtio_scsi():
    """virtio-blk's serial is the id's first 20 characters; virtio-scsi's is the whole id."""
    assert volume.serial_links("/dev/disk/by-id", UUID) == [
        "/dev/disk/by-id/virtio-0b5d7a5e-3c1f-4d8e-9",
        f"/dev/disk/by-id/virtio-{UUID}",
        "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_0b5d7a5e-3c1f-4d8e-9",
        f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{UUID}",
    ]
