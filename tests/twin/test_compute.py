"""Nova on the twin: flavors, key pairs, servers through their life, volume attachments, errors."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for


def nova_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    (name,) = body
    assert body[name]["code"] == status
    return body[name]["message"]


def null_machine(twin: Twin, server_id: str) -> dict | None:
    records = json.loads((twin.state_dir / "null-machines.json").read_text())
    return records.get(server_id)


@pytest.fixture(scope="module")
def twin(shared_twin: Twin) -> Twin:
    """This module's tests share one twin; each makes its own server."""
    return shared_twin


@pytest.fixture(scope="module")
def api(shared_api: Api) -> Api:
    return shared_api


@pytest.fixture(scope="module")
def key_name(twin: Twin, public_key: str) -> str:
    twin.add_keypair("student-key", public_key)
    return "student-key"


@pytest.fixture
def node(twin: Twin, api: Api, key_name: str) -> dict:
    """A running server on a port of its own, as the program makes it."""
    netid = uuid.uuid4().hex[:6]
    group = steps.security_group(api, f"persist-{netid}", ports=(22, 8000, 8888))
    port = steps.port(api, f"node-persist-{netid}", [group["id"]])
    floating = steps.floating_ip(api, port["id"])
    server = steps.boot(api, f"node-persist-{netid}", port["id"], key_name)
    return {"server": server, "port": port, "group": group, "floating": floating, "netid": netid}


# --- flavors and key pairs ------------------------------------------------------------------


def test_flavors_by_detail_and_id(shared_api: Api) -> None:
    """GET /flavors/detail (the provider matches the name itself) and /flavors/{id}."""
    api = shared_api
    flavors = {
        flavor["name"]: flavor
        for flavor in api.get(f"{api.compute}/flavors/detail").json()["flavors"]
    }
    assert {"m1.small", "m1.medium", "m1.large"} <= set(flavors)
    large = api.get(f"{api.compute}/flavors/{flavors['m1.large']['id']}").json()["flavor"]
    assert (large["vcpus"], large["ram"], large["name"]) == (4, 8192, "m1.large")
    assert large["swap"] == ""  # before microversion 2.75
    missing = api.get(f"{api.compute}/flavors/nope")
    assert nova_error(missing, 404) == "Flavor nope could not be found."


def test_key_pair_lifecycle(shared_api: Api, public_key: str) -> None:
    """Create with a public key (200 before 2.2), list, show, duplicate 409, delete 202, 404."""
    api = shared_api
    created = api.post(
        f"{api.compute}/os-keypairs", json={"keypair": {"name": "kp-1", "public_key": public_key}}
    )
    assert created.status_code == 200
    keypair = created.json()["keypair"]
    assert keypair["public_key"] == public_key and len(keypair["fingerprint"].split(":")) == 16
    assert "private_key" not in keypair
    listed = api.get(f"{api.compute}/os-keypairs").json()["keypairs"]
    assert {
        "keypair": {"name": "kp-1", "public_key": public_key, "fingerprint": keypair["fingerprint"]}
    } in listed
    shown = api.get(f"{api.compute}/os-keypairs/kp-1").json()["keypair"]
    assert shown["user_id"] and shown["fingerprint"] == keypair["fingerprint"]
    again = api.post(
        f"{api.compute}/os-keypairs", json={"keypair": {"name": "kp-1", "public_key": public_key}}
    )
    assert nova_error(again, 409) == "Key pair 'kp-1' already exists."
    assert api.delete(f"{api.compute}/os-keypairs/kp-1").status_code == 202
    gone = api.get(f"{api.compute}/os-keypairs/kp-1")
    assert nova_error(gone, 404).startswith("Keypair kp-1 not found for user ")


def test_key_pair_microversion_2_2_answers_201_and_type(shared_api: Api, public_key: str) -> None:
    api = shared_api
    headers = {"X-OpenStack-Nova-API-Version": "2.2"}
    body = {"keypair": {"name": "kp-22", "public_key": public_key, "type": "ssh"}}
    created = api.post(f"{api.compute}/os-keypairs", json=body, headers=headers)
    assert created.status_code == 201 and created.json()["keypair"]["type"] == "ssh"
    assert created.headers["X-OpenStack-Nova-API-Version"] == "2.2"
    assert api.delete(f"{api.compute}/os-keypairs/kp-22", headers=headers).status_code == 204


def test_key_pair_without_public_key_is_generated(shared_api: Api) -> None:
    created = shared_api.post(
        f"{shared_api.compute}/os-keypairs", json={"keypair": {"name": "generated"}}
    )
    assert created.status_code == 200
    assert "PRIVATE KEY" in created.json()["keypair"]["private_key"]


