"""Cinder v3 requests and responses (cinder/api/v3/volumes.py, views, schemas/volumes.py).

Calls as terraform-provider-openstack v3.4.0 makes them (gophercloud v2.8.0
openstack/blockstorage/v3/volumes):
  resource_openstack_blockstorage_volume_v3.go  POST /volumes (202), GET until available;
      read: size, name, description, volume_type, metadata, attachments[];
      update: PUT name+description (+metadata), os-extend (microversion 3.42 when in-use)
      then GET until available or in-use; DELETE (202) then GET until 404
  data_source_openstack_blockstorage_volume_v3.go  GET /volumes/detail?name=&status=&metadata=
Times are `2006-01-02T15:04:05.000000` (gophercloud's JSONRFC3339MilliNoZ).
The program itself (not the provider) reads, through keystoneauth1, the user messages of
an extend (cinder/api/v3/messages.py, views/messages.py) and the project's quota set with
its usage (cinder/api/contrib/quotas.py QuotaSetsController.show).
"""

from __future__ import annotations

import ast
from typing import Any
from urllib.parse import urlencode

from flask import Response, request

from tests.twin.services.core import (
    Version,
    VolumeError,
    base_url,
    json_response,
    request_json,
    requested_microversion,
    twin,
    validate_body,
)
from tests.twin.services.state import iso_micro
from tests.twin.services.volume.models import EXTEND_VOLUME, NO_BACKEND_AVAILABLE, not_found

MINIMUM = Version(3, 0)
MAXIMUM = Version(3, 60)
ONLINE_EXTEND = Version(3, 42)
STRICT_BODY = Version(3, 53)
FILTERING_CHECKED = Version(3, 34)
# cinder/api/microversions.py: MESSAGES, MESSAGES_PAGINATION (filters and paging),
# RESOURCE_FILTER (filters checked against resource_filters.json).
MESSAGES = Version(3, 3)
MESSAGES_PAGINATION = Version(3, 5)
RESOURCE_FILTER = Version(3, 31)
# etc/cinder/resource_filters.json, "message"
MESSAGE_FILTERS = ("resource_uuid", "resource_type", "event_id", "request_id", "message_level")
VOLUME_FILTERS = (
    "name", "status", "metadata", "bootable", "migration_status", "availability_zone",
    "group_id", "size", "created_at", "updated_at", "consumes_quota",
)  # fmt: skip
PAGING = ("limit", "marker", "offset", "sort", "sort_key", "sort_dir", "with_count")
# cinder/utils.py get_bool_param: oslo's strutils.is_valid_boolstr, then bool_from_string.
TRUE_TEXTS = ("1", "t", "true", "on", "y", "yes")
FALSE_TEXTS = ("0", "f", "false", "off", "n", "no")
KNOWN_ACTIONS = (
    "os-attach", "os-detach", "os-reserve", "os-unreserve", "os-begin_detaching",
    "os-roll_detaching", "os-initialize_connection", "os-terminate_connection",
    "os-volume_upload_image", "os-update_readonly_flag", "os-retype", "os-set_bootable",
    "os-set_image_metadata", "os-unset_image_metadata", "os-show_image_metadata",
    "os-reimage", "os-reset_status", "os-force_delete", "os-force_detach",
    "os-migrate_volume", "os-migrate_volume_completion", "revert",
    "os-extend_volume_completion",
)  # fmt: skip


def _bad_request(message: str) -> VolumeError:
    return VolumeError(400, message)


def microversion() -> Version:
    return requested_microversion("volume", None, MINIMUM, MAXIMUM, VolumeError)


def with_version(response: Response, version: Version) -> Response:
    response.headers["OpenStack-API-Version"] = f"volume {version}"
    response.headers["Vary"] = "OpenStack-API-Version"
    return response


def _version_document(base: str) -> dict[str, Any]:
    return {
        "id": "v3.0",
        "status": "CURRENT",
        "version": str(MAXIMUM),
        "min_version": str(MINIMUM),
        "updated": "2023-08-31T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}/volume/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}
        ],
    }


