"""Backups for real: a platform's runs, metrics, params, artifacts and notebooks go to the twin's
Swift (CHI@TACC) and come back onto a blank platform, byte for byte.

The platform is the data path's: PostgreSQL 15 and moto's S3 server on a loop volume prepared
by the real prepare-volume, MLflow with the compose file's options. `./chi-persist backup`'s
and `restore`'s own code (scripts/chi_persist_tools/backup.py) drives it, with
scripts/remote/platform-backup run on this machine instead of over SSH (PostgreSQL's tools
from Debian's binaries instead of the container's, moto's URL instead of MinIO's), and the
object store is the twin's Swift behind CHI@TACC's Keystone, reached with openstacksdk and a
clouds.yaml entry as a student has it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.datapath.test_persistence import (
    RunningPlatform,
    check_platform,
    credentials,
    new_server,
    prepare_volume,
    release_volume,
    student_with_stack,
    table,
)
from tests.engine.workspace import toolchain_skip_reason
from tests.support.block_devices import LoopVolumes, block_device_skip_reason
from tests.support.datapath import (
    POSTGRES_BIN,
    datapath_skip_reason,
    jupyter_stand_in,
    mlflow_launch,
    mlflow_server,
    postgres_server,
    s3_server,
)
from tests.support.paths import REMOTE_SCRIPTS
from tests.support.tools import import_tool
from tests.twin.harness import Twin

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.root,
    pytest.mark.skipif(
        (block_device_skip_reason() or datapath_skip_reason()) is not None,
        reason=str(block_device_skip_reason() or datapath_skip_reason()),
    ),
]

SCRIPT = REMOTE_SCRIPTS / "platform-backup"
NETID = "ab1234"
# Small segments, so every part of a few MiB is a static large object of several.
SEGMENT = 256 * 1024


class LocalPlatform:
    """PostgreSQL, the S3 stand-in and MLflow on one volume, MLflow stoppable on its own (the
    platform's writers), as the compose project's are."""

    def __init__(self, mount_point: Path, workspace: Path, label: str) -> None:
        self.mount_point = mount_point
        self.workspace = workspace
        self.label = label
        self.stack = ExitStack()
        self.mlflow_stack: ExitStack | None = None
        self.mlflow_url = ""

    def __enter__(self) -> LocalPlatform:
        values = credentials(self.mount_point)
        logs = self.workspace / "logs"
        sockets = self.workspace / f"sockets-{self.label}"
        sockets.mkdir()
        shutil.chown(sockets, "postgres", "postgres")
        self.postgres = self.stack.enter_context(
            postgres_server(
                self.mount_point / "postgres_data", sockets, logs / f"pg-{self.label}.log"
            )
        )
        if (self.mount_point / "postgres_data").exists():
            self.postgres.start()
        else:
            self.postgres.initialize(
                values["POSTGRES_USER"], values["POSTGRES_PASSWORD"], values["POSTGRES_DB"]
            )
        (self.mount_point / "minio_data").mkdir(exist_ok=True)
        journal = self.mount_point / "minio_data" / "s3-journal.jsonl"
        first = not journal.exists()
        self.s3 = self.stack.enter_context(s3_server(journal, logs / f"s3-{self.label}.log"))
        self.values = values
        if first:
            self.s3_client().create_bucket(Bucket="mlflow-artifacts")
        notebooks = self.mount_point / "jupyter_work"
        if not notebooks.exists():
            notebooks.mkdir()
            os.chown(notebooks, 1000, 100)
        # start-stack.sh makes it for MLflow's image (uid 10001); here MLflow runs as root.
        (self.mount_point / "mlflow_auth").mkdir(mode=0o700, exist_ok=True)
        self.launch = mlflow_launch(
            env_file=self.mount_point / ".chi-persist" / "credentials.env",
            compose_environment={"MOUNT_POINT": str(self.mount_point), "HOST_IP": "127.0.0.1"},
            postgres_port=self.postgres.port,
            s3_url=self.s3.url,
            work_dir=Path(tempfile.mkdtemp(prefix="mlflow-settings-", dir=self.mount_point.parent)),
        )
        self.start_mlflow()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_mlflow()
        self.stack.close()

    def s3_client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            region_name="us-east-1",
            aws_access_key_id=self.values["MINIO_ROOT_USER"],
            aws_secret_access_key=self.values["MINIO_ROOT_PASSWORD"],
        )

    def start_mlflow(self) -> None:
        if self.mlflow_stack is None:
            self.mlflow_stack = ExitStack()
            self.mlflow_url = self.mlflow_stack.enter_context(
                mlflow_server(
                    self.launch,
                    self.workspace / "logs" / f"mlflow-{self.label}.log",
                    self.workspace,
                )
            )

    def stop_mlflow(self) -> None:
        if self.mlflow_stack is not None:
            self.mlflow_stack.close()
            self.mlflow_stack = None

    def client(self) -> Any:
        """MLflow's client, logged in as the platform's generated admin (MLflow's client reads
        the login from these variables at every request)."""
        from mlflow import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"] = self.values["MLFLOW_ADMIN_USER"]
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.values["MLFLOW_ADMIN_PASSWORD"]
        return MlflowClient(tracking_uri=self.mlflow_url)


class LocalServer:
    """platform-backup run here, as the server runs it, against this platform's services."""

    def __init__(self, platform: LocalPlatform) -> None:
        self.platform = platform
        self.calls: list[str] = []

    def run(self, verb: str, arguments: list[str], secret_values: dict | None) -> Any:
        backup = import_tool("backup")

        self.calls.append(verb)
        if verb == "writers":
            if arguments == ["stop"]:
                self.platform.stop_mlflow()
            else:
                self.platform.start_mlflow()
            return {"changed": ["mlflow"]}
        extra: list[str] = []
        if verb in ("survey", "backup", "restore"):
            extra = [
                "--mount-point",
                str(self.platform.mount_point),
                "--postgres",
                f"127.0.0.1:{self.platform.postgres.port}",
                "--pg-bin",
                str(POSTGRES_BIN),
                "--s3-url",
                self.platform.s3.url,
            ]
        if verb == "verify":
            extra = [
                "--mount-point", str(self.platform.mount_point),
                "--mlflow-url", self.platform.mlflow_url, "--wait", "120",
            ]  # fmt: skip
        line = (json.dumps(secret_values) + "\n").encode() if secret_values is not None else b""
        return backup.run_streaming(
            ["python3", str(SCRIPT), verb, *arguments, *extra], line, os.environ, verb
        )


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A directory user postgres can traverse, never removed through a mount (as
    test_persistence.py's)."""
    directory = Path(tempfile.mkdtemp(prefix="chi-persist-backup-"))
    directory.chmod(0o755)
    (directory / "logs").mkdir(mode=0o777)
    (directory / "logs").chmod(0o777)
    try:
        yield directory
    finally:
        mounted = subprocess.run(
            ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False
        ).stdout.split()
        if not any(target.startswith(f"{directory}/") for target in mounted):
            shutil.rmtree(directory)


@pytest.fixture
def twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Twin]:
    """The twin's CHI@TACC (no VMs), its clouds.yaml the student's."""
    started = Twin(tmp_path / "twin").start()
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "twin" / "clouds.yaml"))
    monkeypatch.delenv("OS_CLOUD", raising=False)
    try:
        yield started
    finally:
        assert started.stop() == 0, started.log_text()


