"""Neutron on the twin: networks, ports, floating IPs, security groups and rules, their errors."""

from __future__ import annotations

import ipaddress

import pytest

from tests.twin import steps
from tests.twin.harness import Api


def neutron_error(response) -> dict:
    body = response.json()
    assert set(body) == {"NeutronError"}, body
    assert set(body["NeutronError"]) == {"type", "message", "detail"}
    return body["NeutronError"]


def test_networks_are_found_by_name_and_by_id_with_status(shared_api: Api) -> None:
    """get_network by name; the instance's lookup by id and status=ACTIVE (compute_instance_v2)."""
    api = shared_api
    shared = api.get(f"{api.network}/networks", params={"name": "sharednet1"}).json()["networks"]
    assert (
        len(shared) == 1 and shared[0]["shared"] is True and shared[0]["router:external"] is False
    )
    public = api.get(f"{api.network}/networks", params={"name": "public"}).json()["networks"]
    assert len(public) == 1 and public[0]["router:external"] is True
    by_id = api.get(f"{api.network}/networks", params={"id": shared[0]["id"], "status": "ACTIVE"})
    assert [network["name"] for network in by_id.json()["networks"]] == ["sharednet1"]
    assert api.get(f"{api.network}/networks", params={"name": "nope"}).json()["networks"] == []
    shown = api.get(f"{api.network}/networks/{shared[0]['id']}").json()["network"]
    assert shown["subnets"] and shown["status"] == "ACTIVE"
    subnet = api.get(f"{api.network}/subnets/{shown['subnets'][0]}").json()["subnet"]
    assert subnet["network_id"] == shared[0]["id"]


def test_unknown_filter_is_refused(shared_api: Api) -> None:
    """Neutron with filter validation: an attribute that does not exist is a 400."""
    response = shared_api.get(f"{shared_api.network}/networks", params={"colour": "blue"})
    assert response.status_code == 400
    assert neutron_error(response)["message"] == "['colour'] is invalid attribute for filtering"


def test_security_group_gets_neutrons_default_egress_rules(shared_api: Api) -> None:
    """A new group: 201, and one egress rule per ethertype, as Neutron creates them."""
    api = shared_api
    response = api.post(
        f"{api.network}/security-groups", json={"security_group": {"name": "sg-defaults"}}
    )
    assert response.status_code == 201
    group = response.json()["security_group"]
    rules = group["security_group_rules"]
    assert sorted((rule["direction"], rule["ethertype"], rule["protocol"]) for rule in rules) == [
        ("egress", "IPv4", None),
        ("egress", "IPv6", None),
    ]
    listed = api.get(f"{api.network}/security-groups", params={"name": "sg-defaults"}).json()
    assert [each["id"] for each in listed["security_groups"]] == [group["id"]]


def test_rule_lifecycle_and_duplicate(shared_api: Api) -> None:
    """A rule: 201, readable, a duplicate is 409 naming the first, delete then 404."""
    api = shared_api
    group = steps.security_group(api, "sg-rules", ports=())
    rule = {
        "security_group_id": group["id"],
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 8888,
        "port_range_max": 8888,
        "remote_ip_prefix": "10.0.0.0/8",
        "description": "jupyter",
    }
    created = api.post(f"{api.network}/security-group-rules", json={"security_group_rule": rule})
    assert created.status_code == 201
    rule_id = created.json()["security_group_rule"]["id"]
    shown = api.get(f"{api.network}/security-group-rules/{rule_id}").json()["security_group_rule"]
    assert (shown["port_range_min"], shown["port_range_max"], shown["remote_ip_prefix"]) == (
        8888,
        8888,
        "10.0.0.0/8",
    )
    again = api.post(f"{api.network}/security-group-rules", json={"security_group_rule": rule})
    assert again.status_code == 409
    error = neutron_error(again)
    assert error["type"] == "SecurityGroupRuleExists"
    assert error["message"] == f"Security group rule already exists. Rule id is {rule_id}."
    assert api.delete(f"{api.network}/security-group-rules/{rule_id}").status_code == 204
    gone = api.get(f"{api.network}/security-group-rules/{rule_id}")
    assert gone.status_code == 404 and neutron_error(gone)["type"] == "SecurityGroupRuleNotFound"


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        ({"protocol": "tcpp"}, "SecurityGroupRuleInvalidProtocol"),
        ({"protocol": None}, "SecurityGroupProtocolRequiredWithPorts"),
        ({"port_range_min": 90, "port_range_max": 80}, "SecurityGroupInvalidPortRange"),
        ({"port_range_min": 70000}, "SecurityGroupInvalidPortValue"),
        ({"remote_ip_prefix": "not-a-cidr"}, "InvalidCIDR"),
        ({"remote_ip_prefix": "::/0"}, "SecurityGroupRuleParameterConflict"),
        ({"ethertype": "IPv5"}, "SecurityGroupRuleInvalidEtherType"),
        ({"colour": "blue"}, "HTTPBadRequest"),
    ],
    ids=[
        "protocol",
        "ports-without-protocol",
        "range",
        "port",
        "cidr",
        "ethertype-cidr",
        "ethertype",
        "attribute",
    ],
)
def test_invalid_rules_are_refused(shared_api: Api, change: dict, kind: str) -> None:
    """Each of Neutron's rule checks answers 400 with its own exception type."""
    api = shared_api
    group = steps.security_group(api, f"sg-invalid-{kind}", ports=())
    rule = {
        "security_group_id": group["id"],
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 22,
        "port_range_max": 22,
        **change,
    }
    response = api.post(f"{api.network}/security-group-rules", json={"security_group_rule": rule})
    assert response.status_code == 400, response.text
    assert neutron_error(response)["type"] == kind


