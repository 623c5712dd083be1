"""recycle: destroy a stack's server and its dependents; keep the volume, port and floating IP.

The server is found by type and name in `pulumi stack export`, never by a URN
typed by hand. Before anything is destroyed, the plan is checked: nothing that
must stay may be among the server's dependents. Nova, not the network, says
whether the server is gone: only then (or when it is shut off) is the clean stop's
step removed from the state, with a warning about what that means for the data.
A server that runs but does not answer on SSH from here keeps its volume, unless
--stop-through-nova shuts it down first.
With --end-lease, the stack's lease (found the same way) is destroyed too, in a
destroy of its own once the server is gone, so no reservation is held.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chi_persist_tools.clean_stop import ServerLookup, look_up_server, request_server_stop
from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    HOW_TO_UNLOCK_SECRETS,
    CommandError,
    PulumiFailed,
    export_state,
    passphrase_is_set,
    pulumi_command_text,
    run_main,
    run_pulumi,
    selected_stack,
    stream_pulumi,
)
from components.settings import check_value
from components.ssh_auth import probe_agent

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
SSH_PORT = 22
PROBE_TIMEOUT_SECONDS = 5.0
# Nova's graceful stop waits up to its shutdown_timeout (60 s by default) before it powers off.
NOVA_STOP_SECONDS = 300
NOVA_POLL_SECONDS = 5.0

DESCRIPTION = """\
Recycle the compute of a stack: destroy its server (node-persist-NETID) and what
depends on it (the volume attachment and the provisioning steps), and keep the
volume with all its data, the port and the floating IP. Then `pulumi up` makes a
new server, which attaches the same volume and finds every experiment, model and
notebook where it was. With --end-lease, the stack's KVM@TACC lease ends too, so
nothing is reserved while nobody works; the next `pulumi up` makes a new lease.
"""

EPILOG = """\
what it does:
  1. reads the stack's state (`pulumi stack export`) and finds the server;
  2. shows what will be destroyed and what stays, and asks (unless --yes);
  3. runs `pulumi destroy --target <server> --target-dependents`: before the volume is
     detached, the server stops the platform cleanly (docker compose down, sync, unmount);
  4. reads the state again and checks the volume, port and floating IP are still there;
  5. with --end-lease: `pulumi destroy --target <lease>`, once the server is gone, and
     checks again. The lease is the stack's own (lease-persist-NETID); a reservation you
     set yourself (chi-persist:reservation) is not the stack's, and is refused.
  The volume is never a target.

