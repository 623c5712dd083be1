#!/usr/bin/env bash
# volume-facts.sh: what the online-growth test reads about one volume inside the
# guest, as "volume-facts: key=value" lines. It runs in the same SSH session as the
# step before it, since each session costs seconds under software emulation.
#
# Usage: volume-facts.sh LINK MOUNT_POINT      (as root)
#   LINK          the volume's /dev/disk/by-id link
#   MOUNT_POINT   where the volume is mounted
#
# Keys:
#   device, device_bytes         the disk the link names, and its size as the kernel sees it
#   filesystem                   what is mounted at MOUNT_POINT (empty when nothing is)
#   mount_id                     the mount's id in /proc/self/mountinfo: a remount changes it
#   filesystem_blocks, filesystem_bytes
#                                block count, and block count times block size, from the
#                                ext4 superblock
#   kernel_resized_to            the block count in the kernel's last "resized filesystem
#                                to" line for that filesystem (empty: the running kernel
#                                never resized it; only an online resize makes that line)
#   partition_start              first sector of the filesystem's partition (empty: whole disk)
#   gpt_last_lba                 last usable sector the GPT header records (empty: no GPT)
#   gpt_head_sha256, gpt_tail_sha256
#                                sha256 of the first 34 and the last 33 sectors of the disk
#                                (protective MBR and primary GPT; backup entries and header)
#   data_bytes                   the sizes of all files under MOUNT_POINT, added up
#
# Exit codes: 0 facts printed; 1 a command failed; 2 usage error.
set -euo pipefail

readonly GPT_HEAD_SECTORS=34
readonly GPT_TAIL_SECTORS=33

fact() {
    printf 'volume-facts: %s=%s\n' "$1" "$2"
}

superblock_field() {
    awk -F: -v name="$1" '$1 == name { gsub(/ /, "", $2); print $2 }'
}

sectors_sha256() {
    local disk=$1 skip=$2 count=$3
    dd if="$disk" bs=512 skip="$skip" count="$count" iflag=direct status=none | sha256sum | cut -d' ' -f1
}

main() {
    if (($# != 2)); then
        echo "usage: volume-facts.sh LINK MOUNT_POINT" >&2
        exit 2
    fi
    local link=$1 mount_point=$2 disk sectors filesystem="" header blocks last_lba=""
    disk=$(readlink -e -- "$link")
    sectors=$(($(blockdev --getsize64 "$disk") / 512))
    fact device "$disk"
    fact device_bytes $((sectors * 512))
    if mountpoint -q -- "$mount_point"; then
        filesystem=$(findmnt -n -o SOURCE --mountpoint "$mount_point")
    fi
    fact filesystem "$filesystem"
    fact mount_id "$(awk -v target="$mount_point" '$5 == target { id = $1 } END { print id }' /proc/self/mountinfo)"
    if [[ -n $filesystem ]]; then
        header=$(dumpe2fs -h -- "$filesystem" 2>/dev/null)
        blocks=$(superblock_field "Block count" <<<"$header")
        fact filesystem_blocks "$blocks"
        fact filesystem_bytes $((blocks * $(superblock_field "Block size" <<<"$header")))
        fact kernel_resized_to "$(dmesg | awk -v name="($(basename -- "$filesystem"))" \
            '$0 ~ /EXT4-fs/ && index($0, name) && /resized filesystem to/ { last = $NF } END { print last }')"
        fact data_bytes "$(find "$mount_point" -xdev -type f -printf '%s\n' | awk '{ total += $1 } END { print total + 0 }')"
    fi
    if [[ -n $filesystem && $filesystem != "$disk" ]]; then
        fact partition_start "$(<"/sys/class/block/$(basename -- "$filesystem")/start")"
    else
        fact partition_start ""
    fi
    if [[ $(blkid -p -s PTTYPE -o value -- "$disk" || true) == gpt ]]; then
        last_lba=$(sfdisk --dump -- "$disk" | awk -F': *' '$1 == "last-lba" { print $2 }')
        fact gpt_head_sha256 "$(sectors_sha256 "$disk" 0 "$GPT_HEAD_SECTORS")"
        fact gpt_tail_sha256 "$(sectors_sha256 "$disk" $((sectors - GPT_TAIL_SECTORS)) "$GPT_TAIL_SECTORS")"
    fi
    fact gpt_last_lba "$last_lba"
}

main "$@"
