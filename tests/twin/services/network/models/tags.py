"""Neutron's tags: one part of `NetworkBackend` (models/__init__.py)."""

from __future__ import annotations

from typing import Any

from tests.twin.services.network.models.common import bad_request, invalid_input


class TagBackend:
    """Tags on any Neutron resource (neutron/extensions/tagging.py)."""

    # neutron/extensions/tagging.py: MAX_TAG_LEN (255 since Xena; 60 before) and
    # MAX_TAGS_COUNT.
    MAX_TAG_LENGTH = 255
    MAX_TAGS = 50

    def tagged(self, collection: str, resource_id: str) -> dict[str, Any]:
        """The port, floating IP or security group whose tags a /tags route names."""
        getters = {
            "ports": self.get_port,
            "floatingips": self.get_floatingip,
            "security-groups": self.get_security_group,
        }
        return getters[collection](resource_id)

    def replace_tags(self, record: dict[str, Any], body: Any) -> list[str]:
        """PUT /v2.0/{resources}/{id}/tags: neutron/extensions/tagging.py,
        TaggingController.update_all (validate_tags, validate_tags_limit), then
        neutron/services/tag/tag_plugin.py, TagPlugin.update_tags, which replaces the whole
        set and answers with the request's body; the revision plugin bumps the revision."""
        tags = body.get("tags") if isinstance(body, dict) else None
        if not isinstance(tags, list):
            raise invalid_input("Invalid tags body")
        for tag in tags:
            if not isinstance(tag, str):
                raise invalid_input(f"'{tag}' is not a valid string")
            if len(tag) > self.MAX_TAG_LENGTH:
                raise invalid_input(f"'{tag}' exceeds maximum length of {self.MAX_TAG_LENGTH}")
        if len(set(tags)) != len(tags):
            raise invalid_input(f"Duplicate items in the list: '{', '.join(tags)}'")
        if len(tags) > self.MAX_TAGS:
            raise bad_request(
                f"The number of tags exceed the per-resource limit of {self.MAX_TAGS}",
                "BadRequest",
            )
        record["tags"] = list(tags)
        self._touch(record)
        return list(tags)
