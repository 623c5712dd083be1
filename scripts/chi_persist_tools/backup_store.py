"""The object store from the student's machine: the backupCloud entry through openstacksdk's
object store (listing, manifests, deletes, the cluster's capabilities) and a token of its own
for the server, revoked after use."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chi_persist_tools.backup_catalog import MANIFEST, Backup, group_listing, judge
from chi_persist_tools.backup_settings import BackupSettings
from chi_persist_tools.command_line import EXIT_FAILED, EXIT_USAGE, CommandError
from components.settings import NAMESPACE

# Swift's segments: large enough to be few, small enough to hold in the server's memory.
SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass
class ServerToken:
    """A token of the object store's project, for the server only, revoked after use."""

    token: str = field(repr=False)
    endpoint: str


class ObjectStore:
    """The backupCloud entry's object store through openstacksdk (its Swift proxy)."""

    def __init__(self, settings: BackupSettings) -> None:
        # openstacksdk warns of its own deprecations on every listing; they are not the
        # student's to act on.
        warnings.filterwarnings("ignore", module="openstack")
        self.settings = settings
        self.cloud = settings.cloud or ""
        self.where = f"container {settings.container} of {self.cloud}"
        self.connection = self._connect()

    def _connect(self) -> Any:
        try:
            import openstack
            import openstack.config
        except ImportError as error:
            raise CommandError(
                f"openstacksdk is not installed for {sys.executable} ({error})",
                "fix: `pip install -r requirements.txt` in the project's virtual environment "
                "(./chi-persist makes it)",
                exit_code=EXIT_FAILED,
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                region = openstack.config.get_cloud_region(cloud=self.cloud)
            except Exception as error:
                raise CommandError(
                    f"{NAMESPACE}:backupCloud = {self.cloud!r}: that clouds.yaml entry could not "
                    f"be read ({error})",
                    "fix: add it to ~/.config/openstack/clouds.yaml (`ccauth clouds-yaml "
                    "--all-sites` writes one per site: CHI@TACC's holds the object store), or "
                    f"set the entry you have: `pulumi config set {NAMESPACE}:backupCloud <name> "
                    f"--stack {self.settings.stack}`",
                    exit_code=EXIT_USAGE,
                ) from None
            return openstack.connection.Connection(config=region)

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        from keystoneauth1 import exceptions as ks
        from openstack import exceptions as sdk

        fix_login = (
            f"fix: check the entry {self.cloud!r} in clouds.yaml (`openstack --os-cloud "
            f"{self.cloud} token issue` shows what its Keystone says)"
        )
        try:
            return action()
        except ks.EndpointNotFound:
            raise CommandError(
                f"{NAMESPACE}:backupCloud = {self.cloud!r}: its site has no object store in its "
                "catalog (KVM@TACC has none)",
                "fix: use the entry of CHI@TACC (or CHI@UC), e.g. `pulumi config set "
                f"{NAMESPACE}:backupCloud chi_tacc --stack {self.settings.stack}`",
                exit_code=EXIT_USAGE,
            ) from None
        except (ks.Unauthorized, ks.AuthorizationFailure) as error:
            raise CommandError(
                f"the object store's Keystone ({self.cloud}) refused the credentials while "
                f"{what}: {error}",
                fix_login,
                exit_code=EXIT_FAILED,
            ) from None
        except ks.ClientException as error:
            raise CommandError(
                f"could not reach the object store ({self.cloud}) while {what}: {error}",
                "fix: check the network and the entry's auth_url, then run the command again",
                exit_code=EXIT_FAILED,
            ) from None
        except sdk.HttpException as error:
            status = error.status_code
            said = " ".join(str(error.details or error.message or "").split())[:300]
            fix = "fix: run the command again; if it repeats, ask Chameleon's help desk"
            if status == 413:
                fix = (
                    "fix: the object store's quota is full: keep fewer backups (`pulumi config "
                    f"set {NAMESPACE}:backupKeep 1`) or ask for a larger quota"
                )
            elif status in (401, 403):
                fix = fix_login
            raise CommandError(
                f"the object store answered HTTP {status} while {what}: {said}",
                fix,
                exit_code=EXIT_FAILED,
            ) from None
        except sdk.SDKException as error:
            raise CommandError(
                f"the object store ({self.cloud}) failed while {what}: {error}",
                "fix: run the command again; if it repeats, check the entry in clouds.yaml",
                exit_code=EXIT_FAILED,
            ) from None

    def ensure_container(self) -> None:
        """The container, made if missing (openstacksdk's get_container_metadata, then
        create_container)."""
        from openstack import exceptions as sdk

        store = self.connection.object_store

        def ensure() -> None:
            try:
                store.get_container_metadata(self.settings.container)
            except sdk.NotFoundException:
                store.create_container(name=self.settings.container)
                print(f"backup: made container {self.settings.container} in {self.cloud}")

        self._call("making the container", ensure)

    def listing(self) -> list[tuple[str, int]]:
        """Every object of the container with its size (a 404: none)."""
        from openstack import exceptions as sdk

        store = self.connection.object_store

        def read() -> list[tuple[str, int]]:
            try:
                return [
                    (item.name, int(item.content_length or 0))
                    for item in store.objects(self.settings.container)
                ]
            except sdk.NotFoundException:
                return []

        return self._call("listing the backups", read)

    def manifest(self, name: str) -> tuple[dict[str, Any] | None, str | None]:
        store = self.connection.object_store
        data = self._call(
            f"reading {name}'s manifest",
            lambda: store.download_object(f"{name}/{MANIFEST}", container=self.settings.container),
        )
        try:
            parsed = json.loads(data)
        except (ValueError, TypeError) as error:
            return None, f"not JSON: {error}"
        return (parsed, None) if isinstance(parsed, dict) else (None, "not a JSON object")

    def backups(self) -> list[Backup]:
        groups = group_listing(self.listing())
        found = []
        for name, objects in sorted(groups.items()):
            manifest, problem = (None, None)
            if f"{name}/{MANIFEST}" in objects:
                manifest, problem = self.manifest(name)
            found.append(judge(name, objects, manifest, problem))
        return found

    def write_manifest(self, name: str, manifest: Mapping[str, Any]) -> None:
        store = self.connection.object_store
        data = json.dumps(manifest, indent=1).encode()
        self._call(
            "writing the manifest",
            lambda: store.create_object(
                self.settings.container,
                f"{name}/{MANIFEST}",
                data=data,
                content_type="application/json",
            ),
        )

    def delete(self, backup: Backup) -> None:
        """Its manifest first (it no longer looks complete), then each part with its segments
        (openstacksdk deletes a static large object with multipart-manifest=delete)."""
        store = self.connection.object_store
        names = sorted(backup.objects, key=lambda name: (not name.endswith(MANIFEST), name))
        for name in names:
            if "/" in name[len(backup.name) + 1 :] and not name.endswith(MANIFEST):
                continue  # a segment: its manifest object takes it along
            self._call(
                f"deleting {name}",
                lambda name=name: store.delete_object(
                    name, ignore_missing=True, container=self.settings.container
                ),
            )
        # Segments whose manifest object never got written (a backup that failed half-way).
        leftovers = [name for name, _ in self.listing() if name.startswith(f"{backup.name}/")]
        for name in leftovers:
            self._call(
                f"deleting {name}",
                lambda name=name: store.delete_object(
                    name, ignore_missing=True, container=self.settings.container
                ),
            )

    def segment_bytes(self, wanted: int = SEGMENT_BYTES) -> int:
        """A segment size the cluster accepts (openstacksdk's get_object_segment_size reads the
        same capabilities)."""
        from openstack import exceptions as sdk

        try:
            info = self.connection.object_store.get_info()
        except sdk.SDKException:
            return wanted
        largest = int((info.swift or {}).get("max_file_size") or wanted)
        smallest = int((info.slo or {}).get("min_segment_size") or 1)
        return max(smallest, min(wanted, largest))

    def server_token(self) -> ServerToken:
        """A token of its own for the server (a login of the entry's credentials, apart from
        this machine's), and the object store's endpoint from the catalog."""
        import openstack.config

        def issue() -> ServerToken:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                session = openstack.config.get_cloud_region(cloud=self.cloud).get_session()
            token = session.get_token()
            endpoint = session.get_endpoint(
                service_type="object-store",
                interface="public",
                region_name=self.connection.config.get_region_name("object-store") or None,
            )
            return ServerToken(token=token, endpoint=endpoint)

        return self._call("issuing a token for the server", issue)

    def revoke(self, token: ServerToken) -> str | None:
        """The server's token revoked (openstacksdk's identity revoke_token: DELETE
        /v3/auth/tokens); None when done or already gone, else why not."""
        from openstack import exceptions as sdk

        try:
            self.connection.identity.revoke_token(token.token)
        except sdk.NotFoundException:
            return None
        except Exception as error:  # the SDK's and keystoneauth's errors alike
            return " ".join(str(error).split())[:200]
        return None
