"""Keystone's paths on the twin: the version documents and /v3/auth/tokens."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.core import IdentityError
from tests.twin.identity import responses

SERVICE = "identity"
PREFIX = ""
AUTHENTICATED = False

blueprint = Blueprint(SERVICE, __name__)
blueprint.add_url_rule("/", view_func=responses.versions, methods=["GET"])
blueprint.add_url_rule("/v3", view_func=responses.version, methods=["GET"])
blueprint.add_url_rule(
    "/v3/", view_func=responses.version, methods=["GET"], endpoint="version_slash"
)
blueprint.add_url_rule("/v3/auth/tokens", view_func=responses.create_token, methods=["POST"])
blueprint.add_url_rule(
    "/v3/auth/tokens",
    view_func=responses.show_token,
    methods=["GET", "HEAD"],
    endpoint="show_token",
)
blueprint.add_url_rule(
    "/v3/auth/tokens", view_func=responses.revoke_token, methods=["DELETE"], endpoint="revoke_token"
)


def unserved(status: int, message: str) -> IdentityError:
    return IdentityError(status, message)
