"""The tests pass from any checkout, including one under a directory other users cannot enter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.block_devices import block_device_skip_reason
from tests.support.other_user import enterable_by_everyone
from tests.support.paths import REPO_ROOT

# What a checkout holds that is not the project: caches, Pulumi's virtual environment.
NOT_THE_PROJECT = shutil.ignore_patterns(
    ".git", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pyc"
)


def _skip_reason() -> str | None:
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    return block_device_skip_reason()


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_tests_run_as_nobody_pass_from_a_checkout_others_cannot_enter(tmp_path: Path) -> None:
    """A copy of the project in a 0700 directory: every test marked other_user passes there."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    checkout = private / "chi-persist"
    shutil.copytree(REPO_ROOT, checkout, ignore=NOT_THE_PROJECT, symlinks=True)
    assert not enterable_by_everyone(checkout), "the copy must sit where nobody cannot enter"

    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "other_user"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 2, summary
    assert not re.search(r"skipped|failed|error", summary), summary
