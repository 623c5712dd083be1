"""The block volume that holds every experiment, model and notebook, and outlives every server.

Before any resource is registered, the program asks the state and the cloud what they hold
(components/survey.py) and decides from it (`plan_volume`): create the volume on the first
`pulumi up`, keep managing the one this stack holds, adopt the one that carries this stack's
key, take over (import) the tutorial's volume named in `existingVolumeId`, grow it, or refuse
with the setting to change. Nothing in the cloud changes before that decision.

Growth is checked, not assumed: Cinder accepts an extend and may then leave the volume
at its old size (no backend has room), and the provider's update still succeeds with the
size it reads back. `PersistentVolume.size_gib` is that size, checked against the size
asked for (`growth_problem`): short of it, `pulumi up` fails with Cinder's user message
and the way out, and nothing downstream (the server's filesystem) is grown.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_openstack as openstack

from components.settings import NAMESPACE, OWNER_KEY, Problem, Settings, SettingsError

DESCRIPTION = "chi-persist data volume: PostgreSQL, MinIO and notebooks. Protected."
# The volume's name in the program (components/adoption.py names the others).
VOLUME_NAME = "data-volume"
# Properties fixed when a volume is created; an adopted volume keeps its own, which
# the program does not know and must not try to change (a change would mean a replacement).
ADOPTED_VOLUME_IGNORED = ["description", "snapshot_id", "source_vol_id", "backup_id", "image_id"]
# An attached volume is extended online (Cinder microversion 3.42), where the cloud allows it.
ONLINE_RESIZE_REFUSED_FIX = (
    "if the cloud refuses to extend the attached volume, run scripts/recycle --stack {stack} "
    "(it stops the platform cleanly and detaches the volume), then pulumi up again: the "
    "detached volume is extended and the next server grows its filesystem"
)
# Cinder's user messages are read from microversion 3.3, filtered by volume from 3.5
# (cinder/api/microversions.py MESSAGES, MESSAGES_PAGINATION); an extend's carry action 007
# (cinder/message/message_field.py Action.EXTEND_VOLUME) in their event id.
MESSAGES_FILTERED = "3.5"
MESSAGES_UNFILTERED = "3.3"
EXTEND_EVENT = re.compile(r"^VOLUME_VOLUME_007_\d+$")
# Messages older than this before the program started are of an earlier attempt.
MESSAGE_MARGIN = datetime.timedelta(minutes=10)
# When this run of the program started: Cinder's message of this run's extend is newer.
PROGRAM_STARTED = datetime.datetime.now(datetime.timezone.utc)


class GrowthRefused(Exception):
    """The volume is smaller than the size asked for after the update; the message has the fix."""


@dataclass(frozen=True)
class CinderMessage:
    """A Cinder user message: what the site tells the user about an asynchronous failure."""

    text: str
    created_at: str
    request_id: str = ""


def growth_problem(
    volume_name: str,
    asked_gib: int,
    got_gib: int,
    stack: str,
    message: CinderMessage | None,
    message_note: str = "",
) -> str | None:
    """None when the volume has at least the size asked for; else what happened and the fix."""
    if got_gib >= asked_gib:
        return None
    if message is not None:
        said = (
            f"KVM@TACC's Cinder says: {message.text!r} (user message of {message.created_at} "
            f"UTC{', request ' + message.request_id if message.request_id else ''})."
        )
    else:
        said = f"Cinder left no user message about it{message_note}."
    keep = f"pulumi config set {NAMESPACE}:volumeSize {got_gib} keeps the size it has"
    if asked_gib - got_gib >= 2:
        less = (
            f"ask for less (pulumi config set {NAMESPACE}:volumeSize <from {got_gib + 1} to "
            f"{asked_gib - 1}>), or {keep}"
        )
    else:
        less = keep
    return (
        f"the volume {volume_name} is still {got_gib} GiB, not the {asked_gib} GiB asked for "
        f"({NAMESPACE}:volumeSize): Cinder accepted the extend, then left the volume at its "
        f"old size. {said} Nothing on the server was grown, and the stack keeps {got_gib} "
        "GiB, so the next pulumi up asks again. Fix: most often no storage backend had room "
        f"for the new size: run pulumi up again later; or {less}; or take the path of README "
        f"'Grow the volume' for a cloud that will not extend an attached volume "
        f"(scripts/recycle --stack {stack}, then pulumi up: the detached volume is extended "
        "and the next server grows its filesystem). If it persists, ask the site's help "
        "desk, with the message above."
    )


def latest_extend_message(
    messages: list[dict[str, Any]], volume_id: str, since: datetime.datetime
) -> CinderMessage | None:
    """The newest user message of an extend of this volume created after `since`."""
    found = []
    for message in messages:
        if message.get("resource_uuid") != volume_id:
            continue
        if not EXTEND_EVENT.match(str(message.get("event_id", ""))):
            continue
        created = _cinder_time(str(message.get("created_at", "")))
        if created is None or created < since:
            continue
        found.append((created, message))
    if not found:
        return None
    _, newest = max(found, key=lambda pair: pair[0])
    return CinderMessage(
        text=str(newest.get("user_message", "")),
        created_at=str(newest.get("created_at", ""))[:19].replace("T", " "),
        request_id=str(newest.get("request_id") or ""),
    )


def _cinder_time(text: str) -> datetime.datetime | None:
    """Cinder's times: 2026-11-20T10:00:00.000000, UTC without a zone."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", ""))
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc)


def read_extend_message(volume_id: str) -> tuple[CinderMessage | None, str]:
    """(Cinder's latest message about an extend of the volume, or None; why none was read)."""
    from components.openstack_api import CloudUnavailable, OpenStack

    since = PROGRAM_STARTED - MESSAGE_MARGIN
    try:
        cloud = OpenStack()
        answer = cloud.call(
            "block-storage",
            "GET",
            "messages",
            params={"resource_uuid": volume_id},
            headers={"OpenStack-API-Version": f"volume {MESSAGES_FILTERED}"},
        )
        if answer.status in (404, 406):  # a Cinder older than 3.5: filter here instead
            answer = cloud.call(
                "block-storage",
                "GET",
                "messages",
                headers={"OpenStack-API-Version": f"volume {MESSAGES_UNFILTERED}"},
            )
    except CloudUnavailable as error:
        return None, f" that could be read ({error})"
    if answer.status != 200:
        return (
            None,
            f" that could be read (GET /messages: HTTP {answer.status}: {answer.error_message})",
        )
    messages = answer.body.get("messages")
    if not isinstance(messages, list):
        return None, " that could be read (GET /messages answered no list)"
    return latest_extend_message(messages, volume_id, since), ""


def checked_size(
    volume_name: str,
    volume_id: str,
    asked_gib: int,
    got_gib: int,
    stack: str,
    read_message: Callable[[str], tuple[CinderMessage | None, str]] = read_extend_message,
) -> int:
    """The size the cloud reports, once it is at least the size asked for; else GrowthRefused,
    with Cinder's user message about the extend when the cloud has one."""
    if growth_problem(volume_name, asked_gib, got_gib, stack, None) is None:
        return got_gib
    message, note = read_message(volume_id)
    problem = growth_problem(volume_name, asked_gib, got_gib, stack, message, note)
    raise GrowthRefused(problem)


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
