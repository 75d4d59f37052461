"""Frozen values passed between the layers: config → intercom → snapshots → events/profiles → outbox → klaviyo.

Pure: no I/O imports. Datetimes are always timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, overload

STREAMS = ("contacts", "conversations", "tickets")
RunMode = Literal["incremental", "backfill", "dry-run"]
UtcOffset = Literal["Z", "+00:00"]  # how iso_z spells UTC
Timespec = Literal["auto", "seconds"]  # the datetime.isoformat precisions iso_z writes


@dataclass(frozen=True)
class Window:
    """The `[since, until)` range of `updated_at` one run reads for a stream."""

    stream: str
    since: datetime
    until: datetime


@dataclass(frozen=True)
class Page:
    """One search response, already filtered exactly to the window on our side."""

    stream: str
    objects: tuple[Mapping[str, Any], ...]  # raw Intercom JSON objects
    total_count: int | None = None
    number: int = 1  # 1-based page number within the window
    malformed: tuple[tuple[str | None, str], ...] = ()  # (id or None, why) of results that could not be used


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
    # property keys sent before and empty now: Klaviyo removes them (`meta.patch_properties.unset`)
    unset: tuple[str, ...] = ()


@overload
def iso_z(moment: datetime, *, offset: UtcOffset = "Z", timespec: Timespec = "auto") -> str: ...
@overload
def iso_z(moment: None, *, offset: UtcOffset = "Z", timespec: Timespec = "auto") -> None: ...
@overload
def iso_z(moment: datetime | None, *, offset: UtcOffset = "Z", timespec: Timespec = "auto") -> str | None: ...
def iso_z(moment: datetime | None, *, offset: UtcOffset = "Z", timespec: Timespec = "auto") -> str | None:
    """A moment in UTC as ISO 8601, None as None; the one spelling of moments in everything we write.

    - `2026-03-01T12:00:00Z` (the defaults): the run history, the CLI, the windows, jobs.yaml;
    - `offset="+00:00"`: event properties such as `Snoozed Until` (docs/design.md §4.2);
    - `offset="+00:00", timespec="seconds"`: an event's `time` in a Klaviyo payload (no fraction).
    `timespec="auto"` adds microseconds only when there are some, as `datetime.isoformat` does.
    """
    if moment is None:
        return None
    text = moment.astimezone(UTC).isoformat(timespec=timespec)
    return text.replace("+00:00", "Z") if offset == "Z" else text


ItemKind = Literal["event", "profile"]


@dataclass(frozen=True)
class OutboxEntry:
    """One item inference hands to the outbox: what it is, its deterministic key, and its payload."""

    kind: ItemKind
    unique_id: str
    payload: Mapping[str, Any]  # the Klaviyo resource object exactly as the bulk request carries it
    requeue: bool = False  # send again even if this unique_id was sent before (content went back to it)


@dataclass(frozen=True)
class OutboxItem:
    """One row of the outbox as the delivery step sees it."""

    id: int
    job: str
    kind: ItemKind
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
    metrics_file: str | None = None  # Prometheus text file (node_exporter's textfile collector)
    pushgateway: str | None = None  # Pushgateway URL the metrics are pushed to

    @property
    def backfill(self) -> bool:
        return self.since is not None

    @property
    def mode(self) -> RunMode:
        return "dry-run" if self.dry_run else "backfill" if self.backfill else "incremental"


@dataclass
class ApiCounts:
    """Requests one API client made during a run (its stats at the end)."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0  # 429s waited out

    @classmethod
    def of(cls, stats: Any) -> ApiCounts:
        """A copy of an API client's running stats (etl.http.ClientStats)."""
        return cls(stats.calls, stats.retries, stats.throttled)

    def __sub__(self, other: ApiCounts) -> ApiCounts:
        return ApiCounts(
            self.calls - other.calls, self.retries - other.retries, self.throttled - other.throttled
        )


@dataclass
class DeliveryCounts:
    """Outbox items Klaviyo accepted or rejected during a run."""

    profiles_sent: int = 0
    profiles_failed: int = 0
    events_sent: int = 0
    events_failed: int = 0

    def add(self, kind: ItemKind, sent: int, failed: int) -> None:
        setattr(self, f"{kind}s_sent", getattr(self, f"{kind}s_sent") + sent)
        setattr(self, f"{kind}s_failed", getattr(self, f"{kind}s_failed") + failed)

    @property
    def failed(self) -> int:
        return self.profiles_failed + self.events_failed


@dataclass
class RunReport:
    """Counts of one run; mutable while the run goes, frozen into the runs table at the end.

    Per stream: open-ended keys (`objects`, `events:<metric>`, `skipped:<reason>`, …), since inference names
    its own skips and drops. The run's own figures are typed fields beside them.
    """

    job: str
    mode: RunMode
    streams: dict[str, dict[str, int]] = field(default_factory=dict)
    delivery: DeliveryCounts = field(default_factory=DeliveryCounts)
    api: dict[str, ApiCounts] = field(default_factory=dict)  # "intercom" / "klaviyo"
    duration_ms: int = 0

    def add(self, stream: str, key: str, n: int = 1) -> None:
        bucket = self.streams.setdefault(stream, {})
        bucket[key] = bucket.get(key, 0) + n

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """The report as the run history stores it: streams, then `_delivery`, `_api` and `_run`."""
        out: dict[str, dict[str, int]] = {s: dict(c) for s, c in self.streams.items()}
        delivered = {k: v for k, v in vars(self.delivery).items() if v}
        if delivered:
            out["_delivery"] = delivered
        if self.api:
            out["_api"] = {
                f"{name}_{key}": n
                for name, c in self.api.items()
                for key, n in (("calls", c.calls), ("retries", c.retries), ("429s", c.throttled))
            }
        out["_run"] = {"duration_ms": self.duration_ms}
        return out
