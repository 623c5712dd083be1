"""What a recycle destroys and what it keeps, read from a stack's state (`pulumi stack
export`) and checked before anything is destroyed."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chi_persist_tools.command_line import EXIT_FAILED, EXIT_USAGE, CommandError

SERVER = "openstack:compute/instance:Instance"
ATTACHMENT = "openstack:compute/volumeAttach:VolumeAttach"
VOLUME = "openstack:blockstorage/volume:Volume"
PORT = "openstack:networking/port:Port"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
REMOTE_COMMAND = "command:remote:Command"
COPY_TO_REMOTE = "command:remote:CopyToRemote"
LOCAL_COMMAND = "command:local:Command"
SERVER_NAME_PREFIX = "node-persist-"
# The program's lease (components/lease.py): a dynamic provider's resource, named "lease".
LEASE = "pulumi-python:dynamic:Resource"
LEASE_NAME = "lease"

# What a recycle must leave in place: the data, and the address students know.
KEPT = {VOLUME: "volume", PORT: "port", FLOATING_IP: "floating IP"}
LABELS = {
    SERVER: "server",
    ATTACHMENT: "volume attachment",
    REMOTE_COMMAND: "remote command",
    COPY_TO_REMOTE: "file copy",
    LOCAL_COMMAND: "local command",
}


@dataclass(frozen=True)
class Resource:
    """One resource of a stack's state, as `pulumi stack export` shows it."""

    urn: str
    type: str
    id: str | None
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    parent: str | None
    depends_on: frozenset[str]
    protect: bool

    @classmethod
    def from_state(cls, entry: Mapping[str, Any]) -> Resource:
        depends_on = set(entry.get("dependencies") or [])
        for urns in (entry.get("propertyDependencies") or {}).values():
            depends_on.update(urns or [])
        if entry.get("deletedWith"):
            depends_on.add(entry["deletedWith"])
        return cls(
            urn=entry["urn"],
            type=entry.get("type", ""),
            id=entry.get("id"),
            inputs=entry.get("inputs") or {},
            outputs=entry.get("outputs") or {},
            parent=entry.get("parent"),
            depends_on=frozenset(depends_on),
            protect=bool(entry.get("protect")),
        )

    @property
    def name(self) -> str:
        """The name the program gave the resource (the URN's last part)."""
        return self.urn.rsplit("::", 1)[-1]

    @property
    def cloud_name(self) -> str | None:
        for values in (self.outputs, self.inputs):
            value = values.get("name")
            if isinstance(value, str) and value:
                return value
        return None

    @property
    def is_lease(self) -> bool:
        return self.type == LEASE and self.name == LEASE_NAME

    def describe(self) -> str:
        label = LABELS.get(self.type) or KEPT.get(self.type) or self.type
        if self.is_lease:
            label = "lease"
        if self.type == FLOATING_IP and self.outputs.get("address"):
            shown = f"{self.outputs['address']} ({self.name})"
        elif self.cloud_name and self.cloud_name != self.name:
            shown = f"{self.cloud_name} ({self.name})"
        else:
            shown = self.name
        return f"{label} {shown}" + (f", id {self.id}" if self.id else "")

    @property
    def delete_command(self) -> str | None:
        value = self.outputs.get("delete") or self.inputs.get("delete")
        return value if isinstance(value, str) and value else None

    @property
    def stops_on_delete(self) -> bool:
        """A command with a `delete` step: the clean stop (scripts/clean-stop, run locally, or
        release-volume.sh run remotely by a stack deployed before it), which logs in over SSH."""
        return self.type in (REMOTE_COMMAND, LOCAL_COMMAND) and self.delete_command is not None

    @property
    def dials_the_agent(self) -> bool:
        """Whether its delete dials SSH_AUTH_SOCK: pulumi-command's remote delete always does
        when it is set; scripts/clean-stop only with --login agent."""
        if not self.stops_on_delete:
            return False
        if self.type == REMOTE_COMMAND:
            return True
        try:
            words = shlex.split(self.delete_command or "")
        except ValueError:
            return True
        words = words[: words.index("--")] if "--" in words else words
        return "--login" not in words or words[words.index("--login") + 1 :][:1] != ["key"]


@dataclass
class Plan:
    """What a recycle of one stack destroys, what it keeps, and how the stop can run.

    `server` is None only when the lease is ended on its own (the server is already gone);
    `lease` is the lease to end after the server, `lease_kept` the one a plain recycle keeps.
    """

    stack: str
    server: Resource | None
    removed: list[Resource]
    kept: list[Resource]
    secrets_provider: str | None
    address: str | None = None
    stop_steps: list[Resource] = field(default_factory=list)
    lease: Resource | None = None
    lease_kept: Resource | None = None


