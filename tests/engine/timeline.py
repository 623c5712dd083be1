"""What a `pulumi up` spent its time on, from the engine's own event log.

`pulumi up --event-log FILE` writes one engine event per line (sdk/go/common/apitype
events.go: `sequence`, `timestamp` in whole Unix seconds, and one event body). A step
of a resource starts with its `resourcePreEvent` and ends with its `resOutputsEvent`
(or `resOpFailedEvent`), both carrying the step's `op` and `urn`; preview events
(`planning: true`), `same` steps (nothing done) and what has no provider (components,
the stack, the providers themselves) are left out.

The critical path is walked back from the step that ended last: each step's
predecessor is the step it depends on (from the stack's state, when given) that ended
last before it started, and a step none of whose dependencies ran is where the path
begins; for a resource the state does not list, the step that ended last before it.
Time between a predecessor's end and the step's start is waiting (the engine's own
work, the program's callbacks); everything not on the path overlapped with it.

The same log, or the JSON of `pulumi preview --json --show-replacement-steps`, also gives
the engine's steps in the order it took them (`steps_of_update`, `steps_of_preview`): what
the engine itself does when a change replaces resources, with its delete-before-replace
ordering, rather than a model of it.

    python -m tests.engine.timeline EVENT_LOG [STACK_EXPORT_JSON]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORED_OPS = {"same", "read", "discard", "import"}


@dataclass
class Step:
    urn: str
    op: str
    start: int
    end: int | None = None
    failed: bool = False

    @property
    def name(self) -> str:
        """The resource's name, and its type's last part: `node-server (Instance)`."""
        parts = self.urn.split("::")
        kind = parts[-2].split("$")[-1].split(":")[-1] if len(parts) >= 2 else "?"
        return f"{parts[-1]} ({kind})"

    @property
    def seconds(self) -> int:
        return (self.end if self.end is not None else self.start) - self.start


@dataclass
class Timeline:
    steps: list[Step]
    started: int
    ended: int
    dependencies: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @property
    def seconds(self) -> int:
        return self.ended - self.started

    def critical_path(self) -> list[tuple[Step, int]]:
        """(step, seconds waited before it), first step first."""
        finished = [step for step in self.steps if step.end is not None]
        if not finished:
            return []
        current = max(finished, key=lambda step: (step.end, step.start))
        path: list[tuple[Step, int]] = []
        # Whole seconds: steps of no length at the same second end "before" each other.
        seen = {id(current)}
        while True:
            before = [
                step
                for step in finished
                if id(step) not in seen and step.end is not None and step.end <= current.start
            ]
            if current.urn in self.dependencies:
                # Its dependencies are known: a step with none among these is where it began.
                known = self.dependencies[current.urn]
                candidates = [s for s in before if s.urn in known or s.urn == current.urn]
            else:
                candidates = before
            if not candidates:
                path.append((current, current.start - self.started))
                break
            previous = max(candidates, key=lambda step: (step.end, step.start))
            assert previous.end is not None
            seen.add(id(previous))
            path.append((current, current.start - previous.end))
            current = previous
        path.reverse()
        return path

    def table(self) -> str:
        """Markdown: every step with its start, duration and whether it was on the path."""
        on_path = {id(step) for step, _ in self.critical_path()}
        lines = [
            "| step | op | starts at (s) | seconds | critical path |",
            "|---|---|---:|---:|---|",
        ]
        for step in sorted(self.steps, key=lambda step: (step.start, step.end or 0)):
            mark = "yes" if id(step) in on_path else ""
            if step.failed:
                mark = (mark + " failed").strip()
            lines.append(
                f"| {step.name} | {step.op} | {step.start - self.started} | {step.seconds} "
                f"| {mark} |"
            )
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        path = self.critical_path()
        on_path = {id(step) for step, _ in path}
        return {
            "seconds": self.seconds,
            "critical_path": [
                {"step": step.name, "op": step.op, "seconds": step.seconds, "waited": waited}
                for step, waited in path
            ],
            "waited_seconds": sum(waited for _, waited in path),
            "overlapped": sorted(
                {step.name for step in self.steps if id(step) not in on_path and step.seconds > 0}
            ),
        }


# The engine's step kinds (pkg/resource/deploy/step.go), as a change of the resource: a
# replacement is a delete of the old (`delete-replaced`) and a create of the new
# (`create-replacement`); `replace` is the engine's logical marker between them and does
# nothing, and `same`, `read`, `refresh` change nothing.
CHANGE_OF_OP = {
    "create": "create",
    "create-replacement": "create",
    "delete": "delete",
    "delete-replaced": "delete",
    "update": "update",
}


@dataclass(frozen=True)
class EngineStep:
    """One step the engine took (or plans) on one resource."""

    op: str
    urn: str
    old_inputs: Mapping[str, Any] = field(default_factory=dict)
    new_inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The resource's name, the last part of its URN: `provisioning-clean-stop`."""
        return self.urn.rsplit("::", 1)[-1]

    @property
    def type(self) -> str:
        """The resource's type token, from its URN (a child's URN names its parent's first)."""
        return self.urn.split("::")[-2].split("$")[-1]

    @property
    def change(self) -> str | None:
        """`create`, `delete` or `update` (a replacement is a delete and a create), or None
        for a step that changes nothing."""
        return CHANGE_OF_OP.get(self.op)

    def __str__(self) -> str:
        return f"{self.change or self.op} {self.name}"


