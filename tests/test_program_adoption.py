"""The program under mocks, against a pretend cloud and state: what it adopts, makes again,
deletes or refuses before any registration. What the engine does with these options is proven
with the real CLI in tests/engine/test_interrupted_up.py and the semester."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.stack_state import StackState, StateResource, StateUnreadable
from tests.support.pretend_cloud import PretendCloud
from tests.support.program import (
    FLOATING_IP,
    PORT,
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    SERVER,
    Evaluation,
    evaluate_program,
)
from tests.support.ssh_keys import stand_in_private_key

STACK = "ab1234"
OWNER = "ab1234/ab1234"
TAG = f"chi-persist-stack={OWNER}"
CONFIG = {"keyPair": "ab1234-key", "allowedCidrs": ["203.0.113.0/24"]}


def evaluate(cloud: PretendCloud, state: StackState | None = None, **kwargs: Any) -> Evaluation:
    return evaluate_program(
        STACK,
        CONFIG,
        secrets={"sshPrivateKey": stand_in_private_key()},
        cloud=cloud,
        state=state,
        **kwargs,
    )


def refused(cloud: PretendCloud, state: StackState | None = None) -> str:
    with pytest.raises(pulumi.RunError) as raised:
        evaluate(cloud, state)
    assert raised.value.registrations == [], "resources were registered before the refusal"
    assert "Traceback" not in str(raised.value)
    return str(raised.value)


def group(**changes: Any) -> dict[str, Any]:
    return {"id": "g1", "name": "persist-ab1234", "tags": [TAG], "description": "", **changes}


def rule(port: int, **changes: Any) -> dict[str, Any]:
    return {
        "id": f"r{port}", "security_group_id": "g1", "direction": "ingress",
        "ethertype": "IPv4", "protocol": "tcp", "port_range_min": port, "port_range_max": port,
        "remote_ip_prefix": "203.0.113.0/24", **changes,
    }  # fmt: skip


def port(**changes: Any) -> dict[str, Any]:
    return {"id": "p1", "name": "node-persist-ab1234", "tags": [TAG], "description": "", **changes}


def server(**changes: Any) -> dict[str, Any]:
    return {
        "id": "s1", "name": "node-persist-ab1234", "status": "ACTIVE",
        "metadata": {"chi-persist-stack": OWNER}, **changes,
    }  # fmt: skip


def held(type_: str, name: str, identifier: str, trigger: Any = "chi-persist") -> StateResource:
    return StateResource(f"urn:pulumi:{STACK}::chi-persist::{type_}::{name}", type_, identifier,
                         replacement_trigger=trigger)  # fmt: skip


def test_a_first_deployment_imports_nothing_and_every_resource_has_a_trigger() -> None:
    """Nothing in the cloud: nothing is imported, and each resource carries the initial
    trigger (null would read as "no trigger" to the engine forever)."""
    evaluation = evaluate(PretendCloud())
    for registration in evaluation.registrations:
        assert not registration.import_id, registration.name
    cloud_resources = [
        *evaluation.of_type(SECURITY_GROUP), *evaluation.of_type(SECURITY_GROUP_RULE),
        evaluation.one(PORT), evaluation.one(FLOATING_IP), evaluation.one(SERVER),
    ]  # fmt: skip
    assert {r.replacement_trigger for r in cloud_resources} == {"chi-persist"}
    assert all("adopting" not in note for note in evaluation.notes)


def test_what_an_interrupted_run_made_is_adopted_by_import() -> None:
    """The group, its rules, the port and the floating IP carry the key and the state holds
    none of them: each is imported with its own id, and each adoption is said in one line."""
    cloud = PretendCloud(
        security_groups=[group()],
        security_group_rules=[rule(port) for port in (22, 8000, 8888, 9000, 9001)],
        ports=[port()],
        floatingips=[
            {
                "id": "f1",
                "floating_ip_address": "129.114.27.10",
                "port_id": "p1",
                "tags": [TAG],
                "description": "",
            }
        ],  # fmt: skip
    )
    evaluation = evaluate(cloud)
    assert evaluation.one(SECURITY_GROUP).import_id == "g1"
    assert sorted(r.import_id for r in evaluation.of_type(SECURITY_GROUP_RULE)) == sorted(
        f"r{port}" for port in (22, 8000, 8888, 9000, 9001)
    )
    assert evaluation.one(PORT).import_id == "p1"
    assert evaluation.one(FLOATING_IP).import_id == "f1"
    assert not evaluation.one(SERVER).import_id
    adopted = [note for note in evaluation.notes if note.startswith("adopting")]
    assert len(adopted) == 8, evaluation.notes


def test_the_owner_key_is_in_every_create_call() -> None:
    """Tags follow a create (a second call of the provider): the descriptions name the owner
    from the create on, the server's metadata and the lease's name carry it too."""
    evaluation = evaluate(PretendCloud())
    suffix = f"(chi-persist-stack={OWNER})"
    assert evaluation.one(SECURITY_GROUP).inputs["description"].endswith(suffix)
    assert evaluation.one(SECURITY_GROUP).inputs["tags"] == [TAG]
    assert evaluation.one(PORT).inputs["description"].endswith(suffix)
    assert evaluation.one(PORT).inputs["tags"] == [TAG]
    assert evaluation.one(FLOATING_IP).inputs["description"].endswith(suffix)
    assert evaluation.one(FLOATING_IP).inputs["tags"] == [TAG]
    for registration in evaluation.of_type(SECURITY_GROUP_RULE):
        assert registration.inputs["description"].endswith(suffix)
        assert registration.ignore_changes == ["description"]
    assert evaluation.one(SERVER).inputs["metadata"]["chi-persist-stack"] == OWNER


def test_a_resource_the_state_holds_is_never_imported_over() -> None:
    """The state holds p1, the cloud holds p1 and p9 with the key: nothing is imported, and
    p9 is reported with the command that deletes it."""
    state = StackState((held(PORT, "node-port", "p1"),))
    evaluation = evaluate(PretendCloud(ports=[port(), port(id="p9")]), state)
    assert not evaluation.one(PORT).import_id
    assert any("openstack port delete p9" in warning for warning in evaluation.warnings)


def test_a_resource_the_cloud_lost_is_made_again_by_its_trigger() -> None:
    """The state's port is gone from the cloud: its replacement trigger changes."""
    state = StackState((held(PORT, "node-port", "p1"),))
    evaluation = evaluate(PretendCloud(), state)
    registration = evaluation.one(PORT)
    assert not registration.import_id
    assert registration.replacement_trigger == "made again: p1 was gone"
    assert any(
        "p1 is in this stack's state but no longer in the cloud" in n for n in evaluation.notes
    )


