"""IntercomClient against a misbehaving sandbox: rate limits, 5xx, resets, bad bodies, 401, loops, lookups."""

from __future__ import annotations

from typing import Any

import pytest

from etl.errors import IntercomError
from etl.intercom import MAX_IDS_PER_LOOKUP, Fetched, IntercomClient
from etl.models import Window
from etl.sandbox.intercom_server import IntercomSandbox, IntercomServer, IntercomSettings
from etl.sandbox.server import Faults
from tests.intercom_fixtures import (
    START,
    STREAMS,
    FakeTime,
    at,
    client,
    expected_ids,
    read_ids,
    sandbox,
    workspace,
)

EPOCH = 1_772_366_403.0  # 3 s into a 10-second rate-limit window


def test_a_429_storm_is_survived_by_waiting_until_each_reset() -> None:
    """Three 429s in a row are each waited out until the X-RateLimit-Reset they name."""
    fake = FakeTime(EPOCH)
    with sandbox(clock=fake.clock) as sb, client(sb, fake) as c:
        sb.faults.storm_requests = 3
        assert c.tags() == {t["id"]: t["name"] for t in sb.workspace.tags}
        assert fake.waits == [7.0, 10.0, 10.0]
        assert (c.stats.throttled, c.stats.retries, c.stats.waited_seconds) == (3, 3, 27.0)


def test_the_client_paces_itself_before_the_budget_runs_out() -> None:
    """With a budget of 2 per window the client waits for the reset instead of drawing a 429."""
    fake = FakeTime(EPOCH)
    settings = IntercomSettings(rate_budget=2)
    with sandbox(settings=settings, clock=fake.clock) as sb, client(sb, fake) as c:
        c.admins()
        c.teams()
        c.tags()
        assert fake.waits == [7.0]
        assert c.stats.throttled == 0
        assert sb.server.requests[-1] == ("GET", "/tags")


def test_ten_percent_5xx_and_some_resets_are_retried_with_backoff() -> None:
    """Every record still arrives exactly once; each retry waited an exponential, jittered, bounded time."""
    ws = workspace()
    since, until = at(START.timestamp() - 90 * 86_400), at(ws.now + 1)
    fake = FakeTime(EPOCH)
    with sandbox(ws, clock=fake.clock) as sb, client(sb, fake, per_page=5) as c:
        sb.server.faults = Faults(error_rate=0.1, reset_rate=0.02, seed=11)
        for stream in STREAMS:
            ids = read_ids(c, stream, since, until)
            assert sorted(ids) == sorted(expected_ids(ws, stream, since, until))
        failures = c.stats.by_status.get(503, 0)
    assert failures >= 3
    assert c.stats.retries == len(fake.waits) >= failures
    assert all(0.5 <= w <= 20.5 for w in fake.waits)
    assert c.stats.waited_seconds == pytest.approx(sum(fake.waits))


@pytest.mark.parametrize("fault", ["malformed_rate", "empty_rate"])
def test_unreadable_200_bodies_are_retried(fault: str) -> None:
    """A 200 with a broken or empty body is retried, not trusted, and paging still completes."""
    ws = workspace()
    since, until = at(START.timestamp() - 90 * 86_400), at(ws.now + 1)
    fake = FakeTime(EPOCH)
    with sandbox(ws) as sb, client(sb, fake, per_page=10) as c:
        sb.server.faults = Faults(**{fault: 0.3})
        ids = read_ids(c, "conversations", since, until)
    assert sorted(ids) == sorted(expected_ids(ws, "conversations", since, until))
    assert c.stats.retries == len(fake.waits) > 0


def test_a_rejected_token_ends_with_exit_3_and_names_the_env_var_not_the_token() -> None:
    """A 401 raises IntercomError (exit 3) with a one-line message naming INTERCOM_ACCESS_TOKEN, never the token."""
    with sandbox() as sb:
        sb.settings.token = "the-real-token"
        c = IntercomClient(sb.url, "wrong-token-s3cr3t", token_env="INTERCOM_ACCESS_TOKEN")
        with pytest.raises(IntercomError) as caught:
            list(c.pages(Window("contacts", START, at(START.timestamp() + 60))))
        c.close()
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert message == (
        "Intercom rejected the credentials (401): set INTERCOM_ACCESS_TOKEN to a valid token (Access Token Invalid)"
    )
    assert "s3cr3t" not in message and "\n" not in message
    assert c.stats.calls == 1  # never retried


class _StuckServer(IntercomServer):
    """Answers every search with the same next cursor, like a broken server."""

    def search(self, stream: str, request: Any) -> dict[str, Any]:
        body = super().search(stream, request)
        body["pages"]["next"] = {"page": 2, "starting_after": "WzIsIDJd"}  # base64 of [2, 2]
        return body


def test_a_repeated_cursor_stops_paging_with_an_error() -> None:
    """A server that hands out the same cursor twice makes pages() raise instead of looping."""
    ws = workspace()
    sb = IntercomSandbox(ws)
    sb.server.server_close()
    sb.server = _StuckServer(ws, sb.settings)
    with sb, client(sb, per_page=2) as c:
        with pytest.raises(IntercomError, match="same conversations search cursor twice"):
            list(c.pages(Window("conversations", at(START.timestamp() - 90 * 86_400), at(ws.now + 1))))
        assert sb.server.search_calls["conversations"] == 2


