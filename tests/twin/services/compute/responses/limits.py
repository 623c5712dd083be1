"""The project's limits (nova/api/openstack/compute/limits.py, views/limits.py)."""

from __future__ import annotations

from flask import Response, request

from tests.twin.services.compute.responses.common import microversion, respond
from tests.twin.services.core import ComputeError, Version, twin

# nova/api/openstack/compute/views/limits.py ViewBuilder: the quotas' names in /limits, and the
# used counts shown beside them.
LIMIT_NAMES = {
    "ram": ["maxTotalRAMSize"],
    "instances": ["maxTotalInstances"],
    "cores": ["maxTotalCores"],
    "key_pairs": ["maxTotalKeypairs"],
    "floating_ips": ["maxTotalFloatingIps"],
    "metadata_items": ["maxServerMeta", "maxImageMeta"],
    "injected_files": ["maxPersonality"],
    "injected_file_content_bytes": ["maxPersonalitySize"],
    "security_groups": ["maxSecurityGroups"],
    "security_group_rules": ["maxSecurityGroupRules"],
    "server_groups": ["maxServerGroups"],
    "server_group_members": ["maxServerGroupMembers"],
}
USED_NAMES = {
    "totalRAMUsed": "ram",
    "totalCoresUsed": "cores",
    "totalInstancesUsed": "instances",
    "totalFloatingIpsUsed": "floating_ips",
    "totalSecurityGroupsUsed": "security_groups",
    "totalServerGroupsUsed": "server_groups",
}
# nova/api/openstack/compute/limits.py: what 2.36 and 2.57 leave out.
FILTERED_LIMITS_V236 = ["floating_ips", "security_groups", "security_group_rules"]
FILTERED_LIMITS_V257 = [*FILTERED_LIMITS_V236, "injected_files", "injected_file_content_bytes"]


def limits() -> Response:
    """LimitsController.index: the project's quotas and what it uses; another project's only
    for an admin (os_compute_api:limits:other_project)."""
    version = microversion()
    tenant_id = request.args.get("tenant_id")
    if tenant_id is not None and tenant_id != twin().identity.project_id:
        raise ComputeError(
            403, "Policy doesn't allow os_compute_api:limits:other_project to be performed."
        )
    filtered: list[str] = []
    if version >= Version(2, 57):
        filtered = FILTERED_LIMITS_V257
    elif version >= Version(2, 36):
        filtered = FILTERED_LIMITS_V236
    quotas = twin().compute.quotas()
    absolute: dict[str, int] = {}
    for name, values in quotas.items():
        if name in filtered:
            continue
        for limit_name in LIMIT_NAMES.get(name, []):
            if limit_name == "maxImageMeta" and version >= Version(2, 39):
                continue
            absolute[limit_name] = values["limit"]
    for display_name, name in USED_NAMES.items():
        if name in quotas and name not in filtered:
            absolute[display_name] = quotas[name]["in_use"]
    return respond({"limits": {"rate": [], "absolute": absolute}}, version)
