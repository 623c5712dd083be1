"""Glance's paths on the twin, under /image (the catalog's unversioned image endpoint)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.core import ImageError
from tests.twin.services.image import responses

SERVICE = "image"
PREFIX = "/image"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("image.versions",)

blueprint = Blueprint(SERVICE, __name__)
ROUTES = (
    ("/", "GET", responses.versions),
    ("/v2/images", "GET", responses.list_images),
    ("/v2/images/<image_id>", "GET", responses.show_image),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=view, methods=[method])


def unserved(status: int, message: str) -> ImageError:
    return ImageError(status, message)
