"""etl.codec: orjson's speed, the standard library's bytes and values wherever they are a contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.codec import canonical, dumps, loads
from etl.snapshots import to_snapshot
from tests.pure_fixtures import contact, conversation, ticket

# every JSON value a snapshot, a payload or a run record can hold: strings without lone surrogates
# (`clean_text` replaces them before anything is stored), ints of any size, finite floats, nesting
numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | numbers | st.text()
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)
# values near the formats' borders: tiny and huge magnitudes, 64-bit edges
edge_numbers = st.sampled_from(
    [1e-05, -1e-05, 1.5e-07, 9.99e-05, 1e-04, 0.0001234, 5e-324, 1e16, 1.5e16, 1e22, 2**63 - 1, -(2**63),
     2**64 - 1, 2**64, -(2**63) - 1, 10**30, -0.0, 0.1]
)  # fmt: skip


def stdlib_canonical(value: Any) -> bytes:
    """What the snapshot digest hashed before etl.codec: the bytes it must keep hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def strict(value: Any) -> str:
    """A spelling that tells 1 from 1.0 from True, so a value read back as another type is caught."""
    return json.dumps(value, sort_keys=True)


@settings(max_examples=200)
@given(json_values)
def test_canonical_is_byte_for_byte_the_standard_librarys(value):
    """For any JSON value, `canonical` gives exactly the standard library's sorted compact UTF-8 bytes."""
    assert canonical(value) == stdlib_canonical(value)


@settings(max_examples=300)
@given(st.lists(edge_numbers | st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=8))
def test_canonical_spells_floats_and_big_ints_as_python_does(values):
    """Floats below 1e-4 (orjson writes `0.00001`, Python `1e-05`) and ints beyond 64 bits keep Python's text."""
    wrapped = {"v": values, "n": {str(i): v for i, v in enumerate(values)}}
    assert canonical(wrapped) == stdlib_canonical(wrapped)


def test_canonical_keeps_the_digests_stored_snapshots_have():
    """Digests of fixed snapshots, pinned from the standard-library encoder (non-ASCII, tiny floats, a 70-bit
    int, nesting, None): an upgrade must not make a stored snapshot look changed."""
    odd = {
        "note": "Zoë — naïve 日本 😀",
        "tiny": 1e-05,
        "tinier": -7.5e-09,
        "ratio": 0.1,
        "big": 1e16,
        "huge_int": 2**70,
        "neg": -(2**63),
        "none": None,
        "nested": {"b": [1, 2.5, {"z": None, "a": True}], "a": "x\u2028\x7f\x1f"},
        "flag": False,
    }
    pinned = {
        ("conversations", "odd"): "8d3555ddd327e7f9cc14dcc0dac0fb391900b2a65d74f282f2539ccc860fbbf1",
        ("contacts", "odd"): "03caa1886dc1a4c91e3834bcaf1eb791e2083bae1f96dcf4c9d11f49983c2d85",
        ("tickets", "plain"): "d1e6fa712537cefa9dbac6328de4367add365e74ad21be71e542184b11f9baea",
        ("conversations", "plain"): "a27873dd5a195589c5f1545c56e9305afa866d54ad40a0df942eb8afe99acc6f",
    }
    raws = {
        ("conversations", "odd"): conversation(custom_attributes=odd),
        ("contacts", "odd"): contact(custom_attributes=odd),
        ("tickets", "plain"): ticket(),
        ("conversations", "plain"): conversation(),
    }
    assert {key: to_snapshot(key[0], raw).digest for key, raw in raws.items()} == pinned


@settings(max_examples=200)
@given(json_values | st.lists(edge_numbers))
def test_dumps_and_loads_give_back_the_value_the_standard_library_would(value):
    """`loads(dumps(v))` is `v` with its types (big ints stay ints), and `loads` reads the standard
    library's text as `json.loads` does."""
    assert strict(loads(dumps(value))) == strict(value)
    assert strict(loads(json.dumps(value))) == strict(json.loads(json.dumps(value)))
    assert strict(loads(dumps(value).decode())) == strict(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123456789012345678901234567890", 123456789012345678901234567890),  # orjson: 1.2345678901234568e+29
        ("[18446744073709551616]", [18446744073709551616]),
        ('{"a": NaN}', {"a": float("nan")}),  # orjson refuses NaN; rows written by json.dumps may hold it
        ('"\\ud83d"', "\ud83d"),  # a lone surrogate escape: orjson refuses it
    ],
)
def test_loads_reads_what_orjson_would_misread_or_refuse_as_json_loads_does(text, expected):
    """Text orjson reads differently from `json.loads` (a long int) or refuses is read by `json.loads`."""
    assert repr(loads(text)) == repr(expected)
    assert repr(loads(text.encode("utf-8", "surrogatepass"))) == repr(expected)


def test_dumps_writes_what_orjson_refuses_and_refuses_what_json_refuses():
    """Ints beyond 64 bits and int keys are written as `json.dumps` writes them; a datetime is refused as
    the standard library refuses it (orjson would have written it)."""
    assert dumps({"n": 2**70, 1: "a"}) == b'{"n":1180591620717411303424,"1":"a"}'
    assert dumps({"é": "日本"}) == '{"é":"日本"}'.encode()
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps({"at": datetime(2026, 1, 1, tzinfo=UTC)})
