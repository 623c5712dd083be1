"""The Pulumi program evaluated in-process under mocks: resources, options, outputs, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components import project_files
from tests.support.paths import REPO_ROOT
from tests.support.program import (
    ATTACHMENT,
    COPY_TO_REMOTE,
    FLOATING_IP,
    LEASE,
    LOCAL_COMMAND,
    MOCK_CREDENTIALS,
    MOCK_HOST_KEY,
    MOCK_RESERVATION_ID,
    MOCK_SEAL_KEY,
    PORT,
    REMOTE_COMMAND,
    SECURITY_GROUP,
    SECURITY_GROUP_RULE,
    SERVER,
    UNKNOWN,
    VOLUME,
    CommandStep,
    CopyStep,
    Evaluation,
    evaluate_program,
    stack_file_config,
)
from tests.support.ssh_keys import stand_in_private_key

PRIVATE_KEY = stand_in_private_key()
VOLUME_ID = "5b1e0a3c-7f42-4d8e-a1b9-0c6d2e8f4a17"
FLOATING = "129.114.26.77"
PLATFORM_PORTS = {22, 8888, 8000, 9000, 9001}


def evaluate(
    stack: str = "ab1234", config: dict[str, Any] | None = None, **kwargs: Any
) -> Evaluation:
    """Evaluate with a key pair and a private key secret unless the test says otherwise."""
    settings = {"keyPair": f"{stack}-key", **(config or {})}
    kwargs.setdefault("secrets", {"sshPrivateKey": PRIVATE_KEY})
    kwargs.setdefault("volume_id", VOLUME_ID)
    kwargs.setdefault("floating_ip", FLOATING)
    return evaluate_program(stack, settings, **kwargs)


@pytest.fixture(scope="module")
def student() -> Evaluation:
    """One student's stack with every default."""
    return evaluate()


# --- resources -----------------------------------------------------------------------------


def test_server_is_named_by_netid_and_boots_the_configured_image(student: Evaluation) -> None:
    """The server is node-persist-<netid> on CC-Ubuntu24.04, the lease's flavor, the key pair,
    its port."""
    server = student.one(SERVER).inputs
    port = student.one(PORT)
    assert server["name"] == "node-persist-ab1234"
    assert server["imageName"] == "CC-Ubuntu24.04"
    assert server["flavorId"] == MOCK_RESERVATION_ID
    assert "flavorName" not in server
    assert server["keyPair"] == "ab1234-key"
    assert server["stopBeforeDestroy"] is True
    assert server["networks"] == [{"port": f"{port.name}-id"}]
    assert "securityGroups" not in server, "groups belong on the port, not the server"


def test_volume_is_named_by_netid_with_the_configured_size(student: Evaluation) -> None:
    """The volume is block-persist-<netid>, 2 GiB, no type unless configured."""
    volume = student.one(VOLUME).inputs
    assert volume["name"] == "block-persist-ab1234"
    assert volume["size"] == 2
    assert "volumeType" not in volume


def test_volume_is_protected(student: Evaluation) -> None:
    """No deployment can delete or replace the data volume, and nothing else is protected."""
    protected = [r for r in student.registrations if r.protect]
    assert [r.type for r in protected] == [VOLUME]
    assert not protected[0].retain_on_delete, "retainOnDelete would orphan the volume from state"


def test_volume_depends_on_nothing_of_the_server(student: Evaluation) -> None:
    """The volume has no dependency at all, so no server change can reach it."""
    volume = student.one(VOLUME)
    assert student.depends_on(volume) == set()


def test_attachment_is_deleted_before_it_is_replaced(student: Evaluation) -> None:
    """A volume attaches to one server at a time: detach first, then attach."""
    attachment = student.one(ATTACHMENT)
    assert attachment.delete_before_replace
    assert attachment.inputs["volumeId"] == VOLUME_ID
    assert attachment.inputs["instanceId"] == "server-node-persist-ab1234"


def test_server_is_deleted_before_it_is_replaced(student: Evaluation) -> None:
    """The port can carry one server, so a replaced server must go before the new one comes."""
    server = student.one(SERVER)
    assert server.delete_before_replace
    assert server.ignore_changes == ["userData"]


def test_port_and_floating_ip_do_not_depend_on_the_server(student: Evaluation) -> None:
    """The address survives a recycle: port and floating IP come before the server."""
    server = student.one(SERVER)
    port = student.one(PORT)
    floating_ip = student.one(FLOATING_IP)
    assert server.urn not in student.depends_on(port)
    assert server.urn not in student.depends_on(floating_ip)
    assert port.inputs["networkId"] == "network-sharednet1"
    assert floating_ip.inputs["pool"] == "public"
    assert floating_ip.inputs["portId"] == f"{port.name}-id"


def test_security_group_carries_netid_and_opens_each_platform_port(student: Evaluation) -> None:
    """One group persist-<netid>, one TCP ingress rule per platform port from 0.0.0.0/0."""
    group = student.one(SECURITY_GROUP)
    assert group.inputs["name"] == "persist-ab1234"
    rules = [r.inputs for r in student.of_type(SECURITY_GROUP_RULE)]
    assert {(r["portRangeMin"], r["portRangeMax"]) for r in rules} == {
        (p, p) for p in PLATFORM_PORTS
    }
    assert len(rules) == len(PLATFORM_PORTS)
    for rule in rules:
        assert rule["direction"] == "ingress"
        assert rule["protocol"] == "tcp"
        assert rule["ethertype"] == "IPv4"
        assert rule["remoteIpPrefix"] == "0.0.0.0/0"
        assert rule["securityGroupId"] == f"{group.name}-id"
    assert student.one(PORT).inputs["securityGroupIds"] == [f"{group.name}-id"]


