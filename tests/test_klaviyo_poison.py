"""Klaviyo as it really behaves (docs/design.md §6): poison items refused by a 400 that names no item, and
import errors that point only at `/data`. Over loopback HTTP against the fake Klaviyo, and through real runs
on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from etl.klaviyo import profile_resource
from etl.models import Identity, OutboxEntry, OutboxItem, Profile, RunOptions
from etl.runner import run_jobs
from etl.sandbox.klaviyo_store import KlaviyoSettings
from etl.state import StateStore
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
from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, outbox_rows, sandboxes, settings

POISON_EVENT_ERROR = (
    "invalid: The payload provided in the request is invalid. (/data/attributes/events-bulk-create)"
)
POISON_PROFILE_ERROR = "invalid: The payload provided in the request is invalid. (/data)"
REJECTED_LINE = "etl: error: job shop: Klaviyo rejected 1 item(s); see `etl outbox shop --status failed`"


def isolation_bound(pending: int) -> int:
    """Extra requests one poison item may cost among `pending`: a request and its sibling on every halving."""
    return 2 * math.ceil(math.log2(pending)) + 1


def phone_only_profile(n: int, phone: str) -> OutboxItem:
    """Outbox item `n`: a profile known only by its phone number."""
    profile = Profile(
        unique_id=f"intercom:contact:c{n}:0123456789abcdef",
        identity=Identity(phone_number=phone, contact_id=f"c{n}"),
        first_name="Grace",
    )
    return OutboxItem(n, "demo", "profile", profile.unique_id, profile_resource(profile))


@contextmanager
def klaviyo_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings the Klaviyo client logs meanwhile (a handler of its own: `logs.setup` may have stopped
    propagation to the root logger that caplog listens on)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("etl.klaviyo")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# -- poison items, client level -----------------------------------------------------------------------
def test_a_poison_event_among_1000_is_failed_alone_within_2_log2_extra_requests() -> None:
    """One event Klaviyo refuses with a 400 naming no item: the request is halved until the event is alone;
    it fails with Klaviyo's text, the other 999 are delivered, at most 2·ceil(log2 1000) + 1 extra requests."""
    clock = FakeClock()
    items = [event_item(n) for n in range(1_000)]
    settings = KlaviyoSettings(poison_events=frozenset({items[637].unique_id}))
    with sandbox(clock, settings) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_events(items)
        requests = klaviyo.count("POST", EVENTS)
        fewest = fewest_event_requests(items)
        assert fewest < requests <= fewest + isolation_bound(1_000)
        assert requests == 1 + 2 * 10  # the figure: one request and both halves on each of 10 levels
        assert klaviyo.count("POST", EVENTS, status=400) == 1 + 10
        assert sorted(int(e.properties["Conversation ID"]) for e in klaviyo.events) == [
            n for n in range(1_000) if n != 637
        ]
        assert_requests_match_the_spec(klaviyo)
    assert delivery.failed == {637: POISON_EVENT_ERROR}
    assert sorted(delivery.sent) == [n for n in range(1_000) if n != 637]


def test_two_poison_events_and_a_named_one_fail_alone_and_the_rest_is_delivered() -> None:
    """Poison items and an item a 400 names in the same batch: the named one fails at once, each poison is
    isolated, all 997 others arrive."""
    clock = FakeClock()
    items = [event_item(n, email=f"user{n % 300}@example.com") for n in range(1_000)]
    items[500] = event_item(500, metric="M" * 200)  # Klaviyo names this one (metric name too long)
    settings = KlaviyoSettings(poison_events=frozenset({items[3].unique_id, items[998].unique_id}))
    with sandbox(clock, settings) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_events(items)
        assert klaviyo.count("POST", EVENTS) <= 2 + 2 * isolation_bound(999)
        assert len(klaviyo.events) == 997
        assert_requests_match_the_spec(klaviyo)
    assert sorted(delivery.failed) == [3, 500, 998]
    assert delivery.failed[3] == delivery.failed[998] == POISON_EVENT_ERROR
    assert delivery.failed[500].startswith("invalid: Metric name must be less than 128 characters.")
    assert len(delivery.sent) == 997


