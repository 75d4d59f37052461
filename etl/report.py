"""What a run shows: progress (bars on a TTY, JSON log lines off it) and the summary table (its metrics:
`etl.metrics`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from etl import logs
from etl.models import STREAMS, RunReport

log = logs.get_logger("progress")
LOG_EVERY_SECONDS = 10.0  # off a TTY: one progress line per stream at most this often
DELIVERY = "delivery"  # the bar of the outbox going to Klaviyo, below the streams' bars


class Progress:
    """Per-stream progress, then delivery's: rich bars on a TTY (a stream's total from Intercom's total_count,
    delivery's from the pending outbox), periodic log lines otherwise.

    While the bars are live, every `etl` log line goes through their Console (`logs.divert`), which prints it
    above the bars: written straight to the terminal it would land on the bars' line, and each redraw would
    copy the bars into the scrollback.
    """

    def __init__(self, *, enabled: bool, stream: TextIO | None = None, clock: Any = time.monotonic) -> None:
        self.enabled = enabled
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.last_log: dict[str, float] = {}
        self.pending = 0  # delivery's total: the items pending when it started
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bars

            console = Console(file=stream or sys.stderr)
            self._bars = Bars(
                TextColumn("{task.description:>14}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._bars.start()
            # markup and highlighting off: a log line is printed as it was formatted, brackets and all
            logs.divert(
                lambda line: console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
            )

    def start(self, stream: str, total: int | None = None) -> None:
        self.counts[stream] = 0
        self.last_log[stream] = self.clock()
        if self._bars is not None:
            self._tasks[stream] = self._bars.add_task(stream, total=total)

    def advance(self, stream: str, objects: int, total: int | None) -> None:
        self.counts[stream] = self.counts.get(stream, 0) + objects
        if self._bars is not None:
            self._bars.update(self._tasks[stream], advance=objects, total=total)
        elif self.clock() - self.last_log.get(stream, 0.0) >= LOG_EVERY_SECONDS:
            self.last_log[stream] = self.clock()
            log.info(
                "progress",
                extra={"fields": {"stream": stream, "objects": self.counts[stream], "total": total}},
            )

    def finish(self, stream: str) -> None:
        if self._bars is not None:
            task = self._tasks[stream]
            self._bars.update(task, total=self.counts.get(stream, 0), completed=self.counts.get(stream, 0))

    # -- delivery (etl.delivery.DeliveryProgress) ----------------------------------------------------------
    def start_delivery(self, pending: int) -> None:
        self.pending = pending
        self.start(DELIVERY, total=pending)

    def delivered(self, items: int) -> None:
        """`items` more were sent to Klaviyo (accepted or rejected)."""
        if self._bars is not None:
            self.advance(DELIVERY, items, max(self.pending, self.counts.get(DELIVERY, 0) + items))
            return
        self.counts[DELIVERY] = self.counts.get(DELIVERY, 0) + items
        if self.clock() - self.last_log.get(DELIVERY, 0.0) >= LOG_EVERY_SECONDS:
            self.last_log[DELIVERY] = self.clock()
            log.info(
                "delivery progress",
                extra={"fields": {"items": self.counts[DELIVERY], "pending": self.pending}},
            )

    def finish_delivery(self) -> None:
        self.finish(DELIVERY)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            logs.divert(None)


# (header, count keys summed) of the summary table; "queued" are new outbox rows (the rest were there already)
SUMMARY_COLUMNS = (
    ("pages", ("pages",)),
    ("objects", ("objects",)),
    ("unchanged", ("unchanged",)),
    ("events", ("events",)),
    ("profiles", ("profiles",)),
    ("queued", ("queued:events", "queued:profiles")),
    ("no_identifier", ("skipped:no_identifier",)),
    ("api_calls", ("api_calls",)),
)
# shown only in a run that met some: objects Intercom served without an id or updated_at (skipped, logged)
RARE_COLUMNS = (("malformed", ("skipped:malformed",)),)


def render_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right_align_from: int | None = None,
    indent: str = "",
) -> str:
    """Columns two spaces apart, each as wide as its widest cell: text left-aligned, and from column
    `right_align_from` on right-aligned (numbers); no trailing blanks; every line starts with `indent`."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        aligned = (
            cell.rjust(width) if right_align_from is not None and i >= right_align_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=False))
        )
        text = "  ".join(aligned).rstrip()
        return indent + text if text else ""

    return "\n".join(line(cells) for cells in [header, *rows])


def summary_table(report: RunReport) -> str:
    """A plain-text table of one run's per-stream counts, plus delivery and API totals."""
    columns = (
        SUMMARY_COLUMNS[:-1]
        + tuple(
            (name, keys)
            for name, keys in RARE_COLUMNS
            if any(counts.get(k) for counts in report.streams.values() for k in keys)
        )
        + SUMMARY_COLUMNS[-1:]
    )
    header = ["stream", *[name for name, _ in columns]]
    rows = [
        [s, *[str(sum(report.streams[s].get(k, 0) for k in keys)) for _, keys in columns]]
        for s in STREAMS
        if s in report.streams
    ]
    lines = [f"job {report.job} ({report.mode})", render_table(header, rows, right_align_from=1, indent="  ")]
    counts = report.counts
    extras = {**counts.get("_delivery", {}), **counts.get("_api", {})}
    if extras:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in extras.items()))
    return "\n".join(lines)


def summary(report: RunReport) -> str:
    """A run's summary as stderr shows it: the table, or in JSON mode one log line `run summary` with the
    job, mode and the counts the run history stores (`etl runs --json` shows the same)."""
    if logs.json_mode():
        fields = {"job": report.job, "mode": report.mode, "counts": report.counts}
        return logs.json_line("info", "run summary", fields, logger="etl.runner")
    return summary_table(report)
