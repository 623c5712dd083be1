"""The edges a real `pulumi up` follows when files, flavor, image or mount change, as the program
registers them (under mocks: fast graph checks, not claims about the engine).

The engine orders a delete-before-replace by property dependencies only: it deletes
first exactly the dependents that take a property (an output) of the replaced resource
(github.com/pulumi/pulumi pkg/v3 v3.274.1, resource/deploy/step_generator.go,
`calculateDependentReplacements`); a depends_on edge is not followed. These tests assert
the property dependencies, replace-on-change inputs and delete commands that rule relies
on. The order the engine then takes is proven with the engine itself, in
tests/engine/test_semester.py: the event log of each `up` the semester runs (a changed file
under docker/, a longer leaseDuration, a lease's end, a new reservation) and its
`pulumi preview` of a changed file under scripts/remote/, a new mountPoint, flavor, image or
reservation.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from components import project_files
from tests.support.program import (
    ATTACHMENT,
    COPY_TO_REMOTE,
    LOCAL_COMMAND,
    REMOTE_COMMAND,
    SERVER,
    Evaluation,
    Registration,
    evaluate_program,
)
from tests.support.ssh_keys import stand_in_private_key

PRIVATE_KEY = stand_in_private_key()
VOLUME_ID = "5b1e0a3c-7f42-4d8e-a1b9-0c6d2e8f4a17"


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


def changed_copy(directory: Path, into: Path, file: str, line: str) -> Path:
    """A copy of `directory`, under the same name inside `into`, with `line` added to `file`."""
    copy = into / directory.name
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / file, "a") as handle:
        handle.write(line if line.endswith("\n") else line + "\n")
    return copy


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
