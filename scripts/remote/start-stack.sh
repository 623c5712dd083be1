#!/usr/bin/env bash
# Starts the platform stack (docker/docker-compose.yaml) on a volume prepared
# by prepare-volume, and waits until every service is healthy.
#
# Usage:
#   start-stack.sh --mount-point DIR --host-ip IP [--compose-file FILE]
#                  [--object-store-dir DIR] [--platform-access public|tunnel]
#                  [--print-sealed-credentials]
#
#   --mount-point DIR        where prepare-volume mounted the volume
#   --host-ip IP             the server's public IPv4 address (for the URLs
#                            and MLflow's allowed Host headers)
#   --compose-file FILE      default: docker/docker-compose.yaml of this checkout
#   --object-store-dir DIR   the course's object-store mount, given to Jupyter
#                            read-only when it is a directory (default /mnt/object)
#   --platform-access MODE   public (default): the platform's ports are published
#                            on all the server's addresses, for the security group
#                            to let in; tunnel: on 127.0.0.1 only, reached through
#                            an SSH tunnel (./chi-persist open)
#   --print-sealed-credentials
#                            read a key (64 hex digits, one line) on stdin, and
#                            print on stdout one JSON line {"sealed_credentials":
#                            "<base64>"}: the credentials as JSON, encrypted with
#                            that key (openssl enc -aes-256-cbc -pbkdf2 -iter 10000
#                            -md sha256 -salt -base64 -A). Only the program holds
#                            the key, so a failed command whose error repeats its
#                            stdout shows nothing readable. Every other line goes
#                            to stderr
#
# It refuses to start anything unless DIR is a mounted ext4 filesystem whose
# UUID matches DIR/.chi-persist/volume.env (written by prepare-volume): with
# `nofail` in fstab a server can boot without its volume, and services started
# on the bare directory would write to the root disk and lose it all.
#
# Credentials: DIR/.chi-persist/credentials.env (root:root 0600), created from
# /dev/urandom on the first start and reused ever after. A file from before a
# credential existed (MLflow's login and its MinIO user came later) gets the
# missing ones added, the others kept. They are never written to stderr, and
# never passed as an argument to any command.
#
# Just before `docker compose up` it records the project name and a copy of each
# compose file it uses in DIR/.chi-persist/started-stack/ (root only), which
# release-volume.sh stops the stack with: a newer docker/ copied over the old one
# (a renamed or removed service) must not change what the stop reaches.
#
# Exit codes:
#   0  the stack is up and healthy
#   1  unexpected failure
#   2  usage error (unknown option, missing or malformed value, not root)
#   3  refused: the mount point is not a volume prepared by prepare-volume
#      (not mounted, not ext4, read-only, volume.env missing or for another
#      filesystem, a data directory that is not a plain directory, a database
#      of another PostgreSQL major version)
#   4  refused: the compose file (or its object-store override) is missing
#   5  refused: the credentials file is unsafe or incomplete (owner, mode,
#      missing keys, bad values), or a database exists without one
#   6  docker is missing, or `docker compose up` failed or timed out
#   7  --print-sealed-credentials: no key of 64 hex digits on stdin, or no openssl
set -euo pipefail

readonly PROJECT_NAME=chi-persist
# Read by release-volume.sh: keep the layout (project-name, compose-files, the copies).
readonly STARTED_RECORD=.chi-persist/started-stack
readonly POSTGRES_MAJOR=17
readonly WAIT_TIMEOUT_SECONDS=600
# Every credentials file has these; a file without one of them is refused.
readonly CREDENTIAL_KEYS=(POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB MINIO_ROOT_USER
    MINIO_ROOT_PASSWORD JUPYTER_TOKEN)
# These came later: a file from before gets them generated and added.
readonly ADDED_CREDENTIAL_KEYS=(MLFLOW_ADMIN_USER MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SECRET_KEY
    MLFLOW_S3_ACCESS_KEY MLFLOW_S3_SECRET_KEY)
# How the sealed credentials are encrypted; components/sealed_credentials.py opens them.
readonly SEAL_ITERATIONS=10000

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mount_point=""
host_ip=""
compose_file="$script_dir/../../docker/docker-compose.yaml"
object_store_dir=/mnt/object
platform_access=public
print_sealed=false
seal_key=""

