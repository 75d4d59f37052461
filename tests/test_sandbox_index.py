"""The sandbox's speed-ups answer exactly what the scans they replace answered (issue 9's big workspaces).

`Chronology` (the generator's "created before t" picks) against the list comprehension it replaced, and
`SearchCache` (the fake Intercom's result sets) against a fresh scan, including after the workspace
changed under it: in place, by deletion, by replacement.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from etl.sandbox.chronology import INDEX_AFTER, Chronology, Joined
from etl.sandbox.intercom_index import SearchCache
from etl.sandbox.intercom_query import Matching, compile_query, search_values

Obj = dict[str, Any]


def naive(objects: dict[str, Obj], moment: int, inclusive: bool) -> list[Obj]:
    return [
        o for o in objects.values() if (o["created_at"] <= moment if inclusive else o["created_at"] < moment)
    ]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=30), max_size=120),
    st.lists(st.tuples(st.integers(min_value=-1, max_value=32), st.booleans()), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_chronology_answers_like_the_list_it_replaces(times, questions, rng):
    """Length, every item, iteration and bounds of a view equal the filtered list's, indexed or not, and
    after objects are added and deleted."""
    objects = {f"o{i}": {"id": f"o{i}", "created_at": t} for i, t in enumerate(times)}
    chronology = Chronology(objects)
    for round_ in range(3):
        for _ in range(INDEX_AFTER + 2):  # the first INDEX_AFTER - 1 answers are lists, the rest the index
            for moment, inclusive in questions:
                view, expected = (
                    chronology.created_before(moment, inclusive=inclusive),
                    naive(objects, moment, inclusive),
                )
                assert len(view) == len(expected) and list(view) == expected
                assert [view[i] for i in range(len(view))] == expected
                if expected:
                    assert view[-1] is expected[-1]
        objects[f"new{round_}"] = {"id": f"new{round_}", "created_at": rng.randint(0, 31)}
        if len(objects) > 1:
            del objects[rng.choice(sorted(objects))]


def test_chronology_view_refuses_positions_beyond_it():
    """A view is a sequence: out-of-range positions raise IndexError, as a list's would."""
    chronology = Chronology({str(i): {"id": str(i), "created_at": i} for i in range(100)})
    for _ in range(INDEX_AFTER):
        view = chronology.created_before(50)
    assert len(view) == 50 and view[49]["id"] == "49" and view[:2] == [view[0], view[1]]
    for position in (50, -51):
        try:
            view[position]
        except IndexError:
            continue
        raise AssertionError(f"position {position} was answered")


def test_joined_lists_a_views_ids_then_the_extra_ids():
    """Joined(view, more) is the ids of the view's objects followed by `more`, for picks by position."""
    joined = Joined([{"id": "a"}, {"id": "b"}], ["x"])
    assert list(joined) == ["a", "b", "x"] and [joined[i] for i in range(-3, 3)] == ["a", "b", "x"] * 2
    assert len(joined) == 3 and random.Random(1).choice(joined) in {"a", "b", "x"}


# -- the fake Intercom's result sets ----------------------------------------------------------------------
RULES = Matching()
WINDOW = {
    "operator": "AND",
    "value": [
        {"field": "updated_at", "operator": ">", "value": 10},
        {"field": "updated_at", "operator": "<", "value": 40},
    ],
}


def sort_key(obj: Obj) -> tuple[Any, str]:
    values = search_values("conversations", obj, "updated_at")
    return (values[0] if values else 0, str(obj["id"]))


def answer(cache: SearchCache, objects: list[Obj], query: dict[str, Any]) -> list[Obj]:
    matches = compile_query(query, "conversations", RULES)
    return cache.hits("conversations", objects, query, "updated_at", RULES, matches, sort_key, True)


def scan(objects: list[Obj], query: dict[str, Any]) -> list[Obj]:
    matches = compile_query(query, "conversations", RULES)
    return sorted((o for o in objects if matches(o)), key=sort_key, reverse=True)


def test_search_cache_reuses_a_result_set_only_while_its_objects_are_unchanged():
    """Paging the same query re-uses one result set; an object edited in place, deleted or replaced, or a
    different query, gets the answer a fresh scan gives."""
    workspace = {str(i): {"id": str(i), "updated_at": i, "created_at": 0} for i in range(50)}
    cache = SearchCache()
    objects = list(workspace.values())
    first = answer(cache, objects, WINDOW)
    assert first == scan(objects, WINDOW) and answer(cache, list(workspace.values()), WINDOW) is first

    workspace["12"]["updated_at"] = 45  # an update moves it out of the window (tests do this in place)
    workspace["30"]["updated_at"] = 31  # ... or just reorders
    del workspace["20"]
    workspace["25"] = dict(workspace["25"])  # the same values in a new object: the new one is served
    for query in (WINDOW, {"field": "updated_at", "operator": ">", "value": 30}, WINDOW):
        objects = list(workspace.values())
        got = answer(cache, objects, query)
        assert got == scan(objects, query)
        assert [id(o) for o in got] == [id(o) for o in scan(objects, query)]


def test_search_cache_answers_more_queries_than_it_keeps_like_a_scan():
    """Slices of one stream paged in turn (as `etl run`'s readers do), more of them than the cache keeps: each
    answer is a fresh scan's, the most recent queries are re-used, and the oldest ones were dropped."""
    workspace = {str(i): {"id": str(i), "updated_at": i, "created_at": 0} for i in range(200)}
    objects = list(workspace.values())
    cache = SearchCache(queries=4)
    slices = [
        {
            "operator": "AND",
            "value": [
                {"field": "updated_at", "operator": ">", "value": 10 * n},
                {"field": "updated_at", "operator": "<", "value": 10 * n + 15},
            ],
        }
        for n in range(6)
    ]
    answers = [answer(cache, objects, q) for q in slices]  # six queries into four places
    assert answers == [scan(objects, q) for q in slices]
    for n in (2, 3, 4, 5):  # the last four are kept and re-used as they are
        assert answer(cache, objects, slices[n]) is answers[n]
    for n in (0, 1):  # the first two were dropped: answered afresh, and still right
        again = answer(cache, objects, slices[n])
        assert again is not answers[n] and again == scan(objects, slices[n])


def test_search_cache_looks_ids_up_like_a_scan():
    """`id =` and `id IN` queries find the objects a scan finds, in the same order, after changes too."""
    workspace = {str(i): {"id": str(i), "updated_at": i % 7, "created_at": i % 5} for i in range(300)}
    cache = SearchCache()
    queries = [
        {"field": "id", "operator": "IN", "value": ["5", "17", "299", "nope", "5"]},
        {"field": "id", "operator": "=", "value": "42"},
        {"field": "id", "operator": "IN", "value": []},
    ]
    for changed in (False, True):
        if changed:
            del workspace["17"]
            workspace["17b"] = {
                "id": "299",
                "updated_at": 3,
                "created_at": 1,
            }  # a second object answering "299"
        objects = list(workspace.values())
        for query in queries:
            matches = compile_query(query, "conversations", RULES)
            got = cache.hits("conversations", objects, query, "updated_at", RULES, matches, sort_key, True)
            assert got == scan(objects, query)
