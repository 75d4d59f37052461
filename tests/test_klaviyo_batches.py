"""The JSON:API resources and the cutting of outbox items into bulk request bodies (pure, no HTTP)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from etl.klaviyo import event_resource, profile_resource
from etl.klaviyo_batches import (
    MAX_EVENTS_PER_REQUEST,
    MAX_REQUEST_BYTES,
    cut_event_batches,
    cut_profile_batches,
)
from etl.models import Event, Identity, OutboxItem, Profile
from tests.klaviyo_fixtures import event_item, profile_item, schema_errors


def test_event_resource_is_the_bulk_entry_of_one_event() -> None:
    """An event becomes one event-bulk-create resource with the profile identifiers and the event."""
    event = Event(
        metric="Resolved Ticket",
        unique_id="intercom:ticket:7:state:resolved:1780000000",
        time=datetime(2026, 5, 28, 20, 26, 40, 123456, tzinfo=UTC),
        identity=Identity(email="ada@example.com", phone_number="+442071838750", contact_id="c7"),
        properties={"Ticket ID": "7", "Is Shared": False},
        backfill=True,
    )
    assert event_resource(event) == {
        "type": "event-bulk-create",
        "attributes": {
            "profile": {
                "data": {
                    "type": "profile",
                    "attributes": {"email": "ada@example.com", "phone_number": "+442071838750"},
                }
            },
            "events": {
                "data": [
                    {
                        "type": "event",
                        "attributes": {
                            "properties": {"Ticket ID": "7", "Is Shared": False},
                            "time": "2026-05-28T20:26:40+00:00",
                            "unique_id": "intercom:ticket:7:state:resolved:1780000000",
                            "backfill": True,
                            "metric": {"data": {"type": "metric", "attributes": {"name": "Resolved Ticket"}}},
                        },
                    }
                ]
            },
        },
    }


def test_profile_resource_leaves_out_absent_values_and_adds_the_contact_id() -> None:
    """A profile becomes a `profile` resource without None values, carrying intercom_contact_id."""
    profile = Profile(
        unique_id="intercom:contact:c1:abc",
        identity=Identity(phone_number="+14155550123", contact_id="c1"),
        first_name="Grace",
        location={"city": "Arlington", "region": None},  # type: ignore[dict-item]
        properties={"intercom_tags": ["vip"]},
    )
    assert profile_resource(profile) == {
        "type": "profile",
        "attributes": {
            "phone_number": "+14155550123",
            "first_name": "Grace",
            "location": {"city": "Arlington"},
            "properties": {"intercom_tags": ["vip"], "intercom_contact_id": "c1"},
        },
    }


def test_profile_resource_unsets_cleared_properties_in_its_meta() -> None:
    """A profile with cleared properties carries them in `meta.patch_properties.unset`, valid per the spec."""
    profile = Profile("u1", Identity(email="a@x.io"), properties={"n": 0}, unset=("intercom_tags",))
    resource = profile_resource(profile)
    assert resource == {
        "type": "profile",
        "attributes": {"email": "a@x.io", "properties": {"n": 0}},
        "meta": {"patch_properties": {"unset": ["intercom_tags"]}},
    }
    body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [resource]}}}}
    assert schema_errors("requests", "ProfileImportJobCreateQuery", body) == []


def test_batch_bodies_are_valid_against_the_spec() -> None:
    """Bodies cut from resources validate against EventsBulkCreateJob and ProfileImportJobCreateQuery."""
    event_batches, _ = cut_event_batches([event_item(n, email="same@example.com") for n in range(3)])
    profile_batches, _ = cut_profile_batches([profile_item(n) for n in range(3)])
    assert schema_errors("requests", "EventsBulkCreateJob", json.loads(event_batches[0].body)) == []
    assert schema_errors("requests", "ProfileImportJobCreateQuery", json.loads(profile_batches[0].body)) == []


def test_the_contract_check_catches_a_wrong_body() -> None:
    """The spec fragment rejects a wrong type name and an event without its metric."""
    body = json.loads(cut_event_batches([event_item(1)])[0][0].body)
    body["data"]["type"] = "event-bulk-create"
    del body["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["events"]["data"][0][
        "attributes"
    ]["metric"]
    assert len(schema_errors("requests", "EventsBulkCreateJob", body)) == 2


def test_events_of_one_profile_share_one_resource() -> None:
    """Events of the same profile are merged into one event-bulk-create resource, in order."""
    items = [event_item(1, email="a@x.io"), event_item(2, email="b@x.io"), event_item(3, email="a@x.io")]
    [batch], too_big = cut_event_batches(items)
    groups = json.loads(batch.body)["data"]["attributes"]["events-bulk-create"]["data"]
    assert too_big == {}
    assert [g["attributes"]["profile"]["data"]["attributes"]["email"] for g in groups] == ["a@x.io", "b@x.io"]
    assert batch.groups == ((1, 3), (2,))
    assert batch.ids_at(
        "/data/attributes/events-bulk-create/data/0/attributes/events/data/1/attributes/time"
    ) == (3,)
    assert batch.ids_at(
        "/data/attributes/events-bulk-create/data/0/attributes/profile/data/attributes/email"
    ) == (
        1,
        3,
    )


def test_a_duplicate_event_is_dropped_from_the_request_and_follows_the_first() -> None:
    """A second (profile, metric, unique_id) is left out of the body and settled with the kept event."""
    items = [event_item(1, email="a@x.io", unique_id="u1"), event_item(2, email="a@x.io", unique_id="u1")]
    [batch], _ = cut_event_batches(items)
    assert batch.event_count == 1
    assert batch.item_ids == (1, 2)
    assert batch.duplicates == {2: 1}


def test_an_event_too_big_for_any_request_is_rejected_locally() -> None:
    """An event larger than the byte limit is never sent and gets a message saying what to do."""
    batches, too_big = cut_event_batches([event_item(1, padding=600)], max_bytes=500)
    assert batches == []
    assert "exceeds Klaviyo's bulk limit" in too_big[1] and "shorten its properties" in too_big[1]


def test_a_profile_over_100_kb_is_rejected_locally() -> None:
    """A profile resource over 100 KB is failed before sending; the others still go."""
    batches, too_big = cut_profile_batches([profile_item(1, padding=100_001), profile_item(2)])
    assert list(too_big) == [1]
    assert "100,000 bytes per profile" in too_big[1]
    assert [b.item_ids for b in batches] == [(2,)]


def test_the_newer_profile_of_a_contact_replaces_the_older_in_one_job() -> None:
    """Two payloads of one contact in a job: the later one is sent, at the first position, settling both."""
    older = profile_item(1, email="a@x.io")
    newer = OutboxItem(2, "demo", "profile", "u2", {"type": "profile", "attributes": {"email": "a@x.io"}})
    [batch], _ = cut_profile_batches([older, newer, profile_item(3)])
    profiles = json.loads(batch.body)["data"]["attributes"]["profiles"]["data"]
    assert profiles[0] == newer.payload
    assert batch.positions == ((1, 2), (3,))
    assert batch.ids_at("/data/attributes/profiles/data/0/attributes/email") == (1, 2)


def test_a_newer_profile_keeps_the_removals_of_the_older_it_replaces() -> None:
    """Tags removed (older, pending) then another change (newer): the merged entry still unsets the tags,
    unless the newer one sets them again; the body stays valid against the spec."""

    def item(n: int, properties: dict[str, object], unset: tuple[str, ...] = ()) -> OutboxItem:
        profile = Profile(f"u{n}", Identity(email="a@x.io"), properties=properties, unset=unset)
        return OutboxItem(n, "demo", "profile", profile.unique_id, profile_resource(profile))

    older = item(1, {"intercom_contact_role": "user"}, unset=("intercom_custom_attributes", "intercom_tags"))
    newer = item(2, {"intercom_contact_role": "lead", "intercom_tags": ["vip"]})
    [batch], _ = cut_profile_batches([older, newer])
    body = json.loads(batch.body)
    assert schema_errors("requests", "ProfileImportJobCreateQuery", body) == []
    (entry,) = body["data"]["attributes"]["profiles"]["data"]
    assert entry["attributes"]["properties"] == {"intercom_contact_role": "lead", "intercom_tags": ["vip"]}
    assert entry["meta"] == {"patch_properties": {"unset": ["intercom_custom_attributes"]}}
    [alone], _ = cut_profile_batches([newer])
    assert "meta" not in json.loads(alone.body)["data"]["attributes"]["profiles"]["data"][0]


def test_pointers_at_the_body_or_the_list_name_no_item() -> None:
    """`/data`, the list attribute and the list itself point at no entry: such a 400 names no item."""
    [events], _ = cut_event_batches([event_item(1), event_item(2)])
    [profiles], _ = cut_profile_batches([profile_item(1), profile_item(2)])
    for pointer in ("", "/", "/data", "/data/attributes/events-bulk-create", "/data/attributes/events-bulk-create/data",
                    "/data/attributes/events-bulk-create/data/2"):  # fmt: skip
        assert events.ids_at(pointer) == (), pointer
    for pointer in ("/data", "/data/attributes/profiles", "/data/attributes/profiles/data", "/data/attributes/profiles/data/9"):  # fmt: skip
        assert profiles.ids_at(pointer) == (), pointer
    assert events.ids_at("/data/attributes/events-bulk-create/data/1") == (2,)


def test_an_original_payload_names_its_profile_by_email_else_phone_else_external_id() -> None:
    """Import errors echo the profile as sent: it is found by its email (any case), else its phone, else its
    external_id, as attributes or as the whole resource; merged items share the match; a stranger is none."""
    items = [
        profile_item(1, email="Ada@X.io", phone="+442071838750"),
        OutboxItem(
            2, "demo", "profile", "u2", {"type": "profile", "attributes": {"phone_number": "+14155550123"}}
        ),
        OutboxItem(3, "demo", "profile", "u3", {"type": "profile", "attributes": {"external_id": "crm-7"}}),
        profile_item(4, email="ada@x.io", phone="+442071838751"),
        OutboxItem(
            5, "demo", "profile", "u5", {"type": "profile", "attributes": {"phone_number": "+14155550123"}}
        ),
    ]
    [batch], _ = cut_profile_batches(items)
    assert batch.ids_of({"email": "ADA@x.io", "phone_number": "+442071838751"}) == (4,)  # narrowed by phone
    assert batch.ids_of({"email": "ada@x.io"}) == (1, 4)  # one email, two positions: both
    assert batch.ids_of({"type": "profile", "attributes": {"phone_number": "+14155550123"}}) == (2, 5)
    assert batch.ids_of({"external_id": "crm-7", "first_name": "Grace"}) == (3,)
    assert batch.ids_of({"email": "someone@else.io", "phone_number": "+14155550123"}) == ()  # email decides
    assert batch.ids_of({"first_name": "Ada"}) == batch.ids_of(None) == batch.ids_of("x") == ()


def test_default_limits_are_klaviyos() -> None:
    """The default cut respects Klaviyo's 1,000 events per request."""
    batches, _ = cut_event_batches([event_item(n) for n in range(2_001)])
    assert [b.event_count for b in batches] == [MAX_EVENTS_PER_REQUEST, MAX_EVENTS_PER_REQUEST, 1]
    assert all(len(b.body) <= MAX_REQUEST_BYTES for b in batches)


