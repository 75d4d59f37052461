"""Vocabulary and object skeletons for the generated Intercom workspace, shaped like the 2.16 schemas.

`blank_*` return every field of the spec's `contact`, `conversation` and `ticket` schemas that the job or
search reads, with Intercom's empty values; `etl.sandbox.generator` fills them in. A generated contact's
`tags` list holds all its tags: `as_served` cuts it to what Intercom shows, `tag_list` answers the endpoint
that lists them all.
"""

from __future__ import annotations

import random
from typing import Any

WORKSPACE_ID = "sandbox0"
MAX_LISTED_TAGS = 10  # spec 2.16, contact_tags: "Up to 10 will be displayed here. Use the url to get more."

FIRST_NAMES = ["anna", "bjorn", "chloe", "dmitri", "elif", "farah", "goran", "hana", "ines", "jonas",
               "kofi", "lena", "mateo", "noor", "oskar", "priya", "quinn", "rosa", "sven", "tomás",
               "uma", "zoë"]  # fmt: skip
LAST_NAMES = ["meyer", "okafor", "nguyen", "garcía", "kowalski", "rossi", "svensson", "tanaka", "dubois",
              "oconnor", "schmidt", "haddad", "silva", "müller"]  # fmt: skip
CITIES = [
    ("Berlin", "Berlin", "Germany"), ("London", "England", "United Kingdom"),
    ("Paris", "Île-de-France", "France"),
    ("New York", "New York", "United States"), ("San Francisco", "California", "United States"),
    ("Sydney", "New South Wales", "Australia"), ("Toronto", "Ontario", "Canada"),
    ("Lagos", "Lagos", "Nigeria"),
    ("São Paulo", "São Paulo", "Brazil"), ("Tokyo", "Tokyo", "Japan"), (None, None, None),
]  # fmt: skip
# National and international formats, valid and not (the 8 placeholders are random digits)
PHONE_FORMATS = [
    "+1 415-555-01{0}{1}", "(212) 555-01{2}{3}", "415.555.01{4}{5}",  # US
    "+44 20 7946 0{0}{1}{2}", "020 7946 0{3}{4}{5}", "07700 900{0}{1}{2}",  # UK
    "+49 30 1234{0}{1}{2}{3}", "030 1234{4}{5}{6}{7}", "0151 2345{0}{1}{2}{3}",  # DE
    "+33 6 12 34 5{0} {1}{2}", "06 12 34 5{3} {4}{5}",  # FR
    "+61 2 9374 4{0}{1}{2}", "+81 3-1234-5{0}{1}{2}", "+55 11 91234-5{0}{1}{2}",  # AU, JP, BR
    "12345", "555-{0}{1}", "n/a", "+1 000 000 0000",  # invalid
]  # fmt: skip
SOURCE_TYPES = [
    "conversation",
    "email",
    "facebook",
    "instagram",
    "phone_call",
    "push",
    "sms",
    "twitter",
    "whatsapp",
]
DELIVERED_AS = [
    "customer_initiated",
    "customer_initiated",
    "admin_initiated",
    "automated",
    "campaigns_initiated",
]
REMARKS = ["", "", "Great help, thanks!", "Took too long.", "Sehr freundlich 👍", "Problem not solved"]
TAG_NAMES = ["vip", "bug", "billing", "churn-risk", "feedback", "onboarding", "priorité", "beta"]
# campaign and segment tags, applied by the dozen to some contacts (more than a contact's tags list shows)
CAMPAIGN_TAG_NAMES = ["newsletter", "trial", "webinar-2026", "partner", "nps-promoter", "nps-detractor",
                      "cohort-2025q4", "cohort-2026q1", "referral", "power-user", "api-user", "mobile",
                      "black-friday", "survey-2026", "early-access", "événement"]  # fmt: skip
ADMINS = [("Ada Support", "ada@support.example"), ("Ben Billing", "ben@support.example"),
          ("Cleo Care", "cleo@support.example"), ("Fin Bot", "fin@support.example")]  # fmt: skip
TEAMS = ["Support", "Billing", "Escalations"]
STATE_LABELS = {
    "submitted": "Submitted",
    "in_progress": "In progress",
    "waiting_on_customer": "Waiting on you",
    "resolved": "Resolved",
}


