"""The stack's own KVM@TACC lease: one Blazar lease of one reserved flavor, as a Pulumi resource.
Over 500 lines: the provider is one class, which existing states hold a pickle of by this
module and name, so its create, read, diff, update and delete cannot move apart."""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pulumi
import pulumi.dynamic

from components.blazar import (
    ACTIVE,
    ENDED_STATUSES,
    ERROR,
    NO_CAPACITY,
    Blazar,
    BlazarLease,
    LeaseError,
    delete_until_gone,
    iso_utc,
    moment_text,
    parse_blazar_date,
    serving_leases,
    utc_now,
)
from components.openstack_api import Response
from components.settings import (
    DEFAULT_LEASE_RENEW_WINDOW,
    Problem,
    format_duration,
    parse_duration,
)

# Names other modules and existing code import from here.
__all__ = [
    "ACTIVE",
    "ENDED_STATUSES",
    "ERROR",
    "Blazar",
    "BlazarLease",
    "Lease",
    "LeaseArgs",
    "LeaseError",
    "LeaseProvider",
    "iso_utc",
    "parse_blazar_date",
    "utc_now",
]

# A lease asked to start "now" is started by Blazar's periodic event task, usually within a
# minute or two; this is how long `pulumi up` waits for ACTIVE before giving up.
ACTIVE_TIMEOUT_SECONDS = 600
# How long a deleted lease may take to disappear: Blazar ends it first, and its manager waits
# up to 10 minutes for the servers on its flavor to go
# (blazar/plugins/instances/instance_plugin.py, _check_server_deletion).
DELETE_TIMEOUT_SECONDS = 900
POLL_SECONDS = 5.0
DEFAULT_RENEW_WINDOW_SECONDS = parse_duration(DEFAULT_LEASE_RENEW_WINDOW) or 0
# The lease's own inputs; a change of any of them is recorded (applies to the next lease),
# and only a new flavor asks for a new lease now.
INPUTS = (
    "name",
    "flavor_name",
    "duration_seconds",
    "lease_duration",
    "renew_window_seconds",
    "cloud",
)
# What an input missing from a state made before it existed means.
INPUT_DEFAULTS: dict[str, Any] = {"renew_window_seconds": DEFAULT_RENEW_WINDOW_SECONDS, "cloud": ""}
# Horizon's steps for a lease of one's own (Chameleon docs, technical/kvm/kvm_gui.rst).
HORIZON_LEASE_STEPS = (
    "in KVM@TACC's Horizon (https://kvm.tacc.chameleoncloud.org, which logs in with your "
    "Chameleon account), Project > Reservations > Leases > Create Lease: a Lease Name, its "
    "end, and in the flavor tab the flavor {flavor}; Create. When it is ACTIVE, its "
    "reservation's id (Horizon shows the flavor as reservation:<id>) is the flavor id: "
    "`pulumi config set chi-persist:reservation <id>`, then `pulumi up`. The stack then makes "
    "no lease, and renewing yours is up to you"
)

F = TypeVar("F", bound=Callable[..., Any])


def _user_errors(method: F) -> F:
    """Report a LeaseError as its message alone, without a Python traceback.

    The provider process renders any exception with `traceback.format_exc()`, which
    honours `sys.tracebacklimit`: 0 leaves only the exception's line.
    """

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        sys.__dict__.pop("tracebacklimit", None)
        try:
            return method(*args, **kwargs)
        except LeaseError:
            sys.tracebacklimit = 0
            raise

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper  # type: ignore[return-value]


def _input(props: dict[str, Any], key: str) -> Any:
    value = props.get(key)
    return INPUT_DEFAULTS.get(key) if value is None else value


def _window(props: dict[str, Any]) -> int:
    return int(_input(props, "renew_window_seconds"))


def _duration_of(props: dict[str, Any]) -> str:
    return props.get("lease_duration") or format_duration(int(props["duration_seconds"]))


# --- the provider ----------------------------------------------------------------------------


