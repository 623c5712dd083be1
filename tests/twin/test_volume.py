"""Cinder on the twin: volumes as files, their status, filters, extend, delete, and the errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.twin import steps
from tests.twin.harness import Api, Twin, wait_for

GIB = 1024**3
CINDER_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")


def cinder_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    (name,) = body
    assert body[name]["code"] == status
    return body[name]["message"]


def disk_of(twin: Twin, volume_id: str) -> Path:
    return twin.state_dir / "volumes" / f"{volume_id}.img"


def test_volume_is_created_then_available_as_a_sparse_file(
    shared_twin: Twin, shared_api: Api
) -> None:
    """POST 202 creating; then available, with Cinder's time format and a file of size GiB."""
    api = shared_api
    body = {
        "volume": {
            "name": "block-persist-v1",
            "size": 2,
            "description": "data",
            "metadata": {"k": "v"},
        }
    }
    response = api.post(f"{api.volume}/volumes", json=body)
    assert response.status_code == 202
    created = response.json()["volume"]
    assert created["status"] == "creating"
    assert CINDER_TIME.match(created["created_at"])
    wait_for(lambda: steps.volume_status(api, created["id"]) == "available")
    volume = api.get(f"{api.volume}/volumes/{created['id']}").json()["volume"]
    assert (volume["name"], volume["size"], volume["description"]) == (
        "block-persist-v1",
        2,
        "data",
    )
    assert volume["metadata"] == {"k": "v"} and volume["attachments"] == []
    assert volume["volume_type"] == "__DEFAULT__"
    assert CINDER_TIME.match(volume["updated_at"])
    disk = disk_of(shared_twin, volume["id"])
    assert disk.stat().st_size == 2 * GIB
    assert disk.stat().st_blocks * 512 < 1024 * 1024, "the volume's file should be sparse"


def test_list_filters_the_data_source_uses(shared_api: Api) -> None:
    """GET /volumes/detail?name=&status=&metadata= (the volume data source of the provider)."""
    api = shared_api
    first = steps.volume(api, "filter-a", 1)
    api.put(
        f"{api.volume}/volumes/{first['id']}",
        json={"volume": {"metadata": {"class": "ml", "term": "f26"}}},
    )
    steps.volume(api, "filter-b", 1)

    def names(**params) -> list[str]:
        return [
            v["name"]
            for v in api.get(f"{api.volume}/volumes/detail", params=params).json()["volumes"]
        ]

    assert names(name="filter-a") == ["filter-a"]
    assert "filter-b" in names(status="available")
    assert names(metadata="{'class': 'ml'}") == ["filter-a"]
    assert names(metadata="{'class': 'ml', 'term': 'f25'}") == []
    summary = api.get(f"{api.volume}/volumes", params={"name": "filter-a"}).json()["volumes"]
    assert [set(each) for each in summary] == [{"id", "name", "links"}]


def test_next_link_keeps_the_filters(shared_api: Api) -> None:
    """Cinder's volumes_links keep the request's parameters, only the marker replaced
    (cinder/api/common.py _get_next_link): gophercloud follows the link as given, so a filter
    dropped there would list other volumes on the next page."""
    api = shared_api
    for name in ("paged", "not-paged", "paged"):
        steps.volume(api, name, 1)
    seen: list[str] = []
    url, params = f"{api.volume}/volumes/detail", {"name": "paged", "limit": "1"}
    while url:
        body = api.get(url, params=params).json()
        seen += [volume["name"] for volume in body["volumes"]]
        links = [link["href"] for link in body.get("volumes_links", []) if link["rel"] == "next"]
        url, params = (links[0] if links else ""), {}
        assert not url or ("name=paged" in url and "limit=1" in url), url
    assert seen == ["paged", "paged"]


def test_unknown_filter_is_dropped_before_3_34_and_refused_after(shared_api: Api) -> None:
    """Cinder drops filters a user may not use, and from 3.34 refuses them."""
    api = shared_api
    steps.volume(api, "filter-c", 1)
    dropped = api.get(f"{api.volume}/volumes/detail", params={"colour": "blue"})
    assert dropped.status_code == 200 and dropped.json()["volumes"]
    refused = api.get(
        f"{api.volume}/volumes/detail",
        params={"colour": "blue"},
        headers={"OpenStack-API-Version": "volume 3.34"},
    )
    assert cinder_error(refused, 400) == "Invalid filters colour are found in query options."


def test_update_name_description_metadata(shared_api: Api) -> None:
    api = shared_api
    volume = steps.volume(api, "rename-me", 1)
    body = {"volume": {"name": "renamed", "description": "new", "metadata": {"a": "b"}}}
    updated = api.put(f"{api.volume}/volumes/{volume['id']}", json=body)
    assert updated.status_code == 200
    assert {key: updated.json()["volume"][key] for key in ("name", "description", "metadata")} == {
        "name": "renamed",
        "description": "new",
        "metadata": {"a": "b"},
    }
    refused = api.put(f"{api.volume}/volumes/{volume['id']}", json={"volume": {"size": 3}})
    assert "Additional properties are not allowed" in cinder_error(refused, 400)


