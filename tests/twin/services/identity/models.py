"""Keystone v3 as KVM@TACC's: one domain, one project, one user, its application credential.

Tokens are opaque strings kept in the state (so they survive a restart, as
Fernet tokens do). The catalog lists one public endpoint per service in region
KVM@TACC, with URLs under the address the client reached the twin at; the
shapes and the endpoint rules are gophercloud v2.8.0's (openstack/endpoint.go:
a versionless endpoint is version-discovered, so `network` and `image` must
answer a version document at their root).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tests.twin.services.core import IdentityError
from tests.twin.services.state import new_hex_id, new_secret, now, parse_stamp, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

REGION = "KVM@TACC"
# The catalog: (type, name, path under the twin's address). Every endpoint is public.
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("identity", "keystone", "/v3"),
    ("compute", "nova", "/compute/v2.1"),
    ("network", "neutron", "/network"),
    ("image", "glance", "/image"),
    ("volumev3", "cinderv3", "/volume/v3/{project_id}"),
    # Blazar's catalog entry ends in its API version, as KVM@TACC's does.
    ("reservation", "blazar", "/v1"),
)
UNAUTHORIZED = "The request you have made requires authentication."
# Services with a user of their own in Keystone (Blazar makes its trusts to its user).
SERVICE_USERS = ("blazar",)
# keystone/exception.py ForbiddenAction's message with the action keystone/api/trusts.py
# names when it refuses a trust operation to an application credential's token.
TRUST_REFUSED = (
    "You are not authorized to perform the requested action: Using method "
    "'application_credential' is not allowed for managing trusts."
)


def unauthorized(message: str = UNAUTHORIZED) -> IdentityError:
    return IdentityError(401, message)


class IdentityBackend:
    """One site's Keystone. KVM@TACC's by default; another site (CHI@TACC, in
    tests/twin/services/chi_tacc) keeps its own data, tokens, region and catalog under other
    names."""

    DATA_KEY = "identity"
    TOKENS = "tokens"
    REGION = REGION
    SERVICES = SERVICES
    PROJECT_NAME = "CHI-twin"

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        domain = {"id": "default", "name": "Default"}
        project_id = new_hex_id()
        self.state.data[self.DATA_KEY] = {
            "domain": domain,
            "project": {"id": project_id, "name": self.PROJECT_NAME, "domain_id": domain["id"]},
            # Owner of the shared networks, as an operator's admin project is.
            "admin_project_id": new_hex_id(),
            "user": {
                "id": new_hex_id(),
                "name": "student",
                "domain_id": domain["id"],
                "password": new_secret(24),
            },
            "application_credential": {
                "id": new_hex_id(),
                "name": "twin",
                "secret": new_secret(32),
            },
            "services": {kind: new_hex_id() for kind, _, _ in self.SERVICES},
            "endpoints": {kind: new_hex_id() for kind, _, _ in self.SERVICES},
            # The services' own users, trustees of the trusts they are given.
            "service_users": {name: new_hex_id() for name in SERVICE_USERS},
        }
        self.state.data.setdefault("trusts", {})

    def recover(self) -> None:
        identity = self.state.data[self.DATA_KEY]
        for kind, _, _ in self.SERVICES:
            identity["services"].setdefault(kind, new_hex_id())
            identity["endpoints"].setdefault(kind, new_hex_id())
        users = identity.setdefault("service_users", {})
        for name in SERVICE_USERS:
            users.setdefault(name, new_hex_id())
        self.state.data.setdefault("trusts", {})
        moment = now()
        tokens = self.state.collection(self.TOKENS)
        for token_id in [
            key for key, token in tokens.items() if parse_stamp(token["expires_at"]) <= moment
        ]:
            del tokens[token_id]

    # --- facts ---------------------------------------------------------------------------

    @property
    def data(self) -> dict[str, Any]:
        return self.state.data[self.DATA_KEY]

    @property
    def project(self) -> dict[str, Any]:
        return self.data["project"]

    @property
    def project_id(self) -> str:
        return self.data["project"]["id"]

    @property
    def user(self) -> dict[str, Any]:
        return self.data["user"]

    @property
    def user_id(self) -> str:
        return self.data["user"]["id"]

    @property
    def admin_project_id(self) -> str:
        return self.data["admin_project_id"]

    @property
    def application_credential_unrestricted(self) -> bool:
        """A twin setting, so tests can refuse or allow what only unrestricted ones may do."""
        return bool(self.cloud.config["application_credential_unrestricted"])

    def credentials(self) -> dict[str, Any]:
        """What DIR/clouds.yaml carries."""
        credential = self.data["application_credential"]
        return {
            "application_credential_id": credential["id"],
            "application_credential_secret": credential["secret"],
            "username": self.user["name"],
            "password": self.user["password"],
            "project_name": self.project["name"],
            "project_id": self.project_id,
            "user_domain_name": self.data["domain"]["name"],
            "project_domain_name": self.data["domain"]["name"],
        }

    def catalog(self, base_url: str) -> list[dict[str, Any]]:
        entries = []
        for kind, name, path in self.SERVICES:
            url = base_url + path.format(project_id=self.project_id)
            entries.append(
                {
                    "id": self.data["services"][kind],
                    "type": kind,
                    "name": name,
                    "endpoints": [
                        {
                            "id": self.data["endpoints"][kind],
                            "interface": "public",
                            "region": self.REGION,
                            "region_id": self.REGION,
                            "url": url,
                        }
                    ],
                }
            )
        return entries

    # --- authentication (keystone/auth/core.py, keystone/auth/plugins) ----------------

    # Upstream: keystone/auth/plugins/application_credential.py ApplicationCredential.authenticate.
    def authenticate(self, auth: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """A new token for a validated `auth` object: (token id, token record)."""
        identity = auth["identity"]
        methods = identity["methods"]
        for method in methods:
            if method not in ("password", "application_credential", "token"):
                raise unauthorized("Attempted to authenticate with an unsupported method.")
            if method not in identity:
                raise IdentityError(
                    400,
                    f"Expecting to find {method} in identity. The server could not comply with "
                    "the request since it is either malformed or otherwise incorrect. The "
                    "client is assumed to be in error.",
                )
        scope = auth.get("scope")
        app_credential_id = None
        if "application_credential" in methods:
            if scope is not None:
                raise unauthorized(
                    "Error authenticating with application credential: Application "
                    "credentials cannot request a scope."
                )
            app_credential_id = self._check_application_credential(
                identity["application_credential"]
            )
            project_id: str | None = self.project_id
        else:
            if "password" in methods:
                self._check_password(identity["password"])
            if "token" in methods:
                previous = self.token(identity["token"].get("id", ""))
                if previous is None:
                    raise unauthorized()
                app_credential_id = previous.get("application_credential_id")
            project_id = self._scope(scope)
        issued = now()
        token = {
            "user_id": self.user_id,
            "project_id": project_id,
            "methods": list(methods),
            "issued_at": stamp(issued),
            "expires_at": stamp(issued + timedelta(seconds=self.cloud.config["token_seconds"])),
            "audit_ids": [new_secret(16)[:22]],
            "application_credential_id": app_credential_id,
        }
        token_id = "gAAAAAB" + new_secret(90)
        self.state.collection(self.TOKENS)[token_id] = token
        return token_id, token

    def _check_application_credential(self, given: dict[str, Any]) -> str:
        credential = self.data["application_credential"]
        if given.get("id") is not None:
            matches = given["id"] == credential["id"]
        else:
            user = given.get("user") or {}
            matches = given.get("name") == credential["name"] and (
                user.get("id") == self.user_id
                or (
                    user.get("name") == self.user["name"]
                    and self._domain_matches(user.get("domain"))
                )
            )
        if not matches or given.get("secret") != credential["secret"]:
            raise unauthorized()
        return credential["id"]

    def _check_password(self, given: dict[str, Any]) -> None:
        user = given.get("user") or {}
        if user.get("id") is not None:
            matches = user["id"] == self.user_id
        else:
            matches = user.get("name") == self.user["name"] and self._domain_matches(
                user.get("domain")
            )
        if not matches or user.get("password") != self.user["password"]:
            raise unauthorized()

    def _domain_matches(self, domain: dict[str, Any] | None) -> bool:
        if not domain:
            return False
        mine = self.data["domain"]
        return (
            domain.get("id") == mine["id"] if "id" in domain else domain.get("name") == mine["name"]
        )

    def _scope(self, scope: dict[str, Any] | None) -> str | None:
        if scope is None or scope == "unscoped":
            return None
        project = scope.get("project")
        if project is None:
            # Domain, system and trust scopes need roles this user does not have.
            raise unauthorized()
        if project.get("id") is not None:
            if project["id"] != self.project_id:
                raise unauthorized()
        elif project.get("name") != self.project["name"] or not self._domain_matches(
            project.get("domain")
        ):
            raise unauthorized()
        return self.project_id

    # --- tokens --------------------------------------------------------------------------

    def token(self, token_id: str | None) -> dict[str, Any] | None:
        """The live token `token_id`, or None (unknown, revoked or expired)."""
        if not token_id:
            return None
        token = self.state.collection(self.TOKENS).get(token_id)
        if token is None or parse_stamp(token["expires_at"]) <= now():
            return None
        return token

    def revoke(self, token_id: str) -> bool:
        """The token is no longer valid; the admin API still lists it, for tests that look for
        where a token went (Keystone keeps revocation events, not the token)."""
        token = self.state.collection(self.TOKENS).pop(token_id, None)
        if token is None:
            return False
        self.state.collection(f"{self.TOKENS}_revoked")[token_id] = token
        return True

    def issued(self) -> list[str]:
        """Every token this Keystone issued that is still in the state, revoked ones too."""
        live = self.state.collection(self.TOKENS)
        return sorted([*live, *self.state.collection(f"{self.TOKENS}_revoked")])

    # --- trusts (keystone/api/trusts.py) -------------------------------------------------

    def check_trust_operation(self, token: dict[str, Any], manages: bool) -> None:
        """Whether a token may read (`manages` False) or create and delete trusts.

        With CVE-2026-43000's fix (the twin setting keystone_refuses_application_credential_
        trusts) every application credential's token is refused every trust operation
        (_check_application_credential); before it, only a restricted one, and only when it
        creates or deletes one (TrustResourceBase._check_unrestricted).
        """
        if not token.get("application_credential_id"):
            return
        if self.cloud.config["keystone_refuses_application_credential_trusts"]:
            raise IdentityError(403, TRUST_REFUSED)
        if manages and not self.application_credential_unrestricted:
            raise IdentityError(403, TRUST_REFUSED)

    def create_trust(self, token: dict[str, Any], trustee: str) -> str:
        """TrustsResource.post as a service's keystoneclient calls it with the user's token
        (blazar/utils/trusts.py create_trust: impersonation, the token's roles and project)."""
        self.check_trust_operation(token, manages=True)
        trust_id = new_hex_id()
        self.state.collection("trusts")[trust_id] = {
            "id": trust_id,
            "trustor_user_id": token["user_id"],
            "trustee_user_id": self.data["service_users"][trustee],
            "project_id": token["project_id"],
            "impersonation": True,
            "expires_at": None,
            "remaining_uses": None,
            "redelegation_count": 0,
            "deleted_at": None,
        }
        return trust_id

    def list_trusts(
        self, token: dict[str, Any], trustor: str | None, trustee: str | None
    ) -> list[dict[str, Any]]:
        """TrustsResource.get: the policy (identity:list_trusts_for_trustor or _trustee: the
        caller must be that user), then the application credential check."""
        if trustor is not None and trustor != token["user_id"]:
            raise IdentityError(403, _forbidden("identity:list_trusts_for_trustor"))
        if trustee is not None and trustee != token["user_id"]:
            raise IdentityError(403, _forbidden("identity:list_trusts_for_trustee"))
        if trustor is None and trustee is None:
            raise IdentityError(403, _forbidden("identity:list_trusts"))
        self.check_trust_operation(token, manages=False)
        return [
            dict(trust)
            for trust in self.state.collection("trusts").values()
            if (trustor is None or trust["trustor_user_id"] == trustor)
            and (trustee is None or trust["trustee_user_id"] == trustee)
        ]


def _forbidden(action: str) -> str:
    """oslo.policy's refusal as Keystone renders it (keystone/exception.py ForbiddenAction)."""
    return f"You are not authorized to perform the requested action: {action}."