def versions() -> Response:
    return json_response({"versions": [_version_document(base_url())]}, 300)


def version(project_id: str | None = None) -> Response:
    return json_response({"version": _version_document(base_url())})


def check_project(project_id: str) -> None:
    """A URL whose project is not the token's (cinder/api/openstack/wsgi.py
    Resource._process_stack)."""
    if project_id != twin().identity.project_id:
        raise VolumeError(400, "Malformed request url")


# --- rendering -------------------------------------------------------------------------------


def render(volume: dict[str, Any], version: Version) -> dict[str, Any]:
    link = f"{base_url()}/volume/v3/{volume['project_id']}/volumes/{volume['id']}"
    body = {
        "id": volume["id"],
        "name": volume["name"],
        "description": volume["description"],
        "status": volume["status"],
        "size": volume["size"],
        "availability_zone": volume["availability_zone"],
        "created_at": iso_micro(volume["created_at"]),
        "updated_at": iso_micro(volume["updated_at"]),
        "attachments": [
            {**attachment, "attached_at": iso_micro(attachment["attached_at"])}
            for attachment in volume["attachments"]
        ],
        "volume_type": volume["volume_type"],
        "snapshot_id": None,
        "source_volid": None,
        "metadata": volume["metadata"],
        "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link}],
        "user_id": volume["user_id"],
        "bootable": volume["bootable"],
        "encrypted": volume["encrypted"],
        "replication_status": None,
        "consistencygroup_id": None,
        "multiattach": volume["multiattach"],
        "migration_status": None,
        "os-vol-tenant-attr:tenant_id": volume["project_id"],
    }
    if version >= Version(3, 13):
        body["group_id"] = volume["group_id"]
    return body


def _respond(body: Any, version: Version, status: int = 200) -> Response:
    return with_version(json_response(body, status), version)


# --- requests --------------------------------------------------------------------------------

_METADATA = {
    "type": ["object", "null"],
    "patternProperties": {"^[a-zA-Z0-9-_:. /]{1,255}$": {"type": "string", "maxLength": 255}},
    "additionalProperties": False,
}
_TEXT = {"type": ["string", "null"], "maxLength": 255}
_OPTIONAL_UUID = {"oneOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]}


def create_schema(version: Version) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "name": _TEXT,
        "description": _TEXT,
        "display_name": _TEXT,
        "display_description": _TEXT,
        "volume_type": {"type": ["string", "null"], "maxLength": 255},
        "metadata": _METADATA,
        "snapshot_id": _OPTIONAL_UUID,
        "source_volid": _OPTIONAL_UUID,
        "consistencygroup_id": _OPTIONAL_UUID,
        "size": {"type": ["integer", "string", "null"], "pattern": "^[0-9]+$"},
        "availability_zone": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
        "multiattach": {"type": ["boolean", "null"]},
        "image_id": _TEXT,
        "imageRef": _TEXT,
    }
    if version >= Version(3, 13):
        properties["group_id"] = _TEXT
    if version >= Version(3, 47):
        properties["backup_id"] = _OPTIONAL_UUID
    return {
        "type": "object",
        "properties": {
            "volume": {
                "type": "object",
                "properties": properties,
                "additionalProperties": version < STRICT_BODY,
            },
            "OS-SCH-HNT:scheduler_hints": {"type": ["object", "null"]},
        },
        "required": ["volume"],
        "additionalProperties": False,
    }


def update_schema(version: Version) -> dict[str, Any]:
    volume: dict[str, Any] = {
        "type": "object",
        "properties": {
            "name": _TEXT,
            "description": _TEXT,
            "display_name": _TEXT,
            "display_description": _TEXT,
            "metadata": {**_METADATA, "type": "object"},
        },
        "additionalProperties": False,
    }
    if version >= STRICT_BODY:
        volume["anyOf"] = [{"required": [key]} for key in volume["properties"]]
    return {
        "type": "object",
        "properties": {"volume": volume},
        "required": ["volume"],
        "additionalProperties": False,
    }


