"""Where a student's platform answers, and with which credentials: a stack's outputs, or
flags and the environment (never a flag for a secret), reached through `open`'s tunnel when
the stack has platformAccess tunnel."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from chi_persist_tools.command_line import (
    HOW_TO_UNLOCK_SECRETS,
    CommandError,
    PulumiFailed,
    pulumi_command_text,
    run_pulumi,
)

SERVICE_PORTS = {"mlflow": 8000, "minio": 9000, "jupyter": 8888}
CREDENTIAL_VARIABLES = (
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "JUPYTER_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
REQUIRED_OUTPUTS = ("mlflow_url", "minio_api_url", "jupyter_url", "platform_credentials")


class UsageError(Exception):
    """Something the user gave (or did not give) prevents any check from running."""


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
