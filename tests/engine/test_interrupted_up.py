"""A `pulumi up` or a recycle killed mid-run, through the real engine on the twin (no VMs).

For each cloud call of a first `pulumi up` (the lease, the security group and a rule, the
port and its tags, the floating IP, the volume, the server and the attachment), the twin
kills every process of the CLI's session right after it answered that call with success: the
cloud holds what the call made and the state holds a pending create at most. Then, as a
student may: `pulumi cancel` (Pulumi demands it for the file backend's stale lock) and one
`pulumi up`. It must converge: one of each resource carrying the stack's owner key, the
volume attached to the server, nothing made twice. The same for a recycle killed right after
the detach and right after the server's delete: the state then holds what the cloud lost.
The provisioning steps need a guest, so these `up`s leave them out (`--exclude`); the
semester (test_semester.py) proves a killed `up` with a guest, and nothing formatted twice.
"""

from __future__ import annotations

import concurrent.futures
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine.workspace import StudentMachine, explain, toolchain_skip_reason
from tests.twin.harness import Twin

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(bool(toolchain_skip_reason()), reason=toolchain_skip_reason() or ""),
]

KEY_PAIR = "id_rsa_chameleon"
OWNER_KEY = "chi-persist-stack"
# The provisioning steps run over SSH on a guest; a twin without machines has none.
WITHOUT_GUEST = ["--exclude", "**Provisioning**", "--exclude-dependents"]
UP_SECONDS = 900


@dataclass(frozen=True)
class KillPoint:
    what: str
    method: str
    path: str
    """A regular expression over the whole path, as the twin's faults take it."""
    says: str = "adopting"
    """What the converging `pulumi up` says it does about what the killed one made."""
    during: str = "up"
    """"up": a first `pulumi up` is killed; "recycle": ./chi-persist recycle, after one `up`."""
    unanswered: bool = False
    """Killed before the cloud's answer is written: for a call whose answer the provider
    finishes with at once (on the twin, a server's delete is done in 0.05 s), so the engine cannot
    record it first."""


KILL_POINTS = [
    KillPoint("lease", "POST", r"/v1/leases"),
    KillPoint("security group", "POST", r"/network/v2\.0/security-groups"),
    KillPoint("security group rule", "POST", r"/network/v2\.0/security-group-rules"),
    KillPoint("port", "POST", r"/network/v2\.0/ports"),
    KillPoint("port tags", "PUT", r"/network/v2\.0/ports/[^/]+/tags"),
    KillPoint("floating IP", "POST", r"/network/v2\.0/floatingips"),
    KillPoint("volume", "POST", r"/volume/v3/[^/]+/volumes"),
    # A server cannot be imported as it is (components/adoption.py, SERVER); this one holds
    # no data yet, so it is deleted and made again.
    KillPoint("server", "POST", r"/compute/v2\.1/servers", "deletes it and makes a new server"),
    KillPoint("attachment", "POST", r"/compute/v2\.1/servers/[^/]+/os-volume_attachments"),
    # A recycle killed after the detach, then after the server's delete: the state still holds
    # what the cloud no longer has, and its replacement trigger makes it again.
    KillPoint(
        "recycle: detach",
        "DELETE",
        r"/compute/v2\.1/servers/[^/]+/os-volume_attachments/.+",
        "no longer in the cloud",
        "recycle",
    ),
    KillPoint(
        "recycle: server delete",
        "DELETE",
        r"/compute/v2\.1/servers/[^/]+",
        "no longer in the cloud",
        "recycle",
        unanswered=True,
    ),
]


@dataclass
class Student:
    twin: Twin
    machine: StudentMachine
    netid: str

    @property
    def owner(self) -> str:
        return f"{self.netid}/{self.netid}"

    def pulumi(self, *arguments: str, timeout: float = UP_SECONDS) -> subprocess.CompletedProcess:
        return self.machine.pulumi(*arguments, "--stack", self.netid, timeout=timeout)

    def up(self, *extra: str) -> subprocess.CompletedProcess:
        return self.pulumi("up", "--yes", "--non-interactive", *WITHOUT_GUEST, *extra)


def make_student(root: Path, netid: str) -> Iterator[Student]:
    twin = Twin(root / "twin" / "state").start()
    try:
        machine = StudentMachine.create(
            root,
            {
                "OS_CLOUD": "twin",
                "OS_CLIENT_CONFIG_FILE": str(twin.state_dir / "clouds.yaml"),
                "NO_PROXY": "127.0.0.1,localhost",
            },
        )
        key = machine.home / ".ssh" / "id_rsa_chameleon"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", netid, "-f", str(key)],
            check=True,
        )
        twin.add_keypair(KEY_PAIR, Path(f"{key}.pub").read_text().strip())
        made = machine.command("init", netid, "--key-pair", KEY_PAIR)
        assert made.returncode == 0, explain(made)
        yield Student(twin, machine, netid)
    finally:
        assert twin.stop() == 0, twin.log_text()


