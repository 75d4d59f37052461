"""A seeded, realistic Intercom workspace for the sandbox, tests and benchmarks.

    ws = Workspace(seed=7, start=datetime(2026, 3, 1, tzinfo=UTC), contacts=40, conversations=60, tickets=20)
    ws.contacts / ws.conversations / ws.tickets   # id -> raw JSON object as the 2.16 API returns it*
    ws.merged                                    # merged (gone) contact id -> surviving contact id
    ws.admins / ws.teams / ws.tags               # raw admin/team/tag objects
    ws.advance(timedelta(minutes=30))           # new objects, replies, ratings, reads, state changes
    ws.history                                   # every change as a `Change(kind, object_id, time, details)`

*but a contact's `tags.data` holds all its tags: the sandbox server shows 10 of them, as Intercom does.

Time comes only from `start` and the steps given to `advance` (`ws.now` is epoch seconds), randomness only
from `seed`: the same arguments give the same workspace. The field's rough shapes (contacts with more tags
than their tags list shows, avatars as bare URL strings, tags swapped beyond the 10th) draw from a second
generator seeded from `seed`, so every other draw, and the rest of the workspace, is as it was without them.
Every change moves the object's `updated_at` to the change time, the way Intercom moves it; a contact reply
also moves the contact's `updated_at`.
The history lets a test compute the expected Klaviyo events without the inference code. Kinds:
`contact.created`, `contact.updated`, `contact.merged` (details: into), `contact.retagged` (removed, added,
tags: the tag ids after; at a contact reply), `conversation.created` (contact_ids),
`conversation.contact_replied`, `conversation.admin_replied`, `conversation.rated` (rating, remark),
`conversation.read`, `ticket.created` (state), `ticket.state_changed` (previous, state, part_id),
`ticket.contact_replied` (part_id), and `conversation.updated` / `ticket.updated` from `touch()` (a change
that should raise no event). Conversation and ticket records carry `contact_ids` in their details.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from etl.sandbox.chronology import Chronology, Joined
from etl.sandbox.intercom_data import (
    ADMINS,
    CAMPAIGN_TAG_NAMES,
    CITIES,
    DELIVERED_AS,
    FIRST_NAMES,
    LAST_NAMES,
    MAX_LISTED_TAGS,
    PHONE_FORMATS,
    REMARKS,
    SOURCE_TYPES,
    TAG_NAMES,
    TEAMS,
    TICKET_TYPES,
    add_unlisted_tags,
    admin_object,
    blank_contact,
    blank_conversation,
    blank_ticket,
    comment_part,
    state_part,
    swap_an_unlisted_tag,
    tag_object,
    tag_ref,
    team_object,
)

DAY = 86_400
MANY_TAGS_SHARE = 0.15  # of contacts: 11-18 tags, more than their tags list shows
STRING_AVATAR_SHARE = 0.3  # of contacts: the avatar as a bare URL string (met in the field), not an object
RETAG_SHARE = 0.5  # of replies by a contact with unlisted tags: one of those is swapped for another tag


@dataclass(frozen=True)
class Change:
    """One thing that happened in the workspace: what, to which object, when (epoch seconds), details."""

    kind: str
    object_id: str
    time: int
    details: Mapping[str, Any] = field(default_factory=dict)


class Workspace:
    """The objects of one fake Intercom workspace and the history of how they came to be."""

    def __init__(
        self,
        *,
        seed: int = 0,
        start: datetime,
        contacts: int = 30,
        conversations: int = 40,
        tickets: int = 15,
        history_days: int = 60,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.rng = random.Random(seed)
        self.quirks = random.Random(f"quirks:{seed}")  # the field's rough shapes; never draws from `rng`
        self.now = int(start.timestamp())
        self.history: list[Change] = []
        self.contacts: dict[str, dict[str, Any]] = {}
        self.conversations: dict[str, dict[str, Any]] = {}
        self.tickets: dict[str, dict[str, Any]] = {}
        self.merged: dict[str, str] = {}
        self._chronologies = {
            name: Chronology(getattr(self, name)) for name in ("contacts", "conversations", "tickets")
        }
        self.admins = [admin_object(i, name, email) for i, (name, email) in enumerate(ADMINS)]
        self.teams = [team_object(i, name, self.admins) for i, name in enumerate(TEAMS)]
        self.tags = [tag_object(i, name) for i, name in enumerate(TAG_NAMES + CAMPAIGN_TAG_NAMES)]
        self._common_tags = self.tags[: len(TAG_NAMES)]  # what `rng` samples, as it always has
        self._serial = 1000
        self._horizon = self.now  # no change is generated after this moment
        begin = self.now - history_days * DAY
        for _ in range(contacts):
            self._new_contact(self._between(begin, self.now - DAY))
        leads = {c["id"]: c for c in self.contacts.values() if c["role"] == "lead"}
        users = [c for c in self.contacts.values() if c["role"] == "user"]
        for _ in range(max(1, contacts // 10)):  # some leads merged into users
            self._merge(self._between(begin + DAY, self.now), leads, users)
        for _ in range(conversations):
            self._new_conversation(self._between(begin, self.now))
        for _ in range(tickets):
            self._new_ticket(self._between(begin, self.now))
        for _ in range((conversations + tickets) * 2):
            self._random_activity(self._between(begin, self.now))
        self.history.sort(key=lambda c: c.time)

    # -- public -----------------------------------------------------------------------------------
    def advance(self, step: timedelta, activity: int | None = None) -> list[Change]:
        """Move time forward by `step` with `activity` random changes inside it; return the new changes."""
        start, end = self.now + 1, self.now + int(step.total_seconds())
        count = activity if activity is not None else self.rng.randint(3, 12)
        self._horizon = end
        done = len(self.history)
        for moment in sorted(self._between(start, end) for _ in range(count)):
            roll = self.rng.random()
            if roll < 0.15:
                self._new_conversation(moment)
            elif roll < 0.25:
                self._new_ticket(moment)
            elif roll < 0.3:
                self._new_contact(moment)
            else:
                self._random_activity(moment)
        self.now = max(self.now, end)
        new = self.history[done:]
        new.sort(key=lambda c: c.time)
        self.history[done:] = new
        return list(new)

    def touch(self, stream: str, object_id: str, moment: int | None = None) -> None:
        """Change an object trivially (a custom attribute) at `moment` (default now); for paging tests."""
        obj = {"contacts": self.contacts, "conversations": self.conversations, "tickets": self.tickets}[
            stream
        ][object_id]
        at = self.now if moment is None else moment
        attrs = obj.setdefault("custom_attributes" if stream != "tickets" else "ticket_attributes", {})
        attrs["touched"] = attrs.get("touched", 0) + 1
        obj["updated_at"] = max(obj["updated_at"], at)
        kind = {"contacts": "contact", "conversations": "conversation", "tickets": "ticket"}[stream]
        self._log(f"{kind}.updated", object_id, at, {"touched": attrs["touched"]})

    def objects(self, stream: str) -> list[dict[str, Any]]:
        """The live objects of a stream (merged contacts excluded)."""
        return list(
            {"contacts": self.contacts, "conversations": self.conversations, "tickets": self.tickets}[
                stream
            ].values()
        )

    # -- building blocks --------------------------------------------------------------------------
    def _between(self, low: int, high: int) -> int:
        return self.rng.randint(min(low, high), max(low, high))

    def _next_id(self) -> str:
        self._serial += self.rng.randint(1, 9)
        return str(self._serial)

    def _log(self, kind: str, object_id: str, moment: int, details: Mapping[str, Any] | None = None) -> None:
        self.history.append(Change(kind, object_id, moment, dict(details or {})))

    def _new_contact(self, moment: int) -> dict[str, Any]:
        rng = self.rng
        contact_id = f"{rng.getrandbits(96):024x}"
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = (
            f"{first}.{last}{rng.randint(1, 999)}@{rng.choice(['example.com', 'mail.test', 'shop.example'])}"
        )
        if rng.random() < 0.12:
            email = ""  # a lead without email
        elif rng.random() < 0.15:
            email = f" {email.title()} "  # untidy input: trimmed and lower-cased downstream
        city, region, country = rng.choice(CITIES)
        contact = blank_contact(contact_id, moment)
        contact.update(
            role=rng.choice(["user", "user", "lead"]),
            email=email,
            name=rng.choice([f"{first.title()} {last.title()}", first.title(), None]),
            phone=rng.choice(PHONE_FORMATS).format(*(rng.randint(0, 9) for _ in range(8)))
            if rng.random() < 0.7
            else None,
            has_hard_bounced=rng.random() < 0.05,
            marked_email_as_spam=rng.random() < 0.03,
            unsubscribed_from_emails=rng.random() < 0.1,
            signed_up_at=moment,
            external_id=str(rng.randint(1, 10**6)) if rng.random() < 0.5 else None,
        )
        contact["location"].update(city=city, region=region, country=country)
        contact["avatar"] = {
            "type": "avatar",
            "image_url": f"https://static.example/avatars/{contact_id}.png",
        }
        contact["custom_attributes"] = {
            "plan": rng.choice(["free", "pro", "enterprise"]),
            "seats": rng.randint(1, 50),
        }
        for tag in rng.sample(self._common_tags, rng.randint(0, 2)):
            contact["tags"]["data"].append(tag_ref(tag))
        if self.quirks.random() < MANY_TAGS_SHARE:
            add_unlisted_tags(contact, self.tags, self.quirks)
        if self.quirks.random() < STRING_AVATAR_SHARE:
            contact["avatar"] = contact["avatar"]["image_url"]
        contact["tags"]["total_count"] = len(contact["tags"]["data"])
        opted_out = rng.choice([0, 0, 0, 1, 2])
        contact["opted_out_subscription_types"]["data"] = [
            {"type": "subscription", "id": str(900 + i), "url": f"/subscriptions/{900 + i}"}
            for i in range(opted_out)
        ]
        contact["opted_out_subscription_types"]["total_count"] = opted_out
        self.contacts[contact_id] = contact
        self._log(
            "contact.created", contact_id, moment, {"email": contact["email"], "phone": contact["phone"]}
        )
        return contact

    def _merge(self, moment: int, leads: dict[str, dict[str, Any]], users: list[dict[str, Any]]) -> None:
        """Merge a lead created before `moment` into a user; `leads`, `users`: the live contacts of each role,
        in the workspace's order (kept by the caller: scanning every contact per merge was quadratic)."""
        ready = [c for c in leads.values() if c["created_at"] < moment]
        if not ready or not users:
            return
        source, target = self.rng.choice(ready), self.rng.choice(users)
        del leads[source["id"]]
        del self.contacts[source["id"]]
        self.merged[source["id"]] = target["id"]
        self._touch(target, moment)
        self._log("contact.merged", source["id"], moment, {"into": target["id"]})

    def _touch(self, obj: dict[str, Any], moment: int) -> None:
        obj["updated_at"] = max(obj["updated_at"], moment)

    def _some_contacts(self, moment: int) -> list[str]:
        """Contact ids for a new conversation/ticket; sometimes a contact that is merged by now."""
        live = self._chronologies["contacts"].created_before(moment, inclusive=True)
        draw = self.rng.random
        pool: Sequence[str] = Joined(live, [m for m in self.merged if draw() < 0.3])
        if not pool:
            pool = [self._new_contact(moment)["id"]]
        group = 1 if self.rng.random() < 0.9 else self.rng.randint(2, 3)  # group conversations
        return self.rng.sample(pool, min(group, len(pool)))

    def _new_conversation(self, moment: int) -> None:
        rng = self.rng
        conv_id = self._next_id()
        contact_ids = self._some_contacts(moment)
        admin = rng.choice([*self.admins, None])
        team = rng.choice([*self.teams, None])
        conv = blank_conversation(
            conv_id, moment, contact_ids, rng.choice(SOURCE_TYPES), rng.choice(DELIVERED_AS)
        )
        conv.update(
            title=rng.choice([None, "Billing question", "Can't log in", "Feature request", "Order status"]),
            priority=rng.choice(["none", "none", "low", "medium", "high", "urgent"]),
            admin_assignee_id=int(admin["id"]) if admin else 0,
            team_assignee_id=int(team["id"]) if team else 0,
            custom_attributes={
                "channel": rng.choice(["web", "ios", "android"]),
                "tier": rng.choice(["standard", "standard", "gold"]),
            },
        )
        conv["source"]["author"].update(type="user", id=contact_ids[0])
        if rng.random() < 0.3:
            conv["sla_applied"] = {
                "type": "conversation_sla_summary",
                "sla_name": "First response",
                "sla_status": rng.choice(["hit", "missed", "active"]),
            }
        conv["tags"]["tags"] = [
            {
                "type": "tag",
                "id": t["id"],
                "name": t["name"],
                "applied_at": moment,
                "applied_by": {"type": "admin", "id": t["id"]},
            }
            for t in rng.sample(self._common_tags, rng.randint(0, 2))
        ]
        self.conversations[conv_id] = conv
        self._log("conversation.created", conv_id, moment, {"contact_ids": contact_ids})

    def _new_ticket(self, moment: int) -> None:
        rng = self.rng
        ticket_id = self._next_id()
        contact_ids = self._some_contacts(moment)[:1]
        ticket_type = rng.choice(TICKET_TYPES)
        admin = rng.choice([*self.admins, None])
        team = rng.choice([*self.teams, None])
        ticket = blank_ticket(ticket_id, str(len(self.tickets) + 1), moment, contact_ids, ticket_type)
        ticket.update(
            admin_assignee_id=int(admin["id"]) if admin else 0,
            team_assignee_id=int(team["id"]) if team else 0,
            is_shared=ticket_type["category"] == "Customer",
        )
        ticket["ticket_attributes"] = {
            "_default_title_": rng.choice(["Refund", "Broken item", "Access request", "Bug report"]),
            "_default_description_": rng.choice(["Please help", "It stopped working", None]),
        }
        self.tickets[ticket_id] = ticket
        self._log("ticket.created", ticket_id, moment, {"state": "submitted", "contact_ids": contact_ids})
        if rng.random() < 0.5:
            self._ticket_state(ticket, min(moment + rng.randint(60, 3600), max(self._horizon, moment)))

    # -- activity ---------------------------------------------------------------------------------
    def _random_activity(self, moment: int) -> None:
        rng = self.rng
        roll = rng.random()
        convs = self._chronologies["conversations"].created_before(moment)
        tickets = self._chronologies["tickets"].created_before(moment)
        if roll < 0.6 and convs:
            conv = rng.choice(convs)
            action = rng.choice([self._contact_reply, self._admin_reply, self._rate, self._read])
            action(conv, max(moment, conv["updated_at"]))
        elif tickets:
            ticket = rng.choice(tickets)
            moment = max(moment, ticket["updated_at"])
            (self._ticket_state if rng.random() < 0.6 else self._ticket_reply)(ticket, moment)
        elif self.contacts:
            contact = rng.choice(list(self.contacts.values()))
            contact["custom_attributes"]["seats"] = rng.randint(1, 50)
            self._touch(contact, max(moment, contact["updated_at"]))
            self._log(
                "contact.updated",
                contact["id"],
                contact["updated_at"],
                {"seats": contact["custom_attributes"]["seats"]},
            )

    def _conv_details(self, conv: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        return {"contact_ids": [c["id"] for c in conv["contacts"]["contacts"]], **extra}

    def _contact_reply(self, conv: dict[str, Any], moment: int) -> None:
        stats = conv["statistics"]
        stats.setdefault("first_contact_reply_at", moment)
        stats["last_contact_reply_at"] = moment
        stats["count_conversation_parts"] += 1
        conv.update(open=True, state="open", waiting_since=moment)
        conv["first_contact_reply"] = conv["first_contact_reply"] or {
            "created_at": moment,
            "type": "conversation",
            "url": None,
        }
        self._touch(conv, moment)
        for contact_id in self._conv_details(conv)["contact_ids"][:1]:
            contact = self.contacts.get(contact_id)
            if contact is not None:
                contact["last_replied_at"] = moment
                self._touch(contact, moment)
                if len(contact["tags"]["data"]) > MAX_LISTED_TAGS and self.quirks.random() < RETAG_SHARE:
                    removed, added = swap_an_unlisted_tag(contact, self.tags, self.quirks)
                    tags = [ref["id"] for ref in contact["tags"]["data"]]
                    details = {"removed": removed, "added": added, "tags": tags}
                    self._log("contact.retagged", contact_id, moment, details)
        self._log("conversation.contact_replied", conv["id"], moment, self._conv_details(conv))

    def _admin_reply(self, conv: dict[str, Any], moment: int) -> None:
        stats = conv["statistics"]
        stats.setdefault("first_admin_reply_at", moment)
        stats["last_admin_reply_at"] = moment
        stats["count_conversation_parts"] += 1
        conv.update(read=False, waiting_since=None)
        if self.rng.random() < 0.4:
            stats["last_close_at"] = moment
            conv.update(open=False, state="closed")
        self._touch(conv, moment)
        self._log("conversation.admin_replied", conv["id"], moment, self._conv_details(conv))

    def _rate(self, conv: dict[str, Any], moment: int) -> None:
        rating = self.rng.randint(1, 5)
        remark = self.rng.choice(REMARKS)
        previous = conv["conversation_rating"]
        conv["conversation_rating"] = {
            "rating": rating,
            "remark": remark,
            "created_at": previous["created_at"] if previous else moment,
            "updated_at": moment,
            "contact": {"type": "contact", "id": conv["contacts"]["contacts"][0]["id"], "external_id": None},
            "teammate": {"type": "admin", "id": str(conv["admin_assignee_id"] or self.admins[0]["id"])},
        }
        self._touch(conv, moment)
        self._log(
            "conversation.rated", conv["id"], moment, self._conv_details(conv, rating=rating, remark=remark)
        )

    def _read(self, conv: dict[str, Any], moment: int) -> None:
        if conv["read"]:
            return
        conv["read"] = True
        self._touch(conv, moment)
        self._log("conversation.read", conv["id"], moment, self._conv_details(conv))

    def _add_part(self, ticket: dict[str, Any], part: dict[str, Any]) -> None:
        parts = ticket["ticket_parts"]
        parts["ticket_parts"].append(part)
        parts["total_count"] = len(parts["ticket_parts"])

    def _ticket_state(self, ticket: dict[str, Any], moment: int) -> None:
        states = ticket["ticket_type"]["ticket_states"]["data"]
        previous = ticket["ticket_state"]
        choices = [s for s in states if s["category"] != previous["category"]]
        state = self.rng.choice(choices)
        admin = self.rng.choice(self.admins)
        part_id = self._next_id()
        self._add_part(ticket, state_part(part_id, moment, previous["category"], state["category"], admin))
        ticket["ticket_state"] = dict(state)
        ticket["previous_ticket_state_id"] = previous["id"]
        ticket["open"] = state["category"] != "resolved"
        self._touch(ticket, moment)
        details = {"previous": previous["category"], "state": state["category"], "part_id": part_id}
        self._log(
            "ticket.state_changed",
            ticket["id"],
            moment,
            {**details, "contact_ids": self._ticket_contacts(ticket)},
        )

    def _ticket_contacts(self, ticket: Mapping[str, Any]) -> list[str]:
        return [c["id"] for c in ticket["contacts"]["contacts"]]

    def _ticket_reply(self, ticket: dict[str, Any], moment: int) -> None:
        contact_id = self._ticket_contacts(ticket)[0]
        contact = self.contacts.get(contact_id, {})
        part_id = self._next_id()
        body = f"<p>{self.rng.choice(REMARKS) or 'Any news?'}</p>"
        self._add_part(ticket, comment_part(part_id, moment, body, contact_id, contact))
        self._touch(ticket, moment)
        self._log(
            "ticket.contact_replied", ticket["id"], moment, {"part_id": part_id, "contact_ids": [contact_id]}
        )
