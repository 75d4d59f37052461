"""IntercomClient.pages over real loopback HTTP: every record once per window, in every sandbox mode."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest

from etl.intercom import ReadOnce
from etl.models import Window
from etl.sandbox.generator import Workspace
from etl.sandbox.intercom_server import IntercomSettings
from tests.intercom_fixtures import (
    MODES,
    START,
    STREAMS,
    at,
    client,
    expected_ids,
    read_ids,
    sandbox,
    workspace,
)


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_consecutive_windows_read_every_record_exactly_once(mode: IntercomSettings) -> None:
    """Windows that tile the workspace's history yield each object exactly once, whatever the server mode."""
    ws = workspace()
    rng = random.Random(5)
    begin = min(o["created_at"] for s in STREAMS for o in ws.objects(s)) - 5
    cuts = sorted(rng.sample(range(begin, ws.now), 6))
    cuts += [ws.objects("conversations")[0]["updated_at"]]  # a boundary exactly on an object's updated_at
    edges = [at(t) for t in sorted({begin, *cuts, ws.now + 1})]
    with sandbox(ws, mode) as sb, client(sb, per_page=6) as c:
        for stream in STREAMS:
            seen: Counter[str] = Counter()
            for since, until in pairwise(edges):
                ids = read_ids(c, stream, since, until)
                assert set(ids) == expected_ids(ws, stream, since, until)
                seen.update(ids)
            assert set(seen) == {o["id"] for o in ws.objects(stream)}
            assert max(seen.values()) == 1


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_no_change_run_costs_one_search_call_per_stream(mode: IntercomSettings) -> None:
    """A run whose lookback window holds fewer than a page of objects makes one search call per stream."""
    ws = workspace()
    ws.advance(timedelta(hours=20), activity=200)  # busy: many objects within two days below the window
    ws.advance(timedelta(minutes=30), activity=4)
    until = at(ws.now) + timedelta(minutes=10)
    since = at(ws.now) - timedelta(minutes=30)
    with sandbox(ws, mode) as sb, client(sb, per_page=8) as c:
        for stream in STREAMS:
            assert len(expected_ids(ws, stream, since - timedelta(days=2), since)) > 8  # the test's premise
            assert set(read_ids(c, stream, since, until)) == expected_ids(ws, stream, since, until)
        assert dict(sb.server.search_calls) == dict.fromkeys(STREAMS, 1)
        assert c.stats.calls == 3


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_objects_sharing_updated_at_across_a_page_boundary_are_read_once(mode: IntercomSettings) -> None:
    """Nine conversations with one updated_at straddling pages of four are each read exactly once."""
    ws = workspace()
    tied = ws.objects("conversations")[:9]
    moment = ws.now - 100
    for conv in tied:
        conv["updated_at"] = moment
    with sandbox(ws, mode) as sb, client(sb, per_page=4) as c:
        ids = read_ids(c, "conversations", at(moment), at(moment + 1))
    assert sorted(ids) == sorted(conv["id"] for conv in tied)


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_objects_updated_while_paging_are_never_skipped(mode: IntercomSettings) -> None:
    """Updates and new objects during paging skip nothing; the updated objects fall to the next window."""
    ws = workspace(conversations=60)
    since, until = at(ws.now - 40 * 86_400), at(ws.now + 1)
    before = expected_ids(ws, "conversations", since, until)
    ws.now += 60  # the run started at `until`; everything below happens during it
    touched: set[str] = set()
    with sandbox(ws, mode) as sb, client(sb, per_page=5) as c:
        read: list[str] = []
        for page in c.pages(Window("conversations", since, until)):
            read += [o["id"] for o in page.objects]
            unread = sorted(before - set(read) - touched)
            for conv_id in unread[:2] + read[-1:]:  # two unread objects and one already read move to the top
                ws.touch("conversations", conv_id)
                touched.add(conv_id)
            ws.advance(timedelta(seconds=5), activity=1)
        assert len(read) == len(set(read))
        assert before - touched <= set(read)  # nothing that stayed inside the window is skipped
        later = read_ids(c, "conversations", until, at(ws.now + 1))
    assert touched - set(read) <= set(later)  # the moved ones are read by the next run


