"""Ask the state and the cloud what they hold of each of the stack's resources, once, before
any resource is registered; components/adoption.py decides from the answers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.adoption import (
    ATTACHMENT,
    FLOATING_IP,
    GROUP,
    LEASE,
    PORT,
    SERVER,
    Managed,
    Observed,
    rule,
)
from components.cloud_inventory import CloudInventory, Found, InventoryFailed, lease_serves
from components.openstack_api import CloudUnavailable, OpenStack
from components.settings import Settings
from components.stack_state import StackState, StateUnreadable, read_state
from components.volume_plan import (
    SEVERAL,
    VOLUME_NAME,
    CloudVolume,
    VolumeLookup,
    VolumeMatch,
)

VOLUME_TYPE = "openstack:blockstorage/volume:Volume"

Observations = dict[str, tuple[Managed, Observed]]


@dataclass(frozen=True)
class Survey:
    state: StackState
    observations: Observations
    volume: VolumeLookup
    notes: tuple[str, ...] = ()
    inventory: CloudInventory | None = None

    def discard(self, managed: Managed, resource_id: str) -> None:
        """Delete a resource of this stack that holds no data and cannot be adopted."""
        assert self.inventory is not None and managed is SERVER, managed
        try:
            self.inventory.delete_server(resource_id)
        except InventoryFailed as error:
            raise SurveyFailed(
                f"could not delete {managed.what} {resource_id}, which an interrupted `pulumi "
                f"up` made and which holds no data: {error}. Nothing else was changed. Fix: "
                f"`{managed.delete.format(id=resource_id)}`, then `pulumi up` again"
            ) from None


class SurveyFailed(Exception):
    """The state or the cloud could not be asked: nothing may be decided, or created."""


def survey(
    settings: Settings,
    inventory: CloudInventory,
    rules: Sequence[tuple[str, int, str]],
    read: Callable[[], StackState],
) -> Survey:
    """`rules` are the (service, port, cidr) the stack opens; `read` reads its state."""
    unreadable = None
    try:
        state = read()
    except StateUnreadable as error:
        state, unreadable = StackState(), str(error)
    try:
        result = _survey(settings, inventory, rules, state)
    except InventoryFailed as error:
        raise SurveyFailed(
            f"could not ask the cloud what it holds of this stack before changing anything: "
            f"{error}\nNothing was created or changed: without the cloud's answer the program "
            "cannot tell a first deployment from one whose resources (and data) already exist. "
            "Check the cloud credentials (OS_CLOUD, or the OS_* variables of your openrc file) "
            "and the network, then run pulumi up again."
        ) from None
    if unreadable is not None and any(
        observed.owned for _, observed in result.observations.values()
    ):
        raise SurveyFailed(
            f"the cloud holds resources with this stack's owner key, and this stack's state "
            f"could not be read to tell which of them it already manages ({unreadable}). "
            "Nothing was created or changed. Fix: run `pulumi up` from the project's directory "
            "with the same `pulumi` that made the stack (check `pulumi stack export` works)."
        )
    return result


def _survey(
    settings: Settings,
    inventory: CloudInventory,
    rules: Sequence[tuple[str, int, str]],
    state: StackState,
) -> Survey:
    observations: Observations = {}

    def observe(
        managed: Managed,
        owned: Sequence[Found],
        foreign: Sequence[Found],
        exists: Callable[[str], bool],
        unusable: dict[str, str] | None = None,
        holding: dict[str, str] | None = None,
    ) -> Observed:
        held = state.find(managed.type, managed.name)
        observed = Observed(
            state=held,
            exists=None if held is None else exists(held.id),
            owned=tuple(owned),
            foreign=tuple(foreign),
            unusable=unusable or {},
            holding=holding or {},
        )
        observations[managed.key] = (managed, observed)
        return observed

    def in_play(managed: Managed, observed: Observed) -> str | None:
        """The id the stack goes on with: the state's, or the one it adopts."""
        if observed.state is not None and observed.exists:
            return observed.state.id
        if observed.state is None and len(observed.owned) == 1 and managed.importable:
            return observed.owned[0].id
        return None

    # The security group and its rules, unless the stack uses groups that exist.
    if not settings.existing_security_groups:
        groups = inventory.security_groups()
        group = observe(
            GROUP, groups.owned, groups.foreign,
            lambda group_id: inventory.exists("network", f"/v2.0/security-groups/{group_id}"),
        )  # fmt: skip
        group_id = in_play(GROUP, group)
        cloud_rules = inventory.rules(group_id) if group_id else []

        def rule_exists(rule_id: str) -> bool:
            return inventory.exists("network", f"/v2.0/security-group-rules/{rule_id}")

        for service, port, cidr in rules:
            matching = [found for found in cloud_rules if _rule_matches(found.detail, port, cidr)]
            observe(rule(service, cidr), matching, (), rule_exists)

    ports = inventory.ports()
    port = observe(
        PORT, ports.owned, ports.foreign,
        lambda port_id: inventory.exists("network", f"/v2.0/ports/{port_id}"),
    )  # fmt: skip
    port_ids = sorted(
        {found.id for found in ports.owned} | set(filter(None, [in_play(PORT, port)]))
    )
    floating_ips = inventory.floating_ips(port_ids)
    observe(
        FLOATING_IP, floating_ips.owned, floating_ips.foreign,
        lambda floating_id: inventory.exists("network", f"/v2.0/floatingips/{floating_id}"),
    )  # fmt: skip

    if settings.makes_lease:
        leases = [inventory.settle_lease(found) or found for found in inventory.leases()]
        observe(
            LEASE, leases, (),
            lambda lease_id: _serves(inventory.lease(lease_id)),
            unusable={
                found.id: f"it is {found.status}, not ACTIVE"
                for found in leases
                if found.status != "ACTIVE" and found.status != "ERROR"
            },
        )  # fmt: skip

    named, owned_volumes = inventory.volumes()
    settled = [inventory.settle_volume(found) or found for found in owned_volumes]
    volume = observe_volume(state, inventory, named, settled)
    notes = list(volume.notes)

    servers = inventory.servers()
    settled_servers = list(servers.owned)
    server = observe(
        SERVER, settled_servers, servers.foreign,
        lambda server_id: not inventory.wait_until_gone(server_id)
        and inventory.server(server_id) is not None,
        unusable={
            found.id: f"it is {found.status}, not ACTIVE"
            for found in settled_servers
            if found.status != "ACTIVE"
        },
        holding={
            found.id: "the volume " + ", ".join(volumes)
            for found in settled_servers
            if (volumes := _attached_volumes(found))
        },
    )  # fmt: skip

    server_id = in_play(SERVER, server)
    volume_id = volume.id_in_play
    attachments: list[Found] = []
    if server_id and volume_id:
        for attachment in inventory.server_attachments(server_id):
            if attachment.get("volumeId") == volume_id:
                attachment_id = f"{server_id}/{attachment.get('id') or volume_id}"
                attachments.append(Found(attachment_id, "", "", settings.owner, attachment))
    observe(
        ATTACHMENT, attachments, (),
        lambda attachment_id: _attached(inventory, attachment_id),
    )  # fmt: skip
    return Survey(state, observations, volume.lookup, tuple(notes), inventory)


