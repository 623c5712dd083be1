"""chi-persist backup, backups and restore: the platform's data to an object store and back."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from chi_persist_tools.backup_catalog import (
    BACKUP_ID,
    MANIFEST,
    PARTS,
    Backup,
    build_manifest,
    choose,
    emptiness,
    format_size,
    group_listing,
    judge,
    listing_table,
    new_backup_name,
    older_to_delete,
)
from chi_persist_tools.backup_server import (
    Server,
    SshServer,
    run_streaming,
    stack_address,
    stack_host_key,
    stack_login,
)
from chi_persist_tools.backup_settings import (
    OFF_FIX,
    BackupSettings,
    checked_stack,
    read_settings,
    require_on,
    stack_values,
)
from chi_persist_tools.backup_store import ObjectStore
from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    selected_stack,
    span_text,
)
from components.settings import NAMESPACE

# A backup older than this, with backups on, is worth a warning in `check`.
STALE_AFTER = timedelta(days=7)
# What the tests and `check` take from here.
__all__ = ["PARTS", "CommandError", "ObjectStore", "Server", "run_streaming", "STALE_AFTER"]


@dataclass
class Outcome:
    backup: Backup
    deleted: list[str]


# The data goes from the server to the object store directly: this machine asks the object
# store's Keystone (the clouds.yaml entry chi-persist:backupCloud, e.g. CHI@TACC's) for a token
# of its own, sends it with scripts/remote/platform-backup over SSH's standard input (never an
# argument, never a file on the server), and revokes it when the server is done. The server
# uploads each part as a static large object; this machine writes the manifest last, only
# after the object store lists every part at its size, so a backup that failed half-way never
# looks complete. Retention then deletes the oldest complete backups beyond backupKeep.
def take_backup(
    settings: BackupSettings,
    store: ObjectStore,
    server: Server,
    *,
    mode: str = "online",
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    segment_bytes: int | None = None,
) -> Outcome:
    """One backup: the parts from the server, the manifest from here once the store lists them
    all, then retention. A failure removes what this backup wrote."""
    store.ensure_container()
    started = now()
    name = new_backup_name(started)
    existing = group_listing(store.listing())
    if name in existing:
        raise CommandError(
            f"a backup named {name} already exists in {store.where}",
            "fix: wait a second and run the command again",
            exit_code=EXIT_FAILED,
        )
    size = segment_bytes or store.segment_bytes()
    token = store.server_token()
    print(f"backup: {name} to {store.where}, from the server directly", flush=True)
    try:
        result = server.run(
            "backup",
            ["--container", settings.container, "--backup-id", name, "--segment-bytes", str(size)],
            {"token": token.token, "endpoint": token.endpoint},
        )
        objects = group_listing(store.listing()).get(name, {})
        manifest = build_manifest(name, settings, result, started, mode)
        checked = judge(name, {**objects, f"{name}/{MANIFEST}": 0}, manifest)
        if not checked.complete:
            raise CommandError(
                f"the object store does not list backup {name} as the server wrote it: "
                f"{checked.problem}; no manifest was written",
                "fix: run the command again",
                exit_code=EXIT_FAILED,
            )
        store.write_manifest(name, manifest)
    except BaseException:
        print(
            f"backup: {name} failed: removing what it wrote, so it never looks complete",
            file=sys.stderr,
            flush=True,
        )
        try:
            store.delete(Backup(name, group_listing(store.listing()).get(name, {})))
        except CommandError as cleanup:
            print(
                f"warning: {name} could not be removed ({cleanup.lines[0]}); `./chi-persist "
                "backups` lists it as incomplete",
                file=sys.stderr,
            )
        raise
    finally:
        problem = store.revoke(token)
        if problem is not None:
            print(
                f"warning: the server's token could not be revoked ({problem}); it expires by "
                "itself",
                file=sys.stderr,
            )
    backup = judge(name, {**objects, f"{name}/{MANIFEST}": 0}, manifest)
    print(
        f"backup: {name} complete: {format_size(backup.size)} in {len(PARTS)} parts "
        f"({result.get('runs')} MLflow run(s), {result.get('objects')} object(s))",
        flush=True,
    )
    deleted = []
    for old in older_to_delete(store.backups(), settings.keep):
        store.delete(old)
        deleted.append(old.name)
        print(f"backup: deleted {old.name} (backupKeep = {settings.keep} keeps the newest)")
    return Outcome(backup, deleted)


# A restore downloads and checks every part on the server before anything is replaced;
# without --force only onto a platform that holds nothing.
def restore_backup(
    settings: BackupSettings,
    store: ObjectStore,
    server: Server,
    wanted: str | None,
    *,
    force: bool,
    confirm: Callable[[str], bool],
) -> dict[str, Any]:
    """Onto an empty platform (or, with force and a confirmation, over one that holds data):
    the writers stopped, the backup put in place and checked, the writers started, and MLflow
    asked for the runs."""
    backups = store.backups()
    backup = choose(backups, wanted, store.where)
    manifest = dict(backup.manifest or {})
    print(
        f"restore: backup {backup.name} ({format_size(backup.size)}, taken "
        f"{backup.taken:%Y-%m-%d %H:%M} UTC from stack {manifest.get('stack')}, "
        f"{manifest.get('runs')} MLflow run(s))",
        flush=True,
    )
    survey = server.run("survey", [], None)
    held = emptiness(survey)
    if held and not force:
        raise CommandError(
            "the platform is not empty: it holds " + "; ".join(held) + "; nothing was changed",
            "fix: restore onto a new volume (a new stack, or the README's *Backups*), or replace "
            f"what it holds: `./chi-persist restore {backup.name} --stack {settings.stack} "
            "--force`",
            exit_code=EXIT_USAGE,
        )
    if held:
        print("restore: --force: these will be replaced by the backup's:")
        for item in held:
            print(f"  - {item}")
        if not confirm(f"Replace them with backup {backup.name}?"):
            print("restore: not confirmed; nothing was changed")
            return {"confirmed": False}
    token = store.server_token()
    server.run("writers", ["stop"], None)
    try:
        arguments = ["--container", settings.container, "--backup-id", backup.name]
        if force:
            arguments.append("--replace")
        secrets = {
            "token": token.token,
            "endpoint": token.endpoint,
            "parts": [dict(part) for part in backup.parts],
        }
        result = server.run("restore", arguments, secrets)
    finally:
        problem = store.revoke(token)
        if problem is not None:
            print(
                f"warning: the server's token could not be revoked ({problem}); it expires by "
                "itself",
                file=sys.stderr,
            )
        server.run("writers", ["start"], None)
    expected = manifest.get("runs") or 0
    if expected:
        listed = server.run("verify", [], None)
        if listed.get("runs") != expected:
            raise CommandError(
                f"MLflow lists {listed.get('runs')} run(s) after the restore; backup "
                f"{backup.name} holds {expected}",
                "fix: look at MLflow's log on the server (sudo docker compose --project-name "
                "chi-persist logs mlflow), then run the restore again with --force",
                exit_code=EXIT_FAILED,
            )
        print(f"restore: MLflow lists the {expected} run(s) of the backup")
    else:
        print("restore: the backup holds no MLflow run: nothing to compare in MLflow")
    print(
        f"restore: done: backup {backup.name} is in place on stack {settings.stack}, "
        "every part's sha256 as in its manifest"
    )
    return {"confirmed": True, "backup": backup.name, **result}


def newest_backup_row(settings: BackupSettings, now: datetime) -> tuple[bool, str, list[str]]:
    """For `check`: (passed, detail, warnings) of the newest complete backup in the store."""
    try:
        store = ObjectStore(settings)
        found = store.backups()
    except CommandError as error:
        return False, f"the backups could not be listed: {error.lines[0]}", []
    return newest_backup_check(found, settings, store.where, now)


def newest_backup_check(
    found: Sequence[Backup], settings: BackupSettings, where: str, now: datetime
) -> tuple[bool, str, list[str]]:
    """The newest complete backup's age; a warning past a week; a failure when there is none."""
    complete = [backup for backup in found if backup.complete]
    take = f"`./chi-persist backup --stack {settings.stack}`"
    if not complete:
        return False, f"no complete backup in {where}: take one with {take}", []
    newest = max(complete, key=lambda backup: backup.name)
    age = now - newest.taken
    detail = f"{newest.name}, {span_text(age)} old, {format_size(newest.size)}"
    if age <= STALE_AFTER:
        return True, detail, []
    return (
        True,
        f"{detail}: old",
        [
            f"the newest backup ({newest.name}) is {span_text(age)} old, more than a week: take "
            f"one with {take}, or let every recycle take one (`pulumi config set "
            f"{NAMESPACE}:backupOnRecycle true --stack {settings.stack}`)"
        ],
    )


