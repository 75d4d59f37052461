"""Client-side pacing (etl.pacing): sliding windows on a fake clock, shared by threads; each client's buckets.

No real sleeps: the windows are asked at fixed fake moments, and the clients run on a clock that moves only
when they sleep on it, shared with the sandbox that counts their requests.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from etl.intercom import RATE_LIMITS, RATE_WINDOW_SECONDS
from etl.klaviyo import ENDPOINT_LIMITS, EVENTS_PATH, IMPORT_JOBS_PATH, rate_limits
from etl.klaviyo_aggregates import AGGREGATES_LIMITS, AGGREGATES_PATH
from etl.pacing import Pacer, SlidingWindows
from etl.sandbox.intercom_server import DEFAULT_RATE_BUDGET, IntercomSettings
from etl.sandbox.klaviyo_server import KlaviyoServer
from tests.intercom_fixtures import FakeTime, client, sandbox
from tests.klaviyo_fixtures import FakeClock, client_for

EPOCH = 1_772_366_403.0  # 3 s into a 10-second rate-limit window


def most_in_any_window(moments: list[float], span: float) -> int:
    """The most moments that lie in any half-open window (t - span, t] (t ranging over the moments)."""
    ordered = sorted(moments)
    return max(sum(1 for m in ordered if t - span < m <= t) for t in ordered)


def test_sliding_windows_wait_for_the_oldest_call_of_each_window() -> None:
    """3 a second and 60 a minute: the 4th call waits for the 1st to leave the second, the 61st for the 1st to
    leave the minute (each plus the margin)."""
    pacer = SlidingWindows(((3, 1.0), (60, 60.0)), margin=0.1)
    now = 0.0
    for _ in range(3):
        assert pacer.wait(now) == 0
        pacer.record(now)
    assert pacer.wait(now) == pytest.approx(1.1)
    for _ in range(57):
        now += pacer.wait(now)
        pacer.record(now)
    assert pacer.wait(now) == pytest.approx(60.1 - now)


def test_takes_reserve_moments_so_threads_asking_at_once_queue_behind_each_other() -> None:
    """Sixteen threads take a moment at the same fake instant under burst 3/s and steady 7/min: the waits
    are exactly 0 (x3), 1.1 (x3), 2.2 (the 7th), then 60.1 (x3), 61.2 (x3), 62.3 as the first minute's 7
    leave it, then 120.2 (x2) (60.1 after the 8th); no window of a second (a minute) plus the margin ever
    holds more than 3 (7)."""
    pacer = SlidingWindows(((3, 1.0), (7, 60.0)), margin=0.1)
    start = threading.Barrier(16)

    def take() -> float:
        start.wait()
        return pacer.take(100.0)

    with ThreadPoolExecutor(16) as pool:
        waits = sorted(pool.map(lambda _: take(), range(16)))
    assert waits == pytest.approx(
        [0, 0, 0, 1.1, 1.1, 1.1, 2.2, 60.1, 60.1, 60.1, 61.2, 61.2, 61.2, 62.3, 120.2, 120.2]
    )
    moments = [100.0 + w for w in waits]
    assert most_in_any_window(moments, 1.1) == 3 and most_in_any_window(moments, 60.1) == 7


def test_a_reservation_is_never_before_an_earlier_one_even_for_a_clock_read_earlier() -> None:
    """A thread whose clock read is older than another's reservation still goes after it: the moments stay
    ordered, which is what keeps every window within its count."""
    pacer = SlidingWindows(((1, 1.0),), margin=0.0)
    assert pacer.take(10.0) == 0
    assert pacer.take(10.5) == pytest.approx(0.5)  # at 11.0
    assert pacer.take(10.2) == pytest.approx(1.8)  # read before 10.5, still after 11.0: at 12.0


def test_a_limit_must_have_windows_of_at_least_one_request() -> None:
    """A limit of no window, or of a zero count, is refused with what a limit is."""
    for limits in ((), ((0, 1.0),), ((3, 0.0),)):
        with pytest.raises(ValueError, match=r"a limit is \(count >= 1, seconds > 0\) pairs"):
            SlidingWindows(limits)


def test_a_pacer_keeps_one_set_of_windows_per_bucket() -> None:
    """Requests of one bucket share windows; another bucket's are its own."""
    pacer = Pacer(lambda method, path: (path, ((1, 1.0),)), margin=0.0)
    assert pacer.take("GET", "/a", 0.0) == 0
    assert pacer.take("GET", "/b", 0.0) == 0
    assert pacer.take("GET", "/a", 0.0) == pytest.approx(1.0)
    assert pacer.windows("POST", "/a") is pacer.windows("GET", "/a")