def test_contacts_merged_while_paging_trigger_a_reread_and_nothing_is_skipped() -> None:
    """A contact leaving the result set mid-paging makes the client re-read from the top and miss nothing."""
    ws = workspace(contacts=40)
    since, until = at(ws.now - 90 * 86_400), at(ws.now + 1)
    before = expected_ids(ws, "contacts", since, until)
    with sandbox(ws) as sb, client(sb, per_page=5) as c:
        read: list[str] = []
        pages = c.pages(Window("contacts", since, until))
        first = next(pages)
        read += [o["id"] for o in first.objects]
        gone = read[0]
        del ws.contacts[gone]  # merged away: removed from search, which shifts the unread ones up
        ws.merged[gone] = read[1]
        for page in pages:
            read += [o["id"] for o in page.objects]
        calls = sb.server.search_calls["contacts"]
    assert before - {gone} <= set(read)
    assert len(read) == len(set(read))
    assert calls > -(-len(before) // 5)  # the re-read cost extra calls


def test_a_backfill_window_in_the_past_is_bounded_above() -> None:
    """A window far below now reads only its objects plus at most two days of newer ones."""
    ws = workspace()
    since, until = at(ws.now - 30 * 86_400), at(ws.now - 20 * 86_400)
    with sandbox(ws, IntercomSettings(granularity="second")) as sb, client(sb, per_page=150) as c:
        pages = list(c.pages(Window("contacts", since, until)))
    above = [o for o in ws.objects("contacts") if o["updated_at"] >= until.timestamp() + 2 * 86_400 + 1]
    assert {o["id"] for p in pages for o in p.objects} == expected_ids(ws, "contacts", since, until)
    assert pages[0].total_count is not None
    assert pages[0].total_count <= len(ws.objects("contacts")) - len(above)


def test_page_numbers_and_total_count_come_from_the_responses() -> None:
    """Pages are numbered from 1 and carry the server's total_count."""
    ws = workspace()
    since, until = at(START.timestamp() - 90 * 86_400), at(ws.now + 1)
    with sandbox(ws) as sb, client(sb, per_page=10) as c:
        pages = list(c.pages(Window("tickets", since, until)))
    assert [p.number for p in pages] == list(range(1, len(pages) + 1))
    assert {p.total_count for p in pages} == {len(ws.objects("tickets"))}


@pytest.mark.parametrize(
    ("zone", "change"), [("America/Los_Angeles", "2026-03-08"), ("Europe/Berlin", "2026-03-29")]
)
def test_windows_around_a_dst_change_in_day_mode(zone: str, change: str) -> None:
    """Windows next to a 23-hour day in the workspace timezone still read every record exactly once."""
    ws = Workspace(
        seed=9,
        start=datetime(2026, 3, 31, 12, tzinfo=UTC),
        contacts=30,
        conversations=40,
        tickets=15,
        history_days=28,
    )
    middle = int(datetime.fromisoformat(change).replace(tzinfo=UTC).timestamp())
    cuts = range(middle - 2 * 86_400, middle + 2 * 86_400, 4 * 3_600 + 1)
    edges = [at(t) for t in (ws.now - 29 * 86_400, *cuts, ws.now + 2)]
    settings = IntercomSettings(timezone=zone, granularity="day", inclusive=False)
    with sandbox(ws, settings) as sb, client(sb, per_page=4) as c:
        for stream in STREAMS:
            ids = [i for since, until in pairwise(edges) for i in read_ids(c, stream, since, until)]
            assert sorted(ids) == sorted(expected_ids(ws, stream, edges[0], edges[-1]))


def test_a_window_starting_late_on_a_25_hour_day_misses_nothing() -> None:
    """Late on the day clocks fall back (25 hours long), a one-day margin would not reach back far enough."""
    ws = Workspace(seed=4, start=datetime(2026, 11, 3, tzinfo=UTC), contacts=10, conversations=3, tickets=2)
    since = datetime(2026, 11, 2, 7, 30, tzinfo=UTC)  # 23:30 PST on Sunday 1 November, a 25-hour day in LA
    target = ws.objects("contacts")[0]
    target["updated_at"] = int(since.timestamp()) + 900
    settings = IntercomSettings(timezone="America/Los_Angeles", granularity="day")
    with sandbox(ws, settings) as sb, client(sb) as c:
        ids = read_ids(c, "contacts", since, since + timedelta(hours=1))
    assert target["id"] in ids


@pytest.mark.parametrize(
    "mode", [MODES["day-UTC-incl-offset"], MODES["second-Kolkata-strict-offset"]], ids=["day", "second"]
)
def test_a_backfill_survives_objects_updated_out_of_its_range_while_paging(mode: IntercomSettings) -> None:
    """Objects already read that leave the search range mid-backfill cost a bounded re-read, never a skip."""
    ws = workspace(conversations=90)
    since, until = at(ws.now - 55 * 86_400), at(ws.now - 12 * 86_400)
    before = expected_ids(ws, "conversations", since, until)
    with sandbox(ws, mode) as sb, client(sb, per_page=4) as c:
        read: list[str] = []
        for page in c.pages(Window("conversations", since, until)):
            read += [o["id"] for o in page.objects]
            if page.number <= 8 and read:
                ws.touch("conversations", read[-1])  # to now: out of the backfill's range, shifting the rest
        calls = sb.server.search_calls["conversations"]
    assert sorted(read) == sorted(before)
    assert calls <= 2 * (-(-len(before) // 4)) + 10


@pytest.mark.parametrize(
    "mode", [MODES["second-UTC-incl-offset"], MODES["day-UTC-incl-keyset"]], ids=["offset", "keyset"]
)
def test_a_window_larger_than_any_bound_is_read_once_remembering_only_the_lowest_second(
    mode: IntercomSettings,
) -> None:
    """300 conversations (threes sharing one updated_at, across pages of 7) read while objects move to the
    top, new ones arrive and one leaves: each object that stays in the window is yielded exactly once, and the
    ids the call holds to drop repeats never pass the largest group sharing a second (3), not the window."""
    ws = workspace(conversations=300)
    convs = sorted(ws.objects("conversations"), key=lambda c: c["updated_at"])
    for k, conv in enumerate(convs):  # groups of three on one second, below every object's own
        conv["updated_at"] = convs[k - k % 3]["updated_at"]
    since, until = at(convs[0]["updated_at"]), at(ws.now + 1)
    before = expected_ids(ws, "conversations", since, until)
    ws.now += 60  # the run started at `until`; everything below happens during it
    touched: set[str] = set()
    held: list[int] = []
    with sandbox(ws, mode) as sb, client(sb, per_page=7) as c:
        read: list[str] = []
        pages = c.pages(Window("conversations", since, until))
        for page in pages:
            read += [o["id"] for o in page.objects]
            reads = pages.gi_frame.f_locals["reads"]  # the generator's own record, while it is suspended
            held.append(len(reads.at_floor) + len(reads.malformed))
            unread = sorted(before - set(read) - touched)
            for conv_id in unread[:1] + read[-2:-1]:  # an unread object and one already read move to the top
                ws.touch("conversations", conv_id)
                touched.add(conv_id)
            ws.advance(timedelta(seconds=5), activity=1)
    stayed = expected_ids(ws, "conversations", since, until)  # never updated while paging
    assert len(before) == 300 and len(read) == len(set(read))
    assert stayed <= set(read) <= before and len(stayed) > 150
    assert max(held) <= 3 and len(held) > 30


def test_malformed_results_are_reported_once_each_while_remembered_within_the_bound() -> None:
    """Twelve malformed ids against a bound of five: each is reported the first time, one served again while
    still remembered is not, one forgotten is reported again (counted twice, never lost); those without an id
    are reported every time; at most five ids are held."""
    reads = ReadOnce(malformed_limit=5)
    first = [reads.first_malformed(f"bad-{i}") for i in range(12)]
    again = [reads.first_malformed(f"bad-{i}") for i in (11, 7, 0)]
    assert first == [True] * 12 and again == [False, False, True]
    assert [reads.first_malformed(None) for _ in range(3)] == [True] * 3
    assert len(reads.malformed) == 5 and reads.malformed.evictions == 8
