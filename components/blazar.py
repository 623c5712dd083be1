"""KVM@TACC's reservation service (Blazar), as the stack's lease and tools ask it."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from components.openstack_api import CloudUnavailable, OpenStack, Response

# Service types in the catalog.
BLAZAR = "reservation"
NOVA = "compute"
KEYSTONE = "identity"

# Lease statuses (blazar/status.py, LeaseStatus).
PENDING = "PENDING"
STARTING = "STARTING"
ACTIVE = "ACTIVE"
UPDATING = "UPDATING"
TERMINATING = "TERMINATING"
TERMINATED = "TERMINATED"
DELETING = "DELETING"
ERROR = "ERROR"
# A lease in one of these is ending, has ended or is going away: it will not serve again.
ENDED_STATUSES = (TERMINATING, TERMINATED, DELETING)
# Event types and statuses (blazar/status.py, EventStatus; the manager's create_lease makes
# one start_lease, one end_lease and one before_end_lease event per lease).
START_LEASE = "start_lease"
END_LEASE = "end_lease"
UNDONE = "UNDONE"
IN_PROGRESS = "IN_PROGRESS"
DONE = "DONE"
EVENT_ERROR = "ERROR"
# Blazar's date format for start_date and end_date in requests (blazar/manager/service.py,
# LEASE_DATE_FORMAT), always UTC.
REQUEST_DATE_FORMAT = "%Y-%m-%d %H:%M"
# What NotEnoughHostsAvailable says (blazar/manager/exceptions.py); Blazar surfaces it as an
# HTTP 500.
NO_CAPACITY = "Not enough hosts available"
# blazar/exceptions.py InvalidStatus: the lease_status decorator's refusal of a transition,
# e.g. a DELETE while the manager is still deleting the lease (DELETING -> DELETING).
INVALID_STATUS = "Invalid lease status"
# What keystone/api/trusts.py says when it refuses a trust operation to an application
# credential's token: "Using method 'application_credential' is not allowed for managing
# trusts." (keystone 29.0.2, _check_application_credential, CVE-2026-43000's fix; before it,
# TrustResourceBase._check_unrestricted said so to a restricted one only), or "Delegated
# tokens cannot manage trusts." (keystone 29.1.0 and later, _check_delegated_token).
TRUST_REFUSED = ("not allowed for managing trusts", "cannot manage trusts")
# One DELETE may wait for Blazar's manager up to its RPC timeout (oslo.messaging's
# rpc_response_timeout, 60 s by default); a little longer, so Blazar's own answer arrives.
DELETE_CALL_SECONDS = 90


class LeaseError(Exception):
    """Something the student can fix: the message says what happened and how."""


# --- dates ---------------------------------------------------------------------------------


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_blazar_date(text: str) -> datetime.datetime:
    """A date as Blazar renders it (`2026-11-10T12:00:00.000000`, UTC without a zone), or
    as the lease resource stores it (`2026-11-10T12:00:00Z`)."""
    value = text.strip().replace(" ", "T")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def iso_utc(moment: datetime.datetime) -> str:
    """ISO 8601 in UTC, to the second: 2026-11-10T12:00:00Z."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_date(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime(REQUEST_DATE_FORMAT)


def lease_request(name: str, flavor_id: str, end: datetime.datetime) -> dict[str, Any]:
    """A new lease's body: one flavor:instance reservation of `flavor_id`, from now to `end`.

    blazar/api/v1/leases/v1_0.py (leases_create) and blazar/manager/service.py
    (create_lease); the reservation's keys are the flavor plugin's
    (blazar/plugins/flavor/flavor_plugin.py), `affinity` required even when null.
    """
    return {
        "name": name,
        "start_date": "now",
        "end_date": request_date(end),
        "events": [],
        "before_end_date": None,
        "reservations": [
            {
                "resource_type": "flavor:instance",
                "flavor_id": flavor_id,
                "amount": 1,
                "affinity": None,
            }
        ],
    }


def moment_text(moment: datetime.datetime) -> str:
    """A moment for a student to read: 2026-11-10 12:00 UTC."""
    return f"{moment.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


