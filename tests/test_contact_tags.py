"""Contacts with more tags than Intercom lists (10) reach Klaviyo with all of them; avatars in both shapes.

Real runs over loopback against the sandbox, which lists 10 tags per contact with `has_more` as Intercom
does. Expectations come from the generated workspace (`ws.contacts` holds every tag), never from the code
under test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from etl.intercom import tags_unchanged
from etl.models import RunOptions, Window
from etl.sandbox.generator import Workspace
from etl.state import StateStore
from tests.intercom_fixtures import START, at, client, sandbox
from tests.run_fixtures import START_DATE, Sandboxes, execute, sandboxes

TAG_LIST_SHOWS = 10  # spec 2.16, contact_tags: "Up to 10 will be displayed here"


def tag_ids(contact: dict[str, Any]) -> list[str]:
    return [ref["id"] for ref in contact["tags"]["data"]]


def set_tags(ws: Workspace, contact: dict[str, Any], ids: list[str]) -> None:
    contact["tags"]["data"] = [{"type": "tag", "id": i, "url": f"/tags/{i}"} for i in ids]
    contact["tags"]["total_count"] = len(ids)


def tag_calls(requests: list[tuple[str, str]]) -> list[str]:
    """The GET /contacts/{id}/tags paths among (method, path) requests."""
    return [p for m, p in requests if m == "GET" and p.startswith("/contacts/") and p.endswith("/tags")]


def contacts_job(boxes: Sandboxes) -> Any:
    """The sandbox job reading contacts only, so every Intercom call of its run is a contacts call."""
    return dataclasses.replace(boxes.job(), streams=("contacts",))


def in_run(ws: Workspace) -> list[dict[str, Any]]:
    """The live contacts a first run reads (updated since the job's start_date)."""
    return [c for c in ws.contacts.values() if c["updated_at"] >= START_DATE.timestamp()]


@pytest.fixture
def store(db_url: str) -> Iterator[StateStore]:
    state = StateStore(db_url)
    state.upgrade()
    yield state
    state.close()


def test_a_15_tag_contact_reaches_klaviyo_with_all_15_at_one_extra_call(store: StateStore) -> None:
    """A 15-tag contact's profile carries all 15 tag names; every contact whose list has more costs exactly one
    GET /contacts/{id}/tags, counted in the run's API calls; a contact with exactly 10 tags costs none."""
    with sandboxes() as boxes:
        ws = boxes.workspace
        names = {tag["id"]: tag["name"] for tag in ws.tags}
        emailed = [c for c in in_run(ws) if c["email"].strip()]
        big, ten = emailed[0], emailed[1]
        set_tags(ws, big, [tag["id"] for tag in ws.tags[:15]])
        set_tags(ws, ten, [tag["id"] for tag in ws.tags[-10:]])
        heavy = sorted(c["id"] for c in in_run(ws) if len(tag_ids(c)) > TAG_LIST_SHOWS)
        assert len(heavy) > 1 and big["id"] in heavy and ten["id"] not in heavy  # the premise

        first = len(boxes.intercom.server.requests)
        execute(boxes, store, contacts_job(boxes), RunOptions())
        requests = boxes.intercom.server.requests[first:]
        profiles = boxes.klaviyo.profiles

    calls = tag_calls(requests)
    assert sorted(calls) == [f"/contacts/{i}/tags" for i in heavy]  # one each, none for the others
    searches = [path for method, path in requests if method == "POST"]
    assert set(searches) == {"/contacts/search"}
    assert sorted(set(requests) - {("POST", "/contacts/search")} - {("GET", p) for p in calls}) == [
        ("GET", "/tags")
    ]  # and nothing else but the tag names, once
    (run,) = store.runs("shop", 5)
    assert run.counts["_api"]["intercom_calls"] == len(requests) == len(searches) + len(heavy) + 1
    assert run.counts["contacts"]["api_calls"] == len(requests)  # the stream's cost includes its tag reads
    profile = profiles[big["email"].strip().lower()]
    assert profile["properties"]["intercom_tags"] == sorted(names[t["id"]] for t in ws.tags[:15])
    assert len(profile["properties"]["intercom_tags"]) == 15
    ten_tags = profiles[ten["email"].strip().lower()]["properties"]["intercom_tags"]
    assert ten_tags == sorted(names[t["id"]] for t in ws.tags[-10:])


def test_a_change_to_the_eleventh_tag_alone_updates_the_profile(store: StateStore) -> None:
    """Swapping only a tag beyond the 10 Intercom lists makes the contact changed: Klaviyo gets its tags."""
    with sandboxes() as boxes:
        ws = boxes.workspace
        names = {tag["id"]: tag["name"] for tag in ws.tags}
        big = next(c for c in in_run(ws) if c["email"].strip())
        before = [tag["id"] for tag in ws.tags[:15]]
        set_tags(ws, big, before)
        job = contacts_job(boxes)
        execute(boxes, store, job, RunOptions())

        after = [*before[:10], ws.tags[15]["id"], *before[11:]]  # the 11th tag swapped, nothing else
        set_tags(ws, big, after)
        ws.now += 60
        big["updated_at"] = ws.now
        execute(boxes, store, job, RunOptions())
        profile = boxes.klaviyo.profiles[big["email"].strip().lower()]

    assert profile["properties"]["intercom_tags"] == sorted(names[i] for i in after)
    assert names[before[10]] not in profile["properties"]["intercom_tags"]


def test_avatars_as_objects_and_as_strings_both_become_the_profile_image(store: StateStore) -> None:
    """Every profile's image is its contact's avatar URL, whether Intercom sent an object or a bare string."""
    with sandboxes() as boxes:
        ws = boxes.workspace
        execute(boxes, store, contacts_job(boxes), RunOptions())
        profiles = boxes.klaviyo.profiles
    shapes = set()
    checked = 0
    for contact in in_run(ws):
        email = contact["email"].strip().lower()
        if email in profiles:
            avatar = contact["avatar"]
            shapes.add(type(avatar))
            url = avatar if isinstance(avatar, str) else avatar["image_url"]
            assert profiles[email]["image"] == url
            checked += 1
    assert shapes == {str, dict} and checked > 10


def test_contacts_with_ten_tags_or_fewer_cost_no_extra_call() -> None:
    """Paging contacts none of which has more than 10 tags makes search calls only."""
    ws = Workspace(seed=3, start=START, contacts=40, conversations=5, tickets=2)
    for contact in ws.contacts.values():
        set_tags(ws, contact, tag_ids(contact)[:TAG_LIST_SHOWS])
    with sandbox(ws) as sb, client(sb, per_page=7) as c:
        pages = list(c.pages(Window("contacts", at(0), at(ws.now + 1))))
        searches = sb.server.search_calls["contacts"]
    assert sum(len(page.objects) for page in pages) == len(ws.contacts)
    assert any(len(tag_ids(c)) == TAG_LIST_SHOWS for c in ws.contacts.values())  # the bound itself occurs
    assert c.stats.calls == searches == len(pages)


class MergingWorkspace(Workspace):
    """A workspace in which one contact is merged away right after a search has listed it."""

    victim: str | None = None

    def objects(self, stream: str) -> list[dict[str, Any]]:
        listed = super().objects(stream)
        if stream == "contacts" and self.victim in self.contacts:
            survivor = next(i for i in self.contacts if i != self.victim)
            del self.contacts[self.victim]
            self.merged[self.victim] = survivor
        return listed


def test_a_contact_merged_before_its_tags_are_read_is_left_out() -> None:
    """When GET /contacts/{id}/tags answers 404 (merged meanwhile), the contact is dropped, the rest go on."""
    ws = MergingWorkspace(seed=3, start=START, contacts=40, conversations=5, tickets=2)
    heavy = [c["id"] for c in ws.contacts.values() if len(tag_ids(c)) > TAG_LIST_SHOWS]
    assert len(heavy) > 1
    ws.victim = heavy[0]
    complete = {i: tag_ids(c) for i, c in ws.contacts.items() if i != ws.victim}
    with sandbox(ws) as sb, client(sb, per_page=150) as c:
        (page,) = c.pages(Window("contacts", at(0), at(ws.now + 1)))
        gets = [p for m, p in sb.server.requests if m == "GET"]
    assert {o["id"]: tag_ids(o) for o in page.objects} == complete
    assert sorted(gets) == sorted(f"/contacts/{i}/tags" for i in heavy)


def test_the_window_is_still_exact_with_tag_reads() -> None:
    """Contacts completed with their tags are still exactly the window's, each once."""
    ws = Workspace(seed=5, start=START, contacts=60, conversations=5, tickets=2)
    since, until = at(START.timestamp() - 20 * 86_400), at(START.timestamp())
    with sandbox(ws) as sb, client(sb, per_page=6) as c:
        read = [o for page in c.pages(Window("contacts", since, until)) for o in page.objects]
    expected = {i: tag_ids(o) for i, o in ws.contacts.items() if since <= at(o["updated_at"]) < until}
    assert {o["id"]: tag_ids(o) for o in read} == expected and len(read) == len(expected)
    assert any(len(t) > TAG_LIST_SHOWS for t in expected.values())


def test_a_re_read_skips_the_tag_lists_of_unchanged_contacts_only(store: StateStore) -> None:
    """A backfill of the whole window after a first run reads no tag list of a contact whose listing agrees
    with its snapshot (same updated_at, total_count and shown tags); a contact retagged and updated, and one
    tagged with its updated_at unmoved (as Intercom does: its total_count tells), each cost their one call
    and reach Klaviyo with their new tags. A --replay re-reads every list."""
    with sandboxes() as boxes:
        ws = boxes.workspace
        names = {tag["id"]: tag["name"] for tag in ws.tags}
        job = contacts_job(boxes)
        execute(boxes, store, job, RunOptions())
        heavy = sorted(c["id"] for c in in_run(ws) if len(tag_ids(c)) > TAG_LIST_SHOWS)
        retagged, tagged = [c for c in in_run(ws) if c["id"] in heavy and c["email"].strip()][:2]
        assert len(heavy) > 3  # the premise: more contacts than these two have more than 10 tags

        swapped = [
            *tag_ids(retagged)[:10],
            next(t["id"] for t in ws.tags if t["id"] not in tag_ids(retagged)),
        ]
        set_tags(ws, retagged, swapped + tag_ids(retagged)[11:])  # the 11th swapped, updated as usual
        ws.now += 60
        retagged["updated_at"] = ws.now
        added = next(t["id"] for t in ws.tags if t["id"] not in tag_ids(tagged))
        set_tags(ws, tagged, [*tag_ids(tagged), added])  # one more tag, updated_at unmoved

        first = len(boxes.intercom.server.requests)
        window = RunOptions(since=START_DATE, until=boxes.clock())
        execute(boxes, store, job, window)
        calls = tag_calls(boxes.intercom.server.requests[first:])
        profiles = boxes.klaviyo.profiles

        first = len(boxes.intercom.server.requests)
        execute(boxes, store, job, dataclasses.replace(window, replay=True))
        replayed = tag_calls(boxes.intercom.server.requests[first:])

    assert sorted(calls) == sorted(f"/contacts/{c['id']}/tags" for c in (retagged, tagged))
    for contact in (retagged, tagged):
        profile = profiles[contact["email"].strip().lower()]
        assert profile["properties"]["intercom_tags"] == sorted(names[i] for i in tag_ids(contact))
    assert names[added] in profiles[tagged["email"].strip().lower()]["properties"]["intercom_tags"]
    backfill = store.runs("shop", 2, mode="backfill")[1]  # newest first: the replay, then the re-read
    assert backfill.counts["contacts"]["unchanged"] == len(in_run(ws)) - 2
    assert sorted(replayed) == [f"/contacts/{i}/tags" for i in heavy]


def test_stored_tags_stand_in_only_when_updated_at_count_and_shown_tags_all_agree() -> None:
    """Each sign of the rule alone sends the contact to GET /contacts/{id}/tags: another updated_at, another
    total_count (or none), a shown tag not stored; a listing that agrees on all three keeps the stored tags."""
    stored_ids = [str(i) for i in range(12)]
    shown = [{"type": "tag", "id": i} for i in stored_ids[:TAG_LIST_SHOWS]]

    def listed(updated_at: int = 1_700_000_000, **tags: Any) -> dict[str, Any]:
        listing = {"type": "list", "data": shown, "total_count": 12, "has_more": True}
        return {"id": "c1", "updated_at": updated_at, "tags": {**listing, **tags}}

    stored = (1_700_000_000, stored_ids)
    assert tags_unchanged(listed(), stored)
    assert not tags_unchanged(listed(updated_at=1_700_000_001), stored)
    assert not tags_unchanged(listed(total_count=13), stored)  # tagged, updated_at unmoved
    assert not tags_unchanged(listed(total_count=None), stored)
    assert not tags_unchanged(listed(data=[*shown[:9], {"type": "tag", "id": "99"}]), stored)
    assert not tags_unchanged(listed(), None)
