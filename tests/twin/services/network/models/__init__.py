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

Split by resource, as moto splits a large service: `NetworkBackend` is one class made of a
part per resource (networks, quotas, ports, floating_ips, security_groups, tags, exposures);
common holds the names, protocols, quotas and errors they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.twin.services.network.models.common import (
    ANY_PROTOCOL,
    CONFIGURED_QUOTAS,
    EXTERNAL_NETWORK,
    FIXED_QUOTAS,
    PROTOCOLS_WITH_PORTS,
    SUPPORTED_PROTOCOLS,
    TENANT_CIDR,
    TENANT_NETWORK,
    bad_request,
    conflict,
    invalid_input,
    loopback_block,
    new_mac,
    not_found,
)
from tests.twin.services.network.models.exposures import ExposureBackend
from tests.twin.services.network.models.floating_ips import FloatingIpBackend
from tests.twin.services.network.models.networks import NetworkCollections
from tests.twin.services.network.models.ports import PortBackend
from tests.twin.services.network.models.quotas import QuotaBackend
from tests.twin.services.network.models.security_groups import SecurityGroupBackend
from tests.twin.services.network.models.tags import TagBackend

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

__all__ = [
    "ANY_PROTOCOL",
    "CONFIGURED_QUOTAS",
    "EXTERNAL_NETWORK",
    "FIXED_QUOTAS",
    "NetworkBackend",
    "PROTOCOLS_WITH_PORTS",
    "SUPPORTED_PROTOCOLS",
    "TENANT_CIDR",
    "TENANT_NETWORK",
    "bad_request",
    "conflict",
    "invalid_input",
    "loopback_block",
    "new_mac",
    "not_found",
]


class NetworkBackend(
    NetworkCollections,
    QuotaBackend,
    PortBackend,
    FloatingIpBackend,
    SecurityGroupBackend,
    TagBackend,
    ExposureBackend,
):
    """Neutron's model over one state: each resource's part, reached as `cloud.network`."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state
