"""Glance v2 requests and responses (glance/api/v2/images.py, the JSON schema of an image).

Calls as the provider makes them: gophercloud/utils v2 openstack/image/v2/images
(IDFromName: GET /v2/images?name=, exactly one) and gophercloud v2.8.0
openstack/image/v2/images (GET /v2/images/{id}; `next` link pagination).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Response, request

from tests.twin.services.core import ImageError, base_url, json_response, twin
from tests.twin.services.state import iso_seconds_z

# Filters that compare an image's own attribute; any other query key filters on a
# custom property, as Glance does.
ATTRIBUTE_FILTERS = (
    "id",
    "name",
    "status",
    "visibility",
    "owner",
    "container_format",
    "disk_format",
    "protected",
    "os_hidden",
)
PAGING = ("limit", "marker", "sort", "sort_key", "sort_dir", "member_status")
DEFAULT_LIMIT = 25


def versions() -> Response:
    root = base_url() + "/image"
    values = [
        {
            "id": f"v2.{minor}",
            "status": "CURRENT" if minor == 16 else "SUPPORTED",
            "links": [{"rel": "self", "href": f"{root}/v2/"}],
        }  # fmt: skip
        for minor in range(16, -1, -1)
    ]
    return json_response({"versions": values}, 300)


def render(image: dict[str, Any]) -> dict[str, Any]:
    body = {key: value for key, value in image.items() if key != "properties"}
    body.update(image["properties"])
    body["created_at"] = iso_seconds_z(image["created_at"])
    body["updated_at"] = iso_seconds_z(image["updated_at"])
    body["self"] = f"/v2/images/{image['id']}"
    body["file"] = f"/v2/images/{image['id']}/file"
    body["schema"] = "/v2/schemas/image"
    return body


def _bool_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def list_images() -> Response:
    images = sorted(
        twin().image.images.values(), key=lambda image: image["created_at"], reverse=True
    )
    # glance/api/v2/images.py RequestDeserializer._get_filters: an image's own attributes,
    # else its custom properties.
    for key in request.args:
        if key in PAGING:
            continue
        wanted = request.args.getlist(key)
        if key == "tag":
            images = [image for image in images if set(wanted) <= set(image["tags"])]
        elif key in ATTRIBUTE_FILTERS:
            images = [image for image in images if _bool_text(image[key]) in wanted]
        else:
            images = [image for image in images if image["properties"].get(key) in wanted]
    # glance/db/sqlalchemy/api.py _image_get_all: community images only when asked for.
    if "visibility" not in request.args:
        images = [
            image for image in images if image["visibility"] in ("public", "private", "shared")
        ]
    marker = request.args.get("marker")
    if marker:
        ids = [image["id"] for image in images]
        if marker not in ids:
            raise ImageError(400, "marker not found")
        images = images[ids.index(marker) + 1 :]
    # glance/api/v2/images.py RequestDeserializer._validate_limit; the default is
    # [DEFAULT] limit_param_default.
    try:
        limit = int(request.args.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise ImageError(400, "limit param must be an integer") from None
    if limit < 0:
        raise ImageError(400, "limit param must be positive")
    # glance/api/v2/images.py ResponseSerializer.index: both links keep the request's
    # parameters, the marker dropped from `first` and replaced in `next`.
    params = [(key, value) for key, value in request.args.items(multi=True) if key != "marker"]
    query = urlencode(params)
    body: dict[str, Any] = {
        "images": [render(image) for image in images[:limit]],
        "first": f"/v2/images?{query}" if query else "/v2/images",
        "schema": "/v2/schemas/images",
    }
    if len(images) > limit and limit > 0:
        body["next"] = "/v2/images?" + urlencode([*params, ("marker", images[limit - 1]["id"])])
    return json_response(body)


def show_image(image_id: str) -> Response:
    # Glance's own words for a missing image (glance/db/__init__.py ImageRepo.get).
    image = twin().image.get(image_id)
    if image is None:
        raise ImageError(404, f"No image found with ID {image_id}")
    return json_response(render(image))
