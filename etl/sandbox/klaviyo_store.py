"""What the fake Klaviyo holds and how it judges bulk requests: deduped events, profiles, import jobs.

Which invalid input fails what (the sandbox's reading of Klaviyo's documented behaviour):
- the whole request fails with 400 and one error per problem, each with a `source.pointer` naming the item:
  a body that breaks the spec's schema; too many items; for events, a profile without an identifier, an
  invalid email or phone number, a metric name of 128+ characters, a time before 1990 or over a year
  ahead, more than 400 properties, a string over 100 KB, and a (profile, metric, unique_id) repeated
  inside the request (spec: "the request will fail and no events will be processed"); for profile
  imports, a profile without an identifier and an invalid email address;
- a profile import is accepted (202 with a job id) and the profile is reported in the job's
  `import-errors` while the rest is imported: a phone number that is not a valid E.164 number (checked
  with `phonenumbers`), and a profile whose resource is over 100 KB. As in the field, such an error points
  only at `/data` (the spec's default `source.pointer`) and names the profile through `original_payload`
  (its attributes as sent); `settings.import_errors` switches to pointers that name the entry, or to
  errors that name no profile at all (`original_payload` null, which the spec allows);
- poison items (`settings.poison_events`: unique_ids; `settings.poison_profiles`: emails, phone numbers
  or external_ids): a request that carries one fails with a 400 whose only error names no item, as
  Klaviyo's do for input it refuses without saying where; the same item alone fails the same way.
A profile import merges like Klaviyo's: top-level property keys merge into what the profile holds, a key's
value (an object too) is replaced whole, null and absent keys change nothing, and the keys named in
`meta.patch_properties.unset` are removed. Events are deduplicated like Klaviyo does: the first event of a
(profile, metric, unique_id) wins and later ones are accepted and ignored; without a unique_id the time
(to the second) is the key. A profile is identified by its email (lower-cased), else its phone number, else
its external_id.
Import jobs are applied when submitted and report `queued`, then `processing`, then `complete` as the
injected clock passes `queued_seconds` and `processing_seconds`.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import phonenumbers

from etl.sandbox.klaviyo_metrics import MetricBook
from etl.sandbox.klaviyo_schema import problems

MAX_METRIC_NAME = 127  # "Must be less than 128 characters" (spec, MetricCreateQueryResourceObject.name)
MAX_EVENT_PROPERTIES = 400  # "must not exceed 400 properties" (spec, event attributes.properties)
MAX_STRING_BYTES = 100_000  # "A single string cannot exceed 100KB" (spec, bulk create events), decimal
EARLIEST_EVENT = datetime(1990, 1, 1, tzinfo=UTC)  # "The time must be after the year 1990" (spec)
IDENTIFIERS = ("id", "email", "phone_number", "external_id", "anonymous_id", "_kx")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_EVENTS = "/data/attributes/events-bulk-create/data"
_PROFILES = "/data/attributes/profiles/data"


@dataclass
class KlaviyoSettings:
    """The fake's limits and timings; tests shrink them. Defaults are Klaviyo's documented values."""

    api_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)  # key -> scopes; see server
    burst_per_second: int = 10  # spec x-klaviyo-ratelimit of both bulk endpoints: burst 10/s
    steady_per_minute: int = 150  # ... steady 150/m
    max_events: int = 1_000  # "Accepts up to 1,000 events per request" (spec)
    max_profiles: int = 10_000  # "Accepts up to 10,000 profiles per request" (spec)
    max_request_bytes: int = 5_000_000  # "5MB", enforced at the stricter decimal reading
    max_profile_bytes: int = 100_000  # "100KB" per profile, decimal likewise
    queued_seconds: float = 0.5  # an import job reads `queued` this long after submission
    processing_seconds: float = 1.0  # ... then `processing` this long, then `complete`
    storm_retry_after: int = 1  # Retry-After of the 429s that `faults.storm_requests` injects
    aggregates_per_second: int = 3  # spec x-klaviyo-ratelimit of query_metric_aggregates: burst 3/s
    aggregates_per_minute: int = 60  # ... steady 60/m
    # how `import-errors` name their profile: "data" (pointer `/data`, the profile in `original_payload`: the
    # spec's default and example pointer, and what connectors in the field match on, e.g. RudderStack's
    # Klaviyo bulk upload reads only `original_payload`), "item" (a pointer into the request's entries),
    # "none" (`/data` and a null `original_payload`, which the spec allows)
    import_errors: Literal["data", "item", "none"] = "data"
    poison_events: frozenset[str] = frozenset()  # unique_ids whose request fails with a 400 naming no item
    poison_profiles: frozenset[str] = frozenset()  # emails / phone numbers / external_ids, likewise


@dataclass(frozen=True)
class StoredEvent:
    """One event Klaviyo kept after deduplication."""

    profile: str  # the profile key: its email, else phone number, else external_id
    metric: str
    unique_id: str
    time: str
    properties: Mapping[str, Any]
    backfill: bool


@dataclass
class ImportJob:
    """One bulk profile import job and the import errors of its profiles."""

    id: str
    created_at: float
    total: int
    errors: list[dict[str, Any]]

    def status(self, now: float, settings: KlaviyoSettings) -> str:
        age = now - self.created_at
        if age < settings.queued_seconds:
            return "queued"
        if age < settings.queued_seconds + settings.processing_seconds:
            return "processing"
        return "complete"


def error(status: int, code: str, title: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    """One JSON:API error object in Klaviyo's shape (spec components.responses.ClientError)."""
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "status": status, "code": code, "title": title}
    body["detail"] = detail
    if pointer is not None:
        body["source"] = {"pointer": pointer}
    return body


