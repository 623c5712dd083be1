"""What Neutron's models share: KVM@TACC's network names, the protocols a rule takes, the
quotas, and Neutron's errors."""

from __future__ import annotations

import hashlib
import ipaddress
import random

from tests.twin.services.core import NetworkError

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
