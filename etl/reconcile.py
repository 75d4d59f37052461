"""`etl reconcile`: the job checks itself, and with `--repair` mends what it finds (docs/design.md §7.1).

Three comparisons over a window (default the last 7 days):
1. Intercom → state: each stream is paged read-only from `since` up to its watermark (anything newer is
   simply not synced yet). An object is *missed* when it has no snapshot, or a snapshot that is older and
   different: runs store a snapshot only when its tracked fields change, so an object touched in a way the
   job does not track has a newer `updated_at` than its snapshot and is still in step.
2. State → outbox: items pending since longer than one run interval are *stuck*; failed items are listed with
   Klaviyo's error.
3. Outbox → Klaviyo: per metric (by its name in Klaviyo, after `metric_names`) and UTC day of the event's
   time, the events the outbox marked sent against Klaviyo's count of the API metric of that name (one
   `POST /api/metric-aggregates` per metric over the whole window). Fewer in Klaviyo is *lost*; more is a
   note. Aggregates lag, so this window ends `--settle` before now. A pruned outbox counts fewer sent
   events, never more, so pruning cannot make a day look lost.

`--repair` holds the job's lease like a run (exit 75 when another run has it), re-queues every sent event of
each lost metric-day (Klaviyo deduplicates what it still has), re-reads each stream's missed objects as a
backfill of the window covering them (`backfill=true`; the real pipeline, so the same transactions and
outbox), delivers what is pending, and reports what still differs. It never moves a watermark.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TextIO

from etl import logs
from etl.config import JobSettings, Settings, parse_duration, parse_timestamp
from etl.delivery import deliver
from etl.errors import ConfigError, EtlError, KlaviyoError, OutOfStep, worst_exit_code
from etl.explain import KINDS
from etl.klaviyo import API_CATEGORY, Names
from etl.lease import LeaseKeeper
from etl.models import STREAMS, RunOptions, RunReport, Window, iso_z
from etl.pipeline import JobRun, Services
from etl.reconcile_report import (
    Item,
    MetricDay,
    Missed,
    Reconciliation,
    StreamWindow,
    as_json,
    render_text,
    write_reconcile_metrics,
)
from etl.runner import build_services
from etl.snapshots import to_snapshot
from etl.state import StateStore

log = logs.get_logger("reconcile")
DEFAULT_WINDOW = timedelta(days=7)
SENT_EVENTS_CHUNK = 20_000  # sent events read from the outbox at a time
SENT_SLACK = timedelta(days=1)  # an event is sent after it happened; slack for Intercom's clock and ours
IN_LIST = 500  # snapshots looked up per query after a repair (docs/design.md §9: SQL IN lists)


@dataclass(frozen=True)
class ReconcileOptions:
    """What `etl reconcile` was asked to do, beyond which jobs."""

    since: datetime | None = None
    until: datetime | None = None
    streams: tuple[str, ...] | None = None
    settle: timedelta = timedelta(hours=1)
    interval: timedelta = timedelta(hours=1)
    as_json: bool = False
    repair: bool = False
    metrics_file: str | None = None

    @classmethod
    def parse(cls, *, since: str | None, until: str | None, streams: str | None, settle: str, interval: str,
              **flags: Any) -> ReconcileOptions:  # fmt: skip
        """The options from the command line's text; every problem at once in one ConfigError (exit 2)."""
        problems: list[str] = []

        def convert(flag: str, value: str | None, parse: Callable[[str], Any]) -> Any:
            try:
                return None if value is None else parse(value)
            except ValueError as exc:
                problems.append(f"{flag}: {exc}")
                return None

        start, end = convert("--since", since, parse_timestamp), convert("--until", until, parse_timestamp)
        if start and end and start >= end:
            problems.append("--since must be earlier than --until")
        settled, every = (
            convert("--settle", settle, parse_duration),
            convert("--interval", interval, parse_duration),
        )
        chosen = None
        if streams is not None:
            chosen = tuple(s.strip() for s in streams.split(",") if s.strip())
            if not chosen or any(s not in STREAMS for s in chosen):
                problems.append(f"--streams: expected a comma list of {', '.join(STREAMS)}, got {streams!r}")
        if problems:
            raise ConfigError(problems)
        return cls(start, end, chosen, settled, every, **flags)


