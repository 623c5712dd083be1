"""What every Nova response shares: the microversion asked for, the headers that say which
one answered, the service's root and the links of a resource."""

from __future__ import annotations

from typing import Any

from flask import Response

from tests.twin.services.core import (
    ComputeError,
    Version,
    base_url,
    json_response,
    requested_microversion,
    twin,
)

MINIMUM = Version(2, 1)
MAXIMUM = Version(2, 60)


def microversion() -> Version:
    return requested_microversion(
        "compute", "X-OpenStack-Nova-API-Version", MINIMUM, MAXIMUM, ComputeError
    )


def respond(body: Any, version: Version, status: int = 200) -> Response:
    response = json_response(body, status) if body is not None else Response(status=status)
    response.headers["OpenStack-API-Version"] = f"compute {version}"
    response.headers["X-OpenStack-Nova-API-Version"] = str(version)
    response.headers["Vary"] = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    return response


def compute_root() -> str:
    return base_url() + "/compute"


def resource_links(kind: str, item_id: str) -> list[dict[str, str]]:
    project_id = twin().identity.project_id
    return [
        {"rel": "self", "href": f"{compute_root()}/v2.1/{kind}/{item_id}"},
        {"rel": "bookmark", "href": f"{compute_root()}/{project_id}/{kind}/{item_id}"},
    ]