Nova is asked first (with the OS_CLOUD / openrc credentials of `pulumi up`):
  - the server is gone (deleted by hand, a lease's end): the clean stop cannot run, so
    its step is removed from the state and the destroy goes on. PostgreSQL then
    recovers from its journal on the next start: committed data is safe; writes of the
    last seconds before the server went away may be lost. You are warned first.
  - the server is shut off: its shutdown unmounted the volume; the step is removed.
  - the server runs and answers on SSH: the clean stop runs in the destroy.
  - the server runs (or Nova cannot say) and SSH does not answer from here (your address
    not in allowedCidrs, a VPN): refused, nothing changes. --stop-through-nova shuts it
    down through Nova (a clean shutdown unmounts the volume), then recycles it.

examples:
  ./chi-persist recycle --stack ab1234
  ./chi-persist recycle --stack ab1234 --yes && pulumi up --stack ab1234
  ./chi-persist recycle --stack ab1234 --end-lease   # done for the day: release the reservation
  ./chi-persist recycle --stack ab1234 --stop-through-nova   # SSH is closed to you here
  ./chi-persist recycle                   # the selected stack (`pulumi stack select NETID`)

exit status:
  0  the server (and with --end-lease the lease) is gone and the volume, port and
     floating IP are still in the stack
  1  a pulumi command failed, the stack's state is not safe to recycle, or something
     that must stay is missing afterwards (what to do is printed)
  2  wrong arguments, no stack selected, no server to recycle, --end-lease on a stack
     without a lease of its own, or not confirmed: nothing was changed

PULUMI_CONFIG_PASSPHRASE must be set (as for `pulumi up`) when the stack's secrets
are protected by a passphrase, the default of this project's local state backend.
"""


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
    """The stack's own lease, or why --end-lease cannot end one."""
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


def ssh_unreachable_reason(address: str, port: int = SSH_PORT) -> str | None:
    """None when something accepts a TCP connection on address:port, else why not."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT_SECONDS):
            return None
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    except OSError as error:
        return error.strerror or str(error)


# What a recycle does about the clean stop, from what Nova says and whether SSH answers.
STOP_OVER_SSH = "stop over ssh"
FORGET = "forget the stop"
STOP_THROUGH_NOVA = "stop through nova"
REFUSE = "refuse"
# A server in one of these runs nothing: its platform cannot be stopped, and needs not be.
SERVER_OFF = ("SHUTOFF",)


@dataclass(frozen=True)
class StopDecision:
    action: str
    lines: tuple[str, ...] = ()
    """What is printed before the plan is confirmed."""
    refusal: tuple[str, ...] = ()
    """For REFUSE: the cause, then the fix."""


def decide_stop(
    lookup: ServerLookup, unreachable: str | None, *, stop_through_nova: bool, stack: str
) -> StopDecision:
    """Ask Nova, not the network: only a server Nova no longer has (or one that is shut off)
    loses its clean stop; one that runs but does not answer here keeps its volume attached."""
    lost_writes = (
        "PostgreSQL will recover from its journal on the next start: committed data is safe, "
        "but writes of the last seconds before the server went away may be lost"
    )
    if lookup.gone:
        return StopDecision(
            FORGET,
            (
                "warning: Nova no longer has the server: the clean stop (docker compose down, "
                f"sync, unmount) cannot run, so its step is removed from the state. {lost_writes}",
            ),
        )
    status = (lookup.status or "").upper()
    if lookup.exists and status in SERVER_OFF:
        return StopDecision(
            FORGET,
            (
                f"recycle: the server is {status}: nothing runs on it and its shutdown unmounted "
                "the volume, so the clean stop's step is removed from the state",
            ),
        )
    if unreachable is None:
        return StopDecision(
            STOP_OVER_SSH,
            (
                "recycle: the server answers on SSH: the platform will be stopped cleanly before "
                "the volume is detached",
            ),
        )
    seen = f"Nova says {status}" if lookup.exists else f"Nova could not be asked ({lookup.problem})"
    if lookup.exists and stop_through_nova:
        return StopDecision(
            STOP_THROUGH_NOVA,
            (
                f"recycle: the server does not answer on SSH from here ({unreachable}) and {seen}: "
                "it will be shut down through Nova (a clean shutdown stops the platform and "
                "unmounts the volume) before the volume is detached",
            ),
        )
    nova_fix = (
        "or shut it down through Nova first: "
        f"`./chi-persist recycle --stack {stack} --stop-through-nova`"
        if lookup.exists
        else "or make Nova reachable (`export OS_CLOUD=...` with clouds.yaml, or `source` your "
        "openrc file) so recycle can tell whether the server still exists"
    )
    return StopDecision(
        REFUSE,
        refusal=(
            f"the server does not answer on SSH from here ({unreachable}) and {seen}: it may be "
            "running PostgreSQL on the volume, so the volume is not detached without its clean "
            "stop; nothing was changed",
            "fix: recycle from a network the server lets in (your address must be in "
            f"chi-persist:allowedCidrs: `pulumi config get --stack {stack} chi-persist:"
            f"allowedCidrs`; a VPN or campus network may block port 22), {nova_fix}",
        ),
    )


def stop_server_through_nova(server_id: str) -> None:
    """os-stop (Nova's graceful shutdown: ACPI, then power off), then wait for SHUTOFF."""
    print(f"recycle: shutting server {server_id} down through Nova (os-stop)", flush=True)
    problem = request_server_stop(server_id)
    if problem is not None:
        raise CommandError(
            f"Nova did not stop server {server_id}: {problem}; nothing was destroyed",
            "fix: stop it in Horizon (Compute > Instances > Shut Off Instance), then run "
            "recycle again",
            exit_code=EXIT_FAILED,
        )
    deadline = time.monotonic() + NOVA_STOP_SECONDS
    while True:
        lookup = look_up_server(server_id)
        if lookup.gone or (lookup.status or "").upper() in SERVER_OFF:
            print(f"recycle: server {server_id} is shut off", flush=True)
            return
        if time.monotonic() > deadline:
            raise CommandError(
                f"server {server_id} was still {lookup.status or lookup.problem} "
                f"{NOVA_STOP_SECONDS} s after Nova was asked to stop it; nothing was destroyed",
                "fix: look at it in Horizon (Compute > Instances), then run recycle again",
                exit_code=EXIT_FAILED,
            )
        time.sleep(NOVA_POLL_SECONDS)


def refuse_a_dead_agent(environ: Mapping[str, str], stop_steps: Sequence[Resource]) -> None:
    """A clean stop that logs in through the agent (or a remote one: pulumi-command dials
    SSH_AUTH_SOCK whenever it is set) would fail the destroy after it began on a socket where
    no agent answers. A stop that logs in with the stack's key does not dial it."""
    if not any(step.dials_the_agent for step in stop_steps):
        return
    agent = probe_agent(environ.get("SSH_AUTH_SOCK") or None)
    if agent.socket is not None and not agent.answers:
        raise CommandError(
            f"SSH_AUTH_SOCK={agent.socket}: no ssh agent answers there ({agent.reason}); the "
            "clean stop logs in over SSH through the agent, so the destroy would fail on it; "
            "nothing was changed",
            'fix: start an agent in this shell: eval "$(ssh-agent)" && ssh-add <your key>, '
            "or `unset SSH_AUTH_SOCK` and give the stack its key (pulumi config set "
            "chi-persist:sshAuth key, then pulumi up); then ./chi-persist recycle again",
        )


def describe_lease(lease: Resource) -> str:
    """The lease, with when it ends as the stack last saw it."""
    end = lease.outputs.get("end_date")
    return lease.describe() + (f", ends {end}" if isinstance(end, str) and end else "")


def show_plan(plan: Plan) -> None:
    if plan.server is None:
        print(
            f"recycle: stack {plan.stack} has no server any more (an earlier recycle or the "
            "lease's end removed it): only its lease will be ended"
        )
    else:
        print(
            f"recycle: stack {plan.stack}: these will be destroyed (the server and its dependents):"
        )
    for resource in plan.removed:
        extra = ""
        if resource.stops_on_delete:
            extra = " (its delete step stops the platform cleanly and unmounts the volume)"
        print(f"  - {resource.describe()}{extra}")
    if plan.lease is not None:
        then = "then, once the server is gone, " if plan.server is not None else ""
        print(f"recycle: {then}the lease ends, and with it the reservation:")
        print(f"  - {describe_lease(plan.lease)}")
    print("recycle: these stay:")
    for resource in plan.kept:
        print(f"  + {resource.describe()}")
    if plan.lease_kept is not None:
        print(
            f"  + {describe_lease(plan.lease_kept)} (still reserved: add --end-lease to "
            "release it too)"
        )
    for kind, label in KEPT.items():
        if not any(resource.type == kind for resource in plan.kept):
            print(f"warning: the stack has no {label} in its state, so none can be kept")


def confirm(plan: Plan) -> bool:
    if plan.server is None:
        question = f"End the lease of stack {plan.stack}?"
    elif plan.lease is not None:
        question = f"Recycle the server of stack {plan.stack} and end its lease?"
    else:
        question = f"Recycle the server of stack {plan.stack}?"
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print()
        raise CommandError(
            "no answer (nothing to read a confirmation from); nothing was changed",
            f"fix: run `./chi-persist recycle --stack {plan.stack}` in a terminal, or pass --yes",
            exit_code=EXIT_USAGE,
        )
    return answer.strip().lower() in ("y", "yes")


def check_after(
    plan: Plan, export: Mapping[str, Any], *, lease_ended: bool = False, quiet: bool = False
) -> None:
    """The server (and, once ended, the lease) is gone, and everything that had to stay is
    still there, same ids."""
    resources = {resource.urn: resource for resource in resources_in(export)}
    problems = []
    if plan.server is not None and plan.server.urn in resources:
        problems.append(f"the server is still in the state: {plan.server.describe()}")
    if lease_ended and plan.lease is not None and plan.lease.urn in resources:
        if not any(
            before.urn not in resources or resources[before.urn].id != before.id
            for before in plan.kept
        ):
            raise CommandError(
                f"the lease is still in the state after its destroy: {plan.lease.describe()}",
                f"fix: `pulumi stack --stack {plan.stack}` shows it; run `./chi-persist recycle "
                f"--stack {plan.stack} --end-lease` again, or end it in Horizon (KVM@TACC, "
                f"Reservations > Leases) and run `pulumi refresh --stack {plan.stack}`",
                exit_code=EXIT_FAILED,
            )
        problems.append(f"the lease is still in the state: {plan.lease.describe()}")
    for before in plan.kept:
        after = resources.get(before.urn)
        if after is None:
            problems.append(f"{before.describe()} is NOT in the stack's state any more")
        elif after.id != before.id:
            problems.append(
                f"{before.describe()} now has id {after.id}: it is not the same {KEPT[before.type]}"
            )
    if problems:
        raise CommandError(
            *problems,
            f"fix: do not run `pulumi up` yet: a new, empty volume could be made. Check in "
            f"Horizon (KVM@TACC, Volumes) that the volume with the id above still exists, "
            f"and ask your instructor to bring it back into stack {plan.stack} "
            "(`pulumi import`)",
            exit_code=EXIT_FAILED,
        )
    if not quiet:
        for resource in plan.kept:
            print(f"recycle: still there: {resource.describe()}")


def destroy_server(plan: Plan, again: str) -> None:
    """The targeted destroy of the server and its dependents; the volume is never a target."""
    assert plan.server is not None
    stack = plan.stack
    destroy = [
        "destroy",
        "--stack",
        stack,
        "--target",
        plan.server.urn,
        "--target-dependents",
        "--yes",
        "--non-interactive",
    ]
    print(f"recycle: {pulumi_command_text(destroy)}", flush=True)
    try:
        stream_pulumi(destroy)
    except PulumiFailed as failure:
        address = plan.address or "the server's address"
        if failure.mentions("passphrase"):
            failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
        raise failure.with_fix(
            "the volume was not a target and is not destroyed by this command",
            f"fix: if pulumi could not reach the server ({address}:{SSH_PORT}), run "
            f"`{again}` again: it skips the clean stop of a server that "
            "does not answer. If a step on the server failed, log in (ssh cc@"
            f"{plan.address or 'IP'}) to see why, then run recycle again. "
            f"`pulumi stack --stack {stack}` shows what is left",
        ) from None


def end_lease(plan: Plan) -> None:
    """The targeted destroy of the lease alone: without --target-dependents, so the engine
    refuses (error 2014) rather than take along anything that still depends on it."""
    assert plan.lease is not None
    stack = plan.stack
    destroy = [
        "destroy", "--stack", stack, "--target", plan.lease.urn, "--yes", "--non-interactive",
    ]  # fmt: skip
    print(f"recycle: ending the lease: {pulumi_command_text(destroy)}", flush=True)
    try:
        stream_pulumi(destroy)
    except PulumiFailed as failure:
        if failure.mentions("passphrase"):
            failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
        gone = "the server is gone; " if plan.server is not None else ""
        raise failure.with_fix(
            f"{gone}the lease was not ended and its reservation is still held; the volume was "
            "not a target and is not destroyed by this command",
            f"fix: correct what pulumi reports, then `./chi-persist recycle --stack {stack} "
            "--end-lease` again (it ends only the lease now); or delete the lease in Horizon "
            f"(KVM@TACC, Reservations > Leases) and run `pulumi refresh --stack {stack}`",
        ) from None


def run(
    stack: str | None,
    assume_yes: bool,
    environ: Mapping[str, str],
    end_lease_too: bool = False,
    nova_stop: bool = False,
) -> int:
    if stack is not None:
        problem = check_value("netid", stack)[1]
        if problem is not None:
            raise CommandError(
                f"--stack {stack!r}: a stack is named after its netID, which {problem.rule}",
                "fix: e.g. --stack ab1234 (`pulumi stack ls` lists the stacks)",
            )
    else:
        stack = selected_stack("recycle")
        print(f"recycle: using the selected stack {stack}")

    plan = plan_recycle(stack, export_state(stack), end_lease=end_lease_too)
    if plan.secrets_provider == "passphrase" and not passphrase_is_set(dict(environ)):
        raise CommandError(
            f"stack {stack}'s secrets are protected by a passphrase, and "
            "PULUMI_CONFIG_PASSPHRASE is not set; nothing was changed",
            f"fix: {HOW_TO_UNLOCK_SECRETS}",
        )
    show_plan(plan)

    forget: list[Resource] = []
    stop_through_nova = False
    if plan.stop_steps:
        server_id = plan.server.id if plan.server is not None else None
        lookup = look_up_server(server_id) if server_id else ServerLookup(gone=True)
        unreachable = ssh_unreachable_reason(plan.address) if plan.address else "no address"
        decision = decide_stop(lookup, unreachable, stop_through_nova=nova_stop, stack=stack)
        for line in decision.lines:
            print(line)
        if decision.action == REFUSE:
            raise CommandError(*decision.refusal, exit_code=EXIT_FAILED)
        if decision.action in (FORGET, STOP_THROUGH_NOVA):
            forget = steps_to_forget(plan)
        stop_through_nova = decision.action == STOP_THROUGH_NOVA

    if plan.stop_steps and not forget:
        refuse_a_dead_agent(environ, plan.stop_steps)

    if not assume_yes and not confirm(plan):
        print("recycle: not confirmed; nothing was changed")
        return EXIT_USAGE

    if plan.stop_steps and not forget and not stop_through_nova:
        # backupOnRecycle: a backup while MLflow and Jupyter are stopped, before the clean
        # stop stops the rest (backup.py); it does nothing when the setting is off.
        from chi_persist_tools.backup import backup_before_recycle

        backup_before_recycle(stack, plan.address)
    if stop_through_nova:
        assert plan.server is not None and plan.server.id
        stop_server_through_nova(plan.server.id)
    for step in forget:
        arguments = ["state", "delete", "--stack", stack, step.urn, "--yes", "--non-interactive"]
        print(f"recycle: forgetting {step.name}: {pulumi_command_text(arguments)}", flush=True)
        try:
            run_pulumi(arguments)
        except PulumiFailed as failure:
            if failure.mentions("passphrase"):
                failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
            raise failure.with_fix(
                "fix: nothing was destroyed yet; correct what pulumi reports and run recycle again"
            ) from None

    again = f"./chi-persist recycle --stack {stack}" + (" --end-lease" if plan.lease else "")
    if plan.server is not None:
        destroy_server(plan, again)
        check_after(plan, export_state(stack), quiet=plan.lease is not None)
    if plan.lease is not None:
        end_lease(plan)
        check_after(plan, export_state(stack), lease_ended=True)
    if plan.server is None:
        print(
            f"recycle: done: the lease of stack {stack} has ended, nothing is reserved; its "
            "volume and data, port and floating IP are unchanged"
        )
    elif plan.lease is not None:
        print(
            f"recycle: done: the server of stack {stack} is gone and its lease has ended, "
            "nothing is reserved; its volume and data, port and floating IP are unchanged"
        )
    else:
        print(
            f"recycle: done: the server of stack {stack} is gone; its volume and data, port "
            "and floating IP are unchanged"
        )
    if plan.lease is not None:
        print(f"next: pulumi up --stack {stack}   (makes a new lease, then a new server)")
    else:
        print(f"next: pulumi up --stack {stack}")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    parser.add_argument(
        "--stop-through-nova",
        action="store_true",
        help="when the server runs but its SSH port does not answer from here, shut it down "
        "through Nova (a clean shutdown stops the platform and unmounts the volume), then "
        "detach the volume and delete it",
    )
    parser.add_argument(
        "--end-lease",
        action="store_true",
        help="also end the stack's KVM@TACC lease, after the server, so nothing is reserved "
        "(the next `pulumi up` makes a new one)",
    )


def build_parser() -> argparse.ArgumentParser:
    from chi_persist_tools.cli import parser_for

    return parser_for("recycle")


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist recycle`."""
    return run_main(
        lambda: run(
            arguments.stack,
            arguments.yes,
            os.environ,
            arguments.end_lease,
            arguments.stop_through_nova,
        )
    )
