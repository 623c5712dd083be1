"""The order in which `pulumi up` deletes, creates and updates resources, modelled for this program.

Under mocks no engine runs, so the order of remote steps during an update cannot be
watched; this module derives it from two evaluations of the program (the deployed one
and the new one) by the engine's own rules, read in its source:
github.com/pulumi/pulumi/pkg/v3 v3.274.1, resource/deploy/step_generator.go.

- Resources are taken in registration order; a dependent registers only after what it
  depends on has been processed. Each is diffed against its old state
  (`continueStepsFromDiff`): inputs named in ignore_changes keep their old value
  (`processIgnoreChanges`); a changed input replaces the resource when the provider says
  so or when it lies under one of the resource's replaceOnChanges paths
  (`applyReplaceOnChanges`); any other change is an update. A resource that an earlier
  cascade already deleted is replaced, without a second delete of its own
  (`old.PendingReplacement`).
- A replacement with delete-before-replace first deletes the dependents that
  `calculateDependentReplacements` selects, in reverse order, then the resource, then
  creates it. That function walks the OLD snapshot's dependents of the resource
  (`DependencyGraph.DependingOn`: every edge kind, resources already processed in this
  update left out) and keeps a custom resource only when one of its inputs takes a
  property of a resource already in the replace set (its propertyDependencies) and the
  provider's diff with that input unknown is a replacement. A depends_on edge alone
  never qualifies.
- A replacement without delete-before-replace creates the new resource at once; the
  old one is deleted after every create and update (`GenerateDeletes`).
- An input that takes a property of a resource replaced or created earlier in the same
  update has changed: the new resource has a new id (pulumi-command makes random ids with
  `resource.NewUniqueHex`; the cloud makes new ones), although mocks repeat the old one.

The providers' diff rules are a table (`PROVIDER_REPLACE_KEYS`), each row read in the
provider's source. A change this module cannot judge (a resource type not in the table)
raises `UnmodelledChange` rather than guess. Not modelled, because the program uses none
of them: provider replacement, deletedWith, replaceWith, targets, refresh, imports.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc

from components.project_files import tree_digest
from tests.support.program import (
    ATTACHMENT,
    COPY_TO_REMOTE,
    LEASE,
    LOCAL_COMMAND,
    REMOTE_COMMAND,
    SERVER,
    Evaluation,
    Registration,
)

# Top-level inputs whose change the provider itself turns into a replacement.
PROVIDER_REPLACE_KEYS: dict[str, frozenset[str]] = {
    # pulumi-command v1.2.1: Triggers carries `provider:"replaceOnChanges"`
    # (provider/pkg/provider/common/inputs.go, remote/copy.go), which pulumi-go-provider
    # v1.3.0's infer Diff forces to a replacement; every other change is an Update, which
    # runs `update` (else `create`) again for a Command, and copies again for CopyToRemote.
    REMOTE_COMMAND: frozenset({"triggers"}),
    LOCAL_COMMAND: frozenset({"triggers"}),
    COPY_TO_REMOTE: frozenset({"triggers"}),
    # terraform-provider-openstack v3.4.0, resource_openstack_compute_volume_attach_v2.go:
    # instance_id and volume_id are ForceNew.
    ATTACHMENT: frozenset({"instanceId", "volumeId"}),
    # components/lease.py, LeaseProvider.diff: a new flavor is a new lease, made first (its
    # diff asks for create-before-delete); a new name, duration, renewal window or lease
    # cloud is recorded for the next lease, an update that sends Blazar nothing. (A lease
    # that has ended is replaced delete-first, and one inside its renewal window create-
    # first, whatever its inputs: that is the provider's reading of Blazar, not an input
    # change.)
    LEASE: frozenset({"flavor_name"}),
    # resource_openstack_compute_instance_v2.go: these are ForceNew; flavor_id and
    # flavor_name resize in place, image_id and image_name rebuild in place, name and
    # metadata update in place.
    SERVER: frozenset(
        {
            "userData",
            "keyPair",
            "networks",
            "availabilityZone",
            "availabilityZoneHints",
            "blockDevices",
            "configDrive",
            "hypervisorHostname",
            "networkMode",
            "region",
            "schedulerHints",
        }
    ),
}


class UnmodelledChange(AssertionError):
    """The update changes something whose diff rules this model does not know."""


@dataclass(frozen=True)
class Step:
    """One thing the engine does to one resource: create, update or delete."""

    kind: str
    registration: Registration
    """The new registration for create and update; the old state for delete."""
    old: Registration | None = None
    """For an update, the old state."""

    @property
    def name(self) -> str:
        return self.registration.name

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def plan_update(old: Evaluation, new: Evaluation) -> list[Step]:
    """The steps `pulumi up` takes, in order, when the deployed `old` program becomes `new`."""
    old_by_urn = old.by_urn()
    new_urns = {registration.urn for registration in new.registrations}
    steps: list[Step] = []
    pending: set[str] = set()  # deleted by a cascade, to be created again when registered
    renewed: set[str] = set()  # given a new id in this update
    processed: set[str] = set()  # registered so far (the engine's sames, updates, creates, ...)
    deferred: list[Registration] = []  # replaced create-before-delete: deleted at the end
    for registration in new.registrations:
        if not registration.custom:
            continue
        previous = old_by_urn.get(registration.urn)
        processed.add(registration.urn)
        if previous is None:
            steps.append(Step("create", registration))
            renewed.add(registration.urn)
            continue
        already_deleted = registration.urn in pending
        changed = changed_inputs(previous, registration, renewed)
        if not (changed or already_deleted):
            continue
        if already_deleted or any(replaces(registration, key) for key in changed):
            renewed.add(registration.urn)
            if registration.delete_before_replace:
                cascade = dependent_replacements(old, previous, processed | pending)
                for dependent in reversed(cascade):
                    if dependent.urn not in pending:
                        steps.append(Step("delete", dependent))
                        pending.add(dependent.urn)
                if not already_deleted:
                    steps.append(Step("delete", previous))
                steps.append(Step("create", registration))
            else:
                steps.append(Step("create", registration))
                if not already_deleted:
                    deferred.append(previous)
            pending.discard(registration.urn)
        else:
            steps.append(Step("update", registration, previous))
    for previous in reversed(old.registrations):
        gone = previous.custom and previous.urn not in new_urns
        if gone and previous.urn in pending:
            continue  # deleted already by a cascade, and not made again
        if gone or previous in deferred:
            steps.append(Step("delete", previous))
    return steps


def dependent_replacements(
    old: Evaluation, root: Registration, processed: set[str]
) -> list[Registration]:
    """`calculateDependentReplacements`: the dependents a delete-before-replace deletes first.

    In the old snapshot's order, after the root: a resource that depends on the root or on
    one of its dependents by any edge is a dependent; it is replaced when an input of it
    takes a property of a resource in the replace set and the provider would replace it
    for that input becoming unknown.
    """
    order = old.registrations
    start = next(index for index, r in enumerate(order) if r.urn == root.urn)
    dependents = {root.urn}
    replace_set = {root.urn}
    chosen: list[Registration] = []
    for candidate in order[start + 1 :]:
        if candidate.urn in processed:
            continue
        edges = set(candidate.dependencies)
        for urns in candidate.property_dependencies.values():
            edges.update(urns)
        if not edges & dependents:
            continue
        dependents.add(candidate.urn)
        if not candidate.custom:
            continue
        unknown = [
            key
            for key, urns in candidate.property_dependencies.items()
            if set(urns) & replace_set and key not in candidate.ignore_changes
        ]
        if unknown and any(replaces(candidate, key) for key in unknown):
            chosen.append(candidate)
            replace_set.add(candidate.urn)
    return chosen


def replaces(registration: Registration, key: str) -> bool:
    """Whether a change of the top-level input `key` replaces this resource."""
    known = PROVIDER_REPLACE_KEYS.get(registration.type)
    if known is None:
        raise UnmodelledChange(
            f"{registration.name} ({registration.type}): input {key!r} changes, and this "
            "model has no diff rules for the type; read them in its provider and add them"
        )
    if key in known:
        return True
    return any(_top_level(path) == key for path in registration.replace_on_changes)


def changed_inputs(old: Registration, new: Registration, renewed: set[str]) -> list[str]:
    """The top-level inputs that differ, ignored ones kept at their old value."""
    keys = set(old.raw_inputs) | set(new.raw_inputs)
    changed = []
    for key in sorted(keys - set(new.ignore_changes)):
        takes_renewed = set(new.property_dependencies.get(key, [])) & renewed
        if takes_renewed or _comparable(old.raw_inputs.get(key)) != _comparable(
            new.raw_inputs.get(key)
        ):
            changed.append(key)
    return changed


def _top_level(path: str) -> str:
    for separator in ("[", "."):
        path = path.split(separator, 1)[0]
    return path


def _comparable(value: Any) -> Any:
    """A serialised input as the engine compares it: assets and archives by their content."""
    if isinstance(value, (pulumi.FileArchive, pulumi.FileAsset)):
        return _comparable({rpc._special_sig_key: rpc._special_archive_sig, "path": value.path})
    if isinstance(value, dict):
        signature = value.get(rpc._special_sig_key)
        if signature == rpc._special_secret_sig:
            return _comparable(value["value"])
        if signature in (rpc._special_archive_sig, rpc._special_asset_sig) and "path" in value:
            path = Path(value["path"])
            if path.is_dir():
                return ("content", tree_digest(path))
            return ("content", hashlib.sha256(path.read_bytes()).hexdigest())
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def changed_copy(directory: Path, into: Path, file: str, line: str) -> Path:
    """A copy of `directory`, under the same name inside `into`, with `line` added to `file`."""
    copy = into / directory.name
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / file, "a") as handle:
        handle.write(line if line.endswith("\n") else line + "\n")
    return copy
