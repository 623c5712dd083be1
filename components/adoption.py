"""Decide, for each cloud resource of the stack, from what the state and the cloud hold."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.cloud_inventory import Found
from components.settings import NAMESPACE, OWNER_KEY
from components.stack_state import StackState, StateResource

# The replacement trigger of a resource nothing has happened to. A trigger that changes
# replaces the resource (pulumi/pulumi pkg/resource/deploy/step_generator.go,
# shouldTriggerReplace); null on either side means "no trigger", so every resource carries one.
INITIAL_TRIGGER = "chi-persist"


@dataclass(frozen=True)
class Managed:
    """One cloud resource of the program: how the state names it and how a student deletes it."""

    key: str
    type: str
    name: str
    """The resource's name in the program (the last part of its URN)."""
    what: str
    delete: str
    """The command that deletes one by hand, with {id}."""
    importable: bool = True
    """Whether an import keeps it as it is. A server does not: terraform-provider-openstack
    v3.4.0 reads an imported server's networks without their port (compute_instance_v2.go,
    flattenInstanceNetworks reads ports from the resource's own configuration, which an import
    lacks), and `networks` forces a replacement, which the engine refuses for an import."""


SERVER_TYPE = "openstack:compute/instance:Instance"
LEASE = Managed(
    "lease", "pulumi-python:dynamic:Resource", "lease", "lease",
    "openstack reservation lease delete {id}",
)  # fmt: skip
GROUP = Managed(
    "group", "openstack:networking/secGroup:SecGroup", "access-group", "security group",
    "openstack security group delete {id}",
)  # fmt: skip
PORT = Managed(
    "port", "openstack:networking/port:Port", "node-port", "port", "openstack port delete {id}"
)
FLOATING_IP = Managed(
    "floating_ip", "openstack:networking/floatingIp:FloatingIp", "node-floating-ip",
    "floating IP", "openstack floating ip delete {id}",
)  # fmt: skip
SERVER = Managed(
    "server", SERVER_TYPE, "node-server", "server", "openstack server delete {id}",
    importable=False,
)  # fmt: skip
ATTACHMENT = Managed(
    "attachment", "openstack:compute/volumeAttach:VolumeAttach", "node-volume-attachment",
    "volume attachment", "openstack server remove volume {id}",
)  # fmt: skip


def rule(service: str, cidr: str) -> Managed:
    """The ingress rule for one service's port from one network (components/access.py)."""
    return Managed(
        f"rule:{service}:{cidr}",
        "openstack:networking/secGroupRule:SecGroupRule",
        f"access-{service}-{cidr.replace('/', '-')}",
        f"security group rule {service} from {cidr}",
        "openstack security group rule delete {id}",
    )


@dataclass(frozen=True)
class Observed:
    """What the state and the cloud hold of one resource."""

    state: StateResource | None = None
    exists: bool | None = None
    """Whether the cloud still has the state's resource (None: the state holds none)."""
    owned: tuple[Found, ...] = ()
    """In the cloud with this stack's owner key (the state's own among them)."""
    foreign: tuple[Found, ...] = ()
    """Named as this stack names it, with another stack's owner key."""
    unusable: Mapping[str, str] = field(default_factory=dict)
    """By id: why an owned resource cannot be adopted as it is (a server in ERROR)."""
    holding: Mapping[str, str] = field(default_factory=dict)
    """By id: what data an owned resource holds (a server with the volume attached); one that
    holds none and cannot be imported is deleted and made again."""


@dataclass(frozen=True)
class Adoption:
    """What the program does about one resource: the options it registers it with."""

    managed: Managed
    import_id: str | None = None
    trigger: Any = INITIAL_TRIGGER
    discard: tuple[str, ...] = ()
    """Ids of resources of this stack that hold no data and cannot be adopted: the program
    deletes them before it registers anything, and makes the resource anew."""
    notes: tuple[str, ...] = ()
    """What `pulumi up` says it does, one line each (adopted, made again)."""
    warnings: tuple[str, ...] = ()
    """What the student should see to: a leftover that carries the stack's key."""
    problem: str | None = None

    def options(self) -> dict[str, Any]:
        """`import_` and `replacement_trigger` for pulumi.ResourceOptions."""
        return {"import_": self.import_id, "replacement_trigger": self.trigger}


