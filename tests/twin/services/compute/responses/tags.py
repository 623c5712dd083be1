"""A server's tags (nova/api/openstack/compute/server_tags.py)."""

from __future__ import annotations

from typing import Any

from flask import Response

from tests.twin.services.compute.models import bad_request
from tests.twin.services.compute.responses.common import compute_root, microversion, respond
from tests.twin.services.core import ComputeError, Version, request_json, twin, validate_body


def _tags_version(server_id: str) -> tuple[Version, dict[str, Any]]:
    version = microversion()
    if version < Version(2, 26):
        raise ComputeError(404, "The resource could not be found.")
    return version, twin().compute.get_server(server_id)


def list_tags(server_id: str) -> Response:
    version, server = _tags_version(server_id)
    return respond({"tags": list(server["tags"])}, version)


def replace_tags(server_id: str) -> Response:
    version, server = _tags_version(server_id)
    body = request_json(bad_request)
    schema = {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"},
                "maxItems": 50,
            }
        },
        "required": ["tags"],
        "additionalProperties": False,
    }
    validate_body(body, schema, bad_request)
    server["tags"] = list(dict.fromkeys(body["tags"]))
    return respond({"tags": server["tags"]}, version)


def delete_tags(server_id: str) -> Response:
    version, server = _tags_version(server_id)
    server["tags"] = []
    return respond(None, version, 204)


def check_tag(server_id: str, tag: str) -> Response:
    version, server = _tags_version(server_id)
    if tag not in server["tags"]:
        raise ComputeError(404, f"Tag '{tag}' could not be found for instance {server_id}")
    return respond(None, version, 204)


def add_tag(server_id: str, tag: str) -> Response:
    version, server = _tags_version(server_id)
    if not tag or len(tag) > 60 or "," in tag or "/" in tag:
        raise bad_request(f"Invalid input for field/attribute tag. Value: {tag}.")
    if tag in server["tags"]:
        return respond(None, version, 204)
    if len(server["tags"]) >= 50:
        raise bad_request("The number of tags exceeded the per-server limit 50")
    server["tags"].append(tag)
    response = respond(None, version, 201)
    response.headers["Location"] = f"{compute_root()}/v2.1/servers/{server_id}/tags/{tag}"
    return response


def delete_tag(server_id: str, tag: str) -> Response:
    version, server = _tags_version(server_id)
    if tag not in server["tags"]:
        raise ComputeError(404, f"Tag '{tag}' could not be found for instance {server_id}")
    server["tags"].remove(tag)
    return respond(None, version, 204)
