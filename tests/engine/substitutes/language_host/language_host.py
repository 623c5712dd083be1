"""This project's substitute for Pulumi's Python language host, `pulumi-language-python` v3.274.1.

A substitute: the Go module proxy refuses the upstream host's module
(github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3: 403 at every version),
so this Python program stands in for it. tests/engine/test_language_host.py holds it to
the upstream host's behaviour; README.md beside this file says how far.

The CLI starts it as a plugin: it serves the LanguageRuntime gRPC service on a
loopback port, prints the port on the first line of stdout, and runs the
project's Python program (through `pulumi-language-python-exec`) with the
interpreter of the project's virtual environment. It behaves as the Go host
that ships with Pulumi 3.274.1 for the `pip` toolchain: the virtualenv is
resolved against the project's root directory and created (with
requirements.txt installed) when missing; plugin requirements come from the
installed packages' `pulumi-plugin.json` (or their version); the program gets
the same executor flags and PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS; exit
code 32 means the program already reported its error; the same messages.

Launch (what the CLI runs): `pulumi-language-python [flags] ENGINE_ADDRESS`,
here through a wrapper next to `pulumi` (host_bin.py, beside this file, writes it):

    #!/bin/sh
    exec PYTHON /path/to/language_host.py \\
        -use-executor "$(dirname "$0")/pulumi-language-python-exec" "$@"

PYTHON must have grpcio and the pulumi SDK (for its generated gRPC stubs); the
program itself runs with the project's own interpreter. The Go host finds the
executor next to its own binary; a script cannot see its wrapper, hence
`-use-executor` (without it, the executor is looked for next to this file).

Differences from the Go host, each answered with an error that says so:
- the `poetry` and `uv` toolchains (chosen, or detected from uv.lock /
  poetry.lock) are not served;
- `--attach-debugger` (Run answers with an error; RunPlugin is UNIMPLEMENTED);
- policy packs through RunPlugin (UNIMPLEMENTED);
- code generation: GenerateProgram (the code `pulumi import` prints after
  importing), GenerateProject, GeneratePackage, Pack and Link (`pulumi
  convert`, `pulumi package ...`) are UNIMPLEMENTED.
Also: tracing and OpenTelemetry flags are accepted and passed on to the
executor, but the host emits no spans; its own log lines go to stderr only
with --logtostderr (no log files); it starts in about half a second (Python)
where the Go host starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import empty_pb2, json_format


def _load_sdk_stubs():
    """The SDK's generated gRPC modules, without running the SDK's package initialisers.

    The CLI starts this host up to three times per `pulumi up`; importing the whole SDK would
    cost most of each start. The generated modules import only each other and protobuf, so
    their packages are stood in by bare package modules when the SDK is found.
    """
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("pulumi")
    if spec is not None and spec.submodule_search_locations and "pulumi" not in sys.modules:
        root = Path(list(spec.submodule_search_locations)[0])
        for name, path in (
            ("pulumi", root),
            ("pulumi.runtime", root / "runtime"),
            ("pulumi.runtime.proto", root / "runtime" / "proto"),
        ):
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    names = ("engine_pb2", "engine_pb2_grpc", "language_pb2", "language_pb2_grpc", "plugin_pb2")
    return [importlib.import_module(f"pulumi.runtime.proto.{name}") for name in names]


engine_pb2, engine_pb2_grpc, language_pb2, language_pb2_grpc, plugin_pb2 = _load_sdk_stubs()

HOST_VERSION = "v3.274.1"
EXECUTOR_NAME = "pulumi-language-python-exec"

# The exit code with which the executor says it already showed the user an error.
EXIT_AFTER_USER_ACTIONABLE_MESSAGE = 32

# The engine raises gRPC's message limit to 400 MiB; so do we.
MAX_MESSAGE_BYTES = 400 * 1024 * 1024

# How often the engine is checked for liveness; the host stops when it is gone.
HEALTH_CHECK_INTERVAL_SECONDS = 5 * 60

# How long a cancelled program gets after SIGINT before it is killed.
INTERRUPT_GRACE_SECONDS = 5

# Python packages known to carry no plugin even though their name says "pulumi-".
PACKAGES_WITHOUT_PLUGINS = frozenset({"pulumi-policy", "pulumi-esc-sdk"})

MINIMUM_PYTHON = (3, 7, 0)

ANALYZER_KIND = "analyzer"


class HostError(Exception):
    """An error the host reports to the engine as the RPC's failure (gRPC UNKNOWN)."""


class Unsupported(Exception):
    """A feature of the Go host that this host does not serve (gRPC UNIMPLEMENTED)."""


# --------------------------------------------------------------------------------------------
# Logging: only with --logtostderr and -v=N, as the engine passes them with --logflow.


@dataclass
class Log:
    to_stderr: bool = False
    verbosity: int = 0

    def v(self, level: int, message: str) -> None:
        if self.to_stderr and self.verbosity >= level:
            stamp = time.strftime("%m%d %H:%M:%S")
            sys.stderr.write(f"I{stamp} {os.getpid()} language_host.py] {message}\n")
            sys.stderr.flush()


LOG = Log()


# --------------------------------------------------------------------------------------------
# Command line, parsed the way Go's flag package does: -name, --name, -name=value,
# --name value; parsing stops at the first argument that is not a flag.

BOOL_FLAGS = {"version", "logtostderr", "alsologtostderr", "logflow"}
VALUE_FLAGS = {
    "tracing",
    "use-executor",
    "v",
    "vmodule",
    "log_dir",
    "log_backtrace_at",
    "stderrthreshold",
}


@dataclass
class Flags:
    version: bool = False
    tracing: str = ""
    use_executor: str = ""
    logtostderr: bool = False
    verbosity: int = 0
    positional: list[str] = field(default_factory=list)


