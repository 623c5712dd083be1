"""The stack's settings: every config key, its rule, and the check run before any resource exists.
Over 500 lines: every config key's table in one place, serving the program (`load`) and the
commands in `scripts/` (`check_value`, `CONFIG_KEYS`), so a value one accepts all accept."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import ssh_auth

# The config namespace, defined where the login's messages (the lowest module) need it.
NAMESPACE = ssh_auth.NAMESPACE

# Every cloud resource the stack makes carries this key, valued "<netid>/<stack>" (the
# owner): Cinder and Nova metadata, Neutron tags and descriptions, the lease's name. It
# tells the stack's own resources from a classmate's, another stack's, or the tutorial's.
OWNER_KEY = "chi-persist-stack"
# Neutron limits a tag to 60 characters (neutron/extensions/tagging.py, MAX_TAG_LEN), Blazar
# a lease name to 80 (blazar/db/sqlalchemy/models.py, Lease.name).
MAX_TAG_LENGTH = 60
MAX_LEASE_NAME_LENGTH = 80

NETID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
# Absolute, no "..", no spaces or shell metacharacters: the path is passed to
# remote shell commands and written to fstab.
MOUNT_POINT_PATTERN = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
# Nova key pair names: letters, digits, and a few separators.
KEY_PAIR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,254}$")
# Names and ids of images, flavors, networks, pools and volume types.
CLOUD_NAME_PATTERN = re.compile(r"^[^\x00-\x1f]{1,255}$")
SYSTEM_DIRECTORIES = {
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
    "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/mnt",
}  # fmt: skip

DEFAULT_PRIVATE_KEY_PATH = "~/.ssh/id_rsa_chameleon"

# How long the stack's own lease lasts when leaseDuration is not set: a day's work.
DEFAULT_LEASE_DURATION = "8h"
# The longest lease the program asks for. KVM@TACC's own limit for a flavor reservation
# could not be read (Chameleon's notes speak of KVM leases of up to months, and of a policy
# against stacking leases to get around limits); a week serves a class's working week
# without holding a reservation for long, and the next `pulumi up` after a lease's end makes
# a new one. A site whose limit is lower refuses the lease itself: Blazar's
# MaxLeaseDurationFilter (blazar/enforcement/filters/max_lease_duration_filter.py) answers
# "Lease duration of N seconds must be less than or equal to the maximum lease duration
# of M seconds.", which the lease reports with the fix.
MAX_LEASE_DURATION_SECONDS = 7 * 24 * 3600
# The shortest: a new server waits up to 15 minutes for SSH, then prepares the volume and
# starts the platform; a lease that ends within the hour leaves no time to work.
MIN_LEASE_DURATION_SECONDS = 3600
# How long before its lease's end a `pulumi up` renews it (makes the next lease, then moves
# the server onto it) when leaseRenewWindow is not set.
DEFAULT_LEASE_RENEW_WINDOW = "1h"
# The longest renewal window: a day before the end is early enough for any working day, and
# a window may not exceed half the lease (leaseRenewWindow's rule, with leaseDuration).
MAX_LEASE_RENEW_WINDOW_SECONDS = 24 * 3600
# "8h", "3d", "90m", "1d12h": days, hours and minutes, in that order, each at most once.
LEASE_DURATION_PATTERN = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")

# How the platform's web ports (Jupyter, MLflow, MinIO) are reached: through the security
# group from allowedCidrs, or only through an SSH tunnel (only SSH is open).
PUBLIC, TUNNEL = "public", "tunnel"
PLATFORM_ACCESS_MODES = (PUBLIC, TUNNEL)
DEFAULT_ALLOWED_CIDRS = ("0.0.0.0/0",)
WHOLE_INTERNET = "0.0.0.0/0"


class SettingsError(Exception):
    """One or more settings are invalid; the message lists each with its fix."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        heading = f"{count} invalid setting{'s' if count != 1 else ''} in stack config:"
        return "\n".join([heading, *(f"  - {problem}" for problem in self.problems)])


@dataclass(frozen=True)
class Problem:
    """What is wrong with one key: the value seen, the rule it breaks, and the fix."""

    key: str
    value: Any
    rule: str
    fix: str
    environment: bool = False
    """`key` is an environment variable of the shell that runs pulumi, not a setting."""

    def __str__(self) -> str:
        seen = "(not set)" if self.value is None else repr(self.value)
        name = self.key if self.environment else f"{NAMESPACE}:{self.key}"
        return f"{name} = {seen}: {self.rule}. Fix: {self.fix}"


@dataclass(frozen=True)
class ConfigKey:
    """One config key, described once: Pulumi.yaml's `config:` block and the README's table
    are generated from these (`./chi-persist dev docs`)."""

    name: str
    type: str  # "string", "integer", "boolean" or "array" (Pulumi.yaml's config types)
    description: str
    """One or two sentences: Pulumi.yaml's description."""
    rule: Rule
    """Checks a value: (normalised value, None) or (None, the rule it breaks)."""
    help: str
    """The README table's meaning column (Markdown)."""
    shown_default: str
    """The README table's default column (Markdown)."""
    # What the engine gives a stack that does not set the key; "" and [] mean "not set".
    # None only for a key every stack must set (`required`) and for secret keys, which
    # Pulumi.yaml cannot declare.
    default: Any = None
    secret: bool = False
    example: str = "VALUE"
    required: bool = False

    def is_unset(self, value: Any) -> bool:
        """Whether `value` is this key's "not set": missing, or its empty default."""
        if value is None:
            return True
        if self.required or self.default == "":
            return value == ""
        if self.default == []:
            return _string_list(value) == []
        return False

    def fix(self) -> str:
        """The command that sets this key."""
        if self.secret:
            return f"pulumi config set --secret {NAMESPACE}:{self.name} {self.example}".rstrip()
        if self.type == "array":
            return f"pulumi config set --path '{NAMESPACE}:{self.name}[0]' {self.example}"
        return f"pulumi config set {NAMESPACE}:{self.name} {self.example}"


