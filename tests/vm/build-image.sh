#!/usr/bin/env bash
# Builds a guest image: a minimal Debian system that boots under qemu with
# -kernel/-initrd and carries a stand-in `docker` that records what it is asked
# to do. Two kinds:
#   rehearsal  answers SSH as `cc` (password-less sudo, one authorized key baked in)
#   cloud      has Debian's cloud-init instead, which makes `cc` (password-less
#              sudo) and authorizes the server's key pair at first boot from
#              Nova's config drive, then runs the server's user data, as on
#              Chameleon's images; no user and no key is baked in
#
# Usage:
#   build-image.sh --kind rehearsal|cloud --output DIR --mirror URL
#                  --packages FILE [--apt-packages FILE] --guest-files DIR
#                  [--public-key FILE] [--suite SUITE]
#
#   --kind KIND         rehearsal or cloud (see above)
#   --output DIR        new directory to create; receives disk.img (raw ext4,
#                       label chi-root, no partition table), vmlinuz, initrd.img
#   --mirror URL        Debian mirror, e.g. http://deb.debian.org/debian
#   --packages FILE     Debian packages to add to debootstrap's minbase, one a
#                       line, '#' comments allowed
#   --apt-packages FILE more packages, same format, installed afterwards with
#                       apt-get inside the new system: debootstrap cannot
#                       configure some (cloud-init's Python stack) in its own pass
#   --guest-files DIR   holds docker (the stand-in command) and docker.service,
#                       and for the cloud kind cloud.cfg (cloud-init's settings)
#   --public-key FILE   rehearsal kind only: the SSH public key authorized for cc
#   --suite SUITE       Debian release (default bookworm)
#
# Needs root (debootstrap, chroot). Nothing stays mounted whatever happens; the
# caller builds into a temporary directory and renames it when this succeeds.
#
# Exit codes:
#   0  image built
#   1  a build step failed (its output is above)
#   2  usage error (unknown option, missing value, not root, DIR exists)
set -euo pipefail

readonly ROOT_LABEL=chi-root
readonly DISK_SIZE=2G
readonly HOSTNAME_IN_GUEST=node-persist-rehearsal
# Units a cloud server runs but the rehearsal does not need: each costs boot
# time under software emulation.
readonly MASKED_UNITS=(apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer
    e2scrub_reap.service fstrim.timer getty-static.service getty@tty1.service)

kind=""
output=""
mirror=""
packages_file=""
apt_packages_file=""
guest_files=""
public_key=""
suite=bookworm
root=""

# shellcheck source=SCRIPTDIR/../../scripts/remote/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/../../scripts/remote/lib.sh"
use_helpers build-image --fail-prefix "error: "

usage() {
    sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

parse_arguments() {
    while (($# > 0)); do
        case $1 in
        --kind | --output | --mirror | --packages | --apt-packages | --guest-files | --public-key | --suite)
            (($# >= 2)) || fail 2 "$1 needs a value; see --help"
            case $1 in
            --kind) kind=$2 ;;
            --output) output=$2 ;;
            --mirror) mirror=$2 ;;
            --packages) packages_file=$2 ;;
            --apt-packages) apt_packages_file=$2 ;;
            --guest-files) guest_files=$2 ;;
            --public-key) public_key=$2 ;;
            --suite) suite=$2 ;;
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
    [[ $kind == rehearsal || $kind == cloud ]] ||
        fail 2 "--kind must be rehearsal or cloud, got '$kind'"
    [[ -n $output ]] || fail 2 "--output is required, e.g. --output /tmp/image"
    [[ ! -e $output ]] || fail 2 "--output $output already exists; pass a new directory"
    [[ -n $mirror ]] || fail 2 "--mirror is required, e.g. --mirror http://deb.debian.org/debian"
    [[ -f $packages_file ]] || fail 2 "--packages must be a file, got '$packages_file'"
    [[ -z $apt_packages_file || -f $apt_packages_file ]] ||
        fail 2 "--apt-packages must be a file, got '$apt_packages_file'"
    [[ -f $guest_files/docker && -f $guest_files/docker.service ]] ||
        fail 2 "--guest-files must hold docker and docker.service, got '$guest_files'"
    if [[ $kind == rehearsal ]]; then
        [[ -f $public_key ]] || fail 2 "--public-key must be a file for the rehearsal kind, got '$public_key'"
    else
        [[ -z $public_key ]] || fail 2 "--public-key is for the rehearsal kind only: cloud-init authorizes the server's key pair"
        [[ -f $guest_files/cloud.cfg ]] ||
            fail 2 "--guest-files must hold cloud.cfg for the cloud kind, got '$guest_files'"
    fi
    ((EUID == 0)) || fail 2 "must run as root (debootstrap and chroot need it): sudo $0 ..."
}

