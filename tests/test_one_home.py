"""Each fact has one home (issue 14): no constant is defined, by name or by value, in two modules of `etl`.

The sandbox is left out on purpose: the fake servers state the APIs' limits themselves, so a wrong limit in a
client is caught by a test against the sandbox instead of being shared by both sides.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from etl.models import iso_z

ETL = Path(__file__).resolve().parent.parent / "etl"


def constants() -> list[tuple[str, str, Any]]:
    """(module, name, value) of every UPPER_CASE name a module of `etl` assigns at top level (not imports)."""
    found = []
    for path in sorted(ETL.glob("*.py")):
        module = f"etl.{path.stem}"
        loaded = importlib.import_module(module)
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper() and hasattr(loaded, target.id):
                    found.append((module, target.id, getattr(loaded, target.id)))
    return found


def test_no_constant_name_is_defined_in_two_modules() -> None:
    """MAX_PER_PAGE lives in etl.intercom only; etl.config imports it for its range check."""
    homes = defaultdict(list)
    for module, name, _ in constants():
        homes[name].append(module)
    assert {name: modules for name, modules in homes.items() if len(modules) > 1} == {}


def test_no_list_of_names_is_written_out_twice() -> None:
    """A tuple, set or dict of three or more items is spelled in one module: DEFAULT_METRIC_NAMES was METRICS."""
    first: dict[str, str] = {}
    repeats = []
    for module, name, value in constants():
        if isinstance(value, tuple | frozenset | set | dict) and len(value) >= 3:
            key = repr(sorted(value, key=repr) if isinstance(value, set | frozenset) else value)
            if key in first:
                repeats.append((first[key], f"{module}.{name}"))
            first.setdefault(key, f"{module}.{name}")
    assert repeats == []


def test_iso_z_spells_every_moment_we_write() -> None:
    """One helper, three spellings: Z for history/CLI/windows, +00:00 for event properties, whole seconds with
    +00:00 for a Klaviyo event's time; any zone in, UTC out; None stays None."""
    moment = datetime(2026, 3, 1, 13, 4, 5, 250_000, tzinfo=timezone(timedelta(hours=1)))
    assert iso_z(moment) == "2026-03-01T12:04:05.250000Z"
    assert iso_z(moment.replace(microsecond=0)) == "2026-03-01T12:04:05Z"
    assert iso_z(moment, offset="+00:00") == "2026-03-01T12:04:05.250000+00:00"
    assert iso_z(moment, offset="+00:00", timespec="seconds") == "2026-03-01T12:04:05+00:00"
    assert iso_z(None) is None