def parse_flags(argv: list[str]) -> Flags:
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in BOOL_FLAGS:
            enabled = value.lower() not in ("false", "0", "f") if has_value else True
            if name == "version":
                flags.version = enabled
            elif name in ("logtostderr", "alsologtostderr"):
                flags.logtostderr = flags.logtostderr or enabled
        elif name in VALUE_FLAGS:
            if not has_value:
                i += 1
                if i >= len(argv):
                    usage_error(f"flag needs an argument: -{name}")
                value = argv[i]
            if name == "tracing":
                flags.tracing = value
            elif name == "use-executor":
                flags.use_executor = value
            elif name == "v":
                try:
                    flags.verbosity = int(value)
                except ValueError:
                    usage_error(f'invalid value "{value}" for flag -v: parse error')
        else:
            usage_error(f"flag provided but not defined: -{name}")
        i += 1
    flags.positional = argv[i:]
    return flags


def usage_error(message: str) -> None:
    sys.stderr.write(f"{message}\nUsage of pulumi-language-python:\n")
    sys.exit(2)


# --------------------------------------------------------------------------------------------
# Runtime options from Pulumi.yaml (`runtime.options`), as the Go host reads them.


@dataclass
class PythonOptions:
    root: str
    program_dir: str
    virtualenv: str = ""
    typechecker: str = ""  # "", "mypy" or "pyright"
    toolchain: str = "auto"  # "auto", "pip", "poetry" or "uv"


def program_options(info: language_pb2.ProgramInfo) -> dict:
    if not info.HasField("options"):
        return {}
    return json_format.MessageToDict(info.options)


def parse_options(info: language_pb2.ProgramInfo, is_plugin: bool) -> PythonOptions:
    raw = program_options(info)
    options = PythonOptions(root=info.root_directory, program_dir=info.program_directory)
    if "virtualenv" in raw:
        if not isinstance(raw["virtualenv"], str):
            raise HostError("virtualenv option must be a string")
        options.virtualenv = raw["virtualenv"]
    if "typechecker" in raw:
        typechecker = raw["typechecker"]
        if not isinstance(typechecker, str):
            raise HostError("typechecker option must be a string")
        if typechecker not in ("mypy", "pyright"):
            raise HostError(f"unsupported typechecker option: {typechecker}")
        options.typechecker = typechecker
    if "toolchain" in raw:
        chosen = raw["toolchain"]
        if not isinstance(chosen, str):
            raise HostError("toolchain option must be a string")
        if chosen not in ("pip", "poetry", "uv"):
            raise HostError(f"unsupported toolchain option: {chosen}")
        options.toolchain = chosen
    # Plugins never run on the ambient interpreter: they get `venv` unless told otherwise.
    if is_plugin and options.toolchain in ("pip", "auto") and not options.virtualenv:
        options.virtualenv = "venv"
    return options


def search_up(directory: str, name: str) -> bool:
    current = Path(directory)
    while True:
        if (current / name).exists():
            return True
        if current.parent == current:
            return False
        current = current.parent


def resolve_toolchain(options: PythonOptions) -> Pip:
    chosen = options.toolchain
    if chosen == "auto":
        if search_up(options.program_dir, "uv.lock"):
            chosen = "uv"
        elif search_up(options.program_dir, "poetry.lock"):
            chosen = "poetry"
        else:
            chosen = "pip"
    if chosen != "pip":
        raise HostError(
            f"the {chosen} toolchain is not supported by this Python language host; "
            "use `toolchain: pip` with a `virtualenv` in Pulumi.yaml's runtime options"
        )
    return Pip(options.root, options.virtualenv)


# --------------------------------------------------------------------------------------------
# Running commands and reporting their failures in the words Go's os/exec uses.


def start_error(path: str, error: OSError) -> str:
    reason = (error.strerror or str(error)).strip()
    reason = reason[:1].lower() + reason[1:]
    return f"fork/exec {path}: {reason}"


def exit_error(returncode: int) -> str:
    if returncode < 0:
        return f"signal: {signal.Signals(-returncode).name.lower().removeprefix('sig')}"
    return f"exit status {returncode}"


