"""The components of a student's persistent ML node, re-exported for __main__.py."""

from components.access import PLATFORM_PORTS, AccessRules, AccessRulesArgs
from components.lease import Lease, LeaseArgs
from components.node import Node, NodeArgs
from components.provisioning import Provisioning, ProvisioningArgs
from components.volume import PersistentVolume, PersistentVolumeArgs

__all__ = [
    "PLATFORM_PORTS",
    "AccessRules",
    "AccessRulesArgs",
    "Lease",
    "LeaseArgs",
    "Node",
    "NodeArgs",
    "PersistentVolume",
    "PersistentVolumeArgs",
    "Provisioning",
    "ProvisioningArgs",
]