# A dynamic resource: this provider (which existing states hold a pickle of, by reference to
# this module and name) is serialised with the program and runs in the engine's Python
# provider process. Blazar is reached through components/blazar.py.
class LeaseProvider(pulumi.dynamic.ResourceProvider):
    """Create, read, diff, update (record) and delete a Blazar lease of one reserved flavor."""

    def __init__(
        self,
        stack: str = "<stack>",
        active_timeout_seconds: float = ACTIVE_TIMEOUT_SECONDS,
        delete_timeout_seconds: float = DELETE_TIMEOUT_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        # These four attributes are what a pickled provider in an existing state holds: a
        # new one needs a default here, not in __init__ alone.
        super().__init__()
        self.stack = stack
        self.active_timeout_seconds = active_timeout_seconds
        self.delete_timeout_seconds = delete_timeout_seconds
        self.poll_seconds = poll_seconds

    def client(self, props: dict[str, Any]) -> Blazar:
        """Blazar with the lease's own clouds.yaml entry (leaseCloud), else the stack's."""
        return Blazar(cloud=_input(props, "cloud") or None)

    # --- create ----------------------------------------------------------------------------

    @_user_errors
    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        client = self.client(props)
        adopted = self._adopt(client, props)
        if adopted is not None:
            return pulumi.dynamic.CreateResult(adopted.id, self._outputs(adopted, props))
        flavor_id = client.flavor_id(props["flavor_name"])
        end = utc_now() + datetime.timedelta(seconds=int(props["duration_seconds"]))
        answer = client.create_lease(props["name"], flavor_id, end)
        if answer.status not in (200, 201) or "lease" not in answer.body:
            raise self._create_refused(client, answer, props)
        lease = self._wait_until_active(client, BlazarLease.from_body(answer.body["lease"]), props)
        return pulumi.dynamic.CreateResult(lease.id, self._outputs(lease, props))

    def _adopt(self, client: Blazar, props: dict[str, Any]) -> BlazarLease | None:
        """The lease named by `adopt_lease_id`, taken over instead of making one, when it still
        serves or is starting; None (a new lease is made) when it is gone or has ended."""
        lease_id = props.get("adopt_lease_id")
        if not lease_id:
            return None
        lease = client.get_lease(lease_id)
        now = utc_now()
        if lease is None or lease.ended_because(now) is not None:
            why = "Blazar no longer has it" if lease is None else lease.ended_because(now)
            pulumi.log.info(f"lease {lease_id} is not taken over ({why}): a new lease is made")
            return None
        pulumi.log.info(f"lease {lease_id} ({lease.name}, {lease.status}) is taken over")
        if lease.serves(now):
            return lease
        return self._wait_until_active(client, lease, props)

    def _create_refused(
        self, client: Blazar, answer: Response, props: dict[str, Any]
    ) -> LeaseError:
        message = answer.error_message
        what = (
            f"KVM@TACC refused the lease {props['name']} of flavor {props['flavor_name']!r} "
            f"for {_duration_of(props)}"
        )
        if NO_CAPACITY.lower() in message.lower():
            return LeaseError(f"{what}: no capacity (HTTP {answer.status}: {message}). "
                              + self._no_capacity_advice(client, props))  # fmt: skip
        credential = client.application_credential()
        if credential and answer.status in (401, 403, 500):
            refusal = client.trust_refusal()
            if refusal is not None:
                return LeaseError(self._trust_refused(client, what, answer, refusal, props))
        mentions_trust = "trust" in message.lower() or "application_credential" in message
        if credential.get("restricted") and (answer.status in (401, 403, 500) or mentions_trust):
            name = credential.get("name") or credential.get("id") or "in use"
            return LeaseError(
                f"{what}: Blazar could not make the trust it needs, because the application "
                f"credential {name!r} is restricted (HTTP {answer.status}: {message}). A "
                f"restricted credential may not create trusts. Fix: create an unrestricted "
                f"one (Horizon: Identity > Application Credentials > Create, tick "
                f"'Unrestricted'; or `openstack application credential create --unrestricted "
                f"<name>`), put it in clouds.yaml or your openrc file, and `pulumi up` again"
            )
        if mentions_trust:
            return LeaseError(
                f"{what}: Blazar could not make the trust it needs (HTTP {answer.status}: "
                f"{message}). Fix: use an unrestricted application credential (Horizon: "
                f"Identity > Application Credentials > Create, tick 'Unrestricted'), or a "
                f"login of your own for the lease (chi-persist:leaseCloud, see the README's "
                f"Leases section)"
            )
        return LeaseError(
            f"{what} (HTTP {answer.status}: {message}). Fix: correct what Blazar names, "
            f"or `pulumi up` again; the stack made no lease"
        )

    def _no_capacity_advice(self, client: Blazar, props: dict[str, Any]) -> str:
        """What to do when no host can hold the lease; a lease of this stack that still serves
        (a renewal's predecessor) keeps its server until its end."""
        try:
            current = serving_leases(client.list_leases(), props["name"], utc_now())
        except LeaseError:
            current = []
        if current:
            lease = max(current, key=lambda each: each.end)
            return (
                f"Every host that can run that flavor is reserved for that time, so the next "
                f"lease could not be made yet. Nothing was stopped: lease {lease.id} still "
                f"serves, and the server keeps running until it ends at "
                f"{moment_text(lease.end)}; then Blazar deletes the server (the volume and its "
                f"data stay). Fix: `pulumi up` again later, before that end (every `pulumi up` "
                f"in the last {format_duration(_window(props))} tries again); or a shorter "
                f"lease (`pulumi config set chi-persist:leaseDuration 4h`) or another flavor "
                f"(`pulumi config set chi-persist:flavor m1.medium`); or let it end: the "
                f"`pulumi up` after the end makes a new lease and server"
            )
        return (
            "Every host that can run that flavor is reserved for that time. Fix: a shorter "
            "lease (`pulumi config set chi-persist:leaseDuration 4h`), another flavor "
            "(`pulumi config set chi-persist:flavor m1.medium`), or `pulumi up` later"
        )

    def _trust_refused(
        self, client: Blazar, what: str, answer: Response, refusal: str, props: dict[str, Any]
    ) -> str:
        credential = client.application_credential()
        name = credential.get("name") or credential.get("id")
        _, project_id = client.identity()
        auth_url = getattr(client.api.session.auth, "auth_url", None) or "<your auth_url>"
        return (
            f"{what}: Blazar makes a Keystone trust with your token for every lease, and this "
            f"site's Keystone refuses trusts to application credentials, unrestricted or not "
            f"(the fix of CVE-2026-43000). The stack logs in with the application credential "
            f"{name!r}; Blazar answered HTTP {answer.status} ({answer.error_message}), and "
            f"Keystone, asked the same way, says: {refusal} No lease was made. Two ways out: "
            f"(1) give the lease a login of your own, used for nothing else: a clouds.yaml "
            f"entry that logs in with your Chameleon account, as Chameleon's ccauth writes it: "
            f"`venv/bin/pip install ccauth` (the project's virtual environment, which runs the "
            f"lease), `venv/bin/ccauth clouds-yaml --auth-url {auth_url} --region-name KVM@TACC "
            f"--project-id {project_id or '<your project id>'} --cloud-name kvm-lease --output "
            f"~/.config/openstack/clouds.yaml --force` (it adds the entry and keeps the others, "
            f"and asks you to log in once in your browser), then `pulumi config set "
            f"chi-persist:leaseCloud kvm-lease` and `pulumi up`; "
            f"(2) make the lease yourself: "
            + HORIZON_LEASE_STEPS.format(flavor=props["flavor_name"])
        )

    def _wait_until_active(
        self, client: Blazar, lease: BlazarLease, props: dict[str, Any]
    ) -> BlazarLease:
        deadline = time.monotonic() + self.active_timeout_seconds
        status = lease.status
        pulumi.log.info(f"lease {props['name']} ({lease.id}): {status}")
        while True:
            now = utc_now()
            if status == ACTIVE or lease.serves(now):
                return lease
            if lease.ended_because(now) is not None:
                self._discard(client, lease.id)
                raise LeaseError(
                    f"lease {lease.id} ({props['name']}, flavor {props['flavor_name']!r}) went "
                    f"to {status} instead of ACTIVE: Blazar could not start the reservation. "
                    f"The lease was deleted, so nothing is held. Fix: `pulumi up` again; if it "
                    f"fails the same way, try another flavor "
                    f"(`pulumi config set chi-persist:flavor <name>`) or ask Chameleon's help "
                    f"desk about lease {lease.id}"
                )
            if time.monotonic() > deadline:
                self._discard(client, lease.id)
                raise LeaseError(
                    f"lease {lease.id} ({props['name']}) was still {status} after "
                    f"{self.active_timeout_seconds:.0f} s, not ACTIVE. It was deleted, so "
                    f"nothing is held. Fix: `pulumi up` again later; if it stays {status}, "
                    f"ask Chameleon's help desk about lease {lease.id}"
                )
            time.sleep(self.poll_seconds)
            current = client.get_lease(lease.id)
            if current is None:
                raise LeaseError(
                    f"lease {lease.id} ({props['name']}) disappeared while it was {status}: "
                    f"someone deleted it. Fix: `pulumi up` again makes a new one"
                )
            if current.status != status:
                status = current.status
                pulumi.log.info(f"lease {props['name']} ({lease.id}): {status}")
            lease = current

    def _discard(self, client: Blazar, lease_id: str) -> None:
        """Delete a lease that will not serve (best effort: the error that follows matters)."""
        client.request_delete(lease_id)

    def _outputs(self, lease: BlazarLease, props: dict[str, Any]) -> dict[str, Any]:
        reservations = lease.flavor_reservations
        if len(reservations) != 1:
            raise LeaseError(
                f"lease {lease.id} holds {len(reservations)} flavor:instance "
                f"reservations, not one; it is not the stack's. Fix: "
                f"`pulumi state delete` the lease and `pulumi up` again"
            )
        return {
            **{key: _input(props, key) for key in INPUTS},
            "lease_id": lease.id,
            # The reserved flavor's id is the reservation's id (flavor plugin,
            # _create_flavor: 'flavorid': reservation_id).
            "reservation_id": reservations[0]["id"],
            "status": lease.status,
            "start_date": iso_utc(lease.start),
            "end_date": iso_utc(lease.end),
        }

    # --- read ------------------------------------------------------------------------------

    @_user_errors
    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        """The live lease. On a refresh the recorded inputs stay; on an import (no inputs
        given) they are read from the lease, as the program would give them for it."""
        lease = self.client(props).get_lease(id_)
        if lease is None:
            # Gone: an empty id tells the engine the resource no longer exists.
            return pulumi.dynamic.ReadResult("", {})
        importing = not all(props.get(key) is not None for key in ("name", "flavor_name"))
        inputs = self._inputs_of(lease, props) if importing else {k: props.get(k) for k in INPUTS}
        outputs = {**props, **self._outputs(lease, inputs)}
        outputs.pop("__provider", None)
        return pulumi.dynamic.ReadResult(id_, outputs, inputs if importing else None)

    def _inputs_of(self, lease: BlazarLease, props: dict[str, Any]) -> dict[str, Any]:
        """The inputs the program gives a lease like this one: its name, the flavor it
        reserves (the reservation keeps the source flavor, flavor_plugin.py reserve_resource),
        its length, and the default renewal window and credentials."""
        import json

        reservations = lease.flavor_reservations
        flavor_name = None
        if len(reservations) == 1:
            try:
                flavor_name = json.loads(reservations[0].get("resource_properties") or "{}").get(
                    "name"
                )
            except (TypeError, ValueError):
                flavor_name = None
        seconds = int((lease.end - lease.start).total_seconds()) // 60 * 60
        return {
            "name": lease.name,
            "flavor_name": flavor_name,
            "duration_seconds": seconds,
            "lease_duration": format_duration(seconds),
            "renew_window_seconds": _window(props),
            "cloud": _input(props, "cloud"),
        }

    # --- diff ------------------------------------------------------------------------------

    @_user_errors
    def diff(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        changed = [key for key in INPUTS if _input(olds, key) != _input(news, key)]
        lease = self.client(news).get_lease(id_)
        now = utc_now()
        ended = "Blazar no longer has it" if lease is None else lease.ended_because(now)
        label = f"lease {id_} ({olds.get('name')})"
        if ended is not None:
            # Blazar has deleted the server and the flavor: the ended lease goes first, then
            # the next one comes, and its new reservation id replaces the server.
            pulumi.log.info(
                f"{label} has ended ({ended}): Blazar deleted the server on its flavor, and "
                f"the volume and its data stay. `pulumi up` deletes it, makes a new lease of "
                f"{news['flavor_name']!r} for {_duration_of(news)}, and a new server on the "
                f"same volume and address"
            )
            return pulumi.dynamic.DiffResult(
                changes=True, replaces=["status"], delete_before_replace=True
            )
        assert lease is not None
        if lease.status == ERROR:
            pulumi.log.warn(self._still_serves_in_error(label, lease, news))
        if "flavor_name" in changed:
            pulumi.log.info(
                f"chi-persist:flavor = {news['flavor_name']!r}: `pulumi up` makes a lease of it "
                f"first, then replaces the server the clean way onto it, then deletes {label}"
            )
            return pulumi.dynamic.DiffResult(
                changes=True, replaces=["flavor_name"], delete_before_replace=False
            )
        window = _window(news)
        if (
            lease.serves(now)
            and window > 0
            and lease.end - now <= datetime.timedelta(seconds=window)
        ):
            pulumi.log.info(
                f"{label} ends at {moment_text(lease.end)}, within the renewal window (the "
                f"last {format_duration(window)}): `pulumi up` renews it. It makes the next "
                f"lease of {news['flavor_name']!r} for {_duration_of(news)} first, so its "
                f"capacity is held before anything stops; then replaces the server the clean "
                f"way (the platform stopped, the volume moved to the new server, nothing "
                f"formatted, the same address); then deletes {label}"
            )
            return pulumi.dynamic.DiffResult(
                changes=True, replaces=["end_date"], delete_before_replace=False
            )
        for note in self._recorded(label, lease, olds, news, changed):
            pulumi.log.info(note)
        return pulumi.dynamic.DiffResult(
            changes=bool(changed), replaces=[], delete_before_replace=False
        )

    def _still_serves_in_error(self, label: str, lease: BlazarLease, news: dict[str, Any]) -> str:
        window = _window(news)
        renew = (
            f"`pulumi up` in the last {format_duration(window)} before that end renews it"
            if window
            else "the `pulumi up` after that end makes a new one"
        )
        return (
            f"{label} is ERROR, but its start_lease event is DONE and its end_lease event has "
            f"not run: it still serves its flavor, and the server keeps running until the "
            f"lease ends at {moment_text(lease.end)}. Blazar puts a flavor:instance lease into "
            f"ERROR when it refuses a change of it (blazar/status.py), as it refuses them all; "
            f"nothing was lost, and the stack keeps the lease. {renew}"
        )

    def _recorded(
        self,
        label: str,
        lease: BlazarLease,
        olds: dict[str, Any],
        news: dict[str, Any],
        changed: list[str],
    ) -> list[str]:
        """What `pulumi up` records without touching the lease, one line per setting."""
        notes = []
        keeps = (
            f"Blazar cannot change a flavor:instance lease, so {label} keeps it and still ends "
            f"at {moment_text(lease.end)}"
        )
        window = _window(news)
        next_lease = (
            f"the next lease (made by `pulumi up` in the last {format_duration(window)} before "
            f"that end, or after it)"
            if window
            else "the next lease (made by the `pulumi up` after that end)"
        )
        if "duration_seconds" in changed or "lease_duration" in changed:
            notes.append(
                f"chi-persist:leaseDuration = {_duration_of(news)!r} is recorded: {keeps}; "
                f"{next_lease} lasts {_duration_of(news)}"
            )
        if "name" in changed:
            notes.append(
                f"the lease name {news['name']} is recorded for {next_lease}; {label} keeps "
                f"its name"
            )
        if "renew_window_seconds" in changed:
            start = lease.end - datetime.timedelta(seconds=window)
            when = f"from {moment_text(start)}" if window else "only after the end"
            notes.append(
                f"chi-persist:leaseRenewWindow = {format_duration(window)!r} is recorded: "
                f"{label} is renewed {when}"
            )
        if "cloud" in changed:
            cloud = _input(news, "cloud")
            used = f"the clouds.yaml entry {cloud!r}" if cloud else "the stack's own credentials"
            notes.append(f"chi-persist:leaseCloud is recorded: the lease is reached with {used}")
        return notes

    # --- update ----------------------------------------------------------------------------

    # Blazar cannot change a flavor:instance lease: every update is refused and the refusal puts
    # the lease into ERROR (blazar/manager/service.py update_lease inside blazar/status.py's
    # lease_status). So nothing here ever sends one. A new name or duration is recorded and
    # applies to the next lease. The next lease comes in one of two ways:
    # - renewal: a `pulumi up` within the renewal window before the end makes the next lease
    #   first (its capacity is held before anything stops), then the server, which boots the
    #   reservation's id, is replaced by its clean path, then the old lease is deleted;
    # - after the end (Blazar has deleted the server and the flavor): the ended lease is
    #   deleted first, then the next one is made, and a new server with it.
    # A lease in ERROR whose start_lease event is DONE and whose end_lease event is not still
    # serves its flavor: it is kept.
    @_user_errors
    def update(
        self, id_: str, olds: dict[str, Any], news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        """Record the new inputs; Blazar is only read (a flavor:instance lease is never
        updated: the refusal would put it into ERROR)."""
        lease = self.client(news).get_lease(id_)
        if lease is None:
            raise LeaseError(
                f"lease {id_} ({olds.get('name')}) no longer exists. Fix: `pulumi up` again: "
                f"it makes a new lease"
            )
        return pulumi.dynamic.UpdateResult(self._outputs(lease, news))

    # --- delete ----------------------------------------------------------------------------

    @_user_errors
    def delete(self, id_: str, props: dict[str, Any]) -> None:
        delete_until_gone(
            self.client(props),
            id_,
            f"lease {id_} ({props.get('name')})",
            timeout_seconds=self.delete_timeout_seconds,
            poll_seconds=self.poll_seconds,
            say=pulumi.log.info,
        )


# --- the lease's own credentials --------------------------------------------------------------


def lease_cloud_problem(cloud: str) -> Problem | None:
    """leaseCloud must name an entry of clouds.yaml (as openstacksdk finds it: OS_CLIENT_CONFIG_
    FILE, ~/.config/openstack, /etc/openstack): checked before any resource exists."""
    import warnings

    import openstack.config

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            names = sorted(openstack.config.OpenStackConfig().get_cloud_names())
    except Exception as error:  # noqa: BLE001 (a broken clouds.yaml is reported the same way)
        return Problem(
            "leaseCloud",
            cloud,
            f"clouds.yaml could not be read ({error})",
            "correct clouds.yaml, or pulumi config rm chi-persist:leaseCloud",
        )
    if cloud in names:
        return None
    return Problem(
        "leaseCloud",
        cloud,
        f"names no entry of clouds.yaml (its entries: {', '.join(names) or 'none'})",
        "add the entry (see the README's Leases section: ccauth clouds-yaml ... --cloud-name "
        f"{cloud}), or pulumi config set chi-persist:leaseCloud <one of the entries>",
    )


# --- a lease of the student's own ----------------------------------------------------------


def own_lease_end(reservation_id: str, cloud: str | None = None) -> tuple[str | None, str]:
    """The end (ISO 8601 UTC) of the project's lease that holds `reservation_id`, the flavor
    a student reserved themselves, read from Blazar before any resource changes; None when
    it cannot be read or has ended. With it, what `pulumi up` says about it."""
    what = f"the lease that holds your reservation {reservation_id}"
    no_timer = "so no timer stops the platform cleanly before it ends"
    try:
        lease = Blazar(cloud).lease_of_reservation(reservation_id)
    except LeaseError as error:
        return None, f"{what} could not be read ({error}), {no_timer}"
    if lease is None:
        return None, (
            f"Blazar lists no lease of the project holding reservation {reservation_id}, "
            f"{no_timer}. Check chi-persist:reservation: `openstack reservation lease list`"
        )
    ended = lease.ended_because(utc_now())
    if ended is not None:
        return None, (
            f"{what}, {lease.id}, has ended ({ended}): make a new lease and set its flavor id "
            f"(chi-persist:reservation), or `pulumi config rm chi-persist:reservation`"
        )
    return iso_utc(lease.end), (
        f"{what}, {lease.id}, ends at {moment_text(lease.end)}: a timer on the server stops the "
        f"platform cleanly a few minutes before"
    )


# --- the resource ----------------------------------------------------------------------------


@dataclass
class LeaseArgs:
    name: str
    """Blazar lease name: settings.Settings.lease_name, which carries the stack's owner."""
    flavor_name: str
    """The flavor to reserve, by name."""
    duration_seconds: int
    """How long the next lease lasts from its start."""
    lease_duration: str
    """The same duration as the student wrote it (leaseDuration), for messages."""
    renew_window_seconds: int = DEFAULT_RENEW_WINDOW_SECONDS
    """How long before the end a `pulumi up` renews the lease; 0: only after the end."""
    cloud: str | None = None
    """The clouds.yaml entry the lease is made with (leaseCloud); None: the stack's own."""
    adopt_lease_id: str | None = None
    """A lease that exists already (e.g. found by name) to take over instead of making one.
    Used only when the state holds no lease; a change of it changes nothing."""


# KVM@TACC boots servers only from a reserved flavor. `Lease` makes a Blazar lease named
# after the stack's owner (settings.Settings.lease_name) with one `flavor:instance`
# reservation of the configured flavor, starting now and lasting the configured duration,
# and waits until it is ACTIVE: the reservation's id is then the id of a private flavor the
# server boots.
class Lease(pulumi.dynamic.Resource):
    """A Blazar lease of one `flavor:instance` reservation; `reservation_id` is the flavor id
    the server boots."""

    lease_id: pulumi.Output[str]
    reservation_id: pulumi.Output[str]
    status: pulumi.Output[str]
    start_date: pulumi.Output[str]
    end_date: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        args: LeaseArgs,
        opts: pulumi.ResourceOptions | None = None,
        provider: LeaseProvider | None = None,
    ) -> None:
        # No delete_before_replace option: the provider's diff decides. An ended lease is
        # deleted first (its server is gone already); one that still serves is replaced
        # create-first, so the next reservation is held before its server stops.
        super().__init__(
            provider or LeaseProvider(stack=pulumi.get_stack()),
            name,
            {
                "name": args.name,
                "flavor_name": args.flavor_name,
                "duration_seconds": int(args.duration_seconds),
                "lease_duration": args.lease_duration,
                "renew_window_seconds": int(args.renew_window_seconds),
                "cloud": args.cloud or "",
                "adopt_lease_id": args.adopt_lease_id or "",
                "lease_id": None,
                "reservation_id": None,
                "status": None,
                "start_date": None,
                "end_date": None,
            },
            opts,
        )
