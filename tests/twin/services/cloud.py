"""One twin: the services' backends over one state, the machine driver, and what moves in time.

Like moto's backends, each service's model (identity, image, network, volume,
compute, reservation) is a plain object reached as `cloud.<service>`; they call each other
directly, never over HTTP. Work that waits on the machine driver (boot, stop,
attach, detach, resize, delete, port forwarding) runs in `Jobs`, one queue per
key so a server's actions happen in the order they were asked; a job calls the
driver outside the state lock and takes the lock only to record the outcome.
`Clock` advances what changes over time (BUILD to ACTIVE when the guest runs,
power state sync, leases that start or end) a few times a second.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.twin.services.chi_tacc.models import ChiTaccIdentity
from tests.twin.services.compute.models import ComputeBackend
from tests.twin.services.identity.models import IdentityBackend
from tests.twin.services.image.models import ImageBackend
from tests.twin.services.machines import MachineDriver, create_machines
from tests.twin.services.network.models import NetworkBackend
from tests.twin.services.object_store.models import ObjectStoreBackend
from tests.twin.services.reservation.models import ReservationBackend
from tests.twin.services.state import State
from tests.twin.services.volume.models import VolumeBackend

LOG = logging.getLogger(__name__)

DEFAULT_CONFIG: dict[str, Any] = {
    # Extending an attached volume (Cinder microversion 3.42): "allowed" (Cinder's default
    # policy, and backends such as Ceph RBD support it), "forbidden" (the
    # extend_attached_volume policy refuses it, 403), or "unsupported" (accepted, then the
    # backend fails it: status error_extending).
    "online_extend": "allowed",
    # Every os-extend finds no backend with room: Cinder's scheduler puts the volume back to
    # its old status at its old size and leaves only a user message (GET /messages).
    "extend_no_valid_backend": False,
    # Nova's handling of Cinder's volume-extended event: how long after Cinder has set the
    # new size it grows the guest's disk, and whether that fails (then it is only logged).
    "guest_extend_seconds": 0.0,
    "guest_extend_fails": False,
    # How long Cinder takes to make and to delete a volume.
    "volume_create_seconds": 0.3,
    "volume_delete_seconds": 0.2,
    # The project's quotas, named after each service's own option, with its default
    # (-1: unlimited). Nova [quota] instances, cores, ram (MiB); Neutron [QUOTAS]
    # quota_security_group, quota_security_group_rule, quota_floatingip, quota_port;
    # Cinder quota_volumes, quota_gigabytes.
    "quota_instances": 10,
    "quota_cores": 20,
    "quota_ram": 50 * 1024,
    "quota_security_group": 10,
    "quota_security_group_rule": 100,
    "quota_floatingip": 50,
    "quota_port": 500,
    "quota_volumes": 10,
    "quota_gigabytes": 1000,
    # CHI@TACC's Swift: the account's quota in bytes, as X-Account-Meta-Quota-Bytes set by the
    # operator (swift/common/middleware/account_quotas.py); -1: none.
    "quota_object_store_bytes": -1,
    # The guest ports a floating IP reaches, when the port's security groups allow them
    # to a client at `client_address` (whoever connects to a floating IP here comes from
    # the loopback interface).
    "exposed_ports": [22, 8000, 8888, 9000, 9001],
    "client_address": "127.0.0.1",
    # Keystone's [token] expiration.
    "token_seconds": 3600,
    # Whether the application credential in DIR/clouds.yaml is unrestricted: a Keystone
    # without CVE-2026-43000's fix lets only such a credential make the trust Blazar needs to
    # create a lease (keystone/api/trusts.py, TrustResourceBase._check_unrestricted).
    "application_credential_unrestricted": True,
    # A Keystone with CVE-2026-43000's fix: every token of an application credential,
    # unrestricted or not, is refused every trust operation (keystone/api/trusts.py,
    # _check_application_credential), so Blazar cannot make a lease with one.
    "keystone_refuses_application_credential_trusts": False,
    # How many instances of one flavor can be reserved at any one time; beyond it Blazar
    # answers "Not enough hosts available".
    "lease_capacity": 4,
    # How long after its start date a lease becomes ACTIVE (Blazar's event loop and the
    # reservation's start).
    "lease_start_seconds": 0.5,
    # The next lease created goes to ERROR at its start (then this turns false again).
    "next_lease_error": False,
    # How long Blazar's API waits for its manager's answer (oslo.messaging's
    # rpc_response_timeout): a DELETE whose manager takes longer is answered 500 while the
    # manager goes on deleting.
    "blazar_rpc_timeout_seconds": 60,
    # How long Nova takes to delete the servers on a lease's flavor at its end or delete,
    # beyond the machine driver's own time.
    "lease_server_deletion_seconds": 0,
}
CONFIG_CHOICES = {
    "online_extend": ("allowed", "forbidden", "unsupported"),
}
TICK_SECONDS = 0.1


class ConfigError(ValueError):
    pass


def checked_config(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`current` with `changes` applied, each key and value checked."""
    updated = dict(current)
    for key, value in changes.items():
        if key not in DEFAULT_CONFIG:
            raise ConfigError(
                f"unknown twin setting {key!r}; the settings are "
                + ", ".join(sorted(DEFAULT_CONFIG))
            )
        default = DEFAULT_CONFIG[key]
        if key in CONFIG_CHOICES and value not in CONFIG_CHOICES[key]:
            raise ConfigError(
                f"{key} must be one of {', '.join(CONFIG_CHOICES[key])}, not {value!r}"
            )
        if key == "client_address":
            try:
                ipaddress.IPv4Address(value)
            except (ipaddress.AddressValueError, ValueError, TypeError):
                raise ConfigError(f"{key} must be an IPv4 address, not {value!r}") from None
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} must be true or false, not {value!r}")
        elif key.startswith("quota_"):
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ConfigError(f"{key} must be a whole number >= 0, or -1 for no limit")
        elif key == "lease_capacity":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key} must be a whole number of instances >= 0, not {value!r}")
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(
                isinstance(port, int) and 0 < port < 65536 for port in value
            ):
                raise ConfigError(f"{key} must be a list of TCP ports, not {value!r}")
        elif isinstance(default, (int, float)) and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            raise ConfigError(f"{key} must be a number of seconds >= 0, not {value!r}")
        updated[key] = value
    return updated