@pytest.mark.parametrize(
    ("keypair", "fragment"),
    [
        ({"name": "bad", "public_key": "ssh-rsa not-base64"}, "Keypair data is invalid"),
        ({"name": "bad/name", "public_key": "x"}, "is not a 'keypair_name_20'"),
        ({"public_key": "x"}, "'name' is a required property"),
        (
            {"name": "x", "type": "ssh"},
            "Additional properties are not allowed ('type' was unexpected)",
        ),
    ],
    ids=["key", "name", "no-name", "type-before-2.2"],
)
def test_invalid_key_pairs(shared_api: Api, keypair: dict, fragment: str) -> None:
    response = shared_api.post(f"{shared_api.compute}/os-keypairs", json={"keypair": keypair})
    assert fragment in nova_error(response, 400)


# --- servers -------------------------------------------------------------------------------


def test_server_reads_as_the_provider_needs(twin: Twin, api: Api, node: dict) -> None:
    """status, flavor.id, image.id, addresses by network name, security_groups, key, metadata."""
    server, port = node["server"], node["port"]
    assert server["status"] == "ACTIVE"
    assert server["flavor"]["id"] == steps.flavor_id(api)
    assert server["image"]["id"] == steps.image_id(api)
    assert server["key_name"] == "student-key"
    assert server["metadata"] == {"chi-persist": "node"}
    assert server["security_groups"] == [{"name": f"persist-{node['netid']}"}]
    assert server["OS-EXT-STS:vm_state"] == "active" and server["OS-EXT-STS:power_state"] == 1
    assert server["OS-EXT-STS:task_state"] is None
    fixed, floating = server["addresses"]["sharednet1"]
    assert fixed == {
        "version": 4,
        "addr": port["fixed_ips"][0]["ip_address"],
        "OS-EXT-IPS:type": "fixed",
        "OS-EXT-IPS-MAC:mac_addr": port["mac_address"],
    }
    assert floating["OS-EXT-IPS:type"] == "floating"
    assert floating["addr"] == node["floating"]["floating_ip_address"]
    bound = api.get(f"{api.network}/ports/{port['id']}").json()["port"]
    assert (bound["status"], bound["device_id"], bound["device_owner"]) == (
        "ACTIVE",
        server["id"],
        "compute:nova",
    )


def test_boot_hands_the_driver_user_data_keys_and_metadata(
    twin: Twin, api: Api, node: dict, public_key: str
) -> None:
    """What the guest's cloud-init will read: the decoded user data, the key pair, the metadata."""
    machine = null_machine(twin, node["server"]["id"])
    assert base64.b64decode(machine["user_data"]) == b"#cloud-config\n{}\n"
    assert machine["public_keys"] == [public_key]
    assert machine["metadata"] == {"chi-persist": "node"}
    assert machine["hostname"] == f"node-persist-{node['netid']}"
    assert machine["mac"] == node["port"]["mac_address"]
    assert machine["fixed_ip"] == node["port"]["fixed_ips"][0]["ip_address"]


def test_floating_ip_is_exposed_for_the_ports_the_group_allows(twin: Twin, node: dict) -> None:
    """The driver forwards the floating IP's 22, 8000, 8888 (what the group opens), not 9000."""
    address = node["floating"]["floating_ip_address"]
    wait_for(lambda: address in twin.state()["exposures"], what="exposure")
    assert twin.state()["exposures"][address] == {
        "server_id": node["server"]["id"],
        "ports": [22, 8000, 8888],
    }
    wait_for(
        lambda: address in null_machine(twin, node["server"]["id"])["exposed"],
        what="driver exposed",
    )


def test_exposure_follows_rules_and_association(twin: Twin, api: Api, node: dict) -> None:
    address = node["floating"]["floating_ip_address"]
    rule = {
        "security_group_id": node["group"]["id"],
        "direction": "ingress",
        "protocol": "tcp",
        "port_range_min": 9000,
        "port_range_max": 9001,
    }
    api.post(f"{api.network}/security-group-rules", json={"security_group_rule": rule})
    wait_for(lambda: twin.state()["exposures"][address]["ports"] == [22, 8000, 8888, 9000, 9001])
    api.put(
        f"{api.network}/floatingips/{node['floating']['id']}",
        json={"floatingip": {"port_id": None}},
    )
    wait_for(lambda: address not in twin.state()["exposures"])
    wait_for(
        lambda: address not in null_machine(twin, node["server"]["id"])["exposed"], what="unexposed"
    )


def test_a_rule_for_other_addresses_does_not_expose(twin: Twin, api: Api, key_name: str) -> None:
    """Whoever connects to a floating IP here comes from 127.0.0.1: a rule for 10.0.0.0/8 does
    not let them in, a rule for 127.0.0.0/8 does."""
    group = steps.security_group(api, f"cidr-{uuid.uuid4().hex[:6]}", ports=())
    for port_number, prefix in ((22, "10.0.0.0/8"), (8000, "127.0.0.0/8")):
        rule = {
            "security_group_id": group["id"],
            "direction": "ingress",
            "protocol": "tcp",
            "port_range_min": port_number,
            "port_range_max": port_number,
            "remote_ip_prefix": prefix,
        }
        api.post(f"{api.network}/security-group-rules", json={"security_group_rule": rule})
    port = steps.port(api, "cidr", [group["id"]])
    floating = steps.floating_ip(api, port["id"])
    steps.boot(api, "cidr", port["id"], key_name)
    address = floating["floating_ip_address"]
    wait_for(lambda: address in twin.state()["exposures"], what="exposure")
    assert twin.state()["exposures"][address]["ports"] == [8000]


