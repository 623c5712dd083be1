"""Blazar on the twin: leases of flavor:instance reservations, their checks, status and end."""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from components.blazar import lease_request
from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for

BLAZAR_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:00\.000000$")
BLAZAR_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?$")
LARGE = "4"  # m1.large's id
DROP = object()  # a field left out of the request


def later(days: int = 1) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%d %H:%M")


def lease_body(flavor_id: str = LARGE, **changes: Any) -> dict[str, Any]:
    """What the lease resource sends (components/blazar.py lease_request), with `changes`:
    top-level keys replaced, and `reservation=` merged into the one reservation."""
    body = lease_request(
        "lease-persist-ab1234", flavor_id, datetime.now(timezone.utc) + timedelta(days=1)
    )
    body["reservations"][0].update(changes.pop("reservation", {}))
    body.update(changes)
    return body


def create(api: Api, body: Any = None, **changes: Any) -> requests.Response:
    return api.post(
        f"{api.reservation}/leases", json=lease_body(**changes) if body is None else body
    )


def blazar_error(response: requests.Response, status: int, name: int | str | None = None) -> str:
    """Blazar's render_error_message body; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "error_message", "error_name"}, body
    assert body["error_code"] == status
    assert body["error_name"] == (status if name is None else name)
    return body["error_message"]


def lease_of(api: Api, lease_id: str) -> dict[str, Any] | None:
    response = api.get(f"{api.reservation}/leases/{lease_id}")
    return None if response.status_code == 404 else response.json()["lease"]


def lease_status(api: Api, lease_id: str) -> str | None:
    lease = lease_of(api, lease_id)
    return None if lease is None else lease["status"]


def active_lease(api: Api, **changes: Any) -> dict[str, Any]:
    response = create(api, **changes)
    assert response.status_code == 201, response.text
    lease_id = response.json()["lease"]["id"]
    wait_for(lambda: lease_status(api, lease_id) == "ACTIVE", what=f"lease {lease_id} ACTIVE")
    return lease_of(api, lease_id)


def flavor_status(api: Api, flavor_id: str) -> int:
    return api.get(f"{api.compute}/flavors/{flavor_id}").status_code


def lease_events(twin: Twin, lease_id: str) -> list[str]:
    return [
        event["detail"]
        for event in twin.events()
        if event["kind"] == "reservation"
        and event.get("lease_id") == lease_id
        and event["action"] == "status"
    ]


def test_lease_is_pending_then_active_and_shaped_as_blazar_renders_it(
    shared_twin: Twin, shared_api: Api
) -> None:
    """201 PENDING with Lease.to_dict's fields; then STARTING and ACTIVE, in the event log."""
    api = shared_api
    response = create(api)
    assert response.status_code == 201, response.text
    assert response.headers["OpenStack-API-Version"] == "reservation 1.0"
    lease = response.json()["lease"]
    assert lease["status"] == "PENDING" and lease["name"] == "lease-persist-ab1234"
    assert lease["project_id"] == api.project_id and lease["degraded"] is False
    assert BLAZAR_DATE.match(lease["start_date"]) and BLAZAR_DATE.match(lease["end_date"])
    assert BLAZAR_STAMP.match(lease["created_at"])
    (reservation,) = lease["reservations"]
    assert reservation["status"] == "pending" and reservation["resource_type"] == "flavor:instance"
    assert reservation["flavor_id"] == reservation["id"], "the reserved flavor's id is the rsv's"
    assert (reservation["vcpus"], reservation["memory_mb"], reservation["disk_gb"]) == (4, 8192, 80)
    assert reservation["amount"] == 1 and reservation["affinity"] is None
    assert {event["event_type"]: event["status"] for event in lease["events"]} == {
        "start_lease": "UNDONE",
        "end_lease": "UNDONE",
        "before_end_lease": "UNDONE",
    }
    wait_for(lambda: lease_status(api, lease["id"]) == "ACTIVE", what="lease ACTIVE")
    shown = lease_of(api, lease["id"])
    assert shown["reservations"][0]["status"] == "active"
    assert lease["id"] in [
        each["id"] for each in api.get(f"{api.reservation}/leases").json()["leases"]
    ]
    assert lease_events(shared_twin, lease["id"]) == [
        "CREATING -> PENDING",
        "PENDING -> STARTING",
        "STARTING -> ACTIVE",
    ]
    assert lease["id"] in [each["id"] for each in shared_twin.state()["leases"]]


