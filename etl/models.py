"""Frozen values passed between the layers: config → intercom → snapshots → events/profiles → outbox → klaviyo.

Pure: no I/O imports. Datetimes are always timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

STREAMS = ("contacts", "conversations", "tickets")
Stream = Literal["contacts", "conversations", "tickets"]
RunMode = Literal["incremental", "backfill", "dry-run"]


@dataclass(frozen=True)
class Window:
    """The `[since, until)` range of `updated_at` one run reads for a stream."""

    stream: str
    since: datetime
    until: datetime

    def contains(self, moment: datetime) -> bool:
        return self.since <= moment < self.until


@dataclass(frozen=True)
class Page:
    """One search response, already filtered exactly to the window on our side."""

    stream: str
    objects: tuple[Mapping[str, Any], ...]  # raw Intercom JSON objects
    total_count: int | None = None
    number: int = 1  # 1-based page number within the window


@dataclass(frozen=True)
class Snapshot:
    """The normalized, last-seen tracked fields of one object."""

    stream: str
    object_id: str
    updated_at: datetime
    digest: str  # stable hash of `data`; equal digests mean nothing to infer
    data: Mapping[str, Any]  # JSON-serialisable


@dataclass(frozen=True)
class Identity:
    """Who a Klaviyo event or profile belongs to: at least one of email / phone_number is set."""

    email: str | None = None
    phone_number: str | None = None  # E.164
    contact_id: str | None = None  # Intercom contact id (sent as profile property intercom_contact_id)


@dataclass(frozen=True)
class Admin:
    """An Intercom teammate as `GET /admins` lists it; events name the assignee with it."""

    name: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class Event:
    """One Klaviyo event: metric name, profile identifiers, properties, time, unique_id."""

    metric: str
    unique_id: str
    time: datetime
    identity: Identity
    properties: Mapping[str, Any]  # JSON-ready, limits already applied
    backfill: bool = False


@dataclass(frozen=True)
class Profile:
    """One Klaviyo profile upsert built from an Intercom contact."""

    unique_id: str  # outbox key, e.g. intercom:contact:{id}:{digest[:16]}
    identity: Identity
    first_name: str | None = None
    last_name: str | None = None
    image: str | None = None
    location: Mapping[str, str] = field(default_factory=dict)  # city / country / region
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxItem:
    """One row of the outbox as the delivery step sees it."""

    id: int
    job: str
    kind: Literal["event", "profile"]
    unique_id: str
    payload: Mapping[str, Any]  # the Klaviyo resource object exactly as the bulk request carries it
    attempts: int = 0


@dataclass(frozen=True)
class RunOptions:
    """What `etl run` was asked to do, beyond which jobs."""

    dry_run: bool = False
    output: str | None = None  # dry-run NDJSON file; None = stdout
    since: datetime | None = None  # backfill window [since, until)
    until: datetime | None = None
    replay: bool = False
    streams: tuple[str, ...] | None = None
    metrics_file: str | None = None

    @property
    def backfill(self) -> bool:
        return self.since is not None


@dataclass
class RunReport:
    """Counts of one run, per stream; mutable while the run goes, frozen into the runs table at the end."""

    job: str
    mode: RunMode
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, stream: str, key: str, n: int = 1) -> None:
        bucket = self.counts.setdefault(stream, {})
        bucket[key] = bucket.get(key, 0) + n
