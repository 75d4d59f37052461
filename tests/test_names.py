"""docs/design.md §3.3: the outbox keeps the canonical names; `metric_names` / `property_names` are applied
when an item is sent and in dry-run output, so a fixed configuration applies to items already queued or failed.

The refusal used end to end is Klaviyo's own: a metric name "must be less than 128 characters" (spec,
MetricCreateQueryResourceObject.attributes.name), which the sandbox enforces per event with a pointer.
"""

from __future__ import annotations

import copy
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from etl.cli import cli
from etl.events import METRICS
from etl.klaviyo import DEFAULT_NAMES, Names, event_resource, profile_resource, rename
from etl.models import Event, Identity, Profile, RunOptions
from etl.pipeline import JobRun
from etl.profiles import PROFILE_PROPERTY_KEYS
from etl.state import StateStore
from tests.run_fixtures import close, execute, outbox_rows, sandboxes, write_config

LONG = "Conversation started in the Intercom Messenger by a customer " * 3  # 183 characters
FIXED = "Conversation started"
WHEN = datetime(2026, 2, 1, 12, tzinfo=UTC)


def metric_of(payload: Any) -> str:
    (event,) = payload["attributes"]["events"]["data"]
    return str(event["attributes"]["metric"]["data"]["attributes"]["name"])


def properties_of(payload: Any) -> dict[str, Any]:
    if "events" in payload["attributes"]:
        (event,) = payload["attributes"]["events"]["data"]
        return dict(event["attributes"]["properties"])
    return dict(payload["attributes"].get("properties") or {})


# -- rename: pure --------------------------------------------------------------------------------------
def test_rename_gives_an_event_the_jobs_metric_name_and_property_keys_and_nothing_else() -> None:
    """Metric name and top-level property keys are renamed; identity, time, unique_id, backfill and nested
    keys are not; the canonical payload is left as it was."""
    event = Event(
        metric="Created Conversation",
        unique_id="intercom:conversation:7:created",
        time=WHEN,
        identity=Identity(email="jo@example.com", contact_id="c-1"),
        properties={"email": "jo@example.com", "Title": "Refund", "Custom Attributes": {"Title": "x"}},
        backfill=True,
    )
    canonical = event_resource(event)
    kept = copy.deepcopy(canonical)
    names = Names({"Created Conversation": FIXED}, {"Title": "Subject", "email": "Email"})
    sent = rename(canonical, "event", names)
    assert canonical == kept
    expected = copy.deepcopy(canonical)
    attributes = expected["attributes"]["events"]["data"][0]["attributes"]
    attributes["metric"]["data"]["attributes"]["name"] = FIXED
    attributes["properties"] = {
        "Email": "jo@example.com",
        "Subject": "Refund",
        "Custom Attributes": {"Title": "x"},
    }
    assert sent == expected
    assert list(properties_of(sent)) == ["Email", "Subject", "Custom Attributes"]  # the order as inferred
    other = event_resource(Event("Read Conversation", "u", WHEN, Identity(email="jo@example.com"), {}))
    assert metric_of(rename(other, "event", names)) == "Read Conversation"
    assert rename(canonical, "event", DEFAULT_NAMES) is canonical  # no names: nothing to copy


def test_rename_gives_a_profile_the_jobs_property_keys_in_its_properties_and_its_unset_keys() -> None:
    """A renamed intercom_contact_id is sent under its new key only; the keys `meta.patch_properties.unset`
    removes are property keys too, so they are renamed the same way."""
    profile = Profile(
        unique_id="intercom:contact:c-1:0123456789abcdef",
        identity=Identity(email="jo@example.com", contact_id="c-1"),
        first_name="Jo",
        properties={"intercom_contact_id": "c-1", "intercom_contact_role": "user"},
        unset=("intercom_custom_attributes", "intercom_tags"),
    )
    canonical = profile_resource(profile)
    names = Names(properties={"intercom_contact_id": "contact_id", "intercom_tags": "tags"})
    sent = rename(canonical, "profile", names)
    assert sent == {
        "type": "profile",
        "attributes": {
            "email": "jo@example.com",
            "first_name": "Jo",
            "properties": {"contact_id": "c-1", "intercom_contact_role": "user"},
        },
        "meta": {"patch_properties": {"unset": ["intercom_custom_attributes", "tags"]}},
    }
    assert canonical["attributes"]["properties"] == {
        "intercom_contact_id": "c-1",
        "intercom_contact_role": "user",
    }
    # a profile built without the id among its properties gets it under the default key, renamed like the rest
    bare = profile_resource(Profile("u", Identity(email="jo@example.com", contact_id="c-1")))
    assert rename(bare, "profile", names)["attributes"]["properties"] == {"contact_id": "c-1"}


