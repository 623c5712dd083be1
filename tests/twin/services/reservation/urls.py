"""Blazar's paths on the twin, under /v1 (the catalog's reservation endpoint is /v1)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.core import ReservationHttpError
from tests.twin.services.reservation import responses

SERVICE = "reservation"
PREFIX = "/v1"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS: tuple[str, ...] = ()

blueprint = Blueprint(SERVICE, __name__)
LEASE = "/leases/<lease_id>"
ROUTES = (
    ("/leases", "GET", responses.list_leases),
    ("/leases", "POST", responses.create_lease),
    (LEASE, "GET", responses.show_lease),
    (LEASE, "PUT", responses.update_lease),
    (LEASE, "DELETE", responses.delete_lease),
)
for rule, method, view in ROUTES:
    # blazar/api/v1/utils.py Rest.route serves every rule with and without ".json".
    for suffix in ("", ".json"):
        blueprint.add_url_rule(
            rule + suffix,
            endpoint=f"{view.__name__}{suffix.replace('.', '_')}",
            view_func=view,
            methods=[method],
        )
blueprint.after_request(responses.versioned)


def unserved(status: int, message: str) -> ReservationHttpError:
    """Flask's own 404/405 in Blazar's app, through make_json_error (blazar/api/v1/app.py)."""
    return ReservationHttpError(status, message)