# Unmounts whatever debootstrap or a failed step left mounted below the root.
unmount_all() {
    [[ -n $root && -d $root ]] || return 0
    local target
    while read -r target; do
        if [[ $target == "$root" || $target == "$root"/* ]]; then
            umount -l -- "$target" || true
        fi
    done < <(findmnt -rn -o TARGET | sort -r)
}

in_guest() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# The package names in a list file, joined by the separator given.
package_list() {
    grep -Ev '^[[:space:]]*(#|$)' "$1" | paste -sd "$2" -
}

install_system() {
    local packages
    packages=$(package_list "$packages_file" ,)
    say "debootstrap $suite (minbase + $packages) from $mirror"
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror"
}

install_apt_packages() {
    [[ -n $apt_packages_file ]] || return 0
    local packages
    read -r -a packages <<<"$(package_list "$apt_packages_file" ' ')"
    say "apt-get install ${packages[*]}"
    mount -t proc proc "$root/proc"
    in_guest apt-get update -qq
    in_guest DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}"
    umount "$root/proc"
}

configure_system() {
    say "configuring hostname, fstab, DHCP networking, sshd"
    echo "$HOSTNAME_IN_GUEST" >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$HOSTNAME_IN_GUEST" >"$root/etc/hosts"
    # No fsck at boot: the root is a throw-away overlay of a freshly made filesystem.
    printf 'LABEL=%s / ext4 defaults 0 0\n' "$ROOT_LABEL" >"$root/etc/fstab"
    rm -f "$root/etc/resolv.conf"
    cat >"$root/etc/systemd/network/80-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
    in_guest systemctl enable systemd-networkd.service
    in_guest systemctl mask "${MASKED_UNITS[@]}"
    cat >"$root/etc/ssh/sshd_config.d/rehearsal.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
}

create_user() {
    say "user cc: password-less sudo, authorized key $(cut -d' ' -f1,3 "$public_key")"
    in_guest useradd --create-home --shell /bin/bash --uid 1000 --user-group cc
    echo 'cc ALL=(ALL) NOPASSWD:ALL' >"$root/etc/sudoers.d/90-cc"
    chmod 0440 "$root/etc/sudoers.d/90-cc"
    install -d -m 0700 "$root/home/cc/.ssh"
    install -m 0600 "$public_key" "$root/home/cc/.ssh/authorized_keys"
    in_guest chown -R cc:cc /home/cc/.ssh
}

configure_cloud_init() {
    say "cloud-init: settings from cloud.cfg (config drive, default user cc)"
    install -m 0644 "$guest_files/cloud.cfg" "$root/etc/cloud/cloud.cfg.d/90-chi-persist.cfg"
    # A fresh image has never booted: no instance data, so the first boot is a first boot.
    rm -rf "$root/var/lib/cloud"
}

install_docker_standin() {
    say "stand-in docker: /usr/local/bin/docker, docker.service, group docker"
    install -m 0755 "$guest_files/docker" "$root/usr/local/bin/docker"
    install -m 0644 "$guest_files/docker.service" "$root/etc/systemd/system/docker.service"
    in_guest groupadd --system docker
    # Writable by all, so calls made as cc are recorded as well as those made as root.
    install -m 0666 /dev/null "$root/var/log/docker-standin.log"
}

build_initramfs() {
    say "initramfs with the virtio drivers"
    printf 'virtio_pci\nvirtio_blk\nvirtio_net\n' >>"$root/etc/initramfs-tools/modules"
    in_guest update-initramfs -u -k all
}

shrink_system() {
    say "removing package caches and documentation"
    in_guest apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
        "$root"/usr/share/locale/* "$root"/var/log/apt/* "$root"/var/cache/debconf/*-old
}

make_disk() {
    local kernels initrds
    kernels=("$root"/boot/vmlinuz-*)
    initrds=("$root"/boot/initrd.img-*)
    ((${#kernels[@]} == 1 && ${#initrds[@]} == 1)) ||
        fail 1 "expected one kernel and one initramfs in /boot, found: ${kernels[*]} ${initrds[*]}"
    cp -- "${kernels[0]}" "$output/vmlinuz"
    cp -- "${initrds[0]}" "$output/initrd.img"
    say "disk.img: ext4 label $ROOT_LABEL, $DISK_SIZE sparse"
    mkfs.ext4 -q -L "$ROOT_LABEL" -d "$root" "$output/disk.img" "$DISK_SIZE"
}

main() {
    parse_arguments "$@"
    mkdir -p -- "$output"
    output=$(cd "$output" && pwd)
    root="$output/root"
    trap unmount_all EXIT
    install_system
    install_apt_packages
    configure_system
    if [[ $kind == rehearsal ]]; then
        create_user
    else
        configure_cloud_init
    fi
    install_docker_standin
    build_initramfs
    shrink_system
    unmount_all
    make_disk
    rm -rf --one-file-system -- "$root"
    say "done: $output"
}

main "$@"
