"""`POST /api/metric-aggregates` (query_metric_aggregates) over the events the fake Klaviyo stored.

As the spec (revision 2026-07-15) describes it: the body is a `MetricAggregateQuery` (checked against the
spec's schema like the bulk bodies: unknown fields, wrong types and values outside the enums are 400s that
point at them); its `filter` list "must include time range", a `greater-or-equal` and a `less-than` filter
on `datetime` (ISO 8601; without an offset a bound is read in the query's `timezone`, an IANA name, default
UTC); `interval` is `hour`, `day` (the default), `week` or `month`. The answer is a
`PostMetricAggregateResponse`: `dates`, the start of every interval from the one holding the lower bound up
to the upper bound, and one row (`dimensions` empty) whose `measurements` map each measurement asked for to
a list of floats parallel to `dates` (Klaviyo sends counts as floats): `count` (events), `unique` (distinct
profiles), `sum_value` (the sum of the numeric `$value` properties).

What a metric counts: Klaviyo keeps one metric per name and sending mechanism, so the events sent through
the API count in the API metric of their name only; a native integration's metric seeded in the sandbox
counts none. The sandbox's own readings, where the spec says nothing: an unknown `metric_id` is a 404; weeks
start on Monday; `by` (partitioning by dimensions) and filters on anything but `datetime` are refused with a
400 saying the sandbox does not model them; `page_size`, `page_cursor`, `return_fields` and `sort` are
accepted and change nothing, since the answer is one row.
"""

from __future__ import annotations

import bisect
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from etl.sandbox.klaviyo_metrics import API_INTEGRATION, MetricBook
from etl.sandbox.klaviyo_schema import problems
from etl.sandbox.klaviyo_store import StoredEvent, error, invalid

_ATTRIBUTES = "/data/attributes"
_BOUND = re.compile(r"^(greater-or-equal|less-than)\(datetime,([^()]+)\)$")
MAX_INTERVALS = 10_000  # a bound on the answer's length; an hourly year is 8,784


class AggregateRefused(Exception):
    """The request fails: the status and the JSON:API errors to answer with."""

    def __init__(self, status: int, *errors: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.errors = list(errors)


def aggregate(body: Any, metrics: MetricBook, events: Iterable[StoredEvent], base_url: str) -> dict[str, Any]:
    """The answer to one query; raises AggregateRefused for a query Klaviyo (or the sandbox) refuses."""
    found = [invalid(message, pointer) for pointer, message in problems(body, "MetricAggregateQuery")]
    if found:
        raise AggregateRefused(400, *found)
    attributes = body["data"]["attributes"]
    if attributes.get("by"):
        raise AggregateRefused(
            400, invalid("The sandbox does not model partitioning by dimensions.", f"{_ATTRIBUTES}/by")
        )
    zone = _zone(attributes.get("timezone") or "UTC")
    start, end = _bounds(attributes["filter"], zone)
    interval = attributes.get("interval") or "day"
    metric = metrics.metric(attributes["metric_id"])
    if metric is None:
        detail = f"A metric with id '{attributes['metric_id']}' does not exist."
        raise AggregateRefused(404, error(404, "not_found", "Not found.", detail))
    dates = _intervals(start, end, interval, zone)
    counted = [e for e in events if metric.integration == API_INTEGRATION and e.metric == metric.name]
    buckets: list[list[StoredEvent]] = [[] for _ in dates]
    for event in counted:
        moment = datetime.fromisoformat(event.time.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if start <= moment < end:  # hence at or after dates[0]
            buckets[bisect.bisect_right(dates, moment) - 1].append(event)
    measurements = {
        name: [_measure(name, bucket) for bucket in buckets] for name in attributes["measurements"]
    }
    url = f"{base_url}/api/metric-aggregates/"
    return {
        "data": {
            "type": "metric-aggregate",
            "id": str(uuid.uuid4()),
            "attributes": {
                "dates": [first.isoformat() for first in dates],
                "data": [{"dimensions": [], "measurements": measurements}],
            },
            "links": {"self": url},
        },
        "links": {"self": url},
    }


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise AggregateRefused(
            400, invalid(f"'{name}' is not a valid timezone.", f"{_ATTRIBUTES}/timezone")
        ) from None


def _bounds(filters: list[str], zone: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) from the filter list: exactly one greater-or-equal and one less-than on datetime."""
    found: dict[str, datetime] = {}
    for index, expression in enumerate(filters):
        pointer = f"{_ATTRIBUTES}/filter/{index}"
        match = _BOUND.match(expression.replace(" ", ""))
        if match is None:
            raise AggregateRefused(
                400,
                invalid(
                    f"Unsupported filter '{expression}': the sandbox models only greater-or-equal and "
                    "less-than on datetime.",
                    pointer,
                ),
            )
        try:
            moment = datetime.fromisoformat(match[2])
        except ValueError:
            raise AggregateRefused(
                400, invalid(f"'{match[2]}' is not an ISO 8601 datetime.", pointer)
            ) from None
        found[match[1]] = moment if moment.tzinfo else moment.replace(tzinfo=zone)
    if set(found) != {"greater-or-equal", "less-than"}:
        detail = "The filter must include a time range: greater-or-equal and less-than on datetime."
        raise AggregateRefused(400, invalid(detail, f"{_ATTRIBUTES}/filter"))
    start, end = found["greater-or-equal"], found["less-than"]
    if start >= end:
        raise AggregateRefused(
            400, invalid("The start of the time range must be before its end.", f"{_ATTRIBUTES}/filter")
        )
    return start, end


def _floor(moment: datetime, interval: str) -> datetime:
    if interval == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1) if interval == "month" else day


def _next(first: datetime, interval: str, zone: tzinfo) -> datetime:
    if interval == "month":
        year, month = (first.year + 1, 1) if first.month == 12 else (first.year, first.month + 1)
        return first.replace(year=year, month=month)
    if interval == "hour":  # hours are counted in UTC: a DST change has an hour of 0 or 2 local hours
        return (first.astimezone(UTC) + timedelta(hours=1)).astimezone(zone)
    return first + timedelta(days=7 if interval == "week" else 1)  # wall-clock days in the zone


def _intervals(start: datetime, end: datetime, interval: str, zone: tzinfo) -> list[datetime]:
    """The starts of the intervals from the one holding `start` up to `end` (exclusive), in the zone."""
    first = _floor(start.astimezone(zone), interval)
    dates: list[datetime] = []
    while first < end:
        dates.append(first)
        if len(dates) > MAX_INTERVALS:
            raise AggregateRefused(
                400,
                invalid(
                    f"The time range spans more than {MAX_INTERVALS} intervals.", f"{_ATTRIBUTES}/filter"
                ),
            )
        first = _next(first, interval, zone)
    return dates


def _measure(name: str, events: list[StoredEvent]) -> float:
    if name == "count":
        return float(len(events))
    if name == "unique":
        return float(len({e.profile for e in events}))
    return float(sum(_value(e.properties) for e in events))  # sum_value


def _value(properties: Mapping[str, Any]) -> float:
    value = properties.get("$value")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
