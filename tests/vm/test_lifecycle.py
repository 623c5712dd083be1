"""The student's lifecycle, rehearsed in real virtual machines with the program's own commands.

A blank volume goes to server 1, which the program's provisioning prepares and
starts; data is written; the server is recycled as `pulumi destroy --target`
would (delete commands, power off, overlay discarded); server 2 gets the same
volume and must find the data; then server 2 boots without the volume and must
still answer SSH and refuse to start the stack.

The semester on the stand-in KVM@TACC (tests/engine/test_semester.py) proves the
lifecycle with the real engine: recycles, a changed docker/ file in the engine's own
order, a new flavor, growth, faults. This rehearsal keeps what the semester does not
cover, because the stand-in's servers never have them: a second volume on the same
server that takes the disk name a fixed /dev/vdb would pick, and a boot without the
volume.

Each safety rule of the design has an assertion here that fails when the rule
is broken: the device lookup by serial (the volume is never the disk a fixed
name would pick, and the other disk is never written), the blank-only format
rule (same filesystem UUID, same bytes, nothing formatted on server 2), the
fstab `nofail` (the boot without the volume reaches SSH; emergency mode fails
at once), the refusal to start without the volume, and the delete step's unmount
(checked right after it ran).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import uuid
from pathlib import Path

import pytest

from components.sealed_credentials import SEALED_KEY, credentials_from_stdout
from tests.support.program import (
    MOCK_SEAL_KEY,
    CommandStep,
    CopyStep,
    evaluate_program,
)
from tests.vm.failures import RehearsalError
from tests.vm.image import cache_dir, ensure_image, image_skip_reason, recipe_digest
from tests.vm.rehearsal import (
    Benchmark,
    CommandResult,
    Disk,
    Servers,
    VirtualMachine,
    make_sparse_volume,
    vm_skip_reason,
)

pytestmark = pytest.mark.vm

STACK = "rehearsal"
FLOATING_IP = "129.114.27.10"
MOUNT_POINT = "/mnt/block"
VOLUME_BYTES = 2 * 1024**3
MARKER_PATH = f"{MOUNT_POINT}/jupyter_work/rehearsal-marker.bin"
CREDENTIALS_FILE = f"{MOUNT_POINT}/.chi-persist/credentials.env"
PROJECT = "chi-persist"
# start-stack.sh: "refused: the mount point is not a volume prepared by prepare-volume".
REFUSED_EXIT_CODE = 3
STARTED_RECORD = f"{MOUNT_POINT}/.chi-persist/started-stack"
# release-volume.sh stops the stack with the compose file start-stack.sh recorded.
CLEAN_STOP = [
    "compose", "--project-name", PROJECT, "--file", f"{STARTED_RECORD}/1-docker-compose.yaml",
    "--env-file", CREDENTIALS_FILE, "down", "--remove-orphans", "--timeout", "120",
]  # fmt: skip
MARKER_BYTES = 1024 * 1024
CREDENTIAL_NAMES = {
    "postgres_user",
    "postgres_password",
    "minio_root_user",
    "minio_root_password",
    "mlflow_user",
    "mlflow_password",
    "jupyter_token",
}


def provision(
    vm: VirtualMachine, steps: list[CopyStep | CommandStep], server: str, benchmark: Benchmark
) -> dict[str, CommandResult]:
    """Run the program's steps in order, exactly as given; the result of each command by name."""
    results: dict[str, CommandResult] = {}
    for step in steps:
        phase = f"{server}: {step.name}"
        with benchmark.phase(phase):
            if isinstance(step, CopyStep):
                vm.copy_into(step.source, step.remote_path, phase)
            elif step.create is not None:
                stdin = step.stdin.encode() if step.stdin is not None else None
                results[step.name] = vm.run(step.create, phase, stdin=stdin)
    return results


def release(vm: VirtualMachine, steps: list[CopyStep | CommandStep], phase: str) -> None:
    """Run the delete commands in reverse order, as a destroy of the server's dependents does."""
    for step in reversed(steps):
        if isinstance(step, CommandStep) and step.delete:
            vm.run(step.delete, phase)


def step_named(steps: list[CopyStep | CommandStep], suffix: str) -> CommandStep:
    found = [s for s in steps if isinstance(s, CommandStep) and s.name.endswith(suffix)]
    assert len(found) == 1, f"expected one command step named *{suffix}, found {found}"
    return found[0]


def ready_fields(result: CommandResult) -> dict[str, str]:
    """The key=value fields of prepare-volume's closing 'ready:' line."""
    lines = [line for line in result.output.splitlines() if "prepare-volume: ready:" in line]
    assert lines, f"prepare-volume printed no 'ready:' line:\n{result.output}"
    fields = lines[-1].split("ready:", 1)[1].split()
    return dict(field.split("=", 1) for field in fields)


