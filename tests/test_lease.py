"""The lease resource's provider against the twin's Blazar, over real HTTP.

`LeaseProvider`'s create, read, diff, update and delete run here exactly as the
engine's Python provider process runs them, with the credentials a student has
(`OS_CLOUD` and a clouds.yaml, read by openstacksdk's config loader), against a
`tests/twin/serve --machines null` process: Keystone, Nova's flavors and Blazar's
leases answer as the real services do (Blazar's own state machine and update_lease
run inside it). Nothing here may ever send Blazar an update of a lease: a longer
duration or a new name is recorded for the next lease; renewal makes the next lease
first; a lease in ERROR that still serves is kept; a DELETE that outlives Blazar's RPC
timeout is waited for; Keystone's refusal of trusts is named with both ways out.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest

from components.blazar import BlazarLease, parse_blazar_date
from components.lease import LeaseError, LeaseProvider
from tests.support.pulumi_state import STATE_FIXTURES
from tests.twin import steps
from tests.twin.harness import Twin, wait_for

NETID = "ab1234"
HOUR = 3600


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    """One twin without VMs for the module; leases start a fraction of a second after now."""
    started = Twin(tmp_path_factory.mktemp("twin") / "state").start()
    defaults = started.configure()
    started.defaults = defaults  # type: ignore[attr-defined]
    yield started
    status = started.stop()
    assert status == 0, f"serve exited with {status}:\n{started.log_text()}"


@pytest.fixture(autouse=True)
def student_shell(twin: Twin, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shell a student runs pulumi in: OS_CLOUD and its clouds.yaml, nothing else of
    OpenStack's; the twin's settings back to their defaults, and no lease left, after each
    test."""
    for key in list(os.environ):
        if key.startswith("OS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OS_CLOUD", "twin")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(twin.state_dir / "clouds.yaml"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield
    twin.configure(**twin.defaults)  # type: ignore[attr-defined]
    api = twin.api()
    for lease_id in leases(twin):
        api.delete(f"{api.reservation}/leases/{lease_id}")
    wait_for(lambda: not leases(twin), what="every lease deleted")


@pytest.fixture
def provider() -> LeaseProvider:
    return LeaseProvider(
        stack=NETID, active_timeout_seconds=30, delete_timeout_seconds=30, poll_seconds=0.1
    )


def inputs(duration: str = "8h", seconds: int = 8 * HOUR, **changes: Any) -> dict[str, Any]:
    """What the program gives the lease (components/lease.py Lease, __main__.py)."""
    return {
        "name": f"lease-persist-{NETID}",
        "flavor_name": "m1.large",
        "duration_seconds": seconds,
        "lease_duration": duration,
        "renew_window_seconds": HOUR,
        "cloud": "",
        "adopt_lease_id": "",
        **changes,
    }


def leases(twin: Twin) -> dict[str, dict[str, Any]]:
    """The twin's leases by id, as its state holds them."""
    found = twin.state()["leases"]
    return found if isinstance(found, dict) else {lease["id"]: lease for lease in found}


def blazar(twin: Twin, lease_id: str) -> dict[str, Any] | None:
    api = twin.api()
    response = api.get(f"{api.reservation}/leases/{lease_id}")
    return None if response.status_code == 404 else response.json()["lease"]


def nova_flavor(twin: Twin, flavor_id: str) -> Any:
    api = twin.api()
    return api.get(f"{api.compute}/flavors/{flavor_id}")


def calls(twin: Twin, method: str, since: int = 0) -> list[dict[str, Any]]:
    """The twin's Blazar calls of one method, in order."""
    return [
        event
        for event in twin.events(since)
        if event["kind"] == "api"
        and event["service"] == "reservation"
        and event["method"] == method
    ]


def refuse_an_update(twin: Twin, lease_id: str) -> None:
    """What any client's PUT of a new end does to a flavor:instance lease: 409, ERROR."""
    api = twin.api()
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)).strftime(
        "%Y-%m-%d %H:%M"
    )
    refused = api.put(f"{api.reservation}/leases/{lease_id}", json={"end_date": later})
    assert refused.status_code == 409, refused.text
    assert blazar(twin, lease_id)["status"] == "ERROR"


