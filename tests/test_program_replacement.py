"""What a real `pulumi up` replaces, and in which order, when files, flavor, image or mount change.

The engine orders a delete-before-replace by property dependencies only: it deletes
first exactly the dependents that take a property (an output) of the replaced resource
(github.com/pulumi/pulumi pkg/v3 v3.274.1, resource/deploy/step_generator.go,
`calculateDependentReplacements`); a depends_on edge is not followed. The first tests
assert those edges as the program registers them. The later ones derive the order of an
update from two evaluations with tests/support/update_plan.py, a model of that function
and of `continueStepsFromDiff`, and check it step by step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components import project_files
from tests.support.program import (
    ATTACHMENT,
    COPY_TO_REMOTE,
    FLOATING_IP,
    LEASE,
    LOCAL_COMMAND,
    PORT,
    REMOTE_COMMAND,
    SERVER,
    VOLUME,
    Evaluation,
    Registration,
    evaluate_program,
)
from tests.support.ssh_keys import stand_in_private_key
from tests.support.update_plan import (
    Step,
    changed_copy,
    dependent_replacements,
    plan_update,
)

PRIVATE_KEY = stand_in_private_key()
VOLUME_ID = "5b1e0a3c-7f42-4d8e-a1b9-0c6d2e8f4a17"
RESERVATION = "3f1c5b9e-0d3a-4c1e-9b7a-2f6d8e4a1c00"
OTHER_RESERVATION = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def evaluate(config: dict[str, Any] | None = None) -> Evaluation:
    """One student's stack, with a key pair and a private key secret."""
    return evaluate_program(
        "ab1234",
        {"keyPair": "ab1234-key", **(config or {})},
        secrets={"sshPrivateKey": PRIVATE_KEY},
        volume_id=VOLUME_ID,
        floating_ip="129.114.26.77",
    )


@pytest.fixture(scope="module")
def student() -> Evaluation:
    return evaluate()


def trigger_sources(registration: Registration) -> set[str]:
    """The resources whose outputs the step's triggers take (its property dependencies)."""
    return set(registration.property_dependencies.get("triggers", []))


def names(steps: list[Step]) -> list[str]:
    return [str(step) for step in steps]


# --- the edges the engine follows ----------------------------------------------------------


def test_stack_step_takes_a_property_of_the_prepare_step_and_of_both_copies(
    student: Evaluation,
) -> None:
    """The stack step's triggers hold the ids of prepare, both copies, attachment and server."""
    start = student.named("start-stack")
    expected = {
        student.named("prepare-volume").urn,
        student.named("copy-docker").urn,
        student.named("copy-scripts").urn,
        student.one(ATTACHMENT).urn,
        student.one(SERVER).urn,
    }
    assert expected <= trigger_sources(start), "a depends_on edge is not followed by the engine"


def test_whatever_replaces_the_stack_step_replaces_the_prepare_step_too(
    student: Evaluation,
) -> None:
    """The stack step's delete unmounts: every source of its triggers also triggers prepare."""
    start = student.named("start-stack")
    prepare = student.named("prepare-volume")
    assert trigger_sources(start) - {prepare.urn} <= trigger_sources(prepare)
    assert {student.named("copy-docker").urn, student.named("copy-scripts").urn} <= (
        trigger_sources(prepare)
    )
    assert "/mnt/block" in prepare.inputs["triggers"], "a new mount point must release the old"


def test_the_clean_stop_takes_a_property_of_the_stack_step(student: Evaluation) -> None:
    """Its triggers hold the stack step's id: every replacement of the stack step replaces it,
    and it follows the stack step in the state, so the engine deletes it first."""
    stop = student.named("clean-stop")
    start = student.named("start-stack")
    assert {start.urn, student.one(ATTACHMENT).urn, student.one(SERVER).urn} <= (
        trigger_sources(stop)
    ), "a depends_on edge is not followed by the engine"
    order = [registration.urn for registration in student.registrations]
    assert order.index(start.urn) < order.index(stop.urn)


def test_the_clean_stop_is_deleted_before_the_stack_step_and_the_attachment(
    student: Evaluation,
) -> None:
    """A destroy deletes dependents first: the clean stop depends on both, so it runs first."""
    stop = student.named("clean-stop")
    assert {student.named("start-stack").urn, student.one(ATTACHMENT).urn} <= set(
        student.depends_on(stop)
    )


def test_copies_and_volume_steps_are_deleted_before_they_are_replaced(
    student: Evaluation,
) -> None:
    """Delete-before-replace, so the engine deletes (stops) their dependents first."""
    for suffix in ("copy-scripts", "copy-docker", "prepare-volume", "start-stack", "clean-stop"):
        assert student.named(suffix).delete_before_replace, suffix


