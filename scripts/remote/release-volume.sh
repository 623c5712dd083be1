#!/usr/bin/env bash
# release-volume.sh: make the persistent volume safe to detach: stop the platform's
# compose project if it runs (PostgreSQL gets two minutes to shut down cleanly),
# sync, and unmount. Safe to run when nothing runs and nothing is mounted.
# The stop uses the compose files start-stack.sh recorded when it started the
# stack, not whatever docker/ holds now, and removes orphans: a service renamed or
# removed by a newer compose file is stopped too, never left running on the volume.
# Run as root on the server; `release-volume.sh --help` explains it.
#
# Exit codes:
#   0  nothing of the platform runs and the mount point is not mounted (any more)
#   1  unexpected failure: a command failed (e.g. docker compose down); the output names it
#   2  usage error or bad input (unknown option, relative path, not root); nothing touched
#   4  refused: containers of the platform still run, the mount point is busy, or
#      the filesystem is still mounted in another mount namespace; do not detach
set -Eeuo pipefail
export LC_ALL=C

readonly DEFAULT_PROJECT=chi-persist
# Written by start-stack.sh: project-name, compose-files (one name a line), the copies.
readonly STARTED_RECORD=.chi-persist/started-stack
readonly STOP_TIMEOUT_SECONDS=120
readonly USAGE="usage: release-volume.sh [--mount-point DIR] [--compose-file FILE]"

mount_point=/mnt/block
compose_file=""

show_help() {
    cat <<EOF
$USAGE

Makes the persistent volume safe to detach. Runs as root.
  1. If docker is installed and containers of the compose project run:
       docker compose --project-name PROJECT [--file F ...] [--env-file DIR/.chi-persist/credentials.env] \\
           down --remove-orphans --timeout $STOP_TIMEOUT_SECONDS
     with MOUNT_POINT=DIR in its environment; then checks that none of them still
     runs, and removes the record below. PROJECT and the files F are those
     start-stack.sh recorded in DIR/$STARTED_RECORD when it started the stack;
     without that record, PROJECT is $DEFAULT_PROJECT and F is FILE when it exists
     (else the project is stopped by its name alone). --env-file only with a
     --file, and when that file exists.
  2. sync
  3. If DIR is a mount point: unmount it (never lazily), then check that no other
     mount namespace (a container started outside the project) still holds the
     filesystem; if one does, mount it again at DIR and exit 4.

Options:
  --mount-point DIR    the volume's mount point (default /mnt/block)
  --compose-file FILE  the platform's compose file, used only when start-stack.sh
                       left no record (optional)
  --help               show this text

Each step prints one line; the last line reads
  release-volume: released: mount_point=<dir> platform_stopped=<yes|no> unmounted=<yes|no>

Exit codes: 0 released (or nothing to release); 1 unexpected failure; 2 usage error
or not root; 4 refused: something still uses the volume (do not detach it).
EOF
}

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
use_helpers release-volume --usage "$USAGE" --trap-errors

parse_arguments() {
    while (($#)); do
        case $1 in
            --help | -h)
                show_help
                exit 0
                ;;
            --mount-point=* | --compose-file=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}"
                continue
                ;;
            --mount-point | --compose-file)
                (($# >= 2)) || usage_error "option $1 needs a value"
                case $1 in
                    --mount-point) mount_point=$2 ;;
                    --compose-file) compose_file=$2 ;;
                esac
                shift 2
                ;;
            *) usage_error "unknown argument ${1@Q}; see --help" ;;
        esac
    done
}

