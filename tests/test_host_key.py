"""A server's host key from its own console: cloud-init's block read, waited for with a bound,
and checked at the address (scripts/host-key, components/host_keys.py).

The reading is table-driven on console texts as cloud-init writes them (through `logger
--stderr -t ec2`, so with a syslog prefix); the tool runs against the stand-in's Nova
(`--machines null`, whose servers get generated keys and the console block) and OpenSSH's
sshd on 127.0.0.1 as the machine at the address.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.host_keys import ED25519, keys_in_console, parse_key
from components.project_files import PROJECT_ROOT
from tests.support.loopback_sshd import LoopbackSshd, loopback_sshd, sshd_skip_reason
from tests.support.tools import import_tool
from tests.twin import steps
from tests.twin.harness import NO_QUOTAS, Api, Twin

host_key = import_tool("host_key")

SCRIPT = PROJECT_ROOT / "scripts" / "host-key"
ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGhvc3Qta2V5LW9mLXRoZS1tb2NrZWQtc2VydmVyISEh"
EC = (
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFnQ6ckCK4O9x2"
    "3Y7fVqKqZ8wK4uY9d2L9e8r4lQpB6n9zR2yq2v3QmXcJ1y0G5e6s2mH0nLQ5u7cE4bQ3k1aQ0="
)
PREFIX = "<14>Dec  4 16:23:52 ec2: "
BLOCK = [
    PREFIX + "#############################################################",
    PREFIX + "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
    PREFIX + "256 SHA256:aaaa root@node (ED25519)",
    PREFIX + "-----END SSH HOST KEY FINGERPRINTS-----",
    PREFIX + "-----BEGIN SSH HOST KEY KEYS-----",
    PREFIX + f"{EC} root@node",
    PREFIX + f"{ED} root@node",
    PREFIX + "-----END SSH HOST KEY KEYS-----",
]
FINISHED = "[   40.1] cloud-init[700]: Cloud-init v. 24.4 finished at Thu, 04 Dec 2026 16:23:52"


@pytest.mark.parametrize(
    ("console", "ed25519", "block", "finished"),
    [
        pytest.param("\n".join(["[ 0.0] Linux", *BLOCK, FINISHED]), ED, True, True, id="whole"),
        pytest.param("\r\n".join(BLOCK), ED, True, False, id="crlf-no-final-line"),
        pytest.param(
            "\n".join([line.removeprefix(PREFIX) for line in BLOCK]), ED, True, False,
            id="without-syslog-prefix",
        ),
        pytest.param("\n".join(BLOCK[:6]), None, False, False, id="block-not-ended-yet"),
        pytest.param("[ 0.0] Linux\nlogin:", None, False, False, id="boot-still-running"),
        pytest.param(FINISHED, None, False, True, id="finished-without-block"),
        pytest.param(
            "\n".join([*BLOCK, *BLOCK[:5], PREFIX + f"{EC} root@node", BLOCK[-1]]),
            None, True, False, id="last-block-has-no-ed25519",
        ),
        pytest.param(
            "\n".join(BLOCK).replace("AAAAIGhvc3Qt", "AAAAIGhvc3Rt"), ED.replace(
                "AAAAIGhvc3Qt", "AAAAIGhvc3Rt"), True, False, id="another-key",
        ),
    ],
)  # fmt: skip
def test_the_console_block_is_read_as_cloud_init_writes_it(
    console: str, ed25519: str | None, block: bool, finished: bool
) -> None:
    """The last complete block's keys; its ed25519 key; whether cloud-init has ended."""
    found = keys_in_console(console)
    assert (found.ed25519.line if found.ed25519 else None) == ed25519
    assert found.block_found is block
    assert found.cloud_init_finished is finished


@pytest.mark.parametrize(
    "line",
    [
        "ssh-ed25519 AAAA",  # not a key blob
        "ssh-ed25519 " + EC.split()[1],  # the blob of another type
        "ssh-ed25519",
        "256 SHA256:aaaa root@node (ED25519)",
    ],
)
def test_a_line_that_is_not_a_key_of_its_type_is_ignored(line: str) -> None:
    assert parse_key(line) is None


def test_a_key_line_gives_its_fingerprint_as_ssh_keygen_does(tmp_path: Path) -> None:
    """SHA256:... without padding, the form OpenSSH's messages print."""
    path = tmp_path / "key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    key = parse_key(Path(f"{path}.pub").read_text())
    assert key is not None and key.type == ED25519
    assert key.fingerprint == printed


