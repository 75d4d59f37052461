"""Run modes of `etl run` (issue 5): dry-run and backfill, over loopback HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from etl import logs
from etl.models import RunOptions
from etl.pipeline import JobRun
from etl.runner import run_jobs
from etl.state import StateStore, snapshots
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    START_DATE,
    STREAMS,
    T0,
    canonical,
    close,
    cut_off,
    dump,
    events_posted,
    execute,
    in_window,
    klaviyo_content,
    outbox_rows,
    sandboxes,
    settings,
)


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The `etl` logger writes JSON lines into a buffer the test reads; restored afterwards."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = logger.handlers[:], logger.propagate, logger.level
    buffer = io.StringIO()
    logs.configure("json", 0, stream=buffer)
    yield buffer
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokens `run_jobs` reads, in the environment variables the job settings name."""
    monkeypatch.setenv(IC_ENV, IC_TOKEN)
    monkeypatch.setenv(KL_ENV, KL_KEY)


def snapshot_ids(store: StateStore, job: str, stream: str) -> set[str]:
    query = sa.select(snapshots.c.object_id).where(snapshots.c.job == job, snapshots.c.stream == stream)
    with store.transaction() as conn:
        return {row.object_id for row in conn.execute(query)}


# -- dry-run ------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("secrets_env")
def test_dry_run_writes_nothing_and_prints_exactly_what_a_real_run_queues(
    db_url: str, tmp_path: Path, log_lines: io.StringIO
) -> None:
    """Before and after each of two dry-runs every table is identical, and its NDJSON is the next real run's outbox."""
    with sandboxes() as boxes:
        job = boxes.job()
        posted: list[object] = []
        for step in range(2):  # on an empty database, then on one with history and a changed workspace
            before = dump(db_url)
            output, stderr = tmp_path / f"dry-{step}.ndjson", io.StringIO()
            code = run_jobs(
                settings(db_url, job), [], RunOptions(dry_run=True, output=str(output)), stderr=stderr
            )
            assert code == 0, stderr.getvalue()
            assert dump(db_url) == before
            if step == 0:
                assert before == {}  # no SQLite file was created, no PostgreSQL table
            assert boxes.klaviyo.requests == posted  # the dry-run sent nothing
            lines = [json.loads(line) for line in output.read_text().splitlines()]
            assert lines and all(sorted(line) == ["job", "kind", "payload", "unique_id"] for line in lines)
            assert {line["job"] for line in lines} == {"shop"}
            assert {line["kind"] for line in lines} == ({"event", "profile"} if step == 0 else {"event"})
            (summary,) = [
                json.loads(line) for line in stderr.getvalue().splitlines()
            ]  # JSON mode: a JSON line
            assert (summary["message"], summary["job"], summary["mode"]) == ("run summary", "shop", "dry-run")
            for text in (output.read_text(), stderr.getvalue(), log_lines.getvalue()):
                assert IC_TOKEN not in text and KL_KEY not in text

            store = StateStore(db_url)
            store.upgrade()
            services = boxes.services(store)
            real = JobRun(job, RunOptions(), services)
            real.execute()
            close(services)
            queued = outbox_rows(store, "shop", run_id=real.run_id)
            store.close()
            assert {canonical(r["kind"], r["unique_id"], r["payload"]) for r in queued} == {
                canonical(line["kind"], line["unique_id"], line["payload"]) for line in lines
            }
            assert len(queued) == len(lines)
            posted = list(boxes.klaviyo.requests)
            boxes.workspace.advance(timedelta(minutes=30), activity=15)


