"""KlaviyoClient over loopback HTTP against the fake Klaviyo: volume, limits, rejections, 429s, resumption."""

from __future__ import annotations

from typing import Literal

import pytest

from etl.errors import KlaviyoError
from etl.klaviyo import Delivery, KlaviyoClient
from etl.klaviyo_batches import cut_profile_batches
from etl.models import OutboxItem
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY
from etl.sandbox.klaviyo_store import KlaviyoSettings
from etl.sandbox.server import Faults
from tests.klaviyo_fixtures import (
    EVENTS,
    IMPORTS,
    FakeClock,
    assert_requests_match_the_spec,
    client_for,
    event_item,
    fewest_event_requests,
    fewest_import_jobs,
    profile_item,
    sandbox,
)


@pytest.mark.slow
def test_25000_events_and_12000_profiles_go_in_the_fewest_requests() -> None:
    """25,000 events over 5,000 profiles and 12,000 ~700-byte profiles use the minimum requests, all spec-valid."""
    clock = FakeClock()
    events = [event_item(n, email=f"user{n % 5_000}@example.com") for n in range(25_000)]
    profiles = [profile_item(n, padding=420) for n in range(12_000)]
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        profile_delivery = client.send_profiles(profiles)
        event_delivery = client.send_events(events)
        assert_requests_match_the_spec(klaviyo)
        assert (
            (klaviyo.count("POST", EVENTS), klaviyo.count("POST", IMPORTS))
            == (
                fewest_event_requests(events),
                fewest_import_jobs(profiles),
            )
            == (25, 2)
        )
        assert (
            klaviyo.count("GET", IMPORTS) == 3
        )  # job 1 queued → processing → complete; job 2 complete by then
        assert len(klaviyo.events) == 25_000
        assert len(klaviyo.profiles) == 12_000
    assert (len(event_delivery.sent), event_delivery.failed) == (25_000, {})
    assert (sorted(profile_delivery.sent), profile_delivery.failed) == (list(range(12_000)), {})
    assert client.stats.by_status == {202: 27, 200: 3}


def test_big_events_are_cut_by_bytes_into_the_fewest_requests() -> None:
    """Events of ~20 KB are cut by the 5 MB limit, in as few requests as their bytes allow."""
    clock = FakeClock()
    events = [event_item(n, padding=20_000) for n in range(700)]
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_events(events)
        assert klaviyo.count("POST", EVENTS) == fewest_event_requests(events) == 3
        assert_requests_match_the_spec(klaviyo)
        assert len(klaviyo.events) == 700
    assert len(delivery.sent) == 700


@pytest.mark.parametrize(
    ("import_errors", "pointer"),
    [("data", "/data"), ("item", "/data/attributes/profiles/data/3/attributes/phone_number")],
)
def test_invalid_profiles_are_reported_with_klaviyos_error_and_the_rest_delivered(
    import_errors: Literal["data", "item"], pointer: str
) -> None:
    """An invalid email (400 for the request) and a bad phone (import error) fail those items only, whether
    the import error points only at `/data` (matched by its `original_payload`) or at the entry."""
    clock = FakeClock()
    items = [profile_item(n, phone="+442071838750") for n in range(6)]
    items[1] = profile_item(1, email="not-an-email")
    items[4] = profile_item(4, phone="+1555")
    settings = KlaviyoSettings(import_errors=import_errors)
    with sandbox(clock, settings) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_profiles(items)
        assert sorted(klaviyo.profiles) == [f"user{n}@example.com" for n in (0, 2, 3, 5)]
        assert klaviyo.count("POST", IMPORTS, status=400) == 1
        assert klaviyo.count("GET", f"{IMPORTS}/", status=200) == 3  # two polls and one page of errors
    assert sorted(delivery.sent) == [0, 2, 3, 5]
    assert delivery.failed == {
        1: "invalid: Invalid email address: 'not-an-email'. (/data/attributes/profiles/data/1/attributes/email)",
        4: f"invalid: Invalid phone number format: '+1555'. ({pointer})",
    }


def test_an_event_named_by_a_400_fails_and_the_rest_is_resent() -> None:
    """A 400 pointing at one event fails that item with Klaviyo's detail; the others arrive on the resend."""
    clock = FakeClock()
    items = [event_item(n, email="same@example.com") for n in range(5)]
    items[2] = event_item(2, email="same@example.com", metric="M" * 200)
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_events(items)
        assert [klaviyo.count("POST", EVENTS, status=s) for s in (400, 202)] == [1, 1]
        assert sorted(int(e.properties["Conversation ID"]) for e in klaviyo.events) == [0, 1, 3, 4]
    assert delivery.sent == (0, 1, 3, 4)
    assert list(delivery.failed) == [2]
    assert delivery.failed[2].startswith("invalid: Metric name must be less than 128 characters.")


