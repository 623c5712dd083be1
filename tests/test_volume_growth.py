"""The growth check's decision and its reading of Cinder's user messages, without a cloud."""

from __future__ import annotations

import datetime

import pytest

from components.volume_growth import (
    CinderMessage,
    GrowthRefused,
    checked_size,
    growth_problem,
    latest_extend_message,
)

VOLUME = "0d6c2a1e-9b8f-4e7d-a6c5-b4a3928170f6"
OTHER = "e1d2c3b4-a596-4788-9900-aabbccddeeff"
SINCE = datetime.datetime(2026, 11, 20, 10, 0, tzinfo=datetime.timezone.utc)
NO_ROOM = "extend volume:Could not find any available weighted backend."


def message(**changes: object) -> dict:
    base = {
        "id": "m-1",
        "event_id": "VOLUME_VOLUME_007_003",
        "user_message": NO_ROOM,
        "message_level": "ERROR",
        "created_at": "2026-11-20T10:05:00.000000",
        "request_id": "req-1",
        "resource_type": "VOLUME",
        "resource_uuid": VOLUME,
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    ("asked", "got", "refused"),
    [(5, 5, False), (5, 6, False), (2, 2, False), (5, 2, True), (3, 2, True)],
)
def test_only_a_volume_short_of_the_size_asked_is_refused(asked, got, refused) -> None:
    """The decision is the sizes alone: at least what was asked passes."""
    problem = growth_problem("block-persist-ab1234", asked, got, "ab1234", None)
    assert (problem is not None) == refused


def test_the_refusal_says_what_happened_and_every_way_out() -> None:
    """Sizes, the site's own words, and the fixes: later, a smaller size, the recycle path."""
    said = CinderMessage(NO_ROOM, "2026-11-20 10:05:00", "req-1")
    problem = growth_problem("block-persist-ab1234", 5, 2, "ab1234", said)
    assert problem is not None
    assert "block-persist-ab1234 is still 2 GiB, not the 5 GiB asked for" in problem
    assert f"KVM@TACC's Cinder says: '{NO_ROOM}'" in problem and "req-1" in problem
    assert "pulumi config set chi-persist:volumeSize <from 3 to 4>" in problem
    assert "pulumi config set chi-persist:volumeSize 2 keeps the size it has" in problem
    one_more = growth_problem("block-persist-ab1234", 3, 2, "ab1234", said)
    assert one_more is not None and "<from" not in one_more
    assert "pulumi config set chi-persist:volumeSize 2 keeps the size it has" in one_more
    assert "./chi-persist recycle --stack ab1234, then pulumi up" in problem
    assert "the next pulumi up asks again" in problem


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([message()], NO_ROOM, id="this-volume's-extend"),
        pytest.param([message(resource_uuid=OTHER)], None, id="another-volume"),
        pytest.param([message(event_id="VOLUME_VOLUME_002_021")], None, id="an-attach-message"),
        pytest.param([message(created_at="2026-11-20T09:59:59.000000")], None, id="too-old"),
        pytest.param(
            [
                message(user_message="extend volume:older", created_at="2026-11-20T10:01:00"),
                message(),
                message(user_message="extend volume:oldest", created_at="2026-11-20T10:00:30"),
            ],
            NO_ROOM,
            id="the-newest",
        ),
        pytest.param([message(created_at="not a time")], None, id="unreadable-time"),
    ],
)
def test_the_latest_extend_message_of_the_volume_is_chosen(messages, expected) -> None:
    """Only this volume's extend messages since the run began; the newest of them."""
    found = latest_extend_message(messages, VOLUME, SINCE)
    assert (found.text if found else None) == expected


def test_checked_size_reads_the_message_only_when_the_volume_is_short() -> None:
    """A volume at its size costs no call; a short one is refused with what Cinder said."""
    calls: list[str] = []

    def read(volume_id: str):
        calls.append(volume_id)
        return CinderMessage(NO_ROOM, "2026-11-20 10:05:00"), ""

    assert checked_size("block-persist-ab1234", VOLUME, 5, 5, "ab1234", read) == 5
    assert calls == []
    with pytest.raises(GrowthRefused, match="Could not find any available weighted backend"):
        checked_size("block-persist-ab1234", VOLUME, 5, 2, "ab1234", read)
    assert calls == [VOLUME]