def invalid(detail: str, pointer: str) -> dict[str, Any]:
    return error(400, "invalid", "Invalid input.", detail, pointer)


# the spec's example of an error that says what but not where (ImportErrorResponseObjectResource.detail)
POISON_DETAIL = "The payload provided in the request is invalid."


def profile_key(attributes: Mapping[str, Any]) -> str | None:
    email = attributes.get("email")
    if email:
        return str(email).strip().lower()
    return attributes.get("phone_number") or attributes.get("external_id") or attributes.get("id")


def _identifiers(attributes: Mapping[str, Any]) -> set[str]:
    email = attributes.get("email")
    found = {str(attributes[k]) for k in ("phone_number", "external_id") if attributes.get(k)}
    return found | ({str(email).strip().lower()} if email else set())


# parsing costs ~0.3 ms, and a profile's number comes again with each of its events
@functools.lru_cache(maxsize=16_384)
def _valid_phone(number: str) -> bool:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return number.startswith("+") and phonenumbers.is_valid_number(parsed)


def _identity_problems(attributes: Mapping[str, Any], pointer: str, *, phone: bool) -> list[dict[str, Any]]:
    if not any(attributes.get(name) for name in IDENTIFIERS):
        return [invalid("At least one profile identifier is required.", pointer)]
    found = []
    email = attributes.get("email")
    if email and not _EMAIL.match(str(email).strip()):
        found.append(invalid(f"Invalid email address: '{email}'.", f"{pointer}/email"))
    number = attributes.get("phone_number")
    if phone and number and not _valid_phone(str(number)):
        found.append(invalid(f"Invalid phone number format: '{number}'.", f"{pointer}/phone_number"))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _event_problems(event: Mapping[str, Any], pointer: str, now: float) -> list[dict[str, Any]]:
    attributes = event["attributes"]
    found = []
    name = attributes["metric"]["data"]["attributes"]["name"]
    if len(name) > MAX_METRIC_NAME:
        found.append(
            invalid("Metric name must be less than 128 characters.", f"{pointer}/metric/data/attributes/name")
        )
    moment = attributes.get("time")
    if moment is not None:
        try:
            parsed = datetime.fromisoformat(moment)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            latest = datetime.fromtimestamp(now, UTC) + timedelta(days=365)
            if not EARLIEST_EVENT < parsed <= latest:
                found.append(
                    invalid("Time must be after 1990 and at most one year ahead.", f"{pointer}/time")
                )
        except ValueError:
            found.append(invalid(f"Invalid datetime: '{moment}'.", f"{pointer}/time"))
    properties = attributes["properties"]
    if len(properties) > MAX_EVENT_PROPERTIES:
        found.append(invalid("An event may have at most 400 properties.", f"{pointer}/properties"))
    if any(len(text.encode()) > MAX_STRING_BYTES for text in _strings(properties)):
        found.append(invalid("A string in the event payload is larger than 100KB.", f"{pointer}/properties"))
    return found


