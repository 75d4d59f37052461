"""The fake Klaviyo's rate limit: Klaviyo's burst and steady windows, per API key and endpoint.

Both bulk endpoints are limited to burst 10/s and steady 150/m (spec `x-klaviyo-ratelimit`), the other
endpoints likewise unless the server names their own limits (query_metric_aggregates: 3/s and 60/m). Every
answer carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds, IETF draft style,
as Klaviyo sends them); a refused request also gets `Retry-After` in whole seconds.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable

from etl.sandbox.klaviyo_store import KlaviyoSettings


class RateLimiter:
    """Sliding one-second and one-minute windows per (key, operation), on the injected clock."""

    def __init__(self, settings: KlaviyoSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._calls: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def take(
        self, bucket: tuple[str, str], limits: tuple[int, int] | None = None
    ) -> tuple[bool, dict[str, str]]:
        """(allowed, rate-limit headers) for one request in `bucket`; `limits` (per second, per minute) are
        the endpoint's own, else the settings' bulk-endpoint limits."""
        burst, steady = limits or (self.settings.burst_per_second, self.settings.steady_per_minute)
        with self._lock:
            now = self.clock()
            calls = self._calls.setdefault(bucket, deque())
            while calls and calls[0] <= now - 60:
                calls.popleft()
            in_second = [t for t in calls if t > now - 1]
            allowed = len(in_second) < burst and len(calls) < steady
            if allowed:
                calls.append(now)
                in_second.append(now)
            left_second, left_minute = burst - len(in_second), steady - len(calls)
            if left_second <= 0 and in_second:
                reset = in_second[0] + 1 - now
            elif left_minute <= 0 and calls:
                reset = calls[0] + 60 - now
            else:
                reset = 1 - (now % 1) if left_second < left_minute else 60 - (now % 60)
        headers = {
            "RateLimit-Limit": f"{burst}, {burst};w=1, {steady};w=60",
            "RateLimit-Remaining": str(max(0, min(left_second, left_minute))),
            "RateLimit-Reset": str(max(1, math.ceil(reset))),
        }
        if not allowed:
            headers["Retry-After"] = headers["RateLimit-Reset"]
        return allowed, headers