def test_user_data_must_be_base64(shared_api: Api) -> None:
    api = shared_api
    port = steps.port(api, "bad-user-data", [])
    request = steps.server_request(api, "bad", port["id"], None, user_data="not base64!")
    message = nova_error(api.post(f"{api.compute}/servers", json=request), 400)
    assert message.startswith("Invalid input for field/attribute user_data. Value: not base64!.")
    assert "is not a 'base64'" in message


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"imageRef": "0b6f0f27-1b5a-4d4a-9f0e-3e3b1f7a0c11"}, 400, "Can not find requested image"),
        ({"flavorRef": "99"}, 400, "Flavor 99 could not be found."),
        ({"key_name": "nobody"}, 400, "Invalid key_name provided."),
        ({"networks": [{"port": "0b6f0f27-1b5a-4d4a-9f0e-3e3b1f7a0c11"}]}, 400,
         "Port id 0b6f0f27-1b5a-4d4a-9f0e-3e3b1f7a0c11 could not be found."),
        ({"security_groups": [{"name": "nope"}]}, 400,
         "Unable to find security_group with name or id 'nope'"),
        ({"colour": "blue"}, 400,
         "Additional properties are not allowed ('colour' was unexpected)"),
        ({"name": " padded"}, 400, "An invalid 'name' value was provided."),
        ({"metadata": {"k": 1}}, 400, "Invalid input for field/attribute k."),
        ({"block_device_mapping_v2": [{"uuid": "x"}]}, 501, "block_device_mapping_v2"),
    ],
    ids=["image", "flavor", "key", "port", "group", "attribute", "name", "metadata", "bdm"],
)  # fmt: skip
def test_invalid_server_creates(shared_api: Api, change: dict, status: int, message: str) -> None:
    """Each of Nova's checks on POST /servers, with its status and message (servers.py create)."""
    api = shared_api
    port = steps.port(api, "invalid-create", [])
    request = steps.server_request(api, "invalid", port["id"], None)
    request["server"].update(change)
    assert message in nova_error(api.post(f"{api.compute}/servers", json=request), status)


def test_two_groups_of_one_name_are_refused_by_name(shared_api: Api) -> None:
    """Nova's 409 when a server names a security group that two groups share (FIELD-NOTES)."""
    api = shared_api
    steps.security_group(api, "allow-ssh", ports=(22,))
    steps.security_group(api, "allow-ssh", ports=(22,))
    port = steps.port(api, "dup-group", [])
    request = steps.server_request(
        api, "dup", port["id"], None, security_groups=[{"name": "allow-ssh"}]
    )
    message = nova_error(api.post(f"{api.compute}/servers", json=request), 409)
    assert (
        message
        == "Multiple security_group matches found for name 'allow-ssh', use an ID to be more "
        "specific."
    )


def test_a_port_in_use_cannot_boot_a_second_server(api: Api, node: dict) -> None:
    request = steps.server_request(api, "second", node["port"]["id"], None)
    message = nova_error(api.post(f"{api.compute}/servers", json=request), 409)
    assert message == f"Port {node['port']['id']} is still in use."


def test_server_on_a_network_gets_a_port_that_goes_with_it(twin: Twin, api: Api) -> None:
    """networks[{uuid}]: Nova makes the port (compute:nova, default group) and deletes it after."""
    request = steps.server_request(api, "by-network", "unused", None)
    request["server"]["networks"] = [{"uuid": steps.network_id(api, "sharednet1")}]
    response = api.post(f"{api.compute}/servers", json=request)
    assert response.status_code == 202
    server_id = response.json()["server"]["id"]
    assert response.json()["server"]["security_groups"] == [{"name": "default"}]
    wait_for(lambda: steps.status(api, server_id) == "ACTIVE")
    (port,) = api.get(f"{api.network}/ports", params={"device_id": server_id}).json()["ports"]
    assert port["device_owner"] == "compute:nova"
    assert api.delete(f"{api.compute}/servers/{server_id}").status_code == 204
    wait_for(lambda: steps.status(api, server_id) is None, what="server gone")
    assert api.get(f"{api.network}/ports/{port['id']}").status_code == 404


