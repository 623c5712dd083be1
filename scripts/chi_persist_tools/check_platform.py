"""chi-persist check: is a student's platform up, and did its data survive a recycle?

Reads the service URLs and credentials from a Pulumi stack's outputs (or from
flags and environment variables, never from flags for a secret), checks MLflow,
MinIO and Jupyter (each answers with its credentials and refuses without), and
prints one row per check. A stack with platformAccess tunnel is reached through
`./chi-persist open`'s SSH tunnel. A stack that made its own KVM@TACC lease gets a row for the
lease too: when it ends (read live from Blazar when the OpenStack credentials are
in the environment), and a warning when that is near. `--write-marker` logs a
small run through MLflow; `--verify-marker` finds it again after the compute was
recycled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from chi_persist_tools.command_line import (
    HOW_TO_UNLOCK_SECRETS,
    CommandError,
    PulumiFailed,
    pulumi_command_text,
    run_pulumi,
)
from components.blazar import ENDED_STATUSES, ERROR, Blazar, LeaseError, parse_blazar_date

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
SERVICE_PORTS = {"mlflow": 8000, "minio": 9000, "jupyter": 8888}
CREDENTIAL_VARIABLES = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "JUPYTER_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
REQUIRED_OUTPUTS = ("mlflow_url", "minio_api_url", "jupyter_url", "platform_credentials")
RETRY_INTERVAL_SECONDS = 3.0
HTTP_TIMEOUT_SECONDS = 10.0
# A lease that ends within this is near its end: time enough to save work and choose
# between renewing it (the next lease, then the server moved onto it) and letting it end.
LEASE_WARNING_SECONDS = 3600
# The environment that holds the OpenStack credentials pulumi uses (OS_CLOUD with
# clouds.yaml, or an openrc's OS_AUTH_URL and the rest): the live lease is read only then.
OPENSTACK_CREDENTIAL_VARIABLES = ("OS_CLOUD", "OS_AUTH_URL")

from chi_persist_tools.check_options import (  # noqa: E402 (after the module check above)
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)


class UsageError(Exception):
    """Something the user gave (or did not give) prevents any check from running."""


class CheckFailed(Exception):
    """A check did not pass; `retryable` says whether waiting could change that."""

    def __init__(self, detail: str, retryable: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


@dataclass(frozen=True)
class Platform:
    """Where a platform's services answer, and the credentials to use them."""

    source: str
    mlflow_url: str
    minio_url: str
    jupyter_url: str
    minio_user: str
    minio_password: str = ""
    jupyter_token: str = ""
    mlflow_user: str = ""
    mlflow_password: str = ""
    # The stack the platform came from ("" for the selected stack or none), and its lease
    # as its outputs describe it ("" when it made none).
    stack: str | None = None
    lease_id: str = ""
    lease_end: str = ""
    # "tunnel": the platform's ports answer on the server's 127.0.0.1 only (`./chi-persist open`).
    platform_access: str = "public"

    def __repr__(self) -> str:
        return (
            f"Platform(source={self.source!r}, mlflow_url={self.mlflow_url!r}, "
            f"minio_url={self.minio_url!r}, jupyter_url={self.jupyter_url!r}, credentials hidden)"
        )


@dataclass(frozen=True)
class CheckResult:
    """One row of the table."""

    name: str
    passed: bool
    detail: str


# --- arguments ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from chi_persist_tools.cli import parser_for

    return parser_for("check")


def validate_url(flag: str, value: str, *, base: bool = False) -> str:
    """The URL without a trailing slash, or a UsageError naming the flag and the value."""
    example = "http://129.114.25.10" if base else "http://129.114.25.10:8000"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"{flag} {value!r} is not an http(s) URL with a host; give e.g. {flag} {example}"
        )
    if base and (parts.path.strip("/") or parts.query or parts.port):
        raise UsageError(
            f"{flag} {value!r} must name only the host (the ports are conventional); "
            f"give e.g. {flag} {example}, or per-service URLs with --mlflow-url, --minio-url "
            "and --jupyter-url"
        )
    return value.rstrip("/")


# --- where the platform is ---------------------------------------------------


