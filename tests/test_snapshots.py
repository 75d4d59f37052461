"""Raw Intercom object → snapshot: tracked fields only, normalized, with a stable digest."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from etl.errors import IntercomError
from etl.snapshots import referenced_contact_ids, to_snapshot
from tests.pure_fixtures import contact, conversation, part, ticket, ts


def test_conversation_snapshot_normalizes_ids_times_and_nested_fields():
    """A conversation's ids become strings, timestamps stay UNIX seconds, nested fields are flattened."""
    snap = to_snapshot("conversations", conversation())
    assert snap.stream == "conversations"
    assert snap.object_id == "1295"
    assert snap.updated_at == datetime(2026, 2, 1, 12, 30, tzinfo=UTC)
    data = snap.data
    assert data["admin_assignee_id"] == "991"
    assert data["team_assignee_id"] == "501"
    assert data["last_contact_reply_at"] == ts("2026-02-01T11:00")
    assert data["rating"] == {
        "rating": 4,
        "remark": "quick",
        "created_at": ts("2026-02-01T11:30"),
        "updated_at": ts("2026-02-01T12:00"),
    }
    assert data["tags"] == [{"id": "11"}, {"id": "12", "name": "churn-risk"}]
    assert (data["source_type"], data["delivered_as"], data["sla_status"]) == (
        "email",
        "customer_initiated",
        "missed",
    )
    assert (data["parts_count"], data["reopen_count"], data["assignment_count"]) == (7, 2, 3)
    assert data["contacts"] == ["c-none", "c-mail"]


@pytest.mark.parametrize("unassigned", [0, "0", None, ""])
def test_unassigned_admin_and_team_are_none(unassigned):
    """An assignee id of 0, "0", null or "" means unassigned (spec: "it will return 0")."""
    snap = to_snapshot("tickets", ticket(admin_assignee_id=unassigned, team_assignee_id=unassigned))
    assert snap.data["admin_assignee_id"] is None
    assert snap.data["team_assignee_id"] is None


def test_integer_ids_become_strings():
    """Ids that arrive as integers are keyed as strings, so lookups in Context match."""
    raw = conversation(id=1295, contacts={"contacts": [{"id": 77}]})
    snap = to_snapshot("conversations", raw)
    assert snap.object_id == "1295"
    assert referenced_contact_ids(snap) == ["77"]


def test_ticket_snapshot_keeps_only_parts_that_can_raise_events():
    """Ticket parts shrink to state changes and user comments, sorted by (created_at, id)."""
    parts = [
        part("10", "2026-02-01T10:30", state="resolved", previous="in_progress"),
        part("9", "2026-02-01T10:00", "comment", "user"),
        part("8", "2026-02-01T10:10", "note", "admin"),
        part("7", "2026-02-01T10:20", "comment", "admin"),
        part("6", "2026-02-01T10:25", "assignment", state="resolved", previous="resolved"),
    ]
    data = to_snapshot("tickets", ticket(parts=parts)).data
    assert data["parts"] == [
        {"id": "9", "created_at": ts("2026-02-01T10:00"), "part_type": "comment", "author_type": "user"},
        {
            "id": "10",
            "created_at": ts("2026-02-01T10:30"),
            "part_type": "ticket_state_updated",
            "author_type": "admin",
            "ticket_state": "resolved",
            "previous_ticket_state": "in_progress",
        },
    ]
    assert data["parts_count"] == 5
    assert (data["state"], data["category"], data["ticket_type"]) == ("resolved", "Customer", "Bug")
    assert (data["name"], data["description"], data["is_shared"]) == ("Login broken", "It fails.", False)


def test_contact_snapshot_trims_and_lowercases_email():
    """A contact's email is trimmed and lower-cased; its phone is kept for region-aware normalizing later."""
    data = to_snapshot("contacts", contact()).data
    assert data["email"] == "jo@example.com"
    assert data["phone"] == "(415) 555-0100"
    assert data["tag_ids"] == ["11", "99"]
    assert data["opted_out_count"] == 2
    assert data["location"] == {"city": None, "country": "United States", "region": "California"}


def test_digest_ignores_key_order_and_untracked_fields():
    """Re-reading an object in another key order, or with only untracked fields changed, keeps the digest."""
    raw = conversation()
    reordered = json.loads(json.dumps(dict(reversed(list(raw.items())))))
    untracked = conversation(open=False, updated_at=ts("2026-02-02T00:00"), state="closed")
    assert to_snapshot("conversations", reordered).digest == to_snapshot("conversations", raw).digest
    assert to_snapshot("conversations", untracked).digest == to_snapshot("conversations", raw).digest


def test_digest_changes_with_a_tracked_field():
    """A new contact reply changes the digest, so the pipeline does not skip the object."""
    later = conversation(statistics={"last_contact_reply_at": ts("2026-02-02T09:00")})
    assert to_snapshot("conversations", later).digest != to_snapshot("conversations", conversation()).digest


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000, 1700000000),
        (1700000000.0, 1700000000),
        ("1700000000", 1700000000),
        (None, None),
        (True, None),
        (-5, None),
        (10**13, None),
        ("soon", None),
        (float("nan"), None),
    ],
)
def test_timestamps_outside_unix_seconds_are_dropped(value, expected):
    """Only UNIX seconds a datetime can hold survive as timestamps; anything else is None."""
    assert to_snapshot("conversations", conversation(created_at=value)).data["created_at"] == expected


def test_updated_at_falls_back_to_created_at_then_epoch():
    """A snapshot always has an aware updated_at, even when the object has no usable updated_at."""
    assert to_snapshot("tickets", ticket(updated_at=None)).updated_at == datetime(2026, 2, 1, 10, tzinfo=UTC)
    bare = to_snapshot("tickets", {"id": "1"})
    assert bare.updated_at == datetime(1970, 1, 1, tzinfo=UTC)


def test_missing_id_is_an_intercom_error():
    """An object without an id is reported as a malformed Intercom response."""
    with pytest.raises(IntercomError, match="Intercom returned a ticket without an id"):
        to_snapshot("tickets", {"type": "ticket"})


def test_unknown_stream_is_refused():
    """Only the three streams have snapshots."""
    with pytest.raises(ValueError, match="unknown stream 'companies'"):
        to_snapshot("companies", {"id": "1"})


def test_snapshot_data_is_json_serialisable():
    """Snapshot data survives a JSON round trip unchanged (it is stored as JSON)."""
    for stream, raw in (("contacts", contact()), ("conversations", conversation()), ("tickets", ticket())):
        data = to_snapshot(stream, raw).data
        assert json.loads(json.dumps(data)) == data


def test_pure_modules_import_no_io_libraries():
    """The pure core imports neither requests, sqlalchemy, click nor yaml (STYLE: pure modules)."""
    code = (
        "import sys, etl.snapshots, etl.events, etl.profiles, etl.limits;"
        "print(sorted(m for m in ('requests', 'sqlalchemy', 'click', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
