"""The components of a student's persistent ML node, re-exported for __main__.py.

Imported when first used (PEP 562), so that components.settings, which the command's help and
checks use, needs no Pulumi SDK.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PLATFORM_PORTS": "components.access",
    "AccessRules": "components.access",
    "AccessRulesArgs": "components.access",
    "Lease": "components.lease",
    "LeaseArgs": "components.lease",
    "Node": "components.node",
    "NodeArgs": "components.node",
    "PersistentVolume": "components.volume",
    "PersistentVolumeArgs": "components.volume",
    "Provisioning": "components.provisioning",
    "ProvisioningArgs": "components.provisioning",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'components' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