def test_reservation_flavor_exists_only_while_the_lease_is_active(tmp_path) -> None:
    """Before ACTIVE Nova has no such flavor (server create: 400); while ACTIVE it is private."""
    twin = Twin(tmp_path / "state", settings={"lease_start_seconds": 3}).start()
    try:
        api = twin.api()
        response = create(api)
        assert response.status_code == 201, response.text
        lease = response.json()["lease"]
        flavor_id = lease["reservations"][0]["id"]
        assert flavor_status(api, flavor_id) == 404
        port = steps.port(api, "too-early", [])
        early = api.post(
            f"{api.compute}/servers",
            json=steps.server_request(api, "too-early", port["id"], None, flavorRef=flavor_id),
        )
        assert early.status_code == 400
        assert early.json()["badRequest"]["message"] == f"Flavor {flavor_id} could not be found."
        wait_for(lambda: lease_status(api, lease["id"]) == "ACTIVE", what="lease ACTIVE")
        flavor = api.get(f"{api.compute}/flavors/{flavor_id}").json()["flavor"]
        assert flavor["name"] == f"reservation:{flavor_id}"
        assert flavor["os-flavor-access:is_public"] is False
        assert (flavor["vcpus"], flavor["ram"], flavor["disk"]) == (4, 8192, 80)
        listed = api.get(f"{api.compute}/flavors/detail").json()["flavors"]
        assert flavor_id in [each["id"] for each in listed]
    finally:
        assert twin.stop() == 0


@pytest.mark.parametrize(
    ("changes", "status", "message"),
    [
        ({"name": DROP}, 400, "Missing parameter name"),
        ({"start_date": DROP, "end_date": DROP}, 400, "Missing parameter {end_date, start_date}"),
        (
            {"end_date": "2030-01-01T00:00"},
            400,
            "2030-01-01T00:00 is an invalid date. Required format: %Y-%m-%d %H:%M",
        ),
        (
            {"start_date": "2000-01-01 00:00"},
            400,
            "Start date must be later than current date",
        ),
        ({"end_date": "2000-01-01 00:00"}, 400, "End date must be later than start date."),
        ({"reservation": {"resource_type": DROP}}, 400, "Missing parameter resource_type"),
        (
            {"reservation": {"resource_type": "physical:host"}},
            500,
            "The physical:host resource type is not supported",
        ),
        ({"reservation": {"amount": DROP}}, 400, "Missing parameter amount"),
        ({"reservation": {"affinity": DROP}}, 400, "Missing parameter affinity"),
        ({"reservation": {"amount": 0}}, 400, "amount must be >= 1"),
        ({"reservation": {"amount": "one"}}, 400, "amount must be an integer"),
        ({"reservation": {"flavor_id": "m1.large"}}, 404, "Flavor m1.large could not be found."),
        ({"reservation": {"affinity": False}}, 409, "Affinity not supported yet"),
    ],
)
def test_invalid_leases_are_refused_as_blazar_refuses_them(
    shared_api: Api, changes: dict[str, Any], status: int, message: str
) -> None:
    """Blazar's message and code for each invalid lease; nothing is made."""
    api = shared_api
    body = lease_body()
    for target, fields in (
        (body["reservations"][0], changes.get("reservation", {})),
        (body, {key: value for key, value in changes.items() if key != "reservation"}),
    ):
        for field, given in fields.items():
            if given is DROP:
                del target[field]
            else:
                target[field] = given
    before = len(api.get(f"{api.reservation}/leases").json()["leases"])
    response = create(api, body)
    said = blazar_error(response, status)
    if "{" in message:
        # validate_params names the missing keys of a set, in no fixed order.
        prefix, names = message.rstrip("}").split("{")
        assert said.startswith(prefix) and sorted(said[len(prefix) :].split(", ")) == sorted(
            names.split(", ")
        ), said
    else:
        assert said.startswith(message)
    assert len(api.get(f"{api.reservation}/leases").json()["leases"]) == before


