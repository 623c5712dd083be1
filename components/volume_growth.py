"""Growth that is checked, not assumed: the size Cinder reports after an extend, and its words.

Cinder accepts an extend and may then leave the volume at its old size (no backend has room),
and the provider's update still succeeds with the size it reads back. The volume's size is
checked against the size asked for (`checked_size`); short of it, `pulumi up` fails with
Cinder's user message and the way out.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from components.settings import NAMESPACE

# Cinder's user messages are read from microversion 3.3, filtered by volume from 3.5
# (cinder/api/microversions.py MESSAGES, MESSAGES_PAGINATION); an extend's carry action 007
# (cinder/message/message_field.py Action.EXTEND_VOLUME) in their event id.
MESSAGES_FILTERED = "3.5"
MESSAGES_UNFILTERED = "3.3"
EXTEND_EVENT = re.compile(r"^VOLUME_VOLUME_007_\d+$")
# Messages older than this before the program started are of an earlier attempt.
MESSAGE_MARGIN = datetime.timedelta(minutes=10)
# When this run of the program started: Cinder's message of this run's extend is newer.
PROGRAM_STARTED = datetime.datetime.now(datetime.timezone.utc)


class GrowthRefused(Exception):
    """The volume is smaller than the size asked for after the update; the message has the fix."""


@dataclass(frozen=True)
class CinderMessage:
    """A Cinder user message: what the site tells the user about an asynchronous failure."""

    text: str
    created_at: str
    request_id: str = ""


def growth_problem(
    volume_name: str,
    asked_gib: int,
    got_gib: int,
    stack: str,
    message: CinderMessage | None,
    message_note: str = "",
) -> str | None:
    """None when the volume has at least the size asked for; else what happened and the fix."""
    if got_gib >= asked_gib:
        return None
    if message is not None:
        said = (
            f"KVM@TACC's Cinder says: {message.text!r} (user message of {message.created_at} "
            f"UTC{', request ' + message.request_id if message.request_id else ''})."
        )
    else:
        said = f"Cinder left no user message about it{message_note}."
    keep = f"pulumi config set {NAMESPACE}:volumeSize {got_gib} keeps the size it has"
    if asked_gib - got_gib >= 2:
        less = (
            f"ask for less (pulumi config set {NAMESPACE}:volumeSize <from {got_gib + 1} to "
            f"{asked_gib - 1}>), or {keep}"
        )
    else:
        less = keep
    return (
        f"the volume {volume_name} is still {got_gib} GiB, not the {asked_gib} GiB asked for "
        f"({NAMESPACE}:volumeSize): Cinder accepted the extend, then left the volume at its "
        f"old size. {said} Nothing on the server was grown, and the stack keeps {got_gib} "
        "GiB, so the next pulumi up asks again. Fix: most often no storage backend had room "
        f"for the new size: run pulumi up again later; or {less}; or take the path of README "
        f"'Grow the volume' for a cloud that will not extend an attached volume "
        f"(./chi-persist recycle --stack {stack}, then pulumi up: the detached volume is extended "
        "and the next server grows its filesystem). If it persists, ask the site's help "
        "desk, with the message above."
    )


def latest_extend_message(
    messages: list[dict[str, Any]], volume_id: str, since: datetime.datetime
) -> CinderMessage | None:
    """The newest user message of an extend of this volume created after `since`."""
    found = []
    for message in messages:
        if message.get("resource_uuid") != volume_id:
            continue
        if not EXTEND_EVENT.match(str(message.get("event_id", ""))):
            continue
        created = _cinder_time(str(message.get("created_at", "")))
        if created is None or created < since:
            continue
        found.append((created, message))
    if not found:
        return None
    _, newest = max(found, key=lambda pair: pair[0])
    return CinderMessage(
        text=str(newest.get("user_message", "")),
        created_at=str(newest.get("created_at", ""))[:19].replace("T", " "),
        request_id=str(newest.get("request_id") or ""),
    )


def _cinder_time(text: str) -> datetime.datetime | None:
    """Cinder's times: 2026-11-20T10:00:00.000000, UTC without a zone."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", ""))
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc)


def read_extend_message(volume_id: str) -> tuple[CinderMessage | None, str]:
    """(Cinder's latest message about an extend of the volume, or None; why none was read)."""
    from components.openstack_api import CloudUnavailable, OpenStack

    since = PROGRAM_STARTED - MESSAGE_MARGIN
    try:
        cloud = OpenStack()
        answer = cloud.call(
            "block-storage",
            "GET",
            "messages",
            params={"resource_uuid": volume_id},
            headers={"OpenStack-API-Version": f"volume {MESSAGES_FILTERED}"},
        )
        if answer.status in (404, 406):  # a Cinder older than 3.5: filter here instead
            answer = cloud.call(
                "block-storage",
                "GET",
                "messages",
                headers={"OpenStack-API-Version": f"volume {MESSAGES_UNFILTERED}"},
            )
    except CloudUnavailable as error:
        return None, f" that could be read ({error})"
    if answer.status != 200:
        return (
            None,
            f" that could be read (GET /messages: HTTP {answer.status}: {answer.error_message})",
        )
    messages = answer.body.get("messages")
    if not isinstance(messages, list):
        return None, " that could be read (GET /messages answered no list)"
    return latest_extend_message(messages, volume_id, since), ""


def checked_size(
    volume_name: str,
    volume_id: str,
    asked_gib: int,
    got_gib: int,
    stack: str,
    read_message: Callable[[str], tuple[CinderMessage | None, str]] = read_extend_message,
) -> int:
    """The size the cloud reports, once it is at least the size asked for; else GrowthRefused,
    with Cinder's user message about the extend when the cloud has one."""
    if growth_problem(volume_name, asked_gib, got_gib, stack, None) is None:
        return got_gib
    message, note = read_message(volume_id)
    problem = growth_problem(volume_name, asked_gib, got_gib, stack, message, note)
    raise GrowthRefused(problem)
