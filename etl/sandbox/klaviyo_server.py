"""A fake Klaviyo on loopback: the bulk event and bulk profile import endpoints of revision 2026-07-15.

Endpoints (spec operationIds): `POST /api/event-bulk-create-jobs` (bulk_create_events: 202, no body),
`POST /api/profile-bulk-import-jobs` (bulk_import_profiles: 202 with the job), `GET
/api/profile-bulk-import-jobs` (get_bulk_import_profiles_jobs: newest first, cursor paging), `GET
/api/profile-bulk-import-jobs/{job_id}` (queued → processing → complete) and `GET
/api/profile-bulk-import-jobs/{id}/import-errors` (cursor paging, `page[size]` 1-100, default 20), `GET
/api/metrics` (get_metrics: the metrics with their `integration`, `filter`, `include=flow-triggers`; in
`etl.sandbox.klaviyo_metrics`) and `POST /api/metric-aggregates` (query_metric_aggregates: counts of the
stored events per interval, at its own rate limit of 3/s and 60/m; in `etl.sandbox.klaviyo_aggregates`).
What fails a whole request and what lands in `import-errors` is in `etl.sandbox.klaviyo_store`.

Checked on every request, in this order, each answered in the spec's error shape:
`Authorization: Klaviyo-API-Key <key>` (401 when missing or unknown, 403 when the key lacks the operation's
scope), the `revision` header (400 when missing or malformed), `Content-Type: application/vnd.api+json`
on POST (415), the rate limit per key and endpoint (429 with `Retry-After` past `burst_per_second` or
`steady_per_minute`; `RateLimit-Limit/Remaining/Reset` on every success), the body size (413).

Read-back for tests: `events` (deduped; `store.forget_events(unique_ids)` drops some, as if Klaviyo had
lost them), `profiles` (by profile key), `metrics` (the MetricBook: API
metrics made by events; `seed` / `seed_flow` add a native integration's metrics and their flows),
`received` (every request the fake answered itself, with status and raw body; `count()` filters them),
`settings`, `faults` (the base's switches; a storm's 429 carries `Retry-After: settings.storm_retry_after`,
none with `faults.bare_429`; `faults.clock_skew` moves the `Date` header off the client's clock).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from etl.sandbox.klaviyo_aggregates import AggregateRefused, aggregate
from etl.sandbox.klaviyo_metrics import MetricBook, QueryError
from etl.sandbox.klaviyo_ratelimit import RateLimiter
from etl.sandbox.klaviyo_store import (
    ImportJob,
    KlaviyoSettings,
    KlaviyoStore,
    StoredEvent,
    error,
    invalid,
)
from etl.sandbox.server import SandboxHandler, SandboxServer

SANDBOX_API_KEY = "pk_sandbox_0123456789abcdef"  # accepted with every scope unless settings say otherwise
JSON_API = "application/vnd.api+json"
ALL_SCOPES = frozenset(
    {
        "events:write",
        "profiles:read",
        "profiles:write",
        "lists:read",
        "lists:write",
        "metrics:read",
        "flows:read",
    }
)
_REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")  # "format: YYYY-MM-DD[.suffix]" (spec)
_JOB = re.compile(r"^/api/profile-bulk-import-jobs/([^/]+)/?$")
_JOB_ERRORS = re.compile(r"^/api/profile-bulk-import-jobs/([^/]+)/import-errors/?$")
# operation -> the scopes its key needs (spec x-klaviyo-scopes)
SCOPES = {
    "events": {"events:write"},
    "import": {"profiles:write", "lists:write"},
    "job": {"profiles:read", "lists:read"},
    "jobs": {"profiles:read", "lists:read"},
    "import-errors": {"profiles:read"},
    "metrics": {"metrics:read"},
    "aggregates": {"metrics:read"},
}


@dataclass(frozen=True)
class Received:
    """One request the fake answered: what came in and the status it got."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes
    reply_headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class KlaviyoHandler(SandboxHandler):
    """Routes, header checks and JSON:API replies of the fake Klaviyo."""

    server: KlaviyoServer
    content_type = JSON_API

    def error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        return {"errors": [error(status, code, message, message)]}

    def reply_throttled(self) -> None:
        wait = str(self.server.settings.storm_retry_after)
        detail = f"Request was throttled. Expected available in {wait} second."
        body = {"errors": [error(429, "throttled", "Request was throttled.", detail)]}
        headers = {"Retry-After": wait, "RateLimit-Remaining": "0", "RateLimit-Reset": wait}
        self._reply(429, body, {} if self.server.faults.bare_429 else headers)

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        # recorded before replying, so a test that has its answer also sees the record
        self.server.record_received(
            Received(self.command, self.path, status, dict(self.headers), self._raw_body, dict(headers or {}))
        )
        self.send_json(status, body, headers)

    def _fail(self, status: int, *errors: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._reply(status, {"errors": list(errors)}, headers)

    # -- routing -----------------------------------------------------------------------------------
    def route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        operation, job_id = self._operation(method, path)
        if operation is None:
            self._fail(404, error(404, "not_found", "Not found.", f"No route for {method} {path}."))
            return
        if not self._admitted(operation, method):
            return
        settings = self.server.settings
        own = (
            (settings.aggregates_per_second, settings.aggregates_per_minute)
            if operation == "aggregates"
            else None
        )
        allowed, limit_headers = self.server.limiter.take((self._key, operation), own)
        if not allowed:
            detail = f"Request was throttled. Expected available in {limit_headers['Retry-After']} second."
            headers = {} if self.server.faults.bare_429 else limit_headers  # a 429 that names no wait
            self._fail(429, error(429, "throttled", "Request was throttled.", detail), headers=headers)
            return
        if operation in ("events", "import", "aggregates"):
            self._post(operation, limit_headers)
        elif operation == "job":
            self._get_job(job_id, limit_headers)
        elif operation == "jobs":
            self._list_jobs(query, limit_headers)
        elif operation == "metrics":
            self._list_metrics(query, limit_headers)
        else:
            self._get_import_errors(job_id, query, limit_headers)

    @staticmethod
    def _operation(method: str, path: str) -> tuple[str | None, str]:
        stripped = path.rstrip("/")
        if method == "POST" and stripped == "/api/event-bulk-create-jobs":
            return "events", ""
        if method == "POST" and stripped == "/api/profile-bulk-import-jobs":
            return "import", ""
        if method == "GET" and stripped == "/api/profile-bulk-import-jobs":
            return "jobs", ""
        if method == "GET" and stripped == "/api/metrics":
            return "metrics", ""
        if method == "POST" and stripped == "/api/metric-aggregates":
            return "aggregates", ""
        if method == "GET" and (match := _JOB_ERRORS.match(path)):
            return "import-errors", match[1]
        if method == "GET" and (match := _JOB.match(path)):
            return "job", match[1]
        return None, ""

    def _admitted(self, operation: str, method: str) -> bool:
        """Checks auth, scopes, revision and content type; replies and returns False on the first failure."""
        authorization = self.headers.get("Authorization") or ""
        scheme, _, key = authorization.partition(" ")
        self._key = key.strip()
        if scheme != "Klaviyo-API-Key" or not self._key:
            detail = "Missing or invalid authorization scheme. Please use Klaviyo-API-Key."
            self._fail(
                401, error(401, "not_authenticated", "Authentication credentials were not provided.", detail)
            )
            return False
        scopes = self.server.api_keys.get(self._key)
        if scopes is None:
            title = "Incorrect authentication credentials."
            self._fail(401, error(401, "authentication_failed", title, title))
            return False
        missing = SCOPES[operation] - scopes
        if missing:
            title = "You do not have permission to perform this action."
            detail = f"This API key is missing required scopes: {', '.join(sorted(missing))}."
            self._fail(403, error(403, "permission_denied", title, detail))
            return False
        revision = self.headers.get("revision")
        if not revision or not _REVISION.match(revision):
            detail = "Missing or invalid required header 'revision'; send a revision such as 2026-07-15."
            problem = error(400, "invalid", "Invalid input.", detail)
            problem["source"] = {"parameter": "revision"}
            self._fail(400, problem)
            return False
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if method == "POST" and content_type != JSON_API:
            detail = f'Unsupported media type "{content_type}" in request.'
            self._fail(415, error(415, "unsupported_media_type", "Unsupported media type.", detail))
            return False
        return True

    # -- operations --------------------------------------------------------------------------------
    def _post(self, operation: str, limit_headers: dict[str, str]) -> None:
        limit = self.server.settings.max_request_bytes
        if len(self._raw_body) > limit:
            detail = f"The maximum allowed payload size is {limit} bytes; got {len(self._raw_body)}."
            self._fail(413, error(413, "payload_too_large", "Payload too large.", detail))
            return
        try:
            body = json.loads(self._raw_body)
        except ValueError:
            self._fail(
                400, error(400, "parse_error", "Malformed JSON.", "The request body is not valid JSON.")
            )
            return
        if operation == "aggregates":
            try:
                answer = aggregate(body, self.server.metrics, self.server.events, self.server.url)
            except AggregateRefused as refused:
                self._fail(refused.status, *refused.errors)
            else:
                self._reply(200, answer, limit_headers)
            return
        if operation == "events":
            problems = self.server.store.create_events(body)
            if problems:
                self._fail(400, *problems)
            else:
                self._reply(202, None, limit_headers)
            return
        job, problems = self.server.store.import_profiles(body)
        if job is None:
            self._fail(400, *problems)
            return
        self._reply(
            202, {"data": self._job_resource(job), "links": {"self": self._job_url(job.id)}}, limit_headers
        )

    def _get_job(self, job_id: str, limit_headers: dict[str, str]) -> None:
        job = self.server.store.job(job_id)
        if job is None:
            self._fail(404, error(404, "not_found", "Not found.", f"No import job with id '{job_id}'."))
            return
        self._reply(
            200, {"data": self._job_resource(job), "links": {"self": self._job_url(job.id)}}, limit_headers
        )

    def _get_import_errors(
        self, job_id: str, query: dict[str, list[str]], limit_headers: dict[str, str]
    ) -> None:
        job = self.server.store.job(job_id)
        if job is None:
            self._fail(404, error(404, "not_found", "Not found.", f"No import job with id '{job_id}'."))
            return
        paging = self._paging(query)
        if paging is None:
            return
        size, start = paging
        complete = job.status(self.server.clock(), self.server.settings) == "complete"
        errors = job.errors if complete else []  # errors are known once the job has processed
        data = [
            {"type": "import-error", "id": e["id"], "attributes": {k: v for k, v in e.items() if k != "id"}}
            for e in errors[start : start + size]
        ]
        base = f"{self.server.url}/api/profile-bulk-import-jobs/{job_id}/import-errors/"
        self._reply(200, {"data": data, "links": _page_links(base, size, start, len(errors))}, limit_headers)

    def _list_jobs(self, query: dict[str, list[str]], limit_headers: dict[str, str]) -> None:
        paging = self._paging(query)
        if paging is None:
            return
        size, start = paging
        jobs = self.server.store.jobs()
        data = [self._job_resource(job) for job in jobs[start : start + size]]
        base = f"{self.server.url}/api/profile-bulk-import-jobs/"
        self._reply(200, {"data": data, "links": _page_links(base, size, start, len(jobs))}, limit_headers)

    def _list_metrics(self, query: dict[str, list[str]], limit_headers: dict[str, str]) -> None:
        try:
            body = self.server.metrics.page(query, self.server.url)
        except QueryError as refused:
            problem = invalid(refused.detail, "")
            problem["source"] = {"parameter": refused.parameter}
            self._fail(400, problem)
            return
        self._reply(200, body, limit_headers)

    def _paging(self, query: dict[str, list[str]]) -> tuple[int, int] | None:
        """(page size, offset) from `page[size]` (1-100, default 20) and `page[cursor]`; or replies 400."""
        size_text = (query.get("page[size]") or ["20"])[0]
        cursor = (query.get("page[cursor]") or ["0"])[0]
        if size_text.isdigit() and 1 <= int(size_text) <= 100 and cursor.isdigit():
            return int(size_text), int(cursor)
        problem = invalid("page[size] must be 1 to 100 and page[cursor] a cursor from links.next.", "")
        problem["source"] = {"parameter": "page[cursor]" if size_text.isdigit() else "page[size]"}
        self._fail(400, problem)
        return None

    def _job_url(self, job_id: str) -> str:
        return f"{self.server.url}/api/profile-bulk-import-jobs/{job_id}/"

    def _job_resource(self, job: ImportJob) -> dict[str, Any]:
        settings, now = self.server.settings, self.server.clock()
        status = job.status(now, settings)
        started = job.created_at + settings.queued_seconds
        done = status == "complete"
        failed = len(job.errors) if done else 0
        url = self._job_url(job.id)
        return {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": status,
                "created_at": _iso(job.created_at),
                "total_count": job.total,
                "completed_count": job.total - failed if done else 0,
                "failed_count": failed,
                "completed_at": _iso(started + settings.processing_seconds) if done else None,
                "expires_at": _iso(job.created_at + 7 * 86_400),
                "started_at": _iso(started) if status != "queued" else None,
            },
            "relationships": {
                "lists": {
                    "data": [],
                    "links": {"self": f"{url}relationships/lists/", "related": f"{url}lists/"},
                },
                "import-errors": {"links": {"related": f"{url}import-errors/"}},
            },
            "links": {"self": url},
        }