def settings(keep: int = 3) -> Any:
    read_settings = import_tool("backup").read_settings

    return read_settings(NETID, {"backupCloud": "chi_tacc", "backupKeep": keep})


def fill(platform: LocalPlatform) -> dict[str, Any]:
    """Two experiments, three runs with params, metric histories and artifacts (one of a few
    MiB, so its part has many segments), notebooks and a file of the student's."""
    client = platform.client()
    made: dict[str, Any] = {"runs": {}, "artifacts": {}}
    scratch = Path(tempfile.mkdtemp(prefix="artifacts-"))
    for experiment_name, runs in (("week-3", 2), ("baseline", 1)):
        experiment = client.create_experiment(experiment_name)
        for index in range(runs):
            run = client.create_run(experiment, run_name=f"{experiment_name}-{index}")
            run_id = run.info.run_id
            client.log_param(run_id, "lr", str(0.01 * (index + 1)))
            client.log_param(run_id, "optimizer", "adam")
            for step in range(5):
                client.log_metric(run_id, "loss", 1.0 / (step + index + 1), step=step)
            model = scratch / run_id / "model.bin"
            model.parent.mkdir(parents=True)
            model.write_bytes(secrets.token_bytes(3 * 1024 * 1024 if index == 0 else 40_000))
            (scratch / run_id / "notes").mkdir()
            (scratch / run_id / "notes" / "readme.txt").write_text(f"run {run_id}\n")
            client.log_artifacts(run_id, str(scratch / run_id))
            client.set_terminated(run_id)
            made["runs"][run_id] = (experiment_name, index)
            made["artifacts"][run_id] = {
                path.relative_to(scratch / run_id).as_posix(): sha256(path)
                for path in (scratch / run_id).rglob("*")
                if path.is_file()
            }
    shutil.rmtree(scratch)
    work = platform.mount_point / "jupyter_work"
    (work / "week3.ipynb").write_text(json.dumps({"cells": [], "nbformat": 4}))
    (work / "data").mkdir()
    (work / "data" / "train.csv").write_bytes(secrets.token_bytes(200_000))
    for path in (work / "week3.ipynb", work / "data", work / "data" / "train.csv"):
        os.chown(path, 1000, 100)
    (platform.mount_point / "marker.txt").write_text("experiments of week 3: keep me\n")
    return made


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(directory: Path) -> dict[str, tuple[str, int, int]]:
    """Every file below `directory`: its sha256, owner and group."""
    return {
        path.relative_to(directory).as_posix(): (
            sha256(path),
            path.stat().st_uid,
            path.stat().st_gid,
        )
        for path in directory.rglob("*")
        if path.is_file()
    }


