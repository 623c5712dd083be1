"""scripts/remote/start-stack.sh on real mounts, with a stand-in `docker` on PATH.

The volume is a loop device prepared by the real prepare-volume. The
stand-in docker records its arguments and the MOUNT_POINT, HOST_IP and
OBJECT_STORE_DIR it was given; no Docker engine runs here.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.sealed_credentials import credentials_from_stdout
from tests.support.block_devices import LoopVolumes, link_by_id, run
from tests.support.compose import (
    ADDED_CREDENTIAL_KEYS,
    COMPOSE_FILE,
    CREDENTIAL_KEYS,
    OBJECT_STORE_OVERRIDE,
    ORIGINAL_CREDENTIAL_KEYS,
)
from tests.support.paths import REMOTE_SCRIPTS
from tests.support.stand_ins import StandIns

SCRIPT = REMOTE_SCRIPTS / "start-stack.sh"
PREPARE_VOLUME = REMOTE_SCRIPTS / "prepare-volume"
VOLUME_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
HOST_IP = "203.0.113.10"
JSON_KEYS = {
    "postgres_user",
    "postgres_password",
    "minio_root_user",
    "minio_root_password",
    "jupyter_token",
    "mlflow_user",
    "mlflow_password",
}
# What the program's credentials-key step makes: the key start-stack.sh seals with.
SEAL_KEY = "0123456789abcdef" * 4

DOCKER = """
record()
exit_code = state / "docker-exit-code"
sys.exit(int(exit_code.read_text()) if exit_code.exists() else 0)
"""


@pytest.fixture
def docker(tmp_path: Path) -> StandIns:
    """A stand-in `docker` that records each call and succeeds (unless told otherwise)."""
    stand_ins = StandIns.create(
        tmp_path / "docker",
        watched=("MOUNT_POINT", "HOST_IP", "OBJECT_STORE_DIR", "PUBLISH_ADDRESS"),
    )
    stand_ins.add("docker", DOCKER)
    return stand_ins


def prepare(mount_point: Path, by_id_dir: Path, fstab: Path) -> None:
    """Run the real prepare-volume, as the program does before start-stack.sh."""
    completed = subprocess.run(
        [
            "python3",
            str(PREPARE_VOLUME),
            "--volume-id",
            VOLUME_ID,
            "--mount-point",
            str(mount_point),
            "--owner",
            "root",
        ],
        env={**os.environ, "BY_ID_DIR": str(by_id_dir), "FSTAB": str(fstab)},
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.fixture
def prepared_volume(loop_volumes: LoopVolumes, tmp_path: Path) -> Path:
    """The mount point of a blank loop volume prepared (formatted, mounted) by prepare-volume."""
    if not PREPARE_VOLUME.exists():
        pytest.skip(f"{PREPARE_VOLUME} is not there")
    volume = loop_volumes.make(size_mib=512, name="block-persist")
    by_id_dir = tmp_path / "by-id"
    link_by_id(by_id_dir, VOLUME_ID, volume.device)
    (tmp_path / "fstab").write_text("")
    mount_point = tmp_path / "mnt" / "block"
    prepare(mount_point, by_id_dir, tmp_path / "fstab")
    return mount_point


@pytest.fixture
def unprepared_ext4(loop_volumes: LoopVolumes, tmp_path: Path) -> Path:
    """An ext4 filesystem mounted by hand: a mount, but not prepared by prepare-volume."""
    volume = loop_volumes.make(size_mib=256, name="unprepared")
    run("mkfs.ext4", "-q", "-F", volume.device)
    mount_point = tmp_path / "unprepared"
    mount_point.mkdir()
    run("mount", volume.device, str(mount_point))
    return mount_point


@pytest.fixture
def tmpfs_mount(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at a fresh directory, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point))
    try:
        yield mount_point
    finally:
        run("umount", str(mount_point), check=False)


def start(
    docker: StandIns,
    mount_point: Path,
    *extra: str,
    compose_file: Path = COMPOSE_FILE,
    object_store: Path | None = None,
    host_ip: str = HOST_IP,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run start-stack.sh as the program does, the stand-in docker first on PATH; `stdin` is
    what the command gets on its standard input (the sealing key), else nothing."""
    object_store = object_store or mount_point.parent / "no-object-store"
    return subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--mount-point",
            str(mount_point),
            "--host-ip",
            host_ip,
            "--compose-file",
            str(compose_file),
            "--object-store-dir",
            str(object_store),
            *extra,
        ],
        env=docker.environment(),
        capture_output=True,
        text=True,
        check=False,
        input=stdin if stdin is not None else "",
        timeout=120,
    )


