"""jobs.yaml validation: a good file, each kind of mistake, many mistakes at once, env expansion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from etl.config import (
    PROPERTY_KEYS,
    load_settings,
    parse_duration,
    parse_settings,
    parse_timestamp,
    secrets_for,
)
from etl.errors import ConfigError
from etl.http import SPARE_CONNECTIONS
from etl.intercom import DEFAULT_CONCURRENCY
from etl.runner import build_services

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
database_url: sqlite:///state.db
jobs:
  shop:
    intercom: {base_url: https://api.eu.intercom.io, token_env: IC_TOKEN, per_page: 50}
    klaviyo: {api_key_env: KL_KEY}
    streams: [tickets, contacts]
    start_date: 2026-01-01
    lookback: 1h30m
    metric_names: {Created Ticket: Ticket Opened}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_settings(text, env or {})
    assert exc.value.exit_code == 2
    return exc.value.problems


def test_example_jobs_yaml_is_valid() -> None:
    """The shipped jobs.yaml parses into the documented defaults."""
    settings = load_settings(ROOT / "jobs.yaml", {})
    job = settings.jobs["intercom_to_klaviyo"]
    assert settings.database_url == f"sqlite:///{ROOT}/etl-state.db"  # beside jobs.yaml, wherever we stand
    assert job.streams == ("contacts", "conversations", "tickets")
    assert job.lookback == timedelta(minutes=15) and job.flow_trigger_max_age == timedelta(hours=24)
    assert job.start_date == datetime(2026, 1, 1, tzinfo=UTC)
    assert job.intercom.token_env == "INTERCOM_ACCESS_TOKEN" and job.intercom.version == "2.16"
    assert job.klaviyo.revision == "2026-07-15" and job.lock_ttl == timedelta(minutes=10)


def test_good_file_with_overrides() -> None:
    """Values given override defaults; streams come back in flow order."""
    job = parse_settings(GOOD, {}).jobs["shop"]
    assert job.streams == ("contacts", "tickets")
    assert job.intercom.per_page == 50 and job.intercom.base_url == "https://api.eu.intercom.io"
    assert job.lookback == timedelta(hours=1, minutes=30)
    assert job.metric_names == {"Created Ticket": "Ticket Opened"}


def test_env_expansion_with_defaults_and_override_of_database_url() -> None:
    """${VAR} and ${VAR:-default} expand; ETL_DATABASE_URL wins over the file."""
    text = GOOD.replace("https://api.eu.intercom.io", '"${IC_URL:-https://api.au.intercom.io}"').replace(
        "lookback: 1h30m", "lookback: ${LOOKBACK}"
    )
    s = parse_settings(text, {"LOOKBACK": "5m", "ETL_DATABASE_URL": "postgresql+psycopg://db/etl"})
    assert s.jobs["shop"].intercom.base_url == "https://api.au.intercom.io"
    assert s.jobs["shop"].lookback == timedelta(minutes=5)
    assert s.database_url == "postgresql+psycopg://db/etl"


@pytest.mark.parametrize(
    ("database_url", "expected"),
    [
        ("sqlite:///state.db", "sqlite:///{conf}/state.db"),
        ("sqlite:///data/state.db?timeout=5", "sqlite:///{conf}/data/state.db?timeout=5"),
        ("sqlite+pysqlite:///state.db", "sqlite+pysqlite:///{conf}/state.db"),
        ("sqlite:////var/lib/etl/state.db", "sqlite:////var/lib/etl/state.db"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+psycopg://u:pw@db/etl", "postgresql+psycopg://u:pw@db/etl"),
    ],
)
def test_a_relative_sqlite_path_is_relative_to_jobs_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str, expected: str
) -> None:
    """Wherever etl is started (cron: $HOME), a relative SQLite path names the file beside jobs.yaml."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "jobs.yaml").write_text(GOOD.replace("sqlite:///state.db", f"'{database_url}'"))
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("conf/jobs.yaml"), {})
    assert settings.database_url == expected.format(conf=conf)


