"""etl/report.py: progress (bars on a TTY, throttled log lines off it) and the summary table."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from etl import logs
from etl.models import ApiCounts, DeliveryCounts, RunReport
from etl.report import LOG_EVERY_SECONDS, Progress, render_table, summary_table

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The `etl` logger writes JSON lines into a buffer the test reads; restored afterwards."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = logger.handlers[:], logger.propagate, logger.level
    buffer = io.StringIO()
    logs.configure("json", 0, stream=buffer)
    yield buffer
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def refresh_threads_end() -> bool:
    """Whether rich's redraw threads all end: stop() signals them without joining, so join them here."""
    threads = [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]
    for thread in threads:
        thread.join(timeout=5)  # a bar never stopped keeps redrawing: its thread would still be alive
    return not [t for t in threads if t.is_alive()]


def progress_records(buffer: io.StringIO) -> list[tuple[str, int, int | None]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert all(line["message"] == "progress" and line["logger"] == "etl.progress" for line in lines)
    return [(line["stream"], line["objects"], line["total"]) for line in lines]


# -- progress ---------------------------------------------------------------------------------------
def test_progress_off_a_tty_logs_each_stream_at_most_every_ten_seconds(log_lines: io.StringIO) -> None:
    """Off a TTY, a stream logs its running count once LOG_EVERY_SECONDS passed since its start or last line."""
    assert LOG_EVERY_SECONDS == 10.0
    now = [100.0]
    progress = Progress(enabled=False, clock=lambda: now[0])
    progress.start("contacts")
    for at, objects in ((100.0, 5), (109.9, 5), (110.0, 3), (115.0, 2), (119.9, 1), (120.0, 4)):
        now[0] = at
        progress.advance("contacts", objects, 40)
    progress.start("tickets")  # at 120: its own ten seconds start now, whatever contacts did
    now[0] = 125.0
    progress.advance("tickets", 7, None)
    now[0] = 130.0
    progress.advance("tickets", 1, None)
    progress.finish("contacts")
    progress.close()
    assert progress_records(log_lines) == [("contacts", 13, 40), ("contacts", 20, 40), ("tickets", 8, None)]
    assert progress.counts == {"contacts": 20, "tickets": 8}


def test_progress_on_a_tty_draws_bars_ending_at_their_count_and_logs_nothing(log_lines: io.StringIO) -> None:
    """On a TTY each stream is a bar, one without a known total ends at done = done; close() stops redrawing."""
    now = [0.0]
    terminal = Terminal()
    progress = Progress(enabled=True, stream=terminal, clock=lambda: now[0])
    progress.start("contacts")
    progress.start("tickets")
    progress.advance("contacts", 3, 5)
    now[0] = 60.0  # a minute on: bars never fall back to log lines
    progress.advance("contacts", 2, 5)
    progress.advance("tickets", 7, None)  # total_count unknown (Intercom gave none)
    progress.finish("contacts")
    progress.finish("tickets")
    progress.close()
    assert log_lines.getvalue() == ""
    assert refresh_threads_end()
    final = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue()).splitlines()[-2:]
    assert [line.split()[0] for line in final] == ["contacts", "tickets"]
    assert re.search(r" 5/5 ", final[0]) and re.search(r" 7/7 ", final[1])


def test_a_log_line_while_bars_are_live_is_printed_above_them_never_on_their_line() -> None:
    """Bars and log handler share stderr (as in production): a line logged mid-run gets a line of its own above
    the bars (the bars' Console prints it, as formatted: no markup), and the bars stay last."""
    terminal = Terminal()
    logs.configure("text", 0, stream=terminal)
    log = logs.get_logger("pipeline")
    progress = Progress(enabled=True, stream=terminal)
    progress.start("contacts")
    progress.advance("contacts", 3, 5)
    progress._bars.refresh()  # drawn now, not at the redraw thread's next tick: the bars end the output
    log.info("stream read", extra={"fields": {"job": "shop", "note": "[bold]kept as written[/bold]"}})
    progress.advance("contacts", 2, 5)
    progress.finish("contacts")
    progress.close()
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue()).replace("\r", "\n").splitlines()
    logged = [line for line in lines if "stream read" in line]
    assert logged and all(
        re.fullmatch(
            r"\d\d:\d\d:\d\d info    stream read  job=shop note=\[bold\]kept as written\[/bold\]", line
        )
        for line in logged
    )
    assert [line.split()[0] for line in lines if "━" in line][-1] == "contacts"
    assert refresh_threads_end()


def test_log_lines_go_through_the_bars_only_while_they_are_live(log_lines: io.StringIO) -> None:
    """While bars are live a line reaches their terminal, not the handler's stream; after close() it is back."""
    terminal = Terminal()
    log = logs.get_logger("pipeline")
    progress = Progress(enabled=True, stream=terminal)
    log.warning("while live")
    progress.close()
    log.warning("after")
    assert refresh_threads_end()
    assert "while live" in terminal.getvalue() and "after" not in terminal.getvalue()
    assert [json.loads(line)["message"] for line in log_lines.getvalue().splitlines()] == ["after"]


# -- summary table ----------------------------------------------------------------------------------
def test_summary_table_lists_streams_in_flow_order_with_every_column_and_the_totals_line() -> None:
    """Rows in STREAMS order (absent streams left out), numbers right-aligned, "queued" sums both kinds."""
    report = RunReport(
        "shop",
        "incremental",
        streams={
            "tickets": {
                "pages": 1,
                "objects": 5,
                "events": 7,
                "queued:events": 7,
                "queued:profiles": 1,
                "api_calls": 1,
                "events:Created Ticket": 5,
            },
            "contacts": {
                "pages": 12,
                "objects": 1130,
                "unchanged": 4,
                "profiles": 1126,
                "queued:profiles": 20,
                "skipped:no_identifier": 3,
                "api_calls": 12,
            },
        },
        delivery=DeliveryCounts(profiles_sent=21, events_sent=7),
        api={"intercom": ApiCounts(calls=13)},
        duration_ms=1500,
    )
    assert summary_table(report) == (
        "job shop (incremental)\n"
        "  stream    pages  objects  unchanged  events  profiles  queued  no_identifier  api_calls\n"
        "  contacts     12     1130          4       0      1126      20              3         12\n"
        "  tickets       1        5          0       7         0       8              0          1\n"
        "  profiles_sent=21, events_sent=7, intercom_calls=13, intercom_retries=0, intercom_429s=0"
    )


def test_summary_table_of_a_run_that_read_nothing_is_the_header_alone() -> None:
    """No stream read and nothing delivered: the title and the header, no rows and no totals line."""
    assert summary_table(RunReport("shop", "dry-run")) == (
        "job shop (dry-run)\n"
        "  stream  pages  objects  unchanged  events  profiles  queued  no_identifier  api_calls"
    )


def test_render_table_pads_columns_to_their_widest_cell_and_leaves_no_trailing_blanks() -> None:
    """Left-aligned by default (the CLI's tables); from `right_align_from` on right-aligned; `indent` on each line."""
    header, rows = ["id", "status", "error"], [["7", "failed", "HTTP 400"], ["12", "sent", ""]]
    assert render_table(header, rows) == "id  status  error\n7   failed  HTTP 400\n12  sent"
    assert render_table(header[:2], [r[:2] for r in rows], right_align_from=0, indent="> ") == (
        "> id  status\n>  7  failed\n> 12    sent"
    )
    assert render_table(["stream", "pages"], [], right_align_from=1) == "stream  pages"
    assert render_table(["note"], [[""]], indent="  ") == "  note\n"  # a blank row stays blank, unindented
