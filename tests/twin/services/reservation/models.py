"""Blazar's leases of `flavor:instance` reservations, and what their start and end do to Nova.

Upstream Blazar's own code decides here wherever it can run
(tests/twin/services/reservation/upstream.py):
every status transition runs inside blazar/status.py's `LeaseStatus.lease_status` decorator
(the status while it runs, ERROR on any exception not in its non-fatal list, the stable
status derived from the start_lease and end_lease events after it); an update is the
manager's own `update_lease` (blazar/manager/service.py), which refuses every change of a
flavor:instance lease but a new name, and so puts it into ERROR; a new lease is checked by
the manager's and the flavor plugin's own checks (`validate_params`, `_parse_lease_dates`,
`_check_date_within_lease_limits`, `FlavorPlugin._validate_reservation_params`), with
Blazar's exceptions and codes. What the twin models is what those checks and transitions
act on: the trust Keystone must grant (blazar/utils/trusts.py create_trust), the hosts
(a capacity per flavor instead of Placement), and the plugin's start and end (the reserved
flavor made and removed, the servers on it deleted as Nova deletes them).

A lease goes CREATING (the create call answers PENDING, blazar/manager/service.py
create_lease), PENDING until its start date, STARTING while the reservation's flavor is
opened to the project, then ACTIVE (or ERROR when the start fails); at its end date, or when
the twin's admin API ends it, TERMINATING while every server booted from the reservation's
flavor is deleted, then the flavor, then TERMINATED. DELETE ends a lease that has not ended
the same way, then removes it (DELETING). The manager's DELETE is a synchronous RPC: past
the RPC timeout (`blazar_rpc_timeout_seconds`) the API answers 500 while the manager goes on,
and a second DELETE meanwhile is refused with "Invalid lease status." (DELETING -> DELETING
is not a valid transition).

The reservation's flavor (flavor_plugin.py _create_flavor): id = the reservation's id, name
`reservation:<id>`, the reserved flavor's vCPUs, RAM, disk and ephemeral disk, private, with
the reservation's extra specs. Upstream makes it private at creation and grants the project
access at the start (instances/instance_plugin.py on_start); a private flavor the project
cannot use is invisible to it, so here it exists in Nova only from the start to the end.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tests.twin.services.core import IdentityError, ReservationError
from tests.twin.services.reservation import upstream
from tests.twin.services.reservation.upstream import (
    MANAGER,
    BlazarException,
    EventStatus,
    LeaseStatus,
    aware,
    naive,
    rendered,
)
from tests.twin.services.state import new_hex_id, new_uuid, now, parse_stamp, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

with upstream.warnings.catch_warnings():
    upstream.warnings.simplefilter("ignore")
    from blazar.plugins.flavor.flavor_plugin import FlavorPlugin
    from oslo_utils import strutils

RESOURCE_TYPE = "flavor:instance"  # blazar/plugins/flavor/__init__.py
RESERVATION_PREFIX = "reservation"  # blazar/plugins/instances/instance_plugin.py
MINUTES_BEFORE_END = 60  # [manager] minutes_before_end_lease's default
SERVER_DELETION_SECONDS = 600  # instance_plugin.py INSTANCE_DELETION_TIMEOUT
# Leases that hold their reservation's capacity (blazar/status.py: stable or on the way).
HOLDING = ("PENDING", "STARTING", "ACTIVE", "UPDATING", "ERROR")
# The flavor plugin's own checks of one reservation's parameters (amount, and the keys it
# needs), without its __init__ (no Nova or Placement client).
FLAVOR_PLUGIN = FlavorPlugin.__new__(FlavorPlugin)
# What the twin says instead of Keystone's own refusal (keystone/api/trusts.py).
TRUST_REFUSED = (
    "You are not authorized to perform the requested action: Using method "
    "'application_credential' is not allowed for managing trusts."
)


def internal_error() -> ReservationError:
    """What blazar/api/v1/utils.py answers for any exception that is not Blazar's own
    (Rest.route: internal_error(500, 'Internal Server Error', e))."""
    return ReservationError(500, "Internal Server Error", "INTERNAL_SERVER_ERROR")


def lease_not_found(lease_id: str) -> ReservationError:
    """blazar/api/v1/validation.py check_exists: NotFound(object={'lease_id': ...})."""
    return ReservationError(404, f"Object with {{'lease_id': {lease_id!r}}} not found")


class DeleteCall:
    """One DELETE as the API's RPC call sees it: the manager started (its transition to
    DELETING was accepted) or refused, and finished, with the exception it raised if any."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.started = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None


class ReservationBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state
        upstream.install(self)

    @property
    def leases(self) -> dict[str, Any]:
        return self.state.collection("leases")

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        self.state.data.setdefault("leases", {})

    def recover(self) -> None:
        """The twin restarted: finish what the manager was doing when it stopped, and derive
        the lease's status as blazar/status.py does after a transition."""
        for lease in list(self.leases.values()):
            lease_id = lease["id"]
            if lease["status"] == "STARTING":
                self.cloud.jobs.submit(f"lease-{lease_id}", lambda i=lease_id: self._recover(i))
            elif lease["status"] == "TERMINATING":
                self.cloud.jobs.submit(
                    f"lease-{lease_id}", lambda i=lease_id: self._recover(i, ending=True)
                )
            elif lease["status"] == "DELETING":
                self.cloud.jobs.submit(
                    f"lease-{lease_id}", lambda i=lease_id: self._recover(i, deleting=True)
                )

    def _recover(self, lease_id: str, ending: bool = False, deleting: bool = False) -> None:
        with self.state.lock:
            if deleting:
                self._delete_body(lease_id)
                return
            if ending:
                self._end_body(lease_id)
            else:
                self._start_body(lease_id)
            lease = self.leases.get(lease_id)
            if lease is not None:
                self.set_status(lease, LeaseStatus.derive_stable_status(lease_id), "recovered")
                self.state.save()

    @contextmanager
    def _unlocked(self) -> Iterator[None]:
        """Let go of the state's lock, held once by this job, while it waits for other jobs
        (a manager's transition holds it from its check to its end, as one DB transaction
        would; the wait for servers to go must not)."""
        self.state.lock.release()
        try:
            yield
        finally:
            self.state.lock.acquire()

    # --- lookups -------------------------------------------------------------------------

    def get(self, lease_id: str) -> dict[str, Any]:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise lease_not_found(lease_id)
        return lease

    # Upstream: blazar/api/v1/leases/service.py API.get_leases.
    def of_project(self, project_id: str) -> list[dict[str, Any]]:
        return [lease for lease in self.leases.values() if lease["project_id"] == project_id]

    def event(self, lease: dict[str, Any], event_type: str) -> dict[str, Any]:
        return next(event for event in lease["events"] if event["event_type"] == event_type)

    @staticmethod
    def date(value: str) -> datetime:
        return parse_stamp(value)

    def set_status(self, lease: dict[str, Any], status: str, detail: str = "") -> None:
        """What blazar.db.api lease_update({'status': ...}) does, with the change logged."""
        before = lease["status"]
        lease["status"] = status
        lease["updated_at"] = stamp()
        self.cloud.record(
            "reservation",
            lease_id=lease["id"],
            action="status",
            detail=f"{before} -> {status}" + (f": {detail}" if detail else ""),
        )

    def rename(self, lease: dict[str, Any], name: str) -> None:
        lease["name"] = name
        lease["updated_at"] = stamp()
        self.cloud.record("reservation", lease_id=lease["id"], action="rename")

    def _set_event(self, lease: dict[str, Any], event_type: str, status: str) -> None:
        event = self.event(lease, event_type)
        event["status"] = status
        event["updated_at"] = stamp()

    def reserved(
        self, flavor_id: str, start: datetime, end: datetime, exclude: str | None = None
    ) -> int:
        """Instances of `flavor_id` reserved by other leases at some time in [start, end]."""
        total = 0
        for lease in self.leases.values():
            if lease["id"] == exclude or lease["status"] not in HOLDING:
                continue
            if self.event(lease, "end_lease")["status"] != EventStatus.UNDONE:
                continue
            if parse_stamp(lease["end_date"]) < start or parse_stamp(lease["start_date"]) > end:
                continue
            total += sum(
                reservation["amount"]
                for reservation in lease["reservations"]
                if reservation["source_flavor_id"] == flavor_id
            )
        return total

    # --- create ----------------------------------------------------------------------------

    def _make_trust(self, token: dict[str, Any]) -> str:
        """blazar/utils/trusts.py create_trust, before anything else of the create
        (blazar/api/v1/leases/service.py: @trusts.use_trust_auth()): Keystone may refuse it,
        and its error is not a Blazar exception, so the API obfuscates it."""
        try:
            return self.cloud.identity.create_trust(token, trustee="blazar")
        except IdentityError as error:
            self.cloud.record(
                "reservation", action="trust", outcome="error", detail=f"Keystone: {error.message}"
            )
            raise internal_error() from None

    # Upstream: blazar/plugins/flavor/flavor_plugin.py FlavorPlugin._get_flavor_details.
    def _source_flavor(self, flavor_id: Any) -> dict[str, Any]:
        """The flavor to reserve, as novaclient's flavors.get(id).to_dict() plus extra_specs
        (flavor_plugin.py _get_flavor_details)."""
        flavor = self.cloud.compute.flavors.get(str(flavor_id))
        if flavor is None:
            # novaclient's NotFound passed back from the manager as blazar's NotFound (404).
            raise ReservationError(
                404,
                f"Flavor {flavor_id} could not be found. (HTTP 404) (Request-ID: req-{new_uuid()})",
            )
        return flavor

    # Upstream: blazar/plugins/flavor/flavor_plugin.py:
    #   FlavorPlugin._validate_reservation_params
    #   FlavorPlugin._pick_hosts
    def _pick_hosts(
        self, values: dict[str, Any], start: datetime, end: datetime
    ) -> tuple[dict[str, Any], int]:
        """flavor_plugin.py _pick_hosts for one reservation: (the flavor, the amount). The
        parameters are checked by the plugin's own code; hosts are a capacity per flavor."""
        reservation = {**values, "start_date": naive(start), "end_date": naive(end)}
        FLAVOR_PLUGIN._validate_reservation_params(reservation)
        amount = reservation["amount"]
        flavor = self._source_flavor(reservation["flavor_id"])
        affinity = strutils.bool_from_string(reservation["affinity"], default=None)
        capacity = self.cloud.config["lease_capacity"]
        held = self.reserved(flavor["id"], start, end)
        if held + amount > capacity:
            self.cloud.record(
                "reservation",
                action="capacity",
                outcome="refused",
                detail=f"flavor {flavor['name']}: {held} of {capacity} reserved, {amount} asked",
            )
            raise upstream.NotEnoughHostsAvailable()
        if affinity is not None:
            raise upstream.manager_exceptions.NotImplemented(error="Affinity not supported yet")
        return flavor, amount

    def create(self, values: Any, token: dict[str, Any]) -> dict[str, Any]:
        """blazar/api/v1/leases/service.py create_lease, then the manager's create_lease."""
        if not isinstance(values, dict):
            raise internal_error()  # use_trust_auth cannot add trust_id to it
        trust_id = self._make_trust(token)
        try:
            return self._create(dict(values), token, trust_id)
        except BlazarException as error:
            raise rendered(error) from None
        except (TypeError, KeyError, AttributeError):
            # The manager's own code failing on a malformed value: not a Blazar exception.
            raise internal_error() from None

    # Upstream: blazar/manager/service.py:
    #   ManagerService.validate_params
    #   ManagerService._parse_lease_dates
    #   ManagerService._allocation_candidates
    def _create(self, values: dict[str, Any], token: dict[str, Any], trust_id: str) -> dict:
        MANAGER.validate_params(values, ["name", "start_date", "end_date"])
        events = values.pop("events", [])
        requested = values.pop("reservations", [])
        if not isinstance(requested, list) or not all(isinstance(r, dict) for r in requested):
            raise internal_error()
        for reservation in requested:
            MANAGER.validate_params(reservation, ["resource_type"])
        if events:
            raise ReservationError(
                501,
                "The twin does not create leases with events of their own.",
                "NOT_IMPLEMENTED_ERROR",
            )
        start, end, moment = MANAGER._parse_lease_dates(values["start_date"], values["end_date"])
        if start < moment:
            raise upstream.InvalidInput("Start date must be later than current date")
        if end <= start:
            raise upstream.InvalidInput("End date must be later than start date.")
        start, end = aware(start), aware(end)
        picked = []
        for reservation in requested:
            if reservation["resource_type"] != RESOURCE_TYPE:
                # _allocation_candidates: only the flavor plugin is configured.
                raise upstream.UnsupportedResourceType(resource_type=reservation["resource_type"])
            picked.append(self._pick_hosts(reservation, start, end))
        before_end = self._before_end(values.get("before_end_date"), start, end)
        return self._record(values, token, trust_id, start, end, before_end, picked)

    # Upstream: blazar/manager/service.py ManagerService._update_before_end_event_date.
    def _before_end(self, value: Any, start: datetime, end: datetime) -> datetime:
        """The manager's create_lease: a given before_end_date, checked within the lease, or
        minutes_before_end_lease before the end, never before the start."""
        limits = {"start_date": naive(start), "end_date": naive(end)}
        if value:
            moment = MANAGER._date_from_string(value)
            MANAGER._check_date_within_lease_limits(moment, limits)
        else:
            moment = naive(end) - timedelta(minutes=MINUTES_BEFORE_END)
        event: dict[str, Any] = {}
        MANAGER._update_before_end_event_date(event, moment, limits)
        return aware(event["time"])

    # Upstream: blazar/manager/service.py ManagerService.create_lease.
    # Upstream: blazar/db/migration/alembic_migrations/versions/
    #   6bfd1c23aa18_allow_duplicate_lease_names.py:
    #   upgrade
    def _record(
        self,
        values: dict[str, Any],
        token: dict[str, Any],
        trust_id: str,
        start: datetime,
        end: datetime,
        before_end: datetime,
        picked: list[tuple[dict[str, Any], int]],
    ) -> dict[str, Any]:
        lease_id = new_uuid()
        moment = stamp()
        lease: dict[str, Any] = {
            "id": lease_id,
            "name": values["name"],
            "user_id": token["user_id"],
            "project_id": token["project_id"],
            "start_date": stamp(start),
            "end_date": stamp(end),
            "trust_id": trust_id,
            "status": "CREATING",
            "degraded": False,
            "created_at": moment,
            "updated_at": None,
            "reservations": [],
            "events": [],
            "start_fails": False,
        }
        for flavor, amount in picked:
            reservation_id = new_uuid()
            source = {
                "id": flavor["id"],
                "name": flavor["name"],
                "ram": flavor["ram"],
                "disk": flavor["disk"],
                "swap": flavor["swap"] or "",
                "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral"],
                "OS-FLV-DISABLED:disabled": False,
                "vcpus": flavor["vcpus"],
                "os-flavor-access:is_public": flavor["is_public"],
                "rxtx_factor": flavor["rxtx_factor"],
                "extra_specs": dict(flavor["extra_specs"]),
            }
            lease["reservations"].append(
                {
                    "id": reservation_id,
                    "lease_id": lease_id,
                    "resource_id": new_uuid(),
                    "resource_type": RESOURCE_TYPE,
                    "status": "pending",
                    "missing_resources": False,
                    "resources_changed": False,
                    "created_at": moment,
                    "updated_at": None,
                    "vcpus": flavor["vcpus"],
                    "memory_mb": flavor["ram"],
                    "disk_gb": flavor["disk"],
                    "amount": amount,
                    "affinity": None,
                    # The reserved flavor's id: the reservation's own (_create_resources).
                    "flavor_id": reservation_id,
                    "aggregate_id": self._next_aggregate_id(),
                    "server_group_id": None,
                    "resource_properties": json.dumps(source),
                    "source_flavor_id": flavor["id"],
                }
            )
        for event_type, time_ in (
            ("start_lease", start),
            ("end_lease", end),
            ("before_end_lease", before_end),
        ):
            lease["events"].append(
                {
                    "id": new_uuid(),
                    "lease_id": lease_id,
                    "event_type": event_type,
                    "time": stamp(time_),
                    "status": EventStatus.UNDONE,
                    "created_at": moment,
                    "updated_at": None,
                }
            )
        if self.cloud.config["next_lease_error"]:
            lease["start_fails"] = True
            self.cloud.config["next_lease_error"] = False
            self.cloud.record(
                "reservation",
                lease_id=lease_id,
                action="next_lease_error",
                detail="this lease goes to ERROR at its start",
            )
        self.leases[lease_id] = lease
        self.cloud.record("reservation", lease_id=lease_id, action="create", name=lease["name"])
        self.set_status(lease, "PENDING")
        return lease

    def _next_aggregate_id(self) -> int:
        self.state.data["aggregate_sequence"] = self.state.data.get("aggregate_sequence", 0) + 1
        return self.state.data["aggregate_sequence"]

    # --- update ----------------------------------------------------------------------------

    # Upstream: blazar/manager/service.py:
    #   ManagerService.update_lease
    #   ManagerService._handle_resource_type_exception
    def update(self, lease: dict[str, Any], values: Any) -> dict[str, Any]:
        """The manager's update_lease, upstream's own: a new name alone is kept; any other
        change of a flavor:instance lease is refused (409) and, being no non-fatal exception
        of its lease_status decorator, leaves the lease in ERROR."""
        if not isinstance(values, dict):
            raise internal_error()
        try:
            MANAGER.update_lease(lease_id=lease["id"], values=dict(values))
        except BlazarException as error:
            self.cloud.record(
                "reservation",
                lease_id=lease["id"],
                action="update",
                outcome="refused",
                detail=str(error),
            )
            raise rendered(error) from None
        return lease

    # --- what moves in time ----------------------------------------------------------------

    # Upstream: blazar/manager/service.py ManagerService._process_events_concurrently.
    def tick(self) -> None:
        """The manager's event loop (_process_events): events whose time came, of leases
        whose status is stable, are set IN_PROGRESS and run."""
        moment = now()
        delay = timedelta(seconds=self.cloud.config["lease_start_seconds"])
        with self.state.lock:
            for lease in list(self.leases.values()):
                if not LeaseStatus.is_stable(lease["id"]):
                    continue
                start = self.event(lease, "start_lease")
                end = self.event(lease, "end_lease")
                before_end = self.event(lease, "before_end_lease")
                if (
                    start["status"] == EventStatus.UNDONE
                    and moment
                    >= max(parse_stamp(start["time"]), parse_stamp(lease["created_at"])) + delay
                ):
                    self._set_event(lease, "start_lease", EventStatus.IN_PROGRESS)
                    self.cloud.jobs.submit(f"lease-{lease['id']}", self._job_start(lease["id"]))
                    self.state.save()
                elif end["status"] == EventStatus.UNDONE and moment >= parse_stamp(end["time"]):
                    self.end(lease, reason="end date")
                    self.state.save()
                elif (
                    start["status"] == EventStatus.DONE
                    and before_end["status"] == EventStatus.UNDONE
                    and moment >= parse_stamp(before_end["time"])
                ):
                    # before_end_lease: no decorator; the flavor plugin does nothing then.
                    self._set_event(lease, "before_end_lease", EventStatus.DONE)
                    self.cloud.record(
                        "reservation", lease_id=lease["id"], action="before_end_lease"
                    )

    def _job_start(self, lease_id: str) -> Any:
        def run() -> None:
            self._run_event(self._start_lease, lease_id)

        return run

    # Upstream: blazar/manager/service.py ManagerService._exec_event.
    def _run_event(self, event_function: Any, lease_id: str) -> None:
        """The manager's _exec_event: a refused transition or any failure marks the event
        ERROR (after its retries, which the twin does not wait for)."""
        try:
            with self.state.lock:
                event_function(lease_id=lease_id)
        except Exception as error:
            with self.state.lock:
                lease = self.leases.get(lease_id)
                if lease is not None:
                    for event in lease["events"]:
                        if event["status"] == EventStatus.IN_PROGRESS:
                            event["status"] = EventStatus.ERROR
                    self.cloud.record(
                        "reservation",
                        lease_id=lease_id,
                        action="event",
                        outcome="error",
                        detail=f"{type(error).__name__}: {error}",
                    )
                    self.state.save()

    @LeaseStatus.lease_status(
        transition=LeaseStatus.STARTING, result_in=(LeaseStatus.ACTIVE, LeaseStatus.ERROR)
    )
    def _start_lease(self, lease_id: str) -> None:
        """The manager's start_lease, in upstream's decorator; the plugin's on_start modelled."""
        self._start_body(lease_id)

    # Upstream: blazar/manager/service.py ManagerService._basic_action.
    # Upstream: blazar/plugins/instances/instance_plugin.py VirtualInstancePlugin.on_start.
    def _start_body(self, lease_id: str) -> None:
        """_basic_action(on_start): each reservation's flavor opened, or its error; the event
        DONE, or ERROR when a reservation failed."""
        with self.state.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return
            status = EventStatus.DONE
            for reservation in lease["reservations"]:
                if lease["start_fails"]:
                    # the plugin's on_start raised a Blazar exception (EventError)
                    reservation["status"] = "error"
                    status = EventStatus.ERROR
                else:
                    self._open_flavor(reservation)
                    reservation["status"] = "active"
                reservation["updated_at"] = stamp()
            self._set_event(lease, "start_lease", status)
            self.state.save()

    # Upstream: blazar/plugins/flavor/flavor_plugin.py FlavorPlugin._create_flavor.
    def _open_flavor(self, reservation: dict[str, Any]) -> None:
        """flavor_plugin.py _create_flavor, visible to the project from on_start."""
        source = json.loads(reservation["resource_properties"])
        reservation_id = reservation["id"]
        extra_specs = dict(source["extra_specs"])
        extra_specs[f"aggregate_instance_extra_specs:{RESERVATION_PREFIX}"] = reservation_id
        extra_specs[f"resources:CUSTOM_RESERVATION_{reservation_id.upper().replace('-', '_')}"] = (
            "1"
        )
        self.cloud.compute.flavors[reservation_id] = {
            "id": reservation_id,
            "name": f"{RESERVATION_PREFIX}:{reservation_id}",
            "vcpus": source["vcpus"],
            "ram": source["ram"],
            "disk": source["disk"],
            "swap": 0,
            "ephemeral": source["OS-FLV-EXT-DATA:ephemeral"],
            "rxtx_factor": 1.0,
            "is_public": False,
            "description": None,
            "extra_specs": extra_specs,
        }
        self.cloud.record(
            "reservation", reservation_id=reservation_id, action="flavor", detail="created"
        )

    # --- the end -------------------------------------------------------------------------------

    def end(self, lease: dict[str, Any], reason: str) -> str:
        """The end_lease event (at the end date, or now through the admin API): IN_PROGRESS,
        then the manager's end_lease; the job's key."""
        self.cloud.record("reservation", lease_id=lease["id"], action="end", reason=reason)
        self._set_event(lease, "end_lease", EventStatus.IN_PROGRESS)
        key = f"lease-{lease['id']}"
        lease_id = lease["id"]
        self.cloud.jobs.submit(key, lambda: self._run_event(self._end_lease, lease_id))
        return key

    # Upstream: blazar/manager/service.py ManagerService.end_lease.
    @LeaseStatus.lease_status(
        transition=LeaseStatus.TERMINATING,
        result_in=(LeaseStatus.TERMINATED, LeaseStatus.ERROR),
    )
    def _end_lease(self, lease_id: str) -> None:
        """The manager's end_lease, in upstream's decorator; the plugin's on_end modelled."""
        self._end_body(lease_id)

    # Upstream: blazar/plugins/instances/instance_plugin.py:
    #   VirtualInstancePlugin._check_server_deletion
    def _end_body(self, lease_id: str) -> None:
        """_basic_action(on_end): the servers on each flavor deleted (instance_plugin.py
        on_end), then the flavor; a reservation whose servers outlive the wait is in error,
        and so is the event (ServerDeletionTimeout is a Blazar exception _basic_action
        catches)."""
        left = self._delete_servers(lease_id)
        with self.state.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return
            self._close_reservations(lease, failed=bool(left))
            self._set_event(lease, "end_lease", EventStatus.ERROR if left else EventStatus.DONE)
            self.state.save()

    # Upstream: blazar/plugins/instances/instance_plugin.py VirtualInstancePlugin.on_end.
    def _delete_servers(self, lease_id: str) -> list[str]:
        """instance_plugin.py on_end for the reservations not yet deleted: every server on
        their flavors deleted as Nova deletes it, waited for (outside the state's lock);
        the ids of those still there after the wait."""
        cloud = self.cloud
        compute = cloud.compute
        with self.state.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return []
            flavor_ids = {
                reservation["id"]
                for reservation in lease["reservations"]
                if reservation["status"] != "deleted"
            }
            doomed = [
                server for server in compute.servers.values()
                if server["flavor"]["id"] in flavor_ids
            ]  # fmt: skip
            for server in doomed:
                cloud.record(
                    "reservation", lease_id=lease_id, action="delete_server", server_id=server["id"]
                )
                compute.delete_server(server, reason="lease end")
            self.state.save()
        with self._unlocked():
            # How long Nova takes beyond the machine driver (a twin setting; 0 by default).
            time.sleep(cloud.config["lease_server_deletion_seconds"])
            for server in doomed:
                cloud.jobs.wait(server["id"], timeout=SERVER_DELETION_SECONDS)
        with self.state.lock:
            return [server["id"] for server in doomed if server["id"] in compute.servers]

    def _close_reservations(self, lease: dict[str, Any], failed: bool) -> None:
        compute = self.cloud.compute
        for reservation in lease["reservations"]:
            if reservation["status"] == "deleted":
                continue
            if failed:
                reservation["status"] = "error"
            else:
                if compute.flavors.pop(reservation["id"], None) is not None:
                    self.cloud.record(
                        "reservation",
                        reservation_id=reservation["id"],
                        action="flavor",
                        detail="deleted",
                    )
                reservation["status"] = "deleted"
            reservation["updated_at"] = stamp()

    # --- delete ----------------------------------------------------------------------------

    def delete(self, lease: dict[str, Any]) -> DeleteCall:
        """The API's delete_lease: a synchronous RPC to the manager's delete_lease, which runs
        in a job here; the caller waits for it as long as the RPC timeout allows."""
        lease_id = lease["id"]
        # A queue of its own: a DELETE while another runs is refused by the decorator at once.
        call = DeleteCall(f"lease-{lease_id}-delete-{new_hex_id()}")

        def run() -> None:
            try:
                with self.state.lock:
                    self._delete_lease(lease_id=lease_id, call=call)
            except BaseException as error:
                call.error = error
            finally:
                call.done.set()

        self.cloud.jobs.submit(call.key, run)
        return call

    # Upstream: blazar/status.py LeaseStatus.is_valid_transition.
    @LeaseStatus.lease_status(transition=LeaseStatus.DELETING, result_in=(LeaseStatus.ERROR,))
    def _delete_lease(self, lease_id: str, call: DeleteCall) -> None:
        """The manager's delete_lease, in upstream's decorator (a lease that is not destroyed
        ends in ERROR); ending the lease and removing it are modelled."""
        call.started.set()
        self._delete_body(lease_id)

    # Upstream: blazar/manager/service.py ManagerService.delete_lease.
    def _delete_body(self, lease_id: str) -> None:
        with self.state.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return
            started = self.event(lease, "start_lease")["status"] != EventStatus.UNDONE
            ended = self.event(lease, "end_lease")["status"] != EventStatus.UNDONE
            if started and not ended:
                self._set_event(lease, "end_lease", EventStatus.IN_PROGRESS)
                self.state.save()
        left = self._delete_servers(lease_id)
        with self.state.lock:
            lease = self.leases.get(lease_id)
            if lease is None:
                return
            if left:
                self.cloud.record(
                    "reservation",
                    lease_id=lease_id,
                    action="delete",
                    outcome="error",
                    detail=f"servers {left} were not deleted",
                )
                raise upstream.ServerDeletionTimeout()
            self._close_reservations(lease, failed=False)
            del self.leases[lease_id]
            self.cloud.record(
                "reservation", lease_id=lease_id, action="delete", detail="lease gone"
            )
            self.state.save()

    def wait_for_delete(self, call: DeleteCall) -> None:
        """What the API's RPC client sees: the manager's refusal of the transition, or its
        answer within the RPC timeout, or nothing (oslo.messaging's MessagingTimeout, which
        the API obfuscates as a 500) while the manager goes on deleting."""
        timeout = float(self.cloud.config["blazar_rpc_timeout_seconds"])
        deadline = time.monotonic() + timeout
        while not (call.started.is_set() or call.done.is_set()):
            if time.monotonic() > deadline:
                raise internal_error()
            call.done.wait(0.01)
        if not call.done.wait(max(0.0, deadline - time.monotonic())):
            self.cloud.record(
                "reservation",
                action="delete",
                outcome="rpc timeout",
                detail=f"the manager did not answer within {timeout:g} s; it goes on deleting",
            )
            raise internal_error()
        if isinstance(call.error, BlazarException):
            raise rendered(call.error)
        if call.error is not None:
            raise internal_error()
