"""Swift's requests and responses as CHI@TACC's proxy answers them (swift 2.38.3).

Calls as openstacksdk 4.22.0's object store makes them (openstack/object_store/v1/_proxy.py:
containers, create_container, get_container_metadata, objects, get_object_metadata,
get_object/download_object, create_object with its static large object upload,
delete_object; openstack/cloud/_object_store.py delete_object with multipart-manifest=delete),
and as the platform's backup script on the server makes the same calls with the standard
library (scripts/remote/platform-backup). Listings are JSON with ?format=json and one name a
line otherwise; errors are the short HTML or text bodies of swift/common/swob.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, g, request

from tests.twin.services.core import ServiceError, base_url, twin
from tests.twin.services.object_store.models import SwiftError, capabilities, encode_metadata
from tests.twin.services.state import parse_stamp

# swift/common/middleware/keystoneauth.py KeystoneAuth.denied_response: no valid token is 401,
# a token for another project is 403.
UNAUTHORIZED_BODY = (
    "<html><h1>Unauthorized</h1><p>This server could not verify that you are authorized to "
    "access the document you requested.</p></html>"
)
FORBIDDEN_BODY = "<html><h1>Forbidden</h1><p>Access was denied to this resource.</p></html>"
NOT_ALLOWED_BODY = (
    "<html><h1>Method Not Allowed</h1><p>The method is not allowed for this resource.</p></html>"
)


class ObjectStoreError(ServiceError):
    """Swift's error: a short HTML (or text) body, not JSON."""

    def __init__(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, body)
        self.text = body
        self.extra = headers or {}

    def response(self) -> Response:
        mimetype = "text/html" if self.text.startswith("<html>") else "text/plain"
        response = Response(self.text, status=self.status, mimetype=mimetype)
        response.headers["X-Trans-Id"] = _trans_id()
        for name, value in self.extra.items():
            response.headers[name] = value
        return response


def _trans_id() -> str:
    return g.get("twin_trans_id") or "tx0000000000000000000-0000000000"


def store() -> Any:
    return twin().object_store


def _answer(status: int, body: bytes | str | Iterator[bytes] = b"", **headers: str) -> Response:
    response = Response(body, status=status)
    response.headers["X-Trans-Id"] = _trans_id()
    response.headers["X-Openstack-Request-Id"] = _trans_id()
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def _fail(error: SwiftError) -> ObjectStoreError:
    return ObjectStoreError(error.status, error.body, error.headers)


def _own_account(account: str) -> str:
    """swift/common/middleware/keystoneauth.py KeystoneAuth.authorize: the token's project owns
    the account AUTH_<project id>; any other account is refused with 403."""
    from tests.twin.services.core import token

    if account != store().account_name(token()["project_id"]):
        raise ObjectStoreError(403, FORBIDDEN_BODY)
    return account


def _metadata(prefix: str) -> dict[str, str]:
    start = prefix.lower()
    return {
        name[len(prefix) :]: value
        for name, value in request.headers.items()
        if name.lower().startswith(start)
    }


def _wants_json() -> bool:
    wanted = (request.args.get("format") or "").lower()
    if wanted:
        return wanted == "json"
    return "application/json" in (request.headers.get("Accept") or "")


def _http_date(stored: str) -> str:
    return parse_stamp(stored).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _listing(rows: list[dict[str, Any]], headers: dict[str, str]) -> Response:
    """swift/container/server.py ContainerController._create_GET_response: JSON or one name a
    line; an empty body is 204 No Content."""
    if _wants_json():
        body = json.dumps(rows)
        response = _answer(200, body, **headers)
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response
    text = "".join(f"{row.get('name', row.get('subdir'))}\n" for row in rows)
    response = _answer(200 if text else 204, text, **headers)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    return response


def _query() -> dict[str, str]:
    return {key: request.args.get(key, "") for key in request.args}


# --- /info ---------------------------------------------------------------------------------


def info() -> Response:
    """GET /info: the cluster's capabilities, without a token
    (swift/proxy/controllers/info.py InfoController.GETorHEAD)."""
    response = _answer(200, json.dumps(capabilities()))
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response


