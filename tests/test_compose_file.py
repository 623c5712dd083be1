"""docker/docker-compose.yaml, validated and resolved by a real Compose v2 implementation."""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.compose import (
    COMPOSE_FILE,
    CREDENTIAL_KEYS,
    MLFLOW_ARTIFACTS_POLICY,
    MLFLOW_AUTH_CONFIG,
    MLFLOW_DOCKERFILE,
    OBJECT_STORE_OVERRIDE,
    go_duration_seconds,
    requires_compose,
    resolved_config,
    run_compose,
    write_env_file,
)
from tests.support.paths import REPO_ROOT

pytestmark = requires_compose

HOST_IP = "203.0.113.10"
# Made-up values in the shape start-stack.sh generates, distinct enough that a
# value found in a service can only have come from its own key.
CREDENTIALS = {
    "POSTGRES_USER": "upgusr7k2m9q4w8e1r5t3y6u0",
    "POSTGRES_PASSWORD": "PgPassword0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT",
    "POSTGRES_DB": "mlflowdb",
    "MINIO_ROOT_USER": "umnusr3x8c1v6b9n2m5q7w4e0",
    "MINIO_ROOT_PASSWORD": "MinioSecret9zY8xW7vU6tS5rQ4pO3nM2lK1jI0h",
    "JUPYTER_TOKEN": "JupyterToken5gF4eD3cB2aZ1yX0wV9uT8sR7qP6oN5mL4k",
    "MLFLOW_ADMIN_USER": "umlfadm4q8w2e6r0t3y7u1i5o9",
    "MLFLOW_ADMIN_PASSWORD": "MlflowAdmin7hG6fE5dC4bA3zY2xW1vU0tS9rQ8p",
    "MLFLOW_FLASK_SECRET_KEY": "FlaskSecret3kJ2hG1fD0sA9pO8iU7yT6rE5wQ4zX3cV2bN1m",
    "MLFLOW_S3_ACCESS_KEY": "umls3key5t9r3e7w1q6y0u4i8",
    "MLFLOW_S3_SECRET_KEY": "MlflowS3Secret2wE4rT6yU8iO0pA1sD3fG5hJ7kL",
}
SECRET_KEYS = tuple(key for key in CREDENTIAL_KEYS if key not in ("POSTGRES_DB", "JUPYTER_TOKEN"))
LONG_RUNNING = ("postgres", "minio", "mlflow", "jupyter")
ONE_SHOTS = ("credentials-check", "minio-setup")
PUBLISHED = {("mlflow", 8000), ("jupyter", 8888), ("minio", 9000), ("minio", 9001)}
# MLflow's basic-auth app shipped this admin password in older releases
# (GHSA-gq3w-7jj3-x7gr); it must never be configured.
LEGACY_MLFLOW_PASSWORD = "password1234"  # noqa: S105 (a well-known value, asserted absent)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """A complete credentials file like the one start-stack.sh keeps on the volume."""
    return write_env_file(tmp_path / "credentials.env", CREDENTIALS)


@pytest.fixture
def services(env_file: Path) -> dict:
    """The services as `docker compose up` sees them: with credentials, default mount point."""
    return resolved_config(env_file, variables={"HOST_IP": HOST_IP})["services"]


def _requirement_pins() -> dict[str, str]:
    """Package name -> pinned version, from requirements.txt and requirements-test.txt."""
    pins = {}
    for name in ("requirements.txt", "requirements-test.txt"):
        for line in (REPO_ROOT / name).read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s#]+)", line.strip())
            if match:
                pins[match.group(1).lower()] = match.group(3)
    return pins


def _command_lines(service: dict) -> str:
    """Everything of a service that becomes a process's argv: entrypoint, command, healthcheck."""
    parts = [service.get("entrypoint"), service.get("command")]
    parts.append((service.get("healthcheck") or {}).get("test"))
    return repr(parts)


def _dockerfile_pins() -> dict[str, str]:
    """Package name -> version pinned by the `pip install` of docker/mlflow/Dockerfile."""
    text = MLFLOW_DOCKERFILE.read_text()
    install = re.search(r"pip install ([^\n]+)", text)
    assert install, "docker/mlflow/Dockerfile has no pip install line"
    pins = {}
    for word in install.group(1).split():
        match = re.match(r"^'?([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s']+)'?$", word)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


# --- loading ------------------------------------------------------------------


