"""repair: make a stack's state agree with the cloud after an interrupted run, asking nothing.

`pulumi up` adopts what an interrupted run made, but Pulumi keeps its record of the
interrupted create until it is told what became of it, and its only other way out is an
interactive `pulumi refresh`. repair tells it, with the ids it finds in the cloud: each
pending create is imported (`--import-pending-creates URN ID`) when the cloud holds what it
made and the state does not, and cleared (`--clear-pending-creates`) otherwise
(pkg/cmd/pulumi/operations/refresh.go). It also removes the empty metadata files a killed
`pulumi` can leave in a local state directory, and names a stale lock's one fix.
"""

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
  2. reads the stack's state; for each create an interrupted run began and never
     finished (a "pending create"), asks the cloud whether it made the resource:
       - the state holds it already (`pulumi up` adopted it): the record is cleared;
       - the cloud holds it (with this stack's owner key) and the state does not: it is
         imported with its id;
       - the cloud does not hold it: the record is cleared;
  3. runs `pulumi refresh --yes` with those answers, and checks no pending create is left.
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


def cloud_ids(stack: str, export: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    """For each resource name of the program, the id of the one resource the cloud holds with
    this stack's owner key and the state lacks (the program's own survey answers)."""
    from components.access import AccessRulesArgs, opened_ports, ports_for
    from components.cloud_inventory import CloudInventory
    from components.openstack_api import CloudUnavailable, OpenStack
    from components.settings import NAMESPACE, SettingsError, validate
    from components.stack_state import StackState
    from components.survey import SurveyFailed, survey
    from components.volume import VOLUME_NAME

    listing = json.loads(run_pulumi(["config", "--json", "--stack", stack]) or "{}")
    raw = {
        key.split(":", 1)[1]: entry.get("objectValue", entry.get("value"))
        for key, entry in listing.items()
        if key.startswith(f"{NAMESPACE}:") and not entry.get("secret")
    }
    try:
        settings = validate(raw, stack, check_private_key=False)
        api = OpenStack()
    except SettingsError as error:
        raise CommandError(
            "the stack's settings are not valid, so its cloud resources cannot be named",
            *[f"fix: {problem}" for problem in error.problems],
            exit_code=EXIT_FAILED,
        ) from None
    except CloudUnavailable as error:
        raise CommandError(str(error), exit_code=EXIT_FAILED) from None
    rules = opened_ports(
        AccessRulesArgs(
            settings.security_group_name,
            settings.allowed_cidrs,
            settings.existing_security_groups,
            ports=ports_for(settings.platform_access),
        )
    )
    try:
        found = survey(
            settings,
            CloudInventory(settings, api, log=lambda line: print(f"repair: {line}")),
            rules,
            lambda: StackState.from_export(export),
        )
    except SurveyFailed as error:
        raise CommandError(str(error), exit_code=EXIT_FAILED) from None
    ids: dict[str, str] = {}
    for managed, observed in found.observations.values():
        # A server imported from its pending create keeps the program's own inputs (its port
        # among them), which a plain import loses: one is taken whatever it holds.
        if managed.name in names and observed.state is None and len(observed.owned) == 1:
            ids[managed.name] = observed.owned[0].id
    owned = found.volume.owned
    if VOLUME_NAME in names and found.volume.held_id is None and owned is not None:
        volume_id = getattr(owned, "id", None)
        if volume_id:
            ids[VOLUME_NAME] = volume_id
    return ids


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
    unheld = [resource for resource in pending if resource["urn"] not in held]
    names = [resource["urn"].rsplit("::", 1)[-1] for resource in unheld]
    found = cloud_ids(stack, export, names) if unheld else {}
    arguments = ["refresh", "--stack", stack, "--yes", "--non-interactive", "--skip-preview"]
    for resource in pending:
        name = resource["urn"].rsplit("::", 1)[-1]
        if resource["urn"] in held:
            print(f"repair: {name}: the state holds it (adopted by `pulumi up`): record cleared")
        elif name in found:
            arguments += ["--import-pending-creates", resource["urn"], found[name]]
            print(f"repair: {name}: the cloud holds it (id {found[name]}): imported")
        else:
            print(f"repair: {name}: the cloud holds nothing it made: record cleared")
    arguments.append("--clear-pending-creates")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repair",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stack", metavar="NETID", help="the stack to repair (default: the selected stack)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return run_main(lambda: run(arguments.stack, os.environ))