def test_a_duplicate_event_is_sent_once_and_both_items_count_as_sent() -> None:
    """Two items with the same profile, metric and unique_id make one valid request; both are sent."""
    clock = FakeClock()
    items = [event_item(1, unique_id="u"), event_item(2, unique_id="u", email="user1@example.com")]
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_events(items)
        assert klaviyo.count("POST", EVENTS, status=202) == 1
        assert len(klaviyo.events) == 1
    assert delivery == Delivery(sent=(1, 2), failed={})


def test_a_429_storm_is_waited_out_for_exactly_retry_after() -> None:
    """Three 429s with Retry-After: 7 make three waits of 7 s, then the batch is delivered."""
    clock = FakeClock()
    with (
        sandbox(clock, KlaviyoSettings(storm_retry_after=7)) as klaviyo,
        client_for(klaviyo, clock) as client,
    ):
        klaviyo.faults.storm_requests = 3
        delivery = client.send_events([event_item(1)])
        assert klaviyo.count("POST", EVENTS, status=429) == 3
    assert clock.waits == [7.0, 7.0, 7.0]
    assert delivery.sent == (1,)
    assert (client.stats.throttled, client.stats.retries) == (3, 3)


def test_a_429_from_the_rate_limit_is_honoured_and_own_budget_is_paced() -> None:
    """A client that meets a spent budget waits Retry-After; one that sees RateLimit-Remaining 0 paces itself."""
    clock = FakeClock()
    settings = KlaviyoSettings(burst_per_second=2)
    with (
        sandbox(clock, settings) as klaviyo,
        client_for(klaviyo, clock) as first,
        client_for(klaviyo, clock) as other,
    ):
        first.send_events([event_item(1)])
        first.send_events([event_item(2)])  # the budget of this second is now spent
        other.send_events([event_item(3)])  # knows nothing of it: gets a 429
        [throttled] = [r for r in klaviyo.received if r.status == 429]
        assert clock.waits == [float(throttled.reply_headers["Retry-After"])] == [1.0]
        first.send_events([event_item(4)])  # its last reply said Remaining 0: it waits instead of hitting 429
        assert klaviyo.count("POST", EVENTS, status=429) == 1
        assert len(klaviyo.events) == 4


def test_server_errors_and_resets_are_retried_until_delivered() -> None:
    """5xx replies and dropped connections are retried with backoff; every event arrives once."""
    clock = FakeClock()
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        klaviyo.faults = Faults(error_rate=0.3, reset_rate=0.2, seed=4)
        delivery = client.send_events([event_item(n) for n in range(2_500)])
        assert len(klaviyo.events) == 2_500
    assert len(delivery.sent) == 2_500
    assert client.stats.retries > 0


def test_a_delivery_killed_half_way_and_resent_leaves_exactly_the_events() -> None:
    """Half the batches sent, a crash, then everything resent by a new client: Klaviyo holds each event once."""
    clock = FakeClock()
    events = [event_item(n, email=f"user{n % 700}@example.com") for n in range(5_000)]
    with sandbox(clock) as klaviyo:
        with client_for(klaviyo, clock) as before_crash:
            before_crash.send_events(events[:2_500])
        with client_for(klaviyo, clock) as after_restart:
            delivery = after_restart.send_events(events)
        stored = sorted((e.profile, e.metric, e.unique_id) for e in klaviyo.events)
        assert klaviyo.count("POST", EVENTS, status=202) == 3 + 5
    expected = sorted(
        (
            i.payload["attributes"]["profile"]["data"]["attributes"]["email"],
            "Replied to Conversation",
            i.unique_id,
        )
        for i in events
    )
    assert stored == expected
    assert len(delivery.sent) == 5_000


def test_a_rejected_key_stops_delivery_with_exit_code_4_and_no_retry() -> None:
    """A wrong API key raises KlaviyoError naming the env var, after one request, without leaking the key."""
    clock = FakeClock()
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock, api_key="pk_wrong_secret") as client:
        with pytest.raises(KlaviyoError) as raised:
            client.send_events([event_item(1)])
        assert klaviyo.count("POST", EVENTS) == 1
    assert raised.value.exit_code == 4
    assert str(raised.value) == (
        "Klaviyo rejected the credentials (401): set KLAVIYO_API_KEY to a valid private API key "
        "(Incorrect authentication credentials.)"
    )


def test_an_import_job_that_never_completes_stops_with_a_clear_error() -> None:
    """A job still queued past the timeout raises KlaviyoError saying its profiles stay pending."""
    clock = FakeClock()
    with (
        sandbox(clock, KlaviyoSettings(queued_seconds=10_000)) as klaviyo,
        client_for(klaviyo, clock) as client,
    ):
        client.job_timeout = 30
        with pytest.raises(KlaviyoError, match=r"is still queued after 30 s; run again later"):
            client.send_profiles([profile_item(1)])
        assert 30 <= klaviyo.count("GET", IMPORTS) <= 32