def mlflow_view(platform: LocalPlatform) -> dict[str, Any]:
    """What MLflow lists: every run with its experiment, params and metric history, and the
    sha256 of each artifact downloaded through MLflow."""
    client = platform.client()
    view: dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="download-"))
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            run_id = run.info.run_id
            history = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]
            local = Path(client.download_artifacts(run_id, "", str(scratch / run_id)))
            view[run_id] = {
                "experiment": experiment.name,
                "params": dict(run.data.params),
                "loss": sorted(history),
                "artifacts": {
                    path.relative_to(local).as_posix(): sha256(path)
                    for path in local.rglob("*")
                    if path.is_file()
                },
            }
    shutil.rmtree(scratch)
    return view


def fresh_platform_volume(workspace: Path, loop_volumes: LoopVolumes, name: str) -> Path:
    volume = loop_volumes.make(size_mib=1024, name=name)
    server = new_server(workspace, name)
    prepare_volume(server, str(uuid.uuid4()), volume.device)
    return server.mount_point


def test_backup_then_restore_onto_a_blank_platform_gives_the_same_runs_and_bytes(
    workspace: Path, loop_volumes: LoopVolumes, twin: Twin
):
    """Runs, metrics, params and artifacts go to Swift in segments with a manifest; restored
    onto a new volume whose platform has nothing, MLflow lists the same runs with the same
    metrics and every artifact, notebook and file is byte-identical by sha256."""
    backup = import_tool("backup")

    config = settings()
    store = backup.ObjectStore(config)
    first_mount = fresh_platform_volume(workspace, loop_volumes, "first")
    with LocalPlatform(first_mount, workspace, "first") as platform:
        made = fill(platform)
        before = mlflow_view(platform)
        outcome = backup.take_backup(config, store, LocalServer(platform), segment_bytes=SEGMENT)
    notebooks_before = files_of(first_mount / "jupyter_work")
    assert len(before) == 3 and set(before) == set(made["runs"])
    for run_id, artifacts in made["artifacts"].items():
        assert before[run_id]["artifacts"] == artifacts

    taken = outcome.backup
    assert taken.complete, taken.problem
    manifest = dict(taken.manifest or {})
    assert manifest["stack"] == NETID and manifest["runs"] == 3 and manifest["objects"] == 6
    assert [part["name"] for part in manifest["parts"]] == list(backup.PARTS)
    assert all(len(part["sha256"]) == 64 for part in manifest["parts"])
    by_name = {part["name"]: part for part in manifest["parts"]}
    assert by_name["artifacts"]["segments"] > 10, by_name["artifacts"]
    # The volume's other files: the student's; MLflow's users stay with each platform's login.
    assert manifest["files"] == ["marker.txt"], manifest["files"]
    assert manifest["postgres_major"] == "15"
    listed = store.backups()
    assert [(b.name, b.complete) for b in listed] == [(taken.name, True)]

    second_mount = fresh_platform_volume(workspace, loop_volumes, "second")
    with LocalPlatform(second_mount, workspace, "second") as blank:
        server = LocalServer(blank)
        assert server.run("survey", [], None)["empty"] is True
        result = backup.restore_backup(
            config, store, server, None, force=False, confirm=lambda _: False
        )
        assert result["confirmed"] and result["backup"] == taken.name
        assert server.calls == ["survey", "survey", "writers", "restore", "writers", "verify"]
        after = mlflow_view(blank)
        # Restoring again onto what now holds data is refused without --force.
        with pytest.raises(backup.CommandError) as refused:
            backup.restore_backup(config, store, server, None, force=False, confirm=lambda _: True)
    assert after == before
    assert "the platform is not empty: it holds 3 MLflow run(s)" in refused.value.lines[0]
    assert files_of(second_mount / "jupyter_work") == notebooks_before
    assert (second_mount / "marker.txt").read_text() == "experiments of week 3: keep me\n"
    assert not (second_mount / ".chi-persist" / "restore").exists()
    # The new volume keeps its own credentials: nothing of the old one's came along.
    assert credentials(second_mount) != credentials(first_mount)
    release_volume(first_mount)
    release_volume(second_mount)


