"""Glance on the twin: images found by name (exactly one) and by id, as the provider does."""

from __future__ import annotations

from tests.twin.harness import Api


def test_image_by_name_then_by_id(shared_api: Api) -> None:
    """gophercloud/utils images.IDFromName, then images.Get (setImageInformation)."""
    api = shared_api
    images = api.get(f"{api.image}/images", params={"name": "CC-Ubuntu24.04"}).json()["images"]
    assert [image["name"] for image in images] == ["CC-Ubuntu24.04"]
    image = api.get(f"{api.image}/images/{images[0]['id']}").json()
    assert (image["name"], image["status"], image["visibility"]) == (
        "CC-Ubuntu24.04",
        "active",
        "public",
    )
    assert isinstance(image["size"], int) and image["created_at"].endswith("Z")
    assert image["self"] == f"/v2/images/{image['id']}"


def test_unknown_name_lists_nothing(shared_api: Api) -> None:
    response = shared_api.get(f"{shared_api.image}/images", params={"name": "CC-Windows"})
    assert response.status_code == 200 and response.json()["images"] == []


def test_missing_image_is_webobs_404(shared_api: Api) -> None:
    missing = "0b6f0f27-1b5a-4d4a-9f0e-3e3b1f7a0c11"
    response = shared_api.get(f"{shared_api.image}/images/{missing}")
    assert response.status_code == 404
    assert response.json() == {
        "message": f"No image found with ID {missing}",
        "code": "404 Not Found",
        "title": "Not Found",
    }


def test_property_filter_and_paging(shared_api: Api) -> None:
    """Unknown keys filter on custom properties; limit gives a `next` link."""
    api = shared_api
    noble = api.get(f"{api.image}/images", params={"os_version": "24.04"}).json()["images"]
    assert {image["name"] for image in noble} == {"CC-Ubuntu24.04", "CC-Ubuntu24.04-CUDA"}
    page = api.get(f"{api.image}/images", params={"limit": 1}).json()
    assert len(page["images"]) == 1
    assert page["next"] == f"/v2/images?limit=1&marker={page['images'][0]['id']}"
    bad = api.get(f"{api.image}/images", params={"limit": "many"})
    assert bad.status_code == 400


def test_next_and_first_links_keep_the_filters(shared_api: Api) -> None:
    """Glance's links carry the request's filters (only the marker changes): gophercloud follows
    `next` as given, so a filter dropped there would list unmatched images on the next page."""
    api = shared_api
    page = api.get(f"{api.image}/images", params={"os_version": "24.04", "limit": 1}).json()
    assert page["first"] == "/v2/images?os_version=24.04&limit=1"
    assert page["next"] == f"/v2/images?os_version=24.04&limit=1&marker={page['images'][0]['id']}"
    second = api.get(f"{api.url}/image{page['next']}").json()
    names = {image["name"] for image in page["images"] + second["images"]}
    assert names == {"CC-Ubuntu24.04", "CC-Ubuntu24.04-CUDA"}
    assert api.get(f"{api.image}/images").json()["first"] == "/v2/images"