def go_json(value) -> str:
    """JSON as Go's encoding/json writes it: compact, map keys sorted, <>& escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def activate_virtualenv(environ: dict[str, str], venv: str) -> dict[str, str]:
    """The environment with `venv/bin` first on PATH, VIRTUAL_ENV set and PYTHONHOME unset."""
    venv_bin = os.path.join(venv, "bin")
    result: dict[str, str] = {}
    has_path = False
    for key, value in environ.items():
        upper = key.upper()
        if upper == "PATH":
            has_path = True
            result[key] = f"{venv_bin}{os.pathsep}{value}"
        elif upper in ("PYTHONHOME", "VIRTUAL_ENV"):
            continue
        else:
            result[key] = value
    if not has_path:
        result["PATH"] = venv_bin
    result["VIRTUAL_ENV"] = venv
    return result


def ambient_python() -> str:
    """The interpreter used without a virtualenv: PULUMI_PYTHON_CMD, else python3, else python."""
    wanted = os.environ.get("PULUMI_PYTHON_CMD")
    candidates = [wanted] if wanted else ["python3", "python"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    quoted = " ".join(f'"{candidate}"' for candidate in candidates)
    raise HostError(
        f"failed to locate any of [{quoted}] on your PATH. "
        "Have you installed Python 3.10 or greater?"
    )


def is_virtualenv(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "bin", "python"))


def virtualenv_error(option: str, full_path: str) -> HostError:
    message = (
        "doesn't exist"
        if not os.path.exists(full_path)
        else "doesn't appear to be a virtual environment"
    )
    venv_python = os.path.join(full_path, "bin", "python")
    commands = (
        f"    1. python3 -m venv {full_path}\n"
        f"    2. {venv_python} -m pip install --upgrade pip setuptools wheel\n"
        f"    3. {venv_python} -m pip install -r requirements.txt\n"
    )
    return HostError(
        f'The \'virtualenv\' option in Pulumi.yaml is set to "{option}", but "{full_path}" '
        f"{message}; run the following commands to create the virtual environment and install "
        f"dependencies into it:\n\n{commands}\n\n"
        "For more information see: "
        "https://www.pulumi.com/docs/intro/languages/python/#virtual-environments"
    )


def install_python_with_pyenv(cwd: str, streams: Streams) -> None:
    """`pyenv install --skip-existing` when a .python-version file and pyenv are both found."""
    directory = Path(cwd)
    version_file = None
    for candidate in (directory, *directory.parents):
        if (candidate / ".python-version").is_file():
            version_file = candidate / ".python-version"
            break
    pyenv = shutil.which("pyenv")
    if version_file is None or pyenv is None:
        return
    streams.out(f"Installing python version from .python-version file at {version_file}\n".encode())
    try:
        returncode, _ = streams.run([pyenv, "install", "--skip-existing"], cwd=cwd)
    except OSError as error:
        raise HostError(f"error while running pyenv install: {start_error(pyenv, error)}") from None
    if returncode != 0:
        raise HostError(f"error while running pyenv install: {exit_error(returncode)}")


def normalize_package_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def parse_version_triple(text: str) -> tuple[int, int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip().removeprefix("Python "))
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def python_semver(text: str) -> str:
    """A `python --version` answer as a semantic version (3.12.0rc1 → 3.12.0-rc.1)."""
    match = re.match(
        r"^(\d+)\.(\d+)(?:\.(\d+))?(?:(a|b|rc|dev)(\d+))?", text.strip().removeprefix("Python ")
    )
    if not match:
        raise HostError(f'invalid Python version format: "{text.strip()}"')
    major, minor, patch, kind, number = match.groups()
    version = f"{major}.{minor}.{patch or 0}"
    if kind:
        label = {"a": "alpha", "b": "beta", "rc": "rc", "dev": "dev"}[kind]
        version += f"-{label}.{number}"
    return version


@dataclass
class Pip:
    """The pip toolchain: an optional virtualenv, relative to the project's root directory."""

    root: str
    virtualenv_option: str

    @property
    def virtualenv(self) -> str:
        if not self.virtualenv_option:
            return ""
        if os.path.isabs(self.virtualenv_option):
            return self.virtualenv_option
        return os.path.join(self.root, self.virtualenv_option)

    def command(self, *args: str) -> tuple[list[str], dict[str, str] | None]:
        """argv and environment for `python ARGS` (None: inherit the host's environment)."""
        if not self.virtualenv:
            return [ambient_python(), *args], None
        python = os.path.join(self.virtualenv, "bin", "python")
        return [python, *args], activate_virtualenv(dict(os.environ), self.virtualenv)

    def output(self, *args: str) -> str:
        argv, env = self.command(*args)
        try:
            completed = subprocess.run(argv, env=env, capture_output=True, check=False)
        except OSError as error:
            raise HostError(start_error(argv[0], error)) from None
        if completed.returncode != 0:
            raise HostError(exit_error(completed.returncode))
        return completed.stdout.decode("utf-8", "replace")

    def validate_venv(self) -> None:
        if self.virtualenv_option and not is_virtualenv(self.virtualenv):
            raise virtualenv_error(self.virtualenv_option, self.virtualenv)

    def ensure_venv(self, cwd: str, streams: Streams, use_version_tools: bool = False) -> None:
        """Creates the virtualenv (and installs requirements.txt) if it is missing or empty."""
        if not self.virtualenv_option or is_virtualenv(self.virtualenv):
            return
        path = self.virtualenv
        if os.path.exists(path):
            if not os.path.isdir(path):
                raise HostError(
                    f"the 'virtualenv' option in Pulumi.yaml is set to \"{path}\" "
                    "but it is not a directory"
                )
            if os.listdir(path):
                return
        self.install_dependencies(cwd, streams, use_version_tools)

    def install_dependencies(
        self, cwd: str, streams: Streams, use_version_tools: bool = False
    ) -> None:
        """`python -m venv`, then pip, setuptools and wheel upgraded, then requirements.txt;
        first the Python of a `.python-version` file through pyenv, if asked and available."""
        if use_version_tools:
            install_python_with_pyenv(cwd, streams)
        venv = self.virtualenv
        if venv:
            streams.out(b"Creating virtual environment...\n")
            if not os.path.isabs(venv):
                raise HostError(f"virtual environment path must be absolute: {venv}")
            argv = [ambient_python(), "-m", "venv", venv]
            try:
                completed = subprocess.run(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
                )
            except OSError as error:
                raise HostError(
                    f"creating virtual environment at '{venv}': {start_error(argv[0], error)}"
                ) from None
            if completed.returncode != 0:
                if completed.stdout:
                    streams.err(completed.stdout + b"\n")
                raise HostError(
                    f"creating virtual environment at '{venv}': {exit_error(completed.returncode)}"
                )
            streams.out(b"Finished creating virtual environment\n")

        streams.out(b"Updating pip, setuptools, and wheel in virtual environment...\n")
        self._pip_install(
            cwd, streams, "updating pip, setuptools, and wheel", "--upgrade", "pip", "setuptools",
            "wheel",
        )  # fmt: skip
        streams.out(b"Finished updating\n")

        if not os.path.exists(os.path.join(cwd, "requirements.txt")):
            return
        streams.out(b"Installing dependencies in virtual environment...\n")
        self._pip_install(cwd, streams, "installing dependencies", "-r", "requirements.txt")
        streams.out(b"Finished installing dependencies\n")

    def _pip_install(self, cwd: str, streams: Streams, what: str, *args: str) -> None:
        venv = self.virtualenv
        python = os.path.join(venv, "bin", "python") if venv else ambient_python()
        argv = [python, "-m", "pip", "install", *args]
        env = activate_virtualenv(dict(os.environ), venv)
        attempts = 3
        for attempt in range(attempts):
            try:
                returncode, stderr = streams.run(argv, env=env, cwd=cwd)
            except OSError as error:
                raise HostError(
                    f"{what} via '{' '.join(argv)}': {start_error(argv[0], error)}"
                ) from None
            if returncode == 0:
                return
            detail = stderr.decode("utf-8", "replace").strip()
            message = f"{what} via '{' '.join(argv)}': {exit_error(returncode)}"
            if detail:
                message += f": {detail}"
            # A CDN answering with the wrong Content-Type is transient: pip is tried again.
            transient = "because the GET request got Content-Type" in detail
            if attempt < attempts - 1 and transient:
                streams.err(f"Retrying ({attempt + 1}/{attempts})...\n".encode())
                continue
            raise HostError(message)

    def install_package(self, cwd: str, streams: Streams, use_version_tools: bool = False) -> None:
        try:
            self.ensure_venv(cwd, streams, use_version_tools)
        except HostError as error:
            raise HostError(f"creating virtual environment: {error}") from None
        argv, env = self.command("-m", "pip", "install", cwd)
        try:
            returncode, stderr = streams.run(argv, env=env)
        except OSError as error:
            raise HostError(f"installing package: {start_error(argv[0], error)}") from None
        if returncode != 0:
            detail = stderr.decode("utf-8", "replace").strip()
            raise HostError(
                f"installing package: {exit_error(returncode)}" + (f": {detail}" if detail else "")
            )

    def list_packages(self, transitive: bool) -> list[tuple[str, str]]:
        args = ["-m", "pip", "list", "--format", "json"]
        if not transitive:
            args.append("--not-required")
        argv, env = self.command(*args)
        try:
            completed = subprocess.run(argv, env=env, capture_output=True, check=False)
        except OSError as error:
            raise HostError(f"calling `{' '.join(argv)}`: {start_error(argv[0], error)}") from None
        if completed.returncode != 0:
            raise HostError(f"calling `{' '.join(argv)}`: {exit_error(completed.returncode)}")
        try:
            listed = json.loads(completed.stdout)
        except ValueError as error:
            raise HostError(f"parsing `python {' '.join(argv)}` output: {error}") from None
        return [(normalize_package_name(item["name"]), item["version"]) for item in listed]

    def about(self) -> tuple[str, str, str]:
        """(interpreter path, Python version, pip version), unknown versions as 0.0.0."""

        def executable():
            try:
                return self.output("-c", "import sys; print(sys.executable)").strip()
            except HostError as error:
                raise HostError(f"failed to get python executable path: {error}") from None

        def python_version():
            try:
                return python_semver(self.output("--version"))
            except HostError:
                return "0.0.0"

        def pip_version():
            with contextlib.suppress(HostError):
                answer = self.output("-m", "pip", "--version")
                match = re.match(r"^pip\s+(\d+(?:\.\d+)*)", answer)
                if match:
                    parts = (match.group(1).split(".") + ["0", "0"])[:3]
                    return ".".join(str(int(part)) for part in parts)
            return "0.0.0"

        # The three questions go to three interpreters at once, as upstream asks them.
        with futures.ThreadPoolExecutor(max_workers=3) as pool:
            asked = [
                pool.submit(question) for question in (executable, python_version, pip_version)
            ]
            return tuple(answer.result() for answer in asked)


