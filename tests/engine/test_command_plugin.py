"""The command resource plugin, this project's substitute for pulumi-command 1.2.1's
(tests/engine/substitutes/command_plugin): its Go tests, and the built binary as the engine
and the installed pulumi_command SDK see it."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

MODULE = REPO_ROOT / "tests" / "engine" / "substitutes" / "command_plugin"
BUILD = MODULE / "build"
VERSION = "1.2.1"
GO = shutil.which("go")

pytestmark = pytest.mark.skipif(
    GO is None,
    reason="the go command is not installed: it builds and tests the command provider plugin "
    "(install Go 1.26 or later)",
)


def go_environment() -> dict[str, str]:
    """The build script's settings, so `go test` and `build` share Go's build cache."""
    environment = dict(os.environ, CGO_ENABLED="0")
    environment.pop("SSH_AUTH_SOCK", None)
    return environment


def test_go_tests_pass() -> None:
    """The plugin's Go tests pass: Check, Diff, local and remote commands, SSH auth, dial
    retries and CopyToRemote against an SSH server on 127.0.0.1."""
    result = subprocess.run(
        ["nice", "-n", "10", GO, "test", "-count=1", "./..."],
        cwd=MODULE,
        env=go_environment(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]


@pytest.fixture(scope="module")
def plugin_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plugin") / "pulumi-resource-command"
    result = subprocess.run(
        [str(BUILD), str(out), VERSION],
        env=go_environment(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def provider(plugin_binary: Path) -> Iterator[object]:
    """A gRPC client of the plugin, started without an engine as `pulumi` can attach to it."""
    import grpc
    from pulumi.runtime.proto import provider_pb2_grpc

    process = subprocess.Popen(
        [str(plugin_binary)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"the plugin printed {port!r} instead of its port"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield provider_pb2_grpc.ResourceProviderStub(channel)
        channel.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_build_writes_the_binary_whole_and_says_how_to_call_it(
    plugin_binary: Path, tmp_path: Path
) -> None:
    """The build leaves only the executable in its directory, and refuses a call without
    OUT and VERSION with the usage."""
    assert os.access(plugin_binary, os.X_OK)
    assert [p.name for p in plugin_binary.parent.iterdir()] == [plugin_binary.name]
    result = subprocess.run([str(BUILD), str(tmp_path / "x")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "VERSION" in result.stderr


def test_plugin_reports_the_version_the_sdk_asks_for(provider: object) -> None:
    """GetPluginInfo answers the stamped version, the one pulumi_command's pulumi-plugin.json
    names (what the engine looks for)."""
    import pulumi_command
    from google.protobuf import empty_pb2

    wanted = json.loads((Path(pulumi_command.__file__).parent / "pulumi-plugin.json").read_text())
    assert wanted == {"resource": True, "name": "command", "version": VERSION}
    assert provider.GetPluginInfo(empty_pb2.Empty()).version == VERSION


def pulumi_names(cls: type) -> set[str]:
    """The wire names of a generated SDK class's properties."""
    names = set()
    for value in vars(cls).values():
        if isinstance(value, property) and hasattr(value.fget, "_pulumi_name"):
            names.add(value.fget._pulumi_name)
    return names


def resource_token(cls: type) -> str:
    """The type token the SDK registers the class with (what the engine sends to Check)."""
    match = re.search(r"__init__\(\s*'([a-z]+:[a-z]+:[A-Za-z]+)'", inspect.getsource(cls))
    assert match, f"no type token in {cls.__name__}"
    return match.group(1)


def test_schema_has_every_name_the_python_sdk_uses(provider: object) -> None:
    """Every resource token, input, output, connection field and local.run argument of the
    installed pulumi_command 1.2.1 is in the plugin's schema, and nothing else is."""
    from pulumi.runtime.proto import provider_pb2
    from pulumi_command import local, remote

    schema = json.loads(provider.GetSchema(provider_pb2.GetSchemaRequest()).schema)
    assert schema["name"] == "command" and schema["version"] == VERSION

    resources = [
        (local.Command, local.CommandArgs),
        (remote.Command, remote.CommandArgs),
        (remote.CopyToRemote, remote.CopyToRemoteArgs),
        (remote.CopyFile, remote.CopyFileArgs),
    ]
    assert set(schema["resources"]) == {resource_token(cls) for cls, _ in resources}
    for cls, args in resources:
        spec = schema["resources"][resource_token(cls)]
        assert set(spec["properties"]) == pulumi_names(cls), cls
        assert set(spec["inputProperties"]) == pulumi_names(args), args

    for args, output, token in [
        (remote.ConnectionArgs, remote.outputs.Connection, "command:remote:Connection"),
        (
            remote.ProxyConnectionArgs,
            remote.outputs.ProxyConnection,
            "command:remote:ProxyConnection",
        ),
    ]:
        assert (
            set(schema["types"][token]["properties"]) == pulumi_names(args) == pulumi_names(output)
        )

    for enum, token in [
        (local.Logging, "command:local:Logging"),
        (remote.Logging, "command:remote:Logging"),
    ]:
        assert [v["value"] for v in schema["types"][token]["enum"]] == [m.value for m in enum]

    run = schema["functions"]["command:local:run"]
    arguments = set(re.findall(r"__args__\['(\w+)'\]", inspect.getsource(local.run)))
    assert set(run["inputs"]["properties"]) == arguments
    assert set(run["outputs"]["properties"]) == pulumi_names(local.RunResult)
