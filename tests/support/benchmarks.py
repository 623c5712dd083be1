"""Benchmark tables handed to pytest's end-of-run summary, printed whether the tests passed or
not (a pytest plugin: tests/conftest.py loads it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

BENCHMARK_TABLES = pytest.StashKey[list[tuple[str, str]]]()


def add_table(config: pytest.Config, title: str, table: str) -> None:
    """Add a table to the end-of-run summary, under a title."""
    config.stash.setdefault(BENCHMARK_TABLES, []).append((title, table))


@pytest.fixture
def benchmark_summary(request: pytest.FixtureRequest) -> Callable[..., None]:
    """`benchmark_summary(table, title=...)` adds a table to the end-of-run summary."""

    def add(table: str, title: str = "VM rehearsal benchmark") -> None:
        add_table(request.config, title, table)

    return add


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: hand the tables to the controller, which prints the summary."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["benchmark_tables"] = session.config.stash.get(BENCHMARK_TABLES, [])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ARG001
    """On the controller: the tables of a worker that finished."""
    tables = getattr(node, "workeroutput", {}).get("benchmark_tables", [])
    node.config.stash.setdefault(BENCHMARK_TABLES, []).extend(tuple(t) for t in tables)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    for title, table in config.stash.get(BENCHMARK_TABLES, []):
        terminalreporter.section(title)
        for line in table.splitlines():
            terminalreporter.write_line(line)
