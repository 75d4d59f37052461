"""The run's bounds, crossed on small workspaces (docs/design.md §7 "No bound drops work"; issue 9).

Each test lowers a bound through `Bounds` until a small workspace holds many times more than it, and checks
the result against what the run delivers with nothing evicted: the events against the oracle of
tests/test_pipeline_expected.py, the rest against a run at the default bounds. The defaults themselves are
crossed by tests/test_pipeline_scale.py.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from datetime import timedelta
from pathlib import Path

from etl.delivery import CHUNK_BYTES
from etl.models import RunOptions
from etl.pipeline import Bounds, JobRun
from etl.sandbox.generator import Workspace
from etl.state import StateStore
from tests.run_fixtures import canonical, close, klaviyo_content, outbox_rows, sandboxes
from tests.test_pipeline_expected import ACTIVITY, BEGIN, SEED, expected_events, open_harness, rebuilt

NO_RATE_LIMIT = {"burst_per_second": 10_000, "steady_per_minute": 100_000}  # the clients do not sleep here
TINY = Bounds(contact_cache=3, profiled=2)


def workspace() -> Workspace:
    """The oracle test's workspace: 40 contacts, merges, contacts without an identifier."""
    return Workspace(seed=SEED, start=BEGIN, contacts=40, conversations=60, tickets=25)


def test_delivery_pages_through_many_chunks_and_sends_each_item_once(db_url: str) -> None:
    """Chunks of 7 profiles and 11 events: two runs deliver exactly the oracle's events, every outbox item
    is sent once, and each chunk is one request."""
    ws = workspace()
    with open_harness(db_url, ws, **NO_RATE_LIMIT) as harness:
        harness.bounds = Bounds(profile_chunk=7, event_chunk=11)
        harness.two_runs()
        rows = outbox_rows(harness.store, harness.job.name)
        klaviyo = harness.klaviyo
        requests = {
            "event": klaviyo.count("POST", "/api/event-bulk-create-jobs", 202),
            "profile": klaviyo.count("POST", "/api/profile-bulk-import-jobs", 202),
        }

    assert harness.after[-1] == expected_events(ws.history, harness.polls)
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}
    per_run = Counter((r["run_id"], r["kind"]) for r in rows)
    chunks = {"event": 11, "profile": 7}
    assert requests == {
        kind: sum(math.ceil(n / chunks[kind]) for (_, k), n in per_run.items() if k == kind)
        for kind in chunks
    }
    assert max(per_run.values()) > 3 * max(chunks.values())  # each run needed several chunks


def test_tiny_contact_cache_and_profile_bounds_change_nothing_klaviyo_receives(
    db_url: str, tmp_path: Path
) -> None:
    """With room for 3 contacts and 2 profiled ids, two runs leave Klaviyo with exactly the events and
    profiles of the same runs at the default bounds, and the outbox with the same items."""
    ws = workspace()
    reference_url = f"sqlite:///{tmp_path}/reference.db"
    with (
        open_harness(db_url, ws, **NO_RATE_LIMIT) as tiny,
        open_harness(reference_url, ws, **NO_RATE_LIMIT) as reference,
    ):
        tiny.bounds = TINY
        for step in range(2):
            tiny.run()
            reference.run()
            if step == 0:
                ws.advance(timedelta(minutes=45), activity=ACTIVITY)
        content = klaviyo_content(tiny.klaviyo), klaviyo_content(reference.klaviyo)
        items = [
            {canonical(r["kind"], r["unique_id"], r["payload"]) for r in outbox_rows(h.store, h.job.name)}
            for h in (tiny, reference)
        ]

    assert tiny.after[-1] == expected_events(ws.history, tiny.polls) == reference.after[-1]
    assert content[0] == content[1] and items[0] == items[1]
    named = {c for cur in rebuilt(ws.history, ws.now).values() for c in cur.contacts}
    assert len(named) > 10 * max(TINY.contact_cache, TINY.profiled)


def test_a_dry_run_with_tiny_bounds_prints_each_event_once_and_what_a_real_run_queues(tmp_path: Path) -> None:
    """A dry-run with room for 3 contacts and 2 printed profiles prints each event once and exactly the
    items a real run then queues; only a profile may be printed again (its outbox row would be one)."""
    with sandboxes() as boxes:
        job = boxes.job()
        sink = io.StringIO()
        services = boxes.services(None, klaviyo=None)
        try:
            JobRun(
                job, RunOptions(dry_run=True), services, sink=sink, clock=boxes.clock, bounds=TINY
            ).execute()
        finally:
            close(services)
        store = StateStore(f"sqlite:///{tmp_path}/state.db")
        store.upgrade()
        services = boxes.services(store)
        try:
            real = JobRun(job, RunOptions(), services, clock=boxes.clock)
            real.execute()
        finally:
            close(services)
        queued = outbox_rows(store, job.name, run_id=real.run_id)
        store.close()

    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    printed = Counter((line["kind"], line["unique_id"]) for line in lines)
    assert {key for key, n in printed.items() if n > 1} <= {key for key in printed if key[0] == "profile"}
    assert {canonical(line["kind"], line["unique_id"], line["payload"]) for line in lines} == {
        canonical(r["kind"], r["unique_id"], r["payload"]) for r in queued
    }
    assert sum(1 for kind, _ in printed if kind == "event") > 10 * TINY.profiled


def test_delivery_chunks_hold_at_most_chunk_bytes_of_payload(db_url: str) -> None:
    """160 contacts with ~90 KB of custom attributes each: their ~6 MB of profiles go out in chunks of at
    most CHUNK_BYTES (4 MB) of stored payload, each a profile import job of its own (one chunk fits one job's
    5 MB), taking every profile that fits; every profile is imported exactly once."""
    ws = Workspace(seed=SEED, start=BEGIN, contacts=160, conversations=1, tickets=1)
    for n, contact in enumerate(ws.objects("contacts")):
        contact["custom_attributes"] = {"notes": f"{n:03d}" + "x" * 90_000}
    with open_harness(db_url, ws, **NO_RATE_LIMIT) as harness:
        harness.run()
        rows = outbox_rows(harness.store, harness.job.name, kind="profile")
        jobs = list(reversed(harness.klaviyo.store.jobs()))  # in the order they were submitted
        imported = harness.klaviyo.profiles
    sizes = [len(json.dumps(r["payload"], separators=(",", ":"))) for r in rows]  # ~ the stored text
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)} and len(imported) == len(rows) > 50
    totals = [job.total for job in jobs]
    assert sum(totals) == len(rows) and len(totals) >= 2
    start = 0
    for total in totals:  # each job is one chunk: the rows in queue order, as many as fit the budget
        chunk = sizes[start : start + total]
        assert sum(chunk) <= CHUNK_BYTES
        if start + total < len(sizes):
            assert sum(chunk) + sizes[start + total] > CHUNK_BYTES - 2_000  # the next would not fit
        start += total