def test_group_in_use_cannot_be_deleted_until_its_port_is_gone(shared_api: Api) -> None:
    """409 SecurityGroupInUse while a port carries the group (the provider retries on 409)."""
    api = shared_api
    group = steps.security_group(api, "sg-in-use", ports=(22,))
    port = steps.port(api, "in-use", [group["id"]])
    refused = api.delete(f"{api.network}/security-groups/{group['id']}")
    assert refused.status_code == 409
    assert neutron_error(refused) == {
        "type": "SecurityGroupInUse",
        "message": f"Security Group {group['id']} in use.",
        "detail": "",
    }
    assert api.delete(f"{api.network}/ports/{port['id']}").status_code == 204
    assert api.delete(f"{api.network}/security-groups/{group['id']}").status_code == 204
    assert api.get(f"{api.network}/security-groups/{group['id']}").status_code == 404


def test_default_group_cannot_be_deleted_or_duplicated(shared_api: Api) -> None:
    api = shared_api
    (default,) = api.get(f"{api.network}/security-groups", params={"name": "default"}).json()[
        "security_groups"
    ]
    refused = api.delete(f"{api.network}/security-groups/{default['id']}")
    assert (
        refused.status_code == 409
        and neutron_error(refused)["type"] == "SecurityGroupCannotRemoveDefault"
    )
    again = api.post(f"{api.network}/security-groups", json={"security_group": {"name": "default"}})
    assert (
        again.status_code == 409
        and neutron_error(again)["type"] == "SecurityGroupDefaultAlreadyExists"
    )


def test_port_lifecycle(shared_api: Api) -> None:
    """POST 201 DOWN with a fixed IP on sharednet1, found by id, updated, deleted then 404."""
    api = shared_api
    group = steps.security_group(api, "sg-port", ports=(22,))
    port = steps.port(api, "node-persist-x", [group["id"]])
    assert port["status"] == "DOWN"
    assert port["device_id"] == "" and port["device_owner"] == ""
    assert port["security_groups"] == [group["id"]]
    (fixed,) = port["fixed_ips"]
    assert ipaddress.ip_address(fixed["ip_address"]) in ipaddress.ip_network("10.56.0.0/22")
    found = api.get(f"{api.network}/ports", params={"id": port["id"]}).json()["ports"]
    assert [each["id"] for each in found] == [port["id"]]
    by_ip = api.get(
        f"{api.network}/ports", params={"fixed_ips": f"ip_address={fixed['ip_address']}"}
    )
    assert [each["id"] for each in by_ip.json()["ports"]] == [port["id"]]
    updated = api.put(
        f"{api.network}/ports/{port['id']}",
        json={"port": {"name": "renamed", "security_groups": []}},
    )
    assert updated.status_code == 200
    assert (
        updated.json()["port"]["name"] == "renamed"
        and updated.json()["port"]["security_groups"] == []
    )
    read_only = api.put(
        f"{api.network}/ports/{port['id']}", json={"port": {"network_id": port["network_id"]}}
    )
    assert read_only.status_code == 400
    assert neutron_error(read_only)["message"] == "Cannot update read-only attribute network_id"
    assert api.delete(f"{api.network}/ports/{port['id']}").status_code == 204
    gone = api.get(f"{api.network}/ports/{port['id']}")
    assert gone.status_code == 404
    assert neutron_error(gone) == {
        "type": "PortNotFound",
        "message": f"Port {port['id']} could not be found.",
        "detail": "",
    }


