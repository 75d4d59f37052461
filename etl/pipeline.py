"""One run of one job: lease → windows → pages → transaction per page → delivery → watermark
(docs/design.md §1, §7).

The only module that sequences I/O, the same way in every mode. What differs between a real run and a
dry-run lives in `etl.sinks`; window planning in `etl.windows`; inference in `etl.inference`; delivery in
`etl.delivery`; the lease in `etl.lease`. Guarantees the flow keeps:
- nothing lost: a page's events/profiles and its snapshots are written in ONE transaction, the outbox is
  marked sent only for what Klaviyo accepted, and watermarks move only after all that;
- nothing doubled: unique_ids are deterministic and the outbox is unique per (job, kind, unique_id);
- one run per job: a lease in `locks`, renewed while the run goes;
- dry-run touches nothing: the store is opened read-only and nothing is sent.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from etl import logs
from etl.config import JobSettings
from etl.contacts import CONTACT_CACHE_LIMIT
from etl.delivery import EVENT_CHUNK, PROFILE_CHUNK
from etl.errors import EtlError, Interrupted
from etl.inference import PROFILED_LIMIT, Inference
from etl.intercom import IntercomClient
from etl.klaviyo import DEFAULT_NAMES, KlaviyoClient, Names
from etl.models import ApiCounts, RunOptions, RunReport, Window, iso_z
from etl.reading import Frontier, cut_window, read_slices
from etl.report import Progress
from etl.sinks import DryRunSink, OutboxSink, Sink
from etl.snapshots import to_snapshot
from etl.state import StateStore
from etl.windows import WindowPlan, backfill_key, plan_windows, resume_progress

log = logs.get_logger("pipeline")


@dataclass(frozen=True)
class Bounds:
    """The per-run bounds (docs/design.md §7 "No bound drops work"); tests lower them to cross them on small
    workspaces."""

    contact_cache: int = CONTACT_CACHE_LIMIT
    profiled: int = PROFILED_LIMIT
    profile_chunk: int = PROFILE_CHUNK
    event_chunk: int = EVENT_CHUNK


@dataclass
class Services:
    """What one run of one job talks to; tests and the demo build these against the sandbox."""

    store: StateStore | None  # None: a dry-run against a database that does not exist yet
    intercom: IntercomClient
    klaviyo: KlaviyoClient | None  # None in dry-run: nothing is ever sent

    def close(self) -> None:
        """Close both clients' sessions (the store belongs to whoever opened it)."""
        self.intercom.close()
        if self.klaviyo is not None:
            self.klaviyo.close()

    def sink(
        self,
        job: str,
        options: RunOptions,
        out: TextIO | None,
        clock: Callable[[], datetime],
        names: Names = DEFAULT_NAMES,
        bounds: Bounds | None = None,
        deliver_every: int = 0,
    ) -> Sink:
        """Where this run's results go: the outbox and Klaviyo, or NDJSON lines for a dry-run; both apply the
        job's `names` to what they send or print (the outbox keeps the default names)."""
        bounds = bounds or Bounds()
        if options.dry_run:
            out = out or sys.stdout
            return DryRunSink(
                self.store, out, job, replay=options.replay, names=names, remember=bounds.profiled
            )
        if self.store is None or self.klaviyo is None:
            raise ValueError("a real run needs a state store and a Klaviyo client")
        chunks = (bounds.profile_chunk, bounds.event_chunk)
        return OutboxSink(
            self.store,
            self.klaviyo,
            job,
            clock=clock,
            requeue=options.replay,
            names=names,
            chunks=chunks,
            deliver_every=deliver_every,
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


def failure_text(exc: BaseException) -> str:
    """What the run history records of a run that ended early."""
    if isinstance(exc, EtlError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C or SIGTERM: say which
        return str(Interrupted.of(exc))
    if isinstance(exc, BrokenPipeError):  # a dry-run's reader went away (`| head`): not a bug
        return "stdout closed: nobody reads the output any more"
    return f"{type(exc).__name__}: {logs.scrub(str(exc))[:300]}"


def skip_malformed(
    report: RunReport, window: Window, fields: dict[str, Any], malformed: Iterable[tuple[str | None, str]]
) -> None:
    """Results Intercom served without what every object has (an id, an updated_at) are skipped, counted
    and logged with their id: failing the run instead would fail every run on the same page, forever. The
    watermark moves past them; once Intercom serves such an object whole, a backfill of the logged window
    (or its next update) reads it."""
    for ident, why in malformed:
        report.add(window.stream, "skipped:malformed")
        where = {"stream": window.stream, "id": ident, "reason": why}
        where |= {"since": iso_z(window.since), "until": iso_z(window.until)}
        log.warning("skipped a malformed Intercom object", extra={"fields": {**fields, **where}})


class JobRun:
    """One run of one job. `execute()` returns the RunReport or raises an EtlError."""

    def __init__(
        self,
        job: JobSettings,
        options: RunOptions,
        services: Services,
        *,
        clock: Callable[[], datetime] = _utcnow,
        sink: TextIO | None = None,
        progress: Progress | None = None,
        bounds: Bounds | None = None,
    ) -> None:
        self.job, self.options, self.clock, self.services = job, options, clock, services
        bounds = bounds or Bounds()
        self.progress = progress or Progress(enabled=False)
        self.mode = options.mode
        self.report = RunReport(job.name, self.mode)
        self.started = clock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        names = Names(job.metric_names, job.property_names)
        self.sink = services.sink(
            job.name, options, sink, clock, names, bounds, deliver_every=job.klaviyo.deliver_every
        )
        self.inference = Inference(
            job, services.intercom, self.report, options, self.started, bounds.contact_cache, bounds.profiled
        )
        # search slices of one window read at once; a dry-run reads one page after another, so that two
        # dry-runs of the same workspace print the same lines in the same order (an audit diffs them)
        self.readers = 1 if options.dry_run else job.intercom.concurrency
        self.run_id: int | None = None
        self.window_state: dict[str, Any] = {}
        self.max_seen: dict[str, datetime] = {}
        self.check_lease: Callable[[], None] = lambda: None
        # backfills hold a lease of their own window: slices of one backfill run side by side (an Indexed
        # Job) and beside the incremental CronJob, while two runs of the same slice still exclude each other
        self.lease_name = job.name if not options.backfill else f"{job.name}:backfill:{self._backfill_key()}"

    @property
    def rejected(self) -> int:
        """Items Klaviyo rejected during this run."""
        return self.report.delivery.failed

    def execute(self) -> RunReport:
        with self.sink.hold(self.lease_name, self.owner, self.job.lock_ttl) as check_lease:
            self.check_lease = check_lease
            try:
                plan = self.plan()
                self.run_id = self.sink.start_run(self.mode, self.window_state, self.started)
                log.info("run started", extra={"fields": self._fields(windows=len(plan.windows))})
                with self.sink.reading(self.report, check_lease):
                    for window in plan.windows:
                        self.read_stream(window)
                self.sink.complete(self.report, self.watermarks(plan), check_lease, self.progress)
                self.finish("succeeded" if not self.rejected else "rejected", None)
            except BaseException as exc:
                self.finish("failed", failure_text(exc))
                raise
            finally:
                self.progress.close()  # stop the bars and rich's stdout redirection before a summary or error
        return self.report

    def finish(self, status: str, error: str | None) -> None:
        self.report.duration_ms = int((self.clock() - self.started).total_seconds() * 1000)
        clients = (("intercom", self.services.intercom), ("klaviyo", self.services.klaviyo))
        self.report.api = {name: ApiCounts.of(c.stats) for name, c in clients if c is not None}
        log.info(f"run {status}", extra={"fields": self._fields(status=status, error=error)})
        self.sink.end_run(status, self.report, self.window_state, error)

    def _fields(self, **extra: Any) -> dict[str, Any]:
        return {"job": self.job.name, "run_id": self.run_id, "mode": self.mode, **extra}

    # -- windows ----------------------------------------------------------------------------------------
    def streams(self) -> list[str]:
        wanted = self.options.streams or self.job.streams
        return [s for s in self.job.streams if s in wanted]

    def _backfill_key(self) -> str:
        assert self.options.since is not None
        return backfill_key(self.options.since, self.options.until, self.streams())

    def plan(self) -> WindowPlan:
        """This run's windows; a backfill of a window that an earlier run left unfinished continues it."""
        since, until = self.options.since, self.options.until
        resume: dict[str, Any] = {}
        if since is not None and until is not None:
            previous, resume = resume_progress(self.sink.backfill_runs(), self._backfill_key())
            if previous is not None:
                log.info(
                    "resuming an unfinished backfill", extra={"fields": self._fields(previous_run=previous)}
                )
        marks, job = self.sink.watermarks(), self.job
        plan = plan_windows(
            self.streams(), self.started, job.start_date, job.lookback, marks, since, until, resume
        )
        self.window_state = plan.state
        return plan

    def watermarks(self, plan: WindowPlan) -> dict[str, datetime]:
        """min(max updated_at seen, signpost) per stream read; a backfill moves none (never backwards: the store)."""
        if self.options.backfill:
            return {}
        seen = {w.stream: self.max_seen.get(w.stream) for w in plan.windows}
        return {stream: min(value, self.started) for stream, value in seen.items() if value is not None}

    # -- reading ----------------------------------------------------------------------------------------
    def read_stream(self, window: Window) -> None:
        """Read the window's slices (etl.reading) and write each page as it arrives, in ONE writer."""
        stream, stats = window.stream, self.services.intercom.stats
        before = ApiCounts.of(stats)
        self.progress.start(stream)
        slices = cut_window(window, self.readers)
        frontier, totals = Frontier(slices), [0] * len(slices)
        pages = self.services.intercom.pages
        if stream == "contacts" and not self.options.replay:  # a replay re-reads every tag list
            pages = functools.partial(pages, stored_tags=self.stored_tags)
        for index, page in read_slices(pages, slices, self.readers):
            if page is None:
                frontier.finish(index)
                continue
            self.check_lease()
            self.report.add(stream, "pages")
            if page.total_count is not None:
                totals[index] = page.total_count
            self.progress.advance(stream, len(page.objects), sum(totals) or None)
            skip_malformed(self.report, slices[index], self._fields(), page.malformed)
            if page.objects:
                self.process_page(window, page.objects, frontier, index)
        self.window_state[stream]["done"] = True
        self.window_state[stream].pop("resume_until", None)
        used = ApiCounts.of(stats) - before
        counts = self.report.streams.setdefault(stream, {})
        counts.update({"api_calls": used.calls, "retries": used.retries, "429s": used.throttled})
        self.progress.finish(stream)
        if self.options.backfill:
            self.sink.save_window(self.window_state)
        log.info("stream read", extra={"fields": self._fields(stream=stream, **counts)})

    def stored_tags(self, ids: list[str]) -> dict[str, tuple[int, list[str]]]:
        """(updated_at in UNIX seconds, tag ids) of the stored contacts among `ids`: what lets the Intercom
        client skip the full tag list of an unchanged contact (`etl.intercom.tags_unchanged`). Called by the
        reader threads, so it reads in a transaction of its own."""
        found: dict[str, tuple[int, list[str]]] = {}
        for ident, snap in self.sink.stored("contacts", ids).items():
            tag_ids = snap.data.get("tag_ids")
            if isinstance(tag_ids, list) and all(isinstance(t, str) for t in tag_ids):
                found[ident] = (int(snap.updated_at.timestamp()), tag_ids)
        return found

    def process_page(
        self, window: Window, objects: Iterable[Mapping[str, Any]], frontier: Frontier, index: int
    ) -> None:
        stream = window.stream
        current = [to_snapshot(stream, raw) for raw in objects]
        self.report.add(stream, "objects", len(current))
        top = max(s.updated_at for s in current)
        self.max_seen[stream] = max(top, self.max_seen.get(stream, top))
        with self.sink.page() as page:
            # digests first: an unchanged object (most of a re-read) costs neither reading nor decoding its
            # stored data; only the changed ones' snapshots are loaded, for inference
            stored = page.digests(stream, [s.object_id for s in current])
            fresh = [s for s in current if self.options.replay or stored.get(s.object_id) != s.digest]
            known = [s.object_id for s in fresh if s.object_id in stored]
            previous = page.load(stream, known) if known else {}
            changed = [(previous.get(s.object_id), s) for s in fresh]
            self.report.add(stream, "unchanged", len(current) - len(changed))
            entries = self.inference.infer(stream, changed, page.load) if changed else []
            progress = None
            if self.options.backfill:
                frontier.read(index, min(s.updated_at for s in current))
                # in the page's transaction: a resumed backfill reads only what lies below this
                self.window_state[stream]["resume_until"] = iso_z(frontier.resume_until())
                progress = self.window_state
            for kind, n in page.put(stream, entries, [s for _, s in changed], progress).items():
                self.report.add(stream, f"queued:{kind}s", n)
