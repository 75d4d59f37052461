"""`etl explain KIND ID`: one object's story, from the state database and, with `--live`, from Intercom now
(docs/design.md §7.1). Nothing is queued, sent or stored.

- snapshot: the tracked fields as last stored, with the `updated_at` they were read at;
- identity: whom its items are keyed by (§4.1 "Whose event it is"), or why nobody: no email, an invalid phone
  number (the drops `contact_identity` counts), a contact that no search returns (merged away);
- outbox: every item of the object (its events `intercom:{kind}:{id}:…`, or a contact's profiles, and the
  profiles of the contact its events go to): queued, sent when and by which run, or failed with Klaviyo's error;
- live: the object read from Intercom now, the contacts it names resolved as the next run would (stored
  snapshots first, then Intercom, merges followed), and what that run would infer from it against the stored
  snapshot: `Inference` over the pure core, exactly as a run does, with the outbox only read.

The story is one JSON-ready document (`--json`); `render` writes it as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from etl.config import JobSettings, Settings
from etl.errors import UsageError
from etl.inference import Inference
from etl.intercom import IntercomClient
from etl.models import Identity, RunOptions, RunReport, Snapshot, iso_z
from etl.profiles import contact_identity
from etl.report import render_table
from etl.snapshots import canonical_json, referenced_contact_ids, to_datetime, to_snapshot
from etl.state import StateStore
from etl.windows import plan_windows

KINDS = {"contact": "contacts", "conversation": "conversations", "ticket": "tickets"}
NOT_READ = (
    "not in state: no contacts search returned it (merged into another contact, deleted, or not updated "
    "since start_date; a run looks such a contact up in Intercom)"
)
LOOKED_UP = (
    "not in state: a run looked it up in Intercom (no contacts search returned it) and queued its profile"
)
NAMED_FIRST = "the first contact it names with an email or a valid phone number"
NOBODY = (
    "nobody: no contact it names has an email or a valid phone number, so it emits nothing "
    "(skipped:no_identifier)"
)


def pick_job(settings: Settings, name: str | None) -> JobSettings:
    """The job named by --job; without one, the only job of jobs.yaml."""
    if name is not None:
        return settings.select([name])[0]
    if len(settings.jobs) == 1:
        return next(iter(settings.jobs.values()))
    raise UsageError(f"jobs.yaml defines several jobs ({', '.join(settings.jobs)}): name one with --job")


def stream_of(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}: expected contact, conversation or ticket")
    return KINDS[kind]


def explain(
    store: StateStore,
    job: JobSettings,
    kind: str,
    object_id: str,
    *,
    intercom: IntercomClient | None = None,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    """The story of one object of `job`; with `intercom`, also what Intercom has now (`--live`).

    UsageError (exit 2) for an unknown kind, and for an id that the state does not know (nor Intercom, with
    `intercom`).
    """
    stream = stream_of(kind)
    snap = store.snapshot(job.name, stream, object_id)
    own = store.items_with_prefix(job.name, [f"intercom:{kind}:{object_id}:"])
    live = _live(store, job, kind, object_id, snap, intercom, clock) if intercom is not None else None
    if snap is None and not own and (live is None or live["status"] == "absent"):
        where = f"no {kind} {object_id} in job {job.name}'s state"
        if live is None:
            raise UsageError(
                f"{where}: it was never read (is it older than start_date, or not synced yet?); "
                "`--live` shows what Intercom has"
            )
        raise UsageError(f"{where}, and Intercom has none either (is the id right?)")
    if stream == "contacts":
        identity, items = _own_identity(job, object_id, snap, own), own
    else:
        identity = _recipient(store, job, snap, own)
        to = (identity["to"] or {}).get("contact_id")
        items = own + (store.items_with_prefix(job.name, [f"intercom:contact:{to}:"]) if to else [])
    return {
        "job": job.name,
        "kind": kind,
        "id": object_id,
        "snapshot": None if snap is None else {
            "updated_at": iso_z(snap.updated_at), "digest": snap.digest, "data": dict(snap.data)
        },
        "identity": identity,
        "items": [_item_doc(job.name, row) for row in items],
        "live": live,
    }  # fmt: skip


# -- the state's side -----------------------------------------------------------------------------------
def _identity_doc(identity: Identity | None) -> dict[str, Any] | None:
    return None if identity is None else {"email": identity.email, "phone_number": identity.phone_number}


def _contact_doc(contact_id: str, snap: Snapshot | None, region: str) -> dict[str, Any]:
    """One contact as a snapshot shows it: its identity, and what was dropped or is missing."""
    if snap is None:
        return {"id": contact_id, "found": False, "identity": None, "notes": [NOT_READ]}
    identity, counts = contact_identity(snap, region)
    email, phone = snap.data.get("email"), snap.data.get("phone")
    notes = []
    if "dropped:invalid_email" in counts:
        notes.append(f"email {email!r} dropped: not a valid address (dropped:invalid_email)")
    elif identity is None:
        notes.append("no email")
    if "dropped:invalid_phone" in counts:
        notes.append(
            f"phone {phone!r} dropped: not a valid number for region {region} (dropped:invalid_phone)"
        )
    elif identity is None:
        notes.append("no phone number")
    return {"id": contact_id, "found": True, "identity": _identity_doc(identity), "notes": notes}


def _profiled(contact: dict[str, Any], profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """A contact not in state whose profile a run queued (it looked the contact up in Intercom): the identity
    its latest profile carries."""
    mine = [p for p in profiles if p["unique_id"].startswith(f"intercom:contact:{contact['id']}:")]
    if contact["found"] or not mine:
        return contact
    attributes = mine[-1]["payload"]["attributes"]
    keyed = {"email": attributes.get("email"), "phone_number": attributes.get("phone_number")}
    return {**contact, "identity": keyed, "notes": [LOOKED_UP]}


def _own_identity(
    job: JobSettings, contact_id: str, snap: Snapshot | None, profiles: list[dict[str, Any]]
) -> dict[str, Any]:
    contact = _profiled(_contact_doc(contact_id, snap, job.default_phone_region), profiles)
    to = {"contact_id": contact_id, **contact["identity"]} if contact["identity"] else None
    reason = None
    if to is None and snap is not None:
        reason = "none: it has no email and no valid phone number, so no profile of it is sent (skipped:no_identifier)"
    return {"contacts": [contact], "to": to, "how": None, "reason": reason}


def _recipient(
    store: StateStore, job: JobSettings, snap: Snapshot | None, events: list[dict[str, Any]]
) -> dict[str, Any]:
    """The contacts a conversation or ticket names and the one its events go to (docs/design.md §4.1), as the
    state tells: stored contacts, the profiles runs queued, and the identity the events themselves carry."""
    named = referenced_contact_ids(snap) if snap is not None else []
    with store.transaction() as conn:
        stored = store.load_snapshots(conn, job.name, "contacts", named)
    missing = [cid for cid in named if cid not in stored]
    profiles = store.items_with_prefix(job.name, [f"intercom:contact:{cid}:" for cid in missing])
    contacts = [_profiled(_contact_doc(c, stored.get(c), job.default_phone_region), profiles) for c in named]
    story: dict[str, Any] = {"contacts": contacts, "to": None, "how": None, "reason": None}
    if events:  # they say whom they went to: find the contact who has that identity
        attributes = events[-1]["payload"]["attributes"]["profile"]["data"]["attributes"]
        keyed = {"email": attributes.get("email"), "phone_number": attributes.get("phone_number")}
        match = [c["id"] for c in contacts if c["identity"] == keyed]
        found = match or (store.contacts_with_email(job.name, keyed["email"]) if keyed["email"] else [])
        how = (
            NAMED_FIRST if match else "found by the email its events carry" if found else "no stored contact"
        )
        return {**story, "to": {"contact_id": found[0] if found else None, **keyed}, "how": how}
    for contact in contacts:
        if contact["identity"] is not None:
            return {**story, "to": {"contact_id": contact["id"], **contact["identity"]}, "how": NAMED_FIRST}
        if not contact["found"]:  # a run looked it up in Intercom: the state cannot tell who it is
            unknown = f"unknown: contact {contact['id']} is not in state; `--live` looks it up in Intercom"
            return {**story, "reason": unknown}
    return {**story, "reason": NOBODY if snap is not None else "unknown: the object is not in state"}


def _what(kind: str, payload: Mapping[str, Any]) -> str:
    """An item in a few words: the event's metric and time, or whom a profile is keyed by."""
    if kind == "event":
        event = payload["attributes"]["events"]["data"][0]["attributes"]
        return f"{event['metric']['data']['attributes']['name']} at {event['time']}"
    return f"profile of {_who(payload['attributes'])}"


