"""The sandbox Intercom over real HTTP: query grammar and limits, timestamp modes, paging, errors, contracts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from etl.sandbox.generator import Workspace
from etl.sandbox.intercom_query import Matching, QueryError, compile_query
from etl.sandbox.intercom_server import IntercomSandbox, IntercomSettings, serve_intercom
from tests.intercom_fixtures import (
    contract,
    deviations,
    operation_contract,
    sandbox,
    string_avatars,
    workspace,
)


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


@pytest.fixture(scope="module")
def sb() -> Iterator[IntercomSandbox]:
    with sandbox(workspace()) as running:
        yield running


@pytest.fixture
def http(sb: IntercomSandbox) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {sb.token}"
        yield session


def search(
    http: requests.Session, sb: IntercomSandbox, stream: str, body: dict[str, Any]
) -> requests.Response:
    return http.post(f"{sb.url}/{stream}/search", json=body)


def flt(field: str, operator: str, value: Any) -> dict[str, Any]:
    return {"field": field, "operator": operator, "value": value}


CONV: dict[str, Any] = {
    "id": "7",
    "updated_at": ts("2026-03-01T10:00:00"),
    "source": {"author": {"email": "Ana@Example.com"}, "delivered_as": "customer_initiated"},
    "contacts": {"contacts": [{"id": "c1"}, {"id": "c2"}]},
    "tags": {"tags": [{"id": "8100"}]},
    "statistics": {"count_conversation_parts": 4},
    "read": False,
    "priority": "high",
}


@pytest.mark.parametrize(
    ("query", "hit"),
    [
        (flt("source.author.email", "=", "Ana@Example.com"), True),
        (flt("source.author.email", "!=", "Ana@Example.com"), False),
        (flt("source.author.email", "~", "example"), True),
        (flt("source.author.email", "!~", "example"), False),
        (flt("source.author.email", "^", "ana@"), True),
        (flt("source.author.email", "$", ".org"), False),
        (flt("contact_ids", "=", "c2"), True),
        (flt("contact_ids", "IN", ["x", "c1"]), True),
        (flt("contact_ids", "NIN", ["c1"]), False),
        (flt("tag_ids", "!=", "8101"), True),
        (flt("priority", "IN", ["low", "medium"]), False),
        (flt("read", "=", False), True),
        (flt("statistics.count_conversation_parts", ">", 3), True),
        (flt("statistics.count_conversation_parts", "NIN", [4]), False),
        (
            {
                "operator": "AND",
                "value": [
                    flt("read", "=", False),
                    {"operator": "OR", "value": [flt("priority", "=", "low"), flt("contact_ids", "=", "c1")]},
                ],
            },
            True,
        ),
        ({"operator": "OR", "value": [flt("read", "=", True), flt("priority", "=", "urgent")]}, False),
    ],
)
def test_query_operators_on_dotted_and_list_fields(query: dict[str, Any], hit: bool) -> None:
    """Every operator, dotted fields, list fields and nested AND/OR evaluate as the spec describes."""
    assert compile_query(query, "conversations", Matching())(CONV) is hit


@pytest.mark.parametrize(
    ("stream", "query", "code"),
    [
        (
            "contacts",
            {
                "operator": "AND",
                "value": [{"operator": "OR", "value": [{"operator": "AND", "value": [flt("id", "=", "1")]}]}],
            },
            "parameter_invalid",
        ),
        (
            "contacts",
            {"operator": "OR", "value": [flt("id", "=", str(i)) for i in range(16)]},
            "parameter_invalid",
        ),
        ("contacts", flt("updated_at", ">=", 1), "parameter_invalid"),
        ("contacts", flt("updated_at", "IN", [1]), "parameter_invalid"),
        ("conversations", flt("updated_at", "<=", 1), "parameter_invalid"),
        ("contacts", flt("tag_id", "IN", ["1"]), "parameter_invalid"),
        ("contacts", flt("updated_at", ">", "yesterday"), "parameter_invalid"),
        ("tickets", flt("id", "IN", "1"), "parameter_invalid"),
    ],
)
def test_queries_intercom_refuses_are_400s(
    http: requests.Session, sb: IntercomSandbox, stream: str, query: dict[str, Any], code: str
) -> None:
    """Three levels of nesting, 16 filters in a group and operators a field does not take are 400 errors."""
    reply = search(http, sb, stream, {"query": query})
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["code"] == code
    contract("error").validate(reply.json())


def test_fifteen_filters_and_two_levels_are_accepted() -> None:
    """The limits themselves are allowed."""
    query = {
        "operator": "AND",
        "value": [{"operator": "OR", "value": [flt("id", "=", str(i)) for i in range(15)]}],
    }
    assert compile_query(query, "contacts", Matching())({"id": "3"}) is True


@pytest.mark.parametrize(
    ("zone", "operator", "value", "first", "last"),
    [
        # Tokyo is UTC+9: 2026-03-01 local runs from 02-28T15:00Z to 03-01T15:00Z
        ("Asia/Tokyo", ">", ts("2026-03-01T10:00:00"), ts("2026-03-01T15:00:00"), None),
        ("Asia/Tokyo", "<", ts("2026-03-01T10:00:00"), None, ts("2026-02-28T14:59:59")),
        ("Asia/Tokyo", "=", ts("2026-03-01T10:00:00"), ts("2026-02-28T15:00:00"), ts("2026-03-01T14:59:59")),
        ("UTC", ">", ts("2026-03-01T10:00:00"), ts("2026-03-02T00:00:00"), None),
    ],
)
def test_contact_dates_match_by_calendar_day_in_the_workspace_timezone(
    zone: str, operator: str, value: int, first: int | None, last: int | None
) -> None:
    """`>` starts at the next local midnight, `<` stops at this day's, `=` is the whole local day."""
    match = compile_query(flt("updated_at", operator, value), "contacts", Matching(timezone=zone))
    if first is not None:
        assert match({"updated_at": first}) and not match({"updated_at": first - 1})
    if last is not None:
        assert match({"updated_at": last}) and not match({"updated_at": last + 1})