def sealed_start(docker: StandIns, mount_point: Path, *extra: str):
    """start-stack.sh as the program runs it: --print-sealed-credentials, the key on stdin."""
    return start(docker, mount_point, "--print-sealed-credentials", *extra, stdin=f"{SEAL_KEY}\n")


def credentials_of(mount_point: Path) -> dict[str, str]:
    """The KEY=value lines of the volume's credentials file."""
    text = (mount_point / ".chi-persist" / "credentials.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def fake_volume_env(directory: Path) -> None:
    """A volume.env as prepare-volume would write it, on something it never prepared."""
    (directory / ".chi-persist").mkdir(mode=0o755)
    (directory / ".chi-persist" / "volume.env").write_text(
        f"VOLUME_ID={VOLUME_ID}\nFS_UUID=3e6be9de-8139-4f36-9a0a-3d1f2c1a0b9e\n"
    )


# --- refusals: nothing started, nothing written ------------------------------------------


def test_refuses_a_plain_directory(docker: StandIns, tmp_path: Path) -> None:
    """A mount point that is not mounted (server booted without its volume) starts nothing."""
    if os.geteuid() != 0:
        pytest.skip("start-stack.sh runs as root")
    mount_point = tmp_path / "mnt" / "block"
    mount_point.mkdir(parents=True)
    fake_volume_env(mount_point)
    completed = start(docker, mount_point)
    assert completed.returncode == 3
    assert "is not a mount point" in completed.stderr
    assert str(mount_point) in completed.stderr
    assert "prepare-volume" in completed.stderr
    assert docker.calls() == []
    assert sorted(p.name for p in mount_point.iterdir()) == [".chi-persist"]
    assert not (mount_point / ".chi-persist" / "credentials.env").exists()


def test_refuses_a_mount_of_the_wrong_filesystem(docker: StandIns, tmpfs_mount: Path) -> None:
    """A tmpfs at the mount point is not the volume: refused with the type seen."""
    fake_volume_env(tmpfs_mount)
    completed = start(docker, tmpfs_mount)
    assert completed.returncode == 3
    assert "tmpfs" in completed.stderr and "ext4" in completed.stderr
    assert docker.calls() == []
    assert sorted(p.name for p in tmpfs_mount.iterdir()) == [".chi-persist"]
    assert not (tmpfs_mount / ".chi-persist" / "credentials.env").exists()


def test_refuses_ext4_not_prepared_by_prepare_volume(
    docker: StandIns, unprepared_ext4: Path
) -> None:
    """A mounted ext4 without volume.env may be any disk: refused, nothing written to it."""
    before = sorted(p.name for p in unprepared_ext4.iterdir())
    completed = start(docker, unprepared_ext4)
    assert completed.returncode == 3
    assert "volume.env is missing" in completed.stderr
    assert docker.calls() == []
    assert sorted(p.name for p in unprepared_ext4.iterdir()) == before


def test_refuses_a_volume_env_of_another_filesystem(
    docker: StandIns, prepared_volume: Path
) -> None:
    """A volume.env whose FS_UUID is not the mounted filesystem's is refused, both UUIDs named."""
    volume_env = prepared_volume / ".chi-persist" / "volume.env"
    actual = re.search(r"^FS_UUID=(.+)$", volume_env.read_text(), re.M).group(1)
    other = "0b1c2d3e-4f50-4617-8283-94a5b6c7d8e9"
    volume_env.write_text(f"VOLUME_ID={VOLUME_ID}\nFS_UUID={other}\n")
    completed = start(docker, prepared_volume)
    assert completed.returncode == 3
    assert actual in completed.stderr and other in completed.stderr
    assert docker.calls() == []
    assert not (prepared_volume / ".chi-persist" / "credentials.env").exists()


def test_refuses_a_missing_compose_file(docker: StandIns, prepared_volume: Path) -> None:
    """A compose file that is not there: exit 4 with its path, no credentials created."""
    missing = prepared_volume.parent / "nowhere" / "docker-compose.yaml"
    completed = start(docker, prepared_volume, compose_file=missing)
    assert completed.returncode == 4
    assert str(missing) in completed.stderr
    assert docker.calls() == []
    assert not (prepared_volume / ".chi-persist" / "credentials.env").exists()


def _loosen_mode(path: Path) -> None:
    path.chmod(0o644)


def _give_to_a_user(path: Path) -> None:
    os.chown(path, 1000, 1000)


def _drop_the_token(path: Path) -> None:
    keys = [k for k in CREDENTIAL_KEYS if k != "JUPYTER_TOKEN"]
    path.write_text("".join(f"{k}=Value0123456789abcdefghij\n" for k in keys))


def _put_a_quote_in_a_value(path: Path) -> None:
    path.write_text(path.read_text().replace("POSTGRES_DB=mlflowdb", "POSTGRES_DB=mlflow'db"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_loosen_mode, "has mode 644, not 600"),
        (_give_to_a_user, "is owned by 1000:1000, not root:root"),
        (_drop_the_token, "has no JUPYTER_TOKEN line"),
        (_put_a_quote_in_a_value, "the value of POSTGRES_DB"),
    ],
    ids=["mode-0644", "owned-by-a-user", "missing-key", "bad-value"],
)
def test_unsafe_credentials_are_refused_and_left_unchanged(
    docker: StandIns, prepared_volume: Path, damage, message: str
) -> None:
    """A credentials file with the wrong mode, owner or content: exit 5, file untouched."""
    assert start(docker, prepared_volume).returncode == 0
    calls_before = len(docker.calls())
    path = prepared_volume / ".chi-persist" / "credentials.env"
    damage(path)
    content, status = path.read_bytes(), path.stat()
    completed = start(docker, prepared_volume)
    assert completed.returncode == 5
    assert message in completed.stderr
    assert str(path) in completed.stderr
    assert len(docker.calls()) == calls_before
    after = path.stat()
    assert path.read_bytes() == content
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        status.st_mode,
        status.st_uid,
        status.st_gid,
    )


