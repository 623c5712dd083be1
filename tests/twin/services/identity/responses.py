"""Keystone v3 requests and responses (keystone/auth, keystone/common/render_token.py).

Calls as gophercloud v2.8.0 makes them: openstack/client.go (v3auth),
openstack/identity/v3/tokens (POST /v3/auth/tokens, 201, X-Subject-Token),
openstack/utils/choose_version.go (the version document at the root).
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, request

from tests.twin.services.core import (
    IdentityError,
    base_url,
    json_response,
    request_json,
    twin,
    validate_body,
)
from tests.twin.services.identity.models import UNAUTHORIZED
from tests.twin.services.state import iso_micro_z

VERSION_ID = "v3.14"


def _version(base: str) -> dict[str, Any]:
    return {
        "id": VERSION_ID,
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def site_identity() -> Any:
    """The Keystone this request reached: KVM@TACC's, unless a site's blueprint named its own
    (CHI@TACC's, tests/twin/services/chi_tacc/urls.py)."""
    return g.get("twin_identity") or twin().identity


def _site_base() -> str:
    return base_url() + g.get("twin_identity_prefix", "")


def versions() -> Response:
    return json_response({"versions": {"values": [_version(_site_base())]}}, 300)


def version() -> Response:
    return json_response({"version": _version(_site_base())})


_DOMAIN = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
}
_USER = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "password": {"type": "string"},
        "domain": _DOMAIN,
    },
}
AUTH_SCHEMA = {
    "type": "object",
    "properties": {
        "auth": {
            "type": "object",
            "properties": {
                "identity": {
                    "type": "object",
                    "properties": {
                        "methods": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "password": {"type": "object", "properties": {"user": _USER}},
                        "token": {
                            "type": "object",
                            "properties": {"id": {"type": "string"}},
                            "required": ["id"],
                        },
                        "application_credential": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "name": {"type": "string"},
                                "secret": {"type": "string"},
                                "user": _USER,
                            },
                            "required": ["secret"],
                        },
                    },
                    "required": ["methods"],
                },
                "scope": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {
                                "project": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "string"},
                                        "name": {"type": "string"},
                                        "domain": _DOMAIN,
                                    },
                                },
                                "domain": _DOMAIN,
                                "system": {"type": "object"},
                                "OS-TRUST:trust": {"type": "object"},
                            },
                        },
                        {"type": "string", "enum": ["unscoped"]},
                    ]
                },
            },
            "required": ["identity"],
        }
    },
    "required": ["auth"],
}


def _bad_request(message: str) -> IdentityError:
    return IdentityError(400, message)


def render_token(token: dict[str, Any]) -> dict[str, Any]:
    identity = site_identity()
    domain = identity.data["domain"]
    body: dict[str, Any] = {
        "methods": token["methods"],
        "user": {
            "domain": dict(domain),
            "id": identity.user_id,
            "name": identity.user["name"],
            "password_expires_at": None,
        },
        "audit_ids": token["audit_ids"],
        "expires_at": iso_micro_z(token["expires_at"]),
        "issued_at": iso_micro_z(token["issued_at"]),
    }
    if token["project_id"] is not None:
        body["project"] = {
            "domain": dict(domain),
            "id": identity.project_id,
            "name": identity.project["name"],
        }
        body["is_domain"] = False
        body["roles"] = [
            {"id": "9fe2ff9ee4384b1894a90878d3e92bab", "name": "member"},
            {"id": "aa1dd5b2ae8e4b2a8b9a5e4d2f6b6b0c", "name": "reader"},
        ]
        body["catalog"] = identity.catalog(base_url())
    if token.get("application_credential_id"):
        credential = identity.data["application_credential"]
        body["application_credential"] = {
            "id": credential["id"],
            "name": credential["name"],
            "restricted": not identity.application_credential_unrestricted,
        }
    return {"token": body}


def create_token() -> Response:
    body = request_json(_bad_request)
    validate_body(body, AUTH_SCHEMA, _bad_request, style="keystone")
    token_id, token = site_identity().authenticate(body["auth"])
    return json_response(render_token(token), 201, {"X-Subject-Token": token_id})


def _caller_and_subject() -> tuple[dict[str, Any], str]:
    identity = site_identity()
    if identity.token(request.headers.get("X-Auth-Token")) is None:
        raise IdentityError(401, UNAUTHORIZED)
    subject = request.headers.get("X-Subject-Token")
    if not subject:
        raise IdentityError(
            400,
            "Expecting to find X-Subject-Token in header. The server could not comply with the "
            "request since it is either malformed or otherwise incorrect. The client is "
            "assumed to be in error.",
        )
    token = identity.token(subject)
    if token is None:
        raise IdentityError(404, f"Could not find token: {subject}.")
    return token, subject


def show_token() -> Response:
    token, subject = _caller_and_subject()
    if request.method == "HEAD":
        return Response(status=200, headers={"X-Subject-Token": subject})
    return json_response(render_token(token), 200, {"X-Subject-Token": subject})


def revoke_token() -> Response:
    _, subject = _caller_and_subject()
    site_identity().revoke(subject)
    return Response(status=204)


def list_trusts() -> Response:
    """GET /v3/OS-TRUST/trusts (keystone/api/trusts.py TrustsResource.get), filtered by
    trustor_user_id or trustee_user_id, as gophercloud's trusts.List and keystoneclient ask."""
    identity = twin().identity
    token = identity.token(request.headers.get("X-Auth-Token"))
    if token is None:
        raise IdentityError(401, UNAUTHORIZED)
    trusts = identity.list_trusts(
        token, request.args.get("trustor_user_id"), request.args.get("trustee_user_id")
    )
    base = base_url()
    for trust in trusts:
        trust["links"] = {"self": f"{base}/v3/OS-TRUST/trusts/{trust['id']}"}
    return json_response(
        {
            "trusts": trusts,
            "links": {"self": f"{base}/v3/OS-TRUST/trusts", "previous": None, "next": None},
        }
    )