def _ticket_type(type_id: str, name: str, category: str) -> dict[str, Any]:
    states = [
        {
            "type": "ticket_state",
            "id": f"{type_id}{i}",
            "category": category_name,
            "internal_label": label,
            "external_label": label,
        }
        for i, (category_name, label) in enumerate(STATE_LABELS.items())
    ]
    return {
        "type": "ticket_type",
        "id": type_id,
        "category": category,
        "name": name,
        "description": f"{name} tickets",
        "icon": "🎟️",
        "workspace_id": WORKSPACE_ID,
        "archived": False,
        "created_at": 1_700_000_000,
        "updated_at": 1_700_000_000,
        "ticket_type_attributes": {"type": "list", "ticket_type_attributes": []},
        "ticket_states": {"type": "list", "data": states},
    }


TICKET_TYPES = [
    _ticket_type("51", "Refund request", "Customer"),
    _ticket_type("52", "Bug report", "Tracker"),
    _ticket_type("53", "Account access", "Back-office"),
]


def admin_object(index: int, name: str, email: str) -> dict[str, Any]:
    return {
        "type": "admin",
        "id": str(991_267_700 + index),
        "name": name,
        "email": email,
        "job_title": "Support",
        "away_mode_enabled": False,
        "away_mode_reassign": False,
        "has_inbox_seat": True,
        "team_ids": [],
        "avatar": None,
    }


def team_object(index: int, name: str, admins: list[dict[str, Any]]) -> dict[str, Any]:
    admin_ids = [int(a["id"]) for a in admins[index : index + 2]]
    return {"type": "team", "id": str(5_017_690 + index), "name": name, "admin_ids": admin_ids}


def tag_object(index: int, name: str) -> dict[str, Any]:
    return {"type": "tag", "id": str(8_100 + index), "name": name}


def _list(url: str) -> dict[str, Any]:
    return {"type": "list", "data": [], "url": url, "total_count": 0, "has_more": False}


def blank_contact(contact_id: str, moment: int) -> dict[str, Any]:
    contact: dict[str, Any] = {
        "type": "contact",
        "id": contact_id,
        "workspace_id": WORKSPACE_ID,
        "external_id": None,
        "role": "user",
        "email": "",
        "phone": None,
        "name": None,
        "avatar": None,
        "owner_id": None,
        "has_hard_bounced": False,
        "marked_email_as_spam": False,
        "unsubscribed_from_emails": False,
        "created_at": moment,
        "updated_at": moment,
        "signed_up_at": None,
        "last_seen_at": None,
        "last_replied_at": None,
        "last_contacted_at": None,
        "last_email_opened_at": None,
        "last_email_clicked_at": None,
        "language_override": None,
        "browser": None,
        "os": None,
        "custom_attributes": {},
        "location": {"type": "location", "country": None, "region": None, "city": None},
    }
    for name in ("tags", "notes", "companies"):
        contact[name] = _list(f"/contacts/{contact_id}/{name}")
    contact["opted_out_subscription_types"] = _list(f"/contacts/{contact_id}/subscriptions")
    contact["opted_in_subscription_types"] = _list(f"/contacts/{contact_id}/subscriptions")
    return contact


def tag_ref(tag: dict[str, Any]) -> dict[str, Any]:
    """A tag as a contact's tags list names it (spec 2.16, addressable_list)."""
    return {"type": "tag", "id": tag["id"], "url": f"/tags/{tag['id']}"}


def add_unlisted_tags(contact: dict[str, Any], tags: list[dict[str, Any]], rng: random.Random) -> None:
    """Tag the contact until it has 11-18 distinct tags: more than its tags list shows."""
    have = {ref["id"] for ref in contact["tags"]["data"]}
    more = rng.randint(MAX_LISTED_TAGS + 1, 18) - len(have)
    contact["tags"]["data"] += [
        tag_ref(tag) for tag in rng.sample([t for t in tags if t["id"] not in have], more)
    ]


def swap_an_unlisted_tag(
    contact: dict[str, Any], tags: list[dict[str, Any]], rng: random.Random
) -> tuple[str, str]:
    """Replace one tag the contact's tags list does not show with a tag it lacks: (removed id, added id)."""
    refs = contact["tags"]["data"]
    have = {ref["id"] for ref in refs}
    index = rng.randrange(MAX_LISTED_TAGS, len(refs))
    removed = refs[index]["id"]
    refs[index] = tag_ref(rng.choice([t for t in tags if t["id"] not in have]))
    return removed, refs[index]["id"]


def as_served(contact: dict[str, Any]) -> dict[str, Any]:
    """The contact as Intercom serves it (in search results and GET /contacts/{id}): its `tags` list shows the
    first MAX_LISTED_TAGS tags, `total_count` counts them all, `has_more` says some are not shown. Changes
    and returns `contact`, so pass a copy."""
    tags = contact["tags"]
    listed = tags["data"]
    tags.update(
        data=listed[:MAX_LISTED_TAGS], total_count=len(listed), has_more=len(listed) > MAX_LISTED_TAGS
    )
    return contact


