"""A whole generated sandbox workspace maps through the pure core, and a poll later infers what happened."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etl.events import Context, diff
from etl.models import Admin, Identity, Snapshot
from etl.profiles import contact_identity, to_profile
from etl.sandbox import generator
from etl.snapshots import to_snapshot

BEGIN = datetime(2026, 3, 1, tzinfo=UTC)
REGION = "US"
STATE_METRICS = {
    "submitted": "Submitted Ticket",
    "waiting_on_customer": "Marked Ticket as Waiting on Customer",
    "resolved": "Resolved Ticket",
}


def workspace(seed: int):
    return generator.Workspace(seed=seed, start=BEGIN, contacts=40, conversations=60, tickets=25)


def snapshots(ws, stream: str) -> dict[str, Snapshot]:
    return {raw["id"]: to_snapshot(stream, raw) for raw in ws.objects(stream)}


def context_of(ws) -> Context:
    """The Context the pipeline would build: lookups by id, identities with merged contacts followed."""
    identities: dict[str, Identity] = {}
    for raw in ws.objects("contacts"):
        identity, _ = contact_identity(to_snapshot("contacts", raw), REGION)
        if identity is not None:
            identities[raw["id"]] = identity
    for gone, survivor in ws.merged.items():
        if survivor in identities:
            identities[gone] = identities[survivor]
    return Context(
        start_date=BEGIN - timedelta(days=30),
        flow_trigger_max_age=timedelta(hours=24),
        run_started_at=datetime.fromtimestamp(ws.now, UTC),
        admins={a["id"]: Admin(name=a["name"], email=a["email"]) for a in ws.admins},
        teams={t["id"]: t["name"] for t in ws.teams},
        tags={t["id"]: t["name"] for t in ws.tags},
        contacts=identities,
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_generated_workspace_maps_without_exception(seed):
    """Every contact, conversation and ticket of a generated workspace maps; events keep their promises."""
    ws = workspace(seed)
    ctx = context_of(ws)
    tags = {t["id"]: t["name"] for t in ws.tags}
    profiles = [to_profile(snap, tags, REGION)[0] for snap in snapshots(ws, "contacts").values()]
    assert sum(profile is not None for profile in profiles) > len(profiles) // 2
    uids: list[str] = []
    metrics: set[str] = set()
    for stream in ("conversations", "tickets"):
        for snap in snapshots(ws, stream).values():
            inference = diff(None, snap, ctx)
            assert diff(snap, snap, ctx).events == ()
            for event in inference.events:
                assert event.time >= ctx.start_date
                assert event.identity.email or event.identity.phone_number
                uids.append(event.unique_id)
                metrics.add(event.metric)
    assert len(uids) == len(set(uids))
    assert {"Created Conversation", "Created Ticket", "Replied to Ticket"} <= metrics


def expected_ticket_events(changes, ids: set[str]) -> dict[str, set[tuple[str, str]]]:
    """What the generator's history says each ticket should raise, computed without the inference code."""
    expected: dict[str, set[tuple[str, str]]] = {ident: set() for ident in ids}
    for change in changes:
        if change.object_id not in ids:
            continue
        base, wanted = f"intercom:ticket:{change.object_id}", expected[change.object_id]
        if change.kind == "ticket.created":
            wanted.add(("Created Ticket", f"{base}:created"))
            wanted.add(("Submitted Ticket", f"{base}:state:submitted:{change.time}"))
        elif change.kind == "ticket.contact_replied":
            wanted.add(("Replied to Ticket", f"{base}:reply:{change.details['part_id']}"))
        elif change.kind == "ticket.state_changed" and change.details["state"] in STATE_METRICS:
            state = change.details["state"]
            wanted.add((STATE_METRICS[state], f"{base}:state:{state}:{change.time}"))
    return expected


def expected_conversation_events(
    changes, before: Mapping[str, Snapshot], after: Mapping[str, dict[str, Any]]
) -> dict[str, set[tuple[str, str]]]:
    """One event per rule per conversation, at the latest change of its kind (search shows only that)."""
    expected: dict[str, set[tuple[str, str]]] = {ident: set() for ident in after}
    latest: dict[tuple[str, str], int] = {}
    for change in changes:
        latest[(change.object_id, change.kind)] = change.time
    for (ident, kind), time in latest.items():
        base = f"intercom:conversation:{ident}"
        if kind == "conversation.created":
            expected[ident].add(("Created Conversation", f"{base}:created"))
        elif kind == "conversation.contact_replied":
            expected[ident].add(("Replied to Conversation", f"{base}:replied:{time}"))
        elif kind == "conversation.rated":
            expected[ident].add(("Rated Conversation", f"{base}:rated:{time}"))
    for ident, raw in after.items():
        was_read = ident in before and before[ident].data["read"]
        if raw["read"] and not was_read:
            expected[ident].add(("Read Conversation", f"{base_of(ident)}:read:{raw['updated_at']}"))
    return expected


def base_of(ident: str) -> str:
    return f"intercom:conversation:{ident}"


@pytest.mark.parametrize("seed", [4, 5])
def test_a_later_poll_infers_exactly_what_the_history_says(seed):
    """After the workspace advances, diff(prev, cur) raises the events its history implies, no more."""
    ws = workspace(seed)
    before = {stream: snapshots(ws, stream) for stream in ("conversations", "tickets")}
    changes = ws.advance(timedelta(minutes=45), activity=60)
    ctx = context_of(ws)
    after_raw = {raw["id"]: raw for raw in ws.objects("conversations")}
    expected = {
        **expected_conversation_events(changes, before["conversations"], after_raw),
        **expected_ticket_events(changes, {raw["id"] for raw in ws.objects("tickets")}),
    }
    checked = 0
    for stream in ("conversations", "tickets"):
        for ident, snap in snapshots(ws, stream).items():
            inference = diff(before[stream].get(ident), snap, ctx)
            actual = {(event.metric, event.unique_id) for event in inference.events}
            if inference.counts.get("skipped:no_identifier"):
                assert actual == set()
                continue
            assert actual == expected[ident], ident
            checked += len(actual)
    assert checked > 10
