"""etl/metrics.py: the textfile for node_exporter (shared by several jobs, labelled by mode, checked before the
run, written under a lock) and the push to a Pushgateway (a fake one on loopback)."""

from __future__ import annotations

import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl.errors import UsageError
from etl.metrics import check_metrics_file, gateway_problem, push_metrics, write_metrics
from etl.models import DeliveryCounts, RunReport
from etl.state import StateStore
from tests.run_fixtures import FakePushgateway

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
Labels = tuple[tuple[str, str], ...]


def parsed(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of Prometheus text, parsed by prometheus_client: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def samples(path: Path) -> dict[tuple[str, Labels], float]:
    return parsed(path.read_text())


def of(job: str, mode: str = "incremental", **extra: str) -> Labels:
    return tuple(sorted({"job": job, "mode": mode, **extra}.items()))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.upgrade()
    yield store
    store.close()


def succeeded(store: StateStore, job: str, mode: str, seconds: int) -> float:
    """Record a run of `job` in `mode` that succeeded `seconds` after T0; its end as a UNIX time."""
    run_id = store.start_run(job, mode, {}, T0)
    store.update_run(run_id, status="succeeded", finished_at=T0 + timedelta(seconds=seconds))
    return (T0 + timedelta(seconds=seconds)).timestamp()


# -- the text file ------------------------------------------------------------------------------------
def test_metrics_file_holds_each_jobs_latest_run_labelled_by_mode(tmp_path: Path, store: StateStore) -> None:
    """Per job and mode: last success (from the runs table), duration, failure flag, rejected, objects, events."""
    shop_done = succeeded(store, "shop", "incremental", 90)
    store.start_run("shop", "backfill", {}, T0)  # running: a backfill has no last success yet
    shop = RunReport(
        "shop",
        "incremental",
        streams={
            "contacts": {"objects": 30, "profiles": 26},
            "conversations": {
                "objects": 12,
                "events:Replied to Conversation": 4,
                "events:Rated Conversation": 1,
            },
            "tickets": {"objects": 5, "events:Replied to Conversation": 2},  # same metric name: summed
        },
        delivery=DeliveryCounts(events_failed=1, profiles_failed=2, events_sent=6),
        duration_ms=2500,
    )
    broken = RunReport("eu", "backfill")  # failed before it read anything or was ever recorded
    rejected = RunReport("us", "incremental", delivery=DeliveryCounts(events_failed=3), duration_ms=40)
    path = tmp_path / "etl.prom"
    write_metrics(str(path), [(shop, 0), (broken, 1), (rejected, 6)], store)
    assert samples(path) == {
        ("etl_last_success_timestamp_seconds", of("shop")): shop_done,
        ("etl_run_duration_seconds", of("shop")): 2.5,
        ("etl_run_duration_seconds", of("eu", "backfill")): 0.0,
        ("etl_run_duration_seconds", of("us")): 0.04,
        ("etl_run_failed", of("shop")): 0.0,
        ("etl_run_failed", of("eu", "backfill")): 1.0,
        ("etl_run_failed", of("us")): 0.0,  # exit 6: finished, some items rejected
        ("etl_items_rejected", of("shop")): 3.0,
        ("etl_items_rejected", of("eu", "backfill")): 0.0,
        ("etl_items_rejected", of("us")): 3.0,
        ("etl_objects", of("shop", stream="contacts")): 30.0,
        ("etl_objects", of("shop", stream="conversations")): 12.0,
        ("etl_objects", of("shop", stream="tickets")): 5.0,
        ("etl_events", of("shop", metric="Replied to Conversation")): 6.0,
        ("etl_events", of("shop", metric="Rated Conversation")): 1.0,
    }
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("state.db")] == [
        "etl.prom"
    ]  # no temp file


