"""Ticket rules of docs/design.md §4.1: created, state transitions (a)/(b)/(c) and replies, one event each."""

from __future__ import annotations

from typing import Any

import pytest

from etl.events import Context, diff
from etl.models import Event
from etl.snapshots import to_snapshot
from tests.pure_fixtures import context, part, ticket, ts

OLD = ts("2025-06-01T10:00")
STATE = {"type": "ticket_state", "id": "1", "category": "submitted"}


def state(category: str) -> dict[str, str]:
    return {**STATE, "category": category}


def events_of(prev: dict[str, Any] | None, cur: dict[str, Any], ctx: Context | None = None) -> list[Event]:
    before = to_snapshot("tickets", prev) if prev is not None else None
    return list(diff(before, to_snapshot("tickets", cur), ctx or context()).events)


def table(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e.metric, e.unique_id, e.time.isoformat()) for e in events]


def stamp(text: str) -> str:
    return f"{text}:00+00:00"


SUBMITTED_AT_10 = [part("1", "2026-02-01T10:00", "comment", "user")]
IN_PROGRESS = ticket(
    parts=[*SUBMITTED_AT_10, part("2", "2026-02-01T10:05", state="in_progress", previous="submitted")],
    ticket_state=state("in_progress"),
    updated_at=ts("2026-02-01T10:05"),
)
BUSY_POLL = ticket(  # four state changes and a reply since IN_PROGRESS was read
    parts=[
        *IN_PROGRESS["ticket_parts"]["ticket_parts"],
        part("5", "2026-02-01T10:30", state="waiting_on_customer", previous="in_progress"),
        part("6", "2026-02-01T10:40", "comment", "user"),
        part("7", "2026-02-01T10:45", state="in_progress", previous="waiting_on_customer"),
        part("8", "2026-02-01T11:00", state="resolved", previous="in_progress"),
        part("9", "2026-02-01T11:05", state="waiting_on_customer", previous="resolved"),
    ],
    ticket_state=state("waiting_on_customer"),
    updated_at=ts("2026-02-01T11:05"),
)


def test_first_sight_reconstructs_the_ticket_history():
    """A new ticket emits Created, its initial state at created_at, each later transition and each reply."""
    assert table(events_of(None, ticket())) == [
        ("Created Ticket", "intercom:ticket:7001:created", stamp("2026-02-01T10:00")),
        ("Submitted Ticket", "intercom:ticket:7001:state:submitted:1769940000", stamp("2026-02-01T10:00")),
        ("Replied to Ticket", "intercom:ticket:7001:reply:1", stamp("2026-02-01T10:00")),
        ("Resolved Ticket", "intercom:ticket:7001:state:resolved:1769943600", stamp("2026-02-01T11:00")),
    ]


def test_several_state_changes_and_replies_between_two_polls_each_get_an_event():
    """Every transition and reply since the last poll is an event with its own part's time."""
    assert table(events_of(IN_PROGRESS, BUSY_POLL)) == [
        (
            "Marked Ticket as Waiting on Customer",
            "intercom:ticket:7001:state:waiting_on_customer:1769941800",
            stamp("2026-02-01T10:30"),
        ),
        ("Replied to Ticket", "intercom:ticket:7001:reply:6", stamp("2026-02-01T10:40")),
        ("Resolved Ticket", "intercom:ticket:7001:state:resolved:1769943600", stamp("2026-02-01T11:00")),
        (
            "Marked Ticket as Waiting on Customer",
            "intercom:ticket:7001:state:waiting_on_customer:1769943900",
            stamp("2026-02-01T11:05"),
        ),
    ]


CREATED = [
    pytest.param(
        None, ticket(), [("intercom:ticket:7001:created", stamp("2026-02-01T10:00"))], id="first-sight"
    ),
    pytest.param(ticket(), ticket(is_shared=True), [], id="later-sight"),
    pytest.param(None, ticket(created_at=OLD), [], id="created-before-start"),
    pytest.param(None, ticket(created_at=None), [], id="no-created-at"),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), CREATED)
def test_created_ticket(prev, cur, expected):
    """Created Ticket fires on first sight at created_at when that is on or after start_date."""
    assert [(uid, t) for m, uid, t in table(events_of(prev, cur)) if m == "Created Ticket"] == expected


def states(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.unique_id, e.time.isoformat()) for e in events if ":state:" in e.unique_id]


def resolved_at_10_50(new_part: dict[str, Any]) -> dict[str, Any]:
    """IN_PROGRESS read again at 10:50, resolved by then, with one more part."""
    parts = [*IN_PROGRESS["ticket_parts"]["ticket_parts"], new_part]
    return ticket(parts=parts, ticket_state=state("resolved"), updated_at=ts("2026-02-01T10:50"))


