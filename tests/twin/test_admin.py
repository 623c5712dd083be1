"""The twin's admin API (/_twin/): state, event log, vanishing servers, faults, pre-made volumes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for

MIB = 1024 * 1024


def test_state_shows_every_resource(twin: Twin, api: Api, public_key: str) -> None:
    """Servers, volumes (attachments, status), ports, floating IPs, groups and rules, key pairs."""
    twin.add_keypair("seen", public_key)
    group = steps.security_group(api, "persist-state", ports=(22,))
    port = steps.port(api, "state-port", [group["id"]])
    floating = steps.floating_ip(api, port["id"])
    server = steps.boot(api, "state-node", port["id"], "seen")
    volume = steps.volume(api, "state-volume", 1)
    steps.attach(api, server["id"], volume["id"])
    state = twin.state()
    (shown_server,) = state["servers"]
    assert shown_server["id"] == server["id"] and shown_server["vm_state"] == "active"
    assert shown_server["attachments"] == {
        volume["id"]: {"device": "/dev/vdb", "state": "attached"}
    }
    (shown_volume,) = state["volumes"]
    assert shown_volume["status"] == "in-use"
    assert shown_volume["attachments"][0]["server_id"] == server["id"]
    assert Path(shown_volume["disk"]).is_file()
    assert {each["id"]: each["status"] for each in state["ports"]}[port["id"]] == "ACTIVE"
    assert [each["floating_ip_address"] for each in state["floatingips"]] == [
        floating["floating_ip_address"]
    ]
    groups = {each["name"]: each for each in state["security_groups"]}
    assert any(rule["port_range_min"] == 22 for rule in groups["persist-state"]["rules"])
    assert [each["name"] for each in state["keypairs"]] == ["seen"]
    assert state["exposures"][floating["floating_ip_address"]]["server_id"] == server["id"]


def test_event_log_orders_api_calls_and_vm_actions(twin: Twin, api: Api) -> None:
    """One ordered log: each API call (method, path, status, duration) and each VM action, timed."""
    port = steps.port(api, "events", [])
    server = steps.boot(api, "events", port["id"])
    api.post(f"{api.compute}/servers/{server['id']}/action", json={"os-stop": None})
    wait_for(lambda: steps.status(api, server["id"]) == "SHUTOFF")
    api.delete(f"{api.compute}/servers/{server['id']}")
    wait_for(lambda: steps.status(api, server["id"]) is None)
    events = twin.events()
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert [event["time"] for event in events] == sorted(event["time"] for event in events)

    def first(predicate) -> int:
        return next(event["seq"] for event in events if predicate(event))

    created = first(
        lambda e: e["kind"] == "api" and e["method"] == "POST" and e["path"].endswith("/servers")
    )
    booted = first(lambda e: e["kind"] == "vm" and e.get("action") == "boot")
    stop_call = first(
        lambda e: e["kind"] == "api" and e["method"] == "POST" and e["path"].endswith("/action")
    )
    stopped = first(lambda e: e["kind"] == "vm" and e.get("action") == "stopped")
    delete_call = first(lambda e: e["kind"] == "api" and e["method"] == "DELETE")
    deleted = first(lambda e: e["kind"] == "vm" and e.get("action") == "deleted")
    assert created < booted < stop_call < stopped < delete_call < deleted
    call = next(event for event in events if event["seq"] == created)
    assert call["status"] == 202 and call["service"] == "compute" and call["seconds"] >= 0
    since = twin.events(since=deleted)
    assert all(event["seq"] > deleted for event in since)


def test_vanished_server_is_gone_and_lets_go_of_everything(twin: Twin, api: Api) -> None:
    """As at a lease's end: the server is deleted out of band; its volume becomes available,
    its port unbound; the next GET is 404; the log says so."""
    port = steps.port(api, "lease", [])
    floating = steps.floating_ip(api, port["id"])
    server = steps.boot(api, "lease", port["id"])
    volume = steps.volume(api, "lease-volume", 1)
    steps.attach(api, server["id"], volume["id"])
    response = twin.admin("POST", f"/servers/{server['id']}/vanish")
    assert response.status_code == 200, response.text
    assert api.get(f"{api.compute}/servers/{server['id']}").status_code == 404
    assert steps.volume_status(api, volume["id"]) == "available"
    shown = api.get(f"{api.network}/ports/{port['id']}").json()["port"]
    assert (shown["device_id"], shown["status"]) == ("", "DOWN")
    assert (
        api.get(f"{api.network}/floatingips/{floating['id']}").json()["floatingip"]["port_id"]
        == port["id"]
    )
    assert floating["floating_ip_address"] not in twin.state()["exposures"]
    actions = [(event["kind"], event.get("action")) for event in twin.events()]
    assert ("admin", "vanish") in actions and ("compute", "vanish") in actions
    assert twin.admin("POST", f"/servers/{server['id']}/vanish").status_code == 404


def test_fault_fails_the_next_matching_calls_then_stops(twin: Twin, api: Api) -> None:
    """The next N calls matching method and path get the status and body asked for."""
    fault = {
        "method": "POST",
        "path": r"/network/v2\.0/ports",
        "count": 2,
        "status": 503,
        "body": {"NeutronError": {"type": "ServiceUnavailable", "message": "down", "detail": ""}},
        "headers": {"Retry-After": "1"},
    }
    assert twin.admin("POST", "/faults", json=fault).status_code == 201
    body = {"port": {"network_id": steps.network_id(api, "sharednet1")}}
    assert api.get(f"{api.network}/ports").status_code == 200  # another method: untouched
    for _ in range(2):
        failed = api.post(f"{api.network}/ports", json=body)
        assert failed.status_code == 503
        assert failed.json() == fault["body"] and failed.headers["Retry-After"] == "1"
    assert api.post(f"{api.network}/ports", json=body).status_code == 201
    assert twin.admin("GET", "/faults").json() == {"faults": []}
    assert [event["status"] for event in twin.events() if event["kind"] == "fault"] == [503, 503]


def test_fault_can_delay_a_call_that_then_succeeds(twin: Twin, api: Api) -> None:
    twin.admin("POST", "/faults", json={"path": "/compute/v2.1/flavors/detail", "delay": 1.0})
    started = time.monotonic()
    assert api.get(f"{api.compute}/flavors/detail").status_code == 200
    assert time.monotonic() - started >= 1.0
    started = time.monotonic()
    api.get(f"{api.compute}/flavors/detail")
    assert time.monotonic() - started < 1.0


def _reaped_or_gone(pid: int) -> bool:
    """The process has ended (a zombie of an ended parent is reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_kill_fault_ends_a_session_after_a_call_succeeded(
    twin: Twin, api: Api, tmp_path: Path
) -> None:
    """A kill waits for a matching call that succeeds (a refused one does not count), answers
    it as usual, then signals every process of the session, also those in process groups of
    their own (as the CLI starts its plugins): the resource exists, the caller is gone."""
    plugin = tmp_path / "plugin.pid"
    starts_a_plugin = (
        "import os, subprocess, sys, time; "
        "child = subprocess.Popen(['sleep', '301'], process_group=0); "
        f"open({str(plugin)!r}, 'w').write(str(child.pid)); time.sleep(300)"
    )
    victim = subprocess.Popen([sys.executable, "-c", starts_a_plugin], start_new_session=True)
    try:
        wait_for(lambda: plugin.exists() and plugin.read_text(), timeout=30, what="its pid")
        plugin_pid = int(plugin.read_text())
        assert os.getpgid(plugin_pid) == plugin_pid != victim.pid, "not in a group of its own"
        fault = {"method": "POST", "path": r"/network/v2\.0/ports", "kill": victim.pid}
        assert twin.admin("POST", "/faults", json=fault).status_code == 201
        refused = api.post(f"{api.network}/ports", json={"port": {"network_id": "nope"}})
        assert refused.status_code == 400
        assert victim.poll() is None, "a refused call must not trigger the kill"
        body = {"port": {"name": "accepted", "network_id": steps.network_id(api, "sharednet1")}}
        created = api.post(f"{api.network}/ports", json=body)
        assert created.status_code == 201, created.text
        assert victim.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: _reaped_or_gone(plugin_pid), timeout=10, what="the plugin's end")
        port_id = created.json()["port"]["id"]
        assert api.get(f"{api.network}/ports/{port_id}").status_code == 200
        assert twin.admin("GET", "/faults").json() == {"faults": []}
        kills = [event for event in twin.events() if event.get("kill")]
        assert [(event["method"], event["kill"]) for event in kills] == [("POST", victim.pid)]
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        if plugin.exists() and plugin.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(plugin.read_text()), signal.SIGKILL)


