"""Raw Intercom object → Snapshot: only the tracked fields, normalized, with a digest of them.

Pure: no I/O. A snapshot holds everything `etl.events.diff` and `etl.profiles.to_profile` need, so events
are inferred from (previous snapshot, current snapshot) alone. Normal form:
- ids are strings; an assignee id of 0, "0", "" or null is unassigned (None);
- timestamps are UNIX seconds (UTC by definition) kept as ints, so comparisons and unique_ids stay exact;
  out-of-range or non-numeric values are None; `Snapshot.updated_at` is an aware UTC datetime;
- "" and null collapse to None; emails are trimmed and lower-cased (validated later, in `etl.profiles`).
The digest covers `data` only: an object re-read with nothing tracked changed has the same digest, so the
pipeline can skip it (docs/design.md §2, lookback). `updated_at` lives beside `data`, not in it.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from etl.codec import canonical
from etl.errors import IntercomError
from etl.models import Snapshot

MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second `datetime` can represent
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_TITLE = "_default_title_"  # ticket_attributes keys of the default attributes (spec 2.16, ticket)
DEFAULT_DESCRIPTION = "_default_description_"


def to_snapshot(stream: str, raw: Mapping[str, Any]) -> Snapshot:
    """The normalized snapshot of one raw Intercom contact, conversation or ticket."""
    build = _BUILDERS.get(stream)
    if build is None:
        raise ValueError(f"unknown stream {stream!r}: expected one of {', '.join(_BUILDERS)}")
    object_id = text(raw.get("id")) if type(raw) is dict or isinstance(raw, Mapping) else None
    if object_id is None:
        # every search result carries an id; without one nothing can be keyed (spec 2.16, *_list schemas)
        raise IntercomError(f"Intercom returned a {stream[:-1]} without an id: the response is malformed")
    data = build(raw)
    updated = timestamp(raw.get("updated_at")) or timestamp(raw.get("created_at"))
    return Snapshot(
        stream=stream,
        object_id=object_id,
        updated_at=to_datetime(updated) if updated is not None else EPOCH,
        digest=digest(data),
        data=data,
    )


def referenced_contact_ids(snapshot: Snapshot) -> list[str]:
    """The Intercom contact ids a conversation or ticket names, in the order of `contacts.contacts`."""
    return list(snapshot.data.get("contacts") or [])


def digest(data: Mapping[str, Any]) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace): equal for equal data whatever the key order.

    The bytes are those the standard library's `json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` writes, whichever encoder `etl.codec.canonical` uses: stored digests stay valid."""
    return hashlib.sha256(canonical(data)).hexdigest()


def canonical_json(value: Any) -> str:
    """The canonical JSON of a value as text (what `digest` hashes, encoded as UTF-8)."""
    return canonical(value).decode()


def to_datetime(epoch: int) -> datetime:
    """An aware UTC datetime from UNIX seconds."""
    return datetime.fromtimestamp(epoch, UTC)


# --- field normalizers (total: any JSON value in, a normal value or None out) ---


# Each normalizer first checks the exact JSON type (`type(v) is ...`, one pointer comparison) before the
# general `isinstance` checks (an ABC's is ~10x slower): they run ~25 times per object read.


def obj(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:
        return value
    return value if isinstance(value, Mapping) else {}


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """A non-empty string; ints become their decimal string (ids come as either)."""
    kind = type(value)
    if kind is str:
        if value.isascii() and "\x00" not in value:  # clean_text's common case, without the call
            return value or None
        return clean_text(value) or None
    if kind is int:
        return str(value)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value != "":
        return clean_text(value) or None
    return None


_SURROGATES = re.compile("[\ud800-\udfff\x00]")


def clean_text(value: str) -> str:
    """A string every store and API can carry: a lone UTF-16 surrogate (valid in JSON as an escape, `\\ud83d`,
    but not in UTF-8) becomes U+FFFD, and NUL is dropped (PostgreSQL's jsonb and text refuse `\\u0000`)."""
    if value.isascii() and "\x00" not in value:  # the common case, without a regex
        return value
    return _SURROGATES.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)


