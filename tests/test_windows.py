"""The window planner: pure, from watermarks, options and an unfinished backfill's progress."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from etl.models import Window
from etl.windows import backfill_key, plan_windows, resume_progress

START = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
LOOKBACK = timedelta(minutes=15)
STREAMS = ["contacts", "conversations", "tickets"]


def test_first_run_reads_from_start_date_and_later_runs_from_the_watermark_minus_lookback() -> None:
    """No watermark: [start_date, signpost); with one: [watermark - lookback, signpost), never below start_date."""
    marks = {"conversations": NOW - timedelta(hours=1), "tickets": START + timedelta(minutes=5)}
    plan = plan_windows(STREAMS, NOW, START, LOOKBACK, marks)
    assert plan.windows == (
        Window("contacts", START, NOW),
        Window("conversations", NOW - timedelta(hours=1, minutes=15), NOW),
        Window("tickets", START, NOW),
    )
    assert plan.state["contacts"] == {
        "since": "2026-01-01T00:00:00Z",
        "until": "2026-03-01T12:00:00Z",
        "done": False,
    }
    assert "_backfill" not in plan.state


def test_a_backfill_reads_its_window_bounded_by_the_signpost_and_names_itself() -> None:
    """`--since/--until` is the window (until capped at the run's start); the record carries the backfill's key."""
    since, until = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    plan = plan_windows(["tickets"], NOW, START, LOOKBACK, {"tickets": NOW}, since, until)
    assert plan.windows == (Window("tickets", since, NOW),)
    assert plan.state["_backfill"] == "2026-02-01T00:00:00Z/2026-04-01T00:00:00Z/tickets"
    assert backfill_key(since, None, ["contacts", "tickets"]) == "2026-02-01T00:00:00Z/open/contacts,tickets"


def test_an_empty_window_is_done_and_not_read() -> None:
    """A watermark at the signpost with no lookback leaves nothing to read: recorded as done."""
    plan = plan_windows(["contacts"], NOW, START, timedelta(0), {"contacts": NOW})
    assert plan.windows == () and plan.state["contacts"]["done"] is True


def test_a_backfill_continues_an_unfinished_run_of_the_same_window() -> None:
    """Finished streams are skipped; a stream cut off mid-way is read only below where it stopped."""
    since, until = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 15, tzinfo=UTC)
    key = backfill_key(since, until, STREAMS)
    done = {"since": "2026-02-01T00:00:00Z", "until": "2026-02-15T00:00:00Z", "done": True}
    cut = {
        "since": "2026-02-01T00:00:00Z",
        "until": "2026-02-15T00:00:00Z",
        "done": False,
        "resume_until": "2026-02-10T08:00:01+00:00",
    }
    rows = [
        SimpleNamespace(id=9, mode="backfill", status="failed", window={"_backfill": "other"}),
        SimpleNamespace(
            id=8,
            mode="backfill",
            status="failed",
            window={"_backfill": key, "contacts": done, "conversations": cut},
        ),
        SimpleNamespace(id=7, mode="backfill", status="succeeded", window={"_backfill": key}),
    ]
    previous, resume = resume_progress(rows, key)
    assert previous == 8 and set(resume) == {"contacts", "conversations"}
    plan = plan_windows(STREAMS, NOW, START, LOOKBACK, {}, since, until, resume)
    assert plan.windows == (
        Window("conversations", since, datetime(2026, 2, 10, 8, 0, 1, tzinfo=UTC)),
        Window("tickets", since, until),
    )
    assert plan.state["contacts"] == done


def test_a_finished_backfill_is_not_resumed() -> None:
    """The newest run of the window succeeded: a re-run reads the whole window again."""
    key = "k"
    rows = [
        SimpleNamespace(id=2, mode="backfill", status="succeeded", window={"_backfill": key}),
        SimpleNamespace(id=1, mode="backfill", status="failed", window={"_backfill": key, "tickets": {}}),
    ]
    assert resume_progress(rows, key) == (None, {})
