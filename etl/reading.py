"""Reading one stream's window with several readers: the window cut into time slices, read concurrently,
feeding ONE writer (docs/design.md §5, §7).

Why slices are safe: each slice `[since, until)` is read by its own `IntercomClient.pages()` call, which
yields exactly the objects with `since <= updated_at < until` (see etl/intercom.py). Slices tile the window,
so every object of the window belongs to exactly one slice; an object updated while we read moves to
`updated_at >= until` of the window (the update happens after the run's signpost, or after a backfill's
`until`), out of every slice. So the union of the slices' pages is the window's objects, each once.

Why slices are at least `MIN_SLICE` wide: each search widens its query by two days on each side (day-granular
contact search, see `covering_query`), and a slice pages through the objects of that upper slack before
reaching its own; a week-wide slice keeps that overhead small. An incremental run's window (the lookback
plus the time since the last run) is therefore one slice, read as before.

The writer sees pages in arrival order, not in the window's order. Nothing downstream needs that order: a
page's transaction, the watermark (the highest updated_at seen, moved after everything is delivered) and
event inference (per object, against its stored snapshot) are the same in any order. A backfill's resume
point needs "everything above this is done": `Frontier` keeps it through slices finished out of order.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta

from etl.models import Page, Window
from etl.windows import plan_slices

MIN_SLICE = timedelta(days=7)  # narrower slices would spend more on the query's 2-day slack than they save
SLICES_PER_READER = 4  # more slices than readers, so a reader done early takes another instead of idling
QUEUE_PAGES_PER_READER = 2  # pages read ahead per reader while the writer is busy: bounds memory
_POLL_SECONDS = 0.2  # how often a blocked reader or writer looks whether the other side stopped


def cut_window(window: Window, readers: int, min_width: timedelta = MIN_SLICE) -> tuple[Window, ...]:
    """The window's slices, newest first (the order readers take them in); one slice with one reader or a
    window narrower than two `min_width`s."""
    if readers <= 1 or window.until - window.since < 2 * min_width:
        return (window,)
    count = min(readers * SLICES_PER_READER, int((window.until - window.since) / min_width))
    bounds = plan_slices(window.since, window.until, slices=count)
    return tuple(Window(window.stream, lo, hi) for lo, hi in reversed(bounds))


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_slices(
    pages: Callable[[Window], Iterator[Page]], slices: Sequence[Window], readers: int
) -> Iterator[tuple[int, Page | None]]:
    """Yield `(slice index, page)` as pages arrive, and `(slice index, None)` once a slice is read to its end.

    With one reader, or one slice, this reads in the calling thread, in order, as a plain loop would. With
    more, `readers` daemon threads take slices in order (newest first) and hand their pages through a bounded
    queue; the first exception of any reader is raised here, and closing the generator (the writer failed,
    or was interrupted) stops the readers after the request each is making.
    """
    readers = max(1, min(readers, len(slices)))
    if readers == 1:
        for index, window in enumerate(slices):
            for page in pages(window):
                yield index, page
            yield index, None
        return
    handoff: queue.Queue[tuple[int, Page | None] | _Failed | None] = queue.Queue(
        maxsize=readers * QUEUE_PAGES_PER_READER
    )
    stop = threading.Event()
    # the next slice to read; the lock keeps two readers off one slice without relying on the GIL
    claim = itertools.count()
    claim_lock = threading.Lock()

    def put(item: tuple[int, Page | None] | _Failed | None) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while not stop.is_set():
                with claim_lock:
                    index = next(claim)
                if index >= len(slices):
                    break
                for page in pages(slices[index]):
                    if not put((index, page)):
                        return
                if not put((index, None)):
                    return
        except BaseException as exc:  # handed to the writer, which raises it
            put(_Failed(exc))
            return
        put(None)  # this reader is done

    threads = [threading.Thread(target=reader, name=f"etl-reader-{i}", daemon=True) for i in range(readers)]
    for thread in threads:
        thread.start()
    running = readers
    try:
        while running:
            try:
                item = handoff.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if item is None:
                running -= 1
            elif isinstance(item, _Failed):
                raise item.error
            else:
                yield item
    finally:
        stop.set()  # readers still paging stop after their current request; they are daemons either way


class Frontier:
    """How far down from the top of a window reading has got, with slices (newest first) read out of order:
    every object with `updated_at >= resume_until()` is read, so a resumed backfill reads
    `[since, resume_until())` only."""

    def __init__(self, slices: Sequence[Window]) -> None:
        self.slices = tuple(slices)
        self.lowest: list[datetime | None] = [None] * len(slices)
        self.done = [False] * len(slices)

    def read(self, index: int, lowest: datetime) -> None:
        """A page of slice `index` was written whose oldest object was updated at `lowest`."""
        seen = self.lowest[index]
        self.lowest[index] = lowest if seen is None else min(seen, lowest)

    def finish(self, index: int) -> None:
        self.done[index] = True

    def resume_until(self) -> datetime:
        for index, window in enumerate(self.slices):
            if self.done[index]:
                continue
            lowest = self.lowest[index]
            # descending pages: all of [lowest + 1 s, until) is read; objects of the same second may continue
            return window.until if lowest is None else min(window.until, lowest + timedelta(seconds=1))
        return self.slices[-1].since
