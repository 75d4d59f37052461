"""Profiles that change and change back reach Klaviyo in their latest state."""

from __future__ import annotations

from etl.models import RunOptions
from etl.state import StateStore
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