def test_one_rule_per_port_and_allowed_network() -> None:
    """Two allowed networks give two rules per port, keyed by network, not by position."""
    evaluation = evaluate(config={"allowedCidrs": ["203.0.113.0/24", "198.51.100.7/32"]})
    rules = {
        (r.inputs["portRangeMin"], r.inputs["remoteIpPrefix"]): r.name
        for r in evaluation.of_type(SECURITY_GROUP_RULE)
    }
    assert set(rules) == {
        (port, cidr) for port in PLATFORM_PORTS for cidr in ("203.0.113.0/24", "198.51.100.7/32")
    }
    reordered = evaluate(config={"allowedCidrs": ["198.51.100.7/32", "203.0.113.0/24"]})
    assert {r.name for r in reordered.of_type(SECURITY_GROUP_RULE)} == set(rules.values())


def test_existing_security_groups_are_used_and_none_created() -> None:
    """With existingSecurityGroups the port carries those groups and no group is created."""
    names = ["allow-ssh", "allow-8888", "allow-8000", "allow-9000", "allow-9001"]
    evaluation = evaluate(config={"existingSecurityGroups": names})
    assert evaluation.of_type(SECURITY_GROUP) == []
    assert evaluation.of_type(SECURITY_GROUP_RULE) == []
    assert evaluation.one(PORT).inputs["securityGroupIds"] == [f"secgroup-{n}" for n in names]


def test_reservation_boots_the_reserved_flavor_id() -> None:
    """A reservation replaces the flavor name by the reserved flavor's id."""
    reservation = "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
    server = evaluate(config={"reservation": reservation}).one(SERVER).inputs
    assert server["flavorId"] == reservation
    assert "flavorName" not in server


def test_the_stack_makes_its_own_lease_of_the_flavor(student: Evaluation) -> None:
    """No reservation: one lease lease-persist-<netid> of `flavor` for 8h (the default)."""
    lease = student.one(LEASE)
    assert lease.name == "lease"
    assert lease.custom and not lease.protect
    assert {key: lease.inputs[key] for key in ("name", "flavor_name", "duration_seconds")} == {
        "name": "lease-persist-ab1234",
        "flavor_name": "m1.large",
        "duration_seconds": 8 * 3600,
    }
    assert lease.inputs["lease_duration"] == "8h"
    # The provider is serialised with the program: the engine's Python host runs it.
    assert lease.raw_inputs["__provider"]


def test_the_server_boots_the_leases_reservation(student: Evaluation) -> None:
    """The server's flavor id is the lease's reservation id, taken as a property, so a new
    lease (one that ended, or of another flavor) replaces the server."""
    server = student.one(SERVER)
    lease = student.one(LEASE)
    assert server.inputs["flavorId"] == MOCK_RESERVATION_ID
    assert server.property_dependencies["flavorId"] == [lease.urn]
    assert "flavorId" in server.replace_on_changes


def test_the_leases_diff_chooses_which_lease_goes_first(student: Evaluation) -> None:
    """No delete_before_replace option on the lease: its provider's diff decides (an ended
    lease goes first; one that still serves stays until its successor is held), and it gets
    the renewal window and the lease's own credentials (none by default)."""
    lease = student.one(LEASE)
    assert not lease.delete_before_replace
    assert lease.inputs["renew_window_seconds"] == 3600
    assert lease.inputs["cloud"] == ""


def test_the_lease_and_its_end_are_exported(student: Evaluation) -> None:
    """lease_id and lease_end (ISO 8601 UTC) are stack outputs when the stack makes its lease."""
    assert student.outputs["lease_id"] == "lease-id-lease-persist-ab1234"
    assert student.outputs["lease_end"] == "2026-11-10T17:00:00Z"


def test_no_lease_when_the_student_brings_a_reservation() -> None:
    """`reservation` set: no lease, the server boots it, and a note says leaseDuration is
    not used."""
    reservation = "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
    evaluation = evaluate(config={"reservation": reservation, "leaseDuration": "2d"})
    assert evaluation.of_type(LEASE) == []
    assert evaluation.one(SERVER).inputs["flavorId"] == reservation
    assert "lease_id" not in evaluation.outputs and "lease_end" not in evaluation.outputs
    assert any(
        "chi-persist:reservation is set" in note and "leaseDuration (2d) is not used" in note
        for note in evaluation.notes
    ), evaluation.notes


def test_no_note_about_leases_when_the_stack_makes_its_own(student: Evaluation) -> None:
    """The reservation note is only for students who bring their own."""
    assert not [note for note in student.notes if "reservation" in note]