# -- backfill -----------------------------------------------------------------------------------------
def test_backfill_reads_exactly_its_window_marks_backfill_and_keeps_watermarks(store: StateStore) -> None:
    """A backfill stores snapshots of exactly the objects in [since, until), sends backfill=true, moves no watermark."""
    since, until = T0 - timedelta(days=20), T0 - timedelta(days=5)
    with sandboxes() as boxes:
        job = boxes.job(flow_trigger_max_age=timedelta(days=365))  # no event is old enough to be backfill
        marks = {s: T0 - timedelta(hours=h) for h, s in enumerate(STREAMS, 1)}
        for stream, mark in marks.items():
            store.set_watermark("shop", stream, mark, T0)
        older = sorted(
            o["id"] for o in boxes.workspace.tickets.values() if o["updated_at"] < since.timestamp()
        )
        boxes.workspace.touch("tickets", older[0], int(since.timestamp()))  # on the window's lower edge: in
        boxes.workspace.touch("tickets", older[1], int(until.timestamp()))  # on its upper edge: out
        services = boxes.services(store)
        report = JobRun(job, RunOptions(since=since, until=until), services, clock=boxes.clock).execute()
        close(services)
        for stream in STREAMS:
            expected = in_window(boxes, stream, since, until)
            assert expected and snapshot_ids(store, "shop", stream) == expected
            assert report.counts[stream]["objects"] == len(expected)
        assert older[0] in snapshot_ids(store, "shop", "tickets") and older[1] not in snapshot_ids(
            store, "shop", "tickets"
        )
        assert store.watermarks("shop") == marks
        events = boxes.klaviyo.events
        assert len(events) == report.counts["_delivery"]["events_sent"] > 10
        assert all(e.backfill for e in events)
        # first sight reconstructs history since start_date, but nothing happened after the window's end
        assert all(START_DATE <= datetime.fromisoformat(e.time) < until for e in events)
        (run,) = store.runs("shop", 5)
        assert (run.mode, run.status) == ("backfill", "succeeded")


@pytest.mark.parametrize("readers", [1, 4])
def test_interrupted_backfill_resumes_where_it_stopped_and_ends_like_an_uninterrupted_one(
    store: StateStore, readers: int
) -> None:
    """A backfill cut off by Intercom mid-way continues from its recorded progress with fewer searches, same
    result; with one reader or with four reading the window's slices at once."""
    options = RunOptions(since=START_DATE, until=T0)
    with sandboxes(klaviyos=2) as boxes:
        job = boxes.job("shop", concurrency=readers)
        full = cut_off(boxes, store, job, options)  # the uninterrupted "ref" went to Klaviyo no. 2
        (failed,) = store.runs("shop", 5)
        assert failed.status == "failed" and failed.window["contacts"]["done"] is True
        assert failed.window["conversations"]["done"] is False
        if readers == 1:  # with four, the lookup of the first page's contacts may be what meets the 429s
            assert failed.window["conversations"]["resume_until"]
        assert outbox_rows(store, "shop")  # it queued pages (some may have gone out while it read)

        before = boxes.searches()
        execute(boxes, store, job, options)
        resumed = boxes.searches() - before
        assert 0 < resumed < full - 2  # contacts skipped, conversations continued, not restarted
        searched = [path for _, path in boxes.intercom.server.requests if path.endswith("/search")][-resumed:]
        assert searched[0] == "/conversations/search"  # contacts were done: not read again
        assert klaviyo_content(boxes.klaviyo) == klaviyo_content(boxes.klaviyos[1])
        assert klaviyo_content(boxes.klaviyo)[0]
        assert store.watermarks("shop") == {}
        assert outbox_rows(store, "shop", status="pending") == []
        assert [r.status for r in store.runs("shop", 5)] == ["succeeded", "failed"]


def test_a_backfill_resumes_after_many_incremental_runs_in_between(store: StateStore) -> None:
    """Cron's incremental runs between a cut-off backfill and its re-run do not make the backfill start over."""
    options = RunOptions(since=START_DATE, until=T0)
    with sandboxes() as boxes:
        job = boxes.job("shop")
        cut_off(boxes, store, job, options)
        for _ in range(25):  # two hours of a cron schedule every five minutes
            execute(boxes, store, job, RunOptions(streams=("tickets",)))
        assert len(store.runs("shop", 100)) == 26
        before = boxes.searches()
        execute(boxes, store, job, options)
        searched = [path for _, path in boxes.intercom.server.requests if path.endswith("/search")][before:]
        assert searched[0] == "/conversations/search"  # contacts were done: not read again
        assert store.runs("shop", 1)[0].window["contacts"]["done"] is True


