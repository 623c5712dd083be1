"""`chi-persist check`'s markers against a real MLflow server: what counts as intact.

The server keeps its runs in SQLite and its artifacts in a local directory, so a
test can damage exactly one thing (the artifact's bytes, the artifact itself,
the metric) and see --verify-marker refuse it. The data path with PostgreSQL
and S3 is tests/datapath/test_persistence.py.
"""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.datapath import (
    VENV_BIN,
    MlflowLaunch,
    free_port,
    jupyter_stand_in,
    mlflow_server,
)
from tests.support.tools import import_tool

check_location = import_tool("check_location")
check_platform = import_tool("check_platform")
check_services = import_tool("check_services")

pytestmark = [
    pytest.mark.datapath,
    pytest.mark.skipif(
        not (VENV_BIN / "mlflow").exists(),
        reason=f"mlflow is not in {VENV_BIN} (requirements-test.txt installs it)",
    ),
]


@dataclass
class LocalMlflow:
    url: str
    database: Path
    artifacts: Path

    def platform(self) -> check_location.Platform:
        return check_location.Platform(
            source="test",
            mlflow_url=self.url,
            minio_url="http://127.0.0.1:9",
            jupyter_url="http://127.0.0.1:9",
            minio_user="unused",
        )

    def artifact(self, run_id: str) -> Path:
        (path,) = self.artifacts.glob(f"*/{run_id}/artifacts/marker.txt")
        return path


@contextmanager
def local_mlflow(root: Path, *extra_options: str) -> Iterator[LocalMlflow]:
    port = free_port()
    launch = MlflowLaunch(
        server_options=[
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            (root / "artifacts").as_uri(),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra_options,
        ],
        environment={},
        port=port,
    )
    with mlflow_server(launch, root / "mlflow.log", root) as url:
        yield LocalMlflow(url, root / "mlflow.db", root / "artifacts")


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflow]:
    """One MLflow server for the module: SQLite runs, artifacts served from a directory."""
    with local_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def written_run_id(detail: str) -> str:
    match = re.match(r"run ([0-9a-f]{32}) in experiment chi-persist-check: ", detail)
    assert match, detail
    return match.group(1)


def test_written_marker_is_verified(mlflow: LocalMlflow):
    """--write-marker then --verify-marker on the same server: the same run, intact."""
    run_id = written_run_id(check_services.write_marker(mlflow.platform()))
    detail = check_services.verify_marker(mlflow.platform())
    assert detail.startswith(f"run {run_id} written ")
    assert detail.endswith(" intact")
    content = mlflow.artifact(run_id).read_text()
    assert content.startswith("chi-persist marker\nnonce ")


def change_one_byte(mlflow: LocalMlflow, run_id: str) -> None:
    path = mlflow.artifact(run_id)
    content = bytearray(path.read_bytes())
    content[-2] ^= 0x01
    path.write_bytes(bytes(content))


def delete_artifact(mlflow: LocalMlflow, run_id: str) -> None:
    mlflow.artifact(run_id).unlink()


def change_metric(mlflow: LocalMlflow, run_id: str) -> None:
    with sqlite3.connect(mlflow.database) as database:
        for table in ("metrics", "latest_metrics"):
            database.execute(
                f"UPDATE {table} SET value = value + 1 WHERE run_uuid = ?",  # noqa: S608
                (run_id,),
            )


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (change_one_byte, r"marker\.txt has sha256 \w{12}…, but \w{12}… was written"),
        (delete_artifact, r"marker\.txt cannot be read back \(.*\): MLflow's artifact store"),
        (change_metric, r"metric marker_value is \d+\.0, but \d+\.0 was logged"),
    ],
    ids=["artifact-bytes-changed", "artifact-gone", "metric-changed"],
)
def test_damaged_marker_fails_verification(
    mlflow: LocalMlflow, damage: Callable[[LocalMlflow, str], None], expected: str
):
    """Any difference from what was written (bytes, artifact, metric) fails --verify-marker."""
    run_id = written_run_id(check_services.write_marker(mlflow.platform()))
    damage(mlflow, run_id)
    with pytest.raises(check_services.CheckFailed) as failure:
        check_services.verify_marker(mlflow.platform())
    assert failure.value.detail.startswith(f"run {run_id}: ")
    assert re.search(expected, failure.value.detail), failure.value.detail


def test_refused_host_header_names_the_setting(tmp_path: Path):
    """MLflow refusing the Host header (a public IP not allowed) is reported with the fix."""
    with (
        local_mlflow(tmp_path, "--allowed-hosts", "129.114.25.10:8000") as server,
        jupyter_stand_in("token") as jupyter_url,
    ):
        stdout, stderr = io.StringIO(), io.StringIO()
        status = check_platform.main(
            ["--mlflow-url", server.url, "--minio-url", "http://127.0.0.1:9"]
            + ["--jupyter-url", jupyter_url],
            {
                "MINIO_ROOT_USER": "u",
                "MINIO_ROOT_PASSWORD": "p",
                "JUPYTER_TOKEN": "token",
                "MLFLOW_TRACKING_USERNAME": "user",
                "MLFLOW_TRACKING_PASSWORD": "password",
            },
            stdout,
            stderr,
        )
    host = server.url.removeprefix("http://")
    (row,) = [line for line in stdout.getvalue().splitlines() if "MLflow answers" in line]
    assert status == check_platform.EXIT_CHECK_FAILED
    assert row.split(maxsplit=3)[:3] == ["✗", "MLflow", "answers"]
    assert row.split(maxsplit=3)[3] == (
        f"{server.url} refused the Host header '{host}': "
        "the server's --allowed-hosts (docker/docker-compose.yaml) must include it"
    )
