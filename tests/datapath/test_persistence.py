"""The promise, for real: experiments logged before a recycle are there after it.

A loop device plays the Cinder volume and is prepared by the real
prepare-volume. On it live PostgreSQL 15's data directory (Debian's binaries,
as the postgres image runs it), the S3 server's data, and the credentials file.
MLflow runs with the compose file's options; only hosts and ports are local.
`./chi-persist check`, run as a student runs it, writes a marker; then the compute is
recycled (services stopped, release-volume.sh, the volume detached and attached
again, prepare-volume with a fresh fstab and mount point, services started
again) and `./chi-persist check` must find the marker's metric and artifact bytes.
"""

from __future__ import annotations

import json
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
from tests.support.paths import REMOTE_SCRIPTS, REPO_ROOT
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
ARTIFACTS_POLICY = REPO_ROOT / "docker" / "minio" / "mlflow-artifacts-policy.json"
# The IAM calls s3_identities makes before moto starts checking every request.
IAM_SETUP_CALLS = 6
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


def credentials(
    mount_point: Path, login: bool = True, given: dict[str, str] | None = None
) -> dict[str, str]:
    """The platform's credentials file on the volume, created on the first start only; a
    file from before MLflow's login (`login` False) has the six credentials of then, and gets
    the new ones added when the platform starts with its login, the others unchanged.

    start-stack.sh creates and completes it the same way (root:root 0600, letters and
    digits; tests/test_start_stack.py) but also insists on PostgreSQL 17's data directory,
    and this machine has Debian's PostgreSQL 15, so the test writes the file itself.
    `given` are values made elsewhere (keys moto's IAM made).
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
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if line)
    if login and "MLFLOW_ADMIN_USER" not in values:
        added = {
            "MLFLOW_ADMIN_USER": "u" + random_value(23).lower(),
            "MLFLOW_ADMIN_PASSWORD": random_value(40),
            "MLFLOW_FLASK_SECRET_KEY": random_value(48),
            "MLFLOW_S3_ACCESS_KEY": "u" + random_value(23).lower(),
            "MLFLOW_S3_SECRET_KEY": random_value(40),
        }
        with open(path, "a") as handle:
            handle.write("".join(f"{key}={value}\n" for key, value in added.items()))
        values.update(added)
    if given and any(values.get(key) != value for key, value in given.items()):
        values.update(given)
        path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return values


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
                "mlflow_user": self.credentials["MLFLOW_ADMIN_USER"],
                "mlflow_password": self.credentials["MLFLOW_ADMIN_PASSWORD"],
            },
        }


@contextmanager
def platform_on(
    mount_point: Path,
    workspace: Path,
    label: str,
    login: bool = True,
    s3_users: bool = False,
) -> Iterator[RunningPlatform]:
    """Start PostgreSQL, the S3 server, MLflow and Jupyter with their data on the volume.

    On a fresh volume this does what the stack's first start does: a new
    database cluster with the credentials' user and database, and the bucket.
    Leaving the block stops them all in the order `docker compose down` does,
    PostgreSQL with a fast shutdown. `login` False runs MLflow as the platform did
    before it had a login. `s3_users`: the S3 server checks every request as MinIO
    does (moto's IAM): a root user that may do anything, and MLflow's own user with the
    policy minio-setup gives it (docker/minio/mlflow-artifacts-policy.json); the journal
    is not kept then (moto replays it without the users' keys).
    """
    logs = workspace / "logs"
    sockets = workspace / f"sockets-{label}"
    sockets.mkdir()
    shutil.chown(sockets, "postgres", "postgres")
    with ExitStack() as stack:
        postgres = stack.enter_context(
            postgres_server(mount_point / "postgres_data", sockets, logs / f"postgres-{label}.log")
        )
        database = credentials(mount_point, login=False)
        if (mount_point / "postgres_data").exists():
            postgres.start()
        else:
            postgres.initialize(
                database["POSTGRES_USER"], database["POSTGRES_PASSWORD"], database["POSTGRES_DB"]
            )
        # moto keeps objects in memory; its request journal lives where MinIO keeps
        # its data (MOUNT_POINT/minio_data), and a new server replays it.
        (mount_point / "minio_data").mkdir(exist_ok=True)
        journal = None if s3_users else mount_point / "minio_data" / "s3-journal.jsonl"
        first_start = journal is None or not journal.exists()
        s3_settings = {"INITIAL_NO_AUTH_ACTION_COUNT": str(IAM_SETUP_CALLS)} if s3_users else {}
        s3 = stack.enter_context(s3_server(journal, logs / f"s3-{label}.log", s3_settings))
        given = s3_identities(s3.url) if s3_users else {}
        values = credentials(mount_point, login, given)
        if first_start:  # what the minio-setup one-shot does
            boto3.client(
                "s3",
                endpoint_url=s3.url,
                aws_access_key_id=values["MINIO_ROOT_USER"],
                aws_secret_access_key=values["MINIO_ROOT_PASSWORD"],
                region_name="us-east-1",
            ).create_bucket(Bucket="mlflow-artifacts")
        if login:
            # start-stack.sh makes it for MLflow's image (uid 10001); here MLflow runs as root.
            (mount_point / "mlflow_auth").mkdir(mode=0o700, exist_ok=True)
        launch = mlflow_launch(
            env_file=mount_point / ".chi-persist" / "credentials.env",
            compose_environment={"MOUNT_POINT": str(mount_point), "HOST_IP": "127.0.0.1"},
            postgres_port=postgres.port,
            s3_url=s3.url,
            work_dir=Path(tempfile.mkdtemp(prefix="mlflow-settings-", dir=workspace)),
            login=login,
        )
        if not login:
            # Before MLflow had its own MinIO user it held the root keys.
            launch.environment["AWS_ACCESS_KEY_ID"] = values["MINIO_ROOT_USER"]
            launch.environment["AWS_SECRET_ACCESS_KEY"] = values["MINIO_ROOT_PASSWORD"]
        jupyter_url = stack.enter_context(jupyter_stand_in(values["JUPYTER_TOKEN"]))
        started = time.monotonic()
        mlflow_url = stack.enter_context(
            mlflow_server(launch, logs / f"mlflow-{label}.log", workspace)
        )
        print(f"{label}: MLflow answered /health {time.monotonic() - started:.1f} s after start")
        yield RunningPlatform(mlflow_url, s3.url, jupyter_url, values)
        stack.close()
        assert postgres.shut_down_cleanly(), "PostgreSQL did not shut down cleanly"


def s3_identities(s3_url: str) -> dict[str, str]:
    """MinIO's root user and MLflow's own user, made in moto's IAM: the root may do anything,
    MLflow's user gets the policy minio-setup attaches; their keys (moto makes them)."""
    iam = boto3.client(
        "iam", endpoint_url=s3_url, region_name="us-east-1",
        aws_access_key_id="setup", aws_secret_access_key="setup",
    )  # fmt: skip
    everything = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}  # fmt: skip
    keys = {}
    for user, policy in (
        ("minio-root", json.dumps(everything)),
        ("mlflow", ARTIFACTS_POLICY.read_text()),
    ):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=policy)
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    return {
        "MINIO_ROOT_USER": keys["minio-root"]["AccessKeyId"],
        "MINIO_ROOT_PASSWORD": keys["minio-root"]["SecretAccessKey"],
        "MLFLOW_S3_ACCESS_KEY": keys["mlflow"]["AccessKeyId"],
        "MLFLOW_S3_SECRET_KEY": keys["mlflow"]["SecretAccessKey"],
    }


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
    """`chi-persist check`'s rows by check name: '✓ detail' or '✗ detail'."""
    rows = {}
    for line in stdout.splitlines():
        match = re.match(r"^  ([✓✗]) (.+?)  +(.*)$", line)
        if match:
            rows[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    return rows


def login_environment(platform: RunningPlatform) -> dict[str, str]:
    """`chi-persist check`'s credentials, from the environment as the student gives them."""
    values = platform.credentials
    return {
        "MINIO_ROOT_USER": values["MINIO_ROOT_USER"],
        "MINIO_ROOT_PASSWORD": values["MINIO_ROOT_PASSWORD"],
        "JUPYTER_TOKEN": values["JUPYTER_TOKEN"],
        "MLFLOW_TRACKING_USERNAME": values["MLFLOW_ADMIN_USER"],
        "MLFLOW_TRACKING_PASSWORD": values["MLFLOW_ADMIN_PASSWORD"],
    }


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
            environ=login_environment(platform),
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
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "JUPYTER_TOKEN",
                   "MLFLOW_ADMIN_PASSWORD"):  # fmt: skip
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