def test_port_without_groups_gets_the_default_group(shared_api: Api) -> None:
    api = shared_api
    (default,) = api.get(f"{api.network}/security-groups", params={"name": "default"}).json()[
        "security_groups"
    ]
    body = {"port": {"network_id": steps.network_id(api, "sharednet1")}}
    port = api.post(f"{api.network}/ports", json=body).json()["port"]
    assert port["security_groups"] == [default["id"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"port": {"name": "x"}},
            "Failed to parse request. Required attribute 'network_id' not specified",
        ),
        (
            {"port": {"network_id": "not-a-uuid"}},
            "Invalid input for network_id. Reason: 'not-a-uuid' is not a valid UUID.",
        ),
        ({"port": {"network_id": "{net}", "colour": 1}}, "Unrecognized attribute(s) 'colour'"),
        (
            {"port": {"network_id": "{net}", "admin_state_up": "maybe"}},
            "Invalid input for admin_state_up. Reason: 'maybe' cannot be converted to boolean.",
        ),
        ({"ports": []}, None),
        ({"prot": {}}, "Unable to find 'port' in request body"),
    ],
    ids=["required", "uuid", "unknown", "boolean", "bulk", "wrong-key"],
)
def test_invalid_port_requests(shared_api: Api, body: dict, message: str | None) -> None:
    """Neutron's attribute checks (neutron_lib/api/attributes.py): 400 (bulk: not served, 501)."""
    api = shared_api
    network = steps.network_id(api, "sharednet1")
    if "port" in body:
        body = {
            "port": {
                key: (network if value == "{net}" else value) for key, value in body["port"].items()
            }
        }
    response = api.post(f"{api.network}/ports", json=body)
    if message is None:
        assert response.status_code == 501
        return
    assert response.status_code == 400, response.text
    assert neutron_error(response)["message"] == message


def test_port_on_missing_network_or_group(shared_api: Api) -> None:
    api = shared_api
    missing = "0b6f0f27-1b5a-4d4a-9f0e-3e3b1f7a0c11"
    response = api.post(f"{api.network}/ports", json={"port": {"network_id": missing}})
    assert response.status_code == 404 and neutron_error(response)["type"] == "NetworkNotFound"
    body = {
        "port": {"network_id": steps.network_id(api, "sharednet1"), "security_groups": [missing]}
    }
    response = api.post(f"{api.network}/ports", json=body)
    assert (
        response.status_code == 404 and neutron_error(response)["type"] == "SecurityGroupNotFound"
    )


