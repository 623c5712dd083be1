"""The twin's Flask application: every service under its path, the admin API, errors, events.

Paths (one port; the catalog points each service at its own prefix):
  /                  Keystone (/v3, /v3/auth/tokens)
  /compute           Nova v2.1          /network   Neutron v2.0
  /image             Glance v2          /volume    Cinder v3
  /v1                Blazar v1 (its catalog entry ends in the version, as KVM@TACC's)
  /chi-tacc          CHI@TACC, a second site: its own Keystone (/chi-tacc/v3) and Swift
                     (/chi-tacc/swift), whose tokens are CHI@TACC's Keystone's
  /_twin             the admin API for tests (state, faults, pre-made volumes, key pairs,
                     settings, ending a lease now, a server's console showing forged host keys)
Every service call but the version documents needs a valid X-Auth-Token, as
keystonemiddleware demands. A call the twin does not serve is answered 404 (or
405) in the service's own error format, with the method and path named. Every
call is appended to the event log, in order, with its status and duration.
Service calls run one at a time under the state's lock; the state is saved
after every call that is not a read.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import threading
import time
import traceback
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from tests.twin.services.chi_tacc import urls as chi_tacc_urls
from tests.twin.services.cloud import Cloud, ConfigError, checked_config
from tests.twin.services.compute import urls as compute_urls
from tests.twin.services.core import (
    RawError,
    ServiceError,
    Unauthenticated,
    base_url,
    json_response,
)
from tests.twin.services.identity import urls as identity_urls
from tests.twin.services.image import urls as image_urls
from tests.twin.services.network import urls as network_urls
from tests.twin.services.object_store import urls as object_store_urls
from tests.twin.services.reservation import urls as reservation_urls
from tests.twin.services.volume import urls as volume_urls

LOG = logging.getLogger(__name__)
SERVICES = (
    compute_urls,
    network_urls,
    image_urls,
    volume_urls,
    reservation_urls,
    # CHI@TACC: its Swift's prefix lies under its Keystone's, so Swift is matched first.
    object_store_urls,
    chi_tacc_urls,
    identity_urls,
)
ADMIN_PREFIX = "/_twin"


def service_of(path: str) -> Any:
    """The urls module of the service a path belongs to (identity for anything unprefixed)."""
    for module in SERVICES:
        if module.PREFIX and (path == module.PREFIX or path.startswith(module.PREFIX + "/")):
            return module
    return identity_urls


# --- faults ------------------------------------------------------------------------------------


class Faults:
    """Failures and delays to inject into the next calls matching a method and a path, and
    kills: every process of a session (a `pulumi` CLI started in a session of its own, its
    language host and plugins, which the CLI starts in process groups of their own) sent a
    signal right after the call it matches was answered with success, as a closed laptop
    ends a `pulumi up` after the cloud accepted a request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[dict[str, Any]] = []
        self._sequence = 0

    def add(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        known = {
            "method", "path", "count", "status", "body", "headers", "delay", "kill", "signal",
            "unanswered",
        }  # fmt: skip
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown fault fields {sorted(unknown)}")
        method = str(spec.get("method", "*")).upper()
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError(
                "a fault needs `path`, a regular expression matched against the whole path"
            )
        try:
            re.compile(path)
        except re.error as error:
            raise ValueError(f"path {path!r} is not a regular expression: {error}") from None
        count = spec.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be a whole number >= 1, not {count!r}")
        status = spec.get("status")
        delay = spec.get("delay", 0)
        kill = spec.get("kill")
        signum = spec.get("signal", signal.SIGKILL)
        unanswered = spec.get("unanswered", False)
        if not isinstance(unanswered, bool):
            raise ValueError(f"unanswered must be true or false, not {unanswered!r}")
        if unanswered and kill is None:
            raise ValueError("`unanswered` goes with `kill`: whom the answer never reaches")
        if kill is not None:
            if status is not None or delay:
                raise ValueError("a kill answers the call as usual: no `status` or `delay`")
            if not isinstance(kill, int) or isinstance(kill, bool) or kill <= 1:
                raise ValueError(f"kill must be a session id (> 1), not {kill!r}")
            if signum not in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                raise ValueError(f"signal must be 9, 15 or 2, not {signum!r}")
        elif status is None and not delay:
            raise ValueError(
                "a fault needs `status` (a failure), `delay` (seconds), both, or `kill`"
            )
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ValueError(f"status must be an HTTP error status (400-599), not {status!r}")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 600:
            raise ValueError(f"delay must be 0 to 600 seconds, not {delay!r}")
        headers = spec.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError("headers must be a JSON object")
        with self._lock:
            self._sequence += 1
            fault = {
                "id": self._sequence,
                "method": method,
                "path": path,
                "count": count,
                "status": status,
                "body": spec.get("body"),
                "headers": {str(key): str(value) for key, value in headers.items()},
                "delay": delay,
                "kill": kill,
                "signal": int(signum) if kill is not None else None,
                "unanswered": unanswered,
            }
            self._faults.append(fault)
            return dict(fault)

    def take(self, method: str, path: str, *, kills: bool = False) -> dict[str, Any] | None:
        """The next fault for this call: a failure or delay before it is served, or (with
        `kills`) a kill after it was answered."""
        with self._lock:
            for fault in self._faults:
                if (fault["kill"] is not None) != kills:
                    continue
                if fault["method"] in ("*", method) and re.fullmatch(fault["path"], path):
                    fault["count"] -= 1
                    if fault["count"] == 0:
                        self._faults.remove(fault)
                    return dict(fault)
        return None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(fault) for fault in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()


def _kill(session: int, signum: int) -> None:
    """Signal every process of the session (proc(5): the sixth field of /proc/PID/stat)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name (field 2) is in parentheses and may hold spaces.
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signum)


# --- the admin API --------------------------------------------------------------------------


def _admin_error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def admin_blueprint(cloud: Cloud, faults: Faults) -> Blueprint:
    admin = Blueprint("admin", __name__)

    @admin.get("/state")
    def state() -> Response:
        since = request.args.get("since", "0")
        if not since.isdigit():
            return _admin_error(400, f"since must be an event number, not {since!r}")
        with cloud.state.lock:
            network = cloud.network
            body = {
                "servers": list(cloud.compute.servers.values()),
                "volumes": [
                    {**volume, "disk": str(cloud.volume.disk(volume["id"]))}
                    for volume in cloud.volume.volumes.values()
                ],
                "ports": [
                    {**port, "status": network.port_status(port)} for port in network.ports.values()
                ],
                "floatingips": [
                    {**floatingip, "status": network.floatingip_status(floatingip)}
                    for floatingip in network.floatingips.values()
                ],
                "security_groups": [
                    {**group, "rules": network.rules_of(group["id"])}
                    for group in network.security_groups.values()
                ],
                "networks": list(network.networks.values()),
                "keypairs": list(cloud.compute.keypairs.values()),
                "leases": list(cloud.reservation.leases.values()),
                "exposures": dict(network.exposures),
                "config": dict(cloud.config),
                "project_id": cloud.identity.project_id,
                "user_id": cloud.identity.user_id,
                # CHI@TACC: its project, and every token its Keystone issued (tests look for
                # where the object store's tokens went).
                "chi_tacc_project_id": cloud.chi_tacc_identity.project_id,
                "chi_tacc_tokens": cloud.chi_tacc_identity.issued(),
                "events": cloud.state.events_since(int(since)),
            }
            return json_response(body)

    @admin.get("/events")
    def events() -> Response:
        since = request.args.get("since", "0")
        if not since.isdigit():
            return _admin_error(400, f"since must be an event number, not {since!r}")
        return json_response({"events": cloud.state.events_since(int(since))})

    @admin.post("/servers/<server_id>/vanish")
    def vanish(server_id: str) -> Response:
        with cloud.state.lock:
            server = cloud.compute.servers.get(server_id)
            if server is None:
                return _admin_error(404, f"no server {server_id}")
            cloud.record("admin", action="vanish", server_id=server_id)
            cloud.compute.delete_server(server, reason="vanish")
        if not cloud.jobs.wait(server_id, timeout=300):
            return _admin_error(504, f"server {server_id} was still being removed after 300 s")
        with cloud.state.lock:
            gone = server_id not in cloud.compute.servers
        if not gone:
            return _admin_error(500, f"server {server_id} could not be removed: see the event log")
        return json_response({"vanished": server_id})

    @admin.post("/servers/<server_id>/host-keys")
    def host_keys(server_id: str) -> Response:
        """{"forged": true}: the server's console (os-getConsoleOutput) shows other host keys
        than its guest has, freshly made; {"forged": ["ssh-ed25519 AAAA...", ...]}: those
        public keys; {"forged": false}: its own again."""
        spec = request.get_json(silent=True)
        forged = spec.get("forged") if isinstance(spec, dict) and set(spec) == {"forged"} else None
        keys_given = isinstance(forged, list) and all(
            isinstance(key, str) and len(key.split()) >= 2 and "\n" not in key for key in forged
        )
        if not isinstance(forged, bool) and not keys_given:
            return _admin_error(
                400, 'send {"forged": true}, {"forged": false} or {"forged": [public keys]}'
            )
        with cloud.state.lock:
            server = cloud.compute.servers.get(server_id)
            if server is None:
                return _admin_error(404, f"no server {server_id}")
            keys = cloud.compute.forge_host_keys(server, forged)
            cloud.record("admin", action="host_keys", server_id=server_id, forged=bool(forged))
            cloud.save()
            return json_response({"server_id": server_id, "forged_host_keys": keys})

    @admin.post("/leases/<lease_id>/end")
    def end_lease(lease_id: str) -> Response:
        from tests.twin.services.reservation.models import SERVER_DELETION_SECONDS

        with cloud.state.lock:
            lease = cloud.reservation.leases.get(lease_id)
            if lease is None:
                return _admin_error(404, f"no lease {lease_id}")
            # What the end_lease event does at the end date, now: it runs only on a lease
            # that has started (blazar/status.py: TERMINATING comes from ACTIVE or ERROR).
            ended = cloud.reservation.event(lease, "end_lease")["status"] != "UNDONE"
            if lease["status"] not in ("ACTIVE", "ERROR") or ended:
                return _admin_error(
                    409,
                    f"lease {lease_id} is {lease['status']}: it has not started, or it has "
                    "ended or is ending",
                )
            cloud.record("admin", action="end_lease", lease_id=lease_id)
            key = cloud.reservation.end(lease, reason="ended through the admin API")
            cloud.save()
        if not cloud.jobs.wait(key, timeout=SERVER_DELETION_SECONDS + 60):
            return _admin_error(504, f"lease {lease_id} was still ending after the timeout")
        with cloud.state.lock:
            return json_response({"lease": lease})

    @admin.route("/faults", methods=["GET", "POST", "DELETE"])
    def fault_list() -> Response:
        if request.method == "GET":
            return json_response({"faults": faults.list()})
        if request.method == "DELETE":
            faults.clear()
            return Response(status=204)
        try:
            fault = faults.add(request.get_json(silent=True))
        except ValueError as error:
            return _admin_error(400, str(error))
        cloud.record("admin", action="fault", fault=fault)
        return json_response({"fault": fault}, 201)

    @admin.post("/volumes")
    def premade_volume() -> Response:
        from pathlib import Path

        from tests.twin.services.volume.responses import MAXIMUM, render

        spec = request.get_json(silent=True)
        if not isinstance(spec, dict):
            return _admin_error(
                400, "send a JSON object: {name, image, size?, description?, metadata?}"
            )
        unknown = set(spec) - {"name", "image", "size", "description", "metadata"}
        if unknown:
            return _admin_error(400, f"unknown fields {sorted(unknown)}")
        name, image = spec.get("name"), spec.get("image")
        if not isinstance(name, str) or not name:
            return _admin_error(400, "name: the volume's name is required")
        if not isinstance(image, str) or not Path(image).is_file():
            return _admin_error(400, f"image: {image!r} is not a file (a raw disk image is needed)")
        size = spec.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            return _admin_error(400, f"size must be a whole number of GiB >= 1, not {size!r}")
        metadata = spec.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
        ):
            return _admin_error(400, "metadata must map strings to strings")
        try:
            disk, size = cloud.volume.premade_disk(Path(image), size)
        except (ValueError, OSError) as error:
            return _admin_error(400, str(error))
        with cloud.state.lock:
            attributes = {
                "name": name,
                "description": spec.get("description"),
                "metadata": metadata,
            }
            volume = cloud.volume.premake(attributes, disk, size)
            cloud.record("admin", action="premade_volume", volume_id=volume["id"], image=image)
            cloud.save()
            return json_response({"volume": render(volume, MAXIMUM)}, 201)

    @admin.post("/keypairs")
    def keypair() -> Response:
        spec = request.get_json(silent=True)
        if not isinstance(spec, dict) or set(spec) - {"name", "public_key"}:
            return _admin_error(400, "send a JSON object: {name, public_key}")
        name, public_key = spec.get("name"), spec.get("public_key")
        if not isinstance(name, str) or not name or not isinstance(public_key, str):
            return _admin_error(400, "name and public_key (an OpenSSH public key) are required")
        with cloud.state.lock:
            try:
                created = cloud.compute.create_keypair(name, public_key)
            except ServiceError as error:
                return _admin_error(error.status, error.message)
            cloud.record("admin", action="keypair", name=name)
            cloud.save()
            return json_response({"keypair": created}, 201)

    @admin.route("/config", methods=["GET", "POST"])
    def config() -> Response:
        with cloud.state.lock:
            if request.method == "POST":
                changes = request.get_json(silent=True)
                if not isinstance(changes, dict):
                    return _admin_error(400, "send a JSON object of settings to change")
                try:
                    updated = checked_config(cloud.config, changes)
                except ConfigError as error:
                    return _admin_error(400, str(error))
                cloud.config.update(updated)
                cloud.record("admin", action="config", changes=changes)
                cloud.network.sync_exposures()
                cloud.save()
            return json_response({"config": dict(cloud.config)})

    return admin


# --- the application ------------------------------------------------------------------------


def create_app(cloud: Cloud) -> Flask:
    # No static folder: Flask would otherwise serve GET /static/<path> in Keystone's namespace.
    app = Flask("tests.twin", static_folder=None)
    app.config["TWIN_CLOUD"] = cloud
    app.url_map.strict_slashes = False
    faults = Faults()
    app.config["TWIN_FAULTS"] = faults
    for module in SERVICES:
        app.register_blueprint(module.blueprint, url_prefix=module.PREFIX or None)
    app.register_blueprint(admin_blueprint(cloud, faults), url_prefix=ADMIN_PREFIX)

    @app.before_request
    def enter() -> None:
        g.twin_started = time.monotonic()
        g.twin_locked = False
        if request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/"):
            return
        module = service_of(request.path)
        fault = faults.take(request.method, request.path)
        if fault is not None:
            cloud.record(
                "fault",
                method=request.method,
                path=request.path,
                status=fault["status"],
                delay=fault["delay"],
            )
            if fault["delay"]:
                time.sleep(fault["delay"])
            if fault["status"] is not None:
                raise RawError(fault["status"], fault["body"], fault["headers"])
        if module.AUTHENTICATED and request.endpoint not in module.UNAUTHENTICATED_ENDPOINTS:
            # A service of another site (CHI@TACC's Swift) takes that site's tokens, and
            # refuses in its own words.
            identity = module.identity(cloud) if hasattr(module, "identity") else cloud.identity
            with cloud.state.lock:
                token = identity.token(request.headers.get("X-Auth-Token"))
            if token is None or token["project_id"] is None:
                if hasattr(module, "unauthenticated"):
                    raise module.unauthenticated()
                raise Unauthenticated(f"{base_url()}/v3")
            g.twin_token = token
        cloud.state.lock.acquire()
        g.twin_locked = True

    @app.after_request
    def leave(response: Response) -> Response:
        if request.path != ADMIN_PREFIX and not request.path.startswith(ADMIN_PREFIX + "/"):
            cloud.record(
                "api",
                service=service_of(request.path).SERVICE,
                method=request.method,
                path=request.path,
                query=request.query_string.decode(errors="replace"),
                status=response.status_code,
                seconds=round(time.monotonic() - g.get("twin_started", time.monotonic()), 4),
                agent=request.headers.get("User-Agent", ""),
            )
            if request.method not in ("GET", "HEAD") and g.get("twin_locked"):
                cloud.state.save()
            kill = None
            if response.status_code < 400:
                kill = faults.take(request.method, request.path, kills=True)
            if kill is not None:
                cloud.record("fault", method=request.method, path=request.path, kill=kill["kill"])
                if kill["unanswered"]:
                    # The cloud did the call, and the caller is gone before a byte of the
                    # answer is written: it never learns (a lid closed with the call in flight).
                    _kill(kill["kill"], kill["signal"])
                else:
                    # After the whole answer has gone out: the caller saw the cloud accept.
                    response.call_on_close(functools.partial(_kill, kill["kill"], kill["signal"]))
        return response

    @app.teardown_request
    def release(_error: BaseException | None) -> None:
        if g.get("twin_locked"):
            g.twin_locked = False
            cloud.state.lock.release()

    @app.errorhandler(ServiceError)
    def service_error(error: ServiceError) -> Response:
        return error.response()

    @app.errorhandler(HTTPException)
    def unserved(error: HTTPException) -> Response:
        module = service_of(request.path)
        if request.path.startswith(ADMIN_PREFIX):
            return _admin_error(
                error.code or 500, f"the twin's admin API has no {request.method} {request.path}"
            )
        if isinstance(error, MethodNotAllowed):
            allowed = ", ".join(sorted(error.valid_methods or []))
            return module.unserved(
                405,
                f"The method {request.method} is not allowed for {request.path}: the twin "
                f"serves {allowed} there.",
            ).response()
        if isinstance(error, NotFound):
            return module.unserved(
                404,
                f"The resource could not be found. The twin does not serve {request.method} "
                f"{request.path}.",
            ).response()
        return module.unserved(error.code or 500, f"{error.name}: {error.description}").response()

    @app.errorhandler(Exception)
    def crashed(error: Exception) -> Response:
        LOG.error("%s %s failed:\n%s", request.method, request.path, traceback.format_exc())
        cloud.record(
            "error",
            method=request.method,
            path=request.path,
            detail=f"{type(error).__name__}: {error}",
        )
        module = service_of(request.path)
        return module.unserved(
            500,
            f"The twin failed on {request.method} {request.path}: {type(error).__name__}: {error}",
        ).response()

    return app
