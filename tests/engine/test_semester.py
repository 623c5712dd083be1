"""A student's semester through the real Pulumi engine, on a stand-in KVM@TACC of real VMs.

The real CLI (tests/engine/toolchain) runs the program with the `openstack` and
`command` plugins against `tests/twin/serve`; every server is a qemu guest that
runs the program's own first-boot user data, every volume attach hot-plugs a
disk, every floating IP is a loopback address that reaches the guest. The steps
run in order on one twin and one student, as the semester does:

 1. from a fresh copy of the project (no ./venv, no Python environment on PATH), the
    README quickstart's own commands: `./chi-persist init` (which makes ./venv with
    `pulumi install`), then a `pulumi up` killed right after Nova accepted the server,
    `pulumi cancel` and the quickstart's `pulumi up`: the stack makes its lease, the
    platform comes up on one server, and the volume is formatted once; the quickstart's
    `pulumi stack output` shows the URLs (its `./chi-persist check` needs the platform's
    real services, which the guests do not run: it runs as written against real ones in
    tests/datapath/test_persistence.py);
 2. `pulumi preview --expect-no-changes` right after, and a `pulumi up` that changes nothing;
 3. a marker written on the volume through the server;
 4. the quickstart's `./chi-persist recycle`: server, attachment and commands gone, the
    rest untouched, the volume cleanly unmounted before it was detached, detached before
    the delete;
 5. the quickstart's `pulumi up`: a new server, same address and volume, nothing
    formatted, the marker there;
    then recycle refuses a running server that SSH does not reach from its side; the host
    key pinned from the server's console is the guest's own (and the ssh_command takes only
    it); a console showing another key, and then another key at the address (the clean stop,
    then pulumi-command's host_key check) stop the step with nothing detached;
    platformAccess tunnel opens only SSH and `./chi-persist open` reaches the guest's
    loopback; back to public changes only rules and the stack step, and an SSH session cut
    right after start-stack.sh printed shows no credential in the error;
 6. a changed file under docker/: the engine's own steps stop the stack first, then copy,
    mount and start, and the stack runs afterwards; the engine's plan (`pulumi preview`, which
    changes nothing) for a changed file under scripts/remote/ (the same order), a new
    mountPoint (the old mount released first) and a new flavor or image (the recycle path);
    then a longer leaseDuration is recorded (the lease's one step) and changes nothing until
    the renewal window, where one `pulumi up` makes the next lease first, moves the server
    onto it the clean way and deletes the old lease; then the server's timer stops the
    platform and the stack's lease ends (the server is deleted with it) on a clean
    filesystem: the next
    `pulumi up` makes a new lease and server, same volume and address, nothing formatted
    (the ended lease's delete-first cascade, clean stop first, in the engine's own steps);
 7. a new `reservation`: the server is replaced through the clean stop, never resized (the
    recycle path in the engine's own steps); the plan for another reservation, the same;
 8. a larger `volumeSize`: the filesystem grows, the marker intact;
10. faults: the server vanishes out of band, and `./chi-persist recycle` then `pulumi up`
    recover it; an API call fails with 503 mid-`up` and a second `up` converges with
    nothing duplicated; the SSH session drops during the prepare step and a rerun
    converges with nothing formatted twice;
 10d. a second machine (an empty state): refused while the first machine's server holds the
    volume, nothing changed; after a clean shutdown and delete of that server, it adopts
    everything else and brings the data back on a new server;
 9. `pulumi destroy` stops at the protected volume; the README's "delete everything"
    commands then leave the twin empty (the semester's end, so it runs after the faults);
    before it, `./chi-persist backup` sends the volume's data from the server to the twin's
    CHI@TACC Swift (the marker, a notebook), and after it a new stack of the same netid is
    brought up and `./chi-persist restore` puts them back; no disk of either guest holds the
    object store's token afterwards (the guests' Docker is the stand-in: what the database and
    MinIO hold is proven by tests/datapath/test_backup.py);
11. and 12. two more students at once on the same twin: one adopts a tutorial-formatted
    volume pre-made in the twin with `existingVolumeId` (mounted as it is, data intact),
    the other starts from nothing; no cloud name is shared.

The numbers are the steps of the semester as the project's issue lists them; the tests
run in the order of this file. Each step's test names what it proves; a failure says
which step broke and shows the CLI's output. The first `up`, the unchanged `up`, the
recycle and the `up` after it are timed, each `up` with its critical path from the
engine's event log (tests/engine/timeline.py), in the summary at the end of the run.
The steps share state, so a failed step makes the later ones fail too (pytest -x stops
at the first).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import functools
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.engine.timeline import (
    EngineStep,
    Timeline,
    dependencies_of,
    read_events,
    steps_of_preview,
    steps_of_update,
    timeline,
)
from tests.engine.workspace import (
    StudentMachine,
    explain,
    toolchain_skip_reason,
    wheelhouse_skip_reason,
)
from tests.support import readme
from tests.support.benchmarks import add_table
from tests.twin import steps as twin_steps
from tests.twin.harness import Twin, wait_for

pytestmark = [pytest.mark.vm, pytest.mark.engine]

NETID = "ab1234"
KEY_PAIR = "id_rsa_chameleon"
MARKER = "experiments of week 3: keep me"
PREPARE = "provisioning-prepare-volume"
START = "provisioning-start-stack"
SERVER_TYPE = "openstack:compute/instance:Instance"
COMMAND_TYPE = "command:remote:Command"
LOCAL_COMMAND_TYPE = "command:local:Command"
COPY_TYPE = "command:remote:CopyToRemote"
# What a recycle keeps: never a step of the engine's when the server is replaced.
KEPT_TYPES = {
    "openstack:blockstorage/volume:Volume",
    "openstack:networking/port:Port",
    "openstack:networking/floatingIp:FloatingIp",
}
CLEAN_STOP = "provisioning-clean-stop"
# The lease's stop timer: its place among the steps it shares no dependency with is not fixed.
TIMER = "provisioning-lease-stop"
UP_TIMEOUT = 3600
# On the server: the volume is mounted and the compose project start-stack.sh recorded runs.
PLATFORM_RUNS = (
    "mountpoint -q /mnt/block"
    " && project=$(sudo cat /mnt/block/.chi-persist/started-stack/project-name)"
    ' && sudo docker ps --quiet --filter "label=com.docker.compose.project=$project" | grep -q .'
)


def _skip_reason() -> str | None:
    reason = toolchain_skip_reason() or wheelhouse_skip_reason()
    if reason:
        return reason
    from tests.vm.rehearsal import vm_skip_reason

    return vm_skip_reason()


@functools.cache
def _quickstart(netid: str = NETID) -> tuple[list[str], dict[str, list[str]]]:
    """The README quickstart's lines for the student `netid`: the variables it exports, and
    each command's argv by what it runs (`init`, `pulumi up`, ...); a command shown twice is
    the same both times."""
    exported, commands = [], {}
    for line in readme.quickstart():
        (argv,) = readme.simple_commands(readme.fill(line, netid, key_pair_name=KEY_PAIR))
        if argv[0] == "export":
            exported.append(argv[1].split("=", 1)[0])
            continue
        what = " ".join(argv[:2]) if argv[0] == "pulumi" else argv[1]
        assert commands.setdefault(what, argv) == argv, (what, commands[what], argv)
    return exported, commands


QUICKSTART_EXPORTS, QUICKSTART = _quickstart()


@dataclass
class Semester:
    """One twin, one student, and what the steps learn along the way."""

    twin: Twin
    student: StudentMachine
    key: Path
    netid: str = NETID
    learned: dict[str, Any] = field(default_factory=dict)
    # What the benchmark table shows: (what was run, wall seconds, its timeline or None).
    measured: list[tuple[str, float, Timeline | None]] = field(default_factory=list)
    # The steps the last `up(steps=True)` took, in the engine's order (its event log).
    steps: list[EngineStep] = field(default_factory=list)
    event_logs: int = 0

    def up(
        self, *extra: str, measure: str = "", steps: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """The quickstart's `pulumi up` (with --yes and --non-interactive: no terminal here);
        with `measure`, timed, and its steps read from the engine's event log; with `steps`,
        the steps it took kept in `self.steps`, in the engine's order."""
        quickstart = _quickstart(self.netid)[1]
        arguments = [*quickstart["pulumi up"][1:], "--yes", "--non-interactive", *extra]
        if not (measure or steps):
            return self.student.pulumi(*arguments, timeout=UP_TIMEOUT)
        self.event_logs += 1
        log = self.student.root / f"events-{self.event_logs}.jsonl"
        began = time.monotonic()
        # `--event-log` is one of the CLI's debug flags (cmd/pulumi/operations/up.go).
        result = self.student._run(
            [self.student.pulumi_executable, *arguments, "--event-log", str(log)],
            timeout=UP_TIMEOUT,
            stdin="",
            check=False,
            env={**self.student.env, "PULUMI_DEBUG_COMMANDS": "true"},
        )
        seconds = time.monotonic() - began
        events = read_events(log) if log.exists() else []
        if steps:
            self.steps = steps_of_update(events)
        if not measure:
            return result
        timed = None
        if result.returncode == 0:
            export = self.student.stack_export(self.netid)
            timed = timeline(events, dependencies_of(export))
        self.measured.append((measure if timed else f"{measure} (failed)", seconds, timed))
        return result

    def planned(self) -> list[EngineStep]:
        """The steps `pulumi preview` plans for the stack as it is configured now, in the
        engine's order, a replacement as its delete and its create (a preview changes
        nothing in the cloud or the state)."""
        preview = self.student.pulumi(
            "preview", "--json", "--show-replacement-steps", "--stack", self.netid,
            "--non-interactive", timeout=900,
        )  # fmt: skip
        assert preview.returncode == 0, explain(preview)
        return steps_of_preview(json.loads(preview.stdout))

    def command(self, measure: str, *arguments: str) -> subprocess.CompletedProcess[str]:
        """`./chi-persist ARGUMENTS`, timed."""
        began = time.monotonic()
        result = self.student.command(*arguments, timeout=UP_TIMEOUT)
        self.measured.append((measure, time.monotonic() - began, None))
        return result

    def benchmark(self) -> str:
        """The measured runs, then the critical path of each `up` (markdown)."""
        lines = ["| run | wall seconds | engine steps | critical path (seconds, waited) |"]
        lines.append("|---|---:|---:|---|")
        for what, seconds, steps in self.measured:
            path = (
                ""
                if steps is None
                else ", ".join(
                    f"{step.name} {step.seconds} (+{waited})"
                    for step, waited in steps.critical_path()
                )
            )
            count = "" if steps is None else str(len(steps.steps))
            lines.append(f"| {what} | {seconds:.0f} | {count} | {path} |")
        for what, _, steps in self.measured:
            if steps is not None and steps.steps:
                lines += ["", f"{what}: every step", "", steps.table()]
        return "\n".join(lines)

    @property
    def student_env(self) -> dict[str, str]:
        """What a student of this class sets: the cloud's credentials."""
        return {key: self.student.env[key] for key in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE")}

    def outputs(self) -> dict[str, Any]:
        return self.student.outputs(self.netid)

    def resources(self) -> list[dict[str, Any]]:
        export = self.student.stack_export(self.netid)
        return export["deployment"].get("resources") or []

    def command_stdout(self, name: str) -> str:
        for resource in self.resources():
            if resource["type"] == COMMAND_TYPE and resource["urn"].endswith(f"::{name}"):
                return (resource.get("outputs") or {}).get("stdout") or ""
        raise AssertionError(f"no command {name} in the stack's state")

    def ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        address = self.outputs()["floating_ip"]
        return subprocess.run(
            [
                "ssh", "-i", str(self.key), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
                f"cc@{address}", command,
            ],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def _ready_line(stdout: str) -> dict[str, str]:
    """prepare-volume's last line: `ready: device=… uuid=… mount_point=… formatted=…`."""
    lines = [line for line in stdout.splitlines() if "ready: device=" in line]
    assert lines, f"prepare-volume printed no ready line:\n{stdout}"
    return dict(re.findall(r"(\w+)=(\S+)", lines[-1]))


def _api_calls(twin: Twin, since: int) -> list[tuple[str, str]]:
    """(method, path) of each OpenStack API call the twin answered since event `since`; a new
    Keystone token (every client that asks Nova makes one) changes nothing in the cloud and is
    left out."""
    return [
        (event.get("method", ""), event.get("path", ""))
        for event in twin.events(since)
        if event.get("kind") == "api" and event.get("path") != "/v3/auth/tokens"
    ]


def _cloud_changes(twin: Twin, since: int) -> list[tuple[str, str]]:
    """The calls since event `since` that change the cloud; a Keystone token (POST
    /v3/auth/tokens) is a login, not a change."""
    return [
        (method, path)
        for method, path in _api_calls(twin, since)
        if method in ("POST", "PUT", "DELETE") and path != "/v3/auth/tokens"
    ]


def _first(calls: list[tuple[str, str]], method: str, path_pattern: str) -> int:
    for index, (called, path) in enumerate(calls):
        if called == method and re.search(path_pattern, path):
            return index
    raise AssertionError(f"no {method} matching {path_pattern} among the calls: {calls}")


def _filesystem_state(disk: Path) -> str:
    """`Filesystem state` of the ext4 filesystem on a volume's disk file, read only.

    The filesystem is on the only partition of a GPT table (or on the whole disk);
    the partition is opened at its offset, so no partition device nodes are needed.
    """
    table = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True)
    offset: list[str] = []
    if table.returncode == 0:
        partitions = json.loads(table.stdout)["partitiontable"]["partitions"]
        assert len(partitions) == 1, partitions
        sector = json.loads(table.stdout)["partitiontable"].get("sectorsize", 512)
        offset = [
            "--offset", str(partitions[0]["start"] * sector),
            "--sizelimit", str(partitions[0]["size"] * sector),
        ]  # fmt: skip
    loop = subprocess.run(
        ["losetup", "--read-only", "--find", "--show", *offset, str(disk)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        header = subprocess.run(
            ["dumpe2fs", "-h", loop], capture_output=True, text=True, check=True
        ).stdout
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
    state = re.search(r"^Filesystem state:\s+(.+)$", header, re.M)
    features = re.search(r"^Filesystem features:\s+(.+)$", header, re.M)
    assert state and features, header
    return state.group(1).strip() + (
        " (journal needs recovery)" if "needs_recovery" in features.group(1) else ""
    )


@pytest.fixture(scope="module")
def semester(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Semester]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("semester")
    twin = Twin(root / "twin", machines="qemu").start()
    try:
        clouds = root / "twin" / "clouds.yaml"
        # A fresh clone: the quickstart's first command makes ./venv.
        student = StudentMachine.create(
            root, {"OS_CLOUD": "twin", "OS_CLIENT_CONFIG_FILE": str(clouds)}, fresh=True
        )
        key = student.home / ".ssh" / "id_rsa_chameleon"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "student", "-f", str(key)],
            check=True,
        )
        twin.add_keypair(KEY_PAIR, Path(f"{key}.pub").read_text().strip())
        semester = Semester(twin=twin, student=student, key=key)
        try:
            yield semester
        finally:
            add_table(pytestconfig, "semester on the twin: timings", semester.benchmark())
    finally:
        status = twin.stop()
        assert status == 0, f"the twin did not stop cleanly ({status}):\n{twin.log_text()}"


def test_1_first_up_brings_the_platform_up_and_formats_the_volume_once(semester: Semester):
    """A fresh copy and the quickstart: `./chi-persist init` makes ./venv and the stack with
    only a key pair; then a `pulumi up` the twin kills right after Nova accepted the server
    (a laptop's lid closes): `pulumi cancel`, as Pulumi asks, and the quickstart's `pulumi
    up` bring the platform up on one server, the volume formatted once."""
    # The quickstart's exports: the twin's clouds.yaml entry and the machine's passphrase.
    assert set(QUICKSTART_EXPORTS) == {"OS_CLOUD", "PULUMI_CONFIG_PASSPHRASE"}
    assert all(semester.student.env.get(name) for name in QUICKSTART_EXPORTS)
    venv = semester.student.project / "venv"
    assert not venv.exists()
    init = QUICKSTART["init"]
    assert init[:2] == ["./chi-persist", "init"], init
    made = semester.student.command(*init[1:])
    assert made.returncode == 0, explain(made)
    assert "making the project's virtual environment in ./venv" in made.stderr, explain(made)
    assert (venv / "bin" / "python").is_file() and not venv.is_symlink()
    log = semester.student.root / "killed-first-up.log"
    killed = semester.student.start_pulumi(
        *QUICKSTART["pulumi up"][1:], "--yes", "--non-interactive", log=log
    )
    semester.twin.kill_after("POST", r"/compute/v2\.1/servers", killed.pid)
    assert killed.wait(timeout=UP_TIMEOUT) == -9, log.read_text()
    (orphan,) = semester.twin.state()["servers"]
    locked = semester.up()
    assert locked.returncode != 0 and "pulumi cancel" in locked.stdout + locked.stderr
    cancelled = semester.student.pulumi("cancel", "--yes", "--stack", NETID, "--non-interactive")
    assert cancelled.returncode == 0, explain(cancelled)
    up = semester.up(measure="first `pulumi up` (after one killed at the server's create)")
    assert up.returncode == 0, explain(up)
    assert "deletes it and makes a new server" in up.stdout + up.stderr, explain(up)
    assert orphan["id"] not in {server["id"] for server in semester.twin.state()["servers"]}
    outputs = semester.outputs()
    address = outputs["floating_ip"]
    assert address.startswith("127.") and address != "127.0.0.1", outputs
    assert outputs["mlflow_url"] == f"http://{address}:8000"
    shown = semester.student.pulumi(*QUICKSTART["pulumi stack"][1:])
    assert shown.returncode == 0, explain(shown)
    assert f"http://{address}:8000" in shown.stdout and "ssh_command" in shown.stdout
    state = semester.twin.state()
    assert [server["name"] for server in state["servers"]] == [f"node-persist-{NETID}"]
    (volume,) = state["volumes"]
    assert volume["name"] == f"block-persist-{NETID}" and volume["status"] == "in-use"
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "yes"
    running = semester.ssh(PLATFORM_RUNS)
    assert running.returncode == 0, explain(running)
    # No reservation was set: the stack made its own lease, and the server boots its flavor.
    lease = _active_lease(state, f"lease-persist-{NETID}")
    assert outputs["lease_id"] == lease["id"]
    (server,) = state["servers"]
    assert server["flavor"]["id"] == lease["reservations"][0]["id"], (server["flavor"], lease)
    semester.learned.update(
        address=address,
        server_id=outputs["server_id"],
        volume_id=outputs["volume_id"],
        uuid=ready["uuid"],
        port_ids=sorted(port["id"] for port in state["ports"]),
        group_ids=sorted(group["id"] for group in state["security_groups"]),
    )


def test_2_preview_right_after_up_expects_no_changes(semester: Semester):
    """The program is deterministic under the real engine: nothing to do right after an up,
    for a preview and for an `up`."""
    preview = semester.student.pulumi(
        "preview", "--expect-no-changes", "--stack", NETID, "--non-interactive", timeout=900
    )
    assert preview.returncode == 0, explain(preview)
    unchanged = semester.up("--expect-no-changes", measure="`pulumi up`, nothing changed")
    assert unchanged.returncode == 0, explain(unchanged)


def test_3_a_marker_is_written_on_the_volume(semester: Semester):
    """What the student keeps: a file on the mounted volume."""
    wrote = semester.ssh(
        f"echo {shlex.quote(MARKER)} | sudo tee /mnt/block/marker.txt >/dev/null && sync"
    )
    assert wrote.returncode == 0, explain(wrote)


def test_4_recycle_removes_the_server_and_keeps_everything_else(semester: Semester):
    """Data safety: the clean stop unmounts before the detach, the detach precedes the delete,
    and the volume, port, floating IP and group stay."""
    events_before = len(semester.twin.events())
    # The quickstart's line, answered with --yes (no terminal here).
    recycled = semester.command("`./chi-persist recycle`", *QUICKSTART["recycle"][1:], "--yes")
    assert recycled.returncode == 0, explain(recycled)
    state = semester.twin.state()
    assert state["servers"] == []
    (volume,) = state["volumes"]
    assert volume["id"] == semester.learned["volume_id"]
    assert volume["status"] == "available" and not volume.get("attachments")
    assert sorted(port["id"] for port in state["ports"]) == semester.learned["port_ids"]
    assert [ip["floating_ip_address"] for ip in state["floatingips"]] == [
        semester.learned["address"]
    ]
    assert (
        sorted(group["id"] for group in state["security_groups"]) == semester.learned["group_ids"]
    )
    kinds = [
        resource["type"]
        for resource in semester.resources()
        if resource["type"] in (SERVER_TYPE, COMMAND_TYPE)
    ]
    assert kinds == [], f"left in state after the recycle: {kinds}"
    # The clean stop (release-volume.sh) unmounted the filesystem before the detach.
    assert _filesystem_state(Path(volume["disk"])) == "clean"
    calls = _api_calls(semester.twin, events_before)
    server = semester.learned["server_id"]
    detach = _first(calls, "DELETE", rf"/servers/{server}/os-volume_attachments/")
    delete = _first(calls, "DELETE", rf"/servers/{server}$")
    assert detach < delete, f"the server was deleted before the volume was detached: {calls}"


def test_5_up_after_recycle_brings_the_same_data_back_without_formatting(semester: Semester):
    """A new server on the same address with the same volume; the marker survived."""
    up = semester.up(measure="`pulumi up` after the recycle")
    assert up.returncode == 0, explain(up)
    outputs = semester.outputs()
    assert outputs["server_id"] != semester.learned["server_id"]
    assert outputs["floating_ip"] == semester.learned["address"]
    assert outputs["volume_id"] == semester.learned["volume_id"]
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh("cat /mnt/block/marker.txt")
    assert marker.stdout.strip() == MARKER, explain(marker)
    semester.learned["server_id"] = outputs["server_id"]


def test_5b_recycle_never_detaches_a_running_server_it_cannot_reach(semester: Semester):
    """allowedCidrs leaves out the address recycle connects from: Nova says ACTIVE and SSH does
    not answer, so recycle refuses and the volume stays attached under the running platform;
    the student's address back in, and `pulumi up` finds everything as it was."""
    outside = ["192.0.2.0/24"]  # TEST-NET-1: not where the twin's floating IPs are reached from
    narrowed = semester.student.pulumi(
        "config", "set", "--path", "chi-persist:allowedCidrs[0]", outside[0], "--stack", NETID
    )
    assert narrowed.returncode == 0, explain(narrowed)
    up = semester.up()
    assert up.returncode == 0, explain(up)
    events_before = len(semester.twin.events())
    recycled = semester.student.command("recycle", "--stack", NETID, "--yes", timeout=UP_TIMEOUT)
    assert recycled.returncode == 1, explain(recycled)
    assert "does not answer on SSH from here" in recycled.stderr, explain(recycled)
    assert "Nova says ACTIVE" in recycled.stderr and "--stop-through-nova" in recycled.stderr
    changes = _cloud_changes(semester.twin, events_before)
    assert changes == [], f"recycle changed the cloud: {changes}"
    (volume,) = semester.twin.state()["volumes"]
    assert [a["server_id"] for a in volume["attachments"]] == [semester.learned["server_id"]]
    restored = semester.student.pulumi("config", "rm", "chi-persist:allowedCidrs", "--stack", NETID)
    assert restored.returncode == 0, explain(restored)
    up = semester.up()
    assert up.returncode == 0, explain(up)
    running = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert running.returncode == 0 and running.stdout.strip() == MARKER, explain(running)


def _host_key_step_urn(semester: Semester) -> str:
    (urn,) = [
        resource["urn"]
        for resource in semester.resources()
        if resource["urn"].endswith("::provisioning-host-key")
    ]
    return urn


def _guest_host_key(semester: Semester) -> str:
    """The guest's own ed25519 host key, `ssh-ed25519 BASE64`."""
    shown = semester.ssh("cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert shown.returncode == 0, explain(shown)
    return " ".join(shown.stdout.split()[:2])


def _volume_stays_attached(semester: Semester, since: int) -> None:
    """The volume is attached to the same server, mounted under the running platform, and no
    detach was asked for since event `since`."""
    (volume,) = semester.twin.state()["volumes"]
    assert [a["server_id"] for a in volume["attachments"]] == [semester.learned["server_id"]]
    detaches = [
        call for call in _api_calls(semester.twin, since)
        if call[0] == "DELETE" and "os-volume_attachments" in call[1]
    ]  # fmt: skip
    assert detaches == [], detaches
    running = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert running.returncode == 0 and running.stdout.strip() == MARKER, explain(running)


def test_5c_the_pinned_host_key_is_the_guests_own_and_the_ssh_command_takes_only_it(
    semester: Semester,
):
    """The key the stack read from the server's console (Nova) is the one the guest's sshd
    has; the ssh_command output logs in with it, past an older key for the address in the
    user's known_hosts (no `ssh-keygen -R`), and refuses another."""
    outputs = semester.outputs()
    address = outputs["floating_ip"]
    own = _guest_host_key(semester)
    assert outputs["known_hosts"] == f"{address} {own}"
    words = shlex.split(outputs["ssh_command"])
    assert words[-1] == f"cc@{address}"
    assert words[1:3] == ["-i", "~/.ssh/id_rsa_chameleon"]
    # OpenSSH expands ~ from the account's home, which is not this student machine's.
    words[2] = str(semester.key)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(semester.student.root / "other")],
        capture_output=True, check=True,
    )  # fmt: skip
    other = " ".join((semester.student.root / "other.pub").read_text().split()[:2])
    # The user's known_hosts holds another key for the address (a server before a recycle).
    stale = semester.student.root / "known_hosts"
    stale.write_text(f"{address} {other}\n")
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-F", "none",
               "-o", f"UserKnownHostsFile={stale}"]  # fmt: skip

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command[:-1], *options, command[-1], "echo pinned"],
            env=semester.student.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    logged_in = run(words)
    assert logged_in.returncode == 0 and logged_in.stdout.strip() == "pinned", explain(logged_in)
    assert stale.read_text() == f"{address} {other}\n", "ssh wrote to known_hosts"
    refused = run([word.replace(own, other) for word in words])
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr


def test_5d_a_console_showing_another_key_stops_the_step_and_the_volume_stays_attached(
    semester: Semester,
):
    """The twin's Nova shows other host keys on the server's console than its guest has:
    reading the key again (`--replace` of the step) stops `pulumi up` with the cause and what
    to check; nothing is sent to the server, nothing is detached; with the console its own
    again, the same key is pinned and nothing else changes."""
    server = semester.learned["server_id"]
    step = _host_key_step_urn(semester)
    pinned = semester.outputs()["known_hosts"]
    since = len(semester.twin.events())
    forged = semester.twin.admin("POST", f"/servers/{server}/host-keys", json={"forged": True})
    assert forged.status_code == 200, forged.text
    refused = semester.up("--replace", step)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said
    assert "whoever answers at that address is not the server" in said, said
    assert f"openstack floating ip show {semester.learned['address']}" in said, said
    _volume_stays_attached(semester, since)
    own = semester.twin.admin("POST", f"/servers/{server}/host-keys", json={"forged": False})
    assert own.status_code == 200, own.text
    again = semester.up("--replace", step)
    assert again.returncode == 0, explain(again)
    assert semester.outputs()["known_hosts"] == pinned
    assert semester.outputs()["server_id"] == server
    unchanged = semester.student.pulumi(
        "preview", "--expect-no-changes", "--stack", NETID, "--non-interactive", timeout=900
    )
    assert unchanged.returncode == 0, explain(unchanged)


