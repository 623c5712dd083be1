"""The one command, ./chi-persist: its help at every level before any virtual environment, its
subcommands and shared options, the old names that point to it, its packaging."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT
from tests.support.tools import import_tool

LAUNCHER = REPO_ROOT / "chi-persist"
cli = import_tool("cli")
SUBCOMMANDS = [command.name for command in cli.COMMANDS]
NESTED = {"class": ["write", "leaks"], "dev": ["docs"]}


def bare_python(*arguments: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """`./chi-persist ARGUMENTS` under Python without any site-packages (-S): as on a fresh
    machine where neither ./venv nor the project's packages exist."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-S", str(cwd / "chi-persist"), *arguments],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=environment, check=False,
    )  # fmt: skip


def test_the_top_level_help_lists_every_task_and_the_exit_codes() -> None:
    """Python alone prints it: every subcommand with its summary, and what each exit code means."""
    result = bare_python("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.M), (name, result.stdout)
    assert "exit status" in result.stdout and "130" in result.stdout
    assert "register-python-argcomplete chi-persist" in result.stdout


@pytest.mark.parametrize(
    "words",
    [[name] for name in SUBCOMMANDS if name not in NESTED]
    + [[name, verb] for name, verbs in NESTED.items() for verb in verbs],
    ids=lambda words: " ".join(words),
)
def test_every_subcommand_has_help_before_any_venv(words: list[str]) -> None:
    result = bare_python(*words, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: chi-persist {' '.join(words)}"), result.stdout[:200]
    assert "--yes" in result.stdout and "--quiet" in result.stdout
    assert "ModuleNotFoundError" not in result.stderr


@pytest.mark.parametrize("name", ["check", "recycle", "repair", "backup", "backups", "restore"])
def test_commands_on_one_stack_share_stack_yes_and_verbosity(name: str) -> None:
    parser = cli.parser_for(name)
    parsed = parser.parse_args(["--stack", "ab1234", "--yes", "-v"])
    assert (parsed.stack, parsed.yes, parsed.verbose, parsed.quiet) == ("ab1234", True, True, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["-v", "-q"])


def test_restore_takes_a_backup_name_and_force() -> None:
    """`restore [BACKUP] --force`: the name is optional (the newest complete backup)."""
    parser = cli.parser_for("restore")
    named = parser.parse_args(["20260503T142205Z", "--force", "--stack", "ab1234"])
    assert (named.backup, named.force, named.stack) == ("20260503T142205Z", True, "ab1234")
    newest = parser.parse_args(["--stack", "ab1234"])
    assert (newest.backup, newest.force) == (None, False)


def test_wrong_arguments_exit_2_before_any_venv(tmp_path: Path) -> None:
    """A typo costs nothing: argparse answers with Python alone, and nothing is made."""
    copy = tmp_path / "project"
    copy.mkdir()
    (copy / "chi-persist").write_bytes(LAUNCHER.read_bytes())
    (copy / "scripts").symlink_to(REPO_ROOT / "scripts")
    (copy / "components").symlink_to(REPO_ROOT / "components")
    result = bare_python("recycle", "--stack", "ab1234", "--frobnicate", cwd=copy)
    assert result.returncode == 2 and "unrecognized arguments: --frobnicate" in result.stderr
    assert not (copy / "venv").exists()
    nothing = bare_python(cwd=copy)
    assert nothing.returncode == 2 and "usage: chi-persist" in nothing.stderr


def project_without_venv(tmp_path: Path, pulumi: str | None) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the project's command (no ./venv) and an environment whose PATH has
    only `pulumi` (the shell script `pulumi`, if given) and this Python's directory."""
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy2(LAUNCHER, copy / "chi-persist")
    for name in ("scripts", "components"):
        shutil.copytree(REPO_ROOT / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    for name in ("Pulumi.yaml", "README.md", "requirements.txt"):
        shutil.copy2(REPO_ROOT / name, copy / name)
    tools = tmp_path / "bin"
    tools.mkdir()
    if pulumi is not None:
        (tools / "pulumi").write_text(pulumi)
        (tools / "pulumi").chmod(0o755)
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["PATH"] = os.pathsep.join(
        [str(tools), str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    )
    environment.pop("CHI_PERSIST_REEXEC", None)
    return copy, environment


def test_the_first_command_makes_the_venv_with_pulumi_install_then_runs_in_it(
    tmp_path: Path,
) -> None:
    """No ./venv: one line says what is happening, `pulumi install` makes it (here a stand-in
    that links this test environment as ./venv), and the command runs under ./venv's Python."""
    calls = tmp_path / "pulumi-calls"
    copy, environment = project_without_venv(
        tmp_path,
        f'#!/bin/sh\necho "$PWD $*" >> {calls}\nln -s {sys.prefix} venv\n',
    )
    result = subprocess.run(
        [sys.executable, str(copy / "chi-persist"), "dev", "docs", "--check"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls.read_text() == f"{copy} install\n"
    assert result.stderr.count("making the project's virtual environment in ./venv") == 1
    again = subprocess.run(
        [sys.executable, str(copy / "chi-persist"), "dev", "docs", "--check"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "making the project's virtual environment" not in again.stderr
    assert calls.read_text().count("install") == 1


def test_a_failed_pulumi_install_says_what_failed_and_how_to_recover(tmp_path: Path) -> None:
    copy, environment = project_without_venv(tmp_path, "#!/bin/sh\necho offline >&2\nexit 7\n")
    result = subprocess.run(
        [sys.executable, str(copy / "chi-persist"), "dev", "docs", "--check"],
        capture_output=True, text=True, timeout=120, cwd=copy, env=environment, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "install` failed (exit status 7)" in result.stderr
    assert f"rm -rf {copy / 'venv'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_pulumi_the_venv_is_made_with_venv_and_pip(tmp_path: Path) -> None:
    """No `pulumi` on PATH: `python -m venv` then pip with requirements.txt (pip is kept off
    the network here, so it fails, and the message names the step and the way back)."""
    copy, environment = project_without_venv(tmp_path, None)
    environment.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path))
    result = subprocess.run(
        [sys.executable, str(copy / "chi-persist"), "dev", "docs", "--check"],
        capture_output=True, text=True, timeout=300, cwd=copy, env=environment, check=False,
    )  # fmt: skip
    assert (copy / "venv" / "bin" / "python").exists()
    assert result.returncode == 1
    assert "pip install --quiet -r requirements.txt` failed" in result.stderr
    assert f"rm -rf {copy / 'venv'}" in result.stderr


@pytest.mark.parametrize(
    ("old", "arguments", "new"),
    [
        ("new-stack", ["--help"], "chi-persist init"),
        ("check-platform", ["--help"], "chi-persist check"),
        ("recycle", ["--help"], "chi-persist recycle"),
        ("repair", ["--help"], "chi-persist repair"),
        ("class-stacks", ["--help"], "chi-persist class write"),
        ("class-stacks", ["roster.yaml", "--leaks", "--help"], "chi-persist class leaks"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_old_names_say_the_new_command_then_run_it(old, arguments, new) -> None:
    """Kept for one release: a line naming the new command, then that command runs."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / old), *arguments],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"scripts/{old} is now `./{new}`" in result.stderr
    assert result.stdout.startswith(f"usage: {new}"), result.stdout[:200]


def test_the_package_declares_the_console_command(tmp_path: Path) -> None:
    """`pulumi install` (requirements.txt's `-e .`) gives ./venv/bin/chi-persist: the
    project's wheel names the entry point and carries the command's and the program's code."""
    # A copy: setuptools builds in the source tree (build/, *.egg-info), and the checkout
    # may be read-only.
    source = tmp_path / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "venv", ".venv", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--wheel-dir", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("chi_persist-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(name for name in names if name.endswith("entry_points.txt"))
        assert "chi-persist = chi_persist_tools.cli:main" in archive.read(entry_points).decode()
    assert "chi_persist_tools/cli.py" in names and "components/settings.py" in names
    assert "-e ." in (REPO_ROOT / "requirements.txt").read_text().splitlines()


def test_completion_is_offered_when_argcomplete_is_installed() -> None:
    """argcomplete (in requirements.txt) completes subcommands through its usual hook."""
    environment = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "COMP_LINE": "chi-persist re",
        "COMP_POINT": str(len("chi-persist re")),
        "_ARGCOMPLETE_IFS": "\n",
    }
    # argcomplete writes what it offers to file descriptor 8 (the shell hook's protocol).
    read, write = os.pipe()
    saved = os.dup(8) if _is_open(8) else None
    os.dup2(write, 8)
    try:
        result = subprocess.run(
            [sys.executable, str(LAUNCHER)],
            env=environment, pass_fds=(8,), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        os.close(write)
        if saved is None:
            os.close(8)
        else:
            os.dup2(saved, 8)
            os.close(saved)
    with os.fdopen(read) as completions:
        offered = completions.read().split("\n")
    assert result.returncode == 0, result.stderr
    offered_words = sorted(word.strip() for word in offered if word.strip())
    assert offered_words == ["recycle", "repair", "restore"]


def _is_open(descriptor: int) -> bool:
    try:
        os.fstat(descriptor)
    except OSError:
        return False
    return True
