"""The program's whole life on the twin, call by call as terraform-provider-openstack v3.4.0
(gophercloud v2.8.0) makes them, each step naming the provider file it follows.

The order is the engine's for this program: an `up`, a refresh, a recycle (the attachment and
the server go), an `up` again, then everything destroyed but the volume, then the volume.
Each read checks the fields the provider's Read function sets, with the JSON types it decodes.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for

NETID = "ab1234"
PORTS = {"ssh": 22, "jupyter": 8888, "mlflow": 8000, "minio-api": 9000, "minio-console": 9001}


def until(
    api: Api, url: str, field: str, pending: tuple[str, ...], target: tuple[str, ...]
) -> dict:
    """retry.StateChangeConf: poll while the status is pending, fail on anything unexpected."""

    def look() -> dict | None:
        response = api.get(url)
        assert response.status_code == 200, response.text
        body = next(iter(response.json().values()))
        assert body[field] in pending + target, f"unexpected state {body[field]!r} at {url}"
        return body if body[field] in target else None

    return wait_for(look, what=f"{url} {field} in {target}")


def until_gone(api: Api, url: str) -> None:
    wait_for(lambda: api.get(url).status_code == 404, what=f"{url} 404")


def get_network(api: Api, name: str) -> dict:
    """data_source_openstack_networking_network_v2.go: exactly one network of that name."""
    response = api.get(f"{api.network}/networks", params={"name": name})
    assert response.status_code == 200
    (network,) = response.json()["networks"]
    assert isinstance(network["admin_state_up"], bool) and isinstance(network["shared"], bool)
    assert isinstance(network["router:external"], bool) and isinstance(network["subnets"], list)
    assert isinstance(network["mtu"], int) and isinstance(network["availability_zone_hints"], list)
    return network


def read_port(api: Api, port_id: str) -> dict:
    """resource_openstack_networking_port_v2.go Read."""
    port = api.get(f"{api.network}/ports/{port_id}").json()["port"]
    for key in (
        "name",
        "description",
        "network_id",
        "mac_address",
        "tenant_id",
        "device_owner",
        "device_id",
    ):
        assert isinstance(port[key], str), key
    assert isinstance(port["admin_state_up"], bool) and isinstance(
        port["port_security_enabled"], bool
    )
    assert isinstance(port["allowed_address_pairs"], list) and isinstance(
        port["security_groups"], list
    )
    assert all(set(fixed) == {"subnet_id", "ip_address"} for fixed in port["fixed_ips"])
    return port


def read_floating_ip(api: Api, floating_id: str) -> dict:
    """resource_openstack_networking_floatingip_v2.go Read, with the pool's name by id."""
    floating = api.get(f"{api.network}/floatingips/{floating_id}").json()["floatingip"]
    pool = api.get(f"{api.network}/networks", params={"id": floating["floating_network_id"]}).json()
    assert [network["name"] for network in pool["networks"]] == ["public"]
    return floating


def read_instance(api: Api, server_id: str) -> dict:
    """resource_openstack_compute_instance_v2.go Read: the server, its networks by port, the
    flavor and image by id, the tags at 2.26."""
    server = api.get(f"{api.compute}/servers/{server_id}").json()["server"]
    assert isinstance(server["flavor"]["id"], str)
    assert isinstance(server["image"]["id"], str)
    for entries in server["addresses"].values():
        for entry in entries:
            assert isinstance(entry["version"], int) and isinstance(entry["addr"], str)
            assert entry["OS-EXT-IPS:type"] in ("fixed", "floating")
    assert all(isinstance(group["name"], str) for group in server.get("security_groups", []))
    assert server["status"].lower() in ("active", "shutoff", "error", "build")
    # getInstanceNetworkInfoNeutron: the port's network by id, ACTIVE.
    for port_id in [
        p["id"]
        for p in api.get(f"{api.network}/ports", params={"device_id": server_id}).json()["ports"]
    ]:
        (port,) = api.get(f"{api.network}/ports", params={"id": port_id}).json()["ports"]
        networks = api.get(
            f"{api.network}/networks", params={"id": port["network_id"], "status": "ACTIVE"}
        )
        assert len(networks.json()["networks"]) == 1
    assert api.get(f"{api.compute}/flavors/{server['flavor']['id']}").status_code == 200
    assert api.get(f"{api.image}/images/{server['image']['id']}").status_code == 200
    tags = api.get(
        f"{api.compute}/servers/{server_id}/tags", headers={"X-OpenStack-Nova-API-Version": "2.26"}
    )
    assert tags.status_code == 200 and tags.json() == {"tags": []}
    return server