# Another machine at the server's address, as far as SSH can tell: the guest's sshd gets a new
# host key (the old one kept aside), and gets its own back after.
SWAP_HOST_KEY = """
sudo cp -a /etc/ssh/ssh_host_ed25519_key /root/own_host_key
sudo cp -a /etc/ssh/ssh_host_ed25519_key.pub /root/own_host_key.pub
sudo rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub
sudo ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
sudo systemctl restart ssh
"""
OWN_HOST_KEY_BACK = """
sudo cp -a /root/own_host_key /etc/ssh/ssh_host_ed25519_key
sudo cp -a /root/own_host_key.pub /etc/ssh/ssh_host_ed25519_key.pub
sudo systemctl restart ssh
"""


def test_5e_another_key_at_the_address_stops_every_ssh_step_and_never_detaches(
    semester: Semester,
):
    """The address shows another host key than the pinned one (a classmate's VM behind the
    floating IP): a changed docker/ file makes the clean stop come first, and it refuses
    before sending anything; a new platformAccess makes pulumi-command's start step dial it,
    and the host_key check refuses. Neither run detaches the volume; with the server's own
    key back, `pulumi up` converges on the same server (now in tunnel mode)."""
    compose = semester.student.project / "docker" / "docker-compose.yaml"
    original = compose.read_text()
    since = len(semester.twin.events())
    swapped = semester.ssh(SWAP_HOST_KEY)
    assert swapped.returncode == 0, explain(swapped)
    try:
        _touch_compose_file(semester, "a line while another key answers")
        stopped = semester.up()
        said = stopped.stdout + stopped.stderr
        assert stopped.returncode != 0, said
        assert "the clean stop refused cc@" in said and "host key" in said, said
        assert "Nothing was sent to it, and the volume was not detached" in said, said
        _volume_stays_attached(semester, since)
        compose.write_text(original)
        changed = semester.student.pulumi(
            "config", "set", "chi-persist:platformAccess", "tunnel", "--stack", NETID
        )
        assert changed.returncode == 0, explain(changed)
        dialled = semester.up()
        said = dialled.stdout + dialled.stderr
        assert dialled.returncode != 0, said
        assert "host key mismatch" in said, said
        _volume_stays_attached(semester, since)
    finally:
        compose.write_text(original)
        back = semester.ssh(OWN_HOST_KEY_BACK)
        assert back.returncode == 0, explain(back)
    up = semester.up()
    assert up.returncode == 0, explain(up)
    assert semester.outputs()["server_id"] == semester.learned["server_id"]
    _volume_stays_attached(semester, since)