def test_a_relative_sqlite_path_in_etl_database_url_is_refused() -> None:
    """ETL_DATABASE_URL has no jobs.yaml to be relative to: a relative SQLite path there is exit 2, not the cwd."""
    assert problems(GOOD, {"ETL_DATABASE_URL": "sqlite:///state.db"}) == [
        "ETL_DATABASE_URL: sqlite:///state.db is a relative SQLite path, which would depend on the working "
        "directory; give an absolute one (four slashes: sqlite:////var/lib/etl/state.db) or set database_url "
        "in jobs.yaml, where a relative path is relative to jobs.yaml"
    ]
    absolute = parse_settings(GOOD, {"ETL_DATABASE_URL": "sqlite:////srv/etl/state.db"})
    assert absolute.database_url == "sqlite:////srv/etl/state.db"


def test_unset_env_var_is_reported_with_its_path() -> None:
    """A ${VAR} without a default and without a value names the variable and the key."""
    assert problems(GOOD.replace("1h30m", "${LOOKBACK}")) == [
        "jobs.shop.lookback: environment variable LOOKBACK is not set (use ${LOOKBACK:-default} for a default)"
    ]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "lookback: 1h30m",
            "lookback: 15 mins",
            "jobs.shop.lookback: expected a duration like 15m, got '15 mins'",
        ),
        (
            "per_page: 50",
            "per_page: 151",
            "jobs.shop.intercom.per_page: expected a whole number from 1 to 150, got 151",
        ),
        (
            "https://api.eu.intercom.io",
            "http://api.eu.intercom.io",
            "jobs.shop.intercom.base_url: http:// is refused except for loopback hosts; use https:// "
            "(got 'http://api.eu.intercom.io')",
        ),
        (
            "[tickets, contacts]",
            "[tickets, chats]",
            "jobs.shop.streams: unknown stream 'chats'; expected some of: contacts, conversations, tickets",
        ),
        (
            "start_date: 2026-01-01",
            "start_date: soon",
            "jobs.shop.start_date: expected an ISO 8601 timestamp or date like 2026-01-01T00:00:00Z, got 'soon'",
        ),
        ("lookback: 1h30m", "lookbak: 1h", "jobs.shop.lookbak: unknown key (did you mean 'lookback'?)"),
        (
            "{Created Ticket: Ticket Opened}",
            "{Created Tickets: X}",
            "jobs.shop.metric_names.Created Tickets: unknown name (did you mean 'Created Ticket'?)",
        ),
        (
            "{Created Ticket: Ticket Opened}",
            "{Opened: X}",
            "jobs.shop.metric_names.Opened: unknown name; expected one of: Created Conversation, "
            "Rated Conversation, Read Conversation, Replied to Conversation, Created Ticket, Submitted Ticket, "
            "Replied to Ticket, Marked Ticket as Waiting on Customer, Resolved Ticket",
        ),
        (
            "metric_names: {Created Ticket: Ticket Opened}",
            "property_names: {Ticket Id: id}",
            "jobs.shop.property_names.Ticket Id: unknown name (did you mean 'Ticket ID'?)",
        ),
        (
            "metric_names: {Created Ticket: Ticket Opened}",
            "property_names: {Colour: id}",
            "jobs.shop.property_names.Colour: unknown name; expected one of: " + ", ".join(PROPERTY_KEYS),
        ),
        (
            "token_env: IC_TOKEN",
            "token_env: ic token",
            "jobs.shop.intercom.token_env: expected an environment variable name like INTERCOM_ACCESS_TOKEN, "
            "got 'ic token'",
        ),
    ],
)
def test_each_kind_of_mistake(old: str, new: str, expected: str) -> None:
    """Each mistake is reported with its path and what was expected."""
    assert old in GOOD
    assert problems(GOOD.replace(old, new)) == [expected]


def test_loopback_http_is_allowed() -> None:
    """http:// is fine for the sandbox on 127.0.0.1 and localhost."""
    text = GOOD.replace("https://api.eu.intercom.io", "http://127.0.0.1:8701")
    assert parse_settings(text, {}).jobs["shop"].intercom.base_url == "http://127.0.0.1:8701"


def test_five_mistakes_are_reported_in_one_error() -> None:
    """Five mistakes give one ConfigError listing all five."""
    text = (
        GOOD.replace("1h30m", "15 mins")
        .replace("per_page: 50", "per_page: 0")
        .replace("[tickets, contacts]", "[]")
        .replace("start_date: 2026-01-01", "start_date: 2026-13-01")
        .replace("klaviyo: {api_key_env: KL_KEY}", "klaviyo: {api_key_env: KL_KEY, revison: x}")
    )
    found = problems(text)
    assert len(found) == 5
    with pytest.raises(ConfigError, match=r"^5 problems: "):
        parse_settings(text, {})