# -- end to end: real runs against the sandbox ---------------------------------------------------------
def test_a_metric_name_klaviyo_refuses_fails_its_events_and_after_the_fix_retry_delivers_them_renamed(
    db_url: str, store: StateStore, tmp_path: Path
) -> None:
    """A metric_names value over Klaviyo's 127 characters: its events fail with Klaviyo's reason, the rest is
    delivered, and the outbox holds the default name. Fix jobs.yaml, `etl outbox retry`: a dry-run prints the
    re-queued items under the fixed name, and the next run delivers exactly them under it."""
    with sandboxes() as boxes:
        execute(boxes, store, boxes.job(metric_names={"Created Conversation": LONG}), RunOptions())
        (run,) = store.runs("shop", 5)
        assert run.status == "rejected"
        failed = outbox_rows(store, "shop", status="failed")
        assert failed and {row["kind"] for row in failed} == {"event"}
        assert {metric_of(row["payload"]) for row in failed} == {
            "Created Conversation"
        }  # canonical, not LONG
        assert {row["last_error"].split(" (/data/")[0] for row in failed} == {
            "invalid: Metric name must be less than 128 characters."
        }
        created = {
            row["unique_id"]
            for row in outbox_rows(store, "shop", kind="event")
            if metric_of(row["payload"]) == "Created Conversation"
        }
        assert {row["unique_id"] for row in failed} == created  # only those, every one of them
        assert all(metric_of(row["payload"]) in METRICS for row in outbox_rows(store, "shop", kind="event"))
        assert {e.metric for e in boxes.klaviyo.events} >= {"Replied to Conversation", "Created Ticket"}
        assert not any(e.metric in (LONG, FIXED) for e in boxes.klaviyo.events)

        config = write_config(tmp_path / "jobs.yaml", db_url, boxes.job())
        result = CliRunner().invoke(cli, ["--config", str(config), "outbox", "retry", "shop"],
                                    env={"ETL_DATABASE_URL": ""})  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.stdout == f"shop: {len(failed)} failed items re-queued; the next run delivers them\n"

        fixed = boxes.job(metric_names={"Created Conversation": FIXED})
        out = io.StringIO()
        services = boxes.services(store, klaviyo=None)
        try:
            JobRun(fixed, RunOptions(dry_run=True), services, clock=boxes.clock, sink=out).execute()
        finally:
            close(services)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert {line["unique_id"] for line in lines} == created  # nothing changed: only the backlog
        assert {metric_of(line["payload"]) for line in lines} == {FIXED}

        before = len(boxes.klaviyo.events)
        execute(boxes, store, fixed, RunOptions())
        (latest, _) = store.runs("shop", 5)
        assert latest.status == "succeeded"
        assert outbox_rows(store, "shop", status="failed") == []
        assert outbox_rows(store, "shop", status="pending") == []
        delivered = boxes.klaviyo.events[before:]
        assert {e.unique_id for e in delivered} == created and {e.metric for e in delivered} == {FIXED}
        assert all(metric_of(row["payload"]) in METRICS for row in outbox_rows(store, "shop", kind="event"))


def test_property_names_are_what_klaviyo_and_the_dry_run_get_while_the_outbox_keeps_the_default_keys(
    store: StateStore,
) -> None:
    """With property_names renaming intercom_contact_id and Title, and metric_names one metric: the dry-run
    NDJSON and Klaviyo carry the configured names only (the contact id under its new key alone), the outbox
    rows the default ones, and the unique_ids are those of a job without names."""
    names = {
        "metric_names": {"Created Ticket": "Ticket Opened"},
        "property_names": {"intercom_contact_id": "intercom_id", "Title": "Subject"},
    }
    with sandboxes() as boxes:
        out = io.StringIO()
        services = boxes.services(None, klaviyo=None)
        try:
            JobRun(
                boxes.job(**names), RunOptions(dry_run=True), services, clock=boxes.clock, sink=out
            ).execute()
        finally:
            close(services)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        profiles = [properties_of(line["payload"]) for line in lines if line["kind"] == "profile"]
        assert profiles and all("intercom_id" in p and "intercom_contact_id" not in p for p in profiles)
        events = [line["payload"] for line in lines if line["kind"] == "event"]
        assert "Ticket Opened" in {metric_of(e) for e in events}
        assert "Created Ticket" not in {metric_of(e) for e in events}
        titled = [properties_of(e) for e in events if "Subject" in properties_of(e)]
        assert titled and not any("Title" in properties_of(e) for e in events)

        execute(boxes, store, boxes.job(**names), RunOptions())
        (run,) = store.runs("shop", 5)
        assert run.status == "succeeded"
        rows = outbox_rows(store, "shop")
        assert {(line["kind"], line["unique_id"]) for line in lines} == {
            (r["kind"], r["unique_id"]) for r in rows
        }
        for row in rows:  # canonical: the default keys, and the dry-run's payload once renamed
            keys = set(properties_of(row["payload"]))
            assert not keys & {"intercom_id", "Subject"}
            if row["kind"] == "profile":
                assert keys <= set(PROFILE_PROPERTY_KEYS) and "intercom_contact_id" in keys
            else:
                assert metric_of(row["payload"]) in METRICS
        by_key = {(line["kind"], line["unique_id"]): line["payload"] for line in lines}
        job_names = Names(names["metric_names"], names["property_names"])
        assert all(
            rename(r["payload"], r["kind"], job_names) == by_key[(r["kind"], r["unique_id"])] for r in rows
        )

        stored = boxes.klaviyo.profiles.values()
        assert stored and all(
            "intercom_id" in p["properties"] and "intercom_contact_id" not in p["properties"] for p in stored
        )
        assert not any(
            b'"intercom_contact_id"' in r.body
            for r in boxes.klaviyo.received
            if r.path.startswith("/api/profile")
        )
        kept = {e.metric for e in boxes.klaviyo.events}
        assert "Ticket Opened" in kept and "Created Ticket" not in kept
        assert any("Subject" in e.properties for e in boxes.klaviyo.events)
        assert not any("Title" in e.properties for e in boxes.klaviyo.events)
