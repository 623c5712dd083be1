"""Neutron's floating IPs: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.twin.services.network.models.common import bad_request, conflict, not_found
from tests.twin.services.state import new_uuid


class FloatingIpBackend:
    """Floating IPs: loopback addresses of the twin's block, associated with a port."""

    def floatingip_status(self, floatingip: dict[str, Any]) -> str:
        """ACTIVE while associated, as the L3 agent reports it (neutron/api/rpc/handlers/
        l3_rpc.py L3RpcCallback.update_floatingip_statuses), else DOWN."""
        return "ACTIVE" if floatingip["port_id"] else "DOWN"

    def _association(
        self, floatingip_id: str | None, port_id: str, fixed_ip: str | None
    ) -> tuple[str, str]:
        """(port id, fixed IP) after checking that a floating IP may point there: one IPv4
        fixed IP of the port (neutron/db/l3_db.py L3_NAT_dbonly_mixin._internal_fip_assoc_data),
        a router to the external network (L3_NAT_dbonly_mixin.get_router_for_floatingip), no
        other floating IP on that fixed IP (L3_NAT_dbonly_mixin._check_and_get_fip_assoc)."""
        port = self.get_port(port_id)
        addresses = [
            fixed["ip_address"] for fixed in port["fixed_ips"] if ":" not in fixed["ip_address"]
        ]
        if fixed_ip is not None:
            if fixed_ip not in addresses:
                raise bad_request(
                    f"Bad floatingip request: Port {port_id} does not have fixed ip {fixed_ip}.",
                    "BadRequest",
                )
        elif not addresses:
            raise bad_request(
                f"Bad floatingip request: Port {port_id} does not have any IPv4 fixed IP.",
                "BadRequest",
            )
        elif len(addresses) > 1:
            raise bad_request(
                f"Bad floatingip request: Port {port_id} has multiple fixed IPv4 addresses.  Must "
                "provide a specific IPv4 address when assigning a floating IP.",
                "BadRequest",
            )
        fixed_ip = fixed_ip or addresses[0]
        network = self.networks[port["network_id"]]
        external = next(network for network in self.networks.values() if network["router:external"])
        if network["router:external"]:
            raise not_found(
                "ExternalGatewayForFloatingIPNotFound",
                f"External network {external['id']} is not reachable from subnet "
                f"{port['fixed_ips'][0]['subnet_id']}.  Therefore, cannot associate Port "
                f"{port_id} with a Floating IP.",
            )
        for other in self.floatingips.values():
            if (
                other["id"] != floatingip_id
                and other["port_id"] == port_id
                and other["fixed_ip_address"] == fixed_ip
            ):
                raise conflict(
                    "FloatingIPPortAlreadyAssociated",
                    f"Cannot associate floating IP {other['floating_ip_address']} ({other['id']}) "
                    f"with port {port_id} using fixed IP {fixed_ip}, as that fixed IP already has "
                    f"a floating IP on external network {other['floating_network_id']}.",
                )
        return port_id, fixed_ip

    def create_floatingip(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """On an external network only (neutron/db/l3_db.py
        L3_NAT_dbonly_mixin._create_floatingip)."""
        network_id = attributes["floating_network_id"]
        network = self.get_network(network_id)
        if not network["router:external"]:
            raise bad_request(
                f"Bad floatingip request: Network {network_id} is not a valid external network.",
                "BadRequest",
            )
        subnet = self.subnets[network["subnets"][0]]
        address = attributes.get("floating_ip_address")
        if address is not None:
            if ipaddress.ip_address(address) not in ipaddress.ip_network(subnet["cidr"]):
                raise bad_request(
                    f"IP address {address} is not a valid IP for the specified subnet.",
                    "InvalidIpForSubnet",
                )
            if any(other["floating_ip_address"] == address for other in self.floatingips.values()):
                raise conflict(
                    "IpAddressAlreadyAllocated",
                    f"IP address {address} already allocated in subnet {subnet['id']}",
                )
        port_id = fixed_ip = None
        if attributes.get("port_id"):
            port_id, fixed_ip = self._association(
                None, attributes["port_id"], attributes.get("fixed_ip_address")
            )
        elif attributes.get("fixed_ip_address"):
            raise bad_request(
                "fixed_ip_address cannot be specified without a port_id", "BadRequest"
            )
        floatingip_id = new_uuid()
        floatingip = {
            **self._standard(self.cloud.identity.project_id),
            "id": floatingip_id,
            "floating_ip_address": address or self._allocate_address(subnet),
            "floating_network_id": network_id,
            "port_id": port_id,
            "fixed_ip_address": fixed_ip,
            "router_id": self.router_id if port_id else None,
            "description": attributes.get("description") or "",
            "qos_policy_id": None,
            "port_forwardings": [],
        }
        self.floatingips[floatingip_id] = floatingip
        return floatingip

    def update_floatingip(
        self, floatingip: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
        if "description" in changes:
            floatingip["description"] = changes["description"] or ""
        if "port_id" in changes:
            if changes["port_id"]:
                port_id, fixed_ip = self._association(
                    floatingip["id"], changes["port_id"], changes.get("fixed_ip_address")
                )
                floatingip.update(
                    port_id=port_id, fixed_ip_address=fixed_ip, router_id=self.router_id
                )
            else:
                self._disassociate(floatingip)
        elif changes.get("fixed_ip_address"):
            raise bad_request(
                "fixed_ip_address cannot be specified without a port_id", "BadRequest"
            )
        self._touch(floatingip)
        return floatingip

    def _disassociate(self, floatingip: dict[str, Any]) -> None:
        floatingip.update(port_id=None, fixed_ip_address=None, router_id=None)
        self._touch(floatingip)

    def delete_floatingip(self, floatingip_id: str) -> None:
        self.get_floatingip(floatingip_id)
        del self.floatingips[floatingip_id]

    def floating_addresses_of(self, port_id: str) -> list[str]:
        return [
            floatingip["floating_ip_address"]
            for floatingip in self.floatingips.values()
            if floatingip["port_id"] == port_id
        ]