# --- a lease -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlazarLease:
    """A lease as GET /v1/leases/{id} renders it (blazar/db/sqlalchemy/models.py, Lease.to_dict)."""

    id: str
    name: str
    status: str
    start: datetime.datetime
    end: datetime.datetime
    events: dict[str, str] = field(default_factory=dict)
    """Each event type's status: start_lease, end_lease, before_end_lease."""
    reservations: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> BlazarLease:
        events: dict[str, str] = {}
        for event in body.get("events") or []:
            kind = str(event.get("event_type", ""))
            # One event of each type (the manager's create_lease); the first, as
            # blazar/status.py reads them (event_get_first_sorted_by_filters).
            events.setdefault(kind, str(event.get("status", "")))
        return cls(
            id=str(body["id"]),
            name=str(body.get("name", "")),
            status=str(body.get("status", "")),
            start=parse_blazar_date(str(body["start_date"])),
            end=parse_blazar_date(str(body["end_date"])),
            events=events,
            reservations=tuple(body.get("reservations") or ()),
            body=body,
        )

    def event(self, kind: str) -> str | None:
        return self.events.get(kind)

    @property
    def flavor_reservations(self) -> list[dict[str, Any]]:
        return [r for r in self.reservations if r.get("resource_type") == "flavor:instance"]

    def ended_because(self, now: datetime.datetime) -> str | None:
        """Why the lease will never serve its flavor again, or None while it serves (or is
        still starting).

        blazar/status.py derives a lease's status from its start_lease and end_lease events
        (derive_stable_status): (DONE, UNDONE) is a lease that serves. A lease whose update
        was refused goes to ERROR (LeaseStatus.lease_status) with those events unchanged,
        and still serves; one whose start failed has start_lease ERROR and never served.
        """
        if self.status in ENDED_STATUSES:
            return f"it is {self.status}"
        if self.end <= now:
            return f"its end, {moment_text(self.end)}, has passed"
        start, end = self.event(START_LEASE), self.event(END_LEASE)
        if end is not None and end != UNDONE:
            return f"its end_lease event is {end}"
        if start == EVENT_ERROR:
            return "its start_lease event is ERROR: it never started"
        if self.status == ERROR and start != DONE:
            started = "has no start_lease event" if start is None else f"start_lease is {start}"
            return f"it is ERROR and {started}: it never started"
        return None

    def serves(self, now: datetime.datetime) -> bool:
        """Its reservation's flavor is the project's now: started, not ended, whatever its
        status (ACTIVE, or ERROR after a refused update, or UPDATING)."""
        if self.ended_because(now) is not None:
            return False
        start = self.event(START_LEASE)
        if start is None:
            return self.status == ACTIVE
        return start == DONE


# --- the client ------------------------------------------------------------------------------