def killed_up(student: Student, point: KillPoint) -> str:
    """A first `pulumi up` (or, after one, a recycle) that the twin kills right after
    `point`'s call succeeded."""
    log = student.machine.root / "killed-up.log"
    if point.during == "recycle":
        first = student.up()
        assert first.returncode == 0, explain(first)
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [str(student.machine.project / "chi-persist"), "recycle",
                 "--stack", student.netid, "--yes"],
                cwd=student.machine.project, env=student.machine.env,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
    else:
        process = student.machine.start_pulumi(
            "up", "--yes", "--non-interactive", "--stack", student.netid, *WITHOUT_GUEST, log=log
        )
    student.twin.kill_after(point.method, point.path, process.pid, unanswered=point.unanswered)
    try:
        status = process.wait(timeout=UP_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text(errors="replace")
    assert status == -9, f"the `up` was not killed at the {point.what} ({status}):\n{output}"
    return output


def owned(record: dict[str, Any], owner: str) -> bool:
    """The record carries the owner key: Nova or Cinder metadata, or a Neutron tag."""
    metadata = record.get("metadata") or {}
    return metadata.get(OWNER_KEY) == owner or f"{OWNER_KEY}={owner}" in (record.get("tags") or [])


def assert_one_of_each(student: Student) -> dict[str, Any]:
    """Exactly one of every resource, each with the owner key; the volume attached."""
    state = student.twin.state()
    netid, owner = student.netid, student.owner
    servers = [s for s in state["servers"] if s["name"] == f"node-persist-{netid}"]
    ports = [p for p in state["ports"] if p["name"] == f"node-persist-{netid}"]
    groups = [g for g in state["security_groups"] if g["name"] == f"persist-{netid}"]
    volumes = [v for v in state["volumes"] if v["name"] == f"block-persist-{netid}"]
    leases = [lease for lease in state["leases"] if lease["name"] == f"lease-persist-{netid}"]
    counts = {
        "server": len(servers), "port": len(ports), "security group": len(groups),
        "volume": len(volumes), "floating IP": len(state["floatingips"]), "lease": len(leases),
    }  # fmt: skip
    assert counts == dict.fromkeys(counts, 1), counts
    carriers = {
        "server": servers[0], "port": ports[0], "group": groups[0], "volume": volumes[0],
        "floating IP": state["floatingips"][0],
    }  # fmt: skip
    for kind, record in carriers.items():
        assert owned(record, owner), f"the {kind} carries no owner key: {record}"
    rules = [rule for rule in groups[0]["rules"] if rule["direction"] == "ingress"]
    assert sorted(rule["port_range_min"] for rule in rules) == [22, 8000, 8888, 9000, 9001]
    attachments = volumes[0]["attachments"]
    assert [a["server_id"] for a in attachments] == [servers[0]["id"]], attachments
    assert state["floatingips"][0]["port_id"] == ports[0]["id"]
    assert servers[0]["flavor"]["id"] == leases[0]["reservations"][0]["id"]
    return state


@dataclass
class Outcome:
    """What one kill point's runs gave: each command's result, and the twin's state after."""

    locked: subprocess.CompletedProcess[str]
    cancelled: subprocess.CompletedProcess[str]
    converged: subprocess.CompletedProcess[str]
    unchanged: subprocess.CompletedProcess[str]
    cloud: dict[str, Any] | None
    pending: list[dict[str, Any]]
    repaired: subprocess.CompletedProcess[str]
    pending_after_repair: list[dict[str, Any]]
    after_repair: subprocess.CompletedProcess[str]
    failure: str = ""


def sweep_point(root: Path, point: KillPoint) -> Outcome:
    """Kill at `point`; then `pulumi cancel` if Pulumi asks, one `pulumi up`, and a preview."""
    for student in make_student(root, "ab1234"):
        killed_up(student, point)
        locked = student.up()
        cancelled = student.pulumi("cancel", "--yes", "--non-interactive")
        converged = student.up()
        unchanged = student.pulumi(
            "preview", "--expect-no-changes", "--non-interactive", *WITHOUT_GUEST
        )
        export = student.machine.stack_export(student.netid)["deployment"]
        failure = ""
        try:
            assert_one_of_each(student)
        except AssertionError as error:
            failure = str(error)
        cloud = student.twin.state()
        repaired = student.machine.command("repair", "--stack", student.netid)
        repaired_export = student.machine.stack_export(student.netid)["deployment"]
        after_repair = student.pulumi(
            "preview", "--expect-no-changes", "--non-interactive", *WITHOUT_GUEST
        )
        return Outcome(
            locked, cancelled, converged, unchanged, cloud,
            export.get("pending_operations") or [], repaired,
            repaired_export.get("pending_operations") or [], after_repair, failure,
        )  # fmt: skip
    raise AssertionError("no student")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every kill point, three at a time: each on a twin and a student machine of its own."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            point.what: pool.submit(
                sweep_point, tmp_path_factory.mktemp(re.sub(r"\W", "-", point.what)), point
            )
            for point in KILL_POINTS
        }
        return {what: future.result() for what, future in futures.items()}