def resources_in(export: Mapping[str, Any]) -> list[Resource]:
    deployment = export.get("deployment") or {}
    return [Resource.from_state(entry) for entry in deployment.get("resources") or []]


def dependents(resources: Sequence[Resource], urns: Iterable[str]) -> list[Resource]:
    """Everything that depends on, is a child of, or is deleted with any of `urns`, transitively."""
    found = set(urns)
    changed = True
    while changed:
        changed = False
        for resource in resources:
            if resource.urn in found:
                continue
            if resource.parent in found or resource.depends_on & found:
                found.add(resource.urn)
                changed = True
    return [resource for resource in resources if resource.urn in found]


def _server_of(
    stack: str, resources: Sequence[Resource], lease: Resource | None = None
) -> Resource:
    # By type and name in the exported state, never by a URN typed by hand.
    servers = [resource for resource in resources if resource.type == SERVER]
    ours = [
        server
        for server in servers
        if (server.cloud_name or server.name).startswith(SERVER_NAME_PREFIX)
        or server.name.startswith(SERVER_NAME_PREFIX)
    ]
    if not ours:
        others = ", ".join(server.describe() for server in servers)
        fix = f"fix: bring one up with `pulumi up --stack {stack}`"
        if lease is not None:
            fix += (
                f"; or, to release the stack's reservation until then, end its lease: "
                f"`./chi-persist recycle --stack {stack} --end-lease`"
            )
        raise CommandError(
            f"nothing to recycle: stack {stack} has no server named {SERVER_NAME_PREFIX}* in its "
            "state" + (f" (it has: {others})" if others else ""),
            fix,
            exit_code=EXIT_USAGE,
        )
    if len(ours) > 1:
        raise CommandError(
            f"stack {stack} has {len(ours)} servers named {SERVER_NAME_PREFIX}*: "
            + ", ".join(server.describe() for server in ours),
            "fix: this is not a stack of this project's program; recycle by hand with "
            "`pulumi destroy --target URN --target-dependents`",
            exit_code=EXIT_FAILED,
        )
    return ours[0]


def _leases_in(resources: Sequence[Resource]) -> list[Resource]:
    return [resource for resource in resources if resource.is_lease]


def _lease_to_end(
    stack: str, resources: Sequence[Resource], servers: Sequence[Resource]
) -> Resource:
    """The stack's own lease (found by type and name, as the server is), or why --end-lease
    cannot end one."""
    leases = _leases_in(resources)
    if len(leases) > 1:
        raise CommandError(
            f"stack {stack} has {len(leases)} leases in its state: "
            + ", ".join(lease.describe() for lease in leases)
            + "; nothing was changed",
            "fix: this is not a stack of this project's program; end its leases by hand "
            "with `pulumi destroy --target URN`",
            exit_code=EXIT_FAILED,
        )
    if leases:
        return leases[0]
    reservations = sorted(
        {
            str(server.inputs.get("flavorId") or server.outputs.get("flavorId"))
            for server in servers
            if server.inputs.get("flavorId") or server.outputs.get("flavorId")
        }
    )
    if reservations:
        why = (
            f"its server boots from the reserved flavor {', '.join(reservations)}: a "
            "reservation you made yourself (chi-persist:reservation), which the stack did "
            "not make and does not end"
        )
    else:
        why = (
            "the stack was deployed with a reservation of its own (chi-persist:reservation) "
            "or before the program made leases"
        )
    raise CommandError(
        f"--end-lease: stack {stack} has no lease of its own in its state (a {LEASE} named "
        f"{LEASE_NAME!r}): {why}; nothing was changed",
        f"fix: recycle without --end-lease (`./chi-persist recycle --stack {stack}`), and end your "
        "own lease where you made it: Horizon (KVM@TACC, Reservations > Leases, Delete Lease) "
        "or `openstack reservation lease delete LEASE`. To have the stack make and end its "
        f"own leases instead: `pulumi config rm chi-persist:reservation --stack {stack}`, "
        f"then `pulumi up --stack {stack}`",
        exit_code=EXIT_USAGE,
    )


