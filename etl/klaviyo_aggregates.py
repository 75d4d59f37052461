"""Pure helpers of `POST /api/metric-aggregates` (query_metric_aggregates), for `etl reconcile`
(docs/design.md §7.1): the request body, the reading of its answer, and the pacing its rate limit needs.

The request (spec `MetricAggregateQuery`, revision 2026-07-15): `metric_id`, `measurements`, `interval`,
`timezone`, and a `filter` list that "must include time range using ISO 8601 format
(YYYY-MM-DDTHH:MM:SS.mmmmmm)" as a `greater-or-equal` and a `less-than` filter on `datetime`. The answer
(`PostMetricAggregateResponse`): `data.attributes.dates`, the start of each interval, and `data.attributes.data`,
one row per dimension combination (one row without `by`) whose `measurements` map each measurement to a list
of values parallel to `dates`.

The endpoint allows burst 3/s and steady 60/m (spec `x-klaviyo-ratelimit`), far below the bulk endpoints'
10/s and 150/m: the client paces its requests to that limit (`etl.klaviyo.rate_limits`, `etl.pacing`), and
reconcile asks once per metric over its whole window, never once per day.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

AGGREGATES_PATH = "/api/metric-aggregates"
AGGREGATES_LIMITS = ((3, 1.0), (60, 60.0))  # (requests, per seconds): spec x-klaviyo-ratelimit burst / steady


def aggregate_query(metric_id: str, since: datetime, until: datetime, *, measurement: str = "count") -> bytes:
    """The body counting one metric's events per UTC day of `[since, until)`.

    The bounds are written without an offset, as the spec's example does: they are read in the query's
    `timezone`, which is UTC here.
    """

    def stamp(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")

    body = {
        "data": {
            "type": "metric-aggregate",
            "attributes": {
                "metric_id": metric_id,
                "measurements": [measurement],
                "interval": "day",
                "timezone": "UTC",
                "filter": [
                    f"greater-or-equal(datetime,{stamp(since)})",
                    f"less-than(datetime,{stamp(until)})",
                ],
            },
        }
    }
    return json.dumps(body, separators=(",", ":")).encode()


def daily_values(body: Any, measurement: str = "count") -> dict[date, int]:
    """UTC day → the measurement, summed over the answer's rows; days without events are left out.

    Raises ValueError when the answer does not have the spec's shape (values not parallel to `dates`).
    """
    attributes = ((body or {}).get("data") or {}).get("attributes") if isinstance(body, Mapping) else None
    if not isinstance(attributes, Mapping) or not isinstance(attributes.get("dates"), list):
        raise ValueError("no data.attributes.dates")
    days = [
        datetime.fromisoformat(str(d).replace("Z", "+00:00")).astimezone(UTC).date()
        for d in attributes["dates"]
    ]
    found: dict[date, int] = {}
    for row in attributes.get("data") or []:
        values = ((row or {}).get("measurements") or {}).get(measurement)
        if not isinstance(values, list) or len(values) != len(days):
            raise ValueError(f"measurements.{measurement} is not a list parallel to dates")
        for day, value in zip(days, values, strict=True):
            if value:  # Klaviyo sends counts as floats (3.0)
                found[day] = found.get(day, 0) + round(float(value))
    return found