@dataclass(frozen=True)
class Settings:
    """Validated settings of one student's stack."""

    netid: str
    key_pair: str
    image: str
    flavor: str
    reservation: str | None
    network: str
    floating_ip_pool: str
    volume_size: int
    volume_type: str | None
    allowed_cidrs: tuple[str, ...]
    existing_security_groups: tuple[str, ...]
    mount_point: str
    ssh_private_key_path: str
    # How the provisioning commands authenticate: "config" (sshPrivateKey),
    # "file" (sshPrivateKeyPath) or "agent" (SSH_AUTH_SOCK); see components/ssh_auth.py.
    ssh_key_source: str = "config"
    # The volume to take over instead of creating one (None: create, or keep the stack's own).
    existing_volume_id: str | None = None
    # The key is passphrase-protected: sshPrivateKeyPassword goes with it.
    ssh_send_password: bool = False
    # What the choice of login is worth telling (printed by `pulumi up`).
    ssh_notes: tuple[str, ...] = ()
    # How long the stack's own lease lasts: as written (for messages), and in seconds.
    lease_duration: str = DEFAULT_LEASE_DURATION
    lease_duration_seconds: int = 8 * 3600
    # How long before the lease's end a `pulumi up` renews it; 0: only after the end.
    lease_renew_window: str = DEFAULT_LEASE_RENEW_WINDOW
    lease_renew_window_seconds: int = 3600
    # The clouds.yaml entry the lease is made with (None: the stack's own credentials).
    lease_cloud: str | None = None
    # The Pulumi stack these settings are of; empty means the netid's own stack.
    stack: str = ""
    # How the platform's web ports are reached: "public" or "tunnel".
    platform_access: str = PUBLIC

    @property
    def owner(self) -> str:
        """The value of the owner key on every cloud resource of this stack: <netid>/<stack>."""
        return f"{self.netid}/{self.stack or self.netid}"

    @property
    def owner_suffix(self) -> str:
        """What ends the description of each Neutron resource: it names the owner from the
        create call on (terraform-provider-openstack sets tags with a second call)."""
        return f" ({OWNER_KEY}={self.owner})"

    @property
    def owner_tag(self) -> str:
        """The owner as one Neutron tag, `chi-persist-stack=<netid>/<stack>`."""
        return bounded(f"{OWNER_KEY}={self.owner}", MAX_TAG_LENGTH)

    @property
    def server_name(self) -> str:
        return f"node-persist-{self.netid}"

    @property
    def volume_name(self) -> str:
        return f"block-persist-{self.netid}"

    @property
    def security_group_name(self) -> str:
        return f"persist-{self.netid}"

    @property
    def lease_name(self) -> str:
        """Blazar keeps no metadata, so the name carries the owner: lease-persist-<netid> for
        the netid's own stack, lease-persist-<netid>.<stack> for another (a netid has no dot)."""
        stack = self.stack or self.netid
        name = f"lease-persist-{self.netid}"
        return name if stack == self.netid else bounded(f"{name}.{stack}", MAX_LEASE_NAME_LENGTH)

    @property
    def makes_lease(self) -> bool:
        """The stack reserves its own flavor: no reservation of the student's is set."""
        return self.reservation is None

    @property
    def lease_notes(self) -> tuple[str, ...]:
        """What `pulumi up` says about the lease when the student brings their own."""
        if self.makes_lease:
            return ()
        return (
            f"{NAMESPACE}:reservation is set: the server boots the reserved flavor "
            f"{self.reservation} and the stack makes no lease of its own, so "
            f"{NAMESPACE}:leaseDuration ({self.lease_duration}) is not used. When that lease "
            f"ends, make a new one and set its flavor id, or `pulumi config rm "
            f"{NAMESPACE}:reservation` to let the stack make its own lease.",
        )

    @property
    def tunnel_only(self) -> bool:
        return self.platform_access == TUNNEL

    @property
    def access_notes(self) -> tuple[str, ...]:
        """What `pulumi up` says about who can reach the server (one line each)."""
        if self.existing_security_groups:
            groups = ", ".join(self.existing_security_groups)
            return (
                f"{NAMESPACE}:existingSecurityGroups is set ({groups}): those groups' own "
                f"rules decide who reaches the server, and {NAMESPACE}:allowedCidrs is not "
                "used; check them with `openstack security group rule list <group>`",
            )
        if WHOLE_INTERNET in self.allowed_cidrs and not self.tunnel_only:
            return (
                "Jupyter, MLflow and MinIO are reachable from the whole internet "
                f"({NAMESPACE}:allowedCidrs {WHOLE_INTERNET}), behind their credentials; "
                f"narrow it with `pulumi config set --path '{NAMESPACE}:allowedCidrs[0]' "
                "<your network>/24`, or open only SSH with `pulumi config set "
                f"{NAMESPACE}:platformAccess tunnel` and reach them with `./chi-persist open`",
            )
        return ()

    def ssh_command(self, address: str, host_key: str | None = None) -> str:
        """How the student logs in to the server: shell-quoted, with the server's pinned key
        the only one accepted (OpenSSH 8.5 or later for KnownHostsCommand)."""
        words = ["ssh"]
        if self.ssh_key_source != "agent":
            # ssh expands a leading ~ in -i itself.
            words += ["-i", self.ssh_private_key_path]
        if host_key:
            words += [
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"HostKeyAlgorithms={host_key.split()[0]}",
                "-o", f"KnownHostsCommand=/bin/echo {address} {host_key}",
            ]  # fmt: skip
        return shlex.join([*words, f"cc@{address}"])