def at(moment: datetime.datetime, monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's clock, and the lease's view of it, set to `moment`."""
    monkeypatch.setattr("components.lease.utc_now", lambda: moment)


@pytest.fixture
def lease(twin: Twin, provider: LeaseProvider) -> Iterator[dict[str, Any]]:
    """A lease the provider created: its outputs; deleted afterwards."""
    created = provider.create(inputs())
    yield {"id": created.id, **created.outs}
    provider.delete(created.id, created.outs)


# --- create ----------------------------------------------------------------------------------


def test_create_waits_for_an_active_lease_whose_reservation_is_a_bootable_flavor(
    twin: Twin, lease: dict[str, Any]
) -> None:
    """ACTIVE, named after the netid, one reservation of m1.large: Nova has the flavor whose
    id is the reservation id, ready for the server."""
    assert lease["status"] == "ACTIVE"
    assert lease["lease_id"] == lease["id"]
    held = blazar(twin, lease["id"])
    assert held["name"] == f"lease-persist-{NETID}"
    [reservation] = held["reservations"]
    assert reservation["id"] == lease["reservation_id"]
    assert reservation["resource_type"] == "flavor:instance"
    flavor = nova_flavor(twin, lease["reservation_id"])
    assert flavor.status_code == 200, flavor.text
    assert flavor.json()["flavor"]["name"] == f"reservation:{lease['reservation_id']}"
    api = twin.api()
    listed = api.get(f"{api.compute}/flavors/detail").json()["flavors"]
    m1_large = next(item for item in listed if item["name"] == "m1.large")
    assert flavor.json()["flavor"]["vcpus"] == m1_large["vcpus"]


def test_create_reports_dates_in_utc_and_the_asked_duration(lease: dict[str, Any]) -> None:
    """start_date and end_date are ISO 8601 UTC; the lease lasts exactly leaseDuration."""
    start = parse_blazar_date(lease["start_date"])
    end = parse_blazar_date(lease["end_date"])
    assert lease["start_date"].endswith("Z") and lease["end_date"].endswith("Z")
    assert end - start == datetime.timedelta(hours=8)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((start - now).total_seconds()) < 120


def test_an_unknown_flavor_is_named_with_the_command_that_lists_flavors(
    twin: Twin, provider: LeaseProvider
) -> None:
    """No such flavor: the error names it, lists the cloud's, and makes no lease."""
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs(flavor_name="m1.gigantic"))
    message = str(raised.value)
    assert "chi-persist:flavor = 'm1.gigantic'" in message
    assert "m1.large" in message and "openstack flavor list" in message
    assert "pulumi config set chi-persist:flavor" in message
    assert leases(twin) == {}