def ask(question: str) -> bool:
    print(f"{question} [y/N] ", end="", flush=True)
    answer = sys.stdin.readline()
    if not answer:
        print()
        raise CommandError(
            "no answer (nothing to read a confirmation from); nothing was changed",
            "fix: run it in a terminal, or pass --yes",
            exit_code=EXIT_USAGE,
        )
    return answer.strip().lower() in ("y", "yes")


def _server_for(settings: BackupSettings, values: Mapping[str, Any]) -> SshServer:
    return SshServer(
        stack_address(settings.stack),
        stack_login(settings.stack, values),
        settings.mount_point,
        stack_host_key(settings.stack),
    )


def run_backup(stack: str | None) -> int:
    stack = checked_stack(stack, "backup")
    values = stack_values(stack)
    settings = read_settings(stack, values)
    require_on(settings)
    server = _server_for(settings, values)
    store = ObjectStore(settings)
    take_backup(settings, store, server)
    return EXIT_OK


def run_backups(stack: str | None) -> int:
    stack = checked_stack(stack, "backups")
    settings = read_settings(stack)
    require_on(settings)
    store = ObjectStore(settings)
    backups = store.backups()
    if not backups:
        print(
            f"backups: none in {store.where}; take one with `./chi-persist backup --stack {stack}`"
        )
        return EXIT_OK
    print(f"backups of stack {stack} in {store.where}:")
    print(listing_table(backups, datetime.now(timezone.utc)))
    return EXIT_OK


