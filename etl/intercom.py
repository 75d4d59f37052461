"""The Intercom client: search paging per window, admins/teams/tags, contact batch lookup (docs/design.md §5).

Raw JSON stops here: callers get dicts exactly as Intercom sent them, already filtered to their window.

How `pages(window)` reads a window `[since, until)` completely, whatever the server does with timestamps:
- the query asks for `updated_at > since - 2 days AND updated_at < until + 2 days`. Contact search truncates
  both bounds to calendar days in the workspace's (unknown) timezone, conversation/ticket search may or may
  not include equality; a day is never longer than 25 hours, so under every one of these readings the result
  set contains every object with `since <= updated_at < until`. We filter exactly on our side.
- results are sorted by `updated_at` descending, and paging stops at the first page whose last object is
  older than `since` (everything after it is older still) or when `pages.next` is absent. The re-read
  overlap is therefore at most one page: a run in which nothing changed costs one search call per stream
  when fewer than `per_page` objects lie in `[since, until)` — day-granular search included, because the
  widened lower bound is never paged through.
- objects changing while we page. An update gives an object `updated_at >= until` (it happens after the run's
  signpost), so it moves to the top of a descending order: it is outside this window and the next run reads
  it. Moving to the top (and new objects appearing there) only pushes the unread objects further down, so
  with a position-based cursor they are re-sent (we drop repeats: each id at most once per call), never
  skipped; with a key-based cursor nothing moves. Proof: an unread object's position never decreases while
  our offset grows by exactly one page, so it is still at or after the offset of the next request; paging
  ends only on a page that reaches past it. An object *leaving* the result set (a merged contact; in a
  backfill window, an object updated to beyond `until + 2 days`) shifts unread objects up past our offset,
  so a falling `total_count` starts a fresh search whose upper bound is the last object read + 2 days: the
  shifted objects rank after that object, and the re-read overlap stays one slack's worth (repeats are
  dropped). Departures balanced by arrivals are harmless: arrivals are new or just-updated objects, which
  rank above every object of the window, so they push unread objects down at least as far as departures
  pull them up (an unread object moves by arrivals - departures above it >= the change in total_count).
- dropping repeats in memory that does not grow with the window (`ReadOnce`). Let `floor` be the lowest
  `updated_at` yielded so far. Every object of the window ranking above the last one read has been read,
  in this search or before a restart (the only objects that newly rank above it are arrivals, outside the
  window), and an object of the window keeps its `updated_at` while we page (an update moves it out of the
  window). So a result with `updated_at > floor` is a repeat, one below `floor` is new, and only at `floor`
  itself must ids be remembered: the ids yielded with exactly that `updated_at`, forgotten as soon as a lower
  one is yielded. What is held is the largest group of objects sharing one second, not the window. (Should
  Intercom's clock lag ours so that an update lands just inside the window, that object is dropped here as
  a repeat only if it ranked below our position, and the next run's lookback reads it.)
- assumption: the server orders equal `updated_at` consistently (by id), as Intercom's `[updated_at, id]`
  cursors do; objects sharing a timestamp across a page boundary are then read once.
- a cursor seen twice in one call is a server loop: IntercomError rather than paging forever.
- a malformed result (no id, no UNIX updated_at) cannot be placed in the order: it is reported once per call
  by its id, remembering the last MALFORMED_REMEMBERED of them (beyond that, one served again is reported
  again: counted twice, never lost).

Contacts leave here complete: a contact's `tags` list shows at most 10 tags (spec 2.16, contact_tags: "Up to
10 will be displayed here. Use the url to get more."), so for a contact whose list says `has_more` the full
list is read with `GET /contacts/{id}/tags` and put in its place: one call for each such contact, none for
the others (as other connectors do, e.g. estuary/connectors#2463). A contact gone by then (404; or 410, should
the API answer a merged one as `GET /contacts/{id}` does) is left out: its survivor is read in its stead.
Except for a contact the run already holds, unchanged (`pages(window, stored_tags)`, see `tags_unchanged`):
its stored tags stand in for the call, so re-reading an unchanged workspace costs search pages only.

Concurrency (`concurrency`, jobs.yaml `intercom.concurrency`): one client may be shared by threads (the
pipeline's slice readers), and it keeps at most `concurrency` requests in flight whoever sends them
(etl.http). The per-contact calls of one call to `pages` or `lookup_contacts` (tag lists, id searches, merge
follow-ups) go out together, up to `concurrency` at once (`_fan_out`); their results are put together in the
order the sequential code would have produced, with the same calls, and the first failure, in that order,
is raised once every call already under way has ended. All calls are paced to the app's rate limit (10,000
a minute per app, "distributed over 10 second windows": 1,666 per 10 s; Intercom's rate limiting docs).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor
from concurrent.futures import wait as first_failure
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote

from etl.errors import IntercomError
from etl.http import DEFAULT_RETRY_BUDGET, DEFAULT_TIMEOUT, ApiClient, HttpClient
from etl.lru import LruCache
from etl.models import STREAMS, Page, Window
from etl.pacing import Limits
from etl.snapshots import text, timestamp

MAX_PER_PAGE = 150  # spec 2.16: search pagination.per_page maximum
DEFAULT_CONCURRENCY = 4  # Intercom requests one run keeps in flight (`intercom.concurrency`)
MAX_CONCURRENCY = 16
RATE_WINDOW_SECONDS = 10.0  # "limits are distributed over 10 second windows" (Intercom rate limiting docs)
# 10,000 calls a minute per app (private apps; 25,000 per workspace, shared by its apps) spread evenly over
# 10-second windows: 1,666 a window (the docs' own example: 1,000/min "is 167 per 10-second window"; we
# round down). X-RateLimit-Remaining: 0 still pauses the client until the reset if the app's limit is lower.
RATE_LIMITS: Limits = ((10_000 * 10 // 60, RATE_WINDOW_SECONDS),)
WINDOW_SLACK_SECONDS = 2 * 86_400  # > the longest calendar day (25 h at a DST change): covers day truncation
MAX_IDS_PER_LOOKUP = 15  # spec: 15 filters per group; IN is "a shortcut for OR", so we assume values count
MAX_RESTARTS = 20  # re-reads of one window after the result set shrank while paging
MAX_MERGE_HOPS = 3  # spec: the Link header already resolves chains "up to 3 hops"
MALFORMED_REMEMBERED = 1_000  # malformed results' ids one `pages` call remembers, to report each once
LIST_KEYS = {"contacts": "data", "conversations": "conversations", "tickets": "tickets"}
_LINK = re.compile(r"<[^>]*/contacts/([^>/]+)>")
# ids -> (updated_at in UNIX seconds, every tag id) of the contacts the run has stored: passed in by the run,
# which reads them from the state store (a layer above this client)
StoredTags = Callable[[list[str]], Mapping[str, tuple[int, Sequence[str]]]]
_In = TypeVar("_In")
_Out = TypeVar("_Out")


@dataclass(frozen=True)
class Fetched:
    """One object read by its id (`IntercomClient.fetch`): the raw JSON, None when Intercom has no such
    object; for a merged contact, the survivor's contact, whose id is also in `merged_into`."""

    raw: dict[str, Any] | None
    merged_into: str | None = None


