#!/usr/bin/env bash
# prepare-volume.sh: find this server's persistent volume by its serial, format it
# only when it is blank, check it, grow it when the volume has become larger, mount
# it by UUID and keep one fstab line for it.
# Run as root on the server; `prepare-volume.sh --help` explains the rules.
#
# Exit codes:
#   0  the volume is mounted at the mount point (formatted only if it was blank,
#      grown if the device had become larger than its filesystem)
#   1  unexpected failure: a command failed, or a tool that growing needs is
#      missing; the output names it
#   2  usage error or bad input (no or unknown option, malformed volume id, not root);
#      nothing was touched
#   3  no device for the volume appeared within the timeout, or it never reached
#      the size given with --size-gib; nothing was touched
#   4  refused: the device holds something this script neither mounts nor formats,
#      something else is mounted, the device is in use, the filesystem check
#      found errors it cannot fix, or the volume grew but its layout is not one this
#      script grows; nothing was written to the device
#
# Environment, for tests only: BY_ID_DIR (default /dev/disk/by-id) and FSTAB
# (default /etc/fstab).
set -Eeuo pipefail
export LC_ALL=C

readonly PARTITION_NAME=chi-persist
readonly FILESYSTEM_LABEL=block-persist
readonly FSTAB_OPTIONS=defaults,nofail,x-systemd.device-timeout=30s
readonly HEAD_BYTES=$((4 * 1024 * 1024))
readonly TAIL_BYTES=$((1024 * 1024))
readonly PARTITION_WAIT_SECONDS=15
readonly LOCK_DIRECTORY=/run/lock
# Growth smaller than this is rounding (alignment, a dropped last block group), not a
# larger volume; Cinder grows volumes by whole GiB.
readonly GROW_THRESHOLD_BYTES=$((16 * 1024 * 1024))
readonly MIB=$((1024 * 1024))
readonly GIB=$((1024 * 1024 * 1024))
readonly USAGE="usage: prepare-volume.sh --volume-id ID [--mount-point DIR] [--owner USER] [--timeout SECONDS] [--size-gib N]"

volume_id=""
mount_point=/mnt/block
owner=cc
timeout=180
size_gib=""
by_id_dir=${BY_ID_DIR:-/dev/disk/by-id}
fstab=${FSTAB:-/etc/fstab}
temporary_files=()

