"""scripts/clean-stop: the clean stop runs over SSH unless Nova says the server is gone.

Nova is the stand-in KVM@TACC (tests/twin, `--machines null`), asked with the credentials
the OpenStack provider reads (OS_CLOUD, OS_CLIENT_CONFIG_FILE); the SSH login is OpenSSH's
client against OpenSSH's sshd on 127.0.0.1, with a real key, a passphrase-protected key
and a real ssh-agent. The remote command stands in for release-volume.sh: it writes a file,
so each test sees whether the stop ran.
"""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components.project_files import PROJECT_ROOT
from tests.support.loopback_sshd import LoopbackSshd, loopback_sshd, sshd_skip_reason
from tests.support.ssh_keys import make_key, ssh_agent
from tests.twin import steps
from tests.twin.harness import NO_QUOTAS, Api, Twin, wait_for

SCRIPT = PROJECT_ROOT / "scripts" / "clean-stop"
PASSPHRASE = "correct horse battery"
SECRET_MARKER = "OPENSSH PRIVATE KEY"

pytestmark = pytest.mark.skipif(sshd_skip_reason() is not None, reason=str(sshd_skip_reason()))


@dataclass
class Keys:
    plain: Path
    protected: Path
    stranger: Path
    """A key the server does not know."""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    return Keys(
        plain=make_key(directory / "plain"),
        protected=make_key(directory / "protected", passphrase=PASSPHRASE),
        stranger=make_key(directory / "stranger"),
    )


# The host key the stack pinned for the server: the module's sshd's, once it runs.
PINNED: dict[str, str] = {}
SSHD_KEY = "the module's sshd's key"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[LoopbackSshd]:
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        server.authorize(Path(f"{keys.plain}.pub"))
        server.authorize(Path(f"{keys.protected}.pub"))
        PINNED[SSHD_KEY] = server.host_key
        yield server


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    # The module's servers share one project: more than its default quotas would hold.
    started = Twin(tmp_path_factory.mktemp("twin") / "state", settings=NO_QUOTAS).start()
    yield started
    assert started.stop() == 0, started.log_text()


@pytest.fixture(scope="module")
def api(twin: Twin) -> Api:
    return twin.api()


