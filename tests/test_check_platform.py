"""./chi-persist check: where it finds the platform, how it reports, what it refuses.

Stacks are read with the real Pulumi CLI: each stack's outputs, shaped like the
program's (its credentials and Jupyter URL secret), are brought in with `pulumi
stack import` on a student machine (tests/engine/workspace.py), whose calls are
recorded. MinIO is moto's S3 server; Jupyter is a loopback server that checks the
token. MLflow itself is exercised in tests/datapath/.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from tests.engine.workspace import CLEARED_PREFIXES, StudentMachine, toolchain_skip_reason
from tests.support.datapath import free_port, jupyter_stand_in, s3_server
from tests.support.pulumi_state import outputs_deployment
from tests.support.tools import command_argv, command_env, import_tool
from tests.twin import steps

check_location = import_tool("check_location")
check_platform = import_tool("check_platform")
check_services = import_tool("check_services")
command_line = import_tool("command_line")

MINIO_USER = "uminiotestuser"
MINIO_PASSWORD = "MinioTestPassword0123456789"  # noqa: S105 (made up for the test)
JUPYTER_TOKEN = "JupyterTestToken0123456789abcdef"  # noqa: S105
MLFLOW_USER = "umlflowtestuser"
MLFLOW_PASSWORD = "MlflowTestPassword0123456789"  # noqa: S105
CREDENTIAL_ENVIRONMENT = {
    "MINIO_ROOT_USER": MINIO_USER,
    "MINIO_ROOT_PASSWORD": MINIO_PASSWORD,
    "JUPYTER_TOKEN": JUPYTER_TOKEN,
    "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
    "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
}


def stack_outputs(host: str = "129.114.25.10", **overrides) -> dict:
    """Outputs shaped like the program's: URLs on the conventional ports, credentials."""
    outputs = {
        "floating_ip": host,
        "mlflow_url": f"http://{host}:8000",
        "jupyter_url": f"http://{host}:8888/lab?token={JUPYTER_TOKEN}",
        "minio_api_url": f"http://{host}:9000",
        "minio_console_url": f"http://{host}:9001",
        "platform_credentials": {
            "postgres_user": "upostgresuser",
            "postgres_password": "PostgresTestPassword0123",
            "minio_root_user": MINIO_USER,
            "minio_root_password": MINIO_PASSWORD,
            "jupyter_token": JUPYTER_TOKEN,
            "mlflow_user": MLFLOW_USER,
            "mlflow_password": MLFLOW_PASSWORD,
        },
        "ssh_command": f"ssh cc@{host}",
        "volume_id": "0b6e5a3c-9d2f-4a57-8b0e-3f1c2d4e5f60",
        "server_id": "5f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b",
    }
    outputs.update(overrides)
    return outputs


# The program's secret outputs.
SECRET_OUTPUTS = ("jupyter_url", "platform_credentials")
# Stacks of the shared machine, by name: their outputs (None: made, never deployed).
STACKS = {
    "ab1234": stack_outputs(),
    "cd5678": stack_outputs(host="129.114.25.77"),
    "ef9012": None,
    "gh3456": stack_outputs(platform_credentials={"postgres_user": "u"}),
    "ij7890": stack_outputs(mlflow_url="129.114.25.10:8000"),
}
needs_cli = pytest.mark.skipif(
    toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason())
)


@pytest.fixture(scope="session")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> StudentMachine:
    """A machine holding the STACKS, made by the real CLI, none of them selected."""
    machine = StudentMachine.create(tmp_path_factory.mktemp("check-platform-stacks"))
    for name, outputs in STACKS.items():
        if outputs is None:
            machine.pulumi("stack", "init", name, "--non-interactive", check=True)
        else:
            machine.import_state(name, outputs_deployment(name, outputs, SECRET_OUTPUTS))
    machine.pulumi("stack", "unselect", "--non-interactive", check=True)
    return machine