class Jobs:
    """Background work, one ordered queue per key, each queue on its own thread."""

    def __init__(self, on_error: Callable[[str, BaseException], None]) -> None:
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._on_error = on_error
        self._closed = False

    def submit(self, key: str, work: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()
                threading.Thread(
                    target=self._run, args=(key,), daemon=True, name=f"job-{key}"
                ).start()
            queue.append(work)

    def _run(self, key: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[key]
                if not queue or self._closed:
                    del self._queues[key]
                    self._idle.notify_all()
                    return
                work = queue.popleft()
            try:
                work()
            except Exception as error:
                self._on_error(key, error)

    def busy(self, key: str) -> bool:
        with self._lock:
            return key in self._queues

    def wait(self, key: str | None = None, timeout: float = 60.0) -> bool:
        """Wait until the queue of `key` (or every queue) is empty; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (key in self._queues) if key is not None else self._queues:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
            return True

    def close(self, timeout: float) -> None:
        self.wait(timeout=timeout)
        with self._lock:
            self._closed = True


class Cloud:
    """Every backend of one twin, sharing one `State` and one machine driver."""

    def __init__(
        self, state: State, machines: str = "qemu", driver: MachineDriver | None = None
    ) -> None:
        self.state = state
        stored = state.data.setdefault("config", {})
        self.config: dict[str, Any] = {**DEFAULT_CONFIG, **stored}
        state.data["config"] = self.config
        self.jobs = Jobs(self._job_failed)
        self.driver: Any = driver or create_machines(machines, state.directory, self._vm_event)
        self.identity = IdentityBackend(self)
        self.image = ImageBackend(self)
        self.network = NetworkBackend(self)
        self.volume = VolumeBackend(self)
        self.compute = ComputeBackend(self)
        self.reservation = ReservationBackend(self)
        # CHI@TACC, a second site: its own Keystone, and its Swift.
        self.chi_tacc_identity = ChiTaccIdentity(self)
        self.object_store = ObjectStoreBackend(self)
        with state.lock:
            if state.fresh:
                for backend in self.backends:
                    backend.seed()
            else:
                for backend in self.backends:
                    backend.recover()
            state.save()
        self._stop = threading.Event()
        self._clock = threading.Thread(target=self._run_clock, daemon=True, name="twin-clock")

    @property
    def backends(self) -> tuple[Any, ...]:
        return (
            self.identity,
            self.image,
            self.network,
            self.volume,
            self.compute,
            self.reservation,
            self.chi_tacc_identity,
            self.object_store,
        )

    @property
    def directory(self) -> Path:
        return self.state.directory

    def start(self) -> None:
        self._clock.start()

    def close(self, timeout: float = 120.0) -> None:
        """Stop the clock, let queued jobs finish, then stop every VM."""
        self._stop.set()
        if self._clock.is_alive():
            self._clock.join(timeout=5)
        self.jobs.close(timeout)
        try:
            self.driver.shutdown_all()
        finally:
            self.record("vm", action="shutdown_all", detail="the twin is stopping")
            with self.state.lock:
                self.state.save()

    # --- events ------------------------------------------------------------------------

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.state.record(kind, **fields)

    def _vm_event(self, server_id: str, action: str, detail: str) -> None:
        self.record("vm", server_id=server_id, action=action, detail=detail)

    def _job_failed(self, key: str, error: BaseException) -> None:
        LOG.error("job %s failed: %s", key, "".join(traceback.format_exception(error)))
        self.record("error", job=key, detail=f"{type(error).__name__}: {error}")

    def call_driver(self, action: str, server_id: str, *args: Any, **kwargs: Any) -> str | None:
        """Call the driver outside the state lock; None on success, else the error's text."""
        started = time.monotonic()
        try:
            getattr(self.driver, action)(server_id, *args, **kwargs)
        except Exception as error:
            detail = f"{type(error).__name__}: {error}"
            self.record(
                "driver",
                call=action,
                server_id=server_id,
                outcome="error",
                detail=detail,
                seconds=round(time.monotonic() - started, 3),
            )
            return detail
        self.record(
            "driver",
            call=action,
            server_id=server_id,
            outcome="ok",
            seconds=round(time.monotonic() - started, 3),
        )
        return None

    def driver_state(self, server_id: str) -> str:
        try:
            return self.driver.state(server_id)
        except Exception as error:
            self.record(
                "driver", call="state", server_id=server_id, outcome="error", detail=str(error)
            )
            return "error"

    # --- time ----------------------------------------------------------------------------

    def _run_clock(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception as error:
                self._job_failed("clock", error)

    def tick(self) -> None:
        self.compute.tick()
        self.reservation.tick()

    def save(self) -> None:
        with self.state.lock:
            self.state.save()