def test_floating_ip_lifecycle_on_loopback(shared_twin, shared_api: Api) -> None:
    """A floating IP from `public` with a port: ACTIVE, a loopback address of this twin's /24;
    disassociated it is DOWN; re-associated ACTIVE; deleted 404."""
    api = shared_api
    group = steps.security_group(api, "sg-fip", ports=(22,))
    port = steps.port(api, "fip-port", [group["id"]])
    floating = steps.floating_ip(api, port["id"])
    address = ipaddress.ip_address(floating["floating_ip_address"])
    assert address in ipaddress.ip_network("127.0.0.0/8")
    assert address not in ipaddress.ip_network("127.0.0.0/24")
    public = api.get(f"{api.network}/networks", params={"name": "public"}).json()["networks"][0]
    subnet = api.get(f"{api.network}/subnets/{public['subnets'][0]}").json()["subnet"]
    assert address in ipaddress.ip_network(subnet["cidr"])
    assert floating["status"] == "ACTIVE"
    assert floating["port_id"] == port["id"]
    assert floating["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    url = f"{api.network}/floatingips/{floating['id']}"
    cleared = api.put(url, json={"floatingip": {"port_id": None}}).json()["floatingip"]
    assert (cleared["port_id"], cleared["status"]) == (None, "DOWN")
    again = api.put(url, json={"floatingip": {"port_id": port["id"]}}).json()["floatingip"]
    assert (again["port_id"], again["status"]) == (port["id"], "ACTIVE")
    by_address = api.get(f"{api.network}/floatingips", params={"floating_ip_address": str(address)})
    assert [each["id"] for each in by_address.json()["floatingips"]] == [floating["id"]]
    assert api.delete(url).status_code == 204
    gone = api.get(url)
    assert gone.status_code == 404 and neutron_error(gone)["type"] == "FloatingIPNotFound"


def test_floating_ip_errors(shared_api: Api) -> None:
    """Not an external network: 400; a fixed IP already with a floating IP: 409."""
    api = shared_api
    body = {"floatingip": {"floating_network_id": steps.network_id(api, "sharednet1")}}
    response = api.post(f"{api.network}/floatingips", json=body)
    assert response.status_code == 400
    assert "is not a valid external network" in neutron_error(response)["message"]
    port = steps.port(api, "double-fip", [])
    steps.floating_ip(api, port["id"])
    second = api.post(
        f"{api.network}/floatingips",
        json={
            "floatingip": {
                "floating_network_id": steps.network_id(api, "public"),
                "port_id": port["id"],
            }
        },
    )
    assert second.status_code == 409
    assert neutron_error(second)["type"] == "FloatingIPPortAlreadyAssociated"
    missing = api.post(
        f"{api.network}/floatingips",
        json={"floatingip": {"floating_network_id": steps.network_id(api, "public")}},
    )
    assert missing.status_code == 201 and missing.json()["floatingip"]["status"] == "DOWN"


def test_deleting_a_port_disassociates_its_floating_ip(shared_api: Api) -> None:
    api = shared_api
    port = steps.port(api, "short-lived", [])
    floating = steps.floating_ip(api, port["id"])
    assert api.delete(f"{api.network}/ports/{port['id']}").status_code == 204
    shown = api.get(f"{api.network}/floatingips/{floating['id']}").json()["floatingip"]
    assert (shown["port_id"], shown["status"]) == (None, "DOWN")


def test_list_limit_and_fields(shared_api: Api) -> None:
    """limit gives a next link; fields keeps only the asked attributes."""
    api = shared_api
    for index in range(3):
        steps.security_group(api, f"sg-page-{index}", ports=())
    page = api.get(f"{api.network}/security-groups", params={"limit": 2}).json()
    assert len(page["security_groups"]) == 2
    assert page["security_groups_links"][0]["rel"] == "next"
    narrow = api.get(
        f"{api.network}/security-groups", params=[("fields", "id"), ("fields", "name")]
    ).json()
    assert all(set(group) == {"id", "name"} for group in narrow["security_groups"])


@pytest.mark.parametrize("collection", ["ports", "floatingips", "security-groups"])
def test_tags_are_replaced_whole_and_filter_lists(shared_api: Api, collection: str) -> None:
    """PUT .../tags answers the new set and replaces the old one; `tags=` lists only what
    carries every tag named; a duplicate tag or an over-long one is a 400 that changes nothing."""
    api = shared_api
    if collection == "ports":
        record = steps.port(api, f"tagged-{collection}", [])
    elif collection == "floatingips":
        created = api.post(
            f"{api.network}/floatingips",
            json={"floatingip": {"floating_network_id": steps.network_id(api, "public")}},
        )
        record = created.json()["floatingip"]
    else:
        record = steps.security_group(api, f"tagged-{collection}", ports=())
    url = f"{api.network}/{collection}/{record['id']}/tags"
    first = api.put(url, json={"tags": ["chi-persist-stack=ab1234/ab1234", "course"]})
    assert first.status_code == 200, first.text
    assert first.json() == {"tags": ["chi-persist-stack=ab1234/ab1234", "course"]}
    second = api.put(url, json={"tags": ["chi-persist-stack=ab1234/ab1234"]})
    assert second.json() == {"tags": ["chi-persist-stack=ab1234/ab1234"]}
    assert api.get(url).json() == {"tags": ["chi-persist-stack=ab1234/ab1234"]}
    listed = api.get(
        f"{api.network}/{collection}", params={"tags": "chi-persist-stack=ab1234/ab1234"}
    ).json()[collection.replace("-", "_")]
    assert [each["id"] for each in listed] == [record["id"]]
    assert listed[0]["tags"] == ["chi-persist-stack=ab1234/ab1234"]
    for bad in (["twice", "twice"], ["x" * 256], "not-a-list"):
        refused = api.put(url, json={"tags": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert neutron_error(refused)["type"] == "InvalidInput"
    assert api.get(url).json() == {"tags": ["chi-persist-stack=ab1234/ab1234"]}