def test_refuses_a_database_whose_credentials_are_unknown(
    docker: StandIns, prepared_volume: Path
) -> None:
    """A PostgreSQL cluster on the volume without credentials.env: exit 5, nothing generated."""
    data = prepared_volume / "postgres_data"
    data.mkdir()
    (data / "PG_VERSION").write_text("17\n")
    completed = start(docker, prepared_volume)
    assert completed.returncode == 5
    assert "password is unknown" in completed.stderr
    assert not (prepared_volume / ".chi-persist" / "credentials.env").exists()
    assert docker.calls() == []


def test_refuses_a_database_of_another_major_version(
    docker: StandIns, prepared_volume: Path
) -> None:
    """A PostgreSQL 18 cluster is never handed to PostgreSQL 17: exit 3, nothing started."""
    assert start(docker, prepared_volume).returncode == 0
    calls_before = len(docker.calls())
    (prepared_volume / "postgres_data" / "PG_VERSION").write_text("18\n")
    completed = start(docker, prepared_volume)
    assert completed.returncode == 3
    assert "PostgreSQL 18" in completed.stderr
    assert len(docker.calls()) == calls_before


@pytest.mark.parametrize("host_ip", ["", "203.0.113", "256.1.1.1", "node.example.org", "1.2.3.4 "])
def test_refuses_a_host_ip_that_is_not_ipv4(
    docker: StandIns, prepared_volume: Path, host_ip: str
) -> None:
    """--host-ip must be a dotted IPv4 address; anything else is a usage error naming it."""
    completed = start(docker, prepared_volume, host_ip=host_ip)
    assert completed.returncode == 2
    assert "--host-ip" in completed.stderr
    assert docker.calls() == []