def _has_more_tags(contact: Mapping[str, Any]) -> bool:
    """True when a contact's `tags` list shows fewer tags than it has (spec 2.16, contact_tags.has_more)."""
    tags = contact.get("tags")
    return (type(tags) is dict or isinstance(tags, Mapping)) and tags.get("has_more") is True


def tags_unchanged(contact: Mapping[str, Any], stored: tuple[int, Sequence[str]] | None) -> bool:
    """True when a listed contact whose `tags` list shows only some of its tags has, by every sign the
    listing gives, exactly the tags of its stored snapshot, so `GET /contacts/{id}/tags` can be skipped:
    - the same `updated_at` (a contact changed in the usual way always has its full list read), and
    - the list's `total_count` (spec 2.16, contact_tags: "the total number of tags attached to this
      contact") equals the number of stored tags, and
    - every tag the list shows is a stored tag.
    Why all three: tagging a contact does not move its `updated_at` in Intercom (singer-io/tap-intercom#50:
    "the `updated_at` timestamp ... doesn't increment when a new tag is added"), so the count and the shown
    tags catch a tag added or removed, or swapped among those shown, on an otherwise unchanged contact. What
    no listing shows is a tag beyond those shown swapped for another with `updated_at` unmoved: a re-read (a
    backfill, the lookback) keeps the stored tags then, until the contact next changes; `etl run --replay`
    reads every list. (A run only reads a contact whose `updated_at` is in its window, so an incremental run
    never saw such a swap before either, unless the lookback happened to re-read the contact.)
    """
    if stored is None:
        return False
    epoch, tag_ids = stored
    tags = contact.get("tags")
    if _epoch(contact) != epoch or not isinstance(tags, Mapping):
        return False
    total = tags.get("total_count")
    if type(total) is not int or total != len(tag_ids):
        return False
    shown = tags.get("data")
    if not isinstance(shown, list):
        return False
    known = set(tag_ids)
    return all(isinstance(t, Mapping) and text(t.get("id")) in known for t in shown)


