"""Talking to a Pulumi resource plugin over gRPC, as the engine does, without the engine.

A resource plugin started without arguments listens on a free local port and
prints it on its first line of output; the engine then calls it through the
ResourceProvider service. These helpers do the same, so a plugin's schema,
configuration and functions can be exercised directly.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

STARTUP_SECONDS = 60
CALL_SECONDS = 120


def to_struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def from_struct(message: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(message)


class RunningPlugin:
    """A started plugin process and a ResourceProvider stub connected to it."""

    def __init__(self, process: subprocess.Popen, stub: provider_pb2_grpc.ResourceProviderStub):
        self.process = process
        self.stub = stub

    def schema(self) -> dict:
        response = self.stub.GetSchema(
            provider_pb2.GetSchemaRequest(version=0), timeout=CALL_SECONDS
        )
        return json.loads(response.schema)

    def check_config(self, news: dict, urn: str) -> tuple[dict, list[str]]:
        """The provider's inputs after CheckConfig, and the failures it reported."""
        response = self.stub.CheckConfig(
            provider_pb2.CheckRequest(urn=urn, olds=to_struct({}), news=to_struct(news)),
            timeout=CALL_SECONDS,
        )
        failures = [f"{failure.property}: {failure.reason}" for failure in response.failures]
        return from_struct(response.inputs), failures

    def check(self, urn: str, news: dict) -> tuple[dict, list[str]]:
        """A resource's inputs after Check (defaults and auto-names filled in), and failures."""
        response = self.stub.Check(
            provider_pb2.CheckRequest(
                urn=urn, olds=to_struct({}), news=to_struct(news), randomSeed=os.urandom(32)
            ),
            timeout=CALL_SECONDS,
        )
        failures = [f"{failure.property}: {failure.reason}" for failure in response.failures]
        return from_struct(response.inputs), failures

    def configure(self, inputs: dict) -> None:
        self.stub.Configure(
            provider_pb2.ConfigureRequest(
                args=to_struct(inputs), acceptSecrets=True, acceptResources=True
            ),
            timeout=CALL_SECONDS,
        )

    def invoke(self, token: str, arguments: dict) -> tuple[dict, list[str]]:
        """A function's result, and the failures the provider reported."""
        response = self.stub.Invoke(
            provider_pb2.InvokeRequest(tok=token, args=to_struct(arguments)),
            timeout=CALL_SECONDS,
        )
        failures = [f"{failure.property}: {failure.reason}" for failure in response.failures]
        return from_struct(getattr(response, "return")), failures


@contextmanager
def running_plugin(
    binary: Path, env: dict[str, str], cwd: Path, log: Path
) -> Iterator[RunningPlugin]:
    """Start the plugin with exactly `env` (plus PATH), connect, and stop it afterwards."""
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    with open(log, "ab") as stderr:
        process = subprocess.Popen(
            [str(binary)], stdout=subprocess.PIPE, stderr=stderr, env=environment, cwd=cwd
        )
    channel = None
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline().decode().strip()
        if not first_line.isdigit():
            process.kill()
            raise RuntimeError(
                f"{binary.name} did not print its port (got {first_line!r}); "
                f"its log:\n{log.read_text(errors='replace')[-3000:]}"
            )
        channel = grpc.insecure_channel(
            f"127.0.0.1:{first_line}",
            options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
        )
        grpc.channel_ready_future(channel).result(timeout=STARTUP_SECONDS)
        yield RunningPlugin(process, provider_pb2_grpc.ResourceProviderStub(channel))
    finally:
        if channel is not None:
            channel.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
