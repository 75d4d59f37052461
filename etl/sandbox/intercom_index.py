"""Search results the fake Intercom re-uses, so a big workspace is served in time linear in its size.

A search evaluates its query over every object of the stream and sorts the hits. Paging a stream of 20,000
objects 150 at a time did that 134 times, and every contact lookup (`id IN [...]`) scanned every contact.
`SearchCache` keeps, per stream, the sorted hits of the last `QUERIES_PER_STREAM` queries and an index of the
objects by id, and re-uses them only while what they were built from is unchanged: the same objects (by identity, in the same
order) with the same values of the fields the query and the sort read. A changed workspace (`advance`,
`touch`, a test editing an object in place) therefore gets exactly the answer a fresh scan gives; only
queries on top-level scalar fields are cached, the rest are always scanned.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from itertools import repeat
from typing import Any

Obj = dict[str, Any]
CACHED_FIELDS = frozenset({"id", "created_at", "updated_at"})  # read as obj.get(field) by search_values
# Result sets kept per stream, least recently asked dropped first. More than one: `etl run` pages several time
# slices of a stream at once, and with one set each page of one slice evicted the other's, so every page of
# a 100k workspace re-scanned and re-sorted the whole stream under the server's lock.
QUERIES_PER_STREAM = 32


def query_fields(query: Any) -> set[str]:
    """The fields a (validated) query filters on."""
    if query.get("operator") in ("AND", "OR"):
        return {f for child in query["value"] for f in query_fields(child)}
    return {query["field"]}


class SearchCache:
    """Per stream: the sorted hits of the last cacheable queries and an id index, with what they depend on."""

    def __init__(self, queries: int = QUERIES_PER_STREAM) -> None:
        # stream -> {query key: (stamp, hits)} (least recently asked first) and stream -> (stamp, id -> positions)
        self.queries = queries
        self._hits: dict[str, OrderedDict[Any, tuple[list[Any], list[Obj]]]] = {}
        self._ids: dict[str, tuple[list[Any], dict[str, list[int]]]] = {}

    def hits(
        self,
        stream: str,
        objects: list[Obj],
        query: Mapping[str, Any],
        sort_field: str,
        rules: Any,
        matches: Callable[[Obj], bool],
        sort: Callable[[Obj], Any],
        descending: bool,
    ) -> list[Obj]:
        """The objects `matches` (compiled from `query` under the hashable `rules`) accepts, sorted by `sort`
        (the values of `sort_field`). The caller must not change the list it gets: it may be answered again."""
        fields = query_fields(query)
        if not fields | {sort_field} <= CACHED_FIELDS:
            return self._scan(objects, matches, sort, descending)
        by_id = self._by_id(stream, objects, query)
        if by_id is not None:
            return sorted((objects[p] for p in by_id), key=sort, reverse=descending)
        stamp = _stamp(objects, fields | {sort_field})
        key = (json.dumps(query, sort_keys=True), sort_field, rules, descending)
        kept = self._hits.setdefault(stream, OrderedDict())
        cached = kept.get(key)
        if cached is not None and cached[0] == stamp:
            kept.move_to_end(key)
            return cached[1]
        hits = self._scan(objects, matches, sort, descending)
        kept[key] = (stamp, hits)
        kept.move_to_end(key)
        while len(kept) > self.queries:
            kept.popitem(last=False)
        return hits

    @staticmethod
    def _scan(
        objects: list[Obj], matches: Callable[[Obj], bool], sort: Callable[[Obj], Any], descending: bool
    ) -> list[Obj]:
        hits = [o for o in objects if matches(o)]
        hits.sort(key=sort, reverse=descending)
        return hits

    def _by_id(self, stream: str, objects: list[Obj], query: Mapping[str, Any]) -> list[int] | None:
        """Positions of the objects an `id =` / `id IN` query matches, in the objects' order; None for others."""
        if query.get("field") != "id" or query.get("operator") not in ("=", "IN"):
            return None
        value = query.get("value")
        wanted = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if query["operator"] == "=":
            wanted = wanted[:1]
        stamp = _stamp(objects, set())
        cached = self._ids.get(stream)
        if cached is None or cached[0] != stamp:
            index: dict[str, list[int]] = {}
            for position, obj in enumerate(objects):
                ident = obj.get("id")
                for v in ident if isinstance(ident, list) else [] if ident is None else [ident]:
                    index.setdefault(str(v), []).append(position)
            cached = self._ids[stream] = (stamp, index)
        return sorted({p for w in wanted for p in cached[1].get(w, [])})


def _stamp(objects: list[Obj], fields: set[str]) -> list[Any]:
    """What a result set over these objects depends on: which objects, in which order, and the values of the
    fields (and the id, which breaks ties in every sort)."""
    return [list(map(id, objects))] + [
        list(map(dict.get, objects, repeat(f))) for f in sorted(fields | {"id"})
    ]