@pytest.mark.parametrize("with_credentials", [True, False], ids=["for-up", "for-pull-and-down"])
def test_compose_file_loads_with_and_without_credentials(
    with_credentials: bool, env_file: Path
) -> None:
    """The file validates for `up` (with credentials) and for the first-boot pull and `down`."""
    completed = run_compose("config", "--quiet", env_file=env_file if with_credentials else None)
    assert completed.returncode == 0, completed.stderr
    assert "is not set" not in completed.stderr, completed.stderr


def test_object_store_override_loads_with_the_stack() -> None:
    """The object-store override merges with the stack's file into a valid project."""
    completed = run_compose("config", "--quiet", files=(COMPOSE_FILE, OBJECT_STORE_OVERRIDE))
    assert completed.returncode == 0, completed.stderr


# --- credentials ----------------------------------------------------------------


def _expected_credential_values() -> list[tuple[str, str, str]]:
    c = CREDENTIALS
    return [
        ("postgres", "POSTGRES_USER", c["POSTGRES_USER"]),
        ("postgres", "POSTGRES_PASSWORD", c["POSTGRES_PASSWORD"]),
        ("postgres", "POSTGRES_DB", "mlflowdb"),
        ("minio", "MINIO_ROOT_USER", c["MINIO_ROOT_USER"]),
        ("minio", "MINIO_ROOT_PASSWORD", c["MINIO_ROOT_PASSWORD"]),
        ("mlflow", "AWS_ACCESS_KEY_ID", c["MLFLOW_S3_ACCESS_KEY"]),
        ("mlflow", "AWS_SECRET_ACCESS_KEY", c["MLFLOW_S3_SECRET_KEY"]),
        ("mlflow", "MLFLOW_AUTH_ADMIN_USERNAME", c["MLFLOW_ADMIN_USER"]),
        ("mlflow", "MLFLOW_AUTH_ADMIN_PASSWORD", c["MLFLOW_ADMIN_PASSWORD"]),
        ("mlflow", "MLFLOW_FLASK_SERVER_SECRET_KEY", c["MLFLOW_FLASK_SECRET_KEY"]),
        (
            "minio-setup",
            "MC_HOST_store",
            f"http://{c['MINIO_ROOT_USER']}:{c['MINIO_ROOT_PASSWORD']}@minio:9000",
        ),
        ("minio-setup", "MLFLOW_S3_ACCESS_KEY", c["MLFLOW_S3_ACCESS_KEY"]),
        ("minio-setup", "MLFLOW_S3_SECRET_KEY", c["MLFLOW_S3_SECRET_KEY"]),
        ("jupyter", "JUPYTER_TOKEN", c["JUPYTER_TOKEN"]),
        ("jupyter", "MLFLOW_TRACKING_USERNAME", c["MLFLOW_ADMIN_USER"]),
        ("jupyter", "MLFLOW_TRACKING_PASSWORD", c["MLFLOW_ADMIN_PASSWORD"]),
    ]


@pytest.mark.parametrize(
    ("service", "variable", "expected"),
    _expected_credential_values(),
    ids=[f"{s}-{v}" for s, v, _ in _expected_credential_values()],
)
def test_every_credential_reaches_its_service(
    services: dict, service: str, variable: str, expected: str
) -> None:
    """With the env file, each service receives the generated value under the name it reads."""
    assert services[service]["environment"][variable] == expected


def test_mlflow_reaches_postgres_with_the_generated_password(services: dict) -> None:
    """MLflow's backend store is database mlflowdb on postgres, with the generated user, given
    in the environment `mlflow server` reads, not on its command line."""
    backend = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    user, password = CREDENTIALS["POSTGRES_USER"], CREDENTIALS["POSTGRES_PASSWORD"]
    assert backend == f"postgresql://{user}:{password}@postgres:5432/mlflowdb"
    assert "--backend-store-uri" not in services["mlflow"]["command"]


@pytest.mark.parametrize("service", [*LONG_RUNNING, *ONE_SHOTS])
def test_no_secret_is_on_any_command_line(services: dict, service: str) -> None:
    """No credential is in an entrypoint, command or healthcheck: each becomes an argv that
    every user of the server reads in `ps` and /proc/*/cmdline."""
    argv = _command_lines(services[service])
    for key in (*SECRET_KEYS, "JUPYTER_TOKEN"):
        assert CREDENTIALS[key] not in argv, f"{service}: {key} is on a command line"


