"""Neutron's security groups and rules: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

import ipaddress
from typing import Any

from tests.twin.services.network.models.common import (
    PROTOCOLS_WITH_PORTS,
    SUPPORTED_PROTOCOLS,
    bad_request,
    conflict,
)
from tests.twin.services.state import new_uuid


class SecurityGroupBackend:
    """Security groups and their rules (neutron/db/securitygroups_db.py)."""

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