def _command_stderr(semester: Semester, name: str) -> str:
    """What a command step wrote on stderr, as the state keeps it (its stdout may be secret)."""
    for resource in semester.resources():
        if resource["urn"].endswith(f"::{name}"):
            return (resource.get("outputs") or {}).get("stderr") or ""
    raise AssertionError(f"no command {name} in the stack's state")


def _rules_of(semester: Semester) -> set[tuple[int, str]]:
    """(port, remote prefix) of the ingress rules of the student's group."""
    (group,) = [
        group for group in semester.twin.state()["security_groups"]
        if group["name"] == f"persist-{NETID}"
    ]  # fmt: skip
    return {
        (rule["port_range_min"], rule["remote_ip_prefix"])
        for rule in group["rules"]
        if rule["direction"] == "ingress"
    }


def _answers(address: str, port: int) -> bool:
    """Whether something at address:port accepts a connection and says a first word."""
    import socket

    try:
        with socket.create_connection((address, port), timeout=10) as connection:
            connection.settimeout(10)
            connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return bool(connection.recv(64))
    except OSError:
        return False


# A listener in the guest on its own 127.0.0.1:8000, where MLflow answers in tunnel mode (the
# guest's Docker is a stand-in: no MLflow runs there). Only the simple command goes to the
# background: bash runs a backgrounded `cd && nohup …` list in a child shell that keeps the
# session's stdout open for as long as the server runs, so ssh would never return.
LISTENER = (
    "mkdir -p /tmp/listener && echo 'the platform, through the tunnel' > /tmp/listener/index.html"
    " && cd /tmp/listener && { nohup python3 -m http.server 8000 --bind 127.0.0.1"
    " </dev/null >/tmp/listener.log 2>&1 & } && sleep 2"
)


def test_5f_tunnel_access_opens_only_ssh_and_open_reaches_the_guests_loopback(
    semester: Semester,
):
    """platformAccess tunnel: the group opens port 22 alone; the floating IP answers 22 and not
    8000; the stack step published on the server's 127.0.0.1; `./chi-persist open` tunnels to a
    listener on the guest's loopback and `--stop` ends it. The server is the one from before."""
    assert semester.outputs()["platform_access"] == "tunnel"
    assert semester.outputs()["server_id"] == semester.learned["server_id"]
    assert _rules_of(semester) == {(22, "0.0.0.0/0")}
    address = semester.learned["address"]
    assert _answers(address, 22)
    started = semester.ssh(LISTENER)
    assert started.returncode == 0, explain(started)
    assert not _answers(address, 8000), "port 8000 answers on the floating IP in tunnel mode"
    start_log = _command_stderr(semester, START)
    assert "platform access tunnel: ports 8888, 8000, 9000 and 9001 published on 127.0.0.1" in (
        start_log
    ), start_log
    opened = semester.student.command("open", "--stack", NETID, "--json", timeout=300)
    assert opened.returncode == 0, explain(opened)
    urls = json.loads(opened.stdout)
    try:
        page = subprocess.run(
            ["python3", "-c", f"import urllib.request as u; print(u.urlopen({urls['mlflow']!r},"
             " timeout=30).read().decode())"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert "the platform, through the tunnel" in page.stdout, explain(page)
    finally:
        stopped = semester.student.command("open", "--stack", NETID, "--stop", timeout=120)
    assert stopped.returncode == 0 and "is stopped" in stopped.stdout, explain(stopped)
    assert not _answers("127.0.0.1", int(urls["mlflow"].rsplit(":", 1)[1]))
    semester.ssh("pkill -f '[h]ttp.server 8000' || true")


# The start step's session is cut right after start-stack.sh printed the sealed credentials:
# the script, as copied to the server, ends by killing the sshd above it.
DROP_AFTER_PRINT = r"""
script=/home/cc/chi-persist/scripts/remote/start-stack.sh
sudo cp -a "$script" /root/start-stack.sh.kept
cat <<'DROP' | sudo tee -a "$script" >/dev/null
sleep 3  # sshd forwards what was printed before its session goes
pid=$$
while [ "$pid" -gt 1 ]; do
    case $(cat /proc/$pid/comm) in
        sshd | sshd-session) kill -KILL "$pid"; exit 0 ;;
    esac
    pid=$(awk '{print $4}' /proc/$pid/stat)
done
DROP
"""
KEEP_START_STACK = (
    "sudo cp -a /root/start-stack.sh.kept /home/cc/chi-persist/scripts/remote/start-stack.sh"
)


def test_5g_back_to_public_changes_only_rules_and_bindings_and_a_dropped_session_shows_no_secret(
    semester: Semester,
):
    """The real engine's plan from tunnel to public holds the four web rules and an update of
    the stack step, nothing else. That step's SSH session is cut right after start-stack.sh
    printed: the error shows its output, the sealed credentials, and none of the credentials.
    The next `up` converges on the same server and volume, nothing detached."""
    changed = semester.student.pulumi(
        "config", "set", "chi-persist:platformAccess", "public", "--stack", NETID
    )
    assert changed.returncode == 0, explain(changed)
    preview = semester.student.pulumi(
        "preview", "--json", "--stack", NETID, "--non-interactive", timeout=900
    )
    assert preview.returncode == 0, explain(preview)
    planned = sorted(
        (step["op"], step["urn"].rsplit("::", 1)[1])
        for step in json.loads(preview.stdout)["steps"]
        if step["op"] != "same"
    )
    assert planned == sorted(
        [("create", f"access-{service}-0.0.0.0-0")
         for service in ("jupyter", "mlflow", "minio-api", "minio-console")]
        + [("update", START)]
    ), planned  # fmt: skip
    since = len(semester.twin.events())
    secrets = semester.ssh("sudo cat /mnt/block/.chi-persist/credentials.env")
    assert secrets.returncode == 0, explain(secrets)
    values = [line.split("=", 1)[1] for line in secrets.stdout.splitlines() if "=" in line]
    values = [value for value in values if value != "mlflowdb"]
    assert len(values) >= 10
    patched = semester.ssh(DROP_AFTER_PRINT)
    assert patched.returncode == 0, explain(patched)
    try:
        dropped = semester.up()
    finally:
        kept = semester.ssh(KEEP_START_STACK)
        assert kept.returncode == 0, explain(kept)
    said = dropped.stdout + dropped.stderr
    assert dropped.returncode != 0, said
    assert '{"sealed_credentials": "U2FsdGVkX1' in said, "the error did not show the output"
    for value in values:
        assert value not in said, "a credential of the platform is in the error"
    _volume_stays_attached(semester, since)
    up = semester.up()
    assert up.returncode == 0, explain(up)
    assert semester.outputs()["server_id"] == semester.learned["server_id"]
    assert semester.outputs()["platform_access"] == "public"
    assert {port for port, _ in _rules_of(semester)} == {22, 8000, 8888, 9000, 9001}
    _volume_stays_attached(semester, since)
    credentials = semester.student.outputs(NETID, show_secrets=True)["platform_credentials"]
    assert credentials["mlflow_password"] in values and credentials["jupyter_token"] in values


def test_6_a_changed_compose_file_leaves_the_volume_mounted_and_the_stack_running(
    semester: Semester,
):
    """The stack step is stopped before the prepare step runs again, then started again: the
    engine's own steps (the `up`'s event log) are the clean stop, the stack step and the
    prepare step deleted, then the copy of docker/ made again, the volume mounted, the stack
    started; the server has no step (its new first-boot user data is ignored)."""
    _touch_compose_file(semester, "a new line under docker/")
    up = semester.up(steps=True)
    assert up.returncode == 0, explain(up)
    _assert_stop_first_then_copy_mount_start(
        semester.steps, "provisioning-copy-docker", timer_again=False
    )
    assert {step.type for step in semester.steps} == {COPY_TYPE, COMMAND_TYPE, LOCAL_COMMAND_TYPE}
    assert semester.outputs()["server_id"] == semester.learned["server_id"]
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    running = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert running.returncode == 0 and running.stdout.strip() == MARKER, explain(running)


def test_6b_a_changed_remote_script_is_planned_stop_first_then_copy_mount_start(
    semester: Semester,
):
    """A changed file under scripts/remote/, as the engine plans it (`pulumi preview`): the
    clean stop, the stack step and the prepare step deleted first, then the scripts copied,
    the volume mounted, the stack started; the lease's timer set again after the stack starts.
    Nothing else: no server step."""
    script = semester.student.project / "scripts" / "remote" / "prepare-volume"
    with _changed_for_a_preview(script, "# a new line under scripts/remote/\n"):
        planned = semester.planned()
    _assert_stop_first_then_copy_mount_start(planned, "provisioning-copy-scripts", timer_again=True)


def test_6c_a_new_mount_point_is_planned_to_release_the_old_mount_first(semester: Semester):
    """A new mountPoint, as the engine plans it: the old clean stop (release at the old mount
    point) runs before the prepare step mounts at the new one; the lease's timer is updated in
    place for the new mount point (it follows the stack step by depends_on alone, which the
    engine's delete-before-replace does not follow: it is not deleted first)."""
    with _configured_for_a_preview(semester, mountPoint="/mnt/data"):
        planned = semester.planned()
    timer = [step for step in planned if step.name == TIMER]
    steps = [step for step in planned if step.name != TIMER]
    assert _order(steps) == [
        f"delete {CLEAN_STOP}",
        f"delete {START}",
        f"delete {PREPARE}",
        f"create {PREPARE}",
        f"create {START}",
        f"create {CLEAN_STOP}",
    ], _order(planned)
    assert "--mount-point /mnt/block" in steps[0].old_inputs["delete"]
    assert "--mount-point /mnt/data" in steps[3].new_inputs["create"]
    assert "--mount-point /mnt/data" in steps[5].new_inputs["delete"]
    assert _order(timer) == [f"update {TIMER}"]
    assert "--mount-point /mnt/data" in timer[0].new_inputs["create"]


@pytest.mark.parametrize(
    ("change", "lease"),
    [
        pytest.param({"flavor": "m1.xlarge"}, "replaced", id="flavor"),
        pytest.param({"image": "CC-Ubuntu24.04-CUDA"}, None, id="image"),
    ],
)
def test_6d_a_new_flavor_or_image_is_planned_as_the_recycle_path(
    semester: Semester, change: dict[str, str], lease: str | None
):
    """A new flavor or image, as the engine plans it: never a resize or a rebuild in place, but
    the recycle path (clean stop, detach, delete, new server, attach, mount without format,
    start); a new flavor is a new lease, made first, and the old one deleted last."""
    before = semester.student.stack_export(NETID)
    with _configured_for_a_preview(semester, **change):
        planned = semester.planned()
    _assert_the_recycle_path(planned, before, lease)


def test_renewal_in_the_window_makes_the_next_lease_first_then_moves_the_server(
    semester: Semester,
):
    """A longer leaseDuration changes nothing while the lease is outside its renewal window
    (same lease, same end, same server, no request to Blazar but reads). With a window that
    holds the lease's end, one `pulumi up` renews: the next lease is made first; then the
    server is replaced the clean way onto its flavor (detach, delete, a new server on the same
    address with the same volume, nothing formatted, the marker there); then the old lease is
    deleted; the new server's timer stops the platform 10 minutes before the new end. The
    longer duration is the engine's one step: the lease updated in place (recorded)."""
    first = semester.outputs()
    old_server = semester.learned["server_id"]
    _set_config(semester, leaseDuration="7d")
    since = semester.twin.events()[-1]["seq"]
    recorded = semester.up(steps=True)
    assert recorded.returncode == 0, explain(recorded)
    assert "is recorded" in recorded.stdout + recorded.stderr, explain(recorded)
    assert _order(semester.steps) == ["update lease"], _order(semester.steps)
    (update,) = semester.steps
    assert update.new_inputs["duration_seconds"] == 7 * 86400
    assert update.old_inputs["duration_seconds"] == 8 * 3600
    kept = semester.outputs()
    assert (kept["lease_id"], kept["lease_end"], kept["server_id"]) == (
        first["lease_id"],
        first["lease_end"],
        old_server,
    )
    writes = [call for call in _api_calls(semester.twin, since) if call[0] != "GET"]
    assert not [call for call in writes if "/v1/leases" in call[1]], writes

    _set_config(semester, leaseRenewWindow="1d")
    since = semester.twin.events()[-1]["seq"]
    renewed = semester.up(measure="`pulumi up` renewing the lease")
    assert renewed.returncode == 0, explain(renewed)
    assert "within the renewal window" in renewed.stdout + renewed.stderr, explain(renewed)
    outputs = semester.outputs()
    assert outputs["lease_id"] != first["lease_id"]
    assert outputs["server_id"] != old_server
    assert outputs["floating_ip"] == semester.learned["address"]
    assert outputs["volume_id"] == semester.learned["volume_id"]
    start, end = (
        datetime.datetime.fromisoformat(outputs["lease_end"].replace("Z", "+00:00")),
        datetime.datetime.fromisoformat(first["lease_end"].replace("Z", "+00:00")),
    )
    assert start > end, "the new lease ends after the old one"
    calls = _api_calls(semester.twin, since)
    made = _first(calls, "POST", r"/v1/leases$")
    detach = _first(calls, "DELETE", rf"/servers/{old_server}/os-volume_attachments/")
    delete = _first(calls, "DELETE", rf"/servers/{old_server}$")
    create = _first(calls, "POST", r"/servers$")
    gone = _first(calls, "DELETE", rf"/v1/leases/{first['lease_id']}$")
    assert made < detach < delete < create < gone, f"not the renewal order: {calls}"
    state = semester.twin.state()
    lease = _active_lease(state, f"lease-persist-{NETID}")
    assert lease["id"] == outputs["lease_id"]
    assert first["lease_id"] not in [each["id"] for each in state["leases"]]
    (server,) = state["servers"]
    assert server["flavor"]["id"] == lease["reservations"][0]["id"]
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)
    _assert_lease_stop_timer(semester, outputs["lease_end"])
    semester.learned["server_id"] = outputs["server_id"]


def test_lease_end_is_repaired_by_the_next_up_with_the_same_volume_unformatted(
    semester: Semester,
):
    """Before the end, the server's timer runs the clean stop (here started at once, as its
    calendar would); then the lease ends (Blazar deletes the server, then the flavor) and
    meets a stopped platform: the volume's filesystem is clean. One `pulumi up` makes a new
    lease and a new server on the same address with the same volume, formats nothing, and
    says that the clean stop could not run. The engine's own steps: the ended lease replaced
    delete-first deletes, before anything is made, the server that booted its flavor and
    everything on that server, the clean stop first and the server last; the volume, port and
    floating IP have no step."""
    old_lease = semester.outputs()["lease_id"]
    stopped = semester.ssh(
        "sudo systemctl start chi-persist-lease-stop.service"
        " && sudo journalctl --no-pager -o cat -u chi-persist-lease-stop.service",
        timeout=600,
    )
    assert stopped.returncode == 0, explain(stopped)
    assert "release-volume: platform stopped" in stopped.stdout, explain(stopped)
    assert "release-volume: unmounted /mnt/block" in stopped.stdout, explain(stopped)
    ended = semester.twin.end_lease(old_lease)
    assert ended["status"] == "TERMINATED", ended
    assert semester.twin.state()["servers"] == []
    (volume,) = semester.twin.state()["volumes"]
    assert _filesystem_state(Path(volume["disk"])) == "clean"
    before = semester.student.stack_export(NETID)
    up = semester.up(steps=True)
    assert up.returncode == 0, explain(up)
    assert "PostgreSQL" in up.stdout + up.stderr, explain(up)
    order = _order(semester.steps)
    deleted = [step.name for step in semester.steps if step.change == "delete"]
    assert deleted[-1] == "lease", order
    assert set(deleted[:-1]) == _on_the_server(before), order
    assert [name for name in deleted if name != TIMER][0] == CLEAN_STOP, order
    assert deleted[-2] == "node-server", order
    assert order.index("delete lease") < order.index("create lease"), order
    assert max(order.index(f"delete {name}") for name in deleted) < min(
        index for index, step in enumerate(order) if step.startswith("create ")
    ), order
    assert not [step for step in semester.steps if step.type in KEPT_TYPES], order
    outputs = semester.outputs()
    assert outputs["lease_id"] != old_lease
    assert outputs["server_id"] != semester.learned["server_id"]
    assert outputs["floating_ip"] == semester.learned["address"]
    assert outputs["volume_id"] == semester.learned["volume_id"]
    state = semester.twin.state()
    lease = _active_lease(state, f"lease-persist-{NETID}")
    assert lease["id"] == outputs["lease_id"]
    (server,) = state["servers"]
    assert server["flavor"]["id"] == lease["reservations"][0]["id"]
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)
    semester.learned["server_id"] = outputs["server_id"]