def test_no_capacity_says_so_and_offers_a_shorter_lease_or_another_flavor(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Blazar's 500 "Not enough hosts available": cause and the three ways out."""
    twin.configure(lease_capacity=0)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    assert "Not enough hosts available" in message and "no capacity" in message
    assert "chi-persist:leaseDuration" in message and "chi-persist:flavor" in message
    assert "later" in message
    assert leases(twin) == {}


def test_a_restricted_application_credential_is_named_with_how_to_make_one(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Keystone without the trust fix refuses Blazar's trust to a restricted credential (an
    obfuscated 500); Keystone still lets it read trusts, so this is no site-wide refusal:
    the error says to make an unrestricted credential."""
    twin.configure(application_credential_unrestricted=False)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    assert "restricted" in message and "'twin'" in message
    assert "Internal Server Error" in message
    assert "--unrestricted" in message and "Unrestricted" in message
    assert "CVE-2026-43000" not in message
    assert leases(twin) == {}


def test_a_keystone_that_refuses_all_trusts_is_named_with_both_ways_out(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Keystone with CVE-2026-43000's fix: Blazar's 500 is told apart by asking Keystone for
    the user's trusts; the error quotes Keystone and gives both fixes, exactly: a login of
    the student's own for the lease (ccauth, leaseCloud) and a lease of their own
    (Horizon's steps, reservation). No lease is made, and no secret is printed."""
    twin.configure(keystone_refuses_application_credential_trusts=True)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    assert "CVE-2026-43000" in message and "unrestricted or not" in message
    assert "HTTP 500 (Internal Server Error)" in message
    assert "'application_credential' is not allowed for managing trusts" in message
    project_id = twin.state()["project_id"]
    assert f"--project-id {project_id}" in message
    assert f"--auth-url {twin.url}/v3" in message
    assert "venv/bin/pip install ccauth" in message and "ccauth clouds-yaml" in message
    assert "pulumi config set chi-persist:leaseCloud kvm-lease" in message
    assert "Reservations > Leases > Create Lease" in message and "m1.large" in message
    assert "pulumi config set chi-persist:reservation <id>" in message
    secret = twin.clouds()["twin"]["auth"]["application_credential_secret"]
    assert secret not in message
    assert leases(twin) == {}


def test_a_lease_cloud_that_logs_in_by_password_makes_the_lease(
    twin: Twin, provider: LeaseProvider
) -> None:
    """leaseCloud = twin-password (clouds.yaml's password entry): with the same Keystone
    refusing application credentials, the lease is made, read and deleted with it."""
    twin.configure(keystone_refuses_application_credential_trusts=True)
    props = inputs(cloud="twin-password")
    created = provider.create(props)
    assert created.outs["status"] == "ACTIVE" and created.outs["cloud"] == "twin-password"
    assert provider.read(created.id, created.outs).id == created.id
    assert provider.diff(created.id, created.outs, props).changes is False
    provider.delete(created.id, created.outs)
    assert blazar(twin, created.id) is None


def test_an_unknown_lease_cloud_is_named_with_how_to_check_it(
    provider: LeaseProvider,
) -> None:
    """leaseCloud names no clouds.yaml entry: the setting, the value and the fixes."""
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs(cloud="kvm-lease"))
    message = str(raised.value)
    assert "chi-persist:leaseCloud = 'kvm-lease'" in message
    assert "openstack --os-cloud kvm-lease token issue" in message
    assert "pulumi config rm chi-persist:leaseCloud" in message


def test_a_lease_that_goes_to_error_is_reported_with_its_id_and_deleted(
    twin: Twin, provider: LeaseProvider
) -> None:
    """ERROR instead of ACTIVE (its start failed): the lease id, its status and what to do;
    nothing is held."""
    twin.configure(next_lease_error=True)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    [lease_id] = {word for word in message.split() if len(word) == 36 and word.count("-") == 4}
    assert f"lease {lease_id}" in message and "went to ERROR" in message
    assert "pulumi up" in message and "chi-persist:flavor" in message
    wait_for(lambda: blazar(twin, lease_id) is None, what="the failed lease deleted")