def test_second_precision_and_strict_switches() -> None:
    """Second granularity compares contacts exactly; conversations `>` includes equality unless strict."""
    at = ts("2026-03-01T10:00:00")
    contact = compile_query(flt("updated_at", ">", at), "contacts", Matching(contact_granularity="second"))
    assert (contact({"updated_at": at}), contact({"updated_at": at + 1})) == (False, True)
    inclusive = compile_query(flt("updated_at", ">", at), "conversations", Matching())
    strict = compile_query(flt("updated_at", ">", at), "conversations", Matching(inclusive=False))
    assert (inclusive({"updated_at": at}), strict({"updated_at": at})) == (True, False)
    tickets = compile_query(flt("created_at", ">=", at), "tickets", Matching(inclusive=False))
    assert tickets({"created_at": at}) is True


def test_per_page_defaults_maximum_and_cursor_paging(http: requests.Session, sb: IntercomSandbox) -> None:
    """Defaults are 50/20, 151 is refused, and following starting_after visits every match once."""
    everything = flt("id", "!=", "none")
    contacts = search(http, sb, "contacts", {"query": everything}).json()
    assert contacts["pages"]["per_page"] == 50
    assert search(http, sb, "tickets", {"query": everything}).json()["pages"]["per_page"] == 20
    too_big = search(http, sb, "tickets", {"query": everything, "pagination": {"per_page": 151}})
    assert too_big.status_code == 400
    body: dict[str, Any] = {
        "query": everything,
        "pagination": {"per_page": 7},
        "sort": {"field": "updated_at"},
    }
    ids, pages = [], []
    while True:
        reply = search(http, sb, "conversations", body).json()
        contract("conversation_list").validate(reply)
        ids += [c["updated_at"] for c in reply["conversations"]]
        pages.append(reply["pages"]["page"])
        if "next" not in reply["pages"]:
            break
        body["pagination"]["starting_after"] = reply["pages"]["next"]["starting_after"]
    assert len(ids) == reply["total_count"] == len(sb.workspace.conversations)
    assert ids == sorted(ids, reverse=True)  # sort order defaults to descending
    assert pages == list(range(1, reply["pages"]["total_pages"] + 1))


def test_an_invalid_sort_order_is_a_400(http: requests.Session, sb: IntercomSandbox) -> None:
    """Sort orders other than ascending/descending are refused with invalid_sort_order."""
    reply = search(
        http, sb, "contacts", {"query": flt("id", "=", "1"), "sort": {"field": "id", "order": "desc"}}
    )
    assert (reply.status_code, reply.json()["errors"][0]["code"]) == (400, "invalid_sort_order")


