"""The commands the README shows, as a student would type them: its shell blocks by section,
split into simple commands, with the placeholders filled in."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO_ROOT

README = REPO_ROOT / "README.md"
TESTS_README = REPO_ROOT / "tests" / "README.md"
# What the README's placeholders stand for when a test runs its commands.
EXAMPLE_NETID = "ab1234"
OPERATORS = {"|", "||", "&&", ";", "&"}
REDIRECTIONS = {"<", ">", ">>", "2>", "2>&1", ">&2"}
PLACEHOLDER = re.compile(r"<([^<>\s][^<>\n]*)>")


@dataclass(frozen=True)
class Shown:
    """One command line the documentation shows, and where."""

    where: str
    """The file and section, for messages."""
    line: str
    """As written, continuation lines joined, the trailing comment dropped."""


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, text) of each section (any level), code blocks kept whole."""
    found: list[tuple[str, list[str]]] = [("(top)", [])]
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,4} ", line):
            found.append((line.lstrip("# ").strip(), []))
        found[-1][1].append(line)
    return [(heading, "\n".join(lines)) for heading, lines in found]


def section(text: str, heading: str) -> str:
    """The text of the first section whose heading starts with `heading`."""
    for name, body in sections(text):
        if name.startswith(heading):
            return body
    raise AssertionError(f"no section {heading!r}")


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S)


def command_lines(block: str) -> list[str]:
    """The block's commands: continuations joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    lines = []
    for raw in joined.splitlines():
        line = strip_comment(raw).strip()
        if line:
            lines.append(line)
    return lines


def strip_comment(line: str) -> str:
    """The line without a trailing `# ...` that is outside quotes."""
    quote = ""
    for index, character in enumerate(line):
        if quote:
            if character == quote:
                quote = ""
        elif character in "'\"":
            quote = character
        elif character == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def shown(path: Path = README) -> list[Shown]:
    """Every command line of the shell blocks of `path`, with its section."""
    found = []
    for heading, body in sections(path.read_text()):
        for block in shell_blocks(body):
            for line in command_lines(block):
                found.append(Shown(f"{path.relative_to(REPO_ROOT)}: {heading}", line))
    return found


def inline_commands(path: Path = README) -> list[Shown]:
    """Inline code spans that are `./chi-persist ...` or `pulumi <command> ...` lines."""
    found = []
    for heading, body in sections(path.read_text()):
        prose = re.sub(r"```.*?```", "", body, flags=re.S)
        for span in re.findall(r"`([^`\n]+)`", prose):
            span = span.replace("\\|", "|")
            if re.match(r"^(\./chi-persist|pulumi) [a-z]", span):
                found.append(Shown(f"{path.relative_to(REPO_ROOT)}: {heading} (inline)", span))
    return found


def fill(line: str, netid: str = EXAMPLE_NETID, **values: str) -> str:
    """The line with its placeholders filled: `<netid>` by `netid`, `<key pair name>` by
    values["key_pair"] and so on (spaces as underscores), any other by `x`; `…` by `x`."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip().replace(" ", "_").replace("'", "")
        if name == "netid":
            return netid
        return values.get(name, "x")

    return PLACEHOLDER.sub(value, line).replace("…", "x")


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a filled line, as argv lists: split at |, &&, ; and ||,
    redirections dropped; a `$(...)` inside double quotes stays one word, and the
    commands inside it come after the line's own."""
    inner = [
        command
        for substitution in re.findall(r"\$\(([^()]*)\)", line)
        for command in simple_commands(substitution)
    ]
    lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
            continue
        if token in OPERATORS:
            commands.append([])
        elif token in REDIRECTIONS or token in {"<<", "2"}:
            skip_next = token in REDIRECTIONS and token not in {"2>&1", ">&2"}
        else:
            commands[-1].append(token)
    return [command for command in commands if command] + inner


def quickstart() -> list[str]:
    """The quickstart's command lines, in order, as written."""
    blocks = shell_blocks(section(README.read_text(), "Quickstart"))
    assert blocks, "the README's Quickstart has no sh block"
    return [line for block in blocks for line in command_lines(block)]
