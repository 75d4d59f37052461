"""Event properties (docs/design.md §4.2), identities, overrides, backfill flags and counts of `diff`."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from etl.events import EVENT_PROPERTY_KEYS, diff
from etl.models import Identity
from etl.snapshots import to_snapshot
from tests.pure_fixtures import RUN, advanced, contact, context, conversation, part, ticket, ts

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"


def documented_keys(events: str) -> list[str]:
    """The keys, in order, of one row of the §4.2 table (`| events | keys |`): the docs are the oracle."""
    for line in DESIGN.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| {events} |"):
            return re.findall(r"`([^`]+)`", line.split("|")[2])
    raise AssertionError(f"docs/design.md §4.2 has no row for {events!r}")


CONVERSATION_KEYS = documented_keys("all conversation events")
TICKET_KEYS = documented_keys("Created, Submitted, Replied to, Waiting on Customer ticket events")
RESOLVED_KEYS = documented_keys("Resolved Ticket")


def test_the_documented_key_list_is_every_key_events_use():
    """EVENT_PROPERTY_KEYS (what jobs.yaml may rename) is exactly the union of the §4.2 key lists."""
    assert set(EVENT_PROPERTY_KEYS) == set(CONVERSATION_KEYS) | set(TICKET_KEYS) | set(RESOLVED_KEYS)


def first_sight(stream: str, raw: dict, **ctx_overrides):
    return diff(None, to_snapshot(stream, raw), context(**ctx_overrides))


def test_every_conversation_event_carries_every_key_of_a_populated_conversation():
    """All four conversation metrics carry all §4.2 conversation keys, with resolved values."""
    events = first_sight("conversations", conversation()).events
    assert len(events) == 4
    for event in events:
        assert list(event.properties) == CONVERSATION_KEYS
    assert dict(events[0].properties) == {
        "email": "jo@example.com",
        "phone_number": "+14155550100",
        "Title": "Refund please",
        "Snoozed Until": "2026-02-03T09:00:00+00:00",
        "Waiting Since": "2026-02-01T11:00:00+00:00",
        "Priority": "high",
        "Assigned Team": "Billing",
        "Assigned Admin Name": "Ada Admin",
        "Assigned Admin Email": "ada@example.com",
        "Tags": ["vip", "churn-risk"],
        "Conversation Rating": 4,
        "Conversation Source": "email",
        "Conversation Delivered As": "customer_initiated",
        "Conversation Parts Count": 7,
        "SLA Status": "missed",
        "Reopen Count": 2,
        "Assignment Count": 3,
        "Custom Attributes": {"plan": "pro", "seats": 0, "nested": {"a": [1, 2]}},
        "Conversation ID": "1295",
    }


def test_ticket_events_carry_their_keys_and_resolved_its_own():
    """Created/Submitted/Replied tickets carry the ticket keys; Resolved carries the Resolved keys."""
    events = first_sight("tickets", ticket()).events
    by_metric = {event.metric: dict(event.properties) for event in events}
    for metric in ("Created Ticket", "Submitted Ticket", "Replied to Ticket"):
        assert list(by_metric[metric]) == TICKET_KEYS
    assert by_metric["Resolved Ticket"] == {
        "Contact Email": "jo@example.com",
        "Contact Phone": "+14155550100",
        "Category": "Customer",
        "Team Name": "Billing",
        "Admin Name": "Ada Admin",
        "Admin Email": "ada@example.com",
        "Ticket ID": "7001",
        "Ticket Name": "Login broken",
        "Ticket Description": "It fails.",
        "Is Shared": False,
    }
    assert by_metric["Created Ticket"]["Ticket Type"] == "Bug"
    assert by_metric["Created Ticket"]["Ticket Parts Count"] == 4
    assert by_metric["Created Ticket"]["Snoozed Until"] == "2026-02-05T00:00:00+00:00"


def test_waiting_ticket_event_carries_ticket_keys():
    """Marked Ticket as Waiting on Customer carries the same keys as Created Ticket."""
    raw = ticket(
        parts=[part("1", "2026-02-01T10:00", "note")], ticket_state={"category": "waiting_on_customer"}
    )
    (waiting,) = [e for e in first_sight("tickets", raw).events if e.metric.startswith("Marked")]
    assert list(waiting.properties) == TICKET_KEYS


def test_unassigned_empty_and_zero_values_are_left_out_but_false_is_sent():
    """Unassigned ids, "" and 0 disappear from properties; a false boolean stays."""
    raw = conversation(admin_assignee_id=0, team_assignee_id=None, title="", tags={"tags": []})
    raw["statistics"] = {**raw["statistics"], "count_reopens": 0}
    properties = first_sight("conversations", raw).events[0].properties
    for key in (
        "Assigned Admin Name",
        "Assigned Admin Email",
        "Assigned Team",
        "Title",
        "Tags",
        "Reopen Count",
    ):
        assert key not in properties
    ticket_properties = first_sight("tickets", ticket()).events[0].properties
    assert ticket_properties["Is Shared"] is False


def test_unknown_admin_and_team_ids_are_left_out():
    """An assignee id missing from GET /admins or /teams is left out rather than sent as an id."""
    properties = first_sight("conversations", conversation(admin_assignee_id=5, team_assignee_id=6)).events[0]
    assert "Assigned Admin Name" not in properties.properties
    assert "Assigned Team" not in properties.properties


def test_events_come_out_under_the_default_names_whatever_the_job_renames():
    """The outbox keeps events in the canonical form (docs/design.md §3.3): diff knows no metric_names or
    property_names (they are applied when sending, tests/test_names.py), so the Context has no place for them."""
    created = first_sight("conversations", conversation()).events[0]
    assert created.metric == "Created Conversation"
    assert list(created.properties) == CONVERSATION_KEYS
    with pytest.raises(TypeError, match="metric_names"):
        context(metric_names={"Created Conversation": "Opened Chat"})


def test_the_event_profile_is_the_first_contact_with_an_identifier():
    """Contacts without email or phone are passed over; the first with one owns the events."""
    events = first_sight("conversations", conversation()).events
    assert {e.identity for e in events} == {
        Identity(email="jo@example.com", phone_number="+14155550100", contact_id="c-mail")
    }
    raw = conversation(contacts={"contacts": [{"id": "unknown"}, {"id": "c-phone"}, {"id": "c-mail"}]})
    assert first_sight("conversations", raw).events[0].identity.contact_id == "c-phone"


@pytest.mark.parametrize("contacts", [[{"id": "c-none"}], [], [{"id": "never-fetched"}]])
def test_object_without_an_identifiable_contact_emits_nothing_and_is_counted(contacts):
    """No contact with email or valid phone → no event, counted as skipped:no_identifier."""
    inference = first_sight("tickets", ticket(contacts={"contacts": contacts}))
    assert inference.events == ()
    assert inference.counts == {"skipped:no_identifier": 1}


def test_object_with_nothing_to_emit_counts_no_skip():
    """An unchanged object without identifier is not counted: nothing was skipped."""
    raw = ticket(contacts={"contacts": [{"id": "c-none"}]})
    snap = to_snapshot("tickets", raw)
    assert diff(snap, snap, context()).counts == {}


def test_backfill_flag_follows_flow_trigger_max_age_and_run_mode():
    """Events older than flow_trigger_max_age at the run's start are backfills; all are in backfill runs."""
    fresh = ticket(created_at=ts("2026-03-01T11:00"), updated_at=ts("2026-03-01T11:00"), parts=[])
    old = ticket(created_at=ts("2026-02-27T11:59"), updated_at=ts("2026-02-27T11:59"), parts=[])
    assert [e.backfill for e in first_sight("tickets", fresh).events] == [False, False]
    assert [e.backfill for e in first_sight("tickets", old).events] == [True, True]
    assert [e.backfill for e in first_sight("tickets", fresh, backfill_run=True).events] == [True, True]
    edge = ticket(created_at=int((RUN - timedelta(hours=24)).timestamp()), parts=[])
    assert [e.backfill for e in first_sight("tickets", edge).events] == [False, False]