@pytest.mark.parametrize(("stream", "name"), [("contacts", "contact_list"), ("tickets", "ticket_list")])
def test_search_results_match_the_spec_schemas(
    http: requests.Session, sb: IntercomSandbox, stream: str, name: str
) -> None:
    """Contact and ticket search responses validate against the 2.16 schema fragments, but for the avatars
    served as bare strings on purpose."""
    reply = search(http, sb, stream, {"query": flt("id", "!=", "x"), "pagination": {"per_page": 150}})
    body = reply.json()
    key = "data" if stream == "contacts" else "tickets"
    expected = string_avatars(body[key], prefix=f"{key}/") if stream == "contacts" else []
    assert deviations(contract(name), body) == expected
    assert body["total_count"] == len(sb.workspace.objects(stream))


def test_reference_lists_and_contacts_match_the_spec_schemas(
    http: requests.Session, sb: IntercomSandbox
) -> None:
    """GET /admins, /teams, /tags and /contacts/{id} validate against their schema fragments."""
    for path, name, key in (
        ("admins", "admin_list", "admins"),
        ("teams", "team_list", "teams"),
        ("tags", "tag_list", "data"),
    ):
        reply = http.get(f"{sb.url}/{path}")
        assert reply.status_code == 200
        assert reply.json()[key], f"/{path} is empty, so its item schema would check nothing"
        contract(name).validate(reply.json())  # raises ValidationError on any mismatch
    assert sb.workspace.contacts
    for contact_id in sb.workspace.contacts:
        reply = http.get(f"{sb.url}/contacts/{contact_id}")
        assert reply.status_code == 200 and reply.json()["id"] == contact_id
        served = reply.json()
        assert deviations(contract("contact"), served) == (
            ["avatar"] if isinstance(served["avatar"], str) else []
        )


def test_conversations_and_tickets_by_id_match_the_spec_schemas(
    http: requests.Session, sb: IntercomSandbox
) -> None:
    """GET /conversations/{id} and /tickets/{id} serve each object as search does, valid against the 2.16
    `conversation` and `ticket` fragments; an unknown id is a 404 `not_found` "Resource Not Found" (spec,
    retrieveConversation's 404 example; getTicket documents none, the sandbox answers alike)."""
    for stream, name in (("conversations", "conversation"), ("tickets", "ticket")):
        objects = getattr(sb.workspace, stream)
        assert objects
        for object_id, obj in objects.items():
            reply = http.get(f"{sb.url}/{stream}/{object_id}")
            assert reply.status_code == 200 and reply.json() == obj
            assert deviations(contract(name), reply.json()) == []
        missing = http.get(f"{sb.url}/{stream}/999999")
        assert missing.status_code == 404
        assert missing.json()["errors"] == [{"code": "not_found", "message": "Resource Not Found"}]
        assert deviations(contract("error"), missing.json()) == []


def test_a_merged_contact_is_410_with_a_link_to_the_survivor(
    http: requests.Session, sb: IntercomSandbox
) -> None:
    """GET of a merged contact answers 410 contact_merged and a canonical Link; an unknown id is 404."""
    gone, survivor = next(iter(sb.workspace.merged.items()))
    reply = http.get(f"{sb.url}/contacts/{gone}")
    assert reply.status_code == 410
    assert reply.headers["Link"] == f'</contacts/{survivor}>; rel="canonical"'
    assert reply.json()["errors"][0]["code"] == "contact_merged"
    assert http.get(f"{sb.url}/contacts/nobody").status_code == 404
    found = search(http, sb, "contacts", {"query": flt("id", "=", gone)}).json()
    assert found["total_count"] == 0  # merged contacts are excluded from search