def stream_of(unique_id: str) -> str:
    """The stream an outbox item comes from, by its unique_id (`intercom:{kind}:…`)."""
    parts = unique_id.split(":")
    return KINDS.get(parts[1], "-") if len(parts) > 2 else "-"


def event_facts(payload: Mapping[str, Any]) -> Iterator[tuple[str, datetime]]:
    """(metric name, time) of each event in an outbox payload (an `event-bulk-create` resource)."""
    for event in ((payload.get("attributes") or {}).get("events") or {}).get("data") or []:
        attributes = event.get("attributes") or {}
        name = (((attributes.get("metric") or {}).get("data") or {}).get("attributes") or {}).get("name")
        if name and attributes.get("time"):
            yield str(name), datetime.fromisoformat(str(attributes["time"]).replace("Z", "+00:00"))


class Reconciler:
    """One job's reconcile over the clients and store of `services`."""

    def __init__(
        self,
        job: JobSettings,
        options: ReconcileOptions,
        services: Services,
        clock: Callable[[], datetime],
        *,
        chunk: int = SENT_EVENTS_CHUNK,
    ) -> None:
        if services.store is None or services.klaviyo is None:
            raise ValueError("reconcile needs a state store and a Klaviyo client")
        self.job, self.options, self.services, self.clock = job, options, services, clock
        self.chunk = chunk  # sent events read from the outbox at a time: memory stays bounded
        self.store: StateStore = services.store
        self.streams = [s for s in job.streams if s in (options.streams or job.streams)]

    def check(self) -> Reconciliation:
        """Compare Intercom with the state, the state with the outbox, the outbox with Klaviyo; read-only."""
        now = self.clock()
        until = self.options.until or now
        since = max(self.options.since or until - DEFAULT_WINDOW, self.job.start_date)
        compared = max(since, min(until, now - self.options.settle))
        result = Reconciliation(self.job.name, since, until, compared, self.options.settle)
        self.check_intercom(result)
        self.check_outbox(result, now)
        self.check_klaviyo(result)
        return result

    def check_intercom(self, result: Reconciliation) -> None:
        marks = self.store.watermarks(self.job.name)
        for stream in self.streams:
            mark = marks.get(stream)
            top = min(result.until, mark) if mark is not None else None
            objects = 0
            if top is not None and result.since < top:
                for page in self.services.intercom.pages(Window(stream, result.since, top)):
                    objects += len(page.objects)
                    result.missed += self._missed(stream, page.objects)
            result.windows.append(StreamWindow(stream, result.since, top, objects))
            missed = sum(m.stream == stream for m in result.missed)
            fields = {"job": self.job.name, "stream": stream, "objects": objects, "missed": missed}
            log.info("stream checked", extra={"fields": fields})

    def _missed(self, stream: str, objects: Any) -> list[Missed]:
        current = [to_snapshot(stream, raw) for raw in objects]
        with self.store.transaction() as conn:
            stored = self.store.load_snapshots(conn, self.job.name, stream, [s.object_id for s in current])
        found = []
        for snap in current:
            prev = stored.get(snap.object_id)
            if prev is None or (snap.updated_at > prev.updated_at and snap.digest != prev.digest):
                at = prev.updated_at if prev else None
                found.append(Missed(stream, snap.object_id, snap.updated_at, at, snap.digest))
        return found

    def check_outbox(self, result: Reconciliation, now: datetime) -> None:
        result.stuck, result.failed = [], []
        for row in self.store.outbox_problems(self.job.name, now - self.options.interval):
            item = Item(row["id"], row["kind"], row["unique_id"], stream_of(row["unique_id"]), row["status"],
                        row["attempts"], row["created_at"], row["last_error"])  # fmt: skip
            if item.stream in self.streams or item.stream == "-":
                (result.failed if item.status == "failed" else result.stuck).append(item)

    def check_klaviyo(self, result: Reconciliation) -> None:
        since, until = result.since, result.compared_until
        sent: dict[tuple[str, date], list[int]] = {}
        after = 0
        while items := self.store.sent_events(
            self.job.name, sent_since=since - SENT_SLACK, limit=self.chunk, after_id=after
        ):
            for item in items:
                if stream_of(item.unique_id) not in self.streams:
                    continue
                for metric, moment in event_facts(item.payload):
                    if since <= moment < until:  # compared under the name Klaviyo knows it by
                        name = self.job.metric_names.get(metric, metric)
                        sent.setdefault((name, moment.astimezone(UTC).date()), []).append(item.id)
            after = items[-1].id
        if not sent:
            return
        klaviyo = self.services.klaviyo
        assert klaviyo is not None
        api = klaviyo.metrics(category=API_CATEGORY)
        if api is None:
            raise KlaviyoError(
                f"the Klaviyo API key in {self.job.klaviyo.api_key_env} lacks the metrics:read scope, "
                "which reconcile needs to count the events Klaviyo holds"
            )
        metric_ids = {m.name: m.id for m in reversed(api)}  # the first one listed wins
        for name in sorted({n for n, _ in sent}):
            held = klaviyo.metric_aggregates(metric_ids[name], since, until) if name in metric_ids else {}
            days = sorted({d for n, d in sent if n == name} | set(held))
            for day in days:
                ids = sent.get((name, day), [])
                result.days.append(MetricDay(name, day, len(ids), held.get(day, 0), ids))

    # -- repair -----------------------------------------------------------------------------------------
    def repair(self, found: Reconciliation, check_lease: Callable[[], None]) -> Reconciliation:
        """Re-send what Klaviyo lost, re-read what was missed, deliver; then what still differs."""
        store, name, klaviyo = self.store, self.job.name, self.services.klaviyo
        assert klaviyo is not None
        done = {"missed": len(found.missed), "lost": found.lost, "stuck": len(found.stuck)}
        lost = [d for d in found.days if d.lost]
        done["requeued"] = store.requeue_sent(name, [i for d in lost for i in d.ids])
        reports = []
        for stream in self.streams:
            times = [m.updated_at for m in found.missed if m.stream == stream]
            if times:  # a backfill of the smallest window holding them: the real pipeline, backfill=true
                check_lease()
                window = RunOptions(
                    since=min(times), until=max(times) + timedelta(seconds=1), streams=(stream,)
                )
                log.info("re-reading missed objects", extra={"fields": {"job": name, "stream": stream}})
                reports.append(JobRun(self.job, window, self.services, clock=self.clock).execute())
        reports.append(RunReport(name, "backfill"))  # what is still pending (without a backfill: everything)
        names = Names(self.job.metric_names, self.job.property_names)  # the outbox keeps the default names
        deliver(store, klaviyo, name, reports[-1], clock=self.clock, check_lease=check_lease, names=names)
        done["reread"] = sum(r.streams.get(s, {}).get("objects", 0) for r in reports for s in self.streams)
        done["delivered"] = sum(r.delivery.events_sent + r.delivery.profiles_sent for r in reports)

        after = Reconciliation(
            name, found.since, found.until, found.compared_until, found.settle, found.windows
        )
        for stream in self.streams:
            missed = [m for m in found.missed if m.stream == stream]
            for start in range(0, len(missed), IN_LIST):
                chunk = missed[start : start + IN_LIST]
                with store.transaction() as conn:
                    stored = store.load_snapshots(conn, name, stream, [m.object_id for m in chunk])
                for m in chunk:  # caught up: a snapshot as new as the object read, or the same content
                    now = stored.get(m.object_id)
                    if now is None or (now.updated_at < m.updated_at and now.digest != m.digest):
                        after.missed.append(m)
        self.check_outbox(after, self.clock())
        statuses = store.item_statuses(name, [i for d in lost for i in d.ids])
        for day in found.days:
            if day.lost:
                day.unresent = sum(statuses.get(i) != "sent" for i in day.ids)
            after.days.append(day)
        after.repaired = done
        return after


