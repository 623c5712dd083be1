"""Stand-in commands put first on PATH, for scripts that would otherwise need a
Docker engine or a real package manager: each records how it was called.

Every call is one JSON line in a log file: the command's name, its arguments,
the time, and the environment variables the test asked to see.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# A stand-in's body: Python, run by the test's own interpreter. `record()`
# writes the call; `state` is a directory where stand-ins keep what they did.
_PRELUDE = """\
import json, os, sys, time
from pathlib import Path
state = Path({state!r})
def record():
    entry = {{
        "command": {name!r},
        "argv": sys.argv[1:],
        "time": time.time(),
        "env": {{key: os.environ.get(key) for key in {watched!r}}},
    }}
    with open({log!r}, "a") as log:
        log.write(json.dumps(entry) + "\\n")
"""


@dataclass
class StandIns:
    """A directory of stand-in commands and the log of their calls."""

    bin_dir: Path
    state: Path
    log: Path
    watched: tuple[str, ...] = ()

    @classmethod
    def create(cls, root: Path, watched: tuple[str, ...] = ()) -> StandIns:
        bin_dir, state = root / "bin", root / "state"
        bin_dir.mkdir(parents=True)
        state.mkdir(parents=True)
        return cls(bin_dir=bin_dir, state=state, log=root / "calls.jsonl", watched=watched)

    def add(self, name: str, body: str) -> Path:
        """A command `name` whose Python body runs after the prelude."""
        prelude = _PRELUDE.format(
            state=str(self.state), name=name, watched=self.watched, log=str(self.log)
        )
        path = self.bin_dir / name
        path.write_text(f"#!{sys.executable}\n{prelude}\n{body}\n")
        path.chmod(0o755)
        return path

    def environment(self, **extra: str) -> dict[str, str]:
        """The calling environment with the stand-ins first on PATH."""
        environment = dict(os.environ)
        environment["PATH"] = f"{self.bin_dir}:{environment.get('PATH', '/usr/bin:/bin')}"
        environment.update(extra)
        return environment

    def calls(self, command: str | None = None) -> list[dict]:
        """Every recorded call, oldest first, optionally of one command only."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [entry for entry in entries if command is None or entry["command"] == command]
