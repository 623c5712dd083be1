"""Nova's state and rules: flavors, key pairs, servers and their volume attachments.

A server moves as Nova's does: BUILD until the machine driver reports the guest
running, then ACTIVE; os-stop powers it off (SHUTOFF); a guest found off while
ACTIVE is marked SHUTOFF (Nova's power-state sync); delete ends the guest, gives
back its volumes and unbinds its ports, and the server is then gone (404).
Attaching reserves the volume in Cinder (attaching), hot-plugs it through the
driver, then marks it in-use; detaching is the reverse, and a guest that does
not let go leaves the volume in-use. Cinder's volume-extended event grows the
guest's disk later, on Nova's own time (a failure is only logged). Servers count
against the project's instance, core and RAM quotas. Messages are Nova's
(nova/exception.py, nova/api/openstack/compute/servers.py, volume_attachments.py).
Each behaviour names the upstream function it follows; compute/behaviour.toml lists them.

Split by resource, as moto splits a large service: `ComputeBackend` is one class made of a
part per resource (lookups, keypairs, quotas, servers, console, volume_attachments); common
holds the flavors, states, limits, errors and helpers they share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.twin.services.compute.models.common import (
    ATTACHABLE_STATES,
    CONSOLE_BYTES,
    DEVICE_PATTERN,
    FIXED_QUOTAS,
    FLAVORS,
    GIB,
    POWER_NOSTATE,
    POWER_RUNNING,
    POWER_SHUTDOWN,
    STATUS_OF,
    bad_request,
    fingerprint,
    generated_key_pair,
    hostname_of,
    invalid_state,
    not_found,
)
from tests.twin.services.compute.models.console import ConsoleBackend
from tests.twin.services.compute.models.keypairs import KeypairBackend
from tests.twin.services.compute.models.lookups import ComputeCollections
from tests.twin.services.compute.models.quotas import QuotaBackend
from tests.twin.services.compute.models.servers import ServerBackend
from tests.twin.services.compute.models.volume_attachments import VolumeAttachmentBackend

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

__all__ = [
    "ATTACHABLE_STATES",
    "CONSOLE_BYTES",
    "ComputeBackend",
    "DEVICE_PATTERN",
    "FIXED_QUOTAS",
    "FLAVORS",
    "GIB",
    "POWER_NOSTATE",
    "POWER_RUNNING",
    "POWER_SHUTDOWN",
    "STATUS_OF",
    "bad_request",
    "fingerprint",
    "generated_key_pair",
    "hostname_of",
    "invalid_state",
    "not_found",
]


class ComputeBackend(
    ComputeCollections,
    KeypairBackend,
    QuotaBackend,
    ServerBackend,
    ConsoleBackend,
    VolumeAttachmentBackend,
):
    """Nova's model over one state: each resource's part, reached as `cloud.compute`."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state