def test_an_interrupted_upload_never_looks_complete_and_the_next_backup_succeeds(
    workspace: Path, loop_volumes: LoopVolumes, twin: Twin
):
    """A 503 on a segment (after the retry too) fails the backup and its objects are removed;
    when their removal fails too, `backups` lists it as incomplete. The next backup succeeds.
    A restore whose download does not match its manifest changes nothing."""
    backup = import_tool("backup")

    config = settings()
    store = backup.ObjectStore(config)
    mount = fresh_platform_volume(workspace, loop_volumes, "faults")
    with LocalPlatform(mount, workspace, "faults") as platform:
        fill(platform)
        server = LocalServer(platform)
        twin.admin(
            "POST",
            "/faults",
            json={
                "method": "PUT",
                "path": r"/chi-tacc/swift/v1/[^/]+/[^/]+/\d{8}T\d{6}Z/artifacts\.tar/000003",
                "status": 503,
                "body": "<html><h1>Service Unavailable</h1></html>",
                "count": 2,
            },
        )
        with pytest.raises(backup.CommandError) as failed:
            backup.take_backup(config, store, server, segment_bytes=SEGMENT)
        assert "HTTP 503" in failed.value.lines[0], failed.value.lines
        assert store.backups() == [], "the failed backup's objects were left behind"

        # Its cleanup fails too (every DELETE answered 503): listed, but never complete.
        twin.admin(
            "POST",
            "/faults",
            json={
                "method": "PUT",
                "path": r".*/files\.tar/000000",
                "status": 503,
                "count": 2,
            },
        )
        twin.admin(
            "POST",
            "/faults",
            json={"method": "DELETE", "path": r".*", "status": 503, "count": 1000},
        )
        with pytest.raises(backup.CommandError):
            backup.take_backup(config, store, server, segment_bytes=SEGMENT)
        twin.admin("DELETE", "/faults")
        (leftover,) = store.backups()
        assert not leftover.complete and leftover.problem.startswith("no manifest")

        done = backup.take_backup(config, store, server, segment_bytes=SEGMENT)
        assert done.backup.complete
        names = {b.name: b.complete for b in store.backups()}
        assert names == {leftover.name: False, done.backup.name: True}
        with pytest.raises(backup.CommandError) as incomplete:
            backup.restore_backup(
                config, store, server, leftover.name, force=True, confirm=lambda _: True
            )
        assert "is not complete" in incomplete.value.lines[0]

        # A part whose bytes no longer match the manifest: the restore refuses, unchanged.
        view = mlflow_view(platform)
        notebooks = files_of(mount / "jupyter_work")
        segment = f"{done.backup.name}/notebooks.tar/000000"
        original = store.connection.object_store.download_object(
            segment, container=config.container
        )
        damaged = bytes([original[0] ^ 0xFF]) + original[1:]
        store.connection.object_store.create_object(config.container, segment, data=damaged)
        with pytest.raises(backup.CommandError) as refused:
            backup.restore_backup(
                config, store, server, done.backup.name, force=True, confirm=lambda _: True
            )
        assert "the backup is damaged; nothing was changed" in refused.value.lines[0]
        assert server.calls[-2:] == ["restore", "writers"], "MLflow was not started again"
        assert mlflow_view(platform) == view
        assert files_of(mount / "jupyter_work") == notebooks
    release_volume(mount)


