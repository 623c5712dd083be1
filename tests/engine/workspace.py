"""A student's machine for the real Pulumi CLI: a copy of the project, a home, and the CLI.

`StudentMachine.create(tmp_path)` copies the project (program, components, scripts,
docker files) to a directory of its own, links the test virtual environment in as the
project's `venv` (what `pulumi install` would make), and gives it an empty home and a
state directory of its own. `Pulumi.yaml`'s `file://~` names the account's home from
the user database, not $HOME (pkg/backend/diy/backend.go, massageBlobPath), so the
state directory is given with PULUMI_BACKEND_URL, which the CLI prefers to the
project's backend (pkg/workspace/creds.go, GetCurrentCloudURLWithSource).
`pulumi(...)` and `script(...)` run the real CLI and the project's commands there,
with the toolchain of tests/engine/toolchain first on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.paths import REPO_ROOT

PROJECT_FILES = (
    "Pulumi.yaml",
    "Pulumi.dev.yaml",
    "__main__.py",
    "requirements.txt",
    "components",
    "scripts",
    "docker",
)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
PASSPHRASE = "an engine test's own passphrase"
# The developer's shell must not steer what the CLI or the provider do here.
CLEARED_PREFIXES = ("PULUMI_", "OS_", "SSH_AUTH_SOCK", "CHI_PERSIST_REEXEC")
TOOLCHAIN_VARIABLES = (
    "PULUMI_HOME",
    "PULUMI_SKIP_UPDATE_CHECK",
    "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION",
    "PULUMI_IGNORE_AMBIENT_PLUGINS",
)


def toolchain_skip_reason() -> str | None:
    """Why the real CLI cannot run here, or None."""
    bin_dir = os.environ.get("CHI_PERSIST_TOOLCHAIN_BIN")
    if not bin_dir:
        return (
            "the real Pulumi toolchain is not set up: run the tests through tests/run, "
            'or eval "$(tests/engine/toolchain --print-env)" first'
        )
    if not (Path(bin_dir) / "pulumi").is_file():
        return f"CHI_PERSIST_TOOLCHAIN_BIN={bin_dir} holds no pulumi binary"
    return None


@dataclass
class StudentMachine:
    """A project copy, a home directory and an environment, as a student's laptop has."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp_path: Path, extra_env: Mapping[str, str] | None = None) -> StudentMachine:
        root = tmp_path / "student"
        project = root / "chi-persist"
        project.mkdir(parents=True)
        for name in PROJECT_FILES:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, project / name, ignore=IGNORED)
            else:
                shutil.copy2(source, project / name)
        # What `pulumi install` makes: the project's own virtual environment.
        (project / "venv").symlink_to(Path(sys.prefix))
        (root / "home" / ".ssh").mkdir(parents=True)
        (root / "state").mkdir()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(CLEARED_PREFIXES) or key in TOOLCHAIN_VARIABLES
        }
        env.update(
            HOME=str(root / "home"),
            PULUMI_BACKEND_URL=f"file://{root / 'state'}",
            PULUMI_CONFIG_PASSPHRASE=PASSPHRASE,
        )
        env.update(extra_env or {})
        return cls(root=root, env=env)

    @property
    def project(self) -> Path:
        return self.root / "chi-persist"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def pulumi(
        self, *arguments: str, timeout: float = 600, stdin: str = "", check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`pulumi ARGUMENTS` in the project directory, with no terminal."""
        return self._run(["pulumi", *arguments], timeout=timeout, stdin=stdin, check=check)

    def script(
        self, name: str, *arguments: str, timeout: float = 600, stdin: str = "", check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """The project's scripts/NAME, as a student runs it from the project directory."""
        return self._run(
            [str(self.project / "scripts" / name), *arguments],
            timeout=timeout,
            stdin=stdin,
            check=check,
        )

    def stack_export(self, stack: str) -> dict[str, Any]:
        result = self.pulumi("stack", "export", "--stack", stack, check=True)
        return json.loads(result.stdout)

    def outputs(self, stack: str, *, show_secrets: bool = False) -> dict[str, Any]:
        arguments = ["stack", "output", "--json", "--stack", stack]
        if show_secrets:
            arguments.append("--show-secrets")
        return json.loads(self.pulumi(*arguments, check=True).stdout)

    def _run(
        self, command: list[str], *, timeout: float, stdin: str, check: bool
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command,
            cwd=self.project,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result
