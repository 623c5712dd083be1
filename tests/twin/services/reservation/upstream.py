"""Upstream Blazar's own code, run inside the twin (the `blazar` package, pinned in
requirements-test.txt).

What runs here is Blazar's, unchanged:
- blazar/status.py: `LeaseStatus.lease_status`, the decorator every lease transition of the
  manager runs in (the status before, during and after it, `non_fatal_exceptions`, ERROR on
  any other exception), `derive_stable_status` and the valid transitions and combinations;
- blazar/manager/service.py: `ManagerService.update_lease` whole (with its decorator and
  its refusal of flavor:instance leases, `_handle_resource_type_exception`), and the
  manager's checks of a new lease (`validate_params`, `_parse_lease_dates`,
  `_date_from_string`, `_check_date_within_lease_limits`);
- blazar/exceptions.py and blazar/manager/exceptions.py: the exceptions, their messages and
  their HTTP codes, rendered as blazar/api/v1/utils.py renders them.

Blazar's code reads and writes its database through blazar.db.api; here that is `TwinLeaseDB`,
the few functions those modules call, over the twin's state. The manager is made without its
__init__ (no RPC server, no plugins): its methods above use none of that.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from tests.twin.services.core import ReservationError

with warnings.catch_warnings():
    # Blazar's modules import eventlet (never monkey-patched here) and oslo's
    # eventlet helpers, which warn of their own deprecation.
    warnings.simplefilter("ignore")
    from blazar import exceptions as blazar_exceptions
    from blazar import status as blazar_status
    from blazar.manager import exceptions as manager_exceptions
    from blazar.manager import service as manager_service

if TYPE_CHECKING:
    from tests.twin.services.reservation.models import ReservationBackend

LeaseStatus = blazar_status.LeaseStatus
EventStatus = blazar_status.EventStatus
ReservationStatus = blazar_status.ReservationStatus
BlazarException = blazar_exceptions.BlazarException
InvalidStatus = blazar_exceptions.InvalidStatus
InvalidInput = blazar_exceptions.InvalidInput
NotAuthorized = blazar_exceptions.NotAuthorized
MissingParameter = manager_exceptions.MissingParameter
NotEnoughHostsAvailable = manager_exceptions.NotEnoughHostsAvailable
MalformedParameter = manager_exceptions.MalformedParameter
UnsupportedResourceType = manager_exceptions.UnsupportedResourceType
ServerDeletionTimeout = manager_exceptions.ServerDeletionTimeout
EventError = manager_exceptions.EventError
LEASE_DATE_FORMAT = manager_service.LEASE_DATE_FORMAT

# The manager, without __init__: no RPC target, no plugins, no monitors.
MANAGER = manager_service.ManagerService.__new__(manager_service.ManagerService)


def rendered(error: BlazarException) -> ReservationError:
    """A Blazar exception as the API answers it: its code, its message, named by its code
    (blazar/api/v1/utils.py, Rest.route: bad_request for the API's own, render_error_message
    with cls.code for one passed back over RPC as messaging.RemoteError)."""
    return ReservationError(int(error.code), str(error))


def naive(moment: datetime) -> datetime:
    """Blazar's dates are naive UTC (oslo_utils.timeutils.utcnow)."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc)


class TwinLeaseDB:
    """The functions of blazar/db/api.py that blazar/status.py and the manager's update_lease
    call, over the twin's leases. Each takes the state's (re-entrant) lock."""

    def __init__(self, backend: ReservationBackend) -> None:
        self.backend = backend

    def _lease(self, lease_id: str) -> dict[str, Any] | None:
        return self.backend.leases.get(lease_id)

    def lease_get(self, lease_id: str) -> dict[str, Any] | None:
        """blazar/db/sqlalchemy/api.py lease_get: the lease with its reservations, or None."""
        with self.backend.state.lock:
            lease = self._lease(lease_id)
            if lease is None:
                return None
            return {
                "id": lease["id"],
                "name": lease["name"],
                "status": lease["status"],
                "trust_id": lease["trust_id"],
                "start_date": naive(self.backend.date(lease["start_date"])),
                "end_date": naive(self.backend.date(lease["end_date"])),
                "reservations": [dict(each) for each in lease["reservations"]],
            }

    # Upstream: blazar/manager/service.py ManagerService.update_lease.
    def lease_update(self, lease_id: str, values: dict[str, Any]) -> None:
        with self.backend.state.lock:
            lease = self._lease(lease_id)
            if lease is None:
                raise blazar_exceptions.NotFound(object={"lease_id": lease_id})
            for key, value in values.items():
                if key == "status":
                    self.backend.set_status(lease, value)
                elif key == "name":
                    self.backend.rename(lease, value)
                else:
                    raise NotImplementedError(f"the twin's Blazar does not update {key}")

    def reservation_get_all_by_lease_id(self, lease_id: str) -> list[dict[str, Any]]:
        with self.backend.state.lock:
            lease = self._lease(lease_id)
            return [] if lease is None else [dict(each) for each in lease["reservations"]]

    def event_get_first_sorted_by_filters(
        self, sort_key: str, sort_dir: str, filters: dict[str, Any]
    ) -> dict[str, Any] | None:
        with self.backend.state.lock:
            lease = self._lease(filters["lease_id"])
            if lease is None:
                return None
            for event in lease["events"]:
                if event["event_type"] == filters["event_type"]:
                    return dict(event)
            return None


def install(backend: ReservationBackend) -> None:
    """Point Blazar's modules at this twin's leases (one twin per process)."""
    database = TwinLeaseDB(backend)
    blazar_status.db_api = database
    manager_service.db_api = database
