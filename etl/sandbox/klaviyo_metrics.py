"""The fake Klaviyo's metrics and the flows they trigger, and `GET /api/metrics` (get_metrics) over them.

Klaviyo keeps one metric per name *and* sending mechanism ("All Placed Order events collected or sent via
the same mechanism (a given integration or our APIs) will share the same Placed Order metric", Metrics API
overview): an event sent through the API creates, or lands in, the metric of its name whose `integration`
is Klaviyo's API one, never a native integration's metric of the same name. Tests and demos seed a native
integration's metrics (Intercom's) and flows that metrics trigger.

`GET /api/metrics` as the spec (revision 2026-07-15) describes it: each metric with `name`, `created`,
`updated` and `integration`; `filter` with `equals` on `integration.name` or `integration.category` (the
value in double or single quotes); `include=flow-triggers` (the flows in `included`, their ids in each
metric's `relationships`); sparse `fields[metric]` / `fields[flow]`; at most 200 metrics a page, paged by
`page[cursor]` through `links.next`. The operation takes no other query parameter (`page[size]` neither):
anything else is a 400 naming the parameter, as `QueryError`.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

# the `integration` of metrics created through Klaviyo's APIs, as get_metrics reports it
API_INTEGRATION: Mapping[str, str] = {
    "object": "integration",
    "id": "7FtS4J",
    "key": "api",
    "name": "API",
    "category": "API",
}
# a native integration's: the name is the one Klaviyo filters on; id and category are the sandbox's own
INTERCOM_INTEGRATION: Mapping[str, str] = {
    "object": "integration",
    "id": "sbxICM",
    "key": "intercom",
    "name": "Intercom",
    "category": "Customer Support",
}
MAX_PAGE = 200  # "Returns a maximum of 200 results per page" (spec, get_metrics)
PARAMETERS = frozenset({"fields[flow]", "fields[metric]", "filter", "include", "page[cursor]"})
INCLUDES = frozenset({"flow-triggers"})
METRIC_FIELDS = frozenset({"created", "id", "integration", "name", "updated"})
FLOW_FIELDS = frozenset({"archived", "created", "id", "name", "status", "trigger_type", "updated"})
_FILTER = re.compile(r"""^equals\(integration\.(name|category),(?:"([^"]*)"|'([^']*)')\)$""")


class QueryError(Exception):
    """A query parameter Klaviyo would refuse: a 400 whose `source.parameter` names it."""

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(detail)
        self.parameter = parameter
        self.detail = detail


@dataclass
class StoredMetric:
    """One metric of the account: its name and the integration (sending mechanism) it belongs to."""

    id: str
    name: str
    integration: Mapping[str, str]
    created: float
    updated: float
    flow_ids: list[str] = field(default_factory=list)  # the flows this metric triggers


@dataclass(frozen=True)
class StoredFlow:
    """One flow, triggered by a metric."""

    id: str
    name: str
    status: str  # "draft", "manual" or "live"
    created: float