def test_unbootable_image_goes_to_error_with_the_drivers_reason(shared_api: Api) -> None:
    """A guest that cannot be built: ERROR with a fault, as a broken image on Nova."""
    api = shared_api
    port = steps.port(api, "error-port", [])
    request = steps.server_request(
        api, "broken", port["id"], None, imageRef=steps.image_id(api, "CC-Ubuntu22.04")
    )
    server_id = api.post(f"{api.compute}/servers", json=request).json()["server"]["id"]
    wait_for(lambda: steps.status(api, server_id) == "ERROR")
    server = api.get(f"{api.compute}/servers/{server_id}").json()["server"]
    assert "CC-Ubuntu22.04" in server["fault"]["message"] and server["fault"]["code"] == 500


def test_tags_need_microversion_2_26(api: Api, node: dict) -> None:
    """GET /servers/{id}/tags: 404 without a microversion, the list at 2.26 (as the provider)."""
    url = f"{api.compute}/servers/{node['server']['id']}/tags"
    assert api.get(url).status_code == 404
    headers = {"X-OpenStack-Nova-API-Version": "2.26"}
    assert api.get(url, headers=headers).json() == {"tags": []}
    assert api.put(f"{url}/persist", headers=headers).status_code == 201
    assert api.get(url, headers=headers).json() == {"tags": ["persist"]}
    shown = api.get(f"{api.compute}/servers/{node['server']['id']}", headers=headers).json()[
        "server"
    ]
    assert shown["tags"] == ["persist"]


def test_flavor_shape_follows_the_microversion(api: Api, node: dict) -> None:
    """Before 2.47 a server's flavor is {id, links}; from 2.47 the flavor itself, without id."""
    url = f"{api.compute}/servers/{node['server']['id']}"
    assert set(api.get(url).json()["server"]["flavor"]) == {"id", "links"}
    embedded = api.get(url, headers={"OpenStack-API-Version": "compute 2.47"}).json()["server"][
        "flavor"
    ]
    assert embedded["original_name"] == "m1.large" and "id" not in embedded
    too_new = api.get(url, headers={"OpenStack-API-Version": "compute 2.99"})
    assert (
        nova_error(too_new, 406)
        == "Version 2.99 is not supported by the API. Minimum is 2.1 and maximum is 2.60."
    )


def test_stop_then_delete_as_stop_before_destroy(twin: Twin, api: Api, node: dict) -> None:
    """os-stop: 202, SHUTOFF; stopping again 409; DELETE 204, then 404; the port stays, unbound."""
    server_id = node["server"]["id"]
    action = f"{api.compute}/servers/{server_id}/action"
    assert api.post(action, json={"os-stop": None}).status_code == 202
    wait_for(lambda: steps.status(api, server_id) == "SHUTOFF")
    stopped = api.get(f"{api.compute}/servers/{server_id}").json()["server"]
    assert stopped["OS-EXT-STS:power_state"] == 4
    assert api.get(f"{api.network}/ports/{node['port']['id']}").json()["port"]["status"] == "DOWN"
    again = api.post(action, json={"os-stop": None})
    assert (
        nova_error(again, 409)
        == f"Cannot 'stop' instance {server_id} while it is in vm_state stopped"
    )
    assert api.delete(f"{api.compute}/servers/{server_id}").status_code == 204
    wait_for(lambda: steps.status(api, server_id) is None, what="server gone")
    gone = api.get(f"{api.compute}/servers/{server_id}")
    assert nova_error(gone, 404) == f"Instance {server_id} could not be found."
    port = api.get(f"{api.network}/ports/{node['port']['id']}").json()["port"]
    assert (port["device_id"], port["device_owner"], port["status"]) == ("", "", "DOWN")
    assert null_machine(twin, server_id) is None
    assert node["floating"]["floating_ip_address"] not in twin.state()["exposures"]


def test_start_brings_a_stopped_server_back(api: Api, node: dict) -> None:
    server_id = node["server"]["id"]
    action = f"{api.compute}/servers/{server_id}/action"
    api.post(action, json={"os-stop": None})
    wait_for(lambda: steps.status(api, server_id) == "SHUTOFF")
    assert api.post(action, json={"os-start": None}).status_code == 202
    wait_for(lambda: steps.status(api, server_id) == "ACTIVE")


def test_unknown_and_unserved_actions(api: Api, node: dict) -> None:
    action = f"{api.compute}/servers/{node['server']['id']}/action"
    assert (
        nova_error(api.post(action, json={"os-dance": None}), 400)
        == "There is no such action: os-dance"
    )
    assert "reboot" in nova_error(api.post(action, json={"reboot": {"type": "SOFT"}}), 501)


def console(api: Api, server_id: str, length: object = None) -> str:
    body = {"os-getConsoleOutput": {} if length is None else {"length": length}}
    response = api.post(f"{api.compute}/servers/{server_id}/action", json=body)
    assert response.status_code == 200, response.text
    return response.json()["output"]