# --- a prepared volume -------------------------------------------------------------------


def test_starts_the_stack_on_a_prepared_volume(docker: StandIns, prepared_volume: Path) -> None:
    """docker compose up runs once, with the volume's credentials and MOUNT_POINT/HOST_IP set."""
    completed = start(docker, prepared_volume)
    assert completed.returncode == 0, completed.stderr
    calls = docker.calls("docker")
    assert len(calls) == 1
    credentials_file = prepared_volume / ".chi-persist" / "credentials.env"
    assert calls[0]["argv"] == [
        "compose",
        "--project-name",
        "chi-persist",
        "--env-file",
        str(credentials_file),
        "--file",
        str(COMPOSE_FILE),
        "up",
        "--detach",
        "--wait",
        "--wait-timeout",
        "600",
    ]
    assert calls[0]["env"]["MOUNT_POINT"] == str(prepared_volume)
    assert calls[0]["env"]["HOST_IP"] == HOST_IP
    # platformAccess public by default: the ports are published on every address.
    assert calls[0]["env"]["PUBLISH_ADDRESS"] == "0.0.0.0"  # noqa: S104
    for url in (f"http://{HOST_IP}:{port}" for port in (8000, 8888, 9000, 9001)):
        assert url in completed.stderr
    assert completed.stdout == ""


def test_credentials_are_created_once_root_only_and_strong(
    docker: StandIns, prepared_volume: Path
) -> None:
    """The first start writes credentials.env root:root 0600 with long random letters and digits."""
    assert start(docker, prepared_volume).returncode == 0
    path = prepared_volume / ".chi-persist" / "credentials.env"
    status = path.stat()
    assert stat.S_IMODE(status.st_mode) == 0o600
    assert (status.st_uid, status.st_gid) == (0, 0)
    credentials = credentials_of(prepared_volume)
    assert list(credentials) == list(CREDENTIAL_KEYS)
    assert credentials["POSTGRES_DB"] == "mlflowdb"
    secrets = {key: value for key, value in credentials.items() if key != "POSTGRES_DB"}
    for key, value in secrets.items():
        assert re.fullmatch(r"[A-Za-z0-9]{24,}", value), f"{key} is weak: {len(value)} chars"
    assert len(set(secrets.values())) == len(secrets)
    for key in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "JUPYTER_TOKEN"):
        value = credentials[key]
        assert re.search(r"[a-z]", value) and re.search(r"[A-Z]", value), key
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".credentials")] == []


def test_credentials_survive_restarts_and_a_new_server(
    docker: StandIns, prepared_volume: Path, tmp_path: Path
) -> None:
    """Second start, and a start after unmount and prepare-volume again: the same credentials."""
    assert start(docker, prepared_volume).returncode == 0
    first = credentials_of(prepared_volume)
    assert start(docker, prepared_volume).returncode == 0
    assert credentials_of(prepared_volume) == first
    run("umount", str(prepared_volume))
    assert not (prepared_volume / ".chi-persist").exists()
    prepare(prepared_volume, tmp_path / "by-id", tmp_path / "fstab")
    completed = sealed_start(docker, prepared_volume)
    assert completed.returncode == 0, completed.stderr
    assert credentials_of(prepared_volume) == first
    opened = credentials_from_stdout(completed.stdout, SEAL_KEY)
    assert opened["postgres_password"] == first["POSTGRES_PASSWORD"]


