"""class-stacks: turn an instructor's roster into one Pulumi.<netid>.yaml per student.

Every row is checked with the program's own rules (components.settings); all
problems are reported, each with its line and row, and then nothing is written.
An existing stack file keeps every key the roster does not set, secrets included.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chi_persist_tools.command_line import EXIT_OK, EXIT_USAGE, PROJECT_DIR, CommandError, run_main
from chi_persist_tools.stack_files import (
    StackFileProblem,
    config_key,
    dump_stack_document,
    read_stack_file,
    stack_file,
    write_atomically,
    yaml_error_text,
    yaml_module,
)
from components.settings import CONFIG_KEYS, check_value


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# A roster may name a setting as Pulumi.yaml does (keyPair) or in snake_case (key_pair).
ROSTER_KEYS: dict[str, str] = {}
for _name in CONFIG_KEYS:
    ROSTER_KEYS[_name] = _name
    ROSTER_KEYS[snake_case(_name)] = _name

ROSTER_EXAMPLE = """\
# Optional: settings every student gets unless their own row sets them.
defaults:
  lease_duration: 1d
  allowed_cidrs: [203.0.113.0/24]
students:
  - netid: ab1234
    key_pair: ab1234-key
  - netid: cd5678
    key_pair: cd5678-key
    volume_size: 4
    lease_duration: 3d
"""

_OTHER_SETTINGS = textwrap.fill(
    ", ".join(
        name
        for name, spec in CONFIG_KEYS.items()
        if not spec.secret and name not in ("netid", "keyPair")
    )
    + ".",
    width=86,
    initial_indent=" " * 14,
    subsequent_indent=" " * 14,
)

DESCRIPTION = """\
Write one Pulumi stack file, Pulumi.<netid>.yaml, per student of a class roster.
Every row is checked with the rules `pulumi up` applies; if any row is wrong, all
problems are listed (with line and row) and no file is written. An existing stack
file keeps every key the roster does not set, including encrypted secrets and its
encryptionsalt (its comments are not kept).
"""

EPILOG = f"""\
roster format (YAML):
  students:   a list, one mapping per student, each with
                netid     the student's netID (also the stack's name), required
                key_pair  the name of the student's key pair at KVM@TACC, required
              and any other non-secret setting of Pulumi.yaml, named as there
              (volumeSize) or in snake_case (volume_size):
{_OTHER_SETTINGS}
  defaults:   optional mapping of settings every student gets unless their row sets them
              (anything but netid).
  lease_duration (leaseDuration) sets how long each stack's own KVM@TACC lease lasts
  (8h, 3d, 90m, 1d12h; at most a week), for the class in defaults or per student; a
  change applies to each stack's next lease (Blazar cannot extend one). A
  student with a reservation of their own (reservation) gets no lease: for them it is
  not used, and a note says so.
  A bare list of students is accepted too. Secrets (sshPrivateKey) are refused: a
  roster is shared; each student sets their own with `pulumi config set --secret`.

example roster:
{chr(10).join("  " + line for line in ROSTER_EXAMPLE.splitlines())}

examples:
  scripts/class-stacks roster.yaml --dry-run      # show what would be written
  scripts/class-stacks roster.yaml                # write Pulumi.<netid>.yaml here
  scripts/class-stacks roster.yaml --output-dir handout/

then each student, in their copy of the project with their Pulumi.<netid>.yaml:
  scripts/new-stack NETID --key-pair KEY_PAIR && pulumi up --stack NETID

exit status:
  0  every file was written (or, with --dry-run, would be)
  2  the roster (or an existing stack file) has problems: nothing was written
"""


@dataclass
class Student:
    """One checked row: its settings, normalised, in the order they are written."""

    index: int
    line: int | None
    netid: str
    values: dict[str, Any]


@dataclass
class RosterLines:
    """Where things are in the roster's text, counted from 1, for messages."""

    rows: list[int] = field(default_factory=list)
    row_keys: list[dict[str, int]] = field(default_factory=list)
    defaults_keys: dict[str, int] = field(default_factory=dict)
    defaults: int | None = None
    students: int | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="class-stacks",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("roster", metavar="ROSTER.yaml", type=Path, help="the class roster")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the files that would be written; write none"
    )
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        type=Path,
        default=PROJECT_DIR,
        help=f"where the stack files go (default: the project directory, {PROJECT_DIR})",
    )
    return parser


def _mapping_lines(node: Any) -> dict[str, int]:
    yaml = yaml_module()
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(key.value): key.start_mark.line + 1
        for key, _ in node.value
        if isinstance(key, yaml.ScalarNode)
    }


def roster_lines(text: str) -> RosterLines:
    yaml = yaml_module()
    lines = RosterLines()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    students = root
    if isinstance(root, yaml.MappingNode):
        students = None
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "students":
                students = value
                lines.students = key.start_mark.line + 1
            elif isinstance(key, yaml.ScalarNode) and key.value == "defaults":
                lines.defaults = key.start_mark.line + 1
                lines.defaults_keys = _mapping_lines(value)
    if isinstance(students, yaml.SequenceNode):
        for item in students.value:
            lines.rows.append(item.start_mark.line + 1)
            lines.row_keys.append(_mapping_lines(item))
    return lines