def test_event_time_is_aware_utc():
    """Event times are timezone-aware UTC datetimes."""
    events = first_sight("tickets", ticket()).events
    assert len(events) == 4
    for event in events:
        assert event.time.utcoffset() == timedelta(0)


def test_oversize_properties_are_truncated_and_counted():
    """A 300 KB custom attribute is cut to 100 KB on every event and each cut is counted."""
    raw = conversation(custom_attributes={"essay": "é" * 150_000})
    inference = first_sight("conversations", raw)
    essay = inference.events[0].properties["Custom Attributes"]["essay"]
    assert len(essay.encode()) <= 100_000
    assert essay.startswith("éé")
    assert inference.counts == {"truncated": 4}


def test_properties_are_json_ready():
    """Properties survive a JSON round trip unchanged (the outbox stores them as JSON and sends them so)."""
    events = first_sight("conversations", conversation()).events + first_sight("tickets", ticket()).events
    assert len(events) == 8  # every conversation and ticket metric a first sight of these two raises
    for event in events:
        assert json.loads(json.dumps(event.properties)) == event.properties


def test_contacts_stream_yields_no_events():
    """Contacts become profiles, never events."""
    snap = to_snapshot("contacts", contact())
    assert diff(None, snap, context()).events == ()


def test_change_only_in_properties_raises_no_event():
    """A new title or assignee alone is no event: properties describe, rules decide."""
    before = conversation()
    after = advanced(before, title="Other", admin_assignee_id=0, updated_at=ts("2026-02-09T00:00"))
    assert (
        diff(to_snapshot("conversations", before), to_snapshot("conversations", after), context()).events
        == ()
    )


def test_reply_from_a_user_part_carries_current_ticket_state_properties():
    """Properties describe the ticket as read now, whatever part raised the event."""
    later = ticket(
        parts=[*ticket()["ticket_parts"]["ticket_parts"], part("9", "2026-02-04T00:00", "comment", "user")]
    )
    events = diff(to_snapshot("tickets", ticket()), to_snapshot("tickets", later), context()).events
    assert [e.metric for e in events] == ["Replied to Ticket"]
    assert events[0].properties["Ticket Parts Count"] == 5
