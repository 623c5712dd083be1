"""A student's machine for the real Pulumi CLI: a copy of the project, a home, and the CLI.

`StudentMachine.create(tmp_path)` copies the project (program, components, scripts,
docker files) to a directory of its own, links the test virtual environment in as the
project's `venv` (what `pulumi install` would make), and gives it an empty home and a
state directory of its own. `Pulumi.yaml`'s `file://~` names the account's home from
the user database, not $HOME (pkg/backend/diy/backend.go, massageBlobPath), so the
state directory is given with PULUMI_BACKEND_URL, which the CLI prefers to the
project's backend (pkg/workspace/creds.go, GetCurrentCloudURLWithSource).
`pulumi(...)` and `script(...)` run the real CLI and the project's commands there,
with the toolchain of tests/engine/toolchain first on PATH. The CLI's own home
(PULUMI_HOME: the selected stack of each project, a log per command) is the
machine's too; only the toolchain's resource plugins are shared with it.

A machine set up once can be `clone`d for each test that changes it: the copy has
the same stacks, config and state, and no stack selected (the CLI keeps the
selection per project directory).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import REPO_ROOT

PROJECT_FILES = (
    "chi-persist",
    "pyproject.toml",
    "Pulumi.yaml",
    "Pulumi.dev.yaml",
    "__main__.py",
    "requirements.txt",
    "components",
    "scripts",
    "docker",
)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
# tests/support/bin/pulumi: records each call and passes it to the real CLI; fakes only the one
# failure its docstring names, which the real CLI does not make here.
RECORDING_BIN = REPO_ROOT / "tests" / "support" / "bin"
# Values of the environment that name places inside a machine, rewritten by `clone`.
MACHINE_PATHS = ("HOME", "PULUMI_HOME", "PULUMI_BACKEND_URL", "STAND_IN_PULUMI_LOG")
PASSPHRASE = "an engine test's own passphrase"
# The developer's shell must not steer what the CLI or the provider do here.
CLEARED_PREFIXES = ("PULUMI_", "OS_", "SSH_AUTH_SOCK", "CHI_PERSIST_REEXEC", "STAND_IN_PULUMI_")
# What tests/engine/toolchain --print-env sets, set here whatever the shell has: no update
# check and no plugin download (no network), plugins only from PULUMI_HOME.
TOOLCHAIN_SETTINGS = {
    "PULUMI_SKIP_UPDATE_CHECK": "true",
    "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    "PULUMI_IGNORE_AMBIENT_PLUGINS": "1",
}


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


def wheelhouse_skip_reason() -> str | None:
    """Why a fresh machine cannot install the project's packages here, or None."""
    wheels = os.environ.get("CHI_PERSIST_WHEELHOUSE")
    if not wheels:
        return (
            "CHI_PERSIST_WHEELHOUSE is not set: run the tests through tests/run, which "
            "collects requirements.txt's wheels"
        )
    if not (Path(wheels) / ".complete").is_file():
        return f"CHI_PERSIST_WHEELHOUSE={wheels} is not a complete wheelhouse (tests/run makes it)"
    return None


def wheelhouse() -> str:
    reason = wheelhouse_skip_reason()
    if reason:
        raise RuntimeError(reason)
    return os.environ["CHI_PERSIST_WHEELHOUSE"]


