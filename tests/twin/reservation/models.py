"""Blazar's leases of `flavor:instance` reservations, and what their start and end do to Nova.

A lease moves as blazar/status.py's LeaseStatus: CREATING while the manager makes
it (the create call answers PENDING, blazar/manager/service.py create_lease),
PENDING until its start date, STARTING while the reservation's flavor is opened
to the project, then ACTIVE (or ERROR when the start fails); at its end date, or
when the twin's admin API ends it, TERMINATING while every server booted from
the reservation's flavor is deleted as Nova deletes it (through the machine
driver), then the flavor, then TERMINATED. DELETE ends a lease that has not ended
the same way, then removes it. Messages and codes are Blazar's
(blazar/manager/exceptions.py, blazar/exceptions.py) as blazar/api/v1/utils.py
renders them; the checks run in the order blazar/manager/service.py and
blazar/plugins/flavor/flavor_plugin.py run them.

The reservation's flavor (flavor_plugin.py _create_flavor): id = the reservation's
id, name `reservation:<id>`, the reserved flavor's vCPUs, RAM, disk and ephemeral
disk, private, with the reservation's extra specs. Upstream makes it private at
creation and grants the project access at the start (instances/instance_plugin.py
on_start); a private flavor the project cannot use is invisible to it, so here it
exists in Nova only from the start to the end.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from tests.twin.core import ReservationError
from tests.twin.state import new_hex_id, new_uuid, now, parse_stamp, stamp

if TYPE_CHECKING:
    from tests.twin.cloud import Cloud

LEASE_DATE_FORMAT = "%Y-%m-%d %H:%M"  # blazar/manager/service.py
RESOURCE_TYPE = "flavor:instance"  # blazar/plugins/flavor/__init__.py
RESERVATION_PREFIX = "reservation"  # blazar/plugins/instances/instance_plugin.py
DB_MAX_INT = 0x7FFFFFFF  # blazar/db/api.py
MINUTES_BEFORE_END = 60  # [manager] minutes_before_end_lease's default
SERVER_DELETION_SECONDS = 600  # instance_plugin.py INSTANCE_DELETION_TIMEOUT
# Leases that hold their reservation's capacity (blazar/status.py: stable or on the way).
HOLDING = ("PENDING", "STARTING", "ACTIVE", "UPDATING")
# blazar/status.py LeaseStatus.NEXT_STATUSES: where UPDATING and DELETING may start from.
UPDATABLE = ("PENDING", "ACTIVE", "TERMINATED", "ERROR")
DELETABLE = ("PENDING", "ACTIVE", "TERMINATED", "ERROR", "CREATING", "STARTING", "UPDATING",
             "TERMINATING")  # fmt: skip
# oslo_utils.strutils.bool_from_string, which the flavor plugin reads `affinity` with.
TRUE_STRINGS = ("1", "t", "true", "on", "y", "yes")
FALSE_STRINGS = ("0", "f", "false", "off", "n", "no")
# keystone/api/trusts.py _check_unrestricted: Keystone's refusal of the trust Blazar makes.
TRUST_REFUSED = (
    "You are not authorized to perform the requested action: Using method "
    "'application_credential' is not allowed for managing trusts. (HTTP 403)"
)


def internal_error() -> ReservationError:
    """What blazar/api/v1/utils.py answers for any exception that is not Blazar's own."""
    return ReservationError(500, "Internal Server Error", "INTERNAL_SERVER_ERROR")


def invalid_status() -> ReservationError:
    """blazar/exceptions.py InvalidStatus, raised by status.py's lease_status decorator."""
    return ReservationError(500, "Invalid lease status.")


def lease_not_found(lease_id: str) -> ReservationError:
    """blazar/api/v1/validation.py check_exists: NotFound(object={'lease_id': ...})."""
    return ReservationError(404, f"Object with {{'lease_id': {lease_id!r}}} not found")


