"""Nova's volume attachments: one part of `ComputeBackend` (models/__init__.py)."""

from __future__ import annotations

import string
import time
from typing import Any

from tests.twin.services.compute.models.common import (
    ATTACHABLE_STATES,
    DEVICE_PATTERN,
    GIB,
    bad_request,
    invalid_state,
    not_found,
)
from tests.twin.services.core import ServiceError


class VolumeAttachmentBackend:
    """A server's volume attachments: attach, detach, and Cinder's volume-extended event."""

    def _check_attach_state(self, server: dict[str, Any], action: str) -> None:
        if server["vm_state"] not in ATTACHABLE_STATES or server["task_state"] is not None:
            raise invalid_state(server, action)

    def attach_volume(
        self, server: dict[str, Any], volume_id: str, device: str | None
    ) -> dict[str, Any]:
        """Cinder reserves the volume (attaching), the guest gets the disk, then in-use; a
        plug that fails gives the volume back (nova/compute/manager.py
        ComputeManager.attach_volume)."""
        self._check_attach_state(server, "attach_volume")
        volumes = self.cloud.volume
        volume = volumes.volumes.get(volume_id)
        if volume is None:
            raise not_found(f"Volume {volume_id} could not be found.")
        if volume_id in server["attachments"]:
            raise bad_request(f"Invalid volume: volume {volume_id} already attached")
        if device is not None and not DEVICE_PATTERN.match(device):
            raise bad_request(f"The supplied device path ({device}) is invalid.")
        try:
            volumes.reserve(volume)
        except ServiceError as error:
            raise bad_request(error.message) from None
        used = {attachment["device"] for attachment in server["attachments"].values()}
        letter = next(
            letter for letter in string.ascii_lowercase[1:] if f"/dev/vd{letter}" not in used
        )
        chosen = f"/dev/vd{letter}"
        server["attachments"][volume_id] = {"device": chosen, "state": "attaching"}
        server_id = server["id"]
        disk = volumes.disk(volume_id)
        cloud = self.cloud

        def attach() -> None:
            failure = cloud.call_driver("attach", server_id, volume_id, disk)
            with self.state.lock:
                attachment = server["attachments"].get(volume_id)
                if server_id not in self.servers or attachment is None:
                    return
                if failure is None:
                    attachment["state"] = "attached"
                    volumes.attached(volume, server_id, chosen)
                else:
                    del server["attachments"][volume_id]
                    volumes.unreserve(volume)
                self.state.save()

        cloud.jobs.submit(server_id, attach)
        return {"id": volume_id, "serverId": server_id, "volumeId": volume_id, "device": chosen}

    def attachment(self, server: dict[str, Any], volume_id: str) -> dict[str, Any]:
        attachment = server["attachments"].get(volume_id)
        if attachment is None:
            raise not_found(f"Instance {server['id']} is not attached to volume {volume_id}")
        return attachment

    def volume_extended(self, server_id: str, volume_id: str) -> None:
        """Cinder's volume-extended event (nova/compute/manager.py ComputeManager.extend_volume),
        handled in the background after Cinder has already set the new size: the guest's disk
        is grown to the volume's size; a failure is only logged (an instance fault and a
        failed instance action), and nobody is told."""
        cloud = self.cloud
        delay = cloud.config["guest_extend_seconds"]
        fails = cloud.config["guest_extend_fails"]

        def extend() -> None:
            time.sleep(delay)
            with self.state.lock:
                server = self.servers.get(server_id)
                volume = cloud.volume.volumes.get(volume_id)
                if server is None or volume is None or volume_id not in server["attachments"]:
                    cloud.record(
                        "compute",
                        server_id=server_id,
                        action="extend_volume",
                        outcome="skipped",
                        detail=f"Extend volume failed, volume {volume_id} is not attached to "
                        "instance.",
                    )
                    return
                size_bytes = volume["size"] * GIB
            if fails:
                failure = "the twin's guest_extend_fails: the hypervisor did not resize the disk"
            else:
                failure = cloud.call_driver("resize_disk", server_id, volume_id, size_bytes)
            cloud.record(
                "compute",
                server_id=server_id,
                action="extend_volume",
                outcome="ok" if failure is None else "error",
                detail=(
                    f"volume {volume_id} grown to {size_bytes} bytes in the guest"
                    if failure is None
                    else f"Extend volume failed, volume_id={volume_id}, reason: {failure}"
                ),
            )

        cloud.jobs.submit(server_id, extend)

    def detach_volume(self, server: dict[str, Any], volume_id: str) -> None:
        """Cinder's begin_detaching, then the guest lets the disk go and the volume is
        available; a guest that holds on leaves it in-use (nova/compute/manager.py
        ComputeManager._detach_volume, roll_detaching on failure)."""
        self._check_attach_state(server, "detach_volume")
        volumes = self.cloud.volume
        volume = volumes.volumes.get(volume_id)
        if volume is None:
            raise not_found(f"Volume {volume_id} could not be found.")
        attachment = self.attachment(server, volume_id)
        try:
            volumes.begin_detaching(volume)
        except ServiceError as error:
            raise bad_request(f"Invalid volume: {error.message}") from None
        attachment["state"] = "detaching"
        server_id = server["id"]
        cloud = self.cloud

        def detach() -> None:
            failure = cloud.call_driver("detach", server_id, volume_id)
            with self.state.lock:
                if server_id not in self.servers:
                    return
                if failure is None:
                    server["attachments"].pop(volume_id, None)
                    volumes.detached(volume)
                else:
                    attachment["state"] = "attached"
                    volumes.roll_detaching(volume)
                self.state.save()

        cloud.jobs.submit(server_id, detach)
