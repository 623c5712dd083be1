"""A server's volume attachments (nova/api/openstack/compute/volume_attachments.py)."""

from __future__ import annotations

from typing import Any

from flask import Response

from tests.twin.services.compute.models import bad_request
from tests.twin.services.compute.responses.common import microversion, respond
from tests.twin.services.core import ComputeError, Version, request_json, twin, validate_body

ATTACH_SCHEMA = {
    "type": "object",
    "properties": {
        "volumeAttachment": {
            "type": "object",
            "properties": {
                "volumeId": {"type": "string", "format": "uuid"},
                "device": {
                    "type": ["string", "null"],
                    "pattern": "(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$",
                },
            },
            "required": ["volumeId"],
            "additionalProperties": False,
        }
    },
    "required": ["volumeAttachment"],
    "additionalProperties": False,
}


def _render_attachment(
    server: dict[str, Any], volume_id: str, attachment: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": volume_id,
        "volumeId": volume_id,
        "serverId": server["id"],
        "device": attachment["device"],
    }


def list_attachments(server_id: str) -> Response:
    version = microversion()
    server = twin().compute.get_server(server_id)
    items = [
        _render_attachment(server, volume_id, attachment)
        for volume_id, attachment in server["attachments"].items()
    ]
    return respond({"volumeAttachments": items}, version)


def create_attachment(server_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    server = compute.get_server(server_id)
    body = request_json(bad_request)
    schema = ATTACH_SCHEMA
    if version >= Version(2, 49):
        schema = {
            **ATTACH_SCHEMA,
            "properties": {
                "volumeAttachment": {
                    **ATTACH_SCHEMA["properties"]["volumeAttachment"],
                    "properties": {
                        **ATTACH_SCHEMA["properties"]["volumeAttachment"]["properties"],
                        "tag": {"type": "string", "maxLength": 60, "pattern": "^[^,/]*$"},
                    },
                }
            },
        }
    validate_body(body, schema, bad_request)
    given = body["volumeAttachment"]
    if given.get("tag"):
        raise ComputeError(501, "The twin does not serve tagged volume attachments.")
    attachment = compute.attach_volume(server, given["volumeId"], given.get("device"))
    return respond({"volumeAttachment": attachment}, version, 200)


def show_attachment(server_id: str, volume_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    server = compute.get_server(server_id)
    attachment = compute.attachment(server, volume_id)
    return respond({"volumeAttachment": _render_attachment(server, volume_id, attachment)}, version)


def delete_attachment(server_id: str, volume_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    compute.detach_volume(compute.get_server(server_id), volume_id)
    return respond(None, version, 202)
