"""The stack's own KVM@TACC lease: one Blazar lease of one reserved flavor, as a Pulumi resource.

KVM@TACC boots servers only from a reserved flavor. `Lease` makes a Blazar lease named
`lease-persist-<netid>` with one `flavor:instance` reservation of the configured flavor,
starting now and lasting the configured duration, and waits until it is ACTIVE: the
reservation's id is then the id of a private flavor the server boots. A lease that has
ended (Blazar then has deleted the server and the flavor) is replaced by the next
`pulumi up`, and through the new reservation id the server is replaced too.

It is a dynamic resource: its provider (`LeaseProvider`) is serialised with the program
and runs in the engine's Python provider process. It reaches the cloud with the same
credentials as the OpenStack provider (`OS_CLOUD` and clouds.yaml, or the `OS_*`
variables), loaded by openstacksdk's config loader into a keystoneauth1 session.
Request and response shapes are Blazar's (openstack/blazar: blazar/api/v1/leases/v1_0.py,
blazar/manager/service.py, blazar/plugins/flavor/flavor_plugin.py, blazar/status.py).
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pulumi
import pulumi.dynamic

from components.openstack_api import CloudUnavailable, OpenStack, Response

# A lease asked to start "now" is started by Blazar's periodic event task, usually within a
# minute or two; this is how long `pulumi up` waits for ACTIVE before giving up.
ACTIVE_TIMEOUT_SECONDS = 600
# How long a deleted lease may take to disappear (Blazar ends it first: servers, flavor).
DELETE_TIMEOUT_SECONDS = 300
POLL_SECONDS = 5.0
# Service types in the catalog.
BLAZAR = "reservation"
NOVA = "compute"

# Lease statuses, blazar/status.py (LeaseStatus).
ACTIVE = "ACTIVE"
ERROR = "ERROR"
# A lease in one of these will never serve a server again.
ENDED_STATUSES = ("TERMINATING", "TERMINATED", "ERROR", "DELETING")
# Blazar's date format for start_date and end_date in requests (blazar/manager/service.py,
# LEASE_DATE_FORMAT), always UTC.
REQUEST_DATE_FORMAT = "%Y-%m-%d %H:%M"
# What NotEnoughHostsAvailable says (blazar/manager/exceptions.py); Blazar surfaces it as
# an HTTP 500.
NO_CAPACITY = "Not enough hosts available"

F = TypeVar("F", bound=Callable[..., Any])


class LeaseError(Exception):
    """Something the student can fix: the message says what happened and how."""


def _user_errors(method: F) -> F:
    """Report a LeaseError as its message alone, without a Python traceback.

    The provider process renders any exception with `traceback.format_exc()`, which
    honours `sys.tracebacklimit`: 0 leaves only the exception's line.
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sys.__dict__.pop("tracebacklimit", None)
        try:
            return method(*args, **kwargs)
        except LeaseError:
            sys.tracebacklimit = 0
            raise

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper  # type: ignore[return-value]


# --- dates ---------------------------------------------------------------------------------


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def parse_blazar_date(text: str) -> datetime.datetime:
    """A date as Blazar renders it (`2026-11-10T12:00:00.000000`, UTC without a zone), or
    as this resource stores it (`2026-11-10T12:00:00Z`)."""
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


def _duration_text(seconds: int) -> str:
    minutes = int(seconds) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    text = (f"{days}d" if days else "") + (f"{hours}h" if hours else "")
    return text + (f"{minutes}m" if minutes else "") or "0m"


# --- the cloud -----------------------------------------------------------------------------


