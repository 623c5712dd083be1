"""./chi-persist recycle on the real Pulumi CLI and the stand-in cloud: the server goes; volume,
port and floating IP stay.

The stack's state is tests/fixtures/pulumi-state/ab1234.json, brought in with the real
`pulumi stack import`; its server (and, where a test ends it, its lease) is one the twin runs
(`--machines null`: no VMs). Every pulumi command recycle runs is the real CLI's, its targeted
`pulumi destroy` the real engine's, with the openstack and command plugins and the lease's own
provider, on the twin: what the state names and the twin does not hold (the volume's
attachment) answers 404, which the providers take as gone. A server that answers SSH is an
OpenSSH sshd of the test's own on 127.0.0.1:22 (the fixture's floating IP), where the clean
stop's remote part runs. tests/support/bin/pulumi records each call recycle makes and passes it
to the real CLI. A cloud's error is a fault of the twin; the one failure the real CLI does not
make here (an older CLI's refusal to export without the passphrase) is the stand-in's, and says
so where it is used.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.workspace import RECORDING_BIN, StudentMachine, toolchain_skip_reason
from tests.support.loopback_sshd import loopback_sshd, sshd_skip_reason
from tests.support.pulumi_state import name_of, of_type, resources, secret, state_fixture
from tests.support.ssh_keys import stand_in_private_key
from tests.support.tools import import_tool
from tests.twin import steps
from tests.twin.harness import Twin

VOLUME = "openstack:blockstorage/volume:Volume"
PORT = "openstack:networking/port:Port"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
SERVER = "openstack:compute/instance:Instance"
STOP_STEP = (
    "urn:pulumi:ab1234::chi-persist::chi-persist:index:Provisioning"
    "$command:local:Command::provisioning-clean-stop"
)
SERVER_URN = (
    "urn:pulumi:ab1234::chi-persist::chi-persist:index:Node"
    "$openstack:compute/instance:Instance::node-server"
)
LIST = ["stack", "ls", "--json", "--non-interactive"]
EXPORT = ["stack", "export", "--stack", "ab1234", "--non-interactive"]
DESTROY = [
    "destroy", "--stack", "ab1234", "--target", SERVER_URN, "--target-dependents", "--yes",
    "--non-interactive",
]  # fmt: skip
FORGET_STOP = ["state", "delete", "--stack", "ab1234", STOP_STEP, "--yes", "--non-interactive"]
LEASE = "pulumi-python:dynamic:Resource"
LEASE_URN = "urn:pulumi:ab1234::chi-persist::pulumi-python:dynamic:Resource::lease"
LEASE_ID = "8e3f1a2b-4c5d-4e6f-9a0b-1c2d3e4f5a6b"
RESERVATION_ID = "2d4f6a8c-0e1b-4d3f-8a5c-7e9b1d3f5a70"
END_LEASE = ["destroy", "--stack", "ab1234", "--target", LEASE_URN, "--yes", "--non-interactive"]
# The remote part of the fixture's clean stop, run over SSH on the server.
RELEASE_VOLUME = "sudo bash /home/cc/chi-persist/scripts/remote/release-volume.sh"
RELEASE_ARGUMENTS = (
    "--mount-point /mnt/block --compose-file /home/cc/chi-persist/docker/docker-compose.yaml"
)
# What a recycle removes from the fixture's state, by the program's resource names.
RECYCLED = {
    "node-server",
    "node-volume-attachment",
    "provisioning-wait-for-ssh",
    "provisioning-host-key",
    "provisioning-wait-for-boot",
    "provisioning-copy-scripts",
    "provisioning-copy-docker",
    "provisioning-prepare-volume",
    "provisioning-start-stack",
    "provisioning-lease-stop",
    "provisioning-clean-stop",
}
# What the twin's services answer when a test makes them fail: Nova's compute fault, and
# Blazar's policy refusal (blazar/exceptions.py PolicyNotAuthorized, for the delete's rule
# blazar:leases:delete in blazar/policies/leases.py).
COMPUTE_UNAVAILABLE = "compute quota service unavailable"
LEASE_DELETE_REFUSED = "Policy doesn't allow blazar:leases:delete to be performed"

needs_cli = pytest.mark.skipif(
    toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())
)


def ssh_port_is_closed() -> bool:
    """Whether a connection to 127.0.0.1:22 (the fixture's floating IP) is refused here."""
    try:
        with socket.create_connection(("127.0.0.1", 22), timeout=2):
            return False
    except OSError:
        return True


needs_closed_ssh_port = pytest.mark.skipif(
    not ssh_port_is_closed(), reason="something listens on 127.0.0.1:22 here"
)


@pytest.fixture(scope="session")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    """The stand-in KVM@TACC: its Nova runs the state's server, and the real engine's destroy
    deletes there. Each test boots a server of its own and some make a lease: no quota, and
    room for every lease."""
    settings = {"lease_capacity": 40, "quota_instances": -1, "quota_cores": -1, "quota_ram": -1}
    started = Twin(tmp_path_factory.mktemp("recycle-twin") / "state", settings=settings).start()
    yield started
    assert started.stop() == 0, started.log_text()


def running_server(twin: Twin) -> str:
    """A new ACTIVE server in the twin's Nova; its id."""
    api = twin.api()
    netid = uuid.uuid4().hex[:6]
    port = steps.port(api, f"node-persist-{netid}", [])
    return steps.boot(api, f"node-persist-{netid}", port["id"])["id"]


def active_lease(twin: Twin) -> str:
    """A new ACTIVE lease of one m1.large in the twin's Blazar; its id."""
    api = twin.api()
    name = f"lease-persist-{uuid.uuid4().hex[:6]}"
    return steps.lease(api, name, steps.flavor_id(api, "m1.large"))["id"]


def lease_in_twin(twin: Twin, lease_id: str) -> dict | None:
    """The lease as the twin's Blazar shows it, or None once it is gone."""
    api = twin.api()
    answer = api.get(f"{api.reservation}/leases/{lease_id}")
    return None if answer.status_code == 404 else answer.json()["lease"]


def with_server(state: dict, server_id: str) -> dict:
    """The state with its server's id (everywhere it appears) replaced by `server_id`."""
    (server,) = of_type(state, SERVER)
    return json.loads(json.dumps(state).replace(server["id"], server_id))


def with_lease(state: dict, lease_id: str) -> dict:
    """The state with its lease's id (everywhere it appears) replaced by `lease_id`."""
    return json.loads(json.dumps(state).replace(LEASE_ID, lease_id))


@pytest.fixture(scope="session")
def deployed(tmp_path_factory: pytest.TempPathFactory, twin: Twin) -> StudentMachine:
    """A machine whose stack ab1234 holds the fixture's state, its server running in the
    twin's Nova, and whose shell holds the twin's credentials; tests change only clones."""
    machine = StudentMachine.create(
        tmp_path_factory.mktemp("recycle-deployed"),
        {
            "OS_CLOUD": "twin",
            "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
            "NO_PROXY": "127.0.0.1,localhost",
        },
    )
    machine.import_state("ab1234", with_server(state_fixture(), running_server(twin)))
    return machine


@pytest.fixture(scope="session")
def deployed_state(deployed: StudentMachine) -> dict:
    """The deployed stack's state as `pulumi stack export` prints it."""
    return deployed.stack_export("ab1234")


@pytest.fixture
def machine(deployed: StudentMachine, twin: Twin, tmp_path: Path) -> StudentMachine:
    """A clone of the deployed machine, its server one of its own that the twin runs (the real
    destroy deletes it), its pulumi calls recorded; no stack selected."""
    clone = deployed.clone(tmp_path)
    clone.import_state("ab1234", with_server(state_fixture(), running_server(twin)))
    clone.record_pulumi_calls()
    return clone


@pytest.fixture
def gone(machine: StudentMachine) -> StudentMachine:
    """The machine's stack, its server one Nova no longer has (a lease's end, a delete)."""
    machine.import_state("ab1234", with_server(machine.stack_export("ab1234"), str(uuid.uuid4())))
    return machine


@pytest.fixture
def own_lease(machine: StudentMachine, twin: Twin) -> str:
    """The machine's stack, its lease one the twin's Blazar holds (ACTIVE); the lease's id."""
    lease_id = active_lease(twin)
    machine.import_state("ab1234", with_lease(machine.stack_export("ab1234"), lease_id))
    return lease_id


@dataclass
class ReachableServer:
    """The server's SSH: an sshd on 127.0.0.1:22 that lets the stack's key in, where the clean
    stop's remote part, release-volume.sh, is a script that records what it was asked."""

    released: Path

    def releases(self) -> list[str]:
        """The arguments of each run of the remote part, oldest first."""
        return self.released.read_text().splitlines() if self.released.exists() else []


@pytest.fixture
def server_answers_ssh(machine: StudentMachine, tmp_path: Path) -> Iterator[ReachableServer]:
    """The machine's server answers SSH on 127.0.0.1:22, the fixture's floating IP and port:
    its clean stop logs in there with the stack's own key (a real one, a secret of the state,
    as the program keeps it) and runs its remote part, which records its arguments."""
    reason = sshd_skip_reason()
    if reason:
        pytest.skip(reason)
    if not ssh_port_is_closed():
        pytest.skip("something listens on 127.0.0.1:22 here: the server's address is taken")
    key = tmp_path / "stack-key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ab1234", "-f", str(key)],
        check=True,
        capture_output=True,
    )
    released = tmp_path / "released"
    release_volume = tmp_path / "release-volume.sh"
    release_volume.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {released}\n")
    with loopback_sshd(tmp_path / "sshd", port=22) as sshd:
        sshd.authorize(Path(f"{key}.pub"))
        (server,) = of_type(machine.stack_export("ab1234"), SERVER)
        state = with_server(state_fixture(), server["id"])
        # The key the stack pinned from the server's console is this sshd's own: the clean
        # stop accepts no other.
        (pinned,) = [r for r in resources(state) if name_of(r) == "provisioning-host-key"]
        fixture_key = pinned["outputs"]["stdout"].strip()
        state = json.loads(json.dumps(state).replace(fixture_key, sshd.host_key))
        (stop,) = [r for r in resources(state) if r["urn"] == STOP_STEP]
        for part in ("inputs", "outputs"):
            delete = stop[part]["delete"]
            assert "--user cc " in delete and RELEASE_VOLUME in delete, delete
            delete = delete.replace("--user cc ", f"--user {sshd.user} ")
            stop[part]["delete"] = delete.replace(RELEASE_VOLUME, f"sh {release_volume}")
            stop[part]["environment"] = secret({"CHI_PERSIST_SSH_PRIVATE_KEY": key.read_text()})
        machine.import_state("ab1234", state)
        yield ReachableServer(released)