@dataclass
class StudentMachine:
    """A project copy, a home directory and an environment, as a student's laptop has."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls, tmp_path: Path, extra_env: Mapping[str, str] | None = None, *, fresh: bool = False
    ) -> StudentMachine:
        """`fresh`: a clone as a student has it, with no ./venv and no Python environment
        on PATH; its first `./chi-persist` or `pulumi install` makes ./venv from the wheels
        tests/run collected (CHI_PERSIST_WHEELHOUSE), with no index."""
        root = tmp_path / "student"
        project = root / "chi-persist"
        project.mkdir(parents=True)
        for name in PROJECT_FILES:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, project / name, ignore=IGNORED)
            else:
                shutil.copy2(source, project / name)
        if not fresh:
            # What `pulumi install` makes: the project's own virtual environment.
            (project / "venv").symlink_to(Path(sys.prefix))
        for directory in ("home/.ssh", "state", "pulumi-home", "elsewhere"):
            (root / directory).mkdir(parents=True)
        # The resource plugins the toolchain installed, read-only; all else is this machine's.
        shared_home = os.environ.get("PULUMI_HOME")
        if shared_home and (Path(shared_home) / "plugins").is_dir():
            (root / "pulumi-home" / "plugins").symlink_to(Path(shared_home) / "plugins")
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(CLEARED_PREFIXES)
        }
        # The toolchain's CLI first, then the test environment's Python (an activated venv);
        # a fresh machine's python3 is the system's.
        path = [str(Path(sys.executable).parent), env.get("PATH", "")]
        if fresh:
            path = [entry for entry in env.get("PATH", "").split(os.pathsep)
                    if Path(entry) != Path(sys.executable).parent]  # fmt: skip
        toolchain = os.environ.get("CHI_PERSIST_TOOLCHAIN_BIN")
        if toolchain:
            path.insert(0, toolchain)
        env.update(TOOLCHAIN_SETTINGS)
        env.update(
            PATH=os.pathsep.join(path),
            HOME=str(root / "home"),
            PULUMI_HOME=str(root / "pulumi-home"),
            # The project's own backend options (Pulumi.yaml: metadata=skip), in this
            # machine's state directory.
            PULUMI_BACKEND_URL=f"file://{root / 'state'}?metadata=skip",
            PULUMI_CONFIG_PASSPHRASE=PASSPHRASE,
        )
        if fresh:
            env.update(
                PIP_NO_INDEX="1",
                PIP_FIND_LINKS=wheelhouse(),
                PIP_DISABLE_PIP_VERSION_CHECK="1",
            )
        env.update(extra_env or {})
        return cls(root=root, env=env)

    def clone(self, tmp_path: Path) -> StudentMachine:
        """A copy of this machine under tmp_path: same project files, stacks and state; no
        stack selected, and no calls recorded yet."""
        root = tmp_path / "student"
        logs = self.root / "pulumi-home" / "logs"
        shutil.copytree(
            self.root,
            root,
            symlinks=True,
            ignore=lambda directory, names: ["logs"] if Path(directory) == logs.parent else [],
        )
        env = dict(self.env)
        for key in MACHINE_PATHS:
            if key in env:
                env[key] = env[key].replace(str(self.root), str(root))
        clone = StudentMachine(root=root, env=env)
        clone.calls_log.unlink(missing_ok=True)
        return clone

    @property
    def project(self) -> Path:
        return self.root / "chi-persist"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def workdir(self) -> Path:
        """A directory outside the project, where a student may well start a command."""
        return self.root / "elsewhere"

    @property
    def calls_log(self) -> Path:
        return self.root / "pulumi-calls.jsonl"

    def record_pulumi_calls(self) -> None:
        """Put tests/support/bin/pulumi first on PATH: it records each call, with its working
        directory, and passes it to the real CLI."""
        self.env["PATH"] = os.pathsep.join([str(RECORDING_BIN), self.env["PATH"]])
        self.env["STAND_IN_PULUMI_LOG"] = str(self.calls_log)

    def fail_pulumi(self, command: str, message: str) -> None:
        """Make recorded calls of `command` (its first words) fail with `message`: only for the
        failure tests/support/bin/pulumi names, which the real CLI does not make here (any
        other is refused; a cloud's error is a fault of the twin instead)."""
        failures = json.loads(self.env.get("STAND_IN_PULUMI_FAIL") or "{}")
        failures[command] = message
        self.env["STAND_IN_PULUMI_FAIL"] = json.dumps(failures)

    def records(self) -> list[dict[str, Any]]:
        """The recorded calls, oldest first: {"argv": [...], "cwd": "..."}."""
        if not self.calls_log.exists():
            return []
        lines = self.calls_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def calls(self) -> list[list[str]]:
        """The argument lists of the recorded calls, oldest first."""
        return [record["argv"] for record in self.records()]

    def pulumi(
        self, *arguments: str, timeout: float = 600, stdin: str = "", check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`pulumi ARGUMENTS` in the project directory, with no terminal; never recorded."""
        return self._run(
            [self.pulumi_executable, *arguments], timeout=timeout, stdin=stdin, check=check
        )

    def start_pulumi(self, *arguments: str, log: Path) -> subprocess.Popen[bytes]:
        """`pulumi ARGUMENTS` in the background, in a session of its own (the CLI, its
        language host and plugins share one process group: a laptop's lid closes on all of
        them), its output in `log`."""
        with open(log, "wb") as output:
            return subprocess.Popen(
                [self.pulumi_executable, *arguments],
                cwd=self.project,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pulumi_executable(self) -> str:
        """The real CLI: the toolchain's, else the first `pulumi` on PATH."""
        toolchain = os.environ.get("CHI_PERSIST_TOOLCHAIN_BIN")
        return str(Path(toolchain) / "pulumi") if toolchain else "pulumi"

    def script(
        self,
        name: str,
        *arguments: str,
        timeout: float = 600,
        stdin: str = "",
        check: bool = False,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The project's scripts/NAME, as a student runs it: from the project directory, or
        from `cwd`; with the machine's environment, or `env`."""
        return self._run(
            [str(self.project / "scripts" / name), *arguments],
            timeout=timeout,
            stdin=stdin,
            check=check,
            cwd=cwd,
            env=env,
        )

    def command(
        self,
        *arguments: str,
        timeout: float = 600,
        stdin: str = "",
        check: bool = False,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`./chi-persist ARGUMENTS`, the project's one command, as a student runs it: from the
        project directory, or from `cwd`; with the machine's environment, or `env`."""
        return self._run(
            [str(self.project / "chi-persist"), *arguments],
            timeout=timeout,
            stdin=stdin,
            check=check,
            cwd=cwd,
            env=env,
        )

    def stack_names(self) -> list[str]:
        listing = json.loads(self.pulumi("stack", "ls", "--json", check=True).stdout)
        return sorted(entry["name"] for entry in listing)

    def stack_file(self, stack: str) -> dict[str, Any] | None:
        """Pulumi.<stack>.yaml of the project, as the CLI wrote it; None if there is none."""
        path = self.project / f"Pulumi.{stack}.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else None

    def config(self, stack: str, *, show_secrets: bool = False) -> dict[str, Any]:
        """`pulumi config --json`: every key of the stack, with the project's defaults, by name."""
        arguments = ["config", "--json", "--stack", stack]
        if show_secrets:
            arguments.append("--show-secrets")
        listing = json.loads(self.pulumi(*arguments, check=True).stdout)
        return {key: entry.get("objectValue", entry.get("value")) for key, entry in listing.items()}

    def import_state(self, stack: str, deployment: Mapping[str, Any]) -> None:
        """Make `stack` (created if need be) hold `deployment`, with the real `pulumi stack
        import`. Its secrets are plaintext, as `pulumi stack export --show-secrets` prints
        them; the stack's own secrets provider is put in, so the CLI encrypts them with this
        machine's passphrase (tests/support/pulumi_state.py)."""
        created = self.pulumi("stack", "init", stack, "--non-interactive")
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise AssertionError(f"pulumi stack init {stack} failed: {created.stderr}")
        # The passphrase provider's state is the salt the CLI keeps in the stack file
        # (pkg/secrets/passphrase/manager.go, localSecretsManagerState).
        salt = (self.stack_file(stack) or {}).get("encryptionsalt")
        assert salt, f"Pulumi.{stack}.yaml has no encryptionsalt"
        document = copy.deepcopy(dict(deployment))
        document["deployment"]["secrets_providers"] = {
            "type": "passphrase",
            "state": {"salt": salt},
        }
        path = self.root / f"import-{stack}.json"
        path.write_text(json.dumps(document))
        try:
            self.pulumi(
                "stack", "import", "--stack", stack, "--file", str(path), "--non-interactive",
                check=True,
            )  # fmt: skip
        finally:
            path.unlink()

    def stack_export(self, stack: str) -> dict[str, Any]:
        result = self.pulumi("stack", "export", "--stack", stack, check=True)
        return json.loads(result.stdout)

    def outputs(self, stack: str, *, show_secrets: bool = False) -> dict[str, Any]:
        arguments = ["stack", "output", "--json", "--stack", stack]
        if show_secrets:
            arguments.append("--show-secrets")
        return json.loads(self.pulumi(*arguments, check=True).stdout)

    def _run(
        self,
        command: list[str],
        *,
        timeout: float,
        stdin: str,
        check: bool,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command,
            cwd=cwd or self.project,
            env=dict(env) if env is not None else self.env,
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


def explain(result: subprocess.CompletedProcess[str]) -> str:
    """A finished command's exit status and output, for an assertion message."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
