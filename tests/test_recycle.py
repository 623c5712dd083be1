"""scripts/recycle with the stand-in pulumi: the server goes; volume, port and floating IP stay."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ssh_keys import stand_in_private_key
from tests.support.stand_in_pulumi import (
    StandInPulumi,
    import_tool,
    of_type,
    resources,
    ssh_port_is_closed,
    state_fixture,
)

VOLUME = "openstack:blockstorage/volume:Volume"
PORT = "openstack:networking/port:Port"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
SERVER = "openstack:compute/instance:Instance"
STOP_STEP = (
    "urn:pulumi:ab1234::chi-persist::chi-persist:index:Provisioning"
    "$command:remote:Command::provisioning-start-stack"
)
SERVER_URN = (
    "urn:pulumi:ab1234::chi-persist::chi-persist:index:Node"
    "$openstack:compute/instance:Instance::node-server"
)
EXPORT = ["stack", "export", "--stack", "ab1234", "--non-interactive"]
DESTROY = [
    "destroy", "--stack", "ab1234", "--target", SERVER_URN, "--target-dependents", "--yes",
    "--non-interactive",
]  # fmt: skip
FORGET_STOP = ["state", "delete", "--stack", "ab1234", STOP_STEP, "--yes", "--non-interactive"]
# What a recycle removes from the fixture's state, by the program's resource names.
RECYCLED = {
    "node-server",
    "node-volume-attachment",
    "provisioning-wait-for-ssh",
    "provisioning-wait-for-boot",
    "provisioning-copy-scripts",
    "provisioning-copy-docker",
    "provisioning-prepare-volume",
    "provisioning-start-stack",
}

needs_closed_ssh_port = pytest.mark.skipif(
    not ssh_port_is_closed(), reason="something listens on 127.0.0.1:22 here"
)


@pytest.fixture
def pulumi(tmp_path: Path) -> StandInPulumi:
    stand_in = StandInPulumi.create(tmp_path)
    stand_in.add_stack("ab1234")
    return stand_in


@pytest.fixture
def server_answers_ssh() -> Iterator[None]:
    """Something accepts connections on 127.0.0.1:22, the fixture's floating IP and SSH port."""
    if os.geteuid() != 0:
        pytest.skip("needs root to listen on port 22")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", 22))
    except OSError as error:
        listener.close()
        pytest.skip(f"cannot listen on 127.0.0.1:22: {error}")
    listener.listen(16)
    try:
        yield
    finally:
        listener.close()


def names(export: dict) -> set[str]:
    return {resource["urn"].rsplit("::", 1)[-1] for resource in resources(export)}


def kept_ids(export: dict) -> dict[str, list[str]]:
    return {kind: [r["id"] for r in of_type(export, kind)] for kind in (VOLUME, PORT, FLOATING_IP)}


def volume_urn(export: dict) -> str:
    return of_type(export, VOLUME)[0]["urn"]


def assert_never_named_the_volume(pulumi: StandInPulumi, export: dict) -> None:
    urn = volume_urn(export)
    for call in pulumi.calls():
        assert not any(urn in argument for argument in call), call


def test_help_says_what_is_kept_and_what_a_missed_clean_stop_means(pulumi):
    """--help explains the volume stays, and what skipping the clean stop costs."""
    result = pulumi.run("recycle", "--help")
    assert result.returncode == 0
    assert "The volume is never a target." in result.stdout
    assert "committed data is safe" in result.stdout
    assert pulumi.calls() == []


def test_reachable_server_is_stopped_cleanly_and_the_data_stays(pulumi, server_answers_ssh):
    """Server answers SSH: one targeted destroy runs the stop; volume, port, IP keep their ids."""
    before = pulumi.export("ab1234")

    result = pulumi.run("recycle", "--stack", "ab1234", "--yes")

    assert result.returncode == 0, result.stderr
    assert pulumi.calls() == [EXPORT, DESTROY, EXPORT]
    after = pulumi.export("ab1234")
    assert names(before) - names(after) == RECYCLED
    assert kept_ids(after) == kept_ids(before)
    assert "the platform will be stopped cleanly" in result.stdout
    assert "warning" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "next: pulumi up --stack ab1234"
    assert_never_named_the_volume(pulumi, before)
    assert {record["cwd"] for record in pulumi.records()} == {
        str(Path(__file__).resolve().parents[1])
    }


def test_dead_agent_socket_is_refused_before_the_clean_stop(pulumi, server_answers_ssh):
    """SSH_AUTH_SOCK where nothing answers would fail the stop's SSH login: refused, unchanged."""
    gone = pulumi.root / "gone" / "agent.sock"
    result = pulumi.run(
        "recycle", "--stack", "ab1234", "--yes", env=dict(pulumi.env, SSH_AUTH_SOCK=str(gone))
    )
    assert result.returncode == 2
    assert f"SSH_AUTH_SOCK={gone}: no ssh agent answers there (no such socket)" in result.stderr
    assert "fix: `unset SSH_AUTH_SOCK`" in result.stderr
    assert pulumi.calls() == [EXPORT]


