"""Many `etl run` processes on one PostgreSQL state database (docs/design.md §7 "One run at a time per job",
§9 Scale): the incremental run and four backfill slices of one job, and another job, all started together."""

from __future__ import annotations

import contextlib
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from etl.sandbox.server import Faults
from etl.state import StateStore
from etl.windows import plan_slices
from tests.pg import fresh_database
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    START_DATE,
    T0,
    dump,
    klaviyo_content,
    sandboxes,
)
from tests.run_fixtures import write_config as write_jobs

pytestmark = pytest.mark.postgres

WAIT_SECONDS = 90  # every process must have ended by then: a deadlock fails the test instead of hanging it
SLICES = 4


class Gate(Faults):
    """Holds each request until `parties` requests have arrived (then lets all through): started together, the
    runs are all mid-run at once, however slowly a loaded machine starts each process."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=WAIT_SECONDS / 2)
        self.opened = threading.Event()

    def draw(self) -> str | None:
        if not self.opened.is_set():
            with contextlib.suppress(threading.BrokenBarrierError):  # broken: the test's asserts say why
                self.barrier.wait()
            self.opened.set()
        return super().draw()


def etl_process(config: Path, *args: str) -> subprocess.Popen[str]:
    """`python -m etl … run …` as cron or a pod starts it (real clock, real clients)."""
    env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "etl", "--log-format", "json", "--config", str(config), "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """(exit code, stderr) of each process, all within WAIT_SECONDS together."""
    deadline, results = time.monotonic() + WAIT_SECONDS, []
    try:
        for proc in processes:
            _, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            results.append((proc.returncode, stderr))
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def job_rows(url: str, job: str) -> dict[str, list[str]]:
    """Every row of the tables keyed by job that belongs to `job` (runs without their times: ids are stable)."""
    rows = dump(url)
    return {table: [r for r in found if repr(job) in r] for table, found in rows.items() if table != "runs"}


def snapshot_digests(url: str, job: str) -> set[tuple[str, str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT stream, object_id, digest FROM snapshots WHERE job = :j"), {"j": job}
            )
            return {tuple(row) for row in found}
    finally:
        engine.dispose()


def test_incremental_run_and_four_slices_at_once_deliver_what_one_run_does(
    pg_admin_url: str, tmp_path: Path
) -> None:
    """Six processes at once on one database: the job's incremental run, its four backfill slices, and a second
    job. None fails or waits on another (no deadlock, no lease taken from a live run), Klaviyo ends up with
    exactly what one uninterrupted run delivers, and the concurrent runs leave another job's rows untouched."""
    with fresh_database(pg_admin_url) as url, sandboxes(klaviyos=3) as boxes:
        migrated = StateStore(url)
        migrated.upgrade()  # as the migration Job does before any CronJob runs (PostgreSQL is never auto-migrated)
        migrated.close()
        # one reader per process: the gate counts requests, and a run's readers would fill it on their own
        ref, shop, other = (
            boxes.job("ref", klaviyo=0, concurrency=1),
            boxes.job("shop", klaviyo=1, concurrency=1),
            boxes.job("other", klaviyo=2, concurrency=1),
        )
        config = write_jobs(tmp_path / "jobs.yaml", url, ref, shop, other)

        ((code, stderr),) = finish([etl_process(config, "ref")])  # the reference: one uninterrupted run
        assert code == 0, stderr
        expected = klaviyo_content(boxes.klaviyos[0])
        assert expected[0] and expected[1]
        ref_rows = job_rows(url, "ref")

        slices = plan_slices(START_DATE, T0 + (T0 - START_DATE), slices=SLICES)
        boxes.intercom.server.faults = Gate(2 + SLICES)  # each run's first request waits for the others'
        started = time.monotonic()
        processes = [etl_process(config, "shop"), etl_process(config, "other")] + [
            etl_process(config, "shop", "--since", lo.isoformat(), "--until", hi.isoformat())
            for lo, hi in slices
        ]
        results = finish(processes)
        elapsed = time.monotonic() - started

        assert [code for code, _ in results] == [0] * (2 + SLICES), [err[-600:] for _, err in results]
        assert all("Traceback" not in err for _, err in results)
        store = StateStore(url)
        try:
            runs = store.runs(None, 50)
        finally:
            store.close()
        shop_runs = sorted((r.mode, r.status, r.error) for r in runs if r.job == "shop")
        assert shop_runs == [("backfill", "succeeded", None)] * SLICES + [("incremental", "succeeded", None)]
        assert all(r.status == "succeeded" for r in runs)  # none lost its lease, none was refused one
        together = [r for r in runs if r.job != "ref"]
        # they did run at the same time: every run started before any of them finished
        assert max(r.started_at for r in together) < min(r.finished_at for r in together)

        assert klaviyo_content(boxes.klaviyos[1]) == expected  # the job, cut five ways at once
        assert klaviyo_content(boxes.klaviyos[2]) == expected  # the other job, beside them
        assert job_rows(url, "ref") == ref_rows  # nobody touched the finished job's rows
        digests = snapshot_digests(url, "ref")
        assert snapshot_digests(url, "shop") == digests == snapshot_digests(url, "other")
        assert elapsed < WAIT_SECONDS


