"""Cutting outbox items into Klaviyo bulk request bodies, by count AND serialized bytes (docs/design.md §6).

Pure: no I/O. Each batch carries the exact bytes that go on the wire (compact JSON, UTF-8), so the byte
limit is checked against what Klaviyo receives, not an estimate. A batch also remembers which outbox item
sits at which position of its body, so a 400 whose `source.pointer` names a position fails that item only.

Events of the same profile are merged into one `event-bulk-create` resource (docs/design.md §6). Two events
with the same (profile, metric, unique_id) in one request would fail the whole request (spec:
BaseEventCreateQueryBulkEntryResourceObject.unique_id), so the later one is dropped from the body; Klaviyo
would ignore it anyway (it keeps the first event of a key), and its outbox item shares the fate of the event
it duplicates: sent when that one is sent, failed with its error otherwise.

Two profiles with the same identifiers in one import job are merged the same way: the later payload (the
contact's newer state; profiles are full upserts) replaces the earlier one at the earlier position, and
both outbox items share that position's fate. The earlier one's `meta.patch_properties.unset` keys that the
later one does not set are kept, or a removal queued before would be lost with it.
`import-errors` entry that names its profile only through `original_payload` finds its outbox items.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from etl import codec
from etl.models import OutboxItem

MAX_EVENTS_PER_REQUEST = 1_000  # Klaviyo bulk create limit (spec, POST /api/event-bulk-create-jobs)
MAX_PROFILES_PER_JOB = 10_000  # Klaviyo bulk import limit (spec, POST /api/profile-bulk-import-jobs)
# "5MB" payload limit of both bulk endpoints (spec); read as decimal megabytes, the smaller reading
MAX_REQUEST_BYTES = 5_000_000
MAX_PROFILE_BYTES = 100_000  # "100KB" per profile in a bulk import (spec), decimal for the same reason

_EVENTS_HEAD = b'{"data":{"type":"event-bulk-create-job","attributes":{"events-bulk-create":{"data":['
_PROFILES_HEAD = b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['
_BODY_TAIL = b"]}}}}"
_GROUP_HEAD = b'{"type":"event-bulk-create","attributes":{"profile":'
_GROUP_EVENTS = b',"events":{"data":['
_GROUP_TAIL = b"]}}}"
_EVENT_POINTER = re.compile(
    r"^/data/attributes/events-bulk-create/data/(\d+)(?:/attributes/events/data/(\d+))?"
)
_PROFILE_POINTER = re.compile(r"^/data/attributes/profiles/data/(\d+)(?:/|$)")


def encode(value: Any) -> bytes:
    """Compact UTF-8 JSON: the exact bytes a request body carries."""
    return codec.dumps(value)


@dataclass(frozen=True)
class EventBatch:
    """One `POST /api/event-bulk-create-jobs` body and which outbox item each event in it came from."""

    body: bytes
    groups: tuple[tuple[int, ...], ...]  # per event-bulk-create resource: the outbox id of each event
    item_ids: tuple[int, ...]  # every outbox id this batch settles, in input order (duplicates included)
    duplicates: Mapping[int, int] = field(default_factory=dict)  # dropped id -> id of the kept event

    @property
    def event_count(self) -> int:
        return sum(len(group) for group in self.groups)

    def ids_at(self, pointer: str) -> tuple[int, ...]:
        """The outbox ids an error pointer names: one event, or every event of a profile group."""
        match = _EVENT_POINTER.match(pointer)
        if match is None or int(match[1]) >= len(self.groups):
            return ()
        group = self.groups[int(match[1])]
        if match[2] is None:
            return tuple(dict.fromkeys(group))
        index = int(match[2])
        return (group[index],) if index < len(group) else ()


Identifiers = tuple[str | None, str | None, str | None]  # email (lower-cased), phone_number, external_id


def identifiers(payload: Any) -> Identifiers:
    """The identifiers of a profile resource, or of its bare attributes (how `original_payload` may echo it)."""
    if not isinstance(payload, Mapping):
        return (None, None, None)
    attributes = payload.get("attributes")
    values = attributes if isinstance(attributes, Mapping) else payload
    email, phone, external = (values.get(k) for k in ("email", "phone_number", "external_id"))
    return (
        str(email).strip().lower() if email else None,  # Klaviyo keys profiles by the lower-cased email
        str(phone).strip() if phone else None,
        str(external).strip() if external else None,
    )


@dataclass(frozen=True)
class ProfileBatch:
    """One `POST /api/profile-bulk-import-jobs` body and the outbox ids at each profile position."""

    body: bytes
    positions: tuple[tuple[int, ...], ...]  # per profile in the body: the outbox ids it settles
    item_ids: tuple[int, ...]  # every outbox id this batch settles, in input order
    identities: tuple[Identifiers, ...] = ()  # per profile in the body: its identifiers

    def ids_at(self, pointer: str) -> tuple[int, ...]:
        """The outbox ids an error pointer names (`/data/attributes/profiles/data/{i}/...`)."""
        match = _PROFILE_POINTER.match(pointer)
        if match is None or int(match[1]) >= len(self.positions):
            return ()
        return self.positions[int(match[1])]

    def ids_of(self, payload: Any) -> tuple[int, ...]:
        """The outbox ids of the profile an import error's `original_payload` names.

        By the strongest identifier it carries, as Klaviyo resolves profiles: email, else phone number,
        else external_id; when several profiles share that one (same email, other phones), those that also
        agree on the others. Nothing when it names no profile of this batch.
        """
        wanted = identifiers(payload)
        for k, value in enumerate(wanted):
            if value is None:
                continue
            same = [i for i, have in enumerate(self.identities) if have[k] == value]
            closest = [
                i
                for i in same
                if all(w in (None, h) for w, h in zip(wanted, self.identities[i], strict=True))
            ]
            return tuple(item for i in closest or same for item in self.positions[i])
        return ()


@dataclass
class _Group:
    head: bytes
    events: list[bytes] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.head) + len(_GROUP_TAIL) + sum(map(len, self.events)) + max(len(self.events) - 1, 0)


def _event_parts(item: OutboxItem) -> tuple[bytes, list[tuple[tuple[str, str] | None, bytes]]]:
    """(encoded profile data, [(dedupe key or None, encoded event)]) of one event-bulk-create payload."""
    attributes = item.payload["attributes"]
    profile = encode(attributes["profile"])
    events = []
    for event in attributes["events"]["data"]:
        event_attributes = event["attributes"]
        unique_id = event_attributes.get("unique_id")
        metric = event_attributes["metric"]["data"]["attributes"]["name"]
        key = (metric, unique_id) if unique_id is not None else None
        events.append((key, encode(event)))
    return profile, events


def cut_event_batches(
    items: Sequence[OutboxItem],
    *,
    max_events: int = MAX_EVENTS_PER_REQUEST,
    max_bytes: int = MAX_REQUEST_BYTES,
) -> tuple[list[EventBatch], dict[int, str]]:
    """Bulk-create bodies for `items` in order, each within both limits; and the items too big to send."""
    batches: list[EventBatch] = []
    too_big: dict[int, str] = {}
    groups: dict[bytes, _Group] = {}
    seen: dict[tuple[bytes, str, str], int] = {}
    ids: list[int] = []
    duplicates: dict[int, int] = {}
    size = len(_EVENTS_HEAD) + len(_BODY_TAIL)
    count = 0

    def flush() -> None:
        nonlocal groups, seen, ids, duplicates, size, count
        if ids:
            body = _EVENTS_HEAD + b",".join(_group_bytes(g) for g in groups.values()) + _BODY_TAIL
            group_ids = tuple(tuple(g.ids) for g in groups.values())
            batches.append(EventBatch(body, group_ids, tuple(ids), duplicates))
        groups, seen, ids, duplicates = {}, {}, [], {}
        size, count = len(_EVENTS_HEAD) + len(_BODY_TAIL), 0

    for item in items:
        profile, events = _event_parts(item)
        for attempt in (1, 2):
            fresh = [(k, e) for k, e in events if k is None or (profile, *k) not in seen]
            if not fresh:  # every event of this item is already in this request: Klaviyo keeps the first
                first_key = events[0][0]
                assert first_key is not None
                duplicates[item.id] = seen[(profile, *first_key)]
                ids.append(item.id)
                break
            group = groups.get(profile)
            if group is not None:
                added = sum(len(e) + 1 for _, e in fresh)
            else:
                group_size = len(_GROUP_HEAD) + len(profile) + len(_GROUP_EVENTS) + len(_GROUP_TAIL)
                added = (1 if groups else 0) + group_size + sum(len(e) for _, e in fresh) + len(fresh) - 1
            if count + len(fresh) <= max_events and size + added <= max_bytes:
                if group is None:
                    group = groups[profile] = _Group(_GROUP_HEAD + profile + _GROUP_EVENTS)
                for key, event in fresh:
                    group.events.append(event)
                    group.ids.append(item.id)
                    if key is not None:
                        seen[(profile, *key)] = item.id
                ids.append(item.id)
                size += added
                count += len(fresh)
                break
            if attempt == 2 or not ids:
                too_big[item.id] = (
                    f"event payload of {added:,} bytes / {len(fresh)} events exceeds Klaviyo's bulk limit "
                    f"({max_bytes:,} bytes, {max_events} events per request); shorten its properties"
                )
                break
            flush()
    flush()
    return batches, too_big


def _group_bytes(group: _Group) -> bytes:
    return group.head + b",".join(group.events) + _GROUP_TAIL


def _profile_key(payload: Mapping[str, Any]) -> tuple[Any, Any]:
    attributes = payload.get("attributes") or {}
    return (attributes.get("email"), attributes.get("phone_number"))


def _superseding(older: Mapping[str, Any], newer: Mapping[str, Any]) -> Mapping[str, Any]:
    """`newer`, also unsetting what `older` unset and `newer` does not set."""

    def unset(payload: Mapping[str, Any]) -> list[str]:
        return list(((payload.get("meta") or {}).get("patch_properties") or {}).get("unset") or [])

    sets = (newer.get("attributes") or {}).get("properties") or {}
    carried = [key for key in unset(older) if key not in sets and key not in unset(newer)]
    if not carried:
        return newer
    return {**newer, "meta": {"patch_properties": {"unset": sorted(unset(newer) + carried)}}}


def cut_profile_batches(
    items: Sequence[OutboxItem],
    *,
    max_profiles: int = MAX_PROFILES_PER_JOB,
    max_bytes: int = MAX_REQUEST_BYTES,
    max_profile_bytes: int = MAX_PROFILE_BYTES,
) -> tuple[list[ProfileBatch], dict[int, str]]:
    """Bulk-import bodies for `items` in order, each within the limits; and the profiles too big to send."""
    batches: list[ProfileBatch] = []
    too_big: dict[int, str] = {}
    profiles: list[bytes] = []
    payloads: list[Mapping[str, Any]] = []
    positions: list[list[int]] = []
    identities: list[Identifiers] = []
    ids: list[int] = []
    where: dict[tuple[Any, Any], int] = {}
    empty = len(_PROFILES_HEAD) + len(_BODY_TAIL)
    size = empty

    def flush() -> None:
        nonlocal profiles, payloads, positions, identities, ids, where, size
        if profiles:
            body = _PROFILES_HEAD + b",".join(profiles) + _BODY_TAIL
            slots = tuple(tuple(p) for p in positions)
            batches.append(ProfileBatch(body, slots, tuple(ids), tuple(identities)))
        profiles, payloads, positions, identities, ids, where, size = [], [], [], [], [], {}, empty

    for item in items:
        key = _profile_key(item.payload)
        index = where.get(key)
        payload = item.payload if index is None else _superseding(payloads[index], item.payload)
        encoded = encode(payload)
        if len(encoded) > max_profile_bytes or empty + len(encoded) > max_bytes:
            too_big[item.id] = (
                f"profile payload of {len(encoded):,} bytes exceeds Klaviyo's limit of "
                f"{max_profile_bytes:,} bytes per profile; shorten its properties"
            )
            continue
        ids.append(item.id)
        if index is not None and size - len(profiles[index]) + len(encoded) <= max_bytes:
            size += len(encoded) - len(profiles[index])
            profiles[index] = encoded  # the newer state of the same contact supersedes the older one
            payloads[index] = payload
            positions[index].append(item.id)
            identities[index] = identifiers(item.payload)
            continue
        added = len(encoded) + (1 if profiles else 0)
        if len(profiles) >= max_profiles or size + added > max_bytes:
            ids.pop()
            flush()
            ids.append(item.id)
            added = len(encoded)
        where[key] = len(profiles)
        profiles.append(encoded)
        payloads.append(payload)
        positions.append([item.id])
        identities.append(identifiers(item.payload))
        size += added
    flush()
    return batches, too_big