def _epoch(obj: Any) -> int | None:
    """The object's updated_at in UNIX seconds, or None when it has none we can read."""
    # `type(...) is dict` first: an ABC's isinstance is ~10x slower, and this runs twice per object read
    return timestamp(obj.get("updated_at")) if type(obj) is dict or isinstance(obj, Mapping) else None


def malformed(obj: Any) -> str | None:
    """Why a search result cannot be used (every result has an id and an updated_at: spec 2.16, the
    contact, conversation and ticket schemas), or None when it can."""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return f"not an object ({type(obj).__name__})"
    if text(obj.get("id")) is None:
        return "no id"
    if _epoch(obj) is None:
        return f"updated_at is not a UNIX time ({str(obj.get('updated_at'))[:40]!r})"
    return None


def _last_epoch(objects: list[Any]) -> int | None:
    """updated_at of the last readable object of a page: where the page ends in the descending order."""
    return next((e for e in map(_epoch, reversed(objects)) if e is not None), None)


def covering_query(since: float, until: float) -> dict[str, Any]:
    """A search query whose results include every object with since <= updated_at < until, whether the
    server truncates timestamps to days in any timezone, reads `>`/`<` as "or equal", or neither."""
    return {
        "operator": "AND",
        "value": [
            {"field": "updated_at", "operator": ">", "value": math.floor(since) - WINDOW_SLACK_SECONDS},
            {"field": "updated_at", "operator": "<", "value": math.ceil(until) + WINDOW_SLACK_SECONDS},
        ],
    }


class ReadOnce:
    """Which results one `pages` call has yielded, in memory that does not grow with the window (module
    docstring, "dropping repeats"): the ids at the lowest `updated_at` yielded so far, and a bounded record
    of the malformed results reported."""

    def __init__(self, malformed_limit: int = MALFORMED_REMEMBERED) -> None:
        self.floor: int | None = None  # the lowest updated_at yielded so far
        self.at_floor: set[str] = set()  # the ids yielded with updated_at == floor
        self.malformed: LruCache[str, bool] = LruCache(malformed_limit)

    def first(self, ident: str, epoch: int) -> bool:
        """True when the object (of the window, in descending order) is met for the first time: it is to be
        yielded; False for a repeat."""
        floor = self.floor
        if floor is not None and (epoch > floor or (epoch == floor and ident in self.at_floor)):
            return False
        if floor is None or epoch < floor:
            self.floor, self.at_floor = epoch, set()
        self.at_floor.add(ident)
        return True

    def first_malformed(self, ident: str | None) -> bool:
        """True when a malformed result is to be reported: once per id (while remembered), always without."""
        if ident is None:
            return True
        if self.malformed.get(ident):
            return False
        self.malformed.put(ident, True)
        return True


