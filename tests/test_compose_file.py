"""docker/docker-compose.yaml, validated and resolved by a real Compose v2 implementation."""

from __future__ import annotations

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
}
SECRET_KEYS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
LONG_RUNNING = ("postgres", "minio", "mlflow", "jupyter")
ONE_SHOTS = ("credentials-check", "create-bucket")


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
        ("mlflow", "AWS_ACCESS_KEY_ID", c["MINIO_ROOT_USER"]),
        ("mlflow", "AWS_SECRET_ACCESS_KEY", c["MINIO_ROOT_PASSWORD"]),
        (
            "create-bucket",
            "MC_HOST_store",
            f"http://{c['MINIO_ROOT_USER']}:{c['MINIO_ROOT_PASSWORD']}@minio:9000",
        ),
        ("jupyter", "JUPYTER_TOKEN", c["JUPYTER_TOKEN"]),
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
    """MLflow's backend store is database mlflowdb on postgres, with the generated user."""
    command = services["mlflow"]["command"]
    backend = command[command.index("--backend-store-uri") + 1]
    user, password = CREDENTIALS["POSTGRES_USER"], CREDENTIALS["POSTGRES_PASSWORD"]
    assert backend == f"postgresql://{user}:{password}@postgres:5432/mlflowdb"


@pytest.mark.parametrize(
    ("service", "allowed"),
    [
        ("postgres", {"POSTGRES_USER", "POSTGRES_PASSWORD"}),
        ("minio", {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}),
        ("create-bucket", {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}),
        (
            "mlflow",
            {"POSTGRES_USER", "POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
        ),
        ("jupyter", {"JUPYTER_TOKEN"}),
        ("credentials-check", set(CREDENTIAL_KEYS) - {"POSTGRES_DB"}),
    ],
)
def test_secrets_reach_only_the_services_that_use_them(
    services: dict, service: str, allowed: set[str]
) -> None:
    """A service's resolved definition holds no credential it does not need."""
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
    assert services["create-bucket"]["environment"]["MC_HOST_store"] == "http://:@minio:9000"
    command = services["mlflow"]["command"]
    assert command[command.index("--backend-store-uri") + 1] == "postgresql://:@postgres:5432/"


def test_every_credential_in_the_file_comes_from_a_variable() -> None:
    """In the file as written, every credential-like setting is a ${...} reference."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    pattern = re.compile(r"PASSWORD|USER|TOKEN|SECRET|ACCESS_KEY|MC_HOST")
    checked = 0
    for name, service in raw["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if pattern.search(variable):
                checked += 1
                assert "${" in str(value), f"{name}: {variable} is a literal: {value!r}"
    assert checked >= 12


@pytest.mark.parametrize(
    ("environment", "expected_exit"),
    [
        (CREDENTIALS, 0),
        ({**CREDENTIALS, "MINIO_ROOT_PASSWORD": ""}, 1),
        ({**CREDENTIALS, "JUPYTER_TOKEN": ""}, 1),
        ({key: "" for key in CREDENTIALS}, 1),
    ],
    ids=["complete", "no-minio-password", "no-jupyter-token", "no-env-file"],
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
        assert re.search(r"credential [A-Z_]+ is empty", completed.stderr)


# --- images -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "pattern"),
    [
        ("postgres", r"^postgres:17\.\d+-bookworm$"),
        ("credentials-check", r"^postgres:17\.\d+-bookworm$"),
        ("minio", r"^minio/minio:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$"),
        ("create-bucket", r"^minio/mc:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$"),
        ("jupyter", r"^quay\.io/jupyter/pytorch-notebook:pytorch-\d+\.\d+\.\d+$"),
        ("mlflow", r"^chi-persist/mlflow:\d+\.\d+\.\d+$"),
    ],
)
def test_every_image_is_pinned_to_a_version(services: dict, service: str, pattern: str) -> None:
    """No `latest` and no bare names: each image names an exact release."""
    assert re.match(pattern, services[service]["image"]), services[service]["image"]


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
    assert set(dockerfile) == {"mlflow", "psycopg", "boto3"}
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
}


def _bind_mounts(services: dict) -> list[tuple[str, dict]]:
    return [
        (name, volume)
        for name, service in services.items()
        for volume in service.get("volumes") or []
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


def test_mount_point_defaults_to_mnt_block(env_file: Path) -> None:
    """Without MOUNT_POINT the data lives under /mnt/block, the tutorial's mount point."""
    services = resolved_config(env_file)["services"]
    sources = {volume["source"] for _, volume in _bind_mounts(services)}
    assert sources == {
        "/mnt/block/postgres_data",
        "/mnt/block/minio_data",
        "/mnt/block/jupyter_work",
    }


def test_data_mounts_never_create_their_source(services: dict) -> None:
    """A missing data directory (no volume at reboot) fails the container, not the root disk."""
    for name, volume in _bind_mounts(services):
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


def test_published_ports_are_exactly_the_platforms(services: dict) -> None:
    """Only MLflow 8000, Jupyter 8888 and MinIO 9000/9001 are published, each to itself."""
    published = {
        (name, int(port["published"]), port["target"])
        for name, service in services.items()
        for port in service.get("ports") or []
    }
    assert published == {
        ("mlflow", 8000, 8000),
        ("jupyter", 8888, 8888),
        ("minio", 9000, 9000),
        ("minio", 9001, 9001),
    }


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
        ("create-bucket", "minio", "service_healthy"),
        ("mlflow", "postgres", "service_healthy"),
        ("mlflow", "minio", "service_healthy"),
        ("mlflow", "create-bucket", "service_completed_successfully"),
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
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104 (inside its container)
    assert command[command.index("--port") + 1] == "8000"
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow-artifacts/"
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    bucket = services["create-bucket"]
    assert [*bucket["entrypoint"], *bucket["command"]] == [
        "mc",
        "mb",
        "--ignore-existing",
        "store/mlflow-artifacts",
    ]


def test_jupyter_uses_the_token_and_this_mlflow(services: dict) -> None:
    """Jupyter requires the generated token and logs to the stack's MLflow."""
    environment = services["jupyter"]["environment"]
    assert environment["JUPYTER_TOKEN"] == CREDENTIALS["JUPYTER_TOKEN"]
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:8000"
    assert "mlflow" in services


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
    """A real MLflow server with the service's settings serves HOST_IP and refuses other hosts."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if not mlflow_bin.exists():
        pytest.skip(f"mlflow is not installed in {mlflow_bin.parent} (requirements-test.txt)")
    service = services["mlflow"]
    port = _free_port()
    command = list(service["command"])
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    # PostgreSQL and MinIO are not needed to check the HTTP front: SQLite and a
    # local directory stand in for them.
    command[command.index("--backend-store-uri") + 1] = f"sqlite:///{tmp_path}/mlflow.db"
    command[command.index("--artifacts-destination") + 1] = (tmp_path / "artifacts").as_uri()
    command += ["--workers", "1"]
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))
    }
    environment.update(service["environment"])
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

        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _request(port, "GET", search, {"Host": f"{HOST_IP}:8000"}) == 200
        assert _request(port, "GET", search, {"Host": "mlflow:8000"}) == 200
        assert _request(port, "GET", search, {"Host": "attacker.example:8000"}) == 403
        create = '{"name": "from-the-browser"}'
        json_headers = {"Content-Type": "application/json"}
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
