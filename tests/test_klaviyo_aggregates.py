"""`POST /api/metric-aggregates` in the fake Klaviyo and the client that reconcile uses: counts per UTC day
of the events stored in the API metric, the spec's request and response shapes, its errors, and its own rate
limit (3/s, 60/m), which the client keeps without a single 429."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests

from etl.errors import KlaviyoError
from etl.klaviyo_aggregates import aggregate_query, daily_values
from etl.klaviyo_batches import cut_event_batches
from etl.models import OutboxItem
from etl.sandbox.klaviyo_server import ALL_SCOPES, SANDBOX_API_KEY, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings
from tests.klaviyo_fixtures import HEADERS, FakeClock, client_for, event_item, sandbox, schema_errors

AGGREGATES = "/api/metric-aggregates"
MAY = datetime(2026, 5, 1, tzinfo=UTC)


def send(server: KlaviyoServer, *items: OutboxItem) -> None:
    body = cut_event_batches(list(items))[0][0].body
    reply = requests.post(server.url + "/api/event-bulk-create-jobs", data=body, headers=HEADERS, timeout=10)
    assert reply.status_code == 202, reply.text


def api_metric(server: KlaviyoServer, name: str) -> str:
    (metric,) = [m for m in server.metrics.metrics if m.name == name and m.integration["name"] == "API"]
    return metric.id


def may_first_count(server: KlaviyoServer) -> dict[str, Any]:
    """The attributes of a count of the API's Replied to Conversation events on 2026-05-01."""
    return {
        "metric_id": api_metric(server, "Replied to Conversation"),
        "measurements": ["count"],
        "filter": [
            "greater-or-equal(datetime,2026-05-01T00:00:00)",
            "less-than(datetime,2026-05-02T00:00:00)",
        ],
    }


def post(server: KlaviyoServer, attributes: dict[str, Any]) -> requests.Response:
    body = {"data": {"type": "metric-aggregate", "attributes": attributes}}
    return requests.post(server.url + AGGREGATES, data=json.dumps(body), headers=HEADERS, timeout=10)


def test_counts_per_utc_day_of_the_api_metric_only_in_the_specs_shapes(
    klaviyo: KlaviyoServer, clock: FakeClock
) -> None:
    """Events on three days of one API metric are counted per UTC day, over exactly [since, until) (a lower
    bound inside a day leaves out that day's earlier events); another metric and the native metric of the
    same name count apart. Request and answer match the spec's schemas; counts come as floats."""
    send(
        klaviyo,
        *(event_item(n, time=MAY + timedelta(hours=12)) for n in (1, 2, 3)),  # 12:00:01, :02, :03
        *(event_item(n, time=MAY + timedelta(days=2)) for n in (4, 5)),
        event_item(3600, time=MAY + timedelta(days=4) - timedelta(seconds=1)),  # 05-04 23:59:59
        event_item(7, time=MAY + timedelta(days=5)),  # 05-06: after the window
        event_item(8, metric="Created Conversation", time=MAY + timedelta(hours=1)),
    )
    native = klaviyo.metrics.seed("Replied to Conversation")
    replied = api_metric(klaviyo, "Replied to Conversation")
    with client_for(klaviyo, clock) as client:
        whole = client.metric_aggregates(replied, MAY, MAY + timedelta(days=5))
        partial = client.metric_aggregates(
            replied, MAY + timedelta(hours=12, seconds=2), MAY + timedelta(days=4)
        )
        assert client.metric_aggregates(native.id, MAY, MAY + timedelta(days=5)) == {}
        created = client.metric_aggregates(
            api_metric(klaviyo, "Created Conversation"), MAY, MAY + timedelta(days=1)
        )
    assert whole == {date(2026, 5, 1): 3, date(2026, 5, 3): 2, date(2026, 5, 4): 1}
    assert partial == {date(2026, 5, 1): 2, date(2026, 5, 3): 2, date(2026, 5, 4): 1}
    assert created == {date(2026, 5, 1): 1}

    asked = [r for r in klaviyo.received if r.path.startswith(AGGREGATES)]
    assert [r.status for r in asked] == [200] * 4
    assert asked[0].json() == {
        "data": {
            "type": "metric-aggregate",
            "attributes": {
                "metric_id": replied,
                "measurements": ["count"],
                "interval": "day",
                "timezone": "UTC",
                "filter": [
                    "greater-or-equal(datetime,2026-05-01T00:00:00)",
                    "less-than(datetime,2026-05-06T00:00:00)",
                ],
            },
        }
    }
    for request in asked:
        assert schema_errors("requests", "MetricAggregateQuery", request.json()) == []
    answer = post(klaviyo, asked[1].json()["data"]["attributes"]).json()
    assert schema_errors("metric_aggregates", "PostMetricAggregateResponse", answer) == []
    assert answer["data"]["attributes"]["dates"] == [f"2026-05-0{d}T00:00:00+00:00" for d in (1, 2, 3, 4)]
    assert answer["data"]["attributes"]["data"] == [
        {"dimensions": [], "measurements": {"count": [2.0, 0.0, 2.0, 1.0]}}
    ]


