"""Progress of a real run against the sandboxes: on a TTY the log lines above the bars and a bar for delivery
(items sent of pending); off a TTY, delivery's progress as log lines."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from etl import logs
from etl.models import RunOptions
from etl.pipeline import JobRun
from etl.report import LOG_EVERY_SECONDS, Progress
from etl.runner import run_jobs
from etl.state import StateStore
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    STREAMS,
    close,
    outbox_rows,
    sandboxes,
    settings,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the run shows progress bars."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IC_ENV, IC_TOKEN)
    monkeypatch.setenv(KL_ENV, KL_KEY)


def test_a_run_on_a_tty_logs_above_its_bars_and_shows_delivery_as_a_bar_of_its_own(tmp_path: Path) -> None:
    """Logs and bars share the terminal: no line holds both a bar and a log message; the last bars are the
    streams' and then delivery's, which ends at the number of items Klaviyo took or refused."""
    url = f"sqlite:///{tmp_path}/state.db"
    terminal = Terminal()
    logs.configure("text", 0, stream=terminal)
    with sandboxes() as boxes:
        # delivering after reading: the delivery bar then counts every item (rounds while reading have none)
        assert run_jobs(settings(url, boxes.job(deliver_every=0)), [], RunOptions(), stderr=terminal) == 0
    store = StateStore(url)
    delivered = len(outbox_rows(store, "shop", status="sent")) + len(
        outbox_rows(store, "shop", status="failed")
    )
    store.close()
    lines = ANSI.sub("", terminal.getvalue()).replace("\r", "\n").splitlines()
    messages = ("run started", "stream read", "run succeeded")
    assert not [line for line in lines if "━" in line and any(m in line for m in messages)]
    for message in messages:
        assert any(re.match(rf"\d\d:\d\d:\d\d info    {message}  job=shop", line) for line in lines), message
    final = lines[: lines.index("job shop (incremental)")][-4:]
    assert [line.split()[0] for line in final] == [*STREAMS, "delivery"]
    assert delivered > 0 and re.search(rf" {delivered}/{delivered} ", final[-1])


class Ticking:
    """A monotonic clock that moves LOG_EVERY_SECONDS each time it is read: every progress call may log."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += LOG_EVERY_SECONDS
        return self.now


def test_off_a_tty_delivery_logs_its_progress_and_a_run_with_nothing_pending_shows_none(
    tmp_path: Path,
) -> None:
    """`delivery progress` lines count items up to those pending at the start; the next run, with an empty
    outbox, has no delivery progress at all."""
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.upgrade()
    buffer = io.StringIO()
    logs.configure("json", 0, stream=buffer)
    with sandboxes() as boxes:
        job = boxes.job(deliver_every=0)  # everything delivered after reading, where progress is logged
        for _ in range(2):
            services = boxes.services(store)
            try:
                progress = Progress(enabled=False, clock=Ticking())
                JobRun(job, RunOptions(), services, clock=boxes.clock, progress=progress).execute()
            finally:
                close(services)
            buffer.write("--\n")
    sent = len(outbox_rows(store, "shop", status="sent")) + len(outbox_rows(store, "shop", status="failed"))
    store.close()
    first, second = buffer.getvalue().split("--\n")[:2]
    records = [json.loads(line) for line in first.splitlines()]
    delivery = [(r["items"], r["pending"]) for r in records if r["message"] == "delivery progress"]
    assert len(delivery) == 2  # one send of profiles, one of events: each logs its running count
    assert delivery[-1] == (sent, sent) and delivery[0][0] < sent
    assert [r["logger"] for r in records if r["message"] == "delivery progress"] == ["etl.progress"] * 2
    assert "delivery progress" not in second and '"run succeeded"' in second
