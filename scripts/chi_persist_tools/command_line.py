"""What chi-persist's subcommands share: errors without tracebacks, and the Pulumi CLI.

Every Pulumi call runs in the project directory (so its Pulumi.yaml and stack
files are used, wherever the command was started), with an argument list and no
shell, and without a terminal to prompt on.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[2]

EXIT_OK = 0
EXIT_FAILED = 1  # a Pulumi call failed, or the stack is not in a state the command can handle
EXIT_USAGE = 2  # wrong arguments or input: nothing was changed

PASSPHRASE_VARIABLES = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")

# How much of a long pulumi command's output is passed through: "quiet" (only when it
# fails), "normal" (as it comes) or "verbose" (as it comes, with pulumi's own details).
VERBOSITY = "normal"


def set_verbosity(*, verbose: bool, quiet: bool) -> None:
    global VERBOSITY
    VERBOSITY = "verbose" if verbose else "quiet" if quiet else "normal"


class CommandError(Exception):
    """A failure to report as `error:` lines, with what Pulumi printed, and an exit status."""

    def __init__(
        self,
        *lines: str,
        exit_code: int = EXIT_USAGE,
        output: str = "",
    ) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = list(lines)
        self.exit_code = exit_code
        self.output = output

    def with_lines(self, *lines: str) -> CommandError:
        """The same error with more lines: what the caller knows of the outcome, its fix."""
        self.lines.extend(lines)
        return self


class PulumiFailed(CommandError):
    """A Pulumi CLI call exited non-zero; `output` holds what it printed."""

    def __init__(self, arguments: Sequence[str], returncode: int, output: str) -> None:
        self.arguments = list(arguments)
        self.returncode = returncode
        super().__init__(
            f"`{pulumi_command_text(arguments)}` failed (exit status {returncode}); pulumi said:",
            exit_code=EXIT_FAILED,
            output=output,
        )
        lock = lock_fix(output, _stack_of(arguments))
        if lock is not None:
            self.lines.append(lock)

    def mentions(self, text: str) -> bool:
        return text.lower() in self.output.lower()

    def with_fix(self, *lines: str) -> PulumiFailed:
        self.lines.extend(lines)
        return self


# What the file backend says of a stack another pulumi holds (pkg/backend/diy/lock.go,
# checkForLock): "...: created by <user>@<host> (pid <pid>) at <time>".
LOCK_HOLDER = re.compile(r"created by (?P<user>[^@\s]+)@(?P<host>\S+) \(pid (?P<pid>\d+)\)")


def lock_fix(output: str, stack: str | None) -> str | None:
    """For a stack locked by another `pulumi`: whether that process still runs (it can be told
    only on this machine), and the one command that clears a lock it left behind."""
    if "currently locked" not in output:
        return None
    holder = LOCK_HOLDER.search(output)
    cancel = f"pulumi cancel --stack {stack} --yes" if stack else "pulumi cancel --yes"
    if holder is None:
        return f"fix: if no other pulumi command runs on this stack any more: `{cancel}`"
    pid, host = int(holder["pid"]), holder["host"]
    if host not in (socket.gethostname(), socket.getfqdn()):
        return (
            f"fix: the lock is held by a pulumi on {host} (pid {pid}); if nothing runs there "
            f"any more (a closed laptop, a dropped session), clear it: `{cancel}`"
        )
    if _running(pid):
        return f"fix: pulumi (pid {pid}) is still running on this stack here: let it finish"
    return (
        f"fix: the lock was left by a pulumi (pid {pid}) that no longer runs (an interrupted "
        f"`pulumi up`): clear it with `{cancel}`, then run this again"
    )


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stack_of(arguments: Sequence[str]) -> str | None:
    for index, argument in enumerate(arguments[:-1]):
        if argument in ("--stack", "-s"):
            return arguments[index + 1]
    return None


def pulumi_command_text(arguments: Sequence[str]) -> str:
    """How a student would type the call."""
    return shlex.join(["pulumi", *arguments])


def report(error: CommandError, stream=None) -> None:
    stream = stream or sys.stderr
    head, *rest = error.lines or ["failed"]
    print(f"error: {head}", file=stream)
    for line in error.output.strip().splitlines():
        print(f"    {line}", file=stream)
    for line in rest:
        print(f"error: {line}", file=stream)


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body; report CommandError without a traceback."""
    try:
        return body()
    except CommandError as error:
        sys.stdout.flush()
        report(error)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def pulumi_executable() -> str:
    executable = shutil.which("pulumi")
    if executable is None:
        raise CommandError(
            "the Pulumi CLI (`pulumi`) is not on PATH",
            "fix: install it (https://www.pulumi.com/docs/install/), open a new shell, "
            "and check with `pulumi version`",
            exit_code=EXIT_FAILED,
        )
    return executable