def recycle(machine: StudentMachine, *arguments: str, **options) -> subprocess.CompletedProcess:
    """./chi-persist recycle as a student runs it, from a directory outside the project."""
    return machine.command("recycle", *arguments, cwd=machine.workdir, **options)


def names(export: dict) -> set[str]:
    return {name_of(resource) for resource in resources(export)}


def kept_ids(export: dict) -> dict[str, list[str]]:
    return {kind: [r["id"] for r in of_type(export, kind)] for kind in (VOLUME, PORT, FLOATING_IP)}


def without_lease(state: dict, flavor: dict) -> dict:
    """`state` as a stack that made no lease: the server boots `flavor` (flavorId or
    flavorName) and depends on nothing but its port."""
    state["deployment"]["resources"] = [r for r in resources(state) if r["type"] != LEASE]
    server = of_type(state, SERVER)[0]
    for values in (server["inputs"], server["outputs"]):
        values.pop("flavorId", None)
        values.update(flavor)
    server["dependencies"].remove(LEASE_URN)
    server["propertyDependencies"].pop("flavorId")
    # The lease's stop timer took the lease's end; a reservation's end comes from Blazar.
    for resource in resources(state):
        if LEASE_URN in resource.get("dependencies", []):
            resource["dependencies"].remove(LEASE_URN)
        for key, urns in (resource.get("propertyDependencies") or {}).items():
            resource["propertyDependencies"][key] = [urn for urn in urns if urn != LEASE_URN]
    return state


