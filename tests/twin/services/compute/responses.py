"""Nova v2.1 requests and responses (nova/api/openstack/compute/servers.py, views/servers.py,
flavors.py, keypairs.py, volume_attachments.py, server_tags.py, schemas/).

Calls as terraform-provider-openstack v3.4.0 makes them (gophercloud v2.8.0
openstack/compute/v2), with no microversion header unless named:
  resource_openstack_compute_instance_v2.go
    gophercloud/utils flavors.IDFromName  GET /flavors/detail (name matched client side)
    POST /servers {name, imageRef, flavorRef, key_name, networks[{uuid, port}], user_data
      (base64), metadata, config_drive, security_groups} -> 202; GET /servers/{id} until
      ACTIVE; read: status, flavor.id (so no 2.47 embedded flavor by default), image.id,
      addresses{<network>: [{addr, version, OS-EXT-IPS:type, OS-EXT-IPS-MAC:mac_addr}]},
      security_groups[{name}], key_name, metadata; GET /flavors/{id};
      GET /servers/{id}/tags at microversion 2.26 (errors ignored);
      delete: POST action {"os-stop": null} then GET until SHUTOFF (stop_before_destroy),
      DELETE, GET until 404
  resource_openstack_compute_volume_attach_v2.go
    POST /servers/{id}/os-volume_attachments -> 200 {volumeAttachment{id, serverId,
      volumeId, device}}; GET .../{attachment id} and the volume until in-use;
      detach: GET then DELETE (202) repeated until GET answers 404 (a 400 means "not yet")
Before 2.89 an attachment's id is its volume's id (views: _translate_attachment_detail_view).
The program itself (not the provider) reads GET /limits through keystoneauth1, before it makes
anything, to check the project's quotas (nova/api/openstack/compute/limits.py, views/limits.py).
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Response, request

from tests.twin.services.compute.models import STATUS_OF, bad_request
from tests.twin.services.core import (
    FORMAT_CHECKER,
    ComputeError,
    Version,
    base_url,
    json_response,
    request_json,
    requested_microversion,
    twin,
    validate_body,
)
from tests.twin.services.state import iso_micro, iso_seconds_z

MINIMUM = Version(2, 1)
MAXIMUM = Version(2, 60)
KNOWN_ACTIONS = (
    "reboot", "resize", "confirmResize", "revertResize", "rebuild", "createImage",
    "changePassword", "addSecurityGroup", "removeSecurityGroup", "lock", "unlock", "pause",
    "unpause", "suspend", "resume", "shelve", "shelveOffload", "unshelve", "rescue",
    "unrescue", "migrate", "os-migrateLive", "evacuate", "forceDelete", "restore",
    "trigger_crash_dump", "os-resetState", "injectNetworkInfo", "resetNetwork", "addFixedIp",
    "removeFixedIp", "os-getVNCConsole", "os-getSPICEConsole", "os-getSerialConsole",
    "os-getRDPConsole", "createBackup", "addFloatingIp", "removeFloatingIp",
)  # fmt: skip
TRUE_TEXTS = ("True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes")
FALSE_TEXTS = ("False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No", "no")


@FORMAT_CHECKER.checks("keypair_name_20")
def _keypair_name(instance: object) -> bool:
    return not isinstance(instance, str) or all(
        character.isalnum() or character in " _-" for character in instance
    )


def _bad_request(message: str) -> ComputeError:
    return ComputeError(400, message)


def microversion() -> Version:
    return requested_microversion(
        "compute", "X-OpenStack-Nova-API-Version", MINIMUM, MAXIMUM, ComputeError
    )


def _respond(body: Any, version: Version, status: int = 200) -> Response:
    response = json_response(body, status) if body is not None else Response(status=status)
    response.headers["OpenStack-API-Version"] = f"compute {version}"
    response.headers["X-OpenStack-Nova-API-Version"] = str(version)
    response.headers["Vary"] = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"
    return response


def _root() -> str:
    return base_url() + "/compute"


def _version_document(current: bool) -> dict[str, Any]:
    if current:
        return {
            "id": "v2.1",
            "status": "CURRENT",
            "version": str(MAXIMUM),
            "min_version": str(MINIMUM),
            "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{_root()}/v2.1/"}],
        }
    return {
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": f"{_root()}/v2/"}],
    }


def versions() -> Response:
    return json_response({"versions": [_version_document(False), _version_document(True)]})


def version() -> Response:
    return json_response({"version": _version_document(True)})


def _links(kind: str, item_id: str) -> list[dict[str, str]]:
    project_id = twin().identity.project_id
    return [
        {"rel": "self", "href": f"{_root()}/v2.1/{kind}/{item_id}"},
        {"rel": "bookmark", "href": f"{_root()}/{project_id}/{kind}/{item_id}"},
    ]


# --- flavors ---------------------------------------------------------------------------------


def render_flavor(flavor: dict[str, Any], version: Version, detail: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": flavor["id"],
        "name": flavor["name"],
        "links": _links("flavors", flavor["id"]),
    }
    if version >= Version(2, 55):
        body["description"] = flavor["description"]
    if detail:
        body.update(
            {
                "ram": flavor["ram"],
                "disk": flavor["disk"],
                "vcpus": flavor["vcpus"],
                # Before 2.75 Nova answers "" for no swap; gophercloud reads both.
                "swap": flavor["swap"] or "",
                "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral"],
                "OS-FLV-DISABLED:disabled": False,
                "os-flavor-access:is_public": flavor["is_public"],
                "rxtx_factor": flavor["rxtx_factor"],
            }
        )
    return body


def _flavor_list(detail: bool) -> Response:
    version = microversion()
    flavors = sorted(
        twin().compute.flavors.values(), key=lambda flavor: (flavor["ram"], flavor["id"])
    )
    for key, field in (("minRam", "ram"), ("minDisk", "disk")):
        if key in request.args:
            text = request.args[key]
            if not text.isdigit():
                raise bad_request(f"Invalid {key} filter [{text}]")
            flavors = [flavor for flavor in flavors if flavor[field] >= int(text)]
    return _respond(
        {"flavors": [render_flavor(flavor, version, detail) for flavor in flavors]}, version
    )


def list_flavors() -> Response:
    return _flavor_list(detail=False)


def list_flavors_detail() -> Response:
    return _flavor_list(detail=True)


def show_flavor(flavor_id: str) -> Response:
    version = microversion()
    return _respond(
        {"flavor": render_flavor(twin().compute.get_flavor(flavor_id), version)}, version
    )


# --- key pairs -----------------------------------------------------------------------------

KEYPAIR_SCHEMA = {
    "type": "object",
    "properties": {
        "keypair": {
            "type": "object",
            "properties": {
                "name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "format": "keypair_name_20",
                },
                "public_key": {"type": "string"},
                "type": {"type": "string", "enum": ["ssh", "x509"]},
                "user_id": {"type": "string"},
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "required": ["keypair"],
    "additionalProperties": False,
}


def render_keypair(keypair: dict[str, Any], version: Version, full: bool) -> dict[str, Any]:
    body = {
        "name": keypair["name"],
        "public_key": keypair["public_key"],
        "fingerprint": keypair["fingerprint"],
    }
    if version >= Version(2, 2):
        body["type"] = keypair["type"]
    if full:
        body.update(
            {
                "user_id": keypair["user_id"],
                "created_at": iso_micro(keypair["created_at"]),
                "deleted": False,
                "deleted_at": None,
                "updated_at": None,
                "id": keypair["id"],
            }
        )
    return body


def create_keypair() -> Response:
    version = microversion()
    body = request_json(_bad_request)
    schema = KEYPAIR_SCHEMA
    if version < Version(2, 2) or version < Version(2, 10):
        schema = {
            **KEYPAIR_SCHEMA,
            "properties": {"keypair": dict(KEYPAIR_SCHEMA["properties"]["keypair"])},
        }
        properties = dict(schema["properties"]["keypair"]["properties"])
        if version < Version(2, 2):
            properties.pop("type")
        if version < Version(2, 10):
            properties.pop("user_id")
        schema["properties"]["keypair"]["properties"] = properties
    validate_body(body, schema, _bad_request)
    given = body["keypair"]
    if given.get("user_id") not in (None, twin().identity.user_id):
        raise ComputeError(
            403, "Policy doesn't allow os_compute_api:os-keypairs:create to be performed."
        )
    keypair = twin().compute.create_keypair(
        given["name"], given.get("public_key"), given.get("type", "ssh")
    )
    rendered = {
        **render_keypair(keypair, version, full=False),
        "user_id": keypair["user_id"],
    }
    if keypair.get("private_key"):
        rendered["private_key"] = keypair["private_key"]
    return _respond({"keypair": rendered}, version, 201 if version >= Version(2, 2) else 200)


def list_keypairs() -> Response:
    version = microversion()
    keypairs = sorted(twin().compute.keypairs.values(), key=lambda keypair: keypair["name"])
    return _respond(
        {
            "keypairs": [
                {"keypair": render_keypair(keypair, version, full=False)} for keypair in keypairs
            ]
        },
        version,
    )


def show_keypair(name: str) -> Response:
    version = microversion()
    return _respond(
        {"keypair": render_keypair(twin().compute.get_keypair(name), version, full=True)}, version
    )


def delete_keypair(name: str) -> Response:
    version = microversion()
    twin().compute.delete_keypair(name)
    return _respond(None, version, 204 if version >= Version(2, 2) else 202)


# --- servers ---------------------------------------------------------------------------------

_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
_BOOLEAN = {"type": ["boolean", "string"], "enum": [True, False, *TRUE_TEXTS, *FALSE_TEXTS]}
_POSITIVE = {"type": ["integer", "string"], "pattern": "^[0-9]*$", "minimum": 1}


def server_schema(version: Version) -> dict[str, Any]:
    network_item: dict[str, Any] = {
        "type": "object",
        "properties": {
            "fixed_ip": {"type": "string", "oneOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
            "port": {"type": ["string", "null"], "format": "uuid"},
            "uuid": {"type": "string"},
        },
        "additionalProperties": False,
    }
    if version >= Version(2, 32):
        network_item["properties"]["tag"] = {
            "type": "string",
            "maxLength": 60,
            "pattern": "^[^,/]*$",
        }
    networks: dict[str, Any] = {"type": "array", "items": network_item}
    if version >= Version(2, 37):
        networks = {"oneOf": [networks, {"type": "string", "enum": ["none", "auto"]}]}
    properties: dict[str, Any] = {
        "name": _NAME,
        "imageRef": {
            "oneOf": [{"type": "string", "format": "uuid"}, {"type": "string", "maxLength": 0}]
        },
        "flavorRef": {"type": ["string", "integer"], "minLength": 1},
        "adminPass": {"type": "string"},
        "metadata": {
            "type": "object",
            "patternProperties": {
                "^[a-zA-Z0-9-_:. ]{1,255}$": {"type": "string", "maxLength": 255}
            },
            "additionalProperties": False,
        },
        "networks": networks,
        "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
        "accessIPv4": {"type": "string", "format": "ipv4"},
        "accessIPv6": {"type": "string", "format": "ipv6"},
        "personality": {"type": "array"},
        "availability_zone": _NAME,
        "block_device_mapping": {"type": "array"},
        "block_device_mapping_v2": {"type": "array"},
        "config_drive": _BOOLEAN,
        "key_name": _NAME,
        "min_count": _POSITIVE,
        "max_count": _POSITIVE,
        "return_reservation_id": _BOOLEAN,
        "security_groups": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": _NAME},
                "additionalProperties": False,
            },
        },
        "user_data": {"type": "string", "format": "base64", "maxLength": 65535},
    }
    if version >= Version(2, 19):
        properties["description"] = {"type": ["string", "null"], "maxLength": 255}
    if version >= Version(2, 52):
        properties["tags"] = {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 60},
            "maxItems": 50,
        }
    return {
        "type": "object",
        "properties": {
            "server": {
                "type": "object",
                "properties": properties,
                "required": ["name", "flavorRef"],
                "additionalProperties": False,
            },
            "os:scheduler_hints": {"type": "object"},
            "OS-SCH-HNT:scheduler_hints": {"type": "object"},
        },
        "required": ["server"],
        "additionalProperties": False,
    }


def _check_name(name: str) -> None:
    if name != name.strip() or not name.isprintable():
        raise bad_request(
            "An invalid 'name' value was provided. The name must be: printable characters. "
            "Can not start or end with whitespace."
        )


def _addresses(server: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    network = twin().network
    addresses: dict[str, list[dict[str, Any]]] = {}
    for port_id in server["ports"]:
        port = network.ports.get(port_id)
        if port is None:
            continue
        name = network.networks[port["network_id"]]["name"]
        entries = addresses.setdefault(name, [])
        for fixed in port["fixed_ips"]:
            entries.append(
                {
                    "version": 6 if ":" in fixed["ip_address"] else 4,
                    "addr": fixed["ip_address"],
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": port["mac_address"],
                }
            )
        for address in network.floating_addresses_of(port_id):
            entries.append(
                {
                    "version": 4,
                    "addr": address,
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": port["mac_address"],
                }
            )
    return addresses


def _security_group_names(server: dict[str, Any]) -> list[dict[str, str]]:
    network = twin().network
    names: list[str] = []
    for port_id in server["ports"]:
        port = network.ports.get(port_id)
        for group_id in port["security_groups"] if port else []:
            group = network.security_groups.get(group_id)
            if group is not None and group["name"] not in names:
                names.append(group["name"])
    return [{"name": name} for name in names]


def render_server(server: dict[str, Any], version: Version) -> dict[str, Any]:
    status = STATUS_OF[server["vm_state"]]
    flavor = server["flavor"]
    if version >= Version(2, 47):
        flavor_body: dict[str, Any] = {
            "vcpus": flavor["vcpus"],
            "ram": flavor["ram"],
            "disk": flavor["disk"],
            "ephemeral": flavor["ephemeral"],
            "swap": flavor["swap"],
            "original_name": flavor["name"],
            "extra_specs": flavor["extra_specs"],
        }
    else:
        flavor_body = {"id": flavor["id"], "links": _links("flavors", flavor["id"])[1:]}
    host_id = hashlib.sha224((server["project_id"] + "twin").encode()).hexdigest()
    body: dict[str, Any] = {
        "id": server["id"],
        "name": server["name"],
        "status": status,
        "tenant_id": server["project_id"],
        "user_id": server["user_id"],
        "metadata": server["metadata"],
        "hostId": host_id if server["booted"] else "",
        "image": {"id": server["image_id"], "links": _links("images", server["image_id"])[1:]},
        "flavor": flavor_body,
        "created": iso_seconds_z(server["created"]),
        "updated": iso_seconds_z(server["updated"]),
        "addresses": _addresses(server),
        "accessIPv4": "",
        "accessIPv6": "",
        "links": _links("servers", server["id"]),
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": server["availability_zone"] if server["booted"] else "",
        "config_drive": "True" if server["config_drive"] else "",
        "key_name": server["key_name"],
        "OS-SRV-USG:launched_at": iso_micro(server["launched_at"])
        if server["launched_at"]
        else None,
        "OS-SRV-USG:terminated_at": None,
        "OS-EXT-STS:task_state": server["task_state"],
        "OS-EXT-STS:vm_state": server["vm_state"],
        "OS-EXT-STS:power_state": server["power_state"],
        "os-extended-volumes:volumes_attached": [
            {
                "id": volume_id,
                **({"delete_on_termination": False} if version >= Version(2, 3) else {}),
            }
            for volume_id in server["attachments"]
        ],
    }
    groups = _security_group_names(server)
    if groups:
        body["security_groups"] = groups
    if status in ("ACTIVE", "BUILD"):
        body["progress"] = 0
    if status == "ERROR" and server["fault"]:
        body["fault"] = {
            "code": server["fault"]["code"],
            "message": server["fault"]["message"],
            "created": iso_seconds_z(server["fault"]["created"]),
        }
    if version >= Version(2, 9):
        body["locked"] = False
    if version >= Version(2, 19):
        body["description"] = server["description"]
    if version >= Version(2, 26):
        body["tags"] = list(server["tags"])
    return body


def create_server() -> Response:
    version = microversion()
    body = request_json(_bad_request)
    validate_body(body, server_schema(version), _bad_request)
    given = body["server"]
    _check_name(given["name"])
    for key in ("block_device_mapping", "block_device_mapping_v2", "personality"):
        if given.get(key):
            raise ComputeError(501, f"The twin does not serve {key} in a server create.")
    for key in ("min_count", "max_count"):
        if key in given and int(given[key]) != 1:
            raise ComputeError(501, "The twin creates one server at a time (min_count, max_count).")
    for key in ("os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"):
        if body.get(key):
            raise ComputeError(501, f"The twin does not serve scheduler hints ({key}).")
    if "config_drive" in given and not isinstance(given["config_drive"], bool):
        given["config_drive"] = given["config_drive"] in TRUE_TEXTS
    server, password = twin().compute.create_server(given)
    groups = server["requested_security_groups"] or ["default"]
    created = {
        "id": server["id"],
        "links": _links("servers", server["id"]),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": name} for name in groups],
        "adminPass": password,
    }
    response = _respond({"server": created}, version, 202)
    response.headers["Location"] = f"{_root()}/v2.1/servers/{server['id']}"
    return response


def _server_list(detail: bool) -> Response:
    import re

    version = microversion()
    servers = sorted(
        twin().compute.servers.values(), key=lambda server: server["created"], reverse=True
    )
    name = request.args.get("name")
    if name:
        # A regular expression, searched in the name (nova/db/main/api.py
        # _regex_instance_filter).
        try:
            pattern = re.compile(name)
        except re.error:
            raise bad_request(f"Invalid regular expression for name: {name}") from None
        servers = [server for server in servers if pattern.search(server["name"])]
    status = request.args.get("status")
    if status:
        if status.upper() not in (*STATUS_OF.values(), "DELETED", "SOFT_DELETED"):
            raise bad_request(f"Invalid status value: {status}")
        servers = [server for server in servers if STATUS_OF[server["vm_state"]] == status.upper()]
    for key, field in (("image", "image_id"), ("key_name", "key_name")):
        if key in request.args:
            servers = [server for server in servers if server[field] == request.args[key]]
    if "flavor" in request.args:
        servers = [server for server in servers if server["flavor"]["id"] == request.args["flavor"]]
    if detail:
        items = [render_server(server, version) for server in servers]
    else:
        items = [
            {"id": server["id"], "name": server["name"], "links": _links("servers", server["id"])}
            for server in servers
        ]
    return _respond({"servers": items}, version)


def list_servers() -> Response:
    return _server_list(detail=False)


def list_servers_detail() -> Response:
    return _server_list(detail=True)


def show_server(server_id: str) -> Response:
    version = microversion()
    return _respond(
        {"server": render_server(twin().compute.get_server(server_id), version)}, version
    )


def update_server(server_id: str) -> Response:
    version = microversion()
    server = twin().compute.get_server(server_id)
    properties: dict[str, Any] = {
        "name": _NAME,
        "accessIPv4": {"type": "string"},
        "accessIPv6": {"type": "string"},
        "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
    }
    if version >= Version(2, 19):
        properties["description"] = {"type": ["string", "null"], "maxLength": 255}
    schema = {
        "type": "object",
        "properties": {
            "server": {"type": "object", "properties": properties, "additionalProperties": False}
        },
        "required": ["server"],
        "additionalProperties": False,
    }
    body = request_json(_bad_request)
    validate_body(body, schema, _bad_request)
    changes = body["server"]
    if changes.get("accessIPv4") or changes.get("accessIPv6"):
        raise ComputeError(501, "The twin does not serve accessIPv4 or accessIPv6.")
    if "name" in changes:
        _check_name(changes["name"])
        server["name"] = changes["name"]
    if "description" in changes:
        server["description"] = changes["description"]
    return _respond({"server": render_server(server, version)}, version)


def delete_server(server_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    compute.delete_server(compute.get_server(server_id))
    return _respond(None, version, 204)


def server_action(server_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    server = compute.get_server(server_id)
    body = request_json(_bad_request)
    if not isinstance(body, dict) or len(body) != 1:
        raise bad_request("Malformed request body")
    action = next(iter(body))
    if action == "os-stop":
        compute.stop_server(server)
        return _respond(None, version, 202)
    if action == "os-start":
        compute.start_server(server)
        return _respond(None, version, 202)
    if action == "os-getConsoleOutput":
        # nova/api/openstack/compute/schemas/console_output.py: {"length": int, "-1"-style
        # text or null}, nothing else.
        schema = {
            "type": "object",
            "properties": {
                action: {
                    "type": "object",
                    "properties": {
                        "length": {
                            "type": ["integer", "string", "null"],
                            "pattern": "^-?[0-9]+$",
                            "minimum": -1,
                        }
                    },
                    "additionalProperties": False,
                }
            },
            "required": [action],
            "additionalProperties": False,
        }
        validate_body(body, schema, _bad_request)
        length = (body[action] or {}).get("length")
        output = compute.console_output(server, None if length is None else int(length))
        return _respond({"output": output}, version)
    if action in KNOWN_ACTIONS:
        raise ComputeError(501, f"The twin does not serve the server action {action}.")
    raise bad_request(f"There is no such action: {action}")


# --- tags and metadata ---------------------------------------------------------------------


def _tags_version(server_id: str) -> tuple[Version, dict[str, Any]]:
    version = microversion()
    if version < Version(2, 26):
        raise ComputeError(404, "The resource could not be found.")
    return version, twin().compute.get_server(server_id)


def list_tags(server_id: str) -> Response:
    version, server = _tags_version(server_id)
    return _respond({"tags": list(server["tags"])}, version)


def replace_tags(server_id: str) -> Response:
    version, server = _tags_version(server_id)
    body = request_json(_bad_request)
    schema = {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"},
                "maxItems": 50,
            }
        },
        "required": ["tags"],
        "additionalProperties": False,
    }
    validate_body(body, schema, _bad_request)
    server["tags"] = list(dict.fromkeys(body["tags"]))
    return _respond({"tags": server["tags"]}, version)


def delete_tags(server_id: str) -> Response:
    version, server = _tags_version(server_id)
    server["tags"] = []
    return _respond(None, version, 204)


def check_tag(server_id: str, tag: str) -> Response:
    version, server = _tags_version(server_id)
    if tag not in server["tags"]:
        raise ComputeError(404, f"Tag '{tag}' could not be found for instance {server_id}")
    return _respond(None, version, 204)


def add_tag(server_id: str, tag: str) -> Response:
    version, server = _tags_version(server_id)
    if not tag or len(tag) > 60 or "," in tag or "/" in tag:
        raise bad_request(f"Invalid input for field/attribute tag. Value: {tag}.")
    if tag in server["tags"]:
        return _respond(None, version, 204)
    if len(server["tags"]) >= 50:
        raise bad_request("The number of tags exceeded the per-server limit 50")
    server["tags"].append(tag)
    response = _respond(None, version, 201)
    response.headers["Location"] = f"{_root()}/v2.1/servers/{server_id}/tags/{tag}"
    return response


def delete_tag(server_id: str, tag: str) -> Response:
    version, server = _tags_version(server_id)
    if tag not in server["tags"]:
        raise ComputeError(404, f"Tag '{tag}' could not be found for instance {server_id}")
    server["tags"].remove(tag)
    return _respond(None, version, 204)


_METADATA_BODY = {
    "type": "object",
    "properties": {
        "metadata": {
            "type": "object",
            "patternProperties": {
                "^[a-zA-Z0-9-_:. ]{1,255}$": {"type": "string", "maxLength": 255}
            },
            "additionalProperties": False,
        }
    },
    "required": ["metadata"],
    "additionalProperties": False,
}


def show_metadata(server_id: str) -> Response:
    version = microversion()
    return _respond({"metadata": twin().compute.get_server(server_id)["metadata"]}, version)


def update_metadata(server_id: str) -> Response:
    """POST merges, PUT replaces (nova/api/openstack/compute/server_metadata.py)."""
    version = microversion()
    server = twin().compute.get_server(server_id)
    body = request_json(_bad_request)
    validate_body(body, _METADATA_BODY, _bad_request)
    if request.method == "PUT":
        server["metadata"] = dict(body["metadata"])
    else:
        server["metadata"].update(body["metadata"])
    return _respond({"metadata": server["metadata"]}, version)


def show_metadata_item(server_id: str, key: str) -> Response:
    version = microversion()
    metadata = twin().compute.get_server(server_id)["metadata"]
    if key not in metadata:
        raise ComputeError(404, "Metadata item was not found")
    return _respond({"meta": {key: metadata[key]}}, version)


def set_metadata_item(server_id: str, key: str) -> Response:
    version = microversion()
    server = twin().compute.get_server(server_id)
    body = request_json(_bad_request)
    if (
        not isinstance(body, dict)
        or not isinstance(body.get("meta"), dict)
        or len(body["meta"]) != 1
    ):
        raise bad_request("Request body contains too many items")
    if key not in body["meta"]:
        raise bad_request("Request body and URI mismatch")
    value = body["meta"][key]
    if not isinstance(value, str) or len(value) > 255:
        raise bad_request(f"Invalid input for field/attribute {key}. Value: {value}.")
    server["metadata"][key] = value
    return _respond({"meta": {key: value}}, version)


def delete_metadata_item(server_id: str, key: str) -> Response:
    version = microversion()
    metadata = twin().compute.get_server(server_id)["metadata"]
    if key not in metadata:
        raise ComputeError(404, "Metadata item was not found")
    del metadata[key]
    return _respond(None, version, 204)


# --- volume attachments --------------------------------------------------------------------

ATTACH_SCHEMA = {
    "type": "object",
    "properties": {
        "volumeAttachment": {
            "type": "object",
            "properties": {
                "volumeId": {"type": "string", "format": "uuid"},
                "device": {
                    "type": ["string", "null"],
                    "pattern": "(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$",
                },
            },
            "required": ["volumeId"],
            "additionalProperties": False,
        }
    },
    "required": ["volumeAttachment"],
    "additionalProperties": False,
}


def _render_attachment(
    server: dict[str, Any], volume_id: str, attachment: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": volume_id,
        "volumeId": volume_id,
        "serverId": server["id"],
        "device": attachment["device"],
    }


def list_attachments(server_id: str) -> Response:
    version = microversion()
    server = twin().compute.get_server(server_id)
    items = [
        _render_attachment(server, volume_id, attachment)
        for volume_id, attachment in server["attachments"].items()
    ]
    return _respond({"volumeAttachments": items}, version)


def create_attachment(server_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    server = compute.get_server(server_id)
    body = request_json(_bad_request)
    schema = ATTACH_SCHEMA
    if version >= Version(2, 49):
        schema = {
            **ATTACH_SCHEMA,
            "properties": {
                "volumeAttachment": {
                    **ATTACH_SCHEMA["properties"]["volumeAttachment"],
                    "properties": {
                        **ATTACH_SCHEMA["properties"]["volumeAttachment"]["properties"],
                        "tag": {"type": "string", "maxLength": 60, "pattern": "^[^,/]*$"},
                    },
                }
            },
        }
    validate_body(body, schema, _bad_request)
    given = body["volumeAttachment"]
    if given.get("tag"):
        raise ComputeError(501, "The twin does not serve tagged volume attachments.")
    attachment = compute.attach_volume(server, given["volumeId"], given.get("device"))
    return _respond({"volumeAttachment": attachment}, version, 200)


def show_attachment(server_id: str, volume_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    server = compute.get_server(server_id)
    attachment = compute.attachment(server, volume_id)
    return _respond(
        {"volumeAttachment": _render_attachment(server, volume_id, attachment)}, version
    )


def delete_attachment(server_id: str, volume_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    compute.detach_volume(compute.get_server(server_id), volume_id)
    return _respond(None, version, 202)


# --- limits ----------------------------------------------------------------------------------

# nova/api/openstack/compute/views/limits.py ViewBuilder: the quotas' names in /limits, and the
# used counts shown beside them.
LIMIT_NAMES = {
    "ram": ["maxTotalRAMSize"],
    "instances": ["maxTotalInstances"],
    "cores": ["maxTotalCores"],
    "key_pairs": ["maxTotalKeypairs"],
    "floating_ips": ["maxTotalFloatingIps"],
    "metadata_items": ["maxServerMeta", "maxImageMeta"],
    "injected_files": ["maxPersonality"],
    "injected_file_content_bytes": ["maxPersonalitySize"],
    "security_groups": ["maxSecurityGroups"],
    "security_group_rules": ["maxSecurityGroupRules"],
    "server_groups": ["maxServerGroups"],
    "server_group_members": ["maxServerGroupMembers"],
}
USED_NAMES = {
    "totalRAMUsed": "ram",
    "totalCoresUsed": "cores",
    "totalInstancesUsed": "instances",
    "totalFloatingIpsUsed": "floating_ips",
    "totalSecurityGroupsUsed": "security_groups",
    "totalServerGroupsUsed": "server_groups",
}
# nova/api/openstack/compute/limits.py: what 2.36 and 2.57 leave out.
FILTERED_LIMITS_V236 = ["floating_ips", "security_groups", "security_group_rules"]
FILTERED_LIMITS_V257 = [*FILTERED_LIMITS_V236, "injected_files", "injected_file_content_bytes"]


def limits() -> Response:
    """LimitsController.index: the project's quotas and what it uses; another project's only
    for an admin (os_compute_api:limits:other_project)."""
    version = microversion()
    tenant_id = request.args.get("tenant_id")
    if tenant_id is not None and tenant_id != twin().identity.project_id:
        raise ComputeError(
            403, "Policy doesn't allow os_compute_api:limits:other_project to be performed."
        )
    filtered: list[str] = []
    if version >= Version(2, 57):
        filtered = FILTERED_LIMITS_V257
    elif version >= Version(2, 36):
        filtered = FILTERED_LIMITS_V236
    quotas = twin().compute.quotas()
    absolute: dict[str, int] = {}
    for name, values in quotas.items():
        if name in filtered:
            continue
        for limit_name in LIMIT_NAMES.get(name, []):
            if limit_name == "maxImageMeta" and version >= Version(2, 39):
                continue
            absolute[limit_name] = values["limit"]
    for display_name, name in USED_NAMES.items():
        if name in quotas and name not in filtered:
            absolute[display_name] = quotas[name]["in_use"]
    return _respond({"limits": {"rate": [], "absolute": absolute}}, version)
