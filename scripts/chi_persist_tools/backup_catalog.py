"""The backups in a container, judged from its listing and their manifests (pure functions): which
are complete, which retention deletes, which a restore takes, and how they are shown."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from chi_persist_tools.backup_settings import BackupSettings
from chi_persist_tools.command_line import EXIT_FAILED, EXIT_USAGE, CommandError, span_text

PARTS = ("database", "artifacts", "notebooks", "files")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "chi-persist-backup/1"
BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z$")


@dataclass(frozen=True)
class Backup:
    """One backup in the container: what its objects and manifest say."""

    name: str
    objects: Mapping[str, int]
    """Every object under <name>/ and its size as the listing gives it."""
    manifest: Mapping[str, Any] | None = None
    problem: str | None = None
    """Why it is not complete; None when it is."""

    @property
    def complete(self) -> bool:
        return self.problem is None

    @property
    def taken(self) -> datetime:
        return datetime.strptime(self.name, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)

    @property
    def size(self) -> int:
        if self.manifest is not None and isinstance(self.manifest.get("bytes"), int):
            return int(self.manifest["bytes"])
        return sum(size for name, size in self.objects.items() if _is_part_object(name))

    @property
    def parts(self) -> list[Mapping[str, Any]]:
        if self.manifest is None:
            return []
        return [part for part in self.manifest.get("parts", []) if isinstance(part, Mapping)]


def _is_part_object(name: str) -> bool:
    """<id>/<part file> (a static large object's manifest), not one of its segments."""
    return name.count("/") == 1 and not name.endswith(f"/{MANIFEST}")


def group_listing(listing: Iterable[tuple[str, int]]) -> dict[str, dict[str, int]]:
    """The container's objects by backup name (the first part of the name, when it is one)."""
    groups: dict[str, dict[str, int]] = {}
    for name, size in listing:
        first = name.split("/", 1)[0]
        if BACKUP_ID.match(first) and "/" in name:
            groups.setdefault(first, {})[name] = size
    return groups


def judge(
    name: str,
    objects: Mapping[str, int],
    manifest: Mapping[str, Any] | None,
    manifest_problem: str | None = None,
) -> Backup:
    """Complete: its manifest exists, is this tool's, and every part it names is listed at the
    size it gives."""
    if f"{name}/{MANIFEST}" not in objects:
        return Backup(name, objects, None, "no manifest: a backup that did not finish")
    if manifest is None or manifest_problem is not None:
        return Backup(name, objects, None, f"its manifest is unreadable ({manifest_problem})")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("id") != name:
        return Backup(name, objects, manifest, "its manifest is not a chi-persist backup's")
    parts = manifest.get("parts")
    if not isinstance(parts, list) or sorted(
        part.get("name") for part in parts if isinstance(part, Mapping)
    ) != sorted(PARTS):
        return Backup(name, objects, manifest, f"its manifest does not name the parts {PARTS}")
    for part in parts:
        listed = objects.get(str(part.get("object")))
        if listed is None:
            return Backup(name, objects, manifest, f"part {part.get('name')} is missing")
        if listed != part.get("bytes"):
            return Backup(
                name,
                objects,
                manifest,
                f"part {part.get('name')} is {listed} bytes, its manifest says {part.get('bytes')}",
            )
    return Backup(name, objects, manifest)


def older_to_delete(backups: Sequence[Backup], keep: int) -> list[Backup]:
    """Retention: the complete backups older than the newest `keep` complete ones. An
    incomplete backup is never deleted here (another may still be writing it)."""
    complete = sorted((backup for backup in backups if backup.complete), key=lambda b: b.name)
    return complete[:-keep] if len(complete) > keep else []


def choose(backups: Sequence[Backup], wanted: str | None, where: str) -> Backup:
    """The named backup, or the newest complete one; an incomplete one is refused."""
    if wanted is not None:
        for backup in backups:
            if backup.name == wanted:
                if not backup.complete:
                    raise CommandError(
                        f"backup {wanted} in {where} is not complete: {backup.problem}",
                        "fix: choose a complete one (`./chi-persist backups` lists them)",
                        exit_code=EXIT_USAGE,
                    )
                return backup
        names = ", ".join(backup.name for backup in backups) or "none"
        raise CommandError(
            f"there is no backup {wanted!r} in {where} (there are: {names})",
            "fix: `./chi-persist backups` lists them; give one of those names, or none for the "
            "newest complete one",
            exit_code=EXIT_USAGE,
        )
    complete = [backup for backup in backups if backup.complete]
    if not complete:
        raise CommandError(
            f"there is no complete backup in {where}",
            "fix: take one with `./chi-persist backup` (on the platform that has the data), or "
            "check backupCloud and backupContainer name the store it went to",
            exit_code=EXIT_FAILED,
        )
    return max(complete, key=lambda backup: backup.name)


def format_size(count: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def listing_table(backups: Sequence[Backup], now: datetime) -> str:
    """`./chi-persist backups`: one row per backup, newest last."""
    rows = [("backup", "taken (UTC)", "age", "size", "parts", "complete")]
    for backup in sorted(backups, key=lambda b: b.name):
        present = sum(1 for name in backup.objects if _is_part_object(name))
        if backup.complete:
            manifest = backup.manifest or {}
            state = (
                f"yes: {manifest.get('runs', '?')} run(s), {manifest.get('objects', '?')} object(s)"
            )
        else:
            state = f"no: {backup.problem}"
        rows.append(
            (
                backup.name,
                f"{backup.taken:%Y-%m-%d %H:%M}",
                span_text(now - backup.taken),
                format_size(backup.size),
                f"{present} of {len(PARTS)}",
                state,
            )
        )
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]) - 1)]
    return "\n".join(
        "  "
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[-1]
        for row in rows
    )


def new_backup_name(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def build_manifest(
    name: str, settings: BackupSettings, result: Mapping[str, Any], now: datetime, mode: str
) -> dict[str, Any]:
    """What the manifest records: the time, the stack, each part's size and sha256, the
    platform's image versions."""
    return {
        "format": MANIFEST_FORMAT,
        "id": name,
        "time": now.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "stack": settings.stack,
        "netid": settings.netid,
        "container": settings.container,
        "mode": mode,
        "bytes": sum(int(part["bytes"]) for part in result["parts"]),
        "parts": [dict(part) for part in result["parts"]],
        "runs": result.get("runs"),
        "objects": result.get("objects"),
        "notebooks": result.get("notebooks"),
        "files": result.get("files"),
        "postgres_major": result.get("postgres_major"),
        "images": result.get("images") or {},
    }


def emptiness(survey: Mapping[str, Any]) -> list[str]:
    """What a platform holds, one phrase each; none on an empty platform."""
    held = []
    if survey.get("runs"):
        held.append(f"{survey['runs']} MLflow run(s)")
    if survey.get("objects"):
        held.append(f"{survey['objects']} object(s) in MinIO")
    if survey.get("notebooks"):
        shown = ", ".join(survey["notebooks"][:5]) + (" …" if len(survey["notebooks"]) > 5 else "")
        held.append(f"{len(survey['notebooks'])} notebook file(s) or folder(s) ({shown})")
    if survey.get("files"):
        held.append(f"other files on the volume ({', '.join(survey['files'][:5])})")
    return held
