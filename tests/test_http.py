"""The shared HTTP policy (etl.http): header arithmetic, redaction, 429 waits, the retry budget, over loopback HTTP."""

from __future__ import annotations

import io
import itertools
import json
import socket
from datetime import timedelta
from typing import Any

import pytest
import requests

from etl import logs
from etl.errors import IntercomError
from etl.http import (
    MAX_WAIT_SECONDS,
    HttpClient,
    budget_spent,
    format_duration,
    reset_wait,
    server_time,
)
from etl.klaviyo import KlaviyoClient
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings
from tests.intercom_fixtures import FakeTime, client, sandbox

NOW = 1_772_366_403.0  # Sun, 01 Mar 2026 12:00:03 GMT: 3 s into a 10-second rate-limit window
NOW_DATE = "Sun, 01 Mar 2026 12:00:03 GMT"


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "4", "X-RateLimit-Reset": str(int(NOW) + 50)}, 4.0),  # Retry-After wins
        ({"Retry-After": "Sun, 01 Mar 2026 12:00:09 GMT"}, 6.0),  # RFC 9110: Retry-After may be a date
        ({"X-RateLimit-Reset": str(int(NOW) + 7)}, 7.0),  # Intercom: a UNIX time
        ({"RateLimit-Reset": "12"}, 12.0),  # Klaviyo: seconds left
        (
            {"X-RateLimit-Reset": str(int(NOW) - 5)},
            0.0,
        ),  # a reset in the past means go now (the caller adds 1 s)
        ({"X-RateLimit-Reset": "soon"}, None),
        ({}, None),
    ],
)
def test_reset_wait_reads_both_header_families(headers: dict[str, str], wait: float | None) -> None:
    """Seconds to wait come from Retry-After, else the epoch or delta reset; unknown stays None."""
    assert reset_wait(headers, NOW) == wait


def test_server_time_comes_from_the_date_header_else_our_clock() -> None:
    """The server's clock is its Date header (HTTP-date); a missing or broken one falls back to ours."""
    assert server_time({"Date": NOW_DATE}, 0.0) == NOW
    assert server_time({"Date": "yesterday-ish"}, 42.0) == 42.0
    assert server_time({}, 42.0) == 42.0


def test_budget_spent_scrub_and_durations() -> None:
    """A zero remaining budget is spotted in either family, a client's secrets are masked, durations read like 10m0s."""
    assert budget_spent({"X-RateLimit-Remaining": "0"}) and budget_spent({"RateLimit-Remaining": "0"})
    assert not budget_spent({"X-RateLimit-Remaining": "3"}) and not budget_spent({})
    assert logs.scrub("Bearer abc and abc", ["abc", ""]) == "Bearer *** and ***"
    assert [format_duration(timedelta(seconds=s)) for s in (600, 45, 90, 5400)] == [
        "10m0s",
        "45s",
        "1m30s",
        "1h30m0s",
    ]


def _intercom_http(url: str, token: str, fake: FakeTime, **kw: object) -> HttpClient:
    return HttpClient(
        service="Intercom",
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        error_class=IntercomError,
        secret_env="INTERCOM_ACCESS_TOKEN",
        secrets=(token,),
        sleep=fake.sleep,
        clock=fake.clock,
        jitter=lambda low, high: 0.0,  # the backoff without its jitter, so waits can be pinned
        **kw,  # type: ignore[arg-type]
    )


