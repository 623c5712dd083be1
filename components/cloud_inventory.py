"""What the cloud holds of this stack, asked before any resource is registered."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.openstack_api import CloudUnavailable, OpenStack, Response
from components.settings import OWNER_KEY, Settings

# Where an owner key sits in a description: "... (chi-persist-stack=ab1234/ab1234)".
DESCRIPTION_OWNER = re.compile(re.escape(OWNER_KEY) + r"=([^\s()]+)")
# How long a resource in the middle of a change is waited for before the program gives up.
SETTLE_SECONDS = {"server": 900, "volume": 300, "lease": 600, "server-delete": 300}
POLL_SECONDS = 5.0

NOVA, NEUTRON, CINDER, BLAZAR = "compute", "network", "volumev3", "reservation"
# Nova statuses of a server that will never run again (nova/api/openstack/common.py,
# _STATE_MAP); a task_state of "deleting" ends the same way.
SERVER_GONE = ("DELETED", "SOFT_DELETED")
# Lease statuses Blazar passes through before ACTIVE (blazar/status.py, LeaseStatus).
LEASE_STARTING = ("PENDING", "STARTING")


class InventoryFailed(Exception):
    """The cloud could not be asked, or answered what cannot be trusted: nothing is decided."""


@dataclass(frozen=True)
class Found:
    """One resource as the cloud reports it."""

    id: str
    name: str
    status: str
    owner: str | None
    """The owner key's value the resource carries; None when it carries none."""
    detail: Mapping[str, Any] = field(default_factory=dict)

    def described(self) -> str:
        name = f"{self.name} " if self.name else ""
        status = f", {self.status}" if self.status else ""
        return f"{name}(id {self.id}{status})"


@dataclass(frozen=True)
class Candidates:
    """The resources of one kind that may be the stack's: its own, and same-named others'."""

    owned: tuple[Found, ...] = ()
    foreign: tuple[Found, ...] = ()
    """Named as this stack names its resource, carrying another stack's owner key."""


def owner_of(settings: Settings, tags: Iterable[str], description: str | None) -> str | None:
    """The owner a Neutron resource carries: its description names it whole; a tag too, unless
    the tag had to be shortened to fit (then only this stack's own tag is recognised)."""
    match = DESCRIPTION_OWNER.search(description or "")
    if match:
        return match.group(1)
    for tag in tags:
        if tag == settings.owner_tag:
            return settings.owner
        if tag.startswith(f"{OWNER_KEY}="):
            return tag.split("=", 1)[1]
    return None