def read_stack_outputs(stack: str | None) -> dict:
    """The stack's outputs, secrets shown, as `pulumi stack output --json` prints them."""
    arguments = ["stack", "output", "--json", "--show-secrets"]
    if stack:
        arguments += ["--stack", stack]
    try:
        printed = run_pulumi(arguments)
    except PulumiFailed as failure:
        raise UsageError(_explain_pulumi_failure(stack, failure)) from None
    except CommandError as error:  # no Pulumi CLI
        raise UsageError(
            f"{'; '.join(error.lines)}; or give the platform's address with --url-base http://IP"
        ) from None
    try:
        outputs = json.loads(printed or "{}")
    except json.JSONDecodeError:
        raise UsageError(
            f"`{pulumi_command_text(arguments)}` printed something that is not JSON: "
            f"{printed[:200]!r}; check the Pulumi CLI version (`pulumi version`)"
        ) from None
    if not isinstance(outputs, dict):
        raise UsageError(
            f"`{pulumi_command_text(arguments)}` printed {type(outputs).__name__}, not an object "
            "of outputs; check the Pulumi CLI version (`pulumi version`)"
        )
    return outputs


def _explain_pulumi_failure(stack: str | None, failure: PulumiFailed) -> str:
    if stack and failure.mentions("no stack named"):
        return (
            f"there is no stack named {stack!r}: create it with "
            f"`./chi-persist init {stack} --key-pair NAME` and run `pulumi up --stack {stack}`; "
            "`pulumi stack ls` lists the stacks that exist"
        )
    if failure.mentions("PULUMI_CONFIG_PASSPHRASE"):
        return (
            f"Pulumi cannot read the stack's secrets without a passphrase: {HOW_TO_UNLOCK_SECRETS}"
        )
    if not stack and failure.mentions("no stack"):
        return (
            "no Pulumi stack is selected: give --stack NETID "
            "(`pulumi stack ls` lists them), or select one with `pulumi stack select NETID`"
        )
    said = " ".join(failure.output.split())
    return f"{failure.lines[0]} {said}"


def platform_from_outputs(outputs: dict, stack_label: str) -> Platform:
    """The platform described by a stack's outputs, or a UsageError naming what is missing."""
    missing = [key for key in REQUIRED_OUTPUTS if key not in outputs]
    if missing:
        command = f"pulumi up --stack {stack_label}" if stack_label else "pulumi up"
        raise UsageError(
            f"stack {stack_label or '(selected)'} has no output {', '.join(missing)}: "
            f"the platform was never deployed or its last update failed; run `{command}` "
            "and try again"
        )
    credentials = outputs["platform_credentials"]
    needed = ("minio_root_user", "minio_root_password", "jupyter_token", "mlflow_user",
              "mlflow_password")  # fmt: skip
    absent = [
        key for key in needed if not isinstance(credentials, dict) or not credentials.get(key)
    ]
    if absent:
        raise UsageError(
            f"stack {stack_label or '(selected)'}: platform_credentials lacks "
            f"{', '.join(absent)}; run `pulumi up` again so the platform reports its credentials"
        )
    urls = {}
    for key in ("mlflow_url", "minio_api_url", "jupyter_url"):
        value = str(outputs[key])
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            command = f"pulumi up --stack {stack_label}" if stack_label else "pulumi up"
            raise UsageError(
                f"stack {stack_label or '(selected)'}: output {key} {value!r} is not an http(s) "
                f"URL; the stack may come from an older version of the program: run `{command}`"
            )
        urls[key] = f"{parts.scheme}://{parts.netloc}"
    return Platform(
        source=f"stack {stack_label}" if stack_label else "the selected stack",
        mlflow_url=urls["mlflow_url"],
        minio_url=urls["minio_api_url"],
        jupyter_url=urls["jupyter_url"],
        minio_user=str(credentials["minio_root_user"]),
        minio_password=str(credentials["minio_root_password"]),
        jupyter_token=str(credentials["jupyter_token"]),
        mlflow_user=str(credentials["mlflow_user"]),
        mlflow_password=str(credentials["mlflow_password"]),
        stack=stack_label,
        lease_id=str(outputs.get("lease_id") or ""),
        lease_end=str(outputs.get("lease_end") or ""),
        platform_access=str(outputs.get("platform_access") or "public"),
    )


def credentials_from_environment(environ: dict[str, str]) -> dict[str, str]:
    absent = [name for name in CREDENTIAL_VARIABLES if not environ.get(name)]
    if absent:
        raise UsageError(
            f"{', '.join(absent)} not set: without --stack the credentials come from the "
            "environment; `pulumi stack output platform_credentials --show-secrets` shows them "
            "(or MOUNT_POINT/.chi-persist/credentials.env on the server); e.g. "
            "`export MINIO_ROOT_USER=...`, or use --stack NETID instead"
        )
    return {name: environ[name] for name in CREDENTIAL_VARIABLES}


