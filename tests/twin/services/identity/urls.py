"""Keystone's paths on the twin: the version documents, /v3/auth/tokens and the trusts list."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.core import IdentityError
from tests.twin.services.identity import responses

SERVICE = "identity"
PREFIX = ""
AUTHENTICATED = False

blueprint = Blueprint(SERVICE, __name__)
ROUTES = (
    ("/", "GET", responses.versions),
    ("/v3", "GET", responses.version),
    ("/v3/", "GET", responses.version),
    ("/v3/auth/tokens", "POST", responses.create_token),
    ("/v3/auth/tokens", "GET", responses.show_token),
    ("/v3/auth/tokens", "HEAD", responses.show_token),
    ("/v3/auth/tokens", "DELETE", responses.revoke_token),
    ("/v3/OS-TRUST/trusts", "GET", responses.list_trusts),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(
        rule, endpoint=f"{view.__name__}_{method}", view_func=view, methods=[method]
    )


def unserved(status: int, message: str) -> IdentityError:
    return IdentityError(status, message)
