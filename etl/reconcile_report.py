"""What `etl reconcile` finds, and how it is shown (docs/design.md §7.1): the result types, the human text
(a summary first, then a table per stream and per metric, then each difference), the JSON for machines, the
counts for the run history and the Prometheus gauges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from etl.models import iso_z
from etl.report import render_table

LISTED = 20  # differences of each kind spelled out in the text; the JSON has them all
METRIC_COLUMNS = ("sent", "klaviyo", "lost", "more", "resent")  # per metric: MetricDay's figures summed


@dataclass(frozen=True)
class Missed:
    """An object Intercom has newer than the state: no snapshot, or an older, different one."""

    stream: str
    object_id: str
    updated_at: datetime
    stored_at: datetime | None  # the snapshot's updated_at; None: no snapshot
    digest: str  # of the object as read, to tell afterwards whether the state caught up


@dataclass(frozen=True)
class Item:
    """An outbox item that is stuck (pending too long) or failed (Klaviyo rejected it)."""

    id: int
    kind: str
    unique_id: str
    stream: str
    status: str
    attempts: int
    created_at: datetime
    error: str | None


@dataclass
class MetricDay:
    """One metric and UTC day: the events the outbox marked sent against those Klaviyo counts."""

    metric: str  # as Klaviyo knows it (after metric_names)
    day: date
    sent: int
    klaviyo: int
    ids: list[int] = field(default_factory=list, repr=False)  # the sent items, for --repair
    unresent: int | None = None  # after --repair: its re-queued items Klaviyo has not accepted again

    @property
    def lost(self) -> int:
        missing = max(0, self.sent - self.klaviyo)
        return missing if self.unresent is None else min(missing, self.unresent)

    @property
    def resent(self) -> int:
        """After --repair: its events Klaviyo accepted again."""
        return 0 if self.unresent is None else len(self.ids) - self.unresent

    @property
    def more(self) -> int:
        """Events Klaviyo counts beyond what etl sent: only a note (another sender may use the metric)."""
        return max(0, self.klaviyo - self.sent)


@dataclass(frozen=True)
class StreamWindow:
    """What was read of one stream: `[since, until)`, until = its watermark; None when not synced yet."""

    stream: str
    since: datetime
    until: datetime | None
    objects: int = 0


@dataclass
class Reconciliation:
    """Everything one reconcile of one job found (after --repair: what still differs)."""

    job: str
    since: datetime
    until: datetime
    compared_until: datetime  # Klaviyo is compared over [since, compared_until): until, settled
    settle: timedelta
    windows: list[StreamWindow] = field(default_factory=list)
    missed: list[Missed] = field(default_factory=list)
    stuck: list[Item] = field(default_factory=list)
    failed: list[Item] = field(default_factory=list)
    days: list[MetricDay] = field(default_factory=list)
    repaired: dict[str, int] | None = None  # --repair: what it did
    run_id: int | None = None

    @property
    def lost(self) -> int:
        return sum(d.lost for d in self.days)

    @property
    def in_step(self) -> bool:
        return not (self.missed or self.stuck or self.failed or self.lost)

    def problems(self) -> str:
        """`2 missed, 1 lost`, or `in step`."""
        parts = [
            f"{n} {name}"
            for name, n in (
                ("missed", len(self.missed)),
                ("stuck", len(self.stuck)),
                ("failed", len(self.failed)),
                ("lost", self.lost),
            )
            if n
        ]
        return ", ".join(parts) or "in step"

    def counts(self) -> dict[str, dict[str, Any]]:
        """The run history's counts: per stream, `_metrics` per metric, and what --repair did."""
        out: dict[str, dict[str, Any]] = {}
        for window in self.windows:
            out[window.stream] = {
                "objects": window.objects,
                "missed": sum(m.stream == window.stream for m in self.missed),
                "stuck": sum(i.stream == window.stream for i in self.stuck),
                "failed": sum(i.stream == window.stream for i in self.failed),
            }
        metrics: dict[str, dict[str, int]] = {}
        for day in self.days:
            bucket = metrics.setdefault(day.metric, {"sent": 0, "klaviyo": 0, "lost": 0, "more": 0})
            for key, n in (
                ("sent", day.sent),
                ("klaviyo", day.klaviyo),
                ("lost", day.lost),
                ("more", day.more),
            ):
                bucket[key] += n
        if metrics:
            out["_metrics"] = metrics
        if self.repaired is not None:
            out["_repair"] = dict(self.repaired)
        return out