def test_console_output_shows_the_host_keys_cloud_init_printed(twin: Twin, api: Api, node: dict):
    """os-getConsoleOutput: the guest's console, with cloud-init's host key block holding the
    keys its machine was given; `length` keeps the last lines as Nova does."""
    from components.host_keys import keys_in_console

    server_id = node["server"]["id"]
    text = console(api, server_id)
    machine = null_machine(twin, server_id)
    found = keys_in_console(text)
    assert found.cloud_init_finished and found.ed25519 is not None
    assert [key.line for key in found.keys] == [
        " ".join(line.split()[:2]) for line in machine["host_keys"]
    ]
    lines = text.split("\n")
    assert console(api, server_id, 2) == "\n".join(lines[-2:])
    assert console(api, server_id, "3") == "\n".join(lines[-3:])
    assert console(api, server_id, 0) == ""
    # -1 is "unlimited" in the API's schema; ComputeManager._tail_log drops the first line.
    assert console(api, server_id, -1) == "\n".join(lines[1:])
    refused = api.post(
        f"{api.compute}/servers/{server_id}/action",
        json={"os-getConsoleOutput": {"length": -2}},
    )
    assert refused.status_code == 400, refused.text


def test_forged_host_keys_replace_the_guests_on_the_console(
    twin: Twin, api: Api, node: dict
) -> None:
    """The admin switch: the console shows other, fresh keys; switched off, the guest's again."""
    from components.host_keys import keys_in_console

    server_id = node["server"]["id"]
    own = keys_in_console(console(api, server_id)).ed25519
    forged = twin.admin("POST", f"/servers/{server_id}/host-keys", json={"forged": True})
    assert forged.status_code == 200, forged.text
    shown = keys_in_console(console(api, server_id)).ed25519
    assert shown is not None and own is not None and shown.blob != own.blob
    assert shown.line in " ".join(forged.json()["forged_host_keys"])
    back = twin.admin("POST", f"/servers/{server_id}/host-keys", json={"forged": False})
    assert back.status_code == 200 and back.json()["forged_host_keys"] == []
    assert keys_in_console(console(api, server_id)).ed25519 == own
    bad = twin.admin("POST", f"/servers/{server_id}/host-keys", json={"forged": "yes"})
    assert bad.status_code == 400
    assert twin.admin("POST", "/servers/nope/host-keys", json={"forged": True}).status_code == 404


def test_server_lists_and_name_update(api: Api, node: dict) -> None:
    server_id = node["server"]["id"]
    pattern = f"^node-persist-{node['netid']}$"
    listed = api.get(f"{api.compute}/servers", params={"name": pattern}).json()["servers"]
    assert [server["id"] for server in listed] == [server_id]
    assert set(listed[0]) == {"id", "name", "links"}
    detailed = api.get(f"{api.compute}/servers/detail", params={"status": "ACTIVE"}).json()[
        "servers"
    ]
    assert server_id in [server["id"] for server in detailed]
    stopped = api.get(f"{api.compute}/servers/detail", params={"status": "SHUTOFF"}).json()[
        "servers"
    ]
    assert server_id not in [server["id"] for server in stopped]
    renamed = api.put(f"{api.compute}/servers/{server_id}", json={"server": {"name": "renamed"}})
    assert renamed.status_code == 200 and renamed.json()["server"]["name"] == "renamed"


def test_server_metadata_endpoints(api: Api, node: dict) -> None:
    url = f"{api.compute}/servers/{node['server']['id']}/metadata"
    assert api.post(url, json={"metadata": {"a": "1"}}).json()["metadata"] == {
        "chi-persist": "node",
        "a": "1",
    }
    assert api.put(url, json={"metadata": {"b": "2"}}).json()["metadata"] == {"b": "2"}
    assert api.delete(f"{url}/b").status_code == 204
    assert api.get(url).json() == {"metadata": {}}


# --- volume attachments --------------------------------------------------------------------


def test_attach_answers_200_and_the_volume_goes_in_use(twin: Twin, api: Api, node: dict) -> None:
    """POST os-volume_attachments: 200 {id (= the volume's id before 2.89), serverId, volumeId,
    device}; the volume attaching then in-use with the attachment; the driver plugged its file."""
    server_id = node["server"]["id"]
    volume = steps.volume(api, "block-persist-ab1234", 2)
    attachment = steps.attach(api, server_id, volume["id"])
    assert attachment == {
        "id": volume["id"],
        "serverId": server_id,
        "volumeId": volume["id"],
        "device": "/dev/vdb",
    }
    url = f"{api.compute}/servers/{server_id}/os-volume_attachments/{volume['id']}"
    assert api.get(url).json()["volumeAttachment"] == attachment
    shown = api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]
    (cinder_attachment,) = shown["attachments"]
    assert (
        cinder_attachment["server_id"],
        cinder_attachment["device"],
        cinder_attachment["volume_id"],
    ) == (
        server_id,
        "/dev/vdb",
        volume["id"],
    )
    machine = null_machine(twin, server_id)
    assert machine["attachments"][volume["id"]]["serial"] == volume["id"][:20]
    assert Path(machine["attachments"][volume["id"]]["disk"]).is_file()
    server = api.get(f"{api.compute}/servers/{server_id}").json()["server"]
    assert server["os-extended-volumes:volumes_attached"] == [{"id": volume["id"]}]


