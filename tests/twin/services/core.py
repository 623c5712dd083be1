"""What every service of the twin shares: its own error formats, body validation, microversions.

Each OpenStack service answers errors in its own shape, and the twin answers in
the same one (checked against the services' sources):
  Nova, Cinder   {"itemNotFound": {"code": 404, "message": ...}} (fault name by status)
  Neutron        {"NeutronError": {"type": <exception class>, "message": ..., "detail": ""}}
  Glance         webob's JSON error page {"message", "code": "404 Not Found", "title"}
  Keystone       {"error": {"code", "message", "title"}}
  Blazar         {"error_code": N, "error_message": ..., "error_name": ...}; werkzeug's own
                 aborts (unknown path, microversion) {"error": N, "error_message": ...}
A request without a valid token is refused by keystonemiddleware before any of
them sees it: 401 in Keystone's shape, with WWW-Authenticate.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import jsonschema
from flask import Response, request

# Nova's and Cinder's fault names (nova/api/openstack/wsgi.py, cinder/api/openstack/wsgi.py).
FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class ServiceError(Exception):
    """An error answered in one service's own format."""

    status: int = 500

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> Any:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        return {}

    def response(self) -> Response:
        return json_response(self.body(), self.status, self.headers())


class ComputeError(ServiceError):
    """Nova's fault body."""

    def body(self) -> Any:
        name = FAULT_NAMES.get(self.status, "computeFault")
        return {name: {"code": self.status, "message": self.message}}


class VolumeError(ComputeError):
    """Cinder's fault body: the same shape as Nova's."""


class NetworkError(ServiceError):
    """Neutron's body: the exception's class name is its type."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(status, message)
        self.kind = kind

    def body(self) -> Any:
        return {"NeutronError": {"type": self.kind, "message": self.message, "detail": ""}}


class ImageError(ServiceError):
    """Glance's errors are webob HTTP exceptions rendered as JSON."""

    def body(self) -> Any:
        phrase = HTTPStatus(self.status).phrase
        return {"message": self.message, "code": f"{self.status} {phrase}", "title": phrase}


class IdentityError(ServiceError):
    def body(self) -> Any:
        title = HTTPStatus(self.status).phrase
        return {"error": {"code": self.status, "message": self.message, "title": title}}


class ReservationError(ServiceError):
    """Blazar's render_error_message (blazar/api/v1/utils.py).

    A Blazar exception, raised in the API or in the manager and passed back over RPC,
    is named by its numeric code; anything else is obfuscated as INTERNAL_SERVER_ERROR.
    """

    def __init__(self, status: int, message: str, name: int | str | None = None) -> None:
        super().__init__(status, message)
        self.name = status if name is None else name

    def body(self) -> Any:
        return {"error_code": self.status, "error_message": self.message, "error_name": self.name}


class ReservationHttpError(ServiceError):
    """Blazar's make_json_error (blazar/api/v1/app.py) for werkzeug's aborts: 404, 405, 400."""

    def body(self) -> Any:
        return {"error": self.status, "error_message": self.message}


class Unauthenticated(IdentityError):
    """keystonemiddleware's refusal of a request without a valid X-Auth-Token."""

    def __init__(self, identity_url: str) -> None:
        super().__init__(401, "The request you have made requires authentication.")
        self.identity_url = identity_url

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Keystone uri="{self.identity_url}"'}


class RawError(ServiceError):
    """An injected fault: exactly the status, body and headers a test asked for."""

    def __init__(self, status: int, payload: Any, extra_headers: dict[str, str]) -> None:
        super().__init__(status, "injected fault")
        self.payload = payload
        self.extra_headers = extra_headers

    def response(self) -> Response:
        if isinstance(self.payload, str):
            response = Response(self.payload, status=self.status, mimetype="text/plain")
        else:
            response = json_response(self.payload, self.status)
        for name, value in self.extra_headers.items():
            response.headers[name] = value
        return response