@pytest.fixture
def pulumi(
    stacks: StudentMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StudentMachine:
    """A copy of the machine with the stacks; check-platform, run in this process, calls the
    real CLI there (with its environment, in its project), and the calls are recorded."""
    machine = stacks.clone(tmp_path)
    machine.record_pulumi_calls()
    for key in list(os.environ):
        if key.startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(key)
    for key, value in machine.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(command_line, "PROJECT_DIR", machine.project)
    return machine


def run_main(*arguments: str, environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """check-platform's main in this process: exit status, stdout, stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    environment = {"PATH": os.environ["PATH"], **(environ or {})}
    try:
        status = check_platform.main(list(arguments), environment, stdout, stderr)
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    return status, stdout.getvalue(), stderr.getvalue()


def resolve(*arguments: str, environ: dict[str, str] | None = None) -> check_location.Platform:
    parsed = check_platform.build_parser().parse_args(list(arguments))
    return check_location.resolve_platform(parsed, {"PATH": os.environ["PATH"], **(environ or {})})


def rows(stdout: str) -> dict[str, str]:
    """The table's rows by check name: '✓' or '✗' followed by the detail."""
    table = {}
    for line in stdout.splitlines():
        stripped = line.strip()
        if stripped[:1] in ("✓", "✗"):
            mark, rest = stripped[0], stripped[1:].strip()
            name, _, detail = rest.partition("  ")
            table[name.strip()] = f"{mark} {detail.strip()}"
    return table


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "environ", "expected"),
    [
        (["--url-base", "129.114.25.10"], {}, "--url-base '129.114.25.10' is not an http(s) URL"),
        (["--url-base", "ftp://129.114.25.10"], {}, "is not an http(s) URL with a host"),
        (["--url-base", "http://129.114.25.10:8000"], {}, "must name only the host"),
        (["--url-base", "http://129.114.25.10/lab"], {}, "must name only the host"),
        (["--mlflow-url", "localhost:8000"], {}, "--mlflow-url 'localhost:8000' is not an http(s)"),
        (
            ["--url-base", "http://129.114.25.10"],
            {},
            "MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, JUPYTER_TOKEN, MLFLOW_TRACKING_USERNAME, "
            "MLFLOW_TRACKING_PASSWORD not set",
        ),
        (
            ["--url-base", "http://129.114.25.10"],
            {
                key: value
                for key, value in CREDENTIAL_ENVIRONMENT.items()
                if key != "MINIO_ROOT_PASSWORD"
            },
            "MINIO_ROOT_PASSWORD not set",
        ),
        (
            [
                "--mlflow-url",
                "http://a:1",
                "--minio-url",
                "http://a:2",
                "--jupyter-url",
                "http://a:3",
            ],
            {"MINIO_ROOT_USER": MINIO_USER},
            "MINIO_ROOT_PASSWORD, JUPYTER_TOKEN, MLFLOW_TRACKING_USERNAME, "
            "MLFLOW_TRACKING_PASSWORD not set",
        ),
        (
            ["--stack", "ab1234", "--url-base", "http://1.2.3.4"],
            {},
            "--stack and --url-base name two sources of URLs and credentials; give one, e.g.",
        ),
    ],
    ids=[
        "url-base-without-scheme",
        "url-base-not-http",
        "url-base-with-port",
        "url-base-with-path",
        "service-url-without-scheme",
        "no-credentials",
        "one-credential-missing",
        "service-urls-without-credentials",
        "stack-and-url-base",
    ],
)
def test_bad_arguments_are_refused_with_the_fix(
    arguments: list[str], environ: dict[str, str], expected: str
):
    """Wrong flags or missing credentials: exit 2, a message naming the value and the fix."""
    status, stdout, stderr = run_main(*arguments, environ=environ)
    assert status == check_platform.EXIT_USAGE
    assert expected in stderr
    assert "e.g." in stderr or "export" in stderr
    assert stdout == ""


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--write-marker", "--verify-marker"], "not allowed with argument"),
        (["--wait", "soon"], "'soon' is not a number of seconds; e.g. --wait 300"),
        (["--wait", "-1"], "'-1' is out of range; give 0 to 3600 seconds"),
        (["--wait", "86400"], "'86400' is out of range"),
        (["--stak", "ab1234"], "unrecognized arguments"),
    ],
    ids=[
        "write-and-verify",
        "wait-not-a-number",
        "wait-negative",
        "wait-too-long",
        "misspelt-flag",
    ],
)
def test_conflicting_or_malformed_flags_exit_2(arguments: list[str], expected: str, capsys):
    """argparse-level mistakes: usage line, the reason, exit status 2."""
    status, _, _ = run_main(*arguments)
    captured = capsys.readouterr()
    assert status == 2
    assert expected in captured.err
    assert "usage: chi-persist check" in captured.err


def test_help_documents_sources_markers_and_exit_status():
    """--help, run as a student would, names every source of URLs, the markers, the exit codes."""
    completed = subprocess.run(
        command_argv("check", "--help"), capture_output=True, text=True, check=False,
        env=command_env(),
    )  # fmt: skip
    assert completed.returncode == 0
    for text in (
        "--stack NETID",
        "--url-base URL",
        "MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, JUPYTER_TOKEN,",
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
        "--mlflow-url",
        "--write-marker",
        "--verify-marker",
        "--wait SECONDS",
        "chi-persist-check",
        "lease_id and lease_end",
        "OS_CLOUD",
        "exit status:",
    ):
        assert text in completed.stdout


# --- reading the stack --------------------------------------------------------


