"""Leases while a run is alive, backfill slices beside the incremental run, and the dry-run backlog."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest

from etl.errors import KlaviyoError, LockHeld
from etl.lease import LeaseKeeper
from etl.models import RunOptions
from etl.pipeline import JobRun
from etl.state import StateStore
from tests.run_fixtures import START_DATE, T0, close, execute, outbox_rows, sandboxes


class Ticker(threading.Event):
    """The keeper's wait between renewals, advanced by the test one beat at a time instead of by the clock."""

    def __init__(self) -> None:
        super().__init__()
        self.periods: list[float | None] = []  # the period of every wait the keeper started
        self._cond = threading.Condition()
        self._pending = 0  # beats let through but not yet taken by the keeper
        self._waiting = False
        self._stopped = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            self.periods.append(timeout)
            self._waiting = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._pending or self._stopped)
            self._waiting = False
            if self._pending:  # a beat let through before stop() still renews: stop() then joins it
                self._pending -= 1
                return False
            return True

    def set(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def is_set(self) -> bool:
        return self._stopped

    def beat(self, *, settle: bool = True) -> None:
        """Let one renewal happen; with `settle`, return once it is done and the keeper waits again."""
        with self._cond:
            self._pending += 1
            self._cond.notify_all()
            if settle:
                assert self._cond.wait_for(lambda: not self._pending and self._waiting, timeout=10)


def test_lease_keeper_renews_while_the_run_waits(store: StateStore) -> None:
    """A lease renewed every third of its TTL outlives it, so a second owner cannot take over a live run."""
    ttl = timedelta(seconds=30)
    now = [T0]
    store.acquire_lock("j", "runner", ttl, now[0])
    ticker = Ticker()
    keeper = LeaseKeeper(store, "j", "runner", ttl, lambda: now[0], ticker=ticker)
    try:
        for elapsed in (20, 40):  # the second beat is past the first lease's end (T0 + 30 s)
            now[0] = T0 + timedelta(seconds=elapsed)
            ticker.beat()
        assert store.lock_holder("j") == ("runner", T0 + timedelta(seconds=40) + ttl)
        with pytest.raises(LockHeld, match="already running"):
            store.acquire_lock("j", "intruder", ttl, T0 + timedelta(seconds=45))
        keeper.check()
    finally:
        keeper.stop()
    assert ticker.periods == [10.0, 10.0, 10.0]  # two renewals, then the wait that stop() ended


def test_lease_keeper_reports_a_lost_lease(store: StateStore) -> None:
    """Once another owner took the lease over, check() raises LockHeld (exit 75) and renewing stops."""
    ttl = timedelta(seconds=30)
    store.acquire_lock("j", "runner", ttl, T0)
    store.acquire_lock("j", "intruder", ttl, T0 + timedelta(seconds=31))  # took over an expired lease
    ticker = Ticker()
    keeper = LeaseKeeper(store, "j", "runner", ttl, lambda: T0 + timedelta(seconds=32), ticker=ticker)
    keeper.check()  # nothing renewed yet, nothing known lost
    ticker.beat(settle=False)
    keeper.stop()  # joins the keeper, which takes the beat first
    with pytest.raises(LockHeld, match="lost its lease") as exc:
        keeper.check()
    assert exc.value.exit_code == 75
    assert ticker.periods == [10.0]  # the keeper gave up at once: no further wait, no further renewal
    assert store.lock_holder("j") == ("intruder", T0 + timedelta(seconds=31) + ttl)


class _BrokenStore:
    """A store whose renewal fails with something that is not an EtlError (a bug, a raw driver error)."""

    def renew_lock(self, job: str, owner: str, ttl: timedelta, now: datetime) -> None:
        raise OSError("connection pool is closed")


def _broken_clock() -> datetime:
    raise ValueError("naive datetime from a bad clock")


@pytest.mark.parametrize(
    ("store_of", "clock", "reason"),
    [
        (lambda real: _BrokenStore(), lambda: T0, "OSError: connection pool is closed"),
        (lambda real: real, _broken_clock, "ValueError: naive datetime from a bad clock"),
    ],
    ids=["store", "clock"],
)
def test_lease_keeper_treats_an_unexpected_renewal_failure_as_a_lost_lease(
    store: StateStore, store_of: Any, clock: Any, reason: str
) -> None:
    """Any exception in the renewal thread stops renewing, so check() raises LockHeld (75) saying why."""
    ttl = timedelta(seconds=30)
    store.acquire_lock("j", "runner", ttl, T0)
    ticker = Ticker()
    keeper = LeaseKeeper(store_of(store), "j", "runner", ttl, clock, ticker=ticker)
    keeper.check()  # nothing renewed yet, nothing known lost
    ticker.beat(settle=False)
    keeper.stop()  # joins the keeper, which takes the beat (and fails) first
    with pytest.raises(LockHeld) as exc:
        keeper.check()
    assert str(exc.value) == (
        f"renewing the lease of 'j' failed ({reason}): another run could take the job over, "
        "so this one stops without advancing"
    )
    assert exc.value.exit_code == 75
    assert ticker.periods == [10.0]  # no further wait after the failure


def test_backfill_slices_run_beside_the_incremental_lease(db_url: str) -> None:
    """A backfill holds the lease of its own window: it runs while the job's incremental lease is held."""
    store = StateStore(db_url)
    store.upgrade()
    with sandboxes() as boxes:
        job = boxes.job()
        store.acquire_lock("shop", "cron-run", timedelta(minutes=10), boxes.clock())
        options = RunOptions(since=START_DATE, until=T0)
        execute(boxes, store, job, options)  # would raise LockHeld if it shared the job's lease
        assert store.watermarks("shop") == {}
        assert len(boxes.klaviyo.events) > 0
        # the same slice twice at once still excludes itself
        stamp = "{:%Y-%m-%dT%H:%M:%SZ}".format
        name = f"shop:backfill:{stamp(START_DATE)}/{stamp(T0)}/contacts,conversations,tickets"
        store.acquire_lock(name, "other-pod", timedelta(minutes=10), boxes.clock())
        with pytest.raises(LockHeld, match="already running"):
            execute(boxes, store, job, options)
    store.close()


def test_dry_run_also_prints_the_pending_backlog(db_url: str) -> None:
    """Items left pending by a run Klaviyo refused are printed by a dry-run, since the next run sends them."""
    store = StateStore(db_url)
    store.upgrade()
    with sandboxes() as boxes:
        job = boxes.job(deliver_every=0)  # the failing run reads everything before it delivers
        boxes.klaviyo.faults.error_rate = 1.0
        with pytest.raises(KlaviyoError):
            execute(boxes, store, job, RunOptions())
        pending = {(r["kind"], r["unique_id"]) for r in outbox_rows(store, "shop", status="pending")}
        assert pending
        boxes.klaviyo.faults.error_rate = 0.0
        reader = StateStore(db_url, read_only=True)
        services = boxes.services(reader, klaviyo=None)
        sink = io.StringIO()
        try:
            JobRun(job, RunOptions(dry_run=True), services, clock=boxes.clock, sink=sink).execute()
        finally:
            close(services)
            reader.close()
        printed = {
            (line["kind"], line["unique_id"]) for line in map(json.loads, sink.getvalue().splitlines())
        }
        assert printed == pending
    store.close()
