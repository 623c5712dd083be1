"""The backup settings of a stack: backupCloud, backupContainer, backupKeep, backupOnRecycle,
read from its config and checked by the program's own rules (components/settings.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_USAGE,
    HOW_TO_UNLOCK_SECRETS,
    CommandError,
    PulumiFailed,
    run_pulumi,
    selected_stack,
)
from components.settings import NAMESPACE, check_value, check_values

OFF_FIX = (
    f"turn backups on: give the clouds.yaml entry of an object store, e.g. CHI@TACC's: `pulumi "
    f"config set {NAMESPACE}:backupCloud chi_tacc --stack {{stack}}` (`ccauth clouds-yaml "
    "--all-sites` writes it; KVM@TACC has no object store of its own); see README.md, Backups"
)


@dataclass(frozen=True)
class BackupSettings:
    """What a stack says about its backups, checked by the program's own rules."""

    stack: str
    netid: str
    cloud: str | None
    container: str
    keep: int
    on_recycle: bool
    mount_point: str

    @property
    def on(self) -> bool:
        return self.cloud is not None


def settings_from_values(values: Mapping[str, Any], stack: str) -> BackupSettings:
    """The backup settings of checked values (components/settings.py check_values)."""
    netid = values.get("netid") or stack
    return BackupSettings(
        stack=stack,
        netid=netid,
        cloud=values.get("backupCloud"),
        container=values.get("backupContainer") or f"chi-persist-{netid}",
        keep=values.get("backupKeep") or 1,
        on_recycle=bool(values.get("backupOnRecycle")),
        mount_point=values.get("mountPoint") or "/mnt/block",
    )


def stack_values(stack: str) -> dict[str, Any]:
    """The stack's own settings as `pulumi config --json` shows them (secrets left out)."""
    arguments = ["config", "--json", "--stack", stack]
    try:
        printed = run_pulumi(arguments)
    except PulumiFailed as failure:
        if failure.mentions("no stack named"):
            raise failure.with_fix(
                f"fix: there is no stack named {stack!r}: `pulumi stack ls` lists them"
            ) from None
        if failure.mentions("passphrase"):
            raise failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}") from None
        raise
    try:
        shown = json.loads(printed or "{}")
    except json.JSONDecodeError:
        raise CommandError(
            f"`pulumi config --json --stack {stack}` printed something that is not JSON",
            "fix: check the Pulumi CLI with `pulumi version` (3.x is needed)",
            exit_code=EXIT_FAILED,
        ) from None
    prefix = f"{NAMESPACE}:"
    return {
        key[len(prefix) :]: entry.get("value")
        for key, entry in shown.items()
        if key.startswith(prefix) and isinstance(entry, dict) and not entry.get("secret")
    }


def read_settings(stack: str, values: Mapping[str, Any] | None = None) -> BackupSettings:
    """The stack's backup settings; a bad value of any setting stops here, with its fix."""
    raw = dict(stack_values(stack) if values is None else values)
    checked, problems = check_values(raw, stack)
    relevant = [
        problem
        for problem in problems
        if problem.key.startswith("backup") or problem.key in ("netid", "mountPoint")
    ]
    if relevant:
        raise CommandError(
            *(str(problem) for problem in relevant),
            "nothing was changed",
            exit_code=EXIT_USAGE,
        )
    return settings_from_values(checked, stack)


def require_on(settings: BackupSettings) -> None:
    if not settings.on:
        raise CommandError(
            f"{NAMESPACE}:backupCloud = (not set): backups are off for stack {settings.stack}",
            "fix: " + OFF_FIX.format(stack=settings.stack),
            exit_code=EXIT_USAGE,
        )


def checked_stack(stack: str | None, command: str) -> str:
    if stack is None:
        stack = selected_stack(command)
        print(f"{command}: using the selected stack {stack}", file=sys.stderr)
        return stack
    problem = check_value("netid", stack)[1]
    if problem is not None:
        raise CommandError(
            f"--stack {stack!r}: a stack is named after its netID, which {problem.rule}",
            "fix: e.g. --stack ab1234 (`pulumi stack ls` lists the stacks)",
        )
    return stack
