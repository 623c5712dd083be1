"""The stack's OpenStack credentials as one session, for the calls the provider cannot make.

The program (what the cloud holds of the stack, the lease) and the student tools (the clean
stop, recycle, check) read the same credentials as the OpenStack provider: `OS_CLOUD` with
clouds.yaml, or the `OS_*` variables of an openrc file, through openstacksdk's config loader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

# How long one call may take before it counts as the cloud not answering.
CALL_TIMEOUT_SECONDS = 60
CREDENTIALS_FIX = (
    "`export OS_CLOUD=<your cloud in clouds.yaml>`, or `source` your openrc file, in the shell "
    "that runs pulumi"
)


class CloudUnavailable(Exception):
    """The cloud could not be asked (credentials, catalog, network); the message has the fix."""


@dataclass
class Response:
    """An HTTP answer: status, parsed JSON body (or {}), and the raw text."""

    status: int
    body: dict[str, Any]
    text: str

    @property
    def error_message(self) -> str:
        """Blazar's `error_message`, Neutron's `NeutronError.message`, Nova's and Cinder's
        `<kind>.message`, or the raw text."""
        body = self.body
        if isinstance(body.get("error_message"), str):
            return body["error_message"]
        for value in body.values():
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
        return self.text.strip()[:300]


class OpenStack:
    """One authenticated session; `call` answers every HTTP status, raises only when the cloud
    cannot be asked at all."""

    def __init__(self, cloud: str | None = None) -> None:
        # Imported here: the lease provider is serialised with the program, and these are
        # only needed where it runs.
        import openstack.config

        try:
            with warnings.catch_warnings():
                # openstacksdk 4.22 warns of its InfluxDB support whenever it builds a
                # config; this program uses none of it.
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                self.region = openstack.config.get_cloud_region(cloud=cloud)
                self.session = self.region.get_session()
        except Exception as error:
            raise CloudUnavailable(
                f"the stack's OpenStack credentials could not be loaded: {error}. "
                f"Fix: {CREDENTIALS_FIX}"
            ) from None
        self._adapters: dict[str, Any] = {}

    def adapter(self, service_type: str) -> Any:
        """The service's endpoint from the catalog (or clouds.yaml's override), as an Adapter."""
        from keystoneauth1 import adapter

        if service_type not in self._adapters:
            region = self.region
            self._adapters[service_type] = adapter.Adapter(
                session=self.session,
                service_type=service_type,
                interface=region.get_interface(service_type) or "public",
                region_name=region.get_region_name(service_type) or None,
                endpoint_override=region.get_endpoint(service_type),
                raise_exc=False,
            )
        return self._adapters[service_type]

    def call(self, service_type: str, method: str, path: str, **kwargs: Any) -> Response:
        from keystoneauth1 import exceptions as ks

        kwargs.setdefault("timeout", CALL_TIMEOUT_SECONDS)
        try:
            answer = self.adapter(service_type).request(path, method, **kwargs)
        except ks.EndpointNotFound as error:
            raise CloudUnavailable(
                f"the cloud's service catalog has no {service_type} endpoint ({error}). Fix: "
                f"use KVM@TACC's credentials (region KVM@TACC)"
            ) from None
        except ks.Unauthorized as error:
            raise CloudUnavailable(
                f"the cloud refused the stack's credentials ({error}). Fix: check the "
                f"application credential in clouds.yaml or the openrc file (it may have "
                f"expired or been deleted)"
            ) from None
        except ks.AuthPluginException as error:
            raise CloudUnavailable(
                f"the stack's OpenStack credentials are incomplete: {error}. Fix: {CREDENTIALS_FIX}"
            ) from None
        except ks.ClientException as error:
            raise CloudUnavailable(
                f"could not reach the {service_type} service: {error}. Fix: check the "
                f"network and the credentials' auth_url, then try again"
            ) from None
        try:
            body = answer.json() if answer.content else {}
        except ValueError:
            body = {}
        return Response(answer.status_code, body if isinstance(body, dict) else {}, answer.text)

    def project_id(self) -> str:
        """The project the credentials are scoped to (Neutron's and Cinder's quota paths name
        it); raises CloudUnavailable when the cloud cannot be asked."""
        from keystoneauth1 import exceptions as ks

        try:
            project = self.session.get_project_id()
        except ks.ClientException as error:
            raise CloudUnavailable(
                f"the cloud did not say which project the credentials are for ({error}). Fix: "
                f"{CREDENTIALS_FIX}"
            ) from None
        if not project:
            raise CloudUnavailable(
                f"the credentials are not scoped to a project. Fix: {CREDENTIALS_FIX}"
            )
        return str(project)

    def application_credential(self) -> dict[str, Any]:
        """The token's application credential ({} for a password login): its id, name and
        whether it is restricted (Keystone's token body)."""
        try:
            return dict(self.session.auth.get_access(self.session).application_credential)
        except Exception:  # a password login has none; any failure here was reported first
            return {}
