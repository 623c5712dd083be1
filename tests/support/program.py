"""Evaluate the Pulumi program in-process under mocks, recording every registration.

`evaluate_program` runs `__main__.py` the way the CLI would for one stack: the
defaults declared in Pulumi.yaml first, then the stack's own config. It returns
every resource registration with its inputs and options (protect,
delete-before-replace, dependencies), which `Mocks.new_resource` never sees, and
the stack's exported outputs. Each evaluation runs in a forked child process,
so evaluations never share state.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import runpy
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import wait_for_rpcs

from tests.support.paths import REPO_ROOT

PROJECT = "chi-persist"
NAMESPACE = "chi-persist"
UNKNOWN = "<unknown>"

# The credentials start-stack.sh would print; fixed so tests can find them.
MOCK_CREDENTIALS = {
    "postgres_user": "mlflow",
    "postgres_password": "pg-password-from-volume",
    "minio_root_user": "minio-user-from-volume",
    "minio_root_password": "minio-password-from-volume",
    "jupyter_token": "jupyter-token-from-volume",
}

SERVER = "openstack:compute/instance:Instance"
VOLUME = "openstack:blockstorage/volume:Volume"
ATTACHMENT = "openstack:compute/volumeAttach:VolumeAttach"
PORT = "openstack:networking/port:Port"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
SECURITY_GROUP = "openstack:networking/secGroup:SecGroup"
SECURITY_GROUP_RULE = "openstack:networking/secGroupRule:SecGroupRule"
REMOTE_COMMAND = "command:remote:Command"
COPY_TO_REMOTE = "command:remote:CopyToRemote"
LOCAL_COMMAND = "command:local:Command"


@dataclass
class Registration:
    """One resource as the program registered it."""

    urn: str
    type: str
    name: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    protect: bool
    delete_before_replace: bool
    dependencies: list[str]
    property_dependencies: dict[str, list[str]]
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    retain_on_delete: bool
    raw_inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    """Inputs as serialised, with secret markers kept."""
    replace_on_changes: list[str] = field(default_factory=list)
    """Property paths whose change replaces the resource (the SDK's own and the program's)."""


@dataclass
class CopyStep:
    """A local directory copied into the existing remote directory `remote_path`."""

    name: str
    source: Path
    remote_path: str


@dataclass
class CommandStep:
    """A command pulumi-command runs as the SSH user, without a terminal."""

    name: str
    create: str
    delete: str | None


@dataclass
class Evaluation:
    """What one evaluation of the program registered and exported."""

    registrations: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, resource_type: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == resource_type]

    def one(self, resource_type: str) -> Registration:
        found = self.of_type(resource_type)
        assert len(found) == 1, f"expected one {resource_type}, found {len(found)}"
        return found[0]

    def by_urn(self) -> dict[str, Registration]:
        return {r.urn: r for r in self.registrations}

    def named(self, suffix: str) -> Registration:
        """The registration whose logical name ends with `suffix`."""
        found = [r for r in self.registrations if r.name.endswith(suffix)]
        assert len(found) == 1, f"expected one resource named *{suffix}, found {len(found)}"
        return found[0]

    def depends_on(self, registration: Registration) -> set[str]:
        """URNs this resource depends on, directly or through its inputs."""
        urns = set(registration.dependencies)
        for deps in registration.property_dependencies.values():
            urns.update(deps)
        return urns

    def dependents_closure(self, urn: str) -> set[str]:
        """Every resource that depends on `urn`, transitively: what --target-dependents removes."""
        closure: set[str] = set()
        frontier = {urn}
        while frontier:
            current = frontier.pop()
            for registration in self.registrations:
                if registration.urn in closure or registration.urn == urn:
                    continue
                if current in self.depends_on(registration) or registration.parent == current:
                    closure.add(registration.urn)
                    frontier.add(registration.urn)
        return closure

    def provisioning_steps(self) -> list[CopyStep | CommandStep]:
        """The steps run on the server, in the order their dependencies impose."""
        steps_by_urn: dict[str, CopyStep | CommandStep] = {}
        for registration in self.registrations:
            if registration.type == COPY_TO_REMOTE:
                steps_by_urn[registration.urn] = CopyStep(
                    name=registration.name,
                    source=Path(registration.inputs["source"]),
                    remote_path=registration.inputs["remotePath"],
                )
            elif registration.type == REMOTE_COMMAND:
                steps_by_urn[registration.urn] = CommandStep(
                    name=registration.name,
                    create=registration.inputs["create"],
                    delete=registration.inputs.get("delete"),
                )
        ordered: list[str] = []
        remaining = dict(steps_by_urn)
        registrations = self.by_urn()
        while remaining:
            ready = [
                urn
                for urn in remaining
                if not (self._step_ancestors(registrations[urn], registrations) & set(remaining))
            ]
            assert ready, "provisioning steps depend on each other in a cycle"
            # Registration order breaks ties, so the order is stable.
            ready.sort(key=lambda urn: list(registrations).index(urn))
            ordered.append(ready[0])
            del remaining[ready[0]]
        return [steps_by_urn[urn] for urn in ordered]

    def _step_ancestors(
        self, registration: Registration, registrations: dict[str, Registration]
    ) -> set[str]:
        seen: set[str] = set()
        frontier = set(self.depends_on(registration))
        while frontier:
            urn = frontier.pop()
            if urn in seen or urn not in registrations:
                continue
            seen.add(urn)
            frontier.update(self.depends_on(registrations[urn]))
        return seen


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """A MockMonitor that keeps the whole registration request of every resource."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object, keep_unknowns=True)
            self.registrations.append(
                Registration(
                    urn=response.urn,
                    type=request.type,
                    name=request.name,
                    parent=request.parent,
                    custom=request.custom,
                    inputs=_plain(inputs),
                    protect=request.protect,
                    delete_before_replace=request.deleteBeforeReplace,
                    dependencies=list(request.dependencies),
                    property_dependencies={
                        key: list(value.urns) for key, value in request.propertyDependencies.items()
                    },
                    ignore_changes=list(request.ignoreChanges),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    retain_on_delete=request.retainOnDelete,
                    raw_inputs=inputs,
                    replace_on_changes=list(request.replaceOnChanges),
                )
            )
        return response