class MetricBook:
    """Thread-safe metrics and flows of one fake account, in creation order."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self._metrics: dict[str, StoredMetric] = {}
        self._flows: dict[str, StoredFlow] = {}
        self._made = 0
        self.page_size = MAX_PAGE  # tests shrink it to page through few metrics

    def _new_id(self, kind: str) -> str:
        # six characters like Klaviyo's ids, and the same in every run so that tests can pin output
        self._made += 1
        return hashlib.sha256(f"{kind}:{self._made}".encode()).hexdigest()[:6]

    def record_events(self, metric_names: Iterable[str]) -> None:
        """Events of these metric names arrived through the API: their API metrics exist from now on."""
        now = self.clock()
        with self.lock:
            api = {m.name: m for m in self._metrics.values() if m.integration == API_INTEGRATION}
            for name in metric_names:
                if name in api:
                    api[name].updated = now
                else:
                    metric = StoredMetric(self._new_id("metric"), name, API_INTEGRATION, now, now)
                    self._metrics[metric.id] = api[name] = metric

    def seed(self, name: str, integration: Mapping[str, str] = INTERCOM_INTEGRATION) -> StoredMetric:
        """A metric of a native integration (Intercom's by default), as if that integration had sent events."""
        now = self.clock()
        with self.lock:
            metric = StoredMetric(self._new_id("metric"), name, integration, now, now)
            self._metrics[metric.id] = metric
            return metric

    def seed_flow(self, metric_id: str, name: str, status: str = "live") -> StoredFlow:
        """A flow triggered by the metric `metric_id`."""
        with self.lock:
            flow = StoredFlow(self._new_id("flow"), name, status, self.clock())
            self._flows[flow.id] = flow
            self._metrics[metric_id].flow_ids.append(flow.id)
            return flow

    def metric(self, metric_id: str) -> StoredMetric | None:
        """The metric of this id, if the account has it."""
        with self.lock:
            return self._metrics.get(metric_id)

    @property
    def metrics(self) -> list[StoredMetric]:
        with self.lock:
            return list(self._metrics.values())

    def page(self, query: Mapping[str, list[str]], base_url: str) -> dict[str, Any]:
        """The body of `GET /api/metrics` for this query; raises QueryError for a parameter it refuses."""
        unknown = sorted(set(query) - PARAMETERS)
        if unknown:
            raise QueryError(unknown[0], f"'{unknown[0]}' is not a valid query parameter for this endpoint.")
        single = {name: values[-1] for name, values in query.items()}
        includes = _listed(single, "include", INCLUDES) or set()
        metric_fields = _listed(single, "fields[metric]", METRIC_FIELDS)
        flow_fields = _listed(single, "fields[flow]", FLOW_FIELDS)
        cursor = single.get("page[cursor]", "0")
        if not cursor.isdigit():
            raise QueryError("page[cursor]", "Invalid page cursor; follow links.next.")
        start = int(cursor)
        wanted = _filter(single.get("filter"))
        with self.lock:
            chosen = [m for m in self._metrics.values() if wanted is None or _matches(m, *wanted)]
            window = chosen[start : start + self.page_size]
            flows = {fid: self._flows[fid] for m in window for fid in m.flow_ids}
            data = [_metric_resource(m, base_url, metric_fields, "flow-triggers" in includes) for m in window]
        links = _links(base_url, single, start, self.page_size, len(chosen))
        body: dict[str, Any] = {"data": data, "links": links}
        if "flow-triggers" in includes:
            body["included"] = [_flow_resource(f, base_url, flow_fields) for f in flows.values()]
        return body


def _listed(query: Mapping[str, str], name: str, allowed: frozenset[str]) -> set[str] | None:
    """A comma-separated parameter's values (None when absent); a value outside `allowed` is refused."""
    if name not in query:
        return None
    values = {value.strip() for value in query[name].split(",")}
    wrong = sorted(values - allowed)
    if wrong:
        raise QueryError(
            name, f"'{wrong[0]}' is not a valid value for {name}; use {', '.join(sorted(allowed))}."
        )
    return values


def _filter(expression: str | None) -> tuple[str, str] | None:
    """(integration field, value) of a get_metrics filter, None without one; anything else is refused."""
    if expression is None:
        return None
    match = _FILTER.match(expression)
    if match is None:
        raise QueryError(
            "filter",
            f"Invalid filter '{expression}': get_metrics filters only with equals on integration.name "
            "or integration.category.",
        )
    return match[1], match[2] if match[2] is not None else match[3]


def _matches(metric: StoredMetric, field_name: str, value: str) -> bool:
    return metric.integration.get(field_name) == value


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def _metric_resource(
    metric: StoredMetric, base_url: str, fields: set[str] | None, with_flows: bool
) -> dict[str, Any]:
    url = f"{base_url}/api/metrics/{metric.id}/"
    attributes = {
        "name": metric.name,
        "created": _iso(metric.created),
        "updated": _iso(metric.updated),
        "integration": dict(metric.integration),
    }
    triggers: dict[str, Any] = {
        "links": {"self": f"{url}relationships/flow-triggers/", "related": f"{url}flow-triggers/"}
    }
    if with_flows:
        triggers["data"] = [{"type": "flow", "id": fid} for fid in metric.flow_ids]
    return {
        "type": "metric",
        "id": metric.id,
        "attributes": {k: v for k, v in attributes.items() if fields is None or k in fields},
        "relationships": {"flow-triggers": triggers},
        "links": {"self": url},
    }


def _flow_resource(flow: StoredFlow, base_url: str, fields: set[str] | None) -> dict[str, Any]:
    attributes = {
        "name": flow.name,
        "status": flow.status,
        "archived": False,
        "created": _iso(flow.created),
        "updated": _iso(flow.created),
        "trigger_type": "Metric",
    }
    return {
        "type": "flow",
        "id": flow.id,
        "attributes": {k: v for k, v in attributes.items() if fields is None or k in fields},
        "links": {"self": f"{base_url}/api/flows/{flow.id}/"},
    }


def _links(base_url: str, query: Mapping[str, str], start: int, size: int, total: int) -> dict[str, str]:
    """Collection links that keep the query (filter, include, fields) and move the cursor (an offset)."""
    kept = {k: v for k, v in query.items() if k != "page[cursor]"}

    def at(offset: int) -> str:
        return f"{base_url}/api/metrics/?{urlencode({**kept, 'page[cursor]': offset})}"

    links = {"self": at(start)}
    if start + size < total:
        links["next"] = at(start + size)
    if start > 0:
        links["prev"] = at(max(0, start - size))
    return links
