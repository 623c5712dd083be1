"""A server's SSH host keys as its own console tells them, and the lines that pin them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

BEGIN_KEYS = "-----BEGIN SSH HOST KEY KEYS-----"
END_KEYS = "-----END SSH HOST KEY KEYS-----"
# cloud-init's final message ("Cloud-init v. 24.4 finished at ..."): after it, no key
# block will come for this boot.
FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")
ED25519 = "ssh-ed25519"
KEY_TYPES = (
    ED25519,
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
KEY_LINE = re.compile(
    r"(?:^|\s)(?P<type>" + "|".join(re.escape(kind) for kind in KEY_TYPES) + r")"
    r"\s+(?P<blob>[A-Za-z0-9+/]+={0,3})(?=\s|$)"
)


@dataclass(frozen=True)
class HostKey:
    """One public host key: its type and its base64 blob."""

    type: str
    blob: str

    @property
    def line(self) -> str:
        """As pulumi-command's `host_key` and an authorized_keys line take it."""
        return f"{self.type} {self.blob}"

    @property
    def fingerprint(self) -> str:
        """SHA256:... as `ssh-keygen -l` and OpenSSH's messages print it."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def known_hosts_line(self, address: str) -> str:
        return f"{address} {self.line}"


def parse_key(text: str) -> HostKey | None:
    """The key in one line (`type base64 [comment]`), when its blob is a key of that type."""
    match = KEY_LINE.search(text)
    if match is None:
        return None
    key = HostKey(match["type"], match["blob"])
    return key if _blob_type(key.blob) == key.type else None


def _blob_type(blob: str) -> str | None:
    """The type name an SSH public key blob starts with (RFC 4253, 6.6)."""
    try:
        raw = base64.b64decode(blob, validate=True)
        (length,) = struct.unpack(">I", raw[:4])
        return raw[4 : 4 + length].decode("ascii") if 0 < length < 64 else None
    except (binascii.Error, ValueError, struct.error, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class ConsoleKeys:
    """What a console log holds: the last complete key block, and whether cloud-init ended."""

    keys: tuple[HostKey, ...]
    """The keys of the last complete block; empty when none was found."""
    block_found: bool
    cloud_init_finished: bool

    @property
    def ed25519(self) -> HostKey | None:
        return next((key for key in self.keys if key.type == ED25519), None)


# At the end of a server's first boot cloud-init's keys-to-console module runs its helper
# `write-ssh-key-fingerprints`, which writes the public host keys between
# `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----` through
# `logger --stderr -t ec2` to the console, so each line may carry a syslog prefix
# (`<14>Dec  4 16:23:52 ec2: ssh-ed25519 AAAA... root@node`). Nova hands the console out
# to the server's project (`os-getConsoleOutput`), and only the server writes to it: a key
# read there is the server's own, whoever answers at its address. This module only reads
# text; fetching it is scripts/chi_persist_tools/host_key.py's work.
def keys_in_console(console: str) -> ConsoleKeys:
    """The host keys of the last complete `BEGIN SSH HOST KEY KEYS` block in a console log."""
    lines = console.replace("\r", "").splitlines()
    blocks: list[list[HostKey]] = []
    current: list[HostKey] | None = None
    finished = False
    for line in lines:
        if BEGIN_KEYS in line:
            current = []
        elif END_KEYS in line and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            key = parse_key(line)
            if key is not None:
                current.append(key)
        finished = finished or FINISHED.search(line) is not None
    if not blocks:
        return ConsoleKeys((), False, finished)
    return ConsoleKeys(tuple(blocks[-1]), True, finished)
