"""(previous snapshot, current snapshot, context) → Klaviyo events, exactly as docs/design.md §4 specifies.

Pure: no I/O, no clock; the run's start time and everything looked up (admins, teams, tags, contact
identities) arrive in `Context`. Rules first produce candidates (metric, time, unique_id); `diff` then keeps
those at or after `start_date`, drops duplicates, finds the profile and builds the properties once.
Events come out in the canonical form the outbox keeps: the default metric names and property keys; a job's
`metric_names` / `property_names` are applied when they are sent (`etl.klaviyo.rename`, docs/design.md §3.3).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from etl.limits import fit_properties
from etl.models import Admin, Event, Identity, Snapshot, iso_z
from etl.snapshots import email, part_order, to_datetime

__all__ = ["METRICS", "Admin", "Context", "Inference", "diff"]

CREATED_CONVERSATION = "Created Conversation"
RATED_CONVERSATION = "Rated Conversation"
READ_CONVERSATION = "Read Conversation"
REPLIED_TO_CONVERSATION = "Replied to Conversation"
CREATED_TICKET = "Created Ticket"
SUBMITTED_TICKET = "Submitted Ticket"
REPLIED_TO_TICKET = "Replied to Ticket"
WAITING_TICKET = "Marked Ticket as Waiting on Customer"
RESOLVED_TICKET = "Resolved Ticket"
# Klaviyo's native Intercom integration names them so, and reports read the same; but the events land in API
# metrics apart from the native ones, so flows must be re-pointed (docs/design.md §4, `etl check --online`)
METRICS = (
    CREATED_CONVERSATION,
    RATED_CONVERSATION,
    READ_CONVERSATION,
    REPLIED_TO_CONVERSATION,
    CREATED_TICKET,
    SUBMITTED_TICKET,
    REPLIED_TO_TICKET,
    WAITING_TICKET,
    RESOLVED_TICKET,
)
# docs/design.md §4.2: every default key an event can carry (property_names may rename them when sent)
EVENT_PROPERTY_KEYS = (
    "email",
    "phone_number",
    "Title",
    "Snoozed Until",
    "Waiting Since",
    "Priority",
    "Assigned Team",
    "Assigned Admin Name",
    "Assigned Admin Email",
    "Tags",
    "Conversation Rating",
    "Conversation Source",
    "Conversation Delivered As",
    "Conversation Parts Count",
    "SLA Status",
    "Reopen Count",
    "Assignment Count",
    "Custom Attributes",
    "Conversation ID",
    "Category",
    "Ticket Parts Count",
    "Ticket ID",
    "Ticket Type",
    "Ticket Name",
    "Ticket Description",
    "Is Shared",
    "Contact Email",
    "Contact Phone",
    "Team Name",
    "Admin Name",
    "Admin Email",
)
STATE_METRICS = {  # ticket_state.category → metric; in_progress raises none
    "submitted": SUBMITTED_TICKET,
    "waiting_on_customer": WAITING_TICKET,
    "resolved": RESOLVED_TICKET,
}


@dataclass(frozen=True)
class Context:
    """What one run knows beyond the two snapshots: its settings, its start, and the per-run lookups."""

    start_date: datetime  # no event older than this is emitted
    flow_trigger_max_age: timedelta  # older events go out with backfill=true, so no flow fires
    run_started_at: datetime
    backfill_run: bool = False  # --since/--until runs: every event is a backfill
    admins: Mapping[str, Admin] = field(default_factory=dict)  # admin id → admin
    teams: Mapping[str, str] = field(default_factory=dict)  # team id → name
    tags: Mapping[str, str] = field(default_factory=dict)  # tag id → name
    contacts: Mapping[str, Identity] = field(default_factory=dict)  # contact id → identity (merges followed)


@dataclass(frozen=True)
class Inference:
    """The events one object raises and the counts of what was skipped or cut on the way."""

    events: tuple[Event, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Candidate:
    metric: str  # default name
    time: int  # UNIX seconds
    unique_id: str
    time_in_data: bool = True  # False when the time is the object's updated_at, not a fact about the event


def diff(prev: Snapshot | None, cur: Snapshot, ctx: Context) -> Inference:
    """The events that `cur` raises against `prev` (None: first sight, docs/design.md §4.1)."""
    if cur.stream == "conversations":
        candidates = list(_conversation_rules(prev, cur))
    elif cur.stream == "tickets":
        candidates = list(_ticket_rules(prev, cur))
    else:
        return Inference()
    kept = _within_start(candidates, first_sight=prev is None, created=cur.data.get("created_at"), ctx=ctx)
    if not kept:
        return Inference()
    identity = _identity(cur, ctx)
    if identity is None:
        return Inference(counts={"skipped:no_identifier": 1})
    events, truncated, cache = [], 0, {}
    for candidate in sorted(kept, key=lambda c: c.time):
        # the properties depend on the metric only in whether it is Resolved Ticket (`_properties`): built
        # once per object for every other metric, and shared by its events (nothing mutates them)
        key = candidate.metric == RESOLVED_TICKET
        if key not in cache:
            cache[key] = fit_properties(_properties(cur, candidate.metric, identity, ctx))
        fitted = cache[key]
        truncated += fitted.truncations
        time = to_datetime(candidate.time)
        events.append(
            Event(
                metric=candidate.metric,
                unique_id=candidate.unique_id,
                time=time,
                identity=identity,
                properties=fitted.properties,
                backfill=ctx.backfill_run or time < ctx.run_started_at - ctx.flow_trigger_max_age,
            )
        )
    return Inference(tuple(events), {"truncated": truncated} if truncated else {})


def _within_start(
    candidates: list[_Candidate], first_sight: bool, created: int | None, ctx: Context
) -> list[_Candidate]:
    """Candidates at or after start_date, first of each unique_id; on first sight, an event whose time is
    not in the data (Read) counts only for an object created at or after start_date."""
    created_in_range = created is not None and to_datetime(created) >= ctx.start_date
    kept: dict[str, _Candidate] = {}
    for candidate in candidates:
        if to_datetime(candidate.time) < ctx.start_date or candidate.unique_id in kept:
            continue
        if first_sight and not candidate.time_in_data and not created_in_range:
            continue
        kept[candidate.unique_id] = candidate
    return list(kept.values())


def _identity(cur: Snapshot, ctx: Context) -> Identity | None:
    """The first contact of the object that has an email or a valid phone (docs/design.md §4.1)."""
    for contact_id in cur.data.get("contacts") or []:
        identity = ctx.contacts.get(contact_id)
        if identity is not None and (identity.email or identity.phone_number):
            return identity
    return None


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


# --- conversations: search shows only the latest reply/rating, so each rule fires at most once ---


def _conversation_rules(prev: Snapshot | None, cur: Snapshot) -> Iterator[_Candidate]:
    data, before = cur.data, (prev.data if prev is not None else None)
    base = f"intercom:conversation:{cur.object_id}"
    created = data.get("created_at")
    if before is None and created is not None:
        yield _Candidate(CREATED_CONVERSATION, created, f"{base}:created")

    replied = data.get("last_contact_reply_at")
    replied_before = before.get("last_contact_reply_at") if before is not None else None
    if (
        replied is not None
        and (created is None or replied > created)  # the opening message is not a reply
        and (replied_before is None or replied > replied_before)
    ):
        yield _Candidate(REPLIED_TO_CONVERSATION, replied, f"{base}:replied:{replied}")

    rating = data.get("rating")
    rating_before = before.get("rating") if before is not None else None
    if rating is not None and _rating_changed(rating, rating_before):
        rated_at = rating.get("updated_at") or rating.get("created_at")
        time = rated_at if rated_at is not None else _epoch(cur.updated_at)
        yield _Candidate(RATED_CONVERSATION, time, f"{base}:rated:{time}", time_in_data=rated_at is not None)

    read_before = before.get("read") if before is not None else None
    if data.get("read") is True and read_before is not True:
        time = _epoch(cur.updated_at)
        yield _Candidate(READ_CONVERSATION, time, f"{base}:read:{time}", time_in_data=False)


def _rating_changed(rating: Mapping[str, Any], before: Mapping[str, Any] | None) -> bool:
    """(rating, remark, rating time) differ; a rating without any time compares (rating, remark) only."""
    if before is None:
        return True
    rated_at = rating.get("updated_at") or rating.get("created_at")
    before_at = before.get("updated_at") or before.get("created_at")
    same = (rating.get("rating"), rating.get("remark")) == (before.get("rating"), before.get("remark"))
    return not same or (rated_at is not None and rated_at != before_at)


# --- tickets: parts carry the history, so every transition and reply gets its own event ---


def _ticket_rules(prev: Snapshot | None, cur: Snapshot) -> Iterator[_Candidate]:
    data, before = cur.data, (prev.data if prev is not None else None)
    base = f"intercom:ticket:{cur.object_id}"
    created, state = data.get("created_at"), data.get("state")
    parts = list(data.get("parts") or [])
    # "newer than prev" = above prev's (created_at, id) high point, not wall-clock time (docs/design.md §4.1)
    seen = [part_order(part) for part in (before.get("parts") or [])] if before is not None else []
    high = max(seen, default=None)
    new_parts = [part for part in parts if high is None or part_order(part) > high]
    transitions = [part for part in new_parts if "ticket_state" in part and "created_at" in part]

    if before is None and created is not None:
        yield _Candidate(CREATED_TICKET, created, f"{base}:created")
        state_parts = [part for part in parts if "ticket_state" in part]
        # (b) the initial state; an earliest part without a previous state is itself the first state
        initial = state_parts[0].get("previous_ticket_state") if state_parts else state
        if initial is not None:
            yield from _state(base, initial, created)
    for part in transitions:  # (a)
        yield from _state(base, part["ticket_state"], part["created_at"])
    if before is not None and state is not None and state != before.get("state"):
        explained = bool(transitions) and transitions[-1]["ticket_state"] == state
        if not explained:  # (c)
            yield from _state(base, state, _epoch(cur.updated_at), time_in_data=False)

    for part in new_parts:
        if part.get("part_type") == "comment" and part.get("author_type") == "user" and "created_at" in part:
            yield _Candidate(REPLIED_TO_TICKET, part["created_at"], f"{base}:reply:{part['id']}")


def _state(base: str, category: str, time: int, time_in_data: bool = True) -> Iterator[_Candidate]:
    metric = STATE_METRICS.get(category)
    if metric is not None:
        yield _Candidate(metric, time, f"{base}:state:{category}:{time}", time_in_data)


# --- properties: the object as read, under the keys of docs/design.md §4.2 ---


def _properties(cur: Snapshot, metric: str, identity: Identity, ctx: Context) -> dict[str, Any]:
    data = cur.data
    admin = ctx.admins.get(data.get("admin_assignee_id") or "") or Admin()
    team = ctx.teams.get(data.get("team_assignee_id") or "")
    admin_email = email(admin.email)
    if cur.stream == "conversations":
        rating = data.get("rating") or {}
        tag_names = [tag.get("name") or ctx.tags.get(tag["id"]) for tag in data.get("tags") or []]
        values: dict[str, Any] = {
            "email": identity.email,
            "phone_number": identity.phone_number,
            "Title": data.get("title"),
            "Snoozed Until": _moment(data.get("snoozed_until")),
            "Waiting Since": _moment(data.get("waiting_since")),
            "Priority": data.get("priority"),
            "Assigned Team": team,
            "Assigned Admin Name": admin.name,
            "Assigned Admin Email": admin_email,
            "Tags": [name for name in tag_names if name],
            "Conversation Rating": rating.get("rating"),
            "Conversation Source": data.get("source_type"),
            "Conversation Delivered As": data.get("delivered_as"),
            "Conversation Parts Count": data.get("parts_count"),
            "SLA Status": data.get("sla_status"),
            "Reopen Count": data.get("reopen_count"),
            "Assignment Count": data.get("assignment_count"),
            "Custom Attributes": data.get("custom_attributes"),
            "Conversation ID": cur.object_id,
        }
    elif metric == RESOLVED_TICKET:  # the native integration sends these keys for Resolved only
        values = {
            "Contact Email": identity.email,
            "Contact Phone": identity.phone_number,
            "Category": data.get("category"),
            "Team Name": team,
            "Admin Name": admin.name,
            "Admin Email": admin_email,
            "Ticket ID": cur.object_id,  # the API id, not the Inbox number `ticket_id`
            "Ticket Name": data.get("name"),
            "Ticket Description": data.get("description"),
            "Is Shared": data.get("is_shared"),
        }
    else:
        values = {
            "email": identity.email,
            "phone_number": identity.phone_number,
            "Category": data.get("category"),
            "Assigned Team": team,
            "Assigned Admin Name": admin.name,
            "Assigned Admin Email": admin_email,
            "Snoozed Until": _moment(data.get("snoozed_until")),
            "Ticket Parts Count": data.get("parts_count"),
            "Ticket ID": cur.object_id,
            "Ticket Type": data.get("ticket_type"),
            "Ticket Name": data.get("name"),
            "Ticket Description": data.get("description"),
            "Is Shared": data.get("is_shared"),
        }
    return values


def _moment(epoch: int | None) -> str | None:
    """An epoch property as ISO 8601 with its offset, e.g. 2026-01-02T03:04:05+00:00 (docs/design.md §4.2)."""
    return iso_z(to_datetime(epoch), offset="+00:00") if epoch is not None else None
