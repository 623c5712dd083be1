"""What Nova's models share: the flavors, states, quotas and limits, Nova's errors, key
fingerprints and host names."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from tests.twin.services.core import ComputeError

# id, name, vCPUs, RAM MiB, root disk GiB: Nova's classic flavors.
FLAVORS = (
    ("1", "m1.tiny", 1, 512, 1),
    ("2", "m1.small", 1, 2048, 20),
    ("3", "m1.medium", 2, 4096, 40),
    ("4", "m1.large", 4, 8192, 80),
    ("5", "m1.xlarge", 8, 16384, 160),
)
POWER_NOSTATE, POWER_RUNNING, POWER_SHUTDOWN = 0, 1, 4
STATUS_OF = {"building": "BUILD", "active": "ACTIVE", "stopped": "SHUTOFF", "error": "ERROR"}
ATTACHABLE_STATES = ("active", "stopped")
GIB = 1024**3
# nova/conf/quota.py: the quotas a project member sees in /limits besides instances, cores and
# ram (the twin's settings); floating_ips, security_groups and security_group_rules are the
# nova-network ones nova/quota.py keeps as AbsoluteResource with no option: unlimited.
FIXED_QUOTAS = {
    "key_pairs": 100,
    "metadata_items": 128,
    "injected_files": 5,
    "injected_file_content_bytes": 10240,
    "server_groups": 10,
    "server_group_members": 10,
    "floating_ips": -1,
    "security_groups": -1,
    "security_group_rules": -1,
}
DEVICE_PATTERN = re.compile(r"^/dev/x{0,1}[a-z]{0,1}d{0,1}[a-z]+[0-9]*$")
# nova/virt/libvirt/driver.py MAX_CONSOLE_BYTES: what os-getConsoleOutput reads of the log.
CONSOLE_BYTES = 100 * 1024


def bad_request(message: str) -> ComputeError:
    return ComputeError(400, message)


def not_found(message: str) -> ComputeError:
    return ComputeError(404, message)


def invalid_state(server: dict[str, Any], action: str) -> ComputeError:
    """nova/api/openstack/common.py raise_http_conflict_for_instance_invalid_state."""
    if server["task_state"] is not None:
        attribute, value = "task_state", server["task_state"]
    else:
        attribute, value = "vm_state", server["vm_state"]
    return ComputeError(
        409, f"Cannot '{action}' instance {server['id']} while it is in {attribute} {value}"
    )


def fingerprint(public_key: str) -> str:
    """Nova's fingerprint of an SSH public key: MD5 of the key blob, colon separated
    (nova/crypto.py generate_fingerprint)."""
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_ssh_public_key(public_key.strip().encode())
        blob = base64.b64decode(public_key.split()[1])
    except (ValueError, IndexError, TypeError, UnicodeError):
        raise bad_request("Keypair data is invalid: failed to generate fingerprint") from None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[index : index + 2] for index in range(0, len(digest), 2))


def generated_key_pair(name: str) -> tuple[str, str]:
    """(private key PEM, public key) as Nova makes them when no public key is given
    (nova/crypto.py generate_key_pair, through KeypairAPI.create_key_pair)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, f"{public} Generated-by-Nova"


def hostname_of(name: str) -> str:
    """nova/utils.py sanitize_hostname: lower case, letters, digits and dashes, at most 63."""
    text = name.lower()
    text = re.sub(r"[ _.]", "-", text)
    text = re.sub(r"[^\w-]+", "", text, flags=re.ASCII)
    text = text.strip(".-")[:63].rstrip("-")
    return text or "server"