# -- 429s ----------------------------------------------------------------------------------------------
def test_the_sandbox_plays_a_server_clock_two_minutes_behind() -> None:
    """With clock_skew=-120 the fake Intercom's Date and X-RateLimit-Reset come from a clock 120 s behind its own."""
    with sandbox(clock=lambda: NOW) as sb:
        sb.faults.clock_skew = -120
        reply = requests.get(f"{sb.url}/tags", headers={"Authorization": f"Bearer {sb.token}"}, timeout=5)
        sb.faults.bare_429 = True
        sb.faults.storm_requests = 1
        bare = requests.get(f"{sb.url}/tags", headers={"Authorization": f"Bearer {sb.token}"}, timeout=5)
    assert reply.status_code == 200
    assert reply.headers["Date"] == "Sun, 01 Mar 2026 11:58:03 GMT"  # NOW_DATE less two minutes
    assert reply.headers["X-RateLimit-Reset"] == str(int(NOW) - 120 + 7)  # the end of the skewed window
    assert bare.status_code == 429 and not any(h.startswith("X-RateLimit") for h in bare.headers)


@pytest.mark.parametrize("skew", [-120.0, 0.0, 120.0])
def test_429_waits_follow_the_servers_clock_not_ours(skew: float) -> None:
    """With the server's clock 2 minutes behind or ahead of ours, each wait is X-RateLimit-Reset minus its Date."""
    fake = FakeTime(NOW)
    with sandbox(clock=fake.clock) as sb, client(sb, fake) as c:
        sb.faults.clock_skew = skew
        sb.faults.storm_requests = 3
        assert c.tags() == {t["id"]: t["name"] for t in sb.workspace.tags}
    # the server's time is NOW + skew, 3 s into its window: 7 s to its reset, then a full window each
    assert fake.waits == [7.0, 10.0, 10.0]
    assert c.stats.throttled == 3


def test_a_429_whose_reset_has_passed_by_the_servers_date_still_waits_one_second() -> None:
    """A reset at or before the server's Date (its window rolled over while it answered) waits 1 s, never 0."""
    fake = FakeTime(NOW)
    ticks = itertools.count(NOW, 10.0)  # the server's clock moves a window per reading: reset, then Date
    with sandbox(clock=lambda: next(ticks)) as sb, client(sb, fake) as c:
        sb.faults.storm_requests = 3
        assert c.tags() == {t["id"]: t["name"] for t in sb.workspace.tags}
    assert fake.waits == [1.0, 1.0, 1.0]


def test_a_retry_after_of_zero_still_waits_one_second() -> None:
    """Klaviyo's Retry-After: 0 is waited as 1 s, so a 429 never turns into an immediate retry."""
    fake = FakeTime(NOW)
    with KlaviyoServer(KlaviyoSettings(storm_retry_after=0), clock=fake.clock) as server:
        server.faults.storm_requests = 3
        klaviyo = KlaviyoClient(
            server.url, SANDBOX_API_KEY, api_key_env="KLAVIYO_API_KEY", sleep=fake.sleep, clock=fake.clock
        )
        klaviyo.check()
        klaviyo.close()
    assert fake.waits == [1.0, 1.0, 1.0]


def test_429s_that_name_no_wait_wait_the_apis_window_doubling() -> None:
    """Without Retry-After or reset headers Intercom waits its 10 s window, Klaviyo its 1 s burst window, doubling."""
    intercom_time = FakeTime(NOW)
    with sandbox(clock=intercom_time.clock) as sb, client(sb, intercom_time) as c:
        sb.faults.bare_429 = True
        sb.faults.storm_requests = 5
        assert c.tags() == {t["id"]: t["name"] for t in sb.workspace.tags}
    klaviyo_time = FakeTime(NOW)
    with KlaviyoServer(clock=klaviyo_time.clock) as server:
        server.faults.bare_429 = True
        server.faults.storm_requests = 4
        klaviyo = KlaviyoClient(
            server.url,
            SANDBOX_API_KEY,
            api_key_env="KLAVIYO_API_KEY",
            sleep=klaviyo_time.sleep,
            clock=klaviyo_time.clock,
        )
        klaviyo.check()
        klaviyo.close()
        throttled = [r.reply_headers for r in server.received if r.status == 429]
    assert len(throttled) == 4 and not any("Retry-After" in h or "RateLimit-Reset" in h for h in throttled)
    assert intercom_time.waits == [10.0, 20.0, 40.0, MAX_WAIT_SECONDS, MAX_WAIT_SECONDS]
    assert klaviyo_time.waits == [1.0, 2.0, 4.0, 8.0]


