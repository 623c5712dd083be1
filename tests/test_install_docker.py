"""scripts/remote/install-docker.sh against a stand-in package manager and docker.

The stand-ins behave like a small Ubuntu: apt-get "installs" by leaving a mark
that makes `docker compose version` work, usermod and groupadd change the
groups `id` and `getent` report. The package manager's lock is a real lock
(flock) on a temporary file, held by a real process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.compose import COMPOSE_FILE
from tests.support.paths import REMOTE_SCRIPTS
from tests.support.stand_ins import StandIns

SCRIPT = REMOTE_SCRIPTS / "install-docker.sh"
USER = "cc"

pytestmark = pytest.mark.skipif(
    shutil.which("fuser") is None or shutil.which("flock") is None,
    reason="needs fuser (psmisc) and flock (util-linux) to hold and see a real lock",
)

APT_GET = """
record()
if "install" in sys.argv[1:]:
    (state / "installed").write_text(" ".join(sys.argv[1:]))
"""
DOCKER = """
if sys.argv[1:3] == ["compose", "version"]:
    sys.exit(0 if (state / "installed").exists() else 1)
record()
"""
SYSTEMCTL = "record()"
GETENT = """
if sys.argv[1:] == ["group", "docker"]:
    sys.exit(0 if (state / "group-docker").exists() else 2)
sys.exit(2)
"""
GROUPADD = """
record()
(state / "group-docker").touch()
"""
USERMOD = """
record()
user = sys.argv[-1]
if "-aG" in sys.argv and sys.argv[sys.argv.index("-aG") + 1] == "docker":
    (state / f"member-{user}").touch()
"""
ID = f"""
arguments = [a for a in sys.argv[1:] if a != "--"]
user = arguments[-1]
if user != {USER!r}:
    print(f"id: '{{user}}': no such user", file=sys.stderr)
    sys.exit(1)
if "-u" in arguments:
    print(1000)
elif "-nG" in arguments:
    print("cc docker" if (state / f"member-{{user}}").exists() else "cc")
"""


@pytest.fixture
def system(tmp_path: Path) -> StandIns:
    """A stand-in Ubuntu without Docker: package manager, docker, systemd and user database."""
    stand_ins = StandIns.create(tmp_path / "system")
    for name, body in {
        "apt-get": APT_GET,
        "docker": DOCKER,
        "systemctl": SYSTEMCTL,
        "getent": GETENT,
        "groupadd": GROUPADD,
        "usermod": USERMOD,
        "id": ID,
    }.items():
        stand_ins.add(name, body)
    return stand_ins


@pytest.fixture
def lock_file(tmp_path: Path) -> Path:
    """The package manager's lock for this test (LOCK_FILES), not held by anyone yet."""
    path = tmp_path / "lock-frontend"
    path.touch()
    return path


