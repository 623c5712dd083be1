"""Swift's paths on the twin, under /chi-tacc/swift (CHI@TACC's object-store endpoint is
/chi-tacc/swift/v1/AUTH_<project id>, as the real site's is .../swift/v1/AUTH_<project id>)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.object_store import responses
from tests.twin.services.object_store.responses import ObjectStoreError

SERVICE = "object_store"
PREFIX = "/chi-tacc/swift"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("object_store.info_GET",)

blueprint = Blueprint(SERVICE, __name__)
ACCOUNT = "/v1/<account>"
CONTAINER = "/v1/<account>/<container>"
OBJECT = "/v1/<account>/<container>/<path:object_name>"
# HEAD first: a GET rule answers HEAD too, and the rule registered first is the one matched.
ROUTES = (
    ("/info", "GET", responses.info),
    (ACCOUNT, "HEAD", responses.show_account),
    (ACCOUNT, "GET", responses.show_account),
    (ACCOUNT, "PUT", responses.change_account),
    (ACCOUNT, "DELETE", responses.change_account),
    (CONTAINER, "HEAD", responses.show_container),
    (CONTAINER, "GET", responses.show_container),
    (CONTAINER, "PUT", responses.create_container),
    (CONTAINER, "DELETE", responses.delete_container),
    (OBJECT, "HEAD", responses.show_object),
    (OBJECT, "GET", responses.show_object),
    (OBJECT, "PUT", responses.create_object),
    (OBJECT, "DELETE", responses.delete_object),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(
        rule, endpoint=f"{view.__name__}_{method}", view_func=view, methods=[method]
    )


def identity(cloud):  # noqa: ANN001, ANN201 (the app's hook: which Keystone checks the token)
    """Tokens are CHI@TACC's: its own Keystone issued them."""
    return cloud.chi_tacc_identity


def unauthenticated() -> ObjectStoreError:
    return responses.unauthenticated()


def unserved(status: int, message: str) -> ObjectStoreError:
    return ObjectStoreError(status, f"<html><h1>{status}</h1><p>{message}</p></html>")


@blueprint.before_request
def transaction() -> None:
    """Swift names each request's transaction (X-Trans-Id: tx<21 hex>-<10 hex of the time>)."""
    import time
    import uuid

    from flask import g

    g.twin_trans_id = f"tx{uuid.uuid4().hex[:21]}-{int(time.time()):010x}"