def test_other_measurements_intervals_and_a_timezone_shift_the_buckets(klaviyo: KlaviyoServer) -> None:
    """Bounds without an offset are read in the query's timezone, and so are its days; `unique` counts
    profiles, `hour` buckets hours."""
    send(
        klaviyo,
        event_item(1, email="ada@example.com", time=MAY + timedelta(hours=3)),  # 04-30 23:00 in New York
        event_item(2, email="ada@example.com", time=MAY + timedelta(hours=5)),  # 05-01 01:00
        event_item(3, email="bob@example.com", time=MAY + timedelta(hours=5)),
    )
    metric = api_metric(klaviyo, "Replied to Conversation")
    window = ["greater-or-equal(datetime,2026-04-30T00:00:00)", "less-than(datetime,2026-05-02T00:00:00)"]
    reply = post(
        klaviyo,
        {
            "metric_id": metric,
            "measurements": ["count", "unique"],
            "timezone": "America/New_York",
            "filter": window,
        },
    )
    assert reply.status_code == 200, reply.text
    attributes = reply.json()["data"]["attributes"]
    assert attributes["dates"] == ["2026-04-30T00:00:00-04:00", "2026-05-01T00:00:00-04:00"]
    assert attributes["data"][0]["measurements"] == {"count": [1.0, 2.0], "unique": [1.0, 2.0]}
    hourly = post(
        klaviyo,
        {"metric_id": metric, "measurements": ["count"], "interval": "hour",
         "filter": ["greater-or-equal(datetime,2026-05-01T04:00:00)", "less-than(datetime,2026-05-01T06:00:00)"]},
    ).json()  # fmt: skip
    assert hourly["data"]["attributes"]["data"][0]["measurements"] == {"count": [0.0, 2.0]}


@pytest.mark.parametrize(
    ("change", "status", "pointer", "detail"),
    [
        (
            {"filter": ["greater-or-equal(datetime,2026-05-01T00:00:00)"]},
            400,
            "/data/attributes/filter",
            "The filter must include a time range: greater-or-equal and less-than on datetime.",
        ),
        ({"metric": "x"}, 400, "/data/attributes/metric", "'metric' is not a valid field for this resource."),
        (
            {"measurements": ["avg"]},
            400,
            "/data/attributes/measurements/0",
            "'avg' is not one of ['count', 'sum_value', 'unique'].",
        ),
        ({"timezone": "Mars/Base"}, 400, "/data/attributes/timezone", "'Mars/Base' is not a valid timezone."),
        (
            {"by": ["$flow"]},
            400,
            "/data/attributes/by",
            "The sandbox does not model partitioning by dimensions.",
        ),
        ({"metric_id": "nope42"}, 404, None, "A metric with id 'nope42' does not exist."),
    ],
)
def test_a_query_klaviyo_refuses_names_what_is_wrong(
    klaviyo: KlaviyoServer, change: dict[str, Any], status: int, pointer: str | None, detail: str
) -> None:
    """A time range is required; fields outside the schema, measurements outside its enum, an unknown
    timezone or metric are refused in the spec's error shape (and dimensions, which the sandbox does not model)."""
    send(klaviyo, event_item(1, time=MAY))
    attributes = {**may_first_count(klaviyo), **change}
    reply = post(klaviyo, attributes)
    assert reply.status_code == status
    assert schema_errors("responses", "ClientError", reply.json()) == []
    [problem] = reply.json()["errors"]
    assert (problem.get("source", {}).get("pointer"), problem["detail"]) == (pointer, detail)


def test_the_client_keeps_the_endpoints_own_rate_limit_without_a_429(
    klaviyo: KlaviyoServer, clock: FakeClock
) -> None:
    """Four queries at one instant: the fourth is a 429 (burst 3/s, not the bulk endpoints' 10/s). The
    client, sharing the fake clock, makes 65 queries with no 429: 3 at once, then 3 a second, and past 60
    it waits for the minute."""
    send(klaviyo, event_item(1, time=MAY))
    attributes = may_first_count(klaviyo)
    assert [post(klaviyo, attributes).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert klaviyo.received[-1].reply_headers["Retry-After"] == "1"
    clock.now += 60
    start = clock.now
    with client_for(klaviyo, clock) as client:
        counts = [
            client.metric_aggregates(attributes["metric_id"], MAY, MAY + timedelta(days=1)) for _ in range(65)
        ]
    assert counts == [{date(2026, 5, 1): 1}] * 65
    assert klaviyo.count("POST", AGGREGATES, status=429) == 1  # the raw burst's only
    assert clock.now - start >= 60  # the 61st query waited for the first minute to pass
    # the 4th waited a second (and the margin) after the 1st: the 3rd's RateLimit-Remaining: 0 with a reset in
    # 1 s, then the pacer's own reservation, 1.1 s after the 1st
    assert clock.waits[:2] == [1.0, pytest.approx(0.1)]


def test_a_key_without_metrics_read_fails_with_klaviyo_s_exit_code(clock: FakeClock) -> None:
    """query_metric_aggregates needs `metrics:read`: without it the client's error is a KlaviyoError (exit 4)."""
    scopes = {SANDBOX_API_KEY: ALL_SCOPES - {"metrics:read"}}
    with (
        sandbox(clock, KlaviyoSettings(api_keys=scopes)) as klaviyo,
        client_for(klaviyo, clock) as client,
        pytest.raises(KlaviyoError) as failure,
    ):
        client.metric_aggregates("abc123", MAY, MAY + timedelta(days=1))
    assert failure.value.exit_code == 4
    assert "403" in str(failure.value) and "KLAVIYO_API_KEY" in str(failure.value)


def test_an_answer_not_parallel_to_its_dates_is_refused() -> None:
    """A value list shorter than `dates` is not the spec's shape: ValueError, which the client turns into exit 4."""
    body = {
        "data": {
            "attributes": {"dates": ["2026-05-01T00:00:00+00:00"], "data": [{"measurements": {"count": []}}]}
        }
    }
    with pytest.raises(ValueError, match="not a list parallel to dates"):
        daily_values(body)
    assert json.loads(aggregate_query("m1", MAY, MAY + timedelta(hours=1)))["data"]["attributes"][
        "filter"
    ] == [
        "greater-or-equal(datetime,2026-05-01T00:00:00)",
        "less-than(datetime,2026-05-01T01:00:00)",
    ]