def _utcnow() -> datetime:
    return datetime.now(UTC)


def reconcile_jobs(
    settings: Settings,
    names: list[str],
    options: ReconcileOptions,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    clock: Callable[[], datetime] = _utcnow,
    services_for: Callable[[JobSettings, StateStore], Services] | None = None,
    quiet: bool = False,
) -> int:
    """Reconcile the named jobs (all when none) in order: 0 when all are in step, 7 when one is not, or the
    worst error's code; each job's report on stdout, each failure one line on stderr. `quiet` (`-q`) leaves
    out the text report of a job in step, so cron mails only trouble."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    jobs = settings.select(names)
    build = services_for or (lambda job, store: build_services(job, store, dry_run=False))
    store = StateStore(settings.database_url)
    codes: list[int] = []
    results: list[Reconciliation] = []
    try:
        store.ensure_schema()
        for job in jobs:
            try:
                result = _one(job, store, options, build, clock)
            except EtlError as exc:
                stderr.write(f"etl: error: job {job.name}: {logs.scrub(str(exc))}\n")
                codes.append(exc.exit_code)
                continue
            results.append(result)
            if options.as_json:
                stdout.write(json.dumps(as_json(result), ensure_ascii=False) + "\n")
            elif not (quiet and result.in_step):
                stdout.write(render_text(result) + "\n")
            codes.append(0 if result.in_step else OutOfStep.exit_code)
    finally:
        try:
            if options.metrics_file and results:
                write_reconcile_metrics(options.metrics_file, results)
        except OSError as exc:  # the operator's path, not a bug
            stderr.write(
                f"etl: error: --metrics-file: cannot write {options.metrics_file}: {exc.strerror or exc}\n"
            )
            codes.append(ConfigError.exit_code)
        store.close()
    return worst_exit_code(codes)


def _one(
    job: JobSettings,
    store: StateStore,
    options: ReconcileOptions,
    build: Callable[[JobSettings, StateStore], Services],
    clock: Callable[[], datetime],
) -> Reconciliation:
    """One job's reconcile, recorded in the run history (mode `reconcile`); --repair under the job's lease."""
    services = build(job, store)
    try:
        reconciler = Reconciler(job, options, services, clock)
        owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        lease = (
            LeaseKeeper.held(store, job.name, owner, job.lock_ttl, clock) if options.repair else nullcontext()
        )
        with lease as keeper:
            run_id = store.start_run(job.name, "reconcile", {"repair": options.repair}, clock())
            try:
                result = reconciler.check()
                if keeper is not None:
                    result = reconciler.repair(result, keeper.check)
            except BaseException as exc:
                _record_failure(store, run_id, exc, clock)
                raise
            result.run_id = run_id
            window = {"since": iso_z(result.since), "until": iso_z(result.until), "repair": options.repair}
            store.update_run(run_id, status="succeeded" if result.in_step else "differs", finished_at=clock(),
                             counts=result.counts(), window=window)  # fmt: skip
            return result
    finally:
        services.close()


def _record_failure(
    store: StateStore, run_id: int, exc: BaseException, clock: Callable[[], datetime]
) -> None:
    error = str(exc) if isinstance(exc, EtlError) else f"{type(exc).__name__}: {logs.scrub(str(exc))[:300]}"
    try:
        store.update_run(run_id, status="failed", finished_at=clock(), error=error)
    except EtlError:  # the reconcile's own outcome matters more than its record
        log.warning("could not record the end of the reconcile", extra={"fields": {"run_id": run_id}})
