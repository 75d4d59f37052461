"""Prometheus metrics of each run (README, "Metrics"): a text file for node_exporter's textfile collector
(`--metrics-file`), or a push to a Pushgateway (`--pushgateway`: a Kubernetes Job lives too briefly to be
scraped).

Every series carries `job` and `mode` (`incremental` or `backfill`; a dry-run writes no metrics). A run
replaces the series of its own (job, mode) and nothing else: in a file shared by several cron lines, the
other jobs' series (and the same job's other mode) stay; on a Pushgateway each (job, mode) is one group.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from etl import logs
from etl.errors import UsageError
from etl.models import STREAMS, RunReport

if (
    TYPE_CHECKING
):  # prometheus_client (~0.1 s of CPU to import) loads only for --metrics-file or --pushgateway
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logs.get_logger("metrics")
PUSH_TIMEOUT_SECONDS = 10.0  # one push to the Pushgateway; prometheus_client's default is 30 s

# (name, help, labels besides job and mode): the README's metrics table lists the same
SERIES = (
    ("etl_last_success_timestamp_seconds", "End of the job's last successful run of this mode", ()),
    ("etl_run_duration_seconds", "Duration of the job's latest run of this mode", ()),
    ("etl_run_failed", "1 when the job's latest run of this mode failed", ()),
    ("etl_items_rejected", "Items Klaviyo rejected in the latest run", ()),
    ("etl_objects", "Objects read by the latest run", ("stream",)),
    ("etl_events", "Events queued by the latest run", ("metric",)),
)


def registry_of(results: Sequence[tuple[RunReport, int]], store: Any) -> CollectorRegistry:
    """The series of these runs (a report and its exit code each); the last success is read from the runs table."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    gauges = {
        name: Gauge(name, text, ["job", "mode", *extra], registry=registry) for name, text, extra in SERIES
    }
    for report, code in results:
        job, mode = report.job, report.mode
        ok = store.last_run(job, mode, "succeeded")
        if ok is not None and ok.finished_at is not None:
            gauges["etl_last_success_timestamp_seconds"].labels(job, mode).set(ok.finished_at.timestamp())
        # any exit but 0 and 6 (finished, some items rejected) is a failed run, also before it was recorded
        gauges["etl_run_failed"].labels(job, mode).set(0 if code in (0, 6) else 1)
        gauges["etl_run_duration_seconds"].labels(job, mode).set(report.duration_ms / 1000)
        gauges["etl_items_rejected"].labels(job, mode).set(report.delivery.failed)
        for stream in STREAMS:
            counts = report.streams.get(stream, {})
            if counts:
                gauges["etl_objects"].labels(job, mode, stream).set(counts.get("objects", 0))
            for key, n in counts.items():
                if key.startswith("events:"):
                    gauges["etl_events"].labels(job, mode, key.split(":", 1)[1]).inc(n)
    return registry


# -- the text file ------------------------------------------------------------------------------------
def check_metrics_file(path: str) -> None:
    """Before a run: the folder takes a new file (the file is replaced by a rename) and an existing file can be
    read (its other series are kept); else a UsageError, so nothing runs that could not be reported."""
    target = Path(path)
    try:
        if target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        handle, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".check")
        os.close(handle)
        os.unlink(probe)
        if target.exists():
            target.open("rb").close()
    except OSError as exc:
        raise UsageError(f"--metrics-file: cannot write {path}: {exc.strerror or exc}") from None


def write_metrics(path: str, results: Sequence[tuple[RunReport, int]], store: Any) -> None:
    """Replace these runs' (job, mode) series in the file, keep every other series in it, write atomically."""
    from prometheus_client import write_to_textfile

    fresh = list(registry_of(results, store).collect())
    ours: set[tuple[str, str]] = {(report.job, report.mode) for report, _ in results}
    with _folder_locked(path):  # two cron lines finishing together must not drop each other's update
        merged = _merge(_read(path), fresh, ours)
        write_to_textfile(path, _Families(merged))


class _Families:
    """A collector of ready-made metric families (what write_to_textfile and generate_latest read)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@contextmanager
def _folder_locked(path: str) -> Iterator[None]:
    """An exclusive flock on the file's folder: no lock file appears beside the .prom files (node_exporter
    reads every *.prom of the folder), and the read-merge-rename of two runs cannot interleave."""
    folder = os.open(Path(path).parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # closing the descriptor releases the lock


def _read(path: str) -> list[Metric]:
    """The families already in the file; none when there is no file or it is not Prometheus text."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return list(text_string_to_metric_families(text))
    except ValueError as exc:
        log.warning(
            "the metrics file is not Prometheus text: replacing it",
            extra={"fields": {"path": path, "reason": str(exc)[:200]}},
        )
        return []


def _merge(old: list[Metric], fresh: list[Metric], ours: set[tuple[str, str]]) -> list[Metric]:
    """`fresh` plus every old sample that is not of one of `ours` (job, mode); an old sample of one of our jobs
    without a mode label was written before series had one, and goes too."""
    from prometheus_client.metrics_core import Metric

    jobs = {job for job, _ in ours}

    def replaced(labels: dict[str, str]) -> bool:
        job, mode = labels.get("job"), labels.get("mode")
        return job in jobs and (mode is None or (job, mode) in ours)

    families: dict[str, Metric] = {}
    for family, ours_now in [*((f, False) for f in old), *((f, True) for f in fresh)]:
        merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
        if ours_now:  # our help text wins over what an older version wrote
            merged.documentation = family.documentation
        merged.samples.extend(s for s in family.samples if ours_now or not replaced(s.labels))
    for family in families.values():
        family.samples.sort(key=lambda s: (s.name, sorted(s.labels.items())))
    return [f for f in families.values() if f.samples]


# -- the Pushgateway ----------------------------------------------------------------------------------
def gateway_problem(url: str) -> str | None:
    """Why `url` cannot be a Pushgateway address (checked before the run), or None."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.username is not None or parts.password is not None:  # urllib would resolve `user:pw@host`
        return "--pushgateway: a user or password in the URL is not supported"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--pushgateway: expected a URL like http://pushgateway:9091, got {url!r}"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return f"--pushgateway: expected a URL like http://pushgateway:9091, got {url!r}"
    return None


def push_metrics(
    url: str, results: Sequence[tuple[RunReport, int]], store: Any, *, timeout: float = PUSH_TIMEOUT_SECONDS
) -> list[str]:
    """PUT each run's series as the group {job, mode} (replacing that group's last push, nothing else).

    Returns one message per push that failed, each naming the job and the Pushgateway's host.
    """
    from prometheus_client import push_to_gateway

    host = _host(url)
    problems = []
    for report, code in results:
        registry = registry_of([(report, code)], store)
        try:
            push_to_gateway(
                url, job=report.job, registry=registry, grouping_key={"mode": report.mode}, timeout=timeout
            )
        except (OSError, ValueError) as exc:  # urllib's HTTPError and URLError are OSErrors
            problems.append(
                f"--pushgateway: could not push the metrics of job {report.job} to {host} ({_reason(exc)}): "
                "check the URL and that the Pushgateway is up"
            )
    return problems


def _host(url: str) -> str:
    """`host:port` of the URL: never a user or password written into it."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _reason(exc: Exception) -> str:
    if isinstance(exc, HTTPError):
        detail = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:200]
        return f"HTTP {exc.code}" + (f": {detail}" if detail else "")
    if isinstance(exc, URLError):
        reason = exc.reason
        return str(getattr(reason, "strerror", None) or reason).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return logs.scrub(str(exc))[:200] or type(exc).__name__