# --- accounts ------------------------------------------------------------------------------


def _account_headers(account: str) -> dict[str, str]:
    stats = store().account_stats(account)
    timestamp = store().account(account)["timestamp"]
    return {
        "X-Account-Container-Count": str(stats["containers"]),
        "X-Account-Object-Count": str(stats["objects"]),
        "X-Account-Bytes-Used": str(stats["bytes"]),
        "X-Timestamp": timestamp,
        "X-Put-Timestamp": timestamp,
    }


def show_account(account: str) -> Response:
    """GET and HEAD of the account: its counts (swift/account/utils.py get_response_headers)
    and, for GET, its containers."""
    _own_account(account)
    try:
        headers = _account_headers(account)
        if request.method == "HEAD":
            response = _answer(204, "", **headers)
            response.headers["Content-Type"] = "text/plain; charset=utf-8"
            return response
        return _listing(store().list_containers(account, _query()), headers)
    except SwiftError as error:
        raise _fail(error) from None


def change_account(account: str) -> Response:
    """PUT and DELETE of an account are the reseller's: the proxy refuses them with 405 unless
    allow_account_management is set (swift/proxy/controllers/account.py AccountController.PUT)."""
    _own_account(account)
    raise ObjectStoreError(405, NOT_ALLOWED_BODY, {"Allow": "HEAD, GET, POST"})


# --- containers ----------------------------------------------------------------------------


def _container_headers(account: str, container: str) -> dict[str, str]:
    stats = store().container_stats(account, container)
    headers = {
        "X-Container-Object-Count": str(stats["objects"]),
        "X-Container-Bytes-Used": str(stats["bytes"]),
        "X-Timestamp": stats["timestamp"],
        "X-Put-Timestamp": stats["timestamp"],
        "X-Storage-Policy": "Policy-0",
    }
    headers.update(encode_metadata("X-Container-Meta-", stats["metadata"]))
    return headers


def show_container(account: str, container: str) -> Response:
    """GET (a listing with prefix, delimiter, marker, end_marker, limit) and HEAD (204 with
    the counts) of a container; 404 when it does not exist."""
    _own_account(account)
    try:
        headers = _container_headers(account, container)
        if request.method == "HEAD":
            response = _answer(204, "", **headers)
            response.headers["Content-Type"] = "text/plain; charset=utf-8"
            return response
        return _listing(store().list_objects(account, container, _query()), headers)
    except SwiftError as error:
        raise _fail(error) from None


def create_container(account: str, container: str) -> Response:
    """PUT: 201 Created, or 202 Accepted when it exists (its metadata updated)."""
    _own_account(account)
    try:
        made = store().put_container(account, container, _metadata("X-Container-Meta-"))
    except SwiftError as error:
        raise _fail(error) from None
    response = _answer(201 if made else 202, "")
    response.headers["Content-Type"] = "text/html; charset=UTF-8"
    return response


def delete_container(account: str, container: str) -> Response:
    """DELETE: 204, 404 when missing, 409 while it holds objects."""
    _own_account(account)
    try:
        store().delete_container(account, container)
    except SwiftError as error:
        raise _fail(error) from None
    return _answer(204, "")


# --- objects -------------------------------------------------------------------------------


def _object_headers(entry: dict[str, Any], *, manifest: bool) -> dict[str, str]:
    slo = entry.get("slo") is not None
    headers = {
        "Content-Type": entry["content_type"],
        "Last-Modified": _http_date(entry["last_modified"]),
        "X-Timestamp": entry["timestamp"],
        "Accept-Ranges": "bytes",
    }
    if slo and not manifest:
        headers["Content-Length"] = str(entry["slo_size"])
        headers["Etag"] = f'"{entry["slo_etag"]}"'
    else:
        headers["Content-Length"] = str(entry["bytes"])
        headers["Etag"] = entry["etag"]
    if slo:
        headers["X-Static-Large-Object"] = "True"
        if manifest:
            headers["Content-Type"] = "application/json; charset=utf-8"
    headers.update(encode_metadata("X-Object-Meta-", entry["metadata"]))
    return headers


