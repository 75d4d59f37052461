"""One run of one job: lock → windows → pages → transaction per page → delivery → watermark (DESIGN §1, §7).

The only module that sequences I/O. Guarantees it keeps:
- nothing lost: a page's events/profiles and its snapshots are written in ONE transaction, the outbox is
  marked sent only for what Klaviyo accepted, and watermarks move only after all that;
- nothing doubled: unique_ids are deterministic and the outbox is unique per (job, kind, unique_id);
- one run per job: a lease in `locks`, renewed while the run goes;
- dry-run touches nothing: the store is opened read-only and nothing is sent.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from etl import logs
from etl.config import JobSettings
from etl.contacts import CONTACT_CACHE_LIMIT, ContactBook
from etl.errors import EtlError
from etl.events import Context, diff
from etl.intercom import IntercomClient
from etl.klaviyo import KlaviyoClient, event_resource, profile_resource
from etl.lease import LeaseKeeper
from etl.lru import LruCache
from etl.models import Admin, RunOptions, RunReport, Snapshot, Window
from etl.profiles import to_profile
from etl.report import Progress
from etl.snapshots import referenced_contact_ids, to_snapshot
from etl.state import StateStore

log = logs.get_logger("pipeline")

# Outbox items per delivery call. Large, so the client cuts requests by Klaviyo's count AND byte limits
# itself (a smaller chunk would add requests where bytes are the tighter limit); bounded, so memory is too.
PROFILE_CHUNK = 30_000
EVENT_CHUNK = 20_000
# Contacts whose profile this run queued, and dry-run lines printed (~200 bytes each). Beyond the bound a
# profile may be queued again (and counted again in `profiles`): harmless, the outbox keeps one item per
# (job, kind, unique_id). A dry-run may then print a profile line twice (or, with --replay, an event that
# was pending already): the same upsert or the same deduplicated event, never a different one.
PROFILED_LIMIT = 50_000
RESUME_LOOKBACK_RUNS = 100  # backfill runs searched for an unfinished one of the same window and streams


@dataclass(frozen=True)
class Bounds:
    """The per-run bounds (DESIGN §7 "No bound drops work"); tests lower them to cross them on small workspaces."""

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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


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
        self.job, self.options, self.clock = job, options, clock
        self.bounds = bounds = bounds or Bounds()
        self.store, self.intercom, self.klaviyo = services.store, services.intercom, services.klaviyo
        self.sink = sink
        self.progress = progress or Progress(enabled=False)
        self.dry = options.dry_run
        self.mode = "dry-run" if self.dry else "backfill" if options.backfill else "incremental"
        self.report = RunReport(job.name, self.mode)  # type: ignore[arg-type]
        self.started = clock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.run_id: int | None = None
        self.window_state: dict[str, Any] = {}
        self.max_seen: dict[str, datetime] = {}
        self.contacts = ContactBook(
            job.default_phone_region, services.intercom.lookup_contacts, limit=bounds.contact_cache
        )
        self._admins: dict[str, Admin] | None = None  # admin id → admin, fetched once per run
        self.profiled: LruCache[str, bool] = LruCache(bounds.profiled)  # contacts whose profile was queued
        # dry-run: (kind, unique_id) printed that could come again: profiles, and with --replay also events
        # (pending from an earlier run, so in the backlog too); an event is otherwise read once per run
        self.emitted: LruCache[tuple[str, str], bool] = LruCache(bounds.profiled)
        self.rejected = 0
        self.lease: LeaseKeeper | None = None
        # backfills hold a lease of their own window: slices of one backfill run side by side (an Indexed
        # Job) and beside the incremental CronJob, while two runs of the same slice still exclude each other
        self.lease_name = job.name if not options.backfill else f"{job.name}:backfill:{self._backfill_key()}"

    # -- the run --------------------------------------------------------------------------------------
    def execute(self) -> RunReport:
        lease = None
        if not self.dry:
            assert self.store is not None
            self.store.acquire_lock(self.lease_name, self.owner, self.job.lock_ttl, self.clock())
            lease = self.lease = LeaseKeeper(
                self.store, self.lease_name, self.owner, self.job.lock_ttl, self.clock
            )
        try:
            windows = self.open_windows()
            if not self.dry:
                assert self.store is not None
                self.run_id = self.store.start_run(self.job.name, self.mode, self.window_state, self.started)
            log.info("run started", extra={"fields": self._fields(windows=len(windows))})
            for window in windows:
                self.read_stream(window)
            if self.dry:
                self.emit_backlog()
            else:
                self.deliver()
                if not self.options.backfill:
                    self.check_lease()
                    self.advance_watermarks(windows)
            self.finish("succeeded" if not self.rejected else "rejected", None)
        except EtlError as exc:
            self.finish("failed", str(exc))
            raise
        except BaseException as exc:
            self.finish("failed", f"{type(exc).__name__}: {logs.scrub(str(exc))[:300]}")
            raise
        finally:
            self.progress.close()  # stop the bars and rich's stdout redirection before a summary or error line
            if lease is not None:
                lease.stop()
                try:
                    assert self.store is not None
                    self.store.release_lock(self.lease_name, self.owner)
                except EtlError:
                    log.warning("could not release the lease; it expires by itself")
        return self.report

    def finish(self, status: str, error: str | None) -> None:
        self.report.add("_run", "duration_ms", int((self.clock() - self.started).total_seconds() * 1000))
        self._api_counts()
        log.info(f"run {status}", extra={"fields": self._fields(status=status, error=error)})
        if self.dry or self.store is None or self.run_id is None:
            return
        try:
            self.store.update_run(
                self.run_id, status=status, finished_at=self.clock(), counts=self.report.counts,
                window=self.window_state, error=error,
            )  # fmt: skip
        except EtlError:
            log.warning("could not record the end of the run", extra={"fields": {"run_id": self.run_id}})

    def _api_counts(self) -> None:
        for name, client in (("intercom", self.intercom), ("klaviyo", self.klaviyo)):
            if client is None:
                continue
            stats = client.stats
            self.report.counts.setdefault("_api", {}).update(
                {
                    f"{name}_calls": stats.calls,
                    f"{name}_retries": stats.retries,
                    f"{name}_429s": stats.throttled,
                }
            )

    def _fields(self, **extra: Any) -> dict[str, Any]:
        return {"job": self.job.name, "run_id": self.run_id, "mode": self.mode, **extra}

    # -- windows ----------------------------------------------------------------------------------------
    def streams(self) -> list[str]:
        wanted = self.options.streams or self.job.streams
        return [s for s in self.job.streams if s in wanted]

    def open_windows(self) -> list[Window]:
        """Per stream: [watermark - lookback, signpost), or start_date on the first run; or the backfill window."""
        signpost = self.started
        marks = self.store.watermarks(self.job.name) if self.store is not None else {}
        resume = self._backfill_progress()
        windows = []
        for stream in self.streams():
            if self.options.since is not None:
                since, until = self.options.since, min(self.options.until or signpost, signpost)
                done = resume.get(stream, {})
                if done.get("done"):
                    self.window_state[stream] = dict(done)
                    continue
                if done.get("resume_until"):
                    until = min(until, datetime.fromisoformat(done["resume_until"]))
            else:
                mark = marks.get(stream)
                since = max(mark - self.job.lookback, self.job.start_date) if mark else self.job.start_date
                until = signpost
            self.window_state[stream] = {"since": _iso(since), "until": _iso(until), "done": False}
            if since < until:
                windows.append(Window(stream, since, until))
            else:
                self.window_state[stream]["done"] = True
        if self.options.since is not None:
            self.window_state["_backfill"] = self._backfill_key()
        return windows

    def _backfill_key(self) -> str:
        until = self.options.until
        return f"{_iso(self.options.since)}/{_iso(until) if until else 'open'}/{','.join(self.streams())}"

    def _backfill_progress(self) -> dict[str, Any]:
        """The progress of an unfinished backfill of the same window, to continue where it stopped."""
        if self.options.since is None or self.options.until is None or self.store is None:
            return {}
        # only backfill runs: cron's incremental runs go on between a killed backfill and its re-run
        for row in self.store.runs(self.job.name, RESUME_LOOKBACK_RUNS, mode="backfill"):
            window = row.window if isinstance(row.window, dict) else {}
            if row.mode != "backfill" or window.get("_backfill") != self._backfill_key():
                continue
            if row.status in ("succeeded", "rejected"):
                return {}
            log.info("resuming an unfinished backfill", extra={"fields": self._fields(previous_run=row.id)})
            return {k: v for k, v in window.items() if isinstance(v, dict)}
        return {}

    # -- reading ----------------------------------------------------------------------------------------
    def read_stream(self, window: Window) -> None:
        stream = window.stream
        stats = self.intercom.stats
        before = (stats.calls, stats.retries, stats.throttled)
        self.progress.start(stream)
        for page in self.intercom.pages(window):
            self.check_lease()
            self.report.add(stream, "pages")
            self.progress.advance(stream, len(page.objects), page.total_count)
            if page.objects:
                self.process_page(window, page.objects)
        self.window_state[stream]["done"] = True
        self.window_state[stream].pop("resume_until", None)
        counts = self.report.counts.setdefault(stream, {})
        counts["api_calls"], counts["retries"], counts["429s"] = (
            stats.calls - before[0], stats.retries - before[1], stats.throttled - before[2]
        )  # fmt: skip
        self.progress.finish(stream)
        if self.options.backfill and self.store is not None and self.run_id is not None:
            self.store.update_run(self.run_id, window=self.window_state)
        log.info(
            "stream read", extra={"fields": self._fields(stream=stream, **self.report.counts.get(stream, {}))}
        )

    def process_page(self, window: Window, objects: Iterable[Mapping[str, Any]]) -> None:
        stream = window.stream
        current = [to_snapshot(stream, raw) for raw in objects]
        self.report.add(stream, "objects", len(current))
        for snap in current:
            if snap.updated_at > self.max_seen.get(stream, snap.updated_at - timedelta(1)):
                self.max_seen[stream] = snap.updated_at
        store, now = self.store, self.clock()
        transaction = store.transaction() if store is not None and not self.dry else nullcontext(None)
        with transaction as conn:  # None in a dry-run: reads go through their own read-only transactions
            previous = self._load(conn, stream, [s.object_id for s in current])
            changed = [
                (previous.get(s.object_id), s)
                for s in current
                if self.options.replay
                or s.object_id not in previous
                or previous[s.object_id].digest != s.digest
            ]
            self.report.add(stream, "unchanged", len(current) - len(changed))
            items = self.infer(stream, changed, conn) if changed else []
            if self.dry:
                self.emit(items)
            else:
                assert store is not None and conn is not None
                # a replay re-queues what was sent before; Klaviyo's dedupe keeps the resend harmless
                queued = store.enqueue(
                    conn, self.job.name, items, self.run_id, now, requeue=self.options.replay
                )
                for kind, n in queued.items():
                    self.report.add(stream, f"queued:{kind}s", n)
                store.save_snapshots(conn, self.job.name, [s for _, s in changed])
                if self.options.backfill and self.run_id is not None:
                    lowest = min(s.updated_at for s in current)
                    # descending pages: all of [lowest + 1 s, until) is done; the same second may continue
                    self.window_state[stream]["resume_until"] = _iso(lowest + timedelta(seconds=1))
                    store.update_run_window(conn, self.run_id, self.window_state)

    def _load(self, conn: Any, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        if self.store is None:
            return {}
        if conn is None:
            with self.store.transaction() as reader:
                return self.store.load_snapshots(reader, self.job.name, stream, ids)
        return self.store.load_snapshots(conn, self.job.name, stream, ids)

    def infer(
        self, stream: str, changed: list[tuple[Snapshot | None, Snapshot]], conn: Any
    ) -> list[tuple[str, str, dict[str, Any]]]:
        items: list[tuple[str, str, dict[str, Any]]] = []
        if stream == "contacts":
            for _, snap in changed:
                self.contacts.remember(snap.object_id, snap)
                self._queue_profile(snap, items, stream, force=True)
            return items
        ctx = self.context([s for _, s in changed], conn)
        for prev, snap in changed:
            inference = diff(None if self.options.replay else prev, snap, ctx)
            for key, n in inference.counts.items():
                self.report.add(stream, key, n)
            for event in inference.events:
                items.append(("event", event.unique_id, event_resource(event)))
                self.report.add(stream, "events")
                self.report.add(stream, f"events:{event.metric}")
                contact_id = event.identity.contact_id
                contact = self.contacts.get(contact_id)
                if contact is not None:
                    self._queue_profile(contact, items, stream)
        return items

    def _queue_profile(
        self,
        contact: Snapshot,
        items: list[tuple[str, str, dict[str, Any]]],
        stream: str,
        force: bool = False,
    ) -> None:
        """Queue a contact's profile once per run (an unchanged one is deduplicated by the outbox)."""
        if not force and self.profiled.get(contact.object_id):
            return
        self.profiled.put(contact.object_id, True)
        profile, counts = to_profile(
            contact, self.intercom.tags(), self.job.default_phone_region, self.job.property_names
        )
        for key, n in counts.items():
            self.report.add(stream, key, n)
        if profile is not None:
            items.append(("profile", profile.unique_id, profile_resource(profile)))
            self.report.add(stream, "profiles")

    def context(self, snaps: list[Snapshot], conn: Any) -> Context:
        """The per-page Context: admins/teams/tags (once per run) and the identities of referenced contacts."""
        wanted = list(dict.fromkeys(cid for s in snaps for cid in referenced_contact_ids(s)))
        identities = self.contacts.identities(wanted, lambda ids: self._load(conn, "contacts", ids))
        if self._admins is None:
            self._admins = {
                k: Admin(name=v.get("name"), email=v.get("email")) for k, v in self.intercom.admins().items()
            }
        return Context(
            start_date=self.job.start_date,
            flow_trigger_max_age=self.job.flow_trigger_max_age,
            run_started_at=self.started,
            backfill_run=self.options.backfill,
            admins=self._admins,
            teams=self.intercom.teams(),
            tags=self.intercom.tags(),
            contacts=identities,
            metric_names=self.job.metric_names,
            property_names=self.job.property_names,
        )

    def emit(self, items: list[tuple[str, str, dict[str, Any]]], *, check_outbox: bool = True) -> None:
        """Dry-run: one NDJSON line per item that would be queued (and is not in the outbox already)."""
        assert self.sink is not None
        fresh = [(k, u, p) for k, u, p in items if (k, u) not in self.emitted]
        if self.store is not None and fresh and check_outbox and not self.options.replay:
            known = self.store.known_unique_ids(self.job.name, [(k, u) for k, u, _ in fresh])
            fresh = [(k, u, p) for k, u, p in fresh if (k, u) not in known]
        for kind, unique_id, payload in fresh:
            if kind == "profile" or self.options.replay:
                self.emitted.put((kind, unique_id), True)
            line = {"kind": kind, "job": self.job.name, "unique_id": unique_id, "payload": payload}
            self.sink.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")

    def emit_backlog(self) -> None:
        """Dry-run: the outbox items still pending from earlier runs go out with the next run too."""
        if self.store is None:
            return
        for kind in ("profile", "event"):
            after = 0
            while items := self.store.pending(self.job.name, kind, limit=1_000, after_id=after):
                self.emit([(i.kind, i.unique_id, dict(i.payload)) for i in items], check_outbox=False)
                after = items[-1].id

    # -- delivery and watermarks ------------------------------------------------------------------------
    def deliver(self) -> None:
        """Send the job's pending outbox in bounded chunks: profiles first, then events."""
        assert self.store is not None and self.klaviyo is not None
        for kind, chunk, send in (
            ("profile", self.bounds.profile_chunk, self.klaviyo.send_profiles),
            ("event", self.bounds.event_chunk, self.klaviyo.send_events),
        ):
            after = 0
            while items := self.store.pending(self.job.name, kind, limit=chunk, after_id=after):
                self.check_lease()
                result = send(items)
                self.store.mark_delivered(result.sent, result.failed, self.clock())
                self.report.add("_delivery", f"{kind}s_sent", len(result.sent))
                if result.failed:
                    self.report.add("_delivery", f"{kind}s_failed", len(result.failed))
                    self.rejected += len(result.failed)
                    log.warning(
                        "Klaviyo rejected items",
                        extra={"fields": self._fields(kind=kind, rejected=len(result.failed))},
                    )
                after = items[-1].id

    def advance_watermarks(self, windows: list[Window]) -> None:
        """min(max updated_at seen, signpost) per stream read; never backwards."""
        assert self.store is not None
        for window in windows:
            seen = self.max_seen.get(window.stream)
            if seen is not None:
                self.store.set_watermark(self.job.name, window.stream, min(seen, self.started), self.clock())

    def check_lease(self) -> None:
        """Stop (LockHeld, exit 75) if our lease was taken over: another run owns the job's state now."""
        if self.lease is not None:
            self.lease.check()