@pytest.fixture
def server(api: Api) -> str:
    """A running server in Nova; its id."""
    netid = uuid.uuid4().hex[:6]
    group = steps.security_group(api, f"persist-{netid}", ports=(22,))
    port = steps.port(api, f"node-persist-{netid}", [group["id"]])
    return steps.boot(api, f"node-persist-{netid}", port["id"])["id"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home without any clouds.yaml or ssh config of the machine's user."""
    directory = tmp_path / "home"
    directory.mkdir()
    return directory


def cloud_environment(twin: Twin, home: Path) -> dict[str, str]:
    """The environment of `pulumi up`: the twin's cloud as OS_CLOUD, nothing else of OS_*."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OS_", "SSH_", "CHI_PERSIST_")) and "proxy" not in name.lower()
    }
    environment.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        OS_CLOUD="twin",
        OS_CLIENT_CONFIG_FILE=str(twin.state_dir / "clouds.yaml"),
    )
    return environment


def run_clean_stop(
    server_id: str,
    port: int,
    login: str,
    environment: dict[str, str],
    remote: str,
    cwd: Path,
    host_key: str | None = SSHD_KEY,
) -> subprocess.CompletedProcess[str]:
    """scripts/clean-stop as the program's step runs it; `host_key` is the pinned key (the
    module's sshd's by default; None: the step of a stack from before keys were pinned)."""
    pinned = [] if host_key is None else ["--host-key", PINNED.get(host_key, host_key)]
    command = [
        sys.executable, str(SCRIPT),
        "--server-id", server_id,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--user", getpass.getuser(),
        "--login", login,
        *pinned,
        "--attempts", "2",
        "--pause", "0.2",
        "--", "sh", "-c", remote,
    ]  # fmt: skip
    return subprocess.run(
        command,
        env=environment,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def stop_marker(tmp_path: Path) -> tuple[Path, str]:
    """A file the stand-in of release-volume.sh writes, and that command."""
    marker = tmp_path / "released"
    return marker, f"echo released > {shlex.quote(str(marker))}"


def with_key(environment: dict[str, str], key: Path, passphrase: str | None = None) -> dict:
    environment = {**environment, "CHI_PERSIST_SSH_PRIVATE_KEY": key.read_text()}
    if passphrase is not None:
        environment["CHI_PERSIST_SSH_KEY_PASSPHRASE"] = passphrase
    return environment


def assert_no_secret(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for text in (result.stdout, result.stderr):
        assert SECRET_MARKER not in text
        for secret in secrets:
            assert secret not in text


# --- Nova says: gone, there, or cannot say --------------------------------------------------


def test_a_server_nova_does_not_know_is_skipped_with_a_warning(
    twin: Twin, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """404: exit 0, the warning about PostgreSQL's journal, and nothing run, though sshd answers."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.plain)
    result = run_clean_stop(str(uuid.uuid4()), sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no longer exists" in result.stderr
    assert "PostgreSQL recovers from its journal" in result.stderr
    assert not marker.exists(), "the stop ran against a server Nova does not know"


def test_a_server_deleted_from_nova_is_skipped_with_a_warning(
    twin: Twin, api: Api, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """A server that existed and was deleted (as a lease's end deletes it): skipped, exit 0."""
    response = twin.admin("POST", f"/servers/{server}/vanish")
    assert response.status_code == 200, response.text
    assert api.get(f"{api.compute}/servers/{server}").status_code == 404
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.plain)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"server {server} no longer exists" in result.stderr
    assert not marker.exists()


def test_a_server_shut_off_is_skipped_with_a_warning(
    twin: Twin, api: Api, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """SHUTOFF (`openstack server stop`, recycle --stop-through-nova): nothing runs there and
    its shutdown unmounted the volume, so nothing is run over SSH, though sshd answers."""
    stopped = api.post(f"{api.compute}/servers/{server}/action", json={"os-stop": None})
    assert stopped.status_code == 202, stopped.text
    wait_for(
        lambda: api.get(f"{api.compute}/servers/{server}").json()["server"]["status"] == "SHUTOFF",
        timeout=60,
    )
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.plain)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"server {server} is SHUTOFF" in result.stderr
    assert not marker.exists(), "the stop ran against a server that is shut off"


def test_a_server_that_exists_is_stopped_over_ssh_with_the_key(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """Nova knows it: the remote command runs with the key from the environment; exit 0."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.plain)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "released\n"
    assert f"server {server} exists (status ACTIVE)" in result.stdout
    assert_no_secret(result)


def test_the_key_file_is_gone_after_the_stop(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """The key is written for ssh in a private temporary directory, removed afterwards."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    remote = f"ls -A {shlex.quote(str(temporary))}"
    environment = {**with_key(cloud_environment(twin, home), keys.plain), "TMPDIR": str(temporary)}
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    # While ssh ran, the directory held the key; afterwards nothing is left.
    assert "chi-persist-ssh-" in result.stdout
    assert list(temporary.iterdir()) == []


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param("secret", id="credentials-refused"),
        pytest.param("nova-500", id="nova-fails"),
        pytest.param("no-credentials", id="no-credentials"),
    ],
)
def test_when_nova_cannot_say_the_stop_still_runs(
    twin: Twin,
    server: str,
    sshd: LoopbackSshd,
    keys: Keys,
    home: Path,
    tmp_path: Path,
    breakage: str,
) -> None:
    """Existence unknown is never taken for gone: the stop runs, after a warning naming why."""
    environment = with_key(cloud_environment(twin, home), keys.plain)
    if breakage == "secret":
        environment["OS_CLIENT_CONFIG_FILE"] = str(wrong_secret_clouds(twin, tmp_path))
        reason = "the cloud refused the stack's credentials"
    elif breakage == "nova-500":
        fault = {"method": "GET", "path": f".*/servers/{server}", "status": 500, "count": 1}
        assert twin.admin("POST", "/faults", json=fault).status_code == 201
        reason = "Nova answered 500"
    else:
        for name in ("OS_CLOUD", "OS_CLIENT_CONFIG_FILE"):
            environment.pop(name)
        reason = "OpenStack credentials"
    marker, remote = stop_marker(tmp_path)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "could not ask Nova" in result.stderr and reason in result.stderr
    assert marker.read_text() == "released\n"


