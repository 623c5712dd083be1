"""tests/engine/timeline.py: steps, the critical path and what waited, from an event log in
the engine's format (sdk/go/common/apitype/events.go)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.timeline import (
    dependencies_of,
    read_events,
    steps_of_preview,
    steps_of_update,
    timeline,
)

PREFIX = "urn:pulumi:ab1234::chi-persist::"
SERVER = PREFIX + "chi-persist:index:Node$openstack:compute/instance:Instance::node-server"
ATTACH = PREFIX + "chi-persist:index:Node$openstack:compute/volumeAttach:VolumeAttach::node-attach"
VOLUME = PREFIX + "openstack:blockstorage/volume:Volume::data"
PREPARE = PREFIX + "command:remote:Command::provisioning-prepare-volume"


def event(sequence: int, stamp: int, kind: str, op: str, urn: str, planning: bool = False):
    kind_ = urn.split("::")[-2]
    provider = "" if kind_.startswith("pulumi:") else PREFIX + "pulumi:providers:x::default"
    body = {"metadata": {"op": op, "urn": urn, "type": kind_, "provider": provider}}
    if kind == "resourcePreEvent":
        body["planning"] = planning
    return {"sequence": sequence, "timestamp": stamp, kind: body}


def write_log(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in events))
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_log(
        tmp_path / "events.jsonl",
        [
            {"sequence": 0, "timestamp": 100, "cancelEvent": {}},
            # The preview's events are not steps.
            event(1, 100, "resourcePreEvent", "create", SERVER, planning=True),
            event(2, 101, "resourcePreEvent", "create", SERVER),
            event(3, 101, "resourcePreEvent", "create", VOLUME),
            event(4, 104, "resOutputsEvent", "create", VOLUME),
            event(5, 105, "resourcePreEvent", "same", PREFIX + "pulumi:pulumi:Stack::x"),
            # The stack (a component) starts and ends with the update: not a step.
            event(5, 101, "resourcePreEvent", "create", PREFIX + "pulumi:pulumi:Stack::x"),
            event(5, 191, "resOutputsEvent", "create", PREFIX + "pulumi:pulumi:Stack::x"),
            event(6, 160, "resOutputsEvent", "create", SERVER),
            event(7, 161, "resourcePreEvent", "create", ATTACH),
            event(8, 170, "resOutputsEvent", "create", ATTACH),
            event(9, 175, "resourcePreEvent", "create", PREPARE),
            event(10, 190, "resOpFailedEvent", "create", PREPARE),
            {"sequence": 11, "timestamp": 191, "summaryEvent": {}},
        ],
    )


def test_steps_are_timed_from_pre_to_outputs_without_preview_same_or_component_steps(
    log: Path,
):
    result = timeline(read_events(log))
    assert [(s.name, s.start - result.started, s.seconds) for s in result.steps] == [
        ("node-server (Instance)", 1, 59),
        ("data (Volume)", 1, 3),
        ("node-attach (VolumeAttach)", 61, 9),
        ("provisioning-prepare-volume (Command)", 75, 15),
    ]
    assert result.seconds == 91 and result.steps[-1].failed


def test_the_critical_path_follows_dependencies_and_counts_the_waits(log: Path):
    export = {
        "deployment": {
            "resources": [
                # The server depends on nothing that ran: the path begins there, although
                # nothing ended before it here either.
                {"urn": SERVER, "dependencies": []},
                {"urn": ATTACH, "dependencies": [SERVER], "propertyDependencies": {"v": [VOLUME]}},
                {"urn": PREPARE, "propertyDependencies": {"triggers": [ATTACH]}},
            ]
        }
    }
    summary = timeline(read_events(log), dependencies_of(export)).summary()
    assert [(item["step"], item["waited"]) for item in summary["critical_path"]] == [
        ("node-server (Instance)", 1),
        ("node-attach (VolumeAttach)", 1),
        ("provisioning-prepare-volume (Command)", 5),
    ]
    assert summary["waited_seconds"] == 7
    assert summary["overlapped"] == ["data (Volume)"]


def test_a_log_without_timed_events_is_refused(tmp_path: Path):
    empty = write_log(tmp_path / "empty.jsonl", [{"sequence": 0}])
    with pytest.raises(ValueError, match="no timed engine events"):
        timeline(read_events(empty))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        read_events(broken)


def test_steps_of_no_length_in_the_same_second_end_the_walk(tmp_path: Path):
    """Two steps that start and end in one second each end "before" the other: the walk
    still ends, with each step at most once."""
    log = write_log(
        tmp_path / "same-second.jsonl",
        [
            event(1, 200, "resourcePreEvent", "update", SERVER),
            event(2, 200, "resOutputsEvent", "update", SERVER),
            event(3, 200, "resourcePreEvent", "update", VOLUME),
            event(4, 200, "resOutputsEvent", "update", VOLUME),
        ],
    )
    path = timeline(read_events(log)).critical_path()
    assert sorted(step.name for step, _ in path) == ["data (Volume)", "node-server (Instance)"]


def test_a_step_with_known_dependencies_that_did_not_run_begins_the_path(tmp_path: Path):
    """Something ended before the server started, but the server does not depend on it."""
    log = write_log(
        tmp_path / "root.jsonl",
        [
            event(1, 10, "resourcePreEvent", "create", VOLUME),
            event(2, 12, "resOutputsEvent", "create", VOLUME),
            event(3, 13, "resourcePreEvent", "create", SERVER),
            event(4, 40, "resOutputsEvent", "create", SERVER),
        ],
    )
    export = {"deployment": {"resources": [{"urn": SERVER, "dependencies": []}]}}
    path = timeline(read_events(log), dependencies_of(export)).critical_path()
    assert [(step.name, waited) for step, waited in path] == [("node-server (Instance)", 3)]
    # Without the state, the volume that ended before it is taken as its predecessor.
    path = timeline(read_events(log)).critical_path()
    assert [step.name for step, _ in path] == ["data (Volume)", "node-server (Instance)"]


def test_the_steps_of_an_update_in_the_engines_order_without_preview_or_no_op_steps():
    """A delete-before-replace as the engine logs it: the replaced ones deleted, the logical
    `replace` marker, the new one created; the preview's events, `same` steps and the
    providers' own steps left out."""
    events = [
        event(1, 100, "resourcePreEvent", "replace", PREPARE, planning=True),
        event(2, 101, "resourcePreEvent", "delete-replaced", PREPARE),
        event(3, 102, "resOutputsEvent", "delete-replaced", PREPARE),
        event(4, 102, "resourcePreEvent", "replace", PREPARE),
        event(5, 102, "resourcePreEvent", "same", VOLUME),
        event(6, 103, "resourcePreEvent", "create-replacement", PREPARE),
        event(7, 104, "resourcePreEvent", "update", SERVER),
        # A provider's own update (its configuration) is not a step on a resource.
        event(8, 105, "resourcePreEvent", "update", PREFIX + "pulumi:providers:openstack::default"),
    ]
    events[6]["resourcePreEvent"]["metadata"].update(
        old={"inputs": {"name": "old"}}, new={"inputs": {"name": "new"}}
    )
    steps = steps_of_update(events)
    assert [str(step) for step in steps] == [
        "delete provisioning-prepare-volume",
        "create provisioning-prepare-volume",
        "update node-server",
    ]
    assert steps[0].type == "command:remote:Command"
    assert steps[-1].type == "openstack:compute/instance:Instance"
    assert (steps[-1].old_inputs, steps[-1].new_inputs) == ({"name": "old"}, {"name": "new"})


def test_the_steps_of_a_preview_in_its_order():
    """`pulumi preview --json --show-replacement-steps`: each step with its old and new
    inputs; `same` and `replace` change nothing."""
    provider = PREFIX + "pulumi:providers:openstack::default::1"
    document = {
        "steps": [
            {"op": "same", "urn": PREFIX + "pulumi:pulumi:Stack::x"},
            {"op": "update", "urn": PREFIX + "pulumi:providers:openstack::default"},
            {"op": "same", "urn": VOLUME, "provider": provider},
            {
                "op": "delete-replaced",
                "urn": SERVER,
                "provider": provider,
                "oldState": {"inputs": {"imageName": "a"}},
            },
            {"op": "replace", "urn": SERVER, "provider": provider},
            {
                "op": "create-replacement",
                "urn": SERVER,
                "provider": provider,
                "newState": {"inputs": {"imageName": "b"}},
            },
        ]
    }
    steps = steps_of_preview(document)
    assert [str(step) for step in steps] == ["delete node-server", "create node-server"]
    assert steps[0].old_inputs == {"imageName": "a"} and steps[1].new_inputs == {"imageName": "b"}