def run_pulumi(arguments: Sequence[str]) -> str:
    """Run `pulumi ARGUMENTS` in the project directory; its stdout, or PulumiFailed."""
    check_passphrase(os.environ)
    completed = subprocess.run(
        [pulumi_executable(), *arguments],
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        said = "\n".join(part for part in (completed.stderr, completed.stdout) if part.strip())
        raise PulumiFailed(arguments, completed.returncode, said or "(nothing)")
    return completed.stdout


def stream_pulumi(arguments: Sequence[str], stream=None) -> None:
    """Run a long Pulumi call, passing its output through as it comes; PulumiFailed on error."""
    stream = stream or sys.stdout
    check_passphrase(os.environ)
    if VERBOSITY == "verbose" and arguments and arguments[0] in ("up", "destroy", "refresh"):
        arguments = [*arguments, "--diff"]
    process = subprocess.Popen(
        [pulumi_executable(), *arguments],
        cwd=PROJECT_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            if VERBOSITY != "quiet":
                stream.write(f"  | {line}")
                stream.flush()
    except KeyboardInterrupt:
        # Pulumi got the same interrupt and is cancelling cleanly: let it finish.
        print("interrupted: waiting for pulumi to stop cleanly", file=sys.stderr, flush=True)
        process.wait()
        raise
    returncode = process.wait()
    if returncode != 0:
        tail = "".join(lines[-40:])
        raise PulumiFailed(arguments, returncode, tail or "(nothing)")


def passphrase_is_set(environ: dict[str, str] | None = None) -> bool:
    """Whether Pulumi can unlock a passphrase-protected stack without asking."""
    environ = os.environ if environ is None else environ
    return any(name in environ for name in PASSPHRASE_VARIABLES)


UNLOCK_FILE_FIX = (
    "fix: keep the passphrase in a file only you can read, and name it: umask 077 && "
    "printf '%s\\n' '<passphrase>' > ~/.pulumi-passphrase && unset PULUMI_CONFIG_PASSPHRASE && "
    "export PULUMI_CONFIG_PASSPHRASE_FILE=~/.pulumi-passphrase (a stack made with an empty "
    "passphrase gets a real one with `pulumi stack change-secrets-provider passphrase --stack "
    "<netid>`)"
)


def check_passphrase(environ: Mapping[str, str]) -> None:
    """Refuse a passphrase that protects nothing, before any pulumi call uses it.

    Pulumi takes PULUMI_CONFIG_PASSPHRASE whenever it is set, even empty, before
    PULUMI_CONFIG_PASSPHRASE_FILE (pkg/secrets/passphrase/manager.go, readPassphrase): an
    empty one encrypts (or reads) the stack's secrets with nothing. A passphrase file
    others can read, or that holds only blanks, is no better.
    """
    phrase = environ.get("PULUMI_CONFIG_PASSPHRASE")
    if phrase is not None:
        if not phrase.strip():
            raise CommandError(
                "PULUMI_CONFIG_PASSPHRASE is set but empty: Pulumi would encrypt the stack's "
                "secrets (the SSH key, the platform's credentials) with no passphrase at all",
                UNLOCK_FILE_FIX,
            )
        return
    name = environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if not name:
        return
    path = Path(name)
    try:
        status = path.stat()
        text = path.read_text()
    except OSError as error:
        raise CommandError(
            f"PULUMI_CONFIG_PASSPHRASE_FILE={name}: the file cannot be read ({error.strerror})",
            UNLOCK_FILE_FIX,
        ) from None
    if status.st_mode & 0o077:
        raise CommandError(
            f"PULUMI_CONFIG_PASSPHRASE_FILE={name} has mode {oct(status.st_mode & 0o777)[2:]}: "
            "others on this machine can read the passphrase of the stack's secrets",
            f"fix: chmod 600 {shlex.quote(name)}, then run this again",
        )
    if not text.strip():
        raise CommandError(
            f"PULUMI_CONFIG_PASSPHRASE_FILE={name} is empty: Pulumi would encrypt the stack's "
            "secrets with no passphrase at all",
            UNLOCK_FILE_FIX,
        )


HOW_TO_UNLOCK_SECRETS = (
    "export PULUMI_CONFIG_PASSPHRASE='<passphrase>' (or PULUMI_CONFIG_PASSPHRASE_FILE=<a file "
    "of mode 0600 holding it>): the local state backend encrypts the stack's secrets with it, "
    "and every pulumi command on the stack needs the same one"
)


def unknown_stack_fix(stack: str) -> str:
    return (
        f"fix: there is no stack named {stack!r}: check the name with `pulumi stack ls`, "
        f"or create it with `./chi-persist init {stack} --key-pair NAME`"
    )


def export_state(stack: str) -> dict[str, Any]:
    arguments = ["stack", "export", "--stack", stack, "--non-interactive"]
    try:
        text = run_pulumi(arguments)
    except PulumiFailed as failure:
        if failure.mentions("no stack named"):
            raise failure.with_fix(unknown_stack_fix(stack)) from None
        if failure.mentions("passphrase"):
            raise failure.with_fix(f"fix: {HOW_TO_UNLOCK_SECRETS}") from None
        raise
    try:
        export = json.loads(text)
    except json.JSONDecodeError:
        raise CommandError(
            f"`{pulumi_command_text(arguments)}` printed something that is not JSON: "
            f"{text[:200]!r}",
            "fix: check the Pulumi CLI with `pulumi version` (3.x is needed)",
            exit_code=EXIT_FAILED,
        ) from None
    if not isinstance(export, dict):
        raise CommandError(
            f"`{pulumi_command_text(arguments)}` printed a {type(export).__name__}, "
            "not a deployment",
            exit_code=EXIT_FAILED,
        )
    return export


def selected_stack(command: str) -> str:
    listing = run_pulumi(["stack", "ls", "--json", "--non-interactive"])
    try:
        stacks = json.loads(listing or "[]")
    except json.JSONDecodeError:
        stacks = []
    for entry in stacks:
        if isinstance(entry, dict) and entry.get("current"):
            return str(entry.get("name", "")).rsplit("/", 1)[-1]
    raise CommandError(
        "no stack is selected",
        f"fix: give it: ./chi-persist {command} --stack NETID (`pulumi stack ls` lists the stacks)",
        exit_code=EXIT_USAGE,
    )


def span_text(left: timedelta) -> str:
    """A duration as a student reads it: `2 d 3 h`, `3 h 5 min` or `42 min` (never negative)."""
    minutes = max(0, int(left.total_seconds()) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min"
