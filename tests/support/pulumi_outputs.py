"""The stand-in Pulumi CLI (tests/support/bin/pulumi) set up to answer `pulumi stack output`.

Commands under test may run with an environment of their own, so the `pulumi`
put first on PATH here is a small wrapper that points the shared stand-in at a
private backend; every call is recorded with its arguments and working directory.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from tests.support.stand_in_pulumi import STAND_IN_BIN


class StackOutputPulumi:
    """A `pulumi` executable on PATH whose stacks, outputs and failures the test sets."""

    def __init__(self, directory: Path) -> None:
        self.bin_dir = directory / "bin"
        self.bin_dir.mkdir()
        self.backend = directory / "pulumi-backend"
        self.log = directory / "pulumi-calls.jsonl"
        self.set(stacks={})

    def set(self, stacks: dict, selected: str | None = None, failure: str | None = None) -> None:
        """Stacks by name with their outputs; `failure` makes `stack output` fail with it."""
        shutil.rmtree(self.backend, ignore_errors=True)
        for directory in ("stacks", "outputs"):
            (self.backend / directory).mkdir(parents=True)
        for name, outputs in stacks.items():
            export = {"version": 3, "deployment": {"resources": []}}
            (self.backend / "stacks" / f"{name}.json").write_text(json.dumps(export))
            (self.backend / "outputs" / f"{name}.json").write_text(json.dumps(outputs))
        if selected:
            (self.backend / "current").write_text(selected)
        failures = {"stack output": f"error: {failure}"} if failure else {}
        environment = {
            "STAND_IN_PULUMI_HOME": str(self.backend),
            "STAND_IN_PULUMI_LOG": str(self.log),
            "STAND_IN_PULUMI_FAIL": json.dumps(failures),
        }
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in environment.items())
        executable = self.bin_dir / "pulumi"
        executable.write_text(
            "#!/bin/sh\n"
            f"export {exports}\n"
            f'exec {shlex.quote(sys.executable)} {shlex.quote(str(STAND_IN_BIN / "pulumi"))} "$@"\n'
        )
        executable.chmod(0o755)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
