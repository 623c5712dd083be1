"""An online extend reaches the guest as upstream's does, and prepare-volume waits for it.

Cinder sets the new size and `in-use` first; Nova grows the guest's disk only when it
handles the volume-extended event, later (cinder/volume/manager.py
VolumeManager.extend_volume_completion, nova/compute/manager.py ComputeManager.extend_volume).
The provider's update ends when the volume is in-use at the new size, and the program's
prepare step starts then, while the guest may still see the old size. Here one server of
the twin is a qemu guest, Nova's resize comes 25 s after Cinder's completion, and the
program's prepare step (prepare-volume --size-gib) is started the moment the volume is
in-use at its new size: it must wait for the guest to see it, then grow the filesystem
with its data.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.provisioning import REMOTE_SCRIPTS, prepare_volume_command
from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
PREPARE = REPO / "scripts" / "remote" / "prepare-volume"
GUEST_DELAY_SECONDS = 25
SSH_BOUND_SECONDS = 900
MARKER = "written before the volume grew"


def _skip_reason() -> str | None:
    from tests.twin.services.qemu_machines import machines_skip_reason

    return machines_skip_reason()


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from tests.vm.image import CLOUD, ensure_image

    ensure_image(kind=CLOUD)
    started = Twin(tmp_path_factory.mktemp("guest-growth") / "twin", machines="qemu").start()
    yield started
    assert started.stop() == 0, started.log_text()


def ssh(key: Path, address: str, command: str, stdin: str = "", timeout: float = 300):
    return subprocess.run(
        [
            "ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", f"cc@{address}", command,
        ],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def extended_in_use(api: Api, volume_id: str, size: int) -> bool:
    """What the provider waits for after os-extend: the volume in-use (at, here, its size)."""
    volume = api.get(f"{api.volume}/volumes/{volume_id}").json()["volume"]
    return volume["status"] == "in-use" and volume["size"] == size


def test_prepare_volume_waits_for_nova_to_grow_the_guests_disk(twin: Twin, tmp_path: Path) -> None:
    """In-use at 2 GiB while the guest still sees 1 GiB: the prepare step started then waits,
    the guest's disk grows 25 s later, and the filesystem grows with the marker intact."""
    api = twin.api()
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    twin.add_keypair("grow-key", Path(f"{key}.pub").read_text().strip())
    group = steps.security_group(api, "persist-grow", ports=(22,))
    port = steps.port(api, "node-persist-grow", [group["id"]])
    address = steps.floating_ip(api, port["id"])["floating_ip_address"]
    server = steps.boot(api, "node-persist-grow", port["id"], "grow-key")
    wait_for(
        lambda: ssh(key, address, "true", timeout=30).returncode == 0,
        timeout=SSH_BOUND_SECONDS,
        what="sshd on the guest",
        interval=5,
    )
    booted = ssh(key, address, "cloud-init status --wait >/dev/null 2>&1; echo ready", timeout=900)
    assert "ready" in booted.stdout, booted.stderr

    volume = steps.volume(api, "block-persist-grow", 1)
    steps.attach(api, server["id"], volume["id"])
    # Where the program's copy step puts the script, so its own command runs as it is.
    target = f"{REMOTE_SCRIPTS}/prepare-volume"
    copied = ssh(
        key, address, f"mkdir -p {REMOTE_SCRIPTS} && cat > {target}", stdin=PREPARE.read_text()
    )
    assert copied.returncode == 0, copied.stderr

    def prepare(size: int) -> subprocess.CompletedProcess[str]:
        return ssh(key, address, prepare_volume_command(volume["id"], "/mnt/block", size))

    first = prepare(1)
    assert first.returncode == 0, first.stdout + first.stderr
    written = ssh(key, address, f"echo '{MARKER}' | sudo tee /mnt/block/marker.txt")
    assert written.returncode == 0, written.stderr

    twin.configure(guest_extend_seconds=GUEST_DELAY_SECONDS)
    action = f"{api.volume}/volumes/{volume['id']}/action"
    headers = {"OpenStack-API-Version": "volume 3.42"}
    extended = api.post(action, json={"os-extend": {"new_size": 2}}, headers=headers)
    assert extended.status_code == 202, extended.text
    wait_for(lambda: extended_in_use(api, volume["id"], 2), what="in-use at 2 GiB")
    device = f"/dev/disk/by-id/virtio-{volume['id'][:20]}"
    seen = ssh(key, address, f"sudo blockdev --getsize64 {device}")
    assert seen.stdout.strip() == str(1024**3), f"the guest grew too early: {seen.stdout}"

    started = datetime.datetime.now(datetime.timezone.utc)
    began = time.monotonic()
    grown = prepare(2)
    waited = time.monotonic() - began
    output = grown.stdout + grown.stderr
    assert grown.returncode == 0, output
    assert re.search(r"size: \S+ is 2048 MiB \(the volume is 2 GiB\)", output), output
    assert re.search(r"volume grew from \d+ MiB to \d+ MiB: filesystem resized", output), output
    resized = [
        event
        for event in twin.events()
        if event["kind"] == "compute" and event.get("action") == "extend_volume"
    ]
    assert [event["outcome"] for event in resized] == ["ok"], resized
    resized_at = datetime.datetime.strptime(resized[0]["time"], "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=datetime.timezone.utc
    )
    assert resized_at > started, "the guest grew before the prepare step began: nothing waited"
    assert waited > 5, f"prepare-volume returned after {waited:.1f} s: it did not wait"
    marker = ssh(key, address, "cat /mnt/block/marker.txt; df -B1M --output=size /mnt/block")
    assert MARKER in marker.stdout, marker.stdout + marker.stderr
    assert int(marker.stdout.split()[-1]) > 1500, marker.stdout
