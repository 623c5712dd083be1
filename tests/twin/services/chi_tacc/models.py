"""CHI@TACC's Keystone: a site of its own, with its own project, application credential,
tokens and catalog (identity and Swift, region CHI@TACC). A token of KVM@TACC's Keystone is
not valid here, nor the other way round, as Chameleon's sites each run their own Keystone."""

from __future__ import annotations

from tests.twin.services.identity.models import IdentityBackend

REGION = "CHI@TACC"
SERVICES: tuple[tuple[str, str, str], ...] = (
    ("identity", "keystone", "/chi-tacc/v3"),
    ("object-store", "swift", "/chi-tacc/swift/v1/AUTH_{project_id}"),
)


class ChiTaccIdentity(IdentityBackend):
    DATA_KEY = "identity_chi_tacc"
    TOKENS = "tokens_chi_tacc"
    REGION = REGION
    SERVICES = SERVICES
    PROJECT_NAME = "CHI-twin"

    def recover(self) -> None:
        # A state saved before the twin had a second site gets one.
        if self.DATA_KEY not in self.state.data:
            self.seed()
        super().recover()