def _check_lease_goes_alone(
    stack: str, resources: Sequence[Resource], lease: Resource, removed: Sequence[Resource]
) -> None:
    """Ending the lease may destroy nothing but the lease once the server's side is gone."""
    going = {resource.urn for resource in removed}
    dragged = [
        resource
        for resource in dependents(resources, [lease.urn])
        if resource.urn != lease.urn and resource.urn not in going
    ]
    if dragged:
        raise CommandError(
            "refusing: ending the lease would also destroy "
            + ", ".join(resource.describe() for resource in dragged)
            + ", which depend on it and do not go with the server; nothing was changed",
            f"fix: the stack's program must not make these depend on the lease; recycle "
            f"without --end-lease (`./chi-persist recycle --stack {stack}`) and ask your "
            "instructor",
            exit_code=EXIT_FAILED,
        )
    if lease.protect:
        raise CommandError(
            f"refusing: the lease is protected: {lease.describe()}; nothing was changed",
            f"fix: if it may really end, `pulumi state unprotect --stack {stack} {lease.urn}`, "
            "then run recycle again",
            exit_code=EXIT_FAILED,
        )


def plan_recycle(stack: str, export: Mapping[str, Any], end_lease: bool = False) -> Plan:
    """What destroying the server with its dependents (and with `end_lease`, then the lease)
    removes; refuses anything unsafe."""
    resources = resources_in(export)
    deployment = export.get("deployment") or {}
    provider = (deployment.get("secrets_providers") or {}).get("type")
    leases = _leases_in(resources)
    if end_lease:
        servers = [resource for resource in resources if resource.type == SERVER]
        lease = _lease_to_end(stack, resources, servers)
        if not servers:
            # The server is gone already (an earlier recycle): only the lease is left to end.
            _check_lease_goes_alone(stack, resources, lease, [])
            return Plan(
                stack=stack,
                server=None,
                removed=[],
                kept=[resource for resource in resources if resource.type in KEPT],
                secrets_provider=provider,
                lease=lease,
            )
    server = _server_of(stack, resources, leases[0] if len(leases) == 1 else None)
    removed = dependents(resources, [server.urn])
    # Checked before anything is destroyed: nothing that must stay may be a dependent.
    must_stay = [resource for resource in removed if resource.type in KEPT]
    if must_stay:
        raise CommandError(
            "refusing: destroying the server with its dependents would also destroy "
            + ", ".join(resource.describe() for resource in must_stay)
            + "; nothing was changed",
            "fix: the stack's program makes these depend on the server, which it must not; "
            "ask your instructor, and do not destroy the server until that is fixed",
            exit_code=EXIT_FAILED,
        )
    protected = [resource for resource in removed if resource.protect]
    if protected:
        raise CommandError(
            "refusing: these would be destroyed but are protected: "
            + ", ".join(resource.describe() for resource in protected)
            + "; nothing was changed",
            "fix: if they may really go, `pulumi state unprotect --stack "
            f"{stack} URN` each, then run recycle again",
            exit_code=EXIT_FAILED,
        )
    removed_urns = {resource.urn for resource in removed}
    kept = [
        resource
        for resource in resources
        if resource.type in KEPT and resource.urn not in removed_urns
    ]
    floating_ips = [resource for resource in kept if resource.type == FLOATING_IP]
    address = floating_ips[0].outputs.get("address") if len(floating_ips) == 1 else None
    lease = None
    if end_lease:
        lease = _lease_to_end(stack, resources, [server])
        _check_lease_goes_alone(stack, resources, lease, removed)
    return Plan(
        stack=stack,
        server=server,
        removed=removed,
        kept=kept,
        secrets_provider=provider,
        address=address if isinstance(address, str) and address else None,
        stop_steps=[resource for resource in removed if resource.stops_on_delete],
        lease=lease,
        lease_kept=leases[0] if not end_lease and len(leases) == 1 else None,
    )


def steps_to_forget(plan: Plan) -> list[Resource]:
    """The stop steps, and what depends on them, in the order `pulumi state delete` accepts."""
    resources = plan.removed
    forget = dependents(resources, [step.urn for step in plan.stop_steps])
    not_remote = [
        resource
        for resource in forget
        if not resource.type.startswith(("command:remote:", "command:local:"))
    ]
    if not_remote:
        raise CommandError(
            "cannot skip the clean stop: "
            + ", ".join(resource.describe() for resource in not_remote)
            + " depend on the stop step; nothing was changed",
            f"fix: make the server reachable on SSH, or remove these from the state by hand "
            f"(`pulumi state delete --stack {plan.stack} URN`), then run recycle again",
            exit_code=EXIT_FAILED,
        )
    # A state lists dependencies before their dependents: forget in reverse.
    return list(reversed(forget))