def _item_doc(job: str, row: Mapping[str, Any]) -> dict[str, Any]:
    status, attempts, by = row["status"], row["attempts"], row["delivery_run_id"]
    run = f"run {by}" if by else "a run before revision 0002"  # settled before the column was there
    if status == "sent":
        state = f"sent {iso_z(row['sent_at'], timespec='seconds')} by {run}"
    elif status == "failed":
        state = f"failed in {run} ({attempts} attempt{'s' if attempts != 1 else ''})"
    else:
        state = "queued: the next run sends it"
    return {
        "id": row["id"],
        "kind": row["kind"],
        "unique_id": row["unique_id"],
        "what": _what(row["kind"], row["payload"]),
        "status": status,
        "state": state,
        "queued_at": iso_z(row["created_at"], timespec="seconds"),
        "queued_by_run": row["run_id"],
        "sent_at": iso_z(row["sent_at"], timespec="seconds") if status == "sent" else None,
        "delivered_by_run": by if status != "pending" else None,
        "attempts": attempts,
        "error": row["last_error"] if status == "failed" else None,
        "retry": f"etl outbox retry {job}" if status == "failed" else None,
    }


# -- Intercom's side (--live) -----------------------------------------------------------------------
def _live_contact(contact_id: str, resolved: Snapshot | None, region: str) -> dict[str, Any]:
    """A contact an object names, as the next run resolves it: a merged one stands for its survivor."""
    if resolved is None:
        return {"id": contact_id, "found": False, "identity": None, "notes": ["Intercom has no such contact"]}
    merged = resolved.object_id if resolved.object_id != contact_id else None
    return {**_contact_doc(resolved.object_id, resolved, region), "id": contact_id, "merged_into": merged}


