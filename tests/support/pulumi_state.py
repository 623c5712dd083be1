"""Stack states for `pulumi stack import`, shaped as the real CLI reads and writes them.

tests/fixtures/pulumi-state/ab1234.json is what `pulumi stack export --show-secrets`
prints for a deployed stack of this program, less its `secrets_providers`: its
secrets are plaintext (`{"4dabf…": "1b47…", "plaintext": "<JSON>"}`), and the
passphrase provider's salt belongs to the stack it came from. `StudentMachine.import_state`
puts in the provider of the stack it imports into, so the real CLI encrypts the
secrets with that machine's passphrase. A manifest's `magic` is the SHA-256 of its
`version` (pkg/resource/deploy/manifest.go, NewMagic): `stack import` refuses any other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.support.paths import REPO_ROOT

STATE_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "pulumi-state"
PROJECT = "chi-persist"
# The engine's marker of a secret value (sdk/go/common/resource/sig, Secret).
SIGNATURE_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIGNATURE = "1b47061264138c4ac30d75fd1eb44270"
CLI_VERSION = "v3.274.1"


def state_fixture(name: str = "ab1234") -> dict[str, Any]:
    """A stack of this program, from tests/fixtures/pulumi-state (secrets in plaintext)."""
    return json.loads((STATE_FIXTURES / f"{name}.json").read_text())


def resources(export: dict[str, Any]) -> list[dict[str, Any]]:
    return (export.get("deployment") or {}).get("resources") or []


def of_type(export: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [resource for resource in resources(export) if resource["type"] == resource_type]


def name_of(resource: dict[str, Any]) -> str:
    """The name the program gave a resource: the last part of its URN."""
    return resource["urn"].rsplit("::", 1)[-1]


def secret(value: Any) -> dict[str, str]:
    """A secret as `pulumi stack export --show-secrets` prints it."""
    return {SIGNATURE_KEY: SECRET_SIGNATURE, "plaintext": json.dumps(value)}


def manifest(version: str = CLI_VERSION) -> dict[str, str]:
    return {
        "time": "2026-11-20T15:09:42.118093Z",
        "magic": hashlib.sha256(version.encode()).hexdigest(),
        "version": version,
    }


def stack_urn(stack: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-{stack}"


def outputs_deployment(
    stack: str, outputs: dict[str, Any], secret_outputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A state holding only the stack resource with these outputs, as `pulumi up` leaves the
    program's outputs; the names in `secret_outputs` are secrets, as the program makes them."""
    shown = {
        name: secret(value) if name in secret_outputs else value for name, value in outputs.items()
    }
    return {
        "version": 3,
        "deployment": {
            "manifest": manifest(),
            "resources": [
                {
                    "urn": stack_urn(stack),
                    "custom": False,
                    "type": "pulumi:pulumi:Stack",
                    "outputs": shown,
                }
            ],
        },
    }
