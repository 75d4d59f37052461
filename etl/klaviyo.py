"""Klaviyo client: models → JSON:API resources, bulk requests cut by count and bytes, import-job polling.

The JSON:API shape stops here (docs/design.md §6). `event_resource` and `profile_resource` build the payloads
the outbox stores, in the job's canonical form (default metric names and property keys); `rename` renders
one into the job's configured names (`Names`), which is what dry-run prints and what is sent, so a fixed
configuration also applies to items queued or failed before (docs/design.md §3.3).
`KlaviyoClient.send_profiles` / `send_events` deliver outbox items and say, per outbox id, whether Klaviyo
accepted it. Retries, pacing and 429s are `etl.http`'s one policy, paced to each endpoint's own rate limit
(`rate_limits`); a 400
whose error pointers name items fails those items and the rest is resent; a 400 naming no item (or a 413)
is split until the items Klaviyo refuses are isolated (`_resend`); an error about a request parameter and
any other 4xx stop the delivery with a `KlaviyoError`, leaving the items pending. `KlaviyoClient.metrics`
lists the account's metrics by integration, with the flows they trigger, for `etl check --online`
(docs/design.md §4); `KlaviyoClient.metric_aggregates` counts one metric's events per UTC day, for
`etl reconcile` (docs/design.md §7.1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from etl import logs
from etl.errors import KlaviyoError
from etl.http import DEFAULT_RETRY_BUDGET, ApiClient, HttpClient, Reply
from etl.klaviyo_aggregates import AGGREGATES_LIMITS, AGGREGATES_PATH, aggregate_query, daily_values
from etl.models import Event, OutboxItem, Profile, iso_z
from etl.pacing import Limits

if TYPE_CHECKING:  # the batch cutters load when something is sent: a run that found nothing new sends nothing
    from etl.klaviyo_batches import EventBatch, ProfileBatch

log = logs.get_logger("klaviyo")

REVISION = "2026-07-15"  # the Klaviyo API revision this client is written against (spec info.version)
JSON_API = "application/vnd.api+json"  # the only media type the /api/ endpoints accept (spec requestBody)
EVENTS_PATH = "/api/event-bulk-create-jobs"
IMPORT_JOBS_PATH = "/api/profile-bulk-import-jobs"
# a rejection of the request body: a 400 (naming items or not) or a 413 (Klaviyo's size limit, which may be
# stricter than ours); both are resolved by failing or isolating items, never by stopping the delivery
REJECTED = (400, 413)
IMPORT_ERRORS_PAGE_SIZE = 100  # max page[size] of GET …/import-errors (spec)
METRICS_PATH = "/api/metrics"  # get_metrics: 200 a page, no page[size] (spec)
API_CATEGORY = "API"  # integration.category of the metrics that events sent through the API land in
POLL_INTERVAL_SECONDS = 2.0  # between import-job status checks; a job of 10,000 profiles takes seconds
JOB_TIMEOUT_SECONDS = 900.0  # give up waiting for one import job after this long (its items stay pending)
# burst 10/s, steady 150/m: the spec's x-klaviyo-ratelimit of every operation this client calls (bulk event
# create, bulk profile import and its job, jobs and import-errors reads, get_metrics) but metric-aggregates
ENDPOINT_LIMITS: Limits = ((10, 1.0), (150, 60.0))
CONCURRENCY = 4  # requests one client keeps in flight at most: 10 a second leave no use for more


def rate_limits(method: str, path: str) -> tuple[str, Limits]:
    """The rate-limit bucket of a request and its limits: Klaviyo limits each endpoint (operation) of an
    account on its own (rate limits guide; the spec states them per operation), so a job id in the path is
    one endpoint's parameter, not an endpoint of its own."""
    path = path.rstrip("/")
    if path.startswith(f"{IMPORT_JOBS_PATH}/"):
        path = f"{IMPORT_JOBS_PATH}/{{id}}" + ("/import-errors" if path.endswith("/import-errors") else "")
    return f"{method} {path}", AGGREGATES_LIMITS if path == AGGREGATES_PATH else ENDPOINT_LIMITS