def _live(
    store: StateStore,
    job: JobSettings,
    kind: str,
    object_id: str,
    snap: Snapshot | None,
    intercom: IntercomClient,
    clock: Callable[[], datetime],
) -> dict[str, Any]:
    """What Intercom has now, whom the next run would key it by, and what that run would queue; reads only."""
    stream, region, now = KINDS[kind], job.default_phone_region, clock()
    doc: dict[str, Any] = {"status": "absent", "updated_at": None, "merged_into": None, "contacts": [],
                           "to": None, "reason": None, "window": None, "changed": [], "items": [], "counts": {}}  # fmt: skip
    fetched = intercom.fetch(stream, object_id)
    if fetched.raw is None:
        return doc
    cur = to_snapshot(stream, fetched.raw)
    doc["updated_at"] = iso_z(cur.updated_at)
    if fetched.merged_into is not None:  # search never returns it again: its survivor stands in for it
        return {**doc, "status": "merged", "merged_into": _contact_doc(cur.object_id, cur, region)}

    def load(name: str, ids: list[str]) -> dict[str, Snapshot]:
        with store.transaction() as conn:
            return store.load_snapshots(conn, job.name, name, ids)

    report = RunReport(job.name, "dry-run")
    inference = Inference(job, intercom, report, RunOptions(dry_run=True), now)
    if stream != "contacts":  # as the run resolves them: stored snapshots first, then Intercom
        named = referenced_contact_ids(cur)
        inference.contacts.identities(named, lambda ids: load("contacts", ids))
        doc["contacts"] = [_live_contact(cid, inference.contacts.get(cid), region) for cid in named]
        first = next((c for c in doc["contacts"] if c["identity"] is not None), None)
        if first is not None:
            doc["to"] = {"contact_id": first["merged_into"] or first["id"], **first["identity"]}
        else:
            doc["reason"] = NOBODY
    if snap is not None and snap.digest == cur.digest:
        return {**doc, "status": "unchanged"}
    doc["status"] = "first sight" if snap is None else "changed"
    doc["changed"] = sorted(k for k in cur.data if snap is None or snap.data.get(k) != cur.data.get(k))
    plan = plan_windows([stream], now, job.start_date, job.lookback, store.watermarks(job.name))
    since = plan.windows[0].since if plan.windows else now
    if cur.updated_at < since:  # e.g. last changed before start_date: only a change brings it into a window
        doc["window"] = f"the next run reads from {iso_z(since)}: this object only once it changes again"
    entries = inference.infer(stream, [(snap, cur)], load)
    known = store.known_unique_ids(job.name, [(e.kind, e.unique_id) for e in entries])
    for entry in entries:
        if (entry.kind, entry.unique_id) not in known:
            outbox = "new: queued and sent"
        elif entry.requeue:
            outbox = "queued again: its content went back to what was sent before"
        else:
            outbox = "in the outbox already: not queued again"
        doc["items"].append({"kind": entry.kind, "unique_id": entry.unique_id,
                             "what": _what(entry.kind, entry.payload), "outbox": outbox})  # fmt: skip
    counts = report.streams.get(stream, {})
    doc["counts"] = {
        k: n for k, n in sorted(counts.items()) if k.startswith(("skipped:", "dropped:", "truncated"))
    }
    return doc


# -- text -----------------------------------------------------------------------------------------------
def _shown(key: str, value: Any) -> str:
    """A tracked value for people: UNIX seconds of a `*_at`/`*_until`/`*_since` field as ISO 8601, else JSON."""
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith(("_at", "_until", "_since")):
        return iso_z(to_datetime(value))
    return value if isinstance(value, str) else canonical_json(value)


def _part(part: Mapping[str, Any]) -> str:
    """A ticket part in one line: id, time, type and author, the state change it records."""
    change = (
        f": {part['previous_ticket_state']} -> {part['ticket_state']}" if part.get("ticket_state") else ""
    )
    return f"{part['id']} {_shown('created_at', part.get('created_at'))} {part.get('part_type')} by {part.get('author_type')}{change}"