def test_a_poison_profile_among_1000_is_failed_alone_and_the_rest_imported() -> None:
    """A profile that makes the import submission a 400 naming no item: halves are submitted (each accepted
    part is its own job) until it is alone; only it fails, within 2·ceil(log2 1000) + 1 extra submissions."""
    clock = FakeClock()
    items = [profile_item(n) for n in range(1_000)]
    settings = KlaviyoSettings(poison_profiles=frozenset({"user421@example.com"}))
    with sandbox(clock, settings) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_profiles(items)
        submissions = klaviyo.count("POST", IMPORTS)
        fewest = fewest_import_jobs(items)
        assert fewest < submissions <= fewest + isolation_bound(1_000)
        assert klaviyo.count("POST", IMPORTS, status=202) == len(klaviyo.store.jobs()) == 10
        assert sorted(klaviyo.profiles) == sorted(f"user{n}@example.com" for n in range(1_000) if n != 421)
        assert_requests_match_the_spec(klaviyo)
    assert delivery.failed == {421: POISON_PROFILE_ERROR}
    assert sorted(delivery.sent) == [n for n in range(1_000) if n != 421]


# -- import errors that point only at /data ---------------------------------------------------------------
def test_an_import_error_pointing_only_at_data_fails_exactly_its_profile_by_email_or_phone() -> None:
    """Import errors whose pointer is `/data` (the default of the sandbox, as in the field) are matched by
    the `original_payload`: by email (any case), and by phone for a profile without email. The rest of the
    job is sent, not failed with it."""
    clock = FakeClock()
    items = [profile_item(n, phone=f"+4420718387{50 + n}") for n in range(6)]
    items[2] = profile_item(2, email="User2@Example.com", phone="+1555")  # invalid phone: an import error
    items[4] = phone_only_profile(4, "+1556")  # invalid too, and no email: matched by its phone
    items[5] = phone_only_profile(5, "+442071838799")
    with sandbox(clock) as klaviyo, client_for(klaviyo, clock) as client:
        delivery = client.send_profiles(items)
        assert klaviyo.count("POST", IMPORTS, status=202) == 1
    assert delivery.failed == {
        2: "invalid: Invalid phone number format: '+1555'. (/data)",
        4: "invalid: Invalid phone number format: '+1556'. (/data)",
    }
    assert sorted(delivery.sent) == [0, 1, 3, 5]


def test_an_import_error_that_names_no_profile_fails_nothing_and_is_logged() -> None:
    """An import error with pointer `/data` and no `original_payload` ties to no profile: nothing is failed
    (Klaviyo imported the others) and a warning carries Klaviyo's text."""
    clock = FakeClock()
    items = [profile_item(n) for n in range(3)]
    items[1] = profile_item(1, phone="+1555")
    with (
        sandbox(clock, KlaviyoSettings(import_errors="none")) as klaviyo,
        client_for(klaviyo, clock) as client,
        klaviyo_warnings() as warnings,
    ):
        delivery = client.send_profiles(items)
        (job,) = klaviyo.store.jobs()
    assert (sorted(delivery.sent), delivery.failed) == ([0, 1, 2], {})
    assert [(r.levelname, r.getMessage(), r.fields) for r in warnings] == [  # type: ignore[attr-defined]
        (
            "WARNING",
            "Klaviyo reported an import error that names no profile of the job",
            {"import_job": job.id, "error": "invalid: Invalid phone number format: '+1555'. (/data)"},
        )
    ]


# -- real runs ------------------------------------------------------------------------------------------
@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IC_ENV, IC_TOKEN)
    monkeypatch.setenv(KL_ENV, KL_KEY)


FAST = {"burst_per_second": 1_000, "steady_per_minute": 100_000}  # no rate-limit waits in real time