@pytest.mark.parametrize(
    ("key", "value", "resource", "field", "expected"),
    [
        ("image", "CC-Ubuntu22.04", SERVER, "imageName", "CC-Ubuntu22.04"),
        ("flavor", "m1.xlarge", LEASE, "flavor_name", "m1.xlarge"),
        ("leaseDuration", "1d12h", LEASE, "duration_seconds", 36 * 3600),
        ("leaseDuration", "90m", LEASE, "lease_duration", "90m"),
        ("leaseRenewWindow", "2h", LEASE, "renew_window_seconds", 7200),
        ("leaseRenewWindow", "0m", LEASE, "renew_window_seconds", 0),
        ("network", "sharednet2", PORT, "networkId", "network-sharednet2"),
        ("floatingIpPool", "public2", FLOATING_IP, "pool", "public2"),
        ("volumeSize", 20, VOLUME, "size", 20),
        ("volumeSize", "5", VOLUME, "size", 5),
        ("volumeType", "ceph-ssd", VOLUME, "volumeType", "ceph-ssd"),
    ],
)
def test_settings_reach_their_resources(key, value, resource, field, expected) -> None:
    """Each setting lands on the input it names."""
    assert evaluate(config={key: value}).one(resource).inputs[field] == expected


def test_user_data_installs_docker_and_the_stack_at_first_boot(student: Evaluation) -> None:
    """cloud-init writes install-docker.sh, the lib.sh it sources and docker/, and runs the
    installer with them."""
    user_data = student.one(SERVER).inputs["userData"]
    assert user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(user_data)
    written = {entry["path"] for entry in document["write_files"]}
    assert "/opt/chi-persist/scripts/remote/install-docker.sh" in written
    assert "/opt/chi-persist/scripts/remote/lib.sh" in written
    for path in project_files.tree_files(project_files.DOCKER_DIR):
        relative = path.relative_to(REPO_ROOT).as_posix()
        assert f"/opt/chi-persist/{relative}" in written
    assert document["runcmd"] == [
        [
            "bash",
            "/opt/chi-persist/scripts/remote/install-docker.sh",
            "--user",
            "cc",
            "--compose-file",
            "/opt/chi-persist/docker/docker-compose.yaml",
        ]
    ]
    assert len(user_data.encode()) < 65535, "Nova refuses user data over 64 KiB"


# --- provisioning --------------------------------------------------------------------------


def test_provisioning_runs_in_order(student: Evaluation) -> None:
    """Wait, copy scripts and stack files, prepare the volume, then start the stack."""
    steps = student.provisioning_steps()
    names = [step.name for step in steps]
    assert names[0] == "provisioning-wait-for-boot"
    assert names.index("provisioning-copy-scripts") < names.index("provisioning-prepare-volume")
    assert names[-4:-2] == ["provisioning-prepare-volume", "provisioning-start-stack"]
    # Both follow the started stack: the lease's timer, and the clean stop (a delete only).
    assert set(names[-2:]) == {"provisioning-lease-stop", "provisioning-clean-stop"}
    copies = {step.name: step for step in steps if isinstance(step, CopyStep)}
    assert copies["provisioning-copy-scripts"].source == REPO_ROOT / "scripts" / "remote"
    assert copies["provisioning-copy-scripts"].remote_path == "/home/cc/chi-persist/scripts"
    assert copies["provisioning-copy-docker"].source == REPO_ROOT / "docker"
    assert copies["provisioning-copy-docker"].remote_path == "/home/cc/chi-persist"


def test_prepare_volume_finds_the_volume_by_its_id(student: Evaluation) -> None:
    """The volume is prepared by id (its serial), at the mount point, owned by cc, at its size."""
    step = next(s for s in student.provisioning_steps() if s.name.endswith("prepare-volume"))
    assert isinstance(step, CommandStep)
    assert step.create == (
        "sudo python3 /home/cc/chi-persist/scripts/remote/prepare-volume "
        f"--volume-id {VOLUME_ID} --mount-point /mnt/block --owner cc --size-gib 2"
    )
    assert step.delete is None
    assert "/dev/vdb" not in step.create


def test_start_stack_prints_only_credentials_and_undoes_nothing_itself(
    student: Evaluation,
) -> None:
    """The stack starts on the mount point with the floating IP; its clean stop is a step apart."""
    start = student.named("start-stack")
    create = start.inputs["create"]
    assert "install-docker.sh --user cc >&2 </dev/null &&" in create
    assert (
        "start-stack.sh --mount-point /mnt/block --host-ip 129.114.26.77 --compose-file "
        "/home/cc/chi-persist/docker/docker-compose.yaml --platform-access public "
        "--print-sealed-credentials"
    ) in create
    # A remote delete dials SSH first: a server that is gone would block every update.
    assert "delete" not in start.inputs
    assert start.delete_before_replace, "the clean stop must run before a new create"
    assert "stdout" in start.additional_secret_outputs
    assert start.inputs["logging"] == "stderr"


def test_the_clean_stop_asks_nova_then_releases_the_volume_over_ssh(student: Evaluation) -> None:
    """A local step whose delete runs scripts/clean-stop for this server, with release-volume.sh."""
    stop = student.named("clean-stop")
    assert stop.type == LOCAL_COMMAND
    assert "create" not in stop.inputs and "update" not in stop.inputs
    assert stop.inputs["delete"] == (
        "python3 scripts/clean-stop --server-id server-node-persist-ab1234 "
        f"--host {FLOATING} --user cc --login key --host-key '{MOCK_HOST_KEY}' -- "
        "sudo bash /home/cc/chi-persist/scripts/remote/release-volume.sh "
        "--mount-point /mnt/block --compose-file /home/cc/chi-persist/docker/docker-compose.yaml"
    )
    # It runs from the directory the engine starts providers in (the project's root): no path
    # of this checkout is kept in the state, where a later delete reads its command.
    assert "dir" not in stop.inputs
    assert str(REPO_ROOT) not in stop.inputs["delete"]
    assert (REPO_ROOT / "scripts" / "clean-stop").stat().st_mode & 0o111
    assert stop.inputs["environment"] == {"CHI_PERSIST_SSH_PRIVATE_KEY": PRIVATE_KEY}
    assert _is_secret(stop.raw_inputs["environment"], "CHI_PERSIST_SSH_PRIVATE_KEY")
    assert stop.inputs["addPreviousOutputInEnv"] is False
    assert stop.delete_before_replace, "the old server's stop runs before anything new"


