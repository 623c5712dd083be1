"""What this stack's Pulumi state holds, read before any resource is registered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXPORT_TIMEOUT_SECONDS = 120


class StateUnreadable(Exception):
    """`pulumi stack export` failed; the message says why."""


@dataclass(frozen=True)
class StateResource:
    """One resource of the state: its URN's type and name, its id, and what adoption needs."""

    urn: str
    type: str
    id: str
    import_id: str = ""
    replacement_trigger: Any = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class PendingOperation:
    """An operation an interrupted `pulumi up` began and never finished (Pulumi keeps a
    pending create until it is told what became of it: pkg/backend/snapshot.go, Snap)."""

    urn: str
    type: str
    operation: str  # creating, updating, deleting, reading, importing

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class StackState:
    resources: tuple[StateResource, ...] = ()
    pending: tuple[PendingOperation, ...] = ()

    def find(self, type_: str, name: str) -> StateResource | None:
        """The custom resource of that type and name (names are unique per type here)."""
        for resource in self.resources:
            if resource.type == type_ and resource.name == name and resource.id:
                return resource
        return None

    def pending_creates(self) -> list[PendingOperation]:
        return [operation for operation in self.pending if operation.operation == "creating"]

    @classmethod
    def from_export(cls, export: Mapping[str, Any]) -> StackState:
        """From `pulumi stack export`'s JSON (apitype.UntypedDeployment, version 3)."""
        deployment = export.get("deployment") or {}
        resources = tuple(
            StateResource(
                urn=resource["urn"],
                type=resource["type"],
                id=str(resource.get("id") or ""),
                import_id=str(resource.get("importID") or ""),
                replacement_trigger=resource.get("replacementTrigger"),
                inputs=resource.get("inputs") or {},
                outputs=resource.get("outputs") or {},
            )
            for resource in deployment.get("resources") or []
            if not resource.get("delete")  # a resource pending deletion after a replacement
        )
        pending = tuple(
            PendingOperation(
                urn=operation["resource"]["urn"],
                type=operation["resource"]["type"],
                operation=str(operation.get("type") or ""),
            )
            for operation in deployment.get("pending_operations") or []
        )
        return cls(resources, pending)


def pulumi_command(environ: Mapping[str, str] | None = None) -> str | None:
    """The CLI that runs this program: the `pulumi` on PATH."""
    environ = os.environ if environ is None else environ
    return shutil.which("pulumi", path=environ.get("PATH"))


# The program compares it with what the cloud holds (components/cloud_inventory.py): a resource
# the cloud has and the state lacks is adopted, one the state has and the cloud lost is made
# again, and nothing is ever imported over a resource the state already holds (that would be an
# import-replacement, which deletes the old one: pulumi/pulumi pkg/resource/deploy/
# step_generator.go, `isImport`). The engine gives a program no view of its state, so the state
# is read the way a student would, with `pulumi stack export`, which takes no lock
# (pkg/backend/diy/backend.go, ExportDeployment) and needs no passphrase.
def read_state(
    stack: str,
    *,
    cwd: Path,
    command: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> StackState:
    """`pulumi stack export --stack <stack>` from the project's directory, parsed."""
    environ = dict(os.environ if environ is None else environ)
    if command is None:
        executable = pulumi_command(environ)
        if executable is None:
            raise StateUnreadable("no `pulumi` command on PATH")
        command = [executable]
    arguments = [*command, "stack", "export", "--stack", stack, "--non-interactive"]
    try:
        done = subprocess.run(
            arguments,
            cwd=cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=EXPORT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StateUnreadable(f"`pulumi stack export` could not run: {error}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"exit status {done.returncode}"
        raise StateUnreadable(f"`pulumi stack export --stack {stack}` failed: {detail}")
    try:
        return StackState.from_export(json.loads(done.stdout))
    except (ValueError, KeyError, TypeError) as error:
        raise StateUnreadable(f"`pulumi stack export` printed no state: {error}") from None