def test_a_volume_in_use_cannot_be_attached_again_or_deleted(api: Api, node: dict) -> None:
    server_id = node["server"]["id"]
    volume = steps.volume(api, "busy", 1)
    steps.attach(api, server_id, volume["id"])
    again = api.post(
        f"{api.compute}/servers/{server_id}/os-volume_attachments",
        json={"volumeAttachment": {"volumeId": volume["id"]}},
    )
    assert nova_error(again, 400) == f"Invalid volume: volume {volume['id']} already attached"
    deleted = api.delete(f"{api.volume}/volumes/{volume['id']}")
    assert nova_error(deleted, 400).startswith(
        "Invalid volume: Volume status must be available or error"
    )


def test_detach_as_the_provider_polls_it(api: Api, node: dict) -> None:
    """DELETE 202, the volume detaching then available; the attachment GET answers 404."""
    server_id = node["server"]["id"]
    volume = steps.volume(api, "detach-me", 1)
    steps.attach(api, server_id, volume["id"])
    url = f"{api.compute}/servers/{server_id}/os-volume_attachments/{volume['id']}"
    assert api.delete(url).status_code == 202
    wait_for(lambda: api.get(url).status_code == 404, what="attachment gone")
    assert (
        nova_error(api.get(url), 404)
        == f"Instance {server_id} is not attached to volume {volume['id']}"
    )
    assert steps.volume_status(api, volume["id"]) == "available"
    assert api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]["attachments"] == []


def test_a_second_detach_while_detaching_is_400(tmp_path: Path, public_key: str) -> None:
    """The provider's detach loop re-sends DELETE while GET still answers; Cinder refuses
    begin_detaching on a detaching volume and Nova answers 400, which the provider waits on."""
    twin = Twin(
        tmp_path / "state", environment={"CHI_TWIN_NULL_MACHINES": '{"delays": {"detach": 1.5}}'}
    ).start()
    try:
        api = twin.api()
        port = steps.port(api, "slow", [])
        server = steps.boot(api, "slow", port["id"])
        volume = steps.volume(api, "slow-detach", 1)
        steps.attach(api, server["id"], volume["id"])
        url = f"{api.compute}/servers/{server['id']}/os-volume_attachments/{volume['id']}"
        assert api.delete(url).status_code == 202
        assert steps.volume_status(api, volume["id"]) == "detaching"
        assert api.get(url).status_code == 200
        message = nova_error(api.delete(url), 400)
        assert (
            "Volume status must be 'in-use' and attach_status must be 'attached' to detach."
            in message
        )
        wait_for(lambda: api.get(url).status_code == 404, what="detached")
    finally:
        assert twin.stop() == 0


def test_a_guest_that_keeps_the_disk_leaves_the_volume_in_use(tmp_path: Path) -> None:
    """A failed detach rolls back: the volume is in-use again and still attached."""
    twin = Twin(
        tmp_path / "state", environment={"CHI_TWIN_NULL_MACHINES": '{"failures": {"detach": 1}}'}
    ).start()
    try:
        api = twin.api()
        port = steps.port(api, "sticky", [])
        server = steps.boot(api, "sticky", port["id"])
        volume = steps.volume(api, "sticky-volume", 1)
        steps.attach(api, server["id"], volume["id"])
        url = f"{api.compute}/servers/{server['id']}/os-volume_attachments/{volume['id']}"
        assert api.delete(url).status_code == 202
        wait_for(lambda: steps.volume_status(api, volume["id"]) == "in-use", what="rolled back")
        assert api.get(url).status_code == 200
        assert api.delete(url).status_code == 202
        wait_for(lambda: api.get(url).status_code == 404, what="detached on the second try")
    finally:
        assert twin.stop() == 0


def test_deleting_a_server_gives_its_volume_back(api: Api, node: dict) -> None:
    server_id = node["server"]["id"]
    volume = steps.volume(api, "outlives", 1)
    steps.attach(api, server_id, volume["id"])
    api.delete(f"{api.compute}/servers/{server_id}")
    wait_for(lambda: steps.status(api, server_id) is None)
    assert steps.volume_status(api, volume["id"]) == "available"