@pytest.mark.parametrize(
    ("service", "allowed"),
    [
        ("postgres", {"POSTGRES_USER", "POSTGRES_PASSWORD"}),
        ("minio", {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}),
        (
            "minio-setup",
            {
                "MINIO_ROOT_USER",
                "MINIO_ROOT_PASSWORD",
                "MLFLOW_S3_ACCESS_KEY",
                "MLFLOW_S3_SECRET_KEY",
            },
        ),
        (
            "mlflow",
            {
                "POSTGRES_USER",
                "POSTGRES_PASSWORD",
                "MLFLOW_S3_ACCESS_KEY",
                "MLFLOW_S3_SECRET_KEY",
                "MLFLOW_ADMIN_USER",
                "MLFLOW_ADMIN_PASSWORD",
                "MLFLOW_FLASK_SECRET_KEY",
            },
        ),  # fmt: skip
        ("jupyter", {"JUPYTER_TOKEN", "MLFLOW_ADMIN_USER", "MLFLOW_ADMIN_PASSWORD"}),
        ("credentials-check", set(CREDENTIAL_KEYS) - {"POSTGRES_DB"}),
    ],
)
def test_secrets_reach_only_the_services_that_use_them(
    services: dict, service: str, allowed: set[str]
) -> None:
    """A service's resolved definition holds no credential it does not need: MLflow has its
    own MinIO user and never MinIO's root keys."""
    definition = repr(services[service])
    present = {key for key in (*SECRET_KEYS, "JUPYTER_TOKEN") if CREDENTIALS[key] in definition}
    assert present == allowed


def test_no_credential_is_a_literal() -> None:
    """Without the env file every credential resolves empty: none is written in the file."""
    services = resolved_config(variables={"HOST_IP": HOST_IP})["services"]
    for name, service in services.items():
        for variable, value in (service.get("environment") or {}).items():
            if variable in CREDENTIAL_KEYS or variable.startswith("AWS_"):
                assert value == "", f"{name}: {variable} has a value without credentials: {value!r}"
    assert services["minio-setup"]["environment"]["MC_HOST_store"] == "http://:@minio:9000"
    backend = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend == "postgresql://:@postgres:5432/"


def test_every_credential_in_the_file_comes_from_a_variable() -> None:
    """In the file as written, every credential-like setting is a ${...} reference."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    pattern = re.compile(r"PASSWORD|USER|TOKEN|SECRET|ACCESS_KEY|MC_HOST|STORE_URI")
    checked = 0
    for name, service in raw["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if pattern.search(variable):
                checked += 1
                assert "${" in str(value), f"{name}: {variable} is a literal: {value!r}"
    assert checked >= 26


@pytest.mark.parametrize(
    ("environment", "expected_exit"),
    [
        (CREDENTIALS, 0),
        ({**CREDENTIALS, "MINIO_ROOT_PASSWORD": ""}, 1),
        ({**CREDENTIALS, "JUPYTER_TOKEN": ""}, 1),
        ({**CREDENTIALS, "MLFLOW_ADMIN_PASSWORD": ""}, 1),
        ({**CREDENTIALS, "MLFLOW_S3_SECRET_KEY": ""}, 1),
        ({key: "" for key in CREDENTIALS}, 1),
    ],
    ids=[
        "complete",
        "no-minio-password",
        "no-jupyter-token",
        "no-mlflow-password",
        "no-mlflow-minio-key",
        "no-env-file",
    ],  # fmt: skip
)
def test_credentials_check_stops_an_up_without_credentials(
    environment: dict[str, str], expected_exit: int, tmp_path: Path
) -> None:
    """The credentials-check one-shot's script fails on any empty credential, and names it."""
    env_file = write_env_file(tmp_path / "credentials.env", environment)
    service = resolved_config(env_file, variables={"HOST_IP": HOST_IP})["services"][
        "credentials-check"
    ]
    entrypoint = [part.replace("$$", "$") for part in service["entrypoint"]]
    completed = subprocess.run(
        entrypoint,
        env={"PATH": os.environ["PATH"], **service["environment"]},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert completed.returncode == expected_exit, completed.stderr
    if expected_exit:
        assert "start-stack.sh" in completed.stderr
        assert re.search(r"credential [A-Z0-9_]+ is empty", completed.stderr)


# --- images -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "pattern"),
    [
        ("postgres", r"^postgres:17\.\d+-bookworm$"),
        ("credentials-check", r"^postgres:17\.\d+-bookworm$"),
        ("minio", r"^minio/minio:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$"),
        ("minio-setup", r"^minio/mc:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$"),
        ("jupyter", r"^quay\.io/jupyter/pytorch-notebook:pytorch-\d+\.\d+\.\d+$"),
        ("mlflow", r"^chi-persist/mlflow:\d+\.\d+\.\d+$"),
    ],
)
def test_every_image_is_pinned_to_a_version(services: dict, service: str, pattern: str) -> None:
    """No `latest` and no bare names: each image names an exact release (the tag, for readers;
    a digest, where one is written, follows it and is checked below)."""
    image = services[service]["image"].split("@", 1)[0]
    assert re.match(pattern, image), services[service]["image"]


