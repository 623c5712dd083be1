"""chi-persist check: is a student's platform up, and did its data survive a recycle?
It prints one row per check: the stack's lease (check_lease.py), the services and the marker
run (check_services.py) at the platform check_location.py finds, and the newest backup's age."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TextIO

from chi_persist_tools.check_lease import lease_check, read_lease
from chi_persist_tools.check_location import UsageError, resolve_platform, through_tunnel
from chi_persist_tools.check_options import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from chi_persist_tools.check_services import CheckResult, run_checks


def build_parser() -> argparse.ArgumentParser:
    from chi_persist_tools.cli import parser_for

    return parser_for("check")


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
