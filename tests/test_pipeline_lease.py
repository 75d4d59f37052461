"""Leases while a run is alive, backfill slices beside the incremental run, and the dry-run backlog."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from etl.errors import KlaviyoError, LockHeld
from etl.lease import LeaseKeeper
from etl.models import RunOptions
from etl.pipeline import JobRun
from etl.state import StateStore
from tests.run_fixtures import START_DATE, T0, close, execute, outbox_rows, sandboxes


def wall() -> datetime:
    return datetime.now(UTC)


def test_lease_keeper_renews_while_the_run_waits(store: StateStore) -> None:
    """A lease renewed in the background outlives its TTL, so a second owner cannot take over a live run."""
    ttl = timedelta(seconds=0.3)
    store.acquire_lock("j", "runner", ttl, wall())
    keeper = LeaseKeeper(store, "j", "runner", ttl, wall)
    try:
        time.sleep(0.8)  # longer than two TTLs: without renewal the lease would have expired
        with pytest.raises(LockHeld, match="already running"):
            store.acquire_lock("j", "intruder", ttl, wall())
        keeper.check()
    finally:
        keeper.stop()


def test_lease_keeper_reports_a_lost_lease(store: StateStore) -> None:
    """Once another owner took the lease over, check() raises LockHeld (exit 75)."""
    ttl = timedelta(seconds=0.3)
    store.acquire_lock("j", "runner", ttl, wall())
    store.acquire_lock("j", "intruder", ttl, wall() + timedelta(seconds=1))  # took over an "expired" lease
    keeper = LeaseKeeper(store, "j", "runner", ttl, wall)
    try:
        deadline = time.monotonic() + 5
        while keeper.lost is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LockHeld, match="lost its lease") as exc:
            keeper.check()
        assert exc.value.exit_code == 75
    finally:
        keeper.stop()


class _BrokenStore:
    """A store whose renewal fails with something that is not an EtlError (a bug, a raw driver error)."""

    def renew_lock(self, job: str, owner: str, ttl: timedelta, now: datetime) -> None:
        raise OSError("connection pool is closed")


def _broken_clock() -> datetime:
    raise ValueError("naive datetime from a bad clock")


@pytest.mark.parametrize(
    ("store_of", "clock", "reason"),
    [
        (lambda real: _BrokenStore(), wall, "OSError: connection pool is closed"),
        (lambda real: real, _broken_clock, "ValueError: naive datetime from a bad clock"),
    ],
    ids=["store", "clock"],
)
def test_lease_keeper_treats_an_unexpected_renewal_failure_as_a_lost_lease(
    store: StateStore, store_of: Any, clock: Any, reason: str
) -> None:
    """Any exception in the renewal thread stops renewing, so check() raises LockHeld (75) saying why."""
    ttl = timedelta(seconds=0.03)
    store.acquire_lock("j", "runner", ttl, wall())
    keeper = LeaseKeeper(store_of(store), "j", "runner", ttl, clock)
    try:
        deadline = time.monotonic() + 5
        while keeper.lost is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(LockHeld) as exc:
            keeper.check()
    finally:
        keeper.stop()
    assert str(exc.value) == (
        f"renewing the lease of 'j' failed ({reason}): another run could take the job over, "
        "so this one stops without advancing"
    )
    assert exc.value.exit_code == 75


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
        job = boxes.job()
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