QUIET_WAITING = ticket(parts=[], ticket_state=state("waiting_on_customer"))
STATES = [
    pytest.param(
        None,
        QUIET_WAITING,
        [("intercom:ticket:7001:state:waiting_on_customer:1769940000", stamp("2026-02-01T10:00"))],
        id="b-no-parts-uses-current-category",
    ),
    pytest.param(
        None,
        ticket(parts=[part("1", "2026-02-01T10:00", state="submitted")], ticket_state=state("submitted")),
        [("intercom:ticket:7001:state:submitted:1769940000", stamp("2026-02-01T10:00"))],
        id="b-earliest-part-without-previous-is-the-first-state",
    ),
    pytest.param(
        None, ticket(parts=[], ticket_state=state("in_progress")), [], id="b-in-progress-has-no-metric"
    ),
    pytest.param(
        None, ticket(created_at=OLD, parts=[], ticket_state=state("resolved")), [], id="b-before-start"
    ),
    pytest.param(
        None,
        ticket(created_at=OLD),
        [("intercom:ticket:7001:state:resolved:1769943600", stamp("2026-02-01T11:00"))],
        id="a-old-ticket-new-transition",
    ),
    pytest.param(
        ticket(parts=[], ticket_state=state("submitted")),
        ticket(parts=[], ticket_state=state("resolved"), updated_at=ts("2026-02-02T09:00")),
        [("intercom:ticket:7001:state:resolved:1770022800", stamp("2026-02-02T09:00"))],
        id="c-change-without-parts-at-updated-at",
    ),
    pytest.param(
        IN_PROGRESS,
        resolved_at_10_50(part("5", "2026-02-01T10:30", state="in_progress", previous="submitted")),
        [("intercom:ticket:7001:state:resolved:1769943000", stamp("2026-02-01T10:50"))],
        id="c-change-the-parts-do-not-explain",
    ),
    pytest.param(
        IN_PROGRESS,
        resolved_at_10_50(part("5", "2026-02-01T10:30", state="resolved", previous="in_progress")),
        [("intercom:ticket:7001:state:resolved:1769941800", stamp("2026-02-01T10:30"))],
        id="a-explains-the-change-no-c",
    ),
    pytest.param(
        ticket(),
        ticket(
            parts=[
                *ticket()["ticket_parts"]["ticket_parts"],
                part("5", "2026-02-02T10:00", state="in_progress", previous="resolved"),
                part("6", "2026-02-02T11:00", state="resolved", previous="in_progress"),
            ]
        ),
        [("intercom:ticket:7001:state:resolved:1770030000", stamp("2026-02-02T11:00"))],
        id="a-round-trip-same-category",
    ),
    pytest.param(ticket(), ticket(is_shared=True), [], id="no-change"),
    pytest.param(
        ticket(),
        ticket(
            parts=[
                *ticket()["ticket_parts"]["ticket_parts"],
                part("0", "2026-01-31T09:00", state="resolved", previous="submitted"),
            ]
        ),
        [],
        id="a-part-below-prev-high-point-is-not-new",
    ),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), STATES)
def test_ticket_state_events(prev, cur, expected):
    """Submitted/Waiting/Resolved fire per docs/design.md §4.1: (a) new parts, (b) initial state,
    (c) unexplained change."""
    assert states(events_of(prev, cur)) == expected


def replies(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.unique_id, e.time.isoformat()) for e in events if e.metric == "Replied to Ticket"]


def with_parts(*parts: dict[str, Any]) -> dict[str, Any]:
    return ticket(parts=[*ticket()["ticket_parts"]["ticket_parts"], *parts])


REPLIES = [
    pytest.param(
        None, ticket(), [("intercom:ticket:7001:reply:1", stamp("2026-02-01T10:00"))], id="first-sight"
    ),
    pytest.param(
        ticket(),
        with_parts(part("5", "2026-02-03T10:00", "comment", "user")),
        [("intercom:ticket:7001:reply:5", stamp("2026-02-03T10:00"))],
        id="new-user-comment",
    ),
    pytest.param(
        ticket(), with_parts(part("5", "2026-02-03T10:00", "comment", "admin")), [], id="admin-comment"
    ),
    pytest.param(ticket(), with_parts(part("5", "2026-02-03T10:00", "note", "user")), [], id="user-note"),
    pytest.param(ticket(), ticket(), [], id="already-seen"),
    pytest.param(
        None,
        ticket(
            created_at=OLD,
            parts=[
                part("1", "2025-06-01T10:00", "comment", "user"),
                part("2", "2026-02-10T10:00", "comment", "user"),
            ],
            ticket_state=state("submitted"),
        ),
        [("intercom:ticket:7001:reply:2", stamp("2026-02-10T10:00"))],
        id="only-replies-after-start",
    ),
]


@pytest.mark.parametrize(("prev", "cur", "expected"), REPLIES)
def test_replied_to_ticket(prev, cur, expected):
    """Replied to Ticket fires per new user comment, at the part's created_at, keyed by the part id."""
    assert replies(events_of(prev, cur)) == expected


def test_rereading_the_same_ticket_yields_nothing():
    """Reading an unchanged ticket again infers no event."""
    assert events_of(BUSY_POLL, BUSY_POLL) == []


def test_same_part_time_on_first_sight_is_not_sent_twice():
    """An initial state equal to a transition at created_at yields one event, not a duplicate unique_id."""
    raw = ticket(
        parts=[
            part("1", "2026-02-01T10:00", state="submitted", previous="resolved"),
            part("2", "2026-02-01T10:00", state="resolved", previous="submitted"),
        ],
    )
    uids = [e.unique_id for e in events_of(None, raw)]
    assert len(uids) == len(set(uids))
    assert "intercom:ticket:7001:state:resolved:1769940000" in uids
