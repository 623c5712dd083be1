"""Nova's flavors (nova/api/openstack/compute/flavors.py, views/flavors.py)."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from tests.twin.services.compute.models import bad_request
from tests.twin.services.compute.responses.common import microversion, resource_links, respond
from tests.twin.services.core import Version, twin


def render_flavor(flavor: dict[str, Any], version: Version, detail: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": flavor["id"],
        "name": flavor["name"],
        "links": resource_links("flavors", flavor["id"]),
    }
    if version >= Version(2, 55):
        body["description"] = flavor["description"]
    if detail:
        body.update(
            {
                "ram": flavor["ram"],
                "disk": flavor["disk"],
                "vcpus": flavor["vcpus"],
                # Before 2.75 Nova answers "" for no swap; gophercloud reads both.
                "swap": flavor["swap"] or "",
                "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral"],
                "OS-FLV-DISABLED:disabled": False,
                "os-flavor-access:is_public": flavor["is_public"],
                "rxtx_factor": flavor["rxtx_factor"],
            }
        )
    return body


def _flavor_list(detail: bool) -> Response:
    version = microversion()
    flavors = sorted(
        twin().compute.flavors.values(), key=lambda flavor: (flavor["ram"], flavor["id"])
    )
    for key, field in (("minRam", "ram"), ("minDisk", "disk")):
        if key in request.args:
            text = request.args[key]
            if not text.isdigit():
                raise bad_request(f"Invalid {key} filter [{text}]")
            flavors = [flavor for flavor in flavors if flavor[field] >= int(text)]
    return respond(
        {"flavors": [render_flavor(flavor, version, detail) for flavor in flavors]}, version
    )


def list_flavors() -> Response:
    return _flavor_list(detail=False)


def list_flavors_detail() -> Response:
    return _flavor_list(detail=True)


def show_flavor(flavor_id: str) -> Response:
    version = microversion()
    return respond(
        {"flavor": render_flavor(twin().compute.get_flavor(flavor_id), version)}, version
    )
