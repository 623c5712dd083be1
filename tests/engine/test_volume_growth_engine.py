"""Growth that is checked, under the real Pulumi engine, against the twin's Cinder (no VMs).

A program of the data volume (`components.volume.PersistentVolume`) and a local step that
takes its size, as the server's prepare step does, run by the real CLI with the real
openstack plugin (terraform-provider-openstack v3.4.0: extend, wait for the status, read
the volume back). When Cinder finds no backend with room, the provider's update succeeds
at the old size; the program must fail the `up` with Cinder's user message, and the step
that takes the size must not run for a growth that did not happen.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.twin.harness import Twin

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(bool(toolchain_skip_reason()), reason=toolchain_skip_reason() or ""),
]

STACK = "ab1234"
NAME = "block-persist-ab1234"
PROGRAM = textwrap.dedent(
    """\
    import pulumi
    import pulumi_command as command

    from components.volume import PersistentVolume, PersistentVolumeArgs

    size = int(pulumi.Config().get("size") or 2)
    volume = PersistentVolume(
        "data",
        PersistentVolumeArgs(volume_name="block-persist-ab1234", size_gib=size, stack="ab1234"),
    )
    # What the server's prepare step does with the size: here it only says it.
    grow = command.local.Command(
        "grow",
        create=volume.size_gib.apply(lambda gib: f"echo filesystem grown to {gib} GiB"),
        triggers=[volume.size_gib],
    )
    pulumi.export("volume_id", volume.volume_id)
    pulumi.export("size_gib", volume.size_gib)
    pulumi.export("grown", grow.stdout)
    """
)
PROJECT = textwrap.dedent(
    """\
    name: growth-check
    runtime:
      name: python
      options:
        toolchain: pip
        virtualenv: venv
    """
)
NO_ROOM = "extend volume:Could not find any available weighted backend."


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    started = Twin(tmp_path / "twin" / "state").start()
    yield started
    status = started.stop()
    assert status == 0, f"serve exited with {status}:\n{started.log_text()}"


@pytest.fixture
def student(tmp_path: Path, twin: Twin) -> StudentMachine:
    """A project holding only the volume and a step that takes its size, one stack."""
    machine = StudentMachine.create(
        tmp_path,
        {
            "OS_CLOUD": "twin",
            "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
            "NO_PROXY": "127.0.0.1,localhost",
        },
    )
    (machine.project / "Pulumi.yaml").write_text(PROJECT)
    (machine.project / "Pulumi.dev.yaml").unlink()
    (machine.project / "__main__.py").write_text(PROGRAM)
    machine.pulumi("stack", "init", STACK, "--non-interactive", check=True)
    return machine


def up(student: StudentMachine, size: int) -> Any:
    student.pulumi("config", "set", "size", str(size), "--stack", STACK, check=True)
    return student.pulumi("up", "--yes", "--non-interactive", "--stack", STACK, timeout=300)


def cloud_volume(twin: Twin) -> dict[str, Any]:
    (volume,) = [volume for volume in twin.state()["volumes"] if volume["name"] == NAME]
    return volume


def state_of(student: StudentMachine, suffix: str) -> dict[str, Any]:
    """The outputs the stack's state holds for the resource whose URN ends with `suffix`."""
    exported = student.pulumi("stack", "export", "--stack", STACK, check=True)
    resources = json.loads(exported.stdout)["deployment"]["resources"]
    (found,) = [resource for resource in resources if resource["urn"].endswith(suffix)]
    return found.get("outputs", {})


def test_an_extend_with_no_room_fails_the_up_and_nothing_claims_growth(
    student: StudentMachine, twin: Twin
) -> None:
    """2 GiB, then 3 GiB on a backend with no room: the `up` fails with the sizes, Cinder's
    message and the way out; the volume, its state and the step that takes the size all stay
    at 2 GiB. With room again, the same `up` grows it to 3 GiB and the step follows."""
    first = up(student, 2)
    assert first.returncode == 0, explain(first)
    assert student.outputs(STACK)["grown"] == "filesystem grown to 2 GiB"

    twin.configure(extend_no_valid_backend=True)
    refused = up(student, 3)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0, explain(refused)
    assert f"the volume {NAME} is still 2 GiB, not the 3 GiB asked for" in text, explain(refused)
    assert f"KVM@TACC's Cinder says: '{NO_ROOM}'" in text, explain(refused)
    assert "./chi-persist recycle --stack ab1234" in text and "volumeSize" in text, explain(refused)
    assert "Traceback" not in text, explain(refused)
    assert (cloud_volume(twin)["size"], cloud_volume(twin)["status"]) == (2, "available")
    assert state_of(student, "::data-volume")["size"] == 2
    assert state_of(student, "::grow")["stdout"] == "filesystem grown to 2 GiB"
    assert "grown to 3" not in text, "something claimed the growth that did not happen"

    twin.configure(extend_no_valid_backend=False)
    grown = up(student, 3)
    assert grown.returncode == 0, explain(grown)
    outputs = student.outputs(STACK)
    assert (outputs["size_gib"], outputs["grown"]) == (3, "filesystem grown to 3 GiB")
    assert cloud_volume(twin)["size"] == 3
