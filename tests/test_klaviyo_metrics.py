"""Metrics in the fake Klaviyo and the client's metric lister: one metric per name *and* sending mechanism,
`GET /api/metrics` with `integration`, its `filter`, `include=flow-triggers` and cursor paging, per the spec."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from etl.klaviyo import Flow, Metric
from etl.klaviyo_batches import cut_event_batches
from etl.models import OutboxItem
from etl.sandbox.klaviyo_metrics import API_INTEGRATION, INTERCOM_INTEGRATION
from etl.sandbox.klaviyo_server import ALL_SCOPES, SANDBOX_API_KEY, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings
from tests.klaviyo_fixtures import HEADERS, FakeClock, client_for, event_item, sandbox, schema_errors

EVENTS = "/api/event-bulk-create-jobs"
METRICS = "/api/metrics"


def send_events(http: requests.Session, server: KlaviyoServer, *items: OutboxItem) -> int:
    """POST one bulk create of these event items; its status."""
    body = cut_event_batches(list(items))[0][0].body
    return http.post(server.url + EVENTS, data=body, headers=HEADERS, timeout=10).status_code


def get(http: requests.Session, url: str, **params: str) -> requests.Response:
    return http.get(url, params=params or None, headers=HEADERS, timeout=10)


def pages(http: requests.Session, server: KlaviyoServer, **params: str) -> list[dict[str, Any]]:
    """Every page of GET /api/metrics for this query, following links.next; each checked against the spec."""
    found = []
    reply = get(http, server.url + METRICS, **params)
    while True:
        assert reply.status_code == 200, reply.text
        page = reply.json()
        assert schema_errors("metrics", "GetMetricResponseCollectionCompoundDocument", page) == []
        found.append(page)
        if "next" not in page["links"]:
            return found
        reply = get(http, page["links"]["next"])


def named(page: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["attributes"]["name"], m["attributes"]["integration"]["name"]) for m in page["data"]]


def test_api_events_land_in_api_metrics_apart_from_the_native_ones_of_the_same_name(
    klaviyo: KlaviyoServer, http: requests.Session
) -> None:
    """A seeded native "Created Conversation" and events sent through the API under the same name make two
    metrics, told apart by `integration`; the filters pick each side, and the include names the flows."""
    native = klaviyo.metrics.seed("Created Conversation")
    follow_up = klaviyo.metrics.seed_flow(native.id, "Conversation follow-up")
    survey = klaviyo.metrics.seed_flow(native.id, "Survey", status="draft")
    events = [event_item(1, metric="Created Conversation"), event_item(2, metric="Replied to Conversation")]
    assert send_events(http, klaviyo, *events) == 202
    assert send_events(http, klaviyo, event_item(3, metric="Created Conversation")) == 202

    [everything] = pages(http, klaviyo)
    assert named(everything) == [
        ("Created Conversation", "Intercom"),
        ("Created Conversation", "API"),
        ("Replied to Conversation", "API"),
    ]
    assert everything["data"][1]["attributes"]["integration"] == dict(API_INTEGRATION)
    assert "included" not in everything
    assert "data" not in everything["data"][0]["relationships"]["flow-triggers"]

    [intercom] = pages(http, klaviyo, filter='equals(integration.name,"Intercom")', include="flow-triggers")
    assert named(intercom) == [("Created Conversation", "Intercom")]
    assert intercom["data"][0]["attributes"]["integration"] == dict(INTERCOM_INTEGRATION)
    assert intercom["data"][0]["relationships"]["flow-triggers"]["data"] == [
        {"type": "flow", "id": follow_up.id},
        {"type": "flow", "id": survey.id},
    ]
    assert [(f["id"], f["attributes"]["name"], f["attributes"]["status"]) for f in intercom["included"]] == [
        (follow_up.id, "Conversation follow-up", "live"),
        (survey.id, "Survey", "draft"),
    ]
    [api] = pages(http, klaviyo, filter="equals(integration.category,'API')")
    assert named(api) == [("Created Conversation", "API"), ("Replied to Conversation", "API")]
    [sparse] = pages(http, klaviyo, **{"fields[metric]": "name"})
    assert [set(m["attributes"]) for m in sparse["data"]] == [{"name"}] * 3


def test_metrics_page_by_cursor_keeping_the_query_and_the_client_reads_every_page(
    klaviyo: KlaviyoServer, clock: FakeClock, http: requests.Session
) -> None:
    """Five native metrics, two a page: links.next keeps filter and include; the client follows it and
    returns every metric with its flows, in three requests without a page[size] (get_metrics has none)."""
    klaviyo.metrics.page_size = 2
    seeded = [klaviyo.metrics.seed(f"Metric {n}") for n in range(5)]
    flow = klaviyo.metrics.seed_flow(seeded[3].id, "Win-back", status="manual")
    klaviyo.metrics.seed("Elsewhere", integration={**INTERCOM_INTEGRATION, "name": "Shopify"})
    query = {"filter": 'equals(integration.name,"Intercom")', "include": "flow-triggers"}
    listed = pages(http, klaviyo, **query)
    assert [len(page["data"]) for page in listed] == [2, 2, 1]
    assert [m["id"] for page in listed for m in page["data"]] == [m.id for m in seeded]
    assert [f["id"] for page in listed for f in page.get("included", [])] == [flow.id]

    before = klaviyo.count("GET", METRICS)
    with client_for(klaviyo, clock) as client:
        found = client.metrics(integration="Intercom", flows=True)
    win_back = (Flow(flow.id, "Win-back", "manual"),)
    assert found == [
        Metric(m.id, m.name, "Intercom", "Customer Support", win_back if n == 3 else ())
        for n, m in enumerate(seeded)
    ]
    requests_made = [r for r in klaviyo.received if r.path.startswith(METRICS)][-3:]
    assert klaviyo.count("GET", METRICS) - before == 3
    assert all("page%5Bsize%5D" not in r.path and "page[size]" not in r.path for r in requests_made)


@pytest.mark.parametrize(
    ("params", "parameter", "detail"),
    [
        (
            {"page[size]": "50"},
            "page[size]",
            "'page[size]' is not a valid query parameter for this endpoint.",
        ),
        (
            {"filter": 'equals(name,"Created Conversation")'},
            "filter",
            "Invalid filter 'equals(name,\"Created Conversation\")': get_metrics filters only with equals on "
            "integration.name or integration.category.",
        ),
        (
            {"include": "flows"},
            "include",
            "'flows' is not a valid value for include; use flow-triggers.",
        ),
    ],
)
def test_a_query_get_metrics_does_not_take_is_a_400_naming_the_parameter(
    klaviyo: KlaviyoServer, http: requests.Session, params: dict[str, str], parameter: str, detail: str
) -> None:
    """Unknown parameters (page[size] too), another filter field and another include are refused."""
    reply = get(http, klaviyo.url + METRICS, **params)
    assert reply.status_code == 400
    assert schema_errors("responses", "ClientError", reply.json()) == []
    [problem] = reply.json()["errors"]
    assert (problem["source"], problem["detail"]) == ({"parameter": parameter}, detail)


def test_a_key_without_metrics_read_gets_a_403_and_the_client_says_none(clock: FakeClock) -> None:
    """get_metrics needs `metrics:read` (spec x-klaviyo-scopes): without it, 403; the lister answers None."""
    scopes = {SANDBOX_API_KEY: ALL_SCOPES - {"metrics:read"}}
    with sandbox(clock, KlaviyoSettings(api_keys=scopes)) as klaviyo, client_for(klaviyo, clock) as client:
        assert client.metrics(integration="Intercom", flows=True) is None
        assert klaviyo.count("GET", METRICS, status=403) == 1