show_help() {
    cat <<EOF
$USAGE

Finds the Cinder volume with the given id among this server's disks, prepares it
if it is blank, and mounts it. Runs as root. Safe to run again at any time: on a
prepared volume it only checks and mounts, and changes nothing when the volume
is already mounted.

Options:
  --volume-id ID       the Cinder volume's id, a 36-character UUID (required)
  --mount-point DIR    where to mount it (default /mnt/block): an absolute path of
                       letters, digits, space and ._-+@: characters
  --owner USER         who gets the mount point's top directory (default cc);
                       nothing below it changes owner
  --timeout SECONDS    how long to wait for the device to appear (and to reach
                       --size-gib), and for another run on the same volume to
                       finish (default 180)
  --size-gib N         the volume's size in Cinder, in GiB: wait until the device
                       shows at least that size (an extended volume can take a
                       moment to reach the server) before deciding anything
  --help               show this text

The device is found by the volume's serial, never by the name Nova reports:
  \$BY_ID_DIR/virtio-<first 20 characters of ID> or virtio-<ID>           (virtio-blk)
  \$BY_ID_DIR/scsi-0QEMU_QEMU_HARDDISK_<first 20 characters of ID or ID>  (virtio-scsi)

What the device holds decides what happens (probed with blkid -p and wipefs):
  nothing at all (no signature, first 4 MiB and last 1 MiB zero)
      -> GPT table, one partition named "$PARTITION_NAME", ext4 on it, mount
  a GPT table whose only partition holds ext4 (the tutorial's layout)
      -> mount that partition; nothing written
  ext4 on the whole device
      -> mount the device; nothing written
  a GPT table whose only partition is named "$PARTITION_NAME" and is still empty
  (a first run that was interrupted)
      -> ext4 on that partition, mount
  anything else (another filesystem, swap, LUKS, LVM or RAID members, a dos
  table, several partitions, unrecognised data)
      -> refuse, exit 4, nothing written
A mounted or otherwise used device is never formatted. Before mounting, the
filesystem gets a preen check (e2fsck -p); errors it cannot fix are refused.

A volume that has become larger (extended in Cinder) is grown to fill the device,
without touching a byte of its data:
  GPT + one ext4 partition (this script's layout and the tutorial's)
      -> growpart rewrites the table (its backup header moves to the new end) with
         the partition ending at the end of the device, then resize2fs
  ext4 on the whole device
      -> resize2fs
Growing happens before mounting (after a full check, e2fsck -f) or, on a volume
that is already mounted, online. Only space that the volume gained is added: if
the partition did not reach the end of its table before, the space between may
hold something else, and growing is refused (exit 4, nothing written). Growing
needs growpart (package cloud-guest-utils), sfdisk (fdisk) and resize2fs
(e2fsprogs). It prints one line:
  prepare-volume: volume grew from <old> MiB to <new> MiB: filesystem resized

Then: mount by UUID at the mount point, give the top directory to the owner, write
MP/.chi-persist/volume.env (VOLUME_ID, FS_UUID), and keep exactly one fstab line
for the mount point:
  UUID=<uuid> <mount point> ext4 $FSTAB_OPTIONS 0 2
Each decision prints one line; the last line reads
  prepare-volume: ready: device=<device> uuid=<uuid> mount_point=<dir> formatted=<yes|no>

Exit codes: 0 mounted; 1 unexpected failure (or a tool for growing is missing);
2 usage error, bad input or not root; 3 the device never appeared, or never reached
--size-gib; 4 refused (nothing written to the device).
Environment, for tests only: BY_ID_DIR (default /dev/disk/by-id), FSTAB (default /etc/fstab).
EOF
}

say() {
    printf 'prepare-volume: %s\n' "$*"
}

fail() {
    local code=$1
    shift
    printf 'prepare-volume: %s\n' "$*" >&2
    exit "$code"
}

usage_error() {
    printf 'prepare-volume: %s\n%s\n' "$1" "$USAGE" >&2
    exit 2
}

on_unexpected_error() {
    local code=$1 command=$2 line=$3
    # Inside a command substitution, let the caller report the failure once.
    if [[ $BASHPID != "$$" ]]; then
        exit "$code"
    fi
    printf 'prepare-volume: unexpected failure (exit %s) at line %s: %s\n' "$code" "$line" "$command" >&2
    exit 1
}

remove_temporary_files() {
    if ((${#temporary_files[@]})); then
        rm -f -- "${temporary_files[@]}"
    fi
}

trap 'on_unexpected_error $? "$BASH_COMMAND" $LINENO' ERR
trap remove_temporary_files EXIT

# --- arguments --------------------------------------------------------------

parse_arguments() {
    (($#)) || usage_error "no arguments: --volume-id is required"
    while (($#)); do
        case $1 in
            --help | -h)
                show_help
                exit 0
                ;;
            --volume-id=* | --mount-point=* | --owner=* | --timeout=* | --size-gib=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}"
                continue
                ;;
            --volume-id | --mount-point | --owner | --timeout | --size-gib)
                (($# >= 2)) || usage_error "option $1 needs a value"
                case $1 in
                    --volume-id) volume_id=$2 ;;
                    --mount-point) mount_point=$2 ;;
                    --owner) owner=$2 ;;
                    --timeout) timeout=$2 ;;
                    --size-gib) size_gib=$2 ;;
                esac
                shift 2
                ;;
            *) usage_error "unknown argument ${1@Q}; see --help" ;;
        esac
    done
}

validate_mount_point() {
    local path=$1
    [[ $path == /* ]] || usage_error "mount point ${path@Q} is not an absolute path; pass e.g. --mount-point /mnt/block"
    [[ $path != / ]] || usage_error "mount point / is the root directory; pass e.g. --mount-point /mnt/block"
    local allowed='^[A-Za-z0-9._+@:/ -]+$' dot_component='(^|/)\.{1,2}(/|$)'
    [[ $path =~ $allowed ]] \
        || usage_error "mount point ${path@Q} may contain only letters, digits, space and ._-+@:/"
    [[ ! $path =~ $dot_component && $path != *//* && $path != */ ]] \
        || usage_error "mount point ${path@Q} is not in canonical form (no ., .., // or trailing /)"
    if [[ -e $path || -L $path ]]; then
        [[ -d $path ]] || usage_error "mount point ${path@Q} exists and is not a directory"
        local resolved
        resolved=$(realpath -e -- "$path")
        [[ $resolved == "$path" ]] \
            || usage_error "mount point ${path@Q} resolves to ${resolved@Q} through a symbolic link; pass --mount-point ${resolved@Q}"
    fi
}

validate_arguments() {
    ((EUID == 0)) || usage_error "must run as root (uid 0, not ${EUID}); run it with sudo"
    [[ -n $volume_id ]] || usage_error "--volume-id is required (openstack volume show block-persist-<netid> -f value -c id prints it)"
    local uuid_form='^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$'
    local user_name='^[a-z_][a-z0-9_-]{0,31}$'
    [[ $volume_id =~ $uuid_form ]] \
        || usage_error "malformed volume id ${volume_id@Q}: a Cinder volume id is a 36-character UUID such as 3f2a9c4e-8b1d-4e6f-a0b2-5c7d9e1f3a4b"
    volume_id=${volume_id,,}
    validate_mount_point "$mount_point"
    local seconds='^[0-9]{1,4}$'
    if [[ ! $timeout =~ $seconds ]] || ((10#$timeout > 3600)); then
        usage_error "timeout ${timeout@Q} is not a whole number of seconds between 0 and 3600"
    fi
    timeout=$((10#$timeout))
    if [[ -n $size_gib ]]; then
        local gib='^[0-9]{1,6}$'
        if [[ ! $size_gib =~ $gib ]] || ((10#$size_gib < 1)); then
            usage_error "size ${size_gib@Q} is not a whole number of GiB of at least 1 (the volume's size in Cinder)"
        fi
        size_gib=$((10#$size_gib))
    fi
    if [[ ! $owner =~ $user_name ]] || ! id -u -- "$owner" >/dev/null 2>&1; then
        usage_error "owner ${owner@Q} is not a user on this server; pass an existing user, e.g. --owner cc"
    fi
    [[ $by_id_dir == /* ]] || usage_error "BY_ID_DIR ${by_id_dir@Q} is not an absolute path"
    [[ $fstab == /* ]] || usage_error "FSTAB ${fstab@Q} is not an absolute path"
    [[ -d $(dirname -- "$fstab") ]] || usage_error "FSTAB ${fstab@Q}: its directory does not exist"
    if [[ -e $fstab || -L $fstab ]]; then
        [[ -f $fstab ]] || usage_error "FSTAB ${fstab@Q} is not a regular file"
    fi
}

# --- one run per volume at a time -------------------------------------------

# Two runs for one volume (a retried deployment, say) must not both see it blank.
lock_volume() {
    local lock_file=$LOCK_DIRECTORY/chi-persist-prepare-volume-$volume_id.lock lock_descriptor
    mkdir -p -- "$LOCK_DIRECTORY"
    exec {lock_descriptor}>"$lock_file"
    flock --wait "$timeout" "$lock_descriptor" \
        || fail 4 "refused: another prepare-volume.sh for volume $volume_id is still running (it holds $lock_file); nothing was written. Run again once it has finished."
}

# --- finding the device -----------------------------------------------------

device=""
device_link=""
candidates=()

# Sets device and device_link when a candidate link resolves to a block device.
# Links that resolve to different devices, or to a partition, are refused.
resolve_candidates() {
    local link target found_target="" found_link=""
    for link in "${candidates[@]}"; do
        [[ -e $link ]] || continue
        target=$(readlink -e -- "$link" || true)
        [[ -n $target && -b $target ]] || continue
        if [[ -n $found_target && $target != "$found_target" ]]; then
            fail 4 "refused: volume $volume_id matches two devices, $found_link -> $found_target and $link -> $target; nothing was written. Detach the volume that does not belong here and run again."
        fi
        found_target=$target
        found_link=$link
    done
    [[ -n $found_target ]] || return 0
    local devno
    devno=$(mountpoint -x -- "$found_target")
    if [[ -e /sys/dev/block/$devno/partition ]]; then
        fail 4 "refused: $found_link points to $found_target, a partition, not a whole disk; nothing was written. The by-id link for a volume must name the whole disk."
    fi
    device=$found_target
    device_link=$found_link
}

find_device() {
    local short=${volume_id:0:20}
    candidates=(
        "$by_id_dir/virtio-$short"
        "$by_id_dir/virtio-$volume_id"
        "$by_id_dir/scsi-0QEMU_QEMU_HARDDISK_$short"
        "$by_id_dir/scsi-0QEMU_QEMU_HARDDISK_$volume_id"
    )
    # Microseconds: $SECONDS counts whole seconds and could give up a second early.
    local started=${EPOCHREALTIME/[.,]/}
    while :; do
        resolve_candidates
        [[ -z $device ]] || break
        if ((${EPOCHREALTIME/[.,]/} - started >= timeout * 1000000)); then
            fail 3 "no device for volume $volume_id appeared within ${timeout} s; looked for: ${candidates[*]}. Check that the volume is attached to this server (openstack server volume list <server>) and run again."
        fi
        sleep 0.5
    done
    say "device: $device (found as $device_link)"
}

# An extended volume reaches the server a moment after Cinder reports it: wait
# (bounded) until the device shows the size the caller says the volume has.
wait_for_size() {
    [[ -n $size_gib ]] || return 0
    local wanted=$((size_gib * GIB)) size rescan started
    rescan=/sys/class/block/$(basename -- "$device")/device/rescan
    started=${EPOCHREALTIME/[.,]/}
    while :; do
        size=$(blockdev --getsize64 "$device")
        ((size >= wanted)) && break
        # virtio-scsi (and real SCSI) disks learn a new capacity only when asked.
        if [[ -w $rescan ]]; then
            echo 1 >"$rescan" 2>/dev/null || true
        fi
        if ((${EPOCHREALTIME/[.,]/} - started >= timeout * 1000000)); then
            fail 3 "$device is $((size / MIB)) MiB, but volume $volume_id is ${size_gib} GiB: the server did not see the new size within ${timeout} s; nothing was touched. Run again in a minute; if it persists, recycle the server (./chi-persist recycle), then pulumi up."
        fi
        sleep 0.5
    done
    say "size: $device is $((size / MIB)) MiB (the volume is ${size_gib} GiB)"
}

# --- probing ----------------------------------------------------------------

# What blkid -p saw, keyed by tag (TYPE, PTTYPE, UUID, PART_ENTRY_NAME, ...).
declare -A tags=()
signatures=""

# Fills tags from `blkid -p` on a block device: exit 2 means nothing was found,
# but only once test -b has shown the path is a block device; any other failure stops.
probe_tags() {
    local path=$1 output rc=0 line
    tags=()
    [[ -b $path ]] || fail 4 "refused: $path is not a block device any more; nothing was written. Run again once the volume is attached."
    output=$(blkid -p -o export -- "$path" 2>&1) || rc=$?
    case $rc in
        0) ;;
        2) return 0 ;;
        8) fail 4 "refused: blkid finds more than one signature on $path (ambiguous); nothing was written. Inspect it with: sudo wipefs --no-act $path" ;;
        *) fail 4 "refused: could not probe $path (blkid exit $rc: ${output//$'\n'/ }); nothing was written." ;;
    esac
    while IFS= read -r line; do
        if [[ $line == *=* ]]; then
            tags[${line%%=*}]=${line#*=}
        fi
    done <<<"$output"
}

# Sets signatures to the sorted, distinct signature types wipefs lists on a device.
probe_signatures() {
    local path=$1 output rc=0
    output=$(wipefs --no-act --noheadings --output TYPE -- "$path" 2>&1) || rc=$?
    ((rc == 0)) || fail 4 "refused: could not list signatures on $path (wipefs exit $rc: ${output//$'\n'/ }); nothing was written."
    signatures=$(printf '%s\n' "$output" | awk 'NF { print $1 }' | sort -u | paste -sd ' ' -)
}

zero_ends=""

# Sets zero_ends to no unless the byte range of the device reads as zeros.
read_zero_range() {
    local path=$1 offset=$2 length=$3 rc=0
    cmp --silent --bytes="$length" --ignore-initial="$offset:0" -- "$path" /dev/zero || rc=$?
    case $rc in
        0) ;;
        1) zero_ends=no ;;
        *) fail 4 "refused: could not read $path (cmp exit $rc); nothing was written." ;;
    esac
}

# Sets zero_ends to yes when the first 4 MiB (and, with "tail", the last 1 MiB) are zero.
check_zero_ends() {
    local path=$1 ends=$2 size
    size=$(blockdev --getsize64 "$path")
    if [[ ! $size =~ ^[1-9][0-9]*$ ]]; then
        fail 4 "refused: could not read the size of $path (${size@Q}); nothing was written."
    fi
    zero_ends=yes
    read_zero_range "$path" 0 $((size < HEAD_BYTES ? size : HEAD_BYTES))
    if [[ $ends == tail ]] && ((size > TAIL_BYTES)); then
        read_zero_range "$path" $((size - TAIL_BYTES)) "$TAIL_BYTES"
    fi
}

# The kernel's partitions of the device, as /dev paths, in number order.
kernel_partitions() {
    local disk_sys=$1 child
    for child in "$disk_sys"/*/partition; do
        [[ -e $child ]] || continue
        printf '%s %s\n' "$(<"$child")" "/dev/$(basename -- "$(dirname -- "$child")")"
    done | sort -n | awk '{ print $2 }'
}

# Facts the decision is made from.
disk_content=""         # blank | data | ext4 | gpt | other
disk_type=""
disk_uuid=""
disk_signatures=""
partitions=()
partition_content=""    # ext4 | empty | data | other (only with exactly one partition)
partition_name=""
partition_uuid=""
partition_signatures=""
found=""                # what the device holds, in words

probe_volume() {
    local disk_sys pttype table_count=0
    disk_content="" disk_type="" disk_uuid="" disk_signatures="" partitions=()
    partition_content="" partition_name="" partition_uuid="" partition_signatures="" found=""
    disk_sys=$(readlink -e -- "/sys/dev/block/$(mountpoint -x -- "$device")")
    # Bring the kernel's list of partitions in line with the table on the disk
    # (this writes nothing to the disk); on a blank disk there is nothing to read.
    partx --update -- "$device" >/dev/null 2>&1 || true
    probe_tags "$device"
    pttype=${tags[PTTYPE]:-}
    disk_type=${tags[TYPE]:-}
    disk_uuid=${tags[UUID]:-}
    probe_signatures "$device"
    disk_signatures=$signatures
    mapfile -t partitions < <(kernel_partitions "$disk_sys")
    if [[ -n $pttype ]]; then
        table_count=$(partx --show --noheadings --output NR -- "$device" 2>/dev/null | grep -c . || true)
    fi

    if [[ -z $disk_signatures && -z $disk_type && -z $pttype && ${#partitions[@]} -gt 0 ]]; then
        disk_content=other
        found="no partition table, yet the kernel lists partitions ${partitions[*]} (run: sudo partprobe $device)"
    elif [[ -z $disk_signatures && -z $disk_type && -z $pttype ]]; then
        check_zero_ends "$device" tail
        if [[ $zero_ends == yes ]]; then
            disk_content=blank
            found="nothing (no signature; its first 4 MiB and last 1 MiB are zero)"
        else
            disk_content=data
            found="data without any known signature (its first 4 MiB or last 1 MiB are not zero)"
        fi
    elif [[ $disk_type == ext4 && -z $pttype && $disk_signatures == ext4 && ${#partitions[@]} -eq 0 ]]; then
        disk_content=ext4
        found="ext4 on the whole device (UUID $disk_uuid)"
    elif [[ $pttype == gpt && -z $disk_type && ($disk_signatures == "PMBR gpt" || $disk_signatures == gpt) ]]; then
        if ((table_count == ${#partitions[@]})); then
            disk_content=gpt
            found="a gpt table with ${#partitions[@]} partition(s)"
        else
            disk_content=other
            found="a gpt table with $table_count partition(s) while the kernel lists ${#partitions[@]} (run: sudo partprobe $device)"
        fi
    else
        disk_content=other
        found="signatures '${disk_signatures:-none}' on the whole device (blkid: TYPE=${disk_type:-none} PTTYPE=${pttype:-none}), ${#partitions[@]} partition(s)"
    fi

    if [[ $disk_content == gpt && ${#partitions[@]} -eq 1 ]]; then
        probe_partition "${partitions[0]}"
    fi
}

probe_partition() {
    local partition=$1
    probe_tags "$partition"
    local type=${tags[TYPE]:-} pttype=${tags[PTTYPE]:-}
    partition_name=${tags[PART_ENTRY_NAME]:-}
    partition_uuid=${tags[UUID]:-}
    probe_signatures "$partition"
    partition_signatures=$signatures
    local described="$partition, name '${partition_name}'"
    if [[ $type == ext4 && -z $pttype && $partition_signatures == ext4 ]]; then
        partition_content=ext4
        found="a gpt table whose only partition ($described) holds ext4 (UUID $partition_uuid)"
    elif [[ -z $type && -z $pttype && -z $partition_signatures ]]; then
        check_zero_ends "$partition" head
        if [[ $zero_ends == yes ]]; then
            partition_content=empty
            found="a gpt table whose only partition ($described) has no filesystem and is zero"
        else
            partition_content=data
            found="a gpt table whose only partition ($described) has no filesystem signature but holds data (a damaged filesystem?)"
        fi
    else
        partition_content=other
        found="a gpt table whose only partition ($described) holds signatures '${partition_signatures:-none}' (blkid: TYPE=${type:-none})"
    fi
}

# --- the decision -----------------------------------------------------------

action=""

# The whole decision, one row per case: what the device holds -> what is done.
# mkfs is reached only through the two format-* rows.
decide_action() {
    local name=""
    if ((${#partitions[@]} == 1)); then
        name=$partition_name
    fi
    case "$disk_content|${#partitions[@]}|$partition_content|$name" in
        "blank|0||") action=format-disk ;;
        "gpt|1|ext4|"*) action=mount-partition ;;
        "ext4|0||") action=mount-disk ;;
        "gpt|1|empty|$PARTITION_NAME") action=format-partition ;;
        *) action=refuse ;;
    esac
}

refuse_content() {
    fail 4 "refused: $device holds $found; nothing was written. Only a blank volume (or an empty partition named $PARTITION_NAME) is formatted, and only ext4 (on the whole device, or on the only partition of a GPT table) is mounted. Attach the right volume; or, if this volume's content is not needed, clear it yourself (sudo wipefs --all, then zero its first 4 MiB) and run again."
}

# --- mounts and users of the device -----------------------------------------

# Targets (as written in /proc/self/mountinfo) where the device numbered $1 is mounted.
mount_targets_of() {
    awk -v devno="$1" '$3 == devno { print $5 }' /proc/self/mountinfo
}

# Refuses if the disk or any of its partitions is mounted (other than the
# filesystem device $1 at the mount point), or held by another block device.
ensure_not_in_use() {
    local allowed=${1:-} path devno targets holders
    for path in "$device" "${partitions[@]}"; do
        devno=$(mountpoint -x -- "$path")
        holders=$(ls -A "/sys/dev/block/$devno/holders" 2>/dev/null || true)
        [[ -z $holders ]] \
            || fail 4 "refused: $path is in use by ${holders//$'\n'/ } (device mapper, RAID or LVM); nothing was written."
        targets=$(mount_targets_of "$devno")
        if [[ -n $targets && $path != "$allowed" ]]; then
            fail 4 "refused: $path is mounted at ${targets//$'\n'/, }; nothing was written. Unmount it (sudo umount $path) or pass that directory as --mount-point, then run again."
        fi
    done
}

already_mounted=no

# fstab and mountinfo write a space in a path as \040 (the only special character allowed here).
escaped_path() {
    printf '%s' "${1// /\\040}"
}

# Looks at what is mounted at the mount point: the same filesystem (its root, not
# a bind mount of a directory in it) means there is nothing to mount; anything
# else is refused and left alone.
check_mount_point() {
    local filesystem_device=$1 entry wanted="" what
    already_mounted=no
    mountpoint -q -- "$mount_point" || return 0
    # The last entry for a mount point is the one on top.
    entry=$(TARGET=$(escaped_path "$mount_point") awk '$5 == ENVIRON["TARGET"] { entry = $3 " " $4 } END { print entry }' /proc/self/mountinfo)
    if [[ -n $filesystem_device ]]; then
        wanted="$(mountpoint -x -- "$filesystem_device") /"
    fi
    if [[ -n $wanted && $entry == "$wanted" ]]; then
        already_mounted=yes
        return 0
    fi
    what=$(findmnt --noheadings --first-only --output SOURCE,FSTYPE --mountpoint "$mount_point" || true)
    fail 4 "refused: something else is mounted at $mount_point (${what:-${entry:-unknown}}); it was left alone and nothing was written to $device. Unmount it (sudo umount $mount_point) or choose another --mount-point."
}

# --- formatting -------------------------------------------------------------

# Re-probes right before a write; anything but the expected emptiness aborts.
guard_blank_disk() {
    probe_volume
    [[ $disk_content == blank ]] || fail 4 "refused to partition $device: it now holds $found; nothing was written."
    ensure_not_in_use
}

guard_empty_partition() {
    probe_volume
    [[ $disk_content == gpt && ${#partitions[@]} -eq 1 && $partition_content == empty && $partition_name == "$PARTITION_NAME" ]] \
        || fail 4 "refused to format: $device now holds $found; nothing more was written."
    ensure_not_in_use
    check_mount_point ""
}

wait_for_partition() {
    local waited=0
    while :; do
        partx --update -- "$device" >/dev/null 2>&1 || true
        if command -v udevadm >/dev/null; then
            udevadm settle --timeout=5 >/dev/null 2>&1 || true
        fi
        mapfile -t partitions < <(kernel_partitions "$(readlink -e -- "/sys/dev/block/$(mountpoint -x -- "$device")")")
        if ((${#partitions[@]} == 1)) && [[ -b ${partitions[0]} ]]; then
            return 0
        fi
        ((waited < PARTITION_WAIT_SECONDS * 2)) \
            || fail 1 "the partition made on $device did not appear within ${PARTITION_WAIT_SECONDS} s; run this script again (it completes an interrupted first run)."
        sleep 0.5
        waited=$((waited + 1))
    done
}

create_partition() {
    guard_blank_disk
    say "creating a GPT table with one partition named $PARTITION_NAME on $device"
    local output
    output=$(parted --script -- "$device" mklabel gpt mkpart "$PARTITION_NAME" ext4 1MiB 100% 2>&1) \
        || fail 1 "parted failed on $device: ${output//$'\n'/ }"
    wait_for_partition
    say "partition: ${partitions[0]}"
}

format_partition() {
    guard_empty_partition
    local partition=${partitions[0]} output
    output=$(mkfs.ext4 -q -L "$FILESYSTEM_LABEL" -E nodiscard -- "$partition" 2>&1) \
        || fail 1 "mkfs.ext4 failed on $partition: ${output//$'\n'/ }"
    if command -v udevadm >/dev/null; then
        udevadm settle --timeout=5 >/dev/null 2>&1 || true
    fi
    probe_tags "$partition"
    [[ ${tags[TYPE]:-} == ext4 && -n ${tags[UUID]:-} ]] \
        || fail 1 "after mkfs.ext4, $partition does not show an ext4 filesystem (TYPE=${tags[TYPE]:-none})"
    partition_uuid=${tags[UUID]}
    say "formatted $partition as ext4 (label $FILESYSTEM_LABEL, UUID $partition_uuid)"
}

# --- checking and mounting --------------------------------------------------

check_filesystem() {
    local path=$1 output rc=0
    output=$(e2fsck -p -- "$path" 2>&1) || rc=$?
    case $rc in
        0) say "filesystem check: clean" ;;
        1 | 2) say "filesystem check: errors corrected (e2fsck exit $rc)" ;;
        *) fail 4 "refused: the filesystem check of $path found errors it cannot fix (e2fsck exit $rc: ${output//$'\n'/ }); nothing was mounted. Repair it interactively (sudo e2fsck -f $path) and run again." ;;
    esac
}

# Refuses when another block device carries the same filesystem UUID (a copy of
# the volume): mounting by UUID, now or at boot, could pick either.
ensure_unique_uuid() {
    local uuid=$1 devices count
    devices=$(blkid -c /dev/null -o device -t "UUID=$uuid" 2>/dev/null || true)
    count=$(grep -c . <<<"$devices" || true)
    if ((count > 1)); then
        fail 4 "refused: filesystem UUID $uuid is on ${count} devices (${devices//$'\n'/, }), so mounting by UUID is ambiguous; nothing was mounted. Detach the copy that does not belong here and run again."
    fi
}

mount_filesystem() {
    local path=$1 uuid=$2 entries
    if [[ ! -d $mount_point ]]; then
        mkdir -p -- "$mount_point"
    fi
    entries=$(find "$mount_point" -mindepth 1 -maxdepth 1 -printf . | wc -c)
    if ((entries > 0)); then
        say "mount point $mount_point is not empty ($entries entries): they stay on the root disk, hidden under the volume"
    fi
    local output
    output=$(mount --types ext4 --options defaults --source "UUID=$uuid" --target "$mount_point" 2>&1) \
        || fail 1 "could not mount UUID=$uuid at $mount_point: ${output//$'\n'/ }"
    if [[ $(mountpoint -d -- "$mount_point") != "$(mountpoint -x -- "$path")" ]]; then
        umount -- "$mount_point"
        fail 1 "UUID=$uuid did not mount $path at $mount_point (another device answered); unmounted it again."
    fi
    say "mounted UUID=$uuid at $mount_point"
}

give_top_directory_to_owner() {
    local wanted current
    wanted="$(id -u -- "$owner"):$(id -g -- "$owner")"
    current=$(stat -c '%u:%g' -- "$mount_point")
    if [[ $current == "$wanted" ]]; then
        say "owner of $mount_point: already $owner (nothing below it changes)"
    else
        chown -- "$owner:" "$mount_point"
        say "owner of $mount_point: set to $owner (not recursive; nothing below it changes)"
    fi
}

file_changed=no

# Writes content to path through a temporary file and a rename, keeping the old
# file's mode and owner (new files: root, 0644); only when the content differs.
replace_file() {
    local path=$1 content=$2 temporary current=""
    file_changed=no
    if [[ -f $path && ! -L $path ]]; then
        current=$(cat -- "$path"; printf x)
        if [[ $current == "${content}x" ]]; then
            return 0
        fi
    fi
    temporary=$(mktemp -- "$path.XXXXXX")
    temporary_files+=("$temporary")
    printf '%s' "$content" >"$temporary"
    if [[ -f $path && ! -L $path ]]; then
        chmod --reference="$path" -- "$temporary"
        chown --reference="$path" -- "$temporary"
    else
        chmod 0644 -- "$temporary"
        chown root:root -- "$temporary"
    fi
    sync -- "$temporary"
    mv -f -- "$temporary" "$path"
    file_changed=yes
}

write_volume_env() {
    local uuid=$1 directory=$mount_point/.chi-persist
    if [[ -L $directory || (-e $directory && ! -d $directory) ]]; then
        fail 4 "refused: $directory is not a plain directory; move it away (sudo mv $directory $directory.old) and run again."
    fi
    if [[ ! -d $directory ]]; then
        install -d -m 0755 -o root -g root -- "$directory"
    fi
    [[ $(stat -c '%u:%g %a' -- "$directory") == "0:0 755" ]] || {
        chown root:root -- "$directory"
        chmod 0755 -- "$directory"
    }
    if [[ -L $directory/volume.env ]]; then
        rm -f -- "$directory/volume.env"
    fi
    replace_file "$directory/volume.env" "VOLUME_ID=$volume_id"$'\n'"FS_UUID=$uuid"$'\n'
    if [[ $file_changed == yes ]]; then
        say "volume.env: written ($directory/volume.env)"
    else
        say "volume.env: unchanged"
    fi
}

# The fstab content with exactly one line for the mount point: every line for it
# goes, every other line stays as it is, and ours comes before the first line
# that mounts something below the mount point (or last), so parents precede children.
# Paths reach awk through the environment, where \040 is not taken as an escape.
fstab_with_entry() {
    local entry=$1
    TARGET=$(escaped_path "$mount_point") ENTRY=$entry awk '
        function trimmed(path) { while (length(path) > 1 && path ~ /\/$/) sub(/\/$/, "", path); return path }
        /^[ \t]*(#|$)/ { print; next }
        trimmed($2) == ENVIRON["TARGET"] { next }
        !placed && index(trimmed($2), ENVIRON["TARGET"] "/") == 1 { print ENVIRON["ENTRY"]; placed = 1 }
        { print }
        END { if (!placed) print ENVIRON["ENTRY"] }
    '
}

# The lines of the fstab content on stdin that are for the mount point.
fstab_lines_for_mount_point() {
    TARGET=$(escaped_path "$mount_point") awk '
        function trimmed(path) { while (length(path) > 1 && path ~ /\/$/) sub(/\/$/, "", path); return path }
        !/^[ \t]*(#|$)/ && trimmed($2) == ENVIRON["TARGET"] { print }
    '
}

update_fstab() {
    local uuid=$1 entry current="" updated earlier verify_output entry_file
    entry="UUID=$uuid $(escaped_path "$mount_point") ext4 $FSTAB_OPTIONS 0 2"
    entry_file=$(mktemp)
    temporary_files+=("$entry_file")
    printf '%s\n' "$entry" >"$entry_file"
    verify_output=$(findmnt --verify --tab-file "$entry_file" 2>&1) \
        || fail 1 "the fstab line for $mount_point does not verify (findmnt --verify: ${verify_output//$'\n'/ }); $fstab left as it was."

    if [[ -f $fstab ]]; then
        current=$(cat -- "$fstab"; printf x)
        current=${current%x}
    fi
    earlier=$(printf '%s' "$current" | fstab_lines_for_mount_point)
    if [[ $earlier == "$entry" ]]; then
        say "fstab: already holds the line for $mount_point"
        return 0
    fi
    updated=$(printf '%s' "$current" | fstab_with_entry "$entry"; printf x)
    replace_file "$fstab" "${updated%x}"
    if [[ -z $earlier ]]; then
        say "fstab: added the line for $mount_point"
    else
        say "fstab: the line for $mount_point now reads UUID=$uuid (replaced $(grep -c . <<<"$earlier") earlier line(s) for it)"
    fi
    if [[ $fstab == /etc/fstab && -d /run/systemd/system ]]; then
        systemctl daemon-reload >/dev/null 2>&1 \
            || say "fstab: systemctl daemon-reload failed; systemd reads the new line at the next boot"
    fi
}


# --- growing ----------------------------------------------------------------

grow_partition=no
grow_filesystem=no
filesystem_bytes=0

# Size in bytes of the ext4 filesystem on a device, from its superblock alone
# (tune2fs -l reads nothing else, so a damaged journal does not hide the size).
ext4_bytes() {
    local path=$1 header count block
    header=$(tune2fs -l -- "$path" 2>&1) \
        || fail 4 "refused: could not read the ext4 superblock of $path (tune2fs -l: ${header//$'\n'/ }); nothing was written and nothing was mounted. Check it with sudo e2fsck -f -n $path."
    count=$(awk -F: '$1 == "Block count" { gsub(/ /, "", $2); print $2 }' <<<"$header")
    block=$(awk -F: '$1 == "Block size" { gsub(/ /, "", $2); print $2 }' <<<"$header")
    [[ $count =~ ^[0-9]+$ && $block =~ ^[0-9]+$ ]] \
        || fail 4 "refused: could not read the size of the ext4 filesystem on $path (Block count '$count', Block size '$block'); nothing was written and nothing was mounted."
    printf '%s\n' $((count * block))
}

# The sysfs directory of a block device.
sys_dir_of() {
    readlink -e -- "/sys/dev/block/$(mountpoint -x -- "$1")"
}

# Bytes from the start of the disk to the end of partition $1 (sysfs counts 512-byte units).
partition_end_bytes() {
    local dir
    dir=$(sys_dir_of "$1")
    printf '%s\n' $((($(<"$dir/start") + $(<"$dir/size")) * 512))
}

partition_bytes() {
    printf '%s\n' $(($(<"$(sys_dir_of "$1")/size") * 512))
}

require_tools() {
    local tool package missing=()
    for tool in "$@"; do
        case $tool in
            growpart) package=cloud-guest-utils ;;
            sfdisk) package=fdisk ;;
            *) package=e2fsprogs ;;
        esac
        command -v "$tool" >/dev/null || missing+=("$tool (package $package)")
    done
    ((${#missing[@]} == 0)) \
        || fail 1 "the volume has space beyond its filesystem, and growing it (or reading its partition table to see whether it grew) needs ${missing[*]}, which this server lacks; nothing was written. Install it (sudo apt-get install cloud-guest-utils fdisk e2fsprogs) and run again."
}

# Decides, without writing anything, whether the volume has grown and can be grown:
# sets grow_partition and grow_filesystem, or refuses.
plan_growth() {
    local filesystem=$1 disk_bytes target_bytes space=partition
    grow_partition=no grow_filesystem=no
    disk_bytes=$(blockdev --getsize64 "$device")
    filesystem_bytes=$(ext4_bytes "$filesystem")
    if [[ $filesystem == "$device" ]]; then
        target_bytes=$disk_bytes
        space=device
    else
        plan_partition_growth "$filesystem" "$disk_bytes"
        target_bytes=$(partition_bytes "$filesystem")
        if [[ $grow_partition == yes ]]; then
            # The partition will end near the end of the device.
            target_bytes=$((disk_bytes - $(<"$(sys_dir_of "$filesystem")/start") * 512))
        fi
    fi
    if ((filesystem_bytes > target_bytes + MIB)); then
        fail 4 "refused: the ext4 filesystem on $filesystem ($((filesystem_bytes / MIB)) MiB) is larger than the space it lives in ($((target_bytes / MIB)) MiB): the volume was shrunk or its table is damaged; nothing was written and nothing was mounted."
    fi
    if ((target_bytes - filesystem_bytes > GROW_THRESHOLD_BYTES)); then
        grow_filesystem=yes
    fi
    if [[ $grow_partition == no && $grow_filesystem == no ]]; then
        say "size: the filesystem ($((filesystem_bytes / MIB)) MiB) fills its ${space} ($((target_bytes / MIB)) MiB): nothing to grow"
        return 0
    fi
    if [[ $grow_partition == yes ]]; then
        require_tools growpart sfdisk partx resize2fs e2fsck
        say "size: the device grew to $((disk_bytes / MIB)) MiB beyond its partition table: growing partition and filesystem ($((filesystem_bytes / MIB)) MiB)"
    else
        require_tools resize2fs e2fsck
        say "size: the filesystem ($((filesystem_bytes / MIB)) MiB) is smaller than its ${space} ($((target_bytes / MIB)) MiB): growing it"
    fi
}

# The partition may grow only into space the device gained: the partition must
# reach the end of the space its table described, or the space between may hold data.
plan_partition_growth() {
    local partition=$1 disk_bytes=$2 dump sector_size last_lba table_end_bytes end_bytes
    end_bytes=$(partition_end_bytes "$partition")
    if ((end_bytes > disk_bytes)); then
        fail 4 "refused: partition $partition ends at $((end_bytes / MIB)) MiB, beyond the end of $device ($((disk_bytes / MIB)) MiB): the volume was shrunk or its table is damaged; nothing was written and nothing was mounted."
    fi
    # The partition reaches the end of the device: nothing to read, nothing to grow.
    ((disk_bytes - end_bytes > GROW_THRESHOLD_BYTES)) || return 0
    require_tools sfdisk
    dump=$(sfdisk --dump -- "$device" 2>/dev/null) \
        || fail 4 "refused: sfdisk cannot read the partition table of $device; nothing was written."
    sector_size=$(awk -F': *' '$1 == "sector-size" { print $2 }' <<<"$dump")
    last_lba=$(awk -F': *' '$1 == "last-lba" { print $2 }' <<<"$dump")
    [[ $sector_size =~ ^[0-9]+$ && $last_lba =~ ^[0-9]+$ ]] \
        || fail 4 "refused: could not read the extent of the partition table of $device (sector-size '$sector_size', last-lba '$last_lba'); nothing was written."
    table_end_bytes=$(((last_lba + 1) * sector_size))
    local grown=no gap=no
    ((disk_bytes - table_end_bytes > GROW_THRESHOLD_BYTES)) && grown=yes
    ((table_end_bytes - end_bytes > GROW_THRESHOLD_BYTES)) && gap=yes
    if [[ $grown == yes && $gap == yes ]]; then
        fail 4 "refused to grow: the device grew, but partition $partition ends $(((table_end_bytes - end_bytes) / MIB)) MiB before the end of the space its table covered; that space belongs to no partition and may hold data, so the partition is not extended over it; nothing was written and nothing was mounted. Inspect the disk (sudo sfdisk --dump $device); to use the volume as it is, grow it by hand or attach it where nothing needs growing."
    elif [[ $grown == yes ]]; then
        grow_partition=yes
    else
        say "size: partition $partition ends $(((disk_bytes - end_bytes) / MIB)) MiB before the end of the device, inside its table: that space is left as it is"
    fi
    return 0
}

# Writes the new partition table: same start, the end at the end of the device.
# growpart keeps a copy of the table and puts it back if the write fails.
grow_partition_to_device_end() {
    local partition=$1 number output rc=0 before after
    number=$(<"$(sys_dir_of "$partition")/partition")
    before=$(partition_bytes "$partition")
    # No "--" here: growpart stops reading its arguments at one. The path is absolute.
    output=$(growpart "$device" "$number" 2>&1) || rc=$?
    case $rc in
        0 | 1) ;;
        *) fail 1 "growpart could not grow partition $number of $device (exit $rc: ${output//$'\n'/ }); the filesystem was not touched (growpart puts the old table back when its write fails)." ;;
    esac
    partx --update --nr "$number" -- "$device" >/dev/null 2>&1 || true
    if command -v udevadm >/dev/null; then
        udevadm settle --timeout=5 >/dev/null 2>&1 || true
    fi
    after=$(partition_bytes "$partition")
    if ((rc == 1)); then
        say "partition $partition: already reaches the end of the device ($((after / MIB)) MiB)"
        return 0
    fi
    ((after > before)) \
        || fail 1 "the partition table of $device now ends partition $number at the end of the device, but the kernel still sees $((after / MIB)) MiB; nothing else was changed. Run again (or reboot the server); the filesystem is grown then."
    say "partition $partition: grown from $((before / MIB)) MiB to $((after / MIB)) MiB (growpart; the table's backup header is at the new end)"
}

# Grows the filesystem to fill its device or partition: online when mounted, else
# after a full check (resize2fs refuses an unchecked filesystem offline).
resize_filesystem() {
    local filesystem=$1 mounted=$2 output rc=0 after
    output=$(resize2fs -- "$filesystem" 2>&1) || rc=$?
    if ((rc != 0)) && [[ $mounted == no ]]; then
        fail 1 "resize2fs could not grow $filesystem (exit $rc: ${output//$'\n'/ }); the filesystem keeps its old size and was not mounted. Run again; if it persists, check it with sudo e2fsck -f $filesystem."
    elif ((rc != 0)); then
        fail 1 "resize2fs could not grow the mounted filesystem on $filesystem online (exit $rc: ${output//$'\n'/ }); it is still mounted at $mount_point with its old size and all its data. Run again; or stop the stack and unmount it (sudo umount $mount_point) so that the next run grows it before mounting."
    fi
    after=$(ext4_bytes "$filesystem")
    if ((after > filesystem_bytes)); then
        say "volume grew from $((filesystem_bytes / MIB)) MiB to $((after / MIB)) MiB: filesystem resized"
    else
        say "size: resize2fs left the filesystem at $((after / MIB)) MiB: nothing to grow"
    fi
    filesystem_bytes=$after
}

# Before mounting: a full check first (a grown filesystem must be clean), then the
# table, then the filesystem.
grow_unmounted() {
    local filesystem=$1 output rc=0
    output=$(e2fsck -f -p -- "$filesystem" 2>&1) || rc=$?
    case $rc in
        0) say "filesystem check (full, before growing): clean" ;;
        1 | 2) say "filesystem check (full, before growing): errors corrected (e2fsck exit $rc)" ;;
        *) fail 4 "refused: the full filesystem check of $filesystem found errors it cannot fix (e2fsck exit $rc: ${output//$'\n'/ }); nothing was grown or mounted. Repair it interactively (sudo e2fsck -f $filesystem) and run again." ;;
    esac
    if [[ $grow_partition == yes ]]; then
        grow_partition_to_device_end "$filesystem"
    fi
    if [[ $grow_partition == yes || $grow_filesystem == yes ]]; then
        resize_filesystem "$filesystem" no
    fi
}

grow_mounted() {
    local filesystem=$1
    if [[ $grow_partition == yes ]]; then
        grow_partition_to_device_end "$filesystem"
    fi
    resize_filesystem "$filesystem" yes
}

# --- main -------------------------------------------------------------------

main() {
    parse_arguments "$@"
    validate_arguments
    lock_volume
    find_device
    wait_for_size
    probe_volume
    decide_action

    local filesystem_device uuid formatted=no
    case $action in
        format-disk)
            say "content: $found"
            say "decision: blank volume: partition and format it"
            ensure_not_in_use
            check_mount_point ""
            create_partition
            format_partition
            formatted=yes
            filesystem_device=${partitions[0]}
            uuid=$partition_uuid
            ;;
        format-partition)
            say "content: $found"
            say "decision: the partition of an interrupted first run: format it"
            ensure_not_in_use
            check_mount_point ""
            format_partition
            formatted=yes
            filesystem_device=${partitions[0]}
            uuid=$partition_uuid
            ;;
        mount-partition)
            say "content: $found"
            say "decision: mount the ext4 partition, no format"
            filesystem_device=${partitions[0]}
            uuid=$partition_uuid
            ;;
        mount-disk)
            say "content: $found"
            say "decision: mount the whole-device ext4, no format"
            filesystem_device=$device
            uuid=$disk_uuid
            ;;
        *) refuse_content ;;
    esac

    check_mount_point "$filesystem_device"
    if [[ $formatted == no ]]; then
        plan_growth "$filesystem_device"
    fi
    if [[ $already_mounted == yes ]]; then
        ensure_not_in_use "$filesystem_device"
        say "already mounted at $mount_point: nothing to mount"
        if [[ $grow_partition == yes || $grow_filesystem == yes ]]; then
            grow_mounted "$filesystem_device"
        fi
    else
        ensure_not_in_use
        ensure_unique_uuid "$uuid"
        if [[ $grow_partition == yes || $grow_filesystem == yes ]]; then
            grow_unmounted "$filesystem_device"
        else
            check_filesystem "$filesystem_device"
        fi
        mount_filesystem "$filesystem_device" "$uuid"
    fi
    give_top_directory_to_owner
    write_volume_env "$uuid"
    update_fstab "$uuid"
    say "ready: device=$filesystem_device uuid=$uuid mount_point=$mount_point formatted=$formatted"
}

main "$@"
