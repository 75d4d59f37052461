"""`etl explain KIND ID` through the real CLI, over real runs against the sandboxes, on SQLite and PostgreSQL:
a sent event (queued by one run, sent by the next), a failed one, an object skipped for lack of an identifier,
a merged contact; each with and without `--live`; usage errors; what `--live` predicts the next run sends."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from etl.models import iso_z
from etl.profiles import contact_identity
from etl.sandbox.generator import Workspace
from etl.sandbox.klaviyo_server import ALL_SCOPES
from etl.snapshots import to_snapshot
from etl.state import StateStore
from tests.pg import fresh_database
from tests.run_fixtures import (
    KL_KEY,
    START_DATE,
    Sandboxes,
    outbox_rows,
    sandboxes,
    write_config,
)
from tests.run_fixtures import (
    invoke_cli as invoke,
)

POISON_ERROR = (
    "invalid: The payload provided in the request is invalid. (/data/attributes/events-bulk-create)"
)
NAMED_FIRST = "the first contact it names with an email or a valid phone number"
NOBODY = (
    "nobody: no contact it names has an email or a valid phone number, so it emits nothing "
    "(skipped:no_identifier)"
)
NOT_READ = (
    "not in state: no contacts search returned it (merged into another contact, deleted, or not updated "
    "since start_date; a run looks such a contact up in Intercom)"
)


@dataclass
class World:
    """Two real runs of job `shop` over a workspace arranged for four stories."""

    boxes: Sandboxes
    config: Path
    url: str
    sent: str  # a conversation whose events run 1 queued (Klaviyo refused the key) and run 2 sent
    failed: str  # a conversation whose Created event Klaviyo rejects (a poison item)
    skipped: str  # a conversation whose only contact has no email and an invalid phone
    blank: str  # ... that contact
    merged: str  # a conversation whose only contact was merged into `survivor`
    gone: str
    survivor: str

    def explain(self, *args: str) -> Result:
        return invoke("--config", str(self.config), "explain", *args)

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        store = StateStore(self.url)
        try:
            return outbox_rows(store, "shop", **where)
        finally:
            store.close()

    def who(self, contact_id: str) -> str:
        """A contact's identity as explain writes it: its email, and its E.164 phone if it has one."""
        identity, _ = contact_identity(
            to_snapshot("contacts", self.boxes.workspace.contacts[contact_id]), "US"
        )
        assert identity is not None
        return ", ".join(v for v in (identity.email, identity.phone_number) if v)


def clean(contact: dict[str, Any]) -> bool:
    """A contact with a valid email, nothing dropped, and read by the first run's contacts window."""
    identity, counts = contact_identity(to_snapshot("contacts", contact), "US")
    fresh = contact["updated_at"] >= START_DATE.timestamp()
    return identity is not None and identity.email is not None and not counts and fresh


def arrange(ws: Workspace) -> dict[str, str]:
    """Four conversations created since start_date, each naming one clean contact of its own; the third
    contact loses its email and gets an invalid phone, the fourth is merged into another clean contact."""
    chosen: list[tuple[str, str]] = []
    for conv_id, conv in sorted(ws.conversations.items(), key=lambda item: int(item[0])):
        refs = conv["contacts"]["contacts"]
        if conv["created_at"] < START_DATE.timestamp() or len(refs) != 1 or refs[0]["id"] not in ws.contacts:
            continue
        if clean(ws.contacts[refs[0]["id"]]) and refs[0]["id"] not in {c for _, c in chosen}:
            chosen.append((conv_id, refs[0]["id"]))
    assert len(chosen) >= 5, "the workspace no longer has the conversations these stories need"
    (sent, _), (failed, _), (skipped, blank), (merged, gone), (_, survivor) = chosen[:5]
    ws.contacts[blank].update(email=None, phone="555-01", updated_at=ws.now)
    ws.merged[gone] = survivor
    del ws.contacts[gone]
    ws.contacts[survivor]["updated_at"] = ws.now  # a merge touches the survivor
    return {"sent": sent, "failed": failed, "skipped": skipped, "blank": blank, "merged": merged,
            "gone": gone, "survivor": survivor}  # fmt: skip