def test_malformed_requests_get_blazars_answers(shared_twin: Twin, shared_api: Api) -> None:
    """Not JSON, an unknown lease, an unknown path, a microversion, no token."""
    api = shared_api
    broken = api.post(
        f"{api.reservation}/leases", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 500 and broken.json()["error"] == 500
    lease_id = "00000000-0000-4000-8000-000000000000"
    for method in ("GET", "PUT", "DELETE"):
        missing = api.request(method, f"{api.reservation}/leases/{lease_id}", json={"name": "x"})
        assert blazar_error(missing, 404) == f"Object with {{'lease_id': '{lease_id}'}} not found"
    unknown = api.get(f"{api.reservation}/hosts")
    assert unknown.status_code == 404
    assert "GET /v1/hosts" in unknown.json()["error_message"]
    version = api.get(
        f"{api.reservation}/leases", headers={"OpenStack-API-Version": "reservation 1.1"}
    )
    assert version.status_code == 406
    assert version.json()["error_message"] == (
        "Version 1.1 is not supported by the API. Minimum is 1.0 and maximum is 1.0."
    )
    anonymous = requests.get(f"{api.reservation}/leases", timeout=30)
    assert anonymous.status_code == 401


def events_of(lease: dict[str, Any]) -> dict[str, str]:
    return {event["event_type"]: event["status"] for event in lease["events"]}


def test_an_update_is_refused_and_leaves_the_lease_in_error_still_serving(
    twin: Twin, api: Api
) -> None:
    """Upstream's update_lease (blazar 17.0.0): a new end of a flavor:instance lease is 409
    "not yet supported", and its lease_status decorator leaves the lease in ERROR, with its
    events still DONE/UNDONE and its flavor still the project's: it serves until its end."""
    lease = active_lease(api)
    flavor_id = lease["reservations"][0]["id"]
    url = f"{api.reservation}/leases/{lease['id']}"
    refused = api.put(url, json={"end_date": later(days=2)})
    assert blazar_error(refused, 409) == (
        "Updating leases for 'flavor:instance' type reservations is not yet supported."
    )
    shown = lease_of(api, lease["id"])
    assert shown["status"] == "ERROR"
    assert shown["end_date"] == lease["end_date"]
    assert events_of(shown) == {
        "start_lease": "DONE",
        "end_lease": "UNDONE",
        "before_end_lease": "UNDONE",
    }
    assert flavor_status(api, flavor_id) == 200
    assert lease_events(twin, lease["id"])[-2:] == ["ACTIVE -> UPDATING", "UPDATING -> ERROR"]
    again = api.put(url, json={"reservations": [{"id": flavor_id, "amount": 2}]})
    assert blazar_error(again, 409).startswith("Updating leases for 'flavor:instance'")
    assert lease_status(api, lease["id"]) == "ERROR"


def test_a_new_name_alone_is_kept(shared_api: Api) -> None:
    """update_lease's first case: a new name is written, and the lease stays ACTIVE."""
    api = shared_api
    lease = active_lease(api)
    renamed = api.put(
        f"{api.reservation}/leases/{lease['id']}", json={"name": "lease-persist-renamed"}
    )
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["lease"]["name"] == "lease-persist-renamed"
    assert renamed.json()["lease"]["status"] == "ACTIVE"


def test_a_lease_in_error_still_ends_at_its_end(twin: Twin, api: Api) -> None:
    """The end_lease event runs on a lease in ERROR as on an ACTIVE one (TERMINATING comes
    from either): its server is deleted, then its flavor, and it is TERMINATED."""
    lease = active_lease(api)
    flavor_id = lease["reservations"][0]["id"]
    port = steps.port(api, "in-error", [])
    server = steps.boot(api, "in-error", port["id"], flavorRef=flavor_id)
    refused = api.put(f"{api.reservation}/leases/{lease['id']}", json={"end_date": later(2)})
    assert refused.status_code == 409
    ended = twin.end_lease(lease["id"])
    assert ended["status"] == "TERMINATED"
    assert events_of(ended)["end_lease"] == "DONE"
    assert steps.status(api, server["id"]) is None
    assert flavor_status(api, flavor_id) == 404
    assert lease_events(twin, lease["id"])[-2:] == [
        "ERROR -> TERMINATING",
        "TERMINATING -> TERMINATED",
    ]


def test_lease_ends_by_itself_at_its_end_date(twin: Twin, api: Api) -> None:
    """The twin's clock runs the end_lease event: a lease of one minute is TERMINATED when
    its minute is over, its flavor gone, its events both DONE."""
    # Blazar's dates are minutes: start in a minute's first half, so that ACTIVE lasts long
    # enough to be seen before the end (a lease made at :58 would end 2 s later).
    now = datetime.now(timezone.utc)
    if now.second >= 30:
        time.sleep(61 - now.second)
    for _attempt in range(2):  # the minute may turn between reading the clock and the call
        start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        end = (start + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M")
        response = create(api, end_date=end)
        if response.status_code == 201:
            break
    assert response.status_code == 201, response.text
    lease_id = response.json()["lease"]["id"]
    wait_for(lambda: lease_status(api, lease_id) == "ACTIVE", what="lease ACTIVE")
    flavor_id = lease_of(api, lease_id)["reservations"][0]["id"]
    wait_for(
        lambda: lease_status(api, lease_id) == "TERMINATED", timeout=90, what="lease TERMINATED"
    )
    assert flavor_status(api, flavor_id) == 404
    assert events_of(lease_of(api, lease_id))["end_lease"] == "DONE"
    assert lease_events(twin, lease_id)[-2:] == [
        "ACTIVE -> TERMINATING",
        "TERMINATING -> TERMINATED",
    ]


def test_lease_end_deletes_its_servers_then_its_flavor(twin: Twin, api: Api) -> None:
    """The end deletes servers on the reservation's flavor as Nova does: the guest ends, the
    volume is detached and available with its data file, the port unbound; others stay."""
    lease = active_lease(api)
    flavor_id = lease["reservations"][0]["id"]
    port = steps.port(api, "leased", [])
    server = steps.boot(api, "leased", port["id"], flavorRef=flavor_id)
    assert server["flavor"]["id"] == flavor_id
    volume = steps.volume(api, "block-persist", 1)
    steps.attach(api, server["id"], volume["id"])
    other_port = steps.port(api, "unleased", [])
    other = steps.boot(api, "unleased", other_port["id"])
    ended = twin.end_lease(lease["id"])
    assert ended["status"] == "TERMINATED"
    assert [each["status"] for each in ended["reservations"]] == ["deleted"]
    assert steps.status(api, server["id"]) is None
    assert steps.status(api, other["id"]) == "ACTIVE"
    shown = api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]
    assert shown["status"] == "available" and shown["attachments"] == []
    state = twin.state()
    assert {each["id"] for each in state["volumes"]} == {volume["id"]}
    assert {each["id"]: each["device_id"] for each in state["ports"]}[port["id"]] == ""
    assert flavor_status(api, flavor_id) == 404
    events = state["events"]
    deleted = next(
        event["seq"]
        for event in events
        if event["kind"] == "driver"
        and event["call"] == "delete"
        and event["server_id"] == server["id"]
    )
    flavor_gone = next(
        event["seq"]
        for event in events
        if event["kind"] == "reservation"
        and event.get("reservation_id") == flavor_id
        and event.get("detail") == "deleted"
    )
    assert deleted < flavor_gone, "the flavor goes only once its servers are gone"
    assert lease_events(twin, lease["id"])[-2:] == [
        "ACTIVE -> TERMINATING",
        "TERMINATING -> TERMINATED",
    ]
    again = api.post(
        f"{api.compute}/servers",
        json=steps.server_request(api, "after-end", other_port["id"], None, flavorRef=flavor_id),
    )
    assert again.status_code == 400
    assert twin.admin("POST", f"/leases/{lease['id']}/end").status_code == 409
    assert twin.admin("POST", "/leases/nothing/end").status_code == 404


def test_delete_of_an_active_lease_ends_it_then_removes_it(twin: Twin, api: Api) -> None:
    """DELETE answers 204 once the lease's server and flavor are gone; then GET answers 404."""
    lease = active_lease(api)
    flavor_id = lease["reservations"][0]["id"]
    port = steps.port(api, "deleted-lease", [])
    server = steps.boot(api, "deleted-lease", port["id"], flavorRef=flavor_id)
    response = api.delete(f"{api.reservation}/leases/{lease['id']}")
    assert response.status_code == 204, response.text
    assert steps.status(api, server["id"]) is None
    assert flavor_status(api, flavor_id) == 404
    assert lease_of(api, lease["id"]) is None
    assert twin.state()["leases"] == []
    assert api.delete(f"{api.reservation}/leases/{lease['id']}").status_code == 404


def test_a_delete_past_the_rpc_timeout_is_a_500_while_the_manager_goes_on(
    twin: Twin, api: Api
) -> None:
    """blazar_rpc_timeout_seconds shorter than the servers' deletion: the DELETE answers 500
    (the API's MessagingTimeout, obfuscated) while the lease is DELETING; a DELETE meanwhile
    is refused by blazar/status.py's transition check ("Invalid lease status.", 500); then
    the lease, its server and its flavor are gone."""
    lease = active_lease(api)
    flavor_id = lease["reservations"][0]["id"]
    port = steps.port(api, "slow-delete", [])
    server = steps.boot(api, "slow-delete", port["id"], flavorRef=flavor_id)
    twin.configure(blazar_rpc_timeout_seconds=0.5, lease_server_deletion_seconds=4)
    url = f"{api.reservation}/leases/{lease['id']}"
    timed_out = api.delete(url)
    assert blazar_error(timed_out, 500, "INTERNAL_SERVER_ERROR") == "Internal Server Error"
    assert lease_status(api, lease["id"]) == "DELETING"
    again = api.delete(url)
    assert blazar_error(again, 500) == "Invalid lease status."
    wait_for(lambda: lease_of(api, lease["id"]) is None, timeout=30, what="lease gone")
    assert steps.status(api, server["id"]) is None
    assert flavor_status(api, flavor_id) == 404
    assert api.delete(url).status_code == 404
    rpc = [event for event in twin.events() if event.get("outcome") == "rpc timeout"]
    assert len(rpc) == 1, rpc


def test_keystone_with_the_trust_fix_refuses_every_application_credential(
    twin: Twin, api: Api
) -> None:
    """keystone_refuses_application_credential_trusts (CVE-2026-43000's fix): an unrestricted
    application credential's lease fails as Blazar reports Keystone's refusal (an obfuscated
    500); Keystone says why when asked for the user's trusts; a password login makes the
    lease, and its trust is listed."""
    twin.configure(keystone_refuses_application_credential_trusts=True)
    assert api.body["token"]["application_credential"]["restricted"] is False
    response = create(api)
    assert blazar_error(response, 500, "INTERNAL_SERVER_ERROR") == "Internal Server Error"
    refusal = [event for event in twin.events() if event.get("action") == "trust"]
    assert "not allowed for managing trusts" in refusal[-1]["detail"]
    user_id = api.body["token"]["user"]["id"]
    listed = api.get(f"{twin.url}/v3/OS-TRUST/trusts", params={"trustor_user_id": user_id})
    assert listed.status_code == 403
    assert listed.json()["error"]["message"] == (
        "You are not authorized to perform the requested action: Using method "
        "'application_credential' is not allowed for managing trusts."
    )
    password = password_session(twin)
    assert create(password).status_code == 201
    trusts = password.get(f"{twin.url}/v3/OS-TRUST/trusts", params={"trustor_user_id": user_id})
    assert trusts.status_code == 200, trusts.text
    [trust] = trusts.json()["trusts"]
    assert trust["trustor_user_id"] == user_id and trust["impersonation"] is True
    twin.configure(keystone_refuses_application_credential_trusts=False)
    assert (
        api.get(f"{twin.url}/v3/OS-TRUST/trusts", params={"trustor_user_id": user_id}).status_code
        == 200
    ), "before the fix, an unrestricted credential may read trusts"
    assert create(api).status_code == 201


def password_session(twin: Twin) -> Api:
    """A token of the clouds.yaml entry twin-password: the user's password, project scope."""
    credentials = twin.clouds()["twin-password"]["auth"]
    password = twin.authenticate(
        {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": credentials["username"],
                        "password": credentials["password"],
                        "domain": {"name": credentials["user_domain_name"]},
                    }
                },
            },
            "scope": {
                "project": {"name": credentials["project_name"], "domain": {"name": "Default"}}
            },
        }
    )
    assert password.status_code == 201, password.text
    return Api(twin.url, password.headers["X-Subject-Token"], password.json())