@pytest.mark.usefixtures("secrets_env")
def test_a_poison_event_among_1000_pending_fails_alone_and_the_next_run_exits_0(
    db_url: str, store: StateStore
) -> None:
    """`etl run` with 1,000 pending events, one poisoned: exit 6, that event failed with Klaviyo's text, the
    999 others in Klaviyo, within 2·ceil(log2 1000) + 1 requests of the minimum; the next run exits 0 and
    sends nothing again."""
    with sandboxes(**FAST) as boxes:
        config = settings(db_url, boxes.job())
        assert run_jobs(config, [], RunOptions(), stderr=io.StringIO()) == 0  # the workspace, delivered
        items = [event_item(n, unique_id=f"etl-test:event:{n}") for n in range(1_000)]
        with store.transaction() as conn:
            entries = [OutboxEntry("event", i.unique_id, i.payload) for i in items]
            store.enqueue(conn, "shop", entries, None, datetime.now(UTC))
        assert len(outbox_rows(store, "shop", status="pending")) == 1_000
        boxes.klaviyo.settings.poison_events = frozenset({"etl-test:event:637"})
        before = len(boxes.klaviyo.received)

        stderr = io.StringIO()
        assert run_jobs(config, [], RunOptions(), stderr=stderr) == 6
        assert stderr.getvalue().splitlines()[-1] == REJECTED_LINE
        posted = [r for r in boxes.klaviyo.received[before:] if r.method == "POST"]
        fewest = fewest_event_requests(items)
        assert all(r.path.startswith(EVENTS) for r in posted)
        assert fewest < len(posted) <= fewest + isolation_bound(1_000)
        (failed,) = outbox_rows(store, "shop", status="failed")
        assert (failed["unique_id"], failed["last_error"]) == ("etl-test:event:637", POISON_EVENT_ERROR)
        stored = {e.unique_id for e in boxes.klaviyo.events}
        assert {i.unique_id for i in items} - stored == {"etl-test:event:637"}
        assert outbox_rows(store, "shop", status="pending") == []
        assert_requests_match_the_spec(boxes.klaviyo)

        before = len(boxes.klaviyo.received)
        assert run_jobs(config, [], RunOptions(), stderr=io.StringIO()) == 0
        assert [r for r in boxes.klaviyo.received[before:] if r.method == "POST"] == []
        assert [r["unique_id"] for r in outbox_rows(store, "shop", status="failed")] == ["etl-test:event:637"]


@pytest.mark.usefixtures("secrets_env")
def test_a_poison_profile_fails_alone_and_the_next_run_exits_0(db_url: str, store: StateStore) -> None:
    """`etl run` over a workspace where Klaviyo refuses one contact's profile at submission (400 naming no
    item): exit 6, only that profile failed, every other profile imported within 2·ceil(log2 n) + 1 extra
    submissions; the next run exits 0 without submitting it again."""
    with sandboxes(**FAST) as boxes:
        contact = next(c for c in boxes.workspace.contacts.values() if "@" in (c.get("email") or ""))
        poison = contact["email"].strip().lower()
        boxes.klaviyo.settings.poison_profiles = frozenset({poison})
        config = settings(db_url, boxes.job())

        stderr = io.StringIO()
        assert run_jobs(config, [], RunOptions(), stderr=stderr) == 6
        assert stderr.getvalue().splitlines()[-1] == REJECTED_LINE
        (failed,) = outbox_rows(store, "shop", status="failed")
        assert failed["kind"] == "profile" and failed["unique_id"].startswith(
            f"intercom:contact:{contact['id']}:"
        )
        assert failed["last_error"] == POISON_PROFILE_ERROR
        profiles = outbox_rows(store, "shop", kind="profile")
        sent = [r for r in profiles if r["status"] == "sent"]
        assert len(sent) == len(profiles) - 1 > 20
        assert poison not in boxes.klaviyo.profiles
        assert len(boxes.klaviyo.profiles) == len(sent)
        items = [OutboxItem(r["id"], "shop", "profile", r["unique_id"], r["payload"]) for r in profiles]
        fewest = fewest_import_jobs(items)
        assert fewest < boxes.klaviyo.count("POST", IMPORTS) <= fewest + isolation_bound(len(items))
        assert_requests_match_the_spec(boxes.klaviyo)

        before = len(boxes.klaviyo.received)
        assert run_jobs(config, [], RunOptions(), stderr=io.StringIO()) == 0
        assert [r for r in boxes.klaviyo.received[before:] if r.method == "POST"] == []