def test_a_lease_that_is_not_active_in_time_is_deleted_and_reported(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Bounded wait: still PENDING when the time is up, the status is in the error."""
    twin.configure(lease_start_seconds=30)
    provider.active_timeout_seconds = 1
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    assert "not ACTIVE" in message and "after 1 s" in message
    assert "PENDING" in message or "STARTING" in message
    assert all(lease["status"] != "ACTIVE" for lease in leases(twin).values())
    assert not [lease for lease in leases(twin).values() if lease["status"] == "PENDING"]


def test_missing_credentials_say_how_to_give_them(
    provider: LeaseProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No OS_CLOUD and no clouds.yaml: the error names OS_CLOUD and the openrc file."""
    monkeypatch.delenv("OS_CLOUD")
    monkeypatch.delenv("OS_CLIENT_CONFIG_FILE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    assert "OS_CLOUD" in str(raised.value) and "openrc" in str(raised.value)


def test_an_existing_lease_is_adopted_instead_of_made(twin: Twin, provider: LeaseProvider) -> None:
    """adopt_lease_id (a lease found by name): create takes it over, makes none, and the
    program's inputs then show no change."""
    made = provider.create(inputs())
    adopted = provider.create(inputs(adopt_lease_id=made.id))
    assert adopted.id == made.id and set(leases(twin)) == {made.id}
    assert adopted.outs["reservation_id"] == made.outs["reservation_id"]
    assert provider.diff(adopted.id, adopted.outs, inputs(adopt_lease_id="")).changes is False


def test_an_ended_lease_is_not_adopted(twin: Twin, provider: LeaseProvider) -> None:
    """A lease to adopt that has ended serves nothing: a new one is made instead."""
    made = provider.create(inputs())
    twin.end_lease(made.id)
    created = provider.create(inputs(adopt_lease_id=made.id))
    assert created.id != made.id and created.outs["status"] == "ACTIVE"


# --- read ------------------------------------------------------------------------------------


def test_read_gives_the_live_lease_and_nothing_once_it_is_gone(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Read returns the lease's outputs and keeps the recorded inputs; after a delete the id
    is empty (gone)."""
    created = provider.create(inputs())
    read = provider.read(created.id, created.outs)
    assert read.id == created.id
    assert {key: read.outs[key] for key in created.outs} == created.outs
    assert read.inputs is None
    provider.delete(created.id, created.outs)
    gone = provider.read(created.id, created.outs)
    assert gone.id == ""


def test_read_shows_an_ended_lease_as_it_is(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """A lease ended by Blazar is still read, with its status, for the next diff."""
    twin.end_lease(lease["id"])
    read = provider.read(lease["id"], lease)
    assert read.outs["status"] in ("TERMINATING", "TERMINATED")


def test_read_without_inputs_gives_those_the_program_would(
    twin: Twin, provider: LeaseProvider
) -> None:
    """An import reads with no inputs: the lease's name, the flavor it reserves, its length
    and the default window come back as inputs, and a diff against the program's inputs
    then shows no change at all."""
    made = provider.create(inputs())
    read = provider.read(made.id, {})
    assert read.inputs == {
        "name": f"lease-persist-{NETID}",
        "flavor_name": "m1.large",
        "duration_seconds": 8 * HOUR,
        "lease_duration": "8h",
        "renew_window_seconds": HOUR,
        "cloud": "",
    }
    assert read.outs["lease_id"] == made.id
    assert read.outs["reservation_id"] == made.outs["reservation_id"]
    result = provider.diff(made.id, {**read.outs, **read.inputs}, inputs())
    assert result.changes is False and result.replaces == []


# --- diff ------------------------------------------------------------------------------------


def test_an_unchanged_live_lease_has_no_changes(
    provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """Same inputs, lease ACTIVE, far from its end: nothing to do."""
    result = provider.diff(lease["id"], lease, inputs())
    assert result.changes is False
    assert result.replaces == []


def test_an_ended_lease_is_replaced_delete_first(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """Ended through /_twin/leases/{id}/end: its flavor is gone, and the diff asks for a new
    lease, the old one deleted first."""
    twin.end_lease(lease["id"])
    result = provider.diff(lease["id"], lease, inputs())
    assert result.changes is True
    assert result.replaces == ["status"]
    assert result.delete_before_replace is True
    assert nova_flavor(twin, lease["reservation_id"]).status_code == 404


def test_a_deleted_lease_is_replaced(twin: Twin, provider: LeaseProvider) -> None:
    """Blazar no longer has it (404): a new lease, the old one deleted first."""
    created = provider.create(inputs())
    response = twin.api().delete(f"{twin.api().reservation}/leases/{created.id}")
    assert response.status_code == 204
    result = provider.diff(created.id, created.outs, inputs())
    assert result.replaces == ["status"] and result.delete_before_replace is True


def test_a_lease_past_its_end_date_is_replaced(
    provider: LeaseProvider, lease: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its end date has passed although Blazar has not ended it yet: a new lease."""
    at(parse_blazar_date(lease["end_date"]) + datetime.timedelta(minutes=1), monkeypatch)
    result = provider.diff(lease["id"], lease, inputs())
    assert result.replaces == ["status"] and result.delete_before_replace is True


@pytest.mark.parametrize(
    "changes",
    [
        {"duration_seconds": 24 * HOUR, "lease_duration": "1d"},
        {"name": f"lease-persist-{NETID}.other"},
        {"renew_window_seconds": 2 * HOUR},
        {"cloud": "twin-password"},
    ],
    ids=["duration", "name", "window", "cloud"],
)
def test_a_new_duration_name_window_or_cloud_is_recorded_not_replaced(
    provider: LeaseProvider,
    lease: dict[str, Any],
    changes: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Outside the renewal window a new setting of the lease is a change to record: no
    replacement, and the preview says it applies to the next lease."""
    result = provider.diff(lease["id"], lease, inputs(**changes))
    assert result.changes is True
    assert result.replaces == []
    said = capsys.readouterr().err
    assert "is recorded" in said, said
    if "duration_seconds" in changes:
        assert "Blazar cannot change a flavor:instance lease" in said
        assert "the next lease" in said and "lasts 1d" in said


def test_a_new_flavor_replaces_the_lease_making_the_next_one_first(
    provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """A new flavor of a lease that still serves: a new lease first (create-before-delete),
    so the server keeps running until its successor's reservation is held."""
    result = provider.diff(lease["id"], lease, inputs(flavor_name="m1.xlarge"))
    assert result.replaces == ["flavor_name"]
    assert result.delete_before_replace is False


def test_inside_the_renewal_window_the_lease_is_renewed_create_first(
    provider: LeaseProvider,
    lease: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Half an hour before the end, with a window of 1h: a replacement whose new lease comes
    first; two hours before: nothing. The preview says what renewal does."""
    end = parse_blazar_date(lease["end_date"])
    at(end - datetime.timedelta(minutes=30), monkeypatch)
    inside = provider.diff(lease["id"], lease, inputs())
    assert inside.changes is True
    assert inside.replaces == ["end_date"] and inside.delete_before_replace is False
    said = capsys.readouterr().err
    assert "within the renewal window" in said and "makes the next lease" in said
    at(end - datetime.timedelta(hours=2), monkeypatch)
    outside = provider.diff(lease["id"], lease, inputs())
    assert outside.changes is False and outside.replaces == []


def test_a_window_of_zero_never_renews_before_the_end(
    provider: LeaseProvider, lease: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """leaseRenewWindow 0m: a minute before the end the lease is kept."""
    at(parse_blazar_date(lease["end_date"]) - datetime.timedelta(minutes=1), monkeypatch)
    result = provider.diff(lease["id"], lease, inputs(renew_window_seconds=0))
    assert result.replaces == []


def test_a_lease_in_error_that_still_serves_is_kept_and_explained(
    twin: Twin,
    provider: LeaseProvider,
    lease: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused update put the lease into ERROR; its events say start_lease DONE and
    end_lease UNDONE: it still serves. The diff keeps it (no replacement), and says what
    ERROR means and until when the server runs."""
    refuse_an_update(twin, lease["id"])
    result = provider.diff(lease["id"], lease, inputs())
    assert result.changes is False and result.replaces == []
    said = capsys.readouterr().err
    assert f"lease {lease['id']}" in said and "is ERROR" in said
    assert "still serves its flavor" in said and "the server keeps running" in said
    live = BlazarLease.from_body(blazar(twin, lease["id"]))
    assert live.events["start_lease"] == "DONE" and live.events["end_lease"] == "UNDONE"
    assert nova_flavor(twin, lease["reservation_id"]).status_code == 200


def test_a_lease_in_error_that_never_started_is_replaced(
    twin: Twin, provider: LeaseProvider
) -> None:
    """ERROR with its start_lease event ERROR served nothing: replaced, deleted first."""
    twin.configure(next_lease_error=True)
    api = twin.api()
    made = steps.lease(api, f"lease-persist-{NETID}", steps.flavor_id(api), hours=8, wait=False)
    lease_id, end = made["id"], made["end_date"]
    wait_for(lambda: blazar(twin, lease_id)["status"] == "ERROR", what="lease ERROR")
    olds = {**inputs(), "lease_id": lease_id, "end_date": f"{end[:16]}:00Z"}
    result = provider.diff(lease_id, olds, inputs())
    assert result.replaces == ["status"] and result.delete_before_replace is True


# --- update ----------------------------------------------------------------------------------


def test_an_update_records_the_new_inputs_and_sends_blazar_nothing(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """A longer duration and a new name: the outputs carry them for the next lease, the
    lease keeps its end, name and ACTIVE status, and Blazar saw no PUT."""
    before = twin.events()[-1]["seq"]
    news = inputs("1d12h", 36 * HOUR, name=f"lease-persist-{NETID}.renamed")
    updated = provider.update(lease["id"], lease, news).outs
    assert updated["duration_seconds"] == 36 * HOUR and updated["lease_duration"] == "1d12h"
    assert updated["name"] == f"lease-persist-{NETID}.renamed"
    assert updated["end_date"] == lease["end_date"]
    held = blazar(twin, lease["id"])
    assert held["status"] == "ACTIVE" and held["name"] == f"lease-persist-{NETID}"
    assert parse_blazar_date(held["end_date"]) == parse_blazar_date(lease["end_date"])
    assert calls(twin, "PUT", before) == []


# --- renewal ---------------------------------------------------------------------------------


def test_renewal_holds_the_next_lease_before_the_old_one_goes(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """What the engine does for a create-first replacement: the next lease (the new
    duration) is made while the old one serves, both flavors are there, then the old lease
    is deleted and only its flavor goes."""
    news = inputs("1d", 24 * HOUR)
    renewed = provider.create(news)
    assert renewed.id != lease["id"] and renewed.outs["status"] == "ACTIVE"
    assert nova_flavor(twin, lease["reservation_id"]).status_code == 200
    assert nova_flavor(twin, renewed.outs["reservation_id"]).status_code == 200
    start, end = (parse_blazar_date(renewed.outs[key]) for key in ("start_date", "end_date"))
    assert end - start == datetime.timedelta(days=1)
    provider.delete(lease["id"], lease)
    assert blazar(twin, lease["id"]) is None
    assert nova_flavor(twin, lease["reservation_id"]).status_code == 404
    assert blazar(twin, renewed.id)["status"] == "ACTIVE"
    provider.delete(renewed.id, renewed.outs)


def test_no_capacity_for_the_next_lease_leaves_the_old_one_serving(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """Renewal when every host is reserved: the next lease is refused, the old one is
    untouched (still ACTIVE, its flavor there), and the error says when it ends and what
    to do."""
    twin.configure(lease_capacity=1)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    assert "Not enough hosts available" in message
    assert f"lease {lease['id']} still serves" in message
    ends = parse_blazar_date(lease["end_date"])
    assert f"until it ends at {ends:%Y-%m-%d %H:%M} UTC" in message
    assert "`pulumi up` again later" in message and "let it end" in message
    assert blazar(twin, lease["id"])["status"] == "ACTIVE"
    assert nova_flavor(twin, lease["reservation_id"]).status_code == 200
    assert set(leases(twin)) == {lease["id"]}


# --- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_lease_and_its_flavor_and_is_done_when_already_gone(
    twin: Twin, provider: LeaseProvider
) -> None:
    """DELETE, then Blazar has it no more and Nova no flavor; a second delete is a no-op."""
    created = provider.create(inputs())
    provider.delete(created.id, created.outs)
    assert blazar(twin, created.id) is None
    assert nova_flavor(twin, created.outs["reservation_id"]).status_code == 404
    provider.delete(created.id, created.outs)


def test_delete_of_an_ended_lease_is_done(twin: Twin, provider: LeaseProvider) -> None:
    """A lease Blazar has ended is deleted without an error (the replacement's first step)."""
    created = provider.create(inputs())
    twin.end_lease(created.id)
    provider.delete(created.id, created.outs)
    assert blazar(twin, created.id) is None


def test_a_delete_past_blazars_rpc_timeout_is_waited_for(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Blazar answers the DELETE 500 after its RPC timeout while its manager goes on (the
    servers on the flavor take 3 s to go): the provider polls until the lease is gone and
    does not fail; the server on its flavor is gone too."""
    created = provider.create(inputs())
    api = twin.api()
    port = steps.port(api, "slow-lease-end", [])
    server = steps.boot(api, "slow-lease-end", port["id"], flavorRef=created.outs["reservation_id"])
    twin.configure(blazar_rpc_timeout_seconds=0.5, lease_server_deletion_seconds=3)
    before = twin.events()[-1]["seq"]
    provider.delete(created.id, created.outs)
    assert blazar(twin, created.id) is None
    assert steps.status(api, server["id"]) is None
    deletes = calls(twin, "DELETE", before)
    assert deletes[0]["status"] == 500, deletes
    assert [call for call in calls(twin, "GET", before) if created.id in call["path"]]


def test_a_delete_that_outlasts_the_bound_says_what_was_seen(
    twin: Twin, provider: LeaseProvider
) -> None:
    """A deletion that takes longer than the provider waits: the error names the lease, its
    status, what Blazar answered, and the commands; the lease goes later all the same."""
    created = provider.create(inputs())
    twin.configure(blazar_rpc_timeout_seconds=0.2, lease_server_deletion_seconds=4)
    provider.delete_timeout_seconds = 1
    with pytest.raises(LeaseError) as raised:
        provider.delete(created.id, created.outs)
    message = str(raised.value)
    assert f"lease {created.id}" in message and "still DELETING" in message
    assert "HTTP 500" in message and "pulumi up" in message
    assert f"openstack reservation lease show {created.id}" in message
    wait_for(lambda: blazar(twin, created.id) is None, timeout=30, what="lease gone")


# --- existing states -------------------------------------------------------------------------


def test_a_provider_pickled_before_blazar_py_existed_still_deletes_its_lease(
    twin: Twin, provider: LeaseProvider
) -> None:
    """tests/fixtures/pulumi-state/lease-before-blazar-split.json holds the provider as the
    SDK pickled it before components/blazar.py (by reference: components.lease.LeaseProvider
    and its attributes). It loads as today's class and its delete deletes a live lease."""
    state = json.loads((STATE_FIXTURES / "lease-before-blazar-split.json").read_text())
    [resource] = [r for r in state["deployment"]["resources"] if "dynamic" in r["type"]]
    pickled = json.loads(resource["inputs"]["__provider"]["plaintext"])
    old = dill.loads(base64.b64decode(pickled))  # noqa: S301 (the project's own fixture)
    assert type(old) is LeaseProvider and old.stack == NETID
    assert old.delete_timeout_seconds == 300, "the attributes pickled then"
    created = provider.create(inputs())
    old.poll_seconds = 0.1
    old.delete(created.id, {**resource["outputs"], "lease_id": created.id})
    assert blazar(twin, created.id) is None
