"""Per page: the events and profiles that changed objects give (docs/design.md §4), with what the pure core
needs from Intercom: admins, teams and tags (once per run) and the identities of the contacts objects name.
Entries are in the canonical form the outbox keeps (default metric names and property keys); the job's
`metric_names` / `property_names` are applied when they are sent (docs/design.md §3.3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime

from etl.config import JobSettings
from etl.contacts import CONTACT_CACHE_LIMIT, ContactBook
from etl.events import Context, diff
from etl.intercom import IntercomClient
from etl.klaviyo import event_resource, profile_resource
from etl.lru import LruCache
from etl.models import Admin, OutboxEntry, RunOptions, RunReport, Snapshot
from etl.profiles import to_profile
from etl.snapshots import referenced_contact_ids

PROFILED_LIMIT = 50_000  # contacts whose profile one run remembers having queued
Loader = Callable[[str, list[str]], dict[str, Snapshot]]  # (stream, ids) → stored snapshots


class Inference:
    """Turns a page's changed objects into outbox entries, counting what it infers, skips and drops."""

    def __init__(
        self,
        job: JobSettings,
        intercom: IntercomClient,
        report: RunReport,
        options: RunOptions,
        started: datetime,
        contact_cache: int = CONTACT_CACHE_LIMIT,
        profiled: int = PROFILED_LIMIT,
    ) -> None:
        self.job, self.intercom, self.report = job, intercom, report
        self.started, self.backfill, self.replay = started, options.backfill, options.replay
        self.contacts = ContactBook(job.default_phone_region, intercom.lookup_contacts, limit=contact_cache)
        self._admins: dict[str, Admin] | None = None  # admin id → admin, fetched once per run
        # contacts whose profile this run queued; beyond the bound a profile may be queued again: harmless,
        # the outbox keeps one item per (job, kind, unique_id)
        self.profiled: LruCache[str, bool] = LruCache(profiled)

    def infer(
        self, stream: str, changed: list[tuple[Snapshot | None, Snapshot]], load: Loader
    ) -> list[OutboxEntry]:
        entries: list[OutboxEntry] = []
        if stream == "contacts":
            for prev, snap in changed:
                self.contacts.remember(snap.object_id, snap)
                self._queue_profile(snap, entries, stream, force=True, prev=prev)
            return entries
        ctx = self.context([s for _, s in changed], load)
        counts: Counter[str] = Counter()  # added to the report once per page, not once per event
        for prev, snap in changed:
            inference = diff(None if self.replay else prev, snap, ctx)
            counts.update(inference.counts)
            for event in inference.events:
                entries.append(OutboxEntry("event", event.unique_id, event_resource(event)))
                counts[f"events:{event.metric}"] += 1
                contact = self.contacts.get(event.identity.contact_id)
                if contact is not None:
                    self._queue_profile(contact, entries, stream)
        for key, n in counts.items():
            if key.startswith("events:"):
                self.report.add(stream, "events", n)
                # counted under the name Klaviyo gets, as the events:{metric} series always were
                metric = key.removeprefix("events:")
                key = f"events:{self.job.metric_names.get(metric, metric)}"
            self.report.add(stream, key, n)
        return entries

    def _queue_profile(
        self,
        contact: Snapshot,
        entries: list[OutboxEntry],
        stream: str,
        force: bool = False,
        prev: Snapshot | None = None,
    ) -> None:
        """Queue a contact's profile once per run (an unchanged one is deduplicated by the outbox).

        A profile's unique_id is a digest of its content, so a contact that changes and changes back
        (A → B → A: unsubscribed, then subscribed again) meets the id it was sent under before: when its
        stored snapshot gave another profile, the entry is re-queued, or Klaviyo would keep B.
        The stored snapshot's profile is also what was sent before: what it had and this one has not is
        unset in Klaviyo (bulk import only sets what it is given).
        """
        if not force and self.profiled.get(contact.object_id):
            return
        self.profiled.put(contact.object_id, True)
        tags, region = self.intercom.tags(), self.job.default_phone_region
        before = to_profile(prev, tags, region)[0] if prev is not None else None
        profile, counts = to_profile(contact, tags, region, before=before)
        for key, n in counts.items():
            self.report.add(stream, key, n)
        if profile is not None:
            changed = before is not None and before.unique_id != profile.unique_id
            entries.append(
                OutboxEntry("profile", profile.unique_id, profile_resource(profile), requeue=changed)
            )
            self.report.add(stream, "profiles")

    def context(self, snaps: list[Snapshot], load: Loader) -> Context:
        """The page's Context: admins/teams/tags (once per run) and the identities of referenced contacts."""
        wanted = list(dict.fromkeys(cid for s in snaps for cid in referenced_contact_ids(s)))
        identities = self.contacts.identities(wanted, lambda ids: load("contacts", ids))
        if self._admins is None:
            self._admins = {
                k: Admin(name=v.get("name"), email=v.get("email")) for k, v in self.intercom.admins().items()
            }
        return Context(
            start_date=self.job.start_date,
            flow_trigger_max_age=self.job.flow_trigger_max_age,
            run_started_at=self.started,
            backfill_run=self.backfill,
            admins=self._admins,
            teams=self.intercom.teams(),
            tags=self.intercom.tags(),
            contacts=identities,
        )
