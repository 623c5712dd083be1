"""The few OpenStack calls a network lookup makes, answered on 127.0.0.1.

Keystone v3 `POST /v3/auth/tokens` (201, the token in `X-Subject-Token`, a
catalog with `network` endpoints), Neutron's version document and
`GET /v2.0/networks?name=...`, shaped as gophercloud v2.8.0 (which
terraform-provider-openstack v3.4.0 uses) reads them. The catalog offers
Neutron three times: public in `region` at `/`, internal in `region` at
`/internal/`, public in `other_region` at `/other-region/`, so a test sees
which endpoint the provider chose. Every request is recorded; any other
request is answered 404 and recorded too, so a test can name what the
provider asked for. Neutron answers only requests that carry the token
Keystone issued.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN_EXPIRY = "2099-01-01T00:00:00.000000Z"
NEUTRON_ROOTS = ("/", "/internal/", "/other-region/")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None
    token: str | None


@dataclass
class KeystoneNeutron:
    """Configuration (regions, networks) and the record of what was asked."""

    networks: list[dict]
    region: str = "KVM@TACC"
    other_region: str = "CHI@UC"
    project: dict = field(default_factory=lambda: {"id": uuid.uuid4().hex, "name": "CHI-000000"})
    requests: list[Request] = field(default_factory=list)
    issued_tokens: set[str] = field(default_factory=set)
    port: int = 0

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def catalog(self) -> list[dict]:
        base = f"http://127.0.0.1:{self.port}"
        return [
            {
                "type": "network",
                "name": "neutron",
                "id": "network-service",
                "endpoints": [
                    {
                        "id": "n1",
                        "interface": "public",
                        "region": self.region,
                        "region_id": self.region,
                        "url": f"{base}/",
                    },
                    {
                        "id": "n2",
                        "interface": "internal",
                        "region": self.region,
                        "region_id": self.region,
                        "url": f"{base}/internal/",
                    },
                    {
                        "id": "n3",
                        "interface": "public",
                        "region": self.other_region,
                        "region_id": self.other_region,
                        "url": f"{base}/other-region/",
                    },
                ],
            },
            {
                "type": "identity",
                "name": "keystone",
                "id": "identity-service",
                "endpoints": [
                    {
                        "id": "k1",
                        "interface": "public",
                        "region": self.region,
                        "region_id": self.region,
                        "url": f"{base}/v3/",
                    },
                ],
            },
        ]

    def token_body(self, methods: list[str]) -> dict:
        domain = {"id": "default", "name": "Default"}
        return {
            "token": {
                "methods": methods,
                "expires_at": TOKEN_EXPIRY,
                "issued_at": "2026-01-01T00:00:00.000000Z",
                "user": {"id": uuid.uuid4().hex, "name": "student", "domain": domain},
                "project": {**self.project, "domain": domain},
                "catalog": self.catalog(),
            }
        }


def _handler(api: KeystoneNeutron) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass

        def _send(self, status: int, body: dict | None, headers: dict | None = None) -> None:
            payload = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _record(self) -> Request:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            request = Request(
                self.command,
                parts.path,
                parse_qs(parts.query),
                body,
                self.headers.get("X-Auth-Token"),
            )
            api.requests.append(request)
            return request

        def do_POST(self):  # noqa: N802 - http.server's naming
            request = self._record()
            if request.path.rstrip("/") == "/v3/auth/tokens" and request.body:
                token = uuid.uuid4().hex
                api.issued_tokens.add(token)
                methods = request.body.get("auth", {}).get("identity", {}).get("methods", [])
                self._send(201, api.token_body(methods), {"X-Subject-Token": token})
                return
            self._send(404, {"error": f"not served: POST {request.path}"})

        def do_GET(self):  # noqa: N802 - http.server's naming
            request = self._record()
            if request.path in NEUTRON_ROOTS:
                # Neutron's version document: gophercloud reads it when it
                # looks the endpoint up itself (OS_DELAYED_AUTH=false).
                link = f"http://127.0.0.1:{api.port}{request.path}v2.0/"
                self._send(
                    200,
                    {
                        "versions": [
                            {
                                "id": "v2.0",
                                "status": "CURRENT",
                                "links": [{"href": link, "rel": "self"}],
                            }
                        ]
                    },
                )
                return
            if request.path.endswith("/v2.0/networks"):
                if request.token not in api.issued_tokens:
                    self._send(401, {"error": "unknown token"})
                    return
                names = request.query.get("name")
                found = [n for n in api.networks if not names or n["name"] in names]
                self._send(200, {"networks": found})
                return
            self._send(404, {"error": f"not served: GET {request.path}"})

    return Handler


class Server:
    """KeystoneNeutron served on 127.0.0.1 from a thread, for a `with` block."""

    def __init__(self, api: KeystoneNeutron):
        self.api = api
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
        api.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> KeystoneNeutron:
        self._thread.start()
        return self.api

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


def network(name: str) -> dict:
    """A Neutron network as `GET /v2.0/networks` lists it."""
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "description": "",
        "admin_state_up": True,
        "shared": True,
        "status": "ACTIVE",
        "subnets": [],
        "tenant_id": "admin-project",
        "project_id": "admin-project",
        "router:external": False,
        "mtu": 1500,
        "availability_zone_hints": [],
        "tags": [],
    }
