"""Properties of the pure core over every object shape the Intercom 2.16 spec allows, nulls and gaps included."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.events import diff
from etl.profiles import to_profile
from etl.snapshots import to_snapshot
from tests.pure_fixtures import START, context

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAMS = ("contacts", "conversations", "tickets")


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """The spec's value, or null (every field may also be missing: see `shaped`)."""
    return st.none() | strategy


def shaped(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """An object whose every field is optional and nullable."""
    return st.fixed_dictionaries({}, optional={name: maybe(strategy) for name, strategy in fields.items()})


def spec_object(core: dict[str, st.SearchStrategy], **fields: st.SearchStrategy) -> st.SearchStrategy:
    """An object with an id whose `core` fields (those rules read) are often all set, so events do fire."""
    usual = st.fixed_dictionaries(core) | shaped(**core)
    return st.builds(lambda ident, rest, main: {"id": ident, **rest, **main}, IDS, shaped(**fields), usual)


RECENT = st.integers(1_767_225_600, 1_772_000_000)  # from start_date (2026-01-01) on
TIMES = RECENT | st.integers(1_760_000_000, 1_790_000_000) | st.integers()  # mostly near start_date
IDS = st.text("0123456789ab", min_size=1, max_size=4)
TEXT = st.text(max_size=12)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=10,
)
CATEGORIES = st.sampled_from(["submitted", "in_progress", "waiting_on_customer", "resolved"])
CONTACT_IDS = st.sampled_from(["c-mail", "c-phone", "c-none", "x"])
CONTACTS = st.fixed_dictionaries(
    {"contacts": st.lists(st.fixed_dictionaries({"id": CONTACT_IDS}), min_size=1)}
) | shaped(type=st.just("contact.list"), contacts=st.lists(shaped(type=st.just("contact"), id=CONTACT_IDS)))
ASSIGNEE = st.integers(0, 1000) | st.just(991) | st.just(501)

CONVERSATION = spec_object(
    core={
        "created_at": TIMES,
        "updated_at": TIMES,
        "read": st.booleans(),
        "contacts": CONTACTS,
        "statistics": shaped(
            last_contact_reply_at=TIMES,
            count_reopens=st.integers(0, 9),
            count_assignments=st.integers(0, 9),
            count_conversation_parts=st.integers(0, 99),
        ),
        "conversation_rating": shaped(
            rating=st.integers(1, 5), remark=TEXT, created_at=TIMES, updated_at=TIMES
        ),
    },
    type=st.just("conversation"),
    title=TEXT,
    waiting_since=TIMES,
    snoozed_until=TIMES,
    open=st.booleans(),
    state=st.sampled_from(["open", "closed", "snoozed"]),
    priority=st.sampled_from(["none", "low", "high", "urgent"]),
    admin_assignee_id=ASSIGNEE,
    team_assignee_id=ASSIGNEE,
    tags=shaped(type=st.just("tag.list"), tags=st.lists(shaped(id=IDS, name=TEXT, applied_at=TIMES))),
    source=shaped(type=TEXT, id=IDS, delivered_as=TEXT),
    custom_attributes=st.dictionaries(TEXT, JSON, max_size=4),
    sla_applied=shaped(sla_name=TEXT, sla_status=st.sampled_from(["hit", "missed", "cancelled", "active"])),
    conversation_parts=shaped(total_count=st.integers(0, 500)),
)
PART = shaped(
    type=st.just("ticket_part"),
    id=IDS,
    part_type=st.sampled_from(["comment", "note", "ticket_state_updated", "assignment"]),
    previous_ticket_state=CATEGORIES,
    ticket_state=CATEGORIES,
    created_at=TIMES,
    author=shaped(type=st.sampled_from(["admin", "bot", "team", "user"]), id=IDS),
)
TICKET = spec_object(
    core={
        "created_at": TIMES,
        "updated_at": TIMES,
        "contacts": CONTACTS,
        "ticket_state": shaped(category=CATEGORIES, id=IDS),
        "ticket_parts": shaped(ticket_parts=st.lists(PART, max_size=6), total_count=st.integers(0, 500)),
    },
    type=st.just("ticket"),
    ticket_id=IDS,
    category=st.sampled_from(["Customer", "Back-office", "Tracker"]),
    ticket_attributes=st.dictionaries(
        st.sampled_from(["_default_title_", "_default_description_", "x"]), JSON
    ),
    ticket_type=shaped(name=TEXT, id=IDS),
    admin_assignee_id=ASSIGNEE,
    team_assignee_id=ASSIGNEE,
    open=st.booleans(),
    snoozed_until=TIMES,
    is_shared=st.booleans(),
)
CONTACT = spec_object(
    core={
        "email": st.sampled_from(["a@example.com", " B@Example.com", "bad", ""]) | TEXT,
        "phone": st.sampled_from(["+14155550100", "(415) 555-0100", "123"]) | TEXT,
    },
    role=st.sampled_from(["user", "lead"]),
    name=TEXT,
    has_hard_bounced=st.booleans(),
    marked_email_as_spam=st.booleans(),
    unsubscribed_from_emails=st.booleans(),
    custom_attributes=st.dictionaries(TEXT, JSON, max_size=4),
    avatar=shaped(image_url=TEXT),
    location=shaped(city=TEXT, country=TEXT, region=TEXT),
    tags=shaped(data=st.lists(shaped(id=IDS))),
    opted_out_subscription_types=shaped(total_count=st.integers(0, 9)),
)
OBJECTS = {"contacts": CONTACT, "conversations": CONVERSATION, "tickets": TICKET}
ANY_OBJECT = st.sampled_from(STREAMS).flatmap(lambda s: st.tuples(st.just(s), OBJECTS[s]))


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        pairs = list(value.items())
        rng.shuffle(pairs)
        return {key: shuffled(item, rng) for key, item in pairs}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