# --------------------------------------------------------------------------------------------
# Output streams of a long RPC: to the engine's log (ephemeral), or into a streamed response.


class Streams:
    """Where a command's output goes: `out`/`err` take bytes; `run` runs a command into them."""

    def out(self, data: bytes) -> None:
        raise NotImplementedError

    def err(self, data: bytes) -> None:
        raise NotImplementedError

    def child_stdout(self):
        return subprocess.PIPE

    def run(self, argv: list[str], env=None, cwd=None) -> tuple[int, bytes]:
        """Runs argv with its stdout to `out` and its stderr to `err`; returns (code, stderr)."""
        stdout_target = self.child_stdout()
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout_target,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        captured = bytearray()

        def pump(stream, sink, keep):
            for chunk in iter(lambda: stream.read1(65536), b""):
                if keep:
                    captured.extend(chunk)
                sink(chunk)

        pumps = [threading.Thread(target=pump, args=(process.stderr, self.err, True))]
        if stdout_target == subprocess.PIPE:
            pumps.append(threading.Thread(target=pump, args=(process.stdout, self.out, False)))
        for thread in pumps:
            thread.start()
        for thread in pumps:
            thread.join()
        return process.wait(), bytes(captured)


class EngineLogStreams(Streams):
    """Each write becomes an ephemeral log message in the engine's display."""

    def __init__(self, engine_address: str):
        if not engine_address:
            raise HostError("language host could not make connection to engine: no engine address")
        self._channel = grpc.insecure_channel(
            engine_address, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        )
        self._engine = engine_pb2_grpc.EngineStub(self._channel)
        self._stream_id = random.randint(0, 2**31 - 1)  # noqa: S311 - only tells streams apart

    def _log(self, data: bytes, severity) -> None:
        self._engine.Log(
            engine_pb2.LogRequest(
                severity=severity,
                message=data.decode("utf-8", "replace"),
                urn="",
                ephemeral=True,
                streamId=self._stream_id,
            )
        )

    def out(self, data: bytes) -> None:
        self._log(data, engine_pb2.INFO)

    def err(self, data: bytes) -> None:
        self._log(data, engine_pb2.ERROR)

    def close(self) -> None:
        self._channel.close()


