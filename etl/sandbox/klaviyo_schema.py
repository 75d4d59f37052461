"""Request-body validation for the fake Klaviyo, against schema fragments copied from Klaviyo's OpenAPI spec.

`klaviyo_requests.json` beside this file holds the `components.schemas` the two bulk endpoints use
(revision 2026-07-15; provenance in its `$comment`). The sandbox ships with the package and cannot depend
on `jsonschema` (a dev extra), so this module interprets the subset of OpenAPI 3.0 schema those fragments
use: `$ref`, `type` with `nullable`, `properties`, `required`, `items`, `enum`, `oneOf`, `default`.
Like Klaviyo, it rejects unknown keys of objects that list their `properties` ("'x' is not a valid
field"); objects without a `properties` list (custom `properties`, `append`) are free-form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).with_name("klaviyo_requests.json")
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


@cache
def _schemas() -> Mapping[str, Any]:
    with SCHEMA_FILE.open(encoding="utf-8") as handle:
        return dict(json.load(handle)["components"]["schemas"])


def problems(instance: Any, schema_name: str, limit: int = 20) -> list[tuple[str, str]]:
    """(JSON pointer, message) for each way `instance` breaks the named schema; empty when it is valid."""
    found: list[tuple[str, str]] = []
    _check(instance, {"$ref": f"#/components/schemas/{schema_name}"}, "", found, limit)
    return found


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        nullable = schema.get("nullable")
        schema = _schemas()[schema["$ref"].rsplit("/", 1)[-1]]
        if nullable:
            schema = {**schema, "nullable": True}
    return schema


def _check(
    value: Any, schema: Mapping[str, Any], pointer: str, found: list[tuple[str, str]], limit: int
) -> None:
    if len(found) >= limit:
        return
    schema = _resolve(schema)
    if value is None:
        if not schema.get("nullable"):
            found.append((pointer or "/", "This field may not be null."))
        return
    if "oneOf" in schema:
        matches = sum(not _problems_in(value, option) for option in schema["oneOf"])
        if matches != 1:
            found.append((pointer or "/", "Invalid value for this field."))
        return
    kind = schema.get("type")
    if kind is not None and not _is(value, kind):
        found.append((pointer or "/", f"Expected a value of type '{kind}'."))
        return
    if "enum" in schema and value not in schema["enum"]:
        found.append((pointer or "/", f"'{value}' is not one of {schema['enum']}."))
        return
    if isinstance(value, dict):
        declared = schema.get("properties")
        for name in schema.get("required", ()):
            if name not in value:
                found.append((f"{pointer}/{name}", f"'{name}' is a required field."))
        if declared is None:
            return
        for name, item in value.items():
            if name not in declared:
                found.append((f"{pointer}/{name}", f"'{name}' is not a valid field for this resource."))
            else:
                _check(item, declared[name], f"{pointer}/{name}", found, limit)
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{pointer}/{index}", found, limit)


def _problems_in(value: Any, schema: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    _check(value, schema, "", found, 1)
    return found


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    return isinstance(value, _TYPES.get(kind, (object,)))
