"""The seeded workspace generator: deterministic, realistic, and its history agrees with its objects."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

import phonenumbers
import pytest

from etl.sandbox.generator import Change, Workspace
from tests.intercom_fixtures import START, workspace


@pytest.fixture(scope="module")
def ws() -> Workspace:
    w = workspace(seed=11, contacts=60, conversations=80, tickets=30)
    for _ in range(4):
        w.advance(timedelta(hours=2))
    return w


def by_object(history: list[Change], prefix: str) -> dict[str, list[Change]]:
    grouped: dict[str, list[Change]] = defaultdict(list)
    for change in history:
        if change.kind.startswith(prefix):
            grouped[change.object_id].append(change)
    return grouped


def test_the_same_seed_and_start_give_the_same_workspace_and_history() -> None:
    """Generation and advancing depend only on the seed, the start time and the steps."""
    a, b, c = workspace(seed=4), workspace(seed=4), workspace(seed=5)
    assert a.advance(timedelta(minutes=30)) == b.advance(timedelta(minutes=30))
    assert (a.contacts, a.conversations, a.tickets, a.history) == (
        b.contacts,
        b.conversations,
        b.tickets,
        b.history,
    )
    assert a.conversations != c.conversations


def test_a_naive_start_is_refused() -> None:
    """Time must be timezone-aware."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Workspace(seed=1, start=datetime(2026, 3, 1))


def test_advance_moves_time_and_updated_at_like_intercom() -> None:
    """Changes of a step lie inside it, and each changed object's updated_at is its latest change time."""
    w = workspace(seed=2)
    before = w.now
    changes = w.advance(timedelta(hours=1), activity=20)
    assert w.now == before + 3600
    assert changes and all(before < c.time <= w.now for c in changes)
    assert [c.time for c in changes] == sorted(c.time for c in changes)
    stores = {"conversation": w.conversations, "ticket": w.tickets}
    for change in changes:
        kind = change.kind.split(".")[0]
        if kind in stores:
            assert stores[kind][change.object_id]["updated_at"] >= change.time


def test_conversation_and_ticket_updated_at_is_their_last_change(ws: Workspace) -> None:
    """No object changes without a history record, and none is dated after the workspace's now."""
    for prefix, store in (("conversation.", ws.conversations), ("ticket.", ws.tickets)):
        changes = by_object(ws.history, prefix)
        for object_id, obj in store.items():
            assert obj["updated_at"] == max(c.time for c in changes[object_id]) <= ws.now


def test_conversation_history_agrees_with_the_objects(ws: Workspace) -> None:
    """Replies, ratings and reads in the history are what the conversations show."""
    changes = by_object(ws.history, "conversation.")
    for conv_id, conv in ws.conversations.items():
        records = changes[conv_id]
        replies = [c.time for c in records if c.kind == "conversation.contact_replied"]
        assert conv["statistics"].get("last_contact_reply_at") == (replies[-1] if replies else None)
        ratings = [c for c in records if c.kind == "conversation.rated"]
        if ratings:
            rating = conv["conversation_rating"]
            assert (rating["rating"], rating["remark"], rating["updated_at"]) == (
                ratings[-1].details["rating"],
                ratings[-1].details["remark"],
                ratings[-1].time,
            )
        else:
            assert conv["conversation_rating"] is None
        flips = [c.kind for c in records if c.kind in ("conversation.read", "conversation.admin_replied")]
        assert conv["read"] is (bool(flips) and flips[-1] == "conversation.read")
        assert records[0].kind == "conversation.created"
        assert records[0].details["contact_ids"] == [c["id"] for c in conv["contacts"]["contacts"]]


