"""chi-persist init: create (or select) a student's stack and set its config through Pulumi.

Every value is checked with the program's own rules (components.settings) before
Pulumi is called at all, so a stack is never left half-configured by a typo.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chi_persist_tools.command_line import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    HOW_TO_UNLOCK_SECRETS,
    PROJECT_DIR,
    CommandError,
    PulumiFailed,
    passphrase_is_set,
    pulumi_command_text,
    run_main,
    run_pulumi,
)
from chi_persist_tools.stack_files import StackFileProblem, config_key, read_stack_file, stack_file
from components.settings import (
    CONFIG_KEYS,
    DEFAULT_PRIVATE_KEY_PATH,
    Problem,
    SettingsError,
    check_value,
    expand_key_path,
    validate,
)

DESCRIPTION = """\
Create the Pulumi stack NETID (or select it, if it exists) and set its config:
your netID, the name of your key pair at KVM@TACC, and optionally the private key
file, the networks allowed to reach the server, the volume you already have from
the tutorial, and a reservation of your own. Every value is checked with the same
rules `pulumi up` applies, before anything is changed. No reservation is needed:
the stack makes its own KVM@TACC lease when you run `pulumi up`.
"""

EPILOG = f"""\
the private key (what `pulumi up` logs in to the server with), first found of:
  1. the secret chi-persist:sshPrivateKey, if the stack already has it;
  2. the file given with --private-key-path (it must exist), else {DEFAULT_PRIVATE_KEY_PATH};
  3. your ssh agent (SSH_AUTH_SOCK): accepted with a warning, since the agent must
     still hold the key when you run `pulumi up`.
  A key is used alone. A passphrase-protected key needs the secret
  chi-persist:sshPrivateKeyPassword or an agent holding it. SSH_AUTH_SOCK must be unset
  or name a running agent: `pulumi up` stops if no agent answers there. To choose the
  method yourself: pulumi config set chi-persist:sshAuth key|agent|auto.

the tutorial's volume:
  If you followed the tutorial, you already have a volume block-persist-NETID with
  your data on it. Give its id with --existing-volume-id and `pulumi up` takes it
  over (imports it, protected) and mounts it as it is, instead of creating an empty
  one. Detach it from the tutorial's server first. Its id is printed by
    openstack volume show block-persist-NETID -f value -c id
  or shown in Horizon: Volumes > Volumes > the volume's page.

passphrase:
  The project keeps its state in ~/.pulumi on your machine, and that backend encrypts
  each stack's secrets with a passphrase. Pulumi runs here without a terminal, so it
  cannot ask for it: set PULUMI_CONFIG_PASSPHRASE (or PULUMI_CONFIG_PASSPHRASE_FILE,
  a file of mode 0600 holding it) before creating a stack, and keep the same value for
  every later pulumi command. An empty one is refused: it would protect nothing.

examples:
  export PULUMI_CONFIG_PASSPHRASE='a passphrase you will remember'
  ./chi-persist init ab1234 --key-pair ab1234-key
  ./chi-persist init ab1234 --key-pair ab1234-key --private-key-path ~/.ssh/id_rsa_chameleon \\
      --allowed-cidr 203.0.113.0/24 --allowed-cidr 198.51.100.7/32
  ./chi-persist init ab1234 --key-pair ab1234-key \\
      --existing-volume-id "$(openstack volume show block-persist-ab1234 -f value -c id)"
  pulumi up --stack ab1234

exit status:
  0  the stack exists and holds the given config
  1  a pulumi command failed (what pulumi said is shown)
  2  a value was wrong: nothing was changed
