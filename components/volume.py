"""The block volume that holds every experiment, model and notebook, and outlives every server.

components/volume_plan.py decides what it is; `PersistentVolume.size_gib` is the size Cinder
reports, checked against the size asked for (components/volume_growth.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_openstack as openstack

from components.volume_growth import GrowthRefused, checked_size

DESCRIPTION = "chi-persist data volume: PostgreSQL, MinIO and notebooks. Protected."
# Properties fixed when a volume is created; an adopted volume keeps its own, which
# the program does not know and must not try to change (a change would mean a replacement).
ADOPTED_VOLUME_IGNORED = ["description", "snapshot_id", "source_vol_id", "backup_id", "image_id"]
# An attached volume is extended online (Cinder microversion 3.42), where the cloud allows it.
ONLINE_RESIZE_REFUSED_FIX = (
    "if the cloud refuses to extend the attached volume, run ./chi-persist recycle --stack {stack} "
    "(it stops the platform cleanly and detaches the volume), then pulumi up again: the "
    "detached volume is extended and the next server grows its filesystem"
)


@dataclass
class PersistentVolumeArgs:
    volume_name: str
    """Cinder name of the volume, block-persist-<netid>."""
    size_gib: int
    """Size in GiB."""
    volume_type: str | None = None
    """Cinder volume type, when the site needs one."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Cinder metadata, including the stack's owner key."""
    import_id: str | None = None
    """The id of an existing volume to manage (import) instead of creating one."""
    adopted: bool = False
    """The volume was made outside this program (the tutorial's): it keeps its description."""
    current_size_gib: int | None = None
    """Its size in the cloud now, when it exists."""
    stack: str = ""
    """The stack's name, for the messages that name commands."""
    notes: tuple[str, ...] = ()
    """What `pulumi up` says about the decision (a volume adopted)."""


class PersistentVolume(pulumi.ComponentResource):
    """A Cinder volume that no deployment can delete or replace, grown in place when asked."""

    volume_id: pulumi.Output[str]
    size_gib: pulumi.Output[int]

    def __init__(
        self, name: str, args: PersistentVolumeArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("chi-persist:index:PersistentVolume", name, None, opts)
        volume = openstack.blockstorage.Volume(
            f"{name}-volume",
            name=args.volume_name,
            size=args.size_gib,
            volume_type=args.volume_type,
            description=None if args.adopted else DESCRIPTION,
            metadata=args.metadata,
            # A larger size extends the volume in place, attached or not, where the cloud
            # supports it (Cinder microversion 3.42); a smaller one was refused before this.
            enable_online_resize=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The data outlives servers and deployments: any plan that would delete or
                # replace this volume stops with an error. (A size change is an in-place
                # extend, which protect does not stop; plan_volume refuses shrinking.)
                protect=True,
                # An existing volume is managed as it is, never created a second time; once
                # the volume is in the stack's state the engine ignores this id.
                import_=args.import_id,
                ignore_changes=ADOPTED_VOLUME_IGNORED if args.adopted else None,
            ),
        )
        if args.current_size_gib is not None and args.size_gib > args.current_size_gib:
            pulumi.log.warn(
                f"the volume {args.volume_name} grows from {args.current_size_gib} GiB to "
                f"{args.size_gib} GiB once Cinder has extended it in place, with all its data: "
                "the size Cinder reports afterwards is checked, and only then does the "
                "server's prepare-volume grow its filesystem; "
                + ONLINE_RESIZE_REFUSED_FIX.format(stack=args.stack),
                resource=volume,
            )
        self.volume_id = volume.id
        # The provider waits for the extend's end and reads the size back, so `size` is the
        # cloud's; short of what was asked, the update did not grow it, and every step that
        # takes the size (the server's filesystem) must not run as though it had.
        self.size_gib = volume.size.apply(lambda got: _size_or_error(args, volume.id, int(got)))
        self.register_outputs({"volume_id": self.volume_id})


def _size_or_error(
    args: PersistentVolumeArgs, volume_id: pulumi.Output[str], got_gib: int
) -> pulumi.Input[int]:
    """The size, when the cloud has it; else the error (only then is the id awaited, so a
    preview of a new volume keeps its size known)."""
    if got_gib >= args.size_gib:
        return got_gib

    def refuse(known_id: str) -> int:
        try:
            return checked_size(args.volume_name, known_id, args.size_gib, got_gib, args.stack)
        except GrowthRefused as refused:
            raise pulumi.RunError(str(refused)) from None

    return volume_id.apply(refuse)
