"""Glance's paths on the twin, under /image (the catalog's unversioned image endpoint)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.core import ImageError
from tests.twin.image import responses

SERVICE = "image"
PREFIX = "/image"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("image.versions",)

blueprint = Blueprint(SERVICE, __name__)
blueprint.add_url_rule("/", view_func=responses.versions, methods=["GET"])
blueprint.add_url_rule("/v2/images", view_func=responses.list_images, methods=["GET"])
blueprint.add_url_rule("/v2/images/<image_id>", view_func=responses.show_image, methods=["GET"])


def unserved(status: int, message: str) -> ImageError:
    return ImageError(status, message)
