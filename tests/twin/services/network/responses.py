"""Neutron v2.0 requests and responses (neutron/api/v2/base.py, neutron_lib/api/attributes.py).

Calls as terraform-provider-openstack v3.4.0 makes them (gophercloud v2.8.0
openstack/networking/v2):
  data_source_openstack_networking_network_v2.go  GET /v2.0/networks?name=...
  compute_instance_v2.go (getInstanceNetworkInfoNeutron)
      GET /v2.0/ports?id=, GET /v2.0/networks?id=&status=ACTIVE
  networking_network_v2.go  GET /v2.0/networks?name= / ?id= (pool name <-> id)
  resource_openstack_networking_port_v2.go  POST /v2.0/ports (201), GET until ACTIVE or
      DOWN, PUT, DELETE then GET until 404
  resource_openstack_networking_floatingip_v2.go  POST /v2.0/floatingips
      (floating_network_id, port_id), GET until ACTIVE or DOWN, PUT port_id, DELETE
  resource_openstack_networking_secgroup_v2.go     POST (201), GET, PUT, DELETE repeated while 409
  resource_openstack_networking_secgroup_rule_v2.go  POST (201), GET, DELETE then GET until 404
  data_source_openstack_networking_secgroup_v2.go  GET /v2.0/security-groups?name= (exactly one)
Lists take any attribute as a filter (repeated keys: any of the values); an
unknown filter is refused as Neutron does with filter validation on.
A create is checked against the project's quota after its attributes and before the plugin
sees it (neutron/api/v2/base.py Controller._create). The program itself (not the provider)
reads GET /v2.0/quotas/{project}/details through keystoneauth1
(neutron/extensions/quotasv2_detail.py DetailQuotaSetsController.details).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Response, request

from tests.twin.services.core import (
    NetworkError,
    base_url,
    is_uuid_like,
    json_response,
    request_json,
    twin,
)
from tests.twin.services.network.models import bad_request
from tests.twin.services.state import iso_seconds_z

NOT_FILTERS = ("fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse")
TAG_FILTERS = ("tags", "tags-any", "not-tags", "not-tags-any")
MAC_PATTERN = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")


def versions() -> Response:
    root = base_url() + "/network"
    return json_response(
        {
            "versions": [
                {
                    "id": "v2.0",
                    "status": "CURRENT",
                    "links": [{"rel": "self", "href": f"{root}/v2.0/"}],
                }
            ]
        }
    )


def version() -> Response:
    root = base_url() + "/network/v2.0"
    resources = [
        "networks",
        "subnets",
        "ports",
        "floatingips",
        "security-groups",
        "security-group-rules",
    ]
    return json_response(
        {
            "resources": [
                {
                    "name": name.rstrip("s").replace("-", "_"),
                    "collection": name,
                    "links": [{"rel": "self", "href": f"{root}/{name}"}],
                }
                for name in resources
            ]
        }
    )


# --- attribute checks (neutron_lib/api/validators) ---------------------------------------


def _invalid(attribute: str, reason: str) -> NetworkError:
    return bad_request(f"Invalid input for {attribute}. Reason: {reason}.")


def _string(attribute: str, value: Any, maximum: int = 255) -> Any:
    if value is None:
        return value
    if not isinstance(value, str):
        raise _invalid(attribute, f"'{value}' is not a valid string")
    if len(value) > maximum:
        raise _invalid(attribute, f"'{value}' exceeds maximum length of {maximum}")
    return value


def _boolean(attribute: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "t", "yes", "y", "on"):
        return True
    if text in ("false", "0", "f", "no", "n", "off"):
        return False
    raise _invalid(attribute, f"'{value}' cannot be converted to boolean")


def _uuid(attribute: str, value: Any) -> Any:
    if value is None:
        return value
    if not is_uuid_like(value):
        raise _invalid(attribute, f"'{value}' is not a valid UUID")
    return value


def _uuid_list(attribute: str, value: Any) -> Any:
    if value is None:
        return value
    if not isinstance(value, list):
        raise _invalid(attribute, f"'{value}' is not a list")
    for item in value:
        _uuid(attribute, item)
    return value


def _mac(attribute: str, value: Any) -> Any:
    if not isinstance(value, str) or not MAC_PATTERN.match(value):
        raise _invalid(attribute, f"'{value}' is not a valid MAC address")
    return value.lower().replace("-", ":")


def _list(attribute: str, value: Any) -> Any:
    if value is not None and not isinstance(value, list):
        raise _invalid(attribute, f"'{value}' is not a list")
    return value


def _ip(attribute: str, value: Any) -> Any:
    import ipaddress

    if value is None:
        return value
    try:
        ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise _invalid(attribute, f"'{value}' is not a valid IP address") from None
    return value


def _anything(attribute: str, value: Any) -> Any:
    return value


def _admin_only(attribute: str, value: Any) -> Any:
    raise NetworkError(
        403,
        "PolicyNotAuthorized",
        f"((rule:create_port and rule:create_port:{attribute}) is disallowed by policy",
    )


Check = Callable[[str, Any], Any]


def _own_project(attribute: str, value: Any) -> Any:
    if value not in (None, twin().identity.project_id):
        raise bad_request(
            "Specifying 'project_id' other than the authenticated project in request is not "
            "allowed for the current user."
        )
    return value


# attribute: (check, allowed in POST, allowed in PUT)
PORT_ATTRIBUTES: dict[str, tuple[Check, bool, bool]] = {
    "name": (_string, True, True),
    "description": (_string, True, True),
    "network_id": (_uuid, True, False),
    "admin_state_up": (_boolean, True, True),
    "mac_address": (_mac, True, False),
    "fixed_ips": (_list, True, True),
    "device_id": (_string, True, True),
    "device_owner": (_string, True, True),
    "tenant_id": (_own_project, True, False),
    "project_id": (_own_project, True, False),
    "security_groups": (_uuid_list, True, True),
    "allowed_address_pairs": (_list, True, True),
    "extra_dhcp_opts": (_list, True, True),
    "port_security_enabled": (_boolean, True, True),
    "binding:vnic_type": (_string, True, True),
    "binding:host_id": (_admin_only, True, True),
    "binding:profile": (_admin_only, True, True),
    "qos_policy_id": (_uuid, True, True),
    "propagate_uplink_status": (_boolean, True, True),
    "tags": (_list, True, False),
}
FLOATINGIP_ATTRIBUTES: dict[str, tuple[Check, bool, bool]] = {
    "floating_network_id": (_uuid, True, False),
    "floating_ip_address": (_ip, True, False),
    "subnet_id": (_uuid, True, False),
    "port_id": (_uuid, True, True),
    "fixed_ip_address": (_ip, True, True),
    "description": (_string, True, True),
    "tenant_id": (_own_project, True, False),
    "project_id": (_own_project, True, False),
    "qos_policy_id": (_uuid, True, True),
}
GROUP_ATTRIBUTES: dict[str, tuple[Check, bool, bool]] = {
    "name": (_string, True, True),
    "description": (_string, True, True),
    "stateful": (_boolean, True, True),
    "tenant_id": (_own_project, True, False),
    "project_id": (_own_project, True, False),
}
RULE_ATTRIBUTES: dict[str, tuple[Check, bool, bool]] = {
    "security_group_id": (_uuid, True, False),
    "direction": (_anything, True, False),
    "ethertype": (_anything, True, False),
    "protocol": (_anything, True, False),
    "port_range_min": (_anything, True, False),
    "port_range_max": (_anything, True, False),
    "remote_ip_prefix": (_anything, True, False),
    "remote_group_id": (_uuid, True, False),
    "remote_address_group_id": (_uuid, True, False),
    "description": (_string, True, False),
    "tenant_id": (_own_project, True, False),
    "project_id": (_own_project, True, False),
}


def request_resource(
    singular: str, attributes: dict[str, tuple[Check, bool, bool]], required: tuple[str, ...]
) -> dict[str, Any]:
    """The `{singular: {...}}` body of a POST or PUT, checked attribute by attribute."""
    body = request_json(bad_request)
    if not body:
        raise bad_request("Resource body required")
    if not isinstance(body, dict) or singular not in body:
        if isinstance(body, dict) and singular + "s" in body:
            raise NetworkError(
                501, "NotImplemented", f"the twin does not serve bulk creation of {singular}s"
            )
        raise bad_request(f"Unable to find '{singular}' in request body")
    values = body[singular]
    if not isinstance(values, dict):
        raise bad_request(f"Invalid format: {values}")
    post = request.method == "POST"
    unknown = [key for key in values if key not in attributes]
    if unknown:
        raise bad_request(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    checked = {}
    for key, value in values.items():
        check, in_post, in_put = attributes[key]
        if post and not in_post:
            raise bad_request(f"Attribute '{key}' not allowed in POST")
        if not post and not in_put:
            raise bad_request(f"Cannot update read-only attribute {key}")
        checked[key] = check(key, value)
    if post:
        for key in required:
            if key not in checked:
                raise bad_request(
                    f"Failed to parse request. Required attribute '{key}' not specified"
                )
    return checked


# --- rendering and listing ------------------------------------------------------------------


def _standard_times(record: dict[str, Any]) -> dict[str, Any]:
    body = dict(record)
    body["created_at"] = iso_seconds_z(record["created_at"])
    body["updated_at"] = iso_seconds_z(record["updated_at"])
    return body


def render_network(network: dict[str, Any]) -> dict[str, Any]:
    return _standard_times(network)


def render_subnet(subnet: dict[str, Any]) -> dict[str, Any]:
    return _standard_times(subnet)


def render_port(port: dict[str, Any]) -> dict[str, Any]:
    body = _standard_times(port)
    body["status"] = twin().network.port_status(port)
    return body


def render_floatingip(floatingip: dict[str, Any]) -> dict[str, Any]:
    network = twin().network
    body = _standard_times(floatingip)
    body["status"] = network.floatingip_status(floatingip)
    port = network.ports.get(floatingip["port_id"]) if floatingip["port_id"] else None
    body["port_details"] = (
        None
        if port is None
        else {
            "name": port["name"],
            "network_id": port["network_id"],
            "mac_address": port["mac_address"],
            "admin_state_up": port["admin_state_up"],
            "status": network.port_status(port),
            "device_id": port["device_id"],
            "device_owner": port["device_owner"],
        }
    )
    return body


def render_rule(rule: dict[str, Any]) -> dict[str, Any]:
    body = _standard_times(rule)
    body["normalized_cidr"] = rule["remote_ip_prefix"]
    return body


def render_group(group: dict[str, Any]) -> dict[str, Any]:
    body = _standard_times(group)
    body["security_group_rules"] = [
        render_rule(rule) for rule in twin().network.rules_of(group["id"])
    ]
    return body


def _matches(value: Any, wanted: list[str]) -> bool:
    if isinstance(value, bool):
        return any(str(value).lower() == text.strip().lower() for text in wanted)
    if isinstance(value, list):
        return any(text in [str(item) for item in value] for text in wanted)
    if value is None:
        return any(text in ("", "None") for text in wanted)
    return str(value) in wanted


def _fixed_ip_filter(port: dict[str, Any], wanted: list[str]) -> bool:
    for text in wanted:
        key, _, value = text.partition("=")
        if key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise bad_request(
                f"Invalid input for fixed_ips. Reason: '{text}' is not a valid filter."
            )
        for fixed in port["fixed_ips"]:
            if key == "ip_address_substr" and value in fixed["ip_address"]:
                return True
            if key != "ip_address_substr" and fixed[key] == value:
                return True
    return False


# What each collection's items carry, for checking filters when a list is empty.
ATTRIBUTES_OF = {
    "ports": {*PORT_ATTRIBUTES, "id", "status", "created_at", "updated_at", "revision_number"},
    "floatingips": {
        *FLOATINGIP_ATTRIBUTES, "id", "status", "router_id", "tags", "created_at", "updated_at",
        "revision_number", "port_forwardings",
    },
    "security-groups": {
        *GROUP_ATTRIBUTES, "id", "shared", "tags", "created_at", "updated_at", "revision_number"
    },
    "security-group-rules": {
        *RULE_ATTRIBUTES, "id", "normalized_cidr", "belongs_to_default_sg", "tags", "created_at",
        "updated_at", "revision_number",
    },
}  # fmt: skip


def list_response(
    collection: str,
    records: list[dict[str, Any]],
    render: Callable[[dict[str, Any]], dict[str, Any]],
) -> Response:
    items = [render(record) for record in records]
    filters = {key: request.args.getlist(key) for key in request.args if key not in NOT_FILTERS}
    known = ATTRIBUTES_OF.get(collection, set()).union(*(set(item) for item in items))
    invalid = []
    for key, wanted in filters.items():
        if key in TAG_FILTERS:
            tags = {tag for text in wanted for tag in text.split(",")}
            tests = {
                "tags": lambda item, tags=tags: tags <= set(item["tags"]),
                "tags-any": lambda item, tags=tags: bool(tags & set(item["tags"])),
                "not-tags": lambda item, tags=tags: not tags <= set(item["tags"]),
                "not-tags-any": lambda item, tags=tags: not tags & set(item["tags"]),
            }
            items = [item for item in items if tests[key](item)]
        elif key == "fixed_ips" and collection == "ports":
            items = [item for item in items if _fixed_ip_filter(item, wanted)]
        elif key not in known or key in ("security_group_rules", "port_details"):
            invalid.append(key)
        else:
            items = [item for item in items if _matches(item.get(key), wanted)]
    if invalid:
        # neutron/api/api_common.py get_filters_from_dict
        raise bad_request(f"{invalid} is invalid attribute for filtering")
    sort_key = request.args.get("sort_key")
    if sort_key:
        if items and sort_key not in items[0]:
            raise bad_request(f"{[sort_key]} is invalid attribute for sort_keys")
        items.sort(
            key=lambda item: str(item.get(sort_key)), reverse=request.args.get("sort_dir") == "desc"
        )
    body: dict[str, Any] = {}
    marker = request.args.get("marker")
    if marker:
        ids = [item["id"] for item in items]
        if marker not in ids:
            raise NetworkError(404, "NotFound", f"Object {marker} not found.")
        items = items[ids.index(marker) + 1 :]
    limit = request.args.get("limit")
    if limit:
        if not limit.isdigit():
            raise bad_request(f"Invalid input for limit. Reason: '{limit}' is not an integer.")
        if int(limit) and len(items) > int(limit):
            items = items[: int(limit)]
            link = f"{base_url()}/network/v2.0/{collection}?limit={limit}&marker={items[-1]['id']}"
            body[f"{collection.replace('-', '_')}_links"] = [{"rel": "next", "href": link}]
    fields = request.args.getlist("fields")
    if fields:
        items = [{key: value for key, value in item.items() if key in fields} for item in items]
    body[collection.replace("-", "_")] = items
    return json_response(body)


def show_response(singular: str, body: dict[str, Any], status: int = 200) -> Response:
    fields = request.args.getlist("fields")
    if fields:
        body = {key: value for key, value in body.items() if key in fields}
    return json_response({singular: body}, status)


def _changed(after_mutation: bool = True) -> None:
    if after_mutation:
        twin().network.sync_exposures()


# --- networks and subnets (read only for a project member here) ---------------------------


def list_networks() -> Response:
    return list_response("networks", list(twin().network.networks.values()), render_network)


def show_network(network_id: str) -> Response:
    return show_response("network", render_network(twin().network.get_network(network_id)))


def list_subnets() -> Response:
    return list_response("subnets", list(twin().network.subnets.values()), render_subnet)


def show_subnet(subnet_id: str) -> Response:
    return show_response("subnet", render_subnet(twin().network.get_subnet(subnet_id)))


# --- ports ---------------------------------------------------------------------------------


def list_ports() -> Response:
    return list_response("ports", list(twin().network.ports.values()), render_port)


def create_port() -> Response:
    attributes = request_resource("port", PORT_ATTRIBUTES, ("network_id",))
    twin().network.check_quota({"port": 1})
    port = twin().network.create_port(attributes)
    _changed()
    return show_response("port", render_port(port), 201)


def show_port(port_id: str) -> Response:
    return show_response("port", render_port(twin().network.get_port(port_id)))


def update_port(port_id: str) -> Response:
    network = twin().network
    port = network.get_port(port_id)
    changes = request_resource("port", PORT_ATTRIBUTES, ())
    for key in ("name", "description", "device_id", "device_owner"):
        if key in changes and changes[key] is None:
            changes[key] = ""
    network.update_port(port, changes)
    _changed()
    return show_response("port", render_port(port))


def delete_port(port_id: str) -> Response:
    twin().network.delete_port(port_id)
    _changed()
    return Response(status=204)


# --- floating IPs --------------------------------------------------------------------------


def list_floatingips() -> Response:
    return list_response(
        "floatingips", list(twin().network.floatingips.values()), render_floatingip
    )


def create_floatingip() -> Response:
    attributes = request_resource("floatingip", FLOATINGIP_ATTRIBUTES, ("floating_network_id",))
    twin().network.check_quota({"floatingip": 1})
    if attributes.get("subnet_id"):
        subnet = twin().network.get_subnet(attributes["subnet_id"])
        if subnet["network_id"] != attributes["floating_network_id"]:
            raise bad_request(
                f"Bad floatingip request: Subnet {subnet['id']} does not belong to network "
                f"{attributes['floating_network_id']}.",
                "BadRequest",
            )
    floatingip = twin().network.create_floatingip(attributes)
    _changed()
    return show_response("floatingip", render_floatingip(floatingip), 201)


def show_floatingip(floatingip_id: str) -> Response:
    return show_response(
        "floatingip", render_floatingip(twin().network.get_floatingip(floatingip_id))
    )


def update_floatingip(floatingip_id: str) -> Response:
    network = twin().network
    floatingip = network.get_floatingip(floatingip_id)
    changes = request_resource("floatingip", FLOATINGIP_ATTRIBUTES, ())
    network.update_floatingip(floatingip, changes)
    _changed()
    return show_response("floatingip", render_floatingip(floatingip))


def delete_floatingip(floatingip_id: str) -> Response:
    twin().network.delete_floatingip(floatingip_id)
    _changed()
    return Response(status=204)


# --- security groups and rules ----------------------------------------------------------


def list_security_groups() -> Response:
    return list_response("security-groups", twin().network.groups_of_project(), render_group)


def create_security_group() -> Response:
    attributes = request_resource("security_group", GROUP_ATTRIBUTES, ())
    twin().network.check_quota({"security_group": 1})
    attributes.setdefault("name", "")
    group = twin().network.create_security_group(attributes)
    return show_response("security_group", render_group(group), 201)


def show_security_group(group_id: str) -> Response:
    return show_response(
        "security_group", render_group(twin().network.get_security_group(group_id))
    )


def update_security_group(group_id: str) -> Response:
    network = twin().network
    group = network.get_security_group(group_id)
    changes = request_resource("security_group", GROUP_ATTRIBUTES, ())
    for key in ("name", "description"):
        if key in changes and changes[key] is None:
            changes[key] = ""
    network.update_security_group(group, changes)
    return show_response("security_group", render_group(group))


def delete_security_group(group_id: str) -> Response:
    twin().network.delete_security_group(group_id)
    _changed()
    return Response(status=204)


def list_rules() -> Response:
    network = twin().network
    project_groups = {group["id"] for group in network.groups_of_project()}
    rules = [rule for rule in network.rules.values() if rule["security_group_id"] in project_groups]
    return list_response("security-group-rules", rules, render_rule)


def create_rule() -> Response:
    attributes = request_resource(
        "security_group_rule", RULE_ATTRIBUTES, ("security_group_id", "direction")
    )
    twin().network.check_quota({"security_group_rule": 1})
    if attributes.get("remote_address_group_id"):
        raise NetworkError(501, "NotImplemented", "the twin does not serve address groups")
    rule = twin().network.create_rule(attributes)
    _changed()
    return show_response("security_group_rule", render_rule(rule), 201)


def show_rule(rule_id: str) -> Response:
    return show_response("security_group_rule", render_rule(twin().network.get_rule(rule_id)))


def delete_rule(rule_id: str) -> Response:
    twin().network.delete_rule(rule_id)
    _changed()
    return Response(status=204)


# --- tags (the tag extension: neutron/extensions/tagging.py, TaggingController) -----------


def _tags_route(collection: str) -> tuple[Callable[[str], Response], Callable[[str], Response]]:
    def list_tags(resource_id: str) -> Response:
        # TaggingController.index: {"tags": [...]}
        return json_response({"tags": list(twin().network.tagged(collection, resource_id)["tags"])})

    def replace_tags(resource_id: str) -> Response:
        network = twin().network
        record = network.tagged(collection, resource_id)
        tags = network.replace_tags(record, request_json(bad_request))
        return json_response({"tags": tags})

    slug = collection.replace("-", "_")
    list_tags.__name__ = f"list_{slug}_tags"
    replace_tags.__name__ = f"replace_{slug}_tags"
    return list_tags, replace_tags


list_port_tags, replace_port_tags = _tags_route("ports")
list_floatingip_tags, replace_floatingip_tags = _tags_route("floatingips")
list_security_group_tags, replace_security_group_tags = _tags_route("security-groups")

# --- quotas ----------------------------------------------------------------------------------


def quota_details(project_id: str) -> Response:
    """DetailQuotaSetsController.details: another project's only for an admin."""
    if project_id != twin().identity.project_id:
        raise NetworkError(
            403,
            "AdminRequired",
            "User does not have admin privileges: Only admin is authorized to access quotas "
            "for another project.",
        )
    return json_response({"quota": twin().network.quota_details()})