def read_volume(api: Api, volume_id: str) -> dict:
    """resource_openstack_blockstorage_volume_v3.go Read."""
    volume = api.get(f"{api.volume}/volumes/{volume_id}").json()["volume"]
    assert isinstance(volume["size"], int) and isinstance(volume["metadata"], dict)
    for attachment in volume["attachments"]:
        assert {"id", "server_id", "device"} <= set(attachment)
    return volume


def create_instance(api: Api, port_id: str, key_name: str, user_data: str) -> str:
    """resource_openstack_compute_instance_v2.go Create, network by port."""
    image_id = steps.image_id(api)  # gophercloud/utils images.IDFromName
    flavor_id = steps.flavor_id(api)  # gophercloud/utils flavors.IDFromName (/flavors/detail)
    (port,) = api.get(f"{api.network}/ports", params={"id": port_id}).json()["ports"]
    get_network_by_id = api.get(
        f"{api.network}/networks", params={"id": port["network_id"], "status": "ACTIVE"}
    )
    (network,) = get_network_by_id.json()["networks"]
    body = {
        "server": {
            "name": f"node-persist-{NETID}",
            "imageRef": image_id,
            "flavorRef": flavor_id,
            "metadata": {"chi-persist": "node"},
            "config_drive": False,
            "user_data": base64.b64encode(user_data.encode()).decode(),
            "networks": [{"uuid": network["id"], "port": port_id}],
            "key_name": key_name,
        }
    }
    response = api.post(f"{api.compute}/servers", json=body)
    assert response.status_code == 202, response.text
    server_id = response.json()["server"]["id"]
    until(api, f"{api.compute}/servers/{server_id}", "status", ("BUILD",), ("ACTIVE",))
    return server_id


def attach(api: Api, server_id: str, volume_id: str) -> str:
    """resource_openstack_compute_volume_attach_v2.go Create: 200, then attachment and volume."""
    response = api.post(
        f"{api.compute}/servers/{server_id}/os-volume_attachments",
        json={"volumeAttachment": {"volumeId": volume_id}},
    )
    assert response.status_code == 200, response.text
    attachment = response.json()["volumeAttachment"]
    assert set(attachment) == {"id", "serverId", "volumeId", "device"}

    def attached() -> bool:
        shown = api.get(
            f"{api.compute}/servers/{server_id}/os-volume_attachments/{attachment['id']}"
        )
        if shown.status_code == 404:
            return False
        return steps.volume_status(api, volume_id) == "in-use"

    wait_for(attached, what="ATTACHED")
    return f"{server_id}/{attachment['id']}"


def detach(api: Api, resource_id: str) -> None:
    """resource_openstack_compute_volume_attach_v2.go Delete (computeVolumeAttachV2DetachFunc):
    GET; DELETE; a 400 means "still detaching"; until the GET answers 404."""
    server_id, attachment_id = resource_id.split("/")
    url = f"{api.compute}/servers/{server_id}/os-volume_attachments/{attachment_id}"

    def detached() -> bool:
        if api.get(url).status_code == 404:
            return True
        response = api.delete(url)
        assert response.status_code in (202, 400, 404), response.text
        return response.status_code == 404

    wait_for(detached, what="DETACHED")


def destroy_instance(api: Api, server_id: str) -> None:
    """resource_openstack_compute_instance_v2.go Delete with stop_before_destroy."""
    url = f"{api.compute}/servers/{server_id}"
    assert api.post(f"{url}/action", json={"os-stop": None}).status_code == 202
    until(api, url, "status", ("ACTIVE",), ("SHUTOFF",))
    assert api.delete(url).status_code == 204
    wait_for(lambda: steps.status(api, server_id) is None, what="DELETED")