DIGEST = re.compile(r"^[^@\s]+:[^@:\s]+@sha256:[0-9a-f]{64}$")


def test_a_digest_is_written_whole_and_beside_its_tag() -> None:
    """An image pinned by digest reads `name:tag@sha256:<64 lowercase hex>`: a digest written
    wrong (short, upper case, another algorithm, without its tag) fails here, not at a pull on
    every student's server. The file as written is read, the base image of the MLflow build
    too."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    images = [service["image"] for service in raw["services"].values() if "image" in service]
    images += re.findall(r"^FROM\s+(\S+)", MLFLOW_DOCKERFILE.read_text(), re.M)
    for image in images:
        if "@" in image:
            assert DIGEST.match(image), f"{image}: not name:tag@sha256:<64 lowercase hex>"
    for wrong in (
        "postgres@sha256:" + "a" * 64,
        "postgres:17.6-bookworm@sha256:" + "A" * 64,
        "postgres:17.6-bookworm@sha256:" + "a" * 63,
        "postgres:17.6-bookworm@sha512:" + "a" * 64,
    ):
        assert not DIGEST.match(wrong), wrong


# The images whose digest is written, and those still pinned by tag alone (no digest of
# theirs could be confirmed: see the compose file's header).
PINNED_BY_DIGEST = {"credentials-check", "postgres", "minio", "minio-setup"}
TAG_ONLY = {"jupyter": "no digest confirmed", "mlflow": "built on the server, from a tag"}


def test_the_images_with_a_known_digest_are_pinned_by_it(services: dict) -> None:
    """Docker pulls PostgreSQL and MinIO by digest, so a re-pushed tag changes nothing on a
    server; the rest are named, so adding a digest is a change this test sees."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    pinned = {name for name, service in raw.items() if "@" in service.get("image", "")}
    assert pinned == PINNED_BY_DIGEST, sorted(pinned)
    assert set(raw) == PINNED_BY_DIGEST | set(TAG_ONLY), sorted(raw)
    for name in PINNED_BY_DIGEST:
        assert DIGEST.match(raw[name]["image"]), raw[name]["image"]
    # The two postgres services pull one image.
    assert raw["credentials-check"]["image"] == raw["postgres"]["image"]


def test_postgres_data_mount_matches_the_pinned_major_version(services: dict) -> None:
    """PostgreSQL 17 keeps PGDATA at /var/lib/postgresql/data, where the volume is mounted."""
    assert services["postgres"]["image"].startswith("postgres:17.")
    targets = [volume["target"] for volume in services["postgres"]["volumes"]]
    assert targets == ["/var/lib/postgresql/data"]


def test_mlflow_image_is_built_here_and_never_pulled(services: dict) -> None:
    """The MLflow image is built from docker/mlflow; its name is never looked up in a registry."""
    mlflow = services["mlflow"]
    assert Path(mlflow["build"]["context"]) == MLFLOW_DOCKERFILE.parent
    assert mlflow["pull_policy"] == "build"