def test_a_far_retry_after_is_waited_at_most_max_wait_seconds_at_a_time() -> None:
    """A 429 saying come back in twenty minutes is waited for at most MAX_WAIT_SECONDS per sleep."""
    fake = FakeTime(NOW)
    with KlaviyoServer(KlaviyoSettings(storm_retry_after=1_200), clock=fake.clock) as server:
        server.faults.storm_requests = 1
        klaviyo = KlaviyoClient(
            server.url, SANDBOX_API_KEY, api_key_env="KLAVIYO_API_KEY", sleep=fake.sleep, clock=fake.clock
        )
        klaviyo.check()
        klaviyo.close()
    assert fake.waits[0] == MAX_WAIT_SECONDS  # the retry's wait; pacing may add more, each one capped
    assert max(fake.waits) == MAX_WAIT_SECONDS


# -- the retry budget ------------------------------------------------------------------------------------
def test_a_storm_of_12_429s_is_waited_out_and_leaves_5xx_their_whole_backoff() -> None:
    """Twelve 429s in a row cost no failure: the 503s after them back off from 0.5 s until the budget ends."""
    fake = FakeTime(NOW)
    with sandbox(clock=fake.clock) as sb:
        http = _intercom_http(sb.url, sb.token, fake, retry_budget=timedelta(minutes=2))
        sb.faults.storm_requests = 12
        sb.faults.error_rate = 1.0  # once the storm is over, every request fails with a 503
        with pytest.raises(IntercomError) as caught:
            http.request("GET", "/tags")
        http.close()
    assert str(caught.value) == (
        "Intercom kept failing GET /tags for 2m0s (last: HTTP 503): try again later; "
        "raise intercom.retry_budget to wait longer"
    )
    assert caught.value.exit_code == 3
    # 429s: 7 s to the first reset, then a window each (117 s); 503s: 0.5, 1, then the 1.5 s left of 120 s
    assert fake.waits == [7.0] + [10.0] * 11 + [0.5, 1.0, 1.5]
    assert http.stats.throttled == 12 and http.stats.by_status == {429: 12, 503: 4}


def test_a_request_failing_for_the_whole_default_budget_gives_up_after_10_minutes() -> None:
    """5xx are retried with a capped exponential backoff for 10 minutes, then the run fails with exit 3."""
    fake = FakeTime(NOW)
    with sandbox(clock=fake.clock) as sb:
        http = _intercom_http(sb.url, sb.token, fake)
        sb.faults.error_rate = 1.0
        with pytest.raises(IntercomError) as caught:
            http.request("POST", "/contacts/search", json={"query": {}})
        http.close()
    assert str(caught.value) == (
        "Intercom kept failing POST /contacts/search for 10m0s (last: HTTP 503): try again later; "
        "raise intercom.retry_budget to wait longer"
    )
    assert caught.value.exit_code == 3
    assert fake.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0] + [20.0] * 28 + [8.5]  # 600 s in all
    assert fake.now - NOW == 600.0 and http.stats.calls == 36