def test_an_unanswered_kill_ends_the_caller_before_the_answer_is_written(
    twin: Twin, api: Api, tmp_path: Path
) -> None:
    """With `unanswered`, the cloud does the call and the caller's session is gone before any
    byte of the answer reaches it: the port exists, and the caller never learned its id."""
    go, learned = tmp_path / "go", tmp_path / "learned"
    body = {"port": {"name": "unanswered", "network_id": steps.network_id(api, "sharednet1")}}
    caller = f"""
import json, os, time, urllib.request
while not os.path.exists({str(go)!r}):
    time.sleep(0.05)
request = urllib.request.Request(
    {f"{api.network}/ports"!r}, data=json.dumps({body!r}).encode(),
    headers={{"X-Auth-Token": {api.token!r}, "Content-Type": "application/json"}},
)
answer = urllib.request.urlopen(request, timeout=60).read()
open({str(learned)!r}, "wb").write(answer)
"""
    victim = subprocess.Popen([sys.executable, "-c", caller], start_new_session=True)
    try:
        fault = {
            "method": "POST", "path": r"/network/v2\.0/ports", "kill": victim.pid,
            "unanswered": True,
        }  # fmt: skip
        made = twin.admin("POST", "/faults", json=fault)
        assert made.status_code == 201 and made.json()["fault"]["unanswered"] is True, made.text
        go.touch()
        assert victim.wait(timeout=60) == -signal.SIGKILL
        assert not learned.exists(), learned.read_bytes()
        ports = api.get(f"{api.network}/ports", params={"name": "unanswered"}).json()["ports"]
        assert len(ports) == 1, ports
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


