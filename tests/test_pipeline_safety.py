"""docs/design.md §7 over loopback HTTP on SQLite and PostgreSQL: one run per job, nothing lost, nothing
doubled, rejections."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from etl.cli import cli
from etl.errors import KlaviyoError
from etl.models import RunOptions
from etl.pipeline import JobRun
from etl.runner import run_jobs
from etl.state import StateStore
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    close,
    cut_off,
    events_posted,
    execute,
    klaviyo_content,
    outbox_rows,
    sandboxes,
    settings,
    write_config,
)

OTHER = "other-host:4242:cafebabe"


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tokens `run_jobs` reads, in the environment variables the job settings name."""
    monkeypatch.setenv(IC_ENV, IC_TOKEN)
    monkeypatch.setenv(KL_ENV, KL_KEY)


# -- one run at a time --------------------------------------------------------------------------------
@pytest.mark.usefixtures("secrets_env")
def test_second_run_while_the_lease_is_held_exits_75_at_once(db_url: str, store: StateStore) -> None:
    """A run of a job whose lease another run holds returns 75 with one line, before any request or run record.

    "At once" is what the last asserts pin: the run stopped at the lease, the first step, sent nothing and
    left the holder's lease as it was (how long that takes is for `make bench`, not a timed assert).
    """
    with sandboxes() as boxes:
        store.acquire_lock("shop", OTHER, timedelta(minutes=10), datetime.now(UTC))
        _, expires = store.lock_holder("shop") or ("", datetime.now(UTC))
        stderr = io.StringIO()
        code = run_jobs(settings(db_url, boxes.job()), [], RunOptions(), stderr=stderr)
        assert code == 75
        assert stderr.getvalue() == (
            f"etl: error: job shop: job 'shop' is already running (lease held by {OTHER} until "
            f"{expires.isoformat()}); try again later\n"
        )
        assert boxes.intercom.server.requests == [] and boxes.klaviyo.requests == []
        assert store.runs("shop", 5) == [] and store.lock_holder("shop") == (OTHER, expires)


def test_an_expired_lease_is_taken_over_and_released(store: StateStore) -> None:
    """A lease whose holder stopped renewing it is taken over; the run succeeds and frees the lock."""
    with sandboxes() as boxes:
        store.acquire_lock("shop", OTHER, timedelta(minutes=10), datetime.now(UTC) - timedelta(minutes=11))
        services = boxes.services(store)
        report = JobRun(boxes.job(), RunOptions(), services).execute()
        close(services)
        assert report.counts["_delivery"]["events_sent"] > 0
        assert store.lock_holder("shop") is None
        assert [r.status for r in store.runs("shop", 5)] == ["succeeded"]


# -- nothing lost, nothing doubled --------------------------------------------------------------------
def test_klaviyo_down_keeps_watermarks_and_outbox_and_the_next_run_delivers_exactly_once(
    store: StateStore,
) -> None:
    """With Klaviyo failing the run raises KlaviyoError (exit 4), nothing advances; the next run catches up exactly."""

    def run(job: str, klaviyo: int) -> JobRun:
        services = boxes.services(store, klaviyo=klaviyo)
        job_run = JobRun(boxes.job(job, klaviyo=klaviyo), RunOptions(), services, clock=boxes.clock)
        try:
            job_run.execute()
        finally:
            close(services)
        return job_run

    with sandboxes(klaviyos=2) as boxes:
        run("shop", 0), run("ref", 1)  # both accounts in step
        boxes.workspace.advance(timedelta(minutes=30), activity=20)
        run("ref", 1)  # the reference never fails
        marks = store.watermarks("shop")
        boxes.klaviyo.faults.error_rate = 1.0
        with pytest.raises(KlaviyoError) as failure:
            run("shop", 0)
        assert str(failure.value).startswith("Klaviyo kept failing POST /api/")
        assert str(failure.value).endswith(
            " for 10m0s (last: HTTP 503): try again later; raise klaviyo.retry_budget to wait longer"
        )
        assert failure.value.exit_code == 4
        assert store.watermarks("shop") == marks
        pending = outbox_rows(store, "shop", status="pending")
        (failed, *_) = store.runs("shop", 5)
        assert failed.status == "failed" and failed.error == str(failure.value)
        assert any(r["kind"] == "event" for r in pending)
        assert pending == outbox_rows(store, "shop", run_id=failed.id)  # all it queued, none marked sent

        boxes.klaviyo.faults.error_rate = 0.0
        again = run("shop", 0)
        delivered = again.report.counts["_delivery"]
        assert delivered.get("events_sent", 0) + delivered.get("profiles_sent", 0) == len(pending)
        assert outbox_rows(store, "shop", status="pending") == []
        assert store.watermarks("shop") == store.watermarks("ref") != marks
        assert klaviyo_content(boxes.klaviyo) == klaviyo_content(boxes.klaviyos[1])
        assert events_posted(boxes.klaviyo) == len(boxes.klaviyo.events)  # no event was ever sent twice


