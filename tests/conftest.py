"""Shared pytest setup: no silent skips in CI, and the groups tests/run's workers keep apart."""

import functools
import os
import re
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.benchmarks",
    "tests.support.block_devices",
    "tests.support.other_user",
]

TESTS = Path(__file__).resolve().parent
# Tests that listen on, or need nothing listening on, 127.0.0.1:22 (the fixture state's
# floating IP and SSH port): one worker runs them, one after the other.
PORT_22 = {"test_recycle.py", "test_clean_stop.py", "test_clean_stop_engine.py"}


# A file's group, read from its text (the controller that schedules never imports a test):
# files with qemu guests (CPU-bound; their floating IPs are loopback addresses a host hands
# out), files with loop devices (fixed volume ids lock the same files), 127.0.0.1:22, else
# the file's own, so a module's fixtures and steps stay on one worker.
GUEST_MARK = re.compile(r"\bmark\.vm\b")
DISK_MARK = re.compile(r"\bmark\.(disk|root)\b")


@functools.cache
def file_group(relative: str) -> str:
    """The worker group of a test file, by its path relative to the repository."""
    path = TESTS.parent / relative
    text = path.read_text() if path.is_file() else ""
    if GUEST_MARK.search(text):
        return "guests"
    if DISK_MARK.search(text):
        return "disks"
    if path.name in PORT_22:
        return "port-22"
    return relative


def group_of(nodeid: str) -> str:
    return file_group(nodeid.split("::", 1)[0])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The guests first, so the longest group starts at once."""
    items.sort(key=lambda item: group_of(item.nodeid) != "guests")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """pytest-xdist's scheduling by scope, the scope a test's group: one worker runs a group's
    tests in order. (`--dist loadgroup` would read xdist_group markers through a test id that
    pytest 9 no longer lets a plugin rewrite: xdist 3.8.0 sets item._nodeid, which pytest 9's
    Node.nodeid does not read, so every test would go anywhere.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return GroupScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI every test must run: a skip there is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, where everything must run: {reason}"
