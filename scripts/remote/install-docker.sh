#!/usr/bin/env bash
# Installs Docker Engine and the Compose v2 plugin on Ubuntu 24.04, lets a user
# run docker, and pre-pulls (and builds) the platform stack's images.
# Idempotent: run by cloud-init at first boot, and safe to run again by hand.
#
# Usage:
#   install-docker.sh --user NAME [--compose-file FILE] [--lock-timeout SECONDS]
#
#   --user NAME              the user added to the docker group (cc on Chameleon)
#   --compose-file FILE      the stack's compose file: its images are pulled and
#                            its locally built image is built, so the first
#                            start-stack.sh does not wait for downloads
#   --lock-timeout SECONDS   how long to wait for the package manager's locks
#                            (default 900: unattended-upgrades runs at first boot)
#
# Packages: Ubuntu's own docker.io, docker-compose-v2 and docker-buildx (noble,
# universe). They come from the mirrors the image already trusts, with no
# third-party repository or signing key to fetch and pin, and are updated with
# the rest of the system. If `docker compose version` already works (Docker's
# own packages, or a previous run), nothing is installed.
#
# Exit codes:
#   0  docker and compose work, the user is in the docker group, images ready
#   1  unexpected failure
#   2  usage error (unknown option, bad value, not root, no such user)
#   3  the package manager's locks were still held after --lock-timeout
#   4  installing the packages failed, or compose does not work afterwards
#   5  the compose file is missing, or its images could not be pulled or built
#
# For tests only: LOCK_FILES (space-separated) replaces the lock files watched.
set -euo pipefail

readonly PROJECT_NAME=chi-persist
readonly PACKAGES=(docker.io docker-compose-v2 docker-buildx)
readonly LOCK_POLL_SECONDS=2
readonly LOCK_MESSAGE_EVERY_SECONDS=30
readonly IMAGE_ATTEMPTS=3
readonly IMAGE_RETRY_DELAY_SECONDS=15

user_name=""
compose_file=""
lock_timeout=900
read -r -a lock_files <<<"${LOCK_FILES:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock}"

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
use_helpers install-docker --fail-prefix "error: "

usage() {
    sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

parse_arguments() {
    while (($# > 0)); do
        case $1 in
        --user | --compose-file | --lock-timeout)
            (($# >= 2)) || fail 2 "$1 needs a value; see --help"
            case $1 in
            --user) user_name=$2 ;;
            --compose-file) compose_file=$2 ;;
            --lock-timeout) lock_timeout=$2 ;;
            esac
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) fail 2 "unknown option '$1'; see --help" ;;
        esac
    done
    [[ -n $user_name ]] || fail 2 "--user is required, e.g. --user cc"
    [[ $lock_timeout =~ ^[0-9]+$ ]] ||
        fail 2 "--lock-timeout must be a whole number of seconds, got '$lock_timeout'"
    ((EUID == 0)) || fail 2 "must run as root (it installs packages): sudo $0 ..."
    id -u -- "$user_name" >/dev/null 2>&1 ||
        fail 2 "user '$user_name' does not exist on this server; pass an existing user, e.g. --user cc"
}

# True when some process holds the file open: apt and dpkg keep their lock
# files open while they hold the (fcntl) lock, which flock(1) cannot see.
lock_is_held() {
    [[ -e $1 ]] && fuser -s "$1" 2>/dev/null
}

# Waits until one pass finds none of the locks held, or fails after the timeout.
wait_for_package_locks() {
    local deadline=$((SECONDS + lock_timeout)) started=$SECONDS last_message=-1 file held
    if ! command -v fuser >/dev/null; then
        say "fuser (psmisc) not found: relying on apt-get's own lock timeout"
        return 0
    fi
    while true; do
        held=""
        for file in "${lock_files[@]}"; do
            if lock_is_held "$file"; then
                held=$file
                break
            fi
        done
        if [[ -z $held ]]; then
            if ((last_message >= 0)); then
                say "package manager locks released after $((SECONDS - started))s"
            fi
            return 0
        fi
        if ((SECONDS >= deadline)); then
            fail 3 "$held is still held by another process after ${lock_timeout}s (see: fuser -v $held); wait for it to finish, or pass a longer --lock-timeout"
        fi
        if ((last_message < 0 || SECONDS - last_message >= LOCK_MESSAGE_EVERY_SECONDS)); then
            say "waiting for the package manager: $held is held by another process ($((SECONDS - started))s of ${lock_timeout}s)"
            last_message=$SECONDS
        fi
        sleep "$LOCK_POLL_SECONDS"
    done
}

compose_works() { docker compose version >/dev/null 2>&1; }

install_packages() {
    if compose_works; then
        say "docker and compose already installed: skipping installation"
        return
    fi
    say "docker compose not found: installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    wait_for_package_locks
    apt-get update -qq || fail 4 "apt-get update failed; check the server's network and apt sources, then run again"
    wait_for_package_locks
    # Lock::Timeout covers a lock taken between our check and apt-get's own.
    apt-get install -y -qq --no-install-recommends \
        -o "DPkg::Lock::Timeout=$lock_timeout" "${PACKAGES[@]}" ||
        fail 4 "apt-get install ${PACKAGES[*]} failed; see the messages above, then run again"
    compose_works ||
        fail 4 "'docker compose version' still fails after installing ${PACKAGES[*]}"
    say "installed ${PACKAGES[*]}"
}

enable_service() {
    systemctl enable --now docker.service >/dev/null 2>&1 ||
        fail 4 "could not enable and start docker.service; see: systemctl status docker.service"
    say "docker.service: enabled and running"
}

add_user_to_group() {
    if ! getent group docker >/dev/null; then
        groupadd --system docker
        say "group docker: created"
    fi
    local groups
    groups=$(id -nG -- "$user_name")
    if [[ " $groups " == *" docker "* ]]; then
        say "user $user_name: already in group docker"
        return
    fi
    usermod -aG docker -- "$user_name"
    say "user $user_name: added to group docker (effective at its next login)"
}

# Runs `docker compose ... ACTION` up to IMAGE_ATTEMPTS times: the network of a
# server at first boot is not always settled.
compose_with_retries() {
    local action=$1 attempt
    shift
    for ((attempt = 1; attempt <= IMAGE_ATTEMPTS; attempt++)); do
        if docker compose --project-name "$PROJECT_NAME" --file "$compose_file" "$action" "$@"; then
            return 0
        fi
        if ((attempt < IMAGE_ATTEMPTS)); then
            say "docker compose $action failed (attempt $attempt of $IMAGE_ATTEMPTS): retrying in ${IMAGE_RETRY_DELAY_SECONDS}s"
            sleep "$IMAGE_RETRY_DELAY_SECONDS"
        fi
    done
    return 1
}

prepare_images() {
    if [[ -z $compose_file ]]; then
        say "no --compose-file: images are left to the first start"
        return
    fi
    [[ -f $compose_file ]] ||
        fail 5 "compose file $compose_file does not exist; pass the stack's docker/docker-compose.yaml"
    compose_with_retries pull --ignore-buildable --quiet ||
        fail 5 "could not pull the images of $compose_file after $IMAGE_ATTEMPTS attempts; check the network, then run again"
    say "images of $compose_file: pulled"
    compose_with_retries build ||
        fail 5 "could not build the images of $compose_file after $IMAGE_ATTEMPTS attempts; see the messages above"
    say "images of $compose_file: built"
}

main() {
    parse_arguments "$@"
    install_packages
    enable_service
    add_user_to_group
    prepare_images
}

main "$@"
