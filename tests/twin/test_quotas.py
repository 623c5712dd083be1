"""Quotas on the twin: OpenStack's defaults, what counts, the refusals in each service's words,
and the read APIs a project member may call (Nova /limits, Neutron quota details, Cinder's
quota set with usage). Each test has a twin of its own, with the default quotas."""

from __future__ import annotations

import pytest

from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for

PORTS = (22, 8000, 8888, 9000, 9001)


def limits(api: Api, version: str | None = None) -> dict:
    headers = {"OpenStack-API-Version": f"compute {version}"} if version else {}
    response = api.get(f"{api.compute}/limits", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()["limits"]
    assert body["rate"] == []
    return body["absolute"]


def neutron_quotas(api: Api, suffix: str = "details") -> dict:
    response = api.get(f"{api.network}/quotas/{api.project_id}/{suffix}")
    assert response.status_code == 200, response.text
    return response.json()["quota"]


def cinder_quotas(api: Api, usage: str = "true") -> dict:
    response = api.get(f"{api.volume}/os-quota-sets/{api.project_id}", params={"usage": usage})
    assert response.status_code == 200, response.text
    return response.json()["quota_set"]


def fault(response, status: int) -> tuple[str, dict]:
    """Nova's and Cinder's fault body: (name, contents)."""
    assert response.status_code == status, response.text
    ((name, contents),) = response.json().items()
    assert contents["code"] == status
    return name, contents


def neutron_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["NeutronError"]


def student(api: Api, netid: str, cidrs: int = 1) -> dict:
    """What one student's `pulumi up` makes in Neutron: a group with a rule per port and
    network, a port and a floating IP."""
    response = api.post(
        f"{api.network}/security-groups", json={"security_group": {"name": f"persist-{netid}"}}
    )
    assert response.status_code == 201, response.text
    group = response.json()["security_group"]
    for port in PORTS:
        for index in range(cidrs):
            rule = {
                "security_group_id": group["id"],
                "direction": "ingress",
                "ethertype": "IPv4",
                "protocol": "tcp",
                "port_range_min": port,
                "port_range_max": port,
                "remote_ip_prefix": f"203.0.{index}.0/24",
            }
            created = api.post(
                f"{api.network}/security-group-rules", json={"security_group_rule": rule}
            )
            assert created.status_code == 201, created.text
    port = steps.port(api, f"node-persist-{netid}", [group["id"]])
    floating = steps.floating_ip(api, port["id"])
    return {"group": group, "port": port, "floating": floating}


def test_nova_limits_show_the_defaults_and_what_the_project_uses(twin: Twin, api: Api) -> None:
    """GET /limits: 10 instances, 20 cores, 50 GiB of RAM; a server counts with its flavor."""
    before = limits(api)
    assert (before["maxTotalInstances"], before["maxTotalCores"], before["maxTotalRAMSize"]) == (
        10,
        20,
        51200,
    )
    assert (before["totalInstancesUsed"], before["totalCoresUsed"], before["totalRAMUsed"]) == (
        0,
        0,
        0,
    )
    # Before 2.36 the nova-network quotas are still shown, unlimited and unused.
    assert before["maxSecurityGroups"] == -1 and before["totalSecurityGroupsUsed"] == 0
    assert before["maxTotalKeypairs"] == 100 and before["maxImageMeta"] == 128
    made = student(api, "ab1234")
    steps.boot(api, "node-persist-ab1234", made["port"]["id"])
    after = limits(api)
    assert (after["totalInstancesUsed"], after["totalCoresUsed"], after["totalRAMUsed"]) == (
        1,
        4,
        8192,
    )
    newer = limits(api, "2.57")
    assert not {"maxSecurityGroups", "maxTotalFloatingIps", "maxPersonality"} & set(newer)
    assert "maxImageMeta" not in newer and newer["totalInstancesUsed"] == 1
    other = api.get(f"{api.compute}/limits", params={"tenant_id": "another-project"})
    assert fault(other, 403)[1]["message"] == (
        "Policy doesn't allow os_compute_api:limits:other_project to be performed."
    )


def test_a_server_over_the_instance_or_core_quota_is_refused_403(twin: Twin, api: Api) -> None:
    """Nova's TooManyInstances: each resource over, what was asked, used and allowed."""
    first = student(api, "ab1234")
    steps.boot(api, "node-persist-ab1234", first["port"]["id"])
    second = student(api, "cd5678")
    twin.configure(quota_instances=1)
    request = steps.server_request(api, "node-persist-cd5678", second["port"]["id"], None)
    refused = api.post(f"{api.compute}/servers", json=request)
    assert fault(refused, 403) == (
        "forbidden",
        {
            "code": 403,
            "message": "Quota exceeded for instances: Requested 1, but already used 1 of 1 "
            "instances",
        },
    )
    twin.configure(quota_instances=10, quota_cores=7, quota_ram=10000)
    refused = api.post(f"{api.compute}/servers", json=request)
    assert fault(refused, 403)[1]["message"] == (
        "Quota exceeded for cores, ram: Requested 4, 8192, but already used 4, 8192 of 7, 10000 "
        "cores, ram"
    )
    assert len(twin.state()["servers"]) == 1, "a refused server was made"
    port = api.get(f"{api.network}/ports/{second['port']['id']}").json()["port"]
    assert port["device_id"] == "", "the refused server took the port"
    twin.configure(quota_cores=-1, quota_ram=-1)
    assert api.post(f"{api.compute}/servers", json=request).status_code == 202


def test_neutron_counts_the_default_group_and_refuses_the_tenth_students_group(
    twin: Twin, api: Api
) -> None:
    """The project's default group (and its 4 rules) counts: nine students' groups fit in the
    default quota of 10, the tenth is refused 409 OverQuota; details show limit and used."""
    start = neutron_quotas(api)
    assert start["security_group"] == {"limit": 10, "used": 1, "reserved": 0}
    assert start["security_group_rule"] == {"limit": 100, "used": 4, "reserved": 0}
    assert start["floatingip"]["limit"] == 50 and start["port"]["limit"] == 500
    assert {"network", "subnet", "router", "rbac_policy", "subnetpool"} <= set(start)
    for number in range(9):
        student(api, f"student{number}")
    full = neutron_quotas(api)
    assert full["security_group"]["used"] == 10
    # 4 default rules; each group: Neutron's 2 egress rules and 5 of the student's.
    assert full["security_group_rule"]["used"] == 4 + 9 * 7
    assert (full["port"]["used"], full["floatingip"]["used"]) == (9, 9)
    refused = api.post(
        f"{api.network}/security-groups", json={"security_group": {"name": "persist-tenth"}}
    )
    assert neutron_error(refused, 409) == {
        "type": "OverQuota",
        "message": "Quota exceeded for resources: ['security_group'].",
        "detail": "",
    }
    names = [g["name"] for g in api.get(f"{api.network}/security-groups").json()["security_groups"]]
    assert "persist-tenth" not in names
    assert neutron_quotas(api, "details.json") == neutron_quotas(api)


def test_rules_and_floating_ips_over_their_quota_are_refused(twin: Twin, api: Api) -> None:
    """A rule over the rule quota; a group with no room for its two egress rules (the group is
    not made); a floating IP over its quota: each 409 OverQuota naming its resource."""
    made = student(api, "ab1234")
    used_rules = neutron_quotas(api)["security_group_rule"]["used"]
    twin.configure(quota_security_group_rule=used_rules)
    rule = {
        "security_group_id": made["group"]["id"],
        "direction": "ingress",
        "ethertype": "IPv4",
        "protocol": "tcp",
        "port_range_min": 443,
        "port_range_max": 443,
    }
    refused = api.post(f"{api.network}/security-group-rules", json={"security_group_rule": rule})
    assert neutron_error(refused, 409)["message"] == (
        "Quota exceeded for resources: ['security_group_rule']."
    )
    twin.configure(quota_security_group_rule=used_rules + 1)
    no_room = api.post(
        f"{api.network}/security-groups", json={"security_group": {"name": "persist-cd5678"}}
    )
    assert neutron_error(no_room, 409)["message"] == (
        "Quota exceeded for resources: ['security_group_rule']."
    )
    assert neutron_quotas(api)["security_group"]["used"] == 2
    twin.configure(quota_floatingip=1)
    public = steps.network_id(api, "public")
    again = api.post(
        f"{api.network}/floatingips", json={"floatingip": {"floating_network_id": public}}
    )
    assert neutron_error(again, 409)["message"] == "Quota exceeded for resources: ['floatingip']."
    other = api.get(f"{api.network}/quotas/another-project/details")
    assert neutron_error(other, 403)["type"] == "AdminRequired"


def test_cinder_quota_set_counts_volumes_and_gigabytes(twin: Twin, api: Api) -> None:
    """?usage=true: limit, in_use and reserved, the volume type's own quotas too; without it
    the limits alone; another project's is not a member's to read."""
    start = cinder_quotas(api)
    assert start["id"] == api.project_id
    assert start["volumes"] == {"limit": 10, "in_use": 0, "reserved": 0}
    assert start["gigabytes"] == {"limit": 1000, "in_use": 0, "reserved": 0}
    assert start["volumes___DEFAULT__"]["limit"] == -1
    steps.volume(api, "block-persist-ab1234", 2)
    steps.volume(api, "block-persist-cd5678", 5)
    used = cinder_quotas(api)
    assert (used["volumes"]["in_use"], used["gigabytes"]["in_use"]) == (2, 7)
    assert used["gigabytes___DEFAULT__"]["in_use"] == 7
    plain = cinder_quotas(api, usage="false")
    assert plain["volumes"] == 10 and plain["gigabytes"] == 1000
    bad = api.get(f"{api.volume}/os-quota-sets/{api.project_id}", params={"usage": "maybe"})
    assert fault(bad, 400)[1]["message"] == "Value 'maybe' for 'usage' is not a boolean."
    other = api.get(f"{api.volume}/os-quota-sets/another-project")
    assert fault(other, 403)[1]["message"] == (
        "Policy doesn't allow volume_extension:quotas:show to be performed."
    )


def test_volumes_and_extends_over_the_quota_are_refused_413(twin: Twin, api: Api) -> None:
    """VolumeLimitExceeded and VolumeSizeExceedsAvailableQuota: 413 overLimit with
    Retry-After 0; a refused extend leaves the volume as it was."""
    volume = steps.volume(api, "block-persist-ab1234", 2)
    twin.configure(quota_volumes=1)
    refused = api.post(
        f"{api.volume}/volumes", json={"volume": {"name": "block-persist-cd5678", "size": 1}}
    )
    assert refused.headers["Retry-After"] == "0"
    assert fault(refused, 413) == (
        "overLimit",
        {
            "code": 413,
            "message": "Maximum number of volumes allowed (1) exceeded for quota 'volumes'.",
            "retryAfter": "0",
        },
    )
    twin.configure(quota_volumes=10, quota_gigabytes=6)
    too_big = api.post(
        f"{api.volume}/volumes", json={"volume": {"name": "block-persist-cd5678", "size": 5}}
    )
    assert fault(too_big, 413)[1]["message"] == (
        "Requested volume or snapshot exceeds allowed gigabytes quota. Requested 5G, quota is "
        "6G and 2G has been consumed."
    )
    action = f"{api.volume}/volumes/{volume['id']}/action"
    extend = api.post(action, json={"os-extend": {"new_size": 7}})
    assert fault(extend, 413)[1]["message"] == (
        "Requested volume or snapshot exceeds allowed gigabytes quota. Requested 5G, quota is "
        "6G and 2G has been consumed."
    )
    shown = api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]
    assert (shown["status"], shown["size"]) == ("available", 2)
    assert api.post(action, json={"os-extend": {"new_size": 6}}).status_code == 202
    wait_for(lambda: cinder_quotas(api)["gigabytes"]["in_use"] == 6, what="the extend counted")


@pytest.mark.parametrize(
    ("setting", "value"),
    [("quota_instances", -2), ("quota_security_group", "ten"), ("quota_gigabytes", True)],
)
def test_quota_settings_are_checked(twin: Twin, setting: str, value: object) -> None:
    """A quota is a whole number, or -1 for no limit."""
    response = twin.admin("POST", "/config", json={setting: value})
    assert response.status_code == 400 and setting in response.json()["error"]
    assert twin.configure(**{setting: -1})[setting] == -1