def remote_text(vm: VirtualMachine, command: str, phase: str) -> str:
    return vm.run(command, phase).stdout.strip()


def is_mounted(vm: VirtualMachine, path: str) -> bool:
    return vm.ssh(f"mountpoint -q {shlex.quote(path)}").returncode == 0


def mounted_filesystem(vm: VirtualMachine, phase: str) -> tuple[str, str, str]:
    """(device, whole disk, filesystem UUID) of what is mounted at the mount point."""
    mp = shlex.quote(MOUNT_POINT)
    device = remote_text(vm, f"findmnt -n -o SOURCE --mountpoint {mp}", phase)
    disk = remote_text(vm, f"lsblk -n -d -o PKNAME {shlex.quote(device)}", phase) or device
    filesystem_uuid = remote_text(
        vm, f"sudo blkid -p -s UUID -o value {shlex.quote(device)}", phase
    )
    return device, f"/dev/{disk.removeprefix('/dev/')}", filesystem_uuid


def disk_with_serial(vm: VirtualMachine, serial: str, phase: str) -> str:
    return remote_text(vm, f"readlink -f /dev/disk/by-id/virtio-{shlex.quote(serial)}", phase)


def marker_digest(vm: VirtualMachine, phase: str) -> str:
    return remote_text(vm, f"sudo sha256sum {shlex.quote(MARKER_PATH)}", phase).split()[0]


def docker_calls(vm: VirtualMachine, phase: str) -> list[list[str]]:
    """What the stack scripts asked of the stand-in docker so far, as argument lists."""
    log = vm.run("cat /var/log/docker-standin.log", phase).stdout
    return [shlex.split(line) for line in log.splitlines()]


def compose_calls(calls: list[list[str]], action: str) -> list[list[str]]:
    """The `docker compose ... <action>` calls."""
    return [call for call in calls if call[:1] == ["compose"] and action in call]


def printed_credentials(result: CommandResult) -> dict[str, str]:
    """The one JSON line start-stack.sh prints on stdout, opened with the program's key."""
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got:\n{result.stdout}"
    assert list(json.loads(lines[0])) == [SEALED_KEY], lines[0]
    credentials = credentials_from_stdout(lines[0], MOCK_SEAL_KEY)
    assert set(credentials) == CREDENTIAL_NAMES, credentials
    return credentials


def never_written(disk: Disk) -> bool:
    """A sparse file that nothing wrote to still has no block allocated."""
    return os.stat(disk.path).st_blocks == 0


