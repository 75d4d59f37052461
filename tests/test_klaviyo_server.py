"""The fake Klaviyo answers like the spec says: headers, limits, errors, dedupe, jobs and import-errors."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
import requests

from etl.klaviyo_batches import cut_event_batches, cut_profile_batches
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings
from tests.klaviyo_fixtures import HEADERS, FakeClock, event_item, profile_item, sandbox, schema_errors

EVENTS = "/api/event-bulk-create-jobs"
IMPORTS = "/api/profile-bulk-import-jobs"


def post(
    http: requests.Session, server: KlaviyoServer, path: str, body: Any, **headers: str
) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(server.url + path, data=data, headers={**HEADERS, **headers}, timeout=10)


def events_body(*items: Any) -> Any:
    return json.loads(cut_event_batches(list(items))[0][0].body)


def test_events_are_accepted_with_202_and_no_body(klaviyo: KlaviyoServer, http: requests.Session) -> None:
    """A valid bulk create gets 202, no body, RateLimit headers; the event is stored."""
    reply = post(http, klaviyo, EVENTS, events_body(event_item(1)))
    assert reply.status_code == 202
    assert reply.content == b""
    assert reply.headers["RateLimit-Limit"] == "10, 10;w=1, 150;w=60"
    assert reply.headers["RateLimit-Remaining"] == "9"
    assert [(e.profile, e.metric) for e in klaviyo.events] == [
        ("user1@example.com", "Replied to Conversation")
    ]


def test_events_are_deduplicated_across_requests_first_wins(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """A resent (profile, metric, unique_id) is accepted and ignored; the first event's properties stay."""
    first = event_item(1, unique_id="u1")
    second = event_item(1, unique_id="u1", padding=3)
    other_metric = event_item(1, unique_id="u1", metric="Read Conversation")
    for item in (first, second, other_metric):
        assert post(http, klaviyo, EVENTS, events_body(item)).status_code == 202
    assert [(e.metric, e.properties["Notes"]) for e in klaviyo.events] == [
        ("Replied to Conversation", ""),
        ("Read Conversation", ""),
    ]