_events = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 400), st.integers(0, 8)), min_size=0, max_size=60
).map(
    lambda specs: [
        event_item(n, email=f"p{profile}@x.io", padding=pad, unique_id=f"u{uid}")
        for n, (profile, pad, uid) in enumerate(specs)
    ]
)


@settings(max_examples=150, deadline=None)
@given(items=_events, max_events=st.integers(1, 12), max_bytes=st.integers(400, 6_000))
def test_event_batches_keep_order_and_respect_both_limits(
    items: list[OutboxItem], max_events: int, max_bytes: int
) -> None:
    """Every item is settled once, in input order; every body is within count and bytes and has no dup key."""
    batches, too_big = cut_event_batches(items, max_events=max_events, max_bytes=max_bytes)
    settled = [i for b in batches for i in b.item_ids]
    assert sorted(settled + list(too_big)) == [item.id for item in items]
    assert settled == [item.id for item in items if item.id not in too_big]
    for batch in batches:
        body = json.loads(batch.body)
        groups = body["data"]["attributes"]["events-bulk-create"]["data"]
        keys = [
            (g["attributes"]["profile"]["data"]["attributes"]["email"], e["attributes"]["unique_id"])
            for g in groups
            for e in g["attributes"]["events"]["data"]
        ]
        assert len(batch.body) <= max_bytes
        assert len(keys) == batch.event_count <= max_events
        assert len(set(keys)) == len(keys)
        assert len(batch.body) == len(json.dumps(body, separators=(",", ":")).encode())


@settings(max_examples=150, deadline=None)
@given(
    pads=st.lists(st.integers(0, 900), max_size=40),
    max_profiles=st.integers(1, 9),
    max_bytes=st.integers(600, 5_000),
)
def test_profile_batches_keep_order_and_respect_both_limits(
    pads: list[int], max_profiles: int, max_bytes: int
) -> None:
    """Every profile is settled once, in order; each body holds at most `max_profiles` within `max_bytes`."""
    items = [profile_item(n, padding=pad) for n, pad in enumerate(pads)]
    batches, too_big = cut_profile_batches(items, max_profiles=max_profiles, max_bytes=max_bytes)
    settled = [i for b in batches for i in b.item_ids]
    assert settled == [item.id for item in items if item.id not in too_big]
    for batch in batches:
        profiles = json.loads(batch.body)["data"]["attributes"]["profiles"]["data"]
        assert len(batch.body) <= max_bytes
        assert len(profiles) == len(batch.positions) <= max_profiles