def _unset(resource: Mapping[str, Any]) -> list[str]:
    """The property keys a profile resource removes: `meta.patch_properties.unset`, one key or a list (spec
    ProfileMetaPatchProperties). They are removed from the stored properties before the new ones are set."""
    patch = ((resource.get("meta") or {}).get("patch_properties") or {}).get("unset")
    if patch is None:
        return []
    return [patch] if isinstance(patch, str) else list(patch)


class KlaviyoStore:
    """Thread-safe state of the fake: deduped events, upserted profiles, import jobs."""

    def __init__(self, settings: KlaviyoSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.lock = threading.Lock()
        self._events: dict[tuple[str, str, str], StoredEvent] = {}
        self._profiles: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, ImportJob] = {}
        self.metrics = MetricBook(clock)  # API metrics come into being with their first event

    # -- read-back ---------------------------------------------------------------------------------
    @property
    def events(self) -> list[StoredEvent]:
        with self.lock:
            return list(self._events.values())

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {key: dict(value) for key, value in self._profiles.items()}

    def forget_events(self, unique_ids: Iterable[str]) -> int:
        """A test switch: drop the stored events with these unique_ids, as if Klaviyo had lost them; how many."""
        wanted = set(unique_ids)
        with self.lock:
            keys = [key for key in self._events if key[2] in wanted]
            for key in keys:
                del self._events[key]
        return len(keys)

    def job(self, job_id: str) -> ImportJob | None:
        with self.lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[ImportJob]:
        """Every import job, newest first."""
        with self.lock:
            return list(reversed(self._jobs.values()))

    # -- writes ------------------------------------------------------------------------------------
    def create_events(self, body: Any) -> list[dict[str, Any]]:
        """Record a bulk create body; the errors that fail the whole request (then nothing is recorded)."""
        found = [invalid(message, pointer) for pointer, message in problems(body, "EventsBulkCreateJob")]
        if found:
            return found
        groups = body["data"]["attributes"]["events-bulk-create"]["data"]
        count = sum(len(group["attributes"]["events"]["data"]) for group in groups)
        if count > self.settings.max_events:
            return [
                invalid(f"A maximum of {self.settings.max_events} events is allowed per request.", _EVENTS)
            ]
        now = self.clock()
        accepted: list[tuple[tuple[str, str, str], StoredEvent]] = []
        keys: set[tuple[str, str, str]] = set()
        poisoned = False
        for g, group in enumerate(groups):
            profile = group["attributes"]["profile"]["data"]["attributes"]
            pointer = f"{_EVENTS}/{g}/attributes/profile/data/attributes"
            found += _identity_problems(profile, pointer, phone=True)
            owner = profile_key(profile) or ""
            for e, event in enumerate(group["attributes"]["events"]["data"]):
                event_pointer = f"{_EVENTS}/{g}/attributes/events/data/{e}/attributes"
                found += _event_problems(event, event_pointer, now)
                attributes = event["attributes"]
                metric = attributes["metric"]["data"]["attributes"]["name"]
                moment = attributes.get("time") or datetime.fromtimestamp(now, UTC).isoformat()
                key = (owner, metric, attributes.get("unique_id") or moment[:19])
                if key in keys:
                    found.append(
                        invalid(
                            "Duplicate unique_id for the same profile and metric in one request.",
                            f"{event_pointer}/unique_id",
                        )
                    )
                keys.add(key)
                poisoned = poisoned or attributes.get("unique_id") in self.settings.poison_events
                backfill = attributes.get("backfill")
                if backfill is None:
                    backfill = bool(group["attributes"].get("backfill"))
                stored = StoredEvent(owner, metric, key[2], moment, attributes["properties"], bool(backfill))
                accepted.append((key, stored))
        if found:
            return found
        if poisoned:
            return [invalid(POISON_DETAIL, "/data/attributes/events-bulk-create")]
        with self.lock:
            for key, stored in accepted:
                self._events.setdefault(key, stored)
        self.metrics.record_events(dict.fromkeys(stored.metric for _, stored in accepted))
        return []

    def import_profiles(self, body: Any) -> tuple[ImportJob | None, list[dict[str, Any]]]:
        """Start an import job for a bulk import body; or the errors that fail the whole request."""
        found = [
            invalid(message, pointer) for pointer, message in problems(body, "ProfileImportJobCreateQuery")
        ]
        if found:
            return None, found
        resources = body["data"]["attributes"]["profiles"]["data"]
        if len(resources) > self.settings.max_profiles:
            return None, [
                invalid(
                    f"A maximum of {self.settings.max_profiles} profiles is allowed per request.", _PROFILES
                )
            ]
        for index, resource in enumerate(resources):
            found += _identity_problems(
                resource["attributes"], f"{_PROFILES}/{index}/attributes", phone=False
            )
        if found:
            return None, found
        poison = self.settings.poison_profiles
        if any(_identifiers(resource["attributes"]) & poison for resource in resources):
            return None, [invalid(POISON_DETAIL, "/data")]
        job_errors: list[dict[str, Any]] = []
        upserts: list[tuple[str, Mapping[str, Any], list[str]]] = []
        for index, resource in enumerate(resources):
            attributes = resource["attributes"]
            size = len(json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode())
            problem: dict[str, Any] | None = None
            if size > self.settings.max_profile_bytes:
                problem = invalid(
                    f"Profile payload is {size} bytes; the maximum is {self.settings.max_profile_bytes}.",
                    f"{_PROFILES}/{index}",
                )
            elif attributes.get("phone_number") and not _valid_phone(str(attributes["phone_number"])):
                problem = invalid(
                    f"Invalid phone number format: '{attributes['phone_number']}'.",
                    f"{_PROFILES}/{index}/attributes/phone_number",
                )
            if problem is None:
                upserts.append((profile_key(attributes) or "", attributes, _unset(resource)))
                continue
            problem.pop("status")
            problem["original_payload"] = dict(attributes)
            if self.settings.import_errors != "item":
                problem["source"] = {"pointer": "/data"}
            if self.settings.import_errors == "none":
                problem["original_payload"] = None
            job_errors.append(problem)
        with self.lock:
            for key, attributes, unset in upserts:
                current = self._profiles.setdefault(key, {})
                kept = {k: v for k, v in current.get("properties", {}).items() if k not in unset}
                # top-level property keys merge; a key's value (an object too) is replaced whole; bulk
                # import "does not support setting fields to null to clear them" (Bulk Import Profiles guide)
                given = attributes.get("properties") or {}
                merged_properties = {**kept, **{k: v for k, v in given.items() if v is not None}}
                current.update({k: v for k, v in attributes.items() if v is not None and k != "properties"})
                current.pop("properties", None)
                if merged_properties:
                    current["properties"] = merged_properties
            job = ImportJob(f"sbx{uuid.uuid4().hex[:23]}", self.clock(), len(resources), job_errors)
            self._jobs[job.id] = job
        return job, []
