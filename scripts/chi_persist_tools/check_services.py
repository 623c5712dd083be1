"""The checks of `chi-persist check`: MLflow, MinIO and Jupyter each answer with their
credentials and refuse without; --write-marker logs a small run through MLflow, which
--verify-marker finds intact after the compute was recycled."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from chi_persist_tools.check_location import Platform, UsageError

# Missing packages fail the import (the launcher then switches to the project's
# virtual environment); the MLflow client is slow to import, so it is only
# looked for here and imported when a check needs it.
if importlib.util.find_spec("mlflow") is None:
    raise ModuleNotFoundError("No module named 'mlflow'", name="mlflow")
EXPERIMENT_NAME = "chi-persist-check"
BUCKET = "mlflow-artifacts"
MARKER_TAG = "chi-persist.marker"
NONCE_TAG = "chi-persist.nonce"
SHA256_TAG = "chi-persist.artifact-sha256"
METRIC_VALUE_TAG = "chi-persist.metric-value"
MARKER_METRIC = "marker_value"
MARKER_ARTIFACT = "marker.txt"
RETRY_INTERVAL_SECONDS = 3.0
HTTP_TIMEOUT_SECONDS = 10.0


class CheckFailed(Exception):
    """A check did not pass; `retryable` says whether waiting could change that."""

    def __init__(self, detail: str, retryable: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


@dataclass(frozen=True)
class CheckResult:
    """One row of the table."""

    name: str
    passed: bool
    detail: str


# --- the checks --------------------------------------------------------------


def _describe_connection_error(error: Exception) -> str:
    """'connection refused', 'timed out', ... from an error of requests or botocore."""
    texts, seen, pending = [], set(), [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts.append(str(current))
        kwargs = getattr(current, "kwargs", None)
        pending += [current.__cause__, current.__context__]
        pending.append(kwargs.get("error") if isinstance(kwargs, dict) else None)
    text = " ".join(texts)
    for needle, meaning in (
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Name or service not known", "unknown host name"),
        ("No route to host", "no route to host"),
    ):
        if needle in text:
            return meaning
    return type(error).__name__


def check_mlflow(platform: Platform) -> str:
    """MLflow answers /health and its tracking API."""
    try:
        response = requests.get(f"{platform.mlflow_url}/health", timeout=HTTP_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        raise CheckFailed(
            f"no answer from {platform.mlflow_url}: {_describe_connection_error(error)}"
        ) from None
    if response.status_code == 403 and "Host header" in response.text:
        raise CheckFailed(_host_refused(platform), retryable=False)
    if response.status_code != 200:
        raise CheckFailed(
            f"{platform.mlflow_url}/health answered HTTP {response.status_code} "
            f"{response.text.strip()[:80]!r}"
        )
    search = f"{platform.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        anonymous = requests.get(search, timeout=HTTP_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        raise CheckFailed(
            f"no answer from {platform.mlflow_url}: {_describe_connection_error(error)}"
        ) from None
    if anonymous.status_code == 200:
        raise CheckFailed(
            f"{platform.mlflow_url} answers its tracking API without a login: anyone who finds "
            "the address can read and delete every run and model. Run `pulumi up` (the "
            "platform's MLflow runs its basic-auth app)",
            retryable=False,
        )
    client = _mlflow_client(platform)
    try:
        experiments = client.search_experiments(max_results=100)
    except Exception as error:  # the client raises MlflowException or requests' errors
        if "Host header" in str(error):
            raise CheckFailed(_host_refused(platform), retryable=False) from None
        if "401" in str(error) or "Unauthorized" in str(error):
            raise CheckFailed(
                f"{platform.mlflow_url} refused the login of user {platform.mlflow_user!r}: "
                "it is not MLflow's (MLFLOW_ADMIN_USER and MLFLOW_ADMIN_PASSWORD in "
                "MOUNT_POINT/.chi-persist/credentials.env on the server)",
                retryable=False,
            ) from None
        raise CheckFailed(
            f"/health is OK but the tracking API failed: {_first_line(error)}"
        ) from None
    return (
        f"{platform.mlflow_url} (/health OK; the tracking API refuses a request without a "
        f"login ({anonymous.status_code}) and lists {_count(len(experiments), 'experiment')} "
        "to the platform's user)"
    )


def _host_refused(platform: Platform) -> str:
    return (
        f"{platform.mlflow_url} refused the Host header {urlsplit(platform.mlflow_url).netloc!r}: "
        "the server's --allowed-hosts (docker/docker-compose.yaml) must include it"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _s3_client(platform: Platform):
    return boto3.client(
        "s3",
        endpoint_url=platform.minio_url,
        aws_access_key_id=platform.minio_user,
        aws_secret_access_key=platform.minio_password,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=HTTP_TIMEOUT_SECONDS,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )


def _s3_failure(platform: Platform, error: Exception, action: str) -> CheckFailed:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or (
            status == 403
        ):
            return CheckFailed(
                f"{platform.minio_url} refused the root credentials ({code or status}) on "
                f"{action}: they are not MinIO's (see MOUNT_POINT/.chi-persist/credentials.env "
                "on the server)",
                retryable=False,
            )
        return CheckFailed(f"{action} at {platform.minio_url} failed: {code or status}")
    return CheckFailed(f"no answer from {platform.minio_url}: {_describe_connection_error(error)}")


def check_minio_live(platform: Platform) -> str:
    """MinIO answers an S3 call made with the root credentials."""
    try:
        buckets = _s3_client(platform).list_buckets().get("Buckets", [])
    except Exception as error:  # botocore raises many types; all mean "not live"
        raise _s3_failure(platform, error, "ListBuckets") from None
    return (
        f"{platform.minio_url} (S3 ListBuckets with the root credentials: "
        f"{_count(len(buckets), 'bucket')})"
    )


def check_minio_bucket(platform: Platform) -> str:
    """The bucket MLflow stores artifacts in exists."""
    try:
        _s3_client(platform).head_bucket(Bucket=BUCKET)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise CheckFailed(
                f"{platform.minio_url} has no bucket {BUCKET}: the platform's first start "
                "creates it; see `docker compose logs` on the server"
            ) from None
        raise _s3_failure(platform, error, f"HeadBucket {BUCKET}") from None
    except Exception as error:
        raise _s3_failure(platform, error, f"HeadBucket {BUCKET}") from None
    return f"s3://{BUCKET} exists"


def check_jupyter(platform: Platform) -> str:
    """Jupyter answers /api/status with its token, and refuses it without one."""
    status_url = f"{platform.jupyter_url}/api/status"
    try:
        response = requests.get(
            status_url,
            headers={"Authorization": f"token {platform.jupyter_token}"},
            timeout=HTTP_TIMEOUT_SECONDS,
        )
    except requests.RequestException as error:
        raise CheckFailed(
            f"no answer from {platform.jupyter_url}: {_describe_connection_error(error)}"
        ) from None
    if response.status_code in (401, 403):
        raise CheckFailed(
            f"{platform.jupyter_url} refused the token (HTTP {response.status_code}): it is not "
            "the server's JUPYTER_TOKEN (MOUNT_POINT/.chi-persist/credentials.env)",
            retryable=False,
        )
    if response.status_code != 200:
        raise CheckFailed(f"{status_url} answered HTTP {response.status_code}")
    try:
        response.json()
    except ValueError:
        raise CheckFailed(f"{status_url} answered something that is not Jupyter's JSON") from None
    try:
        anonymous = requests.get(status_url, timeout=HTTP_TIMEOUT_SECONDS, allow_redirects=False)
    except requests.RequestException as error:
        raise CheckFailed(f"no answer from {platform.jupyter_url}: {error}") from None
    if anonymous.status_code == 200:
        raise CheckFailed(
            f"{status_url} answers without a token: anyone who finds the address can run code",
            retryable=False,
        )
    return f"{platform.jupyter_url} (/api/status with the token; refused without it)"


# --- markers -----------------------------------------------------------------


def _mlflow_client(platform: Platform):
    # The client retries for minutes by default; --wait is the place for patience.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    # MLflow 3 servers with an S3 store advertise presigned transfers (/server-info), and the
    # client then fetches from MinIO at the server's own endpoint (http://minio:9000, a name
    # only the stack's network knows): every artifact goes through MLflow instead.
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "false")
    # MLflow's client logs in with these (mlflow/utils/rest_utils.py); this process is the
    # check's own, and nothing it starts is given them.
    os.environ["MLFLOW_TRACKING_USERNAME"] = platform.mlflow_user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = platform.mlflow_password
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise UsageError(
            f"the MLflow client is not installed for {sys.executable}: activate the project's "
            "virtual environment (`source venv/bin/activate`) or run "
            "`pip install -r requirements.txt`"
        ) from None
    return MlflowClient(tracking_uri=platform.mlflow_url)


def no_marker_message(platform: Platform) -> str:
    return (
        f"no marker run in experiment {EXPERIMENT_NAME} at {platform.mlflow_url}: "
        "was the volume replaced, or was --write-marker never run?"
    )


def write_marker(platform: Platform) -> str:
    """Log a marker run with a metric and an artifact, and read the artifact back."""
    client = _mlflow_client(platform)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        experiment_id = client.create_experiment(EXPERIMENT_NAME)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    written_at = datetime.now(timezone.utc)
    nonce = secrets.token_hex(16)
    content = (
        f"chi-persist marker\nnonce {nonce}\nwritten {written_at.isoformat(timespec='seconds')}\n"
    ).encode()
    digest = hashlib.sha256(content).hexdigest()
    metric_value = float(secrets.randbelow(1_000_000))
    run = client.create_run(
        experiment_id,
        run_name=f"marker-{written_at:%Y%m%d-%H%M%S}",
        tags={
            MARKER_TAG: "true",
            NONCE_TAG: nonce,
            SHA256_TAG: digest,
            METRIC_VALUE_TAG: repr(metric_value),
        },
    )
    run_id = run.info.run_id
    try:
        client.log_metric(run_id, MARKER_METRIC, metric_value)
        with tempfile.TemporaryDirectory(prefix="chi-persist-marker-") as directory:
            path = Path(directory) / MARKER_ARTIFACT
            path.write_bytes(content)
            client.log_artifact(run_id, str(path))
        read_back = _download_marker(client, run_id)
    except CheckFailed:
        client.set_terminated(run_id, status="FAILED")
        raise
    except Exception as error:
        client.set_terminated(run_id, status="FAILED")
        raise CheckFailed(f"run {run_id}: logging failed: {_first_line(error)}") from None
    if hashlib.sha256(read_back).hexdigest() != digest:
        client.set_terminated(run_id, status="FAILED")
        raise CheckFailed(f"run {run_id}: {MARKER_ARTIFACT} read back differs from what was sent")
    client.set_terminated(run_id, status="FINISHED")
    return (
        f"run {run_id} in experiment {EXPERIMENT_NAME}: {MARKER_METRIC}={metric_value:g}, "
        f"{MARKER_ARTIFACT} sha256 {digest[:12]}…"
    )


def _download_marker(client, run_id: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="chi-persist-marker-") as directory:
        try:
            local = client.download_artifacts(run_id, MARKER_ARTIFACT, directory)
        except Exception as error:
            raise CheckFailed(
                f"run {run_id}: {MARKER_ARTIFACT} cannot be read back ({_first_line(error)}): "
                "MLflow's artifact store (MinIO's data on the volume) does not hold it"
            ) from None
        return Path(local).read_bytes()


def verify_marker(platform: Platform) -> str:
    """Find the newest finished marker run and check its metric and artifact bytes."""
    client = _mlflow_client(platform)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is None:
        raise CheckFailed(no_marker_message(platform), retryable=False)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{MARKER_TAG}` = 'true' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise CheckFailed(no_marker_message(platform), retryable=False)
    run = runs[0]
    run_id = run.info.run_id
    written = datetime.fromtimestamp(run.info.start_time / 1000, timezone.utc)
    expected_metric = run.data.tags.get(METRIC_VALUE_TAG)
    metric = run.data.metrics.get(MARKER_METRIC)
    if metric is None or _as_float(expected_metric) != metric:
        raise CheckFailed(
            f"run {run_id}: metric {MARKER_METRIC} is {metric}, but {expected_metric} was "
            "logged: the tracking database (PostgreSQL on the volume) lost or changed it",
            retryable=False,
        )
    expected_digest = run.data.tags.get(SHA256_TAG, "")
    content = _download_marker(client, run_id)
    digest = hashlib.sha256(content).hexdigest()
    if digest != expected_digest:
        raise CheckFailed(
            f"run {run_id}: {MARKER_ARTIFACT} has sha256 {digest[:12]}…, but "
            f"{expected_digest[:12]}… was written: the artifact's bytes changed",
            retryable=False,
        )
    return (
        f"run {run_id} written {written:%Y-%m-%d %H:%M:%S} UTC: {MARKER_METRIC}={metric:g}, "
        f"{MARKER_ARTIFACT} sha256 {digest[:12]}… intact"
    )


def _as_float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


# --- running ------------------------------------------------------------------


def run_with_retries(
    name: str,
    check: Callable[[], str],
    deadline: float,
    progress: TextIO,
) -> CheckResult:
    """Run a check until it passes, fails for good, or the deadline passes."""
    while True:
        try:
            return CheckResult(name, True, check())
        except CheckFailed as failure:
            remaining = deadline - time.monotonic()
            if not failure.retryable or remaining <= 0:
                return CheckResult(name, False, failure.detail)
            print(
                f"check: waiting for {name.split()[0]}: {failure.detail} "
                f"(retrying, {remaining:.0f} s left)",
                file=progress,
                flush=True,
            )
            time.sleep(min(RETRY_INTERVAL_SECONDS, remaining))


def run_checks(
    platform: Platform,
    *,
    wait_seconds: float,
    write: bool,
    verify: bool,
    progress: TextIO,
) -> list[CheckResult]:
    deadline = time.monotonic() + wait_seconds
    services = [
        ("MLflow answers", check_mlflow),
        ("MinIO is live", check_minio_live),
        (f"MinIO holds bucket {BUCKET}", check_minio_bucket),
        ("Jupyter answers with its token", check_jupyter),
    ]
    results = [
        run_with_retries(name, lambda check=check: check(platform), deadline, progress)
        for name, check in services
    ]
    marker = None
    if write:
        marker = ("Marker run written", write_marker)
    elif verify:
        marker = ("Marker run intact", verify_marker)
    if marker:
        name, step = marker
        if results[0].passed:
            try:
                # The MLflow client prints "View run …" links: keep stdout for the table.
                with contextlib.redirect_stdout(progress):
                    results.append(CheckResult(name, True, step(platform)))
            except CheckFailed as failure:
                results.append(CheckResult(name, False, failure.detail))
            except UsageError:
                raise
            except Exception as error:  # MlflowException, requests' and boto's errors
                detail = f"MLflow at {platform.mlflow_url} failed: {_first_line(error)}"
                results.append(CheckResult(name, False, detail))
        else:
            results.append(CheckResult(name, False, "not tried: MLflow does not answer"))
    return results