def test_replay_re_emits_unchanged_events_and_klaviyo_dedupes_them(store: StateStore) -> None:
    """Re-running a backfill sends nothing; with replay it resends every event and Klaviyo keeps one of each."""
    options = RunOptions(since=T0 - timedelta(days=20), until=T0)
    with sandboxes() as boxes:
        reports = []
        for replay in (False, False, True):
            services = boxes.services(store)
            opts = RunOptions(since=options.since, until=options.until, replay=replay)
            reports.append(JobRun(boxes.job(), opts, services, clock=boxes.clock).execute())
            close(services)
            if len(reports) == 1:
                content, posted = klaviyo_content(boxes.klaviyo), events_posted(boxes.klaviyo)
        first, again, replayed = (r.counts for r in reports)
        events = sum(first[s].get("events", 0) for s in ("conversations", "tickets"))
        assert events == first["_delivery"]["events_sent"] == posted > 0
        assert sum(again[s].get("events", 0) for s in STREAMS) == 0 and "_delivery" not in again
        assert sum(replayed[s].get("events", 0) for s in STREAMS) == events
        assert replayed["_delivery"]["events_sent"] == events
        assert events_posted(boxes.klaviyo) == 2 * posted
        assert klaviyo_content(boxes.klaviyo) == content


def test_streams_option_reads_and_advances_only_the_named_streams(store: StateStore) -> None:
    """`streams=("tickets",)` searches no conversations, moves only the tickets watermark, counts only tickets."""
    with sandboxes() as boxes:
        services = boxes.services(store)
        report = JobRun(boxes.job(), RunOptions(streams=("tickets",)), services, clock=boxes.clock).execute()
        close(services)
        paths = {path for _, path in boxes.intercom.server.requests}
        assert "/tickets/search" in paths and "/conversations/search" not in paths
        assert list(store.watermarks("shop")) == ["tickets"]
        assert [k for k in report.counts if not k.startswith("_")] == ["tickets"]
        assert snapshot_ids(store, "shop", "conversations") == set()
        assert snapshot_ids(store, "shop", "tickets") == in_window(
            boxes, "tickets", START_DATE, boxes.clock()
        )
        metrics = {e.metric for e in boxes.klaviyo.events}
        assert "Created Ticket" in metrics and all(m.endswith("Ticket") or "Ticket as" in m for m in metrics)


def test_a_re_read_tells_unchanged_objects_by_their_digests_without_reading_their_data(
    store: StateStore,
) -> None:
    """A backfill over objects unchanged since the last run reads only their stored digests (no statement
    selects the snapshots' data); an object changed since is still told changed and stored anew."""
    with sandboxes() as boxes:
        job = dataclasses.replace(boxes.job(), streams=("conversations",))
        execute(boxes, store, job, RunOptions())
        window = RunOptions(since=START_DATE, until=boxes.clock())
        statements: list[str] = []

        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        sa.event.listen(store.engine, "before_cursor_execute", record)
        try:
            execute(boxes, store, job, window)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", record)
        conv = next(
            c for c in boxes.workspace.conversations.values() if c["updated_at"] >= START_DATE.timestamp()
        )
        conv["title"] = "a title changed after the first run"
        execute(boxes, store, job, window)

    snapshot_reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "snapshots" in s]
    assert snapshot_reads and not [s for s in snapshot_reads if "snapshots.data" in s]
    changed, unchanged = store.runs("shop", 2, mode="backfill")
    for stream in job.streams:
        assert unchanged.counts[stream]["unchanged"] == unchanged.counts[stream]["objects"] > 0
    assert changed.counts["conversations"]["unchanged"] == changed.counts["conversations"]["objects"] - 1
    stored = store.snapshot("shop", "conversations", str(conv["id"]))
    assert stored is not None and stored.data["title"] == "a title changed after the first run"