def resolve_platform(arguments: argparse.Namespace, environ: dict[str, str]) -> Platform:
    """Combine --stack / --url-base / per-service flags / environment into one Platform."""
    flags = {
        "mlflow": arguments.mlflow_url and validate_url("--mlflow-url", arguments.mlflow_url),
        "minio": arguments.minio_url and validate_url("--minio-url", arguments.minio_url),
        "jupyter": arguments.jupyter_url and validate_url("--jupyter-url", arguments.jupyter_url),
    }
    if arguments.url_base or (all(flags.values()) and not arguments.stack):
        urls = dict(flags)
        source = "flags"
        if arguments.url_base:
            base = validate_url("--url-base", arguments.url_base, base=True)
            source = base
            for service, port in SERVICE_PORTS.items():
                urls[service] = urls[service] or f"{base}:{port}"
        if _token_in_url(urls["jupyter"]):
            raise UsageError(
                "the Jupyter URL given carries its token: a flag ends up in shell history and in "
                "`ps`, where every user of this machine reads it. Give the URL without "
                "?token=..., and the token in the environment: export JUPYTER_TOKEN (e.g. "
                "`read -rs JUPYTER_TOKEN && export JUPYTER_TOKEN`)"
            )
        credentials = credentials_from_environment(dict(environ))
        return Platform(
            source=source,
            mlflow_url=urls["mlflow"],
            minio_url=urls["minio"],
            jupyter_url=_without_query(urls["jupyter"]),
            minio_user=credentials["MINIO_ROOT_USER"],
            minio_password=credentials["MINIO_ROOT_PASSWORD"],
            jupyter_token=credentials["JUPYTER_TOKEN"],
            mlflow_user=credentials["MLFLOW_TRACKING_USERNAME"],
            mlflow_password=credentials["MLFLOW_TRACKING_PASSWORD"],
        )
    outputs = read_stack_outputs(arguments.stack)
    platform = platform_from_outputs(outputs, arguments.stack or "")
    return dataclasses.replace(
        platform,
        mlflow_url=flags["mlflow"] or platform.mlflow_url,
        minio_url=flags["minio"] or platform.minio_url,
        jupyter_url=_without_query(flags["jupyter"]) if flags["jupyter"] else platform.jupyter_url,
    )


def _token_in_url(url: str) -> str:
    return parse_qs(urlsplit(url).query).get("token", [""])[0]


def _without_query(url: str) -> str:
    """Jupyter's server root: a URL like http://IP:8888/lab?token=... loses path and token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextlib.contextmanager
def through_tunnel(
    platform: Platform, arguments: argparse.Namespace, environ: dict[str, str], progress: TextIO
) -> Iterator[Platform]:
    """The platform as the checks reach it: a stack in platformAccess tunnel through the SSH
    tunnel of `./chi-persist open` (the one running, or one started here and stopped after)."""
    given = arguments.mlflow_url or arguments.minio_url or arguments.jupyter_url
    if platform.platform_access != "tunnel" or platform.stack is None or given:
        yield platform
        return
    from chi_persist_tools import tunnel
    from chi_persist_tools.command_line import CommandError

    stack = platform.stack or selected_stack_name()
    try:
        opened, started = tunnel.start(stack, environ)
    except CommandError as error:
        raise UsageError(
            f"{platform.source} answers only through an SSH tunnel (platformAccess tunnel), "
            f"which did not start: {'; '.join(error.lines)}"
        ) from None
    print(
        f"check: {platform.source} has platformAccess tunnel: checking through the SSH "
        f"tunnel to {opened.address}{' (started for the checks)' if started else ''}",
        file=progress,
    )
    try:
        yield dataclasses.replace(
            platform,
            mlflow_url=opened.urls["mlflow"],
            minio_url=opened.urls["minio_api"],
            jupyter_url=opened.urls["jupyter"],
        )
    finally:
        if started:
            tunnel.stop(stack)


def selected_stack_name() -> str:
    from chi_persist_tools.command_line import selected_stack

    return selected_stack("check")


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


# --- the lease -----------------------------------------------------------------


@dataclass(frozen=True)
class LeaseView:
    """What is known of the stack's lease: from its outputs, or live from KVM@TACC."""

    lease_id: str
    end: datetime | None
    status: str | None = None
    """Blazar's status of the lease, when it was read live."""
    gone: bool = False
    """Blazar has no such lease any more."""
    live: bool = False
    note: str = ""
    """Why the live lease was not read, or what is wrong with the outputs."""
    ended: str | None = None
    """Why Blazar's lease will not serve again (read from its events), when read live."""
    serves: bool = False
    """Its flavor is the project's now, whatever its status (ERROR after a refused update)."""