@SETTINGS
@given(ANY_OBJECT)
def test_an_object_compared_with_itself_raises_nothing(stream_and_raw):
    """diff(s, s) is empty for every object: re-reading never emits."""
    stream, raw = stream_and_raw
    snapshot = to_snapshot(stream, raw)
    assert diff(snapshot, snapshot, context()).events == ()
    assert diff(snapshot, to_snapshot(stream, json.loads(json.dumps(raw))), context()).events == ()


@SETTINGS
@given(ANY_OBJECT, st.randoms(use_true_random=False))
def test_digest_and_unique_ids_are_stable_under_key_order_and_rereads(stream_and_raw, rng):
    """The digest and every unique_id depend on content only, not on key order or the read."""
    stream, raw = stream_and_raw
    one, two = to_snapshot(stream, raw), to_snapshot(stream, shuffled(raw, rng))
    assert one.digest == two.digest
    assert one.data == two.data
    first = [(e.unique_id, e.time) for e in diff(None, one, context()).events]
    assert first == [(e.unique_id, e.time) for e in diff(None, two, context()).events]


@SETTINGS
@given(ANY_OBJECT, ANY_OBJECT)
def test_any_pair_of_spec_shaped_objects_maps_without_exception(first, second):
    """Snapshots, events and profiles come out of any spec-shaped objects, and keep their promises."""
    (stream, raw), (_, later_raw) = first, second
    cur = to_snapshot(stream, raw)
    assert json.loads(json.dumps(cur.data)) == cur.data
    assert cur.updated_at.utcoffset() is not None
    later = to_snapshot(stream, {**later_raw, "id": raw["id"]}) if second[0] == stream else cur
    for prev, now in ((None, cur), (cur, later)):
        inference = diff(prev, now, context())
        uids = [event.unique_id for event in inference.events]
        assert len(uids) == len(set(uids))
        for event in inference.events:
            assert event.time >= START
            assert event.identity.email or event.identity.phone_number
            assert json.loads(json.dumps(event.properties)) == event.properties  # stored as JSON
            assert all(value not in (None, "", 0) or value is False for value in event.properties.values())
    if stream == "contacts":
        profile, _ = to_profile(cur, {"1": "vip"}, "US")
        assert profile is None or profile.unique_id.startswith(f"intercom:contact:{cur.object_id}:")


