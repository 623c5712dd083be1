"""Nova's collections, flavors and lookups: one part of `ComputeBackend` (models/__init__.py)."""

from __future__ import annotations

from typing import Any

from tests.twin.services.compute.models.common import FLAVORS, not_found


class ComputeCollections:
    """The project's collections in the state, the flavors (seeded once), recovery after a
    restart, and the lookups by id that answer Nova's 404s."""

    @property
    def flavors(self) -> dict[str, Any]:
        return self.state.collection("flavors")

    @property
    def keypairs(self) -> dict[str, Any]:
        return self.state.collection("keypairs")

    @property
    def servers(self) -> dict[str, Any]:
        return self.state.collection("servers")

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        for flavor_id, name, vcpus, ram, disk in FLAVORS:
            self.flavors[flavor_id] = {
                "id": flavor_id,
                "name": name,
                "vcpus": vcpus,
                "ram": ram,
                "disk": disk,
                "swap": 0,
                "ephemeral": 0,
                "rxtx_factor": 1.0,
                "is_public": True,
                "description": None,
                "extra_specs": {},
            }
        self.state.data["keypair_sequence"] = 0

    def recover(self) -> None:
        """The twin restarted: what nova-compute does with each instance at its start
        (nova/compute/manager.py ComputeManager._init_instance): a delete under way is
        finished, a server that was building goes to ERROR; a power action cut short is
        cleared (Nova retries a stop; the guest here was stopped with the twin)."""
        for server in list(self.servers.values()):
            if server["task_state"] == "deleting":
                self._schedule_delete(server, reason="delete")
                continue
            if server["vm_state"] == "building":
                self._error(server, "The twin stopped while the server was building.")
            elif server["task_state"] in ("powering-off", "powering-on"):
                server["task_state"] = None
            for volume_id, attachment in list(server["attachments"].items()):
                if attachment["state"] in ("attaching", "detaching"):
                    self._schedule_release(server, volume_id)

    def _schedule_release(self, server: dict[str, Any], volume_id: str) -> None:
        """Undo an attach or finish a detach that a stopped twin left half done."""
        server_id = server["id"]
        cloud = self.cloud

        def release() -> None:
            cloud.call_driver("detach", server_id, volume_id)
            with self.state.lock:
                server["attachments"].pop(volume_id, None)
                volume = cloud.volume.volumes.get(volume_id)
                if volume is not None:
                    cloud.volume.detached(volume)
                self.state.save()

        cloud.jobs.submit(server_id, release)

    # --- lookups -------------------------------------------------------------------------

    def get_server(self, server_id: str) -> dict[str, Any]:
        server = self.servers.get(server_id)
        if server is None:
            raise not_found(f"Instance {server_id} could not be found.")
        return server

    def get_flavor(self, flavor_id: str) -> dict[str, Any]:
        flavor = self.flavors.get(flavor_id)
        if flavor is None:
            raise not_found(f"Flavor {flavor_id} could not be found.")
        return flavor

    def get_keypair(self, name: str) -> dict[str, Any]:
        keypair = self.keypairs.get(name)
        if keypair is None:
            raise not_found(f"Keypair {name} not found for user {self.cloud.identity.user_id}")
        return keypair

    def exposable(self, server: dict[str, Any]) -> bool:
        """Whether the driver has a machine for the server that a floating IP may reach."""
        return (
            server["booted"]
            and server["vm_state"] in ("active", "stopped")
            and server["task_state"] != "deleting"
        )