def openstack_credentials_set(environ: dict[str, str]) -> bool:
    return any(environ.get(name) for name in OPENSTACK_CREDENTIAL_VARIABLES)


def read_lease(platform: Platform, environ: dict[str, str]) -> LeaseView:
    """The lease as the stack's outputs describe it, and as KVM@TACC's reservation service
    (Blazar) has it now when the OpenStack credentials are in the environment."""
    end = None
    note = ""
    if platform.lease_end:
        try:
            end = parse_blazar_date(platform.lease_end)
        except ValueError:
            note = f"the stack's output lease_end {platform.lease_end!r} is not a date"
    if not platform.lease_id:
        return LeaseView("", end, note=note or "the stack has no output lease_id")
    if not openstack_credentials_set(environ):
        return LeaseView(
            platform.lease_id,
            end,
            note=note
            or "the lease's end is the one the stack saw at its last `pulumi up`; to read it "
            "live from KVM@TACC, set OS_CLOUD (or source your openrc file) as for `pulumi up`",
        )
    try:
        # Blazar through a keystoneauth1 session of openstacksdk's config loader: the
        # credentials and calls of the stack's lease resource (components/lease.py).
        lease = Blazar().get_lease(platform.lease_id)
    except LeaseError as error:
        return LeaseView(platform.lease_id, end, note=f"the live lease was not read: {error}")
    except ImportError as error:
        return LeaseView(
            platform.lease_id,
            end,
            note=f"the live lease was not read: {error}; fix: `pip install -r "
            "requirements.txt` in the project's virtual environment",
        )
    if lease is None:
        return LeaseView(platform.lease_id, end, gone=True, live=True)
    now = datetime.now(timezone.utc)
    return LeaseView(
        platform.lease_id,
        lease.end,
        status=lease.status,
        live=True,
        ended=lease.ended_because(now),
        serves=lease.serves(now),
    )