class Roster:
    """Checks a roster's rows, collecting every problem with where it is."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []

    def problem(self, line: int | None, where: str, text: str) -> None:
        place = f"{self.name}:{line}" if line else self.name
        self.problems.append(f"{place}: {where}{': ' if where else ''}{text}")

    def check_settings(
        self, row: dict, keys_at: dict[str, int], line: int | None, where: str
    ) -> dict[str, Any]:
        """The row's settings by config key name, normalised; problems recorded."""
        values: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for written, value in row.items():
            at = keys_at.get(str(written), line)
            name = ROSTER_KEYS.get(written) if isinstance(written, str) else None
            if name is None:
                rule = check_value(str(written), value)[1]
                self.problem(
                    at,
                    where,
                    f"unknown key {written!r}: {rule.rule if rule else 'not a setting'}; "
                    "snake_case forms such as key_pair work too; fix: remove it, or correct "
                    "its spelling",
                )
                continue
            if name in spelled:
                self.problem(
                    at,
                    where,
                    f"{written!r} sets the same setting as {spelled[name]!r}; "
                    "fix: keep one of them",
                )
                continue
            spelled[name] = written
            spec = CONFIG_KEYS[name]
            if spec.secret:
                self.problem(
                    at,
                    where,
                    f"{written!r} is a secret, and secrets never go in a roster (it is shared "
                    f"and kept in plain text); fix: remove it: each student stores their own "
                    f"with `pulumi config set --secret {config_key(name)} < KEY_FILE`",
                )
                continue
            normalised, problem = check_value(name, value)
            if problem is not None:
                hint = ""
                if spec.type == "string" and value is not None and not isinstance(value, str):
                    hint = f" (YAML read it as {type(value).__name__}: put it in quotes)"
                example = f"[{spec.example}]" if spec.type == "array" else spec.example
                shown = "(empty)" if value is None else repr(value)
                self.problem(
                    at,
                    where,
                    f"{written} = {shown}: {problem.rule}{hint}; fix: correct it, "
                    f"e.g. {written}: {example}",
                )
                continue
            values[name] = normalised
        return values


