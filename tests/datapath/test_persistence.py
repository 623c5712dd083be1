"""The promise, for real: experiments logged before a recycle are there after it.

A loop device plays the Cinder volume and is prepared by the real
prepare-volume. On it live PostgreSQL 15's data directory (Debian's binaries,
as the postgres image runs it), the S3 server's data, and the credentials file.
MLflow runs with the compose file's options; only hosts and ports are local.
check-platform, run as a student runs it, writes a marker; then the compute is
recycled (services stopped, release-volume.sh, the volume detached and attached
again, prepare-volume with a fresh fstab and mount point, services started
again) and check-platform must find the marker's metric and artifact bytes.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.engine.workspace import StudentMachine, toolchain_skip_reason
from tests.support import readme
from tests.support.block_devices import (
    LoopVolume,
    LoopVolumes,
    block_device_skip_reason,
    link_by_id,
    run,
)
from tests.support.datapath import (
    VENV_BIN,
    datapath_skip_reason,
    jupyter_stand_in,
    mlflow_launch,
    mlflow_server,
    postgres_server,
    s3_server,
)
from tests.support.paths import REMOTE_SCRIPTS
from tests.support.pulumi_state import outputs_deployment
from tests.support.tools import command_argv, command_env

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.root,
    pytest.mark.skipif(
        (block_device_skip_reason() or datapath_skip_reason()) is not None,
        reason=str(block_device_skip_reason() or datapath_skip_reason()),
    ),
    pytest.mark.skipif(toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())),
]

PREPARE_VOLUME = REMOTE_SCRIPTS / "prepare-volume"
RELEASE_VOLUME = REMOTE_SCRIPTS / "release-volume.sh"
NETID = "ab1234"
ALPHANUMERIC = string.ascii_letters + string.digits
CHECK_ROWS = (
    "MLflow answers",
    "MinIO is live",
    "MinIO holds bucket mlflow-artifacts",
    "Jupyter answers with its token",
)


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A directory user postgres can traverse (pytest's own tmp_path is root-only).

    Tests ask for it before loop_volumes, so the volumes are unmounted and
    detached before it is removed.
    """
    directory = Path(tempfile.mkdtemp(prefix="chi-persist-datapath-"))
    directory.chmod(0o755)
    (directory / "logs").mkdir(mode=0o777)
    (directory / "logs").chmod(0o777)
    try:
        yield directory
    finally:
        mounted = run("findmnt", "-rn", "-o", "TARGET", check=False).stdout.split()
        # Never delete through a mount: a volume still mounted here keeps its data.
        if not any(target.startswith(f"{directory}/") for target in mounted):
            shutil.rmtree(directory)


def random_value(length: int) -> str:
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(length))


@dataclass
class Server:
    """One incarnation of the compute: its own by-id directory, fstab and mount point."""

    name: str
    root: Path

    @property
    def mount_point(self) -> Path:
        return self.root / "mnt" / "block"

    @property
    def fstab(self) -> Path:
        return self.root / "fstab"


def new_server(workspace: Path, name: str) -> Server:
    root = workspace / name
    root.mkdir()
    (root / "fstab").write_text("# fresh server\n")
    return Server(name=name, root=root)