def test_volume_data_survives_recycling_and_a_boot_without_the_volume(
    tmp_path: Path, benchmark_summary
) -> None:
    """Blank volume prepared once beside another disk, data intact on a new server, safe boot
    and refusal without it."""
    for reason in (image_skip_reason(), vm_skip_reason()):
        if reason:
            pytest.skip(reason)

    benchmark = Benchmark()
    servers: Servers | None = None
    failure = ""
    try:
        with benchmark.phase("image: build or reuse") as record:
            image, built = ensure_image()
            record.note = f"{'built' if built else 'cached'} {image.directory}"
        benchmark.facts["image"] = {"digest": recipe_digest(), "built_now": built}

        volume_id = str(uuid.uuid4())
        volume = Disk(make_sparse_volume(tmp_path / "volume.img", VOLUME_BYTES), volume_id[:20])
        # Another volume on the same servers: it takes the disk name a fixed /dev/vdb would
        # pick on server 1, so only the lookup by serial finds the right disk.
        other_id = str(uuid.uuid4())
        other = Disk(make_sparse_volume(tmp_path / "other.img", VOLUME_BYTES), other_id[:20])

        with benchmark.phase("evaluate the program under mocks"):
            config = {
                "keyPair": "rehearsal",
                "sshPrivateKeyPath": str(image.private_key),
                "mountPoint": MOUNT_POINT,
            }
            evaluation = evaluate_program(
                STACK, config, volume_id=volume_id, floating_ip=FLOATING_IP
            )
            steps = evaluation.provisioning_steps()
            prepare = step_named(steps, "prepare-volume")
            start = step_named(steps, "start-stack")
            assert any(isinstance(s, CommandStep) and s.delete for s in steps), steps

        servers = Servers(image, tmp_path / "logs", benchmark)

        # --- server 1: blank volume -------------------------------------------
        overlay_1 = tmp_path / "server-1.qcow2"
        with servers.boot("server 1", overlay_1, [other, volume], fresh_overlay=True) as vm:
            results = provision(vm, steps, "server 1", benchmark)
            with benchmark.phase("server 1: check the prepared volume"):
                ready = ready_fields(results[prepare.name])
                assert ready["formatted"] == "yes", (
                    f"the blank volume was not formatted:\n{results[prepare.name].output}"
                )
                device, disk, uuid_1 = mounted_filesystem(vm, "server 1: check")
                assert disk == disk_with_serial(vm, volume.serial, "server 1: check"), (
                    f"{device} is not on the disk whose serial is the volume's"
                )
                assert disk != "/dev/vdb", "the volume must not sit where a fixed name points"
                assert ready["uuid"] == uuid_1
                credentials_1 = printed_credentials(results[start.name])
                ups = compose_calls(docker_calls(vm, "server 1: check"), "up")
                assert len(ups) == 1, ups
                assert ups[0][1:3] == ["--project-name", PROJECT], ups[0]
                assert CREDENTIALS_FILE in ups[0], ups[0]

            with benchmark.phase("server 1: write marker data"):
                marker = os.urandom(MARKER_BYTES)
                vm.run(
                    f"sudo tee {shlex.quote(MARKER_PATH)} >/dev/null && sync",
                    "server 1: write marker data",
                    stdin=marker,
                )
                assert (
                    marker_digest(vm, "server 1: write marker data")
                    == hashlib.sha256(marker).hexdigest()
                )

            with benchmark.phase("recycle: delete commands"):
                release(vm, steps, "recycle: delete commands")
                assert not is_mounted(vm, MOUNT_POINT), (
                    f"{MOUNT_POINT} is still mounted after the delete commands: "
                    "the volume would be detached from a mounted filesystem"
                )
                downs = compose_calls(docker_calls(vm, "recycle: delete commands"), "down")
                assert downs == [CLEAN_STOP], "the platform was not stopped before the unmount"
            with benchmark.phase("recycle: power off"):
                vm.power_off("recycle: power off")
        overlay_1.unlink()
        assert never_written(other), "server 1 wrote to the other volume"

        # --- server 2: the same volume, now holding data -----------------------
        overlay_2 = tmp_path / "server-2.qcow2"
        with servers.boot("server 2", overlay_2, [volume, other], fresh_overlay=True) as vm:
            results = provision(vm, steps, "server 2", benchmark)
            with benchmark.phase("server 2: check the data"):
                output = results[prepare.name].output
                ready = ready_fields(results[prepare.name])
                assert ready["formatted"] == "no", f"server 2 formatted the volume again:\n{output}"
                assert "mkfs" not in output and "formatting" not in output, (
                    f"server 2 formatted the volume again:\n{output}"
                )
                device, disk, uuid_2 = mounted_filesystem(vm, "server 2: check")
                assert disk == disk_with_serial(vm, volume.serial, "server 2: check")
                assert uuid_2 == uuid_1, "the volume's filesystem was made anew"
                assert marker_digest(vm, "server 2: check") == hashlib.sha256(marker).hexdigest()
                assert printed_credentials(results[start.name]) == credentials_1, (
                    "the platform's credentials changed: the database would not open"
                )

            with benchmark.phase("server 2: power off"):
                vm.power_off("server 2: power off")
        assert never_written(other), "server 2 wrote to the other volume"

        # --- server 2 again, booted without its volume -------------------------
        phase = "server 2 without volume: start is refused"
        with (
            servers.boot("server 2 without volume", overlay_2, [other], fresh_overlay=False) as vm,
            benchmark.phase(phase),
        ):
            assert not is_mounted(vm, MOUNT_POINT)
            ups_before = compose_calls(docker_calls(vm, phase), "up")
            refused = vm.ssh(start.create)
            output = (refused.stdout + refused.stderr).decode(errors="replace")
            assert refused.returncode != 0, f"the stack started without its volume:\n{output}"
            # The deliberate refusal (start-stack.sh's exit 3), not some later accident.
            errors = [line for line in output.splitlines() if "start-stack: error:" in line]
            assert refused.returncode == REFUSED_EXIT_CODE, (
                f"start-stack.sh failed without refusing the missing volume:\n{output}"
            )
            assert any("not mounted" in line and MOUNT_POINT in line for line in errors), output
            assert compose_calls(docker_calls(vm, phase), "up") == ups_before
            left_on_root_disk = remote_text(
                vm, f"sudo find {shlex.quote(MOUNT_POINT)} -mindepth 1", phase
            )
            assert left_on_root_disk == "", f"written to the root disk:\n{left_on_root_disk}"
        overlay_2.unlink()
        assert never_written(other), "the boot without the volume wrote to the other volume"
        volume.path.unlink()
        other.path.unlink()
    except RehearsalError as error:
        failure = f"{error}\n(all logs: {tmp_path / 'logs'})"
    finally:
        if servers is not None:
            servers.stop_all()
            assert servers.leftover_processes() == []
        benchmark.save(cache_dir() / "benchmark.json")
        benchmark_summary(benchmark.table())
    if failure:
        pytest.fail(failure, pytrace=False)