def _attached_volumes(server: Found) -> list[str]:
    """The volumes Nova lists on the server (os-extended-volumes:volumes_attached)."""
    attached = server.detail.get("os-extended-volumes:volumes_attached") or []
    return [str(each.get("id")) for each in attached if isinstance(each, dict)]


def _serves(lease: Found | None) -> bool:
    """For a lease, "exists" means it still serves: an ended one is replaced by its own diff."""
    return lease is not None and lease_serves(lease.detail)


def _rule_matches(record: dict, port: int, cidr: str) -> bool:
    """The ingress rule components/access.py makes (Neutron refuses a duplicate of it)."""
    return (
        record.get("direction") == "ingress"
        and record.get("ethertype") == "IPv4"
        and str(record.get("protocol")) in ("tcp", "6")
        and record.get("port_range_min") == port
        and record.get("port_range_max") == port
        and record.get("remote_ip_prefix") == cidr
    )


def _attached(inventory: CloudInventory, attachment_id: str) -> bool:
    server_id, _, attachment = attachment_id.partition("/")
    return any(
        each.get("id") == attachment or each.get("volumeId") == attachment
        for each in inventory.server_attachments(server_id)
    )


@dataclass(frozen=True)
class VolumeObserved:
    lookup: VolumeLookup
    id_in_play: str | None
    notes: tuple[str, ...] = ()


def observe_volume(
    state: StackState,
    inventory: CloudInventory,
    named: Sequence[Found],
    owned: Sequence[Found],
) -> VolumeObserved:
    """The volume's own rules (components/volume_plan.py, plan_volume) decide; the state says which
    volume the stack already manages, so that no other is ever imported over it."""
    named_volumes = [_cloud_volume(found) for found in named]
    owned_volumes = [_cloud_volume(found) for found in owned]
    held = state.find(VOLUME_TYPE, VOLUME_NAME)
    if held is None:
        lookup = VolumeLookup(named=_one(named_volumes), owned=_one(owned_volumes))
        return VolumeObserved(
            lookup, lookup.owned.id if isinstance(lookup.owned, CloudVolume) else None
        )
    current = inventory.volume(held.id)
    held_volume = _cloud_volume(current) if current is not None else None
    notes = tuple(
        f"volume {volume.described()} also carries this stack's owner key, but this stack "
        f"manages {held.id}; it may hold data: look at it (`openstack volume show {volume.id}`) "
        "before you delete it"
        for volume in owned_volumes
        if volume.id != held.id
    )
    lookup = VolumeLookup(
        named=_one(named_volumes),
        owned=_one([volume for volume in owned_volumes if volume.id == held.id]),
        held_id=held.id,
        held=held_volume,
    )
    return VolumeObserved(lookup, held.id if held_volume is not None else None, notes)


def _one(volumes: list[CloudVolume]) -> VolumeMatch:
    if len(volumes) > 1:
        return SEVERAL
    return volumes[0] if volumes else None


def _cloud_volume(found: Found) -> CloudVolume:
    detail = found.detail
    return CloudVolume(
        id=found.id,
        name=found.name,
        size_gib=int(detail.get("size") or 0),
        volume_type=str(detail.get("volume_type") or ""),
        status=found.status,
        metadata=dict(detail.get("metadata") or {}),
        attached_to=tuple(str(each.get("server_id")) for each in detail.get("attachments") or []),
    )


def survey_stack(
    settings: Settings,
    stack: str,
    rules: Sequence[tuple[str, int, str]],
    project_root: Path,
    log: Callable[[str], None],
) -> Survey:
    """The survey with the stack's own credentials and state: what `pulumi up` runs."""
    try:
        api = OpenStack()
    except CloudUnavailable as error:
        raise SurveyFailed(
            f"before changing anything the program asks the cloud what it already holds of "
            f"this stack, and could not: {error}"
        ) from None
    return survey(
        settings,
        CloudInventory(settings, api, log=log),
        rules,
        lambda: read_state(stack, cwd=project_root),
    )
