"""The contacts one run knows: their snapshots and identities, from the state store, else from Intercom.

Conversations and tickets name their contacts by id; an event needs the contact's email or phone. Each id
is resolved once per run: the stored snapshots first (one query per page), then one batched Intercom lookup
for the rest, following merged contacts to their survivor. Memory stays bounded on huge runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from etl.models import Identity, Snapshot
from etl.profiles import contact_identity
from etl.snapshots import to_snapshot

CONTACT_CACHE_LIMIT = 5_000  # contacts remembered per run; a huge run forgets and looks up again


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
        self.limit = limit
        self._snapshots: dict[str, Snapshot | None] = {}
        self._identities: dict[str, Identity | None] = {}  # phone parsing is costly: once per contact

    def remember(self, contact_id: str, snapshot: Snapshot | None) -> None:
        if len(self._snapshots) >= self.limit:
            self._snapshots.clear()
            self._identities.clear()
        self._snapshots[contact_id] = snapshot
        self._identities.pop(contact_id, None)

    def get(self, contact_id: str | None) -> Snapshot | None:
        return self._snapshots.get(contact_id) if contact_id else None

    def identities(
        self, ids: list[str], load: Callable[[list[str]], Mapping[str, Snapshot]]
    ) -> dict[str, Identity]:
        """The identities of these contacts (those with an email or valid phone); `load` reads stored ones."""
        missing = [cid for cid in ids if cid not in self._snapshots]
        if missing:
            stored = load(missing)
            for cid, found in stored.items():
                self.remember(cid, found)
            unknown = [cid for cid in missing if cid not in stored]
            fetched = self.lookup(unknown) if unknown else {}
            for cid in unknown:
                raw = fetched.get(cid)
                survivor = to_snapshot("contacts", raw) if raw is not None else None
                self.remember(cid, survivor)
                if survivor is not None and survivor.object_id != cid:
                    # a merged contact: events name the survivor, whose profile is queued
                    self.remember(survivor.object_id, survivor)
        result: dict[str, Identity] = {}
        for cid in ids:
            if cid not in self._identities:
                known = self._snapshots.get(cid)
                self._identities[cid] = contact_identity(known, self.region)[0] if known else None
            identity = self._identities[cid]
            if identity is not None:
                result[cid] = identity
        return result
