"""Evaluate the Pulumi program in-process under mocks, recording every registration.

`evaluate_program` runs `__main__.py` the way the CLI would for one stack: the
stack's config is first checked and merged with Pulumi.yaml's declarations by the
engine's own rule (tests/support/engine_config.py), so a stack the engine would
refuse never reaches the program. It returns
every resource registration with its inputs and options (protect,
delete-before-replace, dependencies), which `Mocks.new_resource` never sees, and
the stack's exported outputs. Each evaluation runs in a forked child process,
so evaluations never share state.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import pickle
import runpy
import shlex
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import wait_for_rpcs

import components.survey as survey_module
from components.sealed_credentials import SEALED_KEY, seal
from components.stack_state import StackState
from tests.support.engine_config import ConfigValue, apply_project_config, load_project
from tests.support.paths import REPO_ROOT
from tests.support.pretend_cloud import PretendCloud, PretendCloudApi
from tests.support.pretend_openstack import PretendOpenStack, PretendProject

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
    "mlflow_user": "mlflow-admin-from-volume",
    "mlflow_password": "mlflow-password-from-volume",
}
# What the credentials-key step prints (the key start-stack.sh seals with) and what the
# host-key step reads from the server's console.
MOCK_SEAL_KEY = "5e" * 32
# How the warning of a stack whose web ports are open to 0.0.0.0/0 begins.
WHOLE_INTERNET_WARNING = "Jupyter, MLflow and MinIO are reachable from the whole internet"
MOCK_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhvc3Qta2V5LW9mLXRoZS1tb2NrZWQtc2VydmVyISEh"

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
# components/lease.py's Lease: a dynamic resource, registered under the SDK's dynamic type.
LEASE = "pulumi-python:dynamic:Resource"

# What the pretend Blazar answers for the stack's lease: its reservation id is the flavor
# the server boots.
MOCK_RESERVATION_ID = "7c2e4a90-1b3d-4f5e-8a6b-9d0c1e2f3a4b"
MOCK_LEASE_START = "2026-11-10T09:00:00Z"


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
    import_id: str = ""
    """The id of an existing resource the program asks the engine to import."""
    raw_inputs: dict[str, Any] = field(default_factory=dict, repr=False)
    """Inputs as serialised, with secret markers kept."""
    replace_on_changes: list[str] = field(default_factory=list)
    """Property paths whose change replaces the resource (the SDK's own and the program's)."""
    replacement_trigger: Any = None
    """The value whose change replaces the resource (None: no trigger)."""


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
    create: str | None
    """None for the clean stop, which runs only when it is deleted."""
    delete: str | None
    """What runs on the server when the step is deleted."""
    stdin: str | None = None
    """What the command gets on its standard input (the start step's sealing key)."""


def clean_stop_remote_command(delete: str) -> str:
    """What scripts/clean-stop runs on the server (after its `--`) when the server answers."""
    parts = shlex.split(delete)
    assert parts[:2] == ["python3", "scripts/clean-stop"] and "--" in parts, delete
    return shlex.join(parts[parts.index("--") + 1 :])


@dataclass
class Evaluation:
    """What one evaluation of the program registered and exported."""

    registrations: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    """What the program logged as warnings (pulumi.log.warn), in order."""
    notes: list[str] = field(default_factory=list)
    """What the program logged as information (pulumi.log.info), in order."""
    cloud_calls: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of each call the program's survey made to the pretend cloud."""

    @property
    def other_warnings(self) -> list[str]:
        """The warnings but the one every stack open to 0.0.0.0/0 gets (Settings.access_notes)."""
        return [w for w in self.warnings if not w.startswith(WHOLE_INTERNET_WARNING)]

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
                    stdin=registration.inputs.get("stdin"),
                )
            elif registration.type == LOCAL_COMMAND and registration.inputs.get("delete"):
                # The clean stop: on a server that answers, it runs its remote part over SSH.
                steps_by_urn[registration.urn] = CommandStep(
                    name=registration.name,
                    create=None,
                    delete=clean_stop_remote_command(registration.inputs["delete"]),
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
                    import_id=request.importId,
                    raw_inputs=inputs,
                    replace_on_changes=list(request.replaceOnChanges),
                    replacement_trigger=(
                        json_format.MessageToDict(request.replacement_trigger)
                        if request.HasField("replacement_trigger")
                        else None
                    ),
                )
            )
        return response