class Cloud:
    """Blazar and Nova through one session of the stack's credentials (openstack_api)."""

    def __init__(self) -> None:
        try:
            self.api = OpenStack()
        except CloudUnavailable as error:
            raise LeaseError(f"the lease cannot reach the cloud: {error}") from None

    def call(self, service_type: str, method: str, path: str, **kwargs: Any) -> Response:
        try:
            return self.api.call(service_type, method, path, **kwargs)
        except CloudUnavailable as error:
            raise LeaseError(str(error)) from None

    def application_credential(self) -> dict[str, Any]:
        return self.api.application_credential()

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

    def get_lease(self, lease_id: str) -> dict[str, Any] | None:
        """The lease, or None when Blazar no longer has it (404)."""
        answer = self.call(BLAZAR, "GET", f"/leases/{lease_id}")
        if answer.status == 404:
            return None
        if answer.status != 200 or "lease" not in answer.body:
            raise LeaseError(
                f"could not read lease {lease_id} (HTTP {answer.status}: "
                f"{answer.error_message}). Fix: check the credentials, then `pulumi up` again"
            )
        return answer.body["lease"]


# --- the provider ----------------------------------------------------------------------------

INPUTS = ("name", "flavor_name", "duration_seconds", "lease_duration")


class LeaseProvider(pulumi.dynamic.ResourceProvider):
    """Create, read, update, diff and delete a Blazar lease of one reserved flavor."""

    def __init__(
        self,
        stack: str = "<stack>",
        active_timeout_seconds: float = ACTIVE_TIMEOUT_SECONDS,
        delete_timeout_seconds: float = DELETE_TIMEOUT_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        super().__init__()
        self.stack = stack
        self.active_timeout_seconds = active_timeout_seconds
        self.delete_timeout_seconds = delete_timeout_seconds
        self.poll_seconds = poll_seconds

    def cloud(self) -> Cloud:
        return Cloud()

    # --- create ----------------------------------------------------------------------------

    @_user_errors
    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        cloud = self.cloud()
        adopted = self._adopt(cloud, props)
        if adopted is not None:
            return pulumi.dynamic.CreateResult(adopted["id"], self._outputs(adopted, props))
        flavor_name = props["flavor_name"]
        duration = int(props["duration_seconds"])
        flavor_id = cloud.flavor_id(flavor_name)
        end = utc_now() + datetime.timedelta(seconds=duration)
        # blazar/api/v1/leases/v1_0.py (POST /v1/leases) and blazar/manager/service.py
        # (create_lease); the flavor:instance reservation's keys are the flavor plugin's
        # (blazar/plugins/flavor/flavor_plugin.py), `affinity` required even when null.
        body = {
            "name": props["name"],
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
        answer = cloud.call(BLAZAR, "POST", "/leases", json=body)
        if answer.status not in (200, 201) or "lease" not in answer.body:
            raise self._create_refused(cloud, answer, props)
        lease = answer.body["lease"]
        lease = self._wait_until_active(cloud, lease, props)
        return pulumi.dynamic.CreateResult(lease["id"], self._outputs(lease, props))

    def _adopt(self, cloud: Cloud, props: dict[str, Any]) -> dict[str, Any] | None:
        """The lease the program found with this stack's name (an interrupted `pulumi up`, or
        another machine, made it), once ACTIVE; None to make a new one."""
        lease_id = props.get("adopt_id")
        if not lease_id:
            return None
        lease = cloud.get_lease(lease_id)
        if lease is None or lease.get("name") != props["name"]:
            return None
        from components.cloud_inventory import LEASE_STARTING, lease_serves

        if not lease_serves(lease):
            return None
        pulumi.log.info(f"lease {props['name']} ({lease_id}): adopted, {lease.get('status')}")
        if lease.get("status") in LEASE_STARTING:
            return self._wait_until_active(cloud, lease, props)
        return lease

    def _create_refused(self, cloud: Cloud, answer: Response, props: dict[str, Any]) -> LeaseError:
        message = answer.error_message
        what = (
            f"KVM@TACC refused the lease {props['name']} of flavor {props['flavor_name']!r} "
            f"for {props['lease_duration']}"
        )
        if NO_CAPACITY.lower() in message.lower():
            return LeaseError(
                f"{what}: no capacity (HTTP {answer.status}: {message}): every host that "
                f"can run that flavor is reserved for that time. Fix: a shorter lease "
                f"(`pulumi config set chi-persist:leaseDuration 4h`), another flavor "
                f"(`pulumi config set chi-persist:flavor m1.medium`), or `pulumi up` later"
            )
        credential = cloud.application_credential()
        mentions_trust = "trust" in message.lower() or "application_credential" in message
        if credential.get("restricted") and (answer.status in (401, 403, 500) or mentions_trust):
            name = credential.get("name") or credential.get("id") or "in use"
            return LeaseError(
                f"{what}: Blazar could not make the trust it needs, because the application "
                f"credential {name!r} is restricted (HTTP {answer.status}: {message}). A "
                f"restricted credential may not create trusts. Fix: create an unrestricted "
                f"one (Horizon: Identity > Application Credentials > Create, tick "
                f"'Unrestricted'; or `openstack application credential create --unrestricted "
                f"<name>`), put it in clouds.yaml or your openrc file, and `pulumi up` again"
            )
        if mentions_trust:
            return LeaseError(
                f"{what}: Blazar could not make the trust it needs (HTTP {answer.status}: "
                f"{message}). Fix: use an unrestricted application credential (Horizon: "
                f"Identity > Application Credentials > Create, tick 'Unrestricted')"
            )
        return LeaseError(
            f"{what} (HTTP {answer.status}: {message}). Fix: correct what Blazar names, "
            f"or `pulumi up` again; the stack made no lease"
        )

    def _wait_until_active(
        self, cloud: Cloud, lease: dict[str, Any], props: dict[str, Any]
    ) -> dict[str, Any]:
        lease_id = lease["id"]
        deadline = time.monotonic() + self.active_timeout_seconds
        status = lease.get("status", "")
        pulumi.log.info(f"lease {props['name']} ({lease_id}): {status}")
        while True:
            if status == ACTIVE:
                return lease
            if status in ENDED_STATUSES:
                self._discard(cloud, lease_id)
                raise LeaseError(
                    f"lease {lease_id} ({props['name']}, flavor {props['flavor_name']!r}) went "
                    f"to {status} instead of ACTIVE: Blazar could not start the reservation. "
                    f"The lease was deleted, so nothing is held. Fix: `pulumi up` again; if it "
                    f"fails the same way, try another flavor "
                    f"(`pulumi config set chi-persist:flavor <name>`) or ask Chameleon's help "
                    f"desk about lease {lease_id}"
                )
            if time.monotonic() > deadline:
                self._discard(cloud, lease_id)
                raise LeaseError(
                    f"lease {lease_id} ({props['name']}) was still {status} after "
                    f"{self.active_timeout_seconds:.0f} s, not ACTIVE. It was deleted, so "
                    f"nothing is held. Fix: `pulumi up` again later; if it stays {status}, "
                    f"ask Chameleon's help desk about lease {lease_id}"
                )
            time.sleep(self.poll_seconds)
            current = cloud.get_lease(lease_id)
            if current is None:
                raise LeaseError(
                    f"lease {lease_id} ({props['name']}) disappeared while it was {status}: "
                    f"someone deleted it. Fix: `pulumi up` again makes a new one"
                )
            if current.get("status") != status:
                status = current.get("status", "")
                pulumi.log.info(f"lease {props['name']} ({lease_id}): {status}")
            lease = current

    def _discard(self, cloud: Cloud, lease_id: str) -> None:
        """Delete a lease that will not serve (best effort: the error that follows matters)."""
        with contextlib.suppress(LeaseError):
            cloud.call(BLAZAR, "DELETE", f"/leases/{lease_id}")

    def _outputs(self, lease: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
        reservations = [
            reservation
            for reservation in lease.get("reservations", [])
            if reservation.get("resource_type") == "flavor:instance"
        ]
        if len(reservations) != 1:
            raise LeaseError(
                f"lease {lease.get('id')} holds {len(reservations)} flavor:instance "
                f"reservations, not one; it is not the stack's. Fix: "
                f"`pulumi state delete` the lease and `pulumi up` again"
            )
        return {
            **{key: props[key] for key in INPUTS},
            "lease_id": lease["id"],
            # The reserved flavor's id is the reservation's id (flavor plugin,
            # _create_flavor: 'flavorid': reservation_id).
            "reservation_id": reservations[0]["id"],
            "status": lease.get("status", ""),
            "start_date": iso_utc(parse_blazar_date(lease["start_date"])),
            "end_date": iso_utc(parse_blazar_date(lease["end_date"])),
        }

    # --- read ------------------------------------------------------------------------------

    @_user_errors
    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        lease = self.cloud().get_lease(id_)
        if lease is None:
            # Gone: an empty id tells the engine the resource no longer exists.
            return pulumi.dynamic.ReadResult("", {})
        current = {key: props.get(key) for key in INPUTS}
        current["name"] = lease.get("name", current["name"])
        outputs = {**props, **self._outputs(lease, current)}
        outputs.pop("__provider", None)
        return pulumi.dynamic.ReadResult(id_, outputs)

    # --- diff ------------------------------------------------------------------------------

    @_user_errors
    def diff(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        replaces = [key for key in ("name", "flavor_name") if olds.get(key) != news.get(key)]
        if not replaces and self.has_ended(id_, olds):
            # Blazar has deleted the server and the flavor: the next lease is a new one,
            # and its new reservation id replaces the server.
            replaces = ["status"]
        changed = bool(replaces) or any(olds.get(key) != news.get(key) for key in INPUTS)
        return pulumi.dynamic.DiffResult(
            changes=changed,
            replaces=replaces,
            # A replaced lease goes first: the project holds one reservation at a time, and
            # its server (which boots the old reservation's flavor) is deleted before it.
            delete_before_replace=True,
        )

    def has_ended(self, id_: str, olds: dict[str, Any]) -> bool:
        """Blazar no longer has the lease, it is ending or ended, or its end date is past."""
        lease = self.cloud().get_lease(id_)
        if lease is None:
            return True
        if lease.get("status") in ENDED_STATUSES:
            return True
        end = lease.get("end_date") or olds.get("end_date")
        return bool(end) and parse_blazar_date(end) <= utc_now()

    # --- update ----------------------------------------------------------------------------

    @_user_errors
    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        cloud = self.cloud()
        lease = cloud.get_lease(id_)
        if lease is None:
            raise LeaseError(
                f"lease {id_} ({olds.get('name')}) no longer exists, so its end cannot "
                f"change. Fix: `pulumi up` again: it makes a new lease"
            )
        if int(news["duration_seconds"]) != int(olds["duration_seconds"]):
            lease = self._change_end(cloud, id_, lease, olds, news)
        return pulumi.dynamic.UpdateResult(self._outputs(lease, news))

    def _change_end(
        self,
        cloud: Cloud,
        id_: str,
        lease: dict[str, Any],
        olds: dict[str, Any],
        news: dict[str, Any],
    ) -> dict[str, Any]:
        start = parse_blazar_date(lease["start_date"])
        end = start + datetime.timedelta(seconds=int(news["duration_seconds"]))
        old_end = iso_utc(parse_blazar_date(lease["end_date"]))
        new_text = news["lease_duration"]
        old_text = olds.get("lease_duration") or _duration_text(int(olds["duration_seconds"]))
        keep = f"`pulumi config set chi-persist:leaseDuration {old_text}`"
        recycle = (
            f"`scripts/recycle --stack {self.stack} --end-lease --yes`, then `pulumi up` "
            f"makes a new lease of {new_text}"
        )
        if end <= utc_now() + datetime.timedelta(minutes=5):
            raise LeaseError(
                f"chi-persist:leaseDuration = {new_text!r}: lease {id_} started at "
                f"{iso_utc(start)}, so it would end at {iso_utc(end)}, which is past or "
                f"minutes away. Fix: a longer duration, {keep} to keep the end at {old_end}, "
                f"or end it now: {recycle}"
            )
        # blazar/manager/service.py, update_lease: a new end_date in Blazar's format.
        answer = cloud.call(BLAZAR, "PUT", f"/leases/{id_}", json={"end_date": request_date(end)})
        if answer.status != 200 or "lease" not in answer.body:
            raise LeaseError(
                f"KVM@TACC refused to move the end of lease {id_} ({olds.get('name')}) from "
                f"{old_end} to {iso_utc(end)} for chi-persist:leaseDuration = {new_text!r} "
                f"(HTTP {answer.status}: {answer.error_message}). The lease is unchanged and "
                f"still ends at {old_end}. Fix: {keep}, or end this lease and make one of "
                f"the new length: {recycle} (the volume and its data are kept)"
            )
        lease = answer.body["lease"]
        deadline = time.monotonic() + self.active_timeout_seconds
        while lease.get("status") == "UPDATING" and time.monotonic() < deadline:
            time.sleep(self.poll_seconds)
            lease = cloud.get_lease(id_) or lease
        return lease

    # --- delete ----------------------------------------------------------------------------

    @_user_errors
    def delete(self, id_: str, props: dict[str, Any]) -> None:
        cloud = self.cloud()
        answer = cloud.call(BLAZAR, "DELETE", f"/leases/{id_}")
        if answer.status == 404:
            return
        if answer.status not in (200, 202, 204):
            raise LeaseError(
                f"could not delete lease {id_} ({props.get('name')}) (HTTP {answer.status}: "
                f"{answer.error_message}). Fix: `pulumi up` or `pulumi destroy` again; "
                f"`openstack reservation lease delete {id_}` deletes it by hand"
            )
        deadline = time.monotonic() + self.delete_timeout_seconds
        while True:
            lease = cloud.get_lease(id_)
            if lease is None:
                return
            if time.monotonic() > deadline:
                raise LeaseError(
                    f"lease {id_} ({props.get('name')}) was still {lease.get('status')} "
                    f"{self.delete_timeout_seconds:.0f} s after it was deleted. Fix: "
                    f"`pulumi up` again; `openstack reservation lease show {id_}` shows it"
                )
            time.sleep(self.poll_seconds)


# --- the resource ----------------------------------------------------------------------------


@dataclass
class LeaseArgs:
    name: str
    """Blazar lease name, lease-persist-<netid>."""
    flavor_name: str
    """The flavor to reserve, by name."""
    duration_seconds: int
    """How long the lease lasts from its start."""
    lease_duration: str
    """The same duration as the student wrote it (leaseDuration), for messages."""
    adopt_id: str | None = None
    """A lease of this stack's name that the state does not hold: the create takes it."""


class Lease(pulumi.dynamic.Resource):
    """A Blazar lease of one `flavor:instance` reservation; `reservation_id` is the flavor id
    the server boots."""

    lease_id: pulumi.Output[str]
    reservation_id: pulumi.Output[str]
    status: pulumi.Output[str]
    start_date: pulumi.Output[str]
    end_date: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: LeaseArgs,
        opts: pulumi.ResourceOptions | None = None,
        provider: LeaseProvider | None = None,
    ) -> None:
        super().__init__(
            provider or LeaseProvider(stack=pulumi.get_stack()),
            name,
            {
                "name": args.name,
                "flavor_name": args.flavor_name,
                "duration_seconds": int(args.duration_seconds),
                "lease_duration": args.lease_duration,
                # Read by create only; a new value is no change (it is not in INPUTS).
                "adopt_id": args.adopt_id,
                "lease_id": None,
                "reservation_id": None,
                "status": None,
                "start_date": None,
                "end_date": None,
            },
            pulumi.ResourceOptions.merge(
                opts,
                # One reservation at a time: a replaced lease (new flavor, or ended) is
                # deleted before the next is made, after the server that boots its flavor.
                pulumi.ResourceOptions(delete_before_replace=True),
            ),
        )