@needs_cli
def test_stack_outputs_give_urls_and_credentials(pulumi: StudentMachine):
    """--stack reads `pulumi stack output --json --show-secrets --stack NETID`: the real CLI
    decrypts the credentials and the Jupyter URL, and gives the token with it."""
    platform = resolve("--stack", "ab1234")
    assert (platform.mlflow_url, platform.minio_url, platform.jupyter_url) == (
        "http://129.114.25.10:8000",
        "http://129.114.25.10:9000",
        "http://129.114.25.10:8888",
    )
    assert (platform.minio_user, platform.minio_password, platform.jupyter_token) == (
        MINIO_USER,
        MINIO_PASSWORD,
        JUPYTER_TOKEN,
    )
    assert pulumi.records() == [
        {
            "argv": ["stack", "output", "--json", "--show-secrets", "--stack", "ab1234"],
            "cwd": str(pulumi.project),
        }
    ]
    # The stack holds them as the program's secrets: hidden unless asked for.
    hidden = pulumi.outputs("ab1234")
    assert hidden["platform_credentials"] == hidden["jupyter_url"] == "[secret]"


@needs_cli
def test_selected_stack_is_read_when_no_source_is_given(pulumi: StudentMachine):
    """Without --stack or --url-base, the stack `pulumi stack select` chose is used."""
    pulumi.pulumi("stack", "select", "cd5678", "--non-interactive", check=True)
    platform = resolve()
    assert platform.mlflow_url == "http://129.114.25.77:8000"
    assert pulumi.calls() == [["stack", "output", "--json", "--show-secrets"]]


@needs_cli
def test_service_url_flags_override_the_stack(pulumi: StudentMachine):
    """--mlflow-url (an SSH tunnel, say) replaces one URL; the rest and the credentials stay."""
    platform = resolve("--stack", "ab1234", "--mlflow-url", "http://localhost:18000/")
    assert platform.mlflow_url == "http://localhost:18000"
    assert platform.minio_url == "http://129.114.25.10:9000"
    assert platform.minio_password == MINIO_PASSWORD


@needs_cli
def test_the_student_command_reads_its_own_projects_stack(stacks, tmp_path):
    """./chi-persist check --stack, run from outside the project, finds the stack through
    the project it belongs to and checks the URLs the stack gives (nothing answers there)."""
    machine = stacks.clone(tmp_path)
    machine.record_pulumi_calls()
    ports = {service: free_port() for service in ("mlflow", "minio", "jupyter")}
    outputs = stack_outputs(
        host="127.0.0.1",
        mlflow_url=f"http://127.0.0.1:{ports['mlflow']}",
        minio_api_url=f"http://127.0.0.1:{ports['minio']}",
        jupyter_url=f"http://127.0.0.1:{ports['jupyter']}/lab?token={JUPYTER_TOKEN}",
    )
    machine.import_state("ab1234", outputs_deployment("ab1234", outputs, SECRET_OUTPUTS))

    result = machine.command("check", "--stack", "ab1234", cwd=machine.workdir)

    assert result.returncode == check_platform.EXIT_CHECK_FAILED, result.stderr
    assert rows(result.stdout)["MLflow answers"] == (
        f"✗ no answer from http://127.0.0.1:{ports['mlflow']}: connection refused"
    )
    assert rows(result.stdout)["Jupyter answers with its token"] == (
        f"✗ no answer from http://127.0.0.1:{ports['jupyter']}: connection refused"
    )
    assert {record["cwd"] for record in machine.records()} == {str(machine.project)}
    for secret in (MINIO_PASSWORD, JUPYTER_TOKEN):
        assert secret not in result.stdout + result.stderr


@needs_cli
def test_url_base_uses_conventional_ports_and_environment_credentials(pulumi: StudentMachine):
    """--url-base: MLflow :8000, MinIO :9000, Jupyter :8888; credentials from the environment."""
    platform = resolve("--url-base", "http://129.114.25.10/", environ=CREDENTIAL_ENVIRONMENT)
    assert (platform.mlflow_url, platform.minio_url, platform.jupyter_url) == (
        "http://129.114.25.10:8000",
        "http://129.114.25.10:9000",
        "http://129.114.25.10:8888",
    )
    assert platform.jupyter_token == JUPYTER_TOKEN
    assert pulumi.calls() == []


def test_a_token_on_the_command_line_is_refused():
    """The URL Jupyter prints (…/lab?token=…) given as a flag would put the token in shell
    history and `ps`: refused, with where the token goes instead; nothing is checked."""
    status, stdout, stderr = run_main(
        "--url-base",
        "http://129.114.25.10",
        "--jupyter-url",
        "http://129.114.25.10:8888/lab?token=FromTheUrl123",
        environ=CREDENTIAL_ENVIRONMENT,
    )
    assert status == check_platform.EXIT_USAGE
    assert "the Jupyter URL given carries its token" in stderr
    assert "export JUPYTER_TOKEN" in stderr
    assert "FromTheUrl123" not in stderr
    assert stdout == ""