def test_contacts_show_ten_tags_and_their_tags_endpoint_lists_every_one(
    http: requests.Session, sb: IntercomSandbox
) -> None:
    """Search and GET /contacts/{id} show at most 10 tags with total_count and has_more; GET
    /contacts/{id}/tags lists all of them as spec-shaped tag objects; merged and unknown ids are a 404."""
    ws = sb.workspace
    reply = search(http, sb, "contacts", {"query": flt("id", "!=", "x"), "pagination": {"per_page": 150}})
    served = {contact["id"]: contact for contact in reply.json()["data"]}
    heavy = [i for i, contact in ws.contacts.items() if len(contact["tags"]["data"]) > 10]
    assert heavy and len(heavy) < len(ws.contacts)  # the premise: some contacts have more than 10 tags
    for contact_id, contact in ws.contacts.items():
        every = [ref["id"] for ref in contact["tags"]["data"]]
        for shown in (served[contact_id], http.get(f"{sb.url}/contacts/{contact_id}").json()):
            tags = shown["tags"]
            assert [ref["id"] for ref in tags["data"]] == every[:10]
            assert (tags["total_count"], tags["has_more"]) == (len(every), len(every) > 10)
    names = {tag["id"]: tag["name"] for tag in ws.tags}
    for contact_id in heavy:
        listed = http.get(f"{sb.url}/contacts/{contact_id}/tags")
        assert listed.status_code == 200
        assert deviations(operation_contract("list_tags_for_a_contact", "200"), listed.json()) == []
        assert listed.json()["type"] == "list"
        assert [(t["type"], t["id"], t["name"]) for t in listed.json()["data"]] == [
            ("tag", ref["id"], names[ref["id"]]) for ref in ws.contacts[contact_id]["tags"]["data"]
        ]
    for gone in (next(iter(ws.merged)), "nobody"):
        missing = http.get(f"{sb.url}/contacts/{gone}/tags")
        assert missing.status_code == 404
        assert missing.json()["errors"] == [{"code": "not_found", "message": "User Not Found"}]
        assert deviations(operation_contract("list_tags_for_a_contact", "404"), missing.json()) == []


def test_avatars_come_as_objects_and_as_bare_strings(http: requests.Session, sb: IntercomSandbox) -> None:
    """Some contacts' avatars are served as the spec's object, others as the bare URL string seen in the field."""
    reply = search(http, sb, "contacts", {"query": flt("id", "!=", "x"), "pagination": {"per_page": 150}})
    avatars = [contact["avatar"] for contact in reply.json()["data"]]
    assert {type(avatar) for avatar in avatars} == {dict, str}
    urls = {a if isinstance(a, str) else a["image_url"] for a in avatars}
    assert all(url.startswith("https://static.example/avatars/") for url in urls)


def test_auth_version_and_rate_limit_headers() -> None:
    """Bad token → 401 error.list, unknown version → 400, and a spent budget → 429 with the window's reset."""
    now = [1_772_366_403.0]
    settings = IntercomSettings(rate_budget=2)
    with sandbox(settings=settings, clock=lambda: now[0]) as sb, requests.Session() as http:
        denied = http.get(f"{sb.url}/tags", headers={"Authorization": "Bearer nope"})
        assert denied.status_code == 401
        assert denied.json()["errors"] == [{"code": "unauthorized", "message": "Access Token Invalid"}]
        contract("error").validate(denied.json())
        http.headers["Authorization"] = f"Bearer {sb.token}"
        old = http.get(f"{sb.url}/tags", headers={"Intercom-Version": "3.0"})
        assert (old.status_code, old.json()["errors"][0]["code"]) == (400, "intercom_version_invalid")
        first, second, third = (http.get(f"{sb.url}/tags") for _ in range(3))
        assert [r.headers["X-RateLimit-Remaining"] for r in (first, second)] == ["1", "0"]
        assert third.status_code == 429
        assert third.json()["errors"][0]["code"] == "rate_limit_exceeded"
        assert third.headers["X-RateLimit-Reset"] == "1772366410"
        now[0] = 1_772_366_410.0
        assert http.get(f"{sb.url}/tags").status_code == 200


def test_serve_intercom_starts_a_reachable_sandbox() -> None:
    """The function behind `etl sandbox serve` builds a workspace, serves it, and advances it on request."""
    running = serve_intercom(
        seed=2, start=datetime(2026, 3, 1, tzinfo=UTC), contacts=5, conversations=5, tickets=2
    )
    try:
        reply = requests.get(f"{running.url}/admins", headers={"Authorization": f"Bearer {running.token}"})
        assert reply.status_code == 200
        assert isinstance(running.workspace, Workspace)
        before = running.workspace.now
        changes = running.advance(timedelta(minutes=10), activity=3)
        assert running.workspace.now == before + 600
        assert changes and all(before < c.time <= before + 600 for c in changes)
    finally:
        running.stop()


def test_query_error_carries_its_code() -> None:
    """QueryError exposes the error code placed in the 400 body."""
    with pytest.raises(QueryError) as caught:
        compile_query({"operator": "AND", "value": []}, "contacts", Matching())
    assert caught.value.code == "parameter_invalid"