def state_with_own_reservation() -> dict:
    """A stack whose student set `reservation`: no lease; the server boots that flavor."""
    return without_lease(state_fixture(), {"flavorId": RESERVATION_ID})


def state_before_leases() -> dict:
    """A stack deployed before the program made leases: no lease, the server boots a flavor
    by name."""
    return without_lease(state_fixture(), {"flavorName": "m1.large"})


def assert_never_named_the_volume(machine: StudentMachine, export: dict) -> None:
    urn = of_type(export, VOLUME)[0]["urn"]
    for call in machine.calls():
        assert not any(urn in argument for argument in call), call


def assert_volume_kept(before: dict, after: dict) -> None:
    """Volume, port and floating IP: same ids; the volume still protected, as the CLI holds it."""
    assert kept_ids(after) == kept_ids(before)
    assert [volume.get("protect") for volume in of_type(after, VOLUME)] == [True]


def test_help_says_what_is_kept_and_what_a_missed_clean_stop_means(tmp_path):
    """--help explains the volume stays, and what skipping the clean stop costs."""
    machine = StudentMachine.create(tmp_path)
    machine.record_pulumi_calls()
    result = recycle(machine, "--help")
    assert result.returncode == 0
    assert "The volume is never a target." in result.stdout
    assert "committed data is safe" in result.stdout
    assert machine.calls() == []


def test_the_fixture_state_is_shaped_like_the_programs():
    """tests/fixtures/pulumi-state/ab1234.json holds what the program registers: the same
    resources by type and name, the same dependencies, protect and delete-before-replace."""
    program = pytest.importorskip("tests.support.program")
    evaluation = program.evaluate_program(
        "ab1234", {"keyPair": "ab1234-key"}, secrets={"sshPrivateKey": stand_in_private_key()}
    )
    # Under mocks a component's URN names its parent stack's type, which the engine leaves
    # out (pkg/resource/deploy/source_eval.go): compare by name.
    name_by_urn = {registration.urn: registration.name for registration in evaluation.registrations}

    def shape_of_registration(registration) -> tuple:
        depends = {name_by_urn[urn] for urn in evaluation.depends_on(registration)}
        return (depends, registration.protect, registration.delete_before_replace)

    fixture = state_fixture()
    fixture_names = {resource["urn"]: name_of(resource) for resource in resources(fixture)}

    def shape_of_state(resource: dict) -> tuple:
        urns = set(resource.get("dependencies") or [])
        for property_urns in (resource.get("propertyDependencies") or {}).values():
            urns.update(property_urns)
        depends = {fixture_names[urn] for urn in urns}
        return (depends, bool(resource.get("protect")), bool(resource.get("deleteBeforeReplace")))

    registered = {
        (registration.type, registration.name): shape_of_registration(registration)
        for registration in evaluation.registrations
        if registration.custom
    }
    in_state = {
        (resource["type"], name_of(resource)): shape_of_state(resource)
        for resource in resources(fixture)
        if resource["custom"] and not resource["type"].startswith("pulumi:providers:")
    }
    assert in_state == registered


@needs_cli
def test_the_imported_state_holds_the_secrets_encrypted(deployed_state):
    """The real CLI encrypted the fixture's plaintext secrets with the stack's passphrase: the
    state recycle reads is shaped as a deployed stack's, with no secret in the clear."""
    text = json.dumps(deployed_state)
    assert deployed_state["deployment"]["secrets_providers"]["type"] == "passphrase"
    assert '"plaintext"' not in text
    assert text.count('"ciphertext"') >= 10
    assert "made up for the tests: not a key" not in text
    assert "fixture-minio-password" not in text


@needs_cli
def test_reachable_server_is_stopped_cleanly_and_the_data_stays(machine, server_answers_ssh, twin):
    """Server answers SSH: one targeted destroy runs the stop; volume, port, IP keep their ids."""
    before = machine.stack_export("ab1234")
    (server,) = of_type(before, SERVER)

    result = recycle(machine, "--stack", "ab1234", "--yes")

    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, DESTROY, EXPORT]
    # The engine ran the clean stop on the server, once, with the state's arguments, and
    # deleted the server in Nova.
    assert server_answers_ssh.releases() == [RELEASE_ARGUMENTS]
    assert steps.status(twin.api(), server["id"]) is None
    after = machine.stack_export("ab1234")
    assert names(before) - names(after) == RECYCLED
    assert names(after) <= names(before)
    assert_volume_kept(before, after)
    assert "the platform will be stopped cleanly" in result.stdout
    assert "warning" not in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "next: pulumi up --stack ab1234"
    assert_never_named_the_volume(machine, before)
    assert {record["cwd"] for record in machine.records()} == {str(machine.project)}


