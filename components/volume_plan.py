"""What the volume resource is, decided from the settings, the state and the cloud (`plan_volume`).

Create it on the first `pulumi up`, keep managing the one this stack holds, adopt the one that
carries this stack's key, take over (import) the tutorial's volume named in
`existingVolumeId`, grow it, or refuse with the setting to change; components/survey.py has
asked the cloud, and nothing in the cloud changes before this decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from components.settings import NAMESPACE, OWNER_KEY, Problem, Settings, SettingsError
from components.volume import PersistentVolumeArgs

# The volume's name in the program (components/adoption.py names the others).
VOLUME_NAME = "data-volume"


@dataclass(frozen=True)
class CloudVolume:
    """A volume as the cloud reports it."""

    id: str
    name: str
    size_gib: int
    volume_type: str
    status: str
    metadata: Mapping[str, str]
    attached_to: tuple[str, ...]

    @property
    def owner(self) -> str | None:
        return self.metadata.get(OWNER_KEY)

    def facts(self) -> str:
        attached = f", attached to server {', '.join(self.attached_to)}" if self.attached_to else ""
        return f"(id {self.id}, {self.size_gib} GiB, {self.status}{attached})"

    def described(self) -> str:
        return f"{self.name} {self.facts()}"


class SeveralVolumes:
    """The lookup matched more than one volume."""

    def __repr__(self) -> str:
        return "SEVERAL"


SEVERAL = SeveralVolumes()
VolumeMatch = CloudVolume | SeveralVolumes | None


class VolumeRefused(Exception):
    """What the cloud holds makes every plan unsafe; the message says what, and the way out."""


@dataclass(frozen=True)
class VolumeLookup:
    """What the cloud holds (components/survey.py): the volumes named block-persist-<netid>,
    the stack's own, and the one this stack's state holds."""

    named: VolumeMatch
    owned: VolumeMatch
    held_id: str | None = None
    """The volume this stack's state holds."""
    held: CloudVolume | None = None
    """That volume as the cloud reports it; None when the cloud no longer has it."""


def plan_volume(settings: Settings, stack: str, lookup: VolumeLookup) -> PersistentVolumeArgs:
    """Decide what the volume resource is, from the settings and what the cloud holds.

    Raises SettingsError (key, value seen, rule, fix) for every request that would
    shrink, retype, duplicate, or take over the wrong volume.
    """
    owner = settings.owner
    wanted_id = settings.existing_volume_id
    base = PersistentVolumeArgs(
        volume_name=settings.volume_name,
        size_gib=settings.volume_size,
        volume_type=settings.volume_type,
        metadata={OWNER_KEY: owner},
        stack=stack,
    )
    if lookup.held_id is not None:
        # The state's volume is the stack's, whatever else carries its key: never import
        # another over it (an import-replacement deletes the old one, protected or not).
        if lookup.held is None:
            raise VolumeRefused(_held_volume_gone(settings, stack, lookup.held_id))
        problems = _owned_problems(settings, lookup.held)
        problems += _size_and_type_problems(settings, lookup.held)
        if problems:
            raise SettingsError(problems)
        return _managing(base, lookup.held, adopted=wanted_id is not None)
    if isinstance(lookup.owned, SeveralVolumes):
        raise SettingsError([_several_owned(settings, owner)])
    if lookup.owned is not None:
        volume = lookup.owned
        problems = _owned_problems(settings, volume)
        problems += _size_and_type_problems(settings, volume)
        if problems:
            raise SettingsError(problems)
        managed = _managing(base, volume, adopted=wanted_id is not None)
        managed.notes = (
            f"adopting volume {volume.described()}: it carries this stack's owner key "
            f"({OWNER_KEY}={owner}) and this stack's state does not hold it (a `pulumi up` was "
            "interrupted, or ran from another machine); nothing on it changes",
        )
        return managed
    problems = _unowned_problems(settings, owner, lookup.named)
    if problems:
        raise SettingsError(problems)
    if wanted_id is None:
        return base  # the first deployment: nothing of this name exists yet
    volume = lookup.named
    assert isinstance(volume, CloudVolume)
    problems = _size_and_type_problems(settings, volume)
    if problems:
        raise SettingsError(problems)
    return _managing(base, volume, adopted=True)


def _managing(
    base: PersistentVolumeArgs, volume: CloudVolume, adopted: bool
) -> PersistentVolumeArgs:
    """The args for a volume that exists: its type and metadata (plus the owner key) as they are."""
    base.import_id = volume.id
    base.adopted = adopted
    base.current_size_gib = volume.size_gib
    base.metadata = {**volume.metadata, **base.metadata}
    base.volume_type = base.volume_type or volume.volume_type or None
    return base


def _held_volume_gone(settings: Settings, stack: str, volume_id: str) -> str:
    return (
        f"this stack's data volume {settings.volume_name} (id {volume_id}) no longer exists in "
        "the cloud (deleted in Horizon or with the openstack CLI; Pulumi never deletes it): its "
        "data is gone with it, unless you have a copy. Nothing was created or changed. Fix: to "
        "go on with a new, empty volume, let Pulumi forget the old one: `pulumi state "
        f"unprotect --stack {stack} '<URN>'` and `pulumi state delete --stack {stack} '<URN>'` "
        f"(`pulumi stack --stack {stack} --show-urns` shows the URN of {VOLUME_NAME}), then "
        "`pulumi up`"
    )