def test_mlflow_image_has_the_tested_versions() -> None:
    """The Dockerfile installs the MLflow, psycopg and boto3 releases the test suite runs."""
    dockerfile, requirements = _dockerfile_pins(), _requirement_pins()
    assert set(dockerfile) == {"mlflow", "flask-wtf", "psycopg", "boto3"}
    # The basic-auth app and its CSRF package, in the image and where it is tested.
    assert "'mlflow[auth]==" in MLFLOW_DOCKERFILE.read_text()
    assert "mlflow[auth]==" in (REPO_ROOT / "requirements-test.txt").read_text()
    for package, version in dockerfile.items():
        assert requirements.get(package) == version, f"{package}: {version} vs {requirements}"
    image = resolved_config()["services"]["mlflow"]["image"]
    assert image == f"chi-persist/mlflow:{requirements['mlflow']}"
    assert re.search(r"^FROM python:3\.\d+-slim-bookworm$", MLFLOW_DOCKERFILE.read_text(), re.M)


# --- data on the volume ---------------------------------------------------------------

EXPECTED_DATA_MOUNTS = {
    ("postgres", "postgres_data", "/var/lib/postgresql/data"),
    ("minio", "minio_data", "/data"),
    ("jupyter", "jupyter_work", "/home/jovyan/work"),
    ("mlflow", "mlflow_auth", "/var/lib/mlflow-auth"),
}
# Files of docker/ a service reads, read-only.
EXPECTED_CONFIG_MOUNTS = {
    ("mlflow", MLFLOW_AUTH_CONFIG, "/etc/chi-persist/mlflow-basic-auth.ini"),
    ("minio-setup", MLFLOW_ARTIFACTS_POLICY, "/etc/chi-persist/mlflow-artifacts-policy.json"),
}


def _bind_mounts(services: dict, data: bool = True) -> list[tuple[str, dict]]:
    """The bind mounts of data on the volume (`data`), or of the files of docker/."""
    return [
        (name, volume)
        for name, service in services.items()
        for volume in service.get("volumes") or []
        if Path(volume["source"]).is_relative_to(COMPOSE_FILE.parent) != data
    ]


@pytest.mark.parametrize("mount_point", ["/mnt/block", "/srv/volume", "/mnt/persist data"])
def test_every_data_path_is_under_the_mount_point(mount_point: str, env_file: Path) -> None:
    """PostgreSQL, MinIO and Jupyter data are bind mounts of directories on the volume."""
    services = resolved_config(env_file, variables={"MOUNT_POINT": mount_point})["services"]
    mounts = _bind_mounts(services)
    found = {
        (name, Path(volume["source"]).relative_to(mount_point).as_posix(), volume["target"])
        for name, volume in mounts
    }
    assert found == EXPECTED_DATA_MOUNTS
    assert all(volume["type"] == "bind" for _, volume in mounts)
    config = {
        (name, Path(volume["source"]), volume["target"])
        for name, volume in _bind_mounts(services, data=False)
    }
    assert config == EXPECTED_CONFIG_MOUNTS
    assert all(volume["read_only"] for _, volume in _bind_mounts(services, data=False))


def test_mount_point_defaults_to_mnt_block(env_file: Path) -> None:
    """Without MOUNT_POINT the data lives under /mnt/block, the tutorial's mount point."""
    services = resolved_config(env_file)["services"]
    sources = {volume["source"] for _, volume in _bind_mounts(services)}
    assert sources == {
        "/mnt/block/postgres_data",
        "/mnt/block/minio_data",
        "/mnt/block/jupyter_work",
        "/mnt/block/mlflow_auth",
    }


def test_data_mounts_never_create_their_source(services: dict) -> None:
    """A missing data directory (no volume at reboot) fails the container, not the root disk;
    a missing file of docker/ fails it too, rather than becoming an empty directory."""
    for name, volume in _bind_mounts(services) + _bind_mounts(services, data=False):
        assert not (volume.get("bind") or {}).get("create_host_path", False), name


@pytest.mark.parametrize("object_store", ["/mnt/object", "/srv/course-data"])
def test_object_store_is_mounted_read_only_with_the_override(
    object_store: str, env_file: Path
) -> None:
    """With the override, Jupyter sees the object store read-only at /mnt/object."""
    services = resolved_config(
        env_file,
        files=(COMPOSE_FILE, OBJECT_STORE_OVERRIDE),
        variables={"OBJECT_STORE_DIR": object_store},
    )["services"]
    mounts = [v for v in services["jupyter"]["volumes"] if v["target"] == "/mnt/object"]
    assert len(mounts) == 1
    assert mounts[0]["source"] == object_store
    assert mounts[0]["read_only"] is True
    assert not (mounts[0].get("bind") or {}).get("create_host_path", False)
    work = [v for v in services["jupyter"]["volumes"] if v["target"] == "/home/jovyan/work"]
    assert len(work) == 1, "the override must add to Jupyter's mounts, not replace them"


