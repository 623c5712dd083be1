"""CHI@TACC on the twin: a Keystone of its own and Swift, driven by openstacksdk as the backups
drive it and by plain HTTP where a refusal's exact shape matters."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.twin.harness import Twin


@pytest.fixture
def site(twin: Twin, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An openstacksdk connection of the clouds.yaml entry chi_tacc, as a student has it."""
    import openstack

    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(twin.state_dir / "clouds.yaml"))
    monkeypatch.delenv("OS_CLOUD", raising=False)
    yield openstack.connect(cloud="chi_tacc")


def swift(connection: Any) -> tuple[requests.Session, str]:
    """A session with the connection's token, and the account's URL from the catalog."""
    session = requests.Session()
    session.trust_env = False
    session.headers["X-Auth-Token"] = connection.session.get_token()
    return session, connection.object_store.get_endpoint()


def test_chi_tacc_has_its_own_keystone_and_catalog(twin: Twin, site: Any) -> None:
    """The entry's token is CHI@TACC's (region CHI@TACC, an object-store endpoint); KVM@TACC's
    catalog has none, and its tokens are not valid at CHI@TACC's Swift, nor the other way."""
    entry = twin.clouds()["chi_tacc"]
    assert entry["region_name"] == "CHI@TACC"
    assert entry["auth"]["auth_url"] == f"{twin.url}/chi-tacc/v3"
    assert (
        entry["auth"]["application_credential_id"]
        != (twin.clouds()["twin"]["auth"]["application_credential_id"])
    )
    endpoint = site.object_store.get_endpoint()
    project = site.session.get_project_id()
    assert endpoint == f"{twin.url}/chi-tacc/swift/v1/AUTH_{project}"
    kvm = twin.api()
    assert "object-store" not in {entry["type"] for entry in kvm.body["token"]["catalog"]}
    assert project != kvm.project_id
    refused = kvm.get(endpoint)
    assert refused.status_code == 401 and "Unauthorized" in refused.text
    assert refused.headers["Www-Authenticate"] == f'Keystone uri="{twin.url}/chi-tacc/v3"'
    chi_token = site.session.get_token()
    nova = requests.get(f"{kvm.compute}/servers", headers={"X-Auth-Token": chi_token}, timeout=30)
    assert nova.status_code == 401


def test_containers_are_made_listed_and_deleted_as_swift_does(site: Any) -> None:
    """PUT 201 then 202; HEAD 204 with counts; DELETE 409 while it holds an object, then 204;
    404 once gone; the account lists it with its counts."""
    session, account = swift(site)
    assert session.put(f"{account}/backups", timeout=30).status_code == 201
    assert session.put(f"{account}/backups", timeout=30).status_code == 202
    assert session.put(f"{account}/backups/a.txt", data=b"abc", timeout=30).status_code == 201
    head = session.head(f"{account}/backups", timeout=30)
    assert head.status_code == 204
    assert (head.headers["X-Container-Object-Count"], head.headers["X-Container-Bytes-Used"]) == (
        "1",
        "3",
    )
    listed = session.get(account, params={"format": "json"}, timeout=30).json()
    assert [(c["name"], c["count"], c["bytes"]) for c in listed] == [("backups", 1, 3)]
    conflict = session.delete(f"{account}/backups", timeout=30)
    assert conflict.status_code == 409 and "Conflict" in conflict.text
    assert session.delete(f"{account}/backups/a.txt", timeout=30).status_code == 204
    assert session.delete(f"{account}/backups", timeout=30).status_code == 204
    missing = session.head(f"{account}/backups", timeout=30)
    assert missing.status_code == 404


def test_listings_take_prefix_marker_end_marker_delimiter_and_limit(site: Any) -> None:
    """As openstacksdk's objects() pages them; plain text one name a line, 204 when empty."""
    store = site.object_store
    store.create_container(name="c")
    names = ["20260101T000000Z/manifest.json", "20260101T000000Z/a.tar",
             "20260101T000000Z/a.tar/000000", "20260102T000000Z/a.tar", "z.txt"]  # fmt: skip
    for name in names:
        store.create_object("c", name, data=b"x")
    listed = [item.name for item in store.objects("c", prefix="20260101T000000Z/")]
    assert listed == sorted(names[:3])
    after = [item.name for item in store.objects("c", marker="20260101T000000Z/manifest.json")]
    assert after == ["20260102T000000Z/a.tar", "z.txt"]
    session, account = swift(site)
    rolled = session.get(f"{account}/c", params={"delimiter": "/", "format": "json"}, timeout=30)
    assert rolled.json() == [
        {"subdir": "20260101T000000Z/"},
        {"subdir": "20260102T000000Z/"},
        {**rolled.json()[2], "name": "z.txt"},
    ]
    page = session.get(f"{account}/c", params={"limit": 2, "end_marker": "z"}, timeout=30)
    assert page.text == "20260101T000000Z/a.tar\n20260101T000000Z/a.tar/000000\n"
    empty = session.get(f"{account}/c", params={"prefix": "nothing"}, timeout=30)
    assert empty.status_code == 204 and empty.text == ""
    too_many = session.get(f"{account}/c", params={"limit": 10001}, timeout=30)
    assert too_many.status_code == 412


