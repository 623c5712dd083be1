"""The rehearsal's benchmark table, printed in pytest's summary whether it passed or not."""

from __future__ import annotations

from collections.abc import Callable

import pytest

BENCHMARK_TABLES = pytest.StashKey[list[str]]()


@pytest.fixture
def benchmark_summary(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Hands a table to the end-of-run summary."""
    tables = request.config.stash.setdefault(BENCHMARK_TABLES, [])
    return tables.append


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    for table in config.stash.get(BENCHMARK_TABLES, []):
        terminalreporter.section("VM rehearsal benchmark")
        for line in table.splitlines():
            terminalreporter.write_line(line)