@pytest.mark.parametrize("point", KILL_POINTS, ids=[point.what for point in KILL_POINTS])
def test_a_killed_first_up_is_repaired_by_cancel_and_up(sweep: dict[str, Outcome], point):
    """Killed right after the cloud accepted one call: `pulumi cancel` (as Pulumi asks) and
    one `pulumi up` give one of each resource, what that call made adopted (a server, which
    cannot be imported as it is and holds no data yet, is deleted and made again)."""
    outcome = sweep[point.what]
    locked = outcome.locked
    assert locked.returncode != 0 and "pulumi cancel" in locked.stderr + locked.stdout, explain(
        locked
    )
    assert outcome.cancelled.returncode == 0, explain(outcome.cancelled)
    converged = outcome.converged
    assert converged.returncode == 0, explain(converged)
    assert not outcome.failure, outcome.failure
    assert point.says in converged.stdout + converged.stderr, explain(converged)
    if outcome.pending:
        assert "./chi-persist repair --stack ab1234" in converged.stdout + converged.stderr
    assert outcome.unchanged.returncode == 0, explain(outcome.unchanged)


@pytest.mark.parametrize("point", KILL_POINTS, ids=[point.what for point in KILL_POINTS])
def test_repair_clears_what_pulumi_still_records_and_changes_nothing(sweep, point):
    """After the converging `up`, ./chi-persist repair leaves no pending create, asks nothing, and
    the stack still has nothing to change."""
    outcome = sweep[point.what]
    assert outcome.repaired.returncode == 0, explain(outcome.repaired)
    assert outcome.pending_after_repair == []
    assert outcome.after_repair.returncode == 0, explain(outcome.after_repair)


def test_another_stacks_resources_are_left_untouched_and_the_refusal_says_so(tmp_path: Path):
    """Two stacks of one netid (ab1234 and spring): the second would name its resources as
    the first does, which carry the first's key. Its `pulumi up` refuses, naming that stack
    and the way out, and changes nothing in the cloud."""
    for first in make_student(tmp_path / "first", "ab1234"):
        made = first.up()
        assert made.returncode == 0, explain(made)
        second = StudentMachine.create(tmp_path / "second", {
            key: first.machine.env[key]
            for key in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE", "NO_PROXY")
        })  # fmt: skip
        key = first.machine.home / ".ssh" / "id_rsa_chameleon"
        (second.home / ".ssh" / "id_rsa_chameleon").write_bytes(key.read_bytes())
        (second.home / ".ssh" / "id_rsa_chameleon").chmod(0o600)
        created = second.command("init", "spring", "--key-pair", KEY_PAIR)
        assert created.returncode == 0, explain(created)
        netid = second.pulumi("config", "set", "chi-persist:netid", "ab1234", "--stack", "spring")
        assert netid.returncode == 0, explain(netid)
        before = len(first.twin.events())
        refused = second.pulumi(
            "up", "--yes", "--non-interactive", "--stack", "spring", *WITHOUT_GUEST,
            timeout=UP_SECONDS,
        )  # fmt: skip
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, explain(refused)
        for what in ("server", "port", "security group", "volume"):
            refusal = next((line for line in said.splitlines() if f"- {what}" in line
                            or f"the {what} block-persist" in line), "")  # fmt: skip
            assert "ab1234/ab1234" in refusal and "pulumi stack select ab1234" in refusal, (
                what, said,
            )  # fmt: skip
        assert "Nothing was created" in said, said
        changes = [
            (event["method"], event["path"])
            for event in first.twin.events(before)
            if event.get("kind") == "api"
            and event.get("method") != "GET"
            and event.get("path") != "/v3/auth/tokens"
        ]
        assert changes == [], f"the refused stack changed the cloud: {changes}"
        again = first.pulumi("preview", "--expect-no-changes", "--non-interactive", *WITHOUT_GUEST)
        assert again.returncode == 0, explain(again)


def test_repair_before_up_clears_the_record_and_up_still_converges(tmp_path: Path):
    """`./chi-persist repair` right after `pulumi cancel`, before any `up`: the record of the
    interrupted create is cleared with no question, and one `pulumi up` then converges."""
    point = next(point for point in KILL_POINTS if point.what == "port")
    for student in make_student(tmp_path, "ab1234"):
        killed_up(student, point)
        cancelled = student.pulumi("cancel", "--yes", "--non-interactive")
        assert cancelled.returncode == 0, explain(cancelled)
        repaired = student.machine.command("repair", "--stack", student.netid)
        assert repaired.returncode == 0, explain(repaired)
        assert "node-port: not in the state: record cleared" in repaired.stdout, repaired.stdout
        export = student.machine.stack_export(student.netid)["deployment"]
        assert not export.get("pending_operations")
        converged = student.up()
        assert converged.returncode == 0, explain(converged)
        assert "adopting port" in converged.stdout + converged.stderr, explain(converged)
        assert "Attempting to deploy" not in converged.stdout + converged.stderr
        assert_one_of_each(student)
