"""docs/design.md §7 when the state database goes away: PostgreSQL stopped while a run reads or delivers, a
database unreachable at start or behind on migrations, an SQLite file another process holds locked. Each is
one line on stderr and exit 5, nothing half-written; the next run, the database back, delivers exactly what is
missing. The outages use a PostgreSQL cluster of the test's own (`tests.pg.cluster`), never the shared one."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from etl.schema import LOCKED_ADVICE, UNREACHABLE_ADVICE
from etl.state import StateStore
from tests.crash_fixtures import cli, expire_leases, migrated, outbox_left, reference
from tests.pg import Cluster, cluster, fresh_database
from tests.run_fixtures import klaviyo_content, sandboxes, write_config

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    try:
        with cluster() as server:
            yield server
    except RuntimeError as exc:  # no binaries: CI must fail, a laptop may skip
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL binaries unavailable ({exc})")
        pytest.skip(f"PostgreSQL binaries unavailable ({exc})")


# What the driver says when the server goes away mid-run depends on what the connection was doing when the
# shutdown reached it: idle (the server's goodbye is read), mid-read (the socket closed under it), or checked
# out afresh after the stop (the reconnect refused). Each is the same outage, and the line says so either way.
SERVER_GONE = (
    "terminating connection due to administrator command",
    "consuming input failed: server closed the connection unexpectedly",
    "server closed the connection unexpectedly",
)


def stop_at(server: Cluster, wanted: tuple[str, str, str], nth: int) -> object:
    """A sandbox hook that stops PostgreSQL when the nth request matching (stage, method, path) arrives."""
    seen = [0]

    def on_request(stage: str, method: str, path: str) -> bool:
        if (stage, method, path.split("?")[0]) == wanted:
            seen[0] += 1
            if seen[0] == nth:
                server.stop()
        return False

    return on_request


@pytest.mark.parametrize(
    ("phase", "server", "wanted", "nth"),
    [
        ("reading", "intercom", ("received", "POST", "/conversations/search"), 3),
        ("delivering", "klaviyo", ("answering", "POST", "/api/event-bulk-create-jobs"), 1),
    ],
)
def test_postgres_stopped_mid_run_exits_5_and_the_next_run_delivers_what_is_missing(
    own_cluster: Cluster, tmp_path: Path, phase: str, server: str, wanted: tuple[str, str, str], nth: int
) -> None:
    """PostgreSQL stopped while the run pages conversations (contacts committed), or after Klaviyo accepted the
    events and before they are marked sent: exit 5 with one line saying what to do; the database back (and the
    dead run's lease expired), one run delivers exactly what an uninterrupted run does, nothing pending."""
    expected = reference(own_cluster.url, tmp_path, False)
    with fresh_database(own_cluster.url) as url, sandboxes() as boxes:
        migrated(url)
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        hooked = boxes.intercom.server if server == "intercom" else boxes.klaviyo
        hooked.on_request = stop_at(own_cluster, wanted, nth)  # type: ignore[assignment]
        proc = cli(config, "run")
        _, stderr = proc.communicate(timeout=120)
        hooked.on_request = None
        assert proc.returncode == 5, stderr
        error = stderr.strip().splitlines()[-1]
        head, tail = f"etl: error: job shop: state database {url} failed: ", f": {UNREACHABLE_ADVICE}"
        assert error.startswith(head) and error.endswith(tail), error
        reason = error[len(head) : -len(tail)]
        refused = f'connection failed: connection to server at "127.0.0.1", port {own_cluster.port} failed: Connection refused'
        assert reason in (*SERVER_GONE, refused), error
        assert "Traceback" not in stderr
        own_cluster.start()
        expire_leases(url)
        rerun = cli(config, "run")
        _, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
        assert klaviyo_content(boxes.klaviyo) == expected
        assert outbox_left(url) == 0


def test_a_database_unreachable_at_start_exits_5_saying_what_to_do(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    """The configured server is down when the run starts: one line, exit 5, no Klaviyo request."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{own_cluster.port}/postgres"
    own_cluster.stop()
    with sandboxes() as boxes:
        proc = cli(write_config(tmp_path / "jobs.yaml", url, boxes.job()), "run")
        _, stderr = proc.communicate(timeout=120)
        assert boxes.klaviyo.received == [] and boxes.intercom.server.requests == []
    assert proc.returncode == 5, stderr
    assert stderr.strip().splitlines() == [
        f"etl: error: cannot reach state database {url}: connection failed: connection to server at "
        f'"127.0.0.1", port {own_cluster.port} failed: Connection refused: {UNREACHABLE_ADVICE}'
    ]


def test_a_database_behind_on_migrations_exits_5_saying_to_upgrade(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    with fresh_database(own_cluster.url) as url, sandboxes() as boxes:
        proc = cli(write_config(tmp_path / "jobs.yaml", url, boxes.job()), "run")
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    head = StateStore(url).head_revision()  # the newest revision this etl knows
    assert stderr.strip().splitlines()[-1] == (
        f"etl: error: state database {url} is at revision none (empty), this etl needs {head}: run `etl db upgrade`"
    )


def test_a_locked_sqlite_file_exits_5_saying_what_to_do(tmp_path: Path) -> None:
    """Another process holds an exclusive lock on the SQLite file for longer than the busy timeout (30 s):
    one line, exit 5, and the run writes nothing; once the lock is gone the next run succeeds."""
    url = f"sqlite:///{tmp_path}/state.db"
    migrated(url)
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        proc = cli(config, "run")
        _, stderr = proc.communicate(timeout=120)
        holder.execute("ROLLBACK")
        holder.close()
        assert proc.returncode == 5, stderr
        assert stderr.strip().splitlines()[-1] == (
            f"etl: error: job shop: state database {url} failed: database is locked: {LOCKED_ADVICE}"
        )
        assert boxes.klaviyo.received == []
        rerun = cli(config, "run")
        _, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