def test_a_duplicate_unique_id_inside_one_request_fails_it(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """Two events with the same profile, metric and unique_id in one request: 400 naming the second, nothing kept."""
    body = events_body(
        event_item(1, email="a@x.io", unique_id="u"), event_item(2, email="b@x.io", unique_id="u")
    )
    groups = body["data"]["attributes"]["events-bulk-create"]["data"]
    groups[1]["attributes"]["profile"] = groups[0]["attributes"]["profile"]
    reply = post(http, klaviyo, EVENTS, body)
    assert reply.status_code == 400
    [problem] = reply.json()["errors"]
    assert problem["source"]["pointer"] == (
        "/data/attributes/events-bulk-create/data/1/attributes/events/data/0/attributes/unique_id"
    )
    assert schema_errors("responses", "ClientError", reply.json()) == []
    assert klaviyo.events == []


def test_a_body_breaking_the_schema_is_a_400_with_pointers(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """A misspelt attribute and a missing metric are each reported at their pointer."""
    body = events_body(event_item(1))
    event = body["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["events"]["data"][0]
    event["attributes"]["uniqueid"] = event["attributes"].pop("unique_id")
    del event["attributes"]["metric"]
    reply = post(http, klaviyo, EVENTS, body)
    pointers = sorted(e["source"]["pointer"] for e in reply.json()["errors"])
    prefix = "/data/attributes/events-bulk-create/data/0/attributes/events/data/0/attributes"
    assert (reply.status_code, pointers) == (400, [f"{prefix}/metric", f"{prefix}/uniqueid"])


def test_more_than_1000_events_is_a_400(klaviyo: KlaviyoServer, http: requests.Session) -> None:
    """1,001 events in one request are refused with the limit in the message."""
    body = events_body(*(event_item(n) for n in range(1_000)))
    extra = events_body(event_item(1_000))["data"]["attributes"]["events-bulk-create"]["data"]
    body["data"]["attributes"]["events-bulk-create"]["data"] += extra
    reply = post(http, klaviyo, EVENTS, body)
    assert reply.status_code == 400
    assert "A maximum of 1000 events" in reply.json()["errors"][0]["detail"]


def test_a_body_over_5_mb_is_a_413(clock: FakeClock, http: requests.Session) -> None:
    """A body past the byte limit is refused with 413 before it is parsed."""
    with sandbox(clock, KlaviyoSettings(max_request_bytes=2_000)) as klaviyo:
        reply = post(http, klaviyo, EVENTS, events_body(event_item(1, padding=2_000)))
        assert reply.status_code == 413
        assert reply.json()["errors"][0]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Authorization": "Bearer abc"}, 401, "not_authenticated"),
        ({"Authorization": "Klaviyo-API-Key pk_wrong"}, 401, "authentication_failed"),
        ({"Authorization": "Klaviyo-API-Key pk_readonly"}, 403, "permission_denied"),
        ({"revision": ""}, 400, "invalid"),
        ({"Content-Type": "application/json"}, 415, "unsupported_media_type"),
    ],
)
def test_requests_without_the_right_headers_are_refused(
    clock: FakeClock, http: requests.Session, headers: dict[str, str], status: int, code: str
) -> None:
    """Auth scheme, key, scope, revision and content type are checked, each with the spec's error shape."""
    keys = {SANDBOX_API_KEY: frozenset({"events:write"}), "pk_readonly": frozenset({"profiles:read"})}
    with sandbox(clock, KlaviyoSettings(api_keys=keys)) as klaviyo:
        reply = post(http, klaviyo, EVENTS, events_body(event_item(1)), **headers)
        assert (reply.status_code, reply.json()["errors"][0]["code"]) == (status, code)
        assert schema_errors("responses", "ClientError", reply.json()) == []
        assert klaviyo.events == []


def test_past_the_burst_limit_a_429_says_when_to_retry(clock: FakeClock, http: requests.Session) -> None:
    """The third request within a second (burst 2/s) gets 429 with Retry-After; a second later it passes."""
    with sandbox(clock, KlaviyoSettings(burst_per_second=2)) as klaviyo:
        statuses = [post(http, klaviyo, EVENTS, events_body(event_item(n))).status_code for n in range(3)]
        throttled = klaviyo.received[-1]
        clock.sleep(float(throttled.reply_headers["Retry-After"]))
        later = post(http, klaviyo, EVENTS, events_body(event_item(3)))
    assert statuses == [202, 202, 429]
    assert throttled.reply_headers["Retry-After"] == "1"
    assert later.status_code == 202


def test_past_the_steady_limit_a_429_waits_for_the_minute(clock: FakeClock, http: requests.Session) -> None:
    """With the per-second budget free but 3/min spent, Retry-After counts to the minute's end."""
    with sandbox(clock, KlaviyoSettings(steady_per_minute=3)) as klaviyo:
        for n in range(3):
            post(http, klaviyo, EVENTS, events_body(event_item(n)))
            clock.sleep(5)
        reply = post(http, klaviyo, EVENTS, events_body(event_item(9)))
    assert (reply.status_code, reply.headers["Retry-After"]) == (429, "45")


def test_an_import_job_moves_from_queued_to_complete(
    klaviyo: KlaviyoServer, clock: FakeClock, http: requests.Session
) -> None:
    """POST returns the job (202, queued); GET shows processing, then complete with counts; all per the spec."""
    body = json.loads(cut_profile_batches([profile_item(n) for n in range(3)])[0][0].body)
    created = post(http, klaviyo, IMPORTS, body)
    assert created.status_code == 202
    assert schema_errors("responses", "PostProfileImportJobResponse", created.json()) == []
    job_url = klaviyo.url + IMPORTS + "/" + created.json()["data"]["id"]
    statuses = [created.json()["data"]["attributes"]["status"]]
    for _ in range(2):
        clock.sleep(0.75)
        reply = http.get(job_url, headers=HEADERS, timeout=10)
        assert schema_errors("responses", "GetProfileImportJobResponseCompoundDocument", reply.json()) == []
        statuses.append(reply.json()["data"]["attributes"]["status"])
    attributes = reply.json()["data"]["attributes"]
    assert statuses == ["queued", "processing", "complete"]
    assert (attributes["total_count"], attributes["completed_count"], attributes["failed_count"]) == (3, 3, 0)
    assert klaviyo.profiles["user2@example.com"]["properties"]["intercom_contact_id"] == "c2"


def test_imports_merge_properties_replace_objects_whole_and_apply_unset(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """A second import merges top-level property keys, replaces an object value whole, ignores null, and
    removes the keys its `meta.patch_properties.unset` names (a list, or one key as a string)."""

    def imported(properties: dict[str, Any], unset: Any = None) -> None:
        profile: dict[str, Any] = {
            "type": "profile",
            "attributes": {"email": "a@x.io", "properties": properties},
        }
        if unset is not None:
            profile["meta"] = {"patch_properties": {"unset": unset}}
        body = {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [profile]}}}}
        assert post(http, klaviyo, IMPORTS, body).status_code == 202

    imported({"tags": ["vip"], "count": 2, "attrs": {"plan": "pro", "seats": 3}, "role": "user"})
    imported({"count": 0, "attrs": {"seats": 3}, "role": None}, unset=["tags"])
    assert klaviyo.profiles["a@x.io"]["properties"] == {"count": 0, "attrs": {"seats": 3}, "role": "user"}
    imported({}, unset="attrs")
    assert klaviyo.profiles["a@x.io"]["properties"] == {"count": 0, "role": "user"}