def _page_links(base: str, size: int, start: int, total: int) -> dict[str, str]:
    """JSON:API collection links; the cursor is an offset, opaque to clients that follow `next`."""
    links = {"self": f"{base}?{urlencode({'page[size]': size, 'page[cursor]': start})}"}
    if start + size < total:
        links["next"] = f"{base}?{urlencode({'page[size]': size, 'page[cursor]': start + size})}"
    if start > 0:
        links["prev"] = f"{base}?{urlencode({'page[size]': size, 'page[cursor]': max(0, start - size)})}"
    return links


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


class KlaviyoServer(SandboxServer):
    """The fake Klaviyo: `with KlaviyoServer() as k: KlaviyoClient(k.url, SANDBOX_API_KEY, ...)`."""

    def __init__(
        self,
        settings: KlaviyoSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(KlaviyoHandler, host, port)
        self.settings = settings or KlaviyoSettings()
        self.api_keys = dict(self.settings.api_keys) or {SANDBOX_API_KEY: ALL_SCOPES}
        self.clock = clock
        self.store = KlaviyoStore(self.settings, clock)
        self.limiter = RateLimiter(self.settings, clock)
        self.received: list[Received] = []

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # the default 0.5 s poll makes every stop() take half a second; tests start many servers
        super().serve_forever(poll_interval)

    def record_received(self, received: Received) -> None:
        with self._requests_lock:
            self.received.append(received)

    @property
    def events(self) -> list[StoredEvent]:
        """The events Klaviyo holds, deduplicated by (profile, metric, unique_id), in arrival order."""
        return self.store.events

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """The profiles Klaviyo holds, by profile key (email, else phone number, else external_id)."""
        return self.store.profiles

    @property
    def metrics(self) -> MetricBook:
        """The account's metrics (API ones made by events, seeded native ones) and the flows they trigger."""
        return self.store.metrics

    def count(self, method: str, path_prefix: str, status: int | None = None) -> int:
        """How many answered requests match the method, path prefix and (optionally) status."""
        with self._requests_lock:
            return sum(
                r.method == method
                and r.path.startswith(path_prefix)
                and (status is None or r.status == status)
                for r in self.received
            )
