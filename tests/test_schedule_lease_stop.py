"""schedule-lease-stop.sh: the systemd timer that stops the platform before its lease ends.

The script runs as root with a stand-in `systemctl` on PATH (this machine boots no systemd)
and writes its units into a directory of the test's; systemd's own `systemd-analyze` checks
the units and reads the timer's calendar, when it is installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.support.paths import REMOTE_SCRIPTS

SCRIPT = REMOTE_SCRIPTS / "schedule-lease-stop.sh"
UNIT = "chi-persist-lease-stop"
COMPOSE = "/home/cc/chi-persist/docker/docker-compose.yaml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="schedule-lease-stop.sh runs as root")
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)

STANDIN_SYSTEMCTL = """\
#!/usr/bin/env bash
# Stand-in for systemctl: records every call.
printf '%s\\n' "$*" >>{calls}
"""


@dataclass
class Server:
    """A unit directory and the calls a stand-in systemctl saw."""

    units: Path
    calls_file: Path
    bin_dir: Path

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *arguments, "--unit-dir", str(self.units)],
            capture_output=True,
            text=True,
            env={**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}"},
            check=False,
        )

    def calls(self) -> list[str]:
        return self.calls_file.read_text().splitlines() if self.calls_file.exists() else []

    def unit(self, suffix: str) -> str:
        return (self.units / f"{UNIT}.{suffix}").read_text()


@pytest.fixture
def server(tmp_path: Path) -> Server:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl-calls"
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(STANDIN_SYSTEMCTL.format(calls=shlex.quote(str(calls))))
    systemctl.chmod(0o755)
    return Server(units=tmp_path / "units", calls_file=calls, bin_dir=bin_dir)


def end_in(delta: timedelta) -> tuple[str, datetime]:
    moment = (datetime.now(timezone.utc) + delta).replace(second=0, microsecond=0)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment


def test_the_timer_runs_the_clean_stop_ten_minutes_before_the_end(server: Server) -> None:
    """Three hours before the end: a oneshot service running release-volume.sh (compose down
    with its long timeout, sync, unmount) at the mount point, and a timer at the end less
    ten minutes, in UTC, enabled and started."""
    text, end = end_in(timedelta(hours=3))
    result = server.run(
        "--lease-end", text, "--mount-point", "/mnt/block", "--compose-file", COMPOSE
    )
    assert result.returncode == 0, result.stderr
    stop_at = f"{end - timedelta(minutes=10):%Y-%m-%d %H:%M:%S} UTC"
    assert result.stdout.strip() == (
        f"schedule-lease-stop: timer set: the platform stops cleanly at {stop_at}, 10 minutes "
        f"before the lease ends at {end:%Y-%m-%d %H:%M:%S} UTC"
    )
    service = server.unit("service")
    assert "Type=oneshot" in service
    assert (
        f"ExecStart=/usr/bin/env bash {REMOTE_SCRIPTS}/release-volume.sh --mount-point "
        f"/mnt/block --compose-file {COMPOSE}"
    ) in service
    timer = server.unit("timer")
    assert f"OnCalendar={stop_at}" in timer and "Persistent=false" in timer
    assert server.calls() == [
        "daemon-reload",
        f"enable --quiet {UNIT}.timer",
        f"restart {UNIT}.timer",
    ]


@needs_systemd_analyze
def test_systemd_reads_the_units_and_the_calendar(server: Server) -> None:
    """systemd-analyze verifies both units, and reads the calendar as the stop's moment."""
    text, end = end_in(timedelta(days=2))
    assert server.run("--lease-end", text, "--mount-point", "/mnt/block").returncode == 0
    units = [str(server.units / f"{UNIT}.{suffix}") for suffix in ("timer", "service")]
    verified = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr
    calendar = next(
        line.split("=", 1)[1] for line in server.unit("timer").splitlines() if "OnCalendar" in line
    )
    read = subprocess.run(
        ["systemd-analyze", "calendar", calendar], capture_output=True, text=True, check=True
    )
    assert f"Normalized form: {end - timedelta(minutes=10):%Y-%m-%d %H:%M:%S} UTC" in read.stdout


