"""Glance v2's images as KVM@TACC lists them: the Chameleon-supported Ubuntu images.

Only CC-Ubuntu24.04 has a guest image the machine drivers boot; a server from
another image goes to ERROR with the driver's reason, as a broken image would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.twin.services.state import new_uuid, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

IMAGES = (
    # name, size in bytes, min_disk GiB, custom properties
    ("CC-Ubuntu24.04", 4_712_300_544, 0, {"os_distro": "ubuntu", "os_version": "24.04"}),
    ("CC-Ubuntu22.04", 4_294_967_296, 0, {"os_distro": "ubuntu", "os_version": "22.04"}),
    ("CC-Ubuntu24.04-CUDA", 9_663_676_416, 0, {"os_distro": "ubuntu", "os_version": "24.04"}),
)


class ImageBackend:
    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    @property
    def images(self) -> dict[str, Any]:
        return self.state.collection("images")

    def seed(self) -> None:
        created = stamp()
        owner = self.cloud.identity.admin_project_id
        for name, size, min_disk, properties in IMAGES:
            image_id = new_uuid()
            self.images[image_id] = {
                "id": image_id,
                "name": name,
                "status": "active",
                "visibility": "public",
                "protected": False,
                "os_hidden": False,
                "owner": owner,
                "size": size,
                "virtual_size": None,
                "min_ram": 0,
                "min_disk": min_disk,
                "disk_format": "qcow2",
                "container_format": "bare",
                "checksum": image_id.replace("-", "")[:32],
                "os_hash_algo": "sha512",
                "os_hash_value": (image_id.replace("-", "") * 4)[:128],
                "tags": [],
                "created_at": created,
                "updated_at": created,
                "properties": dict(properties),
            }

    def recover(self) -> None:
        pass

    def get(self, image_id: str) -> dict[str, Any] | None:
        return self.images.get(image_id)

    def by_name(self, name: str) -> list[dict[str, Any]]:
        return [image for image in self.images.values() if image["name"] == name]
