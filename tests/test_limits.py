"""Klaviyo payload limits on properties (docs/design.md §6): empty values out, oversize values cut and
counted."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.limits import (
    MAX_ARRAY_ITEMS,
    MAX_DEPTH,
    MAX_PROPERTIES,
    MAX_STRING_BYTES,
    _cut_properties,
    fit_properties,
    is_blank,
    is_empty,
    truncate_text,
)


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def key_count(value) -> int:
    if isinstance(value, dict):
        return len(value) + sum(key_count(v) for v in value.values())
    if isinstance(value, list):
        return sum(key_count(v) for v in value)
    return 0


def test_empty_values_are_left_out_and_booleans_kept():
    """null, "", 0, 0.0 and empty containers go; False, 0.5 and non-empty values stay."""
    fitted = fit_properties(
        {"a": None, "b": "", "c": 0, "d": 0.0, "e": [], "f": {}, "g": False, "h": 0.5, "i": "x"}
    )
    assert fitted.properties == {"g": False, "h": 0.5, "i": "x"}
    assert fitted.truncations == 0


def test_long_strings_are_cut_at_a_character_boundary():
    """A string over 100 KB is cut to fit, without splitting a multi-byte character, and counted."""
    fitted = fit_properties({"s": "€" * 40_000, "nested": {"t": "a" * (MAX_STRING_BYTES + 1)}})
    assert len(fitted.properties["s"].encode()) <= MAX_STRING_BYTES
    assert fitted.properties["s"] == "€" * (MAX_STRING_BYTES // 3)
    assert len(fitted.properties["nested"]["t"]) == MAX_STRING_BYTES
    assert fitted.truncations == 2


def test_string_at_the_limit_is_untouched():
    """A string of exactly 100 KB is not cut."""
    text = "a" * MAX_STRING_BYTES
    assert truncate_text(text) is text


def test_property_count_is_capped_with_top_level_keys_first():
    """At most 400 keys in all; top-level keys win over keys nested in a big object."""
    nested = {f"n{i}": i + 1 for i in range(500)}
    fitted = fit_properties({"Custom Attributes": nested, "Title": "t", "Ticket ID": "1"})
    assert key_count(fitted.properties) == MAX_PROPERTIES
    assert fitted.properties["Title"] == "t"
    assert fitted.truncations == 500 - (MAX_PROPERTIES - 3)


def test_too_deep_nesting_becomes_a_json_string():
    """Objects nested past 10 levels are kept as a JSON string, and counted."""
    deep: dict = {"leaf": 1}
    for _ in range(15):
        deep = {"d": deep}
    fitted = fit_properties({"deep": deep})
    assert depth(fitted.properties) <= MAX_DEPTH
    assert fitted.truncations == 1
    innermost = fitted.properties["deep"]
    while isinstance(innermost, dict):
        innermost = innermost["d"]
    assert json.loads(innermost) == {"d": {"d": {"d": {"d": {"d": {"d": {"leaf": 1}}}}}}}


def test_long_arrays_are_cut():
    """Arrays keep their first 4,000 items."""
    fitted = fit_properties({"ids": list(range(1, MAX_ARRAY_ITEMS + 10))})
    assert fitted.properties["ids"] == list(range(1, MAX_ARRAY_ITEMS + 1))
    assert fitted.truncations == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=60,
)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON, max_size=10))
def test_fitted_properties_respect_every_limit(properties):
    """Whatever goes in, what comes out is within Klaviyo's limits and untouched when already within."""
    fitted = fit_properties(properties)
    assert key_count(fitted.properties) <= MAX_PROPERTIES
    assert depth(fitted.properties) <= MAX_DEPTH
    if fitted.truncations == 0:
        assert fitted.properties == {k: v for k, v in properties.items() if v is False or v or v is True}


def nested(levels: int, leaf) -> dict:
    value = leaf
    for _ in range(levels):
        value = {"k": value}
    return value


# values at and around each limit, so the fast path's "nothing to cut" is checked where it is closest to wrong
BORDER = [
    *(nested(n, "leaf") for n in range(MAX_DEPTH - 3, MAX_DEPTH + 2)),
    *({f"p{i}": i for i in range(n)} for n in (MAX_PROPERTIES - 3, MAX_PROPERTIES - 2, MAX_PROPERTIES)),
    *(list(range(n)) for n in (MAX_ARRAY_ITEMS, MAX_ARRAY_ITEMS + 1)),
    *("x" * n for n in (MAX_STRING_BYTES // 4, MAX_STRING_BYTES // 4 + 1, MAX_STRING_BYTES, MAX_STRING_BYTES + 1)),
    "é" * 50_001, "€" * 33_334, "😀" * 25_000, "😀" * 25_001,
    (1, "tuple"), {1: "int key"}, [("a", 1)],
]  # fmt: skip


@pytest.mark.parametrize("value", BORDER, ids=lambda v: f"{type(v).__name__}:{len(str(v))}")
def test_values_at_the_limits_get_what_the_full_cutter_gives(value):
    """At and around every limit, `fit_properties` (whose fast path skips the walk and the copy when nothing
    needs cutting) gives what the full cutter gives, top level or nested."""
    for properties in ({"a": value, "b": "x"}, {"a": {"b": value}}, {"a": [value]}):
        assert fit_properties(properties) == _cut_properties(properties)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), JSON, max_size=6))
def test_nothing_to_cut_takes_the_fast_path_with_the_same_result(properties):
    """`fit_properties`' fast path (no copy when nothing needs cutting) gives what the full cutter gives."""
    kept = {k: v for k, v in properties.items() if not is_empty(v)}
    assert fit_properties(properties) == _cut_properties(kept)
    blank_kept = {k: v for k, v in properties.items() if not is_blank(v)}
    assert fit_properties(properties, empty=is_blank) == _cut_properties(blank_kept)
