"""Nova's quotas: one part of `ComputeBackend` (models/__init__.py)."""

from __future__ import annotations

from typing import Any

from tests.twin.services.compute.models.common import FIXED_QUOTAS
from tests.twin.services.core import ComputeError


class QuotaBackend:
    """The project's instance, core and RAM quotas and what counts against them
    (nova/quota.py, nova/compute/utils.py)."""

    def quotas(self) -> dict[str, dict[str, int]]:
        """nova/quota.py DbQuotaDriver.get_project_quotas(usages=True): limit and in_use of each
        resource. Instances, cores and ram count every server of the project that is not
        deleted yet, whatever its state (nova/quota.py _instances_cores_ram_count); key pairs
        and server group members are per user and shown as 0 (_get_usages); the
        nova-network quotas are kept unlimited for the API's sake."""
        config = self.cloud.config
        project_id = self.cloud.identity.project_id
        mine = [server for server in self.servers.values() if server["project_id"] == project_id]
        used = {
            "instances": len(mine),
            "cores": sum(server["flavor"]["vcpus"] for server in mine),
            "ram": sum(server["flavor"]["ram"] for server in mine),
        }
        limits = {
            "instances": config["quota_instances"],
            "cores": config["quota_cores"],
            "ram": config["quota_ram"],
            **FIXED_QUOTAS,
        }
        return {
            name: {"limit": limit, "in_use": used.get(name, 0)} for name, limit in limits.items()
        }

    def _check_instance_quota(self, flavor: dict[str, Any], count: int = 1) -> None:
        """nova/compute/utils.py check_num_instances_quota: instances, cores and ram checked
        together (Quotas.check_deltas); over any, TooManyInstances names each resource over
        (sorted), what was asked, used and allowed. The API answers it 403
        (nova/api/openstack/compute/servers.py ServersController.create)."""
        quotas = self.quotas()
        deltas = {
            "instances": count,
            "cores": count * flavor["vcpus"],
            "ram": count * flavor["ram"],
        }
        overs = sorted(
            name
            for name, delta in deltas.items()
            if quotas[name]["limit"] >= 0 and quotas[name]["in_use"] + delta > quotas[name]["limit"]
        )
        if not overs:
            return
        # get_over_quota_detail: each column joined with ", ", in the order of the overs.
        names = ", ".join(overs)
        asked = ", ".join(str(deltas[name]) for name in overs)
        used = ", ".join(str(quotas[name]["in_use"]) for name in overs)
        allowed = ", ".join(str(quotas[name]["limit"]) for name in overs)
        raise ComputeError(
            403,
            f"Quota exceeded for {names}: Requested {asked}, but already used {used} of "
            f"{allowed} {names}",
        )
