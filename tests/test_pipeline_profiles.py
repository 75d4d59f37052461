"""Profiles reach Klaviyo in their latest state: changed back (A → B → A), or with values cleared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from etl.klaviyo import IMPORT_JOBS_PATH as IMPORTS
from etl.models import RunOptions
from etl.state import StateStore
from tests.klaviyo_fixtures import schema_errors
from tests.run_fixtures import execute, sandboxes


def test_a_contact_that_changes_and_changes_back_ends_in_klaviyo_as_it_is_now(store: StateStore) -> None:
    """Unsubscribed, subscribed again: A → B → A over three runs leaves Klaviyo with A, not B."""
    with sandboxes() as boxes:
        job = boxes.job()
        contact = next(
            c
            for c in boxes.workspace.contacts.values()
            if c.get("email") and not c["unsubscribed_from_emails"]
        )
        email = contact["email"].strip().lower()

        def flip(value: bool) -> None:
            boxes.workspace.now += 60
            contact["unsubscribed_from_emails"] = value
            contact["updated_at"] = boxes.workspace.now

        def held() -> object:
            (profile,) = [p for p in boxes.klaviyo.profiles.values() if p.get("email") == email]
            return profile["properties"]["intercom_unsubscribed_from_emails"]

        execute(boxes, store, job, RunOptions())
        assert held() is False
        flip(True)
        execute(boxes, store, job, RunOptions())
        assert held() is True
        flip(False)
        execute(boxes, store, job, RunOptions())
        assert held() is False


def test_cleared_tags_and_attributes_leave_the_klaviyo_profile_and_a_zero_count_is_stored_as_0(
    store: StateStore,
) -> None:
    """Tags all removed, one custom attribute cleared, opted-out count down to 0: after the next run Klaviyo's
    profile has no `intercom_tags`, only the remaining attribute, and the count 0; emptying the attributes
    removes them too. Every import stays valid against the spec (the sandbox validates each body)."""
    with sandboxes() as boxes:
        job = boxes.job()
        contact = next(
            c
            for c in boxes.workspace.contacts.values()
            if c.get("email", "").strip() and c["tags"]["data"] and not c["tags"].get("has_more")
        )
        email = contact["email"].strip().lower()
        contact["opted_out_subscription_types"]["total_count"] = 2

        def change(edit: Callable[[], None]) -> None:
            boxes.workspace.now += 60
            edit()
            contact["updated_at"] = boxes.workspace.now

        def held() -> dict[str, Any]:
            (profile,) = [p for p in boxes.klaviyo.profiles.values() if p.get("email") == email]
            return dict(profile["properties"])

        def unset_sent() -> list[Any]:
            """The `unset` of each import entry for this contact, in the order sent."""
            found = []
            for received in boxes.klaviyo.received:
                if received.method == "POST" and received.path.startswith(IMPORTS):
                    assert schema_errors("requests", "ProfileImportJobCreateQuery", received.json()) == []
                    for entry in received.json()["data"]["attributes"]["profiles"]["data"]:
                        if entry["attributes"].get("email") == email:
                            found.append(entry.get("meta", {}).get("patch_properties", {}).get("unset"))
            return found

        execute(boxes, store, job, RunOptions())
        first = held()
        assert first["intercom_tags"] and first["intercom_opted_out_subscription_types_count"] == 2
        assert set(first["intercom_custom_attributes"]) == {"plan", "seats"}
        seats = contact["custom_attributes"]["seats"]

        def clear_tags_and_plan() -> None:
            contact["tags"].update(data=[], total_count=0)
            del contact["custom_attributes"]["plan"]
            contact["opted_out_subscription_types"]["total_count"] = 0

        change(clear_tags_and_plan)
        execute(boxes, store, job, RunOptions())
        second = held()
        assert "intercom_tags" not in second
        assert second["intercom_custom_attributes"] == {"seats": seats}
        assert second["intercom_opted_out_subscription_types_count"] == 0
        assert unset_sent() == [None, ["intercom_tags"]]

        change(lambda: contact["custom_attributes"].clear())
        execute(boxes, store, job, RunOptions())
        assert "intercom_custom_attributes" not in held()
        assert held()["intercom_opted_out_subscription_types_count"] == 0
        assert unset_sent() == [None, ["intercom_tags"], ["intercom_custom_attributes"]]