validate_arguments() {
    ((EUID == 0)) || usage_error "must run as root (uid 0, not ${EUID}); run it with sudo"
    local dot_component='(^|/)\.{1,2}(/|$)'
    [[ $mount_point == /* && $mount_point != / ]] \
        || usage_error "mount point ${mount_point@Q} is not an absolute path below /; pass e.g. --mount-point /mnt/block"
    [[ ! $mount_point =~ $dot_component && $mount_point != *//* && $mount_point != */ ]] \
        || usage_error "mount point ${mount_point@Q} is not in canonical form (no ., .., // or trailing /)"
    if [[ -n $compose_file && $compose_file != /* ]]; then
        usage_error "compose file ${compose_file@Q} is not an absolute path"
    fi
}

# Prints the ids of the project's running containers; fails when docker does not answer.
running_containers() {
    docker ps --quiet --filter "label=com.docker.compose.project=$project"
}

project=$DEFAULT_PROJECT
record_files=()

# Takes the project name and compose files from start-stack.sh's record when it is
# complete; otherwise says why it is not used and returns 1.
read_started_record() {
    local record=$mount_point/$STARTED_RECORD name line
    local -a files=()
    if [[ ! -e $record && ! -L $record ]]; then
        return 1
    fi
    if [[ -L $record || ! -d $record || ! -f $record/project-name || ! -f $record/compose-files ]]; then
        say "record $record is incomplete: not used"
        return 1
    fi
    name=$(head -n 1 -- "$record/project-name")
    if [[ ! $name =~ ^[a-z0-9][a-z0-9_-]*$ ]]; then
        say "record $record names project ${name@Q}, not a compose project name: not used"
        return 1
    fi
    while IFS= read -r line || [[ -n $line ]]; do
        [[ -n $line ]] || continue
        if [[ $line == */* || ! -f $record/$line ]]; then
            say "record $record lists ${line@Q}, which it does not hold: not used"
            return 1
        fi
        files+=("$record/$line")
    done <"$record/compose-files"
    if ((${#files[@]} == 0)); then
        say "record $record lists no compose file: not used"
        return 1
    fi
    project=$name
    record_files=("${files[@]}")
}

forget_started_record() {
    local record=$mount_point/$STARTED_RECORD
    if [[ -d $record && ! -L $record ]]; then
        rm -rf -- "$record"
        say "removed the record of the started stack ($record)"
    fi
}

platform_stopped=no

stop_platform() {
    if ! command -v docker >/dev/null; then
        say "docker is not installed: no platform to stop"
        return 0
    fi
    local has_record=no
    if read_started_record; then
        has_record=yes
    fi
    local running rc=0
    running=$(running_containers 2>&1) || rc=$?
    if ((rc != 0)); then
        # Without an answer, nothing is stopped here; the check after unmounting
        # still catches a container that holds the filesystem.
        say "docker does not answer (docker ps exit $rc: ${running//$'\n'/ }): nothing to stop"
        return 0
    fi
    if [[ -z $running ]]; then
        say "platform is not running: nothing to stop"
        forget_started_record
        return 0
    fi

    local credentials=$mount_point/.chi-persist/credentials.env output file
    local -a files=() options=(--project-name "$project")
    if [[ $has_record == yes ]]; then
        files=("${record_files[@]}")
        say "stopping project $project with the compose file(s) it was started with: ${files[*]}"
    elif [[ -n $compose_file && -f $compose_file ]]; then
        files=("$compose_file")
        say "no record of the started stack: stopping with $compose_file"
    elif [[ -n $compose_file ]]; then
        say "compose file $compose_file does not exist: stopping the project by its name"
    fi
    for file in "${files[@]}"; do
        options+=(--file "$file")
    done
    if ((${#files[@]} > 0)) && [[ -f $credentials ]]; then
        options+=(--env-file "$credentials")
    fi
    say "platform is running ($(grep -c . <<<"$running") container(s)): docker compose down --remove-orphans --timeout $STOP_TIMEOUT_SECONDS"
    rc=0
    output=$(MOUNT_POINT=$mount_point docker compose "${options[@]}" down --remove-orphans --timeout "$STOP_TIMEOUT_SECONDS" 2>&1) || rc=$?
    ((rc == 0)) || fail 1 "docker compose down failed (exit $rc: ${output//$'\n'/ }); nothing was unmounted. Stop the platform by hand (sudo docker compose --project-name $project down --remove-orphans --timeout $STOP_TIMEOUT_SECONDS) and run again."

    rc=0
    running=$(running_containers 2>&1) || rc=$?
    if ((rc != 0)) || [[ -n $running ]]; then
        fail 4 "refused: containers of $project still run after docker compose down (${running//$'\n'/ }); nothing was unmounted. Stop them (sudo docker ps --filter label=com.docker.compose.project=$project) and run again."
    fi
    platform_stopped=yes
    say "platform stopped"
    forget_started_record
}

# PIDs (with their command names) of processes outside this mount namespace that
# still have the filesystem numbered $1 mounted.
other_namespace_users() {
    local devno=$1 own entry pid namespace
    own=$(readlink /proc/self/ns/mnt)
    for entry in /proc/[0-9]*; do
        pid=${entry#/proc/}
        namespace=$(readlink "$entry/ns/mnt" 2>/dev/null) || continue
        [[ $namespace != "$own" ]] || continue
        if awk -v devno="$devno" '$3 == devno { found = 1 } END { exit !found }' "$entry/mountinfo" 2>/dev/null; then
            printf '%s(%s) ' "$pid" "$(cat "$entry/comm" 2>/dev/null || echo '?')"
        fi
    done
}

unmounted=no

unmount_volume() {
    if ! mountpoint -q -- "$mount_point"; then
        say "$mount_point is not mounted: nothing to unmount"
        return 0
    fi
    local devno fstype device_name output rc users rounds=0
    devno=$(mountpoint -d -- "$mount_point")
    fstype=$(findmnt --noheadings --first-only --output FSTYPE --mountpoint "$mount_point" || true)
    device_name=$(sed -n 's/^DEVNAME=//p' "/sys/dev/block/$devno/uevent" 2>/dev/null || true)
    while mountpoint -q -- "$mount_point"; do
        rc=0
        output=$(umount -- "$mount_point" 2>&1) || rc=$?
        ((rc == 0)) || fail 4 "refused: could not unmount $mount_point (${output//$'\n'/ }); it stays mounted. Find what uses it (sudo fuser -vm $mount_point), stop that, and run again."
        rounds=$((rounds + 1))
        ((rounds < 8)) || fail 1 "$mount_point is still a mount point after $rounds unmounts"
    done

    # A container started outside the compose project keeps its own copy of the
    # mount: the filesystem stays in use although it is gone from here.
    users=$(other_namespace_users "$devno")
    if [[ -n $users ]]; then
        local again="it could not be mounted again at $mount_point"
        if [[ -n $device_name && -b /dev/$device_name ]] \
            && mount --types "${fstype:-auto}" --source "/dev/$device_name" --target "$mount_point" 2>/dev/null; then
            again="it was mounted again at $mount_point, as it was"
        fi
        fail 4 "refused: the filesystem of $mount_point ($devno) is still mounted in the mount namespace of process(es) ${users% } (a container still running?); $again. Do not detach the volume: stop those processes (sudo docker ps) and run again."
    fi
    unmounted=yes
    say "unmounted $mount_point"
}

main() {
    parse_arguments "$@"
    validate_arguments
    stop_platform
    sync
    say "synced"
    unmount_volume
    say "released: mount_point=$mount_point platform_stopped=$platform_stopped unmounted=$unmounted"
}

main "$@"
