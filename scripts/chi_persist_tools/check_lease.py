"""The lease row of `chi-persist check`: when the stack's own KVM@TACC lease ends, read live
from Blazar when the OpenStack credentials are in the environment, and a warning near its end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from chi_persist_tools.check_location import Platform
from chi_persist_tools.check_services import CheckResult
from chi_persist_tools.command_line import span_text
from components.blazar import ENDED_STATUSES, ERROR, Blazar, LeaseError, parse_blazar_date

# A lease that ends within this is near its end: time enough to save work and choose
# between renewing it (the next lease, then the server moved onto it) and letting it end.
LEASE_WARNING_SECONDS = 3600
# The environment that holds the OpenStack credentials pulumi uses (OS_CLOUD with
# clouds.yaml, or an openrc's OS_AUTH_URL and the rest): the live lease is read only then.
OPENSTACK_CREDENTIAL_VARIABLES = ("OS_CLOUD", "OS_AUTH_URL")


@dataclass(frozen=True)
class LeaseView:
    """What is known of the stack's lease: from its outputs, or live from KVM@TACC."""

    lease_id: str
    end: datetime | None
    status: str | None = None
    """Blazar's status of the lease, when it was read live."""
    gone: bool = False
    """Blazar has no such lease any more."""
    live: bool = False
    note: str = ""
    """Why the live lease was not read, or what is wrong with the outputs."""
    ended: str | None = None
    """Why Blazar's lease will not serve again (read from its events), when read live."""
    serves: bool = False
    """Its flavor is the project's now, whatever its status (ERROR after a refused update)."""


def openstack_credentials_set(environ: dict[str, str]) -> bool:
    return any(environ.get(name) for name in OPENSTACK_CREDENTIAL_VARIABLES)


def read_lease(platform: Platform, environ: dict[str, str]) -> LeaseView:
    """The lease as the stack's outputs describe it, and as KVM@TACC's reservation service
    (Blazar) has it now when the OpenStack credentials are in the environment."""
    end = None
    note = ""
    if platform.lease_end:
        try:
            end = parse_blazar_date(platform.lease_end)
        except ValueError:
            note = f"the stack's output lease_end {platform.lease_end!r} is not a date"
    if not platform.lease_id:
        return LeaseView("", end, note=note or "the stack has no output lease_id")
    if not openstack_credentials_set(environ):
        return LeaseView(
            platform.lease_id,
            end,
            note=note
            or "the lease's end is the one the stack saw at its last `pulumi up`; to read it "
            "live from KVM@TACC, set OS_CLOUD (or source your openrc file) as for `pulumi up`",
        )
    try:
        # Blazar through a keystoneauth1 session of openstacksdk's config loader: the
        # credentials and calls of the stack's lease resource (components/lease.py).
        lease = Blazar().get_lease(platform.lease_id)
    except LeaseError as error:
        return LeaseView(platform.lease_id, end, note=f"the live lease was not read: {error}")
    except ImportError as error:
        return LeaseView(
            platform.lease_id,
            end,
            note=f"the live lease was not read: {error}; fix: `pip install -r "
            "requirements.txt` in the project's virtual environment",
        )
    if lease is None:
        return LeaseView(platform.lease_id, end, gone=True, live=True)
    now = datetime.now(timezone.utc)
    return LeaseView(
        platform.lease_id,
        lease.end,
        status=lease.status,
        live=True,
        ended=lease.ended_because(now),
        serves=lease.serves(now),
    )


def format_moment(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def lease_check(
    platform: Platform, lease: LeaseView, now: datetime
) -> tuple[CheckResult, list[str]]:
    """The lease's row, and the warnings that go with it (its end is near, it is in ERROR)."""
    name = "Lease is active"
    stack = f" --stack {platform.stack}" if platform.stack else ""
    up = f"pulumi up{stack}"
    after_the_end = (
        "KVM@TACC deletes the server at the lease's end (the platform stops without a clean "
        "stop); the volume and all its data stay"
    )
    new_lease = (
        f"fix: `{up}` makes a new lease and a new server, which mounts the same volume and "
        "starts the platform"
    )
    where = "" if lease.live else " (from the stack's outputs)"
    label = f"lease {lease.lease_id}" if lease.lease_id else "the lease"
    if lease.gone:
        detail = (
            f"{label} no longer exists at KVM@TACC: it ended or was deleted. {after_the_end}; "
            + new_lease
        )
        return CheckResult(name, False, detail), []
    if lease.end is None:
        detail = f"{lease.note or 'the stack has no output lease_end'}; fix: run `{up}`"
        return CheckResult(name, False, detail), []
    ends = format_moment(lease.end)
    state = f" is {lease.status}" if lease.status else ""
    if lease.status in ENDED_STATUSES or lease.end <= now:
        detail = f"{label}{state}: it ended at {ends}{where}. {after_the_end}; {new_lease}"
        return CheckResult(name, False, detail), []
    if lease.ended:
        detail = f"{label}{state}: {lease.ended}, so it serves no server. {new_lease}"
        return CheckResult(name, False, detail), []
    if lease.live and not lease.serves:
        detail = (
            f"{label}{state}, not ACTIVE yet: no server can boot from it until it is; "
            f"fix: wait a minute and run `{up}`"
        )
        return CheckResult(name, False, detail), []
    left = lease.end - now
    status = f" {lease.status}" if lease.status else ""
    detail = f"{label}{status}, ends {ends}, in {span_text(left)}{where}"
    warnings = []
    if lease.status == ERROR:
        warnings.append(
            f"{label} is ERROR, but its events say it started and has not ended: it still "
            f"serves, and the server keeps running until {ends}. Blazar puts a lease into ERROR "
            "when it refuses a change of it (it refuses every change of a flavor:instance "
            f"lease); nothing is lost, and `{up}` keeps the lease and renews it near its end"
        )
    if left.total_seconds() <= LEASE_WARNING_SECONDS:
        detail += ": soon"
        warnings.append(
            f"the lease ends in {span_text(left)}, at {ends}. {after_the_end}. To keep "
            f"working past it, renew it: `{up}` within the renewal window before the end "
            "(chi-persist:leaseRenewWindow, the last hour unless set) makes the next lease first, "
            "then moves the server onto it the clean way (the same volume and address, nothing "
            "formatted), then deletes this lease; if no host is free for the next lease, the "
            f"server keeps running until the end and `{up}` says so. Or stop cleanly now: "
            f"`./chi-persist recycle{stack} --end-lease`, then `{up}` later; or let it end and run "
            f"`{up}` afterwards. Blazar cannot extend this lease: a longer leaseDuration "
            "applies to the next one"
        )
    return CheckResult(name, True, detail), warnings