def test_object_store_is_not_mounted_without_the_override(services: dict) -> None:
    """Without the override nothing refers to /mnt/object, so a server without it starts."""
    assert "/mnt/object" not in repr(services)


# --- network ------------------------------------------------------------------------------


def _published(services: dict) -> set[tuple[str, str, int, int]]:
    return {
        (name, port.get("host_ip", ""), int(port["published"]), port["target"])
        for name, service in services.items()
        for port in service.get("ports") or []
    }


@pytest.mark.parametrize(
    ("publish_address", "host_ip"),
    [("0.0.0.0", "0.0.0.0"), ("127.0.0.1", "127.0.0.1"), (None, "127.0.0.1")],  # noqa: S104
    ids=["public", "tunnel", "unset"],
)
def test_published_ports_are_exactly_the_platforms(
    env_file: Path, publish_address: str | None, host_ip: str
) -> None:
    """Only MLflow 8000, Jupyter 8888 and MinIO 9000/9001 are published, each to itself, on
    PUBLISH_ADDRESS: every address in platformAccess public, the server's 127.0.0.1 in tunnel
    (reached through SSH only), and 127.0.0.1 for a compose run by hand without it."""
    variables = {"HOST_IP": HOST_IP}
    if publish_address is not None:
        variables["PUBLISH_ADDRESS"] = publish_address
    services = resolved_config(env_file, variables=variables)["services"]
    assert _published(services) == {(name, host_ip, port, port) for name, port in PUBLISHED}


def test_postgres_is_not_published(services: dict) -> None:
    """PostgreSQL is reachable on the stack's network only, never from outside the server."""
    assert not services["postgres"].get("ports")
    assert services["postgres"].get("expose") == ["5432"]


# --- health, order, restarts, shutdown --------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "fragments"),
    [
        ("postgres", ("pg_isready", "--host 127.0.0.1")),
        ("minio", ("mc", "ready", "local")),
        ("mlflow", ("python", "urllib.request", "http://localhost:8000/health")),
    ],
)
def test_services_have_healthchecks(services: dict, service: str, fragments: tuple) -> None:
    """PostgreSQL, MinIO and MLflow report health with a probe their image can run."""
    healthcheck = services[service]["healthcheck"]
    assert not healthcheck.get("disable")
    test = " ".join(healthcheck["test"])
    for fragment in fragments:
        assert fragment in test
    assert healthcheck["retries"] >= 3


@pytest.mark.parametrize(
    ("service", "dependency", "condition"),
    [
        ("postgres", "credentials-check", "service_completed_successfully"),
        ("minio", "credentials-check", "service_completed_successfully"),
        ("minio-setup", "minio", "service_healthy"),
        ("mlflow", "postgres", "service_healthy"),
        ("mlflow", "minio", "service_healthy"),
        ("mlflow", "minio-setup", "service_completed_successfully"),
        ("jupyter", "mlflow", "service_healthy"),
    ],
)
def test_services_start_in_order(
    services: dict, service: str, dependency: str, condition: str
) -> None:
    """MLflow waits for healthy PostgreSQL and MinIO and the bucket; Jupyter waits for MLflow."""
    assert services[service]["depends_on"][dependency]["condition"] == condition


def test_every_one_shot_is_awaited_by_a_long_running_service(services: dict) -> None:
    """`up --wait` treats an exited container as failed unless a service waits for its success."""
    one_shots = {name for name, service in services.items() if service["restart"] == "no"}
    awaited = {
        dependency
        for name in LONG_RUNNING
        for dependency, rule in (services[name].get("depends_on") or {}).items()
        if rule["condition"] == "service_completed_successfully"
    }
    assert one_shots == set(ONE_SHOTS)
    assert awaited == one_shots


@pytest.mark.parametrize(
    ("service", "policy"),
    [(name, "unless-stopped") for name in LONG_RUNNING] + [(name, "no") for name in ONE_SHOTS],
)
def test_restart_policies(services: dict, service: str, policy: str) -> None:
    """Long-running services come back after a reboot; one-shots run once per start."""
    assert services[service]["restart"] == policy