@pytest.mark.skipif(toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason()))
def test_retention_deletes_only_older_complete_backups_and_quota_is_reported(
    workspace: Path, loop_volumes: LoopVolumes, twin: Twin
):
    """backupKeep 2 after three backups: the oldest complete one goes; an incomplete backup
    (older, or newer) stays. `./chi-persist check` on the stack shows the newest backup's age
    and warns that it is more than a week old. An account over its quota refuses the upload
    with 413, which the error names with its fix."""
    backup = import_tool("backup")

    config = settings(keep=2)
    store = backup.ObjectStore(config)
    store.ensure_container()
    stray = "20200101T000000Z/database.dump/000000"
    store.connection.object_store.create_object(config.container, stray, data=b"half")
    later = "20991231T000000Z/files.tar/000000"
    store.connection.object_store.create_object(config.container, later, data=b"half")
    mount = fresh_platform_volume(workspace, loop_volumes, "retention")
    start = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    with LocalPlatform(mount, workspace, "retention") as platform:
        server = LocalServer(platform)
        taken = []
        for day in range(3):
            moment = start + timedelta(days=day)
            outcome = backup.take_backup(
                config, store, server, now=lambda moment=moment: moment, segment_bytes=SEGMENT
            )
            taken.append(outcome.backup.name)
        assert outcome.deleted == [taken[0]]
        listed = {b.name: b.complete for b in store.backups()}
        assert listed == {
            "20200101T000000Z": False,
            taken[1]: True,
            taken[2]: True,
            "20991231T000000Z": False,
        }
        with jupyter_stand_in(platform.values["JUPYTER_TOKEN"]) as jupyter_url:
            student = student_with_stack(
                workspace,
                RunningPlatform(platform.mlflow_url, platform.s3.url, jupyter_url, platform.values),
            )
            student.pulumi("config", "set", "chi-persist:backupCloud", "chi_tacc", "--stack", NETID,
                           check=True)  # fmt: skip
            checked = check_platform(
                "--stack", NETID, workspace=workspace, student=student,
                environ={"OS_CLIENT_CONFIG_FILE": os.environ["OS_CLIENT_CONFIG_FILE"]},
            )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        row = table(checked.stdout)["Newest backup"]
        assert row.startswith(f"✓ {taken[2]}, ") and row.endswith(": old"), checked.stdout
        assert f"the newest backup ({taken[2]}) is " in checked.stderr
        assert "more than a week" in checked.stderr
        twin.configure(quota_object_store_bytes=1)
        with pytest.raises(backup.CommandError) as full:
            backup.take_backup(config, store, server, segment_bytes=SEGMENT)
        twin.configure(quota_object_store_bytes=-1)
    said = " ".join(full.value.lines)
    assert "quota is full (HTTP 413: Upload exceeds quota.)" in said, said
    assert "backupKeep" in said
    release_volume(mount)


def test_the_script_refuses_without_a_token_and_never_takes_it_as_an_argument(tmp_path: Path):
    """No token on stdin: exit 2 and the way through; --help names no option for one."""
    (tmp_path / ".chi-persist").mkdir()
    refused = subprocess.run(
        [
            "python3",
            str(SCRIPT),
            "backup",
            "--mount-point",
            str(tmp_path),
            "--container",
            "c",
            "--backup-id",
            "20260101T000000Z",
        ],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "no token on standard input" in refused.stderr
    helped = subprocess.run(
        ["python3", str(SCRIPT), "backup", "--help"], capture_output=True, text=True, check=True
    )
    assert "token" not in helped.stdout.lower().replace("standard input", "")