def test_static_large_objects_upload_in_segments_and_read_back_whole(
    site: Any, tmp_path: Path
) -> None:
    """openstacksdk's segmented upload: segments, then the manifest; listed and HEADed at the
    total size, read back byte for byte, the manifest itself with multipart-manifest=get,
    deleted with its segments."""
    store = site.object_store
    store.create_container(name="c")
    data = os.urandom(2_500_000)
    source = tmp_path / "part"
    source.write_bytes(data)
    store.create_object("c", "b/database.dump", filename=str(source), segment_size=1_000_000)
    listed = {item.name: item.content_length for item in store.objects("c")}
    assert listed == {
        "b/database.dump": 2_500_000,
        "b/database.dump/000000": 1_000_000,
        "b/database.dump/000001": 1_000_000,
        "b/database.dump/000002": 500_000,
    }
    head = store.get_object_metadata("b/database.dump", "c")
    assert head.content_length == 2_500_000 and head.is_static_large_object
    got = store.download_object("b/database.dump", container="c")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    session, account = swift(site)
    manifest = session.get(
        f"{account}/c/b/database.dump", params={"multipart-manifest": "get"}, timeout=30
    )
    assert [segment["bytes"] for segment in manifest.json()] == [1_000_000, 1_000_000, 500_000]
    etags = "".join(segment["hash"] for segment in manifest.json())
    assert head.etag.strip('"') == hashlib.md5(etags.encode(), usedforsecurity=False).hexdigest()
    store.delete_object("b/database.dump", container="c")
    assert list(store.objects("c")) == []


def test_a_manifest_with_a_missing_or_different_segment_is_refused(site: Any) -> None:
    """400 with the list of problems; nothing is stored under the manifest's name."""
    session, account = swift(site)
    session.put(f"{account}/c", timeout=30)
    segment = b"12345"
    session.put(f"{account}/c/m/000000", data=segment, timeout=30)
    etag = hashlib.md5(segment, usedforsecurity=False).hexdigest()
    body = json.dumps([
        {"path": "/c/m/000000", "size_bytes": 4, "etag": etag},
        {"path": "/c/m/000001", "size_bytes": 5},
    ])  # fmt: skip
    refused = session.put(
        f"{account}/c/m", params={"multipart-manifest": "put"}, data=body, timeout=30
    )
    assert refused.status_code == 400
    assert refused.text == "Errors:\n/c/m/000000, Size Mismatch\n/c/m/000001, 404 Not Found\n"
    assert session.head(f"{account}/c/m", timeout=30).status_code == 404


def test_an_etag_that_differs_is_422_and_nothing_is_stored(site: Any) -> None:
    session, account = swift(site)
    session.put(f"{account}/c", timeout=30)
    wrong = session.put(f"{account}/c/o", data=b"abc", headers={"ETag": "0" * 32}, timeout=30)
    assert wrong.status_code == 422
    assert session.head(f"{account}/c/o", timeout=30).status_code == 404
    right = hashlib.md5(b"abc", usedforsecurity=False).hexdigest()
    stored = session.put(f"{account}/c/o", data=b"abc", headers={"ETag": right}, timeout=30)
    assert stored.status_code == 201 and stored.headers["Etag"] == right


def test_a_full_quota_refuses_the_upload_with_413(twin: Twin, site: Any) -> None:
    """quota_object_store_bytes, as an operator's X-Account-Meta-Quota-Bytes: 413."""
    session, account = swift(site)
    session.put(f"{account}/c", timeout=30)
    twin.configure(quota_object_store_bytes=10)
    assert session.put(f"{account}/c/a", data=b"12345", timeout=30).status_code == 201
    full = session.put(f"{account}/c/b", data=b"123456", timeout=30)
    assert (full.status_code, full.text) == (413, "Upload exceeds quota.")
    assert session.head(f"{account}/c/b", timeout=30).status_code == 404


def test_a_503_mid_upload_is_the_faults_and_the_segments_before_it_stay(
    twin: Twin, site: Any
) -> None:
    """A fault on the second segment's PUT: 503 there, the first segment stored, the third
    not yet tried (what a backup that fails half-way leaves behind)."""
    session, account = swift(site)
    session.put(f"{account}/c", timeout=30)
    fault = {"method": "PUT", "path": r"/chi-tacc/swift/v1/[^/]+/c/p/000001", "status": 503,
             "body": "<html><h1>Service Unavailable</h1></html>"}  # fmt: skip
    assert twin.admin("POST", "/faults", json=fault).status_code == 201
    answers = [
        session.put(f"{account}/c/p/{index:06d}", data=b"x" * 10, timeout=30).status_code
        for index in range(3)
    ]
    assert answers == [201, 503, 201]
    failed = [e for e in twin.events() if e.get("kind") == "fault"]
    assert failed and failed[-1]["status"] == 503


def test_another_projects_account_is_403_and_accounts_are_not_made_by_members(site: Any) -> None:
    session, account = swift(site)
    other = account.rsplit("AUTH_", 1)[0] + "AUTH_" + "0" * 32
    assert session.get(other, timeout=30).status_code == 403
    assert session.put(account, timeout=30).status_code == 405
    assert session.delete(account, timeout=30).status_code == 405


def test_info_needs_no_token_and_objects_survive_a_restart(twin: Twin, site: Any) -> None:
    """GET /info answers anyone; after a restart on the same state dir the bytes are there."""
    store = site.object_store
    info = requests.get(f"{twin.url}/chi-tacc/swift/info", timeout=30).json()
    assert info["slo"]["max_manifest_segments"] == 1000 and info["swift"]["max_file_size"] > 0
    store.create_container(name="c")
    store.create_object("c", "kept", data=b"still here")
    twin.stop()
    twin.start()
    import openstack

    again = openstack.connect(cloud="chi_tacc")
    assert again.object_store.download_object("kept", container="c") == b"still here"
