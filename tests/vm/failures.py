"""The rehearsal's one error: which phase failed, what went wrong, and the output that shows it."""

from __future__ import annotations

from collections.abc import Mapping

TAIL_LINES = 40


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a text."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class RehearsalError(Exception):
    """A phase of the rehearsal failed; the message names it and shows the relevant output."""

    def __init__(
        self,
        phase: str,
        problem: str,
        output: str | None = None,
        *,
        logs: Mapping[str, str] | None = None,
    ) -> None:
        self.phase = phase
        self.problem = problem
        sections = [f"rehearsal failed in phase '{phase}': {problem}"]
        named = dict(logs or {})
        if output is not None:
            named = {"output": output, **named}
        for label, text in named.items():
            shown = tail(text)
            count = len(shown.splitlines())
            body = shown if shown else "(empty)"
            sections.append(f"--- {label}, last {count} lines ---\n{body}")
        super().__init__("\n".join(sections))
