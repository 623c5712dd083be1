"""Neutron's state and rules: networks, subnets, ports, floating IPs, security groups and rules.

KVM@TACC's layout: a shared tenant network `sharednet1` routed to the external
network `public`, whose floating IPs here are loopback addresses from one /24
of 127.0.0.0/8 chosen from the state directory (so two twins never share
addresses and a restarted twin keeps its own). A port is ACTIVE while it is
bound to a running server, DOWN otherwise; a floating IP is ACTIVE while it is
associated with a port. While a floating IP points at a port of a booted
server, the machine driver forwards its address to the guest, for the ports
in the `exposed_ports` setting that the port's security groups let in.
Messages and error types are neutron-lib's and neutron's (neutron_lib/exceptions,
neutron/extensions/securitygroup.py, neutron/db/l3_db.py).
The project's resources count against its quotas (neutron/db/quota/driver_nolock.py):
a create over the quota answers 409 OverQuota; a new group must also have room for the
egress rules Neutron gives it (SecurityGroupDbMixin.create_security_group).
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from typing import TYPE_CHECKING, Any

from tests.twin.services.core import NetworkError
from tests.twin.services.state import new_uuid, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

TENANT_NETWORK = "sharednet1"
TENANT_CIDR = "10.56.0.0/22"
EXTERNAL_NETWORK = "public"
SUPPORTED_PROTOCOLS = (
    "ah", "dccp", "egp", "esp", "gre", "hopopt", "icmp", "igmp", "ipip", "ipv6-encap",
    "ipv6-frag", "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts", "ipv6-route", "ospf",
    "pgm", "rsvp", "sctp", "tcp", "udp", "udplite", "vrrp",
)  # fmt: skip
PROTOCOLS_WITH_PORTS = ("tcp", "udp", "dccp", "sctp", "udplite", "6", "17", "33", "132", "136")
ANY_PROTOCOL = (None, "any", "0")
# neutron/conf/quota.py: the default quota of each resource the ML2 and L3 plugins track
# (neutron/plugins/ml2/plugin.py, neutron/services/l3_router/l3_router_plugin.py) and of RBAC
# policies; the twin's settings hold those it enforces (quota_<resource>).
FIXED_QUOTAS = {"network": 100, "subnet": 100, "subnetpool": -1, "router": 10, "rbac_policy": 10}
CONFIGURED_QUOTAS = ("floatingip", "port", "security_group", "security_group_rule")


def not_found(kind: str, message: str) -> NetworkError:
    return NetworkError(404, kind, message)


def bad_request(message: str, kind: str = "HTTPBadRequest") -> NetworkError:
    return NetworkError(400, kind, message)


def invalid_input(message: str) -> NetworkError:
    return NetworkError(400, "InvalidInput", f"Invalid input for operation: {message}.")


def conflict(kind: str, message: str) -> NetworkError:
    return NetworkError(409, kind, message)


def loopback_block(directory: str) -> ipaddress.IPv4Network:
    """The /24 of 127.0.0.0/8 this twin's floating IPs come from (never 127.0.0.0/24)."""
    digest = hashlib.sha256(directory.encode()).digest()
    return ipaddress.IPv4Network(f"127.{1 + digest[0] % 254}.{digest[1]}.0/24")


def new_mac() -> str:
    tail = [random.randint(0, 255) for _ in range(3)]  # noqa: S311 - not a secret
    return "fa:16:3e:" + ":".join(f"{octet:02x}" for octet in tail)


class NetworkBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    # --- collections -------------------------------------------------------------------

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

    # --- quotas ----------------------------------------------------------------------------

    def _used(self, resource: str) -> int:
        """What the project has of a tracked resource (TrackedResource.count_db_registers:
        every record with its project_id; the default group and its rules included)."""
        project_id = self.cloud.identity.project_id
        records = {
            "floatingip": self.floatingips,
            "port": self.ports,
            "security_group": self.security_groups,
            "security_group_rule": self.rules,
            "network": self.networks,
            "subnet": self.subnets,
        }.get(resource, {})
        return sum(1 for record in records.values() if record["project_id"] == project_id)

    def quota_details(self) -> dict[str, dict[str, int]]:
        """neutron/db/quota/driver.py DbQuotaDriver.get_detailed_project_quotas: limit, used
        and reserved (no reservations are left open here) of every tracked resource."""
        limits = {
            **FIXED_QUOTAS,
            **{name: self.cloud.config[f"quota_{name}"] for name in CONFIGURED_QUOTAS},
        }
        return {
            name: {"limit": limit, "used": self._used(name), "reserved": 0}
            for name, limit in sorted(limits.items())
        }

    def check_quota(self, deltas: dict[str, int]) -> None:
        """neutron/db/quota/driver_nolock.py DbQuotaNoLockDriver.make_reservation (and
        DbQuotaDriver.quota_limit_check): unlimited resources skipped, every resource over
        named, sorted, in neutron_lib's OverQuota (409)."""
        overs = []
        for name, delta in deltas.items():
            limit = self.cloud.config[f"quota_{name}"]
            if limit >= 0 and limit < self._used(name) + delta:
                overs.append(name)
        if overs:
            raise conflict("OverQuota", f"Quota exceeded for resources: {sorted(overs)}.")

    # --- derived status ------------------------------------------------------------------

    def port_status(self, port: dict[str, Any]) -> str:
        """ACTIVE while bound to a running server, as the agent reports it (neutron/plugins/
        ml2/plugin.py Ml2Plugin.update_port_status), else DOWN."""
        server = self.cloud.compute.servers.get(port["device_id"]) if port["device_id"] else None
        if server is not None and server["vm_state"] == "active" and port["admin_state_up"]:
            return "ACTIVE"
        return "DOWN"

    def floatingip_status(self, floatingip: dict[str, Any]) -> str:
        """ACTIVE while associated, as the L3 agent reports it (neutron/api/rpc/handlers/
        l3_rpc.py L3RpcCallback.update_floatingip_statuses), else DOWN."""
        return "ACTIVE" if floatingip["port_id"] else "DOWN"

    # --- ports -----------------------------------------------------------------------------

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

    # --- floating IPs -------------------------------------------------------------------

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

    # --- security groups --------------------------------------------------------------

    def create_security_group(
        self, attributes: dict[str, Any], *, default: bool = False
    ) -> dict[str, Any]:
        project_id = self.cloud.identity.project_id
        # neutron/extensions/securitygroup.py _validate_name_not_default
        if attributes["name"] == "default" and not default:
            raise conflict(
                "SecurityGroupDefaultAlreadyExists", "Default security group already exists."
            )
        if not default:
            # Room for the rules the template gives every new group (the two egress rules
            # below), checked before the group is made (neutron/db/quota/driver.py
            # DbQuotaDriver.quota_limit_check, from SecurityGroupDbMixin.create_security_group).
            self.check_quota({"security_group_rule": 2})
        group_id = new_uuid()
        group = {
            **self._standard(project_id),
            "id": group_id,
            "name": attributes["name"],
            "description": attributes.get("description") or "",
            "stateful": attributes.get("stateful", True),
            "shared": False,
        }
        self.security_groups[group_id] = group
        # Neutron's default rules: any egress; the default group also lets its members in
        # (neutron/db/securitygroups_db.py SecurityGroupDbMixin._create_rules_from_template).
        for ethertype in ("IPv4", "IPv6"):
            self._add_rule(group, {"direction": "egress", "ethertype": ethertype})
            if default:
                self._add_rule(
                    group,
                    {"direction": "ingress", "ethertype": ethertype, "remote_group_id": group_id},
                )
        return group

    def update_security_group(
        self, group: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
        """The default group keeps its name (SecurityGroupDbMixin.update_security_group)."""
        if group["name"] == "default" and "name" in changes and changes["name"] != "default":
            raise conflict(
                "SecurityGroupCannotUpdateDefault", "Updating default security group not allowed."
            )
        if changes.get("name") == "default" and group["name"] != "default":
            raise conflict(
                "SecurityGroupDefaultAlreadyExists", "Default security group already exists."
            )
        group.update(changes)
        self._touch(group)
        return group

    def delete_security_group(self, group_id: str) -> None:
        """Not the default group, not a group a port uses; its rules go with it
        (SecurityGroupDbMixin.delete_security_group)."""
        group = self.get_security_group(group_id)
        if group["name"] == "default":
            raise conflict(
                "SecurityGroupCannotRemoveDefault",
                "Insufficient rights for removing default security group.",
            )
        if any(group_id in port["security_groups"] for port in self.ports.values()):
            raise conflict("SecurityGroupInUse", f"Security Group {group_id} in use.")
        for rule_id in [
            key for key, rule in self.rules.items() if rule["security_group_id"] == group_id
        ]:
            del self.rules[rule_id]
        del self.security_groups[group_id]

    def rules_of(self, group_id: str) -> list[dict[str, Any]]:
        return [rule for rule in self.rules.values() if rule["security_group_id"] == group_id]

    def _normalized_protocol(self, protocol: Any) -> str | None:
        """neutron/extensions/securitygroup.py convert_protocol."""
        if protocol in (None, "", "any"):
            return None
        if isinstance(protocol, int) or (isinstance(protocol, str) and protocol.isdigit()):
            number = int(protocol)
            if 0 <= number <= 255:
                return str(number)
        elif isinstance(protocol, str) and protocol.lower() in SUPPORTED_PROTOCOLS:
            return protocol.lower()
        raise bad_request(
            f"Security group rule protocol {protocol} not supported. Only protocol values "
            f"{[None, *SUPPORTED_PROTOCOLS]} and integer representations [0 to 255] are supported.",
            "SecurityGroupRuleInvalidProtocol",
        )

    def _add_rule(self, group: dict[str, Any], attributes: dict[str, Any]) -> dict[str, Any]:
        rule_id = new_uuid()
        rule = {
            **self._standard(group["project_id"]),
            "id": rule_id,
            "security_group_id": group["id"],
            "direction": attributes["direction"],
            "ethertype": attributes.get("ethertype") or "IPv4",
            "protocol": attributes.get("protocol"),
            "port_range_min": attributes.get("port_range_min"),
            "port_range_max": attributes.get("port_range_max"),
            "remote_ip_prefix": attributes.get("remote_ip_prefix"),
            "remote_group_id": attributes.get("remote_group_id"),
            "remote_address_group_id": None,
            "description": attributes.get("description") or "",
            "belongs_to_default_sg": group["name"] == "default",
        }
        self.rules[rule_id] = rule
        self._touch(group)
        return rule

    def create_rule(self, attributes: dict[str, Any]) -> dict[str, Any]:
        """Checked as neutron/db/securitygroups_db.py does: the ethertype
        (neutron/extensions/securitygroup.py convert_ethertype_to_case_insensitive), the
        ports (SecurityGroupDbMixin._validate_port_range), one remote only
        (SecurityGroupDbMixin._validate_multiple_remote_entites), the network against the
        ethertype (SecurityGroupDbMixin._validate_ip_prefix), no duplicate
        (SecurityGroupDbMixin._check_for_duplicate_rules)."""
        group = self.get_security_group(attributes["security_group_id"])
        direction = attributes["direction"]
        if direction not in ("ingress", "egress"):
            raise bad_request(
                f"Invalid input for direction. Reason: {direction} is not in valid_values "
                "['ingress', 'egress']."
            )
        ethertype = attributes.get("ethertype") or "IPv4"
        matched = [
            each
            for each in ("IPv4", "IPv6")
            if isinstance(ethertype, str) and each.lower() == ethertype.lower()
        ]
        if not matched:
            raise bad_request(
                f"Security group rule for ethertype '{ethertype}' not supported. Allowed values "
                "are ['IPv4', 'IPv6'].",
                "SecurityGroupRuleInvalidEtherType",
            )
        ethertype = matched[0]
        protocol = self._normalized_protocol(attributes.get("protocol"))
        ports = []
        for key in ("port_range_min", "port_range_max"):
            value = attributes.get(key)
            if value is not None:
                if (
                    isinstance(value, bool)
                    or not str(value).isdigit()
                    or not 0 <= int(value) <= 65535
                ):
                    raise bad_request(
                        f"Invalid value for port {value}", "SecurityGroupInvalidPortValue"
                    )
                value = int(value)
            ports.append(value)
        low, high = ports
        if (low is not None or high is not None) and protocol is None:
            raise bad_request(
                "Must also specify protocol if port range is given.",
                "SecurityGroupProtocolRequiredWithPorts",
            )
        if protocol in PROTOCOLS_WITH_PORTS:
            if low is not None and high is not None and low > high:
                raise bad_request(
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                    "SecurityGroupInvalidPortRange",
                )
            if low is not None and high is None:
                high = low
        elif protocol not in ("icmp", "ipv6-icmp", "icmpv6", "1", "58") and (
            low is not None or high is not None
        ):
            raise bad_request(
                f"Ports cannot be specified for protocol {protocol}. Ports are only supported "
                "for ['tcp', 'udp', 'dccp', 'sctp', 'udplite'].",
                "SecurityGroupInvalidProtocolForPort",
            )
        prefix = attributes.get("remote_ip_prefix")
        remote_group_id = attributes.get("remote_group_id")
        if prefix and remote_group_id:
            raise bad_request(
                "Only one of remote_ip_prefix or remote_group_id or remote_address_group_id "
                "may be provided.",
                "SecurityGroupMultipleRemoteEntites",
            )
        if prefix:
            try:
                network = ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                raise bad_request(f"'{prefix}' is not a valid IP subnet.", "InvalidCIDR") from None
            if (network.version == 4) != (ethertype == "IPv4"):
                raise bad_request(
                    f"Conflicting value ethertype {ethertype} for CIDR {prefix}",
                    "SecurityGroupRuleParameterConflict",
                )
            prefix = str(network)
        if remote_group_id:
            self.get_security_group(remote_group_id)
        candidate = {
            "direction": direction,
            "ethertype": ethertype,
            "protocol": protocol,
            "port_range_min": low,
            "port_range_max": high,
            "remote_ip_prefix": prefix,
            "remote_group_id": remote_group_id,
            "description": attributes.get("description") or "",
        }
        for rule in self.rules_of(group["id"]):
            if all(rule[key] == candidate[key] for key in candidate if key != "description"):
                raise conflict(
                    "SecurityGroupRuleExists",
                    f"Security group rule already exists. Rule id is {rule['id']}.",
                )
        return self._add_rule(group, candidate)

    def delete_rule(self, rule_id: str) -> None:
        rule = self.get_rule(rule_id)
        del self.rules[rule_id]
        group = self.security_groups.get(rule["security_group_id"])
        if group is not None:
            self._touch(group)

    # --- tags ----------------------------------------------------------------------------

    # neutron/extensions/tagging.py: MAX_TAG_LEN (255 since Xena; 60 before) and
    # MAX_TAGS_COUNT.
    MAX_TAG_LENGTH = 255
    MAX_TAGS = 50

    def tagged(self, collection: str, resource_id: str) -> dict[str, Any]:
        """The port, floating IP or security group whose tags a /tags route names."""
        getters = {
            "ports": self.get_port,
            "floatingips": self.get_floatingip,
            "security-groups": self.get_security_group,
        }
        return getters[collection](resource_id)

    def replace_tags(self, record: dict[str, Any], body: Any) -> list[str]:
        """PUT /v2.0/{resources}/{id}/tags: neutron/extensions/tagging.py,
        TaggingController.update_all (validate_tags, validate_tags_limit), then
        neutron/services/tag/tag_plugin.py, TagPlugin.update_tags, which replaces the whole
        set and answers with the request's body; the revision plugin bumps the revision."""
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list):
            raise invalid_input("Invalid tags body")
        for tag in tags:
            if not isinstance(tag, str):
                raise invalid_input(f"'{tag}' is not a valid string")
            if len(tag) > self.MAX_TAG_LENGTH:
                raise invalid_input(f"'{tag}' exceeds maximum length of {self.MAX_TAG_LENGTH}")
        if len(set(tags)) != len(tags):
            raise invalid_input(f"Duplicate items in the list: '{', '.join(tags)}'")
        if len(tags) > self.MAX_TAGS:
            raise bad_request(
                f"The number of tags exceed the per-resource limit of {self.MAX_TAGS}",
                "BadRequest",
            )
        record["tags"] = list(tags)
        self._touch(record)
        return list(tags)

    # --- what a floating IP reaches ----------------------------------------------------

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