def show_object(account: str, container: str, object_name: str) -> Response:
    """GET and HEAD of an object (swift/proxy/controllers/obj.py BaseObjectController.GETorHEAD);
    a static large object is its segments' bytes, or its manifest with
    multipart-manifest=get."""
    _own_account(account)
    manifest = request.args.get("multipart-manifest") == "get"
    try:
        entry = store().object(account, container, object_name)
        headers = _object_headers(entry, manifest=manifest)
        if request.method == "HEAD":
            response = _answer(200, b"")
        else:
            body = store().read(account, container, object_name, manifest=manifest)
            response = _answer(200, body)
    except SwiftError as error:
        raise _fail(error) from None
    for name, value in headers.items():
        response.headers[name] = value
    if request.method == "HEAD":
        # Response("") would set Content-Length 0: HEAD says the object's length.
        response.headers["Content-Length"] = headers["Content-Length"]
    return response


def create_object(account: str, container: str, object_name: str) -> Response:
    """PUT of an object, or of a static large object's manifest (multipart-manifest=put)."""
    _own_account(account)
    metadata = _metadata("X-Object-Meta-")
    content_type = request.headers.get("Content-Type")
    etag = request.headers.get("Etag")
    try:
        if request.args.get("multipart-manifest") == "put":
            entry = store().put_manifest(
                account,
                container,
                object_name,
                request.get_data(),
                content_type=content_type,
                etag=etag,
                metadata=metadata,
            )
            etag_header = f'"{entry["slo_etag"]}"'
        else:
            if request.content_length is None and (
                request.headers.get("Transfer-Encoding", "").lower() != "chunked"
            ):
                raise SwiftError(411, "<html><h1>Length Required</h1><p>Length Required</p></html>")
            entry = store().put_object(
                account,
                container,
                object_name,
                request.stream,
                content_length=request.content_length,
                content_type=content_type,
                etag=etag,
                metadata=metadata,
            )
            etag_header = entry["etag"]
    except SwiftError as error:
        raise _fail(error) from None
    response = _answer(201, "", Etag=etag_header, Last_Modified=_http_date(entry["last_modified"]))
    response.headers["Content-Type"] = "text/html; charset=UTF-8"
    return response


def delete_object(account: str, container: str, object_name: str) -> Response:
    """DELETE: 204; with multipart-manifest=delete the segments too, answered as the bulk
    middleware reports (swift/common/middleware/bulk.py Bulk.handle_delete_iter, its body made
    by swift/common/request_helpers.py get_heartbeat_response_body)."""
    _own_account(account)
    with_segments = request.args.get("multipart-manifest") == "delete"
    try:
        deleted = store().delete_object(
            account, container, object_name, with_segments=with_segments
        )
    except SwiftError as error:
        if with_segments and error.status == 404:
            return _bulk_result(0, 1)
        raise _fail(error) from None
    if with_segments:
        return _bulk_result(deleted, 0)
    return _answer(204, "")


def _bulk_result(deleted: int, not_found: int) -> Response:
    result = {
        "Number Deleted": deleted,
        "Number Not Found": not_found,
        "Response Body": "",
        "Response Status": "200 OK",
        "Errors": [],
    }
    if "application/json" in (request.headers.get("Accept") or ""):
        response = _answer(200, json.dumps(result))
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response
    text = "".join(f"{key}: {value if value != [] else ''}\n" for key, value in result.items())
    response = _answer(200, text)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    return response


def unauthenticated() -> ObjectStoreError:
    """No valid token for CHI@TACC: Swift's 401 (swift/common/middleware/keystoneauth.py
    KeystoneAuth.denied_response), pointing at CHI@TACC's Keystone."""
    from tests.twin.services.chi_tacc.urls import PREFIX as IDENTITY_PREFIX

    where = f'Keystone uri="{base_url()}{IDENTITY_PREFIX}/v3"'
    return ObjectStoreError(401, UNAUTHORIZED_BODY, {"Www-Authenticate": where})
