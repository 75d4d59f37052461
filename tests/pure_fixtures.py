"""Literal Intercom objects shaped like the 2.16 spec, and a Context, for the tests of the pure core."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from etl.events import Context
from etl.models import Admin, Identity

START = datetime(2026, 1, 1, tzinfo=UTC)
RUN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ts(text: str) -> int:
    """UNIX seconds of an ISO 8601 UTC time written without its zone, e.g. '2026-02-01T10:00'."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def context(**overrides: Any) -> Context:
    """A run started at RUN with start_date START, one admin, one team, two tags and three contacts."""
    values: dict[str, Any] = {
        "start_date": START,
        "flow_trigger_max_age": timedelta(hours=24),
        "run_started_at": RUN,
        "backfill_run": False,
        "admins": {"991": Admin(name="Ada Admin", email=" Ada@Example.COM ")},
        "teams": {"501": "Billing"},
        "tags": {"11": "vip", "12": "churn-risk"},
        "contacts": {
            "c-mail": Identity(email="jo@example.com", phone_number="+14155550100", contact_id="c-mail"),
            "c-phone": Identity(phone_number="+14155550101", contact_id="c-phone"),
            "c-none": Identity(contact_id="c-none"),
        },
    }
    values.update(overrides)
    return Context(**values)


def conversation(**overrides: Any) -> dict[str, Any]:
    """A fully populated conversation created 2026-02-01T10:00, last contact reply 11:00, rated 12:00."""
    raw: dict[str, Any] = {
        "type": "conversation",
        "id": "1295",
        "title": "Refund please",
        "created_at": ts("2026-02-01T10:00"),
        "updated_at": ts("2026-02-01T12:30"),
        "waiting_since": ts("2026-02-01T11:00"),
        "snoozed_until": ts("2026-02-03T09:00"),
        "open": True,
        "state": "snoozed",
        "read": True,
        "priority": "high",
        "admin_assignee_id": 991,
        "team_assignee_id": 501,
        "tags": {
            "type": "tag.list",
            "tags": [{"type": "tag", "id": "12", "name": "churn-risk"}, {"type": "tag", "id": "11"}],
        },
        "conversation_rating": {
            "rating": 4,
            "remark": "quick",
            "created_at": ts("2026-02-01T11:30"),
            "updated_at": ts("2026-02-01T12:00"),
            "contact": {"type": "contact", "id": "c-mail"},
            "teammate": {"type": "admin", "id": "991"},
        },
        "source": {"type": "email", "id": "3", "delivered_as": "customer_initiated"},
        "contacts": {
            "type": "contact.list",
            "contacts": [{"type": "contact", "id": "c-none"}, {"type": "contact", "id": "c-mail"}],
        },
        "custom_attributes": {"plan": "pro", "seats": 0, "nested": {"a": [1, 2]}},
        "sla_applied": {"type": "conversation_sla_summary", "sla_name": "VIP", "sla_status": "missed"},
        "statistics": {
            "type": "conversation_statistics",
            "last_contact_reply_at": ts("2026-02-01T11:00"),
            "count_reopens": 2,
            "count_assignments": 3,
            "count_conversation_parts": 7,
        },
        "conversation_parts": {"type": "conversation_part.list", "conversation_parts": [], "total_count": 7},
    }
    raw.update(overrides)
    return raw


def part(
    ident: str,
    created: str,
    part_type: str = "ticket_state_updated",
    author: str = "admin",
    state: str | None = None,
    previous: str | None = None,
) -> dict[str, Any]:
    """A ticket part; `state`/`previous` make it a state change."""
    raw: dict[str, Any] = {
        "type": "ticket_part",
        "id": ident,
        "part_type": part_type,
        "body": None,
        "created_at": ts(created),
        "updated_at": ts(created),
        "author": {"type": author, "id": "7", "name": "Someone", "email": "someone@example.com"},
        "attachments": [],
        "redacted": False,
    }
    if state is not None:
        raw["ticket_state"] = state
    if previous is not None:
        raw["previous_ticket_state"] = previous
    return raw


def ticket(parts: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """A fully populated ticket created 2026-02-01T10:00, now resolved, with a submitted → resolved history."""
    if parts is None:
        parts = [
            part("1", "2026-02-01T10:00", "comment", "user"),
            part("2", "2026-02-01T10:05", state="in_progress", previous="submitted"),
            part("3", "2026-02-01T10:20", "comment", "admin"),
            part("4", "2026-02-01T11:00", state="resolved", previous="in_progress"),
        ]
    raw: dict[str, Any] = {
        "type": "ticket",
        "id": "7001",
        "ticket_id": "42",
        "category": "Customer",
        "ticket_attributes": {"_default_title_": "Login broken", "_default_description_": "It fails."},
        "ticket_state": {"type": "ticket_state", "id": "4", "category": "resolved", "internal_label": "Done"},
        "ticket_type": {"type": "ticket_type", "id": "9", "name": "Bug", "category": "Customer"},
        "contacts": {"type": "contact.list", "contacts": [{"type": "contact", "id": "c-mail"}]},
        "admin_assignee_id": 991,
        "team_assignee_id": 501,
        "created_at": ts("2026-02-01T10:00"),
        "updated_at": ts("2026-02-01T11:00"),
        "open": False,
        "snoozed_until": ts("2026-02-05T00:00"),
        "is_shared": False,
        "previous_ticket_state_id": "3",
        "ticket_parts": {"type": "ticket_part.list", "ticket_parts": parts, "total_count": len(parts)},
    }
    raw.update(overrides)
    return raw


def contact(**overrides: Any) -> dict[str, Any]:
    """A fully populated contact."""
    raw: dict[str, Any] = {
        "type": "contact",
        "id": "c-mail",
        "external_id": "u-1",
        "workspace_id": "ecahpwf5",
        "role": "user",
        "email": "  Jo@Example.com ",
        "phone": "(415) 555-0100",
        "name": "Jo Anne Smith",
        "has_hard_bounced": False,
        "marked_email_as_spam": True,
        "unsubscribed_from_emails": False,
        "created_at": ts("2025-06-01T00:00"),
        "updated_at": ts("2026-02-01T10:00"),
        "custom_attributes": {"plan": "pro"},
        "avatar": {"type": "avatar", "image_url": "https://example.org/jo.jpg"},
        "tags": {"data": [{"type": "tag", "id": "11", "url": "/tags/11"}, {"type": "tag", "id": "99"}]},
        "location": {"type": "location", "country": "United States", "region": "California", "city": None},
        "opted_out_subscription_types": {"type": "list", "data": [], "total_count": 2, "has_more": False},
    }
    raw.update(overrides)
    return raw


def advanced(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `raw` with top-level `changes` applied (the object as a later poll reads it)."""
    later = copy.deepcopy(raw)
    later.update(changes)
    return later
