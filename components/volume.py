"""The block volume that holds every experiment, model and notebook, and outlives every server."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_openstack as openstack


@dataclass
class PersistentVolumeArgs:
    volume_name: str
    """Cinder name of the volume, block-persist-<netid>."""
    size_gib: int
    """Size in GiB."""
    volume_type: str | None = None
    """Cinder volume type, when the site needs one."""


class PersistentVolume(pulumi.ComponentResource):
    """A Cinder volume that no deployment can delete or replace."""

    volume_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: PersistentVolumeArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("chi-persist:index:PersistentVolume", name, None, opts)
        volume = openstack.blockstorage.Volume(
            f"{name}-volume",
            name=args.volume_name,
            size=args.size_gib,
            volume_type=args.volume_type,
            description="chi-persist data volume: PostgreSQL, MinIO and notebooks. Protected.",
            # The data outlives servers and deployments: any plan that would delete or
            # replace this volume (a destroy, a changed size or type) stops with an error.
            opts=pulumi.ResourceOptions(parent=self, protect=True),
        )
        self.volume_id = volume.id
        self.register_outputs({"volume_id": self.volume_id})