@pytest.mark.soak
def test_random_kills_of_concurrent_runs_lose_and_double_nothing(pg_admin_url: str, tmp_path: Path) -> None:
    """The same six processes, some killed (SIGKILL: no unwinding, the lease left to expire) at random moments,
    then each killed one started again until it succeeds: Klaviyo ends up with exactly one run's content."""
    rng = random.Random(int(os.environ.get("ETL_SOAK_SEED", "13")))
    with fresh_database(pg_admin_url) as url, sandboxes(klaviyos=2) as boxes:
        migrated = StateStore(url)
        migrated.upgrade()
        migrated.close()
        config = write_jobs(
            tmp_path / "jobs.yaml", url, boxes.job("ref", klaviyo=0), boxes.job("shop", klaviyo=1)
        )
        # the shortest lease jobs.yaml allows: a killed run's lease expires 30 s later
        config.write_text(re.sub(r"(\n\s+)(start_date: .*)", r"\1\2\1lock_ttl: 30s", config.read_text()))
        ((code, stderr),) = finish([etl_process(config, "ref")])
        assert code == 0, stderr
        expected = klaviyo_content(boxes.klaviyos[0])

        slices = plan_slices(START_DATE, T0 + (T0 - START_DATE), slices=SLICES)
        commands = [("shop",)] + [
            ("shop", "--since", lo.isoformat(), "--until", hi.isoformat()) for lo, hi in slices
        ]
        processes = [etl_process(config, *command) for command in commands]
        victims = rng.sample(processes, k=rng.randint(2, len(processes)))
        delays = {proc.pid: rng.uniform(0.0, 2.0) for proc in victims}  # after its lease is taken: mid-run
        store, seen = StateStore(url), {}
        try:
            while delays and any(p.poll() is None for p in victims):
                now = time.monotonic()
                for _, owner, _ in store.leases("shop"):
                    seen.setdefault(int(owner.split(":")[1]), now)  # owner: host:pid:nonce
                for proc in victims:
                    if proc.pid in delays and proc.pid in seen and now >= seen[proc.pid] + delays[proc.pid]:
                        proc.kill()
                        del delays[proc.pid]
                time.sleep(0.05)
        finally:
            store.close()
        pending = [
            command for command, (code, _) in zip(commands, finish(processes), strict=True) if code != 0
        ]
        store = StateStore(url)
        try:
            killed_mid_run = [r for r in store.runs("shop", 50) if r.status == "running"]
        finally:
            store.close()
        assert killed_mid_run, "no kill landed inside a run: the test proved nothing"
        rounds, deadline = 0, time.monotonic() + 150
        while pending and time.monotonic() < deadline:  # run again what was killed, as cron or a Job would
            rounds += 1
            results = finish([etl_process(config, *command) for command in pending])
            assert all(code in (0, 75) for code, _ in results), [err[-400:] for _, err in results]
            pending = [command for command, (code, _) in zip(pending, results, strict=True) if code != 0]
            if pending:
                time.sleep(3)  # a killed run's lease is still held (exit 75) until its TTL runs out
        assert pending == []
        print(f"soak: {len(victims)} killed, {len(killed_mid_run)} mid-run, {rounds} rounds of re-runs")
        assert klaviyo_content(boxes.klaviyos[1]) == expected
