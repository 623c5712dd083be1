"""Nova's version documents (nova/api/openstack/compute/versions.py)."""

from __future__ import annotations

from typing import Any

from flask import Response

from tests.twin.services.compute.responses.common import MAXIMUM, MINIMUM, compute_root
from tests.twin.services.core import json_response


def _version_document(current: bool) -> dict[str, Any]:
    if current:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": str(MAXIMUM),
            "min_version": str(MINIMUM),
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{compute_root()}/v2.1/"}],
        }
    return {
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": f"{compute_root()}/v2/"}],
    }


def versions() -> Response:
    return json_response({"versions": [_version_document(False), _version_document(True)]})


def version() -> Response:
    return json_response({"version": _version_document(True)})