def with_stop_login(state: dict, login: str) -> dict:
    """The state with its clean stop logging in by `login` (key or agent)."""
    (stop,) = [r for r in resources(state) if r["urn"] == STOP_STEP]
    for part in ("inputs", "outputs"):
        stop[part]["delete"] = stop[part]["delete"].replace("--login key", f"--login {login}")
        if login == "agent":
            stop[part].pop("environment", None)
    return state


@needs_cli
def test_dead_agent_socket_is_refused_before_a_clean_stop_through_the_agent(
    machine, server_answers_ssh
):
    """The stop logs in through the agent, and SSH_AUTH_SOCK answers nothing: refused, unchanged."""
    machine.import_state("ab1234", with_stop_login(machine.stack_export("ab1234"), "agent"))
    gone = machine.root / "gone" / "agent.sock"
    result = recycle(
        machine, "--stack", "ab1234", "--yes", env=dict(machine.env, SSH_AUTH_SOCK=str(gone))
    )
    assert result.returncode == 2
    assert f"SSH_AUTH_SOCK={gone}: no ssh agent answers there (no such socket)" in result.stderr
    assert 'fix: start an agent in this shell: eval "$(ssh-agent)"' in result.stderr
    assert machine.calls() == [EXPORT]
    assert server_answers_ssh.releases() == []


@needs_cli
def test_a_dead_agent_does_not_stop_a_clean_stop_with_the_key(machine, server_answers_ssh):
    """The stop logs in with the stack's key alone (scripts/clean-stop does not dial the agent):
    a stale SSH_AUTH_SOCK changes nothing."""
    before = machine.stack_export("ab1234")
    gone = machine.root / "gone" / "agent.sock"
    result = recycle(
        machine, "--stack", "ab1234", "--yes", env=dict(machine.env, SSH_AUTH_SOCK=str(gone))
    )
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, DESTROY, EXPORT]
    assert server_answers_ssh.releases() == [RELEASE_ARGUMENTS]
    assert names(before) - names(machine.stack_export("ab1234")) == RECYCLED


@needs_cli
@needs_closed_ssh_port
def test_a_server_nova_no_longer_has_loses_its_clean_stop_with_a_warning(gone):
    """Server gone from Nova: the real `pulumi state delete` forgets the stop step, then the
    destroy."""
    machine = gone
    before = machine.stack_export("ab1234")

    result = recycle(machine, "--stack", "ab1234", "--yes")

    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, FORGET_STOP, DESTROY, EXPORT]
    after = machine.stack_export("ab1234")
    assert names(before) - names(after) == RECYCLED
    assert_volume_kept(before, after)
    assert "warning: Nova no longer has the server" in result.stdout
    assert "PostgreSQL will recover from its journal" in result.stdout
    assert "committed data is safe" in result.stdout
    assert_never_named_the_volume(machine, before)


@needs_cli
@needs_closed_ssh_port
def test_a_running_server_unreachable_from_here_keeps_its_volume(machine):
    """Data safety: Nova says ACTIVE and port 22 does not answer from here (a narrow
    allowedCidrs, a VPN): nothing is destroyed or forgotten, and both ways out are named."""
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", "--yes")
    assert result.returncode == 1
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before
    assert (
        "does not answer on SSH from here" in result.stderr and "Nova says ACTIVE" in result.stderr
    )
    assert "the volume is not detached without its clean stop" in result.stderr
    assert "chi-persist:allowedCidrs" in result.stderr
    assert "./chi-persist recycle --stack ab1234 --stop-through-nova" in result.stderr


@needs_cli
@needs_closed_ssh_port
def test_without_nova_an_unreachable_server_keeps_its_volume(machine):
    """No credentials in the shell: existence unknown is never taken for gone."""
    before = machine.stack_export("ab1234")
    env = {key: value for key, value in machine.env.items() if not key.startswith("OS_")}
    result = recycle(machine, "--stack", "ab1234", "--yes", env=env)
    assert result.returncode == 1
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before
    assert "Nova could not be asked" in result.stderr and "OS_CLOUD" in result.stderr


@needs_cli
@needs_closed_ssh_port
def test_stop_through_nova_shuts_the_server_down_before_the_detach(machine, twin):
    """--stop-through-nova: Nova's os-stop, SHUTOFF, then the stop step is forgotten (the
    shutdown unmounted the volume) and the destroy runs; the volume is kept."""
    before = machine.stack_export("ab1234")
    (server,) = of_type(before, SERVER)
    since = twin.events()[-1]["seq"]
    result = recycle(machine, "--stack", "ab1234", "--yes", "--stop-through-nova")
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, FORGET_STOP, DESTROY, EXPORT]
    assert f"server {server['id']} is shut off" in result.stdout
    events = twin.events(since)
    stops = [
        index for index, event in enumerate(events)
        if event.get("method") == "POST" and event.get("path", "").endswith("/action")
    ]  # fmt: skip
    assert stops, "Nova was never asked to stop the server"
    # The machine was shut down (then SHUTOFF) before the real destroy's detach first asked
    # Nova about the attachment.
    powered_off = [
        index for index, event in enumerate(events)
        if (event.get("kind"), event.get("call"), event.get("outcome")) == ("driver", "stop", "ok")
        and event.get("server_id") == server["id"]
    ]  # fmt: skip
    detach = [
        index for index, event in enumerate(events)
        if "/os-volume_attachments/" in event.get("path", "")
    ]  # fmt: skip
    assert powered_off and detach and stops[0] < powered_off[0] < detach[0], events
    assert steps.status(twin.api(), server["id"]) is None
    assert_volume_kept(before, machine.stack_export("ab1234"))


