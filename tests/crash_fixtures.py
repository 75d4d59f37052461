"""Crash tests on PostgreSQL: the real CLI as a subprocess, SIGKILLed at a chosen request or inside a page's
transaction, then run again (docs/design.md §7 "Nothing lost", "Nothing doubled")."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from etl.state import StateStore
from tests.pg import fresh_database
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    klaviyo_content,
    sandboxes,
    write_config,
)

BACKFILL = ("--since", "2026-02-05", "--until", "2026-02-25")  # a slice inside the workspace's 60 days
TIMEOUT = 90  # seconds a CLI run may take on a loaded machine


@dataclass(frozen=True)
class KillPoint:
    """Where the run dies: at the `nth` request to `server` whose method and path match, when it is `received`
    (before the server applied it) or `answering` (applied, the reply not yet written); or, for
    `transaction`, inside the page transaction that follows the `nth` matching search: after its outbox rows
    are written and before its snapshots are (a lock the test holds on `snapshots` stops it there)."""

    name: str
    server: str  # "intercom" | "klaviyo"
    stage: str  # "received" | "answering" | "transaction"
    method: str
    path: str  # a regular expression the path (without query) must match whole
    nth: int
    backfill: bool = False

    def matches(self, server: str, method: str, path: str) -> bool:
        return server == self.server and method == self.method and bool(re.fullmatch(self.path, path))


def cli(config: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "etl", "--log-format", "text", "--config", str(config), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_args(backfill: bool) -> tuple[str, ...]:
    return ("run", *BACKFILL) if backfill else ("run",)


_MIGRATING = threading.Lock()  # alembic's `op`/`context` proxies are module globals: one upgrade at a time


def migrated(url: str) -> None:
    with _MIGRATING:
        store = StateStore(url)
        store.upgrade()
        store.close()


class Killer:
    """The sandbox hook that SIGKILLs the child at a KillPoint (see `KillPoint`)."""

    def __init__(self, point: KillPoint, url: str) -> None:
        self.point, self.url = point, url
        self.seen = 0
        self.proc: subprocess.Popen[str] | None = None
        self.fired = threading.Event()  # the kill was sent (or, for a transaction, the lock taken)
        self.blocker: sa.Connection | None = None
        self.engine = sa.create_engine(url)
        self._lock = threading.Lock()

    def hook(self, server: str) -> Any:
        def on_request(stage: str, method: str, path: str) -> bool:
            point = self.point
            wanted = "answering" if point.stage == "transaction" else point.stage
            if stage != wanted or not point.matches(server, method, path.split("?")[0]):
                return False
            with self._lock:
                if self.fired.is_set():
                    return False
                self.seen += 1
                if self.seen < point.nth:
                    return False
                if point.stage == "transaction":
                    # the page is answered; its transaction will wait on this lock when it saves snapshots
                    self.blocker = self.engine.connect()
                    self.blocker.execute(sa.text("LOCK TABLE snapshots IN SHARE MODE"))
                    self.fired.set()
                    return False
                assert self.proc is not None
                os.kill(self.proc.pid, signal.SIGKILL)  # dead before it can read any reply
                self.fired.set()
                return True

        return on_request

    def kill_in_transaction(self) -> None:
        """Wait until the child's page transaction holds its outbox writes and waits for `snapshots`; kill it."""
        assert self.proc is not None
        assert self.fired.wait(TIMEOUT), f"{self.point.name}: the page never came"
        waiting = sa.text(
            "SELECT w.pid FROM pg_locks w JOIN pg_locks o ON o.pid = w.pid "
            "WHERE w.relation = 'snapshots'::regclass AND NOT w.granted "
            "AND o.relation = 'outbox'::regclass AND o.mode = 'RowExclusiveLock' AND o.granted"
        )
        deadline = time.monotonic() + TIMEOUT
        with self.engine.connect() as conn:
            while (pid := conn.execute(waiting).scalar()) is None:
                assert time.monotonic() < deadline, f"{self.point.name}: no transaction waited for snapshots"
                assert self.proc.poll() is None, f"{self.point.name}: the run ended first"
                time.sleep(0.01)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(TIMEOUT)
            assert self.blocker is not None
            self.blocker.rollback()
            self.blocker.close()
            # the dead client's backend wakes and rolls back once it finds its client gone; a backend whose
            # statement still had work to do may take a while to notice, so end it as the server would
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            gone = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
            while conn.execute(gone, {"pid": pid}).scalar():
                assert time.monotonic() < deadline, f"{self.point.name}: backend {pid} lingers"
                time.sleep(0.01)
                conn.commit()  # pg_stat_activity is a snapshot per transaction: look again in a new one

    def close(self) -> None:
        if self.blocker is not None:
            self.blocker.close()
        self.engine.dispose()


def expire_leases(url: str) -> None:
    """The killed run's lease would expire after lock_ttl (>= 30 s); let that time pass at once."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE locks SET expires_at = expires_at - interval '1 day'"))
    finally:
        engine.dispose()


@dataclass
class Outcome:
    """What a Klaviyo account ended with after a crashed run and the runs after it."""

    point: KillPoint
    events: set[tuple[Any, ...]]
    stored_events: int  # events in the account, duplicates included
    profiles: dict[str, Any]
    pending: int  # outbox items left pending or failed


def outbox_left(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM outbox WHERE status <> 'sent'")).scalar())
    finally:
        engine.dispose()


def crash_and_recover(point: KillPoint, admin_url: str, workdir: Path) -> Outcome:
    """A fresh database and sandbox; the CLI killed at `point`; run again, which must succeed."""
    with ExitStack() as stack:
        url = stack.enter_context(fresh_database(admin_url))
        boxes = stack.enter_context(sandboxes())
        migrated(url)
        config = write_config(workdir / (re.sub(r"\W+", "-", point.name) + ".yaml"), url, boxes.job())
        killer = Killer(point, url)
        stack.callback(killer.close)
        boxes.intercom.server.on_request = killer.hook("intercom")
        boxes.klaviyo.on_request = killer.hook("klaviyo")
        killer.proc = proc = cli(config, *run_args(point.backfill))
        if point.stage == "transaction":
            killer.kill_in_transaction()
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert killer.fired.is_set(), f"{point.name}: the run finished before its kill point: {stderr[-500:]}"
        assert proc.returncode == -signal.SIGKILL, (point.name, proc.returncode, stderr[-500:])
        boxes.intercom.server.on_request = boxes.klaviyo.on_request = None
        expire_leases(url)
        rerun = cli(config, *run_args(point.backfill))  # one rerun must do: nothing is left to hold it up
        _, stderr = rerun.communicate(timeout=TIMEOUT)
        assert rerun.returncode == 0, (point.name, rerun.returncode, stderr[-1000:])
        events, profiles = klaviyo_content(boxes.klaviyo)
        return Outcome(point, events, len(boxes.klaviyo.events), profiles, outbox_left(url))


def reference(admin_url: str, workdir: Path, backfill: bool) -> tuple[set[tuple[Any, ...]], dict[str, Any]]:
    """What an uninterrupted run delivers into a sandbox of its own (the same seeded workspace)."""
    with fresh_database(admin_url) as url, sandboxes() as boxes:
        migrated(url)
        config = write_config(workdir / f"reference-{backfill}.yaml", url, boxes.job())
        proc = cli(config, *run_args(backfill))
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr
        return klaviyo_content(boxes.klaviyo)