def _show_id_command(settings: Settings) -> str:
    return f"openstack volume show {settings.volume_name} -f value -c id"


def _several_owned(settings: Settings, owner: str) -> Problem:
    return Problem(
        "existingVolumeId",
        settings.existing_volume_id,
        f"more than one volume carries this stack's metadata {OWNER_KEY}={owner}, so the "
        "program cannot tell which one holds the data",
        f"list them (openstack volume list --long), keep the data volume, and remove the key "
        f"from the others (openstack volume unset --property {OWNER_KEY} <id>)",
    )


def _owned_problems(settings: Settings, volume: CloudVolume) -> list[Problem]:
    """The stack already manages `volume`: existingVolumeId may only name that one."""
    wanted_id = settings.existing_volume_id
    if wanted_id is None or wanted_id == volume.id:
        return []
    return [
        Problem(
            "existingVolumeId",
            wanted_id,
            f"this stack already manages the volume {volume.described()}; taking over "
            "another one would make Pulumi delete this one (an import that replaces a "
            "resource is not stopped by protect)",
            f"pulumi config rm {NAMESPACE}:existingVolumeId (or set it to {volume.id})",
        )
    ]


def _unowned_problems(settings: Settings, owner: str, named: VolumeMatch) -> list[Problem]:
    """No volume is the stack's yet: create one, or take over the one existingVolumeId names."""
    wanted_id = settings.existing_volume_id
    name = settings.volume_name
    set_id = f"pulumi config set {NAMESPACE}:existingVolumeId"
    if isinstance(named, SeveralVolumes):
        return [
            Problem(
                "existingVolumeId",
                wanted_id,
                f"several volumes are named {name}; the program will neither pick one nor add "
                "another",
                f"keep the one that holds your data and rename the others "
                f"(openstack volume list --name {name}; openstack volume set --name "
                f"{name}-old <id>), then {set_id} <the id of yours>",
            )
        ]
    if named is None:
        if wanted_id is None:
            return []
        return [
            Problem(
                "existingVolumeId",
                wanted_id,
                f"no volume is named {name}, so the volume to take over is not this "
                "student's tutorial volume (or its name differs)",
                f"check the id ({_show_id_command(settings)}); if your volume has another name, "
                f"rename it first (openstack volume set --name {name} {wanted_id}); or "
                f"pulumi config rm {NAMESPACE}:existingVolumeId to create a new, empty volume",
            )
        ]
    if named.owner is not None and named.owner != owner:
        return [
            Problem(
                "existingVolumeId",
                wanted_id,
                f"the volume {named.described()} belongs to the chi-persist stack "
                f"{named.owner!r} ({OWNER_KEY}), not to this one ({owner!r})",
                f"run pulumi from that stack (pulumi stack select "
                f"{named.owner.rsplit('/', 1)[-1]}); two stacks must never share a volume",
            )
        ]
    if wanted_id is None:
        return [
            Problem(
                "existingVolumeId",
                None,
                f"a volume named {name} already exists {named.facts()} and this stack did not "
                "make it (most likely the tutorial's, with your data); the program will not "
                "create a second volume of the same name",
                f"to take it over as it is, with its data: {set_id} {named.id}",
            )
        ]
    if named.id != wanted_id:
        return [
            Problem(
                "existingVolumeId",
                wanted_id,
                f"is not the volume named {name}: that one is {named.described()}",
                f"{set_id} {named.id}, if that is the volume that holds your data",
            )
        ]
    if named.attached_to or named.status != "available":
        servers = ", ".join(named.attached_to)
        where = f"attached to server {servers}" if servers else f"in status {named.status!r}"
        return [
            Problem(
                "existingVolumeId",
                wanted_id,
                f"the volume {name} is {where}; it can be taken over only while it is detached "
                "and 'available'",
                "on that server stop what uses it and unmount it (sudo umount /mnt/block), "
                f"detach it (openstack server remove volume {servers or '<server>'} {wanted_id}) "
                "or delete that server, then pulumi up again",
            )
        ]
    return []


def _size_and_type_problems(settings: Settings, volume: CloudVolume) -> list[Problem]:
    problems = []
    if settings.volume_size < volume.size_gib:
        problems.append(
            Problem(
                "volumeSize",
                settings.volume_size,
                f"is smaller than the volume {volume.name}, which is already {volume.size_gib} "
                "GiB: a Cinder volume can grow but never shrink, and the program never replaces "
                "the data volume",
                f"pulumi config set {NAMESPACE}:volumeSize {volume.size_gib} (or more, to grow it)",
            )
        )
    if settings.volume_type is not None and settings.volume_type != volume.volume_type:
        problems.append(
            Problem(
                "volumeType",
                settings.volume_type,
                f"differs from the type of the volume {volume.name}, {volume.volume_type!r}: "
                "changing it would retype (migrate) the data volume, which the program does "
                "not do",
                f"pulumi config set {NAMESPACE}:volumeType {volume.volume_type}"
                if volume.volume_type
                else f"pulumi config rm {NAMESPACE}:volumeType",
            )
        )
    return problems