def test_services_are_exactly_the_platforms(services: dict) -> None:
    """The stack holds the four services and two one-shots, and nothing else."""
    assert set(services) == {*LONG_RUNNING, *ONE_SHOTS}


def test_postgres_gets_at_least_a_minute_to_shut_down(services: dict) -> None:
    """PostgreSQL's fast shutdown is never cut short into crash recovery."""
    assert go_duration_seconds(services["postgres"]["stop_grace_period"]) >= 60


# --- MLflow and Jupyter -------------------------------------------------------------------------


def test_mlflow_serves_artifacts_from_the_minio_bucket(services: dict) -> None:
    """MLflow listens on 0.0.0.0:8000 and proxies artifacts to s3://mlflow-artifacts on MinIO."""
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104 (inside its container)
    assert command[command.index("--port") + 1] == "8000"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow-artifacts/"
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    setup = services["minio-setup"]["entrypoint"][2]
    assert "mc mb --ignore-existing store/mlflow-artifacts;" in setup


def test_jupyter_uses_the_token_and_this_mlflow(services: dict) -> None:
    """Jupyter requires the generated token and logs to the stack's MLflow with its login."""
    environment = services["jupyter"]["environment"]
    assert environment["JUPYTER_TOKEN"] == CREDENTIALS["JUPYTER_TOKEN"]
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:8000"
    assert environment["MLFLOW_TRACKING_USERNAME"] == CREDENTIALS["MLFLOW_ADMIN_USER"]
    assert environment["MLFLOW_TRACKING_PASSWORD"] == CREDENTIALS["MLFLOW_ADMIN_PASSWORD"]
    assert "mlflow" in services