USER_PARTS = st.lists(
    st.tuples(st.integers(1_770_000_000, 1_770_100_000), st.booleans()), min_size=1, max_size=8
).map(
    lambda rows: [
        {
            "id": str(i),
            "part_type": "comment",
            "author": {"type": "user" if user else "admin"},
            "created_at": t,
        }
        for i, (t, user) in enumerate(rows)
    ]
)


@SETTINGS
@given(USER_PARTS, st.integers(0, 8))
def test_ticket_replies_split_over_two_polls_equal_those_of_one_poll(parts, cut):
    """Polling a ticket's history in two steps yields the same replies as reading it once."""
    ordered = sorted(parts, key=lambda p: (p["created_at"], int(p["id"])))
    base = {"id": "7", "created_at": 1_769_990_000, "contacts": {"contacts": [{"id": "c-mail"}]}}

    def snap(subset):
        return to_snapshot("tickets", {**base, "ticket_parts": {"ticket_parts": subset}})

    def replies(prev, cur):
        return {e.unique_id for e in diff(prev, cur, context()).events if e.metric == "Replied to Ticket"}

    partial, full = snap(ordered[:cut]), snap(ordered)
    assert replies(None, partial) | replies(partial, full) == replies(None, full)
    assert replies(None, partial).isdisjoint(replies(partial, full))


# -- junk: what a misbehaving API or a proxy may serve instead of the spec's shapes ------------------------
ODD_TEXT = st.lists(
    st.sampled_from(
        ["\ud83d", "a\udc00b", "nul\x00", "\u202eevil\u202c", "🎉👩‍👩‍👧", "ﷺ", "\ufeff", "x" * 5_000]
    )
    | st.text(max_size=4),
    min_size=1,
    max_size=3,
).map("".join)  # lone surrogates (valid JSON escapes, invalid UTF-8), NUL, RTL override, emoji sequences, BOM
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ODD_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ODD_TEXT, children, max_size=3),
    max_leaves=8,
)


@st.composite
def junked(draw: st.DrawFn) -> tuple[str, Any]:
    """A spec-shaped object with some fields (the id and updated_at too) replaced by junk of any type."""
    stream, raw = draw(ANY_OBJECT)
    keys = [*sorted(raw), "id", "updated_at", "custom_attributes", "contacts", "ticket_parts"]
    for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
        raw[key] = draw(JUNK)
    for key in ("name", "email", "title", "custom_attributes"):  # fields kept as text: odd text lands there
        if draw(st.booleans()):
            raw[key] = draw(ODD_TEXT | st.dictionaries(ODD_TEXT, JUNK, min_size=1, max_size=3))
    return stream, draw(st.sampled_from([raw, raw, raw, draw(JUNK)]))  # sometimes not an object at all


@SETTINGS
@given(junked(), junked())
def test_junk_objects_are_refused_by_the_reader_or_map_to_storable_snapshots(first, second):
    """Whatever Intercom serves, the reader names why it cannot use it, or the pure core maps it without an
    exception into snapshots, events and profiles that UTF-8, SQLite's and PostgreSQL's JSON can hold."""
    from etl.intercom import malformed

    (stream, raw), (_, later_raw) = first, second
    problem = malformed(raw)
    if problem is not None:
        assert problem.startswith(("not an object", "no id", "updated_at is not a UNIX time"))
        assert problem.isprintable() and problem.encode("ascii", "backslashreplace")
        return
    cur = to_snapshot(stream, raw)
    later = to_snapshot(stream, {**later_raw, "id": raw["id"]}) if isinstance(later_raw, dict) else cur
    encoded = json.dumps(cur.data, ensure_ascii=False, allow_nan=False)
    assert "\x00" not in encoded and encoded.encode("utf-8")  # jsonb refuses NUL; UTF-8 lone surrogates
    for prev, now in ((None, cur), (cur, later)):
        for event in diff(prev, now, context()).events:
            json.dumps(event.properties, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if stream == "contacts":
        profile, _ = to_profile(cur, {"1": "vip"}, "US")
        if profile is not None:
            json.dumps(profile.properties, ensure_ascii=False, allow_nan=False).encode("utf-8")
