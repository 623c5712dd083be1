"""Run the scripts/ commands as a student would, against the stand-in `pulumi` in tests/support/bin.

`StandInPulumi.create(tmp_path)` makes a private backend (stacks, config, the
selected stack), a call log, and a home directory for the command; `run` starts a
command from scripts/ with the stand-in first on PATH, from a working directory
outside the project, with no terminal.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.paths import REPO_ROOT

STAND_IN_BIN = Path(__file__).resolve().parent / "bin"
STATE_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "pulumi-state"
SCRIPTS_DIR = REPO_ROOT / "scripts"
PASSPHRASE = "correct horse battery staple"
# Variables of the developer's shell that would change what the commands decide.
CLEARED = (
    "SSH_AUTH_SOCK",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE_FILE",
    "PULUMI_BACKEND_URL",
    "STAND_IN_PULUMI_FAIL",
)


def state_fixture(name: str = "ab1234") -> dict[str, Any]:
    """A stack export shaped like Pulumi's, from tests/fixtures/pulumi-state."""
    return json.loads((STATE_FIXTURES / f"{name}.json").read_text())


def resources(export: dict[str, Any]) -> list[dict[str, Any]]:
    return (export.get("deployment") or {}).get("resources") or []


def of_type(export: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [resource for resource in resources(export) if resource["type"] == resource_type]


def ssh_port_is_closed() -> bool:
    """Whether a connection to 127.0.0.1:22 is refused here (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", 22), timeout=2):
            return False
    except OSError:
        return True


@dataclass
class StandInPulumi:
    """A private backend for the stand-in `pulumi`, and a way to run commands against it."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp_path: Path) -> StandInPulumi:
        root = tmp_path / "stand-in"
        for directory in ("backend", "home/.ssh", "elsewhere"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if key not in CLEARED}
        env.update(
            PATH=os.pathsep.join(
                [str(STAND_IN_BIN), str(Path(sys.executable).parent), env.get("PATH", "")]
            ),
            HOME=str(root / "home"),
            STAND_IN_PULUMI_HOME=str(root / "backend"),
            STAND_IN_PULUMI_LOG=str(root / "calls.jsonl"),
            PULUMI_CONFIG_PASSPHRASE=PASSPHRASE,
        )
        return cls(root=root, env=env)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workdir(self) -> Path:
        """Where commands start: not the project directory."""
        return self.root / "elsewhere"

    def add_stack(self, name: str, export: dict[str, Any] | None = None, select: bool = False):
        stacks = self.root / "backend" / "stacks"
        stacks.mkdir(parents=True, exist_ok=True)
        document = copy.deepcopy(export) if export is not None else state_fixture(name)
        (stacks / f"{name}.json").write_text(json.dumps(document, indent=4))
        if select:
            (self.root / "backend" / "current").write_text(name)

    def export(self, name: str) -> dict[str, Any]:
        return json.loads((self.root / "backend" / "stacks" / f"{name}.json").read_text())

    def stack_names(self) -> list[str]:
        return sorted(path.stem for path in (self.root / "backend" / "stacks").glob("*.json"))

    def config(self, name: str) -> dict[str, Any]:
        path = self.root / "backend" / "config" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def set_config(self, name: str, config: dict[str, Any]) -> None:
        directory = self.root / "backend" / "config"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.json").write_text(json.dumps(config))

    def fail(self, command: str, message: str) -> None:
        """Make every call whose command words start with `command` fail with `message`."""
        failures = json.loads(self.env.get("STAND_IN_PULUMI_FAIL") or "{}")
        failures[command] = message
        self.env["STAND_IN_PULUMI_FAIL"] = json.dumps(failures)

    def records(self) -> list[dict[str, Any]]:
        log = self.root / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    def calls(self) -> list[list[str]]:
        """The argument lists pulumi was called with, in order."""
        return [record["argv"] for record in self.records()]

    def run(
        self, command: str, *arguments: str, stdin: str | None = None, env: dict | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run scripts/<command> as a student would, with no terminal."""
        return subprocess.run(
            [str(SCRIPTS_DIR / command), *arguments],
            cwd=self.workdir,
            env=env if env is not None else self.env,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def import_tool(module: str):
    """A module of scripts/chi_persist_tools, imported the way the launchers do."""
    for path in (str(REPO_ROOT), str(SCRIPTS_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import importlib

    return importlib.import_module(f"chi_persist_tools.{module}")
