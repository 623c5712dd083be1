"""The project's quotas, checked before anything is made: a `pulumi up` that would go over one
fails before anything exists, with the cause and the way out, not midway with the provider's."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from components import openstack_api
from components.access import PLATFORM_PORTS, ports_for
from components.settings import NAMESPACE, Settings

# The egress rules Neutron gives every new group (its default security group rule
# templates, used_in_non_default_sg: IPv4 and IPv6), which count against the rule quota.
# A class shares one Chameleon project, and so its quotas: OpenStack's defaults allow 10
# security groups (the project's default group counts), 100 rules, 10 instances, 20 cores,
# 50 GiB of RAM, 10 volumes and 1000 GiB.
# Three parts, kept apart: what a stack would add to the project (`demand_of`, from what
# the cloud already holds of it: what exists creates nothing), what the project has and may
# have (`read_limits`: Nova's /limits, Neutron's quota details, Cinder's quota set with
# usage, all readable by a project member), and the decision (`shortfalls`, pure). The
# program calls `check_quotas(settings, stack_demand(settings, volume_args))`; the
# instructor's `chi-persist class write` checks a whole roster with the same parts.
TEMPLATE_RULES = 2
# Quotas that hold for as long as a stack exists (kept across recycles), and those that
# hold only while a server exists (a server lives as long as its lease).
PERSISTENT = ("security_groups", "security_group_rules", "ports", "floating_ips", "volumes",
              "gigabytes")  # fmt: skip
CONCURRENT = ("instances", "cores", "ram_mib")


@dataclass(frozen=True)
class Demand:
    """What one `pulumi up` (or a roster of them) adds to the project, by quota."""

    instances: int = 0
    cores: int = 0
    ram_mib: int = 0
    security_groups: int = 0
    security_group_rules: int = 0
    ports: int = 0
    floating_ips: int = 0
    volumes: int = 0
    gigabytes: int = 0
    notes: tuple[str, ...] = field(default=(), compare=False)
    """What could not be counted, and why."""

    def __add__(self, other: Demand) -> Demand:
        summed = {name: getattr(self, name) + getattr(other, name) for name in QUOTA_NAMES}
        return Demand(**summed, notes=self.notes + other.notes)


QUOTA_NAMES = tuple(item.name for item in fields(Demand) if item.name != "notes")


@dataclass(frozen=True)
class Quota:
    """One quota of the project: its limit (-1: none) and what is used (in use + reserved)."""

    limit: int
    used: int


@dataclass(frozen=True)
class ProjectLimits:
    """The project's quotas by Demand field, and the services whose quotas could not be read."""

    quotas: Mapping[str, Quota]
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shortfall:
    """One quota the demand would go over."""

    name: str
    limit: int
    used: int
    needed: int

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


def shortfalls(limits: ProjectLimits, demand: Demand, names: Iterable[str] = QUOTA_NAMES):
    """Every quota among `names` the demand would go over: used + needed > limit (a limit of
    -1 is no limit, a quota that could not be read is not judged)."""
    found = []
    for name in names:
        needed = getattr(demand, name)
        quota = limits.quotas.get(name)
        if needed <= 0 or quota is None or quota.limit < 0:
            continue
        if quota.used + needed > quota.limit:
            found.append(Shortfall(name, quota.limit, quota.used, needed))
    return found