# For each resource: keep the one the state holds; adopt (import) the one the cloud holds with
# this stack's owner key when the state holds none; make again the one the state holds and the
# cloud lost (its replacement trigger changes); or refuse, before anything is created, naming
# the resource, its id and the command that resolves it. Nothing here calls the cloud: the
# survey (components/cloud_inventory.py) has already asked, so one table test drives it all.
def decide(managed: Managed, observed: Observed, stack: str) -> Adoption:
    """The one decision, for any kind of resource."""
    state = observed.state
    trigger = INITIAL_TRIGGER
    if state is not None and state.replacement_trigger is not None:
        trigger = state.replacement_trigger
    if observed.foreign:
        return Adoption(managed, trigger=trigger, problem=_foreign(managed, observed.foreign[0]))
    if state is not None:
        others = tuple(found for found in observed.owned if found.id != state.id)
        if not managed.importable and others:
            return _with_unimportable_others(managed, observed, state, trigger, others, stack)
        if observed.exists:
            return Adoption(managed, trigger=trigger, warnings=_orphans(managed, state.id, others))
        if managed is LEASE:
            return _next_lease(state, others)
        if others:
            return Adoption(
                managed, trigger=trigger, problem=_lost_and_found(managed, state, others, stack)
            )
        if state.replacement_trigger is None:
            # A state from before triggers were kept: a new one would read as "no trigger".
            return Adoption(managed, problem=_lost_needs_refresh(managed, state, stack))
        return Adoption(
            managed,
            trigger=f"made again: {state.id} was gone",
            notes=(
                f"{managed.what} {state.id} is in this stack's state but no longer in the cloud "
                "(deleted outside Pulumi, or by an interrupted recycle): it is made again",
            ),
        )
    if not observed.owned:
        return Adoption(managed)
    if not managed.importable:
        return _replace_unimportable(managed, observed, stack)
    if len(observed.owned) > 1:
        return Adoption(managed, problem=_several(managed, observed.owned))
    found = observed.owned[0]
    reason = observed.unusable.get(found.id)
    if reason is not None:
        return Adoption(
            managed,
            problem=(
                f"{managed.what} {found.described()} carries this stack's owner key and this "
                f"stack's state does not hold it, but it cannot be adopted: {reason}. Nothing was "
                f"created or changed. Fix: delete it (`{managed.delete.format(id=found.id)}`), "
                "then `pulumi up` again makes a new one"
            ),
        )
    return Adoption(
        managed,
        import_id=found.id,
        notes=(
            f"adopting {managed.what} {found.described()}: it carries this stack's owner key "
            f"({OWNER_KEY}={found.owner}) and this stack's state does not hold it (a `pulumi "
            "up` was interrupted, or ran from another machine)",
        ),
    )


def _with_unimportable_others(
    managed: Managed,
    observed: Observed,
    state: StateResource,
    trigger: Any,
    others: tuple[Found, ...],
    stack: str,
) -> Adoption:
    """The state holds a server, and others carry the key: those that hold no data are
    deleted (the state's own is kept, or made again when the cloud lost it)."""
    extra = _replace_unimportable(managed, Observed(owned=others, holding=observed.holding), stack)
    if extra.problem is not None:
        return Adoption(managed, trigger=trigger, problem=extra.problem)
    if observed.exists:
        return Adoption(managed, trigger=trigger, discard=extra.discard, notes=extra.notes)
    kept = decide(managed, Observed(state=state, exists=False), stack)
    return Adoption(
        managed,
        trigger=kept.trigger,
        discard=extra.discard,
        notes=(*extra.notes, *kept.notes),
        problem=kept.problem,
    )


