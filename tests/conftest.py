"""Shared pytest setup: the repository root, and no silent skips in CI."""

import os

import pytest

pytest_plugins = [
    "tests.support.benchmarks",
    "tests.support.block_devices",
    "tests.support.other_user",
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI every test must run: a skip there is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped in CI, where everything must run: {reason}"