def test_credentials_leave_sealed_and_open_only_with_the_programs_key(
    docker: StandIns, prepared_volume: Path
) -> None:
    """stdout is one JSON line whose only value is the sealed credentials: no credential in
    it, in stderr, or in any argument; the program's key (components/sealed_credentials.py)
    opens it to every credential, another key does not."""
    completed = sealed_start(docker, prepared_volume)
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert list(printed) == ["sealed_credentials"]
    assert printed["sealed_credentials"].startswith("U2FsdGVkX1")  # base64 of "Salted__"
    credentials = credentials_of(prepared_volume)
    opened = credentials_from_stdout(completed.stdout, SEAL_KEY)
    assert opened == {
        "postgres_user": credentials["POSTGRES_USER"],
        "postgres_password": credentials["POSTGRES_PASSWORD"],
        "minio_root_user": credentials["MINIO_ROOT_USER"],
        "minio_root_password": credentials["MINIO_ROOT_PASSWORD"],
        "jupyter_token": credentials["JUPYTER_TOKEN"],
        "mlflow_user": credentials["MLFLOW_ADMIN_USER"],
        "mlflow_password": credentials["MLFLOW_ADMIN_PASSWORD"],
    }
    assert set(opened) == JSON_KEYS
    with pytest.raises(ValueError):
        credentials_from_stdout(completed.stdout, "f" * 64)
    again = sealed_start(docker, prepared_volume)
    for run_output in (completed, again):
        for key, value in credentials.items():
            if key != "POSTGRES_DB":
                assert value not in run_output.stdout + run_output.stderr, f"{key} leaked"
    for call in docker.calls("docker"):
        for key, value in credentials.items():
            if key != "POSTGRES_DB":
                assert value not in " ".join(call["argv"]), f"{key} is an argument of docker"


@pytest.mark.parametrize(
    ("stdin", "says"),
    [
        ("", "no key on stdin"),
        ("not-a-key\n", "not a key of 64 lowercase hex digits"),
        (SEAL_KEY.upper() + "\n", "not a key of 64 lowercase hex digits"),
    ],
    ids=["no-key", "not-hex", "upper-case"],
)
def test_sealing_without_a_key_starts_nothing(
    docker: StandIns, prepared_volume: Path, stdin: str, says: str
) -> None:
    """--print-sealed-credentials without a usable key on stdin: exit 7 before anything."""
    completed = start(docker, prepared_volume, "--print-sealed-credentials", stdin=stdin)
    assert completed.returncode == 7, completed.stderr
    assert says in completed.stderr
    assert docker.calls() == []
    assert not (prepared_volume / ".chi-persist" / "credentials.env").exists()


@pytest.mark.parametrize(
    ("access", "address"),
    [("public", "0.0.0.0"), ("tunnel", "127.0.0.1")],  # noqa: S104
)
def test_platform_access_chooses_where_the_ports_are_published(
    docker: StandIns, prepared_volume: Path, access: str, address: str
) -> None:
    """public: every address of the server (the security group decides); tunnel: 127.0.0.1,
    reached through SSH only. The same volume, credentials and compose files either way."""
    completed = start(docker, prepared_volume, "--platform-access", access)
    assert completed.returncode == 0, completed.stderr
    (call,) = docker.calls("docker")
    assert call["env"]["PUBLISH_ADDRESS"] == address
    assert f"platform access {access}" in completed.stderr


def test_an_unknown_platform_access_is_a_usage_error(
    docker: StandIns, prepared_volume: Path
) -> None:
    completed = start(docker, prepared_volume, "--platform-access", "open")
    assert completed.returncode == 2
    assert "--platform-access must be public or tunnel, got 'open'" in completed.stderr
    assert docker.calls() == []