def _replace_unimportable(managed: Managed, observed: Observed, stack: str) -> Adoption:
    """A server the state lacks: one that holds no data (no volume attached: an interrupted
    `pulumi up` made it and nothing ran on it yet) is deleted and made anew; one that holds
    the volume runs the platform for another state (another machine), and is refused with
    the commands that stop it cleanly."""
    holding = [found for found in observed.owned if found.id in observed.holding]
    if holding:
        found = holding[0]
        return Adoption(
            managed,
            problem=(
                f"{managed.what} {found.described()} carries this stack's owner key, this "
                f"stack's state does not hold it, and it holds {observed.holding[found.id]}: it "
                "runs the platform for the state of another machine (or of this one before it "
                "was lost). It cannot be adopted as it is, and is not deleted while it may be "
                "writing. Nothing was created or changed. Fix: keep using the machine that "
                "made it; or stop it cleanly and remove it, then `pulumi up` here adopts "
                "everything else (volume and data included) and makes a new server: "
                f"`openstack server stop {found.id}` (a clean shutdown unmounts the volume), "
                f"wait for SHUTOFF (`openstack server show {found.id} -c status`), then "
                f"`openstack server delete {found.id}`"
            ),
        )
    listed = ", ".join(found.described() for found in observed.owned)
    return Adoption(
        managed,
        discard=tuple(found.id for found in observed.owned),
        notes=(
            f"{managed.what} {listed} carries this stack's owner key, this stack's state does "
            "not hold it (a `pulumi up` was interrupted) and it holds no data (no volume "
            f"attached): `pulumi up` deletes it and makes a new {managed.what}",
        ),
    )


def _next_lease(state: StateResource, others: tuple[Found, ...]) -> Adoption:
    """The state's lease no longer serves (its `exists` is whether it serves), so the lease's
    own diff replaces it. A serving lease with this stack's key that the state does not hold
    (an interrupted replacement made it) becomes that replacement instead of a new one: the
    provider's create takes it (a dynamic resource cannot be imported: the engine's Read for
    an import carries no properties, so the provider cannot be found)."""
    if len(others) != 1:
        return Adoption(LEASE, warnings=_orphans(LEASE, state.id, others))
    found = others[0]
    return Adoption(
        LEASE,
        import_id=found.id,
        notes=(
            f"lease {state.id}, which this stack holds, no longer serves; lease "
            f"{found.described()} carries this stack's owner key and serves: it replaces it "
            "instead of a new one",
        ),
    )


def _foreign(managed: Managed, found: Found) -> str:
    other_stack = str(found.owner).rsplit("/", 1)[-1]
    return (
        f"{managed.what} {found.described()} has the name this stack gives its {managed.what}, "
        f"but belongs to the chi-persist stack {found.owner} ({OWNER_KEY}); the program never "
        "touches another stack's resources and will not make a second of that name. Nothing was "
        f"created or changed. Fix: run pulumi from that stack (`pulumi stack select "
        f"{other_stack}`), or give this stack a netid of its own (`pulumi config set "
        f"{NAMESPACE}:netid <another netid>`)"
    )


def _orphans(managed: Managed, kept: str, others: Iterable[Found]) -> tuple[str, ...]:
    return tuple(
        f"{managed.what} {found.described()} also carries this stack's owner key, but this "
        f"stack manages {kept}; nothing uses it: delete it with "
        f"`{managed.delete.format(id=found.id)}`"
        for found in others
    )


def _several(managed: Managed, owned: Iterable[Found]) -> str:
    listed = "; ".join(found.described() for found in owned)
    deletes = " / ".join(f"`{managed.delete.format(id=found.id)}`" for found in owned)
    return (
        f"several {managed.what}s carry this stack's owner key ({listed}) and this stack's state "
        f"holds none of them, so the program cannot tell which to adopt. Nothing was created or "
        f"changed. Fix: keep one, delete the others ({deletes}), then `pulumi up` again adopts it"
    )


