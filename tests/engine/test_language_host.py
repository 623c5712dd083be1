"""The Python language host under the real Pulumi CLI: programs, dynamic providers, errors.

The host is this project's substitute for upstream's (tests/engine/substitutes/language_host/
README.md); these tests hold it to the upstream host's behaviour. The CLI tests need a
directory holding `pulumi` and the host's files, named by CHI_PERSIST_TOOLCHAIN_BIN
(tests/engine/substitutes/language_host/host_bin.py lays one out from a pulumi binary). Each
runs in its own Pulumi home with the local file backend, and no plugin may be downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from pulumi.runtime.proto import language_pb2, language_pb2_grpc

from tests.engine.substitutes.language_host import host_bin, language_host

HOST = Path(language_host.__file__)
TOOLCHAIN_BIN = os.environ.get("CHI_PERSIST_TOOLCHAIN_BIN", "")
BIN_FILES = (
    "pulumi",
    "pulumi-language-python",
    "pulumi-language-python-exec",
    "pulumi-resource-pulumi-python",
)
SDK_REQUIREMENT = "pulumi==3.272.0"
FAILED = 1  # the CLI's exit code for an operation that failed

needs_cli = pytest.mark.skipif(
    not TOOLCHAIN_BIN,
    reason="CHI_PERSIST_TOOLCHAIN_BIN is unset: no directory with the real pulumi CLI and the "
    "Python host's files (tests/engine/substitutes/language_host/host_bin.py PULUMI DIR lays "
    "one out)",
)

PROGRAM = '''\
"""A program that touches everything the language host must pass through."""

import sys
from pathlib import Path

import pulumi
from pulumi.dynamic import CreateResult, Resource, ResourceProvider


class NoteProvider(ResourceProvider):
    """Writes a file on create and removes it on delete, in the dynamic provider's process."""

    def create(self, props):
        path = Path(props["directory"]) / (props["name"] + ".txt")
        path.write_text(props["text"])
        outs = dict(props, length=len(props["text"]), python=sys.executable)
        return CreateResult(id_=str(path), outs=outs)

    def delete(self, id, props):
        Path(id).unlink(missing_ok=True)


class Note(Resource):
    length: pulumi.Output[int]
    python: pulumi.Output[str]

    def __init__(self, name, directory, text):
        props = {"name": name, "directory": directory, "text": text, "length": None,
                 "python": None}
        super().__init__(NoteProvider(), name, props)


config = pulumi.Config()
if config.get_bool("fail"):
    raise pulumi.RunError("the test asked this program to fail")
if config.get_bool("crash"):
    raise ValueError("an unexpected crash")

