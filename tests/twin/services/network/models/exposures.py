"""Neutron's floating IPs' forwarded ports: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

import ipaddress
from typing import Any


class ExposureBackend:
    """What a floating IP reaches: the guest ports the machine driver forwards to, as the port's
    security groups let them in."""

    def allowed_ports(self, port: dict[str, Any]) -> list[int]:
        """The exposed_ports the port's security groups let in over IPv4 TCP from the client."""
        wanted = self.cloud.config["exposed_ports"]
        client = ipaddress.IPv4Address(self.cloud.config["client_address"])
        if not port["port_security_enabled"]:
            return sorted(wanted)
        allowed = set()
        for group_id in port["security_groups"]:
            for rule in self.rules_of(group_id):
                if rule["direction"] != "ingress" or rule["ethertype"] != "IPv4":
                    continue
                if rule["protocol"] not in (None, "tcp", "6"):
                    continue
                # A rule for another group's members does not let an outside client in.
                if rule["remote_group_id"]:
                    continue
                prefix = rule["remote_ip_prefix"]
                if prefix and client not in ipaddress.ip_network(prefix):
                    continue
                low = rule["port_range_min"] if rule["port_range_min"] is not None else 1
                high = rule["port_range_max"] if rule["port_range_max"] is not None else 65535
                allowed.update(each for each in wanted if low <= each <= high)
        return sorted(allowed)

    def desired_exposures(self) -> dict[str, dict[str, Any]]:
        desired = {}
        compute = self.cloud.compute
        for floatingip in self.floatingips.values():
            port = self.ports.get(floatingip["port_id"]) if floatingip["port_id"] else None
            if port is None or not port["device_id"]:
                continue
            server = compute.servers.get(port["device_id"])
            if server is None or not compute.exposable(server):
                continue
            allowed = self.allowed_ports(port)
            if allowed:
                desired[floatingip["floating_ip_address"]] = {
                    "server_id": server["id"],
                    "ports": allowed,
                }
        return desired

    def forget_exposures(self, server_id: str) -> None:
        """The server's machine is gone, and its forwards with it."""
        for address in [
            key for key, value in self.exposures.items() if value["server_id"] == server_id
        ]:
            del self.exposures[address]

    def sync_exposures(self) -> None:
        """Ask the driver to forward exactly the floating IPs that reach a booted server now."""
        current = self.exposures
        desired = self.desired_exposures()
        removals = [
            (address, value["server_id"])
            for address, value in current.items()
            if desired.get(address) != value
        ]
        additions = [
            (address, value) for address, value in desired.items() if current.get(address) != value
        ]
        if not removals and not additions:
            return
        current.clear()
        current.update(desired)
        cloud = self.cloud

        def apply() -> None:
            for address, server_id in removals:
                cloud.call_driver("unexpose", server_id, address)
            for address, value in additions:
                cloud.call_driver("expose", value["server_id"], address, value["ports"])

        cloud.jobs.submit("exposures", apply)
