"""Nova's paths on the twin, under /compute (the catalog's compute endpoint is /compute/v2.1)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.compute.responses import (
    flavors,
    keypairs,
    limits,
    metadata,
    servers,
    tags,
    versions,
    volume_attachments,
)
from tests.twin.services.core import ComputeError

SERVICE = "compute"
PREFIX = "/compute"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("compute.versions_GET", "compute.version_GET")

blueprint = Blueprint(SERVICE, __name__)
SERVER = "/v2.1/servers/<server_id>"
ROUTES = (
    ("/", "GET", versions.versions),
    ("/v2.1/", "GET", versions.version),
    ("/v2.1/flavors", "GET", flavors.list_flavors),
    ("/v2.1/flavors/detail", "GET", flavors.list_flavors_detail),
    ("/v2.1/flavors/<flavor_id>", "GET", flavors.show_flavor),
    ("/v2.1/limits", "GET", limits.limits),
    ("/v2.1/os-keypairs", "GET", keypairs.list_keypairs),
    ("/v2.1/os-keypairs", "POST", keypairs.create_keypair),
    ("/v2.1/os-keypairs/<name>", "GET", keypairs.show_keypair),
    ("/v2.1/os-keypairs/<name>", "DELETE", keypairs.delete_keypair),
    ("/v2.1/servers", "GET", servers.list_servers),
    ("/v2.1/servers", "POST", servers.create_server),
    ("/v2.1/servers/detail", "GET", servers.list_servers_detail),
    (SERVER, "GET", servers.show_server),
    (SERVER, "PUT", servers.update_server),
    (SERVER, "DELETE", servers.delete_server),
    (SERVER + "/action", "POST", servers.server_action),
    (SERVER + "/tags", "GET", tags.list_tags),
    (SERVER + "/tags", "PUT", tags.replace_tags),
    (SERVER + "/tags", "DELETE", tags.delete_tags),
    (SERVER + "/tags/<tag>", "GET", tags.check_tag),
    (SERVER + "/tags/<tag>", "PUT", tags.add_tag),
    (SERVER + "/tags/<tag>", "DELETE", tags.delete_tag),
    (SERVER + "/metadata", "GET", metadata.show_metadata),
    (SERVER + "/metadata", "POST", metadata.update_metadata),
    (SERVER + "/metadata", "PUT", metadata.update_metadata),
    (SERVER + "/metadata/<key>", "GET", metadata.show_metadata_item),
    (SERVER + "/metadata/<key>", "PUT", metadata.set_metadata_item),
    (SERVER + "/metadata/<key>", "DELETE", metadata.delete_metadata_item),
    (SERVER + "/os-volume_attachments", "GET", volume_attachments.list_attachments),
    (SERVER + "/os-volume_attachments", "POST", volume_attachments.create_attachment),
    (SERVER + "/os-volume_attachments/<volume_id>", "GET", volume_attachments.show_attachment),
    (SERVER + "/os-volume_attachments/<volume_id>", "DELETE", volume_attachments.delete_attachment),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(
        rule, endpoint=f"{view.__name__}_{method}", view_func=view, methods=[method]
    )


def unserved(status: int, message: str) -> ComputeError:
    return ComputeError(status, message)