def render_text(result: Reconciliation, hint: bool = True) -> str:
    """The human report: the summary line first, then the tables, then each difference (at most LISTED a kind)."""
    job = result.job
    head = f"job {job}: {'in step' if result.in_step else 'not in step: ' + result.problems()}"
    if result.repaired is not None:
        done = result.repaired
        head = (
            f"job {job}: repaired {done['reread']} object(s) re-read, {done['requeued']} event(s) re-sent, "
            f"{done['delivered']} item(s) delivered; "
            + ("now in step" if result.in_step else "still not in step: " + result.problems())
        )
    lines = [
        head,
        f"  window {iso_z(result.since)} to {iso_z(result.until)}; Klaviyo compared up to "
        f"{iso_z(result.compared_until)} (settle {_span(result.settle)})",
    ]
    counts = result.counts()
    rows = [
        [
            w.stream,
            iso_z(w.until) if w.until is not None else "not synced yet",
            *(str(counts[w.stream][k]) for k in ("objects", "missed", "stuck", "failed")),
        ]
        for w in result.windows
    ]
    if rows:
        header = ["stream", "read up to", "objects", "missed", "stuck", "failed"]
        lines.append(render_table(header, rows, right_align_from=2, indent="  "))
    metrics = counts.get("_metrics", {})
    if metrics:
        header = ["metric", "sent", "klaviyo", "lost", "more"]
        table = [
            [name, *(str(n[k]) for k in ("sent", "klaviyo", "lost", "more"))]
            for name, n in sorted(metrics.items())
        ]
        lines.append(render_table(header, table, right_align_from=1, indent="  "))
    lines += _listed(
        f"missed {m.stream} {m.object_id}: updated {iso_z(m.updated_at)}, "
        + (f"snapshot of {iso_z(m.stored_at)}" if m.stored_at else "no snapshot")
        for m in result.missed
    )
    lines += _listed(
        f"stuck {i.kind} {i.unique_id}: pending since {iso_z(i.created_at)}, {i.attempts} attempt(s)"
        for i in result.stuck
    )
    lines += _listed(
        f"failed {i.kind} {i.unique_id}: {i.error or 'no reason recorded'}" for i in result.failed
    )
    lost = [d for d in result.days if d.lost]
    lines += _listed(
        f"lost {d.metric} {d.day.isoformat()}: Klaviyo counts {d.klaviyo} of the {d.sent} event(s) etl sent"
        for d in lost
    )
    lines += _listed(
        f"note {d.metric} {d.day.isoformat()}: Klaviyo counts {d.more} event(s) more than etl sent "
        "(another sender of the metric, or outbox items pruned or queued again)"
        for d in result.days
        if d.more
    )
    if hint and result.repaired is None and (result.missed or lost or result.stuck):
        lines.append(
            f"  to repair: `etl reconcile {job} --repair` re-reads what was missed, re-sends what Klaviyo "
            "lacks and delivers what is stuck"
        )
    if hint and result.failed:
        lines.append(
            f"  failed items: fix their cause, then `etl outbox retry {job}`; the next run sends them"
        )
    if result.repaired is not None and result.repaired["requeued"]:
        lines.append(
            "  Klaviyo counts the re-sent events once it has processed them: "
            f"run `etl reconcile {job}` again after the settle time"
        )
    return "\n".join(lines)


def _listed(lines: Iterable[str]) -> list[str]:
    every = list(lines)
    shown = ["  " + line for line in every[:LISTED]]
    if len(every) > LISTED:
        shown.append(f"  … and {len(every) - LISTED} more (--json lists them all)")
    return shown


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n)
    return text or "0s"


def as_json(result: Reconciliation) -> dict[str, Any]:
    """The report for machines: every difference, with its details."""
    return {
        "job": result.job,
        "in_step": result.in_step,
        "run_id": result.run_id,
        "since": iso_z(result.since),
        "until": iso_z(result.until),
        "compared_until": iso_z(result.compared_until),
        "streams": [
            {"stream": w.stream, "since": iso_z(w.since), "until": iso_z(w.until), "objects": w.objects}
            for w in result.windows
        ],
        "counts": result.counts(),
        "missed": [
            {
                "stream": m.stream,
                "id": m.object_id,
                "updated_at": iso_z(m.updated_at),
                "snapshot_at": iso_z(m.stored_at),
            }
            for m in result.missed
        ],
        "stuck": [_item(i) for i in result.stuck],
        "failed": [_item(i) for i in result.failed],
        "days": [
            {
                "metric": d.metric,
                "day": d.day.isoformat(),
                "sent": d.sent,
                "klaviyo": d.klaviyo,
                "lost": d.lost,
                "more": d.more,
            }
            for d in result.days
        ],
        "repaired": result.repaired,
    }


def _item(item: Item) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "unique_id": item.unique_id,
        "stream": item.stream,
        "status": item.status,
        "attempts": item.attempts,
        "created_at": iso_z(item.created_at),
        "error": item.error,
    }


def reconcile_gauges(registry: Any, results: Sequence[Reconciliation]) -> None:
    """Add the reconcile gauges of these jobs to a prometheus_client registry (one series per job)."""
    from prometheus_client import Gauge

    gauges = {
        name: Gauge(f"etl_reconcile_{name}", help_text, ["job"], registry=registry)
        for name, help_text in (
            ("missed", "Objects Intercom has newer than the state, found by the latest reconcile"),
            ("stuck", "Outbox items pending longer than one run interval, found by the latest reconcile"),
            ("failed", "Outbox items Klaviyo rejected, found by the latest reconcile"),
            ("lost", "Events sent that Klaviyo does not count, found by the latest reconcile"),
        )
    }
    for result in results:
        for name, value in (
            ("missed", len(result.missed)),
            ("stuck", len(result.stuck)),
            ("failed", len(result.failed)),
            ("lost", result.lost),
        ):
            gauges[name].labels(result.job).set(value)


def write_reconcile_metrics(path: str, results: Sequence[Reconciliation]) -> None:
    """The reconcile gauges in Prometheus text format, written atomically (node_exporter's textfile collector)."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry()
    reconcile_gauges(registry, results)
    write_to_textfile(path, registry)