def test_a_server_without_data_is_deleted_before_anything_is_registered() -> None:
    """An interrupted run's server (no volume attached): deleted, then a new one registered."""
    evaluation = evaluate(PretendCloud(servers=[server()]))
    assert ("DELETE", "/servers/s1") in evaluation.cloud_calls
    assert not evaluation.one(SERVER).import_id
    assert any("deletes it and makes a new server" in note for note in evaluation.notes)


def test_a_preview_deletes_nothing() -> None:
    evaluation = evaluate(PretendCloud(servers=[server()]), preview=True)
    assert ("DELETE", "/servers/s1") not in evaluation.cloud_calls


def test_a_server_holding_the_volume_is_refused_and_left_alone() -> None:
    """Another machine's server runs the platform on the volume: refused, nothing deleted."""
    busy = server(**{"os-extended-volumes:volumes_attached": [{"id": "v1"}]})
    message = refused(PretendCloud(servers=[busy]))
    assert "openstack server stop s1" in message and "openstack server delete s1" in message
    assert "Nothing was created or changed" in message


def test_another_stacks_resource_of_the_same_name_is_refused() -> None:
    """A group named as this stack names its own, with another stack's key: refused, naming it."""
    other = group(tags=["chi-persist-stack=ab1234/spring"], id="g7")
    message = refused(PretendCloud(security_groups=[other]))
    assert "ab1234/spring" in message and "pulumi stack select spring" in message


def test_a_state_that_cannot_be_read_stops_adoption() -> None:
    """Cloud resources with the key and no readable state: refused, naming why."""
    message = refused(PretendCloud(ports=[port()]), StateUnreadable("no `pulumi` command on PATH"))
    assert "could not be read" in message and "no `pulumi` command on PATH" in message


def test_a_state_that_cannot_be_read_is_no_obstacle_to_a_first_deployment() -> None:
    """Nothing of the stack in the cloud: nothing to adopt, so nothing to check it against."""
    evaluation = evaluate(PretendCloud(), StateUnreadable("no `pulumi` command on PATH"))
    assert evaluation.one(SERVER)
