"""A pretend OpenStack project for the program evaluated under mocks: the few calls the program
makes itself through keystoneauth1 (components/openstack_api.py), answered from plain data.

Under `pulumi.runtime.set_mocks` the provider's own calls are mocked resources and invokes;
the program's quota check and growth check call the cloud directly, so the evaluation puts
`PretendOpenStack` in place of `components.openstack_api.OpenStack`. Its answers have the
services' shapes (Nova /limits, Neutron quota details, Cinder's quota set with usage, and the
lists the check reads what exists from), as the twin serves them; what a real service does
with them is the twin's to prove.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from components.openstack_api import Response

PROJECT_ID = "5a6b7c8d9e0f41a2b3c4d5e6f7a8b9c0"
# OpenStack's default quotas (nova/conf/quota.py, neutron/conf/quota.py, cinder/quota.py).
DEFAULT_LIMITS = {
    "instances": 10,
    "cores": 20,
    "ram": 51200,
    "security_group": 10,
    "security_group_rule": 100,
    "port": 500,
    "floatingip": 50,
    "volumes": 10,
    "gigabytes": 1000,
}
# m1.* as the twin's Nova has them: (vCPUs, RAM MiB).
FLAVORS = {
    "m1.small": ("2", 1, 2048),
    "m1.medium": ("3", 2, 4096),
    "m1.large": ("4", 4, 8192),
}


@dataclass
class PretendProject:
    """The project as its services would describe it: limits, what is used, what exists."""

    limits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    used: dict[str, int] = field(default_factory=dict)
    """In use, by the limits' names; the project's default security group and its four rules
    are always there."""
    servers: list[str] = field(default_factory=list)
    groups: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """Group name to its TCP ingress rules (port, network)."""
    ports: dict[str, str] = field(default_factory=dict)
    floating_ports: list[str] = field(default_factory=list)
    volumes: dict[str, int] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    unreadable: dict[str, int] = field(default_factory=dict)
    """Paths (as the program asks for them) answered with this HTTP status instead."""

    def in_use(self, name: str) -> int:
        base = {"security_group": 1, "security_group_rule": 4}.get(name, 0)
        return base + self.used.get(name, 0)


class PretendOpenStack:
    """Stands in for components.openstack_api.OpenStack: `call` and `project_id`."""

    def __init__(self, project: PretendProject) -> None:
        self.project = project
        self.calls: list[tuple[str, str, str]] = []

    def project_id(self) -> str:
        return PROJECT_ID

    def call(self, service_type: str, method: str, path: str, **kwargs: Any) -> Response:
        self.calls.append((service_type, method, path))
        status = self.project.unreadable.get(path)
        if status is not None:
            return _answer(status, {"error": {"message": f"pretend failure of {path}"}})
        body = self._body(service_type, method, path, kwargs)
        if body is None:
            return _answer(404, {"itemNotFound": {"code": 404, "message": f"no {path} here"}})
        return _answer(200, body)

    def _body(self, service: str, method: str, path: str, kwargs: dict[str, Any]) -> Any:
        project = self.project
        if method != "GET":
            return None
        if (service, path) == ("compute", "/limits"):
            return {
                "limits": {
                    "rate": [],
                    "absolute": {
                        "maxTotalInstances": project.limits["instances"],
                        "totalInstancesUsed": project.in_use("instances"),
                        "maxTotalCores": project.limits["cores"],
                        "totalCoresUsed": project.in_use("cores"),
                        "maxTotalRAMSize": project.limits["ram"],
                        "totalRAMUsed": project.in_use("ram"),
                    },
                }
            }
        if (service, path) == ("compute", "/servers"):
            return {"servers": [{"id": f"id-{name}", "name": name} for name in project.servers]}
        if (service, path) == ("compute", "/flavors/detail"):
            return {
                "flavors": [
                    {"id": flavor_id, "name": name, "vcpus": vcpus, "ram": ram}
                    for name, (flavor_id, vcpus, ram) in FLAVORS.items()
                ]
            }
        if (service, path) == ("network", f"/v2.0/quotas/{PROJECT_ID}/details"):
            names = ("security_group", "security_group_rule", "port", "floatingip")
            return {
                "quota": {
                    name: {
                        "limit": project.limits[name],
                        "used": project.in_use(name),
                        "reserved": 0,
                    }
                    for name in names
                }
            }
        if (service, path) == ("network", "/v2.0/security-groups"):
            groups = [{"name": "default", "security_group_rules": []}]
            for name, rules in project.groups.items():
                groups.append({"name": name, "security_group_rules": [_rule(*r) for r in rules]})
            return {"security_groups": groups}
        if (service, path) == ("network", "/v2.0/ports"):
            return {"ports": [{"id": pid, "name": name} for name, pid in project.ports.items()]}
        if (service, path) == ("network", "/v2.0/floatingips"):
            return {"floatingips": [{"port_id": pid} for pid in project.floating_ports]}
        if (service, path) == ("block-storage", "volumes/detail"):
            return {
                "volumes": [{"name": name, "size": size} for name, size in project.volumes.items()]
            }
        if (service, path) == ("block-storage", f"os-quota-sets/{PROJECT_ID}"):
            return {
                "quota_set": {
                    name: {"limit": project.limits[name], "in_use": project.in_use(name),
                           "reserved": 0}
                    for name in ("volumes", "gigabytes")
                }
            }  # fmt: skip
        if (service, path) == ("block-storage", "messages"):
            return {"messages": list(project.messages)}
        return None


def _rule(port: int, cidr: str) -> dict[str, Any]:
    return {
        "direction": "ingress",
        "protocol": "tcp",
        "port_range_min": port,
        "port_range_max": port,
        "remote_ip_prefix": cidr,
    }


def _answer(status: int, body: Any) -> Response:
    return Response(status, body, json.dumps(body))