def wrong_secret_clouds(twin: Twin, directory: Path) -> Path:
    clouds = yaml.safe_load((twin.state_dir / "clouds.yaml").read_text())
    clouds["clouds"]["twin"]["auth"]["application_credential_secret"] = "not-the-secret"
    path = directory / "clouds.yaml"
    path.write_text(yaml.safe_dump(clouds))
    path.chmod(0o600)
    return path


def test_unknown_existence_and_no_ssh_fails_loudly_with_both_fixes(
    twin: Twin, server: str, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """Credentials refused and nothing answers: exit 1, never a skip; the fix names OS_CLOUD."""
    environment = with_key(cloud_environment(twin, home), keys.plain)
    environment["OS_CLIENT_CONFIG_FILE"] = str(wrong_secret_clouds(twin, tmp_path))
    marker, remote = stop_marker(tmp_path)
    result = run_clean_stop(server, closed_port(), "key", environment, remote, tmp_path)
    assert result.returncode == 1
    assert "could not run over SSH" in result.stderr and "unknown" in result.stderr
    assert "export OS_CLOUD" in result.stderr
    assert "no longer exists" not in result.stderr


# --- the SSH login ----------------------------------------------------------------------------


def closed_port() -> int:
    """A port of 127.0.0.1 where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_that_exists_fails_with_the_cause_and_fix(
    twin: Twin, server: str, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """Nova knows it, sshd does not answer: exit 1, ssh's reason, and what to check."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.plain)
    result = run_clean_stop(server, closed_port(), "key", environment, remote, tmp_path)
    assert result.returncode == 1
    assert "Connection refused" in result.stderr
    assert f"server {server} exists (status ACTIVE)" in result.stderr
    assert "The volume was not detached" in result.stderr
    assert f"openstack server show {server}" in result.stderr
    assert "try 1 of 2" in result.stderr, "ssh is tried again before giving up"
    assert_no_secret(result)


def test_a_key_the_server_does_not_accept_fails(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """The key alone is offered: another key is refused, exit 1, the fix names the key."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.stranger)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 1
    assert "Permission denied" in result.stderr
    assert "sshPrivateKey" in result.stderr
    assert not marker.exists()


def test_a_passphrase_protected_key_logs_in_through_askpass(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """SSH_ASKPASS with SSH_ASKPASS_REQUIRE=force hands ssh the passphrase; it is never shown."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.protected, PASSPHRASE)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "released\n"
    assert_no_secret(result, PASSPHRASE)


def test_a_wrong_passphrase_fails_without_showing_it(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """A wrong passphrase: exit 1, the stop did not run, and the passphrase is not printed."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.protected, "not the passphrase")
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 1
    assert not marker.exists()
    assert_no_secret(result, "not the passphrase")


def test_the_agent_logs_in_when_chosen(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """--login agent: the agent at SSH_AUTH_SOCK holds the key; no key in the environment."""
    marker, remote = stop_marker(tmp_path)
    with ssh_agent() as agent:
        agent.add(keys.plain)
        environment = {**cloud_environment(twin, home), "SSH_AUTH_SOCK": str(agent.socket)}
        result = run_clean_stop(server, sshd.port, "agent", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "released\n"


def test_an_agent_without_the_key_fails(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """The agent holds another key: refused by the server, exit 1, the fix names the agent."""
    marker, remote = stop_marker(tmp_path)
    with ssh_agent() as agent:
        agent.add(keys.stranger)
        environment = {**cloud_environment(twin, home), "SSH_AUTH_SOCK": str(agent.socket)}
        result = run_clean_stop(server, sshd.port, "agent", environment, remote, tmp_path)
    assert result.returncode == 1
    assert "the agent at SSH_AUTH_SOCK holds the key" in result.stderr
    assert not marker.exists()


def test_a_key_login_ignores_a_dead_agent(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """With --login key, a stale SSH_AUTH_SOCK is not dialled: the key logs in."""
    marker, remote = stop_marker(tmp_path)
    with ssh_agent() as agent:
        agent.kill()
        environment = {
            **with_key(cloud_environment(twin, home), keys.plain),
            "SSH_AUTH_SOCK": str(agent.socket),
        }
        result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "released\n"


# --- the pinned host key ---------------------------------------------------------------------


def other_host_key(directory: Path) -> str:
    """A host key that is not the sshd's: what another machine at the address would show."""
    path = directory / "other_host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def test_a_server_showing_another_key_is_refused_once_and_the_volume_kept(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """The address shows another host key than the pinned one (the floating IP moved to another
    machine): nothing runs there, no second try, exit 1 with the cause and what to check."""
    marker, remote = stop_marker(tmp_path)
    environment = with_key(cloud_environment(twin, home), keys.plain)
    pinned = other_host_key(tmp_path)
    result = run_clean_stop(
        server, sshd.port, "key", environment, remote, tmp_path, host_key=pinned
    )
    assert result.returncode == 1
    assert not marker.exists(), "the stop ran on a machine that is not the server"
    assert f"does not show server {server}'s host key" in result.stderr
    assert "Nothing was sent to it, and the volume was not detached" in result.stderr
    assert "openstack floating ip show 127.0.0.1" in result.stderr
    assert "try 1 of" not in result.stderr, "another key is not a hiccup to try again"
    assert_no_secret(result)


def test_a_stack_from_before_the_pin_uses_the_key_its_console_shows(
    twin: Twin, server: str, sshd: LoopbackSshd, keys: Keys, home: Path, tmp_path: Path
) -> None:
    """A clean-stop step written before keys were pinned has no --host-key: the key is read
    from the server's console through Nova; the sshd's key there logs in, another is refused."""
    environment = with_key(cloud_environment(twin, home), keys.plain)
    shown = twin.admin(
        "POST", f"/servers/{server}/host-keys", json={"forged": [f"{sshd.host_key} root@node"]}
    )
    assert shown.status_code == 200, shown.text
    marker, remote = stop_marker(tmp_path)
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "released\n"
    marker.unlink()
    assert (
        twin.admin("POST", f"/servers/{server}/host-keys", json={"forged": True}).status_code == 200
    )
    refused = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path, None)
    assert refused.returncode == 1
    assert f"does not show server {server}'s host key" in refused.stderr
    assert not marker.exists()


def test_a_malformed_pinned_key_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--server-id", "x", "--host", "127.0.0.1",
         "--login", "key", "--host-key", "ssh-ed25519 not-base64!", "--", "true"],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--host-key 'ssh-ed25519 not-base64!' is not a public key" in result.stderr


# --- the remote command's own result ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "says"),
    [(4, "refused: something on the server still uses the volume"), (1, "failed (exit status 1")],
)
def test_a_failing_release_fails_the_clean_stop(
    twin: Twin,
    server: str,
    sshd: LoopbackSshd,
    keys: Keys,
    home: Path,
    tmp_path: Path,
    status: int,
    says: str,
) -> None:
    """release-volume.sh's refusal (4) or failure: exit 1 and the message; never retried."""
    environment = with_key(cloud_environment(twin, home), keys.plain)
    remote = f"echo ran >> {shlex.quote(str(tmp_path / 'runs'))}; exit {status}"
    result = run_clean_stop(server, sshd.port, "key", environment, remote, tmp_path)
    assert result.returncode == 1
    assert says in result.stderr
    assert (tmp_path / "runs").read_text() == "ran\n"


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (["--login", "key"], "no remote command"),
        (["--login", "password", "--", "true"], "invalid choice"),
        (["--login", "key", "--port", "0", "--", "true"], "--port must be 1 to 65535"),
    ],
)
def test_wrong_arguments_exit_2(arguments: list[str], says: str, tmp_path: Path) -> None:
    """Usage errors exit 2 and say what was wrong."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--server-id", "x", "--host", "127.0.0.1", *arguments],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert says in result.stderr
