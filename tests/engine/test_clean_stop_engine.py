"""The clean-stop step's delete under the real engine and command plugin, against the twin's Nova.

The stack holds tests/fixtures/pulumi-state/ab1234.json (brought in with the real `pulumi
stack import`); the real `pulumi destroy --target` of the clean-stop step makes the command
plugin run its delete as the engine runs it: from the directory the engine starts providers
in, with the step's environment (the key, a secret of the state) and the OpenStack
credentials of the shell that runs pulumi. Nothing else is destroyed.

The fixture is a state of the layout before `./chi-persist`: its clean stop's delete is
`python3 scripts/clean-stop ...`, which the engine runs as stored, so that entry point
stays where it is, and such a stack still recycles with the one command.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.support.pulumi_state import name_of, resources, state_fixture
from tests.twin import steps
from tests.twin.harness import Twin

STOP = "provisioning-clean-stop"
FIXTURE_SERVER = "0f6b2d4e-8a1c-4e3b-9d7f-5c2a1b0e9f8d"


def _ssh_port_is_closed() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 22), timeout=2):
            return False
    except OSError:
        return True


pytestmark = pytest.mark.skipif(
    toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())
)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    started = Twin(tmp_path_factory.mktemp("twin") / "state").start()
    yield started
    assert started.stop() == 0, started.log_text()


def machine_with_stack(tmp_path: Path, twin: Twin, server_id: str) -> StudentMachine:
    """A student's machine whose stack ab1234's clean stop is for `server_id`, with the twin's
    credentials in its environment as `export OS_CLOUD=…` leaves them."""
    machine = StudentMachine.create(
        tmp_path,
        extra_env={
            "OS_CLOUD": "twin",
            "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
        },
    )
    state = state_fixture()
    for resource in resources(state):
        if name_of(resource) == STOP:
            for part in ("inputs", "outputs"):
                resource[part]["delete"] = resource[part]["delete"].replace(
                    FIXTURE_SERVER, server_id
                )
    machine.import_state("ab1234", state)
    return machine


def test_the_fixture_is_a_state_of_the_layout_before_the_one_command() -> None:
    (stop,) = [r for r in resources(state_fixture()) if name_of(r) == STOP]
    assert stop["outputs"]["delete"].startswith("python3 scripts/clean-stop --server-id ")


def test_a_stack_made_before_the_one_command_recycles_with_it(tmp_path: Path, twin: Twin) -> None:
    """`./chi-persist recycle` on the old state: Nova no longer has its server, so the clean
    stop is dropped with a warning; the server, attachment and steps go, the rest stays."""
    machine = machine_with_stack(tmp_path, twin, str(uuid.uuid4()))
    result = machine.command("recycle", "--stack", "ab1234", "--yes", timeout=900)
    assert result.returncode == 0, explain(result)
    left = {name_of(r) for r in resources(machine.stack_export("ab1234"))}
    assert "node-server" not in left and STOP not in left
    assert {"data-volume", "node-port", "node-floating-ip"} <= left, left


def stop_urn(machine: StudentMachine) -> str:
    (urn,) = [r["urn"] for r in resources(machine.stack_export("ab1234")) if name_of(r) == STOP]
    return urn


def destroy_the_stop(machine: StudentMachine) -> tuple[object, set[str]]:
    urn = stop_urn(machine)
    result = machine.pulumi(
        "destroy", "--stack", "ab1234", "--target", urn, "--yes", "--non-interactive",
        timeout=600,
    )  # fmt: skip
    left = {name_of(r) for r in resources(machine.stack_export("ab1234"))}
    return result, left


def test_the_stop_of_a_server_nova_no_longer_has_is_skipped_and_the_destroy_goes_on(
    tmp_path: Path, twin: Twin
) -> None:
    """The lease's end: the server is gone from Nova; the delete warns and succeeds."""
    machine = machine_with_stack(tmp_path, twin, str(uuid.uuid4()))
    result, left = destroy_the_stop(machine)
    assert result.returncode == 0, explain(result)
    output = result.stdout + result.stderr
    assert "no longer exists (Nova: not found)" in output, explain(result)
    assert "PostgreSQL recovers from its journal" in output
    assert STOP not in left
    assert {"node-server", "provisioning-start-stack", "data-volume"} <= left
    assert "made up for the tests: not a key" not in output


@pytest.mark.skipif(not _ssh_port_is_closed(), reason="something listens on 127.0.0.1:22 here")
def test_the_stop_of_a_server_nova_still_has_fails_when_ssh_cannot_reach_it(
    tmp_path: Path, twin: Twin
) -> None:
    """The server exists and nothing answers on its port 22: the destroy fails with the cause,
    and the step stays in the state, so the volume is not detached behind its back."""
    api = twin.api()
    group = steps.security_group(api, "persist-engine", ports=(22,))
    port = steps.port(api, "node-persist-engine", [group["id"]])
    server = steps.boot(api, "node-persist-engine", port["id"])["id"]
    machine = machine_with_stack(tmp_path, twin, server)
    result, left = destroy_the_stop(machine)
    assert result.returncode != 0, explain(result)
    output = result.stdout + result.stderr
    assert f"server {server} exists (status ACTIVE)" in output, explain(result)
    assert "the clean stop could not run over SSH on cc@127.0.0.1:22" in output
    assert STOP in left
    assert "made up for the tests: not a key" not in output