def test_ticket_history_agrees_with_the_parts(ws: Workspace) -> None:
    """Every state change and contact reply in the history is a ticket part with the same id, time and states."""
    changes = by_object(ws.history, "ticket.")
    for ticket_id, ticket in ws.tickets.items():
        parts = {p["id"]: p for p in ticket["ticket_parts"]["ticket_parts"]}
        states = [c for c in changes[ticket_id] if c.kind == "ticket.state_changed"]
        replies = [c for c in changes[ticket_id] if c.kind == "ticket.contact_replied"]
        assert len(parts) == len(states) + len(replies) == ticket["ticket_parts"]["total_count"]
        for change in states:
            part = parts[change.details["part_id"]]
            assert (part["previous_ticket_state"], part["ticket_state"], part["created_at"]) == (
                change.details["previous"],
                change.details["state"],
                change.time,
            )
        for change in replies:
            part = parts[change.details["part_id"]]
            assert (part["part_type"], part["author"]["type"], part["created_at"]) == (
                "comment",
                "user",
                change.time,
            )
        assert ticket["ticket_state"]["category"] == (states[-1].details["state"] if states else "submitted")


def test_contacts_are_varied_like_a_real_workspace(ws: Workspace) -> None:
    """Some contacts lack email or have untidy ones, phones come valid and invalid, some are merged."""
    contacts = list(ws.contacts.values())
    emails = [c["email"] for c in contacts]
    assert "" in emails
    assert any(e != e.strip().lower() for e in emails)
    valid = []
    for phone in (c["phone"] for c in contacts if c["phone"]):
        try:
            valid.append(phonenumbers.is_valid_number(phonenumbers.parse(phone, "US")))
        except phonenumbers.NumberParseException:
            valid.append(False)
    assert True in valid and False in valid
    assert {c["location"]["country"] for c in contacts} >= {"Germany", None}
    assert any(c["tags"]["data"] for c in contacts)
    assert any(c["opted_out_subscription_types"]["total_count"] for c in contacts)
    assert ws.merged and not set(ws.merged) & set(ws.contacts)
    assert set(ws.merged.values()) <= set(ws.contacts)


def test_conversations_and_tickets_are_varied(ws: Workspace) -> None:
    """Sources, group conversations, ratings with remarks, SLAs, tags, assignees and ticket types all occur."""
    convs = list(ws.conversations.values())
    assert len({c["source"]["type"] for c in convs}) >= 4
    assert len({c["source"]["delivered_as"] for c in convs}) >= 3
    assert any(len(c["contacts"]["contacts"]) > 1 for c in convs)
    assert any((c["conversation_rating"] or {}).get("remark") for c in convs)
    assert any(c["sla_applied"] for c in convs) and any(c["tags"]["tags"] for c in convs)
    assert {c["admin_assignee_id"] == 0 for c in convs} == {True, False}
    assert len({t["ticket_type"]["id"] for t in ws.tickets.values()}) == 3
    assert START.timestamp() <= ws.now


def test_some_contacts_have_more_tags_than_intercom_lists_and_some_string_avatars(ws: Workspace) -> None:
    """Some contacts carry 11+ distinct tags, some avatars are bare URL strings, and the rest keep the spec's
    shapes: the sandbox plays the field's rough sides for the client to cope with."""
    contacts = list(ws.contacts.values())
    counts = [len(c["tags"]["data"]) for c in contacts]
    assert any(n > 10 for n in counts) and any(n <= 10 for n in counts)
    for contact in contacts:
        ids = [ref["id"] for ref in contact["tags"]["data"]]
        assert len(ids) == len(set(ids)) == contact["tags"]["total_count"]
        assert set(ids) <= {tag["id"] for tag in ws.tags}
    assert {type(c["avatar"]) for c in contacts} == {dict, str}


def test_retagging_changes_only_tags_beyond_the_tenth_and_is_in_the_history(ws: Workspace) -> None:
    """A contact.retagged record swaps one tag after the 10th for another; the contact shows its last record."""
    retagged = by_object(ws.history, "contact.retagged")
    assert retagged
    for contact_id, changes in retagged.items():
        contact = ws.contacts[contact_id]
        assert [ref["id"] for ref in contact["tags"]["data"]] == changes[-1].details["tags"]
        assert contact["updated_at"] >= changes[-1].time
        for change in changes:
            after = change.details["tags"]
            assert change.details["removed"] not in after and after.index(change.details["added"]) >= 10