def clean_json(value: Any) -> Any:
    """A private copy of a JSON value with every string and key passed through `clean_text`."""
    kind = type(value)
    if kind is str:
        return clean_text(value)
    if kind is int or kind is bool or value is None:  # immutable: shared, not copied
        return value
    if kind is dict or isinstance(value, Mapping):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    if isinstance(value, float):
        # Python's JSON reader takes NaN and Infinity; JSON itself, jsonb and Klaviyo do not
        return value if math.isfinite(value) else None
    return copy.deepcopy(value)


def integer(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value)


def flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def timestamp(value: Any) -> int | None:
    """UNIX seconds, or None when absent, not a number, or outside what a datetime can hold."""
    if type(value) is int:
        return value if 0 <= value <= MAX_TIMESTAMP else None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, float) and value == value and abs(value) < MAX_TIMESTAMP:
        value = int(value)
    seconds = integer(value)
    if seconds is None or not 0 <= seconds <= MAX_TIMESTAMP:
        return None
    return seconds


def assignee(value: Any) -> str | None:
    """An admin/team id; 0 means unassigned (spec 2.16: "If it's not assigned … it will return 0")."""
    ident = text(value)
    return None if ident in (None, "0") else ident


def email(value: Any) -> str | None:
    candidate = text(value)
    if candidate is None:
        return None
    return candidate.strip().lower() or None


def contact_ids(value: Any) -> list[str]:
    ids = (text(obj(ref).get("id")) for ref in items(obj(value).get("contacts")))
    return [ident for ident in ids if ident is not None]


def avatar_url(value: Any) -> str | None:
    """The contact's avatar URL: from the spec's `{"type": "avatar", "image_url": ...}`, or the bare URL
    string clients in the field meet (Airbyte's Intercom connector reference types `avatar` as a string)."""
    return text(value) if isinstance(value, str) else text(obj(value).get("image_url"))


def tag_list(value: Any) -> list[dict[str, str]]:
    """Tags as {id, name?}, sorted by id so a re-read in another order has the same digest."""
    tags = []
    for tag in items(obj(value).get("tags")):
        ident = text(obj(tag).get("id"))
        if ident is not None:
            name = text(obj(tag).get("name"))
            tags.append({"id": ident, "name": name} if name is not None else {"id": ident})
    return sorted(tags, key=lambda tag: tag["id"])


def json_object(value: Any) -> dict[str, Any]:
    """A private copy of a JSON object, so later changes to the raw object cannot reach the snapshot."""
    return clean_json(value) if type(value) is dict or isinstance(value, Mapping) else {}


def part_order(part: Mapping[str, Any]) -> tuple[int, tuple[int, int, str]]:
    """Sort key of a ticket part: (created_at, id), numeric ids compared as numbers."""
    ident = str(part.get("id", ""))
    id_key = (0, int(ident), "") if ident.isdigit() else (1, 0, ident)
    return (part.get("created_at") or 0, id_key)


# --- one builder per stream ---


def _conversation(raw: Mapping[str, Any]) -> dict[str, Any]:
    statistics = obj(raw.get("statistics"))
    rating = obj(raw.get("conversation_rating"))
    source = obj(raw.get("source"))
    parts_count = integer(statistics.get("count_conversation_parts"))
    if parts_count is None:
        parts_count = integer(obj(raw.get("conversation_parts")).get("total_count"))
    rated = None
    if integer(rating.get("rating")) is not None:
        rated = {
            "rating": integer(rating.get("rating")),
            "remark": text(rating.get("remark")),
            "created_at": timestamp(rating.get("created_at")),
            "updated_at": timestamp(rating.get("updated_at")),
        }
    return {
        "id": text(raw.get("id")),
        "created_at": timestamp(raw.get("created_at")),
        "title": text(raw.get("title")),
        "read": flag(raw.get("read")),
        "priority": text(raw.get("priority")),
        "snoozed_until": timestamp(raw.get("snoozed_until")),
        "waiting_since": timestamp(raw.get("waiting_since")),
        "admin_assignee_id": assignee(raw.get("admin_assignee_id")),
        "team_assignee_id": assignee(raw.get("team_assignee_id")),
        "tags": tag_list(raw.get("tags")),
        "rating": rated,
        "source_type": text(source.get("type")),
        "delivered_as": text(source.get("delivered_as")),
        "parts_count": parts_count,
        "sla_status": text(obj(raw.get("sla_applied")).get("sla_status")),
        "reopen_count": integer(statistics.get("count_reopens")),
        "assignment_count": integer(statistics.get("count_assignments")),
        "last_contact_reply_at": timestamp(statistics.get("last_contact_reply_at")),
        "custom_attributes": json_object(raw.get("custom_attributes")),
        "contacts": contact_ids(raw.get("contacts")),
    }


