"""A fake Intercom (API 2.16) on loopback over real HTTP, serving a generated `Workspace`.

    with IntercomSandbox(Workspace(seed=1, start=...), IntercomSettings(timezone="Asia/Tokyo")) as sb:
        client = IntercomClient(sb.url, sb.token, token_env="INTERCOM_ACCESS_TOKEN")

Endpoints: `POST /contacts/search`, `/conversations/search`, `/tickets/search` (query grammar and timestamp
matching in `etl.sandbox.intercom_query`; `per_page` default 50 for contacts, 20 otherwise, maximum 150;
`sort` by any field (default `created_at`), `ascending|descending` (default `descending`); ties by id;
`total_count`; `pages`),
`GET /admins`, `/teams`, `/tags`, `GET /contacts/{id}`, `GET /contacts/{id}/tags`, `GET /conversations/{id}`,
`GET /tickets/{id}` (the object as search serves it; the sandbox keeps no conversation parts, and the spec's
`conversation_parts` is optional, so none are listed). Merged contacts are absent
from search (spec: "Contacts that have been merged ... are excluded from search results") and
`GET /contacts/{id}` answers them with 410 `contact_merged` and `Link: </contacts/{survivor}>;
rel="canonical"` (spec, ShowContact; the Merge operation's text says 404 instead: we follow the ShowContact
response table, as docs/design.md §5 does).
A served contact lists at most 10 of its tags, with `total_count` and `has_more` (spec, contact_tags: "Up to
10 will be displayed here. Use the url to get more."); `GET /contacts/{id}/tags` lists them all as tag
objects. That sub-resource documents 404 `User Not Found` and no 410, so a merged contact (deleted by the
merge, per the Merge operation's text) is a 404 there, like an unknown id.
Every request needs `Authorization: Bearer <token>` (else 401 `unauthorized`, the spec's error body); an
`Intercom-Version` outside the spec's enum is a 400 `intercom_version_invalid`; a missing one means 2.16.
Every reply carries `X-RateLimit-Limit/Remaining/Reset` for a budget per 10-second window (Reset is the
window's end as a UNIX time, from the injected `clock`); past the budget, 429 `rate_limit_exceeded`.
`faults.clock_skew` moves the server's clock (the `Date` header and the windows' resets) off the client's;
`faults.bare_429` sends 429s without the rate-limit headers.

Cursors. Intercom's search cursor is opaque. The sandbox's default `cursor="offset"` encodes the position of
the next result in the result set, re-evaluated and re-sorted on every request, like a database offset:
an object that changes while a client pages moves, and shifts others across the page boundary. That is the
harsher of the two plausible behaviours; `cursor="keyset"` encodes `[sort value, id]` of the last result
(as GET /macros documents for its own cursor) and never shifts. A client correct under both is correct.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from etl.sandbox.generator import Change, Workspace
from etl.sandbox.intercom_data import as_served, tag_list
from etl.sandbox.intercom_index import SearchCache
from etl.sandbox.intercom_query import Matching, QueryError, compile_query, search_values
from etl.sandbox.server import Faults, SandboxHandler, SandboxServer

DEFAULT_TOKEN = "sandbox-intercom-token"
API_VERSIONS = frozenset(
    ["1.0", "1.1", "1.2", "1.3", "1.4"] + [f"2.{n}" for n in range(17)] + ["Unstable"]
)  # spec: components.schemas.intercom_version, plus the "Unstable" version Intercom's docs describe
DEFAULT_PER_PAGE = {"contacts": 50, "conversations": 20, "tickets": 20}  # spec: each search's description
MAX_PER_PAGE = 150  # spec: per_page maximum
RATE_WINDOW_SECONDS = 10  # docs/design.md §5: Intercom's rate-limit windows are 10 s
DEFAULT_RATE_BUDGET = 1_666  # 10,000 calls/min per app, spread over 10-second windows
LIST_KEYS = {"contacts": ("list", "data"), "conversations": ("conversation.list", "conversations"),
             "tickets": ("ticket.list", "tickets")}  # fmt: skip


@dataclass
class IntercomSettings:
    """The sandbox's switches; change them on a running sandbox between requests."""

    token: str = DEFAULT_TOKEN
    timezone: str = "UTC"  # the workspace timezone: contact search day boundaries
    granularity: str = "day"  # contact search timestamps: "day" (spec) or "second"
    inclusive: bool = True  # conversation/ticket ">"/"<": "or equal" (spec) or strict
    rate_budget: int = DEFAULT_RATE_BUDGET  # requests per 10-second window
    cursor: str = "offset"  # "offset" (results shift when objects change) or "keyset"

    def matching(self) -> Matching:
        return Matching(
            timezone=self.timezone, contact_granularity=self.granularity, inclusive=self.inclusive
        )


