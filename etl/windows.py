"""Which `[since, until)` windows one run reads (docs/design.md §5): pure planning, no I/O.

An incremental run reads each stream from its watermark minus the lookback (or `start_date` on the first
run) up to the signpost, the run's start. A backfill reads the window it was given, and continues an
unfinished backfill of the same window where that one stopped (its progress is in the run history).
"""

from __future__ import annotations

import calendar
import itertools
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


def plan_slices(
    since: datetime,
    until: datetime,
    *,
    slices: int | None = None,
    months: int | None = None,
    step: timedelta | None = None,
) -> tuple[tuple[datetime, datetime], ...]:
    """Cut the backfill window [since, until) into contiguous [since, until) slices, for an Indexed Job.

    Exactly one of: `slices` equal parts (boundaries on whole seconds, so the printed flags tile the window
    exactly), `months` calendar months from `since` (a day past a month's end is that month's last day), or
    a fixed `step`. The last slice ends at `until`; no slice is empty; each starts where the previous ended.
    """
    if [slices, months, step].count(None) != 2:
        raise ValueError("give exactly one of slices, months or step")
    if since >= until:
        raise ValueError("since must be earlier than until")
    bounds = [since]
    if slices is not None:
        seconds = int((until - since).total_seconds())
        if slices < 1 or seconds < slices:
            raise ValueError(f"cannot cut a window of {seconds} s into {slices} slices of whole seconds")
        bounds += [since + timedelta(seconds=seconds * i // slices) for i in range(1, slices)]
    elif months is not None:
        if months < 1:
            raise ValueError("months must be at least 1")
        k = 1
        while (moment := add_months(since, months * k)) < until:
            bounds.append(moment)
            k += 1
    elif step is not None:
        if step <= timedelta(0):
            raise ValueError("step must be positive")
        while (moment := bounds[-1] + step) < until:
            bounds.append(moment)
    bounds.append(until)
    return tuple(itertools.pairwise(bounds))


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time `months` later, or that month's last day (Jan 31 + 1 month = Feb 28/29)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))
