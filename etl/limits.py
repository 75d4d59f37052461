"""Klaviyo's payload limits, applied to event and profile properties before they reach the outbox.

Pure. `fit_properties` drops empty top-level values and cuts what Klaviyo would refuse (docs/design.md §6),
returning how many values it cut. What counts as empty differs (docs/design.md §4.2): for event properties
`is_empty` (0, null, "" and empty containers; booleans stay), for profiles `is_blank` (null, "" and empty
containers: a profile's 0 is a value people segment on, and a cleared value is unset, not sent).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_STRING_BYTES = 100_000  # Klaviyo: "each string cannot be larger than 100 KB" (POST /api/events)
MAX_PROPERTIES = 400  # Klaviyo: event properties "must not exceed 400 properties" (POST /api/events)
MAX_DEPTH = 10  # Klaviyo ingestion limits: "Max levels of nested objects: 10"
MAX_ARRAY_ITEMS = 4_000  # Klaviyo ingestion limits: "Max number of items in arrays: 4000"
# Klaviyo 2026-07-15, MetricCreateQueryResourceObject (the metric of each event in POST
# /api/event-bulk-create-jobs): its name "Must be less than 128 characters."
MAX_METRIC_NAME_LENGTH = 127


@dataclass(frozen=True)
class Fitted:
    """Properties within Klaviyo's limits and the number of values cut to get there."""

    properties: dict[str, Any]
    truncations: int


def is_empty(value: Any) -> bool:
    """True for the values Klaviyo ignores: null, "", 0 and empty containers; never for a boolean."""
    kind = type(value)
    if kind is str:  # the common cases first, without the costly ABC checks
        return value == ""
    if kind is bool:
        return False
    if value is None:
        return True
    if kind is int or kind is float:
        return value == 0
    if kind is dict or kind is list or kind is tuple:
        return len(value) == 0
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, Mapping | list | tuple) and len(value) == 0


def is_blank(value: Any) -> bool:
    """True for null, "" and empty containers: the values a profile does not send (0 and false it does)."""
    if value is None:
        return True
    if isinstance(value, str | Mapping | list | tuple):
        return len(value) == 0
    return False


def fit_properties(properties: Mapping[str, Any], empty: Callable[[Any], bool] = is_empty) -> Fitted:
    """Drop empty top-level values (`empty` says which), then cut strings, arrays, nesting and key count to
    Klaviyo's limits."""
    kept = {key: value for key, value in properties.items() if not empty(value)}
    if len(kept) <= MAX_PROPERTIES and _within(kept.values(), MAX_PROPERTIES - len(kept)):
        # the common case: nothing to cut, so no copy either (the nested values are shared, not mutated)
        return Fitted(kept, 0)
    return _cut_properties(kept)


def _cut_properties(kept: Mapping[str, Any]) -> Fitted:
    """Every value walked and copied, cut where it exceeds a limit."""
    cutter = _Cutter(budget=MAX_PROPERTIES)
    fitted: dict[str, Any] = {}
    for key in kept:  # top-level keys are spent first, so a big nested object cannot crowd them out
        if cutter.budget == 0:
            cutter.cuts += 1
            continue
        cutter.budget -= 1
        fitted[key] = None
    for key in fitted:
        fitted[key] = cutter.cut(kept[key], depth=2)
    return Fitted(fitted, cutter.cuts)


def _within(values: Iterable[Any], budget: int, depth: int = 2) -> bool:
    """True when `_Cutter` would return these values (at nesting level `depth`) unchanged: strings short
    enough to fit whatever their encoding, str keys only, no more nested keys than `budget`, no container
    beyond MAX_DEPTH or MAX_ARRAY_ITEMS. False means "maybe not", and the cutter decides."""
    stack = [(iter(values), depth)]
    while stack:
        items, level = stack[-1]
        for value in items:
            kind = type(value)
            if kind is str:
                if len(value) * 4 > MAX_STRING_BYTES:
                    return False
            elif kind is int or kind is float or kind is bool or value is None:
                continue
            elif level > MAX_DEPTH:
                return False
            elif kind is dict:
                budget -= len(value)
                if budget < 0 or not all(type(key) is str for key in value):
                    return False
                stack.append((iter(value.values()), level + 1))
                break
            elif kind is list:
                if len(value) > MAX_ARRAY_ITEMS:
                    return False
                stack.append((iter(value), level + 1))
                break
            else:  # tuples, other mappings and types: the cutter copies or converts them
                return False
        else:
            stack.pop()
    return True


def truncate_text(value: str, max_bytes: int = MAX_STRING_BYTES) -> str:
    """The longest prefix of `value` whose UTF-8 encoding fits in `max_bytes` (never splits a character)."""
    if len(value) * 4 <= max_bytes:  # a character is at most 4 bytes: short strings need no encoding
        return value
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return value
    return encoded[:max_bytes].decode("utf-8", "ignore")


class _Cutter:
    """One walk over a value tree, sharing the property budget between all nested objects."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.cuts = 0

    def cut(self, value: Any, depth: int) -> Any:
        """`value` at nesting level `depth` (the properties object itself is level 1)."""
        kind = type(value)
        if kind is str:
            return self._text(value)
        if value is None or kind is bool or kind is int or kind is float:
            return value
        if isinstance(value, str):
            return self._text(value)
        if not isinstance(value, Mapping | list | tuple):
            return value
        if depth > MAX_DEPTH:
            # too deep for Klaviyo: keep the information as a JSON string instead of dropping it
            self.cuts += 1
            return truncate_text(json.dumps(value, ensure_ascii=False, default=str))
        if isinstance(value, Mapping):
            result = {}
            for key, item in value.items():
                if self.budget == 0:
                    self.cuts += 1
                    continue
                self.budget -= 1
                result[str(key)] = self.cut(item, depth + 1)
            return result
        if len(value) > MAX_ARRAY_ITEMS:
            self.cuts += 1
            value = value[:MAX_ARRAY_ITEMS]
        return [self.cut(item, depth + 1) for item in value]

    def _text(self, value: str) -> str:
        cut = truncate_text(value)
        if cut is not value:
            self.cuts += 1
        return cut
