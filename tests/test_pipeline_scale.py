"""Issue 9 acceptance: a first sync larger than every per-run bound delivers exactly what docs/design.md §4 defines.

One run of the real job, at its default bounds, over a generated workspace whose conversations and tickets
name more than 12,000 contacts: more than the run's contact cache holds (5,000), more profiles than one
Klaviyo import takes (10,000), more events than one delivery chunk (20,000). The expectation is the oracle
of tests/test_pipeline_expected.py (computed from the generator's history alone, never through the
inference code). Before the fix the contact cache emptied itself mid-page, and this run lost hundreds of
events to `skipped:no_identifier` while reporting success.

SQLite only: the run takes most of a minute; the store's bounds are tested on PostgreSQL in test_state.py.
"""

from __future__ import annotations

import pytest

from etl.contacts import CONTACT_CACHE_LIMIT
from etl.pipeline import EVENT_CHUNK
from etl.sandbox.generator import Workspace
from tests.test_pipeline_expected import (
    BEGIN,
    SEED,
    START,
    conversation_events,
    expected_events,
    open_harness,
    profile_keys,
    rebuilt,
    ticket_events,
)

# Every contact is created at the workspace's first moment (history_days=1), so each conversation or ticket
# names any contact with equal chance: the fewest objects that name more than 12,000 contacts.
SIZE = {"contacts": 20_000, "conversations": 17_000, "tickets": 1_700, "history_days": 1}
MAX_IMPORT_PROFILES = 10_000  # Klaviyo: "Accepts up to 10,000 profiles per request"
NO_RATE_LIMIT = {"burst_per_second": 10_000, "steady_per_minute": 100_000}


@pytest.mark.slow
def test_a_first_sync_larger_than_every_bound_delivers_exactly_the_expected_events(tmp_path):
    """A first sync naming 12,000+ contacts delivers exactly the oracle's events and skips only the objects
    whose contacts all lack an email and a valid phone."""
    ws = Workspace(seed=SEED, start=BEGIN, **SIZE)
    # the run is not about Klaviyo's rate limits (the clients do not sleep here): lift them
    with open_harness(f"sqlite:///{tmp_path}/state.db", ws, **NO_RATE_LIMIT) as harness:
        harness.run()
        (counts,) = [run.counts for run in harness.store.runs(harness.job.name, 1)]
        profiles = set(harness.klaviyo.profiles)

    # the workspace is larger than every bound the run keeps
    objects = rebuilt(ws.history, harness.polls[0])
    named = {c for cur in objects.values() for c in cur.contacts if c in ws.contacts}
    assert len(named) > 12_000 > CONTACT_CACHE_LIMIT and len(profiles) > MAX_IMPORT_PROFILES
    assert all(cur.updated >= START for cur in objects.values())  # all read by this first sync

    expected = expected_events(ws.history, harness.polls)
    (delivered,) = harness.after
    missing, extra = sorted(expected - delivered), sorted(delivered - expected)
    assert (len(missing), len(extra)) == (0, 0), (missing[:5], extra[:5])
    assert len(delivered) > EVENT_CHUNK
    assert {profile for _, _, profile, _ in delivered} <= profiles  # every event's profile was imported

    # what the run history says it skipped is what the workspace holds, not a cache's accident
    keys = profile_keys(ws.history)
    rules = {"conversation": conversation_events, "ticket": ticket_events}
    unidentified = {"conversation": 0, "ticket": 0}
    for (stream, ident), cur in objects.items():
        emits = any(time >= START for _, _, time in rules[stream](ident, None, cur))
        if emits and not any(keys.get(c) for c in cur.contacts):
            unidentified[stream] += 1
    skipped = {s[:-1]: counts[s].get("skipped:no_identifier", 0) for s in ("conversations", "tickets")}
    assert skipped == unidentified and all(unidentified.values())
