"""The backups' decisions without a cloud: the settings and their rules, which backups are
complete, what retention deletes, what a restore takes, what the server's command line holds."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from components.settings import check_values
from tests.support.paths import REMOTE_SCRIPTS
from tests.support.tools import import_tool

catalog = import_tool("backup_catalog")
backup_settings = import_tool("backup_settings")
backup_server = import_tool("backup_server")
command_line = import_tool("command_line")

NETID = "ab1234"
PARTS = catalog.PARTS


def settings(**values: Any) -> Any:
    return backup_settings.read_settings(NETID, values)


# --- settings ---------------------------------------------------------------------------------


def test_backups_are_off_until_a_cloud_is_named_and_the_tools_say_how_to_turn_them_on():
    """backupCloud empty: off, and the error gives the command that turns them on."""
    off = settings()
    assert not off.on and off.container == "chi-persist-ab1234" and off.keep == 3
    assert off.on_recycle is False
    with pytest.raises(command_line.CommandError) as refused:
        backup_settings.require_on(off)
    assert refused.value.lines[0] == (
        "chi-persist:backupCloud = (not set): backups are off for stack ab1234"
    )
    assert (
        "pulumi config set chi-persist:backupCloud chi_tacc --stack ab1234"
        in (refused.value.lines[1])
    )
    on = settings(backupCloud="chi_tacc", netid="cd5678", backupKeep="5", backupOnRecycle="true")
    assert (on.cloud, on.container, on.keep, on.on_recycle) == ("chi_tacc", "chi-persist-cd5678",
                                                                5, True)  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("backupKeep", "0", "from 1 to 100"),
        ("backupKeep", "many", "from 1 to 100"),
        ("backupKeep", "101", "from 1 to 100"),
        ("backupContainer", "a/b", "without '/'"),
        ("backupContainer", "x" * 257, "1 to 256 bytes"),
        ("backupOnRecycle", "yes", "must be true or false"),
        ("backupCloud", "bad\x01name", "an entry in clouds.yaml"),
    ],
)
def test_every_backup_value_is_checked_like_the_others(key: str, value: str, rule: str):
    """A bad value: its key, the value seen, the rule and the command that fixes it."""
    _, problems = check_values({key: value, "keyPair": "k"}, NETID)
    (problem,) = problems
    assert problem.key == key and problem.value == value and rule in problem.rule
    assert problem.fix.startswith(f"pulumi config set chi-persist:{key} ")
    with pytest.raises(command_line.CommandError) as refused:
        settings(**{key: value})
    assert refused.value.lines[0].startswith(f"chi-persist:{key} = {value!r}: ")
    assert refused.value.exit_code == 2


# --- the catalog ------------------------------------------------------------------------------


def manifest(name: str, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    sizes = sizes or dict.fromkeys(PARTS, 100)
    return {
        "format": catalog.MANIFEST_FORMAT,
        "id": name,
        "bytes": sum(sizes.values()),
        "runs": 2,
        "objects": 1,
        "parts": [
            {"name": part, "object": f"{name}/{part}.x", "bytes": size, "sha256": "0" * 64,
             "segments": 1}
            for part, size in sizes.items()
        ],
    }  # fmt: skip


def objects_of(name: str, sizes: dict[str, int] | None = None, with_manifest: bool = True):
    sizes = sizes or dict.fromkeys(PARTS, 100)
    listed = {f"{name}/{part}.x": size for part, size in sizes.items()}
    listed.update({f"{name}/{part}.x/000000": size for part, size in sizes.items()})
    if with_manifest:
        listed[f"{name}/manifest.json"] = 900
    return listed


@pytest.mark.parametrize(
    ("objects", "given", "problem"),
    [
        (objects_of("20260101T000000Z"), manifest("20260101T000000Z"), None),
        (objects_of("20260101T000000Z", with_manifest=False), None, "no manifest"),
        (
            {k: v for k, v in objects_of("20260101T000000Z").items() if not k.endswith("files.x")},
            manifest("20260101T000000Z"),
            "part files is missing",
        ),
        (
            {**objects_of("20260101T000000Z"), "20260101T000000Z/database.x": 99},
            manifest("20260101T000000Z"),
            "part database is 99 bytes, its manifest says 100",
        ),
        (
            objects_of("20260101T000000Z"),
            {**manifest("20260101T000000Z"), "id": "20250101T000000Z"},
            "not a chi-persist backup's",
        ),
    ],
)
def test_a_backup_is_complete_only_with_its_manifest_and_every_part_at_its_size(
    objects: dict[str, int], given: dict[str, Any] | None, problem: str | None
):
    judged = catalog.judge("20260101T000000Z", objects, given)
    if problem is None:
        assert judged.complete, judged.problem
    else:
        assert not judged.complete and problem in judged.problem


def test_the_listing_is_grouped_by_backup_and_other_objects_are_left_out():
    listing = [
        ("20260101T000000Z/manifest.json", 10),
        ("20260101T000000Z/database.dump", 5),
        ("notes.txt", 3),
        ("not-a-backup/x", 1),
    ]
    assert catalog.group_listing(listing) == {
        "20260101T000000Z": {"20260101T000000Z/manifest.json": 10,
                             "20260101T000000Z/database.dump": 5}
    }  # fmt: skip


def backups(*names: str, incomplete: tuple[str, ...] = ()) -> list[Any]:
    found = []
    for name in names:
        if name in incomplete:
            found.append(catalog.judge(name, objects_of(name, with_manifest=False), None))
        else:
            found.append(catalog.judge(name, objects_of(name), manifest(name)))
    return found


def test_retention_deletes_the_oldest_complete_backups_and_never_an_incomplete_one():
    found = backups(
        "20260101T000000Z", "20260102T000000Z", "20260103T000000Z", "20260104T000000Z",
        "20260105T000000Z", incomplete=("20260101T000000Z", "20260105T000000Z"),
    )  # fmt: skip
    deleted = [backup.name for backup in catalog.older_to_delete(found, keep=2)]
    assert deleted == ["20260102T000000Z"]
    assert catalog.older_to_delete(found, keep=3) == []


def test_a_restore_takes_the_newest_complete_backup_or_the_one_named():
    found = backups("20260101T000000Z", "20260102T000000Z", "20260103T000000Z",
                    incomplete=("20260103T000000Z",))  # fmt: skip
    assert catalog.choose(found, None, "c").name == "20260102T000000Z"
    assert catalog.choose(found, "20260101T000000Z", "c").name == "20260101T000000Z"
    with pytest.raises(command_line.CommandError) as incomplete:
        catalog.choose(found, "20260103T000000Z", "container x")
    assert "is not complete: no manifest" in incomplete.value.lines[0]
    with pytest.raises(command_line.CommandError) as missing:
        catalog.choose(found, "20240101T000000Z", "container x")
    assert "there is no backup '20240101T000000Z' in container x" in missing.value.lines[0]
    with pytest.raises(command_line.CommandError) as none:
        catalog.choose(backups("20260103T000000Z", incomplete=("20260103T000000Z",)), None, "c")
    assert none.value.lines[0] == "there is no complete backup in c"


def test_the_listing_shows_time_age_size_parts_and_completeness():
    now = datetime(2026, 1, 3, 12, 0, tzinfo=timezone.utc)
    table = catalog.listing_table(
        backups("20260101T000000Z", "20260103T110000Z", incomplete=("20260103T110000Z",)), now
    )
    lines = table.splitlines()
    assert lines[0].split() == ["backup", "taken", "(UTC)", "age", "size", "parts", "complete"]
    assert "20260101T000000Z  2026-01-01 00:00  2 d 12 h" in lines[1]
    assert lines[1].rstrip().endswith("yes: 2 run(s), 1 object(s)")
    assert "4 of 4" in lines[1] and "400 B" in lines[1]
    assert lines[2].rstrip().endswith("no: no manifest: a backup that did not finish")


def test_an_empty_platform_holds_nothing_and_a_full_one_says_what():
    empty = {"runs": 0, "objects": 0, "notebooks": [], "files": []}
    assert catalog.emptiness(empty) == []
    held = catalog.emptiness({"runs": 3, "objects": 2, "notebooks": ["a.ipynb"],
                              "files": ["marker.txt"]})  # fmt: skip
    assert held == ["3 MLflow run(s)", "2 object(s) in MinIO",
                    "1 notebook file(s) or folder(s) (a.ipynb)",
                    "other files on the volume (marker.txt)"]  # fmt: skip


def test_the_manifest_records_time_stack_parts_and_images():
    config = settings(backupCloud="chi_tacc")
    result = {"parts": manifest("x")["parts"], "runs": 2, "objects": 1, "notebooks": 3,
              "files": ["marker.txt"], "postgres_major": "17",
              "images": {"postgres": "postgres:17.6-bookworm"}}  # fmt: skip
    now = datetime(2026, 5, 3, 14, 22, 5, tzinfo=timezone.utc)
    made = catalog.build_manifest(catalog.new_backup_name(now), config, result, now, "online")
    assert made["id"] == "20260503T142205Z" and made["time"] == "2026-05-03T14:22:05+00:00"
    assert (made["stack"], made["bytes"], made["images"]["postgres"]) == (
        "ab1234", 400, "postgres:17.6-bookworm")  # fmt: skip
    assert catalog.judge(made["id"], objects_of(made["id"]), manifest(made["id"])).complete


@pytest.mark.parametrize(
    ("age", "passed", "detail", "warned"),
    [
        (timedelta(days=2), True, "20260101T000000Z, 2 d 0 h old, 400 B", False),
        (timedelta(days=8), True, "20260101T000000Z, 8 d 0 h old, 400 B: old", True),
    ],
)
def test_check_shows_the_newest_backups_age_and_warns_past_a_week(
    age: timedelta, passed: bool, detail: str, warned: bool
):
    check = import_tool("backup").newest_backup_check
    now = datetime(2026, 1, 1, tzinfo=timezone.utc) + age
    found = backups("20251230T000000Z", "20260101T000000Z", "20260102T000000Z",
                    incomplete=("20260102T000000Z",))  # fmt: skip
    result = check(found, settings(backupCloud="chi_tacc"), "container c", now)
    assert result[:2] == (passed, detail)
    assert bool(result[2]) is warned
    if warned:
        assert "more than a week" in result[2][0] and "backupOnRecycle true" in result[2][0]
    none = check([], settings(backupCloud="chi_tacc"), "container c", now)
    assert none == (False, "no complete backup in container c: take one with "
                           "`./chi-persist backup --stack ab1234`", [])  # fmt: skip


# --- the server's command -----------------------------------------------------------------------


def test_the_token_goes_on_standard_input_never_on_the_command_line():
    """The remote command names the verb and options only; the token follows the script on
    stdin, and the bootstrap runs exactly that script."""
    token = "gAAAAAB-secret-token"
    command = backup_server.remote_command("backup", ["--container", "c", "--backup-id", "x"])
    assert token not in command and "token" not in command
    script = b"import sys, json\nprint(json.dumps(json.loads(sys.stdin.buffer.readline())))\n"
    stdin = backup_server.script_input(script, {"token": token, "endpoint": "http://e"})
    argv = shlex.split(command)
    assert argv[:3] == ["sudo", "python3", "-c"]
    ran = subprocess.run([sys.executable, "-c", argv[3], *argv[4:]], input=stdin,
                         capture_output=True, check=True)  # fmt: skip
    assert json.loads(ran.stdout) == {"token": token, "endpoint": "http://e"}


def test_the_remote_script_is_standard_library_python_without_a_token_option():
    """platform-backup imports nothing outside the standard library and takes no token flag."""
    text = (REMOTE_SCRIPTS / "platform-backup").read_text()
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    assert "--token" not in text


def test_a_failure_on_the_server_is_reported_with_its_own_error_line():
    with pytest.raises(command_line.CommandError) as failed:
        backup_server.parse_result(
            "", "backup", 1, "platform-backup: x: 1 MiB\nplatform-backup: error: quota is full\n"
        )
    assert failed.value.lines[0] == (
        "platform-backup backup on the server failed (exit status 1): platform-backup: error: "
        "quota is full"
    )
