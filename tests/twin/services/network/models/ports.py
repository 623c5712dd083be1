"""Neutron's ports: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.twin.services.network.models.common import bad_request, conflict, new_mac
from tests.twin.services.state import new_uuid, stamp


class PortBackend:
    """Ports: their fixed IPs, security groups, binding to a server and derived status."""

    def port_status(self, port: dict[str, Any]) -> str:
        """ACTIVE while bound to a running server, as the agent reports it (neutron/plugins/
        ml2/plugin.py Ml2Plugin.update_port_status), else DOWN."""
        server = self.cloud.compute.servers.get(port["device_id"]) if port["device_id"] else None
        if server is not None and server["vm_state"] == "active" and port["admin_state_up"]:
            return "ACTIVE"
        return "DOWN"

    def _touch(self, record: dict[str, Any]) -> None:
        record["updated_at"] = stamp()
        record["revision_number"] += 1

    def _used_addresses(self, subnet_id: str) -> set[str]:
        used = set()
        for port in self.ports.values():
            for fixed in port["fixed_ips"]:
                if fixed["subnet_id"] == subnet_id:
                    used.add(fixed["ip_address"])
        return used

    def _allocate_address(self, subnet: dict[str, Any]) -> str:
        """The first free address of the allocation pools (neutron/ipam/drivers/
        neutrondb_ipam/driver.py NeutronDbSubnet._generate_ips)."""
        used = self._used_addresses(subnet["id"]) | {
            floatingip["floating_ip_address"] for floatingip in self.floatingips.values()
        }
        for pool in subnet["allocation_pools"]:
            address = ipaddress.IPv4Address(pool["start"])
            end = ipaddress.IPv4Address(pool["end"])
            while address <= end:
                if str(address) not in used:
                    return str(address)
                address += 1
        raise conflict(
            "IpAddressGenerationFailure",
            f"No more IP addresses available on network {subnet['network_id']}.",
        )

    def _fixed_ips(
        self, network: dict[str, Any], requested: Any, port_id: str
    ) -> list[dict[str, str]]:
        subnets = [self.subnets[subnet_id] for subnet_id in network["subnets"]]
        if requested is None:
            return [
                {"subnet_id": subnets[0]["id"], "ip_address": self._allocate_address(subnets[0])}
            ]
        if not isinstance(requested, list):
            raise bad_request(
                "Invalid input for fixed_ips. Reason: Invalid data format for fixed IP: "
                f"'{requested}'."
            )
        fixed_ips = []
        for item in requested:
            if not isinstance(item, dict) or set(item) - {"subnet_id", "ip_address"}:
                raise bad_request(
                    "Invalid input for fixed_ips. Reason: Invalid data format for fixed IP: "
                    f"'{item}'."
                )
            subnet = None
            if item.get("subnet_id"):
                subnet = self.get_subnet(item["subnet_id"])
                if subnet["network_id"] != network["id"]:
                    raise bad_request(
                        f"Failed to create port on network {network['id']}, because fixed_ips "
                        "included invalid subnet " + subnet["id"],
                        "InvalidInput",
                    )
            address = item.get("ip_address")
            if address is not None:
                try:
                    parsed = ipaddress.ip_address(address)
                except ValueError:
                    raise bad_request(
                        f"Invalid input for fixed_ips. Reason: '{address}' is not a valid IP "
                        "address."
                    ) from None
                candidates = [subnet] if subnet else subnets
                subnet = next(
                    (each for each in candidates if parsed in ipaddress.ip_network(each["cidr"])),
                    None,
                )
                if subnet is None:
                    raise bad_request(
                        f"IP address {address} is not a valid IP for the specified subnet.",
                        "InvalidIpForSubnet",
                    )
                taken = {
                    fixed["ip_address"]
                    for other in self.ports.values()
                    if other["id"] != port_id
                    for fixed in other["fixed_ips"]
                    if fixed["subnet_id"] == subnet["id"]
                }
                if str(parsed) in taken:
                    # NeutronDbSubnet._verify_ip
                    raise conflict(
                        "IpAddressAlreadyAllocated",
                        f"IP address {address} already allocated in subnet {subnet['id']}",
                    )
                fixed_ips.append({"subnet_id": subnet["id"], "ip_address": str(parsed)})
            else:
                subnet = subnet or subnets[0]
                fixed_ips.append(
                    {"subnet_id": subnet["id"], "ip_address": self._allocate_address(subnet)}
                )
        return fixed_ips

    def _check_groups(self, group_ids: Any) -> list[str]:
        if not isinstance(group_ids, list) or not all(isinstance(each, str) for each in group_ids):
            raise bad_request(
                f"Invalid input for security_groups. Reason: '{group_ids}' is not a list."
            )
        for group_id in group_ids:
            self.get_security_group(group_id)
        return list(dict.fromkeys(group_ids))

    def create_port(self, attributes: dict[str, Any]) -> dict[str, Any]:
        network = self.get_network(attributes["network_id"])
        port_id = new_uuid()
        project_id = self.cloud.identity.project_id
        security_enabled = attributes.get("port_security_enabled", network["port_security_enabled"])
        if "security_groups" in attributes and attributes["security_groups"] is not None:
            groups = self._check_groups(attributes["security_groups"])
        else:
            # SecurityGroupDbMixin._ensure_default_security_group_on_port
            groups = [self.default_group()["id"]] if security_enabled else []
        if not security_enabled and groups:
            # neutron/plugins/ml2/plugin.py Ml2Plugin._portsec_ext_port_create_processing
            raise conflict(
                "PortSecurityAndIPRequiredForSecurityGroups",
                "Port security must be enabled and port must have an IP address in order to "
                "use security groups.",
            )
        mac = attributes.get("mac_address") or new_mac()
        # neutron/db/db_base_plugin_v2.py NeutronDbPluginV2._create_db_port_obj
        if any(
            port["mac_address"] == mac and port["network_id"] == network["id"]
            for port in self.ports.values()
        ):
            raise conflict(
                "MacAddressInUse",
                f"Unable to complete operation for network {network['id']}. The mac address "
                f"{mac} is in use.",
            )
        port = {
            **self._standard(project_id),
            "id": port_id,
            "name": attributes.get("name") or "",
            "description": attributes.get("description") or "",
            "network_id": network["id"],
            "mac_address": mac,
            "admin_state_up": attributes.get("admin_state_up", True),
            "device_id": attributes.get("device_id") or "",
            "device_owner": attributes.get("device_owner") or "",
            "fixed_ips": self._fixed_ips(network, attributes.get("fixed_ips"), port_id),
            "allowed_address_pairs": attributes.get("allowed_address_pairs") or [],
            "extra_dhcp_opts": attributes.get("extra_dhcp_opts") or [],
            "security_groups": groups,
            "port_security_enabled": security_enabled,
            "binding:vnic_type": attributes.get("binding:vnic_type") or "normal",
            "qos_policy_id": attributes.get("qos_policy_id"),
            "propagate_uplink_status": attributes.get("propagate_uplink_status", False),
            "tags": list(attributes.get("tags") or []),
        }
        self.ports[port_id] = port
        return port

    def update_port(self, port: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        if "security_groups" in changes:
            changes["security_groups"] = (
                []
                if changes["security_groups"] is None
                else self._check_groups(changes["security_groups"])
            )
        enabled = changes.get("port_security_enabled", port["port_security_enabled"])
        groups = changes.get("security_groups", port["security_groups"])
        if not enabled and groups:
            # neutron/plugins/ml2/plugin.py Ml2Plugin._portsec_ext_port_update_processing
            raise conflict(
                "PortSecurityPortHasSecurityGroup",
                "Port has security group associated. Cannot disable port security or IP "
                "address until security group is removed",
            )
        if "fixed_ips" in changes:
            network = self.networks[port["network_id"]]
            changes["fixed_ips"] = self._fixed_ips(network, changes["fixed_ips"], port["id"])
        if (
            changes.get("device_id")
            and changes["device_id"] != port["device_id"]
            and port["device_id"] in self.cloud.compute.servers
        ):
            raise conflict(
                "PortInUse",
                f"Unable to complete operation on port {port['id']} for network "
                f"{port['network_id']}. Port already has an attached device "
                f"{port['device_id']}.",
            )
        port.update(changes)
        self._touch(port)
        return port

    def delete_port(self, port_id: str) -> None:
        """Its floating IPs are disassociated first (neutron/db/l3_db.py
        L3_NAT_dbonly_mixin.disassociate_floatingips)."""
        port = self.get_port(port_id)
        for floatingip in self.floatingips.values():
            if floatingip["port_id"] == port_id:
                self._disassociate(floatingip)
        server = self.cloud.compute.servers.get(port["device_id"]) if port["device_id"] else None
        if server is not None:
            self.cloud.compute.port_removed(server, port_id)
        del self.ports[port_id]

    def bind_port(self, port: dict[str, Any], server_id: str) -> None:
        port["device_id"] = server_id
        port["device_owner"] = "compute:nova"
        self._touch(port)

    def unbind_port(self, port: dict[str, Any]) -> None:
        port["device_id"] = ""
        port["device_owner"] = ""
        self._touch(port)