def test_klaviyo_limits_each_endpoint_on_its_own_with_the_specs_limits() -> None:
    """Bulk create, bulk import, its job and import errors: burst 10/s, steady 150/m, each its own bucket (an
    import job's id is a parameter of one endpoint); metric aggregates: 3/s and 60/m (spec
    x-klaviyo-ratelimit of each operation)."""
    assert ENDPOINT_LIMITS == ((10, 1.0), (150, 60.0)) and AGGREGATES_LIMITS == ((3, 1.0), (60, 60.0))
    job, other = rate_limits("GET", f"{IMPORT_JOBS_PATH}/J1"), rate_limits("GET", f"{IMPORT_JOBS_PATH}/J2/")
    errors = rate_limits("GET", f"{IMPORT_JOBS_PATH}/J1/import-errors")
    assert job == other == (f"GET {IMPORT_JOBS_PATH}/{{id}}", ENDPOINT_LIMITS)
    assert errors == (f"GET {IMPORT_JOBS_PATH}/{{id}}/import-errors", ENDPOINT_LIMITS)
    buckets = {rate_limits(method, path)[0] for method, path in (("POST", EVENTS_PATH), ("POST", IMPORT_JOBS_PATH),
               ("GET", IMPORT_JOBS_PATH), ("GET", "/api/metrics"))}  # fmt: skip
    assert len(buckets | {job[0], errors[0]}) == 6
    assert rate_limits("POST", AGGREGATES_PATH) == (f"POST {AGGREGATES_PATH}", AGGREGATES_LIMITS)


def test_klaviyo_bulk_creates_are_paced_to_10_a_second_without_a_429(
    klaviyo: KlaviyoServer, clock: FakeClock
) -> None:
    """25 bulk creates at one fake instant: 10 go, then the pacer waits for each second to pass (plus the
    margin); the sandbox, which counts 10/s on the same clock, never answers 429."""
    with client_for(klaviyo, clock) as client:
        for _ in range(25):
            client.http.request("POST", EVENTS_PATH, data=b"{}", accept=(400,))
        assert client.stats.throttled == 0
    assert klaviyo.count("POST", EVENTS_PATH, status=429) == 0
    # the 11th waits until the 1st is a second (and the margin) old, the 21st until the 11th is
    assert clock.waits == pytest.approx([1.1, 1.1])


def test_intercom_is_paced_to_1666_calls_a_10_second_window_from_four_threads() -> None:
    """Intercom's documented limit (10,000 a minute per app, spread over 10-second windows) is the client's
    own: 1,700 calls from four threads on a fake clock never draw a 429 from a sandbox whose budget is that
    limit, and no 10-second window of the server's clock counts more than 1,666."""
    assert RATE_LIMITS == ((DEFAULT_RATE_BUDGET, RATE_WINDOW_SECONDS),) == ((1_666, 10.0),)
    fake = FakeTime(EPOCH)
    served: Counter[int] = Counter()

    def count(stage: str, method: str, path: str) -> bool:
        if stage == "received":
            served[int(fake.clock()) // 10] += 1
        return False

    with sandbox(settings=IntercomSettings(), clock=fake.clock) as sb, client(sb, fake, concurrency=4) as c:
        sb.server.on_request = count
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: c.http.request("GET", "/tags"), range(1_700)))
        assert c.stats.throttled == 0 and c.stats.calls == 1_700
    # the first window's budget is used, then the pacer waits: the fake clock moves only then, so up to three
    # requests whose moments were in the first window (one per other thread) may arrive in a later one
    assert 1_666 - 3 <= served[int(EPOCH) // 10] <= max(served.values()) <= 1_666
    assert sum(served.values()) == 1_700