@pytest.mark.parametrize(
    ("arguments", "without_passphrase", "expected"),
    [
        (
            ["--stack", "nosuch"],
            False,
            "there is no stack named 'nosuch': create it with "
            "`./chi-persist init nosuch --key-pair NAME` and run `pulumi up --stack nosuch`; "
            "`pulumi stack ls` lists the stacks that exist",
        ),
        ([], False, "no Pulumi stack is selected: give --stack NETID"),
        (
            ["--stack", "ef9012"],
            False,
            "stack ef9012 has no output mlflow_url, minio_api_url, jupyter_url, "
            "platform_credentials: the platform was never deployed or its last update failed; "
            "run `pulumi up --stack ef9012`",
        ),
        (
            ["--stack", "gh3456"],
            False,
            "platform_credentials lacks minio_root_user, minio_root_password, jupyter_token, "
            "mlflow_user, mlflow_password",
        ),
        (["--stack", "ab1234"], True, "export PULUMI_CONFIG_PASSPHRASE="),
        (
            ["--stack", "ij7890"],
            False,
            "output mlflow_url '129.114.25.10:8000' is not an http(s) URL; the stack may come "
            "from an older version of the program: run `pulumi up --stack ij7890`",
        ),
    ],
    ids=[
        "stack-does-not-exist",
        "no-stack-selected",
        "stack-never-deployed",
        "credentials-missing",
        "passphrase-not-set",
        "malformed-output",
    ],
)
@needs_cli
def test_unusable_stack_is_reported_with_the_fix(
    pulumi: StudentMachine,
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    without_passphrase: bool,
    expected: str,
):
    """A stack missing, unselected, undeployed or locked: exit 2 and the command that fixes it,
    from what the real CLI prints."""
    if without_passphrase:
        monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    status, stdout, stderr = run_main(*arguments)
    assert status == check_platform.EXIT_USAGE
    assert expected in stderr
    assert "Traceback" not in stderr
    assert stdout == ""


def test_missing_pulumi_cli_is_reported_with_the_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No `pulumi` on PATH: say so, how to install it, and offer --url-base."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    status, stdout, stderr = run_main("--stack", "ab1234")
    assert status == check_platform.EXIT_USAGE
    assert "the Pulumi CLI (`pulumi`) is not on PATH" in stderr
    assert "https://www.pulumi.com/docs/install/" in stderr
    assert "--url-base http://IP" in stderr
    assert stdout == ""


# --- the checks against live servers --------------------------------------------


