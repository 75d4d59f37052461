"""The contacts one run knows: their snapshots and identities, from the state store, else from Intercom.

Conversations and tickets name their contacts by id; an event needs the contact's email or phone. Each id
is resolved from a bounded cache, else the stored snapshots (one query per page), else one batched Intercom
lookup, following merged contacts to their survivor. The cache only saves work: `identities()` answers from
what it resolved for this call, so a page naming more contacts than the cache holds, or a cache full of
other contacts, changes nothing but the number of queries (docs/design.md §7, "No bound drops work").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from etl.lru import LruCache
from etl.models import Identity, Snapshot
from etl.profiles import contact_identity
from etl.snapshots import to_snapshot

CONTACT_CACHE_LIMIT = 5_000  # contacts remembered per run; a huge run forgets and loads them again


class Known(NamedTuple):
    """What a run knows of one contact id: the (survivor's) snapshot and its identity; None when absent."""

    snapshot: Snapshot | None
    identity: Identity | None


class ContactBook:
    """Contact id → (survivor's) snapshot and identity, for one run."""

    def __init__(
        self,
        default_phone_region: str,
        lookup: Callable[[list[str]], Mapping[str, Mapping[str, Any]]],
        limit: int = CONTACT_CACHE_LIMIT,
    ) -> None:
        self.region = default_phone_region
        self.lookup = lookup  # ids → raw contacts of the survivors (IntercomClient.lookup_contacts)
        self.cache: LruCache[str, Known] = LruCache(limit)
        self._answered: dict[str, Snapshot] = {}  # the last identities() call's contacts, by survivor id

    def remember(self, contact_id: str, snapshot: Snapshot | None) -> Known:
        """Cache what is known of this id (its identity is worked out once: phone parsing is costly)."""
        known = Known(snapshot, contact_identity(snapshot, self.region)[0] if snapshot else None)
        self.cache.put(contact_id, known)
        return known

    def get(self, contact_id: str | None) -> Snapshot | None:
        """The snapshot of a contact the last `identities()` answer named (held whatever the cache's bound),
        else of one still cached; None when neither knows it."""
        if not contact_id:
            return None
        if contact_id in self._answered:
            return self._answered[contact_id]
        known = self.cache.get(contact_id)
        return known.snapshot if known is not None else None

    def identities(
        self, ids: list[str], load: Callable[[list[str]], Mapping[str, Snapshot]]
    ) -> dict[str, Identity]:
        """The identities of these contacts (those with an email or valid phone); `load` reads stored ones."""
        answer: dict[str, Known] = {}
        missing = []
        for cid in dict.fromkeys(ids):
            cached = self.cache.get(cid)
            if cached is not None:
                answer[cid] = cached
            else:
                missing.append(cid)
        if missing:
            stored = load(missing)
            for cid in missing:
                if cid in stored:
                    answer[cid] = self.remember(cid, stored[cid])
            unknown = [cid for cid in missing if cid not in answer]
            fetched = self.lookup(unknown) if unknown else {}
            for cid in unknown:
                raw = fetched.get(cid)
                survivor = to_snapshot("contacts", raw) if raw is not None else None
                answer[cid] = self.remember(cid, survivor)
                if survivor is not None and survivor.object_id != cid:
                    # a merged contact: events name the survivor, whose profile is queued
                    self.remember(survivor.object_id, survivor)
        self._answered = {k.snapshot.object_id: k.snapshot for k in answer.values() if k.snapshot is not None}
        return {cid: known.identity for cid, known in answer.items() if known.identity is not None}
