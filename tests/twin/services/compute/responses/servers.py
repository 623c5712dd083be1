"""Nova's servers: create, list, show, update, delete and actions
(nova/api/openstack/compute/servers.py, views/servers.py, schemas/servers.py)."""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Response, request

from tests.twin.services.compute.models import STATUS_OF, bad_request
from tests.twin.services.compute.responses.common import (
    compute_root,
    microversion,
    resource_links,
    respond,
)
from tests.twin.services.core import ComputeError, Version, request_json, twin, validate_body
from tests.twin.services.state import iso_micro, iso_seconds_z

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
        flavor_body = {"id": flavor["id"], "links": resource_links("flavors", flavor["id"])[1:]}
    host_id = hashlib.sha224((server["project_id"] + "twin").encode()).hexdigest()
    body: dict[str, Any] = {
        "id": server["id"],
        "name": server["name"],
        "status": status,
        "tenant_id": server["project_id"],
        "user_id": server["user_id"],
        "metadata": server["metadata"],
        "hostId": host_id if server["booted"] else "",
        "image": {
            "id": server["image_id"],
            "links": resource_links("images", server["image_id"])[1:],
        },
        "flavor": flavor_body,
        "created": iso_seconds_z(server["created"]),
        "updated": iso_seconds_z(server["updated"]),
        "addresses": _addresses(server),
        "accessIPv4": "",
        "accessIPv6": "",
        "links": resource_links("servers", server["id"]),
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
    body = request_json(bad_request)
    validate_body(body, server_schema(version), bad_request)
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
        "links": resource_links("servers", server["id"]),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": name} for name in groups],
        "adminPass": password,
    }
    response = respond({"server": created}, version, 202)
    response.headers["Location"] = f"{compute_root()}/v2.1/servers/{server['id']}"
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
            {
                "id": server["id"],
                "name": server["name"],
                "links": resource_links("servers", server["id"]),
            }
            for server in servers
        ]
    return respond({"servers": items}, version)


def list_servers() -> Response:
    return _server_list(detail=False)


def list_servers_detail() -> Response:
    return _server_list(detail=True)


def show_server(server_id: str) -> Response:
    version = microversion()
    return respond(
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
    body = request_json(bad_request)
    validate_body(body, schema, bad_request)
    changes = body["server"]
    if changes.get("accessIPv4") or changes.get("accessIPv6"):
        raise ComputeError(501, "The twin does not serve accessIPv4 or accessIPv6.")
    if "name" in changes:
        _check_name(changes["name"])
        server["name"] = changes["name"]
    if "description" in changes:
        server["description"] = changes["description"]
    return respond({"server": render_server(server, version)}, version)


def delete_server(server_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    compute.delete_server(compute.get_server(server_id))
    return respond(None, version, 204)


def server_action(server_id: str) -> Response:
    version = microversion()
    compute = twin().compute
    server = compute.get_server(server_id)
    body = request_json(bad_request)
    if not isinstance(body, dict) or len(body) != 1:
        raise bad_request("Malformed request body")
    action = next(iter(body))
    if action == "os-stop":
        compute.stop_server(server)
        return respond(None, version, 202)
    if action == "os-start":
        compute.start_server(server)
        return respond(None, version, 202)
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
        validate_body(body, schema, bad_request)
        length = (body[action] or {}).get("length")
        output = compute.console_output(server, None if length is None else int(length))
        return respond({"output": output}, version)
    if action in KNOWN_ACTIONS:
        raise ComputeError(501, f"The twin does not serve the server action {action}.")
    raise bad_request(f"There is no such action: {action}")
