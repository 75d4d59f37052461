"""Shared fixtures: state databases on SQLite and PostgreSQL; the `etl` logger put back after every test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import requests

from etl import logs
from etl.sandbox.klaviyo_server import KlaviyoServer
from etl.state import StateStore
from tests.klaviyo_fixtures import FakeClock, sandbox
from tests.pg import fresh_database, throwaway_server


@pytest.fixture(autouse=True)
def restore_etl_logger() -> Iterator[None]:
    """The CLI points the `etl` logger at its stderr, in JSON or text: whatever a test configured must not
    decide the format of the next test's lines (`logs.json_mode` reads the handler)."""
    logger = logging.getLogger(logs.LOGGER_NAME)
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


class _PoolOverflow(logging.Handler):
    """Collects urllib3's "Connection pool is full, discarding connection" lines."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "pool is full" in record.getMessage():
            self.lines.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_connection_pool_overflow() -> Iterator[None]:
    """A test in which more threads share a client than its connection pool keeps fails: urllib3 only logs
    the overflow (a log line, not a warning `filterwarnings = error` would catch) and opens a new connection
    for every request past the pool's size."""
    handler = _PoolOverflow()
    logger = logging.getLogger("urllib3.connectionpool")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    assert handler.lines == [], handler.lines[:3]


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin URL of a PostgreSQL server: ETL_TEST_POSTGRES_URL, else a throwaway local server."""
    url = os.environ.get("ETL_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_server())
        except Exception as exc:  # no binaries, no permission: CI must fail, a laptop may skip
            message = f"PostgreSQL unavailable ({exc}); set ETL_TEST_POSTGRES_URL"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty state database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
        return
    admin = request.getfixturevalue("pg_admin_url")
    with fresh_database(admin) as url:
        yield url


@pytest.fixture
def store(db_url: str) -> Iterator[StateStore]:
    """A migrated state store on each database."""
    s = StateStore(db_url)
    s.upgrade()
    yield s
    s.close()


# -- the fake Klaviyo on loopback, on an injected clock (tests/test_klaviyo_*.py) ------------------------
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def klaviyo(clock: FakeClock) -> Iterator[KlaviyoServer]:
    with sandbox(clock) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session