def test_a_shared_metrics_file_keeps_the_other_jobs_and_modes_and_replaces_only_this_runs(
    tmp_path: Path, store: StateStore
) -> None:
    """Cron lines of two jobs and a backfill share one file: each write replaces its own (job, mode) series
    (a metric this run did not see goes too) and keeps the rest, including series written by other programs."""
    path = tmp_path / "etl.prom"
    path.write_text(
        "# HELP other_tool_up Written by someone else.\n# TYPE other_tool_up gauge\nother_tool_up 1.0\n"
        "# HELP etl_run_failed old help\n# TYPE etl_run_failed gauge\n"
        'etl_run_failed{job="shop"} 1.0\netl_run_failed{job="us"} 0.0\n'  # before series had a mode
    )
    shop_incremental = succeeded(store, "shop", "incremental", 60)
    first = RunReport("shop", "incremental", streams={"tickets": {"objects": 2, "events:Created Ticket": 2}})
    write_metrics(str(path), [(first, 0)], store)
    write_metrics(str(path), [(RunReport("eu", "incremental", duration_ms=1000), 0)], store)
    eu_series = {key: v for key, v in samples(path).items() if dict(key[1]).get("job") == "eu"}
    shop_backfill = succeeded(store, "shop", "backfill", 120)
    write_metrics(str(path), [(RunReport("shop", "backfill", duration_ms=3000), 0)], store)
    second = RunReport(
        "shop", "incremental", streams={"tickets": {"objects": 1, "events:Replied to Ticket": 1}}
    )
    write_metrics(str(path), [(second, 3)], store)

    after = samples(path)
    assert {key: v for key, v in after.items() if dict(key[1]).get("job") == "eu"} == eu_series
    assert eu_series[("etl_run_duration_seconds", of("eu"))] == 1.0
    assert after[("etl_run_failed", (("job", "us"),))] == 0.0  # a job that did not run: not ours to drop
    assert after[("other_tool_up", ())] == 1.0
    assert after[("etl_last_success_timestamp_seconds", of("shop"))] == shop_incremental
    assert after[("etl_last_success_timestamp_seconds", of("shop", "backfill"))] == shop_backfill
    assert after[("etl_run_duration_seconds", of("shop", "backfill"))] == 3.0
    assert after[("etl_run_failed", of("shop"))] == 1.0  # the second incremental run exited 3
    shop_events = {dict(labels)["metric"] for name, labels in after if name == "etl_events"}
    assert shop_events == {"Replied to Ticket"}  # the first run's metric is gone with its run
    assert ("etl_run_failed", (("job", "shop"),)) not in after  # our own series from before modes: gone
    assert "# HELP etl_run_failed 1 when the job's latest run of this mode failed\n" in path.read_text()


def test_a_second_writer_waits_for_the_first_so_neither_update_is_lost(
    tmp_path: Path, store: StateStore
) -> None:
    """While another run holds the folder's lock (reading, merging, renaming), a write waits, then merges."""
    path = tmp_path / "etl.prom"
    write_metrics(str(path), [(RunReport("eu", "incremental"), 0)], store)
    folder = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(folder, fcntl.LOCK_EX)
    writer = threading.Thread(
        target=write_metrics, args=(str(path), [(RunReport("shop", "incremental"), 0)], store)
    )
    writer.start()
    writer.join(timeout=0.5)
    waited = writer.is_alive()
    os.close(folder)  # releases the lock
    writer.join(timeout=10)
    assert waited and not writer.is_alive()
    assert {dict(labels)["job"] for _, labels in samples(path)} == {"eu", "shop"}


def test_a_metrics_file_that_is_not_prometheus_text_is_replaced(tmp_path: Path, store: StateStore) -> None:
    """A file the parser rejects (a half-written file from a crash, another format) is replaced, not fatal."""
    path = tmp_path / "etl.prom"
    path.write_text("this is { not prometheus\n")
    write_metrics(str(path), [(RunReport("shop", "incremental"), 0)], store)
    assert {name for name, _ in samples(path)} == {
        "etl_run_duration_seconds",
        "etl_run_failed",
        "etl_items_rejected",
    }