def test_missing_top_level_pieces() -> None:
    """A file without jobs, or with a job lacking required keys, says what is required."""
    assert problems("database_url: sqlite:///x.db\n") == ["(top level).jobs: required"]
    assert problems("jobs:\n  shop: {}\n") == [
        "jobs.shop.intercom: required",
        "jobs.shop.klaviyo: required",
        "jobs.shop.start_date: required",
    ]


def test_invalid_yaml_is_one_line() -> None:
    """Broken YAML names the position."""
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3, column 1"):
        parse_settings("jobs:\n  shop: [\n", {})


def test_missing_secrets_name_the_variables() -> None:
    """secrets_for names every unset variable and returns the values when set."""
    job = parse_settings(GOOD, {}).jobs["shop"]
    with pytest.raises(ConfigError) as exc:
        secrets_for(job, {"IC_TOKEN": "t"})
    assert "KL_KEY is not set" in str(exc.value) and "IC_TOKEN" not in str(exc.value)
    secrets = secrets_for(job, {"IC_TOKEN": "t", "KL_KEY": "k"})
    assert (secrets.intercom_token, secrets.klaviyo_api_key) == ("t", "k")


def test_parsers() -> None:
    """Durations and timestamps parse to exact values; naive timestamps are UTC."""
    assert parse_duration("2d") == timedelta(days=2) and parse_duration("90s") == timedelta(seconds=90)
    with pytest.raises(ValueError):
        parse_duration("")
    assert parse_timestamp("2026-03-01T10:00:00+02:00") == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_timestamp("2026-03-01") == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_timestamp("2026-03-01T10:00:00Z") == datetime(2026, 3, 1, 10, tzinfo=UTC)


TOO_OLD = (
    "jobs.shop.intercom.version: Intercom API version {} is too old: 2.16 or later is required (older versions "
    "answer merged contacts with 404 and, before 2.12, send ticket_state as a bare string)"
)


@pytest.mark.parametrize("version", ['"2.15"', '"2.9"', '"2.1"', '"1.4"'])
def test_an_intercom_version_older_than_2_16_is_refused(version: str) -> None:
    """Versions compare as numbers (2.9 < 2.16), and any below 2.16 is one problem line with the reason."""
    text = GOOD.replace("per_page: 50", f"per_page: 50, version: {version}")
    assert problems(text) == [TOO_OLD.format(version.strip('"'))]


def test_an_unquoted_version_yaml_turned_into_a_number_says_so() -> None:
    """`version: 2.10` unquoted is the number 2.1 to YAML: the message shows it and how to write it."""
    text = GOOD.replace("per_page: 50", "per_page: 50, version: 2.10")
    assert problems(text) == [
        TOO_OLD.format("2.1") + ' (unquoted, YAML reads 2.10 as the number 2.1: write "2.10")'
    ]


@pytest.mark.parametrize("version", ['"2.16"', "2.16", '"2.17"', '"2.100"', '"3.0"', '"Unstable"'])
def test_intercom_version_2_16_and_later_and_unstable_are_accepted(version: str) -> None:
    """2.16, every later numbered version and Intercom's Unstable (ahead of all of them) are sent as written."""
    text = GOOD.replace("per_page: 50", f"per_page: 50, version: {version}")
    assert parse_settings(text, {}).jobs["shop"].intercom.version == version.strip('"')


@pytest.mark.parametrize("version", ['"v2.16"', '"unstable"', '"2"', '"latest"'])
def test_a_version_that_is_no_intercom_version_is_refused(version: str) -> None:
    """Anything but MAJOR.MINOR or Unstable is named with what was expected."""
    text = GOOD.replace("per_page: 50", f"per_page: 50, version: {version}")
    assert problems(text) == [
        f'jobs.shop.intercom.version: expected an Intercom API version like "2.16" or "Unstable", '
        f"got '{version.strip(chr(34))}'"
    ]