@pytest.mark.parametrize(
    "fault",
    [
        {"path": "/x", "kill": 1},
        {"path": "/x", "kill": 12345, "status": 500},
        {"path": "/x", "kill": 12345, "signal": 19},
        {"status": 500},
        {"path": "(", "status": 500},
        {"path": "/x", "status": 200},
        {"path": "/x"},
        {"path": "/x", "status": 500, "count": 0},
        {"path": "/x", "status": 500, "colour": "blue"},
        {"path": "/x", "status": 500, "unanswered": True},
        {"path": "/x", "kill": 12345, "unanswered": "yes"},
    ],
    ids=[
        "kill-init",
        "kill-and-fail",
        "kill-signal",
        "no-path",
        "bad-regex",
        "not-an-error",
        "nothing-to-do",
        "count",
        "unknown-field",
        "unanswered-without-kill",
        "unanswered-not-a-bool",
    ],  # fmt: skip
)
def test_bad_faults_are_refused(shared_twin: Twin, fault: dict) -> None:
    response = shared_twin.admin("POST", "/faults", json=fault)
    assert response.status_code == 400 and response.json()["error"]


def test_premade_volume_holds_the_image_and_can_be_attached(
    twin: Twin, api: Api, tmp_path: Path
) -> None:
    """A tutorial volume: the given image's bytes, at the size asked, attachable as any volume."""
    image = tmp_path / "tutorial.img"
    marker = b"tutorial data that must survive\n"
    with open(image, "wb") as handle:
        handle.write(b"\x00" * MIB + marker)
        handle.truncate(8 * MIB)
    response = twin.admin(
        "POST", "/volumes", json={"name": "block-persist-ab1", "image": str(image), "size": 2}
    )
    assert response.status_code == 201, response.text
    volume = response.json()["volume"]
    assert (volume["status"], volume["size"], volume["name"]) == (
        "available",
        2,
        "block-persist-ab1",
    )
    disk = next(
        Path(each["disk"]) for each in twin.state()["volumes"] if each["id"] == volume["id"]
    )
    assert disk.stat().st_size == 2 * 1024**3
    with open(disk, "rb") as handle:
        handle.seek(MIB)
        assert handle.read(len(marker)) == marker
    found = api.get(f"{api.volume}/volumes/detail", params={"name": "block-persist-ab1"}).json()[
        "volumes"
    ]
    assert [each["id"] for each in found] == [volume["id"]]
    port = steps.port(api, "adopt", [])
    server = steps.boot(api, "adopt", port["id"])
    steps.attach(api, server["id"], volume["id"])