@needs_cli
@needs_closed_ssh_port
def test_without_skipping_the_stop_the_destroy_gets_stuck(machine, twin):
    """The real destroy fails a stop step on a running server SSH cannot reach, so the tests
    above bite (recycle must forget the stop, or refuse); the state and Nova keep the server."""
    (server,) = of_type(machine.stack_export("ab1234"), SERVER)
    result = machine.pulumi(*DESTROY)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "the clean stop could not run over SSH on cc@127.0.0.1:22" in output
    assert SERVER_URN in {r["urn"] for r in resources(machine.stack_export("ab1234"))}
    assert steps.status(twin.api(), server["id"]) == "ACTIVE"


@pytest.mark.parametrize(
    ("answer", "status", "destroyed", "message"),
    [
        pytest.param("y\n", 0, True, "next: pulumi up --stack ab1234", id="yes"),
        pytest.param("n\n", 2, False, "not confirmed; nothing was changed", id="no"),
        pytest.param("", 2, False, "or pass --yes", id="no-input"),
    ],
)
@needs_cli
@needs_closed_ssh_port
def test_confirmation_is_asked_and_only_yes_destroys(gone, answer, status, destroyed, message):
    """Without --yes, only an explicit yes destroys; no answer at all is a no, naming --yes."""
    machine = gone
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", stdin=answer)
    assert result.returncode == status
    assert message in result.stdout + result.stderr
    assert "Recycle the server of stack ab1234? [y/N]" in result.stdout
    if destroyed:
        assert DESTROY in machine.calls()
        assert SERVER_URN not in {r["urn"] for r in resources(machine.stack_export("ab1234"))}
    else:
        assert machine.calls() == [EXPORT]
        assert machine.stack_export("ab1234") == before


@needs_cli
def test_selected_stack_is_used_when_none_is_given(machine, server_answers_ssh):
    """Without --stack, the stack `pulumi stack select` chose is recycled."""
    machine.pulumi("stack", "select", "ab1234", "--non-interactive", check=True)
    result = recycle(machine, "--yes")
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [LIST, EXPORT, DESTROY, EXPORT]
    assert "using the selected stack ab1234" in result.stdout


@needs_cli
def test_no_selected_stack_asks_for_one(machine):
    """Without --stack and with no stack selected: exit 2, and how to name one."""
    result = recycle(machine, "--yes")
    assert result.returncode == 2
    assert "no stack is selected" in result.stderr
    assert "./chi-persist recycle --stack NETID" in result.stderr
    assert machine.calls() == [LIST]


@needs_cli
def test_unknown_stack_names_the_fix(machine):
    """A stack that does not exist: pulumi's message, then how to list or create stacks."""
    result = recycle(machine, "--stack", "zz9999", "--yes")
    assert result.returncode == 1
    assert "error: no stack named 'zz9999' found" in result.stderr
    assert "pulumi stack ls" in result.stderr
    assert "./chi-persist init zz9999 --key-pair NAME" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_stack_name_is_refused_before_pulumi(tmp_path):
    """--stack must look like a netID; pulumi is not called otherwise."""
    machine = StudentMachine.create(tmp_path)
    machine.record_pulumi_calls()
    result = recycle(machine, "--stack", "AB 12", "--yes")
    assert result.returncode == 2
    assert "--stack 'AB 12'" in result.stderr
    assert machine.calls() == []


@needs_cli
def test_never_deployed_stack_has_nothing_to_recycle(tmp_path):
    """A stack just made by `pulumi stack init`: exit 2, and `pulumi up` named as the way on."""
    machine = StudentMachine.create(tmp_path)
    machine.pulumi("stack", "init", "ab1234", "--non-interactive", check=True)
    machine.record_pulumi_calls()
    result = recycle(machine, "--stack", "ab1234", "--yes")
    assert result.returncode == 2
    assert "nothing to recycle: stack ab1234 has no server named node-persist-*" in result.stderr
    assert "pulumi up --stack ab1234" in result.stderr
    assert machine.calls() == [EXPORT]


@needs_cli
def test_recycled_stack_has_nothing_to_recycle(machine):
    """A stack whose server is already gone: exit 2, nothing destroyed, `pulumi up` named."""
    state = state_fixture()
    state["deployment"]["resources"] = [
        resource for resource in resources(state) if name_of(resource) not in RECYCLED
    ]
    machine.import_state("ab1234", state)
    result = recycle(machine, "--stack", "ab1234", "--yes")
    assert result.returncode == 2
    assert "nothing to recycle: stack ab1234 has no server named node-persist-*" in result.stderr
    assert machine.calls() == [EXPORT]


@needs_cli
def test_volume_among_the_servers_dependents_is_refused(machine):
    """If destroying the server would take the volume along, nothing is done at all."""
    state = state_fixture()
    listed = resources(state)
    volume = of_type(state, VOLUME)[0]
    volume["dependencies"] = [SERVER_URN]
    volume.pop("protect")
    # A state lists what a resource depends on before it (the CLI refuses it otherwise).
    listed.remove(volume)
    listed.insert(listed.index(of_type(state, SERVER)[0]) + 1, volume)
    machine.import_state("ab1234", state)
    before = machine.stack_export("ab1234")

    result = recycle(machine, "--stack", "ab1234", "--yes")

    assert result.returncode == 1
    assert "refusing: destroying the server with its dependents would also destroy volume" in (
        result.stderr
    )
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before


@needs_cli
def test_unset_passphrase_is_refused_before_anything_changes(machine):
    """A passphrase-protected stack without PULUMI_CONFIG_PASSPHRASE: exit 2, nothing changed.

    The real CLI exports the state without it, so recycle itself must notice."""
    env = {key: value for key, value in machine.env.items() if key != "PULUMI_CONFIG_PASSPHRASE"}
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", "--yes", env=env)
    assert result.returncode == 2
    assert "PULUMI_CONFIG_PASSPHRASE is not set" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before