def test_7_a_new_reservation_replaces_the_server_through_the_clean_stop(semester: Semester):
    """Never a resize in place: the old server is detached, deleted, then a new one made. The
    engine's own steps are the recycle path (clean stop first, everything on the server deleted
    before anything is made, the volume, port and floating IP untouched), and the stack's lease
    is deleted last, once the new server runs on the student's reservation."""
    reservation = _reserve_by_hand(semester.twin, "m1.medium", f"by-hand-{NETID}")
    events_before = len(semester.twin.events())
    changed = semester.student.pulumi(
        "config", "set", "chi-persist:reservation", reservation, "--stack", NETID
    )
    assert changed.returncode == 0, explain(changed)
    before = semester.student.stack_export(NETID)
    up = semester.up(steps=True)
    assert up.returncode == 0, explain(up)
    _assert_the_recycle_path(semester.steps, before, lease="dropped")
    outputs = semester.outputs()
    old = semester.learned["server_id"]
    assert outputs["server_id"] != old
    (server,) = semester.twin.state()["servers"]
    assert server["flavor"]["id"] == reservation, server["flavor"]
    calls = _api_calls(semester.twin, events_before)
    detach = _first(calls, "DELETE", rf"/servers/{old}/os-volume_attachments/")
    delete = _first(calls, "DELETE", rf"/servers/{old}$")
    create = _first(calls, "POST", r"/servers$")
    assert detach < delete < create, f"not the recycle path (detach, delete, create): {calls}"
    # The only action on the old server is the provider's stop before its delete
    # (stop_before_destroy), after the detach: no resize, no rebuild.
    actions = [
        index
        for index, (method, path) in enumerate(calls)
        if method == "POST" and path.endswith(f"/servers/{old}/action")
    ]
    assert all(detach < index < delete for index in actions), f"changed in place: {calls}"
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)
    # Blazar tells the end of the student's own lease: the same timer stops the platform.
    by_hand = next(
        lease for lease in semester.twin.state()["leases"] if lease["name"] == f"by-hand-{NETID}"
    )
    _assert_lease_stop_timer(semester, by_hand["end_date"] + "Z")
    # A reservation of the student's own: the stack's lease is deleted, after the server.
    assert "lease_id" not in outputs, outputs
    own = [lease for lease in semester.twin.state()["leases"] if lease["name"].endswith(NETID)]
    assert [lease["name"] for lease in own if lease["status"] == "ACTIVE"] == [
        f"by-hand-{NETID}"
    ], own
    semester.learned["server_id"] = outputs["server_id"]