# One client (`Blazar`) over one session of `components/openstack_api.OpenStack`: Nova's flavor
# lookup, every lease of the project, one lease with its events, a lease made or deleted, and
# Keystone's answer about trusts. `BlazarLease` is a lease as Blazar renders it, with the one
# rule this project depends on: whether it still serves its flavor, read from its events, not
# from its status alone. Request and response shapes are Blazar's (openstack/blazar 17.0.0:
# blazar/api/v1/leases/v1_0.py, blazar/manager/service.py, blazar/plugins/flavor/flavor_plugin.py,
# blazar/status.py, blazar/db/sqlalchemy/models.py).
class Blazar:
    """Blazar, Nova's flavors and Keystone's trusts through one session: the stack's
    credentials, or the clouds.yaml entry `cloud` (the leaseCloud setting)."""

    def __init__(self, cloud: str | None = None) -> None:
        self.cloud = cloud or None
        try:
            self.api = OpenStack(cloud=self.cloud)
        except CloudUnavailable as error:
            if self.cloud:
                raise LeaseError(
                    f"chi-persist:leaseCloud = {self.cloud!r}: that clouds.yaml entry could not "
                    f"be used: {error}. Fix: `openstack --os-cloud {self.cloud} token issue` "
                    f"shows what is wrong with it; or `pulumi config rm chi-persist:leaseCloud` "
                    f"to make leases with the stack's own credentials"
                ) from None
            raise LeaseError(f"the lease cannot reach the cloud: {error}") from None

    def call(self, service_type: str, method: str, path: str, **kwargs: Any) -> Response:
        try:
            return self.api.call(service_type, method, path, **kwargs)
        except CloudUnavailable as error:
            raise LeaseError(str(error)) from None

    def application_credential(self) -> dict[str, Any]:
        """The token's application credential ({} for a password or OIDC login)."""
        return self.api.application_credential()

    def identity(self) -> tuple[str | None, str | None]:
        """(user id, project id) of the session's token, None where it cannot be read."""
        session = self.api.session
        try:
            return session.get_user_id(), session.get_project_id()
        except Exception:  # the call that needs them reports the cause
            return None, None

    # --- Nova ------------------------------------------------------------------------------

    def flavor_id(self, name: str) -> str:
        """The id of the flavor called `name` (Nova lists flavors; names are matched here)."""
        answer = self.call(NOVA, "GET", "/flavors/detail")
        if answer.status != 200:
            raise LeaseError(
                f"could not list the cloud's flavors to find {name!r} (HTTP {answer.status}: "
                f"{answer.error_message}). Fix: check the credentials, then `pulumi up` again"
            )
        flavors = answer.body.get("flavors", [])
        matches = [flavor["id"] for flavor in flavors if flavor.get("name") == name]
        if len(matches) != 1:
            known = sorted(
                str(flavor.get("name"))
                for flavor in flavors
                if not str(flavor.get("name", "")).startswith("reservation:")
            )
            found = "no flavor" if not matches else f"{len(matches)} flavors"
            raise LeaseError(
                f"chi-persist:flavor = {name!r}: the cloud has {found} of that name, so "
                f"there is nothing to reserve (flavors: {', '.join(known) or 'none listed'}). "
                f"Fix: `openstack flavor list` shows them; then "
                f"`pulumi config set chi-persist:flavor <name>`"
            )
        return matches[0]

    # --- Blazar ----------------------------------------------------------------------------

    def list_leases(self) -> list[BlazarLease]:
        """Every lease of the project (blazar/api/v1/leases/service.py get_leases)."""
        answer = self.call(BLAZAR, "GET", "/leases")
        if answer.status != 200 or not isinstance(answer.body.get("leases"), list):
            raise LeaseError(
                f"could not list the project's leases (HTTP {answer.status}: "
                f"{answer.error_message}). Fix: check the credentials, then try again"
            )
        return [BlazarLease.from_body(body) for body in answer.body["leases"]]

    def get_lease(self, lease_id: str) -> BlazarLease | None:
        """The lease with its events, or None when Blazar no longer has it (404)."""
        answer = self.call(BLAZAR, "GET", f"/leases/{lease_id}")
        if answer.status == 404:
            return None
        if answer.status != 200 or "lease" not in answer.body:
            raise LeaseError(
                f"could not read lease {lease_id} (HTTP {answer.status}: "
                f"{answer.error_message}). Fix: check the credentials, then `pulumi up` again"
            )
        return BlazarLease.from_body(answer.body["lease"])

    def lease_of_reservation(self, reservation_id: str) -> BlazarLease | None:
        """The project's lease that holds the reservation (a reserved flavor's id), if any."""
        for lease in self.list_leases():
            if any(r.get("id") == reservation_id for r in lease.reservations):
                return lease
        return None

    def create_lease(self, name: str, flavor_id: str, end: datetime.datetime) -> Response:
        """POST /v1/leases with `lease_request`'s body."""
        body = lease_request(name, flavor_id, end)
        return self.call(BLAZAR, "POST", "/leases", json=body)

    def request_delete(self, lease_id: str) -> Response | None:
        """DELETE /v1/leases/{id}; None when no answer came in time (the manager may still be
        deleting: blazar/manager/service.py delete_lease waits for the servers to go)."""
        try:
            return self.api.call(
                BLAZAR, "DELETE", f"/leases/{lease_id}", timeout=DELETE_CALL_SECONDS
            )
        except CloudUnavailable:
            return None

    # --- Keystone --------------------------------------------------------------------------

    def trust_refusal(self) -> str | None:
        """Keystone's refusal of trusts to this session's token, or None if it allows them.

        Blazar makes a trust with the user's own token for every lease
        (blazar/utils/trusts.py create_trust) and hides Keystone's refusal behind an HTTP
        500 "Internal Server Error" (blazar/api/v1/utils.py, Rest.route). Listing the
        user's own trusts is refused the same way by a Keystone with CVE-2026-43000's fix
        (keystone/api/trusts.py, TrustsResource.get) and changes nothing; before the fix it
        is allowed, restricted credential or not.
        """
        user_id, _ = self.identity()
        if not user_id:
            return None
        try:
            answer = self.api.call(
                KEYSTONE, "GET", "/OS-TRUST/trusts", params={"trustor_user_id": user_id}
            )
        except CloudUnavailable:
            return None
        if answer.status == 403 and any(text in answer.error_message for text in TRUST_REFUSED):
            return answer.error_message
        return None