def bounded(text: str, limit: int) -> str:
    """`text`, or when longer than `limit` its start and a digest of the whole: still unique."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{text[: limit - 13]}~{digest}"


# --- rules -------------------------------------------------------------------------------
# Each rule takes the raw value and returns (normalised value, None) or (None, rule text).

Rule = Callable[[Any], tuple[Any, str | None]]


def _string(pattern: re.Pattern[str], rule: str) -> Rule:
    def check(value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str) and pattern.fullmatch(value):
            return value, None
        return None, rule

    return check


def _netid(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and NETID_PATTERN.fullmatch(value):
        return value, None
    return None, (
        "must be 2-32 characters: a lowercase letter, then lowercase letters, digits or hyphens"
    )


def _volume_size(value: Any) -> tuple[Any, str | None]:
    rule = "must be a whole number of GiB, at least 1"
    if isinstance(value, bool):
        return None, rule
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        number = int(value)
    else:
        return None, rule
    return (number, None) if number >= 1 else (None, rule)


def _reservation(value: Any) -> tuple[Any, str | None]:
    rule = "must be the UUID of a reserved flavor, like 3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
    if not isinstance(value, str):
        return None, rule
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None, rule
    if str(parsed) != value.lower() or len(value) != 36:
        return None, rule
    return value.lower(), None


def parse_duration(text: str) -> int | None:
    """Seconds in a duration such as "8h", "3d", "90m" or "1d12h"; None if it is not one."""
    match = LEASE_DURATION_PATTERN.fullmatch(text)
    if not text or match is None:
        return None
    days, hours, minutes = (int(part) if part else 0 for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60


def format_duration(seconds: int) -> str:
    """The shortest duration text for `seconds` (whole minutes): 86400 -> "1d"."""
    minutes = seconds // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [
        f"{days}d" if days else "",
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
    ]
    return "".join(parts) or "0m"


def _lease_duration(value: Any) -> tuple[Any, str | None]:
    longest = format_duration(MAX_LEASE_DURATION_SECONDS)
    shortest = format_duration(MIN_LEASE_DURATION_SECONDS)
    rule = (
        "must be a duration in days, hours and minutes, in that order, like 8h, 3d, 90m or "
        f"1d12h, from {shortest} to {longest}"
    )
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        return None, rule
    if seconds > MAX_LEASE_DURATION_SECONDS:
        return None, (
            f"is longer than {longest}, the longest lease this project asks KVM@TACC for; ask "
            f"for at most {longest} (the next `pulumi up` after a lease's end makes a new one)"
        )
    if seconds < MIN_LEASE_DURATION_SECONDS:
        return None, (
            f"is shorter than {shortest}: a new server needs up to half an hour before the "
            "platform runs"
        )
    return value, None


def _lease_renew_window(value: Any) -> tuple[Any, str | None]:
    longest = format_duration(MAX_LEASE_RENEW_WINDOW_SECONDS)
    rule = (
        "must be a duration in days, hours and minutes, in that order, like 1h, 30m or 2h30m, "
        f"from 0m (never renew before the end) to {longest}"
    )
    seconds = parse_duration(value) if isinstance(value, str) else None
    if seconds is None:
        return None, rule
    if seconds > MAX_LEASE_RENEW_WINDOW_SECONDS:
        return None, (
            f"is longer than {longest}, the longest renewal window: renew at most {longest} "
            "before the lease ends"
        )
    return value, None


def _existing_volume_id(value: Any) -> tuple[Any, str | None]:
    rule = (
        "must be the id of a Cinder volume, a UUID like 3f2a9c4e-8b1d-4e6f-a0b2-5c7d9e1f3a4b "
        "(not its name), or empty"
    )
    if value == "":
        return None, None
    if not isinstance(value, str) or len(value) != 36:
        return None, rule
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return None, rule
    if str(parsed) != value.lower():
        return None, rule
    return value.lower(), None


def _string_list(value: Any) -> list[Any] | None:
    """A config array, accepting the JSON text form `pulumi config set` stores."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return None


def _cidrs(value: Any) -> tuple[Any, str | None]:
    items = _string_list(value)
    if not items:
        return None, 'must be a non-empty list of IPv4 networks, like ["203.0.113.0/24"]'
    normalised = []
    for item in items:
        try:
            network = ipaddress.IPv4Network(str(item), strict=True)
        except ipaddress.AddressValueError:
            return None, f"{item!r} is not an IPv4 network in CIDR form, like 203.0.113.0/24"
        except ValueError as error:
            return None, f"{item!r} is not a valid IPv4 network ({error})"
        if "/" not in str(item):
            return None, f"{item!r} has no prefix length: write {item}/32 for a single address"
        normalised.append(str(network))
    if len(set(normalised)) != len(normalised):
        return None, "lists the same network twice"
    return tuple(normalised), None