def check_roster(text: str, name: str) -> tuple[list[Student], list[str]]:
    """The roster's students, checked; or the list of every problem found."""
    yaml = yaml_module()
    roster = Roster(name)
    try:
        document = yaml.safe_load(text)
        lines = roster_lines(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        roster.problem(
            mark.line + 1 if mark else None,
            "",
            f"not valid YAML ({yaml_error_text(error)}); fix: correct the YAML, "
            "see --help for the format",
        )
        return [], roster.problems

    defaults: dict[str, Any] = {}
    named_in_defaults: set[str] = set()
    rows: Any = document
    if isinstance(document, dict):
        for key in document:
            if key not in ("students", "defaults"):
                roster.problem(
                    None,
                    "",
                    f"unknown top-level key {key!r}: a roster has `students:` and, optionally, "
                    "`defaults:`; fix: remove it, or move it under defaults",
                )
        rows = document.get("students")
        raw_defaults = document.get("defaults")
        if raw_defaults is not None and not isinstance(raw_defaults, dict):
            roster.problem(
                lines.defaults,
                "defaults",
                f"is a {type(raw_defaults).__name__}, not a mapping of settings; "
                "fix: e.g. `defaults: {volume_size: 4}`",
            )
        elif raw_defaults:
            named_in_defaults = {ROSTER_KEYS.get(key) for key in raw_defaults} - {None}
            if "netid" in raw_defaults:
                roster.problem(
                    lines.defaults_keys.get("netid", lines.defaults),
                    "defaults",
                    "netid cannot be a default: every student has their own; fix: remove it",
                )
                raw_defaults = {k: v for k, v in raw_defaults.items() if k != "netid"}
            defaults = roster.check_settings(
                raw_defaults, lines.defaults_keys, lines.defaults, "defaults"
            )
        if rows is None:
            roster.problem(None, "", "no `students:` list; fix: add one, see --help for the format")
            return [], roster.problems
    if not isinstance(rows, list):
        shown = "empty" if rows is None else f"a {type(rows).__name__}"
        roster.problem(
            lines.students,
            "",
            f"the students are {shown}, not a list of rows like `- netid: ab1234`; "
            "fix: see --help for the format",
        )
        return [], roster.problems
    if not rows:
        roster.problem(lines.students, "", "the list of students is empty; fix: add the class")

    students: list[Student] = []
    first_row_of: dict[str, tuple[int, int | None]] = {}
    for position, row in enumerate(rows):
        index = position + 1
        line = lines.rows[position] if position < len(lines.rows) else None
        keys_at = lines.row_keys[position] if position < len(lines.row_keys) else {}
        if not isinstance(row, dict):
            roster.problem(
                line,
                f"student {index}",
                f"is a {type(row).__name__}, not a mapping like "
                "`{netid: ab1234, key_pair: ab1234-key}`; fix: correct the row",
            )
            continue
        raw_netid = row.get("netid")
        label = f"student {index} ({raw_netid})" if raw_netid else f"student {index}"
        values = roster.check_settings(row, keys_at, line, label)
        if "netid" not in row:
            roster.problem(line, label, "has no netid; fix: add `netid: <the student's netID>`")
        named = {ROSTER_KEYS.get(key) for key in row if isinstance(key, str)}
        if not {"keyPair"} & (named | named_in_defaults):
            roster.problem(
                line,
                label,
                "has no key_pair; fix: add `key_pair: <name of the student's key pair "
                "at KVM@TACC>`",
            )
        netid = values.get("netid")
        if netid is None:
            continue
        if netid in first_row_of:
            other, other_line = first_row_of[netid]
            roster.problem(
                line,
                label,
                f"netid {netid!r} is also on student {other} (line {other_line}); each student "
                "has one row; fix: remove or correct one of them",
            )
            continue
        first_row_of[netid] = (index, line)
        merged = {"netid": netid}
        for key in CONFIG_KEYS:
            if key in values:
                merged[key] = values[key]
            elif key in defaults:
                merged[key] = defaults[key]
        students.append(Student(index=index, line=line, netid=netid, values=merged))
    return students, roster.problems


def _yaml_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _same_setting(name: str, stored: Any, wanted: Any) -> bool:
    normalised, problem = check_value(name, stored)
    return problem is None and normalised == wanted


@dataclass
class Outcome:
    """One stack file: what it becomes, and whether that creates, updates or keeps it."""

    path: Path
    status: str  # "created", "updated" or "unchanged"
    text: str


def plan_files(students: Sequence[Student], directory: Path) -> tuple[list[Outcome], list[str]]:
    """Each student's file merged with what exists; problems with existing files."""
    outcomes, problems = [], []
    for student in students:
        path = stack_file(directory, student.netid)
        try:
            existing = read_stack_file(path)
        except StackFileProblem as problem:
            problems.append(
                f"{path} (student {student.index}, {student.netid}) {problem}; fix: correct "
                "it, or move it aside to start that stack's file afresh"
            )
            continue
        document = dict(existing or {})
        config = dict(document.get("config") or {})
        for name, value in student.values.items():
            key = config_key(name)
            if key in config and _same_setting(name, config[key], value):
                continue
            config[key] = _yaml_value(value)
        document["config"] = config
        if existing is None:
            status = "created"
        elif document == existing:
            status = "unchanged"
        else:
            status = "updated"
        outcomes.append(Outcome(path=path, status=status, text=dump_stack_document(document)))
    return outcomes, problems


def run(arguments: argparse.Namespace) -> int:
    roster_path: Path = arguments.roster
    try:
        text = roster_path.read_text()
    except FileNotFoundError:
        raise CommandError(
            f"roster {str(roster_path)!r} does not exist; fix: give the path of the roster "
            "file (see --help for its format)"
        ) from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as error:
        raise CommandError(
            f"roster {str(roster_path)!r} cannot be read as text ({error}); "
            "fix: give a YAML file (see --help for its format)"
        ) from None
    directory: Path = arguments.output_dir
    if not directory.is_dir():
        raise CommandError(
            f"--output-dir {str(directory)!r} is not a directory; fix: create it "
            f"(mkdir -p {directory}) or give another"
        )

    students, problems = check_roster(text, roster_path.name)
    outcomes: list[Outcome] = []
    if not problems:
        outcomes, problems = plan_files(students, directory)
    if problems:
        count = len(problems)
        raise CommandError(
            *problems,
            f"{count} problem{'s' if count != 1 else ''} in {roster_path}: nothing was "
            "written; fix them and run again",
            exit_code=EXIT_USAGE,
        )

    for student in students:
        if student.values.get("reservation") and "leaseDuration" in student.values:
            print(
                f"note: student {student.index} ({student.netid}) has a reservation of their "
                f"own: their stack makes no lease, so leaseDuration "
                f"({student.values['leaseDuration']}) is not used for it"
            )
    counts = {status: 0 for status in ("created", "updated", "unchanged")}
    for outcome in outcomes:
        counts[outcome.status] += 1
        if arguments.dry_run:
            if outcome.status == "unchanged":
                print(f"--- {outcome.path.name}: unchanged")
            else:
                verb = "would be created" if outcome.status == "created" else "would be updated"
                print(f"--- {outcome.path.name} ({verb})")
                print(outcome.text, end="")
        elif outcome.status == "unchanged":
            print(f"unchanged {outcome.path}")
        else:
            write_atomically(outcome.path, outcome.text)
            print(f"{outcome.status} {outcome.path}")
    summary = ", ".join(f"{count} {status}" for status, count in counts.items())
    if arguments.dry_run:
        print(f"class-stacks: dry run, nothing written; would be: {summary}")
    else:
        print(f"class-stacks: {summary} in {directory}")
        print(
            "next: each student, with their Pulumi.<netid>.yaml in the project directory, runs "
            "`scripts/new-stack NETID --key-pair KEY_PAIR` then `pulumi up --stack NETID`"
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    return run_main(lambda: run(arguments))
