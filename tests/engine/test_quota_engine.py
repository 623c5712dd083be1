"""The quota check under the real Pulumi engine: the whole program, a student's stack made by
`./chi-persist init`, the real CLI and plugins, against the twin (no VMs: the refusal comes
before any resource, so no server ever boots).

A classmate's server fills the project's instance quota; the student's first `pulumi up`
must end with the quota named, the numbers and the way out, and leave the cloud as it was:
no group, port, floating IP, volume, lease or server of this stack.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.twin import steps
from tests.twin.harness import Twin

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(bool(toolchain_skip_reason()), reason=toolchain_skip_reason() or ""),
]

NETID = "ab1234"
KEY_PAIR = "ab1234-key"


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    """A project with a quota of one instance, which a classmate's server already uses."""
    started = Twin(tmp_path / "twin" / "state", settings={"quota_instances": 1}).start()
    api = started.api()
    group = steps.security_group(api, "persist-cd5678")
    port = steps.port(api, "node-persist-cd5678", [group["id"]])
    steps.boot(api, "node-persist-cd5678", port["id"])
    yield started
    status = started.stop()
    assert status == 0, f"serve exited with {status}:\n{started.log_text()}"


@pytest.fixture
def student(tmp_path: Path, twin: Twin) -> StudentMachine:
    machine = StudentMachine.create(
        tmp_path,
        {
            "OS_CLOUD": "twin",
            "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
            "NO_PROXY": "127.0.0.1,localhost",
        },
    )
    key = machine.home / ".ssh" / "id_rsa_chameleon"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", NETID, "-f", str(key)], check=True
    )
    twin.add_keypair(KEY_PAIR, Path(f"{key}.pub").read_text().strip())
    made = machine.command("init", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    return machine


def cloud_names(twin: Twin) -> dict[str, Any]:
    state = twin.state()
    return {
        "servers": sorted(server["name"] for server in state["servers"]),
        "groups": sorted(group["name"] for group in state["security_groups"]),
        "ports": sorted(port["name"] for port in state["ports"]),
        "floatingips": len(state["floatingips"]),
        "volumes": sorted(volume["name"] for volume in state["volumes"]),
        "leases": sorted(lease["name"] for lease in state["leases"]),
    }


def test_an_up_over_the_instance_quota_fails_with_its_fix_and_makes_nothing(
    student: StudentMachine, twin: Twin
) -> None:
    """The classmate's server fills the quota of one: `pulumi up` names Nova's instance quota,
    1 of 1 in use, the ways out, and makes nothing in the cloud or in the stack's state."""
    before = cloud_names(twin)
    result = student.pulumi("up", "--yes", "--non-interactive", "--stack", NETID, timeout=600)
    text = result.stdout + result.stderr
    assert result.returncode != 0, explain(result)
    assert "pulumi up would go over the quotas of the Chameleon project" in text, explain(result)
    assert (
        "Nova instances (servers): 1 of 1 in use, and this stack needs 1 more (0 left)" in text
    ), explain(result)
    assert "fewer servers at once" in text and "--end-lease" in text, explain(result)
    assert "ask the instructor" in text, explain(result)
    assert "Traceback" not in text, explain(result)
    assert cloud_names(twin) == before
    exported = student.pulumi("stack", "export", "--stack", NETID, check=True).stdout
    assert "openstack:" not in exported and "command:" not in exported, exported
    # The same stack, once the classmate's server has gone with its lease, goes past the
    # check (and on to the lease and the server, which are not this test's business).
    twin.configure(quota_instances=2)
    preview = student.pulumi("preview", "--non-interactive", "--stack", NETID, timeout=600)
    assert "would go over the quotas" not in preview.stdout + preview.stderr, explain(preview)
