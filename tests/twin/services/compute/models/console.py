"""Nova's console: one part of `ComputeBackend` (models/__init__.py)."""

from __future__ import annotations

import re
from typing import Any

from tests.twin.services.compute.models.common import CONSOLE_BYTES
from tests.twin.services.core import ComputeError


class ConsoleBackend:
    """The serial console Nova's os-getConsoleOutput serves, and its host keys."""

    def console_output(self, server: dict[str, Any], length: int | None) -> str:
        """os-getConsoleOutput, as nova/api/openstack/compute/console_output.py
        ConsoleOutputController.get_console_output answers it: a server no host has taken yet
        is not ready, 409 (nova/compute/api.py check_instance_host); the text is the guest's
        console, the last 100 KiB of its log (nova/virt/libvirt/driver.py
        LibvirtDriver._get_console_output_file), cut to its last `length` lines
        (nova/compute/manager.py ComputeManager._tail_log: 0 gives nothing, and -1, which the
        API calls unlimited, drops the first line), without control characters. A server whose
        host keys the admin API forged shows those instead of the guest's."""
        if server["task_state"] == "scheduling" and not server["booted"]:
            raise ComputeError(409, f"Instance {server['id']} is not ready")
        reader = getattr(self.cloud.driver, "console_output", None)
        if not callable(reader):
            raise ComputeError(501, "The twin's machine driver keeps no console output.")
        try:
            raw = reader(server["id"]).encode("utf-8", "replace")
        except Exception:  # the guest's machine is gone: Nova's ConsoleNotAvailable
            raise ComputeError(404, "Guest does not have a console available.") from None
        raw = raw[-CONSOLE_BYTES:]
        forged = server.get("forged_host_keys")
        if forged:
            raw = _with_host_keys(raw.decode("ascii", "replace"), forged).encode()
        if length is not None:
            raw = b"" if length == 0 else b"\n".join(raw.split(b"\n")[-length:])
        return re.sub("[\x00-\x08\x0b-\x1f]", "", raw.decode("ascii", "replace"))

    def forge_host_keys(self, server: dict[str, Any], forge: bool | list[str]) -> list[str]:
        """The admin API's switch: the server's console shows other host keys than its guest
        has (fresh ones, or the public keys given), or its own again."""
        from tests.twin.services.machines import generated_host_keys

        if isinstance(forge, list):
            server["forged_host_keys"] = list(forge)
        elif forge:
            server["forged_host_keys"] = generated_host_keys(server["hostname"])
        else:
            server.pop("forged_host_keys", None)
        return list(server.get("forged_host_keys") or [])


def _with_host_keys(console: str, public_keys: list[str]) -> str:
    """The console with every host key block (cloud-init's) holding `public_keys` instead."""
    from tests.twin.services.machines import KEYS_BEGIN, KEYS_END, host_key_block

    lines, result, inside = console.split("\n"), [], False
    for line in lines:
        if KEYS_BEGIN in line:
            inside = True
            result.extend(host_key_block(public_keys))
        elif inside and KEYS_END in line:
            inside = False
        elif not inside:
            result.append(line)
    return "\n".join(result)