def reader(*answers: tuple[int, str]):
    """A console reader that gives these answers in turn, then the last one forever."""
    queue = list(answers)

    def read(_server_id: str) -> tuple[int, str]:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return read


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        ([(200, "[ 0.0] Linux")], "no host key on server s1's console within 0 s"),
        ([(409, "Instance s1 is not ready")], "Instance s1 is not ready"),
        ([(200, FINISHED)], "finished on server s1 without printing its host keys"),
        ([(404, "Instance s1 could not be found.")], "Nova has no server s1"),
        ([(403, "Policy doesn't allow")], "Nova refused to show server s1's console (403"),
        (
            [(200, "\n".join([*BLOCK[:5], PREFIX + f"{EC} root@node", BLOCK[-1]]))],
            "no ssh-ed25519 key among them (found: ecdsa-sha2-nistp256)",
        ),
    ],
    ids=["never-printed", "never-ready", "finished-without", "gone", "forbidden", "no-ed25519"],
)
def test_no_key_is_said_with_its_cause_and_the_wait_is_bounded(answers, says) -> None:
    with pytest.raises(host_key.HostKeyUnavailable) as raised:
        host_key.read_console_key("s1", timeout=0.3, interval=0.1, read=reader(*answers))
    assert says in str(raised.value)


def test_a_long_running_server_whose_console_rolled_over_fails_at_once() -> None:
    """A server launched hours ago (a stack from before keys were pinned) whose console no
    longer holds the block: no 45-minute wait, the cause and the recycle that gives a key."""
    with pytest.raises(host_key.HostKeyUnavailable) as raised:
        host_key.read_console_key(
            "s1", timeout=3600, interval=0.1, read=reader((200, "login:")), settled=True
        )
    assert "no longer shows the host keys" in str(raised.value)
    assert "./chi-persist recycle --stack <netid>" in str(raised.value)


def test_the_key_is_waited_for_until_cloud_init_prints_it() -> None:
    """Not ready, then a console still booting, then the block: the key, after the wait."""
    found = host_key.read_console_key(
        "s1",
        timeout=5,
        interval=0.01,
        read=reader((409, "not ready"), (200, "[ 0.0] Linux"), (200, "\n".join(BLOCK))),
    )
    assert found.line == ED


# --- the tool against the stand-in's Nova and an sshd at the address ---------------------------


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    started = Twin(tmp_path_factory.mktemp("twin") / "state", settings=NO_QUOTAS).start()
    yield started
    assert started.stop() == 0, started.log_text()


@pytest.fixture(scope="module")
def api(twin: Twin) -> Api:
    return twin.api()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSshd]:
    reason = sshd_skip_reason()
    if reason:
        pytest.skip(reason)
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def server(api: Api) -> str:
    netid = uuid.uuid4().hex[:6]
    port = steps.port(api, f"node-persist-{netid}", [])
    return steps.boot(api, f"node-persist-{netid}", port["id"])["id"]


def run_host_key(
    twin: Twin, server_id: str, port: int, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OS_")}
    environment.update(
        HOME=str(tmp_path),
        OS_CLOUD="twin",
        OS_CLIENT_CONFIG_FILE=str(twin.state_dir / "clouds.yaml"),
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--server-id", server_id, "--host", "127.0.0.1",
         "--port", str(port), "--interval", "0.5", *extra],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def test_the_consoles_key_is_printed_when_the_address_shows_it(
    twin: Twin, server: str, sshd: LoopbackSshd, tmp_path: Path
) -> None:
    """The console (Nova) shows the key the sshd at the address has: stdout is that key alone."""
    shown = twin.admin(
        "POST", f"/servers/{server}/host-keys", json={"forged": [f"{sshd.host_key} root@node"]}
    )
    assert shown.status_code == 200, shown.text
    result = run_host_key(twin, server, sshd.port, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{sshd.host_key}\n"
    assert "shows the same key" in result.stderr


def test_another_key_at_the_address_stops_with_the_cause(
    twin: Twin, server: str, sshd: LoopbackSshd, tmp_path: Path
) -> None:
    """The server's console shows its own (generated) key, the sshd at the address another:
    exit 1, nothing on stdout, both fingerprints, and what to check."""
    result = run_host_key(twin, server, sshd.port, tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    shown = parse_key(sshd.host_key)
    assert shown is not None and shown.fingerprint in result.stderr
    assert "whoever answers at that address is not the server" in result.stderr
    assert "openstack floating ip show 127.0.0.1" in result.stderr


def test_a_server_nova_does_not_know_fails_at_once(
    twin: Twin, sshd: LoopbackSshd, tmp_path: Path
) -> None:
    result = run_host_key(twin, str(uuid.uuid4()), sshd.port, tmp_path, "--timeout", "60")
    assert result.returncode == 1
    assert "Nova has no server" in result.stderr
    assert "openstack console log show" in result.stderr
