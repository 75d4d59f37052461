"""Delivery: a job's pending outbox to Klaviyo in bounded chunks, profiles first (docs/design.md §6, §7).

An item is marked sent only after Klaviyo accepted it, and failed with Klaviyo's own words when rejected;
whatever a crash leaves pending goes out with the next run (Klaviyo deduplicates by unique_id). Items are
sent under the job's names as configured now (docs/design.md §3.3): the outbox keeps the default ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from etl import logs
from etl.klaviyo import DEFAULT_NAMES, KlaviyoClient, Names
from etl.models import RunReport
from etl.state import StateStore

log = logs.get_logger("delivery")

# Outbox items per delivery call. Large, so the client cuts requests by Klaviyo's count AND byte limits
# itself (a smaller chunk would add requests where bytes are the tighter limit); bounded, so memory is too.
PROFILE_CHUNK = 30_000
EVENT_CHUNK = 20_000
# ... and at most this many bytes of stored payload per delivery call, whatever the payloads' size: read back,
# a payload is a tree of Python objects ~5x its text (an 800-byte event: ~4 KB). Measured on a 10k first sync
# (peak RSS of the process): 8 MB chunks 185 MB, 4 MB 159 MB, 2 MB 136 MB. 4 MB is ~5,000 typical events, five
# full bulk requests of 1,000, so a chunk's partial last request adds few requests
CHUNK_BYTES = 4_000_000


class DeliveryProgress(Protocol):
    """What delivery reports as it goes (`etl.report.Progress`: a bar on a TTY, log lines off it)."""

    def start_delivery(self, pending: int) -> None: ...

    def delivered(self, items: int) -> None: ...

    def finish_delivery(self) -> None: ...


def deliver(
    store: StateStore,
    klaviyo: KlaviyoClient,
    job: str,
    report: RunReport,
    *,
    clock: Callable[[], datetime],
    check_lease: Callable[[], None],
    chunks: tuple[int, int] = (PROFILE_CHUNK, EVENT_CHUNK),
    names: Names = DEFAULT_NAMES,
    progress: DeliveryProgress | None = None,
    run_id: int | None = None,
    upto: int | None = None,
) -> None:
    """Send the job's pending outbox under `names`: profiles first (events name them), then events; counts go
    to `report`, items done (accepted or rejected) of those pending at the start to `progress`. Each item
    settled is marked with `run_id`, the delivering run (not always the one that queued it). With `upto`, only
    items with an outbox id up to it: a page's events and the profiles they name were queued together, so
    both kinds up to the same id keep "profiles first"."""
    pending = store.pending_count(job) if progress is not None else None
    if pending == 0:  # nothing to send (a run that found nothing new): no reads of each kind
        return
    if progress is not None and pending:
        progress.start_delivery(pending)
    for kind, chunk, send in (
        ("profile", chunks[0], klaviyo.send_profiles),
        ("event", chunks[1], klaviyo.send_events),
    ):
        after = 0
        while items := store.pending(
            job, kind, limit=chunk, after_id=after, upto=upto, max_bytes=CHUNK_BYTES
        ):
            check_lease()
            result = send(items, names)
            store.mark_delivered(result.sent, result.failed, clock(), run_id=run_id)
            report.delivery.add(kind, len(result.sent), len(result.failed))  # type: ignore[arg-type]
            if progress is not None and pending:
                progress.delivered(len(items))
            if result.failed:
                log.warning(
                    "Klaviyo rejected items",
                    extra={"fields": {"job": job, "kind": kind, "rejected": len(result.failed)}},
                )
            after = items[-1].id
    if progress is not None and pending:
        progress.finish_delivery()


class EarlyDelivery:
    """Delivers the outbox while pages are still being read (docs/design.md §7): a daemon thread runs a round
    (`send_round`, all that is pending up to the newest committed outbox id) each time `every` more items were
    queued. It only sends earlier: the run still delivers everything after reading, and moves the watermarks
    only after that, so a crash anywhere loses nothing (what was accepted is marked sent, the rest stays
    pending) and doubles nothing Klaviyo does not deduplicate.

    The writer calls `queued(n)` after each page's transaction commits, and `check()` before each page: an
    error of a round (Klaviyo refusing the key, a lost lease) is raised there, in the writer, ending the run.
    """

    def __init__(self, send_round: Callable[[], None], every: int) -> None:
        self.send_round, self.every = send_round, max(1, every)
        self.backlog = 0
        self.stopping = False
        self.error: BaseException | None = None
        self.rounds = 0
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="etl-delivery", daemon=True)

    def start(self) -> EarlyDelivery:
        self._thread.start()
        return self

    def queued(self, items: int) -> None:
        with self._wake:
            self.backlog += items
            if self.backlog >= self.every:
                self._wake.notify()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def stop(self, *, wait: bool = True) -> None:
        """No further rounds; with `wait`, let a round under way finish and raise its error, if any."""
        with self._wake:
            self.stopping = True
            self._wake.notify()
        if wait:
            self._thread.join()
            self.check()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self.stopping and self.backlog < self.every:
                    self._wake.wait()
                if self.stopping:
                    return
                self.backlog = 0
            try:
                self.send_round()
                self.rounds += 1
            except BaseException as exc:  # raised in the writer by check()
                self.error = exc
                return