@pytest.fixture
def s3_stand_in():
    """moto's S3 server on a loopback port, standing in for MinIO."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        # The threaded server shares moto's in-process state: start every test empty.
        requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
        yield url
    finally:
        server.stop()


def make_bucket(s3_url: str, name: str = "mlflow-artifacts") -> None:
    boto3.client(
        "s3",
        endpoint_url=s3_url,
        aws_access_key_id=MINIO_USER,
        aws_secret_access_key=MINIO_PASSWORD,
        region_name="us-east-1",
    ).create_bucket(Bucket=name)


def platform_at(mlflow: str, minio: str, jupyter: str, token: str = JUPYTER_TOKEN):
    return check_location.Platform(
        source="test",
        mlflow_url=mlflow,
        minio_url=minio,
        jupyter_url=jupyter,
        minio_user=MINIO_USER,
        minio_password=MINIO_PASSWORD,
        jupyter_token=token,
    )


def test_minio_with_the_bucket_passes_both_rows(s3_stand_in: str):
    """An S3 server that answers with the credentials and holds mlflow-artifacts: two ✓ rows."""
    make_bucket(s3_stand_in)
    platform = platform_at(closed_port_url(), s3_stand_in, closed_port_url())
    assert "S3 ListBuckets with the root credentials: 1 bucket" in check_services.check_minio_live(
        platform
    )
    assert check_services.check_minio_bucket(platform) == "s3://mlflow-artifacts exists"


def test_minio_without_the_bucket_fails_the_bucket_row(s3_stand_in: str):
    """A live S3 server without mlflow-artifacts: live ✓, bucket ✗ with what creates it."""
    make_bucket(s3_stand_in, "other-bucket")
    status, stdout, _ = run_main(
        "--mlflow-url",
        closed_port_url(),
        "--minio-url",
        s3_stand_in,
        "--jupyter-url",
        closed_port_url(),
        environ=CREDENTIAL_ENVIRONMENT,
    )
    table = rows(stdout)
    assert status == check_platform.EXIT_CHECK_FAILED
    assert table["MinIO is live"].startswith("✓")
    assert table["MinIO holds bucket mlflow-artifacts"] == (
        f"✗ {s3_stand_in} has no bucket mlflow-artifacts: the platform's first start creates it; "
        "see `docker compose logs` on the server"
    )


@pytest.fixture
def s3_checking_credentials(tmp_path: Path):
    """moto's S3 server checking signatures like MinIO; only MINIO_USER's key is valid."""
    # The first three calls are let through unauthenticated: they make the key.
    settings = {"INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    with s3_server(None, tmp_path / "s3.log", settings) as server:
        iam = boto3.client(
            "iam",
            endpoint_url=server.url,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",  # noqa: S106 (moto's first calls need none)
            region_name="us-east-1",
        )
        iam.create_user(UserName=MINIO_USER)
        key = iam.create_access_key(UserName=MINIO_USER)["AccessKey"]
        iam.put_user_policy(
            UserName=MINIO_USER,
            PolicyName="root",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        boto3.client(
            "s3",
            endpoint_url=server.url,
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            region_name="us-east-1",
        ).create_bucket(Bucket="mlflow-artifacts")
        yield server.url, key["AccessKeyId"], key["SecretAccessKey"]


def test_minio_rows_pass_with_the_right_key(s3_checking_credentials):
    """A server that checks signatures accepts the right key: live and bucket rows pass."""
    url, user, password = s3_checking_credentials
    platform = dataclasses.replace(
        platform_at(closed_port_url(), url, closed_port_url()),
        minio_user=user,
        minio_password=password,
    )
    assert check_services.check_minio_live(platform).startswith(url)
    assert check_services.check_minio_bucket(platform) == "s3://mlflow-artifacts exists"


def test_wrong_minio_credentials_are_named_and_not_retried(s3_checking_credentials):
    """A refused key fails both MinIO rows, pointing at the credentials; waiting cannot help."""
    url, user, _ = s3_checking_credentials
    status, stdout, stderr = run_main(
        "--mlflow-url",
        closed_port_url(),
        "--minio-url",
        url,
        "--jupyter-url",
        closed_port_url(),
        environ={**CREDENTIAL_ENVIRONMENT, "MINIO_ROOT_USER": user},
    )
    table = rows(stdout)
    assert status == check_platform.EXIT_CHECK_FAILED
    for name, action in (
        ("MinIO is live", "ListBuckets"),
        ("MinIO holds bucket mlflow-artifacts", "HeadBucket mlflow-artifacts"),
    ):
        assert table[name].startswith(f"✗ {url} refused the root credentials (")
        assert f") on {action}: they are not MinIO's" in table[name]
    assert MINIO_PASSWORD not in stdout + stderr

    platform = dataclasses.replace(
        platform_at(closed_port_url(), url, closed_port_url()), minio_user=user
    )
    started = time.monotonic()
    result = check_services.run_with_retries(
        "MinIO is live",
        lambda: check_services.check_minio_live(platform),
        time.monotonic() + 60,
        io.StringIO(),
    )
    assert not result.passed
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("server_token", "expected"),
    [
        (JUPYTER_TOKEN, "✓"),
        ("TheServersOtherToken", "✗ {url} refused the token (HTTP 403)"),
        (None, "✗ {url}/api/status answers without a token"),
    ],
    ids=["right-token", "wrong-token", "no-token-needed"],
)
def test_jupyter_must_answer_with_its_token_and_only_with_it(server_token, expected):
    """Jupyter passes only when it accepts the token and refuses requests without one."""
    with jupyter_stand_in(server_token) as url:
        status, stdout, _ = run_main(
            "--mlflow-url",
            closed_port_url(),
            "--minio-url",
            closed_port_url(),
            "--jupyter-url",
            url,
            environ=CREDENTIAL_ENVIRONMENT,
        )
    assert status == check_platform.EXIT_CHECK_FAILED  # MLflow and MinIO are not there
    assert rows(stdout)["Jupyter answers with its token"].startswith(expected.format(url=url))


def test_nothing_listening_fails_every_row_and_names_the_url():
    """No platform at all: every row ✗ naming the URL; the marker is not tried."""
    urls = {"mlflow": closed_port_url(), "minio": closed_port_url(), "jupyter": closed_port_url()}
    status, stdout, stderr = run_main(
        "--mlflow-url",
        urls["mlflow"],
        "--minio-url",
        urls["minio"],
        "--jupyter-url",
        urls["jupyter"],
        "--verify-marker",
        environ=CREDENTIAL_ENVIRONMENT,
    )
    refused = {
        service: f"✗ no answer from {url}: connection refused" for service, url in urls.items()
    }
    assert status == check_platform.EXIT_CHECK_FAILED
    assert rows(stdout) == {
        "MLflow answers": refused["mlflow"],
        "MinIO is live": refused["minio"],
        "MinIO holds bucket mlflow-artifacts": refused["minio"],
        "Jupyter answers with its token": refused["jupyter"],
        "Marker run intact": "✗ not tried: MLflow does not answer",
    }
    assert stdout.splitlines()[-1] == "5 of 5 checks failed"
    for secret in (MINIO_PASSWORD, JUPYTER_TOKEN):
        assert secret not in stdout + stderr


def test_wait_retries_until_the_service_answers():
    """--wait: a service that comes up late passes, after one progress line per wait."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    progress = io.StringIO()
    started = threading.Event()

    def start_late():
        time.sleep(4)
        with jupyter_stand_in(JUPYTER_TOKEN, port=port):
            started.set()
            time.sleep(30)

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    platform = platform_at(closed_port_url(), closed_port_url(), url)
    result = check_services.run_with_retries(
        "Jupyter answers with its token",
        lambda: check_services.check_jupyter(platform),
        time.monotonic() + 30,
        progress,
    )
    assert started.is_set()
    assert result.passed, result.detail
    waits = progress.getvalue().splitlines()
    assert len(waits) >= 1
    assert all(
        line.startswith(f"check: waiting for Jupyter: no answer from {url}") for line in waits
    )


