"""Where one run's results go: the outbox (a real run) or NDJSON lines (a dry-run) (docs/design.md §3.1, §7).

The run's flow (`etl.pipeline`) is the same in both modes; everything that differs lives behind `Sink`:
- `OutboxSink` holds the lease, records the run, writes each page's items and snapshots in ONE transaction,
  then delivers the outbox and moves the watermarks;
- `DryRunSink` reads the store read-only (or nothing, when the database does not exist yet), prints what
  would be queued, and at the end what is still pending from earlier runs, each payload under the job's
  names as it would be sent (the outbox keeps the default names). It writes nothing anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta
from typing import Any, Protocol, TextIO

from etl import logs
from etl.delivery import EVENT_CHUNK, PROFILE_CHUNK, DeliveryProgress, EarlyDelivery, deliver
from etl.errors import EtlError
from etl.klaviyo import DEFAULT_NAMES, KlaviyoClient, Names, rename
from etl.lease import LeaseKeeper
from etl.lru import LruCache
from etl.models import OutboxEntry, RunReport, Snapshot
from etl.state import RunRow, StateStore
from etl.windows import RESUME_LOOKBACK_RUNS

log = logs.get_logger("sink")
BACKLOG_CHUNK = 1_000  # dry-run: pending items read per query when printing the backlog


class PageWriter(Protocol):
    """One page's reads and writes; a real run does both in one transaction."""

    def load(self, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        """The stored snapshots of these objects (missing ids are absent)."""
        ...

    def digests(self, stream: str, ids: list[str]) -> dict[str, str]:
        """The stored snapshots' digests only (missing ids are absent): what tells an unchanged object,
        without reading and decoding its data."""
        ...

    def put(
        self, stream: str, entries: list[OutboxEntry], changed: list[Snapshot], window: dict[str, Any] | None
    ) -> dict[str, int]:
        """Queue the entries, save the changed snapshots (and a backfill's progress); new rows per kind."""
        ...


class Sink(Protocol):
    """What one run reads from and writes to, besides Intercom."""

    def watermarks(self) -> Mapping[str, datetime]: ...

    def backfill_runs(self) -> Iterable[RunRow]: ...

    def hold(self, lease: str, owner: str, ttl: timedelta) -> Any:
        """A context manager holding the lease; it yields a check() that raises LockHeld once it is lost."""
        ...

    def start_run(self, mode: str, window: dict[str, Any], started: datetime) -> int | None: ...

    def reading(self, report: RunReport, check_lease: Callable[[], None]) -> Any:
        """A context manager around the reading of all streams: a real run delivers while it reads."""
        ...

    def page(self) -> Any:
        """A context manager yielding the PageWriter of one page."""
        ...

    def stored(self, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        """The snapshots stored now, read in a transaction of their own: callable from a reader thread."""
        ...

    def save_window(self, window: dict[str, Any]) -> None: ...

    def complete(
        self,
        report: RunReport,
        watermarks: Mapping[str, datetime],
        check_lease: Callable[[], None],
        progress: DeliveryProgress | None = None,
    ) -> None:
        """After reading: deliver and move these watermarks (a real run), or print the backlog (dry-run)."""
        ...

    def end_run(self, status: str, report: RunReport, window: dict[str, Any], error: str | None) -> None: ...


class OutboxSink:
    """A real run: the state store and Klaviyo."""

    def __init__(
        self,
        store: StateStore,
        klaviyo: KlaviyoClient,
        job: str,
        *,
        clock: Callable[[], datetime],
        requeue: bool = False,
        names: Names = DEFAULT_NAMES,
        chunks: tuple[int, int] = (PROFILE_CHUNK, EVENT_CHUNK),
        deliver_every: int = 0,
    ) -> None:
        self.store, self.klaviyo, self.job, self.clock = store, klaviyo, job, clock
        self.chunks = chunks  # outbox items per delivery call: (profiles, events)
        self.deliver_every = deliver_every  # items queued that start a delivery round while reading; 0: never
        self.early: EarlyDelivery | None = None
        self.requeue = requeue  # a replay re-queues what was sent before; Klaviyo's dedupe keeps it harmless
        self.names = names  # applied when sending: the outbox keeps the default names (docs/design.md §3.3)
        self.run_id: int | None = None

    def watermarks(self) -> Mapping[str, datetime]:
        return self.store.watermarks(self.job)

    def backfill_runs(self) -> Iterable[RunRow]:
        # only backfill runs: cron's incremental runs go on between a killed backfill and its re-run
        return self.store.runs(self.job, RESUME_LOOKBACK_RUNS, mode="backfill")

    @contextmanager
    def hold(self, lease: str, owner: str, ttl: timedelta) -> Iterator[Callable[[], None]]:
        with LeaseKeeper.held(self.store, lease, owner, ttl, self.clock) as keeper:
            yield keeper.check

    def start_run(self, mode: str, window: dict[str, Any], started: datetime) -> int | None:
        self.run_id = self.store.start_run(self.job, mode, window, started)
        return self.run_id

    @contextmanager
    def reading(self, report: RunReport, check_lease: Callable[[], None]) -> Iterator[None]:
        if not self.deliver_every:
            yield
            return

        def send_round() -> None:
            self._deliver(report, check_lease, None, upto=self.store.last_outbox_id(self.job))

        early = self.early = EarlyDelivery(send_round, self.deliver_every).start()
        try:
            yield
        except BaseException:
            early.stop(wait=False)  # the run is failing: don't wait for Klaviyo; the thread is a daemon
            raise
        finally:
            self.early = None
        early.stop()  # a round under way finishes; its error, if any, is the run's

    @contextmanager
    def page(self) -> Iterator[PageWriter]:
        if self.early is not None:
            self.early.check()
        with self.store.transaction() as conn:
            writer = _OutboxPage(self, conn)
            yield writer
        if self.early is not None:  # committed: the early delivery may send it
            self.early.queued(writer.queued)

    def stored(self, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        with self.store.transaction() as conn:
            return self.store.load_snapshots(conn, self.job, stream, ids)

    def save_window(self, window: dict[str, Any]) -> None:
        if self.run_id is not None:
            self.store.update_run(self.run_id, window=window)

    def complete(
        self,
        report: RunReport,
        watermarks: Mapping[str, datetime],
        check_lease: Callable[[], None],
        progress: DeliveryProgress | None = None,
    ) -> None:
        self._deliver(report, check_lease, progress)
        if watermarks:
            check_lease()  # never move a watermark under a run that lost its lease
        self.store.advance_watermarks(self.job, watermarks, self.clock())

    def _deliver(
        self,
        report: RunReport,
        check_lease: Callable[[], None],
        progress: DeliveryProgress | None,
        upto: int | None = None,
    ) -> None:
        deliver(
            self.store,
            self.klaviyo,
            self.job,
            report,
            clock=self.clock,
            check_lease=check_lease,
            names=self.names,
            progress=progress,
            chunks=self.chunks,
            run_id=self.run_id,
            upto=upto,
        )

    def end_run(self, status: str, report: RunReport, window: dict[str, Any], error: str | None) -> None:
        if self.run_id is None:
            return
        try:
            self.store.update_run(
                self.run_id,
                status=status,
                finished_at=self.clock(),
                counts=report.counts,
                window=window,
                error=error,
            )
        except EtlError:  # the run's own outcome matters more than its record
            log.warning("could not record the end of the run", extra={"fields": {"run_id": self.run_id}})


class _OutboxPage:
    def __init__(self, sink: OutboxSink, conn: Any) -> None:
        self.sink, self.conn = sink, conn
        self.queued = 0  # outbox rows this page added

    def load(self, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        return self.sink.store.load_snapshots(self.conn, self.sink.job, stream, ids)

    def digests(self, stream: str, ids: list[str]) -> dict[str, str]:
        return self.sink.store.load_digests(self.conn, self.sink.job, stream, ids)

    def put(
        self, stream: str, entries: list[OutboxEntry], changed: list[Snapshot], window: dict[str, Any] | None
    ) -> dict[str, int]:
        sink = self.sink
        queued = sink.store.enqueue(
            self.conn, sink.job, entries, sink.run_id, sink.clock(), requeue=sink.requeue
        )
        sink.store.save_snapshots(self.conn, sink.job, changed)
        if window is not None and sink.run_id is not None:
            sink.store.update_run_window(self.conn, sink.run_id, window)
        self.queued += sum(queued.values())
        return queued


class DryRunSink:
    """A dry-run: the store read-only (None when it does not exist yet), NDJSON lines to `out`."""

    def __init__(
        self,
        store: StateStore | None,
        out: TextIO,
        job: str,
        *,
        replay: bool = False,
        names: Names = DEFAULT_NAMES,
        remember: int = 50_000,
    ) -> None:
        self.store, self.out, self.job, self.replay = store, out, job, replay
        self.names = names  # each line shows the payload as sent: under the job's names as configured now
        # (kind, unique_id) printed that could come again: profiles, and with --replay also events (pending
        # from an earlier run, so in the backlog too); an event is otherwise read once per run. Beyond the
        # bound a profile line may be printed twice: the same upsert, never a different one.
        self.emitted: LruCache[tuple[str, str], bool] = LruCache(remember)

    def watermarks(self) -> Mapping[str, datetime]:
        return self.store.watermarks(self.job) if self.store is not None else {}

    def backfill_runs(self) -> Iterable[RunRow]:
        if self.store is None:
            return []
        return self.store.runs(self.job, RESUME_LOOKBACK_RUNS, mode="backfill")

    @contextmanager
    def hold(self, lease: str, owner: str, ttl: timedelta) -> Iterator[Callable[[], None]]:
        yield lambda: None  # a dry-run writes nothing, so it needs no lease and never loses one

    def start_run(self, mode: str, window: dict[str, Any], started: datetime) -> int | None:
        return None

    def reading(self, report: RunReport, check_lease: Callable[[], None]) -> Any:
        return nullcontext()  # nothing is sent

    @contextmanager
    def page(self) -> Iterator[PageWriter]:
        yield _DryRunPage(self)

    def stored(self, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        if self.store is None:
            return {}
        with self.store.transaction() as reader:  # read-only: each read in a transaction of its own
            return self.store.load_snapshots(reader, self.job, stream, ids)

    def save_window(self, window: dict[str, Any]) -> None:
        pass

    def complete(
        self,
        report: RunReport,
        watermarks: Mapping[str, datetime],
        check_lease: Callable[[], None],
        progress: DeliveryProgress | None = None,
    ) -> None:
        """The items still pending from earlier runs go out with the next run too: print them."""
        if self.store is None:
            return
        for kind in ("profile", "event"):
            after = 0
            while items := self.store.pending(self.job, kind, limit=BACKLOG_CHUNK, after_id=after):
                self.emit([OutboxEntry(i.kind, i.unique_id, i.payload) for i in items], check_outbox=False)
                after = items[-1].id

    def end_run(self, status: str, report: RunReport, window: dict[str, Any], error: str | None) -> None:
        pass

    def emit(self, entries: list[OutboxEntry], *, check_outbox: bool = True) -> None:
        """One NDJSON line per entry that would be queued (and is not in the outbox already)."""
        fresh = [e for e in entries if not self.emitted.get((e.kind, e.unique_id))]
        if self.store is not None and fresh and check_outbox and not self.replay:
            known = self.store.known_unique_ids(self.job, [(e.kind, e.unique_id) for e in fresh])
            fresh = [e for e in fresh if (e.kind, e.unique_id) not in known]
        for entry in fresh:
            if entry.kind == "profile" or self.replay:
                self.emitted.put((entry.kind, entry.unique_id), True)
            line = {
                "kind": entry.kind,
                "job": self.job,
                "unique_id": entry.unique_id,
                "payload": rename(entry.payload, entry.kind, self.names),
            }
            self.out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")


class _DryRunPage:
    def __init__(self, sink: DryRunSink) -> None:
        self.sink = sink

    def load(self, stream: str, ids: list[str]) -> dict[str, Snapshot]:
        return self.sink.stored(stream, ids)

    def digests(self, stream: str, ids: list[str]) -> dict[str, str]:
        store = self.sink.store
        if store is None:
            return {}
        with store.transaction() as reader:
            return store.load_digests(reader, self.sink.job, stream, ids)

    def put(
        self, stream: str, entries: list[OutboxEntry], changed: list[Snapshot], window: dict[str, Any] | None
    ) -> dict[str, int]:
        self.sink.emit(entries)
        return {}