@dataclass(frozen=True)
class CloudVolume:
    """A volume that already exists in the pretend cloud, as Cinder describes it."""

    id: str
    name: str
    size: int = 2
    volume_type: str = "ceph-ssd"
    status: str = "available"
    metadata: Mapping[str, str] = field(default_factory=dict)
    attached_to: tuple[str, ...] = ()

    def as_cinder(self) -> dict[str, Any]:
        """The volume as Cinder's GET /volumes/detail lists it."""
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "volume_type": self.volume_type,
            "status": self.status,
            "metadata": dict(self.metadata),
            "attachments": [
                {
                    "id": self.id,
                    "attachment_id": f"attachment-{server}",
                    "volume_id": self.id,
                    "server_id": server,
                    "device": "/dev/vdb",
                }
                for server in self.attached_to
            ],  # fmt: skip
            "bootable": "false",
        }


class ChiPersistMocks(pulumi.runtime.Mocks):
    """Cloud answers shaped like the providers' real outputs (camelCase names)."""

    def __init__(
        self,
        volume_id: str,
        floating_ip: str,
        credentials: Mapping[str, str],
        volume_size_after: int | None = None,
    ) -> None:
        self.volume_id = volume_id
        self.floating_ip = floating_ip
        self.credentials = dict(credentials)
        self.volume_size_after = volume_size_after

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        resource_id = f"{args.name}-id"
        if args.typ == VOLUME:
            # An imported volume keeps its id; a created one gets the stand-in id.
            resource_id = args.resource_id or self.volume_id
            if self.volume_size_after is not None:
                # What the provider reads back when Cinder did not extend the volume.
                state["size"] = self.volume_size_after
        elif args.typ == FLOATING_IP:
            state["address"] = self.floating_ip
        elif args.typ == SERVER:
            resource_id = f"server-{args.inputs.get('name', args.name)}"
            state["accessIpV4"] = "10.52.0.10"
        elif args.typ == ATTACHMENT:
            state["device"] = "/dev/vdb"
        elif args.typ == LEASE:
            resource_id = f"lease-id-{args.inputs.get('name')}"
            state.update(
                lease_id=resource_id,
                reservation_id=MOCK_RESERVATION_ID,
                status="ACTIVE",
                start_date=MOCK_LEASE_START,
                # Blazar's end of the lease, fixed when it was made: a new duration is
                # recorded for the next lease (components/lease.py).
                end_date=_after(MOCK_LEASE_START, 8 * 3600),
            )
        elif args.typ == REMOTE_COMMAND and args.name.endswith("start-stack"):
            sealed = seal(json.dumps(self.credentials), MOCK_SEAL_KEY)
            state["stdout"] = json.dumps({SEALED_KEY: sealed})
            state["stderr"] = ""
        elif args.typ == LOCAL_COMMAND and args.name.endswith("credentials-key"):
            state.update(stdout=MOCK_SEAL_KEY, stderr="")
        elif args.typ == LOCAL_COMMAND and args.name.endswith("host-key"):
            state.update(stdout=MOCK_HOST_KEY, stderr="")
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


