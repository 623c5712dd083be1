"""./chi-persist repair's parts that need no cloud: the stale lock's fix, the empty metadata files,
the pending creates of a state (the whole command runs with the real engine in
tests/engine/test_interrupted_up.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import import_tool

command_line = import_tool("command_line")
repair = import_tool("repair")

LOCKED = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) "
    "to end or delete the lock file with `pulumi cancel`.\n"
    "  file:///home/s/.pulumi/locks/organization/chi-persist/ab1234/x.json?no_tmp_dir=true: "
    "created by student@{host} (pid {pid}) at 2026-12-04T16:16:13Z"
)


def ended_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


@pytest.mark.parametrize(
    ("host", "alive", "expected"),
    [
        (socket.gethostname(), False, "no longer runs (an interrupted `pulumi up`): clear it with "
                                      "`pulumi cancel --stack ab1234 --yes`"),
        (socket.gethostname(), True, "is still running on this stack here: let it finish"),
        ("other-laptop", False, "held by a pulumi on other-laptop"),
    ],
    ids=["stale-here", "running-here", "elsewhere"],
)  # fmt: skip
def test_a_lock_is_named_with_the_one_command_that_clears_it(host, alive, expected) -> None:
    """Only a lock whose process is gone here is called stale; the fix names the stack."""
    pid = os.getpid() if alive else ended_pid()
    fix = command_line.lock_fix(LOCKED.format(host=host, pid=pid), "ab1234")
    assert fix is not None and expected in fix, fix


def test_a_failed_call_carries_the_lock_fix() -> None:
    failure = command_line.PulumiFailed(
        ["up", "--stack", "ab1234"], 255, LOCKED.format(host=socket.gethostname(), pid=ended_pid())
    )
    assert any("pulumi cancel --stack ab1234 --yes" in line for line in failure.lines)
    plain = command_line.PulumiFailed(["up", "--stack", "ab1234"], 255, "error: nope")
    assert not any("cancel" in line for line in plain.lines)


def test_only_empty_metadata_files_of_a_local_state_are_found(tmp_path: Path) -> None:
    """A file:// state's empty *.attrs (a killed write) are found; others are left alone."""
    stacks = tmp_path / ".pulumi" / "stacks" / "chi-persist"
    stacks.mkdir(parents=True)
    (stacks / "ab1234.json").write_text("{}")
    (stacks / "ab1234.json.attrs").write_text("")
    (stacks / "cd5678.json.attrs").write_text('{"user.cache_control":""}')
    found = repair.empty_sidecars(f"file://{tmp_path}?metadata=skip")
    assert found == [stacks / "ab1234.json.attrs"]
    assert repair.empty_sidecars("https://api.pulumi.com") == []


def test_pending_creates_and_held_resources_are_read_from_an_export() -> None:
    urn = (
        "urn:pulumi:ab1234::chi-persist::chi-persist:index:Node"
        "$openstack:compute/instance:Instance::node-server"
    )
    export = {
        "deployment": {
            "resources": [{"urn": urn, "id": "s1"}, {"urn": "urn:x", "id": ""}],
            "pending_operations": [
                {"type": "creating", "resource": {"urn": urn}},
                {"type": "deleting", "resource": {"urn": "urn:y"}},
            ],
        }
    }
    assert [each["urn"] for each in repair.pending_creates(export)] == [urn]
    assert repair.held_urns(export) == {urn}