class ResponseStreams(Streams):
    """Output sent back as a server-streaming RPC's responses, through a pseudo-terminal if asked.

    With a terminal, commands see a tty on stdout (pip shows its progress and colours) and
    everything arrives as stdout, as the Go host does.
    """

    _DONE = object()

    def __init__(self, make_stdout, make_stderr, terminal: bool):
        import queue

        self._queue: queue.Queue = queue.Queue()
        self._make_stdout = make_stdout
        self._make_stderr = make_stderr
        self._pty: tuple[int, int] | None = None
        self._reader: threading.Thread | None = None
        if terminal:
            try:
                self._pty = os.openpty()
            except OSError as error:
                message = f"\x1b[33mwarning: could not open pty: {error}\x1b[0m\n"
                self._queue.put(make_stderr(message.encode()))
            else:
                self._reader = threading.Thread(target=self._read_pty, daemon=True)
                self._reader.start()

    def _read_pty(self) -> None:
        master = self._pty[0]
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self._queue.put(self._make_stdout(chunk))

    def child_stdout(self):
        return self._pty[1] if self._pty else subprocess.PIPE

    def out(self, data: bytes) -> None:
        if self._pty:
            os.write(self._pty[1], data)
        else:
            self._queue.put(self._make_stdout(data))

    def err(self, data: bytes) -> None:
        if self._pty:
            os.write(self._pty[1], data)
        else:
            self._queue.put(self._make_stderr(data))

    def put(self, response) -> None:
        self._queue.put(response)

    def close(self) -> None:
        """Flushes the terminal (if any) and ends the response stream."""
        if self._pty:
            master, slave = self._pty
            os.close(slave)
            self._reader.join()
            os.close(master)
            self._pty = None
        self._queue.put(self._DONE)

    def responses(self):
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            yield item


def stream_work(streams: ResponseStreams, work) -> tuple[threading.Thread, list]:
    """Runs work(streams) in a thread; the list receives the exception it raised, if any."""
    failures: list = []

    def target():
        try:
            work(streams)
        except BaseException as error:  # noqa: BLE001 - handed to the RPC thread
            failures.append(error)
        finally:
            streams.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, failures


# --------------------------------------------------------------------------------------------
# Plugin requirements from the installed packages.

# Prints {package: path of its pulumi-plugin.json or ""} for the distributions named in argv.
PLUGIN_JSON_PATHS_SCRIPT = """\
import importlib.metadata, importlib.util, json, os, sys
found = {}
for name in sys.argv[1:]:
    path = ""
    try:
        module = importlib.metadata.distribution(name).metadata["Name"].replace("-", "_")
        spec = importlib.util.find_spec(module)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = os.path.join(str(location), "pulumi-plugin.json")
            if os.path.isfile(candidate):
                path = candidate
                break
    except Exception:
        pass
    found[name] = path
print(json.dumps(found))
"""


def plugin_json_paths(toolchain: Pip, names: list[str]) -> dict[str, str]:
    if not names:
        return {}
    try:
        argv, env = toolchain.command("-c", PLUGIN_JSON_PATHS_SCRIPT, *names)
    except HostError as error:
        LOG.v(5, f"plugin_json_paths: could not create command: {error}")
        return {}
    try:
        completed = subprocess.run(argv, env=env, capture_output=True, check=False)
    except OSError as error:
        LOG.v(5, f"plugin_json_paths: failed to run script: {error}")
        return {}
    if completed.returncode != 0:
        LOG.v(5, f"plugin_json_paths: failed to run script: {exit_error(completed.returncode)}")
        return {}
    try:
        return json.loads(completed.stdout)
    except ValueError as error:
        raise HostError(f"failed to parse pulumi-plugin.json paths: {error}") from None


def load_plugin_json(package: str, path: str) -> dict | None:
    """pulumi-plugin.json read as Go's encoding/json reads it (keys match case-insensitively)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        LOG.v(5, f"failed to read {path}: {error}")
        return None
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("cannot unmarshal into a pulumi-plugin.json object")
        plugin = {}
        fields = {
            "resource": bool,
            "name": str,
            "version": str,
            "server": str,
            "parameterization": dict,
            "extensionparameterization": dict,
        }
        for key, value in raw.items():
            wanted = fields.get(key.lower())
            if wanted is None or value is None:
                continue
            if not isinstance(value, wanted):
                raise ValueError(f"field {key} has the wrong type ({type(value).__name__})")
            plugin[key.lower()] = value
        return plugin
    except ValueError as error:
        raise HostError(f"failed to parse pulumi-plugin.json for {package}: {error}") from None


def parameterization(package: str, raw: dict | None):
    if raw is None:
        return None
    import base64

    values = {key.lower(): value for key, value in raw.items()}
    try:
        value = base64.b64decode(values.get("value") or "", validate=True)
    except ValueError as error:
        raise HostError(f"failed to parse pulumi-plugin.json for {package}: {error}") from None
    return plugin_pb2.PackageParameterization(
        name=values.get("name") or "", version=values.get("version") or "", value=value
    )


def plugin_version(package_version: str) -> str:
    """A PEP 440 package version as a plugin's semantic version (1.2.3a4 → 1.2.3-alpha.4).

    Supported: N(.N)*[{a|b|rc}N][.postN][.devN]; at least three release segments.
    """
    if not package_version:
        raise ValueError("cannot parse empty string")
    if not package_version.isascii():
        raise ValueError("version is not ascii")
    if re.match(r"^\d+!", package_version):
        raise ValueError("epochs are not supported")
    match = re.match(r"^(\d+(?:\.\d+)*)", package_version)
    segments = match.group(1).split(".") if match else []
    rest = package_version[match.end() :] if match else package_version
    segments += ["0"] * (3 - len(segments))
    version = ".".join(segments)
    pre = re.match(r"^(a|b|rc)(\d*)", rest)
    if pre:
        label = {"a": "alpha", "b": "beta", "rc": "rc"}[pre.group(1)]
        version += f"-{label}.{pre.group(2)}"
        rest = rest[pre.end() :]
    post = re.match(r"^\.post(\d*)", rest)
    if post:
        version += f"+post{post.group(1)}"
        rest = rest[post.end() :]
    dev = re.match(r"^\.dev(\d*)", rest)
    if dev:
        version += ("" if post else "+") + f"dev{dev.group(1)}"
        rest = rest[dev.end() :]
    if rest:
        raise ValueError(f"'{rest}' still unparsed")
    return version


def package_dependency(
    package: str, package_version: str, plugin: dict | None
) -> plugin_pb2.PackageDependency | None:
    name = version = server = ""
    replacement = extension = None
    if plugin is not None:
        if not plugin.get("resource", False):
            LOG.v(5, f"ignoring package {package}: its pulumi-plugin.json says resource: false")
            return None
        name = plugin.get("name", "")
        version = plugin.get("version", "")
        server = plugin.get("server", "")
        replacement = parameterization(package, plugin.get("parameterization"))
        extension = parameterization(package, plugin.get("extensionparameterization"))
    if not name:
        name = package.removeprefix("pulumi-")
    if not version:
        try:
            version = plugin_version(package_version)
        except ValueError as error:
            LOG.v(5, f"no plugin version for {package} {package_version}: {error}")
            return None
    if not version.startswith("v"):
        version = "v" + version
    return plugin_pb2.PackageDependency(
        name=name,
        version=version,
        kind="resource",
        server=server,
        parameterization=replacement,
        extension=extension,
    )


def required_packages(toolchain: Pip) -> list[plugin_pb2.PackageDependency]:
    installed = toolchain.list_packages(transitive=True)
    paths = plugin_json_paths(toolchain, [name for name, _ in installed])
    packages = []
    for name, version in installed:
        if name in PACKAGES_WITHOUT_PLUGINS:
            continue
        plugin = load_plugin_json(name, paths[name]) if paths.get(name) else None
        # A package without pulumi-plugin.json counts only by its name.
        if plugin is None and not name.startswith("pulumi-"):
            continue
        dependency = package_dependency(name, version, plugin)
        if dependency is not None:
            packages.append(dependency)
    return packages


def warn_about_python_version(toolchain: Pip) -> None:
    """Writes to stderr (shown by the engine) when the program's Python is too old or unknown."""
    try:
        answer = toolchain.output("--version")
    except HostError as error:
        sys.stderr.write(f"Failed to resolve python version command: {error}\n")
        return
    text = re.sub(r"-?rc\d+$", "", answer.strip().removeprefix("Python "))
    version = parse_version_triple(text) if re.fullmatch(r"\d+\.\d+\.\d+", text) else None
    if version is None:
        sys.stderr.write(f"Failed to parse python version: '{text}'\n")
    elif version < MINIMUM_PYTHON:
        minimum = ".".join(map(str, MINIMUM_PYTHON))
        shown = ".".join(map(str, version))
        sys.stderr.write(
            f"Pulumi does not support Python {shown}. Please upgrade to at least {minimum}\n"
        )