# --- request bodies ----------------------------------------------------------------------


def request_json(error: Any) -> Any:
    """The request's JSON body (None when empty), or the service's 400 when it is not JSON.

    `error(message)` builds the service's error; the message is Nova's, Cinder's and
    Neutron's ("Malformed request body").
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise error("Malformed request body") from None


def is_uuid_like(value: Any) -> bool:
    """oslo's is_uuid_like: 32 hex digits with or without dashes."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)).replace("-", "") == value.replace("-", "").lower()
    except (TypeError, ValueError, AttributeError):
        return False


FORMAT_CHECKER = jsonschema.FormatChecker()


@FORMAT_CHECKER.checks("uuid")
def _check_uuid(instance: object) -> bool:
    return not isinstance(instance, str) or is_uuid_like(instance)


@FORMAT_CHECKER.checks("base64", raises=(binascii.Error, ValueError))
def _check_base64(instance: object) -> bool:
    # Nova decodes with base64.decodebytes, which skips characters outside the alphabet.
    if isinstance(instance, str):
        base64.decodebytes(instance.encode("ascii"))
    return True


def validate_body(body: Any, schema: dict[str, Any], error: Any, *, style: str = "nova") -> None:
    """Validate as Nova/Cinder (and Keystone) do with jsonschema, with their message format."""
    validator = jsonschema.Draft4Validator(schema, format_checker=FORMAT_CHECKER)
    # The first error, as the services' validator.validate() raises it.
    problem = next(iter(validator.iter_errors(body)), None)
    if problem is None:
        return
    path = list(problem.path)
    if style == "keystone":
        if path:
            detail = "Invalid input for field '{}': {}".format(
                "/".join(map(str, path)), problem.message
            )
        else:
            detail = problem.message
    elif path:
        detail = (
            f"Invalid input for field/attribute {path[-1]}. "
            f"Value: {problem.instance}. {problem.message}"
        )
    else:
        detail = problem.message
    raise error(detail)


# --- microversions ----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Version:
        major, minor = text.split(".")
        return cls(int(major), int(minor))


VERSION_PATTERN = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")


def requested_microversion(
    service: str,
    legacy_header: str | None,
    minimum: Version,
    maximum: Version,
    error: Any,
) -> Version:
    """The microversion a request asks for (OpenStack-API-Version first), checked against the range.

    `error(status, message)` builds the service's error. Messages as nova/api/openstack/wsgi.py.
    """
    text = None
    header = request.headers.get("OpenStack-API-Version")
    if header:
        for part in header.split(","):
            words = part.strip().split()
            if len(words) == 2 and words[0].lower() == service:
                text = words[1]
    if text is None and legacy_header:
        text = request.headers.get(legacy_header)
    if not text:
        return minimum
    if text.lower() == "latest":
        return maximum
    match = VERSION_PATTERN.match(text.strip())
    if match is None:
        raise error(
            400,
            f"API Version String {text} is of invalid format. Must be of format MajorNum.MinorNum.",
        )
    version = Version(int(match.group(1)), int(match.group(2)))
    if not minimum <= version <= maximum:
        raise error(
            406,
            f"Version {version} is not supported by the API. Minimum is {minimum} and "
            f"maximum is {maximum}.",
        )
    return version


# --- query strings ---------------------------------------------------------------------


def query_items() -> dict[str, list[str]]:
    return {key: request.args.getlist(key) for key in request.args}


def base_url() -> str:
    """Where this request reached the twin, e.g. http://127.0.0.1:8774 (no trailing slash)."""
    return request.host_url.rstrip("/")


# --- the request's context ---------------------------------------------------------------


def twin() -> Any:
    """The `Cloud` this request is served by."""
    from flask import current_app

    return current_app.config["TWIN_CLOUD"]


def token() -> dict[str, Any]:
    """The caller's token record (the app checked it before the view ran)."""
    from flask import g

    return g.twin_token