def _after(start: str, seconds: int) -> str:
    moment = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
    return (moment + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


class WarningRecorder(logging.Handler):
    """Keeps the warnings (and, apart, the notes) the program logs through the mocked engine."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.messages.append(record.getMessage())
        else:
            self.notes.append(record.getMessage())

    def logger(self) -> logging.Logger:
        logger = logging.getLogger(f"chi-persist.program.{id(self)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return logger


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
    cloud_volumes: Sequence[CloudVolume] = (),
    volume_lookup_error: str | None = None,
    ssh_auth_sock: str | None = None,
    cloud: PretendCloud | None = None,
    state: StackState | Exception | None = None,
    volume_size_after: int | None = None,
    cloud_project: PretendProject | None = None,
) -> Evaluation:
    """Run __main__.py for `stack` with `config` and `secrets` under mocks.

    `cloud_volumes` are the volumes that already exist in the pretend cloud (none: a
    first deployment), `cloud` the whole pretend cloud the program's survey reads
    (tests/support/pretend_cloud.py) and `state` the stack's state as `pulumi stack export`
    would give it (empty by default; an exception makes reading it fail with that exception);
    `volume_lookup_error` makes every call of the program's survey fail with it;
    `volume_size_after` is the size the volume has after its create or update (by default
    the size asked for). The other calls the program makes itself (its quota check, Cinder's
    messages) are answered by `cloud_project` (tests/support/pretend_openstack.py; by default
    OpenStack's default quotas, nothing used).
    Keys without a namespace are the project's. The program sees SSH_AUTH_SOCK as
    `ssh_auth_sock` (unset by default), never the agent of whoever runs the tests.
    Raises EngineConfigError, before the program starts, where the engine would refuse
    the stack's config, and whatever the program raises (pulumi.RunError for invalid
    settings).
    """
    stack_config = {_full_key(key): ConfigValue.of(value) for key, value in config.items()}
    for key, value in (secrets or {}).items():
        stack_config[_full_key(key)] = ConfigValue.of(value, secret=True)
    project = load_project((REPO_ROOT / "Pulumi.yaml").read_text())
    merged = apply_project_config(project, stack, stack_config)
    all_config = {key: value.text for key, value in merged.items()}
    secret_keys = [key for key, value in merged.items() if value.secure]

    def evaluate() -> Evaluation:
        if ssh_auth_sock is None:
            os.environ.pop("SSH_AUTH_SOCK", None)
        else:
            os.environ["SSH_AUTH_SOCK"] = ssh_auth_sock
        import components.openstack_api

        pretend = PretendOpenStack(cloud_project or PretendProject())
        components.openstack_api.OpenStack = lambda cloud=None: pretend  # type: ignore[assignment]
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        mocks = ChiPersistMocks(volume_id, floating_ip, credentials, volume_size_after)
        survey_cloud = cloud or PretendCloud()
        survey_cloud.volumes = [
            *survey_cloud.volumes,
            *(volume.as_cinder() for volume in cloud_volumes),
        ]
        if volume_lookup_error is not None:
            survey_cloud.error = volume_lookup_error
        # The program's survey asks the pretend cloud, and reads the given state.
        survey_module.OpenStack = lambda: PretendCloudApi(survey_cloud)
        survey_module.read_state = lambda _stack, cwd: _state_or_raise(state)
        monitor = RecordingMonitor(mocks)
        warnings = WarningRecorder()
        pulumi.runtime.set_all_config(all_config, secret_keys)
        pulumi.runtime.set_mocks(
            mocks,
            project=PROJECT,
            stack=stack,
            preview=preview,
            monitor=monitor,
            logger=warnings.logger(),
        )
        try:
            runpy.run_path(str(REPO_ROOT / "__main__.py"), run_name="__main__")
            loop.run_until_complete(wait_for_rpcs())
            outputs, secret_outputs = loop.run_until_complete(_resolve_exports())
        except BaseException as error:
            error.registrations = monitor.registrations  # type: ignore[attr-defined]
            raise
        return Evaluation(
            monitor.registrations,
            outputs,
            secret_outputs,
            warnings.messages,
            warnings.notes,
            list(survey_cloud.calls),
        )

    return _in_child_process(evaluate)


def _state_or_raise(state: StackState | Exception | None) -> StackState:
    if isinstance(state, Exception):
        raise state
    return state or StackState()


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


def _full_key(key: str) -> str:
    return key if ":" in key else f"{NAMESPACE}:{key}"


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