# --- deleting ------------------------------------------------------------------------------


def delete_until_gone(
    client: Blazar,
    lease_id: str,
    label: str,
    timeout_seconds: float,
    poll_seconds: float,
    say: Callable[[str], None] = lambda _message: None,
) -> None:
    """Delete the lease and wait, bounded, until Blazar no longer has it.

    Blazar's DELETE is a synchronous RPC to the manager, which ends the lease first and
    waits for the servers on its flavor to go (blazar/manager/service.py delete_lease;
    blazar/plugins/instances/instance_plugin.py _check_server_deletion, up to 10 minutes).
    Past the RPC timeout the API answers 500 while the manager goes on, and a DELETE
    meanwhile is refused with "Invalid lease status" (blazar/status.py: DELETING cannot
    start again): so an answer of 5xx is followed by GETs, not a failure. A lease the
    manager failed to delete (ERROR) is asked again; one that has ended (TERMINATED: its
    servers and flavor are gone) and is still refused is left, with a warning.
    """
    deadline = time.monotonic() + timeout_seconds
    answer = client.request_delete(lease_id)
    seen = _delete_answer(answer)
    if answer is not None and answer.status == 404:
        return
    if answer is not None and answer.status < 500 and not _refused_while_deleting(answer):
        if answer.status not in (200, 202, 204):
            raise LeaseError(
                f"could not delete {label} (HTTP {answer.status}: {answer.error_message}). "
                f"Fix: `pulumi up` or `pulumi destroy` again; "
                f"`openstack reservation lease delete {lease_id}` deletes it by hand"
            )
    else:
        say(
            f"{label}: Blazar answered {seen} to the delete; it goes on deleting (the servers "
            f"on its flavor first): waiting until the lease is gone"
        )
    while True:
        lease = client.get_lease(lease_id)
        if lease is None:
            return
        if time.monotonic() > deadline:
            raise LeaseError(
                f"{label} was still {lease.status} {timeout_seconds:.0f} s after it was "
                f"deleted ({seen}). Fix: `pulumi up` again (it deletes it again); "
                f"`openstack reservation lease show {lease_id}` shows it"
            )
        if lease.status not in (DELETING, TERMINATING):
            # The manager is not deleting it (its delete failed, or never reached it): ask
            # again. An ended lease holds no server and no flavor any more.
            again = client.request_delete(lease_id)
            if again is not None and again.status == 404:
                return
            if (
                again is not None
                and 400 <= again.status < 500
                and not _refused_while_deleting(again)
            ):
                if lease.status == TERMINATED:
                    say(
                        f"{label} has ended (TERMINATED: no server and no flavor left) but "
                        f"Blazar refuses to delete it (HTTP {again.status}: "
                        f"{again.error_message}); it is left as it is. "
                        f"`openstack reservation lease delete {lease_id}` deletes it by hand"
                    )
                    return
                raise LeaseError(
                    f"could not delete {label}, which is {lease.status} (HTTP {again.status}: "
                    f"{again.error_message}). Fix: `pulumi up` or `pulumi destroy` again; "
                    f"`openstack reservation lease delete {lease_id}` deletes it by hand"
                )
            seen = _delete_answer(again)
        time.sleep(poll_seconds)


def _delete_answer(answer: Response | None) -> str:
    if answer is None:
        return f"nothing within {DELETE_CALL_SECONDS} s"
    return f"HTTP {answer.status}" + (f": {answer.error_message}" if answer.status >= 400 else "")


def _refused_while_deleting(answer: Response) -> bool:
    return INVALID_STATUS.lower() in answer.error_message.lower()


def serving_leases(leases: Iterable[BlazarLease], name: str, now: datetime.datetime) -> list:
    """The leases called `name` that serve their flavor now (Blazar allows duplicate names:
    blazar/db/migration/alembic_migrations/versions/6bfd1c23aa18_allow_duplicate_lease_names.py)."""
    return [lease for lease in leases if lease.name == name and lease.serves(now)]