def test_mount_point_setting_reaches_every_volume_command() -> None:
    """A custom mount point is what prepare, start and release all use."""
    evaluation = evaluate(config={"mountPoint": "/mnt/data"})
    commands = [evaluation.named("prepare-volume"), evaluation.named("start-stack")]
    for registration in commands:
        assert "--mount-point /mnt/data" in registration.inputs["create"]
    assert "--mount-point /mnt/data" in evaluation.named("clean-stop").inputs["delete"]


def test_every_remote_step_connects_as_cc_to_the_floating_ip_with_a_secret_key(
    student: Evaluation,
) -> None:
    """Remote commands log in as cc at the floating IP, the key kept secret, dials patient."""
    remote = student.of_type(REMOTE_COMMAND) + student.of_type(COPY_TO_REMOTE)
    assert len(remote) == 6
    for registration in remote:
        connection = registration.inputs["connection"]
        assert connection["user"] == "cc"
        assert connection["host"] == FLOATING
        assert connection["privateKey"] == PRIVATE_KEY
        assert connection["perDialTimeout"] >= 30
        assert connection["dialErrorLimit"] >= 10
        assert _is_secret(registration.raw_inputs["connection"], "privateKey"), registration.name
        # Only the key the server's console showed is accepted, on every connection.
        assert connection["hostKey"] == MOCK_HOST_KEY, registration.name
        host_key_step = student.named("host-key").urn
        assert host_key_step in registration.property_dependencies["connection"]
    for registration in student.of_type(REMOTE_COMMAND):
        assert registration.inputs["addPreviousOutputInEnv"] is False


def test_every_step_reruns_on_a_new_server(student: Evaluation) -> None:
    """Each step's triggers hold the server id; volume steps also the attachment id."""
    server_id = "server-node-persist-ab1234"
    steps = [
        *student.of_type(REMOTE_COMMAND),
        *student.of_type(COPY_TO_REMOTE),
        *(s for s in student.of_type(LOCAL_COMMAND) if not s.name.endswith("credentials-key")),
    ]
    assert len(steps) == 9
    for registration in steps:
        assert server_id in registration.inputs["triggers"], registration.name
    for suffix in ("prepare-volume", "start-stack", "clean-stop"):
        assert student.one(ATTACHMENT).name + "-id" in student.named(suffix).inputs["triggers"]


def test_changed_files_rerun_the_steps_that_use_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change in scripts/remote or docker/ replaces its copy, and so the volume steps."""
    before = evaluate()
    monkeypatch.setattr(
        "components.provisioning.tree_digest",
        lambda *directories: "changed-" + "-".join(d.name for d in directories),
    )
    after = evaluate()
    for suffix in ("copy-scripts", "copy-docker"):
        assert before.named(suffix).inputs["triggers"] != after.named(suffix).inputs["triggers"]
        # A new copy has a new id, which the volume steps' triggers take: they are replaced.
        for step in ("prepare-volume", "start-stack"):
            triggers_from = after.named(step).property_dependencies["triggers"]
            assert after.named(suffix).urn in triggers_from, (suffix, step)
    assert before.named("wait-for-boot").inputs == after.named("wait-for-boot").inputs


def test_a_timer_stops_the_platform_before_the_stacks_lease_ends(student: Evaluation) -> None:
    """The lease's end reaches the server: a step after the stack starts sets the timer that
    runs the clean stop before it, again for a new server, a new end or new scripts."""
    stop = student.named("lease-stop")
    assert stop.inputs["create"] == (
        "sudo bash /home/cc/chi-persist/scripts/remote/schedule-lease-stop.sh --lease-end "
        "2026-11-10T17:00:00Z --mount-point /mnt/block --compose-file "
        "/home/cc/chi-persist/docker/docker-compose.yaml"
    )
    lease = student.one(LEASE)
    assert lease.urn in stop.property_dependencies["triggers"]
    assert student.named("copy-scripts").urn in stop.property_dependencies["triggers"]
    assert "server-node-persist-ab1234" in stop.inputs["triggers"]
    assert student.named("start-stack").urn in student.depends_on(stop)


def test_a_reservation_of_ones_own_gets_the_timer_when_blazar_tells_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `reservation` set, the end of the lease holding it, read from Blazar before any
    resource, sets the same timer; when it cannot be read there is no timer, and a note
    says so."""
    reservation = "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
    unread = evaluate(config={"reservation": reservation})
    assert [r for r in unread.registrations if r.name == "provisioning-lease-stop"] == []
    assert any("no timer stops the platform" in note for note in unread.notes), unread.notes
    monkeypatch.setattr(
        "components.lease.own_lease_end",
        lambda reservation_id, cloud: ("2026-11-12T18:00:00Z", f"{reservation_id} ends"),
    )
    read = evaluate(config={"reservation": reservation})
    assert "--lease-end 2026-11-12T18:00:00Z" in read.named("lease-stop").inputs["create"]
    assert f"{reservation} ends" in read.notes


