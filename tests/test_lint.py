"""Lint is part of the test command: ruff for Python, shellcheck for every shell script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [REPO_ROOT / name for name in listing.splitlines() if (REPO_ROOT / name).is_file()]


def shell_scripts() -> list[Path]:
    """Every .sh file, and every executable whose first line names bash or sh."""
    scripts = []
    for path in tracked_files():
        first_line = path.read_bytes()[:64].split(b"\n", 1)[0]
        if path.suffix == ".sh" or (
            first_line.startswith(b"#!") and (b"bash" in first_line or first_line.endswith(b"/sh"))
        ):
            scripts.append(path)
    return sorted(scripts)


def python_executables() -> list[Path]:
    """Python commands without a .py suffix (chi-persist, scripts/clean-stop and friends)."""
    return sorted(
        path
        for path in tracked_files()
        if path.suffix == "" and path.read_bytes()[:64].startswith(b"#!/usr/bin/env python3")
    )


def run_ruff(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_python_passes_ruff_check() -> None:
    """ruff finds no problem in the project's Python, commands without a suffix included."""
    result = run_ruff("check", ".", *map(str, python_executables()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_is_formatted() -> None:
    """ruff format would change nothing."""
    result = run_ruff("format", "--check", ".", *map(str, python_executables()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_are_found() -> None:
    """The scripts that touch disks and run the platform are among those linted."""
    names = {path.name for path in shell_scripts()}
    for expected in ("lib.sh", "release-volume.sh", "start-stack.sh", "install-docker.sh", "run"):
        assert expected in names


def test_python_commands_are_found() -> None:
    """The volume script, a Python command without a suffix, is among those ruff checks."""
    script = REPO_ROOT / "scripts" / "remote" / "prepare-volume"
    assert script in python_executables()
    assert script not in shell_scripts()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_pass_shellcheck() -> None:
    """shellcheck finds nothing in any shell script of the project."""
    scripts = [str(path.relative_to(REPO_ROOT)) for path in shell_scripts()]
    result = subprocess.run(
        ["shellcheck", "--external-sources", *scripts],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
