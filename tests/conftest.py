"""Shared pytest setup: no silent skips in CI, and the groups tests/run's workers keep apart."""

import os
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


def worker_groups(items: list[pytest.Item]) -> dict[Path, str]:
    """The group of each test file, which one worker runs in order: files with qemu guests
    (CPU-bound; their floating IPs are loopback addresses a host hands out), files with
    loop devices (fixed volume ids lock the same files), 127.0.0.1:22, else the file's own,
    so a module's fixtures and steps stay on one worker."""
    groups: dict[Path, str] = {}
    for item in items:
        if item.get_closest_marker("vm"):
            groups[item.path] = "guests"
        elif groups.get(item.path) != "guests" and (
            item.get_closest_marker("disk") or item.get_closest_marker("root")
        ):
            groups[item.path] = "disks"
        elif item.path.name in PORT_22:
            groups.setdefault(item.path, "port-22")
        else:
            groups.setdefault(item.path, str(item.path.relative_to(TESTS)))
    return groups


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's xdist group; the guests first, so the longest group starts at once."""
    groups = worker_groups(items)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.path]))
    items.sort(key=lambda item: groups[item.path] != "guests")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI every test must run: a skip there is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, where everything must run: {reason}"
