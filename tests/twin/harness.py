"""Run `tests/twin/serve` as a process and talk to it over real HTTP, for tests.

`Twin` starts the service on a free port of 127.0.0.1, waits for DIR/ready,
and hands out an authenticated `requests` session per call (`twin.api()`),
with the service URLs from the token's catalog, plus the admin API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

SERVE = Path(__file__).resolve().parent / "serve"
READY_SECONDS = 60
# For tests that share one twin and make more servers, groups and volumes than a project's
# default quotas allow (the quotas' own tests start a twin with the defaults).
NO_QUOTAS = {
    name: -1
    for name in (
        "quota_instances", "quota_cores", "quota_ram", "quota_security_group",
        "quota_security_group_rule", "quota_floatingip", "quota_port", "quota_volumes",
        "quota_gigabytes",
    )
}  # fmt: skip


class TwinError(RuntimeError):
    pass


class Api:
    """An authenticated session on the twin, with the catalog's service URLs."""

    def __init__(self, url: str, token: str, body: dict[str, Any]) -> None:
        self.url = url
        self.token = token
        self.body = body
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["X-Auth-Token"] = token
        catalog = {
            entry["type"]: entry["endpoints"][0]["url"] for entry in body["token"]["catalog"]
        }
        self.compute = catalog["compute"]
        self.network = catalog["network"] + "/v2.0"
        self.image = catalog["image"] + "/v2"
        self.volume = catalog["volumev3"]
        self.reservation = catalog["reservation"]
        self.project_id = body["token"]["project"]["id"]

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, url, timeout=60, **kwargs)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", url, **kwargs)


class Twin:
    """One `serve` process on a state directory."""

    def __init__(
        self,
        state_dir: Path,
        *,
        machines: str = "null",
        environment: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.machines = machines
        self.environment = environment or {}
        self.settings = settings or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.state_dir.parent / f"{self.state_dir.name}.serve.log"
        self.url = ""
        self.http = requests.Session()
        self.http.trust_env = False

    # --- the process ---------------------------------------------------------------------

    def start(self, port: int = 0) -> Twin:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ready = self.state_dir / "ready"
        # A twin killed without its clean stop leaves its ready file behind.
        ready.unlink(missing_ok=True)
        command = [sys.executable, str(SERVE), "--state-dir", str(self.state_dir)]
        command += ["--port", str(port), "--machines", self.machines]
        for key, value in self.settings.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.environment},
            )
        deadline = time.monotonic() + READY_SECONDS
        while (
            not ready.exists()
            or json.loads(ready.read_text() or "{}").get("pid") != self.process.pid
        ):
            if self.process.poll() is not None:
                raise TwinError(f"serve exited with {self.process.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise TwinError(f"serve was not ready after {READY_SECONDS} s:\n{self.log_text()}")
            time.sleep(0.05)
        self.url = json.loads(ready.read_text())["url"]
        return self

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal serve and wait for it; its exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise TwinError(f"serve did not stop within {timeout} s after {signum}") from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    # --- credentials -----------------------------------------------------------------------

    def clouds(self) -> dict[str, Any]:
        return yaml.safe_load((self.state_dir / "clouds.yaml").read_text())["clouds"]

    def authenticate(self, auth: dict[str, Any]) -> requests.Response:
        return self.http.post(f"{self.url}/v3/auth/tokens", json={"auth": auth}, timeout=30)

    def application_credential_auth(self) -> dict[str, Any]:
        credential = self.clouds()["twin"]["auth"]
        return {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": credential["application_credential_id"],
                    "secret": credential["application_credential_secret"],
                },
            }
        }

    def api(self) -> Api:
        response = self.authenticate(self.application_credential_auth())
        if response.status_code != 201:
            raise TwinError(f"authentication failed: {response.status_code} {response.text}")
        return Api(self.url, response.headers["X-Subject-Token"], response.json())

    # --- the admin API ---------------------------------------------------------------------

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, f"{self.url}/_twin{path}", timeout=600, **kwargs)

    def state(self) -> dict[str, Any]:
        response = self.admin("GET", "/state")
        response.raise_for_status()
        return response.json()

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        response = self.admin("GET", "/events", params={"since": since})
        response.raise_for_status()
        return response.json()["events"]

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change twin settings (POST /_twin/config); the settings after the change."""
        response = self.admin("POST", "/config", json=settings)
        if response.status_code != 200:
            raise TwinError(f"settings {settings}: {response.status_code} {response.text}")
        return response.json()["config"]

    def kill_after(
        self, method: str, path: str, session: int, count: int = 1, unanswered: bool = False
    ) -> None:
        """SIGKILL every process of `session` right after the next successful call matching
        method and path (a regular expression over the whole path) has been answered; with
        `unanswered`, once the cloud has done it but before its answer is written."""
        fault = {"method": method, "path": path, "kill": session, "count": count}
        if unanswered:
            fault["unanswered"] = True
        response = self.admin("POST", "/faults", json=fault)
        if response.status_code != 201:
            raise TwinError(f"kill fault {fault}: {response.status_code} {response.text}")

    def end_lease(self, lease_id: str) -> dict[str, Any]:
        """End a lease now, as its end date would (its servers, then its flavor, go away)."""
        response = self.admin("POST", f"/leases/{lease_id}/end")
        if response.status_code != 200:
            raise TwinError(f"end lease {lease_id}: {response.status_code} {response.text}")
        return response.json()["lease"]

    def add_keypair(self, name: str, public_key: str) -> dict[str, Any]:
        response = self.admin("POST", "/keypairs", json={"name": name, "public_key": public_key})
        if response.status_code != 201:
            raise TwinError(f"key pair {name}: {response.status_code} {response.text}")
        return response.json()["keypair"]


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll every `interval` seconds until `condition()` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