def format_moment(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def format_time_left(left: timedelta) -> str:
    minutes = max(0, int(left.total_seconds()) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"


def lease_check(
    platform: Platform, lease: LeaseView, now: datetime
) -> tuple[CheckResult, list[str]]:
    """The lease's row, and the warnings that go with it (its end is near, it is in ERROR)."""
    name = "Lease is active"
    stack = f" --stack {platform.stack}" if platform.stack else ""
    up = f"pulumi up{stack}"
    after_the_end = (
        "KVM@TACC deletes the server at the lease's end (the platform stops without a clean "
        "stop); the volume and all its data stay"
    )
    new_lease = (
        f"fix: `{up}` makes a new lease and a new server, which mounts the same volume and "
        "starts the platform"
    )
    where = "" if lease.live else " (from the stack's outputs)"
    label = f"lease {lease.lease_id}" if lease.lease_id else "the lease"
    if lease.gone:
        detail = (
            f"{label} no longer exists at KVM@TACC: it ended or was deleted. {after_the_end}; "
            + new_lease
        )
        return CheckResult(name, False, detail), []
    if lease.end is None:
        detail = f"{lease.note or 'the stack has no output lease_end'}; fix: run `{up}`"
        return CheckResult(name, False, detail), []
    ends = format_moment(lease.end)
    state = f" is {lease.status}" if lease.status else ""
    if lease.status in ENDED_STATUSES or lease.end <= now:
        detail = f"{label}{state}: it ended at {ends}{where}. {after_the_end}; {new_lease}"
        return CheckResult(name, False, detail), []
    if lease.ended:
        detail = f"{label}{state}: {lease.ended}, so it serves no server. {new_lease}"
        return CheckResult(name, False, detail), []
    if lease.live and not lease.serves:
        detail = (
            f"{label}{state}, not ACTIVE yet: no server can boot from it until it is; "
            f"fix: wait a minute and run `{up}`"
        )
        return CheckResult(name, False, detail), []
    left = lease.end - now
    status = f" {lease.status}" if lease.status else ""
    detail = f"{label}{status}, ends {ends}, in {format_time_left(left)}{where}"
    warnings = []
    if lease.status == ERROR:
        warnings.append(
            f"{label} is ERROR, but its events say it started and has not ended: it still "
            f"serves, and the server keeps running until {ends}. Blazar puts a lease into ERROR "
            "when it refuses a change of it (it refuses every change of a flavor:instance "
            f"lease); nothing is lost, and `{up}` keeps the lease and renews it near its end"
        )
    if left.total_seconds() <= LEASE_WARNING_SECONDS:
        detail += ": soon"
        warnings.append(
            f"the lease ends in {format_time_left(left)}, at {ends}. {after_the_end}. To keep "
            f"working past it, renew it: `{up}` within the renewal window before the end "
            "(chi-persist:leaseRenewWindow, the last hour unless set) makes the next lease first, "
            "then moves the server onto it the clean way (the same volume and address, nothing "
            "formatted), then deletes this lease; if no host is free for the next lease, the "
            f"server keeps running until the end and `{up}` says so. Or stop cleanly now: "
            f"`./chi-persist recycle{stack} --end-lease`, then `{up}` later; or let it end and run "
            f"`{up}` afterwards. Blazar cannot extend this lease: a longer leaseDuration "
            "applies to the next one"
        )
    return CheckResult(name, True, detail), warnings


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


# --- running and reporting ---------------------------------------------------


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


def format_table(results: Sequence[CheckResult]) -> str:
    width = max(len(result.name) for result in results)
    lines = [
        f"  {'✓' if result.passed else '✗'} {result.name:<{width}}  {result.detail}"
        for result in results
    ]
    failed = sum(not result.passed for result in results)
    if failed:
        lines.append(f"{failed} of {len(results)} checks failed")
    else:
        lines.append(f"all {len(results)} checks passed")
    return "\n".join(lines)


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


def main(
    argv: Sequence[str] | None = None,
    environ: dict[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    environ = dict(os.environ if environ is None else environ)
    for stream in (stdout, stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    arguments = build_parser().parse_args(argv)
    return run_parsed(arguments, environ, stdout, stderr)


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist check`."""
    return run_parsed(arguments, dict(os.environ), sys.stdout, sys.stderr)


def run_parsed(
    arguments: argparse.Namespace, environ: dict[str, str], stdout: TextIO, stderr: TextIO
) -> int:
    for stream in (stdout, stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        if arguments.stack and arguments.url_base:
            raise UsageError(
                "--stack and --url-base name two sources of URLs and credentials; give one, "
                f"e.g. --stack {arguments.stack}"
            )
        platform = resolve_platform(arguments, environ)
        print(f"check: checking the platform of {platform.source}", file=stderr)
        results = []
        if platform.lease_id or platform.lease_end:
            lease = read_lease(platform, environ)
            if lease.note:
                print(f"check: note: {lease.note}", file=stderr)
            row, warnings = lease_check(platform, lease, datetime.now(timezone.utc))
            for warning in warnings:
                print(f"check: warning: {warning}", file=stderr, flush=True)
            results.append(row)
        elif platform.stack is not None:
            print(
                f"check: note: {platform.source} has no lease of its own (no output "
                "lease_end): its server boots from a reservation you made (chi-persist:"
                "reservation). Horizon shows when that lease ends (KVM@TACC, Reservations > "
                "Leases); at its end the server is deleted and the volume and its data stay",
                file=stderr,
            )
        with through_tunnel(platform, arguments, environ, stderr) as reached:
            results += run_checks(
                reached,
                wait_seconds=arguments.wait,
                write=arguments.write_marker,
                verify=arguments.verify_marker,
                progress=stderr,
            )
        if platform.stack is not None:
            # The newest backup's age, when the stack has backups on (backup.py).
            from chi_persist_tools.backup import check_rows

            note = lambda line: print(f"check: {line}", file=stderr, flush=True)  # noqa: E731
            results += [CheckResult(*row) for row in check_rows(platform.stack, note)]
    except UsageError as error:
        print(f"check: error: {error}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("check: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    print(format_table(results), file=stdout, flush=True)
    return EXIT_OK if all(result.passed for result in results) else EXIT_CHECK_FAILED