def _ticket_part(raw: Any) -> dict[str, Any] | None:
    """The compact form of a part that can raise an event: a state change, or a comment by a user."""
    part = obj(raw)
    state, previous = text(part.get("ticket_state")), text(part.get("previous_ticket_state"))
    part_type, author_type = text(part.get("part_type")), text(obj(part.get("author")).get("type"))
    changes_state = state is not None and state != previous
    is_user_comment = part_type == "comment" and author_type == "user"
    ident = text(part.get("id"))
    if ident is None or not (changes_state or is_user_comment):
        return None
    compact = {
        "id": ident,
        "created_at": timestamp(part.get("created_at")),
        "part_type": part_type,
        "author_type": author_type,
        "ticket_state": state if changes_state else None,
        "previous_ticket_state": previous if changes_state else None,
    }
    return {key: value for key, value in compact.items() if value is not None}


def _ticket(raw: Mapping[str, Any]) -> dict[str, Any]:
    attributes = obj(raw.get("ticket_attributes"))
    parts_list = obj(raw.get("ticket_parts"))
    raw_parts = items(parts_list.get("ticket_parts"))
    parts = [part for part in map(_ticket_part, raw_parts) if part is not None]
    parts_count = integer(parts_list.get("total_count"))
    return {
        "id": text(raw.get("id")),
        "created_at": timestamp(raw.get("created_at")),
        "category": text(raw.get("category")),
        "state": text(obj(raw.get("ticket_state")).get("category")),
        "ticket_type": text(obj(raw.get("ticket_type")).get("name")),
        "name": text(attributes.get(DEFAULT_TITLE)),
        "description": text(attributes.get(DEFAULT_DESCRIPTION)),
        "admin_assignee_id": assignee(raw.get("admin_assignee_id")),
        "team_assignee_id": assignee(raw.get("team_assignee_id")),
        "snoozed_until": timestamp(raw.get("snoozed_until")),
        "is_shared": flag(raw.get("is_shared")),
        "parts_count": parts_count if parts_count is not None else (len(raw_parts) or None),
        "parts": sorted(parts, key=part_order),
        "contacts": contact_ids(raw.get("contacts")),
    }


def _contact(raw: Mapping[str, Any]) -> dict[str, Any]:
    location = obj(raw.get("location"))
    tag_ids = (text(obj(tag).get("id")) for tag in items(obj(raw.get("tags")).get("data")))
    return {
        "id": text(raw.get("id")),
        "role": text(raw.get("role")),
        "email": email(raw.get("email")),
        "phone": (text(raw.get("phone")) or "").strip() or None,
        "name": (text(raw.get("name")) or "").strip() or None,
        "avatar": avatar_url(raw.get("avatar")),
        "location": {key: text(location.get(key)) for key in ("city", "country", "region")},
        "has_hard_bounced": flag(raw.get("has_hard_bounced")),
        "marked_email_as_spam": flag(raw.get("marked_email_as_spam")),
        "unsubscribed_from_emails": flag(raw.get("unsubscribed_from_emails")),
        # included in search results as a list object; never fetched per contact (docs/design.md §4.2)
        "opted_out_count": integer(obj(raw.get("opted_out_subscription_types")).get("total_count")),
        "custom_attributes": json_object(raw.get("custom_attributes")),
        "tag_ids": sorted({ident for ident in tag_ids if ident is not None}),
    }


_BUILDERS = {"contacts": _contact, "conversations": _conversation, "tickets": _ticket}