def _error(code: str, message: str) -> dict[str, Any]:
    return {
        "type": "error.list",
        "request_id": str(uuid.uuid4()),
        "errors": [{"code": code, "message": message}],
    }


def _encode(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def _decode(cursor: Any) -> Any:
    try:
        return json.loads(base64.b64decode(str(cursor), validate=True))
    except ValueError:
        raise QueryError(
            "parameter_invalid",
            "Invalid starting_after param. Please try again using a starting_after value from a paginated "
            "response",
        ) from None


class IntercomHandler(SandboxHandler):
    """Routes, auth, version and rate-limit checks of the fake Intercom."""

    server: IntercomServer

    def error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        return _error(code, message)

    def reply_throttled(self) -> None:
        # `faults.bare_429`: a 429 without X-RateLimit-* (as an edge proxy in front of an API may send)
        headers = {} if self.server.faults.bare_429 else self.server.exhaust()
        self.send_json(429, _error("rate_limit_exceeded", "Rate limit exceeded"), headers)

    def route(self, method: str) -> None:
        server = self.server
        auth = self.headers.get("Authorization") or ""
        if auth != f"Bearer {server.settings.token}":
            self.send_json(401, _error("unauthorized", "Access Token Invalid"))
            return
        version = self.headers.get("Intercom-Version") or "2.16"
        server.versions[version] += 1
        if version not in API_VERSIONS:
            self.send_json(
                400, _error("intercom_version_invalid", "The requested version could not be found")
            )
            return
        limits = server.spend()
        if limits is None:
            self.reply_throttled()
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            status, body, extra = self._answer(method, path)
        except QueryError as exc:
            status, body, extra = 400, _error(exc.code, exc.message), {}
        self.send_json(status, body, {**limits, **extra})

    def _answer(self, method: str, path: str) -> tuple[int, Any, dict[str, str]]:
        server = self.server
        search = re.fullmatch(r"/(contacts|conversations|tickets)/search", path)
        if method == "POST" and search:
            try:
                request = self.read_json()
            except ValueError:
                raise QueryError("parameter_invalid", "the request body is not valid JSON") from None
            return 200, server.search(search.group(1), request), {}
        if method == "GET" and path in ("/admins", "/teams", "/tags"):
            return 200, server.listing(path[1:]), {}
        contact = re.fullmatch(r"/contacts/([^/]+)", path)
        if method == "GET" and contact:
            return server.contact(contact.group(1))
        tags = re.fullmatch(r"/contacts/([^/]+)/tags", path)
        if method == "GET" and tags:
            return server.contact_tags(tags.group(1))
        single = re.fullmatch(r"/(conversations|tickets)/([^/]+)", path)
        if method == "GET" and single:
            return server.single(single.group(1), single.group(2))
        return 404, _error("not_found", f"No route for {method} {path}"), {}


class IntercomServer(SandboxServer):
    """The HTTP server plus the workspace it serves, its settings and what it counted."""

    def __init__(
        self,
        workspace: Workspace,
        settings: IntercomSettings,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(IntercomHandler, host, port)
        self.workspace = workspace
        self.settings = settings
        self.clock = clock
        self.lock = threading.RLock()
        self.search_calls: Counter[str] = Counter()  # stream -> POST /{stream}/search answered
        self.versions: Counter[str] = Counter()
        self.cache = SearchCache()  # a big workspace is paged in hundreds of searches
        self._window = -1
        self._spent = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that timed out and hung up is expected here (slow-response faults): no traceback
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)

    # -- rate limit -------------------------------------------------------------------------------
    def _roll(self) -> int:
        window = int(self.now()) // RATE_WINDOW_SECONDS  # skewed with `faults.clock_skew`, like `Date`
        if window != self._window:
            self._window, self._spent = window, 0
        return (window + 1) * RATE_WINDOW_SECONDS

    def spend(self) -> dict[str, str] | None:
        """Count one request against the window; its headers, or None when the budget is spent."""
        with self.lock:
            reset = self._roll()
            if self._spent >= self.settings.rate_budget:
                return None
            self._spent += 1
            remaining = self.settings.rate_budget - self._spent
        return {"X-RateLimit-Limit": str(self.settings.rate_budget), "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(reset)}  # fmt: skip

    def exhaust(self) -> dict[str, str]:
        """Headers of a 429: nothing left until the window's end."""
        with self.lock:
            reset = self._roll()
        return {"X-RateLimit-Limit": str(self.settings.rate_budget), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset)}  # fmt: skip

    # -- endpoints --------------------------------------------------------------------------------
    def search(self, stream: str, request: Any) -> dict[str, Any]:
        if not isinstance(request, Mapping) or "query" not in request:
            raise QueryError("parameter_not_found", "query parameter is required")
        pagination = request.get("pagination") or {}
        per_page = pagination.get("per_page", DEFAULT_PER_PAGE[stream])
        if not isinstance(per_page, int) or isinstance(per_page, bool) or not 1 <= per_page <= MAX_PER_PAGE:
            raise QueryError("parameter_invalid", f"per_page must be an integer from 1 to {MAX_PER_PAGE}")
        sort = request.get("sort") or {}
        order = sort.get("order", "descending")
        if order not in ("ascending", "descending"):
            raise QueryError(
                "invalid_sort_order", f"Invalid sort order '{order}'. Must be one of: ascending, descending"
            )
        sort_field = sort.get("field", "created_at")
        with self.lock:
            predicate = compile_query(request["query"], stream, self.settings.matching())
            self.search_calls[stream] += 1
            hits = self.cache.hits(
                stream, self.workspace.objects(stream), request["query"], sort_field, self.settings.matching(),
                predicate, lambda o: self._sort_key(stream, o, sort_field), order == "descending",
            )  # fmt: skip
            start, page = self._position(stream, hits, pagination.get("starting_after"), sort_field, order)
            chunk = hits[start : start + per_page]
            body = json.loads(json.dumps(chunk))  # a copy: later changes never leak into a sent page
        if stream == "contacts":
            body = [as_served(contact) for contact in body]
        kind, key = LIST_KEYS[stream]
        total_pages = -(-len(hits) // per_page)
        pages: dict[str, Any] = {
            "type": "pages",
            "page": page,
            "per_page": per_page,
            "total_pages": total_pages,
        }
        if start + per_page < len(hits):
            last = chunk[-1]
            if self.settings.cursor == "keyset":
                token = [self._sort_key(stream, last, sort_field)[0], last["id"], page + 1]
            else:
                token = [start + per_page, page + 1]
            pages["next"] = {"page": page + 1, "per_page": per_page, "starting_after": _encode(token)}
        return {"type": kind, key: body, "total_count": len(hits), "pages": pages}

    @staticmethod
    def _sort_key(stream: str, obj: Mapping[str, Any], sort_field: str) -> tuple[Any, str]:
        values = search_values(stream, obj, sort_field)
        return (values[0] if values else 0, str(obj["id"]))

    def _position(
        self, stream: str, hits: list[dict[str, Any]], cursor: Any, sort_field: str, order: str
    ) -> tuple[int, int]:
        """(index of the first result to send, its page number) for a cursor."""
        if not cursor:
            return 0, 1
        token = _decode(cursor)
        if self.settings.cursor == "keyset":
            if not isinstance(token, list) or len(token) != 3:
                raise QueryError("parameter_invalid", "Invalid starting_after param")
            after = (token[0], str(token[1]))
            descending = order == "descending"
            for index, obj in enumerate(hits):
                key = self._sort_key(stream, obj, sort_field)
                if (key < after) if descending else (key > after):
                    return index, int(token[2])
            return len(hits), int(token[2])
        if not isinstance(token, list) or len(token) != 2:
            raise QueryError("parameter_invalid", "Invalid starting_after param")
        return int(token[0]), int(token[1])

    def listing(self, name: str) -> dict[str, Any]:
        with self.lock:
            if name == "admins":
                return {"type": "admin.list", "admins": list(self.workspace.admins)}
            if name == "teams":
                return {"type": "team.list", "teams": list(self.workspace.teams)}
            return {"type": "list", "data": list(self.workspace.tags)}

    def contact(self, contact_id: str) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            found = self.workspace.contacts.get(contact_id)
            if found is not None:
                return 200, as_served(json.loads(json.dumps(found))), {}
            survivor, hops = contact_id, 0
            while survivor in self.workspace.merged and hops < 3:  # spec: chains resolved "up to 3 hops"
                survivor, hops = self.workspace.merged[survivor], hops + 1
        if hops:
            body = _error(
                "contact_merged",
                "This contact has been merged. See the 'Link' header for the canonical contact.",
            )
            return 410, body, {"Link": f'</contacts/{survivor}>; rel="canonical"'}
        return 404, _error("not_found", "User Not Found"), {}

    def single(self, stream: str, object_id: str) -> tuple[int, Any, dict[str, str]]:
        """GET /conversations/{id} or /tickets/{id}: the object as search serves it, or 404 `not_found`
        "Resource Not Found" (spec, retrieveConversation; getTicket documents no 404, and we answer it alike)."""
        with self.lock:
            found = getattr(self.workspace, stream).get(object_id)
            if found is None:
                return 404, _error("not_found", "Resource Not Found"), {}
            return 200, json.loads(json.dumps(found)), {}

    def contact_tags(self, contact_id: str) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            found = self.workspace.contacts.get(contact_id)
            if found is None:  # unknown or merged away (spec, listTagsForAContact: only a 404 is documented)
                return 404, _error("not_found", "User Not Found"), {}
            return 200, tag_list(found, self.workspace.tags, self.workspace.admins[0]["id"]), {}


@dataclass
class IntercomSandbox:
    """A started-on-demand fake Intercom: `start()`/`stop()` (or `with`), `url`, `token`, `workspace`."""

    workspace: Workspace = field(
        default_factory=lambda: Workspace(seed=0, start=datetime(2026, 3, 1, tzinfo=UTC))
    )
    settings: IntercomSettings = field(default_factory=IntercomSettings)
    clock: Callable[[], float] = time.time
    host: str = "127.0.0.1"
    port: int = 0
    server: IntercomServer = field(init=False)

    def __post_init__(self) -> None:
        self.server = IntercomServer(self.workspace, self.settings, self.clock, self.host, self.port)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def token(self) -> str:
        return self.settings.token

    @property
    def faults(self) -> Faults:
        return self.server.faults

    def advance(self, step: timedelta, activity: int | None = None) -> list[Change]:
        """Advance the workspace (see `Workspace.advance`) while no request is being answered."""
        with self.server.lock:
            return self.workspace.advance(step, activity)

    def start(self) -> IntercomSandbox:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> IntercomSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_intercom(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    seed: int = 0,
    start: datetime | None = None,
    contacts: int = 200,
    conversations: int = 300,
    tickets: int = 100,
    settings: IntercomSettings | None = None,
) -> IntercomSandbox:
    """Build a workspace and start a sandbox Intercom on `host:port` (for `etl sandbox serve`); stop() it."""
    moment = start or datetime.now(UTC)
    workspace = Workspace(
        seed=seed, start=moment, contacts=contacts, conversations=conversations, tickets=tickets
    )
    return IntercomSandbox(workspace, settings or IntercomSettings(), host=host, port=port).start()