def invalid_input(message: str) -> ReservationError:
    """blazar/exceptions.py InvalidInput(message)."""
    return ReservationError(400, message)


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def lease_date(value: Any) -> datetime:
    """`YYYY-MM-DD HH:MM` (UTC) as the manager's _date_from_string reads it."""
    if not isinstance(value, str):
        raise internal_error()  # strptime's TypeError is not a Blazar exception
    try:
        parsed = datetime.strptime(value, LEASE_DATE_FORMAT)
    except ValueError:
        raise ReservationError(
            400, f"{value} is an invalid date. Required format: {LEASE_DATE_FORMAT}"
        ) from None
    return parsed.replace(tzinfo=timezone.utc)


def lease_dates(start: Any, end: Any) -> tuple[datetime, datetime, datetime]:
    """The manager's _parse_lease_dates: (start, end, now), now floored to the minute."""
    moment = minute(now())
    start_date = moment if start == "now" else lease_date(start)
    end_date = moment if end == "now" else lease_date(end)
    return start_date, end_date, moment


def affinity_of(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_STRINGS:
        return True
    if text in FALSE_STRINGS:
        return False
    return None


def checked_amount(value: Any) -> int:
    """strutils.validate_integer(amount, "amount", 1, DB_MAX_INT), raised as MalformedParameter."""
    try:
        amount = int(str(value))
    except ValueError:
        raise ReservationError(400, "amount must be an integer") from None
    if amount < 1:
        raise ReservationError(400, "amount must be >= 1")
    if amount > DB_MAX_INT:
        raise ReservationError(400, f"amount must be <= {DB_MAX_INT}")
    return amount


class ReservationBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    @property
    def leases(self) -> dict[str, Any]:
        return self.state.collection("leases")

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        self.state.data.setdefault("leases", {})

    def recover(self) -> None:
        """The twin restarted: finish what the manager was doing when it stopped."""
        for lease in list(self.leases.values()):
            if lease["status"] == "STARTING":
                self._schedule_start(lease)
            elif lease["status"] in ("TERMINATING", "DELETING"):
                self._schedule_end(lease, remove=lease["status"] == "DELETING")

    # --- lookups -------------------------------------------------------------------------

    def get(self, lease_id: str) -> dict[str, Any]:
        lease = self.leases.get(lease_id)
        if lease is None:
            raise lease_not_found(lease_id)
        return lease

    def of_project(self, project_id: str) -> list[dict[str, Any]]:
        return [lease for lease in self.leases.values() if lease["project_id"] == project_id]

    def event(self, lease: dict[str, Any], event_type: str) -> dict[str, Any]:
        return next(event for event in lease["events"] if event["event_type"] == event_type)

    def _set(self, lease: dict[str, Any], status: str, detail: str = "") -> None:
        before = lease["status"]
        lease["status"] = status
        lease["updated_at"] = stamp()
        self.cloud.record(
            "reservation",
            lease_id=lease["id"],
            action="status",
            detail=f"{before} -> {status}" + (f": {detail}" if detail else ""),
        )

    def reserved(
        self, flavor_id: str, start: datetime, end: datetime, exclude: str | None = None
    ) -> int:
        """Instances of `flavor_id` reserved by other leases at some time in [start, end]."""
        total = 0
        for lease in self.leases.values():
            if lease["id"] == exclude or lease["status"] not in HOLDING:
                continue
            if parse_stamp(lease["end_date"]) < start or parse_stamp(lease["start_date"]) > end:
                continue
            total += sum(
                reservation["amount"]
                for reservation in lease["reservations"]
                if reservation["source_flavor_id"] == flavor_id
            )
        return total

    # --- requests ------------------------------------------------------------------------

    def _make_trust(self, token: dict[str, Any]) -> str:
        """blazar/utils/trusts.py create_trust, before anything else of the create.

        Keystone refuses a trust to a token of an application credential that is not
        unrestricted; the Keystone error is not a Blazar exception, so the API obfuscates it.
        """
        if (
            token.get("application_credential_id")
            and not self.cloud.config["application_credential_unrestricted"]
        ):
            self.cloud.record(
                "reservation", action="trust", outcome="error", detail=f"Keystone: {TRUST_REFUSED}"
            )
            raise internal_error()
        return new_hex_id()

    def _source_flavor(self, flavor_id: Any) -> dict[str, Any]:
        """The flavor to reserve, as novaclient's flavors.get(id).to_dict() plus extra_specs."""
        flavor = self.cloud.compute.flavors.get(str(flavor_id))
        if flavor is None:
            # novaclient's NotFound passed back from the manager as blazar's NotFound (404).
            raise ReservationError(
                404,
                f"Flavor {flavor_id} could not be found. (HTTP 404) (Request-ID: req-{new_uuid()})",
            )
        return flavor

    def _check_reservation(
        self, values: dict[str, Any], start: datetime, end: datetime, exclude: str | None = None
    ) -> tuple[dict[str, Any], int]:
        """flavor_plugin.py _pick_hosts for one reservation: (the flavor, the amount)."""
        resource_type = values["resource_type"]
        if resource_type != RESOURCE_TYPE:
            raise ReservationError(500, f"The {resource_type} resource type is not supported")
        missing = sorted({"amount", "flavor_id", "affinity"} - set(values))
        if missing:
            raise ReservationError(400, f"Missing parameter {','.join(missing)}")
        amount = checked_amount(values["amount"])
        flavor = self._source_flavor(values["flavor_id"])
        affinity = affinity_of(values["affinity"])
        capacity = self.cloud.config["lease_capacity"]
        held = self.reserved(flavor["id"], start, end, exclude)
        if held + amount > capacity:
            self.cloud.record(
                "reservation",
                action="capacity",
                outcome="refused",
                detail=f"flavor {flavor['name']}: {held} of {capacity} reserved, {amount} asked",
            )
            raise ReservationError(500, "Not enough hosts available")
        if affinity is not None:
            raise ReservationError(409, "Affinity not supported yet")
        return flavor, amount

    def create(self, values: Any, token: dict[str, Any]) -> dict[str, Any]:
        """blazar/api/v1/leases/service.py create_lease, then the manager's create_lease."""
        if not isinstance(values, dict):
            raise internal_error()  # use_trust_auth cannot add trust_id to it
        self._make_trust(token)
        missing = sorted({"name", "start_date", "end_date"} - set(values))
        if missing:
            raise ReservationError(400, f"Missing parameter {', '.join(missing)}")
        requested = values.get("reservations", [])
        if not isinstance(requested, list) or not all(isinstance(r, dict) for r in requested):
            raise internal_error()
        for reservation in requested:
            if "resource_type" not in reservation:
                raise ReservationError(400, "Missing parameter resource_type")
        if values.get("events"):
            raise ReservationError(
                501,
                "The twin does not create leases with events of their own.",
                "NOT_IMPLEMENTED_ERROR",
            )
        start, end, moment = lease_dates(values["start_date"], values["end_date"])
        if start < moment:
            raise invalid_input("Start date must be later than current date")
        if end <= start:
            raise invalid_input("End date must be later than start date.")
        picked = [self._check_reservation(each, start, end) for each in requested]
        before_end = self._before_end(values.get("before_end_date"), start, end)
        return self._record(values, token, start, end, before_end, picked)

    def _before_end(self, value: Any, start: datetime, end: datetime) -> datetime:
        if value:
            moment = lease_date(value)
            if not start < moment < end:
                raise ReservationError(403, "Datetime is out of lease limits")
            return moment
        return max(end - timedelta(minutes=MINUTES_BEFORE_END), start)

    def _record(
        self,
        values: dict[str, Any],
        token: dict[str, Any],
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
            "trust_id": new_hex_id(),
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
        for event_type, time in (
            ("start_lease", start),
            ("end_lease", end),
            ("before_end_lease", before_end),
        ):
            lease["events"].append(
                {
                    "id": new_uuid(),
                    "lease_id": lease_id,
                    "event_type": event_type,
                    "time": stamp(time),
                    "status": "UNDONE",
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
        self._set(lease, "PENDING")
        return lease

    def _next_aggregate_id(self) -> int:
        self.state.data["aggregate_sequence"] = self.state.data.get("aggregate_sequence", 0) + 1
        return self.state.data["aggregate_sequence"]

    def update(self, lease: dict[str, Any], values: Any) -> dict[str, Any]:
        """The manager's update_lease, inside status.py's UPDATING transition."""
        if lease["status"] not in UPDATABLE:
            raise invalid_status()
        if not isinstance(values, dict):
            raise internal_error()
        if not values:
            return lease
        if set(values) == {"name"}:
            lease["name"] = values["name"]
            lease["updated_at"] = stamp()
            self.cloud.record("reservation", lease_id=lease["id"], action="rename")
            return lease
        if any(r["resource_type"] == RESOURCE_TYPE for r in lease["reservations"]):
            if self.cloud.config["lease_extension"] == "refused":
                # The manager's _handle_resource_type_exception, as upstream Blazar answers.
                raise ReservationError(
                    409,
                    "Updating leases for 'flavor:instance' type reservations is not yet supported.",
                )
            if values.get("reservations"):
                # FlavorPlugin.update_reservation: a site that extends leases still cannot
                # change what a reservation holds.
                raise ReservationError(409, "Flavor-based reservation update not yet supported")
        current_start, current_end = (
            parse_stamp(lease["start_date"]),
            parse_stamp(lease["end_date"]),
        )
        start, end, moment = lease_dates(
            values.get("start_date", current_start.strftime(LEASE_DATE_FORMAT)),
            values.get("end_date", current_end.strftime(LEASE_DATE_FORMAT)),
        )
        # The manager's _check_for_invalid_date_inputs, in its order.
        if current_start < moment and start != current_start:
            raise invalid_input("Cannot modify the start date of already started leases")
        if current_start > moment and start < moment:
            raise invalid_input("Start date must be later than current date")
        if current_end < moment:
            raise invalid_input("Terminated leases can only be renamed")
        if end < moment or end < start:
            raise invalid_input("End date must be later than current and start date")
        before_end = self._before_end(values.get("before_end_date"), start, end)
        for reservation in lease["reservations"]:
            held = self.reserved(reservation["source_flavor_id"], start, end, lease["id"])
            if held + reservation["amount"] > self.cloud.config["lease_capacity"]:
                raise ReservationError(500, "Not enough hosts available")
        if "name" in values:
            lease["name"] = values["name"]
        lease["start_date"], lease["end_date"] = stamp(start), stamp(end)
        for event_type, time in (
            ("start_lease", start),
            ("end_lease", end),
            ("before_end_lease", before_end),
        ):
            event = self.event(lease, event_type)
            event["time"] = stamp(time)
            event["updated_at"] = stamp()
            if event_type == "before_end_lease" and event["status"] == "DONE" and time > now():
                event["status"] = "UNDONE"
        lease["updated_at"] = stamp()
        self.cloud.record(
            "reservation",
            lease_id=lease["id"],
            action="update",
            detail=f"{current_start:%Y-%m-%d %H:%M} to {current_end:%Y-%m-%d %H:%M} -> "
            f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}",
        )
        return lease

    def delete(self, lease: dict[str, Any]) -> str:
        """The manager's delete_lease: end what has not ended, then remove; the job's key."""
        if lease["status"] not in DELETABLE:
            raise invalid_status()
        self._set(lease, "DELETING")
        return self._schedule_end(lease, remove=True)

    def end(self, lease: dict[str, Any], reason: str) -> str:
        """The end_lease event (at the end date, or now): TERMINATING; the job's key."""
        self.cloud.record("reservation", lease_id=lease["id"], action="end", reason=reason)
        self._set(lease, "TERMINATING")
        self.event(lease, "end_lease")["status"] = "IN_PROGRESS"
        return self._schedule_end(lease, remove=False)

    # --- what moves in time ----------------------------------------------------------------

    def tick(self) -> None:
        """The manager's event loop: start leases whose start came, end those whose end came."""
        moment = now()
        delay = timedelta(seconds=self.cloud.config["lease_start_seconds"])
        with self.state.lock:
            for lease in list(self.leases.values()):
                status = lease["status"]
                if status == "PENDING":
                    start = parse_stamp(lease["start_date"])
                    if moment >= max(start, parse_stamp(lease["created_at"])) + delay:
                        self._start(lease)
                elif status in ("ACTIVE", "ERROR") and (
                    self.event(lease, "end_lease")["status"] == "UNDONE"
                    and moment >= parse_stamp(lease["end_date"])
                ):
                    self.end(lease, reason="end date")
                    self.state.save()
                elif status == "ACTIVE":
                    before_end = self.event(lease, "before_end_lease")
                    if before_end["status"] == "UNDONE" and moment >= parse_stamp(
                        before_end["time"]
                    ):
                        before_end["status"] = "DONE"
                        self.cloud.record(
                            "reservation", lease_id=lease["id"], action="before_end_lease"
                        )

    def _start(self, lease: dict[str, Any]) -> None:
        self._set(lease, "STARTING")
        self.event(lease, "start_lease")["status"] = "IN_PROGRESS"
        self._schedule_start(lease)
        self.state.save()

    def _schedule_start(self, lease: dict[str, Any]) -> None:
        lease_id = lease["id"]

        def start() -> None:
            with self.state.lock:
                if self.leases.get(lease_id) is not lease or lease["status"] != "STARTING":
                    return
                event = self.event(lease, "start_lease")
                if lease["start_fails"]:
                    # _basic_action: the plugin's on_start failed (EventError).
                    for reservation in lease["reservations"]:
                        reservation["status"] = "error"
                        reservation["updated_at"] = stamp()
                    event["status"] = "ERROR"
                    self._set(lease, "ERROR", "the reservation's start failed (next_lease_error)")
                else:
                    for reservation in lease["reservations"]:
                        self._open_flavor(reservation)
                        reservation["status"] = "active"
                        reservation["updated_at"] = stamp()
                    event["status"] = "DONE"
                    self._set(lease, "ACTIVE")
                event["updated_at"] = stamp()
                self.state.save()

        self.cloud.jobs.submit(f"lease-{lease_id}", start)

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

    def _schedule_end(self, lease: dict[str, Any], remove: bool) -> str:
        """instance_plugin.py on_end for each reservation not yet deleted: delete the servers on
        its flavor, wait until they are gone, delete the flavor; then TERMINATED (or removed)."""
        lease_id = lease["id"]
        cloud = self.cloud
        compute = cloud.compute
        key = f"lease-{lease_id}"

        def finish() -> None:
            with self.state.lock:
                if self.leases.get(lease_id) is not lease:
                    return
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
                        "reservation",
                        lease_id=lease_id,
                        action="delete_server",
                        server_id=server["id"],
                    )
                    compute.delete_server(server, reason="lease end")
                self.state.save()
            deadline = SERVER_DELETION_SECONDS
            for server in doomed:
                cloud.jobs.wait(server["id"], timeout=deadline)
            with self.state.lock:
                if self.leases.get(lease_id) is not lease:
                    return
                left = [server["id"] for server in doomed if server["id"] in compute.servers]
                if left:
                    # ServerDeletionTimeout: a fatal exception of the transition.
                    for reservation in lease["reservations"]:
                        reservation["status"] = "error"
                    self._set(lease, "ERROR", f"servers {left} were not deleted")
                    self.state.save()
                    return
                for flavor_id in flavor_ids:
                    if compute.flavors.pop(flavor_id, None) is not None:
                        cloud.record(
                            "reservation",
                            reservation_id=flavor_id,
                            action="flavor",
                            detail="deleted",
                        )
                for reservation in lease["reservations"]:
                    reservation["status"] = "deleted"
                    reservation["updated_at"] = stamp()
                if remove:
                    del self.leases[lease_id]
                    cloud.record(
                        "reservation", lease_id=lease_id, action="delete", detail="lease gone"
                    )
                elif lease["status"] == "TERMINATING":
                    end_event = self.event(lease, "end_lease")
                    end_event["status"] = "DONE"
                    end_event["updated_at"] = stamp()
                    started = self.event(lease, "start_lease")["status"] == "DONE"
                    # status.py derive_stable_status: (DONE, DONE) is TERMINATED; a lease whose
                    # start failed stays in ERROR.
                    self._set(lease, "TERMINATED" if started else "ERROR")
                self.state.save()

        cloud.jobs.submit(key, finish)
        return key
