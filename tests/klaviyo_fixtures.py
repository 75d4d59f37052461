"""Builders shared by the Klaviyo tests: a fake clock, outbox items, and validators of the spec fragments."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from etl.klaviyo import KlaviyoClient, event_resource, profile_resource
from etl.klaviyo_batches import MAX_EVENTS_PER_REQUEST, MAX_PROFILES_PER_JOB, MAX_REQUEST_BYTES, encode
from etl.models import Event, Identity, OutboxItem, Profile
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings

CONTRACTS = Path(__file__).with_name("contracts")
EVENTS = "/api/event-bulk-create-jobs"
IMPORTS = "/api/profile-bulk-import-jobs"
START = 1_780_000_000.0  # 2026-05-28, a fixed fake "now"
EVENT_TIME = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


# what a client sends on every /api/ request (tests speaking to the sandbox by hand)
HEADERS = {
    "Authorization": f"Klaviyo-API-Key {SANDBOX_API_KEY}",
    "revision": "2026-07-15",
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


class FakeClock:
    """A clock that only moves when something sleeps on it; shared by the client and the sandbox."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def _openapi_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` → JSON Schema's null type, recursively."""
    if isinstance(node, list):
        return [_openapi_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _openapi_to_json_schema(v) for k, v in node.items() if k != "nullable"}
    if not node.get("nullable"):
        return converted
    if "type" in converted:
        converted["type"] = [converted["type"], "null"]
        if "enum" in converted:
            converted["enum"] = [*converted["enum"], None]
        return converted
    return {"anyOf": [converted, {"type": "null"}]}


def _inline(node: Any, schemas: dict[str, Any]) -> Any:
    """Every `$ref` replaced by its target (the fragments have no cycles): validation runs several times faster."""
    if isinstance(node, list):
        return [_inline(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        siblings = {k: v for k, v in node.items() if k != "$ref"}  # only `nullable` in these fragments
        return {**_inline(schemas[node["$ref"].rsplit("/", 1)[-1]], schemas), **siblings}
    return {k: _inline(v, schemas) for k, v in node.items()}


@cache
def validator(contract: str, schema: str) -> Draft202012Validator:
    """A validator of one schema of `tests/contracts/klaviyo_{contract}.json`."""
    document = json.loads((CONTRACTS / f"klaviyo_{contract}.json").read_text())
    schemas = document["components"]["schemas"]
    return Draft202012Validator(_openapi_to_json_schema(_inline(schemas[schema], schemas)))


def schema_errors(contract: str, schema: str, instance: Any) -> list[str]:
    """Every way `instance` breaks the named spec schema, as readable lines (empty when valid)."""
    checker = validator(contract, schema)
    if checker.is_valid(instance):  # the fast path; the big-volume test validates 37,000 resources
        return []
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in checker.iter_errors(instance)]


def event_item(
    n: int,
    *,
    email: str | None = None,
    metric: str = "Replied to Conversation",
    unique_id: str | None = None,
    padding: int = 0,
    time: datetime = EVENT_TIME,
    backfill: bool = False,
) -> OutboxItem:
    """Outbox item `n`: one event of profile `email` (default: one profile per item)."""
    event = Event(
        metric=metric,
        unique_id=unique_id or f"intercom:conversation:{n}:replied:{int(time.timestamp())}",
        time=time + timedelta(seconds=n % 3600),
        identity=Identity(email=email or f"user{n}@example.com", contact_id=f"c{n}"),
        properties={"Conversation ID": str(n), "Title": "Where is my order?", "Notes": "x" * padding},
        backfill=backfill,
    )
    return OutboxItem(n, "demo", "event", event.unique_id, event_resource(event))


def profile_item(
    n: int, *, email: str | None = None, phone: str | None = None, padding: int = 0
) -> OutboxItem:
    """Outbox item `n`: one profile with the usual attributes and `padding` bytes of custom attributes."""
    profile = Profile(
        unique_id=f"intercom:contact:c{n}:0123456789abcdef",
        identity=Identity(email=email or f"user{n}@example.com", phone_number=phone, contact_id=f"c{n}"),
        first_name="Ada",
        last_name="Lovelace",
        image="https://static.example.com/avatars/ada.png",
        location={"city": "London", "country": "United Kingdom", "region": "England"},
        properties={"intercom_contact_role": "user", "intercom_custom_attributes": {"plan": "p" * padding}},
    )
    return OutboxItem(n, "demo", "profile", profile.unique_id, profile_resource(profile))


@contextmanager
def sandbox(clock: FakeClock, settings: KlaviyoSettings | None = None) -> Iterator[KlaviyoServer]:
    """A started fake Klaviyo on the fake clock, stopped afterwards."""
    with KlaviyoServer(settings, clock=clock) as server:
        yield server


@contextmanager
def client_for(
    server: KlaviyoServer, clock: FakeClock, api_key: str = SANDBOX_API_KEY
) -> Iterator[KlaviyoClient]:
    """A KlaviyoClient of `server` whose sleeps move the shared fake clock; closed afterwards."""
    client = KlaviyoClient(
        server.url, api_key, api_key_env="KLAVIYO_API_KEY", sleep=clock.sleep, clock=clock, poll_interval=1.0
    )
    try:
        yield client
    finally:
        client.close()


def fewest_event_requests(items: list[OutboxItem]) -> int:
    """A lower bound on requests: the count limit, and the bytes of the events alone against the byte limit."""
    sizes = [len(encode(i.payload["attributes"]["events"]["data"][0])) + 1 for i in items]
    return max(math.ceil(len(items) / MAX_EVENTS_PER_REQUEST), math.ceil(sum(sizes) / MAX_REQUEST_BYTES))


def fewest_import_jobs(items: list[OutboxItem]) -> int:
    """A lower bound on import jobs: the count limit, and the bytes of the profiles against the byte limit."""
    total = sum(len(encode(i.payload)) + 1 for i in items)
    return max(math.ceil(len(items) / MAX_PROFILES_PER_JOB), math.ceil(total / MAX_REQUEST_BYTES))


def assert_requests_match_the_spec(klaviyo: KlaviyoServer) -> None:
    """Every POST the fake received is within the byte limit and valid against the spec's request schema."""
    for received in klaviyo.received:
        if received.method == "POST":
            schema = (
                "EventsBulkCreateJob" if received.path.startswith(EVENTS) else "ProfileImportJobCreateQuery"
            )
            assert len(received.body) <= MAX_REQUEST_BYTES
            assert schema_errors("requests", schema, received.json()) == [], received.path