@needs_closed_ssh_port
def test_unreachable_server_skips_the_clean_stop_with_a_warning(pulumi):
    """Server gone: the stop step leaves the state first, so the destroy cannot get stuck."""
    before = pulumi.export("ab1234")

    result = pulumi.run("recycle", "--stack", "ab1234", "--yes")

    assert result.returncode == 0, result.stderr
    assert pulumi.calls() == [EXPORT, FORGET_STOP, DESTROY, EXPORT]
    after = pulumi.export("ab1234")
    assert names(before) - names(after) == RECYCLED
    assert kept_ids(after) == kept_ids(before)
    assert "warning: the server does not answer on 127.0.0.1:22" in result.stdout
    assert "PostgreSQL will recover from its journal" in result.stdout
    assert "committed data is safe" in result.stdout
    assert_never_named_the_volume(pulumi, before)


@needs_closed_ssh_port
def test_without_skipping_the_stop_the_stand_in_destroy_gets_stuck(pulumi):
    """The stand-in fails a stop step on an unreachable server as Pulumi does, so the test bites."""
    env = dict(pulumi.env)
    result = subprocess.run(
        ["pulumi", *DESTROY], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "dial tcp 127.0.0.1:22" in result.stderr
    assert SERVER_URN in {r["urn"] for r in resources(pulumi.export("ab1234"))}


@pytest.mark.parametrize(
    ("answer", "status", "destroyed", "message"),
    [
        pytest.param("y\n", 0, True, "next: pulumi up --stack ab1234", id="yes"),
        pytest.param("n\n", 2, False, "not confirmed; nothing was changed", id="no"),
        pytest.param("", 2, False, "or pass --yes", id="no-input"),
    ],
)
@needs_closed_ssh_port
def test_confirmation_is_asked_and_only_yes_destroys(pulumi, answer, status, destroyed, message):
    """Without --yes, only an explicit yes destroys; no answer at all is a no, naming --yes."""
    before = pulumi.export("ab1234")
    result = pulumi.run("recycle", "--stack", "ab1234", stdin=answer)
    assert result.returncode == status
    assert message in result.stdout + result.stderr
    assert "Recycle the server of stack ab1234? [y/N]" in result.stdout
    if destroyed:
        assert DESTROY in pulumi.calls()
    else:
        assert pulumi.calls() == [EXPORT]
        assert pulumi.export("ab1234") == before


def test_selected_stack_is_used_when_none_is_given(pulumi, server_answers_ssh):
    """Without --stack, the selected stack (from `pulumi stack ls --json`) is recycled."""
    pulumi.add_stack("ab1234", select=True)
    result = pulumi.run("recycle", "--yes")
    assert result.returncode == 0, result.stderr
    assert pulumi.calls()[0] == ["stack", "ls", "--json", "--non-interactive"]
    assert pulumi.calls()[1:] == [EXPORT, DESTROY, EXPORT]
    assert "using the selected stack ab1234" in result.stdout


def test_no_selected_stack_asks_for_one(pulumi):
    """Without --stack and with no stack selected: exit 2, and how to name one."""
    result = pulumi.run("recycle", "--yes")
    assert result.returncode == 2
    assert "no stack is selected" in result.stderr
    assert "scripts/recycle --stack NETID" in result.stderr


def test_unknown_stack_names_the_fix(pulumi):
    """A stack that does not exist: pulumi's message, then how to list or create stacks."""
    result = pulumi.run("recycle", "--stack", "zz9999", "--yes")
    assert result.returncode == 1
    assert "error: no stack named 'zz9999' found" in result.stderr
    assert "pulumi stack ls" in result.stderr
    assert "scripts/new-stack zz9999 --key-pair NAME" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_stack_name_is_refused_before_pulumi(pulumi):
    """--stack must look like a netID; pulumi is not called otherwise."""
    result = pulumi.run("recycle", "--stack", "AB 12", "--yes")
    assert result.returncode == 2
    assert "--stack 'AB 12'" in result.stderr
    assert pulumi.calls() == []


@pytest.mark.parametrize(
    "state",
    [
        pytest.param({"version": 3, "deployment": {"manifest": {}}}, id="never-deployed"),
        pytest.param(
            {
                "version": 3,
                "deployment": {
                    "resources": [
                        r
                        for r in resources(state_fixture())
                        if r["urn"].rsplit("::", 1)[-1] not in RECYCLED
                    ]
                },
            },
            id="already-recycled",
        ),
    ],
)
def test_stack_without_a_server_has_nothing_to_recycle(pulumi, state):
    """No server in the state: exit 2, nothing destroyed, and `pulumi up` named as the way on."""
    pulumi.add_stack("ab1234", state)
    result = pulumi.run("recycle", "--stack", "ab1234", "--yes")
    assert result.returncode == 2
    assert "nothing to recycle: stack ab1234 has no server named node-persist-*" in result.stderr
    assert "pulumi up --stack ab1234" in result.stderr
    assert pulumi.calls() == [EXPORT]


def test_volume_among_the_servers_dependents_is_refused(pulumi):
    """If destroying the server would take the volume along, nothing is done at all."""
    state = state_fixture()
    for resource in resources(state):
        if resource["type"] == VOLUME:
            resource["dependencies"] = [SERVER_URN]
            resource.pop("protect")
    pulumi.add_stack("ab1234", state)

    result = pulumi.run("recycle", "--stack", "ab1234", "--yes")

    assert result.returncode == 1
    assert "refusing: destroying the server with its dependents would also destroy volume" in (
        result.stderr
    )
    assert pulumi.calls() == [EXPORT]
    assert pulumi.export("ab1234") == state


def test_unset_passphrase_is_refused_before_anything_changes(pulumi):
    """A passphrase-protected stack without PULUMI_CONFIG_PASSPHRASE: exit 2, nothing changed."""
    env = {key: value for key, value in pulumi.env.items() if key != "PULUMI_CONFIG_PASSPHRASE"}
    result = pulumi.run("recycle", "--stack", "ab1234", "--yes", env=env)
    assert result.returncode == 2
    assert "PULUMI_CONFIG_PASSPHRASE is not set" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert pulumi.calls() == [EXPORT]


def test_failed_destroy_shows_pulumi_output_and_how_to_go_on(pulumi, server_answers_ssh):
    """A failing destroy: exit 1, pulumi's own words, and what to run next."""
    pulumi.fail("destroy", "error: 1 error occurred: compute quota service unavailable (HTTP 503)")

    result = pulumi.run("recycle", "--stack", "ab1234", "--yes")

    assert result.returncode == 1
    assert "compute quota service unavailable (HTTP 503)" in result.stdout + result.stderr
    assert "the volume was not a target" in result.stderr
    assert "run `scripts/recycle --stack ab1234` again" in result.stderr
    assert "Traceback" not in result.stderr
    assert pulumi.calls() == [EXPORT, DESTROY]


def test_kept_resource_missing_afterwards_fails_loudly():
    """If the volume is gone after the destroy, recycle says so and warns against `pulumi up`."""
    recycle = import_tool("recycle")
    command_line = import_tool("command_line")
    before = state_fixture()
    plan = recycle.plan_recycle("ab1234", before)
    after = {
        "deployment": {
            "resources": [
                r
                for r in resources(before)
                if r["type"] != VOLUME and r["urn"].rsplit("::", 1)[-1] not in RECYCLED
            ]
        }
    }
    with pytest.raises(command_line.CommandError) as raised:
        recycle.check_after(plan, after)
    text = "\n".join(raised.value.lines)
    assert "volume block-persist-ab1234 (data-volume)" in text
    assert "is NOT in the stack's state any more" in text
    assert "do not run `pulumi up` yet" in text
    assert raised.value.exit_code == 1


def test_plan_for_the_programs_own_resources_keeps_volume_port_and_address():
    """On the resources the program really registers, the plan removes the server and the stop
    step, and keeps the volume, the port and the floating IP."""
    program = pytest.importorskip("tests.support.program")
    recycle = import_tool("recycle")
    evaluation = program.evaluate_program(
        "ab1234",
        {"keyPair": "ab1234-key"},
        secrets={"sshPrivateKey": stand_in_private_key()},
    )
    export = {
        "deployment": {
            "resources": [
                {
                    "urn": registration.urn,
                    "type": registration.type,
                    "id": f"{registration.name}-id" if registration.custom else None,
                    "inputs": registration.inputs,
                    "outputs": registration.inputs,
                    "parent": registration.parent,
                    "dependencies": registration.dependencies,
                    "propertyDependencies": registration.property_dependencies,
                    "protect": registration.protect,
                }
                for registration in evaluation.registrations
            ]
        }
    }

    plan = recycle.plan_recycle("ab1234", export)

    assert plan.server.cloud_name == "node-persist-ab1234"
    assert sorted(resource.type for resource in plan.kept) == sorted([VOLUME, PORT, FLOATING_IP])
    assert [step.name for step in plan.stop_steps] == ["provisioning-start-stack"]
    assert all(resource.type != VOLUME for resource in plan.removed)
    assert recycle.steps_to_forget(plan) == plan.stop_steps


def test_export_refused_for_the_passphrase_names_the_variable(pulumi):
    """If pulumi cannot read the state without the passphrase, the fix names the variable."""
    pulumi.fail(
        "stack export",
        "error: getting secrets manager: passphrase must be set with PULUMI_CONFIG_PASSPHRASE "
        "or PULUMI_CONFIG_PASSPHRASE_FILE environment variables",
    )
    result = pulumi.run("recycle", "--stack", "ab1234", "--yes")
    assert result.returncode == 1
    assert "getting secrets manager: passphrase must be set" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert pulumi.calls() == [EXPORT]