def _platform_access(value: Any) -> tuple[Any, str | None]:
    if value in PLATFORM_ACCESS_MODES:
        return value, None
    return None, (
        "must be public (Jupyter, MLflow and MinIO open to allowedCidrs) or tunnel (only SSH "
        "open; `./chi-persist open` reaches them through an SSH tunnel)"
    )


def _group_names(value: Any) -> tuple[Any, str | None]:
    items = _string_list(value)
    rule = 'must be a list of security group names, like ["allow-ssh", "allow-8888"]'
    if items is None:
        return None, rule
    if not all(isinstance(item, str) and CLOUD_NAME_PATTERN.fullmatch(item) for item in items):
        return None, rule
    if len(set(items)) != len(items):
        return None, "lists the same group twice"
    return tuple(items), None


def _mount_point(value: Any) -> tuple[Any, str | None]:
    rule = (
        "must be an absolute path of letters, digits, '.', '_' or '-' below a directory "
        "of its own, like /mnt/block"
    )
    if not isinstance(value, str) or not MOUNT_POINT_PATTERN.fullmatch(value):
        return None, rule
    parts = value.split("/")[1:]
    if any(part in (".", "..") for part in parts) or value in SYSTEM_DIRECTORIES or value == "/":
        return None, rule
    return value, None


