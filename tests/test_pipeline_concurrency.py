"""Concurrent reading and delivery overlapping it (etl/reading.py, etl.delivery.EarlyDelivery; docs/design.md
§5, §7): a window's time slices read at once feed one writer, and Klaviyo gets the outbox while pages are
still being read; the result is exactly that of one reader delivering after reading."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from etl.errors import KlaviyoError
from etl.models import Page, RunOptions, Window
from etl.reading import MIN_SLICE, SLICES_PER_READER, Frontier, cut_window, read_slices
from etl.state import StateStore
from tests.run_fixtures import (
    events_posted,
    execute,
    klaviyo_content,
    outbox_rows,
    sandboxes,
)

T = datetime(2026, 1, 1, tzinfo=UTC)


# -- cutting a window ------------------------------------------------------------------------------------
def tiles(window: Window, slices: tuple[Window, ...]) -> bool:
    """Newest first, contiguous, exactly covering the window."""
    ordered = list(reversed(slices))
    return (
        ordered[0].since == window.since
        and ordered[-1].until == window.until
        and all(a.until == b.since for a, b in itertools.pairwise(ordered))
    )


@pytest.mark.parametrize(
    ("days", "readers", "count"),
    [
        (365, 1, 1),  # one reader: the window as it is
        (13, 4, 1),  # narrower than two minimum slices: one
        (14, 4, 2),
        (30, 4, 4),  # as wide as it allows: 30 days / 7
        (365, 4, 4 * SLICES_PER_READER),  # as many as the readers take in turns
        (365, 16, 52),
    ],
)
def test_a_window_is_cut_into_contiguous_slices_no_narrower_than_a_week(
    days: int, readers: int, count: int
) -> None:
    window = Window("conversations", T, T + timedelta(days=days, seconds=5))
    slices = cut_window(window, readers)
    assert len(slices) == count and tiles(window, slices)
    assert all(s.stream == "conversations" and s.until - s.since >= MIN_SLICE for s in slices) or count == 1
    assert [s.since for s in slices] == sorted((s.since for s in slices), reverse=True)  # newest first


# -- the frontier of a backfill read out of order --------------------------------------------------------
def test_the_frontier_is_how_far_down_everything_above_is_read() -> None:
    window = Window("tickets", T, T + timedelta(days=28))
    slices = cut_window(window, 4)  # four weeks, newest first
    frontier = Frontier(slices)
    assert frontier.resume_until() == window.until  # nothing read
    frontier.read(2, slices[2].until - timedelta(hours=1))  # a lower slice first: the top is still unread
    frontier.finish(3)
    assert frontier.resume_until() == window.until
    frontier.read(0, slices[0].until - timedelta(days=2))
    frontier.read(0, slices[0].until - timedelta(days=3))  # pages descend
    assert frontier.resume_until() == slices[0].until - timedelta(days=3) + timedelta(seconds=1)
    frontier.finish(0)
    assert frontier.resume_until() == slices[1].until  # slice 1 not started: read it whole
    frontier.finish(1)
    assert frontier.resume_until() == slices[2].until - timedelta(hours=1) + timedelta(seconds=1)
    frontier.finish(2)
    assert frontier.resume_until() == window.since  # all read


# -- readers and the one writer ----------------------------------------------------------------------------
def fake_pages(calls: list[str], pages_per_slice: int = 3, fail_at: str | None = None, delay: float = 0.002):
    lock = threading.Lock()

    def pages(window: Window) -> Iterator[Page]:
        for number in range(1, pages_per_slice + 1):
            name = f"{window.since:%m-%d}#{number}"
            with lock:
                calls.append(name)
            time.sleep(delay)  # a request's latency: the readers overlap
            if name == fail_at:
                raise KlaviyoError("the reader failed")  # any exception of a reader
            yield Page(window.stream, ({"id": name},), None, number)

    return pages


def test_several_readers_hand_every_page_of_every_slice_to_the_writer_once() -> None:
    slices = cut_window(Window("contacts", T, T + timedelta(days=365)), 4)
    calls: list[str] = []
    got = list(read_slices(fake_pages(calls), slices, 4))
    pages = [(i, p.objects[0]["id"]) for i, p in got if p is not None]
    assert sorted(pages) == sorted(
        (i, f"{s.since:%m-%d}#{n}") for i, s in enumerate(slices) for n in (1, 2, 3)
    )
    ends = [i for i, p in got if p is None]
    assert sorted(ends) == list(range(len(slices)))
    for index in range(len(slices)):  # a slice ends after its own pages
        last_page = max(k for k, (i, p) in enumerate(got) if i == index and p is not None)
        assert got.index((index, None)) > last_page


def test_one_reader_reads_in_order_in_the_calling_thread() -> None:
    slices = cut_window(Window("contacts", T, T + timedelta(days=365)), 4)
    threads: set[str] = set()
    calls: list[str] = []
    pages = fake_pages(calls)

    def recorded(window: Window) -> Iterator[Page]:
        threads.add(threading.current_thread().name)
        yield from pages(window)

    got = list(read_slices(recorded, slices, 1))
    assert threads == {threading.current_thread().name}
    expected = [(i, n) for i in range(len(slices)) for n in (1, 2, 3, None)]
    assert [(i, p.number if p else None) for i, p in got] == expected


def test_a_readers_error_is_raised_in_the_writer_and_the_readers_stop() -> None:
    slices = cut_window(Window("contacts", T, T + timedelta(days=365)), 4)
    calls: list[str] = []
    fail_at = f"{slices[5].since:%m-%d}#2"
    with pytest.raises(KlaviyoError, match="the reader failed"):
        for _ in read_slices(fake_pages(calls, fail_at=fail_at), slices, 4):
            pass
    time.sleep(0.1)
    settled = len(calls)
    time.sleep(0.2)
    assert len(calls) == settled < len(slices) * 3  # stopped: no request after, and not all were made


def test_a_writer_that_stops_early_stops_the_readers() -> None:
    slices = cut_window(Window("contacts", T, T + timedelta(days=365)), 4)
    calls: list[str] = []
    reading = read_slices(fake_pages(calls, pages_per_slice=50), slices, 4)
    for _ in range(3):
        next(reading)
    reading.close()  # the writer failed (or was interrupted) and left the loop
    time.sleep(0.1)
    settled = len(calls)
    time.sleep(0.2)
    assert len(calls) == settled < 40  # each reader ends after the request it was making


# -- end to end --------------------------------------------------------------------------------------------
def test_concurrent_readers_and_early_delivery_give_what_one_reader_delivering_after_reading_gives(
    store: StateStore,
) -> None:
    """Four readers with a latency (so they overlap) and deliveries every 10 queued items, against one reader
    delivering after reading: the same events and profiles, each event sent once, the same snapshots and
    watermarks, and Klaviyo was sent to before the last Intercom request."""
    with sandboxes(klaviyos=2) as boxes:
        boxes.intercom.server.faults.latency = 0.01
        execute(
            boxes, store, boxes.job("ref", klaviyo=1, concurrency=1, deliver_every=0), RunOptions(), klaviyo=1
        )
        assert boxes.intercom.server.peak_in_flight == 1
        ref_requests = len(boxes.intercom.server.requests)
        seen_at: list[int] = []  # Intercom requests received so far, at each Klaviyo request
        sent = threading.Event()

        def note(stage: str, method: str, path: str) -> bool:
            if stage == "received":
                seen_at.append(len(boxes.intercom.server.requests))
                sent.set()
            return False

        def hold(stage: str, method: str, path: str) -> bool:
            # the tickets wait for the first early round (or 30 s), so a loaded machine cannot let the readers
            # finish before the round's thread sends; whether reading goes on meanwhile is the other assertions'
            if stage == "received" and path.startswith("/tickets/search"):
                sent.wait(timeout=30)
            return False

        boxes.klaviyo.on_request = note
        boxes.intercom.server.on_request = hold
        execute(boxes, store, boxes.job("shop", concurrency=4, deliver_every=10), RunOptions())
        last = len(boxes.intercom.server.requests)
        assert 2 <= boxes.intercom.server.peak_in_flight <= 4  # readers and lookups share the one limit
        assert seen_at and min(seen_at) < last  # Klaviyo was sent to while Intercom was still being read
        assert klaviyo_content(boxes.klaviyo) == klaviyo_content(boxes.klaviyos[1]) != (set(), {})
        assert events_posted(boxes.klaviyo) == len(boxes.klaviyo.events)  # no event sent twice
        assert store.watermarks("shop") == store.watermarks("ref") != {}
        assert store.snapshot_counts("shop") == store.snapshot_counts("ref")
        assert outbox_rows(store, "shop", status="pending") == []
        assert len(outbox_rows(store, "shop")) == len(outbox_rows(store, "ref"))
        (run,) = store.runs("shop", 1)
        assert run.status == "succeeded" and ref_requests > 0


def test_an_early_delivery_that_fails_ends_the_run_with_its_error_and_moves_no_watermark(
    store: StateStore,
) -> None:
    """Klaviyo refusing the key during an early round is the run's error (exit 4), raised in the writer; what
    was queued stays pending and the next run (key fixed) delivers it all."""
    with sandboxes(klaviyos=2) as boxes:
        before = len(boxes.intercom.server.requests)
        execute(boxes, store, boxes.job("ref", klaviyo=1, deliver_every=0), RunOptions(), klaviyo=1)
        reading = len(boxes.intercom.server.requests) - before  # Intercom requests of a whole run
        keys = dict(boxes.klaviyo.api_keys)
        boxes.klaviyo.api_keys = {}  # every Klaviyo request is now a 401
        before = len(boxes.intercom.server.requests)
        # Intercom holds the conversation searches until Klaviyo has refused the early round (the contacts'
        # profiles start it), and answers a little late after that, so the readers cannot finish the window
        # before the round's error reaches the run, however the machine schedules the threads
        refused = threading.Event()

        def klaviyo_hook(stage: str, method: str, path: str) -> bool:
            if stage == "answering":
                refused.set()
            return False

        def intercom_hook(stage: str, method: str, path: str) -> bool:
            if stage == "received" and path.startswith(("/conversations/search", "/tickets/search")):
                refused.wait(timeout=30)
                time.sleep(0.2)
            return False

        boxes.klaviyo.on_request = klaviyo_hook
        boxes.intercom.server.on_request = intercom_hook
        with pytest.raises(KlaviyoError) as failure:
            execute(boxes, store, boxes.job("shop", deliver_every=5), RunOptions())
        boxes.klaviyo.on_request = boxes.intercom.server.on_request = None
        assert refused.is_set()
        assert len(boxes.intercom.server.requests) - before < reading  # it ended while reading
        assert failure.value.exit_code == 4
        (run,) = store.runs("shop", 1)
        assert run.status == "failed" and store.watermarks("shop") == {}
        assert outbox_rows(store, "shop", status="pending")  # queued pages kept
        boxes.klaviyo.api_keys = keys
        execute(boxes, store, boxes.job("shop", deliver_every=5), RunOptions())
        assert klaviyo_content(boxes.klaviyo) == klaviyo_content(boxes.klaviyos[1])
        assert store.watermarks("shop") == store.watermarks("ref")