def test_wait_for_ssh_runs_locally_before_any_remote_step(student: Evaluation) -> None:
    """A local, bounded wait for sshd precedes the first remote command."""
    wait = student.named("wait-for-ssh")
    assert wait.inputs["create"] == f"python3 scripts/wait-for-ssh --timeout 900 {FLOATING}"
    assert Path(wait.inputs["dir"]) == REPO_ROOT
    assert wait.urn in student.depends_on(student.named("wait-for-boot"))


def test_the_host_key_is_read_once_per_server_before_the_first_ssh_step(
    student: Evaluation,
) -> None:
    """A local step reads the server's key from its console (Nova) after sshd answers; its id
    holds only the server's, so a server that stays is not read again and a new one is."""
    step = student.named("host-key")
    assert step.type == LOCAL_COMMAND
    assert step.inputs["create"] == (
        f"python3 scripts/host-key --server-id server-node-persist-ab1234 --host {FLOATING}"
    )
    assert step.inputs["triggers"] == ["server-node-persist-ab1234"]
    assert "dir" not in step.inputs, "the state would keep this checkout's path"
    assert student.named("wait-for-ssh").urn in student.depends_on(step)
    assert step.urn in student.depends_on(student.named("wait-for-boot"))
    assert student.outputs["known_hosts"] == f"{FLOATING} {MOCK_HOST_KEY}"


def test_the_credentials_come_back_sealed_with_a_key_of_the_stacks_own(
    student: Evaluation,
) -> None:
    """The sealing key is made once per stack (no trigger), kept secret and out of the logs,
    and reaches start-stack.sh on stdin, never in its command line."""
    key = student.named("credentials-key")
    assert key.type == LOCAL_COMMAND
    assert key.inputs["create"] == ('python3 -c "import secrets; print(secrets.token_hex(32))"')
    assert "triggers" not in key.inputs
    assert key.inputs["logging"] == "none"
    assert "stdout" in key.additional_secret_outputs
    start = student.named("start-stack")
    assert start.inputs["stdin"] == f"{MOCK_SEAL_KEY}\n"
    assert _is_secret(start.raw_inputs["stdin"], "stdin")
    assert MOCK_SEAL_KEY not in start.inputs["create"]
    # What the step printed is opened with that key into the stack's outputs.
    assert student.outputs["platform_credentials"] == MOCK_CREDENTIALS


def test_tunnel_access_opens_only_ssh_and_binds_the_ports_to_the_servers_loopback() -> None:
    """platformAccess tunnel: one rule (22); start-stack publishes on 127.0.0.1 only."""
    tunnel = evaluate(config={"platformAccess": "tunnel"})
    rules = [r.inputs for r in tunnel.of_type(SECURITY_GROUP_RULE)]
    assert [(r["portRangeMin"], r["remoteIpPrefix"]) for r in rules] == [(22, "0.0.0.0/0")]
    assert "--platform-access tunnel" in tunnel.named("start-stack").inputs["create"]
    assert tunnel.outputs["platform_access"] == "tunnel"
    assert not [w for w in tunnel.warnings if "whole internet" in w]


def test_switching_access_changes_only_the_rules_and_the_start_step(student: Evaluation) -> None:
    """Between public and tunnel, every resource but the four web rules keeps its name and
    its inputs, except the start step's command (its port bindings): the server stays."""
    tunnel = evaluate(config={"platformAccess": "tunnel"})
    public = {r.name: r for r in student.registrations}
    tunneled = {r.name: r for r in tunnel.registrations}
    assert sorted(set(public) - set(tunneled)) == sorted(
        f"access-{service}-0.0.0.0-0"
        for service in ("jupyter", "mlflow", "minio-api", "minio-console")
    )
    assert set(tunneled) <= set(public)
    changed = sorted(name for name in tunneled if public[name].inputs != tunneled[name].inputs)
    assert changed == ["provisioning-start-stack"]
    before, after = (
        r.inputs["create"]
        for r in (public["provisioning-start-stack"], tunneled["provisioning-start-stack"])
    )
    assert before.replace("--platform-access public", "--platform-access tunnel") == after


def test_the_whole_internet_is_said_in_one_line_with_how_to_narrow_it(
    student: Evaluation,
) -> None:
    """With 0.0.0.0/0 and the web ports open, `pulumi up` warns once, naming both ways out."""
    said = [w for w in student.warnings if "whole internet" in w]
    assert len(said) == 1 and "\n" not in said[0]
    assert "behind their credentials" in said[0]
    assert "chi-persist:allowedCidrs[0]" in said[0]
    assert "chi-persist:platformAccess tunnel" in said[0]
    narrowed = evaluate(config={"allowedCidrs": ["203.0.113.0/24"]})
    assert not [w for w in narrowed.warnings if "whole internet" in w]


def test_existing_groups_with_allowed_cidrs_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """allowedCidrs would not narrow anything beside existingSecurityGroups: refused."""
    with pytest.raises(pulumi.RunError) as raised:
        evaluate(config={"existingSecurityGroups": ["allow-ssh"], "allowedCidrs": ["10.1.0.0/16"]})
    message = str(raised.value)
    assert "chi-persist:allowedCidrs = ['10.1.0.0/16']: is not applied" in message
    assert "those groups' own rules decide who reaches the server" in message
    assert "pulumi config rm chi-persist:allowedCidrs" in message
    assert raised.value.registrations == []
    shared = evaluate(config={"existingSecurityGroups": ["allow-ssh"]})
    assert [w for w in shared.warnings if "allowedCidrs is not used" in w]