def prepare_volume(server: Server, volume_id: str, device: str) -> str:
    """What the program runs on a new server once the volume is attached; its output."""
    link_by_id(server.root / "by-id", volume_id, device)
    result = subprocess.run(
        [
            "python3",
            str(PREPARE_VOLUME),
            "--volume-id",
            volume_id,
            "--mount-point",
            str(server.mount_point),
            "--owner",
            "root",
        ],
        env={**os.environ, "BY_ID_DIR": str(server.root / "by-id"), "FSTAB": str(server.fstab)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"prepare-volume failed:\n{result.stdout}\n{result.stderr}"
    assert run("mountpoint", "-q", str(server.mount_point), check=False).returncode == 0
    return result.stdout + result.stderr


def release_volume(mount_point: Path) -> str:
    """What the program runs when the server is destroyed: stop, sync, unmount."""
    result = subprocess.run(
        ["bash", str(RELEASE_VOLUME), "--mount-point", str(mount_point)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"release-volume.sh failed:\n{result.stdout}\n{result.stderr}"
    assert run("mountpoint", "-q", str(mount_point), check=False).returncode != 0
    return result.stdout + result.stderr


def volume_env(mount_point: Path) -> dict[str, str]:
    lines = (mount_point / ".chi-persist" / "volume.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


def credentials(mount_point: Path) -> dict[str, str]:
    """The platform's credentials file on the volume, created on the first start only.

    start-stack.sh creates it the same way (root:root 0600, letters and digits)
    but also insists on PostgreSQL 17's data directory, and this machine has
    Debian's PostgreSQL 15, so the test writes the file itself.
    """
    path = mount_point / ".chi-persist" / "credentials.env"
    if not path.exists():
        values = {
            "POSTGRES_USER": "u" + random_value(23).lower(),
            "POSTGRES_PASSWORD": random_value(40),
            "POSTGRES_DB": "mlflowdb",
            "MINIO_ROOT_USER": "u" + random_value(23).lower(),
            "MINIO_ROOT_PASSWORD": random_value(40),
            "JUPYTER_TOKEN": random_value(48),
        }
        path.touch(mode=0o600)
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line)


@dataclass
class RunningPlatform:
    mlflow_url: str
    minio_url: str
    jupyter_url: str
    credentials: dict[str, str]

    def stack_outputs(self) -> dict:
        """What `pulumi stack output --json --show-secrets` would print for this platform."""
        return {
            "floating_ip": "127.0.0.1",
            "mlflow_url": self.mlflow_url,
            "jupyter_url": f"{self.jupyter_url}/lab?token={self.credentials['JUPYTER_TOKEN']}",
            "minio_api_url": self.minio_url,
            "minio_console_url": "http://127.0.0.1:9001",
            "platform_credentials": {
                "postgres_user": self.credentials["POSTGRES_USER"],
                "postgres_password": self.credentials["POSTGRES_PASSWORD"],
                "minio_root_user": self.credentials["MINIO_ROOT_USER"],
                "minio_root_password": self.credentials["MINIO_ROOT_PASSWORD"],
                "jupyter_token": self.credentials["JUPYTER_TOKEN"],
            },
        }


@contextmanager
def platform_on(mount_point: Path, workspace: Path, label: str) -> Iterator[RunningPlatform]:
    """Start PostgreSQL, the S3 server, MLflow and Jupyter with their data on the volume.

    On a fresh volume this does what the stack's first start does: a new
    database cluster with the credentials' user and database, and the bucket.
    Leaving the block stops them all in the order `docker compose down` does,
    PostgreSQL with a fast shutdown.
    """
    values = credentials(mount_point)
    logs = workspace / "logs"
    sockets = workspace / f"sockets-{label}"
    sockets.mkdir()
    shutil.chown(sockets, "postgres", "postgres")
    with ExitStack() as stack:
        postgres = stack.enter_context(
            postgres_server(mount_point / "postgres_data", sockets, logs / f"postgres-{label}.log")
        )
        if (mount_point / "postgres_data").exists():
            postgres.start()
        else:
            postgres.initialize(
                values["POSTGRES_USER"], values["POSTGRES_PASSWORD"], values["POSTGRES_DB"]
            )
        # moto keeps objects in memory; its request journal lives where MinIO keeps
        # its data (MOUNT_POINT/minio_data), and a new server replays it.
        (mount_point / "minio_data").mkdir(exist_ok=True)
        journal = mount_point / "minio_data" / "s3-journal.jsonl"
        first_start = not journal.exists()
        s3 = stack.enter_context(s3_server(journal, logs / f"s3-{label}.log"))
        if first_start:  # what the create-bucket one-shot does
            boto3.client(
                "s3",
                endpoint_url=s3.url,
                aws_access_key_id=values["MINIO_ROOT_USER"],
                aws_secret_access_key=values["MINIO_ROOT_PASSWORD"],
                region_name="us-east-1",
            ).create_bucket(Bucket="mlflow-artifacts")
        launch = mlflow_launch(
            env_file=mount_point / ".chi-persist" / "credentials.env",
            compose_environment={"MOUNT_POINT": str(mount_point), "HOST_IP": "127.0.0.1"},
            postgres_port=postgres.port,
            s3_url=s3.url,
        )
        jupyter_url = stack.enter_context(jupyter_stand_in(values["JUPYTER_TOKEN"]))
        started = time.monotonic()
        mlflow_url = stack.enter_context(
            mlflow_server(launch, logs / f"mlflow-{label}.log", workspace)
        )
        print(f"{label}: MLflow answered /health {time.monotonic() - started:.1f} s after start")
        yield RunningPlatform(mlflow_url, s3.url, jupyter_url, values)
        stack.close()
        assert postgres.shut_down_cleanly(), "PostgreSQL did not shut down cleanly"


def check_platform(
    *arguments: str,
    workspace: Path,
    environ: dict[str, str] | None = None,
    student: StudentMachine | None = None,
):
    """./chi-persist check as a student runs it, from the project's virtual environment;
    with `student`, from that machine's copy of the project, reading its stacks."""
    base = student.env if student is not None else os.environ
    environment = {
        key: value for key, value in base.items() if not key.startswith(("AWS_", "MLFLOW_"))
    }
    environment["PATH"] = f"{VENV_BIN}:{environment['PATH']}"
    environment.update(environ or {})
    if student is not None:
        command = [str(student.project / "chi-persist"), "check"]
    else:
        command = command_argv("check")
        environment = command_env(environment)
    return subprocess.run(
        [*command, *arguments],
        cwd=workspace,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def table(stdout: str) -> dict[str, str]:
    """check-platform's rows by check name: '✓ detail' or '✗ detail'."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^  ([✓✗]) (.+?)  +(.*)$", line)
        if match:
            rows[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    return rows


def student_with_stack(workspace: Path, platform: RunningPlatform) -> StudentMachine:
    """A student machine whose stack NETID has the platform's outputs, as `pulumi up` leaves
    them (credentials and Jupyter URL secret), brought in with the real `pulumi stack import`."""
    directory = workspace / "pulumi"
    directory.mkdir(exist_ok=True)
    student = StudentMachine.create(directory)
    student.import_state(
        NETID,
        outputs_deployment(
            NETID, platform.stack_outputs(), ("jupyter_url", "platform_credentials")
        ),
    )
    return student


def reattach(loop_volumes: LoopVolumes, volume: LoopVolume) -> LoopVolume:
    """Detach the volume from the old server and attach it to a new one (maybe a new name)."""
    run("losetup", "-d", volume.device)
    device = run("losetup", "--find", "--show", "--partscan", str(volume.image)).stdout.strip()
    attached = LoopVolume(image=volume.image, device=device)
    loop_volumes.volumes.append(attached)
    attached.settle()
    return attached


def test_marker_survives_a_recycle(workspace: Path, loop_volumes: LoopVolumes):
    """A run logged before the recycle is found after it: metric, artifact bytes, same UUID."""
    volume_id = "7d3e5f0a-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    volume = loop_volumes.make(size_mib=2048, name="block-persist")

    first = new_server(workspace, "server-1")
    first_output = prepare_volume(first, volume_id, volume.device)
    assert "formatted=yes" in first_output
    uuid_before = volume_env(first.mount_point)["FS_UUID"]

    with platform_on(first.mount_point, workspace, "before") as platform:
        written = check_platform(
            "--mlflow-url",
            platform.mlflow_url,
            "--minio-url",
            platform.minio_url,
            "--jupyter-url",
            platform.jupyter_url,
            "--write-marker",
            workspace=workspace,
            environ={
                key: platform.credentials[key]
                for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "JUPYTER_TOKEN")
            },
        )
    assert written.returncode == 0, written.stdout + written.stderr
    rows = table(written.stdout)
    assert all(rows[name].startswith("✓") for name in CHECK_ROWS), written.stdout
    marker = re.match(
        r"✓ run ([0-9a-f]{32}) in experiment chi-persist-check", rows["Marker run written"]
    )
    assert marker, written.stdout
    run_id = marker.group(1)

    # The recycle: services stopped (above), then the destroy step of the old server.
    release_volume(first.mount_point)
    volume = reattach(loop_volumes, volume)
    second = new_server(workspace, "server-2")
    second_output = prepare_volume(second, volume_id, volume.device)
    assert "formatted=no" in second_output
    assert volume_env(second.mount_point) == {"VOLUME_ID": volume_id, "FS_UUID": uuid_before}
    source = run("findmnt", "-n", "-o", "SOURCE", "--mountpoint", str(second.mount_point)).stdout
    uuid_after = run("blkid", "-p", "-s", "UUID", "-o", "value", source.strip()).stdout.strip()
    assert uuid_after == uuid_before

    with platform_on(second.mount_point, workspace, "after") as platform:
        student = student_with_stack(workspace, platform)
        verified = check_platform(
            "--stack", NETID, "--verify-marker", workspace=workspace, student=student
        )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    rows = table(verified.stdout)
    assert all(rows[name].startswith("✓") for name in CHECK_ROWS), verified.stdout
    assert rows["Marker run intact"].startswith(f"✓ run {run_id} written "), verified.stdout
    assert "marker.txt sha256" in rows["Marker run intact"]
    assert verified.stdout.splitlines()[-1] == "all 5 checks passed"
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "JUPYTER_TOKEN"):
        for completed in (written, verified):
            assert platform.credentials[secret] not in completed.stdout + completed.stderr
    release_volume(second.mount_point)


def test_fresh_volume_has_no_marker(workspace: Path, loop_volumes: LoopVolumes):
    """A new, empty volume: the services answer (the README quickstart's check passes as
    written), and --verify-marker fails with a clear message."""
    volume_id = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
    volume = loop_volumes.make(size_mib=2048, name="block-persist-new")
    server = new_server(workspace, "server-new")
    assert "formatted=yes" in prepare_volume(server, volume_id, volume.device)

    with platform_on(server.mount_point, workspace, "fresh") as platform:
        student = student_with_stack(workspace, platform)
        # The README quickstart's check, as written: every service answers.
        (line,) = [line for line in readme.quickstart() if line.startswith("./chi-persist check")]
        (argv,) = readme.simple_commands(readme.fill(line, NETID))
        quick = check_platform(*argv[2:], workspace=workspace, student=student)
        assert quick.returncode == 0, quick.stdout + quick.stderr
        assert all(table(quick.stdout)[name].startswith("✓") for name in CHECK_ROWS)
        verified = check_platform(
            "--stack", NETID, "--verify-marker", workspace=workspace, student=student
        )
        mlflow_url = platform.mlflow_url
    assert verified.returncode == 1, verified.stdout + verified.stderr
    rows = table(verified.stdout)
    assert all(rows[name].startswith("✓") for name in CHECK_ROWS), verified.stdout
    assert rows["Marker run intact"] == (
        f"✗ no marker run in experiment chi-persist-check at {mlflow_url}: "
        "was the volume replaced, or was --write-marker never run?"
    )
    assert verified.stdout.splitlines()[-1] == "1 of 5 checks failed"
    release_volume(server.mount_point)