def test_attach_needs_an_existing_volume_and_a_settled_server(api: Api, node: dict) -> None:
    server_id = node["server"]["id"]
    missing = "0b6f0f27-1b5a-4d4a-9f0e-3e3b1f7a0c11"
    url = f"{api.compute}/servers/{server_id}/os-volume_attachments"
    response = api.post(url, json={"volumeAttachment": {"volumeId": missing}})
    assert nova_error(response, 404) == f"Volume {missing} could not be found."
    malformed = api.post(url, json={"volumeAttachment": {"volumeId": "x"}})
    assert "is not a 'uuid'" in nova_error(malformed, 400)
    api.post(f"{api.compute}/servers/{server_id}/action", json={"os-stop": None})
    volume = steps.volume(api, "while-stopping", 1)
    response = api.post(url, json={"volumeAttachment": {"volumeId": volume["id"]}})
    if response.status_code == 409:
        assert "while it is in task_state powering-off" in nova_error(response, 409)
    else:
        assert (
            response.status_code == 200
        )  # the stop already finished: a stopped server takes volumes


def test_online_extend_needs_3_42_and_reaches_the_guest(twin: Twin, api: Api, node: dict) -> None:
    """Attached: refused before 3.42 with Cinder's message; at 3.42 extended online through the
    driver (resize_disk), back to in-use with the new size."""
    server_id = node["server"]["id"]
    volume = steps.volume(api, "grow-online", 1)
    steps.attach(api, server_id, volume["id"])
    action = f"{api.volume}/volumes/{volume['id']}/action"
    refused = api.post(action, json={"os-extend": {"new_size": 2}})
    assert refused.status_code == 400
    assert refused.json()["badRequest"]["message"] == (
        f"Invalid volume: Volume {volume['id']} status must be "
        "'{'status': 'available'}' to extend, "
        "currently in-use."
    )
    headers = {"OpenStack-API-Version": "volume 3.42"}
    assert api.post(action, json={"os-extend": {"new_size": 2}}, headers=headers).status_code == 202
    wait_for(lambda: steps.volume_status(api, volume["id"]) == "in-use")
    assert api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]["size"] == 2
    disk = Path(null_machine(twin, server_id)["attachments"][volume["id"]]["disk"])
    assert disk.stat().st_size == 2 * 1024**3
    # Nova grows the guest's disk after Cinder's volume-extended event, on its own time.
    guest_extends(twin, server_id, volume["id"])
    calls = [
        event
        for event in twin.events()
        if event["kind"] == "driver" and event["call"] == "resize_disk"
    ]
    assert calls and calls[-1]["outcome"] == "ok"


def guest_extends(twin: Twin, server_id: str, volume_id: str) -> list[dict]:
    """Nova's handling of the volume-extended event for this volume, once it has happened."""

    def handled() -> list[dict]:
        return [
            event
            for event in twin.events()
            if event["kind"] == "compute"
            and event.get("action") == "extend_volume"
            and event.get("server_id") == server_id
            and volume_id in event.get("detail", "")
        ]

    return wait_for(handled, what=f"Nova's extend_volume of {volume_id}")


def guest_size(twin: Twin, server_id: str, volume_id: str) -> int:
    """The size of the volume as the null driver's guest sees it."""
    return null_machine(twin, server_id)["attachments"][volume_id]["size"]


def extend_online(api: Api, volume_id: str, new_size: int) -> None:
    action = f"{api.volume}/volumes/{volume_id}/action"
    headers = {"OpenStack-API-Version": "volume 3.42"}
    response = api.post(action, json={"os-extend": {"new_size": new_size}}, headers=headers)
    assert response.status_code == 202, response.text


def cinder_messages(api: Api, volume_id: str) -> list[dict]:
    headers = {"OpenStack-API-Version": "volume 3.5"}
    response = api.get(
        f"{api.volume}/messages", params={"resource_uuid": volume_id}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()["messages"]


def test_online_extend_sets_the_size_and_in_use_before_the_guest_sees_it(
    twin: Twin, api: Api, node: dict
) -> None:
    """As upstream: Cinder's completion (new size, in-use) comes first; only then does Nova's
    volume-extended handling grow the guest's disk, later and on its own."""
    server_id = node["server"]["id"]
    volume = steps.volume(api, "grow-in-order", 1)
    steps.attach(api, server_id, volume["id"])
    twin.configure(guest_extend_seconds=2.0)
    try:
        extend_online(api, volume["id"], 2)
        wait_for(lambda: steps.volume_status(api, volume["id"]) == "in-use")
        assert api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]["size"] == 2
        assert guest_size(twin, server_id, volume["id"]) == 1024**3, "the guest grew too early"
        (handled,) = guest_extends(twin, server_id, volume["id"])
    finally:
        twin.configure(guest_extend_seconds=0.0)
    assert handled["outcome"] == "ok", handled
    assert guest_size(twin, server_id, volume["id"]) == 2 * 1024**3
    events = twin.events()
    completed = next(
        event["seq"]
        for event in events
        if event["kind"] == "volume" and event.get("volume_id") == volume["id"]
    )
    resized = next(
        event["seq"]
        for event in events
        if event["kind"] == "driver" and event["call"] == "resize_disk"
        and event["server_id"] == server_id and event["seq"] > completed
    )  # fmt: skip
    assert completed < resized
    assert cinder_messages(api, volume["id"]) == []


