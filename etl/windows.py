"""Which `[since, until)` windows one run reads (docs/design.md §5): pure planning, no I/O.

An incremental run reads each stream from its watermark minus the lookback (or `start_date` on the first
run) up to the signpost, the run's start. A backfill reads the window it was given, and continues an
unfinished backfill of the same window where that one stopped (its progress is in the run history).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from etl.models import Window, iso_z

RESUME_LOOKBACK_RUNS = 100  # backfill runs searched for an unfinished one of the same window and streams


@dataclass(frozen=True)
class WindowPlan:
    """The windows to read, and the run's window record (stored in the run history as the run goes)."""

    windows: tuple[Window, ...]
    state: dict[str, Any] = field(default_factory=dict)  # stream → {since, until, done[, resume_until]}


def backfill_key(since: datetime, until: datetime | None, streams: Iterable[str]) -> str:
    """Names one backfill (window and streams): its lease, and how a re-run finds its progress."""
    return f"{iso_z(since)}/{iso_z(until) if until else 'open'}/{','.join(streams)}"


def resume_progress(runs: Iterable[Any], key: str) -> tuple[int | None, dict[str, Any]]:
    """The progress of the newest backfill run of `key`, newest first in `runs`, if it did not finish.

    Returns (that run's id, its per-stream window record), or (None, {}) when there is nothing to resume.
    """
    for row in runs:
        window = row.window if isinstance(row.window, dict) else {}
        if row.mode != "backfill" or window.get("_backfill") != key:
            continue
        if row.status in ("succeeded", "rejected"):
            return None, {}
        return row.id, {k: v for k, v in window.items() if isinstance(v, dict)}
    return None, {}


def plan_windows(
    streams: Iterable[str],
    signpost: datetime,
    start_date: datetime,
    lookback: timedelta,
    watermarks: Mapping[str, datetime],
    since: datetime | None = None,
    until: datetime | None = None,
    resume: Mapping[str, Any] | None = None,
) -> WindowPlan:
    """Per stream: [watermark - lookback, signpost), or start_date on the first run; or the backfill window."""
    streams, resume = list(streams), resume or {}
    state: dict[str, Any] = {}
    windows = []
    for stream in streams:
        if since is not None:
            lo, hi = since, min(until or signpost, signpost)
            done = resume.get(stream, {})
            if done.get("done"):
                state[stream] = dict(done)
                continue
            if done.get("resume_until"):
                hi = min(hi, datetime.fromisoformat(done["resume_until"]))
        else:
            mark = watermarks.get(stream)
            lo = max(mark - lookback, start_date) if mark else start_date
            hi = signpost
        state[stream] = {"since": iso_z(lo), "until": iso_z(hi), "done": False}
        if lo < hi:
            windows.append(Window(stream, lo, hi))
        else:
            state[stream]["done"] = True
    if since is not None:
        state["_backfill"] = backfill_key(since, until, streams)
    return WindowPlan(tuple(windows), state)
