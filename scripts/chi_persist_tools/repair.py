"""repair: make a stack's state agree with the cloud after an interrupted run, asking nothing."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    HOW_TO_UNLOCK_SECRETS,
    CommandError,
    PulumiFailed,
    export_state,
    passphrase_is_set,
    pulumi_command_text,
    run_main,
    run_pulumi,
    selected_stack,
    stream_pulumi,
)

DESCRIPTION = """\
Repair a stack's Pulumi state after an interrupted `pulumi up` (a closed laptop, a
dropped session, Ctrl-C twice), without the interactive `pulumi refresh` Pulumi asks for.
"""

EPILOG = """\
what it does:
  1. removes the empty metadata files (*.attrs) a killed pulumi can leave beside the
     stack's files in a local state directory (they make every command fail with
     "failed to load checkpoint: EOF"; without them the backend uses its defaults);
  2. reads the stack's state, and names each create an interrupted run began and never
     finished (a "pending create"): held by the state (`pulumi up` adopted it), or not
     (the next `pulumi up` adopts what the cloud holds with the stack's owner key);
  3. runs `pulumi refresh --yes --clear-pending-creates`, and checks none is left.
  A stack locked by a pulumi that no longer runs is named, with the one command that
  clears the lock (`pulumi cancel --stack NETID --yes`).

after it: `pulumi up --stack NETID` goes on from where the interrupted run stopped.

exit status:
  0  nothing to repair, or repaired
  1  a pulumi command failed, or the cloud could not be asked (what to do is printed)
  2  wrong arguments or no stack selected: nothing was changed
"""


def empty_sidecars(state_url: str) -> list[Path]:
    """The empty *.attrs files under a file:// state directory's .pulumi (gocloud.dev's
    fileblob writes them with no rename: blob/fileblob/attrs.go, setAttrs)."""
    parsed = urlparse(state_url)
    if parsed.scheme != "file":
        return []
    root = Path(unquote(parsed.path)) / ".pulumi"
    if not root.is_dir():
        return []
    return sorted(
        path for path in root.rglob("*.attrs") if path.is_file() and path.stat().st_size == 0
    )


def state_url() -> str | None:
    """Where the state lives, as `pulumi whoami` reports it."""
    try:
        answer = json.loads(run_pulumi(["whoami", "--json", "--non-interactive"]) or "{}")
    except (PulumiFailed, json.JSONDecodeError):
        return None
    url = answer.get("url") if isinstance(answer, dict) else None
    return str(url) if url else None


def pending_creates(export: Mapping[str, Any]) -> list[dict[str, Any]]:
    deployment = export.get("deployment") or {}
    return [
        operation["resource"]
        for operation in deployment.get("pending_operations") or []
        if operation.get("type") == "creating"
    ]


def held_urns(export: Mapping[str, Any]) -> set[str]:
    deployment = export.get("deployment") or {}
    return {resource["urn"] for resource in deployment.get("resources") or [] if resource.get("id")}


# `pulumi up` adopts what an interrupted run made (components/adoption.py), but Pulumi keeps its
# record of the interrupted create until it is told what became of it (pkg/backend/snapshot.go,
# Snap), and its own way out is an interactive `pulumi refresh`. repair clears that record with
# a non-interactive `pulumi refresh --clear-pending-creates`. It does not import through
# `--import-pending-creates`: the CLI (v3.274.1) marks such an operation "importing", and no
# part of the engine turns it into a resource; the snapshot drops it. It also removes the empty
# metadata files a killed `pulumi` can leave in a local state directory, and names a stale
# lock's one fix.
def run(stack: str | None, environ: Mapping[str, str]) -> int:
    if stack is None:
        stack = selected_stack("repair")
        print(f"repair: using the selected stack {stack}")

    url = state_url()
    for path in empty_sidecars(url) if url else []:
        path.unlink()
        print(f"repair: removed {path}, an empty metadata file a killed pulumi left behind")

    export = export_state(stack)
    pending = pending_creates(export)
    if not pending:
        print(f"repair: stack {stack} records no interrupted create: nothing to repair")
        return EXIT_OK
    if not passphrase_is_set(dict(environ)):
        secrets = (export.get("deployment") or {}).get("secrets_providers") or {}
        if secrets.get("type") == "passphrase":
            raise CommandError(
                f"stack {stack}'s secrets are protected by a passphrase, and "
                "PULUMI_CONFIG_PASSPHRASE is not set; nothing was changed",
                f"fix: {HOW_TO_UNLOCK_SECRETS}",
            )

    held = held_urns(export)
    arguments = [
        "refresh", "--stack", stack, "--yes", "--non-interactive", "--skip-preview",
        "--clear-pending-creates",
    ]  # fmt: skip
    for resource in pending:
        name = resource["urn"].rsplit("::", 1)[-1]
        if resource["urn"] in held:
            print(f"repair: {name}: the state holds it (adopted by `pulumi up`): record cleared")
        else:
            print(
                f"repair: {name}: not in the state: record cleared; the next `pulumi up` adopts "
                "what the cloud holds of it with this stack's owner key"
            )
    print(f"repair: {pulumi_command_text(arguments)}", flush=True)
    try:
        stream_pulumi(arguments)
    except PulumiFailed as failure:
        if failure.mentions("passphrase"):
            failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}")
        raise
    left = pending_creates(export_state(stack))
    if left:
        raise CommandError(
            f"the state still records {len(left)} interrupted create(s) after the refresh",
            "fix: run `pulumi refresh --stack " + stack + "` and answer its questions",
            exit_code=EXIT_FAILED,
        )
    print(f"repair: done: stack {stack} records no interrupted create")
    print(f"next: pulumi up --stack {stack}")
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    """Nothing beyond --stack."""


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist repair`."""
    return run_main(lambda: run(arguments.stack, os.environ))