def test_intercom_failing_mid_run_loses_nothing_and_the_next_run_doubles_nothing(store: StateStore) -> None:
    """An incremental run cut off by Intercom (exit 3) keeps its pages queued; the next run ends like an uncut one."""
    with sandboxes(klaviyos=2) as boxes:
        job = boxes.job("shop")
        cut_off(boxes, store, job, RunOptions())  # the uncut "ref" went to Klaviyo no. 2
        assert store.watermarks("shop") == {}
        (failed,) = store.runs("shop", 5)
        queued = outbox_rows(store, "shop", run_id=failed.id)
        # what it queued is pending, or was sent while it read (and marked so only once Klaviyo took it); how
        # much of each depends on how far the early rounds got before the cut, which the machine's load decides
        assert outbox_rows(store, "shop") == queued != []
        assert all(r["status"] == "pending" or r["delivery_run_id"] == failed.id for r in queued)
        execute(boxes, store, job, RunOptions())
        assert store.watermarks("shop") == store.watermarks("ref") != {}
        assert outbox_rows(store, "shop", status="pending") == []
        assert klaviyo_content(boxes.klaviyo) == klaviyo_content(boxes.klaviyos[1])
        assert events_posted(boxes.klaviyo) == len(boxes.klaviyo.events) > 0  # no event was sent twice


# -- rejections ---------------------------------------------------------------------------------------
@pytest.mark.usefixtures("secrets_env")
def test_a_rejected_profile_exits_6_is_failed_with_klaviyos_error_and_retry_requeues_it(
    db_url: str, store: StateStore, tmp_path: Path
) -> None:
    """A profile over Klaviyo's size limit: run_jobs returns 6, the item is failed with Klaviyo's reason, retry re-queues it."""
    with sandboxes(max_profile_bytes=4_000) as boxes:
        contact = next(c for c in boxes.workspace.contacts.values() if "@" in (c.get("email") or ""))
        contact["custom_attributes"]["notes"] = "n" * 5_000  # fits our 100 KB check, not this account's 4 KB
        stderr = io.StringIO()
        metrics = tmp_path / "etl.prom"
        code = run_jobs(
            settings(db_url, boxes.job()), [], RunOptions(metrics_file=str(metrics)), stderr=stderr
        )
        assert code == 6
        assert 'etl_items_rejected{job="shop",mode="incremental"} 1.0\n' in metrics.read_text()
        assert stderr.getvalue().splitlines()[-1] == (
            "etl: error: job shop: Klaviyo rejected 1 item(s); see `etl outbox shop --status failed`"
        )
        (failed,) = outbox_rows(store, "shop", status="failed")
        assert failed["kind"] == "profile" and failed["unique_id"].startswith(
            f"intercom:contact:{contact['id']}:"
        )
        assert failed["last_error"].startswith("invalid: Profile payload is ")
        # the import error points only at /data (as in the field): matched by the email it echoes
        assert failed["last_error"].endswith(" bytes; the maximum is 4000. (/data)")
        assert [r.status for r in store.runs("shop", 5)] == ["rejected"]

        config = write_config(tmp_path / "jobs.yaml", db_url, boxes.job())
        result = CliRunner().invoke(cli, ["--config", str(config), "outbox", "retry", "shop"],
                                    env={"ETL_DATABASE_URL": ""})  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.stdout == "shop: 1 failed item re-queued; the next run delivers them\n"
        (requeued,) = outbox_rows(store, "shop", status="pending")
        assert requeued["id"] == failed["id"] and requeued["last_error"] is None

        boxes.klaviyo.settings.max_profile_bytes = 100_000
        services = boxes.services(store)
        JobRun(boxes.job(), RunOptions(), services).execute()
        close(services)
        assert outbox_rows(store, "shop", status="pending") == []
        assert (
            boxes.klaviyo.profiles[contact["email"].strip().lower()]["properties"][
                "intercom_custom_attributes"
            ]["notes"]
            == "n" * 5_000
        )
