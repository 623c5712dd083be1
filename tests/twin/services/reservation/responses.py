"""Blazar v1 lease requests and responses (blazar/api/v1/leases/v1_0.py, blazar/api/v1/utils.py).

Calls as python-blazarclient makes them (blazarclient/v1/leases.py), under the
catalog's `reservation` endpoint, which ends in /v1:
  POST /leases {name, start_date, end_date, reservations, events, before_end_date} -> 201
      {"lease": ...}; GET /leases -> {"leases": [...]}; GET /leases/{id} -> {"lease": ...};
  PUT /leases/{id} {name?, end_date?, start_date?, reservations?} -> 200 {"lease": ...};
  DELETE /leases/{id} -> 204, once the lease's servers and flavor are gone (the manager's
      delete_lease runs the plugin's on_end before it answers); 500 when the manager has not
      answered within the RPC timeout, while it goes on deleting.
A lease renders as blazar/db/sqlalchemy/models.py Lease.to_dict: dates through
oslo_serialization's jsonutils (2006-01-02T15:04:05.000000, which blazarclient's
LEASE_DATE_FORMAT reads), created_at/updated_at through model_base.py
datetime_to_str (isoformat with a space). Microversions: 1.0 only
(api_version_request.py), answered in OpenStack-API-Version: reservation 1.0.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response, g, request

from tests.twin.services.core import (
    ReservationHttpError,
    Version,
    json_response,
    requested_microversion,
    token,
    twin,
)
from tests.twin.services.state import iso_micro, parse_stamp

VERSION = Version(1, 0)
# werkzeug's InternalServerError description: make_json_error's answer when the body is not JSON.
INTERNAL_SERVER_ERROR = (
    "The server encountered an internal error and was unable to complete your request. "
    "Either the server is overloaded or there is an error in the application."
)


def microversion() -> Version:
    """blazar/api/v1/utils.py set_api_version_request (OpenStack-API-Version: reservation X)."""
    version = requested_microversion("reservation", None, VERSION, VERSION, ReservationHttpError)
    g.twin_reservation_version = version
    return version


def versioned(response: Response) -> Response:
    """add_vary_header: every answer of a request whose version was accepted."""
    version = g.get("twin_reservation_version")
    if version is not None:
        response.headers["OpenStack-API-Version"] = f"reservation {version}"
        response.headers["Vary"] = "OpenStack-API-Version"
    return response


def request_data() -> Any:
    """blazar/api/v1/utils.py request_data: {} when empty, JSON otherwise."""
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json":
        raise ReservationHttpError(400, f"Content type '{mimetype}' isn't supported")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        # jsonutils.loads raises outside the handler's try: Flask's 500, made JSON.
        raise ReservationHttpError(500, INTERNAL_SERVER_ERROR) from None


def _space(value: str | None) -> str | None:
    """model_base.py datetime_to_str: isoformat(' '), no fraction when it is zero."""
    if value is None:
        return None
    moment = parse_stamp(value).replace(tzinfo=None)
    return moment.isoformat(" ")


# Upstream: blazar/db/sqlalchemy/models.py Lease.to_dict.
def render(lease: dict[str, Any]) -> dict[str, Any]:
    reservations = [
        {
            **{key: value for key, value in reservation.items() if key != "source_flavor_id"},
            "created_at": _space(reservation["created_at"]),
            "updated_at": _space(reservation["updated_at"]),
        }
        for reservation in lease["reservations"]
    ]
    events = [
        {
            **event,
            "time": iso_micro(event["time"]),
            "created_at": _space(event["created_at"]),
            "updated_at": _space(event["updated_at"]),
        }
        for event in lease["events"]
    ]
    return {
        "id": lease["id"],
        "name": lease["name"],
        "user_id": lease["user_id"],
        "project_id": lease["project_id"],
        "start_date": iso_micro(lease["start_date"]),
        "end_date": iso_micro(lease["end_date"]),
        "trust_id": lease["trust_id"],
        "status": lease["status"],
        "degraded": lease["degraded"],
        "created_at": _space(lease["created_at"]),
        "updated_at": _space(lease["updated_at"]),
        "reservations": reservations,
        "events": events,
    }


def _respond(body: Any, status: int = 200) -> Response:
    return json_response(body, status)


# --- requests --------------------------------------------------------------------------------


def list_leases() -> Response:
    microversion()
    # blazar/api/v1/leases/service.py get_leases: a member sees its project's leases.
    leases = twin().reservation.of_project(token()["project_id"])
    return _respond({"leases": [render(lease) for lease in leases]})


def create_lease() -> Response:
    microversion()
    lease = twin().reservation.create(request_data(), token())
    return _respond({"lease": render(lease)}, 201)


def show_lease(lease_id: str) -> Response:
    microversion()
    return _respond({"lease": render(twin().reservation.get(lease_id))})


def update_lease(lease_id: str) -> Response:
    microversion()
    backend = twin().reservation
    lease = backend.get(lease_id)
    values = request_data()
    return _respond({"lease": render(backend.update(lease, values))})


def delete_lease(lease_id: str) -> Response:
    microversion()
    cloud = twin()
    backend = cloud.reservation
    lease = backend.get(lease_id)
    call = backend.delete(lease)
    # The manager's delete runs as a job that needs the state's lock (its transition, then
    # the servers' own jobs): the lock this request holds is let go while the API waits.
    cloud.state.save()
    lock = cloud.state.lock
    lock.release()
    try:
        backend.wait_for_delete(call)
    finally:
        lock.acquire()
    return Response(status=204)
