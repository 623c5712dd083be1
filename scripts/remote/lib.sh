# shellcheck shell=bash
# lib.sh: what the remote bash scripts share: one line per decision (say), the way out
# with an exit code (fail), a usage error (usage_error) and the report of an unexpected
# failure (an ERR trap). Sourced, never run, from the script's own directory:
#
#   source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
#   use_helpers NAME [--say-to-stderr] [--fail-prefix TEXT] [--usage TEXT] [--trap-errors]
#
# NAME begins every line; --say-to-stderr keeps stdout for the script's result;
# --fail-prefix comes before each failure's message ("error: "); --usage is the line
# usage_error prints after the message; --trap-errors makes any failed command exit 1,
# naming it and its line (with set -E, inside functions too).

helper_name=""
helper_say_fd=1
helper_fail_prefix=""
helper_usage=""

use_helpers() {
    helper_name=$1
    shift
    while (($#)); do
        case $1 in
            --say-to-stderr) helper_say_fd=2 ;;
            --fail-prefix | --usage)
                (($# >= 2)) || fail 1 "use_helpers: $1 needs a value"
                case $1 in
                    --fail-prefix) helper_fail_prefix=$2 ;;
                    --usage) helper_usage=$2 ;;
                esac
                shift
                ;;
            --trap-errors) trap 'on_unexpected_error $? "$BASH_COMMAND" $LINENO' ERR ;;
            *) fail 1 "use_helpers: unknown option $1" ;;
        esac
        shift
    done
}

say() {
    printf '%s: %s\n' "$helper_name" "$*" >&"$helper_say_fd"
}

fail() {
    local code=$1
    shift
    printf '%s: %s%s\n' "$helper_name" "$helper_fail_prefix" "$*" >&2
    exit "$code"
}

usage_error() {
    printf '%s: %s\n%s\n' "$helper_name" "$1" "$helper_usage" >&2
    exit 2
}

on_unexpected_error() {
    local code=$1 command=$2 line=$3
    # Inside a command substitution, let the caller report the failure once.
    if [[ $BASHPID != "$$" ]]; then
        exit "$code"
    fi
    printf '%s: unexpected failure (exit %s) at line %s: %s\n' "$helper_name" "$code" "$line" "$command" >&2
    exit 1
}