def _who(identity: Mapping[str, Any]) -> str:
    return ", ".join(str(identity[k]) for k in ("email", "phone_number") if identity.get(k))


def _contact_line(contact: Mapping[str, Any]) -> str:
    head = f"contact {contact['id']}: "
    if contact.get("merged_into"):
        head += f"merged into contact {contact['merged_into']}: "
    notes = list(contact["notes"])
    if contact["identity"] is not None:
        notes.insert(0, _who(contact["identity"]))
    elif contact["found"]:  # what it lacks: "none: no email; no phone number"
        notes[0] = f"none: {notes[0]}"
    return head + "; ".join(notes)


def _to_line(label: str, identity: Mapping[str, Any]) -> str:
    to = identity["to"]
    if to is None:
        return f"  {label}: {identity['reason']}"
    who = f"contact {to['contact_id']} ({_who(to)})" if to["contact_id"] else _who(to)
    return f"  {label}: {who}, {identity['how']}"


def render(doc: Mapping[str, Any]) -> str:
    """The story as text: the sections snapshot, identity, outbox and live."""
    lines = [f"{doc['kind']} {doc['id']} of job {doc['job']}", "", "snapshot"]
    snap = doc["snapshot"]
    if snap is None:
        lines.append("  none: no search of a run has returned it")
    else:
        lines.append(f"  last seen: updated_at {snap['updated_at']} (digest {snap['digest'][:16]})")
        for key, value in snap["data"].items():
            if key == "parts":
                lines += [f"  parts: {len(value)}", *(f"    {_part(p)}" for p in value)]
            else:
                lines.append(f"  {key}: {_shown(key, value)}")
    identity = doc["identity"]
    lines += ["", "identity", *(f"  {_contact_line(c)}" for c in identity["contacts"])]
    if doc["kind"] == "contact":
        to = identity["to"]
        if to or identity["reason"]:
            lines.append(f"  profile: keyed by {_who(to)}" if to else f"  profile: {identity['reason']}")
    else:
        lines.append(_to_line("events go to", identity))
    items = doc["items"]
    lines += ["", f"outbox: {len(items) or 'no'} item{'s' if len(items) != 1 else ''}"]
    if items:
        rows = [[str(i["id"]), i["kind"], i["unique_id"], i["what"], f"{i['queued_at']} by run {i['queued_by_run']}",
                 i["state"]] for i in items]  # fmt: skip
        lines.append(render_table(["id", "kind", "unique_id", "what", "queued", "status"], rows, indent="  "))
    failed = [i for i in items if i["status"] == "failed"]
    lines += [f"  item {i['id']} failed: {i['error']}" for i in failed]
    if failed:
        lines.append(
            f"  to retry: fix what Klaviyo refused, then `{failed[0]['retry']}`; the next run sends them again"
        )
    return "\n".join([*lines, "", *_live_lines(doc)])


def _live_lines(doc: Mapping[str, Any]) -> list[str]:
    live = doc["live"]
    if live is None:
        return ["live: not read (`--live` reads it from Intercom now and shows what the next run would send)"]
    lines = ["live (Intercom now)"]
    if live["status"] == "absent":
        return [*lines, f"  Intercom has no {doc['kind']} {doc['id']}"]
    if live["status"] == "merged":
        survivor = live["merged_into"]
        return [*lines, f"  merged into contact {survivor['id']} (Intercom answers 410 contact_merged): no search "
                f"returns it any more; what names it goes to contact {survivor['id']}", f"  {_contact_line(survivor)}"]  # fmt: skip
    lines += [f"  {_contact_line(c)}" for c in live["contacts"]]
    if doc["kind"] != "contact":
        lines.append(_to_line("events would go to", {**live, "how": NAMED_FIRST}))
    if live["status"] == "unchanged":
        return [
            *lines,
            f"  updated_at {live['updated_at']}: unchanged",
            "  the next run would send: nothing: unchanged",
        ]
    seen = "first sight" if live["status"] == "first sight" else f"changed: {', '.join(live['changed'])}"
    lines.append(f"  updated_at {live['updated_at']}: {seen}")
    if live["window"]:
        lines.append(f"  {live['window']}")
    sends = "reading it would send" if live["window"] else "the next run would send"
    counts = f" ({', '.join(f'{k} {n}' for k, n in live['counts'].items())})" if live["counts"] else ""
    if not live["items"]:
        return [*lines, f"  {sends}: nothing{counts}"]
    rows = [[i["kind"], i["unique_id"], i["what"], i["outbox"]] for i in live["items"]]
    return [
        *lines,
        f"  {sends}:{counts}",
        render_table(["kind", "unique_id", "what", "outbox"], rows, indent="    "),
    ]