def test_capacity_refuses_a_lease_beyond_it(twin: Twin, api: Api) -> None:
    """lease_capacity 1: a second m1.large is "Not enough hosts available" (500) until the
    first lease ends; another flavor is not affected."""
    twin.configure(lease_capacity=1)
    first = active_lease(api)
    refused = create(api)
    assert blazar_error(refused, 500) == "Not enough hosts available"
    other_flavor = create(api, flavor_id="3")
    assert other_flavor.status_code == 201, other_flavor.text
    assert blazar_error(create(api, reservation={"amount": 2}, flavor_id="2"), 500) == (
        "Not enough hosts available"
    )
    twin.end_lease(first["id"])
    assert create(api).status_code == 201


def test_restricted_application_credential_cannot_create_a_lease(twin: Twin, api: Api) -> None:
    """Keystone refuses Blazar's trust: Blazar answers its obfuscated 500; a password token,
    or an unrestricted credential, makes the lease."""
    twin.configure(application_credential_unrestricted=False)
    restricted = twin.api()
    assert restricted.body["token"]["application_credential"]["restricted"] is True
    response = create(restricted)
    assert blazar_error(response, 500, "INTERNAL_SERVER_ERROR") == "Internal Server Error"
    assert api.get(f"{api.reservation}/leases").json()["leases"] == []
    refusal = [event for event in twin.events() if event.get("action") == "trust"]
    assert "not allowed for managing trusts" in refusal[-1]["detail"]
    credentials = twin.clouds()["twin-password"]["auth"]
    password = twin.authenticate(
        {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": credentials["username"],
                        "password": credentials["password"],
                        "domain": {"name": credentials["user_domain_name"]},
                    }
                },
            },
            "scope": {"project": {"id": api.project_id}},
        }
    )
    session = Api(twin.url, password.headers["X-Subject-Token"], password.json())
    assert create(session).status_code == 201
    twin.configure(application_credential_unrestricted=True)
    assert create(twin.api()).status_code == 201


