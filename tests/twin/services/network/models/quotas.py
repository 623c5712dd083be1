"""Neutron's quotas: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

from tests.twin.services.network.models.common import CONFIGURED_QUOTAS, FIXED_QUOTAS, conflict


class QuotaBackend:
    """What the project uses of each quota, and the 409 OverQuota over one
    (neutron/db/quota/driver_nolock.py)."""

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
