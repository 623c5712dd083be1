"""Nova's key pairs (nova/api/openstack/compute/keypairs.py, schemas/keypairs.py)."""

from __future__ import annotations

from typing import Any

from flask import Response

from tests.twin.services.compute.models import bad_request
from tests.twin.services.compute.responses.common import microversion, respond
from tests.twin.services.core import (
    FORMAT_CHECKER,
    ComputeError,
    Version,
    request_json,
    twin,
    validate_body,
)
from tests.twin.services.state import iso_micro


@FORMAT_CHECKER.checks("keypair_name_20")
def _keypair_name(instance: object) -> bool:
    return not isinstance(instance, str) or all(
        character.isalnum() or character in " _-" for character in instance
    )


KEYPAIR_SCHEMA = {
    "type": "object",
    "properties": {
        "keypair": {
            "type": "object",
            "properties": {
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "format": "keypair_name_20",
                },
                "public_key": {"type": "string"},
                "type": {"type": "string", "enum": ["ssh", "x509"]},
                "user_id": {"type": "string"},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "required": ["keypair"],
    "additionalProperties": False,
}


def render_keypair(keypair: dict[str, Any], version: Version, full: bool) -> dict[str, Any]:
    body = {
        "name": keypair["name"],
        "public_key": keypair["public_key"],
        "fingerprint": keypair["fingerprint"],
    }
    if version >= Version(2, 2):
        body["type"] = keypair["type"]
    if full:
        body.update(
            {
                "user_id": keypair["user_id"],
                "created_at": iso_micro(keypair["created_at"]),
                "deleted": False,
                "deleted_at": None,
                "updated_at": None,
                "id": keypair["id"],
            }
        )
    return body


def create_keypair() -> Response:
    version = microversion()
    body = request_json(bad_request)
    schema = KEYPAIR_SCHEMA
    if version < Version(2, 2) or version < Version(2, 10):
        schema = {
            **KEYPAIR_SCHEMA,
            "properties": {"keypair": dict(KEYPAIR_SCHEMA["properties"]["keypair"])},
        }
        properties = dict(schema["properties"]["keypair"]["properties"])
        if version < Version(2, 2):
            properties.pop("type")
        if version < Version(2, 10):
            properties.pop("user_id")
        schema["properties"]["keypair"]["properties"] = properties
    validate_body(body, schema, bad_request)
    given = body["keypair"]
    if given.get("user_id") not in (None, twin().identity.user_id):
        raise ComputeError(
            403, "Policy doesn't allow os_compute_api:os-keypairs:create to be performed."
        )
    keypair = twin().compute.create_keypair(
        given["name"], given.get("public_key"), given.get("type", "ssh")
    )
    rendered = {
        **render_keypair(keypair, version, full=False),
        "user_id": keypair["user_id"],
    }
    if keypair.get("private_key"):
        rendered["private_key"] = keypair["private_key"]
    return respond({"keypair": rendered}, version, 201 if version >= Version(2, 2) else 200)


def list_keypairs() -> Response:
    version = microversion()
    keypairs = sorted(twin().compute.keypairs.values(), key=lambda keypair: keypair["name"])
    return respond(
        {
            "keypairs": [
                {"keypair": render_keypair(keypair, version, full=False)} for keypair in keypairs
            ]
        },
        version,
    )


def show_keypair(name: str) -> Response:
    version = microversion()
    return respond(
        {"keypair": render_keypair(twin().compute.get_keypair(name), version, full=True)}, version
    )


def delete_keypair(name: str) -> Response:
    version = microversion()
    twin().compute.delete_keypair(name)
    return respond(None, version, 204 if version >= Version(2, 2) else 202)
