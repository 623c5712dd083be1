"""Nova's paths on the twin, under /compute (the catalog's compute endpoint is /compute/v2.1)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.compute import responses
from tests.twin.services.core import ComputeError

SERVICE = "compute"
PREFIX = "/compute"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("compute.versions_GET", "compute.version_GET")

blueprint = Blueprint(SERVICE, __name__)
SERVER = "/v2.1/servers/<server_id>"
ROUTES = (
    ("/", "GET", responses.versions),
    ("/v2.1/", "GET", responses.version),
    ("/v2.1/flavors", "GET", responses.list_flavors),
    ("/v2.1/flavors/detail", "GET", responses.list_flavors_detail),
    ("/v2.1/flavors/<flavor_id>", "GET", responses.show_flavor),
    ("/v2.1/limits", "GET", responses.limits),
    ("/v2.1/os-keypairs", "GET", responses.list_keypairs),
    ("/v2.1/os-keypairs", "POST", responses.create_keypair),
    ("/v2.1/os-keypairs/<name>", "GET", responses.show_keypair),
    ("/v2.1/os-keypairs/<name>", "DELETE", responses.delete_keypair),
    ("/v2.1/servers", "GET", responses.list_servers),
    ("/v2.1/servers", "POST", responses.create_server),
    ("/v2.1/servers/detail", "GET", responses.list_servers_detail),
    (SERVER, "GET", responses.show_server),
    (SERVER, "PUT", responses.update_server),
    (SERVER, "DELETE", responses.delete_server),
    (SERVER + "/action", "POST", responses.server_action),
    (SERVER + "/tags", "GET", responses.list_tags),
    (SERVER + "/tags", "PUT", responses.replace_tags),
    (SERVER + "/tags", "DELETE", responses.delete_tags),
    (SERVER + "/tags/<tag>", "GET", responses.check_tag),
    (SERVER + "/tags/<tag>", "PUT", responses.add_tag),
    (SERVER + "/tags/<tag>", "DELETE", responses.delete_tag),
    (SERVER + "/metadata", "GET", responses.show_metadata),
    (SERVER + "/metadata", "POST", responses.update_metadata),
    (SERVER + "/metadata", "PUT", responses.update_metadata),
    (SERVER + "/metadata/<key>", "GET", responses.show_metadata_item),
    (SERVER + "/metadata/<key>", "PUT", responses.set_metadata_item),
    (SERVER + "/metadata/<key>", "DELETE", responses.delete_metadata_item),
    (SERVER + "/os-volume_attachments", "GET", responses.list_attachments),
    (SERVER + "/os-volume_attachments", "POST", responses.create_attachment),
    (SERVER + "/os-volume_attachments/<volume_id>", "GET", responses.show_attachment),
    (SERVER + "/os-volume_attachments/<volume_id>", "DELETE", responses.delete_attachment),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(
        rule, endpoint=f"{view.__name__}_{method}", view_func=view, methods=[method]
    )


def unserved(status: int, message: str) -> ComputeError:
    return ComputeError(status, message)
