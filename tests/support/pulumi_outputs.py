"""A stand-in for the Pulumi CLI that answers only `pulumi stack output`, from a fixture.

It is put first on PATH; every call is recorded with its arguments and working
directory. Stacks, the selected stack and per-stack errors come from a JSON file
the test writes with `set`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAND_IN_PULUMI = """\
#!{python}
# Stand-in for the Pulumi CLI: answers `stack output` from a fixture file.
import json, os, sys
fixture = json.load(open({fixture!r}))
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
arguments = sys.argv[1:]
if arguments[:2] != ["stack", "output"]:
    sys.exit("stand-in pulumi: unexpected call " + " ".join(arguments))
stack = arguments[arguments.index("--stack") + 1] if "--stack" in arguments else None
stack = stack or fixture.get("selected")
if stack is None:
    print("error: no stack selected; please use `pulumi stack select`", file=sys.stderr)
    sys.exit(255)
if stack in fixture.get("errors", {{}}):
    print("error: " + fixture["errors"][stack], file=sys.stderr)
    sys.exit(255)
if stack not in fixture["stacks"]:
    print(f"error: no stack named '{{stack}}' found", file=sys.stderr)
    sys.exit(255)
print(json.dumps(fixture["stacks"][stack], indent=4))
"""


class StackOutputPulumi:
    """A `pulumi` executable on PATH whose stacks and answers come from a fixture."""

    def __init__(self, directory: Path) -> None:
        self.bin_dir = directory / "bin"
        self.bin_dir.mkdir()
        self.fixture = directory / "pulumi-fixture.json"
        self.log = directory / "pulumi-calls.jsonl"
        self.set(stacks={})
        executable = self.bin_dir / "pulumi"
        executable.write_text(
            STAND_IN_PULUMI.format(
                python=sys.executable, fixture=str(self.fixture), log=str(self.log)
            )
        )
        executable.chmod(0o755)

    def set(self, stacks: dict, selected: str | None = None, errors: dict | None = None) -> None:
        self.fixture.write_text(
            json.dumps({"stacks": stacks, "selected": selected, "errors": errors or {}})
        )

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
