"""Helpers for the Intercom tests: a fake clock, small workspaces, sandboxes, and the sandbox modes."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from etl.intercom import IntercomClient
from etl.models import Window
from etl.sandbox.generator import Workspace
from etl.sandbox.intercom_server import IntercomSandbox, IntercomSettings

START = datetime(2026, 3, 1, 12, 0, 7, tzinfo=UTC)
CONTRACTS = Path(__file__).parent / "contracts"
STREAMS = ("contacts", "conversations", "tickets")

# Every way the server may read timestamps: contact search by day in several timezones or by second,
# conversation/ticket ">"/"<" with or without equality; each with a shifting and a stable cursor.
MODES = {
    f"{granularity}-{zone.split('/')[-1]}-{'incl' if inclusive else 'strict'}-{cursor}": IntercomSettings(
        timezone=zone, granularity=granularity, inclusive=inclusive, cursor=cursor
    )
    for granularity, zone, inclusive in (
        ("day", "UTC", True),
        ("day", "America/Los_Angeles", False),
        ("day", "Pacific/Kiritimati", True),
        ("second", "UTC", True),
        ("second", "Asia/Kolkata", False),
    )
    for cursor in ("offset", "keyset")
}


class FakeTime:
    """A clock that only moves when `sleep` is called; every wait is recorded."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def workspace(seed: int = 3, contacts: int = 30, conversations: int = 45, tickets: int = 20) -> Workspace:
    return Workspace(seed=seed, start=START, contacts=contacts, conversations=conversations, tickets=tickets)


@contextmanager
def sandbox(
    ws: Workspace | None = None, settings: IntercomSettings | None = None, **kw: Any
) -> Iterator[IntercomSandbox]:
    with IntercomSandbox(ws or workspace(), settings or IntercomSettings(), **kw) as sb:
        yield sb


@contextmanager
def client(sb: IntercomSandbox, fake: FakeTime | None = None, **kw: Any) -> Iterator[IntercomClient]:
    fake = fake or FakeTime(START.timestamp())
    c = IntercomClient(
        sb.url, sb.token, token_env="INTERCOM_ACCESS_TOKEN", sleep=fake.sleep, clock=fake.clock, **kw
    )
    try:
        yield c
    finally:
        c.close()


def at(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def read_ids(c: IntercomClient, stream: str, since: datetime, until: datetime) -> list[str]:
    """Every object id the client yields for one window, in order, after checking each lies in the window."""
    ids = []
    for page in c.pages(Window(stream, since, until)):
        for obj in page.objects:
            assert since <= at(obj["updated_at"]) < until
            ids.append(obj["id"])
    return ids


def expected_ids(ws: Workspace, stream: str, since: datetime, until: datetime) -> set[str]:
    return {o["id"] for o in ws.objects(stream) if since <= at(o["updated_at"]) < until}


def deviations(validator: jsonschema.protocols.Validator, body: Any) -> list[str]:
    """The JSON paths at which `body` breaks a schema fragment, sorted ([] when it validates)."""
    return sorted("/".join(map(str, error.absolute_path)) for error in validator.iter_errors(body))


def string_avatars(contacts: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """The paths of the avatars served as bare URL strings: the one departure from the spec the sandbox plays
    on purpose (clients in the field meet it), so contract checks expect exactly these."""
    paths = (
        f"{prefix}{i}/avatar" for i, contact in enumerate(contacts) if isinstance(contact["avatar"], str)
    )
    return sorted(paths)


@functools.cache
def contract(name: str) -> jsonschema.protocols.Validator:
    """A validator for the schema fragment tests/contracts/intercom_{name}.json (built once)."""
    schema = json.loads((CONTRACTS / f"intercom_{name}.json").read_text())
    return jsonschema.Draft202012Validator(schema)


@functools.cache
def operation_contract(name: str, status: str) -> jsonschema.protocols.Validator:
    """A validator for one status's response schema in the operation fragment contracts/intercom_{name}.json."""
    document = json.loads((CONTRACTS / f"intercom_{name}.json").read_text())
    return jsonschema.Draft202012Validator({"$schema": document["$schema"], **document["responses"][status]})