def test_recycle_removes_only_the_server_its_attachment_and_the_commands(
    student: Evaluation,
) -> None:
    """destroy --target <server> --target-dependents leaves volume, address and groups."""
    server = student.one(SERVER)
    removed = student.dependents_closure(server.urn)
    by_urn = student.by_urn()
    removed_types = sorted(by_urn[urn].type for urn in removed)
    assert removed_types == sorted(
        [ATTACHMENT] + [LOCAL_COMMAND] * 3 + [REMOTE_COMMAND] * 4 + [COPY_TO_REMOTE] * 2
    )
    # The sealing key is the stack's, not the server's: a recycle keeps it.
    assert student.named("credentials-key").urn not in removed
    kept = {VOLUME, PORT, FLOATING_IP, SECURITY_GROUP, SECURITY_GROUP_RULE}
    for registration in student.registrations:
        if registration.type in kept:
            assert registration.urn not in removed, registration.name


def test_volume_is_not_reachable_from_any_dependency_of_the_server(student: Evaluation) -> None:
    """Nothing the server depends on leads to the volume, and the volume leads to no server."""
    server = student.one(SERVER)
    volume = student.one(VOLUME)
    assert volume.urn not in student.depends_on(server)
    assert volume.urn not in student.dependents_closure(server.urn)


# --- outputs -------------------------------------------------------------------------------


def test_outputs_name_every_service(student: Evaluation) -> None:
    """The outputs give the address, the login and every service's URL."""
    outputs = student.outputs
    assert outputs["floating_ip"] == FLOATING
    assert outputs["known_hosts"] == f"{FLOATING} {MOCK_HOST_KEY}"
    assert outputs["ssh_command"] == (
        "ssh -i '~/.ssh/id_rsa_chameleon' -o StrictHostKeyChecking=yes -o "
        f"HostKeyAlgorithms=ssh-ed25519 -o 'KnownHostsCommand=/bin/echo {FLOATING} "
        f"{MOCK_HOST_KEY}' cc@{FLOATING}"
    )
    assert outputs["platform_access"] == "public"
    assert outputs["mlflow_url"] == f"http://{FLOATING}:8000"
    assert outputs["minio_api_url"] == f"http://{FLOATING}:9000"
    assert outputs["minio_console_url"] == f"http://{FLOATING}:9001"
    assert outputs["jupyter_url"] == (
        f"http://{FLOATING}:8888/lab?token={MOCK_CREDENTIALS['jupyter_token']}"
    )
    assert outputs["volume_id"] == VOLUME_ID
    assert outputs["server_id"] == "server-node-persist-ab1234"
    assert outputs["platform_credentials"] == MOCK_CREDENTIALS
    assert outputs["mlflow_username"] == MOCK_CREDENTIALS["mlflow_user"]
    assert outputs["mlflow_password"] == MOCK_CREDENTIALS["mlflow_password"]


def test_outputs_carrying_credentials_are_secret(student: Evaluation) -> None:
    """The Jupyter URL (token), MLflow's login and the platform credentials are secrets; the
    rest are not."""
    assert student.secret_outputs == {
        "jupyter_url",
        "mlflow_username",
        "mlflow_password",
        "platform_credentials",
    }


def test_key_file_is_read_as_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without sshPrivateKey, the file at sshPrivateKeyPath is sent, marked secret."""
    key = tmp_path / "student-key"
    key.write_text(PRIVATE_KEY)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    evaluation = evaluate(config={"sshPrivateKeyPath": str(key)}, secrets={})
    start = evaluation.named("start-stack")
    assert start.inputs["connection"]["privateKey"] == PRIVATE_KEY
    assert _is_secret(start.raw_inputs["connection"], "privateKey")


# --- stability and isolation ---------------------------------------------------------------


def test_evaluating_twice_gives_identical_inputs(student: Evaluation) -> None:
    """No timestamps, random values or ordering: a second evaluation registers the same."""
    again = evaluate()
    first = sorted((r.urn, json.dumps(r.inputs, sort_keys=True)) for r in student.registrations)
    second = sorted((r.urn, json.dumps(r.inputs, sort_keys=True)) for r in again.registrations)
    assert first == second


def test_two_students_share_no_cloud_names(student: Evaluation) -> None:
    """Names that must be unique in the class's project differ between two students."""
    other = evaluate("cd5678", volume_id="0e8b2f4a-1c3d-4e5f-8a9b-7c6d5e4f3a21")

    def cloud_names(evaluation: Evaluation) -> set[str]:
        return {
            r.inputs["name"]
            for r in evaluation.registrations
            if r.custom and isinstance(r.inputs.get("name"), str)
        }

    assert cloud_names(student) & cloud_names(other) == set()
    assert "node-persist-cd5678" in cloud_names(other)


def test_netid_defaults_to_the_stack_name() -> None:
    """A stack named by the netID needs no netid setting."""
    evaluation = evaluate("xy987")
    assert evaluation.one(SERVER).inputs["name"] == "node-persist-xy987"
    assert evaluation.one(VOLUME).inputs["name"] == "block-persist-xy987"