def test_mlflow_runs_basic_auth_with_no_default_credential(services: dict) -> None:
    """MLflow's basic-auth app, its users on the volume, its admin from the generated
    credentials only: no password in its settings file, none on its command line, never the
    password1234 older MLflow shipped, and a user it did not make sees nothing."""
    mlflow = services["mlflow"]
    environment = mlflow["environment"]
    assert environment["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/chi-persist/mlflow-basic-auth.ini"
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == CREDENTIALS["MLFLOW_ADMIN_PASSWORD"]
    settings = MLFLOW_AUTH_CONFIG.read_text()
    assert not re.search(r"^\s*admin_(password|username)\s*=", settings, re.M)
    assert re.search(r"^default_permission = NO_PERMISSIONS$", settings, re.M)
    assert re.search(
        r"^database_uri = sqlite:////var/lib/mlflow-auth/basic_auth\.db$", settings, re.M
    )
    assert LEGACY_MLFLOW_PASSWORD not in COMPOSE_FILE.read_text() + settings
    without = resolved_config(variables={"HOST_IP": HOST_IP})["services"]["mlflow"]["environment"]
    assert without["MLFLOW_AUTH_ADMIN_USERNAME"] == without["MLFLOW_AUTH_ADMIN_PASSWORD"] == ""


def test_minio_setup_gives_mlflows_secret_on_stdin_never_as_an_argument(
    services: dict, tmp_path: Path
) -> None:
    """The minio-setup script, run with a stand-in `mc` that records each call: the bucket, the
    policy from its file, MLflow's user with its secret read on stdin, the policy attached;
    no secret in any argv, and nothing mc prints about the user reaches the log."""
    service = services["minio-setup"]
    record = tmp_path / "mc-calls"
    stand_in = tmp_path / "bin" / "mc"
    stand_in.parent.mkdir()
    stand_in.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"argv: $*\" >> {record}\n"
        f'case "$*" in *"user add"*) IFS= read -r secret; '
        f"printf 'stdin: %s\\n' \"$secret\" >> {record}; "
        "echo 'Added user `x` successfully.';; esac\n"
    )
    stand_in.chmod(0o755)
    script = (
        service["entrypoint"][2]
        .replace("$$", "$")
        .replace("/etc/chi-persist/mlflow-artifacts-policy.json", str(MLFLOW_ARTIFACTS_POLICY))
    )
    completed = subprocess.run(
        [*service["entrypoint"][:2], script],
        env={"PATH": f"{stand_in.parent}:{os.environ['PATH']}", **service["environment"]},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    calls = record.read_text().splitlines()
    access, secret = CREDENTIALS["MLFLOW_S3_ACCESS_KEY"], CREDENTIALS["MLFLOW_S3_SECRET_KEY"]
    assert calls == [
        "argv: mb --ignore-existing store/mlflow-artifacts",
        f"argv: admin policy create store chi-persist-mlflow-artifacts {MLFLOW_ARTIFACTS_POLICY}",
        f"argv: admin user add store {access}",
        f"stdin: {secret}",
        f"argv: admin policy attach store chi-persist-mlflow-artifacts --user {access}",
    ]
    assert secret not in completed.stdout + completed.stderr


def test_mlflows_minio_user_is_limited_to_its_bucket() -> None:
    """The policy MLflow's MinIO user gets names the artifact bucket, and nothing else."""
    import json

    policy = json.loads(MLFLOW_ARTIFACTS_POLICY.read_text())
    resources = {
        resource for statement in policy["Statement"] for resource in statement["Resource"]
    }
    assert resources == {"arn:aws:s3:::mlflow-artifacts", "arn:aws:s3:::mlflow-artifacts/*"}
    assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert not any(action.endswith("*") or action.startswith("admin:") for action in actions)


def test_mlflow_allows_the_public_address_and_the_stack_network(services: dict) -> None:
    """MLflow's Host allow-list names HOST_IP and `mlflow`; its CORS origin is HOST_IP's UI."""
    environment = services["mlflow"]["environment"]
    allowed = environment["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {f"{HOST_IP}:8000", HOST_IP, "mlflow:8000", "localhost:*"} <= set(allowed)
    assert "*" not in allowed
    assert environment["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] == f"http://{HOST_IP}:8000"


# --- MLflow's security settings, on a real MLflow server ---------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(port: int, method: str, path: str, headers: dict, body: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.datapath
def test_mlflow_answers_browsers_at_the_public_address(services: dict, tmp_path: Path) -> None:
    """A real MLflow server with the service's settings serves HOST_IP to its user and refuses
    other hosts and other origins."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if not mlflow_bin.exists():
        pytest.skip(f"mlflow is not installed in {mlflow_bin.parent} (requirements-test.txt)")
    service = services["mlflow"]
    port = _free_port()
    command = list(service["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    # PostgreSQL and MinIO are not needed to check the HTTP front: SQLite and a
    # local directory stand in for them, and the users' store moves out of the volume.
    command[command.index("--artifacts-destination") + 1] = (tmp_path / "artifacts").as_uri()
    command += ["--workers", "1"]
    settings = tmp_path / "basic_auth.ini"
    settings.write_text(
        MLFLOW_AUTH_CONFIG.read_text().replace(
            "sqlite:////var/lib/mlflow-auth/", f"sqlite:///{tmp_path}/"
        )
    )
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))
    }
    environment.update(service["environment"])
    environment["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path}/mlflow.db"
    environment["MLFLOW_AUTH_CONFIG_PATH"] = str(settings)
    log = tmp_path / "mlflow.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [str(mlflow_bin), *command[1:]],
            cwd=tmp_path,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        healthcheck = [
            part.replace("localhost:8000", f"localhost:{port}")
            for part in service["healthcheck"]["test"][1:]
        ]
        healthcheck[0] = sys.executable
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run(healthcheck, capture_output=True, check=False, timeout=30)
            if probe.returncode == 0:
                break
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)

        login = base64.b64encode(
            f"{CREDENTIALS['MLFLOW_ADMIN_USER']}:{CREDENTIALS['MLFLOW_ADMIN_PASSWORD']}".encode()
        ).decode()
        user = {"Authorization": f"Basic {login}"}
        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _request(port, "GET", search, {**user, "Host": f"{HOST_IP}:8000"}) == 200
        assert _request(port, "GET", search, {**user, "Host": "mlflow:8000"}) == 200
        assert _request(port, "GET", search, {**user, "Host": "attacker.example:8000"}) == 403
        assert _request(port, "GET", search, {"Host": f"{HOST_IP}:8000"}) == 401
        create = '{"name": "from-the-browser"}'
        json_headers = {**user, "Content-Type": "application/json"}
        from_ui = {**json_headers, "Host": f"{HOST_IP}:8000", "Origin": f"http://{HOST_IP}:8000"}
        assert _request(port, "POST", "/api/2.0/mlflow/experiments/create", from_ui, create) == 200
        foreign = {**from_ui, "Origin": "http://attacker.example"}
        assert _request(port, "POST", "/api/2.0/mlflow/experiments/create", foreign, create) == 403
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