# shellcheck source=SCRIPTDIR/lib.sh
source "$script_dir/lib.sh"
use_helpers start-stack --say-to-stderr --fail-prefix "error: "

usage() {
    sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

parse_arguments() {
    while (($# > 0)); do
        case $1 in
        --mount-point | --host-ip | --compose-file | --object-store-dir | --platform-access)
            (($# >= 2)) || fail 2 "$1 needs a value; see --help"
            case $1 in
            --mount-point) mount_point=$2 ;;
            --host-ip) host_ip=$2 ;;
            --compose-file) compose_file=$2 ;;
            --object-store-dir) object_store_dir=$2 ;;
            --platform-access) platform_access=$2 ;;
            esac
            shift 2
            ;;
        --print-sealed-credentials)
            print_sealed=true
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) fail 2 "unknown option '$1'; see --help" ;;
        esac
    done
    [[ -n $mount_point ]] || fail 2 "--mount-point is required, e.g. --mount-point /mnt/block"
    [[ $mount_point == /* ]] ||
        fail 2 "--mount-point must be an absolute path, got '$mount_point'; e.g. /mnt/block"
    mount_point=$(realpath -m -- "$mount_point")
    [[ -n $host_ip ]] || fail 2 "--host-ip is required: the server's public IPv4 address"
    is_ipv4 "$host_ip" ||
        fail 2 "--host-ip must be an IPv4 address such as 129.114.26.10, got '$host_ip'"
    [[ $platform_access == public || $platform_access == tunnel ]] ||
        fail 2 "--platform-access must be public or tunnel, got '$platform_access'"
    ((EUID == 0)) || fail 2 "must run as root (it reads root-only credentials): sudo $0 ..."
}

# The key comes on stdin, before anything else could read it (compose gets /dev/null).
read_seal_key() {
    [[ $print_sealed == true ]] || return 0
    command -v openssl >/dev/null ||
        fail 7 "--print-sealed-credentials needs openssl (Ubuntu's package openssl); nothing was started"
    IFS= read -r seal_key || [[ -n $seal_key ]] ||
        fail 7 "--print-sealed-credentials: no key on stdin (one line of 64 hex digits); nothing was started"
    [[ $seal_key =~ ^[0-9a-f]{64}$ ]] ||
        fail 7 "--print-sealed-credentials: the line on stdin is not a key of 64 lowercase hex digits; nothing was started"
}

publish_address() {
    if [[ $platform_access == tunnel ]]; then
        printf '127.0.0.1'
    else
        printf '0.0.0.0'
    fi
}

is_ipv4() {
    local address=$1 octet
    local -a octets
    [[ $address =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || return 1
    IFS=. read -r -a octets <<<"$address"
    for octet in "${octets[@]}"; do
        ((10#$octet <= 255)) || return 1
    done
}

# Reads KEY's value from a KEY=value file without sourcing it.
value_of() {
    local file=$1 key=$2 line
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == "$key="* ]]; then
            printf '%s' "${line#"$key="}"
            return 0
        fi
    done <"$file"
    return 1
}

check_volume() {
    local fs_type options source actual_uuid recorded_uuid volume_env
    mountpoint -q -- "$mount_point" ||
        fail 3 "$mount_point is not a mount point: the volume is not mounted (with nofail a server boots without it). Run prepare-volume --volume-id <id> --mount-point $mount_point first"
    fs_type=$(findmnt -n -o FSTYPE --mountpoint "$mount_point")
    [[ $fs_type == ext4 ]] ||
        fail 3 "$mount_point holds a $fs_type filesystem, not the ext4 volume prepare-volume mounts; unmount it and run prepare-volume"
    options=$(findmnt -n -o OPTIONS --mountpoint "$mount_point")
    [[ ,$options, == *,rw,* ]] ||
        fail 3 "$mount_point is mounted read-only ($options), often after a filesystem error; check 'dmesg', then unmount, fsck and run prepare-volume"
    volume_env="$mount_point/.chi-persist/volume.env"
    [[ -f $volume_env && ! -L $volume_env ]] ||
        fail 3 "$volume_env is missing: $mount_point was not prepared by prepare-volume; run prepare-volume --volume-id <id> --mount-point $mount_point"
    recorded_uuid=$(value_of "$volume_env" FS_UUID) ||
        fail 3 "$volume_env has no FS_UUID line; run prepare-volume again to rewrite it"
    source=$(findmnt -n -o SOURCE --mountpoint "$mount_point")
    actual_uuid=$(blkid -p -s UUID -o value -- "$source" 2>/dev/null || true)
    [[ -n $actual_uuid && $actual_uuid == "$recorded_uuid" ]] ||
        fail 3 "the filesystem at $mount_point ($source, UUID '${actual_uuid:-unknown}') is not the one recorded in $volume_env (FS_UUID '$recorded_uuid'); run prepare-volume for this server's volume"
    say "volume at $mount_point: ext4, UUID $actual_uuid as recorded by prepare-volume"
}

compose_files=()
compose_paths=()

check_compose_files() {
    local override
    [[ -f $compose_file ]] ||
        fail 4 "compose file $compose_file does not exist; copy docker/ from the project or pass --compose-file"
    compose_files=(--file "$compose_file")
    compose_paths=("$compose_file")
    if [[ -d $object_store_dir ]]; then
        override="$(dirname "$compose_file")/docker-compose.object-store.yaml"
        [[ -f $override ]] ||
            fail 4 "$object_store_dir exists but the override that mounts it, $override, is missing; copy docker/ from the project"
        compose_files+=(--file "$override")
        compose_paths+=("$override")
        say "object store $object_store_dir: mounted read-only in Jupyter at /mnt/object"
    else
        say "object store $object_store_dir: not a directory, not mounted in Jupyter"
    fi
}

credentials_file() { printf '%s' "$mount_point/.chi-persist/credentials.env"; }

check_existing_credentials() {
    local file key value mode owner
    file=$(credentials_file)
    [[ -e $file || -L $file ]] || return 1
    [[ -f $file && ! -L $file ]] ||
        fail 5 "$file is not a regular file; move it away (its values cannot be trusted) and run again"
    owner=$(stat -c '%u:%g' -- "$file")
    mode=$(stat -c '%a' -- "$file")
    [[ $owner == 0:0 ]] ||
        fail 5 "$file is owned by $owner, not root:root (0:0); check who changed it, then: sudo chown root:root $file"
    [[ $mode == 600 ]] ||
        fail 5 "$file has mode $mode, not 600, so others may have read it; check it, then: sudo chmod 600 $file"
    for key in "${CREDENTIAL_KEYS[@]}"; do
        value=$(value_of "$file" "$key") ||
            fail 5 "$file has no $key line; restore it from a copy (the database and MinIO keep using the old values)"
        check_credential_value "$file" "$key" "$value"
    done
    for key in "${ADDED_CREDENTIAL_KEYS[@]}"; do
        if value=$(value_of "$file" "$key"); then
            check_credential_value "$file" "$key" "$value"
        fi
    done
    say "credentials: reusing $file"
}

check_credential_value() {
    local file=$1 key=$2 value=$3
    [[ $value =~ ^[A-Za-z0-9]+$ ]] ||
        fail 5 "$file: the value of $key is empty or has characters other than letters and digits; restore it from a copy"
}

random_alphanumeric() {
    # Reads a fixed number of bytes (no early-closed pipe, so no SIGPIPE under
    # pipefail) and keeps the letters and digits of their base64 form.
    local length=$1 lower=${2:-false} raw value=""
    while ((${#value} < length)); do
        raw=$(head -c 96 /dev/urandom | base64 -w 0)
        if [[ $lower == true ]]; then
            raw=${raw,,}
        fi
        value+=${raw//[^A-Za-z0-9]/}
    done
    printf '%s' "${value:0:length}"
}

random_user_name() {
    # Lower case and starting with a letter, so it can be typed unquoted in SQL.
    printf 'u%s' "$(random_alphanumeric 23 true)"
}

# KEY=value for one credential, generated.
generated_credential() {
    local key=$1
    case $key in
    POSTGRES_USER | MINIO_ROOT_USER | MLFLOW_ADMIN_USER | MLFLOW_S3_ACCESS_KEY)
        printf '%s=%s\n' "$key" "$(random_user_name)"
        ;;
    POSTGRES_DB) printf 'POSTGRES_DB=mlflowdb\n' ;;
    JUPYTER_TOKEN | MLFLOW_FLASK_SECRET_KEY) printf '%s=%s\n' "$key" "$(random_alphanumeric 48)" ;;
    *) printf '%s=%s\n' "$key" "$(random_alphanumeric 40)" ;;
    esac
}

# Writes the file whole (root:root 0600) through a temporary file and a rename.
write_credentials_file() {
    local file=$1 temporary
    temporary=$(umask 077 && mktemp "$(dirname "$file")/.credentials.env.XXXXXX")
    cat >"$temporary"
    chown root:root -- "$temporary"
    chmod 600 -- "$temporary"
    sync -- "$temporary"
    mv -T -- "$temporary" "$file"
}

create_credentials() {
    local file key
    file=$(credentials_file)
    if [[ -f $mount_point/postgres_data/PG_VERSION ]]; then
        fail 5 "$mount_point/postgres_data holds a database but $file does not exist, so its password is unknown; write $file (root:root, mode 600) with the lines ${CREDENTIAL_KEYS[*]/%/=...} holding the database's existing user and password, then run again (the other credentials are generated)"
    fi
    for key in "${CREDENTIAL_KEYS[@]}" "${ADDED_CREDENTIAL_KEYS[@]}"; do
        generated_credential "$key"
    done | write_credentials_file "$file"
    say "credentials: created $file (root:root 0600)"
}

# A file from before MLflow's login and its MinIO user: the others are kept as they are.
add_missing_credentials() {
    local file key missing=()
    file=$(credentials_file)
    for key in "${ADDED_CREDENTIAL_KEYS[@]}"; do
        value_of "$file" "$key" >/dev/null || missing+=("$key")
    done
    ((${#missing[@]} > 0)) || return 0
    {
        cat -- "$file"
        [[ -z $(tail -c 1 -- "$file") ]] || printf '\n'
        for key in "${missing[@]}"; do
            generated_credential "$key"
        done
    } | write_credentials_file "$file"
    say "credentials: added ${missing[*]} to $file (a volume from before they existed); the others are unchanged"
}

check_data_directories() {
    local name path version
    for name in postgres_data minio_data jupyter_work mlflow_auth; do
        path="$mount_point/$name"
        if [[ -L $path ]]; then
            fail 3 "$path is a symbolic link; its data would live outside the volume. Replace it with the directory it points to"
        fi
        if [[ -e $path && ! -d $path ]]; then
            fail 3 "$path exists but is not a directory; move it away and run again"
        fi
    done
    if [[ -f $mount_point/postgres_data/PG_VERSION ]]; then
        version=$(<"$mount_point/postgres_data/PG_VERSION")
        [[ $version == "$POSTGRES_MAJOR" ]] ||
            fail 3 "$mount_point/postgres_data holds a PostgreSQL $version database but the stack runs PostgreSQL $POSTGRES_MAJOR; upgrade it with pg_upgrade (or pg_dump/restore) first, nothing was started"
    fi
}

create_data_directory() {
    local path=$1 owner=$2 mode=$3
    if [[ -d $path ]]; then
        say "data directory $path: present, left as it is"
        return
    fi
    install -d -o "${owner%:*}" -g "${owner#*:}" -m "$mode" -- "$path"
    say "data directory $path: created ($owner, $mode)"
}

create_data_directories() {
    # PostgreSQL's image runs as uid 999 and fixes its own directory; MinIO runs
    # as root; Jupyter runs as jovyan, uid 1000 in group 100; MLflow's image
    # (docker/mlflow/Dockerfile) as uid 10001, which keeps its users there.
    create_data_directory "$mount_point/postgres_data" 999:999 0700
    create_data_directory "$mount_point/minio_data" 0:0 0750
    create_data_directory "$mount_point/jupyter_work" 1000:100 0775
    create_data_directory "$mount_point/mlflow_auth" 10001:10001 0700
}

# Replaces the record of the started stack: the project name, and a numbered copy
# of each compose file in the order given to compose.
record_started_stack() {
    local record="$mount_point/$STARTED_RECORD" temporary path name index=0
    local -a names=()
    temporary=$(umask 077 && mktemp -d "$mount_point/.chi-persist/.started-stack.XXXXXX")
    for path in "${compose_paths[@]}"; do
        index=$((index + 1))
        name="$index-$(basename -- "$path")"
        install -m 0600 -- "$path" "$temporary/$name"
        names+=("$name")
    done
    printf '%s\n' "$PROJECT_NAME" >"$temporary/project-name"
    printf '%s\n' "${names[@]}" >"$temporary/compose-files"
    rm -rf -- "$record"
    mv -T -- "$temporary" "$record"
    sync -f -- "$record"
    say "recorded project $PROJECT_NAME and its compose file(s) in $record, for release-volume.sh"
}

start_stack() {
    command -v docker >/dev/null ||
        fail 6 "docker is not installed; run install-docker.sh --user cc first"
    record_started_stack
    say "starting the stack (project $PROJECT_NAME), waiting up to ${WAIT_TIMEOUT_SECONDS}s for it to be healthy"
    if [[ $platform_access == tunnel ]]; then
        say "platform access tunnel: ports 8888, 8000, 9000 and 9001 published on 127.0.0.1 only (reach them with an SSH tunnel)"
    else
        say "platform access public: ports 8888, 8000, 9000 and 9001 published on every address of the server"
    fi
    # Compose's own output goes to stderr: stdout is reserved for the JSON line.
    if ! MOUNT_POINT=$mount_point HOST_IP=$host_ip OBJECT_STORE_DIR=$object_store_dir \
        PUBLISH_ADDRESS=$(publish_address) \
        docker compose --project-name "$PROJECT_NAME" --env-file "$(credentials_file)" \
        "${compose_files[@]}" up --detach --wait --wait-timeout "$WAIT_TIMEOUT_SECONDS" \
        </dev/null >&2; then
        fail 6 "the stack did not start or did not become healthy; see: sudo docker compose --project-name $PROJECT_NAME logs"
    fi
    say "stack is up"
}

print_urls() {
    local host=$host_ip
    if [[ $platform_access == tunnel ]]; then
        host="127.0.0.1 (on the server; ./chi-persist open tunnels to it)"
    fi
    say "MLflow:        http://$host:8000 (user MLFLOW_ADMIN_USER in $(credentials_file))"
    say "Jupyter:       http://$host:8888 (token: JUPYTER_TOKEN in $(credentials_file))"
    say "MinIO console: http://$host:9001"
    say "MinIO API:     http://$host:9000"
}

credentials_json() {
    local file
    file=$(credentials_file)
    # Values are letters and digits only (checked), so they need no JSON escaping.
    printf '{"postgres_user": "%s", "postgres_password": "%s", "minio_root_user": "%s", "minio_root_password": "%s", "jupyter_token": "%s", "mlflow_user": "%s", "mlflow_password": "%s"}' \
        "$(value_of "$file" POSTGRES_USER)" "$(value_of "$file" POSTGRES_PASSWORD)" \
        "$(value_of "$file" MINIO_ROOT_USER)" "$(value_of "$file" MINIO_ROOT_PASSWORD)" \
        "$(value_of "$file" JUPYTER_TOKEN)" "$(value_of "$file" MLFLOW_ADMIN_USER)" \
        "$(value_of "$file" MLFLOW_ADMIN_PASSWORD)"
}

# The credentials leave the server only sealed: printf is a builtin, the key goes to
# openssl through a pipe on fd 3, so neither is an argument of any process.
print_sealed_credentials() {
    local sealed
    sealed=$(credentials_json | openssl enc -aes-256-cbc -pbkdf2 -iter "$SEAL_ITERATIONS" \
        -md sha256 -salt -base64 -A -pass fd:3 3< <(printf '%s\n' "$seal_key")) ||
        fail 1 "openssl could not seal the credentials"
    printf '{"sealed_credentials": "%s"}\n' "$sealed"
}

main() {
    parse_arguments "$@"
    # A server without its volume is refused first, whatever else is missing (exit 3).
    check_volume
    read_seal_key
    check_compose_files
    check_data_directories
    if check_existing_credentials; then
        add_missing_credentials
    else
        create_credentials
    fi
    create_data_directories
    start_stack
    print_urls
    if [[ $print_sealed == true ]]; then
        print_sealed_credentials
    fi
}

main "$@"