def test_a_metrics_file_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    """A missing folder or a directory in its place: a UsageError naming the flag and the reason, nothing left."""
    missing = tmp_path / "missing" / "etl.prom"
    with pytest.raises(UsageError) as no_folder:
        check_metrics_file(str(missing))
    assert str(no_folder.value) == f"--metrics-file: cannot write {missing}: No such file or directory"
    (tmp_path / "etl.prom").mkdir()
    with pytest.raises(UsageError) as a_folder:
        check_metrics_file(str(tmp_path / "etl.prom"))
    assert str(a_folder.value) == f"--metrics-file: cannot write {tmp_path / 'etl.prom'}: Is a directory"
    (tmp_path / "etl.prom").rmdir()
    check_metrics_file(str(tmp_path / "etl.prom"))
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


# -- the Pushgateway ----------------------------------------------------------------------------------
def test_each_run_is_put_to_the_pushgateway_as_its_own_job_and_mode_group(store: StateStore) -> None:
    """One PUT per run to /metrics/job/<job>/mode/<mode>, holding that run's series and no other job's."""
    done = succeeded(store, "shop", "incremental", 30)
    shop = RunReport("shop", "incremental", streams={"contacts": {"objects": 4}}, duration_ms=1500)
    eu = RunReport("eu", "backfill", duration_ms=500)
    with FakePushgateway() as gateway:
        assert push_metrics(gateway.url, [(shop, 0), (eu, 4)], store) == []
    (m1, path1, body1), (m2, path2, body2) = gateway.requests
    assert (m1, path1, m2, path2) == (
        "PUT",
        "/metrics/job/shop/mode/incremental",
        "PUT",
        "/metrics/job/eu/mode/backfill",
    )
    assert parsed(body1) == {
        ("etl_last_success_timestamp_seconds", of("shop")): done,
        ("etl_run_duration_seconds", of("shop")): 1.5,
        ("etl_run_failed", of("shop")): 0.0,
        ("etl_items_rejected", of("shop")): 0.0,
        ("etl_objects", of("shop", stream="contacts")): 4.0,
    }
    assert parsed(body2) == {
        ("etl_run_duration_seconds", of("eu", "backfill")): 0.5,
        ("etl_run_failed", of("eu", "backfill")): 1.0,
        ("etl_items_rejected", of("eu", "backfill")): 0.0,
    }


def test_a_push_the_pushgateway_refuses_or_cannot_take_is_one_message_per_job(store: StateStore) -> None:
    """A 400 names the status and the Pushgateway's explanation; a closed port says the connection was refused."""
    runs = [(RunReport("shop", "incremental"), 0)]
    with FakePushgateway(400, b"pushed metrics are invalid or inconsistent\n") as gateway:
        refused = push_metrics(gateway.url, runs, store)
    host = gateway.url.removeprefix("http://")
    assert refused == [
        f"--pushgateway: could not push the metrics of job shop to {host} (HTTP 400: pushed metrics are invalid "
        "or inconsistent): check the URL and that the Pushgateway is up"
    ]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert push_metrics(f"http://127.0.0.1:{port}", runs, store) == [
        f"--pushgateway: could not push the metrics of job shop to 127.0.0.1:{port} (connection refused): "
        "check the URL and that the Pushgateway is up"
    ]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://pushgateway:9091", True),
        ("pushgateway.monitoring:9091", True),
        ("https://pg.example.com/", True),
        ("ftp://pushgateway:9091", False),
        ("http://", False),
        ("http://pushgateway:port", False),
    ],
)
def test_a_pushgateway_url_is_checked_before_the_run(url: str, ok: bool) -> None:
    """http(s) with a host and a numeric port, or host:port alone (prometheus_client adds http://)."""
    expected = None if ok else f"--pushgateway: expected a URL like http://pushgateway:9091, got {url!r}"
    assert gateway_problem(url) == expected


def test_a_pushgateway_url_with_a_password_is_refused_without_echoing_it() -> None:
    """urllib would take `user:pw@host` for a host name; the message says so and never repeats the password."""
    problem = gateway_problem("http://etl:s3cret-pw@pushgateway:9091")
    assert problem == "--pushgateway: a user or password in the URL is not supported"