def is_buildable_package(directory: str) -> tuple[bool, str]:
    """(buildable, project name): a pyproject.toml with a project name and a build backend."""
    path = os.path.join(directory, "pyproject.toml")
    if not os.path.exists(path):
        return False, ""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        raise HostError("parsing pyproject.toml needs Python 3.11 (tomllib)") from None
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise HostError(f"parsing pyproject.toml: {error}") from None
    name = (data.get("project") or {}).get("name") or ""
    backend = (data.get("build-system") or {}).get("build-backend") or ""
    return bool(name and backend), name


# --------------------------------------------------------------------------------------------
# The service.


class ChildProcesses:
    """Programs this host started, so Cancel and a lost request can interrupt them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self.cancelled = threading.Event()

    def add(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.add(process)

    def discard(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    @staticmethod
    def interrupt(process: subprocess.Popen) -> None:
        """SIGINT now, SIGKILL if still running after the grace period."""
        if process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            process.send_signal(signal.SIGINT)

        def kill_later():
            try:
                process.wait(INTERRUPT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    process.kill()

        threading.Thread(target=kill_later, daemon=True).start()

    def cancel_all(self) -> None:
        self.cancelled.set()
        with self._lock:
            running = list(self._running)
        for process in running:
            self.interrupt(process)


def fail(context: grpc.ServicerContext, error: Exception):
    if isinstance(error, Unsupported):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, str(error))
    context.abort(grpc.StatusCode.UNKNOWN, str(error))


class LanguageHost(language_pb2_grpc.LanguageRuntimeServicer):
    def __init__(self, executor: str, engine_address: str, tracing: str, stop):
        self.executor = executor
        self.engine_address = engine_address
        self.tracing = tracing
        self.children = ChildProcesses()
        self._stop = stop
        self._health_started = False
        if engine_address:
            self.start_health_check()

    # -- engine connection and liveness

    def start_health_check(self) -> None:
        if self._health_started:
            return
        self._health_started = True
        address = self.engine_address

        def check():
            channel = grpc.insecure_channel(address)
            probe = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=lambda message: message,
                response_deserializer=lambda data: data,
            )
            while True:
                time.sleep(HEALTH_CHECK_INTERVAL_SECONDS)
                try:
                    probe(b"", timeout=60)
                except grpc.RpcError as error:
                    # An engine that does not serve health checks is alive; any other error is not.
                    if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                        LOG.v(3, f"engine at {address} is gone ({error.code()}): stopping")
                        self._stop()
                        return

        threading.Thread(target=check, daemon=True).start()

    def require_engine(self) -> None:
        if not self.engine_address:
            raise HostError("when debugging or running explicitly, must call Handshake before Run")

    # -- RPCs

    def Handshake(self, request, context):
        self.engine_address = request.engine_address
        self.start_health_check()
        return language_pb2.LanguageHandshakeResponse()

    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=HOST_VERSION)

    def GetRequiredPlugins(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "method GetRequiredPlugins not implemented")

    def GetRequiredPackages(self, request, context):
        try:
            options = parse_options(request.info, is_plugin=False)
            toolchain = resolve_toolchain(options)
            streams = EngineLogStreams(self.engine_address)
            try:
                toolchain.ensure_venv(request.info.program_directory, streams)
            finally:
                streams.close()
            warn_about_python_version(toolchain)
            packages = required_packages(toolchain)
        except (HostError, Unsupported) as error:
            fail(context, error)
        return language_pb2.GetRequiredPackagesResponse(packages=packages)

    def Run(self, request, context):
        try:
            self.require_engine()
            options = parse_options(request.info, is_plugin=False)
            if request.attach_debugger:
                return language_pb2.RunResponse(
                    error="attaching a debugger is not supported by this Python language host"
                )
            toolchain = resolve_toolchain(options)
            toolchain.validate_venv()
            argv, env = toolchain.command(self.executor, *self.executor_arguments(request))
            env = dict(os.environ) if env is None else env
            if request.config:
                env["PULUMI_CONFIG"] = go_json(dict(request.config))
            env["PULUMI_CONFIG_SECRET_KEYS"] = go_json(list(request.configSecretKeys))
            if options.typechecker:
                self.typecheck(toolchain, options)
            LOG.v(5, f"Language host launching process: {' '.join(argv)}")
            error = self.run_program(argv, env, context)
        except (HostError, Unsupported) as failure:
            fail(context, failure)
        if error is None:
            return language_pb2.RunResponse(bail=True)
        return language_pb2.RunResponse(error=error)

    def executor_arguments(self, request) -> list[str]:
        args: list[str] = []
        for flag, value in (
            ("monitor", request.monitor_address),
            ("engine", self.engine_address),
            ("project", request.project),
            ("root_directory", request.info.root_directory),
            ("stack", request.stack),
            ("pwd", request.pwd),
            ("dry_run", "true" if request.dryRun else "false"),
            ("parallel", str(request.parallel)),
            ("tracing", self.tracing),
            ("organization", request.organization),
        ):
            if value:
                args += [f"--{flag}", value]
        args.append(request.info.entry_point)
        args += list(request.args)
        return args

    def typecheck(self, toolchain: Pip, options: PythonOptions) -> None:
        checker = options.typechecker
        args = ["-m", checker]
        if checker == "mypy":
            args += ["--exclude", os.path.relpath(toolchain.virtualenv, options.program_dir)]
        args.append(options.program_dir)
        installed = {name for name, _ in toolchain.list_packages(transitive=True)}
        if checker not in installed:
            pip = f"{toolchain.virtualenv_option}/bin/pip install -r requirements.txt"
            raise HostError(
                f"The typechecker option is set to {checker}, but {checker} is not installed. "
                f"Please add an entry for {checker} to requirements.txt and run `{pip}`"
            )
        argv, env = toolchain.command(*args)
        completed = subprocess.run(
            argv, env=env, cwd=options.program_dir, capture_output=True, check=False
        )
        sys.stdout.buffer.write(completed.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(completed.stderr)
        sys.stderr.flush()
        if completed.returncode != 0:
            output = (completed.stdout + completed.stderr).decode("utf-8", "replace")
            message = f"{checker} failed: {exit_error(completed.returncode)}"
            raise HostError(f"{message}\n{output}" if output else message)

    def run_program(self, argv: list[str], env: dict, context) -> str | None:
        """Runs the executor with the host's stdout and stderr; returns the error, "" if none,
        None if the program already told the user (bail)."""
        if self.children.cancelled.is_set():
            return "problem executing program (could not run language executor): context canceled"
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        except OSError as error:
            return "problem executing program (could not run language executor): " + start_error(
                argv[0], error
            )
        self.children.add(process)
        finished = threading.Event()

        def request_ended():
            if not finished.is_set():
                self.children.interrupt(process)

        context.add_callback(request_ended)
        try:
            returncode = process.wait()
        finally:
            finished.set()
            self.children.discard(process)
        if returncode == 0:
            return ""
        if returncode == EXIT_AFTER_USER_ACTIONABLE_MESSAGE:
            return None
        # A program ended by a signal has exit status -1, as Go reports it.
        return f"program exited with non-zero exit code: {max(returncode, -1)}"

    def InstallDependencies(self, request, context):
        try:
            options = parse_options(request.info, is_plugin=request.is_plugin)
        except HostError as error:
            fail(context, error)
        streams = ResponseStreams(
            lambda data: language_pb2.InstallDependenciesResponse(stdout=data),
            lambda data: language_pb2.InstallDependenciesResponse(stderr=data),
            request.is_terminal,
        )

        def work(streams: ResponseStreams):
            streams.out(b"Installing dependencies...\n\n")
            toolchain = resolve_toolchain(options)
            program_dir = request.info.program_directory
            version_tools = request.use_language_version_tools
            if request.is_plugin:
                buildable, _ = is_buildable_package(program_dir)
                if buildable:
                    toolchain.install_package(program_dir, streams, version_tools)
            toolchain.install_dependencies(program_dir, streams, version_tools)
            streams.out(b"Finished installing dependencies\n\n")

        _, failures = stream_work(streams, work)
        yield from streams.responses()
        if failures:
            failure = failures[0]
            if isinstance(failure, HostError | Unsupported):
                fail(context, failure)
            raise failure

    def RuntimeOptionsPrompts(self, request, context):
        raw = program_options(request.info)
        prompts = []
        string = language_pb2.RuntimeOptionPrompt.STRING
        value = language_pb2.RuntimeOptionPrompt.RuntimeOptionValue
        if "toolchain" not in raw:
            pip = value(promptType=string, stringValue="pip", displayName="pip")
            found = [name for name in ("poetry", "uv") if shutil.which(name)]
            missing = [name for name in ("poetry", "uv") if name not in found]
            choices = [pip]
            choices += [value(promptType=string, stringValue=n, displayName=n) for n in found]
            choices += [
                value(promptType=string, stringValue=n, displayName=f"{n} [not found]")
                for n in missing
            ]
            prompts.append(
                language_pb2.RuntimeOptionPrompt(
                    key="toolchain",
                    description="The toolchain to use for installing dependencies and running "
                    "the program",
                    promptType=string,
                    choices=choices,
                    default=pip,
                )
            )
        elif raw.get("toolchain") == "pip" and "virtualenv" not in raw:
            venv = value(promptType=string, stringValue="venv")
            prompts.append(
                language_pb2.RuntimeOptionPrompt(
                    key="virtualenv",
                    description="The virtualenv to use",
                    promptType=string,
                    choices=[venv],
                    default=venv,
                )
            )
        return language_pb2.RuntimeOptionsResponse(prompts=prompts)

    def Template(self, request, context):
        try:
            resolve_toolchain(parse_options(request.info, is_plugin=False))
        except (HostError, Unsupported) as error:
            fail(context, error)
        # A pip project (requirements.txt) needs no preparation.
        return language_pb2.TemplateResponse()

    def About(self, request, context):
        try:
            if request.HasField("info"):
                options = parse_options(request.info, is_plugin=False)
            else:
                options = PythonOptions(root="", program_dir="", toolchain="pip")
            toolchain = resolve_toolchain(options)
            executable, python_version, pip_version = toolchain.about()
        except (HostError, Unsupported) as error:
            fail(context, error)
        typechecker = {"mypy": "Mypy", "pyright": "Pyright"}.get(options.typechecker, "None")
        toolchain_name = {"auto": "Auto", "pip": "Pip"}[options.toolchain]
        return language_pb2.AboutResponse(
            executable=executable,
            version=python_version,
            metadata={
                "toolchain": toolchain_name,
                "toolchainVersion": pip_version,
                "typechecker": typechecker,
            },
        )

    def GetProgramDependencies(self, request, context):
        try:
            toolchain = resolve_toolchain(parse_options(request.info, is_plugin=False))
            try:
                listed = toolchain.list_packages(transitive=request.transitiveDependencies)
            except HostError as error:
                raise HostError(f"failed to get python dependencies: {error}") from None
        except (HostError, Unsupported) as error:
            fail(context, error)
        return language_pb2.GetProgramDependenciesResponse(
            dependencies=[language_pb2.DependencyInfo(name=n, version=v) for n, v in listed]
        )

    def RunPlugin(self, request, context):
        try:
            self.require_engine()
            if request.kind == ANALYZER_KIND:
                raise Unsupported("policy packs are not supported by this Python language host")
            if request.attach_debugger:
                raise Unsupported(
                    "attaching a debugger is not supported by this Python language host"
                )
            options = parse_options(request.info, is_plugin=True)
            toolchain = resolve_toolchain(options)
            argv, env = self.plugin_command(toolchain, options, request)
        except (HostError, Unsupported) as error:
            fail(context, error)
        merged = None if env is None and not request.env else dict(env or {})
        for entry in request.env:
            key, _, value = entry.partition("=")
            merged.pop(key, None)
            merged[key] = value
        streams = ResponseStreams(
            lambda data: language_pb2.RunPluginResponse(stdout=data),
            lambda data: language_pb2.RunPluginResponse(stderr=data),
            terminal=False,
        )

        def work(streams: ResponseStreams):
            try:
                returncode, _ = streams.run(argv, env=merged, cwd=request.pwd or None)
            except OSError as error:
                raise HostError(
                    "problem executing plugin program (could not run language executor): "
                    + start_error(argv[0], error)
                ) from None
            if returncode != 0:
                streams.put(language_pb2.RunPluginResponse(exitcode=max(returncode, -1)))

        _, failures = stream_work(streams, work)
        yield from streams.responses()
        if failures:
            failure = failures[0]
            if isinstance(failure, HostError | Unsupported):
                fail(context, failure)
            raise failure

    def plugin_command(self, toolchain: Pip, options: PythonOptions, request):
        has_main = os.path.exists(os.path.join(options.root, "__main__.py"))
        probe_argv, probe_env = toolchain.command("-c", "import pulumi.run.plugin")
        has_run_module = True
        try:
            probe = subprocess.run(
                probe_argv, env=probe_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            if probe.returncode != 0 and b"ModuleNotFoundError" in probe.stdout:
                has_run_module = False
        except OSError:
            pass
        if has_run_module and not has_main:
            buildable, name = is_buildable_package(options.root)
            if not buildable:
                raise HostError(
                    "plugin is not runnable, it provides neither __main__.py nor a buildable "
                    "pyproject.toml"
                )
            return toolchain.command("-m", "pulumi.run.plugin", name, *request.args)
        return toolchain.command(request.info.program_directory, *request.args)

    def Cancel(self, request, context):
        self.children.cancel_all()
        return empty_pb2.Empty()

    def _unsupported(self, name: str, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"{name} is not supported by this Python language host"
        )

    def GenerateProgram(self, request, context):
        # `pulumi import` asks for this after the import itself has succeeded.
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "generating Python code (GenerateProgram) is not supported by this Python language "
            "host; the import itself is done: run `pulumi import` with --generate-code=false and "
            "write the resource's code by hand",
        )

    def GenerateProject(self, request, context):
        self._unsupported("GenerateProject", context)

    def GeneratePackage(self, request, context):
        self._unsupported("GeneratePackage", context)

    def Pack(self, request, context):
        self._unsupported("Pack", context)

    def Link(self, request, context):
        self._unsupported("Link", context)


# --------------------------------------------------------------------------------------------


def find_executor(given: str) -> str:
    if given:
        LOG.v(3, f"language host asked to use specific executor: `{given}`")
        return given
    path = str(Path(__file__).resolve().parent / EXECUTOR_NAME)
    if not os.path.exists(path):
        sys.stderr.write(
            f"error: missing executor {path}: stat {path}: no such file or directory\n"
        )
        sys.exit(1)
    LOG.v(3, f"language host identified executor from path: `{path}`")
    return path


def main(argv: list[str]) -> int:
    flags = parse_flags(argv)
    if flags.version:
        print(HOST_VERSION)
        return 0
    LOG.to_stderr = flags.logtostderr
    LOG.verbosity = flags.verbosity
    executor = find_executor(flags.use_executor)
    engine_address = flags.positional[0] if flags.positional else ""

    stopped = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    host = LanguageHost(executor, engine_address, flags.tracing, stopped.set)
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(host, server)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.stderr.write("error: could not start language host RPC server: no port\n")
        return 1
    server.start()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    # The engine reads exactly one line, the port, before it treats stdout as the program's.
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    stopped.wait()
    host.children.cancel_all()
    server.stop(grace=1).wait(5)
    # Worker threads still inside an RPC must not keep the process alive: the engine gives a
    # plugin five seconds after SIGINT before it kills it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
