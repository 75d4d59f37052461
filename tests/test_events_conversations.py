"""Conversation rules of docs/design.md §4.1: one table per metric (fires / does not fire / time /
unique_id)."""

from __future__ import annotations

from typing import Any

import pytest

from etl.events import Context, diff
from etl.models import Event
from etl.snapshots import to_snapshot
from tests.pure_fixtures import advanced, at, context, conversation, ts

OLD = ts("2025-06-01T10:00")  # before start_date


def events_of(prev: dict[str, Any] | None, cur: dict[str, Any], ctx: Context | None = None) -> list[Event]:
    before = to_snapshot("conversations", prev) if prev is not None else None
    return list(diff(before, to_snapshot("conversations", cur), ctx or context()).events)


def only(metric: str, events: list[Event]) -> list[tuple[str, str]]:
    return [(e.unique_id, e.time.isoformat()) for e in events if e.metric == metric]


BASE = conversation()
NO_RATING_TIME = {"rating": 5, "remark": "great"}

CREATED = [
    pytest.param(
        None, BASE, [("intercom:conversation:1295:created", "2026-02-01T10:00:00+00:00")], id="first-sight"
    ),
    pytest.param(BASE, advanced(BASE, title="Changed"), [], id="later-sight"),
    pytest.param(None, conversation(created_at=OLD), [], id="created-before-start"),
    pytest.param(None, conversation(created_at=None), [], id="no-created-at"),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), CREATED)
def test_created_conversation(prev, cur, expected):
    """Created Conversation fires on first sight at created_at when that is on or after start_date."""
    assert only("Created Conversation", events_of(prev, cur)) == expected


def reply(at_text: str) -> dict[str, Any]:
    return {"last_contact_reply_at": ts(at_text), "count_conversation_parts": 7}


REPLIED = [
    pytest.param(
        None,
        BASE,
        [("intercom:conversation:1295:replied:1769943600", "2026-02-01T11:00:00+00:00")],
        id="first-sight",
    ),
    pytest.param(
        None, conversation(statistics=reply("2026-02-01T10:00")), [], id="opening-message-is-no-reply"
    ),
    pytest.param(None, conversation(statistics={"last_contact_reply_at": None}), [], id="no-reply"),
    pytest.param(None, conversation(statistics=None), [], id="no-statistics"),
    pytest.param(
        BASE,
        advanced(BASE, statistics=reply("2026-02-02T08:00")),
        [("intercom:conversation:1295:replied:1770019200", "2026-02-02T08:00:00+00:00")],
        id="new-reply",
    ),
    pytest.param(BASE, advanced(BASE, title="x"), [], id="same-reply"),
    pytest.param(BASE, advanced(BASE, statistics=reply("2026-02-01T10:30")), [], id="older-than-prev"),
    pytest.param(
        None, conversation(created_at=OLD, statistics=reply("2025-07-01T00:00")), [], id="before-start"
    ),
    pytest.param(
        None,
        conversation(created_at=OLD, statistics=reply("2026-02-28T09:00")),
        [("intercom:conversation:1295:replied:1772269200", "2026-02-28T09:00:00+00:00")],
        id="old-conversation-new-reply",
    ),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), REPLIED)
def test_replied_to_conversation(prev, cur, expected):
    """Replied fires when last_contact_reply_at is set, after created_at and after prev's, at that time."""
    assert only("Replied to Conversation", events_of(prev, cur)) == expected


def rating(value: int, remark: str | None = None, created: str | None = None, updated: str | None = None):
    return {
        "rating": value,
        "remark": remark,
        "created_at": ts(created) if created else None,
        "updated_at": ts(updated) if updated else None,
    }


UNTIMED = conversation(conversation_rating=rating(5, "great"))
RATED = [
    pytest.param(
        None,
        BASE,
        [("intercom:conversation:1295:rated:1769947200", "2026-02-01T12:00:00+00:00")],
        id="first-sight-rating-updated-at",
    ),
    pytest.param(
        None,
        conversation(conversation_rating=rating(3, created="2026-02-01T11:30")),
        [("intercom:conversation:1295:rated:1769945400", "2026-02-01T11:30:00+00:00")],
        id="falls-back-to-created-at",
    ),
    pytest.param(
        None,
        UNTIMED,
        [("intercom:conversation:1295:rated:1769949000", "2026-02-01T12:30:00+00:00")],
        id="untimed-falls-back-to-updated-at",
    ),
    pytest.param(
        None,
        conversation(created_at=OLD, conversation_rating=rating(5, "great")),
        [],
        id="untimed-old-first-sight-baselined",
    ),
    pytest.param(None, conversation(conversation_rating=None), [], id="no-rating"),
    pytest.param(
        None, conversation(conversation_rating={"remark": "no number"}), [], id="remark-without-rating"
    ),
    pytest.param(BASE, advanced(BASE, title="x"), [], id="unchanged"),
    pytest.param(
        BASE,
        advanced(BASE, conversation_rating=rating(2, "slow", updated="2026-02-03T08:00")),
        [("intercom:conversation:1295:rated:1770105600", "2026-02-03T08:00:00+00:00")],
        id="re-rated",
    ),
    pytest.param(
        BASE,
        advanced(BASE, conversation_rating=rating(4, "quick", "2026-02-01T11:30", "2026-02-04T00:00")),
        [("intercom:conversation:1295:rated:1770163200", "2026-02-04T00:00:00+00:00")],
        id="same-rating-new-time",
    ),
    pytest.param(UNTIMED, advanced(UNTIMED, updated_at=ts("2026-02-05T00:00")), [], id="untimed-unchanged"),
    pytest.param(
        UNTIMED,
        advanced(UNTIMED, updated_at=ts("2026-02-05T00:00"), conversation_rating=rating(5, "great!")),
        [("intercom:conversation:1295:rated:1770249600", "2026-02-05T00:00:00+00:00")],
        id="untimed-remark-changed",
    ),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), RATED)
