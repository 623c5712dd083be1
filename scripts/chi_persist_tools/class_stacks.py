"""chi-persist class: an instructor's roster into one Pulumi.<netid>.yaml per student, and leaks.
Over 500 lines: the roster's reading (with its line numbers), its checks, the leak report and
the files written are the steps of this one command, and nothing else uses them."""

from __future__ import annotations

import argparse
import os
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PROJECT_DIR,
    CommandError,
    export_state,
    run_main,
)
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
from components.settings import CONFIG_KEYS, Settings, check_value, validate


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

quotas:
  A class shares one Chameleon project and its quotas. When the shell has the class's
  OpenStack credentials (OS_CLOUD with clouds.yaml, or a sourced openrc file), the roster is
  checked against the project's quotas first (Nova's /limits, Neutron's quota details,
  Cinder's quota set), counting only what each student's first `pulumi up` would add (what
  exists already adds nothing). A roster over a quota a stack keeps (security groups and
  their rules, ports, floating IPs, volumes, gigabytes) is refused with the way out; one
  whose servers could not all run at once (instances, cores, RAM) gets a warning, and so
  does a cloud that cannot be read (the files are written unchecked).

leaks (--leaks):
  Read-only: with the class's credentials in the shell, lists every server, volume, port,
  floating IP, security group and lease of the project that carries a roster student's
  owner key (chi-persist-stack=NETID/NETID) and is in no stack state this machine has:
  what an interrupted `pulumi up` or a lost laptop left behind. Nothing is deleted; each
  line names the command that would delete it (a volume may hold data: look first).

examples:
  ./chi-persist class write roster.yaml --dry-run      # show what would be written
  ./chi-persist class leaks roster.yaml        # what the class left in the cloud
  ./chi-persist class write roster.yaml                # write Pulumi.<netid>.yaml here
  ./chi-persist class write roster.yaml --output-dir handout/

then each student, in their copy of the project with their Pulumi.<netid>.yaml:
  ./chi-persist init NETID --key-pair KEY_PAIR && pulumi up --stack NETID

exit status:
  0  every file was written (or, with --dry-run, would be; with --leaks, the report was made)
  1  --leaks: the project could not be read
  2  the roster (or an existing stack file) has problems, or would go over the project's
     quotas: nothing was written
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


WRITE_DESCRIPTION = """\
Write one Pulumi stack file, Pulumi.<netid>.yaml, per student of ROSTER.yaml, after
checking every row (and, with the class's credentials, the project's quotas); if
anything is wrong, every problem is listed and nothing is written."""