def _lost_and_found(
    managed: Managed, state: StateResource, others: Iterable[Found], stack: str
) -> str:
    listed = "; ".join(found.described() for found in others)
    return (
        f"this stack's state holds {managed.what} {state.id}, which the cloud no longer has, and "
        f"the cloud holds {listed} with this stack's owner key, which the state does not. "
        "Adopting it would replace what the state holds. Nothing was created or changed. Fix: "
        f"`pulumi refresh --stack {stack} --yes` (Pulumi forgets what the cloud lost), then "
        "`pulumi up` adopts it"
    )


def _lost_needs_refresh(managed: Managed, state: StateResource, stack: str) -> str:
    return (
        f"this stack's state holds {managed.what} {state.id}, which the cloud no longer has "
        "(deleted outside Pulumi). Nothing was created or changed. Fix: `pulumi up --refresh "
        f"--stack {stack}` once: Pulumi forgets it and the program makes it again"
    )


class AdoptionRefused(Exception):
    """What the cloud holds of the stack cannot be reconciled with its state; each problem
    names the resource, its id and the command that resolves it."""


@dataclass(frozen=True)
class AdoptionPlan:
    """Every decision, by resource key."""

    adoptions: Mapping[str, Adoption]

    def raise_problems(self, also: Sequence[str] = ()) -> None:
        """AdoptionRefused, listing every problem (and `also`, the volume's), when any."""
        problems = self.problems
        if problems:
            problems = [*problems, *also]
            count = len(problems)
            raise AdoptionRefused(
                f"{count} resource{'s' if count != 1 else ''} of this stack cannot be reconciled "
                "with what the cloud holds:\n" + "\n".join(f"  - {each}" for each in problems)
            )

    def import_id(self, key: str) -> str | None:
        adoption = self.adoptions.get(key)
        return adoption.import_id if adoption else None

    def options(self, key: str) -> dict[str, Any]:
        adoption = self.adoptions.get(key)
        return adoption.options() if adoption else {"replacement_trigger": INITIAL_TRIGGER}

    @property
    def notes(self) -> list[str]:
        return [note for adoption in self.adoptions.values() for note in adoption.notes]

    @property
    def warnings(self) -> list[str]:
        return [note for adoption in self.adoptions.values() for note in adoption.warnings]

    @property
    def problems(self) -> list[str]:
        return [a.problem for a in self.adoptions.values() if a.problem is not None]

    @property
    def discards(self) -> list[tuple[Managed, str]]:
        return [(a.managed, each) for a in self.adoptions.values() for each in a.discard]

    @property
    def adopted(self) -> list[Adoption]:
        return [a for a in self.adoptions.values() if a.import_id is not None]


def pending_create_notes(state: StackState, plan: AdoptionPlan, stack: str) -> list[str]:
    """Pulumi keeps the record of a create an interrupted run began until it is told what became
    of it (pkg/backend/snapshot.go, Snap), and asks for an interactive `pulumi refresh`. Here the
    resource is adopted, made again or in the state already, so the record only misleads."""
    names = sorted({operation.name for operation in state.pending_creates()})
    if not names:
        return []
    return [
        f"Pulumi still records the create of {', '.join(names)} that an interrupted `pulumi up` "
        "began (its warning above asks for an interactive `pulumi refresh`: not needed). This "
        "run adopts what that create made or makes it again; afterwards `./chi-persist repair "
        f"--stack {stack}` clears the record, with no question asked"
    ]


def plan_adoption(observations: Mapping[str, tuple[Managed, Observed]], stack: str) -> AdoptionPlan:
    return AdoptionPlan(
        {key: decide(managed, observed, stack) for key, (managed, observed) in observations.items()}
    )