# Every resource the stack makes carries its owner key (`chi-persist-stack=<netid>/<stack>`:
# Nova and Cinder metadata, Neutron tags and descriptions, the lease's name), so a `pulumi up`
# killed mid-run, or run from a second machine, finds what the first one made. A resource in
# the middle of a change (a server building, a volume attaching, a lease starting) is waited
# for, with a bound, so that what is adopted can be used at once.
class CloudInventory:
    """The lookups, through one OpenStack session; `log` shows what is waited for."""

    def __init__(
        self,
        settings: Settings,
        api: OpenStack,
        log: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.api = api
        self.log = log
        self.sleep = sleep
        self.clock = clock

    # --- calls ---------------------------------------------------------------------------

    def get(self, service: str, path: str, **params: Any) -> Response:
        try:
            answer = self.api.call(service, "GET", path, params=params or None)
        except CloudUnavailable as error:
            raise InventoryFailed(str(error)) from None
        if answer.status not in (200, 404):
            raise InventoryFailed(
                f"the cloud answered GET {path} with HTTP {answer.status}: {answer.error_message}"
            )
        return answer

    def listed(self, service: str, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        answer = self.get(service, path, **params)
        if answer.status != 200 or not isinstance(answer.body.get(key), list):
            raise InventoryFailed(
                f"the cloud's answer to GET {path} holds no {key!r} list (HTTP {answer.status})"
            )
        return answer.body[key]

    def exists(self, service: str, path: str) -> bool:
        return self.get(service, path).status == 200

    def _classify(self, found: Iterable[Found], name: str) -> Candidates:
        unique = {each.id: each for each in found}.values()
        owned = tuple(each for each in unique if each.owner == self.settings.owner)
        foreign = tuple(
            each
            for each in unique
            if each.owner not in (None, self.settings.owner) and each.name == name
        )
        return Candidates(owned, foreign)

    # --- Neutron ---------------------------------------------------------------------------

    def _neutron(self, record: Mapping[str, Any], name: str | None = None) -> Found:
        return Found(
            id=record["id"],
            name=record.get("name") if name is None else name,
            status=str(record.get("status") or ""),
            owner=owner_of(self.settings, record.get("tags") or [], record.get("description")),
            detail=dict(record),
        )

    def security_groups(self) -> Candidates:
        name = self.settings.security_group_name
        records = self.listed(NEUTRON, "/v2.0/security-groups", "security_groups", name=name)
        records += self.listed(
            NEUTRON, "/v2.0/security-groups", "security_groups", tags=self.settings.owner_tag
        )
        return self._classify((self._neutron(record) for record in records), name)

    def rules(self, group_id: str) -> list[Found]:
        records = self.listed(
            NEUTRON,
            "/v2.0/security-group-rules",
            "security_group_rules",
            security_group_id=group_id,
        )
        # A rule has no tags of its own here; it is the stack's because its group is.
        return [
            Found(record["id"], record.get("description") or "", "", self.settings.owner, record)
            for record in records
            if record.get("security_group_id") == group_id
        ]

    def ports(self) -> Candidates:
        name = self.settings.server_name
        records = self.listed(NEUTRON, "/v2.0/ports", "ports", name=name)
        records += self.listed(NEUTRON, "/v2.0/ports", "ports", tags=self.settings.owner_tag)
        return self._classify((self._neutron(record) for record in records), name)

    def floating_ips(self, port_ids: Sequence[str]) -> Candidates:
        records = self.listed(
            NEUTRON, "/v2.0/floatingips", "floatingips", tags=self.settings.owner_tag
        )
        for port_id in port_ids:
            records += self.listed(NEUTRON, "/v2.0/floatingips", "floatingips", port_id=port_id)
        found = [
            self._neutron(record, name=record.get("floating_ip_address") or "")
            for record in records
        ]
        return self._classify(found, name="")

    # --- Nova ------------------------------------------------------------------------------

    def _server(self, record: Mapping[str, Any]) -> Found:
        metadata = record.get("metadata") or {}
        status = str(record.get("status") or "")
        if record.get("OS-EXT-STS:task_state") == "deleting":
            status = "DELETED"
        return Found(
            record["id"], record.get("name") or "", status, metadata.get(OWNER_KEY), record
        )

    def servers(self) -> Candidates:
        """Every server of the project: Nova filters by name (a regular expression) but not
        by metadata for a project member, and a server renamed in Horizon keeps its key."""
        records = self.listed(NOVA, "/servers/detail", "servers")
        found = [self._server(record) for record in records]
        candidates = self._classify(found, self.settings.server_name)
        return Candidates(
            tuple(each for each in candidates.owned if each.status not in SERVER_GONE),
            candidates.foreign,
        )

    def server(self, server_id: str) -> Found | None:
        answer = self.get(NOVA, f"/servers/{server_id}")
        if answer.status == 404:
            return None
        found = self._server(answer.body.get("server") or {"id": server_id})
        return None if found.status in SERVER_GONE else found

    def server_attachments(self, server_id: str) -> list[dict[str, Any]]:
        answer = self.get(NOVA, f"/servers/{server_id}/os-volume_attachments")
        if answer.status == 404:
            return []
        return list(answer.body.get("volumeAttachments") or [])

    def settle_server(self, found: Found) -> Found | None:
        """Wait while it builds; None once it is deleted."""
        deadline = self.clock() + SETTLE_SECONDS["server"]
        current: Found | None = found
        while current is not None and current.status == "BUILD":
            if self.clock() > deadline:
                break
            self.log(f"server {current.described()} is still building: waiting for ACTIVE")
            self.sleep(POLL_SECONDS)
            current = self.server(found.id)
        return current

    def delete_server(self, server_id: str) -> None:
        """DELETE a server that holds no data, and wait until Nova no longer has it."""
        try:
            answer = self.api.call(NOVA, "DELETE", f"/servers/{server_id}")
        except CloudUnavailable as error:
            raise InventoryFailed(str(error)) from None
        if answer.status not in (204, 404):
            raise InventoryFailed(
                f"Nova refused to delete server {server_id} (HTTP {answer.status}: "
                f"{answer.error_message})"
            )
        deadline = self.clock() + SETTLE_SECONDS["server-delete"]
        while self.server(server_id) is not None:
            if self.clock() > deadline:
                raise InventoryFailed(f"server {server_id} was still there after its delete")
            self.sleep(POLL_SECONDS)

    def wait_until_gone(self, server_id: str) -> bool:
        """A server being deleted (an interrupted recycle): wait for Nova to finish."""
        deadline = self.clock() + SETTLE_SECONDS["server-delete"]
        while True:
            answer = self.get(NOVA, f"/servers/{server_id}")
            if answer.status == 404:
                return True
            record = answer.body.get("server") or {}
            if str(record.get("status")) in SERVER_GONE:
                return True
            if record.get("OS-EXT-STS:task_state") != "deleting" or self.clock() > deadline:
                return False
            self.log(f"server {server_id} is being deleted: waiting for Nova to finish")
            self.sleep(POLL_SECONDS)

    # --- Cinder ----------------------------------------------------------------------------

    def _volume(self, record: Mapping[str, Any]) -> Found:
        metadata = record.get("metadata") or {}
        return Found(
            record["id"],
            record.get("name") or "",
            str(record.get("status") or ""),
            metadata.get(OWNER_KEY),
            record,
        )

    def volumes(self) -> tuple[list[Found], list[Found]]:
        """(named block-persist-<netid>, carrying this stack's key). Filters a cloud ignores
        (an operator may drop them from resource_filters.json) are applied here again."""
        name = self.settings.volume_name
        named = self.listed(CINDER, "/volumes/detail", "volumes", name=name)
        owned = self.listed(
            CINDER,
            "/volumes/detail",
            "volumes",
            metadata=json.dumps({OWNER_KEY: self.settings.owner}),
        )
        return (
            [self._volume(each) for each in named if each.get("name") == name],
            [
                self._volume(each)
                for each in owned
                if (each.get("metadata") or {}).get(OWNER_KEY) == self.settings.owner
            ],
        )

    def volume(self, volume_id: str) -> Found | None:
        answer = self.get(CINDER, f"/volumes/{volume_id}")
        if answer.status == 404:
            return None
        return self._volume(answer.body.get("volume") or {"id": volume_id})

    def settle_volume(self, found: Found) -> Found | None:
        """Wait while it is created, attached or detached."""
        deadline = self.clock() + SETTLE_SECONDS["volume"]
        current: Found | None = found
        while current is not None and current.status in ("creating", "attaching", "detaching"):
            if self.clock() > deadline:
                break
            self.log(f"volume {current.described()} is {current.status}: waiting")
            self.sleep(POLL_SECONDS)
            current = self.volume(found.id)
        return current

    # --- Blazar ----------------------------------------------------------------------------

    def leases(self) -> list[Found]:
        """This stack's leases, by the name that carries its owner; those that still serve
        or are about to."""
        records = self.listed(BLAZAR, "/leases", "leases")
        return [
            Found(
                record["id"],
                record["name"],
                str(record.get("status") or ""),
                self.settings.owner,
                record,
            )  # fmt: skip
            for record in records
            if record.get("name") == self.settings.lease_name and lease_serves(record)
        ]

    def lease(self, lease_id: str) -> Found | None:
        answer = self.get(BLAZAR, f"/leases/{lease_id}")
        if answer.status == 404:
            return None
        record = answer.body.get("lease") or {"id": lease_id, "name": ""}
        return Found(lease_id, record.get("name") or "", str(record.get("status") or ""),
                     self.settings.owner, record)  # fmt: skip

    def settle_lease(self, found: Found) -> Found | None:
        deadline = self.clock() + SETTLE_SECONDS["lease"]
        current: Found | None = found
        while current is not None and current.status in LEASE_STARTING:
            if self.clock() > deadline:
                break
            self.log(f"lease {current.described()} is {current.status}: waiting for ACTIVE")
            self.sleep(POLL_SECONDS)
            current = self.lease(found.id)
        return current


def lease_serves(record: Mapping[str, Any]) -> bool:
    """A lease that serves its flavor or is about to: starting, ACTIVE, or in ERROR while its
    start event is done and its end event is not (blazar/status.py sets ERROR on a refused
    update without ending anything)."""
    status = str(record.get("status") or "")
    if status in (*LEASE_STARTING, "ACTIVE", "UPDATING"):
        return True
    if status != "ERROR":
        return False
    events = {event.get("event_type"): event.get("status") for event in record.get("events") or []}
    return events.get("start_lease") == "DONE" and events.get("end_lease") != "DONE"


# --- a whole project (an instructor's view) ------------------------------------------------

# How a lease name carries its owner (components/settings.py, Settings.lease_name).
LEASE_OWNER = re.compile(r"^lease-persist-(?P<netid>[a-z][a-z0-9-]*)(?:\.(?P<stack>[^~]+))?$")


@dataclass(frozen=True)
class Owned:
    """A resource of the project that carries a chi-persist owner key."""

    kind: str
    found: Found


def project_resources(api: OpenStack) -> list[Owned]:
    """Every server, volume, port, floating IP, security group and lease of the project that
    names its chi-persist owner (a class shares one project; a member sees all of it)."""

    def listed(service: str, path: str, key: str) -> list[dict[str, Any]]:
        try:
            answer = api.call(service, "GET", path)
        except CloudUnavailable as error:
            raise InventoryFailed(str(error)) from None
        if answer.status != 200 or not isinstance(answer.body.get(key), list):
            raise InventoryFailed(
                f"the cloud answered GET {path} with HTTP {answer.status}: {answer.error_message}"
            )
        return answer.body[key]

    def neutron_owner(record: Mapping[str, Any]) -> str | None:
        match = DESCRIPTION_OWNER.search(record.get("description") or "")
        if match:
            return match.group(1)
        for tag in record.get("tags") or []:
            if tag.startswith(f"{OWNER_KEY}=") and "~" not in tag:
                return tag.split("=", 1)[1]
        return None

    def one(kind: str, record: Mapping[str, Any], name: str, owner: str | None) -> Owned:
        return Owned(
            kind, Found(record["id"], name, str(record.get("status") or ""), owner, record)
        )

    owned: list[Owned] = []
    for record in listed(NOVA, "/servers/detail", "servers"):
        owner = (record.get("metadata") or {}).get(OWNER_KEY)
        owned.append(one("server", record, record.get("name") or "", owner))
    for record in listed(CINDER, "/volumes/detail", "volumes"):
        owner = (record.get("metadata") or {}).get(OWNER_KEY)
        owned.append(one("volume", record, record.get("name") or "", owner))
    for kind, path, key in (
        ("port", "/v2.0/ports", "ports"),
        ("floating IP", "/v2.0/floatingips", "floatingips"),
        ("security group", "/v2.0/security-groups", "security_groups"),
    ):
        for record in listed(NEUTRON, path, key):
            name = record.get("name") or record.get("floating_ip_address") or ""
            owned.append(one(kind, record, name, neutron_owner(record)))
    for record in listed(BLAZAR, "/leases", "leases"):
        match = LEASE_OWNER.match(record.get("name") or "")
        owner = f"{match['netid']}/{match['stack'] or match['netid']}" if match else None
        owned.append(one("lease", record, record.get("name") or "", owner))
    return [each for each in owned if each.found.owner is not None]
