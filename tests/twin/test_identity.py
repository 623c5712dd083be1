"""Keystone on the twin: tokens as gophercloud asks for them, the catalog, and token checks."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
import requests

from tests.twin.harness import Twin

TIME_Z_MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_application_credential_token_is_created_with_catalog(shared_twin: Twin) -> None:
    """POST /v3/auth/tokens with the clouds.yaml credential: 201, X-Subject-Token, a full token."""
    response = shared_twin.authenticate(shared_twin.application_credential_auth())
    assert response.status_code == 201
    assert response.headers["X-Subject-Token"]
    token = response.json()["token"]
    assert token["methods"] == ["application_credential"]
    assert TIME_Z_MICRO.match(token["expires_at"])
    expires = datetime.strptime(token["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc
    )
    assert expires > datetime.now(timezone.utc)
    assert token["project"]["name"] == "CHI-twin"
    assert token["user"]["name"] == "student"
    # Unrestricted by default (the twin setting application_credential_unrestricted).
    assert token["application_credential"]["restricted"] is False
    catalog = {entry["type"]: entry for entry in token["catalog"]}
    assert set(catalog) == {"identity", "compute", "network", "image", "volumev3", "reservation"}
    for entry in catalog.values():
        (endpoint,) = entry["endpoints"]
        assert endpoint["interface"] == "public"
        assert endpoint["region"] == endpoint["region_id"] == "KVM@TACC"
        assert endpoint["url"].startswith(shared_twin.url)
    assert catalog["compute"]["endpoints"][0]["url"].endswith("/v2.1")
    assert catalog["reservation"]["endpoints"][0]["url"] == f"{shared_twin.url}/v1"
    assert catalog["volumev3"]["endpoints"][0]["url"].endswith(f"/v3/{token['project']['id']}")
    for unversioned in ("network", "image"):
        assert not re.search(r"/v\d", catalog[unversioned]["endpoints"][0]["url"])


@pytest.mark.parametrize(
    "scope",
    [
        lambda credentials: {
            "project": {"name": credentials["project_name"], "domain": {"name": "Default"}}
        },
        lambda credentials: {"project": {"id": credentials["project_id"]}},
    ],
    ids=["project-name", "project-id"],
)
def test_password_token_scoped_to_the_project(shared_twin: Twin, scope) -> None:
    """Password auth with a project scope gets the same catalog as the application credential."""
    credentials = shared_twin.clouds()["twin-password"]["auth"]
    project_id = shared_twin.api().project_id
    auth = {
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
        "scope": scope({**credentials, "project_id": project_id}),
    }
    response = shared_twin.authenticate(auth)
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert token["methods"] == ["password"]
    assert token["project"]["id"] == project_id
    assert {entry["type"] for entry in token["catalog"]} >= {"compute", "volumev3"}


def test_wrong_secret_is_refused_as_keystone_does(shared_twin: Twin) -> None:
    """A wrong secret: 401 in Keystone's error body, nothing about which part was wrong."""
    auth = shared_twin.application_credential_auth()
    auth["identity"]["application_credential"]["secret"] = "not-the-secret"
    response = shared_twin.authenticate(auth)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": 401,
            "message": "The request you have made requires authentication.",
            "title": "Unauthorized",
        }
    }
    assert "X-Subject-Token" not in response.headers


