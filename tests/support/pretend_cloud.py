"""A cloud of fixed records answering the program's survey, for evaluations under mocks.

`PretendOpenStack.call` answers the GETs components/cloud_inventory.py makes (Neutron, Nova,
Cinder, Blazar) from lists of records shaped as those services return them, so the real
inventory, survey and decisions run on them. It answers nothing else: the program's resources
go through the mocked engine. The real services' behaviour is the twin's (tests/twin/) and is
proven there and with the real engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from components.openstack_api import CloudUnavailable, Response


@dataclass
class PretendCloud:
    """Records by collection; `error` makes every call fail as an unreachable cloud does."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)
    floatingips: list[dict[str, Any]] = field(default_factory=list)
    security_groups: list[dict[str, Any]] = field(default_factory=list)
    security_group_rules: list[dict[str, Any]] = field(default_factory=list)
    leases: list[dict[str, Any]] = field(default_factory=list)
    attachments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """By server id: Nova's volumeAttachments."""
    error: str | None = None
    calls: list[tuple[str, str]] = field(default_factory=list)


def _matches(record: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    for key, wanted in params.items():
        if key == "tags":
            if not set(str(wanted).split(",")) <= set(record.get("tags") or []):
                return False
        elif key == "metadata":
            metadata = record.get("metadata") or {}
            if any(metadata.get(k) != v for k, v in json.loads(wanted).items()):
                return False
        elif str(record.get(key)) != str(wanted):
            return False
    return True


class PretendCloudApi:
    """components.openstack_api.OpenStack's `call` for the survey, over a PretendCloud (the quota
    and growth checks have theirs: tests/support/pretend_openstack.py)."""

    COLLECTIONS = {
        ("network", "/v2.0/security-groups"): ("security_groups", "security_groups"),
        ("network", "/v2.0/security-group-rules"): (
            "security_group_rules", "security_group_rules"
        ),
        ("network", "/v2.0/ports"): ("ports", "ports"),
        ("network", "/v2.0/floatingips"): ("floatingips", "floatingips"),
        ("compute", "/servers/detail"): ("servers", "servers"),
        ("volumev3", "/volumes/detail"): ("volumes", "volumes"),
        ("reservation", "/leases"): ("leases", "leases"),
    }  # fmt: skip
    SINGLE = {
        ("network", "/v2.0/security-groups/"): ("security_groups", "security_group"),
        ("network", "/v2.0/security-group-rules/"): ("security_group_rules", "security_group_rule"),
        ("network", "/v2.0/ports/"): ("ports", "port"),
        ("network", "/v2.0/floatingips/"): ("floatingips", "floatingip"),
        ("compute", "/servers/"): ("servers", "server"),
        ("volumev3", "/volumes/"): ("volumes", "volume"),
        ("reservation", "/leases/"): ("leases", "lease"),
    }

    def __init__(self, cloud: PretendCloud) -> None:
        self.cloud = cloud

    def call(self, service: str, method: str, path: str, **kwargs: Any) -> Response:
        self.cloud.calls.append((method, path))
        if self.cloud.error is not None:
            raise CloudUnavailable(self.cloud.error)
        if method == "DELETE" and service == "compute" and path.startswith("/servers/"):
            # The one change the program makes itself: a server of its own that holds no data.
            server_id = path.split("/")[2]
            self.cloud.servers = [s for s in self.cloud.servers if s["id"] != server_id]
            return Response(204, {}, "")
        if method != "GET":
            raise AssertionError(f"the survey only reads; it sent {method} {path}")
        params = kwargs.get("params") or {}
        if (service, path) in self.COLLECTIONS:
            attribute, key = self.COLLECTIONS[(service, path)]
            records = [r for r in getattr(self.cloud, attribute) if _matches(r, params)]
            return Response(200, {key: records}, "")
        if service == "compute" and path.endswith("/os-volume_attachments"):
            server_id = path.split("/")[2]
            attached = self.cloud.attachments.get(server_id)
            if attached is None and not any(s["id"] == server_id for s in self.cloud.servers):
                return Response(404, {}, "")
            return Response(200, {"volumeAttachments": attached or []}, "")
        for (kind, prefix), (attribute, key) in self.SINGLE.items():
            if service == kind and path.startswith(prefix):
                wanted = path[len(prefix) :]
                for record in getattr(self.cloud, attribute):
                    if record["id"] == wanted:
                        return Response(200, {key: record}, "")
                return Response(404, {}, "")
        raise AssertionError(f"the pretend cloud does not answer GET {path} ({service})")