EXTEND_SCHEMA = {
    "type": "object",
    "properties": {
        "os-extend": {
            "type": "object",
            "properties": {"new_size": {"type": ["integer", "string"], "pattern": "^[0-9]+$"}},
            "required": ["new_size"],
            "additionalProperties": False,
        }
    },
    "required": ["os-extend"],
    "additionalProperties": False,
}


def create_volume(project_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    body = request_json(_bad_request)
    validate_body(body, create_schema(version), _bad_request)
    attributes = dict(body["volume"])
    for legacy, key in (("display_name", "name"), ("display_description", "description")):
        if attributes.get(legacy) is not None and attributes.get(key) is None:
            attributes[key] = attributes[legacy]
    if attributes.get("multiattach"):
        raise VolumeError(
            400,
            "multiattach parameter has been removed. The default behavior is to use multiattach "
            "enabled volume types. Contact your administrator to create a multiattach enabled "
            "volume type and use it to create multiattach volumes.",
        )
    for source, what in (
        ("snapshot_id", "snapshots"),
        ("source_volid", "other volumes"),
        ("imageRef", "images"),
        ("image_id", "images"),
        ("backup_id", "backups"),
        ("consistencygroup_id", "consistency groups"),
        ("group_id", "groups"),
    ):
        if attributes.get(source):
            raise VolumeError(501, f"The twin does not create volumes from {what} ({source}).")
    size = attributes.get("size")
    if size is None or int(size) < 1:
        raise VolumeError(
            400,
            f"Invalid input received: Volume size '{size}' must be an integer and greater than 0",
        )
    zone = attributes.get("availability_zone")
    if zone is not None and zone != "nova":
        raise VolumeError(400, f"Availability zone '{zone}' is invalid.")
    volume = twin().volume.create(attributes)
    return _respond({"volume": render(volume, version)}, version, 202)


def _filtered(volumes: list[dict[str, Any]], version: Version) -> list[dict[str, Any]]:
    filters = {key: request.args.get(key) for key in request.args if key not in PAGING}
    if "all_tenants" in filters:
        filters.pop("all_tenants")
    unknown = [key for key in filters if key not in VOLUME_FILTERS]
    if unknown and version >= FILTERING_CHECKED:
        # cinder/api/common.py reject_invalid_filters
        raise VolumeError(400, f"Invalid filters {','.join(unknown)} are found in query options.")
    for key in unknown:
        # Before 3.34 Cinder drops the filters a user may not use, without a word
        # (cinder/api/api_utils.py remove_invalid_filter_options).
        filters.pop(key)
    for key, value in filters.items():
        if key == "metadata":
            try:
                wanted = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise VolumeError(400, f"Invalid metadata filter: {value}") from None
            if not isinstance(wanted, dict):
                raise VolumeError(400, f"Invalid metadata filter: {value}")
            volumes = [
                volume for volume in volumes
                if all(volume["metadata"].get(str(k)) == str(v) for k, v in wanted.items())
            ]  # fmt: skip
        elif key in ("created_at", "updated_at", "consumes_quota", "group_id", "migration_status"):
            raise VolumeError(501, f"The twin does not filter volumes by {key}.")
        elif key == "size":
            volumes = [volume for volume in volumes if str(volume["size"]) == value]
        else:
            volumes = [volume for volume in volumes if str(volume.get(key)) == value]
    return volumes


def _listing(detail: bool) -> Response:
    version = microversion()
    volumes = sorted(
        twin().volume.volumes.values(), key=lambda volume: volume["created_at"], reverse=True
    )
    volumes = _filtered(volumes, version)
    marker = request.args.get("marker")
    if marker:
        ids = [volume["id"] for volume in volumes]
        if marker not in ids:
            raise VolumeError(404, f"Marker {marker} could not be found.")
        volumes = volumes[ids.index(marker) + 1 :]
    body: dict[str, Any] = {}
    limit = request.args.get("limit")
    if limit is not None:
        if not limit.isdigit():
            raise VolumeError(400, "limit param must be an integer")
        if len(volumes) > int(limit):
            volumes = volumes[: int(limit)]
            body["volumes_links"] = [
                {
                    "rel": "next",
                    "href": f"{request.base_url}?{next_query(volumes[-1]['id'])}",
                }
            ]
    if detail:
        body["volumes"] = [render(volume, version) for volume in volumes]
    else:
        body["volumes"] = [
            {"id": item["id"], "name": item["name"], "links": item["links"]}
            for item in (render(volume, version) for volume in volumes)
        ]
    return _respond(body, version)


def next_query(marker: str) -> str:
    """The request's parameters with the marker replaced (cinder/api/common.py _get_next_link)."""
    params = [(key, value) for key, value in request.args.items(multi=True) if key != "marker"]
    return urlencode([*params, ("marker", marker)])


def list_volumes(project_id: str) -> Response:
    check_project(project_id)
    return _listing(detail=False)


def list_volumes_detail(project_id: str) -> Response:
    check_project(project_id)
    return _listing(detail=True)


def show_volume(project_id: str, volume_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    return _respond({"volume": render(twin().volume.get(volume_id), version)}, version)


def update_volume(project_id: str, volume_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    volume = twin().volume.get(volume_id)
    body = request_json(_bad_request)
    validate_body(body, update_schema(version), _bad_request)
    changes = dict(body["volume"])
    for legacy, key in (("display_name", "name"), ("display_description", "description")):
        if legacy in changes:
            changes[key] = changes.pop(legacy)
    twin().volume.update(volume, changes)
    return _respond({"volume": render(volume, version)}, version)


def delete_volume(project_id: str, volume_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    backend = twin().volume
    if request.args.get("cascade") or request.args.get("force"):
        raise VolumeError(501, "The twin does not serve cascade or force deletes.")
    backend.delete(backend.get(volume_id))
    return with_version(Response(status=202), version)


def volume_action(project_id: str, volume_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    volume = twin().volume.get(volume_id)
    body = request_json(_bad_request)
    if not isinstance(body, dict) or len(body) != 1:
        raise VolumeError(400, "Malformed request body")
    action = next(iter(body))
    if action == "os-extend":
        validate_body(body, EXTEND_SCHEMA, _bad_request)
        new_size = int(body["os-extend"]["new_size"])
        twin().volume.extend(volume, new_size, version >= ONLINE_EXTEND)
        return with_version(Response(status=202), version)
    if action in KNOWN_ACTIONS:
        raise VolumeError(501, f"The twin does not serve the volume action {action}.")
    raise VolumeError(
        400,
        f"There is no such action: {action}. Verify the request body and Content-Type header "
        "and try again.",
    )


def _render_type(volume_type: dict[str, Any]) -> dict[str, Any]:
    return {**volume_type, "os-volume-type-access:is_public": volume_type["is_public"]}


def list_types(project_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    types = [_render_type(each) for each in twin().volume.types.values()]
    return _respond({"volume_types": types}, version)


def show_type(project_id: str, type_id: str) -> Response:
    version = microversion()
    check_project(project_id)
    backend = twin().volume
    if type_id == "default":
        found = backend.find_type("__DEFAULT__")
    else:
        found = backend.types.get(type_id)
        if found is None:
            raise VolumeError(404, f"Volume type {type_id} could not be found.")
    return _respond({"volume_type": _render_type(found)}, version)


def volume_not_found(volume_id: str) -> VolumeError:
    return not_found(volume_id)


# --- user messages ---------------------------------------------------------------------------

# cinder/message/message_field.py, Action.ALL and Detail.ALL: what the twin's messages name.
ACTIONS = dict([EXTEND_VOLUME])
DETAILS = dict([NO_BACKEND_AVAILABLE, ("010", "Volume Driver failed to extend volume.")])


def render_message(message: dict[str, Any]) -> dict[str, Any]:
    """cinder/api/v3/views/messages.py ViewBuilder.detail, with the text of
    MessagesController._build_user_message: "<action>:<detail>"."""
    link = f"{base_url()}/volume/v3/{message['project_id']}/messages/{message['id']}"
    action = ACTIONS.get(message["action_id"], "unknown action")
    detail = DETAILS.get(message["detail_id"], "An unknown error occurred.")
    return {
        "id": message["id"],
        "event_id": message["event_id"],
        "user_message": f"{action}:{detail}",
        "message_level": message["message_level"],
        "created_at": iso_micro(message["created_at"]),
        "guaranteed_until": iso_micro(message["expires_at"]),
        "request_id": message["request_id"],
        "links": [{"rel": "self", "href": link}, {"rel": "bookmark", "href": link}],
        "resource_type": message["resource_type"],
        "resource_uuid": message["resource_uuid"],
    }


def _messages_version() -> Version:
    """Messages exist from 3.3; below it Cinder answers as for a method it does not have
    (cinder/api/openstack/wsgi.py Resource.dispatch: VersionNotFoundForAPIMethod becomes a
    bare 404)."""
    version = microversion()
    if version < MESSAGES:
        raise VolumeError(404, "The resource could not be found.")
    return version


def list_messages(project_id: str) -> Response:
    """MessagesController.index: newest first; filters from 3.5, checked from 3.31."""
    version = _messages_version()
    check_project(project_id)
    mine = twin().identity.project_id
    messages = [m for m in twin().volume.messages.values() if m["project_id"] == mine]
    messages.sort(key=lambda message: message["created_at"], reverse=True)
    if version >= MESSAGES_PAGINATION:
        filters = {key: request.args.get(key) for key in request.args}
        paging = [key for key in filters if key in PAGING]
        if paging:
            raise VolumeError(501, f"The twin does not page messages ({', '.join(paging)}).")
        unknown = [key for key in filters if key not in MESSAGE_FILTERS]
        if unknown and version >= RESOURCE_FILTER:
            raise VolumeError(
                400, f"Invalid filters {','.join(unknown)} are found in query options."
            )
        for key, value in filters.items():
            if key in MESSAGE_FILTERS:
                messages = [message for message in messages if message.get(key) == value]
    return _respond({"messages": [render_message(message) for message in messages]}, version)


def show_message(project_id: str, message_id: str) -> Response:
    """MessagesController.show."""
    version = _messages_version()
    check_project(project_id)
    message = twin().volume.messages.get(message_id)
    if message is None or message["project_id"] != twin().identity.project_id:
        raise VolumeError(404, f"Message {message_id} could not be found.")
    return _respond({"message": render_message(message)}, version)


# --- quotas ------------------------------------------------------------------------------------


def show_quota_set(project_id: str, target_project_id: str) -> Response:
    """QuotaSetsController.show: the limits, and with ?usage=true in_use and reserved too; a
    project member may read only its own project's (volume_extension:quotas:show)."""
    version = microversion()
    check_project(project_id)
    if target_project_id != twin().identity.project_id:
        raise VolumeError(403, "Policy doesn't allow volume_extension:quotas:show to be performed.")
    quotas = twin().volume.quota_set()
    usage = request.args.get("usage", "false").strip().lower()
    if usage not in TRUE_TEXTS + FALSE_TEXTS:
        raise VolumeError(400, f"Value '{request.args.get('usage')}' for 'usage' is not a boolean.")
    body: dict[str, Any] = (
        dict(quotas)
        if usage in TRUE_TEXTS
        else {name: values["limit"] for name, values in quotas.items()}
    )
    body["id"] = target_project_id
    return _respond({"quota_set": body}, version)
