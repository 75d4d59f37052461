"""Client-side pacing to an API's documented rate limits, shared by every thread using one client.

A limit is one or more sliding windows that hold at once, e.g. Klaviyo's "burst 10/s, steady 150/m" is
`((10, 1.0), (150, 60.0))`. `SlidingWindows.take(now)` reserves the next moment at which one more request keeps
every window within its count, records it at once and says how long to wait for it: threads that ask at the
same time queue behind each other's reservations instead of all seeing a free window and sending together.
`Pacer` keeps one `SlidingWindows` per rate-limit bucket (Intercom: the whole app; Klaviyo: each endpoint).

Every reservation is at or after the previous one, so if each request is sent at its reserved moment, any
window of `span + margin` seconds holds at most `count` of them: the server, whose window is `span` and which
counts arrivals a little after our clock reads, never sees more. The clock is injected (tests: fake time);
the caller sleeps, so nothing here waits.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Hashable

Limits = tuple[tuple[int, float], ...]  # (requests, per seconds): every window holds at once
PACING_MARGIN = 0.1  # seconds beyond each window: the server counts arrivals, a little after our clock


class SlidingWindows:
    """Pacing for one limit of several sliding windows, e.g. 3 a second and 60 a minute; thread-safe."""

    def __init__(self, limits: Limits, margin: float = PACING_MARGIN) -> None:
        if not limits or any(count < 1 or span <= 0 for count, span in limits):
            raise ValueError(f"a limit is (count >= 1, seconds > 0) pairs, got {limits!r}")
        self.limits, self.margin = limits, margin
        self._longest = max(span for _, span in limits) + margin
        self._sent: list[float] = []  # reserved moments, ascending; none older than the longest window
        self._lock = threading.Lock()

    def _earliest(self, now: float) -> float:
        """The first moment at or after `now` (and after every reservation) at which one more request fits."""
        sent = self._sent
        moment = max(now, sent[-1]) if sent else now
        # forget what no window can see any more (a list: bisect finds the cut, one slice drops it)
        cut = bisect.bisect_right(sent, moment - self._longest)
        if cut:
            del sent[:cut]
        for count, span in self.limits:
            # the count-th newest request must have left this window: it lies more than span + margin back
            if len(sent) >= count:
                moment = max(moment, sent[-count] + span + self.margin)
        return moment

    def wait(self, now: float) -> float:
        """Seconds to wait at `now` before the next request may go (nothing is reserved)."""
        with self._lock:
            return self._earliest(now) - now

    def record(self, now: float) -> None:
        """Count a request sent at `now` (at or after every earlier one)."""
        with self._lock:
            self._sent.append(max(now, self._sent[-1]) if self._sent else now)

    def take(self, now: float) -> float:
        """Reserve the next free moment for one request: the seconds to wait from `now` before sending it."""
        with self._lock:
            moment = self._earliest(now)
            self._sent.append(moment)
            return moment - now


class Pacer:
    """One API client's pacing: each request's rate-limit bucket has its own windows, shared by all threads."""

    def __init__(
        self, bucket_of: Callable[[str, str], tuple[Hashable, Limits]], margin: float = PACING_MARGIN
    ) -> None:
        self.bucket_of = (
            bucket_of  # (method, path) -> (bucket, its limits), e.g. ("POST /api/x", ((10, 1.0),))
        )
        self.margin = margin
        self._windows: dict[Hashable, SlidingWindows] = {}
        self._lock = threading.Lock()

    def windows(self, method: str, path: str) -> SlidingWindows:
        """The windows of the bucket a request falls in."""
        bucket, limits = self.bucket_of(method, path)
        with self._lock:
            found = self._windows.get(bucket)
            if found is None:
                found = self._windows[bucket] = SlidingWindows(limits, self.margin)
            return found

    def take(self, method: str, path: str, now: float) -> float:
        """Reserve a moment for one request to `path`: the seconds to wait from `now` before sending it."""
        return self.windows(method, path).take(now)
