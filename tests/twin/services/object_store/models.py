"""Swift as CHI@TACC serves it: accounts, containers, objects, static large objects, quotas.

The state of each account (AUTH_<project id of CHI@TACC's Keystone>) lives in the twin's
state document; an object's bytes live in a file of their own under
<state dir>/object-store/, named by a fresh id, so a twin restarted on the same state dir
holds the same objects. Nothing here knows HTTP: responses.py turns requests into calls and
results into Swift's headers and bodies. Each behaviour names the upstream Swift 2.38.3 code
it follows (tests/twin/services/object_store/behaviour.toml).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from tests.twin.services.state import new_hex_id, now, stamp

if TYPE_CHECKING:
    from tests.twin.services.cloud import Cloud

# swift/common/constraints.py: MAX_FILE_SIZE, CONTAINER_LISTING_LIMIT, MAX_OBJECT_NAME_LENGTH,
# MAX_CONTAINER_NAME_LENGTH; swift/common/middleware/slo.py: DEFAULT_MAX_MANIFEST_SEGMENTS,
# DEFAULT_MAX_MANIFEST_SIZE (the capabilities GET /info reports).
MAX_FILE_SIZE = 5 * 1024**3 + 2
CONTAINER_LISTING_LIMIT = 10000
MAX_OBJECT_NAME_LENGTH = 1024
MAX_CONTAINER_NAME_LENGTH = 256
MAX_MANIFEST_SEGMENTS = 1000
MAX_MANIFEST_SIZE = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
QUOTA_EXCEEDED = "Upload exceeds quota."
NOT_FOUND = "<html><h1>Not Found</h1><p>The resource could not be found.</p></html>"


class SwiftError(Exception):
    """A refusal as Swift's proxy answers it: a status and a short text body."""

    def __init__(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(body or str(status))
        self.status = status
        self.body = body
        self.headers = headers or {}


def capabilities() -> dict[str, Any]:
    """GET /info: the capabilities each middleware registers, as
    swift/proxy/controllers/info.py InfoController.GETorHEAD answers them."""
    return {
        "swift": {
            "version": "2.38.3",
            "max_file_size": MAX_FILE_SIZE,
            "container_listing_limit": CONTAINER_LISTING_LIMIT,
            "max_object_name_length": MAX_OBJECT_NAME_LENGTH,
            "max_container_name_length": MAX_CONTAINER_NAME_LENGTH,
            "account_listing_limit": CONTAINER_LISTING_LIMIT,
            "max_meta_count": 90,
            "strict_cors_mode": True,
            "policies": [{"name": "Policy-0", "default": True}],
        },
        "slo": {
            "max_manifest_segments": MAX_MANIFEST_SEGMENTS,
            "max_manifest_size": MAX_MANIFEST_SIZE,
            "min_segment_size": 1,
            "yield_frequency": 10,
            "allow_async_delete": True,
        },
        "account_quotas": {},
        "container_quotas": {},
        "bulk_delete": {"max_deletes_per_request": 10000, "max_failed_deletes": 1000},
        "tempurl": {"methods": ["GET", "HEAD", "PUT", "POST", "DELETE"]},
    }


def _timestamp() -> str:
    """Swift's X-Timestamp: seconds since the epoch with five decimals."""
    return f"{now().timestamp():.5f}"


class ObjectStoreBackend:
    """Every account of CHI@TACC's Swift, keyed by AUTH_<project id>."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.state = cloud.state

    # --- lifecycle ---------------------------------------------------------------------

    def seed(self) -> None:
        self.state.data.setdefault("object_store", {"accounts": {}})

    def recover(self) -> None:
        self.seed()

    @property
    def directory(self) -> Path:
        return self.state.directory / "object-store"

    def _accounts(self) -> dict[str, Any]:
        return self.state.data["object_store"]["accounts"]

    def account_name(self, project_id: str) -> str:
        return f"AUTH_{project_id}"

    def account(self, name: str) -> dict[str, Any]:
        """Keystone accounts exist as soon as their project does (swift's account_autocreate)."""
        return self._accounts().setdefault(
            name, {"created": stamp(), "timestamp": _timestamp(), "containers": {}}
        )

    # --- accounts --------------------------------------------------------------------------

    def account_stats(self, name: str) -> dict[str, int]:
        containers = self.account(name)["containers"].values()
        return {
            "containers": len(containers),
            "objects": sum(len(container["objects"]) for container in containers),
            "bytes": sum(self._bytes_used(container) for container in containers),
        }

    def list_containers(self, name: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """An account listing (swift/account/backend.py AccountBroker.list_containers_iter):
        names after marker, before end_marker, with prefix, at most limit."""
        containers = self.account(name)["containers"]
        rows = [
            {
                "name": container_name,
                "count": len(container["objects"]),
                "bytes": self._bytes_used(container),
                "last_modified": container["created"],
            }
            for container_name, container in containers.items()
        ]
        return _page(rows, query)

    # --- containers ------------------------------------------------------------------------

    def container(self, account: str, name: str) -> dict[str, Any]:
        container = self.account(account)["containers"].get(name)
        if container is None:
            raise SwiftError(404, NOT_FOUND)
        return container

    def put_container(self, account: str, name: str, metadata: dict[str, str]) -> bool:
        """swift/container/server.py ContainerController.PUT: 201 for a new container, 202 for
        one that exists (its metadata updated). True when it was made."""
        _check_container_name(name)
        containers = self.account(account)["containers"]
        existing = containers.get(name)
        if existing is not None:
            existing["metadata"].update(metadata)
            return False
        containers[name] = {
            "created": stamp(),
            "timestamp": _timestamp(),
            "metadata": dict(metadata),
            "objects": {},
        }
        return True

    def delete_container(self, account: str, name: str) -> None:
        """swift/container/server.py ContainerController.DELETE: 409 while it holds objects."""
        container = self.container(account, name)
        if container["objects"]:
            raise SwiftError(
                409,
                "<html><h1>Conflict</h1><p>There was a conflict when trying to complete your "
                "request.</p></html>",
            )
        del self.account(account)["containers"][name]

    def container_stats(self, account: str, name: str) -> dict[str, Any]:
        container = self.container(account, name)
        return {
            "objects": len(container["objects"]),
            "bytes": self._bytes_used(container),
            "timestamp": container["timestamp"],
            "metadata": dict(container["metadata"]),
        }

    def list_objects(self, account: str, name: str, query: dict[str, str]) -> list[dict[str, Any]]:
        """swift/container/server.py ContainerController.GET_object: names after marker and
        before end_marker, starting with prefix, rolled up at delimiter, at most limit; an SLO
        manifest is listed with the total size of its segments (swift_bytes, which
        ContainerController.update_object_record reads)."""
        container = self.container(account, name)
        rows = []
        for object_name, entry in container["objects"].items():
            row = {
                "name": object_name,
                "bytes": entry["slo_size"] if entry.get("slo") is not None else entry["bytes"],
                "hash": entry["etag"],
                "content_type": entry["content_type"],
                "last_modified": entry["last_modified"],
            }
            if entry.get("slo") is not None:
                row["slo_etag"] = entry["slo_etag"]
            rows.append(row)
        return _page(rows, query)

    def _bytes_used(self, container: dict[str, Any]) -> int:
        return sum(entry["bytes"] for entry in container["objects"].values())

    # --- objects ---------------------------------------------------------------------------

    def object(self, account: str, container: str, name: str) -> dict[str, Any]:
        entry = self.container(account, container)["objects"].get(name)
        if entry is None:
            raise SwiftError(404, NOT_FOUND)
        return entry

    def check_quota(self, account: str, content_length: int) -> None:
        """swift/common/middleware/account_quotas.py AccountQuotaMiddleware.__call__: an object
        PUT that would take the account past its quota in bytes is refused with 413, before a
        byte is stored. The quota is the twin setting quota_object_store_bytes (-1: none), as
        X-Account-Meta-Quota-Bytes set by the operator."""
        quota = self.cloud.config["quota_object_store_bytes"]
        if quota >= 0 and self.account_stats(account)["bytes"] + content_length > quota:
            raise SwiftError(413, QUOTA_EXCEEDED)

    def put_object(
        self,
        account: str,
        container: str,
        name: str,
        body: BinaryIO,
        *,
        content_length: int | None,
        content_type: str | None,
        etag: str | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        """swift/obj/server.py ObjectController.PUT: the body is stored, its MD5 is the ETag,
        and a client's ETag that differs is refused with 422 (nothing stored)."""
        _check_object_name(name)
        objects = self.container(account, container)["objects"]
        self.check_quota(account, content_length or 0)
        self.directory.mkdir(parents=True, exist_ok=True)
        file_id = new_hex_id()
        path = self.directory / file_id
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with open(path, "wb") as handle:
            while True:
                chunk = body.read(READ_CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
        if content_length is not None and size != content_length:
            path.unlink()
            raise SwiftError(499, "Client Disconnect")
        computed = digest.hexdigest()
        if etag is not None and etag.strip('"').lower() != computed:
            path.unlink()
            raise SwiftError(
                422,
                "<html><h1>Unprocessable Entity</h1><p>Unable to process the "
                "contained instructions</p></html>",
            )
        return self._store(
            objects,
            name,
            {
                "bytes": size,
                "etag": computed,
                "content_type": content_type or "application/octet-stream",
                "metadata": dict(metadata),
                "file": file_id,
                "slo": None,
            },
        )

    def put_manifest(
        self,
        account: str,
        container: str,
        name: str,
        manifest_body: bytes,
        *,
        content_type: str | None,
        etag: str | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        """swift/common/middleware/slo.py StaticLargeObject.handle_multipart_put: the manifest
        (parse_and_validate_input) names segments by /container/object with optional size_bytes
        and etag; each segment is looked up, a missing one or a size or etag that differs is
        refused with 400 and the list of problems; the manifest's ETag is the MD5 of the
        segments' etags, its size their sum."""
        _check_object_name(name)
        objects = self.container(account, container)["objects"]
        if len(manifest_body) > MAX_MANIFEST_SIZE:
            raise SwiftError(413, f"Manifest File > {MAX_MANIFEST_SIZE} bytes")
        segments = _parse_manifest(manifest_body, f"/v1/{account}/{container}/{name}")
        if len(segments) > MAX_MANIFEST_SEGMENTS:
            raise SwiftError(
                413, f"Number of object-backed segments must be <= {MAX_MANIFEST_SEGMENTS}"
            )
        problems: list[tuple[str, str]] = []
        stored: list[dict[str, Any]] = []
        for index, segment in enumerate(segments):
            path = segment["path"]
            segment_container, _, segment_name = path.lstrip("/").partition("/")
            try:
                target = self.object(account, segment_container, segment_name)
            except SwiftError:
                problems.append((path, "404 Not Found"))
                continue
            size = target["slo_size"] if target.get("slo") is not None else target["bytes"]
            if size < 1 and index != len(segments) - 1:
                problems.append((path, "Too small; each segment must be at least 1 byte."))
            if segment.get("size_bytes") is not None and segment["size_bytes"] != size:
                problems.append((path, "Size Mismatch"))
            if segment.get("etag") is not None and segment["etag"] != target["etag"]:
                problems.append((path, "Etag Mismatch"))
            stored.append(
                {
                    "name": "/" + path.lstrip("/"),
                    "bytes": size,
                    "hash": target["etag"],
                    "content_type": target["content_type"],
                    "last_modified": target["last_modified"],
                }
            )
        if problems:
            lines = "".join(f"{path}, {reason}\n" for path, reason in problems)
            raise SwiftError(400, f"Errors:\n{lines}")
        slo_etag = hashlib.md5(
            "".join(segment["hash"] for segment in stored).encode("ascii"), usedforsecurity=False
        ).hexdigest()
        if etag is not None and etag.strip('"').lower() != slo_etag:
            raise SwiftError(
                422,
                "<html><h1>Unprocessable Entity</h1><p>Unable to process the "
                "contained instructions</p></html>",
            )
        manifest_json = json.dumps(stored).encode()
        self.check_quota(account, len(manifest_json))
        self.directory.mkdir(parents=True, exist_ok=True)
        file_id = new_hex_id()
        (self.directory / file_id).write_bytes(manifest_json)
        return self._store(
            objects,
            name,
            {
                "bytes": len(manifest_json),
                "etag": hashlib.md5(manifest_json, usedforsecurity=False).hexdigest(),
                "content_type": content_type or "application/octet-stream",
                "metadata": dict(metadata),
                "file": file_id,
                "slo": stored,
                "slo_etag": slo_etag,
                "slo_size": sum(segment["bytes"] for segment in stored),
            },
        )

    def _store(self, objects: dict[str, Any], name: str, entry: dict[str, Any]) -> dict[str, Any]:
        entry.update(name=name, last_modified=stamp(), timestamp=_timestamp())
        previous = objects.get(name)
        objects[name] = entry
        if previous is not None:
            self._forget_file(previous)
        return entry

    def _forget_file(self, entry: dict[str, Any]) -> None:
        (self.directory / entry["file"]).unlink(missing_ok=True)

    def read(
        self, account: str, container: str, name: str, *, manifest: bool = False
    ) -> Iterator[bytes]:
        """The object's bytes; an SLO's are its segments' in order
        (swift/common/middleware/slo.py SloGetContext.handle_slo_get_or_head), unless the
        manifest itself is asked for (multipart-manifest=get)."""
        entry = self.object(account, container, name)
        if entry.get("slo") is None or manifest:
            yield from _file_chunks(self.directory / entry["file"])
            return
        for segment in entry["slo"]:
            segment_container, _, segment_name = segment["name"].lstrip("/").partition("/")
            try:
                yield from self.read(account, segment_container, segment_name)
            except SwiftError:
                # A segment deleted after the manifest was written: Swift ends the body short
                # and logs it; the client sees fewer bytes than Content-Length promised.
                return

    def delete_object(self, account: str, container: str, name: str, *, with_segments: bool) -> int:
        """swift/obj/server.py ObjectController.DELETE; with multipart-manifest=delete
        (swift/common/middleware/slo.py StaticLargeObject.handle_multipart_delete) the
        segments go first. The number of objects deleted."""
        entry = self.object(account, container, name)
        deleted = 0
        if with_segments and entry.get("slo") is not None:
            for segment in entry["slo"]:
                segment_container, _, segment_name = segment["name"].lstrip("/").partition("/")
                try:
                    deleted += self.delete_object(
                        account, segment_container, segment_name, with_segments=True
                    )
                except SwiftError:
                    continue
        objects = self.container(account, container)["objects"]
        objects.pop(name, None)
        self._forget_file(entry)
        return deleted + 1

    def wipe(self) -> None:
        """Every account, container and object gone (the twin's admin reset)."""
        self.state.data["object_store"] = {"accounts": {}}
        shutil.rmtree(self.directory, ignore_errors=True)


def _file_chunks(path: Path) -> Iterable[bytes]:
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(READ_CHUNK)
            if not chunk:
                return
            yield chunk


def _page(rows: list[dict[str, Any]], query: dict[str, str]) -> list[dict[str, Any]]:
    """marker, end_marker, prefix, delimiter and limit as Swift's brokers apply them
    (swift/container/backend.py ContainerBroker.list_objects_iter): sorted by name, names
    strictly after marker and before end_marker; with a delimiter, names past the prefix that
    hold it roll up into one {"subdir": prefix + up to the delimiter}."""
    try:
        limit = int(query.get("limit") or CONTAINER_LISTING_LIMIT)
    except ValueError:
        raise SwiftError(412, "Value of limit must be a positive integer") from None
    if limit < 0:
        raise SwiftError(412, "Value of limit must be a positive integer")
    if limit > CONTAINER_LISTING_LIMIT:
        raise SwiftError(412, f"Maximum limit is {CONTAINER_LISTING_LIMIT}")
    marker = query.get("marker") or ""
    end_marker = query.get("end_marker") or ""
    prefix = query.get("prefix") or ""
    delimiter = query.get("delimiter") or ""
    listed: list[dict[str, Any]] = []
    rolled: set[str] = set()
    for row in sorted(rows, key=lambda item: item["name"]):
        name = row["name"]
        if marker and name <= marker:
            continue
        if end_marker and name >= end_marker:
            break
        if not name.startswith(prefix):
            continue
        if delimiter:
            rest = name[len(prefix) :]
            if delimiter in rest:
                subdir = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if subdir in rolled or (marker and subdir <= marker):
                    continue
                rolled.add(subdir)
                listed.append({"subdir": subdir})
                if len(listed) >= limit:
                    break
                continue
        listed.append(row)
        if len(listed) >= limit:
            break
    return listed


def _parse_manifest(body: bytes, request_path: str) -> list[dict[str, Any]]:
    """swift/common/middleware/slo.py parse_and_validate_input: a JSON list of segments, each
    with a path /container/object (size_bytes and etag optional); a problem is a 400."""
    try:
        parsed = json.loads(body)
    except ValueError:
        raise SwiftError(400, "Manifest must be valid JSON.\n") from None
    if not isinstance(parsed, list):
        raise SwiftError(400, "Manifest must be a list.\n")
    if not parsed:
        raise SwiftError(400, "Manifest must have at least one segment.\n")
    errors = []
    for index, segment in enumerate(parsed):
        if not isinstance(segment, dict):
            errors.append(f"Index {index}: not a JSON object")
            continue
        if "data" in segment:
            errors.append(f"Index {index}: inline data segments are not served by the twin")
            continue
        path = segment.get("path")
        if not isinstance(path, str) or path.count("/") < 2 or not path.startswith("/"):
            errors.append(
                f"Index {index}: path does not refer to an object. Path must be of the "
                "form /container/object."
            )
            continue
        if path.lstrip("/") == request_path.split("/", 4)[-1]:
            errors.append(f"Index {index}: manifest must not include itself as a segment")
        size = segment.get("size_bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            errors.append(f"Index {index}: invalid size_bytes")
        etag = segment.get("etag")
        if etag is not None and not isinstance(etag, str):
            errors.append(f"Index {index}: invalid etag")
    if errors:
        raise SwiftError(400, "\n".join(errors) + "\n")
    return parsed


def _check_container_name(name: str) -> None:
    """The proxy's checks of a new container's name (swift/proxy/controllers/container.py
    ContainerController.PUT): 400 when it is too long, or holds '/'."""
    if not name or "/" in name:
        raise SwiftError(400, "Container name must not be empty or contain '/'")
    if len(name.encode()) > MAX_CONTAINER_NAME_LENGTH:
        raise SwiftError(
            400, f"Container name length of {len(name)} longer than {MAX_CONTAINER_NAME_LENGTH}"
        )


def _check_object_name(name: str) -> None:
    """swift/common/constraints.py check_object_creation: 400 for a name over the limit."""
    if len(name.encode()) > MAX_OBJECT_NAME_LENGTH:
        raise SwiftError(
            400, f"Object name length of {len(name)} longer than {MAX_OBJECT_NAME_LENGTH}"
        )


def encode_metadata(prefix: str, metadata: dict[str, str]) -> dict[str, str]:
    """X-Object-Meta-Name: value headers for stored metadata."""
    return {f"{prefix}{key}": value for key, value in metadata.items()}