# --- what a stack adds -----------------------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    """What the project already has, by name: what a stack finds there, it does not make."""

    servers: frozenset[str] = frozenset()
    groups: Mapping[str, frozenset[tuple[int, str]]] = field(default_factory=dict)
    """Each group's TCP ingress rules, as (port, network)."""
    ports: Mapping[str, str] = field(default_factory=dict)
    """Port name to id."""
    floating_ports: frozenset[str] = frozenset()
    """Ids of the ports a floating IP points at."""
    volumes: Mapping[str, int] = field(default_factory=dict)
    """Volume name to size in GiB."""
    flavors: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Flavor name and id to (vCPUs, RAM MiB)."""


def demand_of(settings: Settings, holdings: Holdings, volume_now: int | None) -> Demand:
    """What this stack's `pulumi up` would add, given what exists: a server, a group with a
    rule per port and network, a port, a floating IP, a volume (`volume_now`: the size of the
    stack's volume when it exists, else None)."""
    notes: list[str] = []
    counts: dict[str, int] = {}
    if settings.server_name not in holdings.servers:
        counts["instances"] = 1
        flavor = settings.reservation or settings.flavor
        specs = holdings.flavors.get(flavor)
        if specs is None:
            notes.append(
                f"the flavor {flavor} is not visible to the project (a reservation not yet "
                "started?), so the server's cores and RAM were not counted"
            )
        else:
            counts["cores"], counts["ram_mib"] = specs
    if not settings.existing_security_groups:
        wanted = {
            (port, cidr)
            for port in ports_for(settings.platform_access).values()
            for cidr in settings.allowed_cidrs
        }
        existing = holdings.groups.get(settings.security_group_name)
        if existing is None:
            counts["security_groups"] = 1
            counts["security_group_rules"] = TEMPLATE_RULES + len(wanted)
        else:
            counts["security_group_rules"] = len(wanted - existing)
    port_id = holdings.ports.get(settings.server_name)
    if port_id is None:
        counts["ports"] = 1
    if port_id is None or port_id not in holdings.floating_ports:
        counts["floating_ips"] = 1
    if volume_now is None:
        counts["volumes"] = 1
        counts["gigabytes"] = settings.volume_size
    else:
        counts["gigabytes"] = max(0, settings.volume_size - volume_now)
    return Demand(**counts, notes=tuple(notes))


# --- reading the cloud -------------------------------------------------------------------------


class QuotasUnreadable(Exception):
    """The cloud could not say what the project holds; the message says why."""


class QuotaExceeded(Exception):
    """The demand would go over the project's quotas; the message has each quota and its fix."""


def _get(cloud: Any, service: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
    try:
        answer = cloud.call(service, "GET", path, **kwargs)
    except openstack_api.CloudUnavailable as error:
        raise QuotasUnreadable(f"{what}: {error}") from None
    if answer.status != 200:
        raise QuotasUnreadable(f"{what}: HTTP {answer.status}: {answer.error_message}")
    return answer.body


# Nova's /limits names (nova/api/openstack/compute/views/limits.py): (limit, used).
NOVA_LIMITS = {
    "instances": ("maxTotalInstances", "totalInstancesUsed"),
    "cores": ("maxTotalCores", "totalCoresUsed"),
    "ram_mib": ("maxTotalRAMSize", "totalRAMUsed"),
}
# Neutron's quota details (neutron/db/quota/driver.py get_detailed_project_quotas).
NEUTRON_QUOTAS = {
    "security_groups": "security_group",
    "security_group_rules": "security_group_rule",
    "ports": "port",
    "floating_ips": "floatingip",
}
# Cinder's quota set with usage (cinder/api/contrib/quotas.py).
CINDER_QUOTAS = {"volumes": "volumes", "gigabytes": "gigabytes"}


def read_limits(cloud: Any) -> ProjectLimits:
    """The project's quotas and usage from the three services; a service that cannot be read
    is named in `unread` and its quotas are left out."""
    quotas: dict[str, Quota] = {}
    unread: list[str] = []
    try:
        project = cloud.project_id()
    except openstack_api.CloudUnavailable as error:
        return ProjectLimits({}, (str(error),))
    try:
        absolute = _get(cloud, "compute", "/limits", "Nova's /limits")["limits"]["absolute"]
        for name, (limit, used) in NOVA_LIMITS.items():
            quotas[name] = Quota(int(absolute[limit]), int(absolute[used]))
    except (QuotasUnreadable, KeyError, TypeError, ValueError) as error:
        unread.append(_unread_text(error, "Nova's /limits"))
    try:
        path = f"/v2.0/quotas/{project}/details"
        details = _get(cloud, "network", path, "Neutron's quota details")["quota"]
        for name, key in NEUTRON_QUOTAS.items():
            entry = details[key]
            quotas[name] = Quota(int(entry["limit"]), int(entry["used"]) + int(entry["reserved"]))
    except (QuotasUnreadable, KeyError, TypeError, ValueError) as error:
        unread.append(_unread_text(error, "Neutron's quota details"))
    try:
        path = f"os-quota-sets/{project}"
        quota_set = _get(
            cloud, "block-storage", path, "Cinder's quota set", params={"usage": "true"}
        )["quota_set"]
        for name, key in CINDER_QUOTAS.items():
            entry = quota_set[key]
            used = int(entry["in_use"]) + int(entry.get("reserved", 0))
            quotas[name] = Quota(int(entry["limit"]), used)
    except (QuotasUnreadable, KeyError, TypeError, ValueError) as error:
        unread.append(_unread_text(error, "Cinder's quota set"))
    return ProjectLimits(quotas, tuple(unread))


def _unread_text(error: Exception, what: str) -> str:
    if isinstance(error, QuotasUnreadable):
        return str(error)
    return f"{what}: an answer without the expected fields ({type(error).__name__}: {error})"


def read_holdings(cloud: Any) -> Holdings:
    """What the project has, by name: servers, groups and their rules, ports, floating IPs,
    volumes, and the flavors it can see. Raises QuotasUnreadable."""
    servers = _get(cloud, "compute", "/servers", "Nova's servers")["servers"]
    flavors = _get(cloud, "compute", "/flavors/detail", "Nova's flavors")["flavors"]
    groups = _get(cloud, "network", "/v2.0/security-groups", "Neutron's security groups")
    ports = _get(cloud, "network", "/v2.0/ports", "Neutron's ports")["ports"]
    floating = _get(cloud, "network", "/v2.0/floatingips", "Neutron's floating IPs")
    volumes = _get(cloud, "block-storage", "volumes/detail", "Cinder's volumes")["volumes"]
    specs: dict[str, tuple[int, int]] = {}
    for flavor in flavors:
        pair = (int(flavor["vcpus"]), int(flavor["ram"]))
        specs[flavor["name"]] = specs[flavor["id"]] = pair
    return Holdings(
        servers=frozenset(server["name"] for server in servers),
        groups={
            group["name"]: frozenset(
                (int(rule["port_range_min"]), str(rule["remote_ip_prefix"]))
                for rule in group.get("security_group_rules", [])
                if rule["direction"] == "ingress"
                and rule.get("protocol") == "tcp"
                and rule.get("port_range_min") is not None
                and rule["port_range_min"] == rule.get("port_range_max")
            )
            for group in groups["security_groups"]
        },  # fmt: skip
        ports={port["name"]: port["id"] for port in ports if port.get("name")},
        floating_ports=frozenset(
            item["port_id"] for item in floating["floatingips"] if item.get("port_id")
        ),
        volumes={volume["name"]: int(volume["size"]) for volume in volumes if volume.get("name")},
        flavors=specs,
    )


@functools.cache
def _cloud() -> Any:
    """One session for the program's quota check (raises CloudUnavailable)."""
    return openstack_api.OpenStack()


# --- the program's check -----------------------------------------------------------------------


def stack_demand(settings: Settings, volume_args: Any) -> Demand | str:
    """What this `pulumi up` adds to the project: the stack's volume as plan_volume found it
    (an existing one creates nothing, a larger size only its growth), the rest from what the
    cloud holds. A text instead when the cloud could not say."""
    exists = volume_args.import_id is not None
    volume_now = (volume_args.current_size_gib or 0) if exists else None
    try:
        holdings = read_holdings(_cloud())
    except (openstack_api.CloudUnavailable, QuotasUnreadable) as error:
        return str(error)
    except (KeyError, TypeError, ValueError) as error:
        return f"an answer without the expected fields ({type(error).__name__}: {error})"
    return demand_of(settings, holdings, volume_now)


def check_quotas(settings: Settings, demand: Demand | str) -> None:
    """Refuse (QuotaExceeded) a `pulumi up` that would go over a quota, before anything is made.
    A cloud whose quotas cannot be read is no reason to stop: the check is skipped with a
    warning, and the services still enforce their quotas."""
    import pulumi

    if isinstance(demand, str):
        pulumi.log.warn(f"the project's quotas were not checked: {demand}")
        return
    try:
        limits = read_limits(_cloud())
    except openstack_api.CloudUnavailable as error:
        pulumi.log.warn(f"the project's quotas were not checked: {error}")
        return
    for unread in limits.unread:
        pulumi.log.warn(f"some of the project's quotas were not checked: {unread}")
    for note in demand.notes:
        pulumi.log.info(f"quota check: {note}")
    over = shortfalls(limits, demand)
    if over:
        raise QuotaExceeded(stack_report(over, settings))


# --- what to say ---------------------------------------------------------------------------------

LABELS = {
    "instances": "Nova instances (servers)",
    "cores": "Nova cores (vCPUs)",
    "ram_mib": "Nova RAM (MiB)",
    "security_groups": "Neutron security groups (the project's default group counts)",
    "security_group_rules": "Neutron security group rules",
    "ports": "Neutron ports",
    "floating_ips": "Neutron floating IPs",
    "volumes": "Cinder volumes",
    "gigabytes": "Cinder gigabytes (all volumes' sizes)",
}
ASK = "ask the instructor to have the project's quota raised (Chameleon's help desk)"
GROUP_LIST = "openstack security group list"


def stack_fix(name: str, settings: Settings) -> str:
    """The ways out for a student whose `pulumi up` would go over quota `name`."""
    shared = (
        f"use groups the project already has instead of one of your own (`{GROUP_LIST}`, "
        "e.g. the tutorial's allow-ssh, allow-8888, allow-8000, allow-9000, allow-9001): "
        f"pulumi config set --path '{NAMESPACE}:existingSecurityGroups[0]' allow-ssh, and "
        "[1], [2], ... for the others"
    )
    fixes = {
        "security_groups": [shared, ASK],
        "security_group_rules": [
            shared,
            f"open the ports to fewer networks ({NAMESPACE}:allowedCidrs has "
            f"{len(settings.allowed_cidrs)}; each adds "
            f"{len(ports_for(settings.platform_access))} rules)",
            ASK,
        ],
        "instances": [
            "fewer servers at once: the class's servers share the quota, and each goes with "
            "its lease; run pulumi up when a classmate's has ended (./chi-persist recycle --stack "
            "<netid> --end-lease ends one's own when done for the day)",
            ASK,
        ],
        "ports": [
            "remove ports nobody uses (openstack port list --device-owner ''; only those you "
            "are sure of)",
            ASK,
        ],
        "floating_ips": [
            "release floating IPs nobody uses (openstack floating ip list: those with no "
            "port; only those you are sure of)",
            ASK,
        ],
        "volumes": [
            "delete volumes nobody needs (openstack volume list; only those you are sure of)",
            ASK,
        ],
        "gigabytes": [
            f"a smaller volume (pulumi config set {NAMESPACE}:volumeSize <GiB>, now "
            f"{settings.volume_size})",
            "delete volumes nobody needs (openstack volume list; only those you are sure of)",
            ASK,
        ],
    }
    smaller = (
        f"a smaller flavor (pulumi config set {NAMESPACE}:flavor <name>, now {settings.flavor}; "
        "openstack flavor list shows their vCPUs and RAM)"
    )
    fixes["cores"] = [fixes["instances"][0], smaller, ASK]
    fixes["ram_mib"] = fixes["cores"]
    return "; or ".join(fixes[name])


def shortfall_line(shortfall: Shortfall, who: str, plural: bool = False) -> str:
    return (
        f"{LABELS[shortfall.name]}: {shortfall.used} of {shortfall.limit} in use, and {who} "
        f"need{'' if plural else 's'} {shortfall.needed} more ({shortfall.free} left)"
    )


def stack_report(over: list[Shortfall], settings: Settings) -> str:
    lines = [
        "pulumi up would go over the quotas of the Chameleon project, which the class shares; "
        "nothing was created or changed:"
    ]
    for shortfall in over:
        lines.append(
            f"  - {shortfall_line(shortfall, 'this stack')}. Fix: "
            f"{stack_fix(shortfall.name, settings)}; then pulumi up again"
        )
    return "\n".join(lines)


# --- a roster (./chi-persist class write) --------------------------------------------

ROSTER_FIXES = {
    "security_groups": (
        "share the project's groups instead of one per student: in the roster's defaults, "
        "existing_security_groups: [allow-ssh, allow-8888, allow-8000, allow-9000, "
        f"allow-9001] (groups the project has: `{GROUP_LIST}`)"
    ),
    "security_group_rules": (
        "share the project's groups (existing_security_groups in the roster's defaults), or "
        f"fewer allowed_cidrs (each network adds {len(PLATFORM_PORTS)} rules per student)"
    ),
    "ports": "remove ports nobody uses (openstack port list), or fewer students per project",
    "floating_ips": (
        "release floating IPs nobody uses (openstack floating ip list), or fewer students per "
        "project"
    ),
    "volumes": "delete volumes nobody needs (openstack volume list), or fewer students per project",
    "gigabytes": "a smaller volume_size in the roster (or its defaults)",
    "instances": (
        "fewer servers at once (each goes with its student's lease: ./chi-persist recycle --stack "
        "<netid> --end-lease when done for the day)"
    ),
    "cores": "a smaller flavor in the roster's defaults (flavor: <name>; openstack flavor list)",
}
ROSTER_FIXES["ram_mib"] = ROSTER_FIXES["cores"]
ROSTER_ASK = "or ask Chameleon's help desk to raise the project's quota"


def servers_at_once(limits: ProjectLimits, demands: list[Demand]) -> int:
    """How many of the servers these demands ask for fit the compute quotas at the same time
    (the smallest first)."""
    wanted = sorted((d for d in demands if d.instances), key=lambda d: (d.cores, d.ram_mib))
    total = Demand()
    fitting = 0
    for demand in wanted:
        total = total + Demand(instances=1, cores=demand.cores, ram_mib=demand.ram_mib)
        if shortfalls(limits, total, CONCURRENT):
            break
        fitting += 1
    return fitting


def roster_check(limits: ProjectLimits, demands: list[Demand]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a roster's stacks against the project's quotas: a persistent
    quota (groups, rules, ports, floating IPs, volumes, gigabytes) gone over is a problem; the
    compute quotas only limit how many servers run at once, which is a warning."""
    total = Demand()
    for demand in demands:
        total = total + demand
    stacks = sum(1 for demand in demands if demand != Demand())
    who = f"the roster's {stacks} new stack{'s' if stacks != 1 else ''}"
    problems = [
        f"{shortfall_line(shortfall, who, plural=stacks != 1)}; fix: "
        f"{ROSTER_FIXES[shortfall.name]}, {ROSTER_ASK}"
        for shortfall in shortfalls(limits, total, PERSISTENT)
    ]
    warnings = []
    over = shortfalls(limits, total, CONCURRENT)
    if over:
        servers = sum(demand.instances for demand in demands)
        fitting = servers_at_once(limits, demands)
        names = ", ".join(LABELS[shortfall.name] for shortfall in over)
        warnings.append(
            f"{names}: if all {servers} new servers run at once they need more than the project "
            f"has; at most {fitting} can run at the same time. "
            + "; ".join(
                f"{LABELS[s.name]}: {s.used} of {s.limit} in use, {s.needed} needed" for s in over
            )
            + ". Fix, if they must run together: "
            + "; or ".join(dict.fromkeys(ROSTER_FIXES[shortfall.name] for shortfall in over))
            + f"; {ROSTER_ASK}"
        )
    return problems, warnings