def test_an_invalid_email_fails_the_whole_import_naming_each(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """Invalid emails make the request 400 with one pointer per bad profile; no job, no profile stored."""
    items = [profile_item(0), profile_item(1, email="nope"), profile_item(2, email="also@bad")]
    reply = post(http, klaviyo, IMPORTS, json.loads(cut_profile_batches(items)[0][0].body))
    pointers = [e["source"]["pointer"] for e in reply.json()["errors"]]
    assert reply.status_code == 400
    assert pointers == [
        "/data/attributes/profiles/data/1/attributes/email",
        "/data/attributes/profiles/data/2/attributes/email",
    ]
    assert klaviyo.profiles == {}


@pytest.mark.parametrize(
    ("import_errors", "pointers", "payloads"),
    [
        ("data", ["/data"] * 3, ["user1@example.com", "user3@example.com", "user5@example.com"]),
        (
            "item",
            [
                "/data/attributes/profiles/data/1/attributes/phone_number",
                "/data/attributes/profiles/data/3/attributes/phone_number",
                "/data/attributes/profiles/data/5",
            ],
            ["user1@example.com", "user3@example.com", "user5@example.com"],
        ),
        ("none", ["/data"] * 3, [None] * 3),
    ],
)
def test_bad_phones_and_oversize_profiles_are_import_errors_paged_by_cursor(
    clock: FakeClock,
    http: requests.Session,
    import_errors: Literal["data", "item", "none"],
    pointers: list[str],
    payloads: list[str | None],
) -> None:
    """Invalid phone numbers and >100 KB profiles go to import-errors (paged by cursor, valid against the
    spec); the rest is imported. By default an error points only at `/data` and names its profile through
    `original_payload`; switches give pointers into the entries, or no payload at all."""
    items = [profile_item(n, phone="+1555" if n % 2 else "+442071838750") for n in range(5)]
    items.append(profile_item(5, padding=100_001))
    body = {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": [i.payload for i in items]}},
        }
    }
    settings = KlaviyoSettings(import_errors=import_errors)
    with sandbox(clock, settings) as klaviyo:
        job_id = post(http, klaviyo, IMPORTS, body).json()["data"]["id"]
        clock.sleep(2)
        url: str | None = f"{klaviyo.url}{IMPORTS}/{job_id}/import-errors?page[size]=2"
        errors = []
        while url:
            page = http.get(url, headers=HEADERS, timeout=10).json()
            assert schema_errors("responses", "GetImportErrorResponseCollection", page) == []
            errors += [e["attributes"] for e in page["data"]]
            url = page["links"].get("next")
        assert sorted(klaviyo.profiles) == ["user0@example.com", "user2@example.com", "user4@example.com"]
    assert [e["source"]["pointer"] for e in errors] == pointers
    assert [(e["original_payload"] or {}).get("email") for e in errors] == payloads
    assert errors[0]["detail"] == "Invalid phone number format: '+1555'."


