"""Every command the README (and tests/README.md) shows runs as shown: each `./chi-persist`
line parses with the command's own parser, each `pulumi` line names a command of the real
CLI and only flags that command has, and every other program is one the project names."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.engine.workspace import toolchain_skip_reason
from tests.support import readme
from tests.support.paths import REPO_ROOT
from tests.support.tools import import_tool

cli = import_tool("cli")

# Programs the documentation shows that are not this project's or Pulumi's, and so are not
# parsed here: what each is.
OTHER_PROGRAMS = {
    "export": "the shell: the environment for pulumi and the provider",
    "source": "the shell: an openrc file or the venv's activate script",
    "eval": "the shell: tab completion, an ssh agent",
    "openstack": "the OpenStack client, for looking things up (python-openstackclient)",
    "ssh-add": "OpenSSH",
    "ssh-keygen": "OpenSSH",
    "grep": "a filter in a pipe",
    "venv/bin/pip": "pip in the project's virtual environment",
    "venv/bin/ccauth": "Chameleon's ccauth, installed by the line before it",
    "register-python-argcomplete": "argcomplete's hook, in ./venv",
    "sudo": "on the server, as the README says",
    "ssh": "OpenSSH",
    "python": "the student's own training script, which MLflow's client logs from",
}
PLACES = [readme.README, readme.TESTS_README]


def every_command() -> list[tuple[readme.Shown, list[str]]]:
    found = []
    for path in PLACES:
        for shown in [*readme.shown(path), *readme.inline_commands(path)]:
            for argv in readme.simple_commands(readme.fill(shown.line)):
                found.append((shown, argv))
    return found


COMMANDS = every_command()
OURS = [(shown, argv) for shown, argv in COMMANDS if argv[0] == "./chi-persist"]
PULUMI = [(shown, argv) for shown, argv in COMMANDS if argv[0] == "pulumi"]


def test_the_documentation_shows_commands_of_every_kind() -> None:
    """The extraction finds what is there (a broken one would make the checks below empty)."""
    assert len(OURS) >= 20 and len(PULUMI) >= 20, (len(OURS), len(PULUMI))
    assert any(argv[:2] == ["./chi-persist", "init"] for _, argv in OURS)
    assert any(argv[:2] == ["tests/run", "-m"] for _, argv in COMMANDS)


def subparser(parser: argparse.ArgumentParser, word: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # noqa: SLF001 (argparse has no getter)
        if isinstance(action, argparse._SubParsersAction) and word in action.choices:
            return action.choices[word]
    return None


@pytest.mark.parametrize(("shown", "argv"), OURS, ids=lambda value: getattr(value, "line", None))
def test_every_chi_persist_command_parses(shown: readme.Shown, argv: list[str]) -> None:
    """A command line in a shell block parses whole; one named in the text (`./chi-persist
    recycle`, `./chi-persist recycle --end-lease`) names a command and its options."""
    if shown.where.endswith("(inline)"):
        parser = cli.build_parser()
        for word in argv[1:]:
            if word.startswith("-"):
                assert word.split("=", 1)[0] in parser._option_string_actions, (  # noqa: SLF001
                    f"{shown.where}: `{shown.line}`: no option {word}"
                )
            elif (inner := subparser(parser, word)) is not None:
                parser = inner
        assert parser.prog != cli.PROG, f"{shown.where}: `{shown.line}` names no command"
        return
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            arguments = cli.build_parser().parse_args(argv[1:])
        except SystemExit as stop:
            message = errors.getvalue()
            pytest.fail(f"{shown.where}: `{shown.line}` does not parse ({stop.code}):\n{message}")
    assert getattr(arguments, "handler", None) is not None, f"{shown.where}: `{shown.line}`"


def test_every_program_shown_is_checked_or_named() -> None:
    """A new program in a shell block is either parsed here or named in OTHER_PROGRAMS."""
    unknown = {
        (shown.where, argv[0])
        for shown, argv in COMMANDS
        if not shown.where.endswith("(inline)")
        and argv[0] not in {"./chi-persist", "pulumi", "tests/run"}
        and argv[0] not in OTHER_PROGRAMS
    }
    assert not unknown, sorted(unknown)


def test_the_test_command_and_its_arguments() -> None:
    """`tests/run` exists, is executable, and hands its arguments to pytest, which knows them."""
    run = REPO_ROOT / "tests" / "run"
    assert os.access(run, os.X_OK)
    markers = set(re.findall(r'^\s+"(\w+):', (REPO_ROOT / "pyproject.toml").read_text(), re.M))
    for shown, argv in COMMANDS:
        if argv[0] != "tests/run":
            continue
        for position, word in enumerate(argv[1:], start=1):
            if argv[position - 1] == "-m":
                named = set(re.findall(r"\w+", word)) - {"not", "and", "or"}
                assert named <= markers, f"{shown.where}: `{shown.line}`: unknown marker"
            elif not word.startswith("-"):
                assert (REPO_ROOT / word).exists(), f"{shown.where}: `{shown.line}`: no {word}"


# --- pulumi: the real CLI's own help ----------------------------------------------------------


@cache
def pulumi_help(*path: str) -> tuple[frozenset[str], frozenset[str]]:
    """The subcommands and the flags (own and global) of `pulumi PATH --help`."""
    pulumi = Path(os.environ["CHI_PERSIST_TOOLCHAIN_BIN"]) / "pulumi"
    environment = {**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"}
    result = subprocess.run(
        [str(pulumi), *path, "--help"],
        capture_output=True, text=True, timeout=60, env=environment, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # Cobra lists subcommands under headings that end in "Commands:" (`Available Commands:`,
    # the top level's `Deployment Commands:` and others), one indented line each.
    commands = set()
    listing = False
    for line in text.splitlines():
        if not line.startswith(" ") and line.endswith("Commands:"):
            listing = True
        elif listing and line.startswith("  ") and line.strip():
            commands.add(line.split()[0])
        else:
            listing = False
    flags = set(re.findall(r"(?m)^\s+(?:(-\w), )?(--[\w-]+)", text))
    names = {name for pair in flags for name in pair if name}
    return frozenset(commands), frozenset(names)


def pulumi_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """The words of argv that name a pulumi command, and the flags used."""
    path: list[str] = []
    for word in argv[1:]:
        if word.startswith("-"):
            continue
        if word in pulumi_help(*path)[0]:
            path.append(word)
        else:
            break
    flags = []
    for word in argv[1:]:
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            flags.append(word.split("=", 1)[0])
    return path, flags


@pytest.mark.skipif(toolchain_skip_reason() is not None, reason=str(toolchain_skip_reason()))
@pytest.mark.parametrize(("shown", "argv"), PULUMI, ids=lambda value: getattr(value, "line", None))
def test_every_pulumi_command_and_flag_is_the_real_clis(
    shown: readme.Shown, argv: list[str]
) -> None:
    path, flags = pulumi_command(argv)
    assert path, f"{shown.where}: `{shown.line}`: {argv[1]!r} is not a pulumi command"
    _, known = pulumi_help(*path)
    unknown = [flag for flag in flags if flag not in known]
    assert not unknown, (
        f"{shown.where}: `{shown.line}`: `pulumi {' '.join(path)}` has no {', '.join(unknown)}"
    )