def test_a_file_from_before_mlflows_login_gets_the_new_credentials_and_keeps_the_rest(
    docker: StandIns, prepared_volume: Path
) -> None:
    """A volume made before MLflow's login and its MinIO user: its six credentials stay as
    they were (the database and MinIO use them); the new ones are generated, added once, and
    kept at the next start; the file stays root:root 0600."""
    (prepared_volume / ".chi-persist").mkdir(exist_ok=True)
    path = prepared_volume / ".chi-persist" / "credentials.env"
    old = {key: f"Old{key.title().replace('_', '')}Value123" for key in ORIGINAL_CREDENTIAL_KEYS}
    old["POSTGRES_DB"] = "mlflowdb"
    path.write_text("".join(f"{key}={value}\n" for key, value in old.items()))
    path.chmod(0o600)
    completed = start(docker, prepared_volume)
    assert completed.returncode == 0, completed.stderr
    assert "credentials: added MLFLOW_ADMIN_USER" in completed.stderr
    updated = credentials_of(prepared_volume)
    assert list(updated) == list(CREDENTIAL_KEYS)
    assert {key: updated[key] for key in ORIGINAL_CREDENTIAL_KEYS} == old
    for key in ADDED_CREDENTIAL_KEYS:
        assert re.fullmatch(r"[A-Za-z0-9]{24,}", updated[key]), key
    status = path.stat()
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (0, 0, 0o600)
    again = start(docker, prepared_volume)
    assert again.returncode == 0 and "credentials: added" not in again.stderr
    assert credentials_of(prepared_volume) == updated


def test_data_directories_are_created_with_their_services_owners(
    docker: StandIns, prepared_volume: Path
) -> None:
    """postgres_data for uid 999 (0700), minio_data for root, jupyter_work for jovyan 1000:100,
    mlflow_auth (MLflow's users) for the MLflow image's uid 10001 (0700)."""
    assert start(docker, prepared_volume).returncode == 0
    expected = {
        "postgres_data": (999, 999, 0o700),
        "minio_data": (0, 0, 0o750),
        "jupyter_work": (1000, 100, 0o775),
        "mlflow_auth": (10001, 10001, 0o700),
    }
    for name, (uid, gid, mode) in expected.items():
        status = (prepared_volume / name).stat()
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (uid, gid, mode)


def test_existing_data_directories_are_left_as_they_are(
    docker: StandIns, prepared_volume: Path
) -> None:
    """A student's notebooks keep their owner and content; nothing is chowned recursively."""
    work = prepared_volume / "jupyter_work"
    work.mkdir()
    notebook = work / "train.ipynb"
    notebook.write_text('{"cells": []}')
    os.chown(work, 1234, 1234)
    os.chown(notebook, 1234, 1234)
    assert start(docker, prepared_volume).returncode == 0
    assert (work.stat().st_uid, notebook.stat().st_uid) == (1234, 1234)
    assert notebook.read_text() == '{"cells": []}'


def test_object_store_is_added_when_it_exists(docker: StandIns, prepared_volume: Path) -> None:
    """With the object-store directory present, the override file is added and its path passed."""
    object_store = prepared_volume.parent / "object"
    object_store.mkdir()
    completed = start(docker, prepared_volume, object_store=object_store)
    assert completed.returncode == 0, completed.stderr
    call = docker.calls("docker")[0]
    argv = call["argv"]
    files = [argv[i + 1] for i, item in enumerate(argv) if item == "--file"]
    assert files == [str(COMPOSE_FILE), str(OBJECT_STORE_OVERRIDE)]
    assert call["env"]["OBJECT_STORE_DIR"] == str(object_store)


def test_object_store_is_left_out_when_absent(docker: StandIns, prepared_volume: Path) -> None:
    """Without the object-store directory only the stack's own compose file is used."""
    completed = start(docker, prepared_volume)
    assert completed.returncode == 0, completed.stderr
    argv = docker.calls("docker")[0]["argv"]
    assert str(OBJECT_STORE_OVERRIDE) not in argv
    assert "not mounted in Jupyter" in completed.stderr