def test_a_poison_event_fails_its_whole_request_with_a_400_naming_no_item(
    clock: FakeClock, http: requests.Session
) -> None:
    """A request carrying a poisoned unique_id gets a spec-shaped 400 whose one error points only at the
    list attribute; nothing of it is stored. Without the poison the same request is accepted."""
    items = [event_item(n) for n in range(3)]
    with sandbox(clock, KlaviyoSettings(poison_events=frozenset({items[1].unique_id}))) as klaviyo:
        rejected = post(http, klaviyo, EVENTS, events_body(*items))
        accepted = post(http, klaviyo, EVENTS, events_body(items[0], items[2]))
        assert len(klaviyo.events) == 2
    assert (rejected.status_code, accepted.status_code) == (400, 202)
    assert schema_errors("responses", "ClientError", rejected.json()) == []
    [problem] = rejected.json()["errors"]
    assert {k: problem[k] for k in ("status", "code", "title", "detail", "source")} == {
        "status": 400,
        "code": "invalid",
        "title": "Invalid input.",
        "detail": "The payload provided in the request is invalid.",
        "source": {"pointer": "/data/attributes/events-bulk-create"},
    }


def test_a_poison_profile_fails_its_import_job_submission_with_a_400_naming_no_item(
    clock: FakeClock, http: requests.Session
) -> None:
    """A profile whose email (or phone) is poisoned makes the submission a 400 pointing at `/data`; no job."""
    items = [
        profile_item(1),
        profile_item(2, email="Poison@Example.com"),
        profile_item(3, phone="+442071838750"),
    ]
    settings = KlaviyoSettings(poison_profiles=frozenset({"poison@example.com", "+442071838750"}))
    with sandbox(clock, settings) as klaviyo:
        replies = [
            post(http, klaviyo, IMPORTS, json.loads(cut_profile_batches(part)[0][0].body))
            for part in (items, items[1:2], items[2:], items[:1])
        ]
        assert len(klaviyo.store.jobs()) == 1
    assert [r.status_code for r in replies] == [400, 400, 400, 202]
    assert schema_errors("responses", "ClientError", replies[0].json()) == []
    assert [(e["detail"], e["source"]) for e in replies[0].json()["errors"]] == [
        ("The payload provided in the request is invalid.", {"pointer": "/data"})
    ]


def test_a_fault_storm_answers_429_with_retry_after(clock: FakeClock, http: requests.Session) -> None:
    """The storm switch answers 429 with the configured Retry-After, then serves normally."""
    with sandbox(clock, KlaviyoSettings(storm_retry_after=7)) as klaviyo:
        klaviyo.faults.storm_requests = 1
        first = post(http, klaviyo, EVENTS, events_body(event_item(1)))
        second = post(http, klaviyo, EVENTS, events_body(event_item(1)))
    assert (first.status_code, first.headers["Retry-After"], second.status_code) == (429, "7", 202)


def test_import_jobs_are_listed_newest_first_with_cursor_paging(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """GET /api/profile-bulk-import-jobs pages newest first, each page valid against the spec."""
    created = [
        post(http, klaviyo, IMPORTS, json.loads(cut_profile_batches([profile_item(n)])[0][0].body))
        for n in range(3)
    ]
    url: str | None = f"{klaviyo.url}{IMPORTS}?page[size]=2"
    listed = []
    while url:
        page = http.get(url, headers=HEADERS, timeout=10).json()
        assert schema_errors("responses", "GetProfileImportJobResponseCollectionCompoundDocument", page) == []
        listed += [job["id"] for job in page["data"]]
        url = page["links"].get("next")
    assert listed == [reply.json()["data"]["id"] for reply in reversed(created)]
