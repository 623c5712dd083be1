"""A call the twin does not serve, or a malformed one, fails loudly in the service's own format."""

from __future__ import annotations

import pytest

from tests.twin.harness import Api


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("{compute}/os-hypervisors", "nova"),
        ("{network}/routers", "neutron"),
        ("{image}/schemas/image", "glance"),
        ("{volume}/snapshots", "cinder"),
        ("/v3/projects", "keystone"),
    ],
)
def test_unserved_paths_are_named_in_the_services_format(
    shared_api: Api, path: str, shape: str
) -> None:
    """404 naming the method and the path, in Nova/Neutron/Glance/Cinder/Keystone's body."""
    api = shared_api
    url = path.format(compute=api.compute, network=api.network, image=api.image, volume=api.volume)
    if url.startswith("/"):
        url = api.url + url
    response = api.get(url)
    assert response.status_code == 404
    body = response.json()
    if shape in ("nova", "cinder"):
        message = body["itemNotFound"]["message"]
    elif shape == "neutron":
        assert body["NeutronError"]["type"] == "HTTPNotFound"
        message = body["NeutronError"]["message"]
    elif shape == "glance":
        assert body["code"] == "404 Not Found"
        message = body["message"]
    else:
        assert body["error"]["code"] == 404
        message = body["error"]["message"]
    assert "The twin does not serve GET /" in message
    assert url.removeprefix(api.url) in message


def test_wrong_method_is_405_naming_what_is_served(shared_api: Api) -> None:
    api = shared_api
    response = api.post(f"{api.network}/networks", json={"network": {"name": "mine"}})
    assert response.status_code == 405
    message = response.json()["NeutronError"]["message"]
    assert "POST" in message and "GET" in message and "/network/v2.0/networks" in message


@pytest.mark.parametrize(
    ("service", "path", "key"),
    [
        ("compute", "/servers", "badRequest"),
        ("volume", "/volumes", "badRequest"),
        ("network", "/ports", "NeutronError"),
    ],
)
def test_malformed_json_is_400(shared_api: Api, service: str, path: str, key: str) -> None:
    api = shared_api
    url = getattr(api, service) + path
    response = api.post(url, data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    body = response.json()[key]
    assert body["message"] == "Malformed request body"


def test_empty_body_is_refused(shared_api: Api) -> None:
    api = shared_api
    assert api.post(f"{api.compute}/servers").status_code == 400
    assert (
        api.post(f"{api.network}/ports").json()["NeutronError"]["message"]
        == "Resource body required"
    )
