"""The backup settings of a stack: backupCloud, backupContainer, backupKeep, backupOnRecycle,
read from its config and checked by the program's own rules (components/settings.py)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chi_persist_tools.command_line import (
    EXIT_USAGE,
    PROJECT_DIR,
    CommandError,
    selected_stack,
)
from chi_persist_tools.stack_files import StackFileProblem, read_stack_file, stack_file
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
    """The stack's own settings, read from its file Pulumi.<stack>.yaml beside Pulumi.yaml (no
    pulumi call, no passphrase); the secrets left out. A stack without a file sets nothing."""
    path = stack_file(PROJECT_DIR, stack)
    try:
        document = read_stack_file(path) or {}
    except StackFileProblem as problem:
        raise CommandError(
            f"{path} {problem}",
            "fix: correct it (`pulumi config --stack {stack}` shows what Pulumi reads), then run "
            "this again",
            exit_code=EXIT_USAGE,
        ) from None
    prefix = f"{NAMESPACE}:"
    values: dict[str, Any] = {}
    for key, value in (document.get("config") or {}).items():
        if not str(key).startswith(prefix) or isinstance(value, dict):
            continue  # another namespace's, or a secret ({"secure": ...})
        values[str(key)[len(prefix) :]] = value
    return values


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