def test_rated_conversation(prev, cur, expected):
    """Rated fires when (rating, remark, rating time) change, at the rating's time, else updated_at."""
    assert only("Rated Conversation", events_of(prev, cur)) == expected


UNREAD = conversation(read=False)
READ = [
    pytest.param(
        None,
        BASE,
        [("intercom:conversation:1295:read:1769949000", "2026-02-01T12:30:00+00:00")],
        id="first-sight",
    ),
    pytest.param(None, UNREAD, [], id="first-sight-unread"),
    pytest.param(None, conversation(created_at=OLD), [], id="first-sight-created-before-start"),
    pytest.param(
        UNREAD,
        advanced(UNREAD, read=True, updated_at=ts("2026-02-06T00:00")),
        [("intercom:conversation:1295:read:1770336000", "2026-02-06T00:00:00+00:00")],
        id="became-read",
    ),
    pytest.param(BASE, advanced(BASE, updated_at=ts("2026-02-06T00:00")), [], id="still-read"),
    pytest.param(BASE, advanced(BASE, read=False), [], id="became-unread"),
    pytest.param(
        conversation(read=None),
        BASE,
        [("intercom:conversation:1295:read:1769949000", "2026-02-01T12:30:00+00:00")],
        id="was-unknown",
    ),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), READ)
def test_read_conversation(prev, cur, expected):
    """Read fires when read turns true (or on first sight of a new object), at the object's updated_at."""
    assert only("Read Conversation", events_of(prev, cur)) == expected


def test_first_sight_reconstructs_history_in_time_order():
    """A new conversation seen for the first time emits its whole known history, oldest first."""
    assert [e.metric for e in events_of(None, BASE)] == [
        "Created Conversation",
        "Replied to Conversation",
        "Rated Conversation",
        "Read Conversation",
    ]


def test_old_quiet_conversation_is_only_baselined():
    """An old conversation with nothing after start_date emits nothing on first sight."""
    old = conversation(
        created_at=OLD,
        updated_at=ts("2025-06-02T00:00"),
        statistics=reply("2025-06-01T11:00"),
        conversation_rating=rating(4, updated="2025-06-01T12:00"),
    )
    assert events_of(None, old) == []


def test_several_replies_between_polls_collapse_to_one():
    """Three replies between two polls raise one Replied event, at the latest reply (search shows only it)."""
    later = advanced(BASE, statistics=reply("2026-02-02T10:00"), updated_at=ts("2026-02-02T10:00"))
    events = events_of(BASE, later)
    assert [(e.metric, e.time) for e in events] == [("Replied to Conversation", at("2026-02-02T10:00"))]


def test_rereading_the_same_conversation_yields_nothing():
    """Reading an unchanged conversation again (lookback overlap) infers no event."""
    assert events_of(BASE, conversation()) == []


def test_events_before_start_date_are_never_emitted():
    """A later sight with a change dated before start_date emits nothing for it."""
    old = conversation(created_at=OLD, statistics=reply("2025-06-01T11:00"), read=False)
    later = advanced(old, statistics=reply("2025-12-31T23:59"))
    assert events_of(old, later) == []


def test_old_conversation_first_seen_because_of_a_new_reply_emits_only_that_reply():
    """An old, read and rated conversation first seen because of today's reply emits just the reply."""
    old = conversation(
        created_at=OLD,
        updated_at=ts("2026-02-28T09:00"),
        statistics=reply("2026-02-28T09:00"),
        conversation_rating=rating(4, updated="2025-06-01T12:00"),
    )
    events = events_of(None, old)
    assert [(e.metric, e.unique_id) for e in events] == [
        ("Replied to Conversation", "intercom:conversation:1295:replied:1772269200")
    ]