def test_a_new_end_rewrites_the_timer(server: Server) -> None:
    """A new lease (renewal): the same units, the new moment, the timer restarted."""
    first, _ = end_in(timedelta(hours=3))
    second, end = end_in(timedelta(days=1, hours=3))
    assert server.run("--lease-end", first, "--mount-point", "/mnt/block").returncode == 0
    assert server.run("--lease-end", second, "--mount-point", "/mnt/block").returncode == 0
    assert f"OnCalendar={end - timedelta(minutes=10):%Y-%m-%d %H:%M:%S} UTC" in server.unit("timer")
    assert server.calls().count(f"restart {UNIT}.timer") == 2


@pytest.mark.parametrize(
    ("delta", "said"),
    [
        (timedelta(minutes=5), "within 10 minutes: too close for a timer"),
        (timedelta(hours=-1), "the lease ended at"),
    ],
    ids=["too-close", "ended"],
)
def test_an_end_too_close_removes_the_timer_and_says_so(
    server: Server, delta: timedelta, said: str
) -> None:
    """An end within the minutes before it, or past: no timer (an earlier one is removed),
    exit 0, one line saying why."""
    earlier, _ = end_in(timedelta(hours=3))
    assert server.run("--lease-end", earlier, "--mount-point", "/mnt/block").returncode == 0
    text, _ = end_in(delta)
    result = server.run("--lease-end", text, "--mount-point", "/mnt/block")
    assert result.returncode == 0, result.stderr
    assert said in result.stdout
    assert not (server.units / f"{UNIT}.timer").exists()
    assert not (server.units / f"{UNIT}.service").exists()
    assert f"disable --now {UNIT}.timer" in server.calls()


def test_minutes_before_is_honoured(server: Server) -> None:
    """--minutes-before 30: the stop half an hour before the end."""
    text, end = end_in(timedelta(hours=3))
    result = server.run(
        "--lease-end", text, "--mount-point", "/mnt/block", "--minutes-before", "30"
    )
    assert result.returncode == 0, result.stderr
    assert f"OnCalendar={end - timedelta(minutes=30):%Y-%m-%d %H:%M:%S} UTC" in server.unit("timer")


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--lease-end", "tomorrow", "--mount-point", "/mnt/block"], "is not an ISO 8601 time"),
        (["--lease-end", "2026-11-20T23:02:00+01:00", "--mount-point", "/mnt/block"], "in UTC"),
        (["--mount-point", "/mnt/block"], "--lease-end is required"),
        (["--lease-end", "2030-01-01T00:00:00Z", "--mount-point", "mnt/block"], "plain absolute"),
        (["--lease-end", "2030-01-01T00:00:00Z", "--mount-point", "/mnt/my block"], "plain"),
        (
            ["--lease-end", "2030-01-01T00:00:00Z", "--mount-point", "/mnt/block",
             "--compose-file", "/x/%h.yaml"],
            "compose file",
        ),
        (
            ["--lease-end", "2030-01-01T00:00:00Z", "--mount-point", "/mnt/block",
             "--minutes-before", "0"],
            "from 1 to 120",
        ),
        (["--lease-end", "2030-01-01T00:00:00Z", "--mount-point", "/mnt/block", "--x"], "unknown"),
    ],
    ids=["not-a-time", "not-utc", "no-end", "relative", "space", "specifier", "zero", "unknown"],
)  # fmt: skip
def test_bad_arguments_are_refused_with_exit_2_and_nothing_written(
    server: Server, arguments: list[str], said: str
) -> None:
    """Usage errors: exit 2, the value and the rule on stderr, no unit, no systemctl."""
    result = server.run(*arguments)
    assert result.returncode == 2, result.stdout + result.stderr
    assert said in result.stderr
    assert not server.units.exists()
    assert server.calls() == []