# -- what a retry says ----------------------------------------------------------------------------------
@pytest.fixture
def log_lines() -> io.StringIO:
    """The `etl` logger's JSON lines, at info (conftest puts the logger back afterwards)."""
    buffer = io.StringIO()
    logs.configure("json", 0, stream=buffer)
    return buffer


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_refused_connection_logs_each_retry_and_ends_saying_to_check_base_url(
    log_lines: io.StringIO,
) -> None:
    """Nothing listens at base_url: every retry is a warning naming the host, the request and the reason (never the
    token), the backoff is the policy's own, and the end says which setting to check."""
    port = closed_port()
    fake = FakeTime(NOW)
    http = _intercom_http(
        f"http://127.0.0.1:{port}", "tok-SECRET-c0ffee", fake, retry_budget=timedelta(seconds=5)
    )
    with pytest.raises(IntercomError) as caught:
        http.request("POST", "/contacts/search", json={"query": {}})
    http.close()
    assert str(caught.value) == (
        f"Intercom at 127.0.0.1:{port} refused the connection: check intercom.base_url in jobs.yaml"
    )
    assert caught.value.exit_code == 3
    assert fake.waits == [0.5, 1.0, 2.0, 1.5]  # the budget's 5 s, backing off as before
    lines = records(log_lines)
    assert [(r["level"], r["logger"], r["message"]) for r in lines] == [
        ("warning", "etl.http", "Intercom request failed; retrying")
    ] * 4
    assert [(r["host"], r["request"], r["reason"]) for r in lines] == [
        (f"127.0.0.1:{port}", "POST /contacts/search", "connection refused")
    ] * 4
    assert [r["wait_seconds"] for r in lines] == fake.waits
    assert [r["failing_for_seconds"] for r in lines] == [0.0, 0.5, 1.5, 3.5]
    assert "SECRET" not in log_lines.getvalue()


class NoSuchHost(requests.Session):
    """A session whose every request fails as a name lookup does for a host that does not exist."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        raise requests.ConnectionError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))


def test_a_host_that_does_not_exist_ends_saying_to_check_base_url() -> None:
    """A name that does not resolve is retried like any connection error, then named with the setting to fix."""
    fake = FakeTime(NOW)
    http = _intercom_http(
        "https://api.intercom.example", "tok", fake, retry_budget=timedelta(seconds=2), session=NoSuchHost()
    )
    with pytest.raises(IntercomError) as caught:
        http.request("GET", "/admins")
    assert str(caught.value) == (
        "Intercom host api.intercom.example was not found: check intercom.base_url in jobs.yaml"
    )
    assert fake.waits == [0.5, 1.0, 0.5]


def test_a_connection_closed_without_a_reply_is_retried_and_named_in_the_give_up_message(
    log_lines: io.StringIO,
) -> None:
    """The sandbox hangs up without answering: warnings say so, and the end keeps "try again later"."""
    fake = FakeTime(NOW)
    with sandbox(clock=fake.clock) as sb:
        http = _intercom_http(sb.url, sb.token, fake, retry_budget=timedelta(seconds=2))
        sb.faults.reset_rate = 1.0
        with pytest.raises(IntercomError) as caught:
            http.request("GET", "/tags")
        http.close()
    assert str(caught.value) == (
        "Intercom kept failing GET /tags for 2s (last: connection closed without a reply): try again later; "
        "raise intercom.retry_budget to wait longer"
    )
    assert {r["reason"] for r in records(log_lines)} == {"connection closed without a reply"}


def test_waiting_out_a_429_is_logged_at_info_a_5xx_at_warning(log_lines: io.StringIO) -> None:
    """A 429 is pacing, not a failure (info, reason HTTP 429); a 503 is a failure (warning); the host is named."""
    fake = FakeTime(NOW)
    with sandbox(clock=fake.clock) as sb:
        http = _intercom_http(sb.url, sb.token, fake)
        sb.faults.storm_requests = 1
        assert http.request("GET", "/tags").status == 200
        sb.faults.error_rate = 1.0
        sb.faults.storm_requests = 0
        with pytest.raises(IntercomError):
            http.request("GET", "/tags")
        http.close()
    lines = records(log_lines)
    host = sb.url.removeprefix("http://")
    assert (lines[0]["level"], lines[0]["message"], lines[0]["reason"], lines[0]["host"]) == (
        "info",
        "Intercom throttled the request; waiting",
        "HTTP 429",
        host,
    )
    assert {(r["level"], r["reason"]) for r in lines[1:]} == {("warning", "HTTP 503")}
    assert len(lines) == http.stats.retries  # one line per retry, the 429's included