class ChiPersistMocks(pulumi.runtime.Mocks):
    """Cloud answers shaped like the providers' real outputs (camelCase names)."""

    def __init__(self, volume_id: str, floating_ip: str, credentials: Mapping[str, str]) -> None:
        self.volume_id = volume_id
        self.floating_ip = floating_ip
        self.credentials = dict(credentials)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        resource_id = f"{args.name}-id"
        if args.typ == VOLUME:
            resource_id = self.volume_id
        elif args.typ == FLOATING_IP:
            state["address"] = self.floating_ip
        elif args.typ == SERVER:
            resource_id = f"server-{args.inputs.get('name', args.name)}"
            state["accessIpV4"] = "10.52.0.10"
        elif args.typ == ATTACHMENT:
            state["device"] = "/dev/vdb"
        elif args.typ == REMOTE_COMMAND and args.name.endswith("start-stack"):
            state["stdout"] = json.dumps(self.credentials)
            state["stderr"] = ""
        elif args.typ in (REMOTE_COMMAND, LOCAL_COMMAND):
            state.setdefault("stdout", "")
            state.setdefault("stderr", "")
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "openstack:networking/getNetwork:getNetwork":
            return {"id": f"network-{args.args.get('name')}", "name": args.args.get("name")}
        if args.token == "openstack:networking/getSecGroup:getSecGroup":
            return {"id": f"secgroup-{args.args.get('name')}", "name": args.args.get("name")}
        raise NotImplementedError(f"no mock for invoke {args.token}")


def project_defaults() -> dict[str, Any]:
    """The defaults Pulumi.yaml declares, as the CLI applies them before the stack file."""
    project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    return {
        name: spec["default"]
        for name, spec in (project.get("config") or {}).items()
        if "default" in spec
    }