"""

# Each flag sets one config key; `label` is how the student typed it.
FLAG_KEYS = {
    "netid": ("NETID", "netid"),
    "key_pair": ("--key-pair", "keyPair"),
    "private_key_path": ("--private-key-path", "sshPrivateKeyPath"),
    "reservation": ("--reservation", "reservation"),
    "allowed_cidrs": ("--allowed-cidr", "allowedCidrs"),
    "existing_volume_id": ("--existing-volume-id", "existingVolumeId"),
}


@dataclass(frozen=True)
class Plan:
    """The checked values, in the order they are set, and how `pulumi up` will log in."""

    netid: str
    values: dict[str, Any]
    key_source: str
    notes: list[str]


def add_arguments(parser: argparse.ArgumentParser, parents: Sequence[Any] = ()) -> None:
    parser.add_argument("netid", metavar="NETID", help="your netID, e.g. ab1234; the stack's name")
    parser.add_argument(
        "--key-pair",
        metavar="NAME",
        required=True,
        help="name of your key pair at KVM@TACC (Horizon: Compute > Key Pairs)",
    )
    parser.add_argument(
        "--private-key-path",
        metavar="PATH",
        help=f"the key pair's private key file (default: {DEFAULT_PRIVATE_KEY_PATH})",
    )
    parser.add_argument(
        "--reservation",
        metavar="ID",
        help="only for a KVM@TACC lease you made yourself: its flavor id (a UUID); without "
        "it the stack makes its own lease of chi-persist:flavor",
    )
    parser.add_argument(
        "--allowed-cidr",
        metavar="CIDR",
        action="append",
        dest="allowed_cidrs",
        help="IPv4 network allowed to reach the server, e.g. 203.0.113.0/24; repeat for more "
        "(replaces the stack's list; default 0.0.0.0/0)",
    )
    parser.add_argument(
        "--existing-volume-id",
        metavar="ID",
        help="id (UUID) of your tutorial volume block-persist-NETID, to take it over with its "
        "data instead of creating a new volume",
    )


def _flag_problem(flag: str, value: Any, problem: Problem, fix: str) -> str:
    shown = ", ".join(map(str, value)) if isinstance(value, list) else value
    return f"{flag} {shown!r}: {problem.rule}; fix: {fix}"


def stored_key_path(path: str) -> str:
    """`~/...` stays as typed (it means the home of whoever runs pulumi); others become absolute."""
    if path == "~" or path.startswith("~/"):
        return path
    return os.path.abspath(path)


def check_arguments(arguments: argparse.Namespace, environ: Mapping[str, str]) -> Plan:
    """Check every value with the program's rules; CommandError listing all problems."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for attribute, (flag, key) in FLAG_KEYS.items():
        given = getattr(arguments, attribute)
        if given is None:
            continue
        normalised, problem = check_value(key, given)
        if problem is None and normalised is None:
            # An empty id (say, from a failed `$(openstack volume show ...)`) sets nothing.
            problems.append(
                f"{flag} '': empty; fix: give the volume's id, e.g. "
                f'{flag} "$(openstack volume show block-persist-{arguments.netid} -f value -c id)"'
            )
            continue
        if problem is None:
            values[key] = normalised
            continue
        spec = CONFIG_KEYS[key]
        if key == "netid":
            lowered = given.lower() if isinstance(given, str) else given
            example = lowered if check_value("netid", lowered)[1] is None else spec.example
            fix = f"give your netID in lowercase, e.g. ./chi-persist init {example} --key-pair NAME"
        elif key == "allowedCidrs":
            fix = f"give each network once, in CIDR form, e.g. {flag} {spec.example}"
        elif key == "existingVolumeId":
            fix = (
                f"give the volume's id, not its name, e.g. {flag} "
                f'"$(openstack volume show block-persist-{arguments.netid} -f value -c id)"'
            )
        else:
            fix = f"e.g. {flag} {spec.example}"
        problems.append(_flag_problem(flag, given, problem, fix))

    if "sshPrivateKeyPath" in values:
        values["sshPrivateKeyPath"] = stored_key_path(values["sshPrivateKeyPath"])
        path = expand_key_path(values["sshPrivateKeyPath"], environ.get("HOME"))
        if not path.is_file():
            problems.append(
                f"--private-key-path {arguments.private_key_path!r}: no such file ({path}); "
                "fix: give the private key of your key pair, e.g. "
                "--private-key-path ~/.ssh/id_rsa_chameleon"
            )

    netid = values.get("netid", arguments.netid)
    key_source = "file"
    notes: list[str] = []
    if not problems:
        key_source, key_problems, notes = _private_key_source(values, netid, environ)
        problems.extend(key_problems)
    if problems:
        raise CommandError(*problems, "nothing was changed", exit_code=EXIT_USAGE)

    key_path = values.get("sshPrivateKeyPath", DEFAULT_PRIVATE_KEY_PATH)
    if key_source == "agent" and not expand_key_path(key_path, environ.get("HOME")).exists():
        notes.append(
            f"warning: no private key file at {key_path}:"
            " `pulumi up` will log in to the server through your ssh agent (SSH_AUTH_SOCK), "
            f"which must then hold the private key of key pair {values['keyPair']!r}; "
            "or run again with --private-key-path PATH"
        )
    return Plan(netid=netid, values=values, key_source=key_source, notes=notes)


