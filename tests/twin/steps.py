"""What the OpenStack provider does, step by step, in the tests' own words."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from components.blazar import lease_request
from tests.twin.harness import Api, wait_for


def network_id(api: Api, name: str) -> str:
    networks = api.get(f"{api.network}/networks", params={"name": name}).json()["networks"]
    assert len(networks) == 1, networks
    return networks[0]["id"]


def image_id(api: Api, name: str = "CC-Ubuntu24.04") -> str:
    images = api.get(f"{api.image}/images", params={"name": name}).json()["images"]
    assert len(images) == 1, images
    return images[0]["id"]


def flavor_id(api: Api, name: str = "m1.large") -> str:
    flavors = api.get(f"{api.compute}/flavors/detail").json()["flavors"]
    return next(flavor["id"] for flavor in flavors if flavor["name"] == name)


def security_group(api: Api, name: str, ports: tuple[int, ...] = (22, 8000)) -> dict[str, Any]:
    response = api.post(f"{api.network}/security-groups", json={"security_group": {"name": name}})
    assert response.status_code == 201, response.text
    group = response.json()["security_group"]
    for port in ports:
        rule = {
            "security_group_id": group["id"],
            "direction": "ingress",
            "ethertype": "IPv4",
            "protocol": "tcp",
            "port_range_min": port,
            "port_range_max": port,
            "remote_ip_prefix": "0.0.0.0/0",
        }
        created = api.post(
            f"{api.network}/security-group-rules", json={"security_group_rule": rule}
        )
        assert created.status_code == 201, created.text
    return group


def port(api: Api, name: str, group_ids: list[str]) -> dict[str, Any]:
    body = {
        "port": {
            "name": name,
            "network_id": network_id(api, "sharednet1"),
            "admin_state_up": True,
            "security_groups": group_ids,
        }
    }
    response = api.post(f"{api.network}/ports", json=body)
    assert response.status_code == 201, response.text
    return response.json()["port"]


def floating_ip(api: Api, port_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"floating_network_id": network_id(api, "public")}
    if port_id:
        body["port_id"] = port_id
    response = api.post(f"{api.network}/floatingips", json={"floatingip": body})
    assert response.status_code == 201, response.text
    return response.json()["floatingip"]


def server_request(
    api: Api, name: str, port_id: str, key_name: str | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "imageRef": image_id(api),
        "flavorRef": flavor_id(api),
        "networks": [{"port": port_id}],
        "user_data": base64.b64encode(b"#cloud-config\n{}\n").decode(),
        "metadata": {"chi-persist": "node"},
        "config_drive": False,
    }
    if key_name:
        body["key_name"] = key_name
    body.update(extra)
    return {"server": body}


def status(api: Api, server_id: str) -> str | None:
    response = api.get(f"{api.compute}/servers/{server_id}")
    return None if response.status_code == 404 else response.json()["server"]["status"]


def boot(
    api: Api, name: str, port_id: str, key_name: str | None = None, **extra: Any
) -> dict[str, Any]:
    """POST /servers, then wait for ACTIVE as the provider does; the server as GET shows it."""
    response = api.post(
        f"{api.compute}/servers", json=server_request(api, name, port_id, key_name, **extra)
    )
    assert response.status_code == 202, response.text
    server_id = response.json()["server"]["id"]
    wait_for(lambda: status(api, server_id) == "ACTIVE", what=f"server {server_id} ACTIVE")
    return api.get(f"{api.compute}/servers/{server_id}").json()["server"]


def volume_status(api: Api, volume_id: str) -> str | None:
    response = api.get(f"{api.volume}/volumes/{volume_id}")
    return None if response.status_code == 404 else response.json()["volume"]["status"]


def volume(api: Api, name: str, size: int = 2) -> dict[str, Any]:
    response = api.post(f"{api.volume}/volumes", json={"volume": {"name": name, "size": size}})
    assert response.status_code == 202, response.text
    volume_id = response.json()["volume"]["id"]
    wait_for(lambda: volume_status(api, volume_id) == "available", what="volume available")
    return api.get(f"{api.volume}/volumes/{volume_id}").json()["volume"]


def attach(api: Api, server_id: str, volume_id: str) -> dict[str, Any]:
    response = api.post(
        f"{api.compute}/servers/{server_id}/os-volume_attachments",
        json={"volumeAttachment": {"volumeId": volume_id}},
    )
    assert response.status_code == 200, response.text
    wait_for(lambda: volume_status(api, volume_id) == "in-use", what="volume in-use")
    return response.json()["volumeAttachment"]


def lease(api: Api, name: str, flavor: str, hours: float = 24, wait: bool = True) -> dict[str, Any]:
    """A lease of one `flavor` (its id), made as the stack's lease makes it (the same body),
    from now for `hours`; with `wait`, as Blazar shows it once ACTIVE."""
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)
    made = api.post(f"{api.reservation}/leases", json=lease_request(name, flavor, end))
    assert made.status_code == 201, made.text
    lease_id = made.json()["lease"]["id"]
    if not wait:
        return made.json()["lease"]

    def active() -> dict[str, Any] | None:
        shown = api.get(f"{api.reservation}/leases/{lease_id}").json()["lease"]
        return shown if shown["status"] == "ACTIVE" else None

    return wait_for(active, timeout=120, what=f"lease {lease_id} ACTIVE", interval=2)