def install(system: StandIns, lock_file: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run install-docker.sh (as root) with the stand-ins first on PATH."""
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        env=system.environment(LOCK_FILES=str(lock_file)),
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """A process holding `path` locked (and open) for `seconds`, like apt at first boot."""
    holder = subprocess.Popen(["flock", str(path), "sleep", str(seconds)], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["fuser", "-s", str(path)], check=False).returncode != 0:
        assert time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return holder


requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="install-docker.sh must run as root")


@requires_root
def test_first_run_installs_docker_and_compose(system: StandIns, lock_file: Path) -> None:
    """On a server without Docker: Ubuntu's packages are installed and the service enabled."""
    completed = install(system, lock_file, "--user", USER)
    assert completed.returncode == 0, completed.stderr
    installs = [call for call in system.calls("apt-get") if "install" in call["argv"]]
    assert len(installs) == 1
    assert {"docker.io", "docker-compose-v2", "docker-buildx"} <= set(installs[0]["argv"])
    assert "-y" in installs[0]["argv"]
    updates = [call for call in system.calls("apt-get") if "update" in call["argv"]]
    assert updates and updates[0]["time"] < installs[0]["time"]
    enables = [call["argv"] for call in system.calls("systemctl")]
    assert ["enable", "--now", "docker.service"] in enables


@requires_root
def test_second_run_installs_nothing(system: StandIns, lock_file: Path) -> None:
    """Run again (or on a server with Docker already), nothing is installed or added twice."""
    assert install(system, lock_file, "--user", USER).returncode == 0
    first_calls = len(system.calls())
    completed = install(system, lock_file, "--user", USER)
    assert completed.returncode == 0, completed.stderr
    later = system.calls()[first_calls:]
    assert [call for call in later if call["command"] in ("apt-get", "usermod", "groupadd")] == []
    assert "already installed: skipping installation" in completed.stdout
    assert f"user {USER}: already in group docker" in completed.stdout


@requires_root
def test_user_is_added_to_the_docker_group(system: StandIns, lock_file: Path) -> None:
    """The user can run docker without sudo after its next login."""
    completed = install(system, lock_file, "--user", USER)
    assert completed.returncode == 0, completed.stderr
    assert (system.state / f"member-{USER}").exists()
    usermods = [call["argv"] for call in system.calls("usermod")]
    assert usermods == [["-aG", "docker", "--", USER]]


@requires_root
def test_waits_for_the_package_manager_lock_then_installs(
    system: StandIns, lock_file: Path
) -> None:
    """A lock held at first boot is waited for, with a message; apt-get runs after its release."""
    holder = hold_lock(lock_file, 4)
    try:
        started = time.monotonic()
        completed = install(system, lock_file, "--user", USER, "--lock-timeout", "60")
        holder.wait(timeout=30)
        released = time.time()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert completed.returncode == 0, completed.stderr
    assert time.monotonic() - started >= 3
    assert "waiting for the package manager" in completed.stdout
    assert str(lock_file) in completed.stdout
    assert "package manager locks released" in completed.stdout
    apt_calls = system.calls("apt-get")
    assert apt_calls, "nothing was installed after the lock was released"
    assert all(call["time"] >= released - 1.5 for call in apt_calls)


@requires_root
def test_gives_up_when_the_lock_is_never_released(system: StandIns, lock_file: Path) -> None:
    """After --lock-timeout the script stops with exit 3 and names the lock; nothing installed."""
    holder = hold_lock(lock_file, 60)
    try:
        completed = install(system, lock_file, "--user", USER, "--lock-timeout", "3")
    finally:
        holder.kill()
        holder.wait()
    assert completed.returncode == 3
    assert str(lock_file) in completed.stderr
    assert "--lock-timeout" in completed.stderr
    assert system.calls("apt-get") == []


@requires_root
def test_images_are_pulled_and_built(system: StandIns, lock_file: Path) -> None:
    """With --compose-file the stack's images are pulled, and the MLflow image built."""
    completed = install(system, lock_file, "--user", USER, "--compose-file", str(COMPOSE_FILE))
    assert completed.returncode == 0, completed.stderr
    compose_calls = [call["argv"] for call in system.calls("docker")]
    prefix = ["compose", "--project-name", "chi-persist", "--file", str(COMPOSE_FILE)]
    assert compose_calls == [
        [*prefix, "pull", "--ignore-buildable", "--quiet"],
        [*prefix, "build"],
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "--user is required"),
        (["--user", "nobody-here"], "user 'nobody-here' does not exist"),
        (["--user", USER, "--lock-timeout", "soon"], "got 'soon'"),
        (["--user", USER, "--colour"], "unknown option '--colour'"),
    ],
    ids=["no-user", "unknown-user", "bad-timeout", "unknown-option"],
)
@requires_root
def test_bad_arguments_are_refused(
    system: StandIns, lock_file: Path, arguments: list[str], message: str
) -> None:
    """A usage error exits 2 with what was wrong, and touches nothing."""
    completed = install(system, lock_file, *arguments)
    assert completed.returncode == 2
    assert message in completed.stderr
    assert system.calls() == []


@requires_root
def test_missing_compose_file_is_reported(
    system: StandIns, lock_file: Path, tmp_path: Path
) -> None:
    """A compose file that is not there stops the script with exit 5 and its path."""
    missing = tmp_path / "nowhere" / "docker-compose.yaml"
    completed = install(system, lock_file, "--user", USER, "--compose-file", str(missing))
    assert completed.returncode == 5
    assert str(missing) in completed.stderr


def test_help_describes_the_options_and_exit_codes() -> None:
    """--help prints the usage with every option and exit code."""
    completed = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0
    for word in ("--user", "--compose-file", "--lock-timeout", "Exit codes"):
        assert word in completed.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", ["install-docker.sh", "start-stack.sh"])
def test_script_passes_shellcheck(script: str) -> None:
    """The server-side scripts are shellcheck-clean."""
    completed = subprocess.run(
        ["shellcheck", str(REMOTE_SCRIPTS / script)], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stdout