def test_wait_is_bounded():
    """--wait 5 with nothing listening gives up after about 5 s, with a progress line per wait."""
    started = time.monotonic()
    status, stdout, stderr = run_main(
        "--mlflow-url",
        closed_port_url(),
        "--minio-url",
        closed_port_url(),
        "--jupyter-url",
        closed_port_url(),
        "--wait",
        "5",
        environ=CREDENTIAL_ENVIRONMENT,
    )
    elapsed = time.monotonic() - started
    assert status == check_platform.EXIT_CHECK_FAILED
    assert 5 <= elapsed < 20
    waits = [line for line in stderr.splitlines() if line.startswith("check: waiting")]
    assert len(waits) >= 2
    assert all("s left)" in line for line in waits)


def test_wrong_token_is_not_retried():
    """A refused token will not fix itself: the check fails at once even with --wait."""
    with jupyter_stand_in("TheServersOtherToken") as url:
        platform = platform_at(closed_port_url(), closed_port_url(), url)
        started = time.monotonic()
        result = check_services.run_with_retries(
            "Jupyter answers with its token",
            lambda: check_services.check_jupyter(platform),
            time.monotonic() + 60,
            io.StringIO(),
        )
    assert not result.passed
    assert time.monotonic() - started < 5


def test_table_goes_to_stdout_and_progress_to_stderr():
    """stdout holds only the table (scripts can read it); everything else is on stderr."""
    completed = subprocess.run(
        [
            *command_argv("check"),
            "--mlflow-url",
            closed_port_url(),
            "--minio-url",
            closed_port_url(),
            "--jupyter-url",
            closed_port_url(),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=command_env({**os.environ, **CREDENTIAL_ENVIRONMENT}),
        timeout=120,
    )
    lines = completed.stdout.splitlines()
    assert completed.returncode == 1
    assert [line.strip()[0] for line in lines[:-1]] == ["✗"] * 4
    assert lines[-1] == "4 of 4 checks failed"
    assert "check: checking the platform of flags" in completed.stderr


def test_platform_repr_hides_credentials():
    """A Platform printed in a traceback or log shows no secret."""
    platform = platform_at("http://a:1", "http://a:2", "http://a:3")
    assert MINIO_PASSWORD not in repr(platform)
    assert JUPYTER_TOKEN not in repr(platform)


# --- the lease ------------------------------------------------------------------


LEASE_ID = "8e3f1a2b-4c5d-4e6f-9a0b-1c2d3e4f5a6b"


def lease_end_in(delta: timedelta) -> str:
    """A lease end `delta` from now, as the lease resource stores it (ISO 8601, UTC)."""
    return (datetime.now(timezone.utc) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def leased_stack(pulumi: StudentMachine, lease_end: str, lease_id: str = LEASE_ID) -> None:
    """Stack ab1234 made its own lease; its services are on loopback ports nobody listens on."""
    outputs = stack_outputs(
        host="127.0.0.1",
        mlflow_url=closed_port_url(),
        minio_api_url=closed_port_url(),
        jupyter_url=f"{closed_port_url()}/lab?token={JUPYTER_TOKEN}",
        lease_id=lease_id,
        lease_end=lease_end,
    )
    pulumi.import_state("ab1234", outputs_deployment("ab1234", outputs, SECRET_OUTPUTS))


def lease_row(stdout: str) -> str:
    return rows(stdout)["Lease is active"]


@needs_cli
def test_a_lease_far_from_its_end_is_shown_without_a_warning(pulumi: StudentMachine):
    """The stack's lease ends in days: a ✓ row first, with its end from the outputs, and a note
    saying how to read it live; no warning."""
    end = lease_end_in(timedelta(days=2, minutes=30))
    leased_stack(pulumi, end)
    status, stdout, stderr = run_main("--stack", "ab1234")
    assert status == check_platform.EXIT_CHECK_FAILED  # the services are not there
    shown = datetime.fromisoformat(end.replace("Z", "+00:00"))
    assert lease_row(stdout) == (
        f"✓ lease {LEASE_ID}, ends {shown:%Y-%m-%d %H:%M} UTC, in 2 d 0 h (from the stack's "
        "outputs)"
    )
    assert stdout.splitlines()[0].strip().startswith("✓ Lease is active")
    assert "warning" not in stderr
    assert "to read it live from KVM@TACC, set OS_CLOUD" in stderr


@needs_cli
def test_a_lease_near_its_end_warns_what_happens_and_what_to_do(pulumi: StudentMachine):
    """Within the hour: the row says soon, and a warning says the server will be deleted, the
    data stays, and how to renew (the next lease first, then the server moved cleanly), stop
    cleanly now, or carry on after the end; it promises no extension of this lease."""
    leased_stack(pulumi, lease_end_in(timedelta(minutes=40)))
    status, stdout, stderr = run_main("--stack", "ab1234")
    assert lease_row(stdout).startswith(f"✓ lease {LEASE_ID}, ends ")
    assert lease_row(stdout).endswith("(from the stack's outputs): soon")
    warning = " ".join(line for line in stderr.splitlines() if "warning:" in line)
    assert re.search(r"check: warning: the lease ends in 3\d min, at ", warning)
    for text in (
        "KVM@TACC deletes the server at the lease's end",
        "the volume and all its data stay",
        "`pulumi up --stack ab1234` within the renewal window before the end",
        "makes the next lease first, then moves the server onto it the clean way",
        "if no host is free for the next lease, the server keeps running until the end",
        "`./chi-persist recycle --stack ab1234 --end-lease`, then `pulumi up --stack ab1234` later",
        "let it end and run `pulumi up --stack ab1234` afterwards",
        "Blazar cannot extend this lease: a longer leaseDuration applies to the next one",
    ):
        assert text in warning
    assert "config set chi-persist:leaseDuration" not in warning


@needs_cli
def test_an_ended_lease_fails_its_row_and_names_pulumi_up(pulumi: StudentMachine):
    """The end is past: ✗, the server was deleted, the data stays, `pulumi up` renews both."""
    leased_stack(pulumi, lease_end_in(timedelta(hours=-2)))
    status, stdout, _ = run_main("--stack", "ab1234")
    assert status == check_platform.EXIT_CHECK_FAILED
    row = lease_row(stdout)
    assert row.startswith(f"✗ lease {LEASE_ID}: it ended at ")
    assert "KVM@TACC deletes the server at the lease's end" in row
    assert "the volume and all its data stay" in row
    assert "fix: `pulumi up --stack ab1234` makes a new lease and a new server" in row


@needs_cli
def test_a_stack_without_its_own_lease_points_at_horizon(pulumi: StudentMachine):
    """A stack that boots a reservation of the student's own: no lease row, and a note on
    where that lease's end is shown."""
    outputs = stack_outputs(
        host="127.0.0.1",
        mlflow_url=closed_port_url(),
        minio_api_url=closed_port_url(),
        jupyter_url=f"{closed_port_url()}/lab?token={JUPYTER_TOKEN}",
    )
    pulumi.import_state("ab1234", outputs_deployment("ab1234", outputs, SECRET_OUTPUTS))
    _, stdout, stderr = run_main("--stack", "ab1234")
    assert "Lease is active" not in rows(stdout)
    assert "has no lease of its own (no output lease_end)" in stderr
    assert "(KVM@TACC, Reservations > Leases)" in stderr


@needs_cli
def test_unreadable_live_lease_falls_back_to_the_outputs(
    pulumi: StudentMachine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """OS_CLOUD names a cloud clouds.yaml lacks: a note says why the live lease was not read,
    and the row comes from the outputs."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds: {}\n")
    monkeypatch.setenv("OS_CLOUD", "kvm-tacc")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    leased_stack(pulumi, lease_end_in(timedelta(hours=5)))
    _, stdout, stderr = run_main(
        "--stack", "ab1234", environ={"OS_CLOUD": "kvm-tacc", "OS_CLIENT_CONFIG_FILE": str(clouds)}
    )
    note = next(line for line in stderr.splitlines() if "the live lease was not read" in line)
    assert "credentials could not be loaded" in note and "export OS_CLOUD=" in note
    assert lease_row(stdout).endswith("(from the stack's outputs)")


@pytest.fixture
def twin_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stand-in KVM@TACC (tests/twin/serve, no VMs) and the shell a student runs pulumi in:
    OS_CLOUD and its clouds.yaml, read by openstacksdk's config loader."""
    from tests.twin.harness import Twin

    twin = Twin(tmp_path / "twin").start()
    environ = {
        "OS_CLOUD": "twin",
        "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    try:
        yield twin, environ
    finally:
        assert twin.stop() == 0, twin.log_text()


def twin_lease(twin) -> dict:
    """An ACTIVE lease of m1.large on the twin, made as the lease resource makes it."""
    return steps.lease(twin.api(), "lease-persist-ab1234", "4")


@needs_cli
def test_the_lease_is_read_live_from_blazar_when_credentials_are_set(
    pulumi: StudentMachine, twin_shell
):
    """With OS_CLOUD set, the row shows Blazar's status and end date, not the outputs' stale
    one; once the lease has ended at the site, and once it is gone, the row fails and says
    `pulumi up` renews it."""
    twin, environ = twin_shell
    lease = twin_lease(twin)
    stale = lease_end_in(timedelta(minutes=20))
    leased_stack(pulumi, stale, lease_id=lease["id"])
    live_end = datetime.fromisoformat(lease["end_date"]).replace(tzinfo=timezone.utc)

    _, stdout, stderr = run_main("--stack", "ab1234", environ=environ)
    assert re.fullmatch(
        rf"✓ lease {lease['id']} ACTIVE, ends {live_end:%Y-%m-%d %H:%M} UTC, in 2?\d h \d+ min",
        lease_row(stdout),
    ), lease_row(stdout)
    assert "warning" not in stderr
    assert "note" not in stderr

    twin.end_lease(lease["id"])
    api = twin.api()
    deadline = time.monotonic() + 60
    while api.get(f"{api.reservation}/leases/{lease['id']}").json()["lease"]["status"] != (
        "TERMINATED"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    _, stdout, _ = run_main("--stack", "ab1234", environ=environ)
    assert lease_row(stdout).startswith(f"✗ lease {lease['id']} is TERMINATED: it ended at ")
    assert "fix: `pulumi up --stack ab1234` makes a new lease" in lease_row(stdout)

    assert api.delete(f"{api.reservation}/leases/{lease['id']}").status_code == 204
    _, stdout, _ = run_main("--stack", "ab1234", environ=environ)
    assert lease_row(stdout).startswith(
        f"✗ lease {lease['id']} no longer exists at KVM@TACC: it ended or was deleted."
    )


@needs_cli
def test_a_lease_in_error_that_still_serves_is_shown_serving_with_why(
    pulumi: StudentMachine, twin_shell
):
    """A refused update put the live lease into ERROR; its events say it started and has not
    ended: the row is ✓ with its status and end, and a warning says it still serves, until
    when, and what ERROR means."""
    twin, environ = twin_shell
    lease = twin_lease(twin)
    leased_stack(pulumi, lease_end_in(timedelta(hours=20)), lease_id=lease["id"])
    api = twin.api()
    later = (datetime.now(timezone.utc) + timedelta(days=3)).strftime("%Y-%m-%d %H:%M")
    refused = api.put(f"{api.reservation}/leases/{lease['id']}", json={"end_date": later})
    assert refused.status_code == 409
    _, stdout, stderr = run_main("--stack", "ab1234", environ=environ)
    assert lease_row(stdout).startswith(f"✓ lease {lease['id']} ERROR, ends "), lease_row(stdout)
    warning = " ".join(line for line in stderr.splitlines() if "warning:" in line)
    assert f"lease {lease['id']} is ERROR" in warning
    assert "it still serves, and the server keeps running until" in warning
    assert "refuses a change of it" in warning


def test_a_stack_in_tunnel_mode_is_checked_through_the_tunnel(monkeypatch: pytest.MonkeyPatch):
    """platformAccess tunnel: the checks reach the services at the tunnel's local URLs; a
    tunnel started for them is stopped after, one already running is left running."""
    tunnel = import_tool("tunnel")
    calls: list[tuple[str, str]] = []
    opened = tunnel.Tunnel(
        "ab1234",
        "129.114.25.10",
        {
            "jupyter": "http://127.0.0.1:41001",
            "mlflow": "http://127.0.0.1:41002",
            "minio_api": "http://127.0.0.1:41003",
            "minio_console": "http://127.0.0.1:41004",
        },
    )
    platform = check_location.platform_from_outputs(
        stack_outputs(platform_access="tunnel"), "ab1234"
    )
    arguments = check_platform.build_parser().parse_args(["--stack", "ab1234"])
    for started in (True, False):
        monkeypatch.setattr(
            tunnel,
            "start",
            lambda stack, environ, s=started: (calls.append(("start", stack)), (opened, s))[1],
        )
        monkeypatch.setattr(tunnel, "stop", lambda stack: calls.append(("stop", stack)))
        with check_location.through_tunnel(platform, arguments, {}, io.StringIO()) as reached:
            assert (reached.mlflow_url, reached.minio_url, reached.jupyter_url) == (
                "http://127.0.0.1:41002",
                "http://127.0.0.1:41003",
                "http://127.0.0.1:41001",
            )
            assert reached.mlflow_password == MLFLOW_PASSWORD
    assert calls == [("start", "ab1234"), ("stop", "ab1234"), ("start", "ab1234")]
    public = check_location.platform_from_outputs(stack_outputs(), "ab1234")
    with check_location.through_tunnel(public, arguments, {}, io.StringIO()) as reached:
        assert reached is public
