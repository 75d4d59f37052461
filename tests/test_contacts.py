"""The run's contact book (etl.contacts) and its bound (etl.lru): a bound only ever costs queries, never answers.

Issue 9: the book used to clear its whole cache when full and then read its answer back from the cache it had
just emptied, so a first sync of a big workspace counted contacts with an email as `skipped:no_identifier`.
The stored snapshots and Intercom are plain functions here (they are injected), counting their calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.contacts import CONTACT_CACHE_LIMIT, ContactBook
from etl.lru import LruCache
from etl.models import Identity, Snapshot
from etl.snapshots import to_snapshot


def raw_contact(cid: str, email: str | None = None, phone: str | None = None) -> dict[str, Any]:
    return {"type": "contact", "id": cid, "role": "user", "email": email if email is not None else f"{cid}@example.com",
            "phone": phone, "updated_at": 1_772_000_000}  # fmt: skip


def expected(cid: str) -> Identity:
    """The identity of raw_contact(cid): its email, written out rather than computed by etl.profiles."""
    return Identity(email=f"{cid}@example.com", phone_number=None, contact_id=cid)


class Sources:
    """Stored snapshots and Intercom's contacts, with the ids each call asked for."""

    def __init__(
        self,
        stored: Mapping[str, dict[str, Any]] | None = None,
        intercom: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self.stored = {cid: to_snapshot("contacts", raw) for cid, raw in (stored or {}).items()}
        self.intercom = intercom or {}  # requested id -> the survivor's raw contact
        self.loads: list[list[str]] = []
        self.lookups: list[list[str]] = []

    def load(self, ids: list[str]) -> dict[str, Snapshot]:
        self.loads.append(list(ids))
        return {cid: self.stored[cid] for cid in ids if cid in self.stored}

    def lookup(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        self.lookups.append(list(ids))
        return {cid: self.intercom[cid] for cid in ids if cid in self.intercom}


def test_a_nearly_full_cache_still_answers_every_stored_contact():
    """Issue 9's reproduction: 4,990 contacts remembered, then 150 stored ones asked for: all 150 come back."""
    sources = Sources(stored={f"s{i}": raw_contact(f"s{i}") for i in range(150)})
    book = ContactBook("US", sources.lookup)
    for i in range(4_990):
        book.remember(f"r{i}", to_snapshot("contacts", raw_contact(f"r{i}")))
    wanted = [f"s{i}" for i in range(150)]

    found = book.identities(wanted, sources.load)

    assert found == {cid: expected(cid) for cid in wanted}
    assert sources.loads == [wanted] and sources.lookups == []
    assert len(book.cache) == CONTACT_CACHE_LIMIT


def test_one_call_naming_more_contacts_than_the_bound_is_answered_whole():
    """35 ids against a bound of 10 (stored, from Intercom, merged, unknown, without identifier): the exact
    answer, and `get` holds every contact of that answer for queueing its profile."""
    stored = {f"s{i}": raw_contact(f"s{i}") for i in range(15)}
    stored["s-anon"] = raw_contact("s-anon", email="", phone="n/a")
    intercom = {f"i{i}": raw_contact(f"i{i}") for i in range(12)}
    intercom.update({f"m{i}": raw_contact(f"i{i}") for i in range(4)})  # merged into i0..i3
    sources = Sources(stored, intercom)
    book = ContactBook("US", sources.lookup, limit=10)
    wanted = [*stored, *intercom, "gone-1", "gone-2"]

    found = book.identities(wanted, sources.load)

    survivors = {f"m{i}": f"i{i}" for i in range(4)}
    assert found == {
        **{f"s{i}": expected(f"s{i}") for i in range(15)},
        **{f"i{i}": expected(f"i{i}") for i in range(12)},
        **{merged: expected(survivor) for merged, survivor in survivors.items()},
    }
    assert sources.loads == [wanted]
    assert sources.lookups == [[*intercom, "gone-1", "gone-2"]]  # one batched lookup, never per contact
    assert len(book.cache) == 10 and book.cache.evictions > 0
    for identity in found.values():
        snapshot = book.get(identity.contact_id)
        assert snapshot is not None and snapshot.object_id == identity.contact_id
    assert book.get("s-anon") is not None and book.get("gone-1") is None


def test_an_evicted_contact_is_loaded_again_and_a_cached_one_is_not():
    """The cache saves queries for what it still holds; what it evicted is read again, with the same answer."""
    sources = Sources(stored={c: raw_contact(c) for c in "abcdef"})
    book = ContactBook("US", sources.lookup, limit=3)

    first = book.identities(list("abcdef"), sources.load)
    again = book.identities(list("defa"), sources.load)  # d, e, f are the three most recent

    assert first == {c: expected(c) for c in "abcdef"}
    assert again == {c: expected(c) for c in "defa"}
    assert sources.loads == [list("abcdef"), ["a"]]
    assert list(book.cache) == ["e", "f", "a"]  # d, e, f read again (each now more recent), then a loaded


def test_contacts_remembered_from_the_contacts_stream_need_no_query():
    """A contact the run read itself is answered from the cache: no load, no lookup."""
    sources = Sources()
    book = ContactBook("US", sources.lookup)
    book.remember("c1", to_snapshot("contacts", raw_contact("c1")))
    book.remember("c2", to_snapshot("contacts", raw_contact("c2", email="", phone="+1 415-555-0100")))

    found = book.identities(["c1", "c2", "c1"], sources.load)

    assert found == {"c1": expected("c1"), "c2": Identity(None, "+14155550100", "c2")}
    assert sources.loads == [] and sources.lookups == []


def test_the_bound_is_checked():
    """A cache without room is a programming error, said plainly."""
    with pytest.raises(ValueError, match=r"^an LRU cache needs room for at least one entry, got limit=0$"):
        ContactBook("US", Sources().lookup, limit=0)


# -- the LRU itself ---------------------------------------------------------------------------------------


def test_lru_forgets_the_least_recently_used_entry():
    """Reading an entry keeps it; the one neither read nor written for longest goes first."""
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert list(cache) == ["a", "c"] and cache.get("b") is None and cache.evictions == 1
    cache.put("a", 4)
    assert list(cache) == ["c", "a"] and cache.get("a") == 4 and len(cache) == 2


@given(
    st.integers(min_value=1, max_value=6),
    st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=9)), max_size=60),
)
def test_lru_matches_a_list_model(limit, operations):
    """Any sequence of puts and gets leaves the `limit` most recently used keys, as a plain list says."""
    cache: LruCache[int, int] = LruCache(limit)
    model: list[int] = []  # keys, least recently used first
    for is_put, key in operations:
        if is_put:
            cache.put(key, key * 10)
        elif cache.get(key) is None:
            assert key not in model
            continue
        if key in model:
            model.remove(key)
        model.append(key)
        model = model[-limit:]
    assert list(cache) == model and all(cache.get(k) == k * 10 for k in list(model))
    assert len(cache) <= limit