def tag_list(contact: dict[str, Any], tags: list[dict[str, Any]], admin_id: str) -> dict[str, Any]:
    """GET /contacts/{id}/tags: every tag of the contact as a tag object (spec 2.16, listTagsForAContact)."""
    names = {tag["id"]: tag["name"] for tag in tags}
    applied = {"type": "admin", "id": admin_id}
    data = [
        {"type": "tag", "id": ref["id"], "name": names[ref["id"]], "applied_at": contact["created_at"],
         "applied_by": dict(applied)}
        for ref in contact["tags"]["data"]
    ]  # fmt: skip
    return {"type": "list", "data": data}


def _contact_refs(contact_ids: list[str]) -> dict[str, Any]:
    refs = [{"type": "contact", "id": cid, "external_id": None} for cid in contact_ids]
    return {"type": "contact.list", "contacts": refs}


def blank_conversation(
    conv_id: str, moment: int, contact_ids: list[str], source_type: str, delivered_as: str
) -> dict[str, Any]:
    return {
        "type": "conversation",
        "id": conv_id,
        "title": None,
        "created_at": moment,
        "updated_at": moment,
        "waiting_since": moment,
        "snoozed_until": None,
        "open": True,
        "state": "open",
        "read": False,
        "priority": "none",
        "admin_assignee_id": 0,
        "team_assignee_id": 0,
        "tags": {"type": "tag.list", "tags": []},
        "conversation_rating": None,
        "source": {
            "type": source_type,
            "id": f"40{conv_id}",
            "delivered_as": delivered_as,
            "subject": "",
            "body": "<p>Hello, I need help with my order</p>",
            "author": {"type": "user", "id": contact_ids[0], "name": None, "email": None},
            "attachments": [],
            "url": None,
            "redacted": False,
        },
        "contacts": _contact_refs(contact_ids),
        "teammates": {"type": "admin.list", "teammates": []},
        "custom_attributes": {},
        "first_contact_reply": None,
        "sla_applied": None,
        "statistics": {
            "type": "conversation_statistics",  # *_at keys appear once they happen (the schema has no nulls)
            "count_reopens": 0,
            "count_assignments": 0,
            "count_conversation_parts": 1,
        },
        "linked_objects": {"type": "list", "data": [], "total_count": 0, "has_more": False},
        "ai_agent_participated": False,
    }


def blank_ticket(
    ticket_id: str, number: str, moment: int, contact_ids: list[str], ticket_type: dict[str, Any]
) -> dict[str, Any]:
    submitted = ticket_type["ticket_states"]["data"][0]
    return {
        "type": "ticket",
        "id": ticket_id,
        "ticket_id": number,
        "category": ticket_type["category"],
        "ticket_attributes": {},
        "ticket_state": dict(submitted),
        "ticket_type": ticket_type,
        "contacts": _contact_refs(contact_ids),
        "admin_assignee_id": 0,
        "team_assignee_id": 0,
        "created_at": moment,
        "updated_at": moment,
        "open": True,
        "linked_objects": {"type": "list", "data": [], "total_count": 0, "has_more": False},
        "ticket_parts": {"type": "ticket_part.list", "ticket_parts": [], "total_count": 0},
        "is_shared": False,
        "previous_ticket_state_id": None,
    }


def state_part(part_id: str, moment: int, previous: str, state: str, admin: dict[str, Any]) -> dict[str, Any]:
    """A ticket part recording an admin's state change."""
    author = {"type": "admin", "id": admin["id"], "name": admin["name"], "email": admin["email"]}
    return {
        "type": "ticket_part",
        "id": part_id,
        "part_type": "ticket_state_updated_by_admin",
        "body": None,
        "previous_ticket_state": previous,
        "ticket_state": state,
        "created_at": moment,
        "updated_at": moment,
        "author": author,
        "attachments": [],
        "redacted": False,
    }


def comment_part(
    part_id: str, moment: int, body: str, contact_id: str, contact: dict[str, Any]
) -> dict[str, Any]:
    """A ticket part holding a reply by the ticket's contact."""
    author = {
        "type": "user",
        "id": contact_id,
        "name": contact.get("name"),
        "email": contact.get("email") or "",
    }
    return {
        "type": "ticket_part",
        "id": part_id,
        "part_type": "comment",
        "body": body,
        "created_at": moment,
        "updated_at": moment,
        "author": author,
        "attachments": [],
        "redacted": False,
    }
