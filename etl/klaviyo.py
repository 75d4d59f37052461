"""Klaviyo client: models → JSON:API resources, bulk requests cut by count and bytes, import-job polling.

The JSON:API shape stops here (docs/design.md §6). `event_resource` and `profile_resource` build the payloads
the outbox stores and dry-run prints; `KlaviyoClient.send_profiles` / `send_events` deliver outbox items and
say, per outbox id, whether Klaviyo accepted it. Retries, pacing and 429s are `etl.http`'s one policy; a 400
whose error pointers name items fails those items and the rest is resent; any other 4xx stops the delivery
with a `KlaviyoError`, leaving the items pending. `KlaviyoClient.metrics` lists the account's metrics by
integration, with the flows they trigger, for `etl check --online` (docs/design.md §4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from etl.errors import KlaviyoError
from etl.http import DEFAULT_RETRY_BUDGET, ApiClient, HttpClient, Reply
from etl.klaviyo_batches import (
    EventBatch,
    ProfileBatch,
    cut_event_batches,
    cut_profile_batches,
    without,
)
from etl.models import Event, OutboxItem, Profile, iso_z

REVISION = "2026-07-15"  # the Klaviyo API revision this client is written against (spec info.version)
JSON_API = "application/vnd.api+json"  # the only media type the /api/ endpoints accept (spec requestBody)
EVENTS_PATH = "/api/event-bulk-create-jobs"
IMPORT_JOBS_PATH = "/api/profile-bulk-import-jobs"
IMPORT_ERRORS_PAGE_SIZE = 100  # max page[size] of GET …/import-errors (spec)
METRICS_PATH = "/api/metrics"  # get_metrics: 200 a page, no page[size] (spec)
API_CATEGORY = "API"  # integration.category of the metrics that events sent through the API land in
POLL_INTERVAL_SECONDS = 2.0  # between import-job status checks; a job of 10,000 profiles takes seconds
JOB_TIMEOUT_SECONDS = 900.0  # give up waiting for one import job after this long (its items stay pending)


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


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def event_resource(event: Event) -> dict[str, Any]:
    """The `event-bulk-create` resource of one event, exactly as a bulk create request carries it."""
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
    """The `profile` resource of one profile, exactly as a bulk import job carries it."""
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


def _named(errors: Iterable[Mapping[str, Any]], ids_at: Callable[[str], tuple[int, ...]]) -> dict[int, str]:
    """Outbox id → error text for every error whose `source.pointer` names an item of the batch."""
    named: dict[int, str] = {}
    for error in errors:
        source = error.get("source") or {}
        pointer = source.get("pointer") if isinstance(source, Mapping) else None
        for item_id in ids_at(str(pointer)) if pointer else ():
            named.setdefault(item_id, _error_text(error))
    return named


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
            url = (body.get("links") or {}).get("next")
            query = None  # the next link carries the filter, the include and the cursor
        return found

    # -- events -----------------------------------------------------------------------------------
    def send_events(self, items: Sequence[OutboxItem]) -> Delivery:
        """Bulk-create the events of `items` (`event_resource` payloads) in the fewest requests possible."""
        batches, failed = cut_event_batches(items)
        sent: list[int] = []
        for batch in batches:
            self._post_events(batch, items, sent, failed)
        return Delivery(tuple(sent), failed)

    def _post_events(
        self, batch: EventBatch, items: Sequence[OutboxItem], sent: list[int], failed: dict[int, str]
    ) -> None:
        reply = self.http.request("POST", EVENTS_PATH, data=batch.body, accept=(400,))
        if reply.status != 400:
            sent.extend(batch.item_ids)
            return
        named = self._rejected_items(reply, EVENTS_PATH, batch.ids_at)
        for duplicate, original in batch.duplicates.items():
            if original in named:
                named[duplicate] = named[original]
        failed.update(named)
        batch_ids = set(batch.item_ids)
        rest = without((i for i in items if i.id in batch_ids), named)
        # the rest of a batch that fitted fits again; rebuilding keeps pointers and duplicates right
        for retry in cut_event_batches(rest)[0]:
            self._post_events(retry, rest, sent, failed)

    # -- profiles ---------------------------------------------------------------------------------
    def send_profiles(self, items: Sequence[OutboxItem]) -> Delivery:
        """Import the profiles of `items` (`profile_resource` payloads): submit every job, then await each."""
        batches, failed = cut_profile_batches(items)
        sent: list[int] = []
        jobs = [(self._submit_profiles(batch, items, failed), self.clock()) for batch in batches]
        for submitted, submitted_at in jobs:
            if submitted is None:
                continue
            job_id, batch = submitted
            job_failed = self._await_job(job_id, batch, submitted_at)
            failed.update(job_failed)
            sent.extend(i for i in batch.item_ids if i not in job_failed)
        return Delivery(tuple(sent), failed)

    def _submit_profiles(
        self, batch: ProfileBatch, items: Sequence[OutboxItem], failed: dict[int, str]
    ) -> tuple[str, ProfileBatch] | None:
        """Submit one import job; on a 400 naming profiles, fail those and submit the rest (None if none)."""
        while True:
            reply = self.http.request("POST", IMPORT_JOBS_PATH, data=batch.body, accept=(400,))
            if reply.status != 400:
                job_id = (reply.body or {}).get("data", {}).get("id")
                if not job_id:
                    raise KlaviyoError(
                        f"Klaviyo accepted POST {IMPORT_JOBS_PATH} without a job id; check the API revision"
                    )
                return str(job_id), batch
            named = self._rejected_items(reply, IMPORT_JOBS_PATH, batch.ids_at)
            failed.update(named)
            batch_ids = set(batch.item_ids)
            rest = without((i for i in items if i.id in batch_ids), named)
            if not rest:
                return None
            batch = cut_profile_batches(rest)[0][0]  # a part of a batch that fitted fits in one

    def _rejected_items(
        self, reply: Reply, path: str, ids_at: Callable[[str], tuple[int, ...]]
    ) -> dict[int, str]:
        errors = _errors(reply.body)
        named = _named(errors, ids_at)
        if not named:
            detail = "; ".join(_error_text(e) for e in errors)[:300] or "no error details"
            raise KlaviyoError(
                f"Klaviyo rejected POST {path} (400) without naming an item: {detail}; "
                "this is a bug in etl, please report it"
            )
        return named

    def _await_job(self, job_id: str, batch: ProfileBatch, checked_at: float) -> dict[int, str]:
        """Poll the import job until it is complete; outbox id → error for the profiles it rejected."""
        path = f"{IMPORT_JOBS_PATH}/{job_id}"
        deadline = checked_at + self.job_timeout
        while True:
            # a job submitted long enough ago (while earlier jobs were awaited) is checked at once
            wait = checked_at + self.poll_interval - self.clock()
            if wait > 0:
                self.sleep(wait)
            attributes = self.http.request("GET", path).body["data"]["attributes"]
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
        failed: dict[int, str] = {}
        unplaced: list[str] = []
        url: str | None = f"{IMPORT_JOBS_PATH}/{job_id}/import-errors"
        params: dict[str, Any] | None = {"page[size]": IMPORT_ERRORS_PAGE_SIZE}
        while url:
            body = self.http.request("GET", url, params=params).body
            for resource in body.get("data") or []:
                error = resource.get("attributes") or {}
                pointer = (error.get("source") or {}).get("pointer") or ""
                ids = batch.ids_at(pointer)
                if ids:
                    failed.update(dict.fromkeys(ids, _error_text(error)))
                else:
                    unplaced.append(_error_text(error))
            url = (body.get("links") or {}).get("next")
            params = None  # the next link carries the cursor and the page size
        if unplaced:
            # an error we cannot tie to a profile: fail the whole job so nothing rejected is marked sent
            message = f"Klaviyo import job {job_id} reported errors naming no profile: {'; '.join(unplaced)}"
            return dict.fromkeys(batch.item_ids, _one_line(message)[:500])
        return failed