def test_7b_another_reservation_is_planned_as_the_recycle_path(semester: Semester):
    """From one reservation of the student's own to another, as the engine plans it: the
    recycle path, and no lease of the stack's to make or delete."""
    api = semester.twin.api()
    other = twin_steps.lease(api, f"another-{NETID}", twin_steps.flavor_id(api, "m1.medium"))
    try:
        before = semester.student.stack_export(NETID)
        with _configured_for_a_preview(semester, reservation=other["reservations"][0]["id"]):
            planned = semester.planned()
    finally:
        gone = api.delete(f"{api.reservation}/leases/{other['id']}")
        assert gone.status_code in (200, 202, 204), gone.text
    _assert_the_recycle_path(planned, before, lease=None)


def test_8_a_larger_volume_grows_the_filesystem_and_keeps_the_marker(semester: Semester):
    """volumeSize 2 → 3: Cinder extends the attached volume and ext4 fills it online."""
    before = semester.ssh("df --output=size -B1M /mnt/block | tail -n1")
    assert before.returncode == 0, explain(before)
    changed = semester.student.pulumi(
        "config", "set", "chi-persist:volumeSize", "3", "--stack", NETID
    )
    assert changed.returncode == 0, explain(changed)
    up = semester.up()
    assert up.returncode == 0, explain(up)
    (volume,) = semester.twin.state()["volumes"]
    assert volume["id"] == semester.learned["volume_id"] and volume["size"] == 3, volume
    after = semester.ssh("df --output=size -B1M /mnt/block | tail -n1")
    assert int(after.stdout) > int(before.stdout) + 900, (before.stdout, after.stdout)
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)


def test_10a_a_vanished_server_is_recycled_without_the_clean_stop(semester: Semester):
    """Out of band the server is gone; recycle warns, forgets the stop step, keeps the rest."""
    old = semester.learned["server_id"]
    vanished = semester.twin.admin("POST", f"/servers/{old}/vanish")
    assert vanished.status_code == 200, vanished.text
    recycled = semester.student.command("recycle", "--stack", NETID, "--yes", timeout=UP_TIMEOUT)
    assert recycled.returncode == 0, explain(recycled)
    assert "Nova no longer has the server" in recycled.stdout, explain(recycled)
    assert "PostgreSQL" in recycled.stdout, explain(recycled)
    state = semester.twin.state()
    assert state["servers"] == []
    (volume,) = state["volumes"]
    assert volume["id"] == semester.learned["volume_id"] and volume["status"] == "available"
    assert [ip["floating_ip_address"] for ip in state["floatingips"]] == [
        semester.learned["address"]
    ]
    left = [r["type"] for r in semester.resources() if r["type"] in (SERVER_TYPE, COMMAND_TYPE)]
    assert left == [], f"left in state after the recycle: {left}"


def test_10b_a_503_mid_up_fails_it_and_a_second_up_converges_with_nothing_duplicated(
    semester: Semester,
):
    """The volume attach answers 503 once: the first `up` stops with the error after the
    server exists; the second finishes the job with that same server and one attachment."""
    fault = semester.twin.admin(
        "POST",
        "/faults",
        json={
            "method": "POST",
            "path": r"/compute/v2\.1/servers/[^/]+/os-volume_attachments",
            "status": 503,
            "count": 1,
        },
    )
    assert fault.status_code == 201, fault.text
    failed = semester.up()
    assert failed.returncode != 0, explain(failed)
    assert "503" in failed.stdout + failed.stderr, explain(failed)
    (server,) = semester.twin.state()["servers"]
    up = semester.up()
    assert up.returncode == 0, explain(up)
    state = semester.twin.state()
    assert [s["id"] for s in state["servers"]] == [server["id"]], state["servers"]
    (volume,) = state["volumes"]
    assert [a["server_id"] for a in volume["attachments"]] == [server["id"]], volume
    assert len(state["floatingips"]) == 1 and len(state["ports"]) == 1, state["ports"]
    outputs = semester.outputs()
    assert outputs["server_id"] == server["id"]
    assert outputs["floating_ip"] == semester.learned["address"]
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)
    semester.learned["server_id"] = outputs["server_id"]


# On the server: `blkid`, which prepare-volume runs before it changes anything, waits
# while /run/chi-persist-hold exists (sudo's secure_path puts /usr/local/sbin first).
HOLD_BLKID = r"""
sudo tee /usr/local/sbin/blkid >/dev/null <<'WRAPPER'
#!/bin/sh
if [ -e /run/chi-persist-hold ]; then
    echo $$ > /run/chi-persist-held
    for _ in $(seq 600); do [ -e /run/chi-persist-hold ] || break; sleep 0.5; done
fi
exec /usr/sbin/blkid "$@"
WRAPPER
sudo chmod 755 /usr/local/sbin/blkid && sudo touch /run/chi-persist-hold
"""
# Ends the SSH session the held blkid runs under: the first sshd among its ancestors.
DROP_SESSION = r"""
pid=$(sudo cat /run/chi-persist-held)
while [ "$pid" -gt 1 ]; do
    case $(cat /proc/$pid/comm) in
        sshd | sshd-session) sudo kill -KILL "$pid"; echo "dropped $pid"; exit 0 ;;
    esac
    pid=$(awk '{print $4}' /proc/$pid/stat)
done
echo "no sshd above the held blkid" >&2; exit 1
"""
RELEASE_HOLD = "sudo rm -f /run/chi-persist-hold /usr/local/sbin/blkid /run/chi-persist-held"


def test_10c_an_ssh_drop_during_the_prepare_step_is_healed_by_a_rerun_without_formatting(
    semester: Semester,
):
    """The prepare step's SSH session dies mid-run: `up` fails; the rerun converges, and the
    volume keeps its filesystem, its data and its UUID."""
    held = semester.ssh(HOLD_BLKID)
    assert held.returncode == 0, explain(held)
    _touch_compose_file(semester, "another line, so that the volume step runs again")
    log = semester.student.root / "up-with-a-dropped-session.log"
    with open(log, "w") as output, subprocess.Popen(
        [semester.student.pulumi_executable, "up", "--yes", "--stack", NETID,
         "--non-interactive"],
        cwd=semester.student.project, env=semester.student.env, text=True,
        stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
    ) as running:  # fmt: skip

        def held() -> bool:
            if running.poll() is not None:
                raise AssertionError(f"`up` ended before the prepare step:\n{log.read_text()}")
            return semester.ssh("sudo test -s /run/chi-persist-held").returncode == 0

        try:
            wait_for(held, timeout=UP_TIMEOUT, what="the prepare step reaching blkid", interval=2)
            dropped = semester.ssh(DROP_SESSION)
            assert dropped.returncode == 0, explain(dropped)
            running.wait(timeout=UP_TIMEOUT)
        finally:
            semester.ssh(RELEASE_HOLD)
            if running.poll() is None:
                running.kill()
    assert running.returncode != 0, log.read_text()
    up = semester.up()
    assert up.returncode == 0, explain(up)
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)