def _private_key_text(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, "must be the text of a private key (-----BEGIN ... PRIVATE KEY-----)"
    problem = ssh_auth.inspect_private_key(value).problem
    return (None, problem) if problem else (value, None)


def _ssh_auth(value: Any) -> tuple[Any, str | None]:
    if value in ssh_auth.METHODS:
        return value, None
    return None, f"must be one of {', '.join(ssh_auth.METHODS)}"


def _passphrase(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, str) and value:
        return value, None
    return None, "must be the passphrase of the private key"


# --- backups to an object store (scripts/chi_persist_tools/backup.py) --------------------
# Swift's container names: 1 to 256 bytes, no "/" (swift/common/constraints.py).
MAX_CONTAINER_NAME_BYTES = 256
DEFAULT_BACKUP_KEEP = 3
MAX_BACKUP_KEEP = 100


def _container_name(value: Any) -> tuple[Any, str | None]:
    rule = (
        "must be the name of an object store container: 1 to 256 bytes, without '/' or "
        "control characters, like chi-persist-ab1234"
    )
    if (
        not isinstance(value, str)
        or not CLOUD_NAME_PATTERN.fullmatch(value)
        or "/" in value
        or len(value.encode()) > MAX_CONTAINER_NAME_BYTES
    ):
        return None, rule
    return value, None


def _backup_keep(value: Any) -> tuple[Any, str | None]:
    rule = f"must be a whole number of backups to keep, from 1 to {MAX_BACKUP_KEEP}"
    number, problem = _volume_size(value)
    if problem is not None or not 1 <= number <= MAX_BACKUP_KEEP:
        return None, rule
    return number, None


def _boolean(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true", None
    return None, "must be true or false"


_NAME_RULE = "must be a non-empty name without control characters"

CONFIG_KEYS: dict[str, ConfigKey] = {
    key.name: key
    for key in (
        ConfigKey(
            "netid",
            "string",
            "Your netID: the suffix of every cloud resource name. Empty: the stack's name.",
            default="",
            example="ab1234",
            rule=_netid,
            help=(
                "suffix of every cloud name; a lowercase letter, then lowercase letters, digits or "
                "hyphens, 2–32 characters"
            ),
            shown_default='`""`: the stack\'s name',
        ),
        ConfigKey(
            "keyPair",
            "string",
            "Name of your key pair registered at KVM@TACC (Horizon: Compute > Key Pairs). "
            "Required.",
            example="id_rsa_chameleon",
            required=True,
            rule=_string(
                KEY_PAIR_PATTERN,
                "must be the name of a key pair registered at KVM@TACC (letters, digits, ' ._@-')",
            ),
            help="name of your key pair registered at KVM@TACC",
            shown_default="required",
        ),
        ConfigKey(
            "sshAuth",
            "string",
            "How the provisioning commands log in over SSH: key (sshPrivateKey, else the file "
            "at sshPrivateKeyPath, never the ssh agent), agent (the ssh agent at SSH_AUTH_SOCK "
            "only), or auto (a key when one exists, else the agent).",
            default=ssh_auth.AUTO,
            example=ssh_auth.KEY,
            rule=_ssh_auth,
            help=(
                "how the provisioning commands log in: `key` (the key below, alone, never the "
                "agent), `agent` (the ssh agent at `SSH_AUTH_SOCK` alone) or `auto` (the key when "
                "there is one, else the agent); see *Logging in to the server*"
            ),
            shown_default="`auto`",
        ),
        ConfigKey(
            "sshPrivateKey",
            "string",
            "Private key the provisioning commands log in with (secret). If unset, the file "
            "at sshPrivateKeyPath is read; how either is used is sshAuth's choice.",
            secret=True,
            example="< ~/.ssh/id_rsa_chameleon",
            rule=_private_key_text,
            help=(
                "the private key itself, kept in the stack: `pulumi config set --secret "
                "chi-persist:sshPrivateKey < ~/.ssh/id_rsa_chameleon`; when unset, the file at "
                "`sshPrivateKeyPath` is the key"
            ),
            shown_default="— (secret, not declared)",
        ),
        ConfigKey(
            "sshPrivateKeyPassword",
            "string",
            "Passphrase of the private key, when it has one (secret). Without it a "
            "passphrase-protected key is used through the ssh agent, or refused.",
            secret=True,
            example="",
            rule=_passphrase,
            help=(
                "the passphrase of a passphrase-protected key: `pulumi config set --secret "
                "chi-persist:sshPrivateKeyPassword` (it asks for it); only sent with a key that has"
                " one"
            ),
            shown_default="— (secret, not declared)",
        ),
        ConfigKey(
            "sshPrivateKeyPath",
            "string",
            "Private key file used when the secret sshPrivateKey is unset.",
            default=DEFAULT_PRIVATE_KEY_PATH,
            example="~/.ssh/id_rsa_chameleon",
            rule=_string(CLOUD_NAME_PATTERN, "must be a file path"),
            help="private key file used when `sshPrivateKey` is unset",
            shown_default="`~/.ssh/id_rsa_chameleon`",
        ),
        ConfigKey(
            "image",
            "string",
            "Server image.",
            default="CC-Ubuntu24.04",
            rule=_string(CLOUD_NAME_PATTERN, _NAME_RULE),
            help="server image; a change replaces the server (see *Changing the server*)",
            shown_default="`CC-Ubuntu24.04`",
        ),
        ConfigKey(
            "flavor",
            "string",
            "Server flavor: the flavor the stack's own lease reserves (when no reservation "
            "is set).",
            default="m1.large",
            example="m1.large",
            rule=_string(CLOUD_NAME_PATTERN, _NAME_RULE),
            help=(
                "the flavor the stack's own lease reserves (when no `reservation` is set); a change"
                " makes a new lease and replaces the server"
            ),
            shown_default="`m1.large`",
        ),
        ConfigKey(
            "reservation",
            "string",
            "Id of a reserved flavor (the flavor UUID of a KVM@TACC lease you made yourself). "
            "When set, the server boots that flavor and the stack makes no lease. Empty: the "
            "stack makes its own lease of `flavor`.",
            default="",
            example="00000000-0000-0000-0000-000000000000",
            rule=_reservation,
            help=(
                "the flavor id (UUID) of a lease you made yourself; when set, the server boots it "
                "and the stack makes no lease (`leaseDuration` is not used); a new one replaces the"
                " server"
            ),
            shown_default='`""`: none',
        ),
        ConfigKey(
            "leaseDuration",
            "string",
            "How long the stack's own KVM@TACC lease lasts, from the `pulumi up` that makes "
            "it: days, hours and minutes such as 8h, 3d, 90m, 1d12h (at most 7d). Not used "
            "when reservation is set.",
            default=DEFAULT_LEASE_DURATION,
            example="8h",
            rule=_lease_duration,
            help=(
                "how long the stack's own lease lasts from the `pulumi up` that makes it: days, "
                "hours and minutes in that order (`8h`, `3d`, `90m`, `1d12h`), from 1 hour to 7 "
                "days (`MAX_LEASE_DURATION_SECONDS` in `components/settings.py`); a new value is "
                "recorded and applies to the next lease: Blazar cannot change a lease's end (see "
                "*Leases*)"
            ),
            shown_default="`8h`",
        ),
        ConfigKey(
            "leaseRenewWindow",
            "string",
            "How long before the stack's own lease ends a `pulumi up` renews it: it makes the "
            "next lease first, then replaces the server the clean way onto it, then deletes the "
            "old lease. A duration such as 1h or 30m, at most half of leaseDuration (the "
            "default is cut to half of a shorter lease); 0m: never renew early (the `pulumi "
            "up` after the end makes a new lease). Empty: 1h.",
            default="",
            example="2h",
            rule=_lease_renew_window,
            help=(
                "how long before the stack's own lease ends a `pulumi up` renews it: the next lease"
                " first, then the server replaced the clean way onto it (same volume and address, "
                "nothing formatted), then the old lease deleted; from `0m` (never before the end: "
                "the `pulumi up` after the end makes a new lease) to `1d`, at most half of "
                "`leaseDuration`; when not set, 1h, cut to half of a shorter lease (see *Leases*)"
            ),
            shown_default='`""`: 1h',
        ),
        ConfigKey(
            "leaseCloud",
            "string",
            "Name of a clouds.yaml entry used only for the lease (Blazar): one that logs in "
            "with your Chameleon account (OIDC, as Chameleon's ccauth writes it, or a "
            "password), for a site whose Keystone refuses trusts to application credentials. "
            "Empty: the stack's own credentials.",
            default="",
            example="kvm-lease",
            rule=_string(CLOUD_NAME_PATTERN, "must be the name of an entry in clouds.yaml"),
            help=(
                "the name of a `clouds.yaml` entry used only for the lease, one that logs in with "
                "your Chameleon account (OIDC as `ccauth clouds-yaml` writes it, or a CLI "
                "password), for a site whose Keystone refuses trusts to application credentials "
                "(see *Leases*)"
            ),
            shown_default='`""`: the stack\'s credentials',
        ),
        ConfigKey(
            "network",
            "string",
            "Network the server's port is on.",
            default="sharednet1",
            rule=_string(CLOUD_NAME_PATTERN, _NAME_RULE),
            help="network of the server's port",
            shown_default="`sharednet1`",
        ),
        ConfigKey(
            "floatingIpPool",
            "string",
            "Pool the floating IP comes from.",
            default="public",
            rule=_string(CLOUD_NAME_PATTERN, _NAME_RULE),
            help="pool of the floating IP",
            shown_default="`public`",
        ),
        ConfigKey(
            "volumeSize",
            "integer",
            "Size of the persistent block volume in GiB (whole number, at least 1).",
            default=2,
            example="2",
            rule=_volume_size,
            help=(
                "GiB, whole number ≥ 1; a larger value later grows the volume in place, with its "
                "data (see *Grow the volume*); a smaller one is refused"
            ),
            shown_default="`2`",
        ),
        ConfigKey(
            "volumeType",
            "string",
            "Cinder volume type, if the site needs one. Empty: the site's default type.",
            default="",
            example="ceph-ssd",
            rule=_string(CLOUD_NAME_PATTERN, _NAME_RULE),
            help=(
                "Cinder volume type, if the site needs one; it must match an existing volume's type"
            ),
            shown_default='`""`: the site\'s default',
        ),
        ConfigKey(
            "allowedCidrs",
            "array",
            "IPv4 networks allowed on every opened port (SSH, and in platformAccess public "
            "Jupyter, MLflow, MinIO). Not used with existingSecurityGroups.",
            default=["0.0.0.0/0"],
            example="203.0.113.0/24",
            rule=_cidrs,
            help=(
                "IPv4 networks allowed on every opened port; `pulumi config set --path "
                "'chi-persist:allowedCidrs[0]' 203.0.113.0/24`; refused beside "
                "`existingSecurityGroups`, whose own rules decide"
            ),
            shown_default='`["0.0.0.0/0"]`',
        ),
        ConfigKey(
            "platformAccess",
            "string",
            "How Jupyter, MLflow and MinIO are reached: public (their ports are open to "
            "allowedCidrs, each behind its credentials) or tunnel (only SSH is open, the "
            "ports answer on the server's 127.0.0.1 only, and `./chi-persist open` reaches "
            "them through an SSH tunnel). Switching changes only the group's rules and the "
            "ports' bindings: the server and the data stay.",
            default=PUBLIC,
            example=TUNNEL,
            rule=_platform_access,
            help=(
                "`public`: Jupyter, MLflow and MinIO open to `allowedCidrs`, each behind its "
                "credentials; `tunnel`: only SSH is open and `./chi-persist open` reaches them "
                "through an SSH tunnel (see *Who can reach your data*); switching keeps the "
                "server and the data"
            ),
            shown_default="`public`",
        ),
        ConfigKey(
            "existingSecurityGroups",
            "array",
            "Names of security groups that already exist in the project (e.g. the tutorial's "
            "allow-ssh, allow-8888, ...). When set, they are used and no group is created. "
            "Empty: the group persist-<netid> is created.",
            default=[],
            example="allow-ssh",
            rule=_group_names,
            help=(
                "names of groups that already exist in the project (the tutorial's `allow-ssh`, "
                "`allow-8888`, …); when set, they are used and no group is created"
            ),
            shown_default="`[]`: none",
        ),
        ConfigKey(
            "mountPoint",
            "string",
            "Where the volume is mounted on the server.",
            default="/mnt/block",
            example="/mnt/block",
            rule=_mount_point,
            help="where the volume is mounted on the server",
            shown_default="`/mnt/block`",
        ),
        ConfigKey(
            "existingVolumeId",
            "string",
            "Id (UUID) of the volume block-persist-<netid> you already have (the tutorial's): "
            "the program takes it over, with its data, instead of creating a volume. Find it "
            "with: openstack volume show block-persist-<netid> -f value -c id",
            default="",
            example="$(openstack volume show block-persist-<netid> -f value -c id)",
            rule=_existing_volume_id,
            help=(
                "id (UUID) of the volume `block-persist-<netid>` you made in the tutorial: it is "
                "taken over (imported, protected) with its data instead of creating a volume; "
                "`openstack volume show block-persist-<netid> -f value -c id` prints it (see *Take "
                "it over*)"
            ),
            shown_default='`""` (none)',
        ),
        ConfigKey(
            "backupCloud",
            "string",
            "Name of the clouds.yaml entry of the object store backups go to, e.g. chi_tacc "
            "(CHI@TACC's Swift; `ccauth clouds-yaml --all-sites` writes it). Empty: backups "
            "are off.",
            default="",
            example="chi_tacc",
            rule=_string(CLOUD_NAME_PATTERN, "must be the name of an entry in clouds.yaml"),
            help=(
                "the `clouds.yaml` entry of the object store backups go to, e.g. `chi_tacc` "
                "(KVM@TACC has none; CHI@TACC's Swift serves it); empty: backups are off (see "
                "*Backups*)"
            ),
            shown_default='`""`: off',
        ),
        ConfigKey(
            "backupContainer",
            "string",
            "Object store container the backups go to; made if missing. Empty: "
            "chi-persist-<netid>.",
            default="",
            example="chi-persist-ab1234",
            rule=_container_name,
            help="the container the backups go to, made if missing",
            shown_default='`""`: `chi-persist-<netid>`',
        ),
        ConfigKey(
            "backupKeep",
            "integer",
            "How many complete backups to keep: older ones are deleted after a new one "
            f"succeeds (1 to {MAX_BACKUP_KEEP}).",
            default=DEFAULT_BACKUP_KEEP,
            example="3",
            rule=_backup_keep,
            help=(
                "how many complete backups to keep; the older ones are deleted after each "
                f"successful backup (1 to {MAX_BACKUP_KEEP})"
            ),
            shown_default=f"`{DEFAULT_BACKUP_KEEP}`",
        ),
        ConfigKey(
            "backupOnRecycle",
            "boolean",
            "Take a backup during the clean stop of every `./chi-persist recycle`, while the "
            "platform is stopped (needs backupCloud).",
            default=False,
            example="true",
            rule=_boolean,
            help=(
                "`true`: `./chi-persist recycle` takes a backup during its clean stop, while "
                "MLflow and Jupyter are stopped (needs `backupCloud`)"
            ),
            shown_default="`false`",
        ),
    )
}


def check_value(key: str, value: Any) -> tuple[Any, Problem | None]:
    """Check one value of a known key: (normalised value, None) or (None, the problem)."""
    spec = CONFIG_KEYS.get(key)
    if spec is None:
        known = ", ".join(CONFIG_KEYS)
        return None, Problem(key, value, f"is not a setting of this project (known: {known})",
                             "remove it, or correct its spelling")  # fmt: skip
    normalised, rule = spec.rule(value)
    if rule is not None:
        return None, Problem(key, _printable(spec, value), rule, spec.fix())
    return normalised, None


def _printable(spec: ConfigKey, value: Any) -> Any:
    """Never echo a secret back in an error message."""
    return "[secret]" if spec.secret and value is not None else value


def expand_key_path(path: str, home: str | None = None) -> Path:
    """`~` in a key path means the home directory of whoever runs `pulumi up`."""
    if path == "~" or path.startswith("~/"):
        base = home if home is not None else os.path.expanduser("~")
        return Path(base) / path[2:]
    return Path(path)


def check_values(raw: Mapping[str, Any], stack: str) -> tuple[dict[str, Any], list[Problem]]:
    """Every setting but the secrets by its key's rule, defaults applied (None: not set), and
    every problem: a pure function of the values (the stack's name stands in for netid)."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}

    for key in raw:
        if key not in CONFIG_KEYS:
            problems.append(check_value(key, raw[key])[1])  # type: ignore[arg-type]

    for name, spec in CONFIG_KEYS.items():
        if spec.secret:
            continue
        value = raw.get(name)
        if value is None:
            value = spec.default
        if spec.is_unset(value):
            if name != "netid":
                values[name] = None
                continue
            value = stack
        normalised, problem = check_value(name, value)
        if problem is not None and name == "netid" and spec.is_unset(raw.get("netid")):
            problem = Problem(
                "netid",
                value,
                f"is not set, and the stack's name {value!r} is not a valid netID: it "
                + problem.rule,
                f"pulumi config set {NAMESPACE}:netid <your netID>",
            )
        if problem:
            problems.append(problem)
        values[name] = normalised

    groups, cidrs = values.get("existingSecurityGroups"), values.get("allowedCidrs")
    if groups and cidrs is not None and tuple(cidrs) != DEFAULT_ALLOWED_CIDRS:
        problems.append(
            Problem(
                "allowedCidrs",
                list(cidrs),
                f"is not applied: {NAMESPACE}:existingSecurityGroups is set "
                f"({', '.join(groups)}), and then those groups' own rules decide who reaches "
                "the server; the stack makes no rule of its own, so this narrowing would only "
                "seem to hold",
                f"pulumi config rm {NAMESPACE}:allowedCidrs (and narrow the groups' rules in "
                "Horizon), or pulumi config rm "
                f"{NAMESPACE}:existingSecurityGroups to let the stack make its own group from "
                "allowedCidrs",
            )
        )

    if values.get("keyPair") is None and not any(p.key == "keyPair" for p in problems):
        spec = CONFIG_KEYS["keyPair"]
        problems.append(
            Problem(
                "keyPair",
                None,
                "is required: the name of your key pair at KVM@TACC",
                spec.fix().replace(spec.example, "<key pair name>"),
            )
        )
    problems.extend(_renewal_problems(values))
    return values, problems


def choose_login(
    values: Mapping[str, Any],
    environment: Mapping[str, str],
    *,
    private_key_set: bool,
    private_key_text: str | None,
    password_set: bool,
    password: str | None,
    probe_agent: Callable[[str | None], ssh_auth.AgentState] = ssh_auth.probe_agent,
) -> tuple[ssh_auth.Login | None, list[Problem]]:
    """How the provisioning commands log in (components/ssh_auth.py): it reads the key file
    under the environment's HOME and asks the ssh agent at SSH_AUTH_SOCK."""
    key_path = values.get("sshPrivateKeyPath") or DEFAULT_PRIVATE_KEY_PATH
    if private_key_set:
        key = ssh_auth.PrivateKey("config", f"{NAMESPACE}:sshPrivateKey", private_key_text)
    else:
        key = ssh_auth.read_key_file(expand_key_path(key_path, environment.get("HOME")), key_path)
    chosen, found = ssh_auth.choose_login(
        values["sshAuth"],
        key,
        key_path,
        probe_agent(environment.get("SSH_AUTH_SOCK") or None),
        password_set=password_set,
        password=password,
    )
    problems = [
        Problem(
            problem.setting,
            problem.value,
            problem.rule,
            problem.fix,
            environment=problem.setting not in CONFIG_KEYS,
        )
        for problem in found
    ]
    return chosen, problems


def validate(
    raw: Mapping[str, Any],
    stack: str,
    *,
    private_key_set: bool = False,
    environment: Mapping[str, str] | None = None,
    check_private_key: bool = True,
    private_key_text: str | None = None,
    password_set: bool = False,
    password: str | None = None,
    probe_agent: Callable[[str | None], ssh_auth.AgentState] = ssh_auth.probe_agent,
) -> Settings:
    """Check every setting at once; raise SettingsError listing all problems.

    `raw` maps config keys to their values as Pulumi returns them (strings, or
    lists for arrays); missing keys take their declared defaults, and a key's empty
    default ("" or []) means it is not set. The secrets are not in `raw`: whether the
    stack sets sshPrivateKey and sshPrivateKeyPassword, and their text when it is
    known here (the program knows it; ./chi-persist init does not). The SSH login is
    chosen and checked against `environment` (SSH_AUTH_SOCK, HOME) unless
    `check_private_key` is False.
    """
    environment = os.environ if environment is None else environment
    values, problems = check_values(raw, stack)
    login = ssh_auth.Login(ssh_auth.KEY, "config")
    if check_private_key and values.get("sshAuth") is not None:
        chosen, login_problems = choose_login(
            values,
            environment,
            private_key_set=private_key_set,
            private_key_text=private_key_text,
            password_set=password_set,
            password=password,
            probe_agent=probe_agent,
        )
        problems.extend(login_problems)
        login = chosen or login
    if problems:
        raise SettingsError(problems)
    renew_window_seconds = _renew_window(values)

    return Settings(
        netid=values["netid"],
        key_pair=values["keyPair"],
        image=values["image"],
        flavor=values["flavor"],
        reservation=values["reservation"],
        network=values["network"],
        floating_ip_pool=values["floatingIpPool"],
        volume_size=values["volumeSize"],
        volume_type=values["volumeType"],
        allowed_cidrs=values["allowedCidrs"],
        existing_security_groups=values["existingSecurityGroups"] or (),
        mount_point=values["mountPoint"],
        ssh_private_key_path=values["sshPrivateKeyPath"],
        ssh_key_source=login.key_source if login.method == ssh_auth.KEY else "agent",
        ssh_send_password=login.send_password,
        ssh_notes=login.notes,
        existing_volume_id=values["existingVolumeId"],
        lease_duration=values["leaseDuration"],
        lease_duration_seconds=parse_duration(values["leaseDuration"]) or 0,
        lease_renew_window=format_duration(renew_window_seconds),
        lease_renew_window_seconds=renew_window_seconds,
        lease_cloud=values["leaseCloud"],
        stack=stack,
        platform_access=values["platformAccess"],
    )


def _renew_window(values: Mapping[str, Any]) -> int:
    """The renewal window in seconds: as set, or, when not set, the default cut to half the
    lease (a lease of 1h is renewed in its last 30m)."""
    duration = parse_duration(values.get("leaseDuration") or "") or 0
    if values.get("leaseRenewWindow") is None:
        return min(parse_duration(DEFAULT_LEASE_RENEW_WINDOW) or 0, duration // 2)
    return parse_duration(values["leaseRenewWindow"]) or 0


def _renewal_problems(values: Mapping[str, Any]) -> list[Problem]:
    """A renewal window longer than half the lease would renew each new lease at once."""
    window, duration = values.get("leaseRenewWindow"), values.get("leaseDuration")
    if window is None or duration is None or values.get("reservation") is not None:
        return []
    window_seconds = parse_duration(window) or 0
    duration_seconds = parse_duration(duration) or 0
    if window_seconds * 2 <= duration_seconds:
        return []
    half = format_duration(duration_seconds // 2)
    return [
        Problem(
            "leaseRenewWindow",
            window,
            f"is more than half of leaseDuration ({duration}): each new lease would begin "
            f"inside its own renewal window, and every `pulumi up` would renew it again",
            f"pulumi config set {NAMESPACE}:leaseRenewWindow {half}, or a longer "
            f"{NAMESPACE}:leaseDuration",
        )
    ]


def load(config: Any, stack: str, all_keys: Sequence[str] | None = None) -> Settings:
    """Read and validate the stack's config (a `pulumi.Config` for the project's namespace).

    `all_keys` are the full names of every config key the stack sets; keys of this
    project's namespace that it does not know (typos) are reported. By default they
    are read from the Pulumi runtime.
    """
    if all_keys is None:
        from pulumi.runtime.config import CONFIG

        all_keys = list(CONFIG.get())
    raw: dict[str, Any] = {
        key.split(":", 1)[1]: None
        for key in all_keys
        if key.startswith(f"{NAMESPACE}:") and key.split(":", 1)[1] not in CONFIG_KEYS
    }
    for name, spec in CONFIG_KEYS.items():
        if spec.secret:
            continue
        value = config.get(name)
        if value is not None:
            raw[name] = value
    # The secrets' text, to check the key's format and passphrase; it is never printed.
    key_text = config.get("sshPrivateKey") or None
    password = config.get("sshPrivateKeyPassword") or None
    return validate(
        raw,
        stack,
        private_key_set=key_text is not None,
        private_key_text=key_text,
        password_set=password is not None,
        password=password,
    )


def private_key(config: Any, settings: Settings) -> Any:
    """The key the provisioning commands log in with, as a secret; None means the ssh agent."""
    import pulumi

    if settings.ssh_key_source == "config":
        return config.require_secret("sshPrivateKey")
    if settings.ssh_key_source == "file":
        path = expand_key_path(settings.ssh_private_key_path)
        return pulumi.Output.secret(path.read_text())
    return None


def private_key_password(config: Any, settings: Settings) -> Any:
    """The key's passphrase, as a secret, when the key has one; else None (none is sent)."""
    if settings.ssh_send_password:
        return config.require_secret("sshPrivateKeyPassword")
    return None