class IntercomClient(ApiClient):
    """Reads one Intercom workspace through the shared HTTP policy (etl.http)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        token_env: str,
        version: str = "2.16",
        per_page: int = MAX_PER_PAGE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry_budget: timedelta = DEFAULT_RETRY_BUDGET,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.per_page = max(1, min(per_page, MAX_PER_PAGE))
        self.concurrency = max(1, min(concurrency, MAX_CONCURRENCY))
        self.http = HttpClient(
            service="Intercom",
            base_url=base_url,
            headers={
                "Authorization": f"Bearer {token}",
                "Intercom-Version": version,
                "Accept": "application/json",
            },
            error_class=IntercomError,
            secret_env=token_env,
            secrets=(token,),
            timeout=timeout,
            retry_budget=retry_budget,
            budget_setting="intercom.retry_budget",
            throttle_wait=RATE_WINDOW_SECONDS,  # a 429 without X-RateLimit-Reset: wait out one window
            rate_limits=lambda method, path: ("app", RATE_LIMITS),  # one budget for every endpoint
            concurrency=self.concurrency,
            sleep=sleep,
            clock=clock,
        )
        self._admins: dict[str, dict[str, Any]] | None = None
        self._teams: dict[str, str] | None = None
        self._tags: dict[str, str] | None = None
        self._reference = threading.Lock()  # threads asking for admins/teams/tags at once fetch them once

    # -- search -----------------------------------------------------------------------------------
    def _search(
        self, stream: str, query: Mapping[str, Any], cursor: str | None, sort: bool
    ) -> dict[str, Any]:
        pagination: dict[str, Any] = {"per_page": self.per_page}
        if cursor:
            pagination["starting_after"] = cursor
        body: dict[str, Any] = {"query": query, "pagination": pagination}
        if sort:
            body["sort"] = {"field": "updated_at", "order": "descending"}
        reply = self.http.request("POST", f"/{stream}/search", json=body)
        if not isinstance(reply.body, dict) or not isinstance(reply.body.get(LIST_KEYS[stream]), list):
            raise IntercomError(
                f"Intercom answered POST /{stream}/search with an unexpected body; try again later"
            )
        return reply.body

    @staticmethod
    def _next_cursor(body: Mapping[str, Any]) -> str | None:
        following = (body.get("pages") or {}).get("next") or {}
        cursor = following.get("starting_after") if isinstance(following, Mapping) else None
        return str(cursor) if cursor else None

    def pages(self, window: Window, stored_tags: StoredTags | None = None) -> Iterator[Page]:
        """One Page per search response, each holding the objects with since <= updated_at < until not yet
        yielded by this call (see the module docstring for why none is missed). A page may be empty.
        `Page.total_count` is the server's count for the widened query (up to two days beyond each end of
        the window): an upper bound on the window's objects, for progress only. `stored_tags`: the run's
        stored contacts, whose tags stand in for the full list of an unchanged one (`tags_unchanged`)."""
        if window.stream not in STREAMS:
            raise ValueError(f"unknown stream {window.stream!r}")
        stream = window.stream
        since, until = window.since.timestamp(), window.until.timestamp()
        query = covering_query(since, until)
        reads = ReadOnce()
        cursors: set[str] = set()
        cursor: str | None = None
        total: int | None = None
        last_read: int | None = None  # updated_at of the last object of the last page read
        restarts = number = 0
        while True:
            body = self._search(stream, query, cursor, sort=True)
            count = body.get("total_count")
            if isinstance(count, int) and total is not None and count < total and last_read is not None:
                # something left the result set while we paged, so unread objects may have shifted past our
                # position; they all rank after the last object read, so search again from there down
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise IntercomError(
                        f"Intercom's {stream} search results kept changing while paging; run again, "
                        "or backfill in shorter --since/--until slices"
                    )
                query = covering_query(since, min(until, last_read + 1))
                total = cursor = last_read = None
                cursors.clear()
                continue
            total = count if isinstance(count, int) else total
            objects = body[LIST_KEYS[stream]]
            fresh, bad = [], []
            for obj in objects:
                problem = malformed(obj)
                if problem is not None:
                    ident = text(obj.get("id")) if isinstance(obj, Mapping) else None
                    if reads.first_malformed(ident):  # once per call, however often served
                        bad.append((ident, problem))
                    continue
                epoch = _epoch(obj) or 0
                if since <= epoch < until and reads.first(str(obj.get("id")), epoch):
                    fresh.append(obj)
            if stream == "contacts":
                fresh = self._with_all_tags(fresh, stored_tags)
            number += 1
            yield Page(stream, tuple(fresh), total, number, malformed=tuple(bad))
            end = _last_epoch(objects)
            last_read = end if end is not None else last_read
            cursor = self._next_cursor(body)
            if cursor is None or (end is not None and end < since):
                return
            if cursor in cursors:
                raise IntercomError(
                    f"Intercom returned the same {stream} search cursor twice; stopped paging to avoid a loop"
                )
            cursors.add(cursor)

    # -- reference data ---------------------------------------------------------------------------
    def _get(self, path: str, key: str) -> list[dict[str, Any]]:
        reply = self.http.request("GET", path)
        items = reply.body.get(key) if isinstance(reply.body, dict) else None
        if not isinstance(items, list):
            raise IntercomError(f"Intercom answered GET {path} with an unexpected body; try again later")
        return [item for item in items if isinstance(item, dict)]

    def admins(self) -> dict[str, dict[str, Any]]:
        """Admin id -> {"name", "email"}; fetched once per client."""
        with self._reference:
            if self._admins is None:
                self._admins = {
                    str(a["id"]): {"name": a.get("name"), "email": a.get("email")}
                    for a in self._get("/admins", "admins")
                }
            return self._admins

    def teams(self) -> dict[str, str]:
        """Team id -> name; fetched once per client."""
        with self._reference:
            if self._teams is None:
                self._teams = {str(t["id"]): str(t.get("name") or "") for t in self._get("/teams", "teams")}
            return self._teams

    def tags(self) -> dict[str, str]:
        """Tag id -> name; fetched once per client."""
        with self._reference:
            if self._tags is None:
                self._tags = {str(t["id"]): str(t.get("name") or "") for t in self._get("/tags", "data")}
            return self._tags

    # -- concurrency ------------------------------------------------------------------------------
    def _fan_out(self, call: Callable[[_In], _Out], items: Sequence[_In]) -> list[_Out]:
        """`[call(item) for item in items]`, with up to `concurrency` calls at once; results in `items` order.

        On a failure the calls not yet started are cancelled and those under way are awaited (no thread
        outlives this call); then the failure of the earliest item among the failed is raised, as the
        sequential loop would raise it. With concurrency 1, or one item, it is that loop, in this thread.
        """
        if self.concurrency <= 1 or len(items) <= 1:
            return [call(item) for item in items]
        pool = ThreadPoolExecutor(min(self.concurrency, len(items)), thread_name_prefix="intercom")
        futures: list[Future[_Out]] = []
        try:
            futures = [pool.submit(call, item) for item in items]
            first_failure(futures, return_when=FIRST_EXCEPTION)
        finally:
            # cancel_futures: what has not started never starts; wait: what has started ends here
            pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            failure = None if future.cancelled() else future.exception()
            if failure is not None:
                raise failure
        return [future.result() for future in futures]

    # -- contacts ---------------------------------------------------------------------------------
    def _with_all_tags(
        self, contacts: Iterable[dict[str, Any]], stored_tags: StoredTags | None = None
    ) -> list[dict[str, Any]]:
        """The contacts with every tag in their `tags` list: one `GET /contacts/{id}/tags` for each contact
        whose list has more than it shows (read together, `_fan_out`), none for the others, nor for one whose
        stored tags stand in (`tags_unchanged`); a contact gone meanwhile is left out."""
        contacts = list(contacts)
        more = [str(contact.get("id")) for contact in contacts if _has_more_tags(contact)]
        stored = stored_tags(more) if stored_tags is not None and more else {}
        kept: dict[str, list[dict[str, Any]]] = {}
        for contact in contacts:
            ident = str(contact.get("id"))
            if ident in stored and _has_more_tags(contact) and tags_unchanged(contact, stored[ident]):
                kept[ident] = [{"type": "tag", "id": tag_id} for tag_id in stored[ident][1]]
        incomplete = [ident for ident in more if ident not in kept]
        lists = iter(self._fan_out(self._contact_tags, incomplete))  # in the order of `incomplete`
        complete = []
        for contact in contacts:
            if not _has_more_tags(contact):
                complete.append(contact)
                continue
            ident = str(contact.get("id"))
            found = kept[ident] if ident in kept else next(lists)
            if found is not None:
                full = {**contact["tags"], "data": found, "total_count": len(found), "has_more": False}
                complete.append({**contact, "tags": full})
        return complete

    def _contact_tags(self, contact_id: str) -> list[dict[str, Any]] | None:
        """All tag objects of a contact (spec 2.16, listTagsForAContact: a `list` of `tag`), or None if the
        contact is gone (404 User Not Found; 410 as for a merged contact's own GET)."""
        path = f"/contacts/{quote(contact_id, safe='')}/tags"
        reply = self.http.request("GET", path, accept=(404, 410))
        if reply.status in (404, 410):
            return None
        items = reply.body.get("data") if isinstance(reply.body, dict) else None
        if not isinstance(items, list):
            raise IntercomError(f"Intercom answered GET {path} with an unexpected body; try again later")
        return [tag for tag in items if isinstance(tag, dict)]

    def _search_chunk(self, ids: list[str]) -> list[dict[str, Any]]:
        """The contacts (as listed, tags not completed) of one `id IN` search of at most 15 ids, every page."""
        query = {"field": "id", "operator": "IN", "value": ids}
        listed: list[dict[str, Any]] = []
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            body = self._search("contacts", query, cursor, sort=False)
            listed.extend(body["data"])
            cursor = self._next_cursor(body)
            if cursor is None:
                return listed
            if cursor in seen:
                raise IntercomError("Intercom returned the same contacts search cursor twice; stopped paging")
            seen.add(cursor)

    def _search_ids(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Id -> contact with all its tags, for the ids search finds: the chunks' searches go out together,
        then the tag lists of all their contacts; put together in the order of the chunks."""
        chunks = [ids[start : start + MAX_IDS_PER_LOOKUP] for start in range(0, len(ids), MAX_IDS_PER_LOOKUP)]
        listed = [contact for chunk in self._fan_out(self._search_chunk, chunks) for contact in chunk]
        return {str(contact.get("id")): contact for contact in self._with_all_tags(listed)}

    def _survivor_id(self, contact_id: str) -> tuple[str | None, dict[str, Any] | None]:
        """Follow GET /contacts/{id}: (survivor id, its contact if it was fetched), or (None, None) if gone."""
        current = contact_id
        for _ in range(MAX_MERGE_HOPS + 1):
            reply = self.http.request("GET", f"/contacts/{quote(current, safe='')}", accept=(404, 410))
            if reply.status == 404:
                return None, None
            if reply.status != 410:
                contact = reply.body if isinstance(reply.body, dict) else None
                if contact is None:
                    return current, None
                complete = self._with_all_tags([contact])  # GET /contacts/{id} lists 10 tags too
                return (current, complete[0]) if complete else (None, None)
            match = _LINK.search(reply.headers.get("Link") or "")
            if match is None:
                return None, None
            current = match.group(1)
        return None, None

    def lookup_contacts(self, ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """Requested id -> raw contact (the survivor's, for merged contacts); unknown ids are absent.

        Live contacts come from `POST /contacts/search` with `id IN [...]` in chunks; merged contacts are not
        searchable (spec), so each missing id costs one `GET /contacts/{id}` to read its 410 `Link`. Contacts
        come with all their tags (see the module docstring).
        """
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found = self._search_ids(wanted)
        result = {i: found[i] for i in wanted if i in found}
        missing = [contact_id for contact_id in wanted if contact_id not in result]
        # the merge follow-ups go out together; their answers are applied in order, as one by one
        for contact_id, (survivor, contact) in zip(
            missing, self._fan_out(self._survivor_id, missing), strict=True
        ):
            if survivor is None:
                continue
            if survivor not in found and contact is None:
                found.update(self._search_ids([survivor]))
            elif contact is not None:
                found[survivor] = contact
            if survivor in found:
                result[contact_id] = found[survivor]
        return result

    # -- one object by id ---------------------------------------------------------------------------
    def fetch(self, stream: str, object_id: str) -> Fetched:
        """One object as Intercom has it now (`etl explain --live`).

        `GET /contacts/{id}` follows a merged contact (410 `contact_merged`) to the survivor its `Link` names
        (spec 2.16, ShowContact), with all its tags. `GET /conversations/{id}` answers an unknown id 404
        `not_found` (spec, retrieveConversation); `GET /tickets/{id}` documents no 404 and a nullable ticket
        (spec, getTicket), so both a 404 and a null body mean "no such ticket".
        """
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}")
        if stream == "contacts":
            survivor, contact = self._survivor_id(object_id)
            if survivor is not None and contact is None:  # a 200 that was no contact: read it by search
                contact = self._search_ids([survivor]).get(survivor)
            if survivor is None or contact is None:
                return Fetched(None)
            return Fetched(contact, merged_into=survivor if survivor != object_id else None)
        path = f"/{stream}/{quote(object_id, safe='')}"
        reply = self.http.request("GET", path, accept=(404,))
        if reply.status == 404 or reply.body is None:
            return Fetched(None)
        if not isinstance(reply.body, dict) or reply.body.get("id") is None:
            raise IntercomError(f"Intercom answered GET {path} with an unexpected body; try again later")
        return Fetched(reply.body)