def steps_of_update(events: Iterable[Mapping[str, Any]]) -> list[EngineStep]:
    """The steps a `pulumi up` took that change a resource, in the order the engine started
    them (each step's resourcePreEvent in its `--event-log`; the preview's are left out, and
    so are those of what has no provider: components, the stack, the providers themselves)."""
    steps = []
    for event in events:
        body = event.get("resourcePreEvent")
        if not body or body.get("planning"):
            continue
        metadata = body.get("metadata") or {}
        if CHANGE_OF_OP.get(metadata.get("op", "")) is None or not metadata.get("provider"):
            continue
        steps.append(
            EngineStep(
                op=metadata["op"],
                urn=metadata["urn"],
                old_inputs=(metadata.get("old") or {}).get("inputs") or {},
                new_inputs=(metadata.get("new") or {}).get("inputs") or {},
            )
        )
    return steps


def steps_of_preview(document: Mapping[str, Any]) -> list[EngineStep]:
    """The steps `pulumi preview --json --show-replacement-steps` plans that change a resource,
    in its order (without --show-replacement-steps a replacement is one `replace` step); what
    has no provider is left out, as above."""
    return [
        EngineStep(
            op=step["op"],
            urn=step["urn"],
            old_inputs=(step.get("oldState") or {}).get("inputs") or {},
            new_inputs=(step.get("newState") or {}).get("inputs") or {},
        )
        for step in document.get("steps") or []
        if CHANGE_OF_OP.get(step.get("op", "")) is not None and step.get("provider")
    ]


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON event: {error}") from None
    return events


def dependencies_of(export: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """URN -> the URNs it depends on, from `pulumi stack export`."""
    result = {}
    for resource in export.get("deployment", {}).get("resources") or []:
        depends = set(resource.get("dependencies") or [])
        for urns in (resource.get("propertyDependencies") or {}).values():
            depends.update(urns or [])
        result[resource["urn"]] = frozenset(depends)
    return result


def timeline(
    events: Iterable[Mapping[str, Any]], dependencies: Mapping[str, frozenset[str]] | None = None
) -> Timeline:
    open_steps: dict[tuple[str, str], Step] = {}
    steps: list[Step] = []
    times = []
    for event in events:
        stamp = event.get("timestamp")
        if not isinstance(stamp, int):
            continue
        times.append(stamp)
        for key, failed in (
            ("resourcePreEvent", None),
            ("resOutputsEvent", False),
            ("resOpFailedEvent", True),
        ):
            body = event.get(key)
            if not body or body.get("planning"):
                continue
            metadata = body.get("metadata") or {}
            op, urn = metadata.get("op"), metadata.get("urn")
            # Components, the stack and providers have no provider: no work of their own.
            if not op or not urn or op in IGNORED_OPS or not metadata.get("provider"):
                continue
            if failed is None:
                step = Step(urn=urn, op=op, start=stamp)
                open_steps[(urn, op)] = step
                steps.append(step)
            elif (urn, op) in open_steps:
                step = open_steps.pop((urn, op))
                step.end, step.failed = stamp, failed
    if not times:
        raise ValueError("no timed engine events: was the log written by `pulumi up --event-log`?")
    return Timeline(steps, min(times), max(times), dependencies or {})


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.rsplit("\n\n", 1)[-1].strip(), file=sys.stderr)
        return 2
    dependencies = dependencies_of(json.loads(Path(argv[1]).read_text())) if len(argv) == 2 else {}
    result = timeline(read_events(Path(argv[0])), dependencies)
    print(result.table())
    print()
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