@needs_cli
@needs_closed_ssh_port
def test_wrong_passphrase_stops_before_anything_is_destroyed(gone):
    """A passphrase other than the stack's: the real `pulumi state delete` refuses to decrypt,
    recycle stops with its words and the fix, and the state is as it was."""
    machine = gone
    before = machine.stack_export("ab1234")
    env = dict(machine.env, PULUMI_CONFIG_PASSPHRASE="not the stack's passphrase")
    result = recycle(machine, "--stack", "ab1234", "--yes", env=env)
    assert result.returncode == 1
    assert "incorrect passphrase" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert "nothing was destroyed yet" in result.stderr
    assert machine.calls() == [EXPORT, FORGET_STOP]
    assert machine.stack_export("ab1234") == before


@needs_cli
def test_failed_destroy_shows_pulumi_output_and_how_to_go_on(machine, server_answers_ssh, twin):
    """A failing destroy: exit 1, pulumi's own words, and what to run next.

    The cloud's error is the twin's: Nova answers the server's delete with a 503."""
    (server,) = of_type(machine.stack_export("ab1234"), SERVER)
    fault = twin.admin(
        "POST",
        "/faults",
        json={
            "method": "DELETE",
            "path": rf"/compute/v2\.1/servers/{server['id']}",
            "status": 503,
            "body": {"computeFault": {"code": 503, "message": COMPUTE_UNAVAILABLE}},
            "count": 20,
        },
    )
    assert fault.status_code == 201, fault.text
    try:
        result = recycle(machine, "--stack", "ab1234", "--yes")
    finally:
        twin.admin("DELETE", "/faults")

    assert result.returncode == 1
    said = result.stdout + result.stderr
    assert "but got 503 instead" in said and COMPUTE_UNAVAILABLE in said, said
    assert "the volume was not a target" in result.stderr
    assert "run `./chi-persist recycle --stack ab1234` again" in result.stderr
    assert "Traceback" not in result.stderr
    assert machine.calls() == [EXPORT, DESTROY]
    assert SERVER_URN in {r["urn"] for r in resources(machine.stack_export("ab1234"))}
    assert steps.status(twin.api(), server["id"]) is not None


@needs_cli
def test_export_refused_for_the_passphrase_names_the_variable(machine):
    """If pulumi cannot read the state without the passphrase, the fix names the variable.

    A stand-in failure (tests/support/bin/pulumi): CLI v3.274.1 exports a state without
    decrypting it, so only an older CLI refuses here."""
    machine.fail_pulumi(
        "stack export",
        "error: getting secrets manager: passphrase must be set with PULUMI_CONFIG_PASSPHRASE "
        "or PULUMI_CONFIG_PASSPHRASE_FILE environment variables",
    )
    result = recycle(machine, "--stack", "ab1234", "--yes")
    assert result.returncode == 1
    assert "getting secrets manager: passphrase must be set" in result.stderr
    assert "fix: export PULUMI_CONFIG_PASSPHRASE=" in result.stderr
    assert machine.calls() == [EXPORT]