def build(boxes: Sandboxes, tmp: Path, url: str) -> World:
    picks = arrange(boxes.workspace)
    # delivering after reading only: run 1 reads and queues everything before Klaviyo refuses its key
    config = write_config(tmp / "jobs.yaml", url, boxes.job(deliver_every=0))
    assert invoke("--config", str(config), "db", "upgrade").exit_code == 0
    boxes.klaviyo.api_keys = {
        "pk_someone_else": ALL_SCOPES
    }  # run 1 reads and queues, Klaviyo refuses the key
    first = invoke("--config", str(config), "run")
    assert first.exit_code == 4, first.stderr
    boxes.klaviyo.api_keys = {KL_KEY: ALL_SCOPES}
    boxes.klaviyo.settings.poison_events = frozenset({f"intercom:conversation:{picks['failed']}:created"})
    second = invoke("--config", str(config), "run")  # sends what run 1 queued; Klaviyo rejects the poison
    assert second.exit_code == 6, second.stderr
    return World(boxes, config, url, **picks)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("explain")
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp}/state.db"
        else:
            url = stack.enter_context(fresh_database(request.getfixturevalue("pg_admin_url")))
        yield build(stack.enter_context(sandboxes()), tmp, url)


def lines(result: Result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def row(text: list[str], unique_id: str) -> str:
    """The outbox table's row of one item, its columns one space apart."""
    (found,) = [" ".join(line.split()) for line in text if f" {unique_id} " in line]
    return found


def test_a_sent_event_says_when_and_by_which_run(world: World) -> None:
    """The Created event of a conversation: queued by run 1 (Klaviyo refused the key), sent by run 2 at the
    time the outbox recorded; the contact its events go to, with its profile; --live: nothing to send."""
    (created,) = world.rows(unique_id=f"intercom:conversation:{world.sent}:created")
    contact = world.boxes.workspace.conversations[world.sent]["contacts"]["contacts"][0]["id"]
    email, who = world.who(contact).split(", ")[0], world.who(contact)
    text = lines(world.explain("conversation", world.sent))
    assert text[0] == f"conversation {world.sent} of job shop"
    assert f"  contact {contact}: {who}" in text
    assert f"  events go to: contact {contact} ({who}), {NAMED_FIRST}" in text
    time = created["payload"]["attributes"]["events"]["data"][0]["attributes"]["time"]
    queued, sent = (
        iso_z(created["created_at"], timespec="seconds"),
        iso_z(created["sent_at"], timespec="seconds"),
    )
    assert row(text, created["unique_id"]) == (
        f"{created['id']} event {created['unique_id']} Created Conversation at {time} {queued} by run 1 "
        f"sent {sent} by run 2"
    )
    profiles = world.rows(kind="profile")
    mine = [p for p in profiles if p["unique_id"].startswith(f"intercom:contact:{contact}:")]
    assert mine and all(p["status"] == "sent" and p["delivery_run_id"] == 2 for p in mine)
    profile_sent = iso_z(mine[0]["sent_at"], timespec="seconds")
    assert row(text, mine[0]["unique_id"]).endswith(
        f"profile of {who} {iso_z(mine[0]['created_at'], timespec='seconds')} by run 1 sent {profile_sent} by run 2"
    )
    assert (
        text[-1]
        == "live: not read (`--live` reads it from Intercom now and shows what the next run would send)"
    )

    live = lines(world.explain("conversation", world.sent, "--live"))
    assert live[: len(text) - 1] == text[:-1]  # the state's sections are the same
    assert live[len(text) - 1 :] == [
        "live (Intercom now)",
        f"  contact {contact}: {who}",
        f"  events would go to: contact {contact} ({who}), {NAMED_FIRST}",
        f"  updated_at {iso_z(to_snapshot('conversations', world.boxes.workspace.conversations[world.sent]).updated_at)}: unchanged",
        "  the next run would send: nothing: unchanged",
    ]

    doc = json.loads(world.explain("conversation", world.sent, "--json").stdout)
    item = next(i for i in doc["items"] if i["unique_id"] == created["unique_id"])
    assert (item["status"], item["queued_by_run"], item["delivered_by_run"], item["sent_at"]) == (
        "sent",
        1,
        2,
        sent,
    )
    identity, _ = contact_identity(to_snapshot("contacts", world.boxes.workspace.contacts[contact]), "US")
    assert identity is not None
    assert doc["identity"]["to"] == {
        "contact_id": contact,
        "email": email,
        "phone_number": identity.phone_number,
    }
    assert doc["snapshot"]["data"]["contacts"] == [contact] and doc["live"] is None


def test_a_failed_event_shows_klaviyos_error_and_how_to_retry(world: World) -> None:
    """The poisoned event: failed in run 2 with Klaviyo's own words and the retry command; `etl outbox retry`
    puts it back in the queue, which explain then says."""
    uid = f"intercom:conversation:{world.failed}:created"
    (failed,) = world.rows(unique_id=uid)
    assert failed["status"] == "failed"
    text = lines(world.explain("conversation", world.failed))
    assert row(text, uid).endswith("by run 1 failed in run 2 (1 attempt)")
    assert f"  item {failed['id']} failed: {POISON_ERROR}" in text
    assert (
        "  to retry: fix what Klaviyo refused, then `etl outbox retry shop`; the next run sends them again"
        in text
    )
    live = lines(world.explain("conversation", world.failed, "--live"))
    assert live[-1] == "  the next run would send: nothing: unchanged"
    doc = json.loads(world.explain("conversation", world.failed, "--json").stdout)
    item = next(i for i in doc["items"] if i["unique_id"] == uid)
    assert (item["status"], item["error"], item["retry"]) == ("failed", POISON_ERROR, "etl outbox retry shop")

    assert invoke("--config", str(world.config), "outbox", "retry", "shop").exit_code == 0  # as it says
    again = lines(world.explain("conversation", world.failed))
    assert row(again, uid).endswith("by run 1 queued: the next run sends it")
    assert not [line for line in again if "to retry" in line or "failed" in line]


def test_an_object_skipped_for_lack_of_an_identifier(world: World) -> None:
    """A conversation whose only contact has no email and an invalid phone: the contact, why it has no identity,
    that its events go to nobody, and no items; the contact's own story says no profile is sent."""
    text = lines(world.explain("conversation", world.skipped))
    why = f"contact {world.blank}: none: no email; phone '555-01' dropped: not a valid number for region US (dropped:invalid_phone)"
    assert f"  {why}" in text
    assert f"  events go to: {NOBODY}" in text
    assert "outbox: no items" in text
    assert not world.rows(unique_id=f"intercom:conversation:{world.skipped}:created")
    live = lines(world.explain("conversation", world.skipped, "--live"))
    assert live[-5:] == [
        "live (Intercom now)",
        f"  {why}",
        f"  events would go to: {NOBODY}",
        live[-2],
        "  the next run would send: nothing: unchanged",
    ]
    contact = lines(world.explain("contact", world.blank))
    assert f"  {why}" in contact
    assert (
        "  profile: none: it has no email and no valid phone number, so no profile of it is sent (skipped:no_identifier)"
        in contact
    )
    assert "  phone: 555-01" in contact and "  email: null" in contact  # the tracked fields as stored


def test_a_merged_contact(world: World) -> None:
    """A conversation naming a contact merged into another: the state knows only that no search returned the
    contact and whom the events went to; --live says it was merged; the contact alone is unknown to the
    state (exit 2) but --live shows the merge."""
    who = world.who(world.survivor)
    text = lines(world.explain("conversation", world.merged))
    assert f"  contact {world.gone}: {NOT_READ}" in text
    assert f"  events go to: contact {world.survivor} ({who}), found by the email its events carry" in text
    created = f"intercom:conversation:{world.merged}:created"
    assert row(text, created).endswith("by run 2")
    profiles = [line for line in text if f" intercom:contact:{world.survivor}:" in line]
    assert profiles and all(f"profile of {who}" in line for line in profiles)

    live = lines(world.explain("conversation", world.merged, "--live"))
    assert f"  contact {world.gone}: merged into contact {world.survivor}: {who}" in live
    assert f"  events would go to: contact {world.survivor} ({who}), {NAMED_FIRST}" in live

    alone = world.explain("contact", world.gone)
    assert alone.exit_code == 2 and alone.stdout == ""
    assert alone.stderr == (
        f"etl: error: no contact {world.gone} in job shop's state: it was never read (is it older than "
        "start_date, or not synced yet?); `--live` shows what Intercom has\n"
    )
    merged = lines(world.explain("contact", world.gone, "--live"))
    assert merged[-3:] == [
        "live (Intercom now)",
        f"  merged into contact {world.survivor} (Intercom answers 410 contact_merged): no search returns it "
        f"any more; what names it goes to contact {world.survivor}",
        f"  contact {world.survivor}: {who}",
    ]
    assert "snapshot" in merged and "  none: no search of a run has returned it" in merged


def test_live_on_an_object_no_run_has_read(world: World) -> None:
    """A conversation last updated before start_date is in no window: the state has nothing (exit 2 without
    --live); --live shows it as a first sight and says the next run reads it only once it changes."""
    ws = world.boxes.workspace
    quiet = next(c for _, c in sorted(ws.conversations.items()) if c["updated_at"] < START_DATE.timestamp())
    assert world.explain("conversation", quiet["id"]).exit_code == 2
    store = StateStore(world.url)
    mark = store.watermarks("shop")["conversations"]
    store.close()
    text = lines(world.explain("conversation", quiet["id"], "--live"))
    assert "  none: no search of a run has returned it" in text
    assert text[-3:] == [
        f"  updated_at {iso_z(to_snapshot('conversations', quiet).updated_at)}: first sight",
        f"  the next run reads from {iso_z(mark - timedelta(minutes=15))}: this object only once it changes again",
        "  reading it would send: nothing",
    ]


def test_unknown_kind_job_or_id_is_one_line_and_exit_2(world: World, tmp_path: Path) -> None:
    """Usage errors are one line on stderr with exit 2; an id Intercom lacks too says so with --live."""
    cases = {
        ("widget", "1"): "unknown kind 'widget': expected contact, conversation or ticket",
        ("conversation", "1", "--job", "nope"): "unknown job 'nope': jobs.yaml defines shop",
        ("conversation", "999999"): "no conversation 999999 in job shop's state: it was never read (is it "
        "older than start_date, or not synced yet?); `--live` shows what Intercom has",
        ("ticket", "999999", "--live"): "no ticket 999999 in job shop's state, and Intercom has none either "
        "(is the id right?)",
    }
    for args, message in cases.items():
        result = world.explain(*args)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", f"etl: error: {message}\n")
    two = write_config(tmp_path / "two.yaml", world.url, world.boxes.job(), world.boxes.job("other"))
    result = invoke("--config", str(two), "explain", "conversation", world.sent)
    assert (result.exit_code, result.stderr) == (
        2,
        "etl: error: jobs.yaml defines several jobs (shop, other): name one with --job\n",
    )
    assert invoke("--config", str(two), "explain", "conversation", world.sent, "--job", "shop").exit_code == 0


def test_live_predicts_what_the_next_run_sends(tmp_path: Path) -> None:
    """A contact replies: --live names the changed field and the Replied event as new (the contact's profile
    is in the outbox already); the next real run then queues and sends exactly that event."""
    with sandboxes() as boxes:
        world = build(boxes, tmp_path, f"sqlite:///{tmp_path}/state.db")
        ws = boxes.workspace
        conversation = ws.conversations[world.sent]
        moment = ws.now + 60
        conversation["statistics"]["last_contact_reply_at"] = moment
        conversation["updated_at"] = moment
        contact = conversation["contacts"]["contacts"][0]["id"]
        text = lines(world.explain("conversation", world.sent, "--live"))
        uid = f"intercom:conversation:{world.sent}:replied:{moment}"
        stamp = iso_z(to_snapshot("conversations", conversation).updated_at)
        assert f"  updated_at {stamp}: changed: last_contact_reply_at" in text
        assert "  the next run would send:" in text
        at = iso_z(to_snapshot("conversations", conversation).updated_at, offset="+00:00")
        assert (
            " ".join(text[-2].split()) == f"event {uid} Replied to Conversation at {at} new: queued and sent"
        )
        profile = " ".join(text[-1].split())
        assert profile.startswith(f"profile intercom:contact:{contact}:")
        assert profile.endswith(f"profile of {world.who(contact)} in the outbox already: not queued again")
        assert not world.rows(unique_id=uid)  # --live wrote nothing

        boxes.intercom_now[0] += 10
        assert invoke("--config", str(world.config), "run").exit_code == 0  # a failed item waits for a retry
        (replied,) = world.rows(unique_id=uid)
        assert (replied["status"], replied["run_id"], replied["delivery_run_id"]) == ("sent", 3, 3)
        after = lines(world.explain("conversation", world.sent, "--live"))
        assert row(after, uid).endswith(
            "by run 3 sent " + iso_z(replied["sent_at"], timespec="seconds") + " by run 3"
        )
        assert after[-1] == "  the next run would send: nothing: unchanged"