def test_a_guest_resize_that_fails_is_only_logged(twin: Twin, api: Api, node: dict) -> None:
    """Nova's extend_volume fails in the hypervisor: logged as the instance's failed action;
    Cinder's volume stays in-use at the new size, with no message for the user."""
    server_id = node["server"]["id"]
    volume = steps.volume(api, "grow-guest-fails", 1)
    steps.attach(api, server_id, volume["id"])
    twin.configure(guest_extend_fails=True)
    try:
        extend_online(api, volume["id"], 2)
        (handled,) = guest_extends(twin, server_id, volume["id"])
    finally:
        twin.configure(guest_extend_fails=False)
    assert handled["outcome"] == "error" and "Extend volume failed" in handled["detail"]
    shown = api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]
    assert (shown["status"], shown["size"]) == ("in-use", 2)
    assert guest_size(twin, server_id, volume["id"]) == 1024**3
    assert steps.status(api, server_id) == "ACTIVE"
    assert cinder_messages(api, volume["id"]) == []


@pytest.mark.parametrize("attached", [True, False], ids=["in-use", "available"])
def test_no_room_on_any_backend_keeps_the_old_size_with_only_a_user_message(
    twin: Twin, api: Api, node: dict, attached: bool
) -> None:
    """The scheduler finds no backend: the extend is accepted (202), then the volume is back
    at its old status and size, the guest untouched, and Cinder's message says why."""
    server_id = node["server"]["id"]
    volume = steps.volume(api, f"grow-no-room-{attached}", 1)
    if attached:
        steps.attach(api, server_id, volume["id"])
    before = "in-use" if attached else "available"
    twin.configure(extend_no_valid_backend=True)
    try:
        extend_online(api, volume["id"], 2)
        wait_for(lambda: cinder_messages(api, volume["id"]), what="a user message")
    finally:
        twin.configure(extend_no_valid_backend=False)
    shown = api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]
    assert (shown["status"], shown["size"]) == (before, 1)
    (message,) = cinder_messages(api, volume["id"])
    assert message["user_message"] == "extend volume:Could not find any available weighted backend."
    assert message["event_id"] == "VOLUME_VOLUME_007_003"
    assert (message["resource_type"], message["message_level"]) == ("VOLUME", "ERROR")
    assert message["request_id"].startswith("req-")
    shown_alone = api.get(
        f"{api.volume}/messages/{message['id']}", headers={"OpenStack-API-Version": "volume 3.3"}
    ).json()["message"]
    assert shown_alone == message
    if attached:
        assert guest_size(twin, server_id, volume["id"]) == 1024**3
        assert not any(
            event["kind"] == "compute" and event.get("action") == "extend_volume"
            and volume["id"] in event.get("detail", "")
            for event in twin.events()
        )  # fmt: skip


def test_user_messages_need_microversion_3_3_and_filter_from_3_5(api: Api) -> None:
    """Below 3.3 the list is a bare 404; filters are Cinder's resource_filters.json ones."""
    below = api.get(f"{api.volume}/messages")
    assert nova_error(below, 404) == "The resource could not be found."
    unknown = api.get(
        f"{api.volume}/messages",
        params={"colour": "blue"},
        headers={"OpenStack-API-Version": "volume 3.31"},
    )
    assert nova_error(unknown, 400) == "Invalid filters colour are found in query options."


@pytest.mark.parametrize(
    ("mode", "status", "final"),
    [("forbidden", 403, "in-use"), ("unsupported", 202, "error_extending")],
)
def test_online_extend_when_the_cloud_does_not_allow_it(
    twin: Twin, api: Api, node: dict, mode: str, status: int, final: str
) -> None:
    """Policy forbids it (403), or the backend cannot do it (accepted, then error_extending)."""
    assert twin.admin("POST", "/config", json={"online_extend": mode}).status_code == 200
    try:
        volume = steps.volume(api, f"grow-{mode}", 1)
        steps.attach(api, node["server"]["id"], volume["id"])
        action = f"{api.volume}/volumes/{volume['id']}/action"
        headers = {"OpenStack-API-Version": "volume 3.42"}
        response = api.post(action, json={"os-extend": {"new_size": 2}}, headers=headers)
        assert response.status_code == status, response.text
        if status == 403:
            assert "extend_attached_volume" in response.json()["forbidden"]["message"]
        wait_for(lambda: steps.volume_status(api, volume["id"]) == final)
        assert api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]["size"] == 1
        # The driver's failure is the one extend failure Cinder tells the user about.
        messages = cinder_messages(api, volume["id"])
        expected = ["extend volume:Volume Driver failed to extend volume."] if status == 202 else []
        assert [message["user_message"] for message in messages] == expected
    finally:
        twin.admin("POST", "/config", json={"online_extend": "allowed"})
