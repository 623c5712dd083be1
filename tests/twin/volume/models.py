"""Cinder's volumes: sparse raw files DIR/volumes/<id>.img, and the rules of their status.

Status moves as Cinder's does (cinder/volume/api.py): creating -> available;
available -> attaching -> in-use when Nova attaches it; in-use -> detaching ->
available on detach (back to in-use if the guest does not let go); extending and
back; deleting -> gone. Messages are Cinder's own, with the statuses it names.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.twin.core import VolumeError
from tests.twin.state import new_uuid, stamp

if TYPE_CHECKING:
    from tests.twin.cloud import Cloud

GIB = 1024**3
DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
DEFAULT_TYPE = "__DEFAULT__"
AVAILABILITY_ZONE = "nova"
COPY_BLOCK = 1024 * 1024


def not_found(volume_id: str) -> VolumeError:
    return VolumeError(404, f"Volume {volume_id} could not be found.")


def invalid_volume(reason: str) -> VolumeError:
    return VolumeError(400, f"Invalid volume: {reason}")


def sparse_copy(source: Path, target: Path) -> int:
    """Copy `source` into a new file `target`, leaving all-zero blocks as holes; its size."""
    size = 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while block := reader.read(COPY_BLOCK):
            if block.count(0) == len(block):
                writer.seek(len(block), os.SEEK_CUR)
            else:
                writer.write(block)
            size += len(block)
        writer.truncate(size)
    return size


class VolumeBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    @property
    def volumes(self) -> dict[str, Any]:
        return self.state.collection("volumes")

    @property
    def types(self) -> dict[str, Any]:
        return self.state.collection("volume_types")

    @property
    def directory(self) -> Path:
        return self.state.directory / "volumes"

    def disk(self, volume_id: str) -> Path:
        return self.directory / f"{volume_id}.img"

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        type_id = new_uuid()
        self.types[type_id] = {
            "id": type_id,
            "name": DEFAULT_TYPE,
            "description": "Default Volume Type",
            "is_public": True,
            "extra_specs": {},
            "qos_specs_id": None,
        }

    def recover(self) -> None:
        """A twin stopped mid-transition: finish or undo what it was doing, as Cinder's cleanup."""
        for partial in self.directory.glob(".premade-*.img") if self.directory.exists() else ():
            partial.unlink()
        for volume in list(self.volumes.values()):
            status = volume["status"]
            if status == "creating":
                self._make_disk(volume)
                self._set(volume, "available")
            elif status == "deleting":
                self._remove(volume)
            elif status == "extending":
                self._grow_disk(volume["id"], volume["extend_to"])
                volume["size"] = volume.pop("extend_to")
                self._set(volume, volume.pop("previous_status"))

    # --- lookups -------------------------------------------------------------------------

    def get(self, volume_id: str) -> dict[str, Any]:
        volume = self.volumes.get(volume_id)
        if volume is None:
            raise not_found(volume_id)
        return volume

    def find_type(self, name_or_id: str) -> dict[str, Any]:
        for volume_type in self.types.values():
            if name_or_id in (volume_type["id"], volume_type["name"]):
                return volume_type
        raise VolumeError(404, f"Volume type with name {name_or_id} could not be found.")

    def _set(self, volume: dict[str, Any], status: str) -> None:
        volume["status"] = status
        volume["updated_at"] = stamp()

    # --- disks ---------------------------------------------------------------------------

    def _make_disk(self, volume: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        disk = self.disk(volume["id"])
        if not disk.exists():
            with open(disk, "wb") as handle:
                handle.truncate(volume["size"] * GIB)

    def _grow_disk(self, volume_id: str, size_gib: int) -> None:
        disk = self.disk(volume_id)
        if disk.stat().st_size < size_gib * GIB:
            with open(disk, "r+b") as handle:
                handle.truncate(size_gib * GIB)

    def _remove(self, volume: dict[str, Any]) -> None:
        self.disk(volume["id"]).unlink(missing_ok=True)
        self.volumes.pop(volume["id"], None)

    # --- requests ------------------------------------------------------------------------

    def _record(self, attributes: dict[str, Any], status: str) -> dict[str, Any]:
        volume_id = new_uuid()
        moment = stamp()
        volume_type = self.find_type(attributes.get("volume_type") or DEFAULT_TYPE)
        volume = {
            "id": volume_id,
            "name": attributes.get("name"),
            "description": attributes.get("description"),
            "size": int(attributes["size"]),
            "status": status,
            "attach_status": "detached",
            "volume_type": volume_type["name"],
            "availability_zone": attributes.get("availability_zone") or AVAILABILITY_ZONE,
            "metadata": dict(attributes.get("metadata") or {}),
            "attachments": [],
            "created_at": moment,
            "updated_at": moment,
            "user_id": self.cloud.identity.user_id,
            "project_id": self.cloud.identity.project_id,
            "bootable": "false",
            "encrypted": False,
            "multiattach": False,
            "group_id": None,
        }
        self.volumes[volume_id] = volume
        return volume

    def create(self, attributes: dict[str, Any]) -> dict[str, Any]:
        volume = self._record(attributes, "creating")
        delay = self.cloud.config["volume_create_seconds"]

        def make() -> None:
            time.sleep(delay)
            with self.state.lock:
                if volume["id"] in self.volumes and volume["status"] == "creating":
                    self._make_disk(volume)
                    self._set(volume, "available")
                    self.state.save()

        self.cloud.jobs.submit(f"volume-{volume['id']}", make)
        return volume

    def premade_disk(self, image: Path, size: int | None) -> tuple[Path, int]:
        """A new sparse file holding `image` (a raw disk image), `size` GiB or just big enough:
        (its path, its size in GiB). Slow for a big image: call it outside the state's lock."""
        image_size = image.stat().st_size
        size = size or max(1, math.ceil(image_size / GIB))
        if size * GIB < image_size:
            raise ValueError(
                f"size {size} GiB is smaller than the image {image} ({image_size} bytes)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        disk = self.directory / f".premade-{new_uuid()}.img"
        sparse_copy(image, disk)
        with open(disk, "r+b") as handle:
            handle.truncate(size * GIB)
        return disk, size

    def premake(self, attributes: dict[str, Any], disk: Path, size: int) -> dict[str, Any]:
        """A volume that already exists (available), whose file is `disk` from premade_disk."""
        volume = self._record({**attributes, "size": size}, "available")
        disk.replace(self.disk(volume["id"]))
        return volume

    def update(self, volume: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        for key in ("name", "description"):
            if key in changes:
                volume[key] = changes[key]
        if "metadata" in changes:
            volume["metadata"] = dict(changes["metadata"] or {})
        volume["updated_at"] = stamp()
        return volume

    def delete(self, volume: dict[str, Any]) -> None:
        if (
            volume["status"] not in DELETABLE
            or volume["attachments"]
            or volume["attach_status"] != "detached"
        ):
            raise invalid_volume(
                "Volume status must be " + " or ".join(DELETABLE) + " and must not be migrating, "
                "attached, belong to a group, have snapshots, awaiting a transfer, or be "
                "disassociated from snapshots after volume transfer."
            )
        self._set(volume, "deleting")
        delay = self.cloud.config["volume_delete_seconds"]

        def remove() -> None:
            time.sleep(delay)
            with self.state.lock:
                self._remove(volume)
                self.state.save()

        self.cloud.jobs.submit(f"volume-{volume['id']}", remove)

    def extend(
        self, volume: dict[str, Any], new_size: int, online_allowed_by_version: bool
    ) -> None:
        """os-extend (cinder/api/contrib/volume_actions.py, cinder/volume/api.py _extend)."""
        attached = online_allowed_by_version and volume["status"] == "in-use"
        if attached:
            mode = self.cloud.config["online_extend"]
            if mode == "forbidden":
                raise VolumeError(
                    403,
                    "Policy doesn't allow volume_extension:volume_actions:extend_attached_volume "
                    "to be performed.",
                )
        if new_size <= volume["size"]:
            raise VolumeError(
                400,
                "Invalid input received: New size for extend must be greater than current size. "
                f"(current: {volume['size']}, extended: {new_size}).",
            )
        expected = "in-use" if attached else "available"
        if volume["status"] != expected:
            raise invalid_volume(
                f"Volume {volume['id']} status must be '{{'status': '{expected}'}}' to extend, "
                f"currently {volume['status']}."
            )
        volume["previous_status"] = volume["status"]
        volume["extend_to"] = new_size
        self._set(volume, "extending")
        server_id = volume["attachments"][0]["server_id"] if attached else None
        unsupported = attached and self.cloud.config["online_extend"] == "unsupported"
        cloud = self.cloud

        def grow() -> None:
            failure = None
            if unsupported:
                failure = "the volume backend does not support extending an attached volume"
            elif server_id is not None:
                failure = cloud.call_driver("resize_disk", server_id, volume["id"], new_size * GIB)
            with self.state.lock:
                if failure is None:
                    self._grow_disk(volume["id"], new_size)
                    volume["size"] = new_size
                    volume.pop("extend_to", None)
                    self._set(volume, volume.pop("previous_status"))
                else:
                    volume.pop("extend_to", None)
                    volume.pop("previous_status", None)
                    self._set(volume, "error_extending")
                    cloud.record(
                        "volume",
                        volume_id=volume["id"],
                        action="extend",
                        outcome="error",
                        detail=failure,
                    )
                self.state.save()

        self.cloud.jobs.submit(server_id or f"volume-{volume['id']}", grow)

    # --- what Nova asks of Cinder while it attaches and detaches ---------------------

    def reserve(self, volume: dict[str, Any]) -> None:
        if volume["status"] != "available":
            raise invalid_volume(
                f"Volume status must be available to reserve, but the status is {volume['status']}."
            )
        volume["attach_status"] = "attaching"
        self._set(volume, "attaching")

    def attached(self, volume: dict[str, Any], server_id: str, device: str) -> None:
        volume["attach_status"] = "attached"
        volume["attachments"] = [
            {
                "server_id": server_id,
                "attachment_id": new_uuid(),
                "attached_at": stamp(),
                "host_name": None,
                "volume_id": volume["id"],
                "device": device,
                "id": volume["id"],
            }
        ]
        self._set(volume, "in-use")

    def unreserve(self, volume: dict[str, Any]) -> None:
        volume["attach_status"] = "detached"
        volume["attachments"] = []
        self._set(volume, "available")

    def begin_detaching(self, volume: dict[str, Any]) -> None:
        if volume["status"] != "in-use" or volume["attach_status"] != "attached":
            raise invalid_volume(
                "Unable to detach volume. Volume status must be 'in-use' and attach_status must "
                "be 'attached' to detach."
            )
        volume["attach_status"] = "detaching"
        self._set(volume, "detaching")

    def roll_detaching(self, volume: dict[str, Any]) -> None:
        volume["attach_status"] = "attached"
        self._set(volume, "in-use")

    def detached(self, volume: dict[str, Any]) -> None:
        self.unreserve(volume)
