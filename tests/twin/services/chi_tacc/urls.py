"""CHI@TACC's Keystone on the twin, under /chi-tacc: the version document and tokens, served by
the same views as KVM@TACC's Keystone over CHI@TACC's own backend."""

from __future__ import annotations

from flask import Blueprint, g

from tests.twin.services.core import IdentityError, twin
from tests.twin.services.identity import responses

SERVICE = "identity_chi_tacc"
PREFIX = "/chi-tacc"
AUTHENTICATED = False

blueprint = Blueprint(SERVICE, __name__)
ROUTES = (
    ("/v3", "GET", responses.version),
    ("/v3/", "GET", responses.version),
    ("/v3/auth/tokens", "POST", responses.create_token),
    ("/v3/auth/tokens", "GET", responses.show_token),
    ("/v3/auth/tokens", "HEAD", responses.show_token),
    ("/v3/auth/tokens", "DELETE", responses.revoke_token),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(
        rule, endpoint=f"{view.__name__}_{method}", view_func=view, methods=[method]
    )


@blueprint.before_request
def this_site() -> None:
    """Every view of this blueprint speaks for CHI@TACC's Keystone."""
    g.twin_identity = twin().chi_tacc_identity
    g.twin_identity_prefix = PREFIX


def unserved(status: int, message: str) -> IdentityError:
    return IdentityError(status, message)