def run_restore(stack: str | None, wanted: str | None, force: bool, assume_yes: bool) -> int:
    stack = checked_stack(stack, "restore")
    if wanted is not None and not BACKUP_ID.match(wanted):
        raise CommandError(
            f"BACKUP {wanted!r} is not a backup's name, like 20260503T142205Z",
            "fix: `./chi-persist backups` lists them; or give none for the newest complete one",
        )
    values = stack_values(stack)
    settings = read_settings(stack, values)
    require_on(settings)
    server = _server_for(settings, values)
    store = ObjectStore(settings)
    outcome = restore_backup(
        settings,
        store,
        server,
        wanted,
        force=force,
        confirm=(lambda _question: True) if assume_yes else ask,
    )
    return EXIT_OK if outcome.get("confirmed") else EXIT_USAGE


def backup_before_recycle(stack: str, address: str | None) -> None:
    """backupOnRecycle: MLflow and Jupyter stopped, a backup, and they stay stopped for the
    recycle's clean stop; on a failure they start again and the recycle stops."""
    values = stack_values(stack)
    settings = read_settings(stack, values)
    if not settings.on_recycle:
        return
    if not settings.on:
        print(
            f"warning: {NAMESPACE}:backupOnRecycle is true but backupCloud is not set: no "
            "backup is taken; " + OFF_FIX.format(stack=stack),
            file=sys.stderr,
        )
        return
    if not address:
        print("warning: backupOnRecycle: the server has no address: no backup", file=sys.stderr)
        return
    server = SshServer(
        address, stack_login(stack, values), settings.mount_point, stack_host_key(stack)
    )
    store = ObjectStore(settings)
    print("recycle: backupOnRecycle: stopping MLflow and Jupyter, then a backup", flush=True)
    server.run("writers", ["stop"], None)
    try:
        take_backup(settings, store, server, mode="writers stopped (recycle)")
    except CommandError as error:
        server.run("writers", ["start"], None)
        raise error.with_lines(
            "the recycle stopped before anything was destroyed; MLflow and Jupyter run again",
            f"fix: correct what is said above and recycle again, or recycle without a backup "
            f"this time: `pulumi config set {NAMESPACE}:backupOnRecycle false --stack {stack}`",
        ) from None
    except BaseException:
        server.run("writers", ["start"], None)
        raise


def check_rows(stack: str | None, note: Callable[[str], None]) -> list[tuple[str, bool, str]]:
    """`check`'s row for the backups of a stack with backups on (none when they are off, with
    a note on how to turn them on); a warning through `note` when the newest is old."""
    try:
        name = stack or selected_stack("check")
        settings = read_settings(name)
    except CommandError as error:
        note(f"the backups were not looked at: {error.lines[0]}")
        return []
    if not settings.on:
        note(f"backups are off for stack {name}; " + OFF_FIX.format(stack=name))
        return []
    passed, detail, warnings_found = newest_backup_row(settings, datetime.now(timezone.utc))
    for warning in warnings_found:
        note(f"warning: {warning}")
    return [("Newest backup", passed, detail)]