@pytest.mark.parametrize(
    "spec",
    [
        {"image": "/nonexistent.img", "name": "x"},
        {"name": "x"},
        {"image": "{image}"},
        {"image": "{image}", "name": "x", "size": 0},
    ],
    ids=["missing-file", "no-image", "no-name", "size"],
)
def test_bad_premade_volumes_are_refused(shared_twin: Twin, tmp_path: Path, spec: dict) -> None:
    image = tmp_path / "small.img"
    image.write_bytes(b"x" * 512)
    spec = {key: (str(image) if value == "{image}" else value) for key, value in spec.items()}
    response = shared_twin.admin("POST", "/volumes", json=spec)
    assert response.status_code == 400 and response.json()["error"]


def test_premade_volume_smaller_than_its_image_is_refused(
    shared_twin: Twin, tmp_path: Path
) -> None:
    image = tmp_path / "big.img"
    with open(image, "wb") as handle:
        handle.truncate(2 * 1024**3 + 512)
    response = shared_twin.admin(
        "POST", "/volumes", json={"name": "x", "image": str(image), "size": 2}
    )
    assert response.status_code == 400 and "smaller than the image" in response.json()["error"]
    os.unlink(image)


def test_keypairs_through_the_admin_api(
    shared_twin: Twin, shared_api: Api, public_key: str
) -> None:
    created = shared_twin.admin(
        "POST", "/keypairs", json={"name": "registered", "public_key": public_key}
    )
    assert created.status_code == 201
    shown = shared_api.get(f"{shared_api.compute}/os-keypairs/registered").json()["keypair"]
    assert shown["public_key"] == public_key
    again = shared_twin.admin(
        "POST", "/keypairs", json={"name": "registered", "public_key": public_key}
    )
    assert again.status_code == 409
    bad = shared_twin.admin("POST", "/keypairs", json={"name": "broken", "public_key": "nope"})
    assert bad.status_code == 400


def test_config_is_read_changed_and_checked(shared_twin: Twin) -> None:
    config = shared_twin.admin("GET", "/config").json()["config"]
    assert config["online_extend"] == "allowed"
    assert config["exposed_ports"] == [22, 8000, 8888, 9000, 9001]
    for bad in (
        {"online_extend": "sometimes"},
        {"colour": "blue"},
        {"exposed_ports": [0]},
        {"token_seconds": -1},
    ):
        response = shared_twin.admin("POST", "/config", json=bad)
        assert response.status_code == 400, bad
    changed = shared_twin.admin("POST", "/config", json={"volume_create_seconds": 0.1})
    assert changed.json()["config"]["volume_create_seconds"] == 0.1


def test_unknown_admin_path(shared_twin: Twin) -> None:
    response = shared_twin.admin("GET", "/nothing")
    assert response.status_code == 404 and "/_twin/nothing" in response.json()["error"]