def up(
    api: Api, network: dict, group_id: str, port_id: str, volume_id: str, key: str
) -> dict[str, Any]:
    server_id = create_instance(api, port_id, key, "#!/bin/bash\necho first boot\n")
    server = read_instance(api, server_id)
    attachment = attach(api, server_id, volume_id)
    return {"server": server, "attachment": attachment}


@pytest.fixture
def program(twin: Twin, public_key: str) -> dict[str, Any]:
    twin.add_keypair("student", public_key)
    return {"key": "student"}


def test_a_semester_of_calls(twin: Twin, api: Api, program: dict[str, Any]) -> None:
    """up, refresh, recycle, up, destroy everything but the protected volume, then the volume."""
    network = get_network(api, "sharednet1")

    # resource_openstack_networking_secgroup_v2.go Create + Read
    response = api.post(
        f"{api.network}/security-groups",
        json={
            "security_group": {
                "name": f"persist-{NETID}",
                "description": "chi-persist",
                "stateful": True,
            }
        },
    )
    assert response.status_code == 201
    group = api.get(
        f"{api.network}/security-groups/{response.json()['security_group']['id']}"
    ).json()
    group_id = group["security_group"]["id"]
    # resource_openstack_networking_secgroup_rule_v2.go Create + Read, one per port
    rule_ids = []
    for service, number in sorted(PORTS.items()):
        rule = {
            "direction": "ingress",
            "ethertype": "IPv4",
            "protocol": "tcp",
            "port_range_min": number,
            "port_range_max": number,
            "remote_ip_prefix": "0.0.0.0/0",
            "description": f"{service} (TCP {number}) from 0.0.0.0/0",
            "security_group_id": group_id,
        }
        created = api.post(
            f"{api.network}/security-group-rules", json={"security_group_rule": rule}
        )
        assert created.status_code == 201, created.text
        rule_ids.append(created.json()["security_group_rule"]["id"])
        assert api.get(f"{api.network}/security-group-rules/{rule_ids[-1]}").status_code == 200

    # resource_openstack_blockstorage_volume_v3.go Create: 202, creating -> available
    response = api.post(
        f"{api.volume}/volumes",
        json={
            "volume": {
                "name": f"block-persist-{NETID}",
                "size": 2,
                "description": "data",
                "metadata": {},
            }
        },
    )
    assert response.status_code == 202
    volume_id = response.json()["volume"]["id"]
    until(
        api,
        f"{api.volume}/volumes/{volume_id}",
        "status",
        ("downloading", "creating"),
        ("available",),
    )
    read_volume(api, volume_id)

    # resource_openstack_networking_port_v2.go Create: 201, wait ACTIVE or DOWN
    response = api.post(
        f"{api.network}/ports",
        json={
            "port": {
                "name": f"node-persist-{NETID}",
                "network_id": network["id"],
                "admin_state_up": True,
                "security_groups": [group_id],
            }
        },
    )
    assert response.status_code == 201
    port_id = response.json()["port"]["id"]
    until(api, f"{api.network}/ports/{port_id}", "status", (), ("ACTIVE", "DOWN"))
    read_port(api, port_id)

    # resource_openstack_networking_floatingip_v2.go Create: pool id by name, 201, ACTIVE or DOWN
    pool_id = get_network(api, "public")["id"]
    response = api.post(
        f"{api.network}/floatingips",
        json={
            "floatingip": {
                "floating_network_id": pool_id,
                "port_id": port_id,
                "description": "chi-persist",
            }
        },
    )
    assert response.status_code == 201
    floating_id = response.json()["floatingip"]["id"]
    until(api, f"{api.network}/floatingips/{floating_id}", "status", (), ("ACTIVE", "DOWN"))
    floating = read_floating_ip(api, floating_id)
    address = floating["floating_ip_address"]

    first = up(api, network, group_id, port_id, volume_id, program["key"])
    assert read_port(api, port_id)["status"] == "ACTIVE"
    assert read_volume(api, volume_id)["attachments"][0]["server_id"] == first["server"]["id"]
    wait_for(
        lambda: (
            twin.state()["exposures"].get(address, {}).get("ports") == [22, 8000, 8888, 9000, 9001]
        )
    )

    # A refresh reads everything again and finds nothing changed.
    assert read_instance(api, first["server"]["id"])["status"] == "ACTIVE"
    assert read_floating_ip(api, floating_id)["port_id"] == port_id

    # The recycle: the attachment, then the server (clean stop first).
    detach(api, first["attachment"])
    assert read_volume(api, volume_id)["status"] == "available"
    destroy_instance(api, first["server"]["id"])
    assert read_port(api, port_id)["status"] == "DOWN"
    assert read_floating_ip(api, floating_id)["floating_ip_address"] == address

    # The next up: a new server on the same port and address, the same volume.
    second = up(api, network, group_id, port_id, volume_id, program["key"])
    assert second["server"]["id"] != first["server"]["id"]
    assert any(entry["addr"] == address for entry in second["server"]["addresses"]["sharednet1"])
    wait_for(
        lambda: (
            twin.state()["exposures"].get(address, {}).get("server_id") == second["server"]["id"]
        )
    )

    # The volume grows in place (update: PUT name/description, os-extend at 3.42 while in-use).
    url = f"{api.volume}/volumes/{volume_id}"
    headers = {"OpenStack-API-Version": "volume 3.42"}
    assert (
        api.post(f"{url}/action", json={"os-extend": {"new_size": 3}}, headers=headers).status_code
        == 202
    )
    until(api, url, "status", ("extending",), ("available", "in-use"))
    assert (
        api.put(
            url, json={"volume": {"name": f"block-persist-{NETID}", "description": "data"}}
        ).status_code
        == 200
    )
    assert read_volume(api, volume_id)["size"] == 3

    # pulumi destroy --exclude-protected: everything but the volume.
    detach(api, second["attachment"])
    destroy_instance(api, second["server"]["id"])
    assert api.delete(f"{api.network}/floatingips/{floating_id}").status_code == 204
    until_gone(api, f"{api.network}/floatingips/{floating_id}")
    assert api.delete(f"{api.network}/ports/{port_id}").status_code == 204
    until_gone(api, f"{api.network}/ports/{port_id}")
    for rule_id in rule_ids:
        assert api.delete(f"{api.network}/security-group-rules/{rule_id}").status_code == 204
        until_gone(api, f"{api.network}/security-group-rules/{rule_id}")
    # networkingSecgroupV2StateRefreshFuncDelete: DELETE, then GET until 404.
    assert api.delete(f"{api.network}/security-groups/{group_id}").status_code == 204
    until_gone(api, f"{api.network}/security-groups/{group_id}")

    # The protected volume, once unprotected: GET (no attachments), DELETE 202, GET until 404.
    assert read_volume(api, volume_id)["attachments"] == []
    assert api.delete(url).status_code == 202
    wait_for(lambda: api.get(url).status_code == 404, what="volume deleted")
    state = twin.state()
    assert state["servers"] == [] and state["volumes"] == [] and state["floatingips"] == []
    assert state["exposures"] == {}


def test_existing_groups_are_found_by_name(shared_api: Api) -> None:
    """data_source_openstack_networking_secgroup_v2.go: exactly one group of the name."""
    api = shared_api
    steps.security_group(api, "allow-8888", ports=(8888,))
    (group,) = api.get(f"{api.network}/security-groups", params={"name": "allow-8888"}).json()[
        "security_groups"
    ]
    assert isinstance(group["stateful"], bool) and isinstance(group["tags"], list)


def test_volume_import_reads_by_id(shared_api: Api) -> None:
    """resource_openstack_blockstorage_volume_v3.go Import: GET /volumes/{id}."""
    api = shared_api
    volume = steps.volume(api, "adopted", 1)
    assert read_volume(api, volume["id"])["name"] == "adopted"
