"""The adoption decision (components/adoption.py), one table: state and cloud in, options out."""

from __future__ import annotations

import pytest

from components.adoption import (
    INITIAL_TRIGGER,
    LEASE,
    PORT,
    SERVER,
    Adoption,
    Observed,
    decide,
    pending_create_notes,
    plan_adoption,
)
from components.cloud_inventory import Found
from components.stack_state import PendingOperation, StackState, StateResource

OWNER = "ab1234/ab1234"
STACK = "ab1234"


def found(identifier: str, owner: str | None = OWNER, status: str = "ACTIVE") -> Found:
    return Found(identifier, "node-persist-ab1234", status, owner)


def held(identifier: str, trigger: object = INITIAL_TRIGGER, managed=PORT) -> StateResource:
    return StateResource(
        urn=f"urn:pulumi:{STACK}::chi-persist::{managed.type}::{managed.name}",
        type=managed.type,
        id=identifier,
        replacement_trigger=trigger,
    )


# (case, observed, import_id, trigger, problem words, note words)
CASES = [
    ("first deployment: nothing anywhere", Observed(), None, INITIAL_TRIGGER, None, None),
    ("the state's own, still there", Observed(held("s1"), True, (found("s1"),)),
     None, INITIAL_TRIGGER, None, None),
    ("a stack from before triggers: keeps none", Observed(held("s1", None), True, (found("s1"),)),
     None, INITIAL_TRIGGER, None, None),
    ("a trigger the state keeps is kept", Observed(held("s1", "made again: s0 was gone"), True),
     None, "made again: s0 was gone", None, None),
    ("killed run: in the cloud, not in the state", Observed(owned=(found("s2"),)),
     "s2", INITIAL_TRIGGER, None, "adopting port"),
    ("lost by the cloud: made again", Observed(held("s1"), False),
     None, "made again: s1 was gone", None, "no longer in the cloud"),
    ("lost, from before triggers: refresh", Observed(held("s1", None), False),
     None, INITIAL_TRIGGER, "pulumi up --refresh --stack ab1234", None),
    ("lost, and another carries the key", Observed(held("s1"), False, (found("s2"),)),
     None, INITIAL_TRIGGER, "pulumi refresh --stack ab1234 --yes", None),
    ("several, none held", Observed(owned=(found("s2"), found("s3"))),
     None, INITIAL_TRIGGER, "openstack port delete s3", None),
    ("another stack's of the same name", Observed(foreign=(found("s9", "ab1234/other"),)),
     None, INITIAL_TRIGGER, "pulumi stack select other", None),
    ("in the cloud but broken", Observed(owned=(found("s2", status="ERROR"),),
                                         unusable={"s2": "it is ERROR, not ACTIVE"}),
     None, INITIAL_TRIGGER, "openstack port delete s2", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "import_id", "trigger", "problem", "note"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decision_table(observed, import_id, trigger, problem, note) -> None:
    """Each row, for a resource an import keeps as it is (a port): the id imported, the
    replacement trigger, and the refusal or note's words."""
    adoption = decide(PORT, observed, STACK)
    assert adoption.import_id == import_id
    if problem is None:
        assert adoption.problem is None, adoption.problem
        assert adoption.trigger == trigger
    else:
        assert adoption.problem is not None and problem in adoption.problem
        assert "Nothing was created or changed" in adoption.problem
    if note is not None:
        assert any(note in line for line in adoption.notes), adoption.notes


def test_never_imports_over_what_the_state_holds() -> None:
    """Whatever else carries the key, a resource the state holds is never imported over: the
    other is reported as a leftover to delete (an import-replacement would delete the held one)."""
    adoption = decide(PORT, Observed(held("p1"), True, (found("p1"), found("p2"))), STACK)
    assert adoption.import_id is None and adoption.problem is None
    assert adoption.warnings and "openstack port delete p2" in adoption.warnings[0]


SERVER_CASES = [
    ("an interrupted run's server, no volume: deleted, made anew",
     Observed(owned=(found("s2"),)), ("s2",), None),
    ("a server that holds the volume: refused, never deleted",
     Observed(owned=(found("s2"),), holding={"s2": "the volume v1"}),
     (), "openstack server stop s2"),
    ("the state's own, and an orphan without data: the orphan goes",
     Observed(held("s1", managed=SERVER), True, (found("s1"), found("s2"))), ("s2",), None),
    ("the state's lost, an orphan without data: it goes, the server is made again",
     Observed(held("s1", managed=SERVER), False, (found("s2"),)), ("s2",), None),
    ("the state's lost, another holds the volume: refused",
     Observed(held("s1", managed=SERVER), False, (found("s2"),), holding={"s2": "the volume v1"}),
     (), "wait for SHUTOFF"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observed", "discard", "problem"),
    [case[1:] for case in SERVER_CASES],
    ids=[case[0] for case in SERVER_CASES],
)
def test_a_server_is_never_imported(observed, discard, problem) -> None:
    """Data safety: a server the state lacks is deleted only when it holds no volume; one that
    holds it is refused with the clean way out; none is ever imported."""
    adoption = decide(SERVER, observed, STACK)
    assert adoption.import_id is None
    assert adoption.discard == discard
    if problem is None:
        assert adoption.problem is None, adoption.problem
    else:
        assert adoption.problem is not None and problem in adoption.problem
        assert "Nothing was created or changed" in adoption.problem


def test_an_ended_lease_is_replaced_by_the_serving_one_the_state_lacks() -> None:
    """A lease that no longer serves, and one that does with this stack's name: the second is
    handed to the replacement instead of a new reservation."""
    state = StateResource(
        "urn:pulumi:s::p::pulumi-python:dynamic:Resource::lease", LEASE.type, "l1"
    )
    serving = Found("l2", "lease-persist-ab1234", "ACTIVE", OWNER)
    adoption = decide(LEASE, Observed(state, False, (serving,)), STACK)
    assert adoption.import_id == "l2" and adoption.problem is None
    assert "instead of a new one" in adoption.notes[0]


def test_options_carry_import_and_trigger() -> None:
    plan = plan_adoption({"port": (PORT, Observed(owned=(found("p2"),)))}, STACK)
    assert plan.options("port") == {"import_": "p2", "replacement_trigger": INITIAL_TRIGGER}
    assert plan.options("server") == {"replacement_trigger": INITIAL_TRIGGER}
    assert [each.import_id for each in plan.adopted] == ["p2"]
    assert isinstance(plan.adoptions["port"], Adoption)


def test_a_pending_create_is_named_with_the_command_that_clears_it() -> None:
    state = StackState(
        pending=(
            PendingOperation(
                f"urn:pulumi:{STACK}::p::{SERVER.type}::node-server", SERVER.type, "creating"
            ),
        )  # fmt: skip
    )
    notes = pending_create_notes(state, plan_adoption({}, STACK), STACK)
    assert len(notes) == 1 and "node-server" in notes[0]
    assert f"./chi-persist repair --stack {STACK}" in notes[0]
    assert pending_create_notes(StackState(), plan_adoption({}, STACK), STACK) == []
