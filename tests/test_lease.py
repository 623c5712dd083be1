"""The lease resource's provider against the twin's Blazar, over real HTTP.

`LeaseProvider`'s create, read, diff, update and delete run here exactly as the
engine's Python provider process runs them, with the credentials a student has
(`OS_CLOUD` and a clouds.yaml, read by openstacksdk's config loader), against a
`tests/twin/serve --machines null` process: Keystone, Nova's flavors and Blazar's
leases answer as the real services do. Each refusal a student can meet (no
capacity, a restricted application credential, a lease in ERROR, an unknown
flavor, an extension the site refuses) is checked for its cause and its fix.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.lease import LeaseError, LeaseProvider, parse_blazar_date
from tests.twin.harness import Twin

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
    OpenStack's; the twin's settings back to their defaults after each test."""
    for key in list(os.environ):
        if key.startswith("OS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OS_CLOUD", "twin")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(twin.state_dir / "clouds.yaml"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield
    twin.configure(**twin.defaults)  # type: ignore[attr-defined]


@pytest.fixture
def provider() -> LeaseProvider:
    return LeaseProvider(
        stack=NETID, active_timeout_seconds=30, delete_timeout_seconds=30, poll_seconds=0.1
    )


def inputs(duration: str = "8h", seconds: int = 8 * HOUR, **changes: Any) -> dict[str, Any]:
    return {
        "name": f"lease-persist-{NETID}",
        "flavor_name": "m1.large",
        "duration_seconds": seconds,
        "lease_duration": duration,
        **changes,
    }


def leases(twin: Twin) -> dict[str, dict[str, Any]]:
    """The twin's leases by id, as its state holds them."""
    found = twin.state()["leases"]
    return found if isinstance(found, dict) else {lease["id"]: lease for lease in found}


def nova_flavor(twin: Twin, flavor_id: str) -> Any:
    api = twin.api()
    return api.get(f"{api.compute}/flavors/{flavor_id}")


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
    held = twin.api().get(f"{twin.api().reservation}/leases/{lease['id']}").json()["lease"]
    assert held["name"] == f"lease-persist-{NETID}"
    [reservation] = held["reservations"]
    assert reservation["id"] == lease["reservation_id"]
    assert reservation["resource_type"] == "flavor:instance"
    flavor = nova_flavor(twin, lease["reservation_id"])
    assert flavor.status_code == 200, flavor.text
    assert flavor.json()["flavor"]["name"] == f"reservation:{lease['reservation_id']}"
    large = twin.api()
    listed = large.get(f"{large.compute}/flavors/detail").json()["flavors"]
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
    """Blazar's trust fails for a restricted credential (an obfuscated 500): the token says
    the credential is restricted, and the error says to make an unrestricted one."""
    twin.configure(application_credential_unrestricted=False)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    assert "restricted" in message and "'twin'" in message
    assert "Internal Server Error" in message
    assert "--unrestricted" in message and "Unrestricted" in message
    assert leases(twin) == {}


def test_a_lease_that_goes_to_error_is_reported_with_its_id_and_deleted(
    twin: Twin, provider: LeaseProvider
) -> None:
    """ERROR instead of ACTIVE: the lease id, its status and what to do; nothing is held."""
    twin.configure(next_lease_error=True)
    with pytest.raises(LeaseError) as raised:
        provider.create(inputs())
    message = str(raised.value)
    [lease_id] = {word for word in message.split() if len(word) == 36 and word.count("-") == 4}
    assert f"lease {lease_id}" in message and "went to ERROR" in message
    assert "pulumi up" in message and "chi-persist:flavor" in message
    response = twin.api().get(f"{twin.api().reservation}/leases/{lease_id}")
    assert response.status_code == 404, "a lease in ERROR must not stay behind"


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


# --- read ------------------------------------------------------------------------------------


def test_read_gives_the_live_lease_and_nothing_once_it_is_gone(
    twin: Twin, provider: LeaseProvider
) -> None:
    """Read returns the lease's outputs; after a delete the id is empty (gone)."""
    created = provider.create(inputs())
    read = provider.read(created.id, created.outs)
    assert read.id == created.id
    assert {key: read.outs[key] for key in created.outs} == created.outs
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


# --- diff ------------------------------------------------------------------------------------


def test_an_unchanged_live_lease_has_no_changes(
    provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """Same inputs, lease ACTIVE: nothing to do."""
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
    """Blazar no longer has it (404): a new lease."""
    created = provider.create(inputs())
    response = twin.api().delete(f"{twin.api().reservation}/leases/{created.id}")
    assert response.status_code == 204
    result = provider.diff(created.id, created.outs, inputs())
    assert result.replaces == ["status"]


def test_a_lease_past_its_end_date_is_replaced(
    provider: LeaseProvider, lease: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its end date has passed although Blazar has not ended it yet: a new lease."""
    later = parse_blazar_date(lease["end_date"]) + datetime.timedelta(minutes=1)
    monkeypatch.setattr("components.lease.utc_now", lambda: later)
    assert provider.diff(lease["id"], lease, inputs()).replaces == ["status"]


@pytest.mark.parametrize(
    ("changes", "replaces"),
    [
        ({"name": "lease-persist-cd5678"}, ["name"]),
        ({"flavor_name": "m1.xlarge"}, ["flavor_name"]),
        ({"duration_seconds": 24 * HOUR, "lease_duration": "1d"}, []),
    ],
    ids=["name", "flavor", "duration"],
)
def test_a_new_name_or_flavor_replaces_and_a_new_duration_updates(
    provider: LeaseProvider, lease: dict[str, Any], changes: dict[str, Any], replaces: list[str]
) -> None:
    """Name and flavor make a new lease; a duration moves the end of this one."""
    result = provider.diff(lease["id"], lease, inputs(**changes))
    assert result.changes is True
    assert result.replaces == replaces


# --- update ----------------------------------------------------------------------------------


def test_a_longer_duration_extends_the_same_lease_where_the_site_allows_it(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """Extension allowed: same lease and reservation, end = start + the new duration."""
    twin.configure(lease_extension="allowed")
    news = inputs("1d12h", 36 * HOUR)
    updated = provider.update(lease["id"], lease, news).outs
    assert updated["lease_id"] == lease["id"]
    assert updated["reservation_id"] == lease["reservation_id"]
    assert updated["lease_duration"] == "1d12h"
    start = parse_blazar_date(updated["start_date"])
    assert parse_blazar_date(updated["end_date"]) - start == datetime.timedelta(hours=36)
    held = twin.api().get(f"{twin.api().reservation}/leases/{lease['id']}").json()["lease"]
    assert parse_blazar_date(held["end_date"]) == parse_blazar_date(updated["end_date"])
    assert nova_flavor(twin, lease["reservation_id"]).status_code == 200


def test_a_refused_extension_says_so_and_gives_both_ways_out(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any]
) -> None:
    """Upstream Blazar's 409 for flavor:instance leases: the lease is unchanged, and the error
    says to keep the old duration or to recycle with a new lease."""
    twin.configure(lease_extension="refused")
    with pytest.raises(LeaseError) as raised:
        provider.update(lease["id"], lease, inputs("1d", 24 * HOUR))
    message = str(raised.value)
    assert "refused" in message and "HTTP 409" in message
    assert "not yet supported" in message
    assert f"still ends at {lease['end_date']}" in message
    assert "pulumi config set chi-persist:leaseDuration 8h" in message
    assert f"scripts/recycle --stack {NETID} --end-lease --yes" in message
    held = twin.api().get(f"{twin.api().reservation}/leases/{lease['id']}").json()["lease"]
    assert parse_blazar_date(held["end_date"]) == parse_blazar_date(lease["end_date"])


def test_a_duration_that_would_end_the_lease_in_the_past_is_refused_before_blazar(
    twin: Twin, provider: LeaseProvider, lease: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shortened below what has already run: the error says when it started, asks nothing
    of Blazar, and keeps the lease."""
    twin.configure(lease_extension="allowed")
    later = parse_blazar_date(lease["start_date"]) + datetime.timedelta(hours=2)
    monkeypatch.setattr("components.lease.utc_now", lambda: later)
    with pytest.raises(LeaseError) as raised:
        provider.update(lease["id"], lease, inputs("1h", HOUR))
    message = str(raised.value)
    assert f"started at {lease['start_date']}" in message and "past" in message
    assert "--end-lease" in message
    held = twin.api().get(f"{twin.api().reservation}/leases/{lease['id']}").json()["lease"]
    assert held["status"] == "ACTIVE"


# --- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_lease_and_its_flavor_and_is_done_when_already_gone(
    twin: Twin, provider: LeaseProvider
) -> None:
    """DELETE, then Blazar has it no more and Nova no flavor; a second delete is a no-op."""
    created = provider.create(inputs())
    provider.delete(created.id, created.outs)
    response = twin.api().get(f"{twin.api().reservation}/leases/{created.id}")
    assert response.status_code == 404
    assert nova_flavor(twin, created.outs["reservation_id"]).status_code == 404
    provider.delete(created.id, created.outs)


def test_delete_of_an_ended_lease_is_done(twin: Twin, provider: LeaseProvider) -> None:
    """A lease Blazar has ended is deleted without an error (the replacement's first step)."""
    created = provider.create(inputs())
    twin.end_lease(created.id)
    provider.delete(created.id, created.outs)
    response = twin.api().get(f"{twin.api().reservation}/leases/{created.id}")
    assert response.status_code == 404
