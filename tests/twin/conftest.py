"""Fixtures for the twin's API tests: a `serve --machines null` process per test or module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.twin.harness import NO_QUOTAS, Api, Twin


def _start(directory: Path, settings: dict | None = None) -> Twin:
    return Twin(directory / "state", settings=settings).start()


def _finish(twin: Twin) -> None:
    status = twin.stop()
    assert status == 0, f"serve exited with {status}:\n{twin.log_text()}"


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    """A twin of its own, stopped (and checked to stop cleanly) after the test."""
    started = _start(tmp_path)
    yield started
    _finish(started)


@pytest.fixture
def api(twin: Twin) -> Api:
    return twin.api()


@pytest.fixture(scope="module")
def shared_twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    """One twin for a module's tests that do not disturb each other."""
    started = _start(tmp_path_factory.mktemp("twin"), NO_QUOTAS)
    yield started
    _finish(started)


@pytest.fixture(scope="module")
def shared_api(shared_twin: Twin) -> Api:
    return shared_twin.api()


@pytest.fixture(scope="session")
def public_key() -> str:
    """A fresh OpenSSH public key (no private half is kept)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode() + " student@laptop"
