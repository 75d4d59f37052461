"""One HTTP client shared by threads, and the Intercom client's concurrent per-contact calls, over loopback.

Real HTTP against the sandbox, which counts every request it handles and the most it handled at once
(`peak_in_flight`); its latency switch (`Faults.latency`) makes requests overlap when they are sent together.
Expectations are the sequential code's own answers (concurrency 1) and the sandbox's records.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from etl.errors import IntercomError
from etl.http import SPARE_CONNECTIONS
from etl.intercom import MAX_CONCURRENCY
from etl.models import Window
from etl.sandbox.intercom_server import IntercomSandbox
from tests.intercom_fixtures import FakeTime, at, client, sandbox, workspace

UNKNOWN = "000000000000000000000000"
LATENCY = 0.05  # seconds per request: long enough for requests sent together to overlap


def intercom_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("intercom")]


def test_requests_from_16_threads_are_counted_exactly_over_pooled_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """16 threads share one client of concurrency 16: its counters match the sandbox's records exactly, by
    status too; no thread ever finds the connection pool full (urllib3 would log it, discard the connection
    and open a new one for the next request), so no more connections are opened than can be in flight."""
    paths = ["/tags", "/admins", f"/contacts/{UNKNOWN}"] * 100  # 200, 200, 404 (accepted)
    random.Random(4).shuffle(paths)
    with (
        sandbox() as sb,
        client(sb, concurrency=MAX_CONCURRENCY) as c,
        caplog.at_level(logging.DEBUG, "urllib3"),
    ):
        barrier = threading.Barrier(MAX_CONCURRENCY)

        def send(index: int) -> int:
            if index < MAX_CONCURRENCY:
                barrier.wait()  # all 16 threads start sending at once
            return c.http.request("GET", paths[index], accept=(404,)).status

        with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
            statuses = Counter(pool.map(send, range(len(paths))))
        pool_of = c.http.session.get_adapter(sb.url).poolmanager.connection_from_url(sb.url)
        assert statuses == {200: 200, 404: 100}
        assert len(sb.server.requests) == c.stats.calls == 300
        assert c.stats.by_status == statuses and c.stats.retries == 0
    assert [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()] == []
    assert pool_of.num_connections <= MAX_CONCURRENCY < MAX_CONCURRENCY + SPARE_CONNECTIONS


def test_at_most_concurrency_requests_are_in_flight_whatever_the_threads() -> None:
    """Eight threads, a client of concurrency 3: the sandbox never handles more than 3 of its requests at
    once (the others wait their turn, holding no connection), and with its latency at least 2 overlap."""
    with sandbox() as sb, client(sb, concurrency=3) as c:
        sb.faults.latency = LATENCY
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: c.http.request("GET", "/tags"), range(24)))
        assert 2 <= sb.server.peak_in_flight <= 3
        assert c.stats.calls == len(sb.server.requests) == 24


# -- lookups and pages: the same answers and calls as one at a time ---------------------------------------
def lookup_ids(sb: IntercomSandbox) -> list[str]:
    """Every live and merged contact of the workspace, an unknown id and a repeat, in a shuffled order."""
    ws = sb.workspace
    ids = [*ws.contacts, *ws.merged, UNKNOWN]
    random.Random(7).shuffle(ids)
    return [*ids, ids[0]]


def observe(sb: IntercomSandbox, concurrency: int, call: Any) -> tuple[Any, list[tuple[str, str]], int, int]:
    """(answer, requests sorted, the client's call count, peak in flight) of `call(client)` on a fresh client."""
    sb.server.requests.clear()
    sb.server.peak_in_flight = 0
    with client(sb, concurrency=concurrency) as c:
        answer = call(c)
        calls = c.stats.calls
    return answer, sorted(sb.server.requests), calls, sb.server.peak_in_flight


def test_lookup_contacts_with_concurrency_4_answers_and_calls_as_one_at_a_time() -> None:
    """Merged contacts (followed to their survivor), contacts with more than 10 tags (their lists read in
    full), an unknown id: concurrency 4 returns exactly what concurrency 1 returns, in the same order, with
    the same requests; with the sandbox's latency, 2 to 4 of them overlap; one at a time, never two."""
    ws = workspace(contacts=60)
    heavy = [i for i, c in ws.contacts.items() if c["tags"]["total_count"] > 10]
    assert len(ws.merged) >= 4 and len(heavy) >= 4  # the workspace has what is to be shown
    with sandbox(ws) as sb:
        sb.faults.latency = LATENCY
        ids = lookup_ids(sb)
        one = observe(sb, 1, lambda c: list(c.lookup_contacts(ids).items()))
        four = observe(sb, 4, lambda c: list(c.lookup_contacts(ids).items()))
    assert four[:3] == one[:3]
    assert (one[3], 2 <= four[3] <= 4) == (1, True), (one[3], four[3])
    answer = dict(one[0])
    assert set(answer) == set(ws.contacts) | set(ws.merged)
    assert {i: answer[i]["id"] for i in ws.merged} == ws.merged
    assert {c["id"]: len(c["tags"]["data"]) for c in answer.values()} == {
        i: len(c["tags"]["data"]) for i, c in ws.contacts.items()
    }
    assert sum(1 for _, path in one[1] if path.endswith("/tags")) >= len(heavy)


def test_contact_pages_read_their_tag_lists_together_with_the_same_result() -> None:
    """A page of contacts whose tag lists are read in full: concurrency 4 yields the same pages as
    concurrency 1, with the same requests, 2 to 4 of them at once."""
    ws = workspace(contacts=60)
    window = Window("contacts", at(0), at(ws.now + 1))
    with sandbox(ws) as sb:
        sb.faults.latency = LATENCY
        one = observe(sb, 1, lambda c: list(c.pages(window)))
        four = observe(sb, 4, lambda c: list(c.pages(window)))
    assert four[:3] == one[:3]
    assert (one[3], 2 <= four[3] <= 4) == (1, True), (one[3], four[3])


# -- failures ------------------------------------------------------------------------------------------
def failing_tag_list(sb: IntercomSandbox, how: str) -> str:
    """Make the tag list of one contact with more than 10 tags (not the first) fail; its path."""
    heavy = sorted(i for i, c in sb.workspace.contacts.items() if c["tags"]["total_count"] > 10)
    path = f"/contacts/{heavy[2]}/tags"
    if how == "unexpected body":
        sb.faults.bodies[f"GET {path}"] = b'{"type": "list", "data": "not a list"}'
    else:  # the connection is closed on every try, until the retry budget is spent
        sb.server.on_request = lambda stage, method, at: stage == "received" and at == path
    return path


@pytest.mark.parametrize("how", ["unexpected body", "closed connection past the retry budget"])
def test_a_failing_call_among_concurrent_ones_raises_what_the_sequential_code_raises(how: str) -> None:
    """One tag list fails while others are read with it: the caller gets the very IntercomError the sequential
    code raises (message included), and no thread of the client is left running."""
    ws = workspace(contacts=60)
    errors = []
    for concurrency in (1, 4):
        with sandbox(ws) as sb:
            sb.faults.latency = 0.01
            path = failing_tag_list(sb, how)
            fake = FakeTime(1_772_366_403.0)
            with client(sb, fake, concurrency=concurrency, retry_budget=timedelta(seconds=5)) as c:
                with pytest.raises(IntercomError) as failure:
                    c.lookup_contacts(list(ws.contacts))
                assert intercom_threads() == []
            errors.append(str(failure.value))
            assert path in errors[-1]
    assert errors[0] == errors[1]
    expected = {
        "unexpected body": f"Intercom answered GET {path} with an unexpected body; try again later",
        "closed connection past the retry budget": f"Intercom kept failing GET {path} for 5s (last: connection "
        "closed without a reply): try again later; raise intercom.retry_budget to wait longer",
    }
    assert errors[0] == expected[how]


def test_after_a_failure_calls_not_yet_started_are_not_made() -> None:
    """With concurrency 2 and the first tag list failing at once, the pool is shut down with the calls that
    had not started cancelled: far fewer tag lists are requested than the contacts that need one."""
    ws = workspace(contacts=60)
    with sandbox(ws) as sb:
        heavy = sorted(i for i, c in ws.contacts.items() if c["tags"]["total_count"] > 10)
        sb.faults.bodies[f"GET /contacts/{heavy[0]}/tags"] = b"{}"
        sb.faults.latency = LATENCY
        with client(sb, concurrency=2) as c, pytest.raises(IntercomError, match="unexpected body"):
            c._with_all_tags(
                [ws.contacts[i] | {"tags": {**ws.contacts[i]["tags"], "has_more": True}} for i in heavy]
            )
        assert intercom_threads() == []
        # the two first calls, the one that took the second's place, perhaps one the other took meanwhile
        assert len(sb.server.requests) <= 4 < len(heavy)
