"""Nova's key pairs: one part of `ComputeBackend` (models/__init__.py)."""

from __future__ import annotations

from typing import Any

from tests.twin.services.compute.models.common import fingerprint, generated_key_pair
from tests.twin.services.core import ComputeError
from tests.twin.services.state import stamp


class KeypairBackend:
    """Key pairs, given or generated."""

    def create_keypair(
        self, name: str, public_key: str | None, key_type: str = "ssh"
    ) -> dict[str, Any]:
        if name in self.keypairs:
            # nova/objects/keypair.py _create_in_db: the name is the user's, once.
            raise ComputeError(409, f"Key pair '{name}' already exists.")
        private_key = None
        if public_key is None:
            private_key, public_key = generated_key_pair(name)
        self.state.data["keypair_sequence"] = self.state.data.get("keypair_sequence", 0) + 1
        keypair = {
            "id": self.state.data["keypair_sequence"],
            "name": name,
            "public_key": public_key,
            "fingerprint": fingerprint(public_key),
            "type": key_type,
            "user_id": self.cloud.identity.user_id,
            "created_at": stamp(),
        }
        self.keypairs[name] = keypair
        return {**keypair, "private_key": private_key} if private_key else keypair

    def delete_keypair(self, name: str) -> None:
        self.get_keypair(name)
        del self.keypairs[name]
