"""release-volume.sh stops the platform, syncs and unmounts a volume from prepare-volume."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.block_devices import LoopVolume, link_by_id, run
from tests.support.paths import REMOTE_SCRIPTS
from tests.support.volume_scripts import (
    DATA,
    DATA_FILE,
    RELEASE_VOLUME,
    Server,
    is_mount_point,
    mounted_targets,
    new_volume_id,
    write_data,
)

pytestmark = [pytest.mark.root, pytest.mark.disk]

START_STACK = REMOTE_SCRIPTS / "start-stack.sh"
STARTED_RECORD = ".chi-persist/started-stack"

STANDIN_DOCKER = """\
#!/usr/bin/env bash
# Stand-in for docker: records every call, answers `ps` from a state file;
# `compose ... up` starts pretend containers, `compose ... down` stops them unless
# told they are stuck, and keeps what each --file held at the time of the call.
state={state}
printf '%s\\n' "$(printf '%q ' "$@")" >>"$state/calls"
case $1 in
    ps)
        [[ -f $state/ps-fails ]] && {{ echo "Cannot connect to the Docker daemon" >&2; exit 1; }}
        [[ -f $state/running ]] && cat "$state/running"
        exit 0
        ;;
    compose)
        arguments=("$@")
        : >"$state/files-at-last-compose"
        for ((i = 0; i < ${{#arguments[@]}}; i++)); do
            [[ ${{arguments[i]}} == --file ]] &&
                cat -- "${{arguments[i + 1]}}" >>"$state/files-at-last-compose"
        done
        if [[ " $* " == *" up "* ]]; then
            printf '0f1e2d3c4b5a\\n' >"$state/running"
            exit 0
        fi
        if mountpoint -q "$MOUNT_POINT"; then echo yes; else echo no; fi >"$state/mounted-at-down"
        printf '%s\\n' "$MOUNT_POINT" >"$state/mount-point-env"
        [[ -f $state/stuck ]] || rm -f "$state/running"
        exit 0
        ;;
esac
exit 0
"""


@dataclass
class Docker:
    """A stand-in docker on PATH and the state it keeps."""

    bin_dir: Path
    state: Path

    def start_platform(self) -> None:
        (self.state / "running").write_text("0f1e2d3c4b5a\n9a8b7c6d5e4f\n")

    def calls(self) -> list[list[str]]:
        calls = self.state / "calls"
        return (
            [shlex.split(line) for line in calls.read_text().splitlines()] if calls.exists() else []
        )

    def compose_calls(self) -> list[list[str]]:
        return [call for call in self.calls() if call[:1] == ["compose"]]


@pytest.fixture
def docker(tmp_path: Path) -> Docker:
    """A stand-in docker, ready to be put first on PATH."""
    bin_dir, state = tmp_path / "bin", tmp_path / "docker-state"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "docker"
    script.write_text(STANDIN_DOCKER.format(state=shlex.quote(str(state))))
    script.chmod(0o755)
    return Docker(bin_dir, state)


@dataclass
class PreparedVolume:
    """A volume prepared and mounted by prepare-volume, with a student's file on it."""

    volume: LoopVolume
    server: Server
    partition: str

    @property
    def mount_point(self) -> Path:
        return self.server.mount_point


@pytest.fixture
def prepared(loop_volume: LoopVolume, tmp_path: Path) -> Iterator[PreparedVolume]:
    """A blank loop volume run through prepare-volume, mounted, with data and credentials."""
    server = Server(tmp_path / "server")
    volume_id = new_volume_id()
    link_by_id(server.by_id_dir, volume_id, loop_volume.device)
    result = server.prepare(volume_id)
    assert result.returncode == 0, result.stdout + result.stderr
    write_data(server.mount_point)
    credentials = server.mount_point / ".chi-persist" / "credentials.env"
    credentials.write_text("POSTGRES_USER=u\n")
    credentials.chmod(0o600)
    yield PreparedVolume(loop_volume, server, loop_volume.partition(1))
    server.remove_lock_files()


def release(*arguments: str, path: str) -> subprocess.CompletedProcess[str]:
    """Run release-volume.sh with the given PATH and no terminal on stdin."""
    return run(
        "bash", str(RELEASE_VOLUME), *arguments, check=False, env={**os.environ, "PATH": path}
    )


def path_with(docker: Docker) -> str:
    return f"{docker.bin_dir}:{path_without_docker()}"


def path_without_docker() -> str:
    """The current PATH minus every directory that holds a docker command."""
    kept = [
        part for part in os.environ["PATH"].split(":") if part and not Path(part, "docker").exists()
    ]
    return ":".join(kept)


def assert_data_still_there(prepared: PreparedVolume, tmp_path: Path) -> None:
    """Mount the partition somewhere else: the student's file is intact."""
    check = tmp_path / "check"
    check.mkdir(exist_ok=True)
    run("mount", "-o", "ro", prepared.partition, str(check))
    try:
        assert (check / DATA_FILE).read_bytes() == DATA
    finally:
        run("umount", str(check))


def test_running_platform_is_stopped_then_volume_unmounted(prepared, docker, tmp_path):
    """No record of the start: down of the given file, orphans too, 120 s; then unmounted."""
    compose_file = tmp_path / "docker-compose.yaml"
    compose_file.write_text("services: {}\n")
    docker.start_platform()
    mp = prepared.mount_point

    result = release(
        "--mount-point", str(mp), "--compose-file", str(compose_file), path=path_with(docker)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    credentials = f"{mp}/.chi-persist/credentials.env"
    assert docker.compose_calls() == [
        [
            "compose", "--project-name", "chi-persist", "--file", str(compose_file),
            "--env-file", credentials, "down", "--remove-orphans", "--timeout", "120",
        ]
    ]  # fmt: skip
    down = docker.compose_calls()[0]
    assert int(down[down.index("--timeout") + 1]) >= 120
    assert (docker.state / "mounted-at-down").read_text() == "yes\n", "unmounted before the stop"
    assert (docker.state / "mount-point-env").read_text() == f"{mp}\n"
    assert not is_mount_point(mp)
    assert mounted_targets(prepared.volume.device) == []
    assert "platform_stopped=yes unmounted=yes" in result.stdout.splitlines()[-1]
    assert_data_still_there(prepared, tmp_path)


def test_second_run_succeeds_and_stops_nothing(prepared, docker, tmp_path):
    """After a release, running it again succeeds without calling compose down."""
    docker.start_platform()
    first = release("--mount-point", str(prepared.mount_point), path=path_with(docker))
    assert first.returncode == 0, first.stdout + first.stderr
    calls_after_first = len(docker.compose_calls())

    second = release("--mount-point", str(prepared.mount_point), path=path_with(docker))

    assert second.returncode == 0, second.stdout + second.stderr
    assert len(docker.compose_calls()) == calls_after_first == 1
    assert "platform is not running" in second.stdout
    assert "is not mounted: nothing to unmount" in second.stdout
    assert_data_still_there(prepared, tmp_path)


COMPOSE_FILE_CASES = [
    pytest.param(None, [], id="no-compose-file-given"),
    pytest.param("missing.yaml", [], id="compose-file-missing"),
]


@pytest.mark.parametrize(("compose_file", "file_options"), COMPOSE_FILE_CASES)
def test_without_a_compose_file_the_project_is_stopped_by_name(
    prepared, docker, tmp_path, compose_file, file_options
):
    """No usable compose file: down by project name only, with the same stop timeout."""
    docker.start_platform()
    arguments = ["--mount-point", str(prepared.mount_point)]
    if compose_file:
        arguments += ["--compose-file", str(tmp_path / compose_file)]

    result = release(*arguments, path=path_with(docker))

    assert result.returncode == 0, result.stdout + result.stderr
    assert docker.compose_calls() == [
        [
            "compose", "--project-name", "chi-persist", *file_options,
            "down", "--remove-orphans", "--timeout", "120",
        ]
    ]  # fmt: skip
    assert not is_mount_point(prepared.mount_point)


def test_nothing_mounted_and_no_docker_succeeds(tmp_path):
    """With no docker on PATH and nothing mounted, release has nothing to do and succeeds."""
    result = release("--mount-point", str(tmp_path / "never-mounted"), path=path_without_docker())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "docker is not installed" in result.stdout
    assert "not mounted: nothing to unmount" in result.stdout


def test_containers_still_running_after_down_keep_the_volume_mounted(prepared, docker, tmp_path):
    """If compose down leaves containers running, nothing is unmounted: exit 4."""
    docker.start_platform()
    (docker.state / "stuck").touch()

    result = release("--mount-point", str(prepared.mount_point), path=path_with(docker))

    assert result.returncode == 4, result.stdout + result.stderr
    assert "still run" in result.stderr and "nothing was unmounted" in result.stderr
    assert is_mount_point(prepared.mount_point)
    assert (prepared.mount_point / DATA_FILE).read_bytes() == DATA


def test_busy_mount_point_is_refused_and_stays_mounted(prepared, docker):
    """A process working inside the volume: unmount fails, exit 4, the volume stays mounted."""
    worker = subprocess.Popen(["sleep", "60"], cwd=prepared.mount_point)
    try:
        result = release("--mount-point", str(prepared.mount_point), path=path_with(docker))
    finally:
        worker.kill()
        worker.wait()
    assert result.returncode == 4, result.stdout + result.stderr
    assert "could not unmount" in result.stderr and "fuser -vm" in result.stderr
    assert is_mount_point(prepared.mount_point)


HOLDER = """\
set -eu
mount --bind "$1" "$2"
# Keep only this volume: other loop-device filesystems leave this namespace.
findmnt -rn -o TARGET,SOURCE | while read -r target source; do
    target=$(printf '%b' "$target")
    case $source in
        /dev/loop*) [ "$target" = "$2" ] || umount -l "$target" 2>/dev/null || true ;;
    esac
done
exec sleep 120
"""


def hold_in_private_namespace(mount_point: Path, hold: Path) -> subprocess.Popen:
    """A process in a private mount namespace keeping the volume mounted, like a container."""
    hold.mkdir()
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", HOLDER, "holder"]
        + [str(mount_point), str(hold)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while Path(f"/proc/{holder.pid}/comm").read_text().strip() != "sleep":
        assert holder.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return holder


def test_filesystem_held_in_another_mount_namespace_is_mounted_again(prepared, docker, tmp_path):
    """A container-like private mount namespace still holds the filesystem: exit 4, remounted."""
    holder = hold_in_private_namespace(prepared.mount_point, tmp_path / "hold")
    try:
        held = release("--mount-point", str(prepared.mount_point), path=path_with(docker))

        assert held.returncode == 4, held.stdout + held.stderr
        assert f"{holder.pid}(sleep)" in held.stderr and "mounted again" in held.stderr
        assert is_mount_point(prepared.mount_point)
        assert (prepared.mount_point / DATA_FILE).read_bytes() == DATA
    finally:
        holder.kill()
        holder.wait()

    released = release("--mount-point", str(prepared.mount_point), path=path_with(docker))
    assert released.returncode == 0, released.stdout + released.stderr
    assert not is_mount_point(prepared.mount_point)


def test_docker_that_does_not_answer_does_not_block_a_safe_release(prepared, docker, tmp_path):
    """docker ps failing (daemon down) stops nothing, and the unused volume is still unmounted."""
    (docker.state / "ps-fails").touch()

    result = release("--mount-point", str(prepared.mount_point), path=path_with(docker))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "docker does not answer" in result.stdout
    assert docker.compose_calls() == []
    assert not is_mount_point(prepared.mount_point)


BAD_INPUT = [
    pytest.param(["--mount-point"], "needs a value", id="missing-value"),
    pytest.param(["--force"], "unknown argument", id="unknown-option"),
    pytest.param(["--mount-point", "mnt/block"], "not an absolute path", id="relative"),
    pytest.param(["--mount-point", "/"], "not an absolute path below /", id="root-directory"),
    pytest.param(
        ["--compose-file", "docker-compose.yaml"], "not an absolute path", id="relative-file"
    ),
]


@pytest.mark.parametrize(("arguments", "message"), BAD_INPUT)
def test_bad_input_prints_usage_and_touches_nothing(prepared, docker, arguments, message):
    """Exit 2 with the reason and the usage line; the platform and the mount are left alone."""
    docker.start_platform()
    result = release(*arguments, path=path_with(docker))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "usage: release-volume.sh" in result.stderr
    assert docker.calls() == []
    assert is_mount_point(prepared.mount_point)


@pytest.mark.other_user
def test_not_root_is_refused_with_usage(prepared, docker, as_nobody):
    """As an ordinary user: exit 2, 'must run as root', the volume stays mounted."""
    docker.start_platform()
    nobody = as_nobody(RELEASE_VOLUME)
    command = [*nobody.argv, "--mount-point", str(prepared.mount_point)]
    env = {**os.environ, "PATH": path_with(docker)}
    result = run(*command, check=False, env=env, cwd=nobody.cwd)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "must run as root" in result.stderr and "usage:" in result.stderr
    assert docker.calls() == []
    assert is_mount_point(prepared.mount_point)


def test_help_describes_the_steps():
    """--help names the compose call, the stop timeout, and the exit codes."""
    result = run("bash", str(RELEASE_VOLUME), "--help", check=False)
    assert result.returncode == 0
    expected = [
        "usage: release-volume.sh",
        "--project-name PROJECT",
        "down --remove-orphans --timeout 120",
        STARTED_RECORD,
    ]
    for words in [*expected, "sync", "Exit codes"]:
        assert words in result.stdout


# --- the stack is stopped with what started it -----------------------------------------------

STARTED_COMPOSE = "services:\n  postgres:\n    image: postgres:17.6-bookworm\n"
RENAMED_COMPOSE = "services:\n  database:\n    image: postgres:17.6-bookworm\n"


def start_stack(
    mount_point: Path, compose_file: Path, docker: Docker
) -> subprocess.CompletedProcess[str]:
    """Run the real start-stack.sh on the prepared volume, the stand-in docker on PATH."""
    return run(
        "bash", str(START_STACK), "--mount-point", str(mount_point),
        "--host-ip", "203.0.113.10", "--compose-file", str(compose_file),
        "--object-store-dir", str(mount_point.parent / "no-object-store"),
        check=False, env={**os.environ, "PATH": path_with(docker)},
    )  # fmt: skip


def record_left_on(prepared: PreparedVolume, tmp_path: Path) -> bool:
    """Whether the released volume still holds a record of a started stack."""
    check = tmp_path / "check-record"
    check.mkdir(exist_ok=True)
    run("mount", "-o", "ro", prepared.partition, str(check))
    try:
        return (check / STARTED_RECORD).exists()
    finally:
        run("umount", str(check))


def test_a_renamed_service_is_stopped_with_the_compose_file_that_started_it(
    prepared, docker, tmp_path
):
    """docker/ replaced after the start: the stop uses the file it started with, orphans too."""
    mp = prepared.mount_point
    compose_file = tmp_path / "docker" / "docker-compose.yaml"
    compose_file.parent.mkdir()
    compose_file.write_text(STARTED_COMPOSE)
    # start-stack.sh makes its own complete credentials.
    (mp / ".chi-persist" / "credentials.env").unlink()
    started = start_stack(mp, compose_file, docker)
    assert started.returncode == 0, started.stdout + started.stderr
    compose_file.write_text(RENAMED_COMPOSE)

    result = release(
        "--mount-point", str(mp), "--compose-file", str(compose_file), path=path_with(docker)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    record = mp / STARTED_RECORD
    assert docker.compose_calls()[-1] == [
        "compose", "--project-name", "chi-persist", "--file", f"{record}/1-docker-compose.yaml",
        "--env-file", f"{mp}/.chi-persist/credentials.env",
        "down", "--remove-orphans", "--timeout", "120",
    ]  # fmt: skip
    assert (docker.state / "files-at-last-compose").read_text() == STARTED_COMPOSE, (
        "the stop did not use the compose file the stack was started with"
    )
    assert (docker.state / "mounted-at-down").read_text() == "yes\n", "unmounted before the stop"
    assert "with the compose file(s) it was started with" in result.stdout
    assert not is_mount_point(mp)
    assert not record_left_on(prepared, tmp_path), "the record outlived the release"
    assert_data_still_there(prepared, tmp_path)


def _no_file_list(record: Path) -> None:
    (record / "compose-files").unlink()


def _a_listed_file_missing(record: Path) -> None:
    (record / "1-docker-compose.yaml").unlink()


def _a_path_listed(record: Path) -> None:
    (record / "compose-files").write_text("/etc/passwd\n")


def _a_bad_project_name(record: Path) -> None:
    (record / "project-name").write_text("Chi Persist\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_no_file_list, "is incomplete: not used"),
        (_a_listed_file_missing, "which it does not hold: not used"),
        (_a_path_listed, "which it does not hold: not used"),
        (_a_bad_project_name, "not a compose project name: not used"),
    ],
    ids=["no-file-list", "listed-file-missing", "path-listed", "bad-project-name"],
)
def test_a_damaged_record_is_not_used_and_the_given_file_stops_the_stack(
    prepared, docker, tmp_path, damage, message
):
    """A record that cannot be trusted is named and ignored: the given compose file, orphans too."""
    mp = prepared.mount_point
    compose_file = tmp_path / "docker-compose.yaml"
    compose_file.write_text(STARTED_COMPOSE)
    (mp / ".chi-persist" / "credentials.env").unlink()
    assert start_stack(mp, compose_file, docker).returncode == 0
    damage(mp / STARTED_RECORD)

    result = release(
        "--mount-point", str(mp), "--compose-file", str(compose_file), path=path_with(docker)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert message in result.stdout
    down = docker.compose_calls()[-1]
    assert down[:5] == ["compose", "--project-name", "chi-persist", "--file", str(compose_file)]
    assert down[-3:] == ["--remove-orphans", "--timeout", "120"]
    assert not is_mount_point(mp)