def test_a_failed_compose_up_is_reported(docker: StandIns, prepared_volume: Path) -> None:
    """When compose fails or times out: exit 6, where to look, and no credentials on stdout."""
    (docker.state / "docker-exit-code").write_text("1")
    completed = sealed_start(docker, prepared_volume)
    assert completed.returncode == 6
    assert "docker compose --project-name chi-persist logs" in completed.stderr
    assert completed.stdout == ""


def test_default_compose_file_is_the_projects(docker: StandIns, prepared_volume: Path) -> None:
    """Without --compose-file the script uses docker/docker-compose.yaml beside scripts/."""
    completed = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--mount-point",
            str(prepared_volume),
            "--host-ip",
            HOST_IP,
            "--object-store-dir",
            str(prepared_volume.parent / "no-object-store"),
        ],
        env=docker.environment(),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    argv = docker.calls("docker")[0]["argv"]
    compose_file = Path(argv[argv.index("--file") + 1])
    assert compose_file.resolve() == COMPOSE_FILE.resolve()


def test_help_describes_the_options_and_exit_codes() -> None:
    """--help prints the usage with every option and exit code."""
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0
    for word in (
        "--mount-point", "--host-ip", "--compose-file", "--platform-access",
        "--print-sealed-credentials", "Exit",
    ):  # fmt: skip
        assert word in completed.stdout


# --- the record release-volume.sh stops the stack with ------------------------------------

STARTED_RECORD = Path(".chi-persist") / "started-stack"


def test_start_records_the_project_and_a_copy_of_each_compose_file(
    docker: StandIns, prepared_volume: Path
) -> None:
    """Before compose up: the project name and the compose files, in order, copied root-only."""
    object_store = prepared_volume.parent / "object"
    object_store.mkdir()
    completed = start(docker, prepared_volume, object_store=object_store)
    assert completed.returncode == 0, completed.stderr
    record = prepared_volume / STARTED_RECORD
    status = record.stat()
    assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (0, 0, 0o700)
    assert (record / "project-name").read_text() == "chi-persist\n"
    names = (record / "compose-files").read_text().splitlines()
    assert names == ["1-docker-compose.yaml", "2-docker-compose.object-store.yaml"]
    for name, original in zip(names, (COMPOSE_FILE, OBJECT_STORE_OVERRIDE), strict=True):
        assert (record / name).read_bytes() == original.read_bytes()
        assert stat.S_IMODE((record / name).stat().st_mode) == 0o600
    leftovers = [p.name for p in record.parent.iterdir() if p.name.startswith(".started-stack")]
    assert leftovers == []


def test_a_new_start_replaces_the_record(
    docker: StandIns, prepared_volume: Path, tmp_path: Path
) -> None:
    """A second start with another compose file leaves only that file in the record."""
    assert start(docker, prepared_volume).returncode == 0
    other = tmp_path / "other" / "compose.yaml"
    other.parent.mkdir()
    other.write_text("services:\n  database:\n    image: postgres:17.6-bookworm\n")
    assert start(docker, prepared_volume, compose_file=other).returncode == 0
    record = prepared_volume / STARTED_RECORD
    assert sorted(p.name for p in record.iterdir()) == [
        "1-compose.yaml",
        "compose-files",
        "project-name",
    ]
    assert (record / "1-compose.yaml").read_text() == other.read_text()


def test_a_failed_compose_up_leaves_the_record(docker: StandIns, prepared_volume: Path) -> None:
    """compose up may have started some containers before it failed: the record stops them."""
    (docker.state / "docker-exit-code").write_text("1")
    assert start(docker, prepared_volume).returncode == 6
    assert (prepared_volume / STARTED_RECORD / "1-docker-compose.yaml").exists()


def test_a_refused_start_writes_no_record(docker: StandIns, prepared_volume: Path) -> None:
    """A start refused before compose (a database of another version) records nothing."""
    data = prepared_volume / "postgres_data"
    data.mkdir()
    (data / "PG_VERSION").write_text("18\n")
    assert start(docker, prepared_volume).returncode == 3
    assert not (prepared_volume / STARTED_RECORD).exists()