def test_10d_a_second_machine_builds_nothing_twice(semester: Semester, tmp_path: Path):
    """The same student with an empty state (a new laptop): the server runs the platform on
    the volume for the first machine's state, so `pulumi up` refuses, naming it and the way
    out, and changes nothing (the first machine still has nothing to do). Following that way
    out (a clean shutdown through Nova, then a delete), `pulumi up` adopts everything else,
    makes a new server and finds the data; the first machine's stale state is then refused."""
    first = semester.student
    second = StudentMachine.create(tmp_path, semester.student_env)
    (second.home / ".ssh" / "id_rsa_chameleon").write_bytes(semester.key.read_bytes())
    (second.home / ".ssh" / "id_rsa_chameleon").chmod(0o600)
    # The student's settings go with them: the stack file (a larger volumeSize, their own
    # reservation), as the README says, then the same init.
    stack_file = f"Pulumi.{NETID}.yaml"
    shutil.copy2(first.project / stack_file, second.project / stack_file)
    made = second.command("init", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    old_server = semester.learned["server_id"]
    events_before = len(semester.twin.events())
    refused = second.pulumi("up", "--yes", "--stack", NETID, "--non-interactive", timeout=900)
    assert refused.returncode != 0, explain(refused)
    said = refused.stdout + refused.stderr
    assert f"openstack server stop {old_server}" in said and "Nothing was created" in said, said
    changes = _cloud_changes(semester.twin, events_before)
    assert changes == [], f"the refused `up` changed the cloud: {changes}"
    unchanged = first.pulumi(
        "preview", "--expect-no-changes", "--stack", NETID, "--non-interactive", timeout=900
    )
    assert unchanged.returncode == 0, explain(unchanged)
    # The way out the refusal names: a clean shutdown, then a delete (openstack server stop,
    # openstack server delete), here through the twin's Nova API.
    api = semester.twin.api()
    stopped = api.post(f"{api.compute}/servers/{old_server}/action", json={"os-stop": None})
    assert stopped.status_code == 202, stopped.text
    wait_for(
        lambda: api.get(f"{api.compute}/servers/{old_server}").json()["server"]["status"]
        == "SHUTOFF",
        timeout=600, what="the server's clean shutdown", interval=2,
    )  # fmt: skip
    assert api.delete(f"{api.compute}/servers/{old_server}").status_code == 204
    wait_for(
        lambda: api.get(f"{api.compute}/servers/{old_server}").status_code == 404,
        timeout=300, what="the server's delete", interval=2,
    )  # fmt: skip
    (volume,) = semester.twin.state()["volumes"]
    assert _filesystem_state(Path(volume["disk"])) == "clean", "not unmounted at the shutdown"
    semester.student = second
    up = semester.up()
    assert up.returncode == 0, explain(up)
    said = up.stdout + up.stderr
    for what in ("port", "floating IP", "security group", "volume"):
        assert f"adopting {what}" in said, (what, said)
    outputs = semester.outputs()
    assert outputs["floating_ip"] == semester.learned["address"]
    assert outputs["volume_id"] == semester.learned["volume_id"]
    state = semester.twin.state()
    assert len(state["servers"]) == 1 and len(state["ports"]) == 1
    assert len(state["floatingips"]) == 1 and len(state["volumes"]) == 1
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    marker = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert marker.returncode == 0 and marker.stdout.strip() == MARKER, explain(marker)
    semester.learned["server_id"] = outputs["server_id"]
    events_before = len(semester.twin.events())
    stale = first.pulumi("up", "--yes", "--stack", NETID, "--non-interactive", timeout=900)
    assert stale.returncode != 0 and "Nothing was created" in stale.stdout + stale.stderr
    changes = _cloud_changes(semester.twin, events_before)
    assert changes == [], f"the first machine's stale state changed the cloud: {changes}"


NOTEBOOK = "/mnt/block/jupyter_work/week3.ipynb"
NETID_SERVER = f"chi-persist; node-persist-{NETID}"
NOTEBOOK_TEXT = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
# The guests run the stand-in Docker, so no MinIO: this stands in for an empty one on the
# port compose publishes, answering the calls a backup and a restore make of an empty bucket.
EMPTY_MINIO = """
import http.server
LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
           b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>mlflow-artifacts</Name>'
           b'<KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>')
class Bucket(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(LISTING)))
        self.end_headers()
        self.wfile.write(LISTING)
http.server.HTTPServer(("127.0.0.1", 9000), Bucket).serve_forever()
"""


def _empty_minio_on_the_server(semester: Semester) -> None:
    started = semester.ssh(
        "sudo systemd-run --unit twin-empty-minio --quiet python3 -c "
        + shlex.quote(EMPTY_MINIO)
        + " && for i in $(seq 30); do (exec 3<>/dev/tcp/127.0.0.1/9000) 2>/dev/null && exit 0; "
        "sleep 1; done; exit 1"
    )
    assert started.returncode == 0, explain(started)


def _token_on_the_disks(semester: Semester, server_id: str, volume_disk: str) -> list[str]:
    """Which of the object store's tokens (every one CHI@TACC's Keystone issued) is in a file of
    the guest: its root overlay, blank disk, config drive and console log, and the volume."""
    synced = semester.ssh("sync && sudo sync")
    assert synced.returncode == 0, explain(synced)
    tokens = [token.encode() for token in semester.twin.state()["chi_tacc_tokens"]]
    assert tokens, "CHI@TACC's Keystone issued no token"
    machine = semester.twin.state_dir / "machines" / server_id
    files = [path for path in machine.iterdir() if path.is_file()] + [Path(volume_disk)]
    found = []
    for path in files:
        with open(path, "rb") as handle:
            tail = b""
            while chunk := handle.read(64 * 1024 * 1024):
                window = tail + chunk
                found += [f"{path.name}: {token[:12]!r}…" for token in tokens if token in window]
                tail = window[-256:]
    return sorted(set(found))


def test_9a_a_backup_goes_from_the_server_to_the_object_store(semester: Semester):
    """With backupCloud the twin's CHI@TACC entry: `./chi-persist backup` takes the marker and a
    notebook from the server straight to Swift (the upload goes from the guest, through the
    twin's route to its public address), writes the manifest last, and `backups` lists it
    complete; the token that went to the server is on none of its disks."""
    _set_config(semester, backupCloud="chi_tacc")
    wrote = semester.ssh(
        f"echo {shlex.quote(NOTEBOOK_TEXT)} | sudo tee {NOTEBOOK} >/dev/null"
        f" && sudo chown 1000:100 {NOTEBOOK} && sync"
    )
    assert wrote.returncode == 0, explain(wrote)
    _empty_minio_on_the_server(semester)
    events_before = len(semester.twin.events())
    taken = semester.command("`./chi-persist backup`", "backup", "--stack", NETID)
    assert taken.returncode == 0, explain(taken)
    assert re.search(r"backup: \d{8}T\d{6}Z complete: ", taken.stdout), explain(taken)
    # The parts went up from the guest itself (its hostname in the script's User-Agent), the
    # manifest from the student's machine (openstacksdk's).
    calls = [
        event
        for event in semester.twin.events(events_before)
        if event.get("kind") == "api" and "/chi-tacc/swift/" in event.get("path", "")
    ]
    segments = [e for e in calls if e["method"] == "PUT" and "/notebooks.tar/" in e["path"]]
    assert segments and all(f"({NETID_SERVER})" in e.get("agent", "") for e in segments), segments
    # Retention reads every manifest back after the new one is written: only one PUT of it.
    (manifest,) = [
        e for e in calls if e["method"] == "PUT" and e["path"].endswith("/manifest.json")
    ]
    assert "openstacksdk" in manifest.get("agent", ""), manifest
    listed = semester.student.command("backups", "--stack", NETID)
    assert listed.returncode == 0, explain(listed)
    (row,) = [line for line in listed.stdout.splitlines() if re.search(r"\d{8}T\d{6}Z", line)]
    assert "4 of 4" in row and " yes: " in row, listed.stdout
    state = semester.twin.state()
    (server,) = state["servers"]
    (volume,) = state["volumes"]
    assert _token_on_the_disks(semester, server["id"], volume["disk"]) == []
    semester.learned["backup"] = row.split()[0]


def test_9_destroy_stops_at_the_volume_and_the_readme_deletes_everything(semester: Semester):
    """Protection holds against `pulumi destroy`; the documented way out empties the twin."""
    destroy = semester.student.pulumi(
        "destroy", "--yes", "--stack", NETID, "--non-interactive", timeout=UP_TIMEOUT
    )
    assert destroy.returncode != 0, explain(destroy)
    assert "protected" in destroy.stdout + destroy.stderr, explain(destroy)
    assert [volume["id"] for volume in semester.twin.state()["volumes"]] == [
        semester.learned["volume_id"]
    ]
    for command in _readme_delete_everything_commands(NETID):
        result = semester.student._run(
            ["bash", "-c", command], timeout=UP_TIMEOUT, stdin="", check=False
        )
        assert result.returncode == 0, f"{command}\n{explain(result)}"
    assert _leftovers(semester.twin.state()) == {}
    assert NETID not in semester.student.stack_names()


def test_9b_a_new_stack_of_the_same_netid_gets_the_data_back_with_restore(semester: Semester):
    """After "delete everything": the quickstart's `init` and `pulumi up` make a new stack with a
    new, empty volume; `./chi-persist restore` (no --force: the platform is empty) puts the
    backup's marker and notebook back, owners kept; no disk of the new guest holds a token.
    Then the stack is deleted again, as the semester's end."""
    made = semester.student.command(*QUICKSTART["init"][1:])
    assert made.returncode == 0, explain(made)
    _set_config(semester, backupCloud="chi_tacc")
    up = semester.up()
    assert up.returncode == 0, explain(up)
    assert _ready_line(semester.command_stdout(PREPARE))["formatted"] == "yes"
    assert semester.ssh("test ! -e /mnt/block/marker.txt").returncode == 0
    _empty_minio_on_the_server(semester)
    restored = semester.command("`./chi-persist restore`", "restore", "--stack", NETID)
    assert restored.returncode == 0, explain(restored)
    assert f"restore: done: backup {semester.learned['backup']} is in place" in restored.stdout
    back = semester.ssh(
        f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt && sudo stat -c '%u:%g' {NOTEBOOK}"
        f" && sudo cat {NOTEBOOK}"
    )
    assert back.returncode == 0, explain(back)
    assert back.stdout.splitlines() == [MARKER, "1000:100", NOTEBOOK_TEXT], explain(back)
    state = semester.twin.state()
    (server,) = state["servers"]
    (volume,) = state["volumes"]
    assert _token_on_the_disks(semester, server["id"], volume["disk"]) == []
    for command in _readme_delete_everything_commands(NETID):
        result = semester.student._run(
            ["bash", "-c", command], timeout=UP_TIMEOUT, stdin="", check=False
        )
        assert result.returncode == 0, f"{command}\n{explain(result)}"
    assert _leftovers(semester.twin.state()) == {}


def test_11_and_12_two_students_at_once_one_adopting_a_tutorial_volume(
    semester: Semester, tmp_path: Path
):
    """cd5678 made block-persist-cd5678 by hand in the tutorial (GPT, one partition, ext4,
    data); ef9012 starts from nothing. Both run new-stack and `pulumi up` at the same time."""
    adopter, newcomer = "cd5678", "ef9012"
    tutorial_disk, tutorial_uuid = _tutorial_volume(tmp_path / "tutorial")
    premade = semester.twin.admin(
        "POST", "/volumes", json={"name": f"block-persist-{adopter}", "image": str(tutorial_disk)}
    )
    assert premade.status_code == 201, premade.text
    volume_id = premade.json()["volume"]["id"]
    students = {}
    for netid, extra in ((adopter, ["--existing-volume-id", volume_id]), (newcomer, [])):
        student = StudentMachine.create(tmp_path / netid, semester.student_env)
        key = student.home / ".ssh" / "id_rsa_chameleon"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", netid, "-f", str(key)],
            check=True,
        )
        semester.twin.add_keypair(f"key-{netid}", Path(f"{key}.pub").read_text().strip())
        made = student.command("init", netid, "--key-pair", f"key-{netid}", *extra)
        assert made.returncode == 0, explain(made)
        students[netid] = Semester(twin=semester.twin, student=student, key=key, netid=netid)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        ups = {netid: pool.submit(student.up) for netid, student in students.items()}
        results = {netid: future.result() for netid, future in ups.items()}
    for result in results.values():
        assert result.returncode == 0, explain(result)

    state = semester.twin.state()
    for kind in ("servers", "volumes", "ports", "security_groups", "keypairs"):
        names = [item["name"] for item in state[kind] if item.get("name") != "default"]
        assert len(names) == len(set(names)), f"{kind} share a name: {names}"
    assert sorted(server["name"] for server in state["servers"]) == [
        f"node-persist-{adopter}",
        f"node-persist-{newcomer}",
    ]
    addresses = {netid: s.outputs()["floating_ip"] for netid, s in students.items()}
    assert len(set(addresses.values())) == 2, addresses
    for netid in students:
        lease = _active_lease(state, f"lease-persist-{netid}")
        (server,) = [s for s in state["servers"] if s["name"] == f"node-persist-{netid}"]
        assert server["flavor"]["id"] == lease["reservations"][0]["id"], netid

    adopted = students[adopter]
    assert adopted.outputs()["volume_id"] == volume_id
    ready = _ready_line(adopted.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == tutorial_uuid, ready
    data = adopted.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/{TUTORIAL_FILE}")
    assert data.returncode == 0 and data.stdout == TUTORIAL_DATA, explain(data)

    fresh = students[newcomer]
    assert _ready_line(fresh.command_stdout(PREPARE))["formatted"] == "yes"
    running = fresh.ssh(PLATFORM_RUNS)
    assert running.returncode == 0, explain(running)


TUTORIAL_FILE = "tutorial/notes.txt"
TUTORIAL_DATA = "made by hand in the tutorial, before chi-persist\n"


def _tutorial_volume(directory: Path) -> tuple[Path, str]:
    """A 2 GiB disk laid out as the tutorial's commands do, with a file on it; its UUID."""
    directory.mkdir(parents=True)
    disk = directory / "block-persist.img"
    with open(disk, "wb") as handle:
        handle.truncate(2 * 1024**3)
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True)
    device = run(["losetup", "--find", "--show", "--partscan", str(disk)]).stdout.strip()
    mount = directory / "mnt"
    mount.mkdir()
    try:
        run(["parted", "-s", device, "mklabel", "gpt"])
        run(["parted", "-s", device, "mkpart", "primary", "ext4", "0%", "100%"])
        run(["partx", "-u", device], check=False)
        run(["udevadm", "settle"], check=False)
        run(["mkfs.ext4", "-q", f"{device}p1"])
        run(["mount", f"{device}p1", str(mount)])
        try:
            (mount / TUTORIAL_FILE).parent.mkdir(parents=True)
            (mount / TUTORIAL_FILE).write_text(TUTORIAL_DATA)
        finally:
            run(["umount", str(mount)])
        uuid = run(["blkid", "-p", "-s", "UUID", "-o", "value", f"{device}p1"]).stdout.strip()
    finally:
        run(["losetup", "-d", device], check=False)
    assert uuid, "mkfs.ext4 made no UUID"
    return disk, uuid