def test_delete_goes_through_deleting_to_404(shared_twin: Twin, shared_api: Api) -> None:
    api = shared_api
    volume = steps.volume(api, "delete-me", 1)
    response = api.delete(f"{api.volume}/volumes/{volume['id']}")
    assert response.status_code == 202
    assert steps.volume_status(api, volume["id"]) in ("deleting", None)
    wait_for(lambda: steps.volume_status(api, volume["id"]) is None, what="volume gone")
    gone = api.get(f"{api.volume}/volumes/{volume['id']}")
    assert cinder_error(gone, 404) == f"Volume {volume['id']} could not be found."
    assert gone.json() == {
        "itemNotFound": {"code": 404, "message": f"Volume {volume['id']} could not be found."}
    }
    assert not disk_of(shared_twin, volume["id"]).exists()


def test_extend_an_available_volume(shared_twin: Twin, shared_api: Api) -> None:
    """os-extend: 202, extending, then available with the new size and a bigger file."""
    api = shared_api
    volume = steps.volume(api, "grow-me", 1)
    action = f"{api.volume}/volumes/{volume['id']}/action"
    assert api.post(action, json={"os-extend": {"new_size": 3}}).status_code == 202
    wait_for(lambda: steps.volume_status(api, volume["id"]) == "available")
    assert api.get(f"{api.volume}/volumes/{volume['id']}").json()["volume"]["size"] == 3
    assert disk_of(shared_twin, volume["id"]).stat().st_size == 3 * GIB
    smaller = api.post(action, json={"os-extend": {"new_size": 2}})
    assert cinder_error(smaller, 400) == (
        "Invalid input received: New size for extend must be greater than current size. "
        "(current: 3, extended: 2)."
    )


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (
            {"volume": {"name": "x"}},
            400,
            "Volume size 'None' must be an integer and greater than 0",
        ),
        ({"volume": {"size": "two"}}, 400, "does not match '^[0-9]+$'"),
        (
            {"volume": {"size": 1, "volume_type": "gold"}},
            404,
            "Volume type with name gold could not be found.",
        ),
        ({"volume": {"size": 1, "metadata": {"k": 1}}}, 400, "1 is not of type 'string'"),
        (
            {"volume": {"size": 1}, "extra": 1},
            400,
            "Additional properties are not allowed ('extra' was unexpected)",
        ),
        ({"size": 1}, 400, "'volume' is a required property"),
    ],
    ids=["no-size", "size-text", "type", "metadata", "top-level", "no-volume"],
)
def test_invalid_volume_creates(shared_api: Api, body: dict, status: int, fragment: str) -> None:
    """Cinder's schema and create checks, each refused with its status and message."""
    response = shared_api.post(f"{shared_api.volume}/volumes", json=body)
    assert fragment in cinder_error(response, status)


def test_from_353_unknown_volume_fields_are_refused(shared_api: Api) -> None:
    """Before 3.53 Cinder ignores unknown fields in a create; from 3.53 it refuses them."""
    api = shared_api
    body = {"volume": {"size": 1, "colour": "blue"}}
    assert api.post(f"{api.volume}/volumes", json=body).status_code == 202
    refused = api.post(
        f"{api.volume}/volumes", json=body, headers={"OpenStack-API-Version": "volume 3.53"}
    )
    assert "Additional properties are not allowed ('colour' was unexpected)" in cinder_error(
        refused, 400
    )


@pytest.mark.parametrize(
    ("header", "status", "fragment"),
    [
        (
            "volume 3.99",
            406,
            "Version 3.99 is not supported by the API. Minimum is 3.0 and maximum is 3.60.",
        ),
        ("volume three", 400, "API Version String three is of invalid format."),
    ],
)
def test_microversion_out_of_range_or_malformed(
    shared_api: Api, header: str, status: int, fragment: str
) -> None:
    response = shared_api.get(
        f"{shared_api.volume}/volumes", headers={"OpenStack-API-Version": header}
    )
    assert fragment in cinder_error(response, status)


def test_answers_carry_the_microversion(shared_api: Api) -> None:
    response = shared_api.get(
        f"{shared_api.volume}/volumes", headers={"OpenStack-API-Version": "volume 3.42"}
    )
    assert response.headers["OpenStack-API-Version"] == "volume 3.42"
    assert (
        shared_api.get(f"{shared_api.volume}/volumes").headers["OpenStack-API-Version"]
        == "volume 3.0"
    )


def test_unknown_and_unserved_actions(shared_api: Api) -> None:
    api = shared_api
    volume = steps.volume(api, "actions", 1)
    action = f"{api.volume}/volumes/{volume['id']}/action"
    unknown = api.post(action, json={"os-dance": {}})
    assert cinder_error(unknown, 400).startswith("There is no such action: os-dance.")
    unserved = api.post(action, json={"os-retype": {"new_type": "x"}})
    assert "os-retype" in cinder_error(unserved, 501)


def test_volume_types_are_listed(shared_api: Api) -> None:
    api = shared_api
    types = api.get(f"{api.volume}/types").json()["volume_types"]
    assert [each["name"] for each in types] == ["__DEFAULT__"]
    assert (
        api.get(f"{api.volume}/types/{types[0]['id']}").json()["volume_type"]["name"]
        == "__DEFAULT__"
    )


def test_other_projects_path_is_refused(shared_api: Api) -> None:
    api = shared_api
    other = api.volume.replace(api.project_id, "0" * 32)
    response = api.get(f"{other}/volumes")
    assert cinder_error(response, 400) == "Malformed request url"
