"""The twin's state on disk: one JSON document, written atomically, plus an append-only event log.

Everything the services know lives in `State.data` (plain JSON values, keyed by
collection), guarded by one re-entrant lock. `save()` replaces DIR/state.json
in one rename, so a twin killed at any moment restarts from a whole document.
The event log (API calls, VM actions, faults) is DIR/events.jsonl, one JSON
object a line, ordered by `seq`.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
FORMAT_VERSION = 1


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime | None = None) -> str:
    """How times are stored: UTC with microseconds, no zone suffix."""
    return (moment or now()).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def parse_stamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)


def iso_seconds_z(value: str) -> str:
    """Nova's and Neutron's form: 2006-01-02T15:04:05Z."""
    return parse_stamp(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_micro(value: str) -> str:
    """Cinder's and Nova's OS-SRV-USG form: 2006-01-02T15:04:05.000000 (no zone)."""
    return parse_stamp(value).strftime("%Y-%m-%dT%H:%M:%S.%f")


def iso_micro_z(value: str) -> str:
    """Keystone's form: 2006-01-02T15:04:05.000000Z."""
    return iso_micro(value) + "Z"


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_hex_id() -> str:
    """Keystone's ids: 32 hex digits, no dashes."""
    return uuid.uuid4().hex


def new_secret(length: int = 32) -> str:
    return secrets.token_urlsafe(length)


class State:
    """The twin's whole state, loaded from DIR when it exists."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        # The event log has a lock of its own: a machine driver's threads append to it, and
        # must never wait for the state's lock.
        self._events_lock = threading.Lock()
        self.data: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.fresh = True
        self._load()

    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    @property
    def events_file(self) -> Path:
        return self.directory / EVENTS_FILE

    def _load(self) -> None:
        if self.state_file.exists():
            self.data = json.loads(self.state_file.read_text())
            version = self.data.get("format_version")
            if version != FORMAT_VERSION:
                raise RuntimeError(
                    f"{self.state_file} has format version {version!r}, this twin reads "
                    f"{FORMAT_VERSION}; start with an empty --state-dir"
                )
            self.fresh = False
        else:
            self.data = {"format_version": FORMAT_VERSION}
        if self.events_file.exists():
            for line in self.events_file.read_text().splitlines():
                if line.strip():
                    self.events.append(json.loads(line))

    def collection(self, name: str) -> dict[str, Any]:
        """A named map of records (servers, ports, ...), created empty on first use."""
        with self.lock:
            return self.data.setdefault(name, {})

    def save(self) -> None:
        with self.lock:
            text = json.dumps(self.data, indent=1, sort_keys=True)
            temporary = self.state_file.with_suffix(".json.tmp")
            # The state holds the credential's secret and the user's password: owner only.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.state_file)

    def events_since(self, sequence: int) -> list[dict[str, Any]]:
        with self._events_lock:
            return [event for event in self.events if event["seq"] > sequence]

    def record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append one event to the ordered log (memory and DIR/events.jsonl)."""
        with self._events_lock:
            sequence = self.events[-1]["seq"] + 1 if self.events else 1
            event = {"seq": sequence, "time": stamp(), "kind": kind, **fields}
            self.events.append(event)
            with open(self.events_file, "a") as handle:
                handle.write(json.dumps(event, sort_keys=True) + "\n")
            return event
