"""chi-persist: the one command of the project, its subcommands and their shared options.

The parsers need only Python's standard library (each subcommand's help is in a module that
imports nothing else), so `--help` at every level works before the project's virtual
environment exists; a subcommand's work is imported when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

PROG = "chi-persist"

EXIT_CODES = """\
exit status (every subcommand; each --help says what its own mean):
  0    done (for `check`: every check passed)
  1    a pulumi or cloud call failed, or a check failed: what to do is printed
  2    wrong arguments or values, or not confirmed: nothing was changed
  130  interrupted"""

DESCRIPTION = """\
A persistent machine-learning platform (MLflow, PostgreSQL, MinIO, Jupyter) for each
student of a class on Chameleon KVM@TACC. `pulumi up --stack NETID` builds and repairs
the platform; this command does everything around it."""

EPILOG = f"""\
a student's first day (see README.md):
  ./{PROG} init ab1234 --key-pair ab1234-key    # the stack and its config
  pulumi up --stack ab1234                           # the platform
  ./{PROG} check --stack ab1234                 # it answers
  ./{PROG} recycle --stack ab1234 --end-lease   # done for the day; data kept

tab completion (bash, zsh): eval "$(venv/bin/register-python-argcomplete {PROG})"
  with the project's venv/bin on PATH (`source venv/bin/activate`).

{EXIT_CODES}"""


@dataclass(frozen=True)
class Command:
    """One subcommand: where its help and arguments are, and where its work is."""

    name: str
    summary: str
    options: str
    """Module with DESCRIPTION, EPILOG and add_arguments(parser): standard library only; or
    `module:NAME`, an object of that module with those attributes."""
    stack: bool = True
    """It acts on one stack: it takes --stack."""


COMMANDS = (
    Command("init", "create (or select) your stack and set its config", "new_stack", stack=False),
    Command("check", "check that the platform answers and the data is there", "check_options"),
    Command("recycle", "remove the server (the data stays); --end-lease ends the lease", "recycle"),
    Command("open", "reach Jupyter, MLflow and MinIO through an SSH tunnel", "tunnel"),
    Command("repair", "repair the stack's state after an interrupted pulumi up", "repair"),
    Command("backup", "back the platform's data up to the object store", "backup_options:BACKUP"),
    Command("backups", "list the backups in the object store", "backup_options:BACKUPS"),
    Command(
        "restore", "restore a backup onto the stack's platform", "backup_options:RESTORE"
    ),  # fmt: skip
    Command(
        "class",
        "for instructors: a class roster's stack files, its leaks",
        "class_stacks",
        stack=False,
    ),  # fmt: skip
    Command(
        "dev", "for the project's developers: regenerate the documentation", "dev", stack=False
    ),  # fmt: skip
)


def shared_options() -> argparse.ArgumentParser:
    """--yes and verbosity, which every subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--yes", action="store_true", help="do not ask for confirmation (where anything is asked)"
    )
    loudness = parent.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v", "--verbose", action="store_true", help="show every pulumi command's output in full"
    )
    loudness.add_argument(
        "-q", "--quiet", action="store_true", help="print only warnings, errors and the result"
    )
    return parent


def stack_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--stack", metavar="NETID", help="the stack (your netID); default: the selected stack"
    )
    return parent


def options_module(command: Command):
    module, _, name = command.options.partition(":")
    found = importlib.import_module(f"chi_persist_tools.{module}")
    return getattr(found, name) if name else found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    shared, stack = shared_options(), stack_option()
    for command in COMMANDS:
        module = options_module(command)
        parents = [shared, stack] if command.stack else [shared]
        subparser = subcommands.add_parser(
            command.name,
            parents=parents,
            help=command.summary,
            description=module.DESCRIPTION,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(subparser, [shared])
        subparser.set_defaults(handler=module.run_command)
    return parser


def parser_for(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, as `chi-persist NAME` parses."""
    parser = build_parser()
    for action in parser._subparsers._group_actions:  # noqa: SLF001 (argparse has no getter)
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(name)


def enable_completion(parser: argparse.ArgumentParser) -> None:
    """Tab completion through argcomplete, when it is installed (the project's venv has it)."""
    try:
        import argcomplete
    except ModuleNotFoundError:
        return
    argcomplete.autocomplete(parser)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    enable_completion(parser)
    arguments = parser.parse_args(argv)
    if getattr(arguments, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    from chi_persist_tools import command_line

    command_line.set_verbosity(verbose=arguments.verbose, quiet=arguments.quiet)
    return arguments.handler(arguments)