# --- MLflow's login ------------------------------------------------------------------------

# The admin credentials MLflow's basic-auth app shipped in older releases (GHSA-gq3w-7jj3-x7gr).
LEGACY_ADMIN = ("admin", "password1234")
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=10"


def status_with(url: str, login: tuple[str, str] | None) -> int:
    """The HTTP status of an MLflow API read, with a login or without."""
    import requests

    return requests.get(f"{url}{SEARCH}", auth=login, timeout=30).status_code


def mlflow_client(url: str, login: tuple[str, str] | None, monkeypatch: pytest.MonkeyPatch):
    """MLflow's client as a student's notebook uses it (MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    from mlflow import MlflowClient

    for name, value in zip(
        ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), login or ("", ""), strict=True
    ):
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    # As from a laptop (README): artifacts through MLflow, not presigned from MinIO's endpoint.
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "false")
    return MlflowClient(tracking_uri=url)


def test_mlflow_lets_in_the_generated_user_and_nobody_else(
    workspace: Path, loop_volumes: LoopVolumes, monkeypatch: pytest.MonkeyPatch
):
    """MLflow with the compose file's basic-auth app: without a login 401, with MLflow's old
    default admin password 401, with a wrong password 401; the generated user logs a run and
    reads it back, and `./chi-persist check` passes with that login and says anonymous is
    refused."""
    volume = loop_volumes.make(size_mib=2048, name="block-persist-login")
    server = new_server(workspace, "server-login")
    prepare_volume(server, "0c5e7f10-2b3d-4e5f-8a9b-c0d1e2f3a4b5", volume.device)
    with platform_on(server.mount_point, workspace, "login") as platform:
        user = platform.credentials["MLFLOW_ADMIN_USER"]
        password = platform.credentials["MLFLOW_ADMIN_PASSWORD"]
        url = platform.mlflow_url
        assert status_with(url, None) == 401
        assert status_with(url, LEGACY_ADMIN) == 401
        assert status_with(url, (user, password + "x")) == 401
        assert status_with(url, ("admin", password)) == 401
        assert status_with(url, (user, password)) == 200
        # The artifact proxy and the UI's AJAX API ask for the login too.
        import requests

        listing = requests.get(f"{url}/api/2.0/mlflow-artifacts/artifacts", timeout=30)
        assert listing.status_code == 401
        client = mlflow_client(url, (user, password), monkeypatch)
        experiment = client.create_experiment("behind-the-login")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "accuracy", 0.91)
        assert client.get_run(run.info.run_id).data.metrics == {"accuracy": 0.91}
        stranger = mlflow_client(url, ("admin", LEGACY_ADMIN[1]), monkeypatch)
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            stranger.get_run(run.info.run_id)
        checked = check_platform(
            "--mlflow-url", url, "--minio-url", platform.minio_url,
            "--jupyter-url", platform.jupyter_url,
            workspace=workspace, environ=login_environment(platform),
        )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    row = table(checked.stdout)["MLflow answers"]
    assert row.startswith("✓") and "refuses a request without a login (401)" in row
    assert password not in checked.stdout + checked.stderr
    release_volume(server.mount_point)


def test_a_platform_from_before_the_login_keeps_every_run_and_model(
    workspace: Path, loop_volumes: LoopVolumes, monkeypatch: pytest.MonkeyPatch
):
    """A volume whose platform ran MLflow without a login (its credentials file has the six
    credentials of then) holds runs, a metric, an artifact and a registered model; after the
    recycle the platform starts with the login (the new credentials added, the others kept):
    anonymous is refused, and the generated user reads every one of them."""
    volume = loop_volumes.make(size_mib=2048, name="block-persist-before")
    volume_id = "1d2e3f40-5a6b-4c7d-8e9f-a0b1c2d3e4f5"
    first = new_server(workspace, "server-before")
    prepare_volume(first, volume_id, volume.device)
    with platform_on(first.mount_point, workspace, "before-login", login=False) as platform:
        assert set(platform.credentials) == {
            "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MINIO_ROOT_USER",
            "MINIO_ROOT_PASSWORD", "JUPYTER_TOKEN",
        }  # fmt: skip
        assert status_with(platform.mlflow_url, None) == 200, "the old platform had no login"
        client = mlflow_client(platform.mlflow_url, None, monkeypatch)
        experiment = client.create_experiment("week-3")
        run = client.create_run(experiment, run_name="before-the-login")
        run_id = run.info.run_id
        client.log_metric(run_id, "loss", 0.25)
        client.log_param(run_id, "lr", "0.01")
        artifact = workspace / "weights.txt"
        artifact.write_bytes(os.urandom(4096).hex().encode())
        client.log_artifact(run_id, str(artifact))
        client.set_terminated(run_id)
        client.create_registered_model("classifier")
        client.create_model_version("classifier", f"runs:/{run_id}/weights.txt", run_id)
    release_volume(first.mount_point)
    volume = reattach(loop_volumes, volume)
    second = new_server(workspace, "server-after")
    prepare_volume(second, volume_id, volume.device)
    old = credentials(second.mount_point, login=False)
    with platform_on(second.mount_point, workspace, "after-login") as platform:
        values = platform.credentials
        assert {key: values[key] for key in old} == old, "the credentials of then are kept"
        url = platform.mlflow_url
        assert status_with(url, None) == 401
        assert status_with(url, LEGACY_ADMIN) == 401
        login = (values["MLFLOW_ADMIN_USER"], values["MLFLOW_ADMIN_PASSWORD"])
        client = mlflow_client(url, login, monkeypatch)
        kept = client.get_run(run_id)
        assert kept.info.run_name == "before-the-login"
        assert kept.data.metrics == {"loss": 0.25}
        assert kept.data.params == {"lr": "0.01"}
        downloaded = Path(client.download_artifacts(run_id, "weights.txt", str(workspace)))
        assert downloaded.read_bytes() == artifact.read_bytes()
        (model,) = client.search_registered_models(filter_string="name = 'classifier'")
        assert model.latest_versions[0].run_id == run_id
        anonymous = mlflow_client(url, None, monkeypatch)
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            anonymous.get_run(run_id)
    release_volume(second.mount_point)


def test_mlflows_minio_user_reads_and_writes_only_its_bucket(
    workspace: Path, loop_volumes: LoopVolumes, monkeypatch: pytest.MonkeyPatch
):
    """The S3 server checks every request as MinIO does (moto's IAM, AWS's policy language,
    which MinIO's policies follow): MLflow, holding only its own user's keys with the policy
    minio-setup attaches, stores and serves a run's artifact; with those keys another bucket
    can be neither listed, read nor written, and the buckets cannot be listed; the root user
    can. Proven: that policy document, as AWS's rules evaluate it, and MLflow working inside
    it. Not proven here (no MinIO, no Docker): MinIO's own evaluation of it, and mc making the
    user (tests/test_compose_file.py runs minio-setup's script with a stand-in mc)."""
    from botocore.exceptions import ClientError

    volume = loop_volumes.make(size_mib=2048, name="block-persist-s3users")
    server = new_server(workspace, "server-s3users")
    prepare_volume(server, "2e3f4051-6b7c-4d8e-9fa0-b1c2d3e4f5a6", volume.device)
    with platform_on(server.mount_point, workspace, "s3-users", s3_users=True) as platform:
        values = platform.credentials
        s3 = {"endpoint_url": platform.minio_url, "region_name": "us-east-1"}
        root = boto3.client("s3", aws_access_key_id=values["MINIO_ROOT_USER"],
                            aws_secret_access_key=values["MINIO_ROOT_PASSWORD"], **s3)  # fmt: skip
        root.create_bucket(Bucket="course-data")
        root.put_object(Bucket="course-data", Key="exam.csv", Body=b"answers")
        mlflow_keys = boto3.client(
            "s3", aws_access_key_id=values["MLFLOW_S3_ACCESS_KEY"],
            aws_secret_access_key=values["MLFLOW_S3_SECRET_KEY"], **s3,
        )  # fmt: skip
        login = (values["MLFLOW_ADMIN_USER"], values["MLFLOW_ADMIN_PASSWORD"])
        client = mlflow_client(platform.mlflow_url, login, monkeypatch)
        run_id = client.create_run(client.create_experiment("in-its-bucket")).info.run_id
        artifact = workspace / "model.txt"
        artifact.write_text("weights")
        client.log_artifact(run_id, str(artifact))
        downloaded = Path(client.download_artifacts(run_id, "model.txt", str(workspace / "d")))
        assert downloaded.read_text() == "weights"
        stored = mlflow_keys.list_objects_v2(Bucket="mlflow-artifacts")["Contents"]
        assert any(item["Key"].endswith(f"{run_id}/artifacts/model.txt") for item in stored)
        for denied in (
            lambda: mlflow_keys.get_object(Bucket="course-data", Key="exam.csv"),
            lambda: mlflow_keys.list_objects_v2(Bucket="course-data"),
            lambda: mlflow_keys.put_object(Bucket="course-data", Key="x", Body=b"x"),
            lambda: mlflow_keys.list_buckets(),
        ):
            with pytest.raises(ClientError) as refused:
                denied()
            assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert root.get_object(Bucket="course-data", Key="exam.csv")["Body"].read() == b"answers"
    release_volume(server.mount_point)