def test_admins_teams_and_tags_are_fetched_once_and_mapped() -> None:
    """Reference data is read with one GET each however often it is asked for."""
    ws = workspace()
    with sandbox(ws) as sb, client(sb) as c:
        for _ in range(3):
            admins, teams, tags = c.admins(), c.teams(), c.tags()
        gets = [path for method, path in sb.server.requests if method == "GET"]
    first = ws.admins[0]
    assert admins[first["id"]] == {"name": first["name"], "email": first["email"]}
    assert teams == {t["id"]: t["name"] for t in ws.teams}
    assert tags == {t["id"]: t["name"] for t in ws.tags}
    assert sorted(gets) == ["/admins", "/tags", "/teams"]


def test_lookup_contacts_batches_ids_and_follows_merges_to_the_survivor() -> None:
    """Live ids come from chunked id-IN searches, merged ids map to their survivor, unknown ids are absent;
    every contact found carries all its tags, read once for each contact with more than its list shows."""
    ws = workspace(contacts=40)
    live = sorted(ws.contacts)[:20]
    merged = sorted(ws.merged)
    with sandbox(ws) as sb, client(sb) as c:
        found = c.lookup_contacts([*live, *merged, "000000000000000000000000", live[0]])
        searches = sb.server.search_calls["contacts"]
        gets = [p for m, p in sb.server.requests if m == "GET"]
    assert merged
    assert {i: found[i]["id"] for i in live} == {i: i for i in live}
    assert {i: found[i]["id"] for i in merged} == ws.merged
    assert "000000000000000000000000" not in found
    assert searches == -(-(20 + len(merged) + 1) // MAX_IDS_PER_LOOKUP)  # one id-IN search per chunk
    tag_gets = [p for p in gets if p.endswith("/tags")]
    assert (
        len(gets) - len(tag_gets) == 2 * len(merged) + 1
    )  # 410 then the survivor per merged id; 404 unknown
    returned = set(live) | set(ws.merged.values())
    heavy = {i for i in returned if len(ws.contacts[i]["tags"]["data"]) > 10}
    assert heavy and sorted(tag_gets) == sorted(f"/contacts/{i}/tags" for i in heavy)
    assert {i: [t["id"] for t in contact["tags"]["data"]] for i, contact in found.items()} == {
        i: [t["id"] for t in ws.contacts[contact["id"]]["tags"]["data"]] for i, contact in found.items()
    }


def test_fetch_reads_one_object_by_id_and_follows_a_merged_contact() -> None:
    """`fetch` GETs a conversation, a ticket, a contact (with all its tags) by id; a merged contact comes back as
    its survivor with `merged_into`; an id Intercom lacks is `Fetched(None)` for every stream."""
    ws = workspace(contacts=40)
    conversation, ticket = sorted(ws.conversations)[0], sorted(ws.tickets)[0]
    heavy = next(i for i, contact in sorted(ws.contacts.items()) if len(contact["tags"]["data"]) > 10)
    gone, survivor = sorted(ws.merged.items())[0]
    with sandbox(ws) as sb, client(sb) as c:
        assert c.fetch("conversations", conversation) == Fetched(ws.conversations[conversation])
        assert c.fetch("tickets", ticket) == Fetched(ws.tickets[ticket])
        contact = c.fetch("contacts", heavy)
        merged = c.fetch("contacts", gone)
        absent = [c.fetch(stream, "999999") for stream in ("contacts", "conversations", "tickets")]
        gets = [path for method, path in sb.server.requests if method == "GET"]
    assert contact.merged_into is None and contact.raw is not None
    every = [tag["id"] for tag in ws.contacts[heavy]["tags"]["data"]]
    assert [tag["id"] for tag in contact.raw["tags"]["data"]] == every and len(every) > 10  # GET shows 10
    assert merged.merged_into == survivor and merged.raw is not None and merged.raw["id"] == survivor
    assert absent == [Fetched(None)] * 3
    assert gets[:3] == [f"/conversations/{conversation}", f"/tickets/{ticket}", f"/contacts/{heavy}"]
    assert f"/contacts/{gone}" in gets and f"/contacts/{survivor}" in gets  # the 410, then its Link


def test_the_client_sends_the_configured_intercom_version() -> None:
    """Intercom-Version comes from the client's version argument."""
    with sandbox() as sb, client(sb, version="2.15") as c:
        c.tags()
        assert sb.server.versions == {"2.15": 1}


def test_slow_responses_past_the_read_timeout_are_retried() -> None:
    """A reply slower than the read timeout counts as a timeout and is retried, not fatal."""
    ws = workspace()
    fake = FakeTime(EPOCH)
    with sandbox(ws) as sb, client(sb, fake, timeout=(1.0, 0.15)) as c:
        sb.server.faults = Faults(slow_rate=0.5, slow_seconds=0.3, seed=2)
        live = next(iter(ws.contacts))
        for _ in range(4):
            assert list(c.lookup_contacts([live])) == [live]  # one search each
    assert c.stats.retries == len(fake.waits) > 0
    assert c.stats.calls == 4 + c.stats.retries