def test_check_reads_once_with_a_good_key_and_names_the_env_var_with_a_bad_one() -> None:
    """`check()` costs one GET; a key without read scopes fails with a 403 naming KLAVIYO_API_KEY."""
    clock = FakeClock()
    keys = {"pk_good": frozenset({"profiles:read", "lists:read"}), "pk_writer": frozenset({"events:write"})}
    with sandbox(clock, KlaviyoSettings(api_keys=keys)) as klaviyo:
        with client_for(klaviyo, clock, api_key="pk_good") as good:
            good.check()
        with client_for(klaviyo, clock, api_key="pk_writer") as writer, pytest.raises(KlaviyoError) as raised:
            writer.check()
        assert [(r.method, r.status) for r in klaviyo.received] == [("GET", 200), ("GET", 403)]
    assert str(raised.value).startswith(
        "Klaviyo refused access (403) to GET /api/profile-bulk-import-jobs: give the private API key in KLAVIYO_API_KEY "
        "the scopes this job needs (This API key is missing required scopes: lists:read, profiles:read.)"
    )


def test_import_errors_over_several_pages_are_all_read() -> None:
    """150 bad phone numbers take two pages of import-errors; all 150 fail and the other 50 are sent."""
    clock = FakeClock()
    items = [profile_item(n, phone="+1555" if n % 4 else None) for n in range(200)]
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_profiles(items)
        assert klaviyo.count("GET", f"{IMPORTS}/", status=200) == 2 + 2  # two polls, two pages of errors
    assert sorted(delivery.failed) == [n for n in range(200) if n % 4]
    assert sorted(delivery.sent) == [n for n in range(200) if not n % 4]


def test_a_400_for_the_whole_request_is_split_until_every_event_is_delivered() -> None:
    """A 400 naming only the list (here: an account limit of 10 events, tighter than ours) names no item:
    the request is split in halves, each half is accepted, nothing fails."""
    clock = FakeClock()
    with sandbox(clock, KlaviyoSettings(max_events=10)) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_events([event_item(n) for n in range(11)])
        assert [(r.status, len(r.json()["data"]["attributes"]["events-bulk-create"]["data"]))
                for r in klaviyo.received] == [(400, 11), (202, 5), (202, 6)]  # fmt: skip
        assert len(klaviyo.events) == 11
    assert delivery == Delivery(sent=tuple(range(11)), failed={})


def test_a_413_is_split_until_every_profile_fits() -> None:
    """A 413 (an account byte limit tighter than ours) names no item: halves are submitted as two jobs."""
    clock = FakeClock()
    items = [profile_item(n, padding=400) for n in range(8)]
    limit = len(client_body_of(items)) - 1
    with (
        sandbox(clock, KlaviyoSettings(max_request_bytes=limit)) as klaviyo,
        client_for(klaviyo, clock) as client,
    ):
        delivery = client.send_profiles(items)
        assert [(r.method, r.status) for r in klaviyo.received if r.method == "POST"] == [
            ("POST", 413), ("POST", 202), ("POST", 202)
        ]  # fmt: skip
        assert len(klaviyo.profiles) == 8
    assert (sorted(delivery.sent), delivery.failed) == (list(range(8)), {})


def client_body_of(items: list[OutboxItem]) -> bytes:
    """The one request body the client cuts for these profiles."""
    (batch,), _ = cut_profile_batches(items)
    return batch.body


def test_a_400_about_a_request_parameter_stops_delivery_and_fails_nothing() -> None:
    """A 400 about a header (a malformed revision) is the request's fault, not an item's: no splitting, exit
    4, one request, the items stay pending (nothing sent, nothing failed)."""
    clock = FakeClock()
    with sandbox(clock) as klaviyo:
        client = KlaviyoClient(
            klaviyo.url, SANDBOX_API_KEY, api_key_env="KLAVIYO_API_KEY", revision="2026-7-15",
            sleep=clock.sleep, clock=clock,
        )  # fmt: skip
        with client, pytest.raises(KlaviyoError) as raised:
            client.send_events([event_item(n) for n in range(4)])
        assert klaviyo.count("POST", EVENTS) == 1
    assert raised.value.exit_code == 4
    assert str(raised.value) == (
        "Klaviyo rejected POST /api/event-bulk-create-jobs (400): invalid: Missing or invalid required header "
        "'revision'; send a revision such as 2026-07-15.; the request itself is at fault, not an item "
        "(the items stay pending)"
    )
