"""A student's semester through the real Pulumi engine, on a stand-in KVM@TACC of real VMs.

The real CLI (tests/engine/toolchain) runs the program with the `openstack` and
`command` plugins against `tests/twin/serve`; every server is a qemu guest that
runs the program's own first-boot user data, every volume attach hot-plugs a
disk, every floating IP is a loopback address that reaches the guest. The steps
run in order on one twin and one student, as the semester does:

 1. new-stack, then `pulumi up`: the platform comes up and the volume is formatted once;
 2. `pulumi preview --expect-no-changes` right after;
 3. a marker written on the volume through the server;
 4. `scripts/recycle`: server, attachment and commands gone, the rest untouched,
    the volume cleanly unmounted before it was detached, detached before the delete;
 5. `pulumi up`: a new server, same address and volume, nothing formatted, the marker there.

Each step's test names what it proves; a failure says which step broke and shows the
CLI's output. The steps share state, so a failed step makes the later ones fail too
(pytest -x stops at the first).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.twin.harness import Twin

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
    learned: dict[str, Any] = field(default_factory=dict)

    def up(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.student.pulumi(
            "up", "--yes", "--stack", NETID, "--non-interactive", *extra, timeout=UP_TIMEOUT
        )

    def outputs(self) -> dict[str, Any]:
        return self.student.outputs(NETID)

    def resources(self) -> list[dict[str, Any]]:
        export = self.student.stack_export(NETID)
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
    """(method, path) of each OpenStack API call the twin answered since event `since`."""
    return [
        (event.get("method", ""), event.get("path", ""))
        for event in twin.events(since)
        if event.get("kind") == "api"
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
def semester(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Semester]:
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
        yield Semester(twin=twin, student=student, key=key)
    finally:
        status = twin.stop()
        assert status == 0, f"the twin did not stop cleanly ({status}):\n{twin.log_text()}"


def test_1_first_up_brings_the_platform_up_and_formats_the_volume_once(semester: Semester):
    """new-stack with only a key pair, then one `pulumi up`: the platform runs on the twin."""
    made = semester.student.script("new-stack", NETID, "--key-pair", KEY_PAIR)
    assert made.returncode == 0, explain(made)
    up = semester.up()
    assert up.returncode == 0, explain(up)
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
    semester.learned.update(
        address=address,
        server_id=outputs["server_id"],
        volume_id=outputs["volume_id"],
        uuid=ready["uuid"],
        port_ids=sorted(port["id"] for port in state["ports"]),
        group_ids=sorted(group["id"] for group in state["security_groups"]),
    )


def test_2_preview_right_after_up_expects_no_changes(semester: Semester):
    """The program is deterministic under the real engine: nothing to do right after an up."""
    preview = semester.student.pulumi(
        "preview", "--expect-no-changes", "--stack", NETID, "--non-interactive", timeout=900
    )
    assert preview.returncode == 0, explain(preview)


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
    recycled = semester.student.script("recycle", "--stack", NETID, "--yes", timeout=UP_TIMEOUT)
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
    up = semester.up()
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