def stack_file_config(path: Path) -> dict[str, Any]:
    """The `chi-persist:` settings of a Pulumi.<stack>.yaml, without the namespace."""
    document = yaml.safe_load(path.read_text()) or {}
    prefix = f"{NAMESPACE}:"
    return {
        key[len(prefix) :]: value
        for key, value in (document.get("config") or {}).items()
        if key.startswith(prefix)
    }


def evaluate_program(
    stack: str,
    config: Mapping[str, Any],
    *,
    volume_id: str = "6d0a8a4c-5e2f-4b7e-9c1a-3f8e2d7b6a10",
    floating_ip: str = "129.114.27.10",
    secrets: Mapping[str, str] | None = None,
    credentials: Mapping[str, str] = MOCK_CREDENTIALS,
    preview: bool = False,
) -> Evaluation:
    """Run __main__.py for `stack` with `config` (keys without namespace) under mocks.

    Raises whatever the program raises (pulumi.RunError for invalid settings).
    """
    values = {**project_defaults(), **config}
    all_config = {f"{NAMESPACE}:{key}": _config_text(value) for key, value in values.items()}
    secret_keys = []
    for key, value in (secrets or {}).items():
        all_config[f"{NAMESPACE}:{key}"] = value
        secret_keys.append(f"{NAMESPACE}:{key}")

    def evaluate() -> Evaluation:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        mocks = ChiPersistMocks(volume_id, floating_ip, credentials)
        monitor = RecordingMonitor(mocks)
        pulumi.runtime.set_all_config(all_config, secret_keys)
        pulumi.runtime.set_mocks(
            mocks, project=PROJECT, stack=stack, preview=preview, monitor=monitor
        )
        try:
            runpy.run_path(str(REPO_ROOT / "__main__.py"), run_name="__main__")
            loop.run_until_complete(wait_for_rpcs())
            outputs, secret_outputs = loop.run_until_complete(_resolve_exports())
        except BaseException as error:
            error.registrations = monitor.registrations  # type: ignore[attr-defined]
            raise
        return Evaluation(monitor.registrations, outputs, secret_outputs)

    return _in_child_process(evaluate)


def _in_child_process(function: Callable[[], Evaluation]) -> Evaluation:
    """Run `function` in a forked child and hand back its result or its exception.

    The Pulumi runtime keeps state that a failed evaluation leaves behind; a
    child process per evaluation isolates each completely, and a fork is cheap.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            outcome: tuple[str, Any] = ("result", function())
        except BaseException as error:  # handed to the parent
            outcome = ("error", _picklable_error(error))
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(outcome, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the program's evaluation died without a result")
    kind, value = pickle.loads(data)  # noqa: S301 (our own child's output)
    if kind == "error":
        raise value
    return value


def _picklable_error(error: BaseException) -> BaseException:
    registrations = getattr(error, "registrations", [])
    try:
        pickle.dumps(error)
        copy = error
    except Exception:
        copy = RuntimeError(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    copy.registrations = registrations  # type: ignore[attr-defined]
    return copy


async def _resolve_exports() -> tuple[dict[str, Any], set[str]]:
    stack = pulumi.runtime.settings.get_root_resource()
    outputs: dict[str, Any] = {}
    secret: set[str] = set()
    for name, value in stack.outputs.items():
        output = pulumi.Output.from_input(value)
        outputs[name] = await output.future(with_unknowns=True)
        if await output.is_secret():
            secret.add(name)
    return outputs, secret


def _config_text(value: Any) -> str:
    """Config values reach programs as text; arrays and objects as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _plain(value: Any) -> Any:
    """Inputs with unknowns and secrets made plain, for assertions."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _plain(value["value"])
        if value.get(rpc._special_sig_key) in (rpc._special_asset_sig, rpc._special_archive_sig):
            return value.get("path", value)
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, (pulumi.FileArchive, pulumi.FileAsset)):
        return value.path
    if value is rpc.UNKNOWN or type(value).__name__ == "Unknown":
        return UNKNOWN
    return value