def test_the_stand_in_fakes_no_failure_but_the_one_it_names(tmp_path):
    """tests/support/bin/pulumi fakes only the export's passphrase refusal; asked for any
    other failure (a destroy's, say), it refuses and names the way: a fault of the twin."""
    machine = StudentMachine.create(tmp_path)
    machine.record_pulumi_calls()
    machine.fail_pulumi("destroy", "error: a made-up failure")
    result = subprocess.run(
        [str(RECORDING_BIN / "pulumi"), "destroy", "--yes"],
        cwd=machine.project,
        env=machine.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "no stand-in failure for 'destroy'" in result.stderr
    assert "a fault of the stand-in cloud, tests/twin" in result.stderr
    assert "a made-up failure" not in result.stderr


def test_kept_resource_missing_afterwards_fails_loudly():
    """If the volume is gone after the destroy, recycle says so and warns against `pulumi up`."""
    recycle_module = import_tool("recycle")
    recycle_plan = import_tool("recycle_plan")
    command_line = import_tool("command_line")
    before = state_fixture()
    plan = recycle_plan.plan_recycle("ab1234", before)
    after = copy.deepcopy(before)
    after["deployment"]["resources"] = [
        r for r in resources(before) if r["type"] != VOLUME and name_of(r) not in RECYCLED
    ]
    with pytest.raises(command_line.CommandError) as raised:
        recycle_module.check_after(plan, after)
    text = "\n".join(raised.value.lines)
    assert "volume block-persist-ab1234 (data-volume)" in text
    assert "is NOT in the stack's state any more" in text
    assert "do not run `pulumi up` yet" in text
    assert raised.value.exit_code == 1


def program_export(config: dict) -> dict:
    """A state built from what the program registers under mocks for `config`."""
    program = pytest.importorskip("tests.support.program")
    evaluation = program.evaluate_program(
        "ab1234", config, secrets={"sshPrivateKey": stand_in_private_key()}
    )
    return {
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


def test_plan_for_the_programs_own_resources_keeps_volume_port_and_address():
    """On the resources the program really registers, the plan removes the server and the stop
    step, and keeps the volume, the port and the floating IP; --end-lease ends the lease the
    program made, and nothing else besides."""
    recycle_plan = import_tool("recycle_plan")
    export = program_export({"keyPair": "ab1234-key"})

    plan = recycle_plan.plan_recycle("ab1234", export)

    assert plan.server.cloud_name == "node-persist-ab1234"
    assert sorted(resource.type for resource in plan.kept) == sorted([VOLUME, PORT, FLOATING_IP])
    assert [step.name for step in plan.stop_steps] == ["provisioning-clean-stop"]
    assert all(resource.type != VOLUME for resource in plan.removed)
    assert recycle_plan.steps_to_forget(plan) == plan.stop_steps
    assert plan.lease is None
    assert plan.lease_kept.cloud_name == "lease-persist-ab1234"

    ending = recycle_plan.plan_recycle("ab1234", export, end_lease=True)
    assert (ending.lease.type, ending.lease.name) == (LEASE, "lease")
    assert ending.removed == plan.removed
    assert ending.kept == plan.kept


def test_end_lease_of_the_programs_stack_with_a_reservation_is_refused():
    """With `reservation` set the program makes no lease, and --end-lease says so."""
    recycle_plan = import_tool("recycle_plan")
    command_line = import_tool("command_line")
    export = program_export({"keyPair": "ab1234-key", "reservation": RESERVATION_ID})
    with pytest.raises(command_line.CommandError) as raised:
        recycle_plan.plan_recycle("ab1234", export, end_lease=True)
    assert raised.value.exit_code == 2
    assert f"its server boots from the reserved flavor {RESERVATION_ID}" in raised.value.lines[0]


# --- --end-lease ----------------------------------------------------------------------


def test_help_names_end_lease():
    """--help offers --end-lease and says a reservation of the student's own is not ended."""
    parser = import_tool("recycle").build_parser()
    text = " ".join(parser.format_help().split())
    assert "--end-lease" in text
    assert "a reservation you set yourself (chi-persist:reservation) is not the stack's" in text


@needs_cli
def test_end_lease_destroys_the_server_then_the_lease_and_keeps_the_volume(
    machine, server_answers_ssh, own_lease, twin
):
    """--end-lease: the server's destroy (with the clean stop) first, then the lease alone; the
    volume, port and floating IP keep their ids and the volume is never named."""
    before = machine.stack_export("ab1234")

    result = recycle(machine, "--stack", "ab1234", "--end-lease", "--yes")

    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, DESTROY, EXPORT, END_LEASE, EXPORT]
    assert server_answers_ssh.releases() == [RELEASE_ARGUMENTS]
    assert lease_in_twin(twin, own_lease) is None, "Blazar still has the lease"
    after = machine.stack_export("ab1234")
    assert names(before) - names(after) == RECYCLED | {"lease"}
    assert_volume_kept(before, after)
    assert "the platform will be stopped cleanly" in result.stdout
    plan = result.stdout[: result.stdout.index("recycle: pulumi destroy")]
    assert (
        "recycle: then, once the server is gone, the lease ends, and with it the reservation:\n"
        f"  - lease lease-persist-ab1234 (lease), id {own_lease}, ends 2026-11-20T23:02:00Z\n"
    ) in plan
    assert "done: the server of stack ab1234 is gone and its lease has ended" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == (
        "next: pulumi up --stack ab1234   (makes a new lease, then a new server)"
    )
    assert_never_named_the_volume(machine, before)


@needs_cli
@needs_closed_ssh_port
def test_end_lease_of_a_server_gone_forgets_the_stop_then_ends_the_lease(gone, own_lease, twin):
    """The lease's own end took the server: the stop step is forgotten, the rest destroyed,
    then the lease ended."""
    machine = gone
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", "--end-lease", "--yes")
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, FORGET_STOP, DESTROY, EXPORT, END_LEASE, EXPORT]
    assert lease_in_twin(twin, own_lease) is None, "Blazar still has the lease"
    after = machine.stack_export("ab1234")
    assert names(before) - names(after) == RECYCLED | {"lease"}
    assert_volume_kept(before, after)
    assert "PostgreSQL will recover from its journal" in result.stdout


@needs_cli
@needs_closed_ssh_port
def test_plain_recycle_keeps_the_lease_and_says_how_to_end_it(gone):
    """Without --end-lease the lease stays (the plan says so, and names the flag)."""
    machine = gone
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", "--yes")
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, FORGET_STOP, DESTROY, EXPORT]
    after = machine.stack_export("ab1234")
    assert names(before) - names(after) == RECYCLED
    assert LEASE_URN in {r["urn"] for r in resources(after)}
    assert (
        f"  + lease lease-persist-ab1234 (lease), id {LEASE_ID}, ends 2026-11-20T23:02:00Z "
        "(still reserved: add --end-lease to release it too)"
    ) in result.stdout


@needs_cli
def test_end_lease_after_the_server_is_gone_ends_only_the_lease(machine, twin):
    """A stack already recycled: --end-lease ends the lease alone; a plain recycle has nothing
    to do and names --end-lease."""
    lease_id = active_lease(twin)
    state = with_lease(state_fixture(), lease_id)
    state["deployment"]["resources"] = [
        resource for resource in resources(state) if name_of(resource) not in RECYCLED
    ]
    machine.import_state("ab1234", state)
    before = machine.stack_export("ab1234")

    plain = recycle(machine, "--stack", "ab1234", "--yes")
    assert plain.returncode == 2
    assert "nothing to recycle" in plain.stderr
    assert "end its lease: `./chi-persist recycle --stack ab1234 --end-lease`" in plain.stderr

    result = recycle(machine, "--stack", "ab1234", "--end-lease", "--yes")
    assert result.returncode == 0, result.stderr
    assert machine.calls() == [EXPORT, EXPORT, END_LEASE, EXPORT]
    assert lease_in_twin(twin, lease_id) is None, "Blazar still has the lease"
    after = machine.stack_export("ab1234")
    assert names(before) - names(after) == {"lease"}
    assert_volume_kept(before, after)
    assert "has no server any more" in result.stdout
    assert "done: the lease of stack ab1234 has ended, nothing is reserved" in result.stdout


