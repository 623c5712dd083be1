#!/usr/bin/env bash
# Schedules the platform's clean stop shortly before the lease this server boots from ends.
#
# At a lease's end KVM@TACC (Blazar) deletes the server outright: PostgreSQL and MinIO
# would be killed, not stopped. This installs a systemd timer that runs release-volume.sh
# (docker compose down with its long stop timeout, with the project and compose files
# start-stack.sh recorded, then sync and unmount) a few minutes before that end, so the
# deletion meets a stopped platform and a cleanly unmounted filesystem. Run again with a
# new end, it rewrites the timer; with an end too close for a stop before it, it removes
# any timer and says so.
#
# Usage:
#   schedule-lease-stop.sh --lease-end TIME --mount-point DIR [--compose-file FILE]
#                          [--minutes-before N] [--unit-dir DIR]
#
#   --lease-end TIME     when the lease ends, ISO 8601 in UTC (2026-11-20T23:02:00Z)
#   --mount-point DIR    the volume's mount point, passed to release-volume.sh
#   --compose-file FILE  the platform's compose file, passed to release-volume.sh
#                        (used only when start-stack.sh left no record)
#   --minutes-before N   how long before the end the stop runs (default 10): the stop
#                        takes up to two minutes, Blazar's deletion begins at the end
#   --unit-dir DIR       where the units are written (default /etc/systemd/system)
#
# Exit codes:
#   0  the timer is set for the stop (or the end is too close: no timer, said so)
#   1  unexpected failure (writing the units, systemctl)
#   2  usage error (unknown option, missing or malformed value, not root)
set -euo pipefail

readonly UNIT=chi-persist-lease-stop
readonly USAGE="usage: schedule-lease-stop.sh --lease-end TIME --mount-point DIR [--compose-file FILE] [--minutes-before N] [--unit-dir DIR]"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

lease_end=""
mount_point=""
compose_file=""
minutes_before=10
unit_dir=/etc/systemd/system

say() {
    printf 'schedule-lease-stop: %s\n' "$*"
}

usage_error() {
    printf 'schedule-lease-stop: %s\n%s\n' "$1" "$USAGE" >&2
    exit 2
}

on_unexpected_error() {
    local code=$1 command=$2 line=$3
    printf 'schedule-lease-stop: unexpected failure (exit %s) at line %s: %s\n' "$code" "$line" "$command" >&2
    exit 1
}

trap 'on_unexpected_error $? "$BASH_COMMAND" $LINENO' ERR

parse_arguments() {
    while (($#)); do
        case $1 in
            --help | -h)
                sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
                exit 0
                ;;
            --lease-end | --mount-point | --compose-file | --minutes-before | --unit-dir)
                (($# >= 2)) || usage_error "option $1 needs a value"
                case $1 in
                    --lease-end) lease_end=$2 ;;
                    --mount-point) mount_point=$2 ;;
                    --compose-file) compose_file=$2 ;;
                    --minutes-before) minutes_before=$2 ;;
                    --unit-dir) unit_dir=$2 ;;
                esac
                shift 2
                ;;
            *) usage_error "unknown argument ${1@Q}; see --help" ;;
        esac
    done
}

# A path that can stand in a unit file's ExecStart as it is: absolute, no spaces, quotes,
# backslashes, % (a specifier) or shell characters.
plain_path() {
    [[ $1 =~ ^(/[A-Za-z0-9._-]+)+$ ]]
}

validate_arguments() {
    ((EUID == 0)) || usage_error "must run as root (uid 0, not ${EUID}); run it with sudo"
    [[ -n $lease_end ]] || usage_error "--lease-end is required (the lease's end, e.g. 2026-11-20T23:02:00Z)"
    [[ $lease_end =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?Z$ ]] \
        || usage_error "lease end ${lease_end@Q} is not an ISO 8601 time in UTC like 2026-11-20T23:02:00Z"
    plain_path "$mount_point" || usage_error "mount point ${mount_point@Q} is not a plain absolute path like /mnt/block"
    if [[ -n $compose_file ]]; then
        plain_path "$compose_file" || usage_error "compose file ${compose_file@Q} is not a plain absolute path"
    fi
    if [[ ! $minutes_before =~ ^[0-9]+$ ]] || ((minutes_before < 1 || minutes_before > 120)); then
        usage_error "--minutes-before ${minutes_before@Q} is not a whole number of minutes from 1 to 120"
    fi
    [[ $unit_dir == /* ]] || usage_error "unit directory ${unit_dir@Q} is not an absolute path"
}

remove_timer() {
    local timer=$unit_dir/$UNIT.timer service=$unit_dir/$UNIT.service
    if [[ -e $timer || -e $service ]]; then
        systemctl disable --now "$UNIT.timer" >/dev/null 2>&1 || true
        rm -f -- "$timer" "$service"
        systemctl daemon-reload
        say "removed the earlier timer ($UNIT.timer)"
    fi
}

write_units() {
    local stop_at=$1 end_text=$2 release=$script_dir/release-volume.sh
    local exec_start="/usr/bin/env bash $release --mount-point $mount_point"
    if [[ -n $compose_file ]]; then
        exec_start+=" --compose-file $compose_file"
    fi
    plain_path "$release" || { say "the scripts' directory $script_dir is not a plain path" >&2; exit 1; }
    mkdir -p -- "$unit_dir"
    cat >"$unit_dir/$UNIT.service.new" <<EOF
# Written by schedule-lease-stop.sh: stop the platform cleanly before the lease ends.
[Unit]
Description=chi-persist: stop the platform before the lease ends at $end_text
After=docker.service

[Service]
Type=oneshot
ExecStart=$exec_start
TimeoutStartSec=600
EOF
    cat >"$unit_dir/$UNIT.timer.new" <<EOF
# Written by schedule-lease-stop.sh: the stop a few minutes before the lease ends.
[Unit]
Description=chi-persist: stop the platform at $stop_at, before the lease ends at $end_text

[Timer]
OnCalendar=$stop_at
AccuracySec=1s
Persistent=false

[Install]
WantedBy=timers.target
EOF
    mv -f -- "$unit_dir/$UNIT.service.new" "$unit_dir/$UNIT.service"
    mv -f -- "$unit_dir/$UNIT.timer.new" "$unit_dir/$UNIT.timer"
}

main() {
    parse_arguments "$@"
    validate_arguments
    local end_epoch now stop_epoch stop_at end_text
    end_epoch=$(date -u -d "${lease_end%Z}Z" +%s 2>/dev/null) \
        || usage_error "lease end ${lease_end@Q} is not a time date(1) can read"
    now=$(date -u +%s)
    stop_epoch=$((end_epoch - minutes_before * 60))
    end_text=$(date -u -d "@$end_epoch" '+%Y-%m-%d %H:%M:%S UTC')
    if ((stop_epoch <= now)); then
        remove_timer
        if ((end_epoch <= now)); then
            say "the lease ended at $end_text: no timer (the next pulumi up makes a new lease)"
        else
            say "the lease ends at $end_text, within $minutes_before minutes: too close for a timer; the platform runs until the end"
        fi
        return 0
    fi
    stop_at=$(date -u -d "@$stop_epoch" '+%Y-%m-%d %H:%M:%S UTC')
    write_units "$stop_at" "$end_text"
    systemctl daemon-reload
    systemctl enable --quiet "$UNIT.timer"
    systemctl restart "$UNIT.timer"
    say "timer set: the platform stops cleanly at $stop_at, $minutes_before minutes before the lease ends at $end_text"
}

main "$@"
