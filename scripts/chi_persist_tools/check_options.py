"""chi-persist check: its help, arguments and exit codes (standard library only: the help works
before the project's virtual environment exists)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

MAX_WAIT_SECONDS = 3600.0

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Check that a chi-persist platform answers: MLflow (/health, and its tracking API
with its login; refuses without), MinIO (an S3 call with the root credentials, and
the bucket mlflow-artifacts), and Jupyter (answers with its token, refuses without).
Prints one row per check, ✓ or ✗, and exits non-zero when any check fails.

Where the URLs and credentials come from:
  --stack NETID     `pulumi stack output --json --show-secrets --stack NETID`, run in
                    the project directory (the default is the selected stack).
                    A stack with platformAccess tunnel is reached through the SSH
                    tunnel of `./chi-persist open` (the one running, or one started
                    for the checks and stopped after).
  --url-base URL    the conventional ports of one host: MLflow URL:8000, MinIO URL:9000,
                    Jupyter URL:8888. Credentials then come from the environment
                    variables MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, JUPYTER_TOKEN,
                    MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (never from
                    flags: flags end up in shell history and `ps`; a URL with a token
                    is refused).
  --mlflow-url, --minio-url, --jupyter-url
                    one service's URL, overriding the others (e.g. an SSH tunnel on
                    localhost). Given all three, no stack is read and the credentials
                    come from the environment, as with --url-base.

The lease (a stack that makes its own KVM@TACC lease): a first row says when it
ends, from the stack's outputs lease_id and lease_end, or live from KVM@TACC's
reservation service when OS_CLOUD (or an openrc's OS_AUTH_URL) is set as for
`pulumi up`. Within an hour of the end it warns: at the end KVM@TACC deletes the
server (the volume and its data stay); `pulumi up` in the renewal window makes the
next lease first and moves the server onto it cleanly. A lease in ERROR whose events
say it still serves is shown as serving, with a warning saying why. An ended lease
fails the row: `pulumi up` then makes a new lease and server.
"""

EPILOG = """\
markers (proof that data outlives the compute):
  --write-marker    log a run in experiment chi-persist-check with a metric and a small
                    artifact (a text with a random nonce, its sha256 kept as a run tag),
                    through the MLflow server only, and read the artifact back.
  --verify-marker   find the newest marker run and check its metric and the artifact's
                    exact bytes. Run it after `./chi-persist recycle` and `pulumi up`.

exit status:
  0  every check passed
  1  at least one check failed (the ✗ rows say which and why)
  2  wrong arguments, or the stack or credentials could not be read
  130  interrupted (Ctrl-C)

examples:
  ./chi-persist check --stack ab1234 --wait 300 --write-marker
  ./chi-persist recycle --stack ab1234 && pulumi up --stack ab1234
  ./chi-persist check --stack ab1234 --wait 300 --verify-marker
  export MINIO_ROOT_USER MINIO_ROOT_PASSWORD JUPYTER_TOKEN MLFLOW_TRACKING_USERNAME \\
      MLFLOW_TRACKING_PASSWORD      # set beforehand, e.g. read with `read -rs NAME`
  ./chi-persist check --url-base http://129.114.25.10
"""


def positive_seconds(text: str) -> float:
    """argparse type for --wait: a number of seconds from 0 to an hour."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds; e.g. --wait 300"
        ) from None
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range; give 0 to {MAX_WAIT_SECONDS:.0f} seconds, e.g. --wait 300"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    parser.add_argument(
        "--url-base",
        metavar="URL",
        help="the platform's host, e.g. http://129.114.25.10; credentials from the environment",
    )
    parser.add_argument("--mlflow-url", metavar="URL", help="MLflow, e.g. http://localhost:8000")
    parser.add_argument("--minio-url", metavar="URL", help="MinIO's S3 API, e.g. http://IP:9000")
    parser.add_argument("--jupyter-url", metavar="URL", help="Jupyter, e.g. http://IP:8888")
    marker = parser.add_mutually_exclusive_group()
    marker.add_argument("--write-marker", action="store_true", help="log a marker run (see below)")
    marker.add_argument(
        "--verify-marker", action="store_true", help="find the marker run again (see below)"
    )
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=positive_seconds,
        default=0.0,
        help="retry each service until it answers, at most this long in all (default 0: once)",
    )


def run_command(arguments: argparse.Namespace) -> int:
    from chi_persist_tools import check_platform

    return check_platform.run_command(arguments)