def test_retry_budget_per_api_defaults_to_10m_is_validated_and_reaches_the_clients() -> None:
    """intercom.retry_budget / klaviyo.retry_budget: 10m unless set, a duration of at least 10s, used by the run."""
    default = parse_settings(GOOD, {}).jobs["shop"]
    assert default.intercom.retry_budget == default.klaviyo.retry_budget == timedelta(minutes=10)
    text = GOOD.replace("per_page: 50}", "per_page: 50, retry_budget: 30m}").replace(
        "{api_key_env: KL_KEY}", "{api_key_env: KL_KEY, retry_budget: 1h}"
    )
    job = parse_settings(text, {}).jobs["shop"]
    assert (job.intercom.retry_budget, job.klaviyo.retry_budget) == (
        timedelta(minutes=30),
        timedelta(hours=1),
    )
    services = build_services(
        job, None, dry_run=False, environ={"IC_TOKEN": "ic-budget-test-token", "KL_KEY": "pk_budget_test_key"}
    )
    try:
        assert services.klaviyo is not None
        assert services.intercom.http.retry_budget == timedelta(minutes=30)
        assert services.klaviyo.http.retry_budget == timedelta(hours=1)
    finally:
        services.close()
    bad = GOOD.replace("per_page: 50}", "per_page: 50, retry_budget: 5s}").replace(
        "{api_key_env: KL_KEY}", "{api_key_env: KL_KEY, retry_budget: forever}"
    )
    assert problems(bad) == [
        "jobs.shop.intercom.retry_budget: must be at least 10s so a request can wait out a rate limit",
        "jobs.shop.klaviyo.retry_budget: expected a duration like 15m, got 'forever'",
    ]


def test_intercom_concurrency_is_1_to_16_default_4_and_reaches_the_runs_client() -> None:
    """`intercom.concurrency` bounds the Intercom requests a run keeps in flight: default 4, a whole number
    from 1 to 16; `etl run` builds its client with it, and a connection pool a little larger."""
    assert parse_settings(GOOD, {}).jobs["shop"].intercom.concurrency == DEFAULT_CONCURRENCY == 4
    job = parse_settings(GOOD.replace("per_page: 50}", "per_page: 50, concurrency: 7}"), {}).jobs["shop"]
    services = build_services(job, None, dry_run=True, environ={"IC_TOKEN": "ic-concurrency-test-token"})
    try:
        http = services.intercom.http
        assert (job.intercom.concurrency, services.intercom.concurrency, http.concurrency) == (7, 7, 7)
        adapter: Any = http.session.get_adapter(job.intercom.base_url)
        assert adapter._pool_maxsize == 7 + SPARE_CONNECTIONS
    finally:
        services.close()
    for bad in ("0", "17", "true", "2.5"):
        assert problems(GOOD.replace("per_page: 50}", f"per_page: 50, concurrency: {bad}}}")) == [
            f"jobs.shop.intercom.concurrency: expected a whole number from 1 to 16, got {bad.replace('true', 'True')}"
        ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "postgres://db/etl",  # Heroku's spelling; SQLAlchemy knows only postgresql://
            "database_url: unsupported database postgres:// in 'postgres://db/etl': expected "
            "sqlite:///etl-state.db or postgresql+psycopg://user@host/dbname",
        ),
        (
            "postgresql+nodriver://u:secret@db/etl",
            "database_url: the driver of postgresql+nodriver:// is not installed (Can't load plugin: "
            "sqlalchemy.dialects:postgresql.nodriver): expected sqlite:///etl-state.db or "
            "postgresql+psycopg://user@host/dbname",
        ),
    ],
)
def test_a_database_url_the_store_cannot_use_is_a_configuration_error(url: str, problem: str) -> None:
    """Exit 2 naming what is expected, not exit 5 at the first connection; never the password."""
    assert problems(GOOD.replace("sqlite:///state.db", url)) == [problem]


def test_a_metric_name_klaviyo_would_refuse_is_a_problem() -> None:
    """Klaviyo: a metric name "Must be less than 128 characters": 127 passes, 128 is reported with its path."""
    text = GOOD.replace("Ticket Opened", "T" * 127)
    assert parse_settings(text, {}).jobs["shop"].metric_names == {"Created Ticket": "T" * 127}
    assert problems(GOOD.replace("Ticket Opened", "T" * 128)) == [
        "jobs.shop.metric_names.Created Ticket: 128 characters; Klaviyo accepts metric names of at most 127"
    ]
