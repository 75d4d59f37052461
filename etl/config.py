"""`jobs.yaml` + environment → frozen settings (docs/design.md §3.2).

Every problem in the file is collected and reported in ONE `ConfigError`, each with its path
(`jobs.intercom_to_klaviyo.lookback: expected a duration like 15m, got '15 mins'`). Unknown keys are errors so
that a typo is never silently ignored. Secrets are never read from the file: it names the environment
variables that hold them, and `secrets_for` reads those only for the commands that need them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import yaml

from etl.errors import ConfigError
from etl.events import EVENT_PROPERTY_KEYS, METRICS
from etl.http import DEFAULT_RETRY_BUDGET
from etl.intercom import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, MAX_PER_PAGE
from etl.limits import MAX_METRIC_NAME_LENGTH
from etl.models import STREAMS
from etl.profiles import PHONE_REGIONS, PROFILE_PROPERTY_KEYS
from etl.schema import redact_url

DEFAULT_DATABASE_URL = "sqlite:///etl-state.db"  # relative to the directory of jobs.yaml
ENV_DATABASE_URL = "ETL_DATABASE_URL"  # overrides database_url; db commands need no jobs.yaml with it
PROPERTY_KEYS = (*EVENT_PROPERTY_KEYS, *PROFILE_PROPERTY_KEYS)  # what property_names may rename
# docs/design.md §5: older versions answer merged contacts with 404 (not 410 + Link)
MIN_INTERCOM_VERSION = (2, 16)
# Intercom's "Unstable" version is where changes land before they are numbered (its docs: "everything within
# is subject to change"), so it is newer than every numbered version, 2.16 included: accepted.
UNSTABLE_INTERCOM_VERSION = "Unstable"
_VERSION = re.compile(r"^(\d+)\.(\d+)$")
MIN_RETRY_BUDGET = timedelta(seconds=10)  # less would give up inside one Intercom rate-limit window
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class IntercomSettings:
    base_url: str = "https://api.intercom.io"
    token_env: str = "INTERCOM_ACCESS_TOKEN"
    version: str = "2.16"
    per_page: int = MAX_PER_PAGE
    retry_budget: timedelta = DEFAULT_RETRY_BUDGET
    concurrency: int = DEFAULT_CONCURRENCY  # Intercom requests one run keeps in flight at most


# Items queued while pages are still being read that start a delivery round: enough for several full Klaviyo
# requests (1,000 events or 10,000 profiles each), so rounds don't spend the bulk endpoints' 150 requests a
# minute on part-filled batches. 0: deliver only after reading, as a run without overlap would.
DEFAULT_DELIVER_EVERY = 5_000


@dataclass(frozen=True)
class KlaviyoSettings:
    base_url: str = "https://a.klaviyo.com"
    api_key_env: str = "KLAVIYO_API_KEY"
    revision: str = "2026-07-15"
    retry_budget: timedelta = DEFAULT_RETRY_BUDGET
    deliver_every: int = DEFAULT_DELIVER_EVERY  # items queued while reading that start a delivery round


@dataclass(frozen=True)
class JobSettings:
    name: str
    intercom: IntercomSettings
    klaviyo: KlaviyoSettings
    streams: tuple[str, ...]
    start_date: datetime
    lookback: timedelta = timedelta(minutes=15)
    flow_trigger_max_age: timedelta = timedelta(hours=24)
    default_phone_region: str = "US"
    metric_names: Mapping[str, str] = field(default_factory=dict)
    property_names: Mapping[str, str] = field(default_factory=dict)
    lock_ttl: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Settings:
    database_url: str
    jobs: Mapping[str, JobSettings]
    path: Path | None = None

    def select(self, names: tuple[str, ...] | list[str]) -> list[JobSettings]:
        """The named jobs in the order given (all jobs in file order when none), or a ConfigError."""
        if not names:
            return list(self.jobs.values())
        unknown = [n for n in names if n not in self.jobs]
        if unknown:
            known = ", ".join(self.jobs) or "none"
            raise ConfigError(f"unknown job {', '.join(map(repr, unknown))}: jobs.yaml defines {known}")
        return [self.jobs[n] for n in names]


@dataclass(frozen=True)
class Secrets:
    intercom_token: str
    klaviyo_api_key: str


def parse_duration(text: str) -> timedelta:
    """`15m`, `24h`, `1h30m`, `90s`, `2d` → timedelta; ValueError otherwise."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not text.strip() or not any(match.groups()):
        raise ValueError(f"expected a duration like 15m, got {text!r}")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 timestamp or date (YAML may already have parsed it) → aware UTC datetime.

    A timestamp without an offset, or a bare date, is taken as UTC.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise ValueError(
                f"expected an ISO 8601 timestamp or date like 2026-01-01T00:00:00Z, got {value!r}"
            ) from None
    else:
        raise ValueError(f"expected an ISO 8601 timestamp or date, got {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as text, so `parse_timestamp` validates them with a path."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _Collector:
    """Collects problems with their paths while a file is read."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.unset: set[str] = set()  # paths whose ${VAR} was missing: reported once, not re-validated

    def add(self, path: str, message: str) -> None:
        if path in self.unset:
            return
        self.problems.append(f"{path}: {message}")

    def mapping(
        self, value: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.add(path, f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                hint = _closest(str(key), allowed)
                self.add(f"{path}.{key}", "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""))
        for key in required:
            if key not in value:
                self.add(f"{path}.{key}", "required")
        return value

    def convert(self, value: Any, path: str, convert: Callable[[Any], Any], default: Any) -> Any:
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.add(path, str(exc))
            return default


def _closest(key: str, allowed: tuple[str, ...]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, allowed, n=1, cutoff=0.7)
    return matches[0] if matches else None


def _expand(value: Any, path: str, environ: Mapping[str, str], out: _Collector) -> Any:
    """Expand `${VAR}` / `${VAR:-default}` in every string of the parsed document."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), environ, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", environ, out) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ and environ[name] != "":
            return environ[name]
        if default is not None:
            return default
        out.add(path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        out.unset.add(path)
        return ""

    return _ENV_REF.sub(substitute, value)


def _base_url(value: Any, path: str, out: _Collector) -> str:
    if not isinstance(value, str) or not value.strip():
        out.add(path, f"expected a URL like https://…, got {value!r}")
        return ""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        out.add(path, f"expected a URL like https://…, got {value!r}")
    elif parts.scheme == "http" and not is_loopback(parts.hostname):
        out.add(path, f"http:// is refused except for loopback hosts; use https:// (got {value!r})")
    return value.strip().rstrip("/")


def _string(value: Any, path: str, out: _Collector, pattern: re.Pattern[str] | None = None) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        out.add(path, f"expected a non-empty string, got {value!r}")
        return ""
    if pattern is not None and not pattern.match(value):
        out.add(path, f"expected an environment variable name like INTERCOM_ACCESS_TOKEN, got {value!r}")
    return value.strip()


def _intercom_version(value: Any, path: str, out: _Collector) -> str:
    """The Intercom-Version to send: "2.16" or later (compared as numbers: 2.9 < 2.16), or "Unstable"."""
    version = _string(value, path, out)
    if not version or version == UNSTABLE_INTERCOM_VERSION:
        return version
    match = _VERSION.match(version)
    if match is None:
        out.add(path, f'expected an Intercom API version like "2.16" or "Unstable", got {value!r}')
    elif (int(match.group(1)), int(match.group(2))) < MIN_INTERCOM_VERSION:
        # YAML reads an unquoted 2.10 as the number 2.1: say so, or the message names a version never written
        hint = (
            "" if isinstance(value, str) else ' (unquoted, YAML reads 2.10 as the number 2.1: write "2.10")'
        )
        out.add(
            path,
            f"Intercom API version {version} is too old: 2.16 or later is required (older versions answer "
            f"merged contacts with 404 and, before 2.12, send ticket_state as a bare string){hint}",
        )
    return version


def _names(value: Any, path: str, out: _Collector, allowed: tuple[str, ...] | None) -> dict[str, str]:
    table = out.mapping(value, path, allowed=tuple(value or {}) if isinstance(value, dict) else ())
    result: dict[str, str] = {}
    for key, name in table.items():
        if allowed is not None and key not in allowed:
            hint = _closest(str(key), allowed)
            out.add(
                f"{path}.{key}",
                f"unknown name (did you mean {hint!r}?)"
                if hint
                else f"unknown name; expected one of: {', '.join(allowed)}",
            )
        elif not isinstance(name, str) or not name.strip():
            out.add(f"{path}.{key}", f"expected a non-empty string, got {name!r}")
        else:
            result[str(key)] = name.strip()
    return result


def _metric_names(value: Any, path: str, out: _Collector) -> dict[str, str]:
    """`metric_names` overrides; a name Klaviyo would refuse is a problem now, not a failed run later."""
    names = _names(value, path, out, METRICS)
    for key, name in names.items():
        if len(name) > MAX_METRIC_NAME_LENGTH:
            out.add(
                f"{path}.{key}",
                f"{len(name)} characters; Klaviyo accepts metric names of at most {MAX_METRIC_NAME_LENGTH}",
            )
    return names


def _retry_budget(api: Mapping[str, Any], path: str, out: _Collector) -> timedelta:
    """How long one request to that API may keep failing before the run gives up (docs/design.md §5)."""
    if "retry_budget" not in api:
        return DEFAULT_RETRY_BUDGET
    budget = out.convert(api["retry_budget"], path, parse_duration, DEFAULT_RETRY_BUDGET)
    if budget < MIN_RETRY_BUDGET:
        out.add(path, f"must be at least {MIN_RETRY_BUDGET.seconds}s so a request can wait out a rate limit")
        return DEFAULT_RETRY_BUDGET
    return budget


def _job(name: str, raw: Any, out: _Collector) -> JobSettings | None:
    path = f"jobs.{name}"
    if not _JOB_NAME.match(name):
        out.add(path, "job names may use letters, digits, '_', '-' and '.'")
    body = out.mapping(
        raw,
        path,
        allowed=(
            "intercom",
            "klaviyo",
            "streams",
            "start_date",
            "lookback",
            "flow_trigger_max_age",
            "default_phone_region",
            "metric_names",
            "property_names",
            "lock_ttl",
        ),
        required=("intercom", "klaviyo", "start_date"),
    )
    ic = out.mapping(
        body.get("intercom"),
        f"{path}.intercom",
        ("base_url", "token_env", "version", "per_page", "retry_budget", "concurrency"),
    )
    kl = out.mapping(
        body.get("klaviyo"),
        f"{path}.klaviyo",
        ("base_url", "api_key_env", "revision", "retry_budget", "deliver_every"),
    )
    defaults_ic, defaults_kl = IntercomSettings(), KlaviyoSettings()
    per_page = ic.get("per_page", defaults_ic.per_page)
    if isinstance(per_page, bool) or not isinstance(per_page, int) or not 1 <= per_page <= MAX_PER_PAGE:
        out.add(
            f"{path}.intercom.per_page", f"expected a whole number from 1 to {MAX_PER_PAGE}, got {per_page!r}"
        )
        per_page = defaults_ic.per_page
    concurrency = ic.get("concurrency", defaults_ic.concurrency)
    if (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 1 <= concurrency <= MAX_CONCURRENCY
    ):
        out.add(
            f"{path}.intercom.concurrency",
            f"expected a whole number from 1 to {MAX_CONCURRENCY}, got {concurrency!r}",
        )
        concurrency = defaults_ic.concurrency
    deliver_every = kl.get("deliver_every", defaults_kl.deliver_every)
    if isinstance(deliver_every, bool) or not isinstance(deliver_every, int) or deliver_every < 0:
        out.add(
            f"{path}.klaviyo.deliver_every",
            f"expected a whole number of items, 0 or more (0: deliver after reading), got {deliver_every!r}",
        )
        deliver_every = defaults_kl.deliver_every
    intercom = IntercomSettings(
        base_url=_base_url(ic.get("base_url", defaults_ic.base_url), f"{path}.intercom.base_url", out),
        token_env=_string(
            ic.get("token_env", defaults_ic.token_env), f"{path}.intercom.token_env", out, _ENV_NAME
        ),
        version=_intercom_version(ic.get("version", defaults_ic.version), f"{path}.intercom.version", out),
        per_page=per_page,
        retry_budget=_retry_budget(ic, f"{path}.intercom.retry_budget", out),
        concurrency=concurrency,
    )
    klaviyo = KlaviyoSettings(
        base_url=_base_url(kl.get("base_url", defaults_kl.base_url), f"{path}.klaviyo.base_url", out),
        api_key_env=_string(
            kl.get("api_key_env", defaults_kl.api_key_env), f"{path}.klaviyo.api_key_env", out, _ENV_NAME
        ),
        revision=_string(kl.get("revision", defaults_kl.revision), f"{path}.klaviyo.revision", out),
        retry_budget=_retry_budget(kl, f"{path}.klaviyo.retry_budget", out),
        deliver_every=deliver_every,
    )
    streams_raw = body.get("streams", list(STREAMS))
    streams: tuple[str, ...] = STREAMS
    if not isinstance(streams_raw, list) or not streams_raw:
        out.add(f"{path}.streams", f"expected a non-empty list of {', '.join(STREAMS)}, got {streams_raw!r}")
    else:
        bad = [s for s in streams_raw if s not in STREAMS]
        if bad:
            out.add(f"{path}.streams", f"unknown stream {bad[0]!r}; expected some of: {', '.join(STREAMS)}")
        elif len(set(streams_raw)) != len(streams_raw):
            out.add(f"{path}.streams", "a stream is listed twice")
        else:
            streams = tuple(s for s in STREAMS if s in streams_raw)  # always read in flow order
    region = body.get("default_phone_region", "US")
    if not isinstance(region, str) or region.upper() not in PHONE_REGIONS:
        out.add(
            f"{path}.default_phone_region", f"expected a two-letter region code like US or DE, got {region!r}"
        )
        region = "US"
    start_date = None
    if "start_date" in body:
        start_date = out.convert(body["start_date"], f"{path}.start_date", parse_timestamp, None)
    job = JobSettings(
        name=name,
        intercom=intercom,
        klaviyo=klaviyo,
        streams=streams,
        start_date=start_date or datetime(1970, 1, 1, tzinfo=UTC),
        lookback=out.convert(body.get("lookback", "15m"), f"{path}.lookback", parse_duration, timedelta(0)),
        flow_trigger_max_age=out.convert(
            body.get("flow_trigger_max_age", "24h"),
            f"{path}.flow_trigger_max_age",
            parse_duration,
            timedelta(0),
        ),
        default_phone_region=region.upper(),
        metric_names=_metric_names(body.get("metric_names"), f"{path}.metric_names", out),
        property_names=_names(body.get("property_names"), f"{path}.property_names", out, PROPERTY_KEYS),
        lock_ttl=out.convert(body.get("lock_ttl", "10m"), f"{path}.lock_ttl", parse_duration, timedelta(0)),
    )
    if "lock_ttl" in body and job.lock_ttl < timedelta(seconds=30):
        out.add(f"{path}.lock_ttl", "must be at least 30s so a running job can renew its lease")
    return job


def parse_settings(text: str, environ: Mapping[str, str], path: Path | None = None) -> Settings:
    """Parse and validate the text of a jobs.yaml; every problem at once in one ConfigError."""
    where = str(path) if path else "jobs.yaml"
    try:
        document = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    out = _Collector()
    document = _expand(document, "", environ, out)
    top = out.mapping(document, "(top level)", ("database_url", "jobs"), required=("jobs",))
    if environ.get("ETL_DATABASE_URL"):
        database_url = _database_url(environ["ETL_DATABASE_URL"], ENV_DATABASE_URL, None, out)
    else:
        anchor = path.absolute().parent if path is not None else None
        database_url = _database_url(
            top.get("database_url") or DEFAULT_DATABASE_URL, "database_url", anchor, out
        )
    jobs: dict[str, JobSettings] = {}
    raw_jobs = top.get("jobs")
    if "jobs" in top and (not isinstance(raw_jobs, dict) or not raw_jobs):
        out.add("jobs", "expected a mapping of job names to jobs, with at least one job")
    elif isinstance(raw_jobs, dict):
        for name, raw in raw_jobs.items():
            job = _job(str(name), raw, out)
            if job is not None:
                jobs[str(name)] = job
    if out.problems:
        raise ConfigError(out.problems)
    return Settings(database_url=database_url, jobs=jobs, path=path)


def _database_url(value: Any, where: str, anchor: Path | None, out: _Collector) -> str:
    """The state database's URL, with a relative SQLite path made absolute against `anchor` (docs/design.md §3.2).

    Cron runs in $HOME and a shell wherever it stands: a path relative to the working directory would give
    each of them a database of its own, so a second run would start again from start_date and re-send
    everything. The directory of jobs.yaml is the one place they share (taken as named, not resolved: a
    Kubernetes ConfigMap mounts jobs.yaml through a symlink into a directory that changes on every update).
    A URL from ETL_DATABASE_URL has no such directory, so a relative SQLite path there is refused (`anchor`
    None) rather than left to the working directory. Without a file (`parse_settings` of a text) it stays.
    """
    example = "sqlite:///etl-state.db or postgresql+psycopg://user@host/dbname"
    if not isinstance(value, str) or "://" not in value:
        out.add(where, f"expected an SQLAlchemy URL like {example}, got {value!r}")
        return str(value)
    try:
        url = sa.make_url(value)
    except sa.exc.ArgumentError:
        out.add(where, f"expected an SQLAlchemy URL like {example}, got {redact_url(value)!r}")
        return value
    # the store speaks these two dialects only (its upserts are dialect-specific): anything else is a
    # configuration mistake (exit 2), not a database failure at the first connection (exit 5)
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        out.add(
            where, f"unsupported database {url.drivername}:// in {redact_url(value)!r}: expected {example}"
        )
        return value
    try:
        url.get_dialect().import_dbapi()
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        out.add(
            where,
            f"the driver of {url.drivername}:// is not installed ({exc}): expected {example}",
        )
        return value
    database = url.database
    if (
        url.get_backend_name() != "sqlite"
        or not database
        or database == ":memory:"
        or database.startswith("file:")
        or Path(database).is_absolute()
    ):
        return value
    if where == ENV_DATABASE_URL:
        out.add(
            where,
            f"{redact_url(value)} is a relative SQLite path, which would depend on the working directory; "
            "give an absolute one (four slashes: sqlite:////var/lib/etl/state.db) or set database_url in "
            "jobs.yaml, where a relative path is relative to jobs.yaml",
        )
        return value
    if anchor is None:
        return value
    return url.set(database=str(anchor / database)).render_as_string(hide_password=False)


def env_database_url(environ: Mapping[str, str]) -> str:
    """ETL_DATABASE_URL checked as jobs.yaml's database_url is (the db commands work without a jobs.yaml)."""
    out = _Collector()
    url = _database_url(environ[ENV_DATABASE_URL], ENV_DATABASE_URL, None, out)
    if out.problems:
        raise ConfigError(out.problems)
    return url


def config_path(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """`--config`, else `$ETL_CONFIG`, else `./jobs.yaml`."""
    return Path(explicit or environ.get("ETL_CONFIG") or "jobs.yaml")


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; pass --config PATH, set ETL_CONFIG, or run in the folder of jobs.yaml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({type(exc).__name__})") from None
    return parse_settings(text, environ, path)


def missing_secrets(job: JobSettings, environ: Mapping[str, str]) -> list[str]:
    """Names of the environment variables the job needs that are unset or empty."""
    names = (job.intercom.token_env, job.klaviyo.api_key_env)
    return [n for n in dict.fromkeys(names) if not environ.get(n, "").strip()]


def secrets_for(
    job: JobSettings, environ: Mapping[str, str] | None = None, *, klaviyo: bool = True
) -> Secrets:
    """Read the job's secrets from the environment, or a ConfigError naming every missing variable."""
    environ = os.environ if environ is None else environ
    missing = missing_secrets(job, environ)
    if not klaviyo:
        missing = [n for n in missing if n == job.intercom.token_env]
    if missing:
        raise ConfigError(
            [
                f"jobs.{job.name}: environment variable {n} is not set (it must hold the "
                f"{'Intercom access token' if n == job.intercom.token_env else 'Klaviyo private API key'})"
                for n in missing
            ]
        )
    return Secrets(
        intercom_token=environ.get(job.intercom.token_env, "").strip(),
        klaviyo_api_key=environ.get(job.klaviyo.api_key_env, "").strip(),
    )