def test_only_the_clean_stop_has_a_delete_command(student: Evaluation) -> None:
    """The clean stop's delete releases the volume; no other step undoes anything, and no
    remote step has a delete, which would dial a server that may be gone."""
    with_delete = [
        r.name for r in student.of_type(REMOTE_COMMAND) + student.of_type(LOCAL_COMMAND)
        if r.inputs.get("delete")
    ]  # fmt: skip
    assert with_delete == ["provisioning-clean-stop"]
    assert "release-volume.sh" in student.named("clean-stop").inputs["delete"]


def test_each_file_tree_replaces_its_own_copy(
    student: Evaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change under docker/ changes only copy-docker's triggers; scripts/remote/ copy-scripts'."""
    docker = changed_copy(project_files.DOCKER_DIR, tmp_path, "docker-compose.yaml", "# new")
    monkeypatch.setattr("components.provisioning.DOCKER_DIR", docker)
    changed = evaluate()
    assert (
        changed.named("copy-docker").inputs["triggers"]
        != (student.named("copy-docker").inputs["triggers"])
    )
    assert changed.named("copy-scripts").inputs == student.named("copy-scripts").inputs


def test_server_is_replaced_on_a_new_flavor_reservation_or_image(student: Evaluation) -> None:
    """The provider would resize or rebuild in place; replace_on_changes makes it a replacement."""
    server = student.one(SERVER)
    assert {"flavorName", "flavorId", "imageName", "imageId"} <= set(server.replace_on_changes)
    assert server.delete_before_replace


def test_every_dependent_of_the_server_takes_a_property_of_it(student: Evaluation) -> None:
    """Attachment (instance id) and every step (triggers) are in the server's cascade; the
    stack's sealing key is not a step of the server's and stays."""
    server = student.one(SERVER).urn
    assert server in student.one(ATTACHMENT).property_dependencies["instanceId"]
    steps = [
        *student.of_type(REMOTE_COMMAND),
        *student.of_type(COPY_TO_REMOTE),
        *student.of_type(LOCAL_COMMAND),
    ]
    for registration in steps:
        if registration.name == "provisioning-credentials-key":
            assert trigger_sources(registration) == set()
            continue
        assert server in trigger_sources(registration), registration.name


# --- the order of an update, derived by the engine's rules ---------------------------------


def test_the_model_follows_property_dependencies_and_not_depends_on(student: Evaluation) -> None:
    """calculateDependentReplacements: a dependent by depends_on alone is not deleted first."""
    wait_for_boot = student.named("wait-for-boot")
    cascade = [r.name for r in dependent_replacements(student, wait_for_boot, set())]
    # The copies depend on wait-for-boot by depends_on only: no cascade from it.
    assert cascade == []
    copy_docker = student.named("copy-docker")
    cascade = [r.name for r in dependent_replacements(student, copy_docker, set())]
    assert cascade == [
        "provisioning-prepare-volume",
        "provisioning-start-stack",
        "provisioning-clean-stop",
    ]


def changed_tree(
    tree: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Evaluation, str]:
    """The program after a change under docker/ or scripts/remote/, and the copy step's name."""
    if tree == "docker":
        copy = changed_copy(project_files.DOCKER_DIR, tmp_path, "docker-compose.yaml", "# new")
        monkeypatch.setattr("components.provisioning.DOCKER_DIR", copy)
        # The first-boot user data carries docker/ too.
        monkeypatch.setattr(
            "components.project_files.first_boot_user_data", lambda: "#cloud-config\n{}\n"
        )
        return evaluate(), "provisioning-copy-docker"
    copy = changed_copy(project_files.REMOTE_SCRIPTS_DIR, tmp_path, "prepare-volume.sh", "# new")
    monkeypatch.setattr("components.provisioning.REMOTE_SCRIPTS_DIR", copy)
    return evaluate(), "provisioning-copy-scripts"


@pytest.mark.parametrize("tree", ["docker", "scripts"])
def test_a_changed_file_stops_the_stack_first_then_copies_mounts_and_starts(
    student: Evaluation, tree: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clean stop (stop, unmount) before the copy and the prepare step run again."""
    changed, copy = changed_tree(tree, tmp_path, monkeypatch)
    assert names(plan_update(student, changed)) == [
        "delete provisioning-clean-stop",
        "delete provisioning-start-stack",
        "delete provisioning-prepare-volume",
        f"delete {copy}",
        f"create {copy}",
        "create provisioning-prepare-volume",
        "create provisioning-start-stack",
        "create provisioning-clean-stop",
    ]


def test_a_changed_docker_file_leaves_the_server_alone(
    student: Evaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New first-boot user data (it carries docker/) is ignored: no server step at all."""
    changed, _ = changed_tree("docker", tmp_path, monkeypatch)
    assert changed.one(SERVER).inputs["userData"] != student.one(SERVER).inputs["userData"]
    touched = {step.registration.type for step in plan_update(student, changed)}
    assert touched == {COPY_TO_REMOTE, REMOTE_COMMAND, LOCAL_COMMAND}


def test_a_new_mount_point_releases_the_old_one_first(student: Evaluation) -> None:
    """The old clean stop (release at the old mount point) runs before the new mount."""
    steps = plan_update(student, evaluate({"mountPoint": "/mnt/data"}))
    assert names(steps) == [
        "delete provisioning-clean-stop",
        "delete provisioning-start-stack",
        "delete provisioning-prepare-volume",
        "create provisioning-prepare-volume",
        "create provisioning-start-stack",
        "create provisioning-clean-stop",
    ]
    assert "--mount-point /mnt/block" in steps[0].registration.inputs["delete"]
    assert "--mount-point /mnt/data" in steps[3].registration.inputs["create"]
    assert "--mount-point /mnt/data" in steps[5].registration.inputs["delete"]


# The lease's part: "replaced" (a new lease of the new flavor, deleted after the server and
# made before the new one), "dropped" (the student's own reservation: the stack's lease is
# deleted once the new server runs on the reservation), or None (untouched).
SERVER_CHANGES = [
    pytest.param({}, {"flavor": "m1.xlarge"}, "replaced", id="flavor"),
    pytest.param({}, {"reservation": RESERVATION}, "dropped", id="first-reservation"),
    pytest.param({"reservation": RESERVATION}, {"reservation": OTHER_RESERVATION}, None,
                 id="new-reservation"),
    pytest.param({}, {"image": "CC-Ubuntu24.04-CUDA"}, None, id="image"),
]  # fmt: skip


@pytest.mark.parametrize(("before", "after", "lease"), SERVER_CHANGES)
def test_a_new_flavor_reservation_or_image_takes_the_recycle_path(
    before: dict[str, str], after: dict[str, str], lease: str | None
) -> None:
    """Clean stop, detach, delete, new server, re-attach, prepare, start: what a recycle does."""
    old = evaluate(before)
    steps = plan_update(old, evaluate(after))
    order = names(steps)
    server = old.one(SERVER)
    recycled = {
        old.by_urn()[urn].name for urn in old.dependents_closure(server.urn)
        if old.by_urn()[urn].custom
    } | {server.name}  # fmt: skip
    if lease == "dropped":
        assert order[-1] == "delete lease", "the old lease goes once the new server runs"
        steps, order = steps[:-1], order[:-1]
    elif lease == "replaced":
        # The server boots the lease's flavor: it goes first, the lease after it; the new
        # lease comes before the new server.
        assert order.index("delete node-server") < order.index("delete lease")
        assert order.index("create lease") < order.index("create node-server")
        recycled.add("lease")
    deleted = [step.name for step in steps if step.kind == "delete"]
    created = [step.name for step in steps if step.kind == "create"]
    assert order[0] == "delete provisioning-clean-stop", "the clean stop comes first"
    assert set(deleted) == recycled == set(created)
    assert len(deleted) == len(set(deleted))
    assert [step.kind for step in steps] == ["delete"] * len(deleted) + ["create"] * len(created)
    for first, then in [
        ("delete provisioning-clean-stop", "delete node-volume-attachment"),
        ("delete node-volume-attachment", "delete node-server"),
        ("create node-server", "create node-volume-attachment"),
        ("create node-volume-attachment", "create provisioning-prepare-volume"),
        ("create provisioning-prepare-volume", "create provisioning-start-stack"),
    ]:
        assert order.index(first) < order.index(then), (first, then)
    untouched = {VOLUME, PORT, FLOATING_IP}
    assert not [step for step in steps if step.registration.type in untouched]


def test_an_ended_lease_takes_the_recycle_path(student: Evaluation) -> None:
    """A lease replaced because it ended first deletes, by property dependencies, the server
    that boots its flavor and everything on that server, the clean stop first; the volume,
    port and floating IP stay."""
    lease = student.one(LEASE)
    assert lease.delete_before_replace
    cascade = [r.name for r in dependent_replacements(student, lease, set())]
    server = student.one(SERVER)
    on_the_server = {
        student.by_urn()[urn].name
        for urn in student.dependents_closure(server.urn)
        if student.by_urn()[urn].custom
    }
    assert set(cascade) == on_the_server | {server.name}
    assert cascade[0] == server.name and cascade[-1] == "provisioning-clean-stop"
    kept = {r.name for r in student.registrations if r.type in (VOLUME, PORT, FLOATING_IP)}
    assert not kept & set(cascade)


def test_a_new_lease_duration_changes_only_the_lease_in_place(student: Evaluation) -> None:
    """leaseDuration moves the lease's end (an update); no server step, no new lease."""
    steps = plan_update(student, evaluate({"leaseDuration": "1d"}))
    assert names(steps) == ["update lease"]
    assert steps[0].registration.inputs["duration_seconds"] == 86400
    assert steps[0].old is not None and steps[0].old.inputs["duration_seconds"] == 8 * 3600
