"""Cinder's volumes: sparse raw files DIR/volumes/<id>.img, and the rules of their status.

Status moves as Cinder's does (cinder/volume/api.py): creating -> available;
available -> attaching -> in-use when Nova attaches it; in-use -> detaching ->
available on detach (back to in-use if the guest does not let go); extending and
back; deleting -> gone. Messages are Cinder's own, with the statuses it names.

An extend goes through Cinder's three parts in order: the API checks it, reserves the
gigabytes and sets `extending` (API._extend); the scheduler looks for a backend with
room, and without one puts the volume back to its old status at its old size with only
a user message (SchedulerManager.extend_volume); the volume manager grows the volume,
sets the new size and `in-use` or `available` (VolumeManager.extend_volume_completion),
and only then sends Nova its volume-extended event, which Nova handles on its own time
(ComputeBackend.volume_extended). User messages are served as Cinder's /messages.
The project's volumes and gigabytes count against its quota (cinder/quota.py,
cinder/quota_utils.py process_reserve_over_quota): 413 with Cinder's message.
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.twin.services.core import VolumeError
from tests.twin.services.state import new_uuid, now, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

GIB = 1024**3
DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
DEFAULT_TYPE = "__DEFAULT__"
AVAILABILITY_ZONE = "nova"
COPY_BLOCK = 1024 * 1024
# cinder/message/message_field.py: the action and the details a user message names, and
# cinder/message/api.py's [DEFAULT] message_ttl (how long a message is kept).
EXTEND_VOLUME = ("007", "extend volume")
NO_BACKEND_AVAILABLE = ("003", "Could not find any available weighted backend.")
DRIVER_FAILED_EXTEND = ("010", "Volume Driver failed to extend volume.")
MESSAGE_TTL_SECONDS = 2592000
# cinder/quota.py: the quotas a project member sees in its quota set, with their defaults;
# volumes and gigabytes come from the twin's settings. Each volume type adds its own
# volumes_<type>, gigabytes_<type> and snapshots_<type>, unlimited (VolumeTypeResource).
FIXED_QUOTAS = {
    "snapshots": 10,
    "backups": 10,
    "backup_gigabytes": 1000,
    "per_volume_gigabytes": -1,
    "groups": 10,
}


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


def over_quota(message: str) -> VolumeError:
    """cinder/exception.py QuotaError: 413, with Retry-After 0 (also in the body)."""
    return QuotaExceeded(413, message)


class QuotaExceeded(VolumeError):
    """Cinder's QuotaError (413, Retry-After 0), rendered by cinder/api/openstack/wsgi.py
    Fault.__call__ with retryAfter in the body."""

    def body(self) -> Any:
        body = super().body()
        body["overLimit"]["retryAfter"] = "0"
        return body

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "0"}


class VolumeBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    @property
    def volumes(self) -> dict[str, Any]:
        return self.state.collection("volumes")

    @property
    def messages(self) -> dict[str, Any]:
        return self.state.collection("volume_messages")

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
                # The twin's own: upstream leaves an interrupted extend to an operator.
                self._extended(volume, volume["extend_to"])

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
        # cinder/volume/flows/api/create_volume.py: the type is checked first
        # (ExtractVolumeRequestTask.execute), then one volume and its size reserved
        # (QuotaReserveTask.execute); the volume manager makes it available
        # (cinder/volume/manager.py VolumeManager.create_volume).
        self.find_type(attributes.get("volume_type") or DEFAULT_TYPE)
        self._check_quota({"volumes": 1, "gigabytes": int(attributes["size"])})
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
        # cinder/volume/api.py API.delete checked the status; deleting until the volume
        # manager has removed it (cinder/volume/manager.py VolumeManager.delete_volume).
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
        """os-extend (cinder/api/contrib/volume_actions.py): the API's part here, in the request
        (cinder/volume/api.py API._extend; an attached volume under its own policy,
        API.extend_attached_volume); the scheduler's and the volume manager's after it."""
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
        # API._extend reserves the increase first: over the quota, the volume keeps its status.
        self._check_quota({"gigabytes": new_size - volume["size"]})
        volume["previous_status"] = volume["status"]
        volume["extend_to"] = new_size
        self._set(volume, "extending")
        request_id = f"req-{new_uuid()}"
        unsupported = attached and self.cloud.config["online_extend"] == "unsupported"
        no_backend = self.cloud.config["extend_no_valid_backend"]

        def scheduled() -> None:
            with self.state.lock:
                if volume["id"] not in self.volumes or volume["status"] != "extending":
                    return
                if no_backend:
                    self._no_valid_backend(volume, request_id)
                elif unsupported:
                    self._extend_failed(volume, request_id)
                else:
                    self._extended(volume, new_size)
                self.state.save()

        self.cloud.jobs.submit(f"volume-{volume['id']}", scheduled)

    def _no_valid_backend(self, volume: dict[str, Any], request_id: str) -> None:
        """cinder/scheduler/manager.py SchedulerManager.extend_volume: no backend passes the
        filters for the new size, so the volume goes back to its previous status at its old
        size, the reservation is rolled back, and the user gets only a message."""
        volume.pop("extend_to", None)
        self._set(volume, volume.pop("previous_status"))
        self.add_message(volume["id"], EXTEND_VOLUME, NO_BACKEND_AVAILABLE, request_id)
        self.cloud.record(
            "volume",
            volume_id=volume["id"],
            action="extend",
            outcome="no valid backend",
            detail="No valid backend was found. (the twin's extend_no_valid_backend)",
        )

    def _extend_failed(self, volume: dict[str, Any], request_id: str) -> None:
        """cinder/volume/manager.py VolumeManager.extend_volume_completion(error=True): the
        driver failed; error_extending and a user message."""
        volume.pop("extend_to", None)
        volume.pop("previous_status", None)
        self._set(volume, "error_extending")
        self.add_message(volume["id"], EXTEND_VOLUME, DRIVER_FAILED_EXTEND, request_id)
        self.cloud.record(
            "volume",
            volume_id=volume["id"],
            action="extend",
            outcome="error",
            detail="the volume backend does not support extending an attached volume",
        )

    def _extended(self, volume: dict[str, Any], new_size: int) -> None:
        """cinder/volume/manager.py VolumeManager.extend_volume: the driver grows the volume;
        VolumeManager.extend_volume_completion sets the new size and in-use (or available) at
        once; then, for an attached volume, Nova gets its volume-extended event
        (cinder/compute/nova.py API.extend_volume), which it handles later, on its own."""
        self._grow_disk(volume["id"], new_size)
        volume["size"] = new_size
        volume.pop("extend_to", None)
        volume.pop("previous_status", None)
        self._set(volume, "in-use" if volume["attachments"] else "available")
        self.cloud.record("volume", volume_id=volume["id"], action="extend", outcome="ok")
        for attachment in volume["attachments"]:
            self.cloud.compute.volume_extended(attachment["server_id"], volume["id"])

    # --- user messages (cinder/message/api.py) --------------------------------------------

    def add_message(
        self,
        volume_id: str,
        action: tuple[str, str],
        detail: tuple[str, str],
        request_id: str,
    ) -> dict[str, Any]:
        """cinder/message/api.py API.create: what the user may read of an asynchronous failure;
        its event id is VOLUME_<resource>_<action>_<detail>, kept for message_ttl."""
        moment = now()
        message = {
            "id": new_uuid(),
            "project_id": self.cloud.identity.project_id,
            "request_id": request_id,
            "resource_type": "VOLUME",
            "resource_uuid": volume_id,
            "action_id": action[0],
            "detail_id": detail[0],
            "message_level": "ERROR",
            "event_id": f"VOLUME_VOLUME_{action[0]}_{detail[0]}",
            "created_at": stamp(moment),
            "expires_at": stamp(moment + timedelta(seconds=MESSAGE_TTL_SECONDS)),
        }
        self.messages[message["id"]] = message
        return message

    # --- quotas (cinder/quota.py, cinder/quota_utils.py) ----------------------------------

    def usage(self) -> dict[str, tuple[int, int]]:
        """(in use, reserved) per quota of the project: every volume it has, in any status
        (cinder/quota.py ReservableResource syncs volumes and gigabytes from the database);
        a pending extend reserves its gigabytes (API._extend's QUOTAS.reserve)."""
        project_id = self.cloud.identity.project_id
        mine = [volume for volume in self.volumes.values() if volume["project_id"] == project_id]
        reserved = sum(each["extend_to"] - each["size"] for each in mine if "extend_to" in each)
        return {
            "volumes": (len(mine), 0),
            "gigabytes": (sum(volume["size"] for volume in mine), reserved),
        }

    def quota_set(self) -> dict[str, dict[str, int]]:
        """cinder/quota.py DbQuotaDriver.get_project_quotas(usages=True): limit, in_use and
        reserved of every quota, the volume types' own ones included."""
        usage = self.usage()
        limits = {
            "volumes": self.cloud.config["quota_volumes"],
            "gigabytes": self.cloud.config["quota_gigabytes"],
            **FIXED_QUOTAS,
        }
        quotas = {}
        for name, limit in limits.items():
            in_use, reserved = usage.get(name, (0, 0))
            quotas[name] = {"limit": limit, "in_use": in_use, "reserved": reserved}
        project_id = self.cloud.identity.project_id
        for volume_type in self.types.values():
            name = volume_type["name"]
            typed = [
                volume
                for volume in self.volumes.values()
                if volume["project_id"] == project_id and volume["volume_type"] == name
            ]
            counts = {
                "volumes": len(typed),
                "gigabytes": sum(volume["size"] for volume in typed),
                "snapshots": 0,
            }
            for part, in_use in counts.items():
                quotas[f"{part}_{name}"] = {"limit": -1, "in_use": in_use, "reserved": 0}
        return quotas

    def _check_quota(self, deltas: dict[str, int]) -> None:
        """cinder/db/api.py quota_reserve, then cinder/quota_utils.py
        process_reserve_over_quota: the first resource over (in sorted order) names the
        error, gigabytes as VolumeSizeExceedsAvailableQuota, volumes as VolumeLimitExceeded."""
        usage = self.usage()
        limits = {
            "volumes": self.cloud.config["quota_volumes"],
            "gigabytes": self.cloud.config["quota_gigabytes"],
        }
        overs = sorted(
            name
            for name, delta in deltas.items()
            if limits[name] >= 0 and delta >= 0 and limits[name] < delta + sum(usage[name])
        )
        for name in overs:
            consumed = sum(usage[name])
            if name == "gigabytes":
                raise over_quota(
                    "Requested volume or snapshot exceeds allowed gigabytes quota. Requested "
                    f"{deltas[name]}G, quota is {limits[name]}G and {consumed}G has been consumed."
                )
            raise over_quota(
                f"Maximum number of volumes allowed ({limits[name]}) exceeded for quota 'volumes'."
            )

    # --- what Nova asks of Cinder while it attaches and detaches ---------------------

    def reserve(self, volume: dict[str, Any]) -> None:
        """cinder/volume/api.py API.reserve_volume."""
        if volume["status"] != "available":
            raise invalid_volume(
                f"Volume status must be available to reserve, but the status is {volume['status']}."
            )
        volume["attach_status"] = "attaching"
        self._set(volume, "attaching")

    def attached(self, volume: dict[str, Any], server_id: str, device: str) -> None:
        """cinder/volume/manager.py VolumeManager.attach_volume: in-use, attached."""
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
        """cinder/volume/api.py API.unreserve_volume."""
        volume["attach_status"] = "detached"
        volume["attachments"] = []
        self._set(volume, "available")

    def begin_detaching(self, volume: dict[str, Any]) -> None:
        """cinder/volume/api.py API.begin_detaching."""
        if volume["status"] != "in-use" or volume["attach_status"] != "attached":
            raise invalid_volume(
                "Unable to detach volume. Volume status must be 'in-use' and attach_status must "
                "be 'attached' to detach."
            )
        volume["attach_status"] = "detaching"
        self._set(volume, "detaching")

    def roll_detaching(self, volume: dict[str, Any]) -> None:
        """cinder/volume/api.py API.roll_detaching."""
        volume["attach_status"] = "attached"
        self._set(volume, "in-use")

    def detached(self, volume: dict[str, Any]) -> None:
        """cinder/volume/manager.py VolumeManager.detach_volume: available, no attachment."""
        self.unreserve(volume)