# --- the engine's own order of an update ------------------------------------------------------
# The order of the steps of an update is the engine's (pkg/resource/deploy/step_generator.go: a
# delete-before-replace first deletes the dependents that take a property of the replaced
# resource, in reverse order). These read it from the engine itself: the event log of a
# semester's `up`, or `pulumi preview` for a change the semester does not make.


def _order(steps: list[EngineStep]) -> list[str]:
    """`delete NAME`, `create NAME`, `update NAME`: a replacement is a delete and a create."""
    return [str(step) for step in steps]


def _without_timer(order: list[str]) -> list[str]:
    return [step for step in order if not step.endswith(f" {TIMER}")]


def _assert_stop_first_then_copy_mount_start(
    steps: list[EngineStep], copy: str, timer_again: bool
) -> None:
    """A new copy of `copy`'s files: the clean stop (stop, unmount), the stack step and the
    prepare step deleted before the copy is made again, then the prepare step (mount) and the
    stack step made again, and the clean stop last; new scripts also set the lease's timer
    again (it runs release-volume.sh from them), after the stack has started."""
    order = _order(steps)
    assert _without_timer(order) == [
        f"delete {CLEAN_STOP}",
        f"delete {START}",
        f"delete {PREPARE}",
        f"delete {copy}",
        f"create {copy}",
        f"create {PREPARE}",
        f"create {START}",
        f"create {CLEAN_STOP}",
    ], order
    timer = [f"delete {TIMER}", f"create {TIMER}"] if timer_again else []
    assert [step for step in order if step.endswith(TIMER)] == timer, order
    if timer:
        assert order.index(f"create {TIMER}") > order.index(f"create {START}"), order


def _on_the_server(export: dict[str, Any]) -> set[str]:
    """The names of the server and of every resource that depends on it, transitively (by a
    dependency or an input), as the state records them."""
    resources = export["deployment"].get("resources") or []
    (server,) = [r for r in resources if r["type"] == SERVER_TYPE]
    found = {server["urn"]}
    grew = True
    while grew:
        grew = False
        for resource in resources:
            edges = set(resource.get("dependencies") or [])
            for urns in (resource.get("propertyDependencies") or {}).values():
                edges.update(urns or [])
            if resource["urn"] not in found and edges & found:
                found.add(resource["urn"])
                grew = True
    return {
        urn.rsplit("::", 1)[-1]
        for urn in found
        if next(r for r in resources if r["urn"] == urn).get("custom")
    }


def _assert_the_recycle_path(
    steps: list[EngineStep], before: dict[str, Any], lease: str | None
) -> None:
    """Clean stop, detach, delete, new server, re-attach, prepare, start: what a recycle does,
    every step on the server deleted before anything is made, the volume, port and floating IP
    untouched. `lease`: "replaced" (a new lease of a new flavor, made first and the old one
    deleted last), "dropped" (a reservation of the student's own: the stack's lease deleted
    once the new server runs) or None (untouched)."""
    order = _order(steps)
    if lease == "dropped":
        assert order[-1] == "delete lease", f"the old lease goes once the new server runs: {order}"
        steps, order = steps[:-1], order[:-1]
    elif lease == "replaced":
        # The old lease still serves: the next lease is made first, so its reservation is held
        # before anything stops; the server boots its flavor, so it is recycled onto it; the
        # old lease goes last, once the new server runs.
        assert order[0] == "create lease" and order[-1] == "delete lease", order
        steps, order = steps[1:-1], order[1:-1]
    recycled = _on_the_server(before)
    deleted = [step.name for step in steps if step.change == "delete"]
    created = [step.name for step in steps if step.change == "create"]
    assert _without_timer(order)[0] == f"delete {CLEAN_STOP}", f"the clean stop first: {order}"
    assert set(deleted) == recycled == set(created), (order, recycled)
    assert len(deleted) == len(set(deleted)), order
    assert [step.change for step in steps] == ["delete"] * len(deleted) + ["create"] * len(
        created
    ), order
    for first, then in [
        (f"delete {CLEAN_STOP}", "delete node-volume-attachment"),
        ("delete node-volume-attachment", "delete node-server"),
        ("create node-server", "create node-volume-attachment"),
        ("create node-volume-attachment", f"create {PREPARE}"),
        (f"create {PREPARE}", f"create {START}"),
        (f"create {START}", f"create {TIMER}"),
    ]:
        assert order.index(first) < order.index(then), (first, then, order)
    assert not [step for step in steps if step.type in KEPT_TYPES], order


@contextlib.contextmanager
def _configured_for_a_preview(semester: Semester, **values: str) -> Iterator[None]:
    """The stack's config with `values` set, then exactly as it was (its stack file's bytes)."""
    stack_file = semester.student.project / f"Pulumi.{NETID}.yaml"
    kept = stack_file.read_bytes()
    try:
        _set_config(semester, **values)
        yield
    finally:
        stack_file.write_bytes(kept)


@contextlib.contextmanager
def _changed_for_a_preview(path: Path, line: str) -> Iterator[None]:
    """`path` with `line` added, then exactly as it was."""
    kept = path.read_bytes()
    try:
        path.write_bytes(kept + line.encode())
        yield
    finally:
        path.write_bytes(kept)


def _set_config(semester: Semester, **values: str) -> None:
    for key, value in values.items():
        changed = semester.student.pulumi(
            "config", "set", f"chi-persist:{key}", value, "--stack", NETID
        )
        assert changed.returncode == 0, explain(changed)


def _assert_lease_stop_timer(semester: Semester, lease_end: str) -> None:
    """The server's timer is active and due 10 minutes before `lease_end` (ISO UTC)."""
    end = datetime.datetime.fromisoformat(lease_end.replace("Z", "+00:00"))
    due = f"{end - datetime.timedelta(minutes=10):%Y-%m-%d %H:%M:%S} UTC"
    timer = semester.ssh(
        "systemctl is-active chi-persist-lease-stop.timer"
        " && cat /etc/systemd/system/chi-persist-lease-stop.timer"
    )
    assert timer.returncode == 0, explain(timer)
    assert f"OnCalendar={due}" in timer.stdout, explain(timer)


def _active_lease(state: dict[str, Any], name: str) -> dict[str, Any]:
    """The one ACTIVE lease of that name in the twin."""
    leases = [lease for lease in state["leases"] if lease["name"] == name]
    active = [lease for lease in leases if lease["status"] == "ACTIVE"]
    assert len(active) == 1, f"not one ACTIVE lease named {name}: {leases}"
    return active[0]


def _touch_compose_file(semester: Semester, why: str) -> None:
    compose = semester.student.project / "docker" / "docker-compose.yaml"
    compose.write_text(compose.read_text() + f"# {why}\n")


def _reserve_by_hand(twin: Twin, flavor_name: str, name: str) -> str:
    """What a student who brings their own reservation does in Horizon: a lease for one
    instance of a flavor, started now; the reservation's id once the lease is ACTIVE."""
    api = twin.api()
    lease = twin_steps.lease(api, name, twin_steps.flavor_id(api, flavor_name))
    return lease["reservations"][0]["id"]


def _leftovers(state: dict[str, Any]) -> dict[str, Any]:
    """What the twin still holds for a student, by kind (the default group aside)."""
    leftovers = {
        kind: [item.get("name") or item.get("id") for item in state[kind]]
        for kind in ("servers", "volumes", "ports", "floatingips")
        if state[kind]
    }
    groups = [group["name"] for group in state["security_groups"] if group["name"] != "default"]
    if groups:
        leftovers["security_groups"] = groups
    return leftovers


def _readme_delete_everything_commands(netid: str) -> list[str]:
    """The shell lines of the README's "Delete everything" section, for one stack.

    `pulumi destroy` and `pulumi stack rm` ask for confirmation at a terminal; here,
    without one, `--yes` is the student's answer.
    """
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Delete everything", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, "the README's 'Delete everything' section has no sh block"
    commands = []
    for block in blocks:
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command:
                continue
            command = command.replace("ab1234", netid).replace("<netid>", netid)
            if command.startswith(("pulumi destroy", "pulumi stack rm")):
                command += " --yes"
            commands.append(command)
    assert any("unprotect" in command for command in commands), commands
    return commands