note = Note("note", directory=config.require("notesDir"), text=config.require("greeting"))
pulumi.export("length", note.length)
pulumi.export("providerPython", note.python)
pulumi.export("greeting", config.require("greeting"))
pulumi.export("token", config.require_secret("token"))
pulumi.export("stack", pulumi.get_stack())
pulumi.export("project", pulumi.get_project())
pulumi.export("organization", pulumi.get_organization())
pulumi.export("rootDirectory", pulumi.get_root_directory())
'''

PROJECT_YAML = """\
name: {name}
runtime:
  name: python
  options:
    toolchain: pip
    virtualenv: venv
"""


# --------------------------------------------------------------------------------------------
# The host's own rules, without the CLI.


@pytest.mark.parametrize(
    ("package_version", "plugin_version"),
    [
        ("5.5.3", "5.5.3"),
        ("1.2", "1.2.0"),
        ("1", "1.0.0"),
        ("1.2.3a4", "1.2.3-alpha.4"),
        ("1.2.3b4", "1.2.3-beta.4"),
        ("1.2.3rc4", "1.2.3-rc.4"),
        ("1.2.3.post4", "1.2.3+post4"),
        ("1.2.3.dev5", "1.2.3+dev5"),
        ("1.2.3.post4.dev5", "1.2.3+post4dev5"),
        ("3.31.0a1605189729", "3.31.0-alpha.1605189729"),
    ],
)
def test_package_version_becomes_plugin_version(package_version, plugin_version):
    """A PEP 440 package version maps to the plugin's semantic version as upstream maps it."""
    assert language_host.plugin_version(package_version) == plugin_version


@pytest.mark.parametrize("package_version", ["", "1!2.0", "1.2.3.", "1.2.3+local", "1.2.3é"])
def test_unmappable_package_version_is_refused(package_version):
    """Versions the plugin version cannot be derived from are refused, not guessed."""
    with pytest.raises(ValueError):
        language_host.plugin_version(package_version)


def test_plugin_json_resource_false_means_no_plugin(tmp_path):
    """A package whose pulumi-plugin.json says resource: false asks for no plugin."""
    plugin_json = tmp_path / "pulumi-plugin.json"
    plugin_json.write_text('{"resource": false, "name": "x"}')
    plugin = language_host.load_plugin_json("pulumi-x", str(plugin_json))
    assert language_host.package_dependency("pulumi-x", "1.0.0", plugin) is None


def test_plugin_json_of_the_wrong_shape_is_an_error(tmp_path):
    """A malformed pulumi-plugin.json names the package instead of being skipped silently."""
    plugin_json = tmp_path / "pulumi-plugin.json"
    plugin_json.write_text('{"resource": "yes"}')
    with pytest.raises(language_host.HostError, match="pulumi-plugin.json for pulumi-x"):
        language_host.load_plugin_json("pulumi-x", str(plugin_json))


# Stands in for pulumi-language-python-exec: records how it was started, exits as the
# config value proj:exit says.
RECORDING_EXECUTOR = """\
import json, os, sys
record = {"argv": sys.argv[1:], "cwd": os.getcwd(), "python": sys.executable,
          "env": {k: v for k, v in os.environ.items() if k.startswith(("PULUMI_", "VIRTUAL_ENV"))}}
with open(os.environ["RECORD_TO"], "w") as handle:
    json.dump(record, handle)
sys.exit(int(json.loads(os.environ.get("PULUMI_CONFIG", "{}")).get("proj:exit", "0")))
"""


@pytest.fixture
def host_stub(tmp_path, monkeypatch):
    """The host started as the CLI starts it, with a recording executor; yields a client."""
    executor = tmp_path / "recording-executor.py"
    executor.write_text(RECORDING_EXECUTOR)
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "record.json"))
    process = subprocess.Popen(
        [sys.executable, str(HOST), "--logtostderr", "-v=0", "-use-executor", str(executor),
         "127.0.0.1:1"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        port = int(process.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield language_pb2_grpc.LanguageRuntimeStub(channel)
        channel.close()
    finally:
        process.terminate()
        process.wait(10)


def program_info(directory: Path, **options) -> language_pb2.ProgramInfo:
    struct = struct_pb2.Struct()
    struct.update(options)
    return language_pb2.ProgramInfo(
        root_directory=str(directory),
        program_directory=str(directory),
        entry_point=".",
        options=struct,
    )


def test_required_packages_are_the_sdks_plugins_at_their_exact_versions(tmp_path, host_stub):
    """With the project's venv holding pulumi-openstack and pulumi-command, the engine is asked
    for exactly the plugin versions their pulumi-plugin.json names."""
    if sys.prefix == sys.base_prefix:
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix})")
    (tmp_path / "venv").symlink_to(sys.prefix)
    info = program_info(tmp_path, toolchain="pip", virtualenv="venv")
    answer = host_stub.GetRequiredPackages(language_pb2.GetRequiredPackagesRequest(info=info))
    found = {(package.name, package.version, package.kind) for package in answer.packages}
    assert ("openstack", "v5.5.3", "resource") in found
    assert ("command", "v1.2.1", "resource") in found


def test_run_starts_the_executor_as_upstream_does(tmp_path, host_stub):
    """Run starts the executor with the venv's interpreter, the upstream flags in their order,
    and the config and its secret keys as JSON in PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS."""
    if sys.prefix == sys.base_prefix:
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix})")
    (tmp_path / "venv").symlink_to(sys.prefix)
    request = language_pb2.RunRequest(
        monitor_address="127.0.0.1:2",
        project="proj",
        stack="dev",
        pwd=str(tmp_path),
        args=["extra"],
        config={"proj:b": "2", "proj:a": "<1&>"},
        configSecretKeys=["proj:b"],
        dryRun=True,
        parallel=8,
        organization="org",
        info=program_info(tmp_path, toolchain="pip", virtualenv="venv"),
    )
    answer = host_stub.Run(request)
    assert (answer.error, answer.bail) == ("", False)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["argv"] == [
        "--monitor", "127.0.0.1:2", "--engine", "127.0.0.1:1", "--project", "proj",
        "--root_directory", str(tmp_path), "--stack", "dev", "--pwd", str(tmp_path),
        "--dry_run", "true", "--parallel", "8", "--organization", "org", ".", "extra",
    ]  # fmt: skip
    assert record["python"] == str(tmp_path / "venv" / "bin" / "python")
    assert record["env"]["VIRTUAL_ENV"] == str(tmp_path / "venv")
    assert record["env"]["PULUMI_CONFIG"] == '{"proj:a":"\\u003c1\\u0026\\u003e","proj:b":"2"}'
    assert record["env"]["PULUMI_CONFIG_SECRET_KEYS"] == '["proj:b"]'


@pytest.mark.parametrize(
    ("exit_code", "error", "bail"),
    [
        (1, "program exited with non-zero exit code: 1", False),
        (32, "", True),  # the program already showed the user its error
    ],
)
def test_run_reports_how_the_program_ended(tmp_path, host_stub, exit_code, error, bail):
    """A failed program is an error for the engine; exit code 32 means "already reported"."""
    if sys.prefix == sys.base_prefix:
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix})")
    (tmp_path / "venv").symlink_to(sys.prefix)
    request = language_pb2.RunRequest(
        info=program_info(tmp_path, toolchain="pip", virtualenv="venv"),
        config={"proj:exit": str(exit_code)},
    )
    answer = host_stub.Run(request)
    assert (answer.error, answer.bail) == (error, bail)


def test_run_refuses_a_directory_that_is_not_a_virtualenv(tmp_path, host_stub):
    """Run stops before starting anything when `virtualenv` is not a virtual environment."""
    (tmp_path / "venv").mkdir()
    (tmp_path / "venv" / "stray-file").write_text("")
    info = program_info(tmp_path, toolchain="pip", virtualenv="venv")
    with pytest.raises(grpc.RpcError) as raised:
        host_stub.Run(language_pb2.RunRequest(info=info, monitor_address="127.0.0.1:1"))
    assert raised.value.code() == grpc.StatusCode.UNKNOWN
    assert "The 'virtualenv' option in Pulumi.yaml is set to \"venv\"" in raised.value.details()
    assert "doesn't appear to be a virtual environment" in raised.value.details()


def test_uv_toolchain_is_refused_with_the_fix(tmp_path, host_stub):
    """A toolchain this host does not serve is an error that says what to use instead."""
    info = program_info(tmp_path, toolchain="uv")
    with pytest.raises(grpc.RpcError) as raised:
        host_stub.GetRequiredPackages(language_pb2.GetRequiredPackagesRequest(info=info))
    assert "the uv toolchain is not supported" in raised.value.details()
    assert "toolchain: pip" in raised.value.details()


# --------------------------------------------------------------------------------------------
# Under the real CLI.


class Cli:
    """Runs the real pulumi with a private home and a local file backend."""

    def __init__(self, bin_dir: Path, home: Path, state: Path):
        missing = [name for name in BIN_FILES if not (bin_dir / name).is_file()]
        assert not missing, f"CHI_PERSIST_TOOLCHAIN_BIN={bin_dir} lacks {', '.join(missing)}"
        self.bin_dir, self.home = bin_dir, home
        state.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            PULUMI_HOME=str(home),
            PULUMI_BACKEND_URL=f"file://{state}",
            PULUMI_CONFIG_PASSPHRASE="language-host-tests",
            PULUMI_SKIP_UPDATE_CHECK="true",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
        )
        for name in ("PULUMI_ACCESS_TOKEN", "PULUMI_STACK", "VIRTUAL_ENV", "PYTHONHOME"):
            self.env.pop(name, None)
        self.timings: list[tuple[str, float]] = []

    def with_state(self, state: Path) -> Cli:
        """The same CLI and home with another state directory (so stacks never collide)."""
        return Cli(self.bin_dir, self.home, state)

    def run(self, cwd: Path, *args: str, expect: int | None = 0, timeout: int = 600):
        started = time.monotonic()
        completed = subprocess.run(
            ["pulumi", "--non-interactive", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.timings.append((" ".join(args), time.monotonic() - started))
        if expect is not None:
            assert completed.returncode == expect, (
                f"pulumi {' '.join(args)} exited {completed.returncode}, expected {expect}\n"
                f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
            )
        return completed


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    if not TOOLCHAIN_BIN:
        pytest.skip("CHI_PERSIST_TOOLCHAIN_BIN is unset")
    home = tmp_path_factory.mktemp("pulumi-cli")
    return Cli(Path(TOOLCHAIN_BIN), home / "pulumi-home", home / "state")


@pytest.fixture(scope="session")
def installed_project(cli, tmp_path_factory):
    """A project whose venv `pulumi install` made from requirements.txt; (dir, its output)."""
    directory = tmp_path_factory.mktemp("installed")
    (directory / "Pulumi.yaml").write_text(PROJECT_YAML.format(name="installed"))
    (directory / "__main__.py").write_text("")
    (directory / "requirements.txt").write_text(SDK_REQUIREMENT + "\n")
    completed = cli.run(directory, "install")
    return directory, completed


@pytest.fixture
def project(cli, installed_project, tmp_path):
    """The test program with a fresh stack `dev` (and state of its own), its venv the one
    `pulumi install` made; (directory, notes directory, CLI)."""
    cli = cli.with_state(tmp_path / "state")
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "Pulumi.yaml").write_text(PROJECT_YAML.format(name="hosttest"))
    (directory / "__main__.py").write_text(PROGRAM)
    (directory / "venv").symlink_to(installed_project[0] / "venv")
    notes = tmp_path / "notes"
    notes.mkdir()
    cli.run(directory, "stack", "init", "dev")
    cli.run(directory, "config", "set", "greeting", "hello from the program")
    cli.run(directory, "config", "set", "notesDir", str(notes))
    cli.run(directory, "config", "set", "--secret", "token", "not-a-real-token-5f1c")
    return directory, notes, cli


def stack_outputs(cli: Cli, directory: Path, *flags: str) -> dict:
    return json.loads(cli.run(directory, "stack", "output", "--json", *flags).stdout)


@needs_cli
def test_pulumi_install_creates_the_virtualenv_from_requirements(cli, installed_project):
    """`pulumi install` makes `venv` beside Pulumi.yaml with pip and installs requirements.txt."""
    directory, completed = installed_project
    output = completed.stdout + completed.stderr
    for step in (
        "Installing dependencies...",
        "Creating virtual environment...",
        "Updating pip, setuptools, and wheel in virtual environment...",
        "Installing dependencies in virtual environment...",
        "Finished installing dependencies",
    ):
        assert step in output
    version = subprocess.run(
        [
            str(directory / "venv" / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, pulumi; print(m.version('pulumi'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == SDK_REQUIREMENT.split("==")[1]


@needs_cli
def test_up_preview_and_destroy_run_the_program_and_its_dynamic_provider(project):
    """`up` runs the program with its config and secret in the project's venv and the dynamic
    provider creates its resource; a preview right after finds nothing to change; `destroy`
    reaches the provider's delete and leaves the stack empty."""
    directory, notes, cli = project
    cli.run(directory, "up", "--yes")

    assert (notes / "note.txt").read_text() == "hello from the program"
    outputs = stack_outputs(cli, directory, "--show-secrets")
    assert outputs == {
        "greeting": "hello from the program",
        "length": len("hello from the program"),
        "providerPython": str(directory / "venv" / "bin" / "python"),
        "token": "not-a-real-token-5f1c",
        "stack": "dev",
        "project": "hosttest",
        "organization": "organization",
        "rootDirectory": str(directory),
    }
    assert stack_outputs(cli, directory)["token"] == "[secret]"
    assert "not-a-real-token-5f1c" not in cli.run(directory, "stack", "export").stdout

    cli.run(directory, "preview", "--expect-no-changes")

    cli.run(directory, "destroy", "--yes")
    assert not (notes / "note.txt").exists()
    exported = json.loads(cli.run(directory, "stack", "export").stdout)
    assert not exported["deployment"].get("resources")


@needs_cli
def test_run_error_fails_the_update_with_its_message(project):
    """A pulumi.RunError is shown as an error and the update fails, as upstream shows it."""
    directory, notes, cli = project
    cli.run(directory, "config", "set", "fail", "true")
    completed = cli.run(directory, "up", "--yes", expect=FAILED)
    output = completed.stdout + completed.stderr
    assert "error: the test asked this program to fail" in output
    assert "an unhandled error occurred: program exited with non-zero exit code: 1" in output
    assert not (notes / "note.txt").exists()


@needs_cli
def test_unhandled_exception_shows_the_users_traceback_only(project):
    """An exception in the program shows its traceback and nothing about the host."""
    directory, _, cli = project
    cli.run(directory, "config", "set", "crash", "true")
    completed = cli.run(directory, "preview", expect=FAILED)
    output = completed.stdout + completed.stderr
    assert "Program failed with an unhandled exception:" in output
    assert "ValueError: an unexpected crash" in output
    assert "an unhandled error occurred" not in output


@needs_cli
def test_a_venv_directory_that_is_not_a_virtualenv_is_reported(cli, tmp_path):
    """A `venv` that holds no interpreter fails the preview and names the interpreter looked for."""
    cli = cli.with_state(tmp_path / "state")
    directory = tmp_path / "broken"
    directory.mkdir()
    (directory / "Pulumi.yaml").write_text(PROJECT_YAML.format(name="broken"))
    (directory / "__main__.py").write_text(PROGRAM)
    (directory / "venv").mkdir()
    (directory / "venv" / "stray-file").write_text("")
    cli.run(directory, "stack", "init", "dev")
    completed = cli.run(directory, "preview", expect=FAILED)
    output = completed.stdout + completed.stderr
    assert "failed to discover package requirements" in output
    assert str(directory / "venv" / "bin" / "python") in output


@needs_cli
def test_the_engine_asks_for_the_exact_plugin_versions_of_the_venv(cli, tmp_path):
    """`pulumi about` lists openstack 5.5.3 and command 1.2.1 as the project's plugins, from the
    project's venv (the test environment, which has pulumi-openstack and pulumi-command)."""
    if sys.prefix == sys.base_prefix:
        pytest.skip(f"the tests do not run in a virtual environment ({sys.prefix})")
    cli = cli.with_state(tmp_path / "state")
    directory = tmp_path / "sdks"
    directory.mkdir()
    (directory / "Pulumi.yaml").write_text(PROJECT_YAML.format(name="sdks"))
    (directory / "__main__.py").write_text("")
    (directory / "venv").symlink_to(sys.prefix)
    cli.run(directory, "stack", "init", "dev")
    about = json.loads(cli.run(directory, "about", "--json").stdout)
    assert about["errors"] == []
    plugins = {(plugin["name"], plugin["kind"], plugin["version"]) for plugin in about["plugins"]}
    assert ("openstack", "resource", "5.5.3") in plugins
    assert ("command", "resource", "1.2.1") in plugins
    assert ("python", "language", "3.274.1") in plugins


@needs_cli
def test_about_names_the_programs_interpreter_and_toolchain(project):
    """`pulumi about` reports the venv's Python, the pip toolchain and the program's packages."""
    directory, _, cli = project
    about = json.loads(cli.run(directory, "about", "--json").stdout)
    runtime = about["runtime"]
    assert runtime["language"] == "python"
    assert runtime["executable"] == str(directory / "venv" / "bin" / "python")
    assert runtime["toolchain"] == "Pip"
    venv_python = subprocess.run(
        [runtime["executable"], "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert runtime["version"] == venv_python.stdout.strip()
    assert {"name": "pulumi", "version": "3.272.0"} in about["dependencies"]


def test_host_bin_lays_out_what_the_cli_looks_for(tmp_path):
    """The bin directory holds the CLI and the host's files, executable, and the wrapper
    starts the copy of this checkout's host beside it."""
    sdk = host_bin.sdk_module_dir()
    if not sdk.is_dir():
        pytest.skip(f"the Pulumi SDK module is not in the Go module cache ({sdk})")
    fake_cli = tmp_path / "pulumi-build"
    fake_cli.write_bytes(b"#!/bin/sh\necho fake\n")
    out = host_bin.assemble(fake_cli, tmp_path / "bin")
    for name in BIN_FILES:
        assert os.access(out / name, os.X_OK), name
    assert not (out / "pulumi").is_symlink()
    assert (out / "pulumi-language-python-exec").read_bytes() == (
        sdk / "python" / "cmd" / "pulumi-language-python-exec"
    ).read_bytes()
    version = subprocess.run(
        [str(out / "pulumi-language-python"), "-version"], capture_output=True, text=True
    )
    assert version.stdout.strip() == language_host.HOST_VERSION
    assert (out / "language_host.py").read_bytes() == host_bin.LANGUAGE_HOST.read_bytes()
