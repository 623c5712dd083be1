"""A student's semester through the real Pulumi engine, on a stand-in KVM@TACC of real VMs.

The real CLI (tests/engine/toolchain) runs the program with the `openstack` and
`command` plugins against `tests/twin/serve`; every server is a qemu guest that
runs the program's own first-boot user data, every volume attach hot-plugs a
disk, every floating IP is a loopback address that reaches the guest. The steps
run in order on one twin and one student, as the semester does:

 1. new-stack, then a `pulumi up` killed right after Nova accepted the server, `pulumi
    cancel` and `pulumi up`: the stack makes its lease, the platform comes up on one server,
    and the volume is formatted once;
 2. `pulumi preview --expect-no-changes` right after, and a `pulumi up` that changes nothing;
 3. a marker written on the volume through the server;
 4. `scripts/recycle`: server, attachment and commands gone, the rest untouched,
    the volume cleanly unmounted before it was detached, detached before the delete;
 5. `pulumi up`: a new server, same address and volume, nothing formatted, the marker there;
    then recycle refuses a running server that SSH does not reach from its side; the host
    key pinned from the server's console is the guest's own (and the ssh_command takes only
    it); a console showing another key, and then another key at the address (the clean stop,
    then pulumi-command's host_key check) stop the step with nothing detached;
    platformAccess tunnel opens only SSH and `scripts/open` reaches the guest's loopback;
    back to public changes only rules and the stack step, and an SSH session cut right
    after start-stack.sh printed shows no credential in the error;
 6. a changed file under docker/: the volume is mounted and the stack runs afterwards;
    then the stack's lease ends (the server is deleted with it): the next `pulumi up`
    makes a new lease and server, same volume and address, nothing formatted;
 7. a new `reservation`: the server is replaced through the clean stop, never resized;
 8. a larger `volumeSize`: the filesystem grows, the marker intact;
10. faults: the server vanishes out of band, and `scripts/recycle` then `pulumi up`
    recover it; an API call fails with 503 mid-`up` and a second `up` converges with
    nothing duplicated; the SSH session drops during the prepare step and a rerun
    converges with nothing formatted twice;
 10d. a second machine (an empty state): refused while the first machine's server holds the
    volume, nothing changed; after a clean shutdown and delete of that server, it adopts
    everything else and brings the data back on a new server;
 9. `pulumi destroy` stops at the protected volume; the README's "delete everything"
    commands then leave the twin empty (the semester's end, so it runs after the faults);
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
import datetime
import functools
import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.engine.timeline import Timeline, dependencies_of, read_events, timeline
from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.support.benchmarks import add_table
from tests.twin.harness import Twin, wait_for

pytestmark = [pytest.mark.vm, pytest.mark.engine]

NETID = "ab1234"
KEY_PAIR = "id_rsa_chameleon"
MARKER = "experiments of week 3: keep me"
PREPARE = "provisioning-prepare-volume"
START = "provisioning-start-stack"
SERVER_TYPE = "openstack:compute/instance:Instance"
COMMAND_TYPE = "command:remote:Command"
UP_TIMEOUT = 3600
# On the server: the volume is mounted and the compose project start-stack.sh recorded runs.
PLATFORM_RUNS = (
    "mountpoint -q /mnt/block"
    " && project=$(sudo cat /mnt/block/.chi-persist/started-stack/project-name)"
    ' && sudo docker ps --quiet --filter "label=com.docker.compose.project=$project" | grep -q .'
)


def _skip_reason() -> str | None:
    reason = toolchain_skip_reason()
    if reason:
        return reason
    from tests.vm.rehearsal import vm_skip_reason

    return vm_skip_reason()


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

    def up(self, *extra: str, measure: str = "") -> subprocess.CompletedProcess[str]:
        """`pulumi up`; with `measure`, timed, and its steps read from the engine's event log."""
        arguments = ["up", "--yes", "--stack", self.netid, "--non-interactive", *extra]
        if not measure:
            return self.student.pulumi(*arguments, timeout=UP_TIMEOUT)
        log = self.student.root / f"events-{len(self.measured)}.jsonl"
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
        steps = None
        if result.returncode == 0:
            export = self.student.stack_export(self.netid)
            steps = timeline(read_events(log), dependencies_of(export))
        self.measured.append((measure if steps else f"{measure} (failed)", seconds, steps))
        return result

    def script(self, measure: str, *arguments: str) -> subprocess.CompletedProcess[str]:
        """One of the project's scripts, timed."""
        began = time.monotonic()
        result = self.student.script(*arguments, timeout=UP_TIMEOUT)
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
    """prepare-volume.sh's last line: `ready: device=… uuid=… mount_point=… formatted=…`."""
    lines = [line for line in stdout.splitlines() if "ready: device=" in line]
    assert lines, f"prepare-volume.sh printed no ready line:\n{stdout}"
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
        student = StudentMachine.create(
            root, {"OS_CLOUD": "twin", "OS_CLIENT_CONFIG_FILE": str(clouds)}
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
    """new-stack with only a key pair, then a `pulumi up` the twin kills right after Nova
    accepted the server (a laptop's lid closes): `pulumi cancel`, as Pulumi asks, and one
    `pulumi up` bring the platform up on one server, the volume formatted once."""
    made = semester.student.script("new-stack", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    log = semester.student.root / "killed-first-up.log"
    killed = semester.student.start_pulumi(
        "up", "--yes", "--stack", NETID, "--non-interactive", log=log
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
    recycled = semester.script("`scripts/recycle`", "recycle", "--stack", NETID, "--yes")
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
    recycled = semester.student.script("recycle", "--stack", NETID, "--yes", timeout=UP_TIMEOUT)
    assert recycled.returncode == 1, explain(recycled)
    assert "does not answer on SSH from here" in recycled.stderr, explain(recycled)
    assert "Nova says ACTIVE" in recycled.stderr and "--stop-through-nova" in recycled.stderr
    changes = [
        (method, path)
        for method, path in _api_calls(semester.twin, events_before)
        if method in ("POST", "PUT", "DELETE")
    ]
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
# guest's Docker is a stand-in: no MLflow runs there).
LISTENER = (
    "mkdir -p /tmp/listener && echo 'the platform, through the tunnel' > /tmp/listener/index.html"
    " && (cd /tmp/listener && nohup python3 -m http.server 8000 --bind 127.0.0.1"
    " </dev/null >/tmp/listener.log 2>&1 &) && sleep 2"
)


def test_5f_tunnel_access_opens_only_ssh_and_open_reaches_the_guests_loopback(
    semester: Semester,
):
    """platformAccess tunnel: the group opens port 22 alone; the floating IP answers 22 and not
    8000; the stack step published on the server's 127.0.0.1; `scripts/open` tunnels to a
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
    opened = semester.student.script("open", "--stack", NETID, "--json", timeout=300)
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
        stopped = semester.student.script("open", "--stack", NETID, "--stop", timeout=120)
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
    """The stack step is stopped before the prepare step runs again, then started again."""
    _touch_compose_file(semester, "a new line under docker/")
    up = semester.up()
    assert up.returncode == 0, explain(up)
    assert semester.outputs()["server_id"] == semester.learned["server_id"]
    ready = _ready_line(semester.command_stdout(PREPARE))
    assert ready["formatted"] == "no" and ready["uuid"] == semester.learned["uuid"], ready
    running = semester.ssh(f"{PLATFORM_RUNS} && cat /mnt/block/marker.txt")
    assert running.returncode == 0 and running.stdout.strip() == MARKER, explain(running)


def test_lease_end_is_repaired_by_the_next_up_with_the_same_volume_unformatted(
    semester: Semester,
):
    """The lease ends (Blazar deletes the server, then the flavor): one `pulumi up` makes a
    new lease and a new server on the same address with the same volume, formats nothing,
    and says that the clean stop could not run."""
    old_lease = semester.outputs()["lease_id"]
    ended = semester.twin.end_lease(old_lease)
    assert ended["status"] == "TERMINATED", ended
    assert semester.twin.state()["servers"] == []
    up = semester.up()
    assert up.returncode == 0, explain(up)
    assert "PostgreSQL" in up.stdout + up.stderr, explain(up)
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
    """Never a resize in place: the old server is detached, deleted, then a new one made."""
    reservation = _reserve_by_hand(semester.twin, "m1.medium", f"by-hand-{NETID}")
    events_before = len(semester.twin.events())
    changed = semester.student.pulumi(
        "config", "set", "chi-persist:reservation", reservation, "--stack", NETID
    )
    assert changed.returncode == 0, explain(changed)
    up = semester.up()
    assert up.returncode == 0, explain(up)
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
    # A reservation of the student's own: the stack's lease is deleted, after the server.
    assert "lease_id" not in outputs, outputs
    own = [lease for lease in semester.twin.state()["leases"] if lease["name"].endswith(NETID)]
    assert [lease["name"] for lease in own if lease["status"] == "ACTIVE"] == [
        f"by-hand-{NETID}"
    ], own
    semester.learned["server_id"] = outputs["server_id"]


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
    recycled = semester.student.script("recycle", "--stack", NETID, "--yes", timeout=UP_TIMEOUT)
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


# On the server: `blkid`, which prepare-volume.sh runs before it changes anything, waits
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
    made = second.script("new-stack", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    old_server = semester.learned["server_id"]
    events_before = len(semester.twin.events())
    refused = second.pulumi("up", "--yes", "--stack", NETID, "--non-interactive", timeout=900)
    assert refused.returncode != 0, explain(refused)
    said = refused.stdout + refused.stderr
    assert f"openstack server stop {old_server}" in said and "Nothing was created" in said, said
    changes = [
        (method, path)
        for method, path in _api_calls(semester.twin, events_before)
        if method in ("POST", "PUT", "DELETE")
    ]
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
    assert not [
        call
        for call in _api_calls(semester.twin, events_before)
        if call[0] in ("POST", "PUT", "DELETE")
    ], "the first machine's stale state changed the cloud"


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
        made = student.script("new-stack", netid, "--key-pair", f"key-{netid}", *extra)
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
    catalog = {
        entry["type"]: entry["endpoints"][0]["url"] for entry in api.body["token"]["catalog"]
    }
    flavors = api.get(f"{api.compute}/flavors").json()["flavors"]
    (flavor_id,) = [flavor["id"] for flavor in flavors if flavor["name"] == flavor_name]
    end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    made = api.post(
        f"{catalog['reservation']}/leases",
        json={
            "name": name,
            "start_date": "now",
            "end_date": end.strftime("%Y-%m-%d %H:%M"),
            "events": [],
            "before_end_date": None,
            "reservations": [
                {
                    "resource_type": "flavor:instance",
                    "flavor_id": flavor_id,
                    "amount": 1,
                    "affinity": None,
                }
            ],
        },
    )
    assert made.status_code == 201, made.text
    lease_id = made.json()["lease"]["id"]

    def active() -> dict[str, Any] | None:
        lease = api.get(f"{catalog['reservation']}/leases/{lease_id}").json()["lease"]
        return lease if lease["status"] == "ACTIVE" else None

    lease = wait_for(active, timeout=120, what=f"lease {lease_id} ACTIVE", interval=2)
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