LEAKS_DESCRIPTION = """\
Read-only: every cloud resource of the project that carries a roster student's owner
key and is in no stack state on this machine, with the command that would delete it."""


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs", required=True)
    write = verbs.add_parser(
        "write",
        parents=list(parents),
        help="write one stack file per student of the roster",
        description=WRITE_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    write.add_argument("roster", metavar="ROSTER.yaml", type=Path, help="the class roster")
    write.add_argument(
        "--dry-run", action="store_true", help="print the files that would be written; write none"
    )
    write.add_argument(
        "--no-quota-check",
        action="store_true",
        help="write the files without reading the project's quotas",
    )
    write.add_argument(
        "--output-dir",
        metavar="DIR",
        type=Path,
        default=PROJECT_DIR,
        help=f"where the stack files go (default: the project directory, {PROJECT_DIR})",
    )
    write.set_defaults(handler=run_command, leaks=False)
    leaks = verbs.add_parser(
        "leaks",
        parents=list(parents),
        help="list what the class left in the cloud (read-only)",
        description=LEAKS_DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    leaks.add_argument("roster", metavar="ROSTER.yaml", type=Path, help="the class roster")
    leaks.set_defaults(
        handler=run_command, leaks=True, dry_run=False, no_quota_check=True, output_dir=PROJECT_DIR
    )


def build_parser() -> argparse.ArgumentParser:
    from chi_persist_tools.cli import parser_for

    return parser_for("class")


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


# Every row is checked with the program's own rules (components.settings); all problems
# are reported, each with its line and row, and then nothing is written.
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


NO_CREDENTIALS = (
    "the project's quotas were not checked: this shell has no OpenStack credentials "
    "(`export OS_CLOUD=<the class's cloud in clouds.yaml>`, or `source` its openrc file, then "
    "run `./chi-persist class write` again; --no-quota-check says you do not want the check)"
)


def student_settings(student: Student) -> Settings:
    """A checked row as the program's Settings (its names: group, server, volume)."""
    return validate(dict(student.values), student.netid, check_private_key=False)


# With the class's OpenStack credentials in the shell, the roster is also checked against
# the project's quotas (components.quotas), before anything is written.
def check_project_quotas(students: Sequence[Student]) -> tuple[list[str], list[str]]:
    """(problems, notes): the roster against the project's quotas, through the shell's
    OpenStack credentials; without credentials, a note that nothing was checked."""
    from components import quotas
    from components.openstack_api import CloudUnavailable, OpenStack

    if not (os.environ.get("OS_CLOUD") or os.environ.get("OS_AUTH_URL")):
        return [], [f"note: {NO_CREDENTIALS}"]
    try:
        cloud = OpenStack()
        holdings = quotas.read_holdings(cloud)
        limits = quotas.read_limits(cloud)
    except (CloudUnavailable, quotas.QuotasUnreadable, KeyError, TypeError, ValueError) as error:
        # Writing the files needs no cloud; the check is worth a warning, not a refusal.
        return [], [
            f"warning: the project's quotas were not checked: the cloud could not say what "
            f"it holds ({error}). Check the class's credentials in this shell (OS_CLOUD and "
            "clouds.yaml, or its openrc file) and run `./chi-persist class write` again to have "
            "them checked"
        ]
    notes = [f"warning: quota not checked: {unread}" for unread in limits.unread]
    demands = []
    for student in students:
        settings = student_settings(student)
        volume_now = holdings.volumes.get(settings.volume_name)
        demand = quotas.demand_of(settings, holdings, volume_now)
        demands.append(demand)
        notes += [f"note: student {student.index} ({student.netid}): {n}" for n in demand.notes]
    problems, warnings = quotas.roster_check(limits, demands)
    project = cloud.project_id()
    problems = [f"project {project}'s quotas: {problem}" for problem in problems]
    notes += [f"warning: project {project}'s quotas: {warning}" for warning in warnings]
    if not problems:
        total = sum(demands, quotas.Demand())
        fits = ", ".join(
            f"{quotas.LABELS[name].split(' (')[0]} {limits.quotas[name].used}+"
            f"{getattr(total, name)} of {limits.quotas[name].limit}"
            for name in quotas.PERSISTENT
            if name in limits.quotas and limits.quotas[name].limit >= 0
        )
        notes.append(f"quotas: the roster fits project {project}'s quotas ({fits})")
    return problems, notes


# How a student deletes by hand what a leak report lists.
DELETE_COMMANDS = {
    "server": "openstack server delete {id}",
    "port": "openstack port delete {id}",
    "floating IP": "openstack floating ip delete {id}",
    "security group": "openstack security group delete {id}",
    "lease": "openstack reservation lease delete {id}",
    "volume": "openstack volume show {id}   (it may hold a student's data: look first)",
}


def known_ids(netid: str) -> set[str] | None:
    """The ids in the stack state this machine has for the student's stack; None without one."""
    try:
        export = export_state(netid)
    except CommandError:
        return None
    resources = (export.get("deployment") or {}).get("resources") or []
    return {str(r.get(key)) for r in resources for key in ("id", "importID") if r.get(key)}


def leak_report(students: Sequence[Student]) -> int:
    """Read-only: the cloud resources carrying a roster student's owner key that no stack
    state here holds (a killed `up`, a lost laptop, a stack deleted without its resources)."""
    from components.cloud_inventory import InventoryFailed, project_resources
    from components.openstack_api import CloudUnavailable, OpenStack

    try:
        resources = project_resources(OpenStack())
    except (CloudUnavailable, InventoryFailed) as error:
        raise CommandError(
            f"the project could not be read: {error}",
            "fix: give this shell the class's credentials (OS_CLOUD with clouds.yaml, or "
            "`source` the openrc file), then run `./chi-persist class leaks` again",
            exit_code=EXIT_FAILED,
        ) from None
    owners = {f"{student.netid}/{student.netid}": student for student in students}
    leaks = 0
    for student in students:
        known = known_ids(student.netid)
        theirs = [r for r in resources if r.found.owner == f"{student.netid}/{student.netid}"]
        where = "no stack state here" if known is None else f"not in stack {student.netid}'s state"
        for resource in theirs:
            if known is not None and resource.found.id in known:
                continue
            leaks += 1
            command = DELETE_COMMANDS[resource.kind].format(id=resource.found.id)
            print(
                f"leak: {student.netid}: {resource.kind} {resource.found.described()}: {where}; "
                f"{command}"
            )
    others = sorted({r.found.owner for r in resources if r.found.owner not in owners})
    print(
        f"class: {leaks} resource{'s' if leaks != 1 else ''} of the roster's "
        f"{len(students)} students in no stack state here"
        + (f"; resources of stacks not in the roster: {', '.join(others)}" if others else "")
    )
    return EXIT_OK


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


# An existing stack file keeps every key the roster does not set, secrets included.
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
    if arguments.leaks and not problems:
        return leak_report(students)
    outcomes: list[Outcome] = []
    quota_notes: list[str] = []
    if not problems and not arguments.no_quota_check:
        problems, quota_notes = check_project_quotas(students)
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

    for note in quota_notes:
        print(note)
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
        print(f"class: dry run, nothing written; would be: {summary}")
    else:
        print(f"class: {summary} in {directory}")
        print(
            "next: each student, with their Pulumi.<netid>.yaml in the project directory, runs "
            "`./chi-persist init NETID --key-pair KEY_PAIR` then `pulumi up --stack NETID`"
        )
    return EXIT_OK


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist class write` and `chi-persist class leaks`."""
    return run_main(lambda: run(arguments))
