"""A server's metadata (nova/api/openstack/compute/server_metadata.py)."""

from __future__ import annotations

from flask import Response, request

from tests.twin.services.compute.models import bad_request
from tests.twin.services.compute.responses.common import microversion, respond
from tests.twin.services.core import ComputeError, request_json, twin, validate_body

_METADATA_BODY = {
    "type": "object",
    "properties": {
        "metadata": {
            "type": "object",
            "patternProperties": {
                "^[a-zA-Z0-9-_:. ]{1,255}$": {"type": "string", "maxLength": 255}
            },
            "additionalProperties": False,
        }
    },
    "required": ["metadata"],
    "additionalProperties": False,
}


def show_metadata(server_id: str) -> Response:
    version = microversion()
    return respond({"metadata": twin().compute.get_server(server_id)["metadata"]}, version)


def update_metadata(server_id: str) -> Response:
    """POST merges, PUT replaces (nova/api/openstack/compute/server_metadata.py)."""
    version = microversion()
    server = twin().compute.get_server(server_id)
    body = request_json(bad_request)
    validate_body(body, _METADATA_BODY, bad_request)
    if request.method == "PUT":
        server["metadata"] = dict(body["metadata"])
    else:
        server["metadata"].update(body["metadata"])
    return respond({"metadata": server["metadata"]}, version)


def show_metadata_item(server_id: str, key: str) -> Response:
    version = microversion()
    metadata = twin().compute.get_server(server_id)["metadata"]
    if key not in metadata:
        raise ComputeError(404, "Metadata item was not found")
    return respond({"meta": {key: metadata[key]}}, version)


def set_metadata_item(server_id: str, key: str) -> Response:
    version = microversion()
    server = twin().compute.get_server(server_id)
    body = request_json(bad_request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("meta"), dict)
        or len(body["meta"]) != 1
    ):
        raise bad_request("Request body contains too many items")
    if key not in body["meta"]:
        raise bad_request("Request body and URI mismatch")
    value = body["meta"][key]
    if not isinstance(value, str) or len(value) > 255:
        raise bad_request(f"Invalid input for field/attribute {key}. Value: {value}.")
    server["metadata"][key] = value
    return respond({"meta": {key: value}}, version)


def delete_metadata_item(server_id: str, key: str) -> Response:
    version = microversion()
    metadata = twin().compute.get_server(server_id)["metadata"]
    if key not in metadata:
        raise ComputeError(404, "Metadata item was not found")
    del metadata[key]
    return respond(None, version, 204)
