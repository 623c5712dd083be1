"""Cinder's paths on the twin, under /volume (the volumev3 endpoint is /volume/v3/<project>)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.core import VolumeError
from tests.twin.services.volume import responses

SERVICE = "volume"
PREFIX = "/volume"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("volume.versions", "volume.version")

blueprint = Blueprint(SERVICE, __name__)
ROUTES = (
    ("/", "GET", responses.versions),
    ("/v3/", "GET", responses.version),
    ("/v3/<project_id>/volumes", "GET", responses.list_volumes),
    ("/v3/<project_id>/volumes", "POST", responses.create_volume),
    ("/v3/<project_id>/volumes/detail", "GET", responses.list_volumes_detail),
    ("/v3/<project_id>/volumes/<volume_id>", "GET", responses.show_volume),
    ("/v3/<project_id>/volumes/<volume_id>", "PUT", responses.update_volume),
    ("/v3/<project_id>/volumes/<volume_id>", "DELETE", responses.delete_volume),
    ("/v3/<project_id>/volumes/<volume_id>/action", "POST", responses.volume_action),
    ("/v3/<project_id>/types", "GET", responses.list_types),
    ("/v3/<project_id>/types/<type_id>", "GET", responses.show_type),
    ("/v3/<project_id>/messages", "GET", responses.list_messages),
    ("/v3/<project_id>/messages/<message_id>", "GET", responses.show_message),
    ("/v3/<project_id>/os-quota-sets/<target_project_id>", "GET", responses.show_quota_set),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=view, methods=[method])


def unserved(status: int, message: str) -> VolumeError:
    return VolumeError(status, message)