def _private_key_source(
    values: Mapping[str, Any], netid: str, environ: Mapping[str, str]
) -> tuple[str, list[str], list[str]]:
    """How `pulumi up` will log in, decided by settings.validate's own rule.

    Returns the key source ("config", "file" or "agent"), the problems that stop the
    command, and warnings. An ssh agent socket of this shell that does not answer is
    a warning when a key is there: it concerns the shell, not the stack.
    """
    path = stack_file(PROJECT_DIR, netid)
    try:
        existing = read_stack_file(path) or {}
    except StackFileProblem as problem:
        return (
            "file",
            [
                f"{path} {problem}; fix: correct it, or move it aside and run "
                "`./chi-persist init` again"
            ],
            [],
        )
    stack_config = existing.get("config") or {}
    secrets = {
        "private_key_set": config_key("sshPrivateKey") in stack_config,
        "password_set": config_key("sshPrivateKeyPassword") in stack_config,
    }
    try:
        settings = validate(dict(values), netid, environment=environ, **secrets)
        return settings.ssh_key_source, [], list(settings.ssh_notes)
    except SettingsError as error:
        problems = error.problems
    warnings: list[str] = []
    if problems and all(problem.key == "SSH_AUTH_SOCK" for problem in problems):
        without_agent = {name: value for name, value in environ.items() if name != "SSH_AUTH_SOCK"}
        try:
            settings = validate(dict(values), netid, environment=without_agent, **secrets)
        except SettingsError as without:
            problems = [*problems, *without.problems]
        else:
            warnings = [
                f"warning: {problem} (`pulumi up` run from this shell would stop here)"
                for problem in problems
            ]
            return settings.ssh_key_source, [], [*warnings, *settings.ssh_notes]
    found = []
    for problem in problems:
        if problem.key == "sshPrivateKey" and problem.rule.startswith("no private key found"):
            found.append(
                f"no private key: {problem.rule}; fix: run again with "
                "--private-key-path PATH (the private key of your key pair), or load the "
                "key into an ssh agent (`eval $(ssh-agent) && ssh-add PATH`)"
            )
        else:
            found.append(f"{problem}")
    return "file", found, []


def config_commands(plan: Plan) -> list[list[str]]:
    """The `pulumi config` calls that give the stack the planned values."""
    scope = ["--stack", plan.netid, "--non-interactive"]
    commands = []
    for key, value in plan.values.items():
        if key == "allowedCidrs":
            continue
        commands.append(["config", "set", config_key(key), str(value), *scope])
    cidrs = plan.values.get("allowedCidrs")
    if cidrs:
        # The list replaces the old one: items left over from a longer list would stay.
        commands.append(["config", "rm", config_key("allowedCidrs"), *scope])
        for index, cidr in enumerate(cidrs):
            commands.append(
                ["config", "set", "--path", f"{config_key('allowedCidrs')}[{index}]", cidr, *scope]
            )
    return commands


def stack_exists(netid: str) -> bool:
    """Whether the project has a stack named `netid`, from `pulumi stack ls --json`."""
    listing = run_pulumi(["stack", "ls", "--json", "--non-interactive"])
    try:
        stacks = json.loads(listing or "[]")
    except json.JSONDecodeError:
        raise CommandError(
            f"`pulumi stack ls --json` printed something that is not JSON: {listing[:200]!r}",
            "fix: check the Pulumi CLI with `pulumi version` (3.x is needed)",
            exit_code=EXIT_FAILED,
        ) from None
    names = {str(entry.get("name", "")).rsplit("/", 1)[-1] for entry in stacks}
    return netid in names


def run(arguments: argparse.Namespace, environ: Mapping[str, str]) -> int:
    plan = check_arguments(arguments, environ)
    netid = plan.netid
    exists = stack_exists(netid)
    if exists:
        print(f"init: stack {netid} exists: selecting it and updating its config")
    else:
        print(f"init: stack {netid} does not exist yet: creating it")
    passphrase_set = passphrase_is_set(dict(environ))
    if not passphrase_set:
        print(
            "note: PULUMI_CONFIG_PASSPHRASE is not set; creating a stack and every "
            f"`pulumi up` need it: {HOW_TO_UNLOCK_SECRETS}"
        )

    commands = [["stack", "select", "--create", netid, "--non-interactive"]]
    commands += config_commands(plan)
    for command in commands:
        print(f"  {pulumi_command_text(command)}", flush=True)
        try:
            run_pulumi(command)
        except PulumiFailed as failure:
            if failure.mentions("passphrase"):
                failure.with_fix(
                    f"fix: {HOW_TO_UNLOCK_SECRETS}; then run `./chi-persist init` again"
                )
            else:
                failure.with_fix(
                    "fix: correct what pulumi reports, then run `./chi-persist init` again "
                    "(it is safe to repeat)"
                )
            raise
    for note in plan.notes:
        print(note)
    key_path = plan.values.get("sshPrivateKeyPath", DEFAULT_PRIVATE_KEY_PATH)
    source = {
        "file": f"the private key file {key_path}",
        "agent": "your ssh agent",
        "config": "the stack's secret chi-persist:sshPrivateKey",
    }[plan.key_source]
    print(f"init: stack {netid} is ready; `pulumi up` will log in with {source}")
    print(f"next: pulumi up --stack {netid}")
    return EXIT_OK


def run_command(arguments: argparse.Namespace) -> int:
    """`chi-persist init`."""
    return run_main(lambda: run(arguments, os.environ))
