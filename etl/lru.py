"""A bounded mapping that forgets the least recently used entry first (the per-run caches' bound).

Pure: no I/O. A cache built on it must never answer from what it may have evicted: callers keep what they
need for the question at hand in a variable of their own and use the cache only to skip work next time
(docs/design.md §7, "No bound drops work").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most `limit` entries; reading or writing an entry makes it the most recently used."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an LRU cache needs room for at least one entry, got limit={limit}")
        self.limit = limit
        self.evictions = 0  # entries forgotten to stay within the limit, for tests and run counts
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """Keys from the least to the most recently used."""
        return iter(self._entries)

    def get(self, key: K) -> V | None:
        """The entry (now the most recently used), or None when absent."""
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: K, value: V) -> None:
        """Store the entry as the most recently used, forgetting the least recently used beyond the limit."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)
            self.evictions += 1