def test_application_credential_cannot_request_a_scope(shared_twin: Twin) -> None:
    """keystone/auth/core.py: an application credential carries its own scope."""
    auth = shared_twin.application_credential_auth()
    auth["scope"] = {"project": {"id": shared_twin.api().project_id}}
    response = shared_twin.authenticate(auth)
    assert response.status_code == 401
    assert "Application credentials cannot request a scope." in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"auth": {}}, 400, "'identity' is a required property"),
        (
            {"auth": {"identity": {"methods": []}}},
            400,
            "Invalid input for field 'auth/identity/methods'",
        ),
        (
            {"auth": {"identity": {"methods": ["password"]}}},
            400,
            "Expecting to find password in identity",
        ),
        ({"auth": {"identity": {"methods": ["totp"], "totp": {}}}}, 401, "unsupported method"),
        ({"nothing": 1}, 400, "'auth' is a required property"),
    ],
    ids=["no-identity", "no-methods", "method-without-data", "unsupported-method", "no-auth"],
)
def test_malformed_token_requests_are_refused(shared_twin: Twin, body, status, fragment) -> None:
    """Keystone's schema and plugin checks, each with its status and message."""
    response = shared_twin.http.post(f"{shared_twin.url}/v3/auth/tokens", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


def test_version_documents_are_what_gophercloud_chooses_from(shared_twin: Twin) -> None:
    """The root lists v3 as stable (300 Multiple Choices) with a self link ending in /v3/."""
    root = shared_twin.http.get(shared_twin.url + "/", timeout=30)
    assert root.status_code == 300
    (value,) = root.json()["versions"]["values"]
    assert value["id"].startswith("v3.") and value["status"] == "stable"
    assert value["links"][0] == {"rel": "self", "href": f"{shared_twin.url}/v3/"}
    v3 = shared_twin.http.get(shared_twin.url + "/v3", timeout=30)
    assert v3.status_code == 200 and v3.json()["version"]["id"] == value["id"]


@pytest.mark.parametrize(
    "path",
    [
        "/compute/v2.1/servers/detail",
        "/network/v2.0/networks",
        "/image/v2/images",
        "/volume/v3/{project}/volumes/detail",
    ],
)
@pytest.mark.parametrize("token", [None, "gAAAAAB-not-a-token"], ids=["no-token", "bad-token"])
def test_every_service_needs_a_valid_token(shared_twin: Twin, path: str, token: str | None) -> None:
    """keystonemiddleware's refusal: 401, Keystone's body, and where to authenticate."""
    api = shared_twin.api()
    headers = {"X-Auth-Token": token} if token else {}
    response = requests.get(
        shared_twin.url + path.format(project=api.project_id), headers=headers, timeout=30
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == 401
    assert response.headers["WWW-Authenticate"] == f'Keystone uri="{shared_twin.url}/v3"'


def test_service_version_documents_need_no_token(shared_twin: Twin) -> None:
    """gophercloud discovers the network and image versions at the endpoint's root."""
    for path, expected in (("/network/", "v2.0"), ("/image/", "v2.16"), ("/compute/", "v2.1")):
        response = requests.get(shared_twin.url + path, timeout=30)
        assert response.status_code in (200, 300), path
        ids = [version["id"] for version in response.json()["versions"]]
        assert expected in ids
        # utils.ParseStatus accepts only these.
        assert {version["status"] for version in response.json()["versions"]} <= {
            "CURRENT",
            "SUPPORTED",
        }


def test_token_can_be_validated_and_revoked(shared_twin: Twin) -> None:
    """GET /v3/auth/tokens shows a live token; after DELETE every service refuses it."""
    api = shared_twin.api()
    caller = shared_twin.api()
    headers = {"X-Auth-Token": caller.token, "X-Subject-Token": api.token}
    shown = requests.get(f"{shared_twin.url}/v3/auth/tokens", headers=headers, timeout=30)
    assert shown.status_code == 200
    assert shown.json()["token"]["project"]["id"] == api.project_id
    assert api.get(f"{api.compute}/flavors").status_code == 200
    revoked = requests.delete(f"{shared_twin.url}/v3/auth/tokens", headers=headers, timeout=30)
    assert revoked.status_code == 204
    assert api.get(f"{api.compute}/flavors").status_code == 401
    missing = requests.get(f"{shared_twin.url}/v3/auth/tokens", headers=headers, timeout=30)
    assert missing.status_code == 404


def test_unscoped_token_has_no_catalog_and_no_service(shared_twin: Twin) -> None:
    """A password token without scope lists no services and opens none of them."""
    credentials = shared_twin.clouds()["twin-password"]["auth"]
    auth = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {
                    "name": credentials["username"],
                    "password": credentials["password"],
                    "domain": {"id": "default"},
                }
            },
        }
    }
    response = shared_twin.authenticate(auth)
    assert response.status_code == 201
    assert "catalog" not in response.json()["token"]
    api = shared_twin.api()
    refused = requests.get(
        f"{api.compute}/flavors",
        headers={"X-Auth-Token": response.headers["X-Subject-Token"]},
        timeout=30,
    )
    assert refused.status_code == 401


def test_trusts_are_listed_as_keystone_lists_them(twin: Twin) -> None:
    """GET /v3/OS-TRUST/trusts: no token 401; another trustor or no filter refused by the
    policy (403); an application credential reads its user's trusts before CVE-2026-43000's
    fix, restricted or not (only creating and deleting was refused), and is refused every
    trust operation with the fix (keystone/api/trusts.py _check_application_credential)."""
    api = twin.api()
    url = f"{twin.url}/v3/OS-TRUST/trusts"
    user_id = api.body["token"]["user"]["id"]
    anonymous = twin.http.get(url, params={"trustor_user_id": user_id}, timeout=30)
    assert anonymous.status_code == 401
    other = api.get(url, params={"trustor_user_id": "0" * 32})
    assert other.status_code == 403
    assert other.json()["error"]["message"] == (
        "You are not authorized to perform the requested action: identity:list_trusts_for_trustor."
    )
    assert api.get(url).status_code == 403
    listed = api.get(url, params={"trustor_user_id": user_id})
    assert listed.status_code == 200, listed.text
    assert listed.json()["trusts"] == [] and listed.json()["links"]["next"] is None
    twin.configure(application_credential_unrestricted=False)
    assert twin.api().get(url, params={"trustor_user_id": user_id}).status_code == 200
    twin.configure(keystone_refuses_application_credential_trusts=True)
    refused = twin.api().get(url, params={"trustee_user_id": user_id})
    assert refused.status_code == 403
    assert (
        "'application_credential' is not allowed for managing trusts"
        in (refused.json()["error"]["message"])
    )