@pytest.mark.parametrize(
    ("make_state", "why"),
    [
        pytest.param(
            state_with_own_reservation,
            f"its server boots from the reserved flavor {RESERVATION_ID}: a reservation you "
            "made yourself (chi-persist:reservation)",
            id="own-reservation",
        ),
        pytest.param(
            state_before_leases,
            "deployed with a reservation of its own (chi-persist:reservation) or before the "
            "program made leases",
            id="no-lease-no-reservation",
        ),
    ],
)
@needs_cli
def test_end_lease_without_a_lease_of_its_own_is_refused(machine, make_state, why):
    """A stack with no lease in its state: exit 2 before anything, saying why and where the
    student's own lease is ended."""
    machine.import_state("ab1234", make_state())
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", "--end-lease", "--yes")
    assert result.returncode == 2
    assert "--end-lease: stack ab1234 has no lease of its own in its state" in result.stderr
    assert why in result.stderr
    assert "recycle without --end-lease (`./chi-persist recycle --stack ab1234`)" in result.stderr
    assert "Horizon (KVM@TACC, Reservations > Leases, Delete Lease)" in result.stderr
    assert "pulumi config rm chi-persist:reservation --stack ab1234" in result.stderr
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before


@needs_cli
def test_end_lease_refuses_when_the_volume_depends_on_the_lease(machine):
    """Ending the lease must never take the volume along: refused, nothing changed."""
    state = state_fixture()
    volume = of_type(state, VOLUME)[0]
    volume["dependencies"] = [LEASE_URN]
    volume.pop("protect")
    listed = resources(state)
    # The state lists the lease before the volume, as a dependency must be.
    assert listed.index(of_type(state, LEASE)[0]) < listed.index(volume)
    machine.import_state("ab1234", state)
    before = machine.stack_export("ab1234")

    result = recycle(machine, "--stack", "ab1234", "--end-lease", "--yes")

    assert result.returncode == 1
    assert "refusing: ending the lease would also destroy volume block-persist-ab1234" in (
        result.stderr
    )
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before


@needs_cli
def test_failed_lease_end_says_the_reservation_is_still_held(machine, twin):
    """The lease's destroy fails (the twin's Blazar refuses the delete): exit 1, pulumi's words,
    the reservation still held, and the command to run again."""
    lease_id = active_lease(twin)
    state = with_lease(state_fixture(), lease_id)
    state["deployment"]["resources"] = [
        resource for resource in resources(state) if name_of(resource) not in RECYCLED
    ]
    machine.import_state("ab1234", state)
    fault = twin.admin(
        "POST",
        "/faults",
        json={
            "method": "DELETE",
            "path": rf"/v1/leases/{lease_id}",
            "status": 403,
            "body": {"error_code": 403, "error_message": LEASE_DELETE_REFUSED, "error_name": 403},
        },
    )
    assert fault.status_code == 201, fault.text
    try:
        result = recycle(machine, "--stack", "ab1234", "--end-lease", "--yes")
    finally:
        twin.admin("DELETE", "/faults")

    assert result.returncode == 1
    said = result.stdout + result.stderr
    assert f"HTTP 403: {LEASE_DELETE_REFUSED}" in said, said
    assert "the lease was not ended and its reservation is still held" in result.stderr
    assert "`./chi-persist recycle --stack ab1234 --end-lease` again" in result.stderr
    assert machine.calls() == [EXPORT, END_LEASE]
    assert LEASE_URN in {r["urn"] for r in resources(machine.stack_export("ab1234"))}
    assert (lease_in_twin(twin, lease_id) or {}).get("status") == "ACTIVE"


@pytest.mark.parametrize(
    ("arguments", "question"),
    [
        (["--end-lease"], "Recycle the server of stack ab1234 and end its lease? [y/N]"),
        ([], "Recycle the server of stack ab1234? [y/N]"),
    ],
    ids=["end-lease", "plain"],
)
@needs_cli
def test_the_question_says_whether_the_lease_ends(gone, arguments, question):
    """Without --yes the question names the lease when it will end; a no changes nothing."""
    machine = gone
    before = machine.stack_export("ab1234")
    result = recycle(machine, "--stack", "ab1234", *arguments, stdin="n\n")
    assert result.returncode == 2
    assert question in result.stdout
    assert machine.calls() == [EXPORT]
    assert machine.stack_export("ab1234") == before


@pytest.mark.parametrize(
    ("resource_type", "delete", "stops", "dials"),
    [
        pytest.param("command:local:Command", "python3 scripts/clean-stop --server-id s "
                     "--host h --user cc --login key -- sudo bash release-volume.sh",
                     True, False, id="clean-stop-key"),
        pytest.param("command:local:Command", "python3 scripts/clean-stop --server-id s "
                     "--host h --user cc --login agent -- sudo bash release-volume.sh",
                     True, True, id="clean-stop-agent"),
        pytest.param("command:local:Command", "python3 scripts/clean-stop --server-id s -- "
                     "x --login key", True, True, id="login-only-in-the-remote-part"),
        pytest.param("command:remote:Command", "sudo bash release-volume.sh", True, True,
                     id="remote-stop-of-an-older-state"),
        pytest.param("command:local:Command", None, False, False, id="wait-for-ssh"),
        pytest.param("command:remote:Command", None, False, False, id="remote-without-delete"),
    ],
)  # fmt: skip
def test_which_steps_stop_and_which_dial_the_agent(resource_type, delete, stops, dials):
    """A stop step is a command with a delete; only a remote one or one with --login agent
    (before the remote part) dials SSH_AUTH_SOCK."""
    recycle_plan = import_tool("recycle_plan")
    inputs = {"delete": delete} if delete else {}
    resource = recycle_plan.Resource.from_state(
        {"urn": "urn:x::step", "type": resource_type, "inputs": inputs, "outputs": inputs}
    )
    assert (resource.stops_on_delete, resource.dials_the_agent) == (stops, dials)