@dataclass(frozen=True)
class Delivery:
    """What Klaviyo did with a delivery: outbox ids accepted; outbox id → one-line error for the rejected."""

    sent: tuple[int, ...] = ()
    failed: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Flow:
    """A flow of the account, as a metric's `flow-triggers` name it."""

    id: str
    name: str
    status: str


@dataclass(frozen=True)
class Metric:
    """A metric of the account and the integration (sending mechanism) it belongs to."""

    id: str
    name: str
    integration: str  # integration.name: "Intercom", "API", …
    category: str  # integration.category
    flows: tuple[Flow, ...] = ()  # the flows it triggers (when asked for)


@dataclass(frozen=True)
class Names:
    """A job's `metric_names` and `property_names`: default name → the name Klaviyo gets."""

    metrics: Mapping[str, str] = field(default_factory=dict)
    properties: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.metrics or self.properties)


DEFAULT_NAMES = Names()


def _renamed_keys(values: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    # jobs.yaml may rename a default name onto another: then the later key of the two wins
    return {names.get(key, key): value for key, value in values.items()}


def rename(payload: Mapping[str, Any], kind: str, names: Names) -> Mapping[str, Any]:
    """A canonical outbox payload (`event_resource` / `profile_resource`) under the job's configured names.

    Events: the metric name and the top-level property keys; profiles: the top-level property keys and the
    keys of `meta.patch_properties.unset`. Everything else (identifiers, times, unique_ids) is untouched,
    and so is `payload` itself. Without names, `payload` is returned as it is.
    """
    if not names:
        return payload
    attributes = payload["attributes"]
    if kind == "event":
        events = [_renamed_event(event, names) for event in attributes["events"]["data"]]
        return {**payload, "attributes": {**attributes, "events": {**attributes["events"], "data": events}}}
    result: dict[str, Any] = dict(payload)
    if "properties" in attributes:
        properties = _renamed_keys(attributes["properties"], names.properties)
        result["attributes"] = {**attributes, "properties": properties}
    meta = payload.get("meta") or {}
    patch = meta.get("patch_properties") or {}
    if patch.get("unset"):  # keys of properties to remove are property keys too
        renamed = list(dict.fromkeys(names.properties.get(key, key) for key in patch["unset"]))
        result["meta"] = {**meta, "patch_properties": {**patch, "unset": renamed}}
    return result


def _renamed_event(event: Mapping[str, Any], names: Names) -> dict[str, Any]:
    attributes = dict(event["attributes"])
    if "properties" in attributes:
        attributes["properties"] = _renamed_keys(attributes["properties"], names.properties)
    metric = attributes["metric"]["data"]
    name = metric["attributes"]["name"]
    renamed = {**metric, "attributes": {**metric["attributes"], "name": names.metrics.get(name, name)}}
    attributes["metric"] = {**attributes["metric"], "data": renamed}
    return {**event, "attributes": attributes}


def rendered(items: Sequence[OutboxItem], names: Names) -> list[OutboxItem]:
    """Outbox items with their payloads under the job's configured names (the same items without names)."""
    if not names:
        return list(items)
    return [replace(item, payload=rename(item.payload, item.kind, names)) for item in items]


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def event_resource(event: Event) -> dict[str, Any]:
    """The `event-bulk-create` resource of one event, as a bulk create request carries it under the default
    names."""
    identity = _present({"email": event.identity.email, "phone_number": event.identity.phone_number})
    return {
        "type": "event-bulk-create",
        "attributes": {
            "profile": {"data": {"type": "profile", "attributes": identity}},
            "events": {
                "data": [
                    {
                        "type": "event",
                        "attributes": {
                            "properties": dict(event.properties),
                            "time": iso_z(event.time, offset="+00:00", timespec="seconds"),
                            "unique_id": event.unique_id,
                            # per event, not per profile group: merged groups mix backfilled and live events
                            "backfill": event.backfill,
                            "metric": {"data": {"type": "metric", "attributes": {"name": event.metric}}},
                        },
                    }
                ]
            },
        },
    }


def profile_resource(profile: Profile) -> dict[str, Any]:
    """The `profile` resource of one profile, as a bulk import job carries it under the default names."""
    properties = dict(profile.properties)
    if profile.identity.contact_id is not None:
        properties.setdefault("intercom_contact_id", profile.identity.contact_id)
    attributes = _present(
        {
            "email": profile.identity.email,
            "phone_number": profile.identity.phone_number,
            "first_name": profile.first_name,
            "last_name": profile.last_name,
            "image": profile.image,
        }
    )
    location = _present(dict(profile.location))
    if location:
        attributes["location"] = location
    if properties:
        attributes["properties"] = properties
    resource: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if profile.unset:
        # bulk import ignores null and keeps what it is not given: a cleared property is removed by name
        # (spec ProfileUpsertQueryResourceObject.meta → ProfileMetaPatchProperties.unset)
        resource["meta"] = {"patch_properties": {"unset": list(profile.unset)}}
    return resource


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_text(error: Mapping[str, Any]) -> str:
    """`code: detail (pointer)` of one JSON:API error object, on one line."""
    source = error.get("source") or {}
    pointer = source.get("pointer") if isinstance(source, Mapping) else None
    detail = error.get("detail") or error.get("title") or "rejected"
    text = f"{error.get('code') or 'invalid'}: {detail}" + (f" ({pointer})" if pointer else "")
    return _one_line(str(text))


def _errors(body: Any) -> list[Mapping[str, Any]]:
    errors = body.get("errors") if isinstance(body, Mapping) else None
    return [e for e in errors or [] if isinstance(e, Mapping)]


def _source(error: Mapping[str, Any]) -> Mapping[str, Any]:
    source = error.get("source")
    return source if isinstance(source, Mapping) else {}


def _named(reply: Reply, path: str, ids_at: Callable[[str], tuple[int, ...]]) -> dict[int, str]:
    """Outbox id → error text for every error of a rejection whose `source.pointer` names an item.

    An error about a header or query parameter (`source.parameter`, e.g. the revision) is the request's own
    fault, which no splitting cures: it stops the delivery with the items still pending.
    """
    errors = _errors(reply.body)
    if any(_source(e).get("parameter") for e in errors):
        raise KlaviyoError(
            f"Klaviyo rejected POST {path} ({reply.status}): {_rejection_text(reply)}; "
            "the request itself is at fault, not an item (the items stay pending)"
        )
    named: dict[int, str] = {}
    for error in errors:
        pointer = _source(error).get("pointer")
        for item_id in ids_at(str(pointer)) if pointer else ():
            named.setdefault(item_id, _error_text(error))
    return named


def _rejection_text(reply: Reply) -> str:
    """Klaviyo's text of a whole rejection, on one line."""
    text = "; ".join(_error_text(e) for e in _errors(reply.body))
    return text[:500] or f"HTTP {reply.status} without error details"


def _resend(
    reply: Reply,
    item_ids: Sequence[int],
    size: int,
    named: Mapping[int, str],
    by_id: Mapping[int, OutboxItem],
    failed: dict[int, str],
) -> list[list[OutboxItem]]:
    """After a rejected request of `size` entries: what to send again, with `failed` told what not to.

    A rejection that names items fails exactly those; the rest goes again. One that names none (a 400
    pointing only at `/data`, at the list, or nowhere; a 413) is split in halves, each sent again, until
    the entries Klaviyo refuses are alone: they fail with its text and everything else is delivered. One
    poison item among n costs 2·log2(n) requests, and nothing is left pending to fail again next run.
    """
    failed.update(named)
    rest = [by_id[i] for i in item_ids if i not in named]
    if named:
        return [rest] if rest else []
    if size <= 1 or len(rest) <= 1:  # alone (duplicates of one entry share its fate)
        failed.update(dict.fromkeys(item_ids, _rejection_text(reply)))
        return []
    middle = len(rest) // 2
    return [rest[:middle], rest[middle:]]


class KlaviyoClient(ApiClient):
    """One Klaviyo account: bulk profile import and bulk event create over the shared HTTP policy."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        api_key_env: str,
        revision: str = REVISION,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        job_timeout: float = JOB_TIMEOUT_SECONDS,
        retry_budget: timedelta = DEFAULT_RETRY_BUDGET,
    ) -> None:
        self.http = HttpClient(
            service="Klaviyo",
            base_url=base_url,
            headers={
                "Authorization": f"Klaviyo-API-Key {api_key}",
                "revision": revision,
                "Accept": JSON_API,
                "Content-Type": JSON_API,
            },
            error_class=KlaviyoError,
            secret_env=api_key_env,
            credential="private API key",
            secrets=(api_key,),
            retry_budget=retry_budget,
            budget_setting="klaviyo.retry_budget",
            # a 429 without Retry-After: Klaviyo's burst window is 1 s, its steady one 1 min; the wait
            # doubles from the one towards the other ("rate limits, status codes, and errors" guide)
            throttle_wait=1.0,
            rate_limits=rate_limits,
            concurrency=CONCURRENCY,
            sleep=sleep,
            clock=clock,
        )
        self.sleep = sleep
        self.clock = clock
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout

    def check(self) -> None:
        """One cheap authenticated read (the newest import job): raises KlaviyoError if key or revision is refused.

        A read cannot prove the write scopes (events:write, profiles:write, lists:write); a key without them
        fails the first delivery with a 403 that names them.
        """
        self.http.request("GET", IMPORT_JOBS_PATH, params={"page[size]": 1})

    def metrics(
        self, *, integration: str | None = None, category: str | None = None, flows: bool = False
    ) -> list[Metric] | None:
        """The account's metrics of one integration (by name) or category, with the flows they trigger if
        `flows`; every page. None when the key may not read metrics (403: it lacks `metrics:read`)."""
        params: dict[str, Any] = {}
        if integration is not None:
            params["filter"] = f'equals(integration.name,"{integration}")'
        elif category is not None:
            params["filter"] = f'equals(integration.category,"{category}")'
        if flows:
            params["include"] = "flow-triggers"
        found: list[Metric] = []
        url: str | None = METRICS_PATH
        query: dict[str, Any] | None = params
        while url:
            reply = self.http.request("GET", url, params=query, accept=(403,))
            if reply.status == 403:
                return None
            body = reply.body or {}
            included: dict[str, Flow] = {}
            for resource in body.get("included") or []:
                if resource.get("type") == "flow":
                    attributes = resource.get("attributes") or {}
                    flow_id = str(resource.get("id"))
                    included[flow_id] = Flow(
                        flow_id, str(attributes.get("name")), str(attributes.get("status"))
                    )
            for resource in body.get("data") or []:
                attributes = resource.get("attributes") or {}
                source = attributes.get("integration") or {}
                triggers = ((resource.get("relationships") or {}).get("flow-triggers") or {}).get(
                    "data"
                ) or []
                found.append(
                    Metric(
                        id=str(resource.get("id")),
                        name=str(attributes.get("name") or ""),
                        integration=str(source.get("name") or ""),
                        category=str(source.get("category") or ""),
                        flows=tuple(included[t["id"]] for t in triggers if t.get("id") in included),
                    )
                )
            links = body.get("links")
            following = links.get("next") if isinstance(links, Mapping) else None
            url = following if isinstance(following, str) and following else None
            query = None  # the next link carries the filter, the include and the cursor
        return found

    def metric_aggregates(self, metric_id: str, since: datetime, until: datetime) -> dict[date, int]:
        """How many events of the metric Klaviyo counts per UTC day of `[since, until)` (days without any
        are left out): one `POST /api/metric-aggregates` (measurement `count`, interval `day`, timezone UTC),
        paced to that endpoint's own rate limit (burst 3/s, steady 60/m: `rate_limits`)."""
        reply = self.http.request("POST", AGGREGATES_PATH, data=aggregate_query(metric_id, since, until))
        try:
            return daily_values(reply.body)
        except ValueError as exc:
            raise KlaviyoError(
                f"Klaviyo answered POST {AGGREGATES_PATH} with an unexpected body ({exc}); check the API revision"
            ) from None

    # -- events -----------------------------------------------------------------------------------
    def send_events(self, items: Sequence[OutboxItem], names: Names = DEFAULT_NAMES) -> Delivery:
        """Bulk-create the events of `items` (`event_resource` payloads) under `names`, in the fewest requests
        possible."""
        from etl.klaviyo_batches import cut_event_batches

        items = rendered(items, names)  # before cutting: the bytes and dedupe keys are those sent
        batches, failed = cut_event_batches(items)
        by_id = {item.id: item for item in items}
        sent: list[int] = []
        for batch in batches:
            self._post_events(batch, by_id, sent, failed)
        return Delivery(tuple(sent), failed)

    def _post_events(
        self, batch: EventBatch, by_id: Mapping[int, OutboxItem], sent: list[int], failed: dict[int, str]
    ) -> None:
        reply = self.http.request("POST", EVENTS_PATH, data=batch.body, accept=REJECTED)
        if reply.status not in REJECTED:
            sent.extend(batch.item_ids)
            return
        from etl.klaviyo_batches import cut_event_batches

        named = _named(reply, EVENTS_PATH, batch.ids_at)
        for duplicate, original in batch.duplicates.items():
            if original in named:
                named[duplicate] = named[original]
        for part in _resend(reply, batch.item_ids, batch.event_count, named, by_id, failed):
            # a part of a batch that fitted fits again; re-cutting keeps pointers and duplicates right
            for retry in cut_event_batches(part)[0]:
                self._post_events(retry, by_id, sent, failed)

    # -- profiles ---------------------------------------------------------------------------------
    def send_profiles(self, items: Sequence[OutboxItem], names: Names = DEFAULT_NAMES) -> Delivery:
        """Import the profiles of `items` (`profile_resource` payloads) under `names`: submit every job, then
        await each."""
        from etl.klaviyo_batches import cut_profile_batches

        items = rendered(items, names)  # before cutting: the bytes and superseded unset keys are those sent
        batches, failed = cut_profile_batches(items)
        by_id = {item.id: item for item in items}
        sent: list[int] = []
        jobs: list[tuple[str, ProfileBatch, float]] = []
        for batch in batches:
            self._submit_profiles(batch, by_id, jobs, failed)
        for job_id, batch, submitted_at in jobs:
            job_failed = self._await_job(job_id, batch, submitted_at)
            failed.update(job_failed)
            sent.extend(i for i in batch.item_ids if i not in job_failed)
        return Delivery(tuple(sent), failed)

    def _submit_profiles(
        self,
        batch: ProfileBatch,
        by_id: Mapping[int, OutboxItem],
        jobs: list[tuple[str, ProfileBatch, float]],
        failed: dict[int, str],
    ) -> None:
        """Submit one import job (appended to `jobs`); a rejected one as the parts Klaviyo accepts."""
        reply = self.http.request("POST", IMPORT_JOBS_PATH, data=batch.body, accept=REJECTED)
        if reply.status not in REJECTED:
            job_id = _attributes(reply.body, "id")
            if not isinstance(job_id, str | int) or isinstance(job_id, bool) or not job_id:
                raise KlaviyoError(
                    f"Klaviyo accepted POST {IMPORT_JOBS_PATH} without a job id; check the API revision"
                )
            jobs.append((str(job_id), batch, self.clock()))
            return
        from etl.klaviyo_batches import cut_profile_batches

        named = _named(reply, IMPORT_JOBS_PATH, batch.ids_at)
        for part in _resend(reply, batch.item_ids, len(batch.positions), named, by_id, failed):
            for retry in cut_profile_batches(part)[0]:  # a part of a batch that fitted fits in one
                self._submit_profiles(retry, by_id, jobs, failed)

    def _await_job(self, job_id: str, batch: ProfileBatch, checked_at: float) -> dict[int, str]:
        """Poll the import job until it is complete; outbox id → error for the profiles it rejected."""
        path = f"{IMPORT_JOBS_PATH}/{job_id}"
        deadline = checked_at + self.job_timeout
        while True:
            # a job submitted long enough ago (while earlier jobs were awaited) is checked at once
            wait = checked_at + self.poll_interval - self.clock()
            if wait > 0:
                self.sleep(wait)
            attributes = _attributes(self.http.request("GET", path).body, "attributes")
            if not isinstance(attributes, Mapping):
                raise KlaviyoError(
                    f"Klaviyo answered GET {path} with an unexpected body (no data.attributes); try again "
                    "later (its profiles stay pending and are resent)"
                )
            checked_at = self.clock()
            status = attributes.get("status")
            if status == "cancelled":
                message = f"Klaviyo cancelled import job {job_id}"
                return dict.fromkeys(batch.item_ids, message)
            if status == "complete":
                break
            if self.clock() >= deadline:
                raise KlaviyoError(
                    f"Klaviyo import job {job_id} is still {status} after {self.job_timeout:.0f} s; "
                    "run again later (its profiles stay pending and are resent)"
                )
        if not attributes.get("failed_count"):
            return {}
        return self._import_errors(job_id, batch)

    def _import_errors(self, job_id: str, batch: ProfileBatch) -> dict[int, str]:
        """Outbox id → error for each import error, matched by its pointer when that names an entry, else by
        the identifiers of its `original_payload`. Klaviyo may point only at `/data` (the spec's default
        `source.pointer`) and name the profile through `original_payload` alone.
        """
        failed: dict[int, str] = {}
        url: str | None = f"{IMPORT_JOBS_PATH}/{job_id}/import-errors"
        params: dict[str, Any] | None = {"page[size]": IMPORT_ERRORS_PAGE_SIZE}
        while url:
            body = self.http.request("GET", url, params=params).body
            found = body.get("data") if isinstance(body, Mapping) else None
            if not isinstance(found, list):
                raise KlaviyoError(
                    f"Klaviyo answered GET {IMPORT_JOBS_PATH}/{job_id}/import-errors with an unexpected body "
                    "(no data list); try again later (its profiles stay pending and are resent)"
                )
            for resource in found:
                error = _attributes({"data": resource}, "attributes")
                error = error if isinstance(error, Mapping) else {}
                pointer = _source(error).get("pointer") or ""
                ids = batch.ids_at(str(pointer)) or batch.ids_of(error.get("original_payload"))
                if ids:
                    failed.update(dict.fromkeys(ids, _error_text(error)))
                    continue
                # it names no profile we sent: failing any would mark profiles Klaviyo imported as failed
                log.warning(
                    "Klaviyo reported an import error that names no profile of the job",
                    extra={"fields": {"import_job": job_id, "error": _error_text(error)}},
                )
            links = body.get("links")
            following = links.get("next") if isinstance(links, Mapping) else None
            url = following if isinstance(following, str) and following else None
            params = None  # the next link carries the cursor and the page size
        return failed


def _attributes(body: Any, key: str) -> Any:
    """`body.data[key]` of a JSON:API document, or None whatever shape the body has instead."""
    data = body.get("data") if isinstance(body, Mapping) else None
    return data.get(key) if isinstance(data, Mapping) else None
