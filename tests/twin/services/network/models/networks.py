"""Neutron's networks, subnets and lookups: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.twin.services.network.models.common import (
    EXTERNAL_NETWORK,
    TENANT_CIDR,
    TENANT_NETWORK,
    loopback_block,
    not_found,
)
from tests.twin.services.state import new_uuid, stamp


class NetworkCollections:
    """The project's collections in the state, KVM@TACC's standard networks (seeded once), and
    the lookups by id that answer Neutron's 404s."""

    @property
    def networks(self) -> dict[str, Any]:
        return self.state.collection("networks")

    @property
    def subnets(self) -> dict[str, Any]:
        return self.state.collection("subnets")

    @property
    def ports(self) -> dict[str, Any]:
        return self.state.collection("ports")

    @property
    def floatingips(self) -> dict[str, Any]:
        return self.state.collection("floatingips")

    @property
    def security_groups(self) -> dict[str, Any]:
        return self.state.collection("security_groups")

    @property
    def rules(self) -> dict[str, Any]:
        return self.state.collection("security_group_rules")

    @property
    def exposures(self) -> dict[str, Any]:
        return self.state.collection("exposures")

    @property
    def router_id(self) -> str:
        return self.state.data["router_id"]

    # --- lifecycle ---------------------------------------------------------------------

    def _standard(self, project_id: str) -> dict[str, Any]:
        moment = stamp()
        return {
            "tenant_id": project_id,
            "project_id": project_id,
            "description": "",
            "tags": [],
            "created_at": moment,
            "updated_at": moment,
            "revision_number": 0,
        }

    def seed(self) -> None:
        identity = self.cloud.identity
        admin = identity.admin_project_id
        block = loopback_block(str(self.state.directory))
        self.state.data["router_id"] = new_uuid()
        for name, cidr, external, shared in (
            (TENANT_NETWORK, TENANT_CIDR, False, True),
            (EXTERNAL_NETWORK, str(block), True, False),
        ):
            network_id, subnet_id = new_uuid(), new_uuid()
            net = ipaddress.IPv4Network(cidr)
            hosts = list(net.hosts())
            self.networks[network_id] = {
                **self._standard(admin),
                "id": network_id,
                "name": name,
                "status": "ACTIVE",
                "admin_state_up": True,
                "shared": shared,
                "router:external": external,
                "subnets": [subnet_id],
                "mtu": 1500,
                "availability_zone_hints": [],
                "availability_zones": ["nova"],
                "ipv4_address_scope": None,
                "ipv6_address_scope": None,
                "port_security_enabled": True,
                "is_default": external,
                "l2_adjacency": True,
                "qos_policy_id": None,
            }
            self.subnets[subnet_id] = {
                **self._standard(admin),
                "id": subnet_id,
                "name": f"{name}-subnet",
                "network_id": network_id,
                "ip_version": 4,
                "cidr": cidr,
                "gateway_ip": str(hosts[0]),
                "allocation_pools": [{"start": str(hosts[1]), "end": str(hosts[-1])}],
                "enable_dhcp": not external,
                "dns_nameservers": [] if external else ["8.8.8.8"],
                "host_routes": [],
                "ipv6_address_mode": None,
                "ipv6_ra_mode": None,
                "subnetpool_id": None,
                "segment_id": None,
                "service_types": [],
            }
        self.create_security_group(
            {"name": "default", "description": "Default security group"}, default=True
        )

    def recover(self) -> None:
        pass

    # --- lookups -------------------------------------------------------------------------

    def network_named(self, name: str) -> list[dict[str, Any]]:
        return [network for network in self.networks.values() if network["name"] == name]

    def tenant_networks(self) -> list[dict[str, Any]]:
        return [network for network in self.networks.values() if not network["router:external"]]

    def get_network(self, network_id: str) -> dict[str, Any]:
        network = self.networks.get(network_id)
        if network is None:
            raise not_found("NetworkNotFound", f"Network {network_id} could not be found.")
        return network

    def get_subnet(self, subnet_id: str) -> dict[str, Any]:
        subnet = self.subnets.get(subnet_id)
        if subnet is None:
            raise not_found("SubnetNotFound", f"Subnet {subnet_id} could not be found.")
        return subnet

    def get_port(self, port_id: str) -> dict[str, Any]:
        port = self.ports.get(port_id)
        if port is None:
            raise not_found("PortNotFound", f"Port {port_id} could not be found.")
        return port

    def get_floatingip(self, floatingip_id: str) -> dict[str, Any]:
        floatingip = self.floatingips.get(floatingip_id)
        if floatingip is None:
            raise not_found("FloatingIPNotFound", f"Floating IP {floatingip_id} could not be found")
        return floatingip

    def get_security_group(self, group_id: str) -> dict[str, Any]:
        group = self.security_groups.get(group_id)
        if group is None:
            raise not_found("SecurityGroupNotFound", f"Security group {group_id} does not exist")
        return group

    def get_rule(self, rule_id: str) -> dict[str, Any]:
        rule = self.rules.get(rule_id)
        if rule is None:
            raise not_found(
                "SecurityGroupRuleNotFound", f"Security group rule {rule_id} does not exist"
            )
        return rule

    def default_group(self) -> dict[str, Any]:
        project_id = self.cloud.identity.project_id
        for group in self.security_groups.values():
            if group["name"] == "default" and group["project_id"] == project_id:
                return group
        raise RuntimeError("the project's default security group is missing from the state")

    def groups_of_project(self) -> list[dict[str, Any]]:
        project_id = self.cloud.identity.project_id
        return [
            group for group in self.security_groups.values() if group["project_id"] == project_id
        ]