def test_netid_setting_overrides_the_stack_name() -> None:
    """An explicit netid wins over the stack's name."""
    evaluation = evaluate("my-stack", config={"netid": "ab1234"})
    assert evaluation.one(SERVER).inputs["name"] == "node-persist-ab1234"


def test_example_stack_file_evaluates_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pulumi.dev.yaml, as shipped, is a valid stack (given the key file it names)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_rsa_chameleon").write_text(PRIVATE_KEY)
    config = stack_file_config(REPO_ROOT / "Pulumi.dev.yaml")
    evaluation = evaluate_program("dev", config, volume_id=VOLUME_ID, floating_ip=FLOATING)
    assert evaluation.one(SERVER).inputs["name"] == "node-persist-dev"
    assert evaluation.one(VOLUME).protect


# --- bad input -----------------------------------------------------------------------------

BAD_SETTINGS = [
    # (case, stack, config, secrets, key named, value shown, fix shown)
    ("empty key pair", "ab1234", {"keyPair": ""}, None, "keyPair", "(not set)",
     "pulumi config set chi-persist:keyPair"),
    ("netid with capitals", "ab1234", {"netid": "AB1234"}, None, "netid", "'AB1234'",
     "pulumi config set chi-persist:netid"),
    ("netid too short", "ab1234", {"netid": "a"}, None, "netid", "'a'",
     "pulumi config set chi-persist:netid"),
    ("netid with an underscore", "ab1234", {"netid": "ab_12"}, None, "netid", "'ab_12'",
     "pulumi config set chi-persist:netid"),
    ("stack name not a netid", "Dev_Stack", {}, None, "netid", "'Dev_Stack'",
     "pulumi config set chi-persist:netid"),
    ("volume size zero", "ab1234", {"volumeSize": 0}, None, "volumeSize", "'0'",
     "pulumi config set chi-persist:volumeSize"),
    ("invalid CIDR", "ab1234", {"allowedCidrs": ["10.0.0.300/24"]}, None, "allowedCidrs",
     "10.0.0.300/24", "pulumi config set --path 'chi-persist:allowedCidrs[0]'"),
    ("CIDR with host bits", "ab1234", {"allowedCidrs": ["10.1.2.3/8"]}, None, "allowedCidrs",
     "10.1.2.3/8", "pulumi config set --path 'chi-persist:allowedCidrs[0]'"),
    ("IPv6 CIDR", "ab1234", {"allowedCidrs": ["2001:db8::/32"]}, None, "allowedCidrs",
     "2001:db8::/32", "pulumi config set --path"),
    ("empty CIDR list", "ab1234", {"allowedCidrs": []}, None, "allowedCidrs", "[]",
     "pulumi config set --path"),
    ("reservation not a UUID", "ab1234", {"reservation": "my-lease"}, None, "reservation",
     "'my-lease'", "pulumi config set chi-persist:reservation"),
    ("lease duration without a unit", "ab1234", {"leaseDuration": "8"}, None, "leaseDuration",
     "'8'", "pulumi config set chi-persist:leaseDuration 8h"),
    ("lease duration with a space", "ab1234", {"leaseDuration": "8 h"}, None, "leaseDuration",
     "'8 h'", "pulumi config set chi-persist:leaseDuration"),
    ("lease duration units out of order", "ab1234", {"leaseDuration": "12h1d"}, None,
     "leaseDuration", "'12h1d'", "pulumi config set chi-persist:leaseDuration"),
    ("lease duration in seconds", "ab1234", {"leaseDuration": "3600s"}, None, "leaseDuration",
     "'3600s'", "pulumi config set chi-persist:leaseDuration"),
    ("empty lease duration", "ab1234", {"leaseDuration": ""}, None, "leaseDuration",
     "''", "pulumi config set chi-persist:leaseDuration"),
    ("lease duration of nothing", "ab1234", {"leaseDuration": "0h"}, None, "leaseDuration",
     "'0h'", "pulumi config set chi-persist:leaseDuration"),
    ("lease shorter than an hour", "ab1234", {"leaseDuration": "30m"}, None, "leaseDuration",
     "'30m'", "pulumi config set chi-persist:leaseDuration"),
    ("lease longer than the site allows", "ab1234", {"leaseDuration": "7d1m"}, None,
     "leaseDuration", "'7d1m'", "pulumi config set chi-persist:leaseDuration"),
    ("lease of a month", "ab1234", {"leaseDuration": "30d"}, None, "leaseDuration",
     "longer than 7d", "pulumi config set chi-persist:leaseDuration"),
    ("renewal window in seconds", "ab1234", {"leaseRenewWindow": "600s"}, None,
     "leaseRenewWindow", "'600s'", "pulumi config set chi-persist:leaseRenewWindow 2h"),
    ("renewal window longer than a day", "ab1234", {"leaseRenewWindow": "1d1h"}, None,
     "leaseRenewWindow", "longer than 1d", "pulumi config set chi-persist:leaseRenewWindow"),
    ("renewal window over half the lease", "ab1234",
     {"leaseDuration": "4h", "leaseRenewWindow": "3h"}, None, "leaseRenewWindow",
     "more than half of leaseDuration (4h)", "pulumi config set chi-persist:leaseRenewWindow 2h"),
    ("lease cloud with a control character", "ab1234", {"leaseCloud": "kvm\tlease"}, None,
     "leaseCloud", "'kvm\\tlease'", "pulumi config set chi-persist:leaseCloud kvm-lease"),
    ("relative mount point", "ab1234", {"mountPoint": "mnt/block"}, None, "mountPoint",
     "'mnt/block'", "pulumi config set chi-persist:mountPoint"),
    ("mount point over a system directory", "ab1234", {"mountPoint": "/etc"}, None,
     "mountPoint", "'/etc'", "pulumi config set chi-persist:mountPoint"),
    ("mount point with a space", "ab1234", {"mountPoint": "/mnt/my block"}, None, "mountPoint",
     "'/mnt/my block'", "pulumi config set chi-persist:mountPoint"),
    ("no private key anywhere", "ab1234", {"sshPrivateKeyPath": "/nonexistent/key"}, {},
     "sshPrivateKey", "/nonexistent/key", "pulumi config set --secret chi-persist:sshPrivateKey"),
    ("misspelt setting", "ab1234", {"keypair": "x"}, None, "keypair", "is not a setting",
     "correct its spelling"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "stack", "config", "secrets", "key", "seen", "fix"),
    BAD_SETTINGS,
    ids=[row[0] for row in BAD_SETTINGS],
)
def test_bad_setting_is_reported_before_any_resource(
    case, stack, config, secrets, key, seen, fix, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Each invalid setting stops the program with key, value, rule and fix, and no resource."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = {"keyPair": f"{stack.lower()}-key", **config}
    settings = {k: v for k, v in settings.items() if v is not None}
    with pytest.raises(pulumi.RunError) as raised:
        evaluate_program(
            stack,
            settings,
            secrets={"sshPrivateKey": PRIVATE_KEY} if secrets is None else secrets,
        )
    message = str(raised.value)
    assert f"chi-persist:{key}" in message
    assert seen in message
    assert fix in message
    assert "Traceback" not in message
    assert raised.value.registrations == []


def test_a_lease_cloud_must_name_an_entry_of_clouds_yaml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """leaseCloud names no entry of the clouds.yaml openstacksdk reads: refused before any
    resource, with the entries there and how to add one; an existing entry reaches the
    lease."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  kvm-tacc:\n    auth_type: password\n    auth: {}\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    with pytest.raises(pulumi.RunError) as raised:
        evaluate_program(
            "ab1234",
            {"keyPair": "ab1234-key", "leaseCloud": "kvm-lease"},
            secrets={"sshPrivateKey": PRIVATE_KEY},
        )
    message = str(raised.value)
    assert "chi-persist:leaseCloud = 'kvm-lease': names no entry of clouds.yaml" in message
    assert "(its entries: kvm-tacc)" in message and "ccauth clouds-yaml" in message
    assert raised.value.registrations == []
    lease = evaluate(config={"leaseCloud": "kvm-tacc"}).one(LEASE)
    assert lease.inputs["cloud"] == "kvm-tacc"


@pytest.mark.parametrize(
    ("config", "seconds"),
    [
        ({}, 3600),
        ({"leaseDuration": "1h"}, 1800),
        ({"leaseDuration": "90m"}, 2700),
        ({"leaseDuration": "1h", "leaseRenewWindow": "10m"}, 600),
        ({"leaseRenewWindow": "0m"}, 0),
        ({"leaseDuration": "3d", "leaseRenewWindow": "1d"}, 86400),
    ],
    ids=["default", "default-cut-for-1h", "default-cut-for-90m", "set", "never", "a-day"],
)
def test_the_renewal_window_reaches_the_lease(config: dict[str, str], seconds: int) -> None:
    """leaseRenewWindow as set, or 1h cut to half of a shorter lease when not set."""
    lease = evaluate(config=config).one(LEASE)
    assert lease.inputs["renew_window_seconds"] == seconds


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several bad settings are listed together, so one round of fixes suffices."""
    with pytest.raises(pulumi.RunError) as raised:
        evaluate_program(
            "ab1234",
            {"keyPair": "", "volumeSize": -1, "reservation": "x"},
            secrets={"sshPrivateKey": PRIVATE_KEY},
        )
    message = str(raised.value)
    assert message.startswith("3 invalid settings")
    for key in ("keyPair", "volumeSize", "reservation"):
        assert f"chi-persist:{key}" in message


def test_secret_key_is_never_echoed_in_errors() -> None:
    """A malformed private key is reported without printing it."""
    with pytest.raises(pulumi.RunError) as raised:
        evaluate_program(
            "ab1234", {"keyPair": "k", "volumeSize": 0}, secrets={"sshPrivateKey": "hunter2"}
        )
    assert "hunter2" not in str(raised.value)


def _is_secret(serialised: Any, key: str) -> bool:
    """Whether `key` inside a serialised input object carries Pulumi's secret marker."""
    from pulumi.runtime import rpc

    def marked(value: Any) -> bool:
        return (
            isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig
        )

    if marked(serialised):
        return True
    return isinstance(serialised, dict) and marked(serialised.get(key))


def test_unknown_values_are_reported_as_unknown_during_preview() -> None:
    """During a preview, cloud ids are unknown and the program still registers everything."""
    evaluation = evaluate(preview=True)
    assert evaluation.one(VOLUME).protect
    assert re.search(r"remote/prepare-volume ", evaluation.named("prepare-volume").inputs["create"])
    assert UNKNOWN not in json.dumps(evaluation.one(VOLUME).inputs)