def test_next_lease_error_sends_one_lease_to_error(twin: Twin, api: Api) -> None:
    """next_lease_error: that lease goes STARTING -> ERROR with no flavor; the next is ACTIVE."""
    twin.configure(next_lease_error=True)
    response = create(api)
    assert response.status_code == 201, response.text
    lease_id = response.json()["lease"]["id"]
    wait_for(lambda: lease_status(api, lease_id) == "ERROR", what="lease ERROR")
    lease = lease_of(api, lease_id)
    assert [each["status"] for each in lease["reservations"]] == ["error"]
    assert flavor_status(api, lease["reservations"][0]["id"]) == 404
    assert lease_events(twin, lease_id)[-1].startswith("STARTING -> ERROR")
    assert twin.admin("GET", "/config").json()["config"]["next_lease_error"] is False
    assert active_lease(api)["status"] == "ACTIVE"
    assert api.delete(f"{api.reservation}/leases/{lease_id}").status_code == 204


@pytest.mark.parametrize(
    "bad",
    [
        {"blazar_rpc_timeout_seconds": "soon"},
        {"lease_server_deletion_seconds": -1},
        {"keystone_refuses_application_credential_trusts": "yes"},
        {"lease_capacity": -1},
        {"lease_capacity": 1.5},
        {"lease_start_seconds": "soon"},
        {"application_credential_unrestricted": "yes"},
        {"next_lease_error": 1},
    ],
)
def test_lease_settings_are_checked(shared_twin: Twin, bad: dict[str, Any]) -> None:
    response = shared_twin.admin("POST", "/config", json=bad)
    assert response.status_code == 400
    (key,) = bad
    assert key in response.json()["error"]
