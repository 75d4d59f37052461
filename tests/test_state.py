"""The state store on SQLite and PostgreSQL: migrations, watermarks, snapshots, outbox, runs, locks."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError

from etl.errors import LockHeld, StateError
from etl.models import OutboxEntry, Snapshot
from etl.state import MAX_IDS_PER_STATEMENT, SQLITE_ROWS_PER_INSERT, StateStore, metadata, outbox

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_migrations_upgrade_from_empty_to_head(db_url: str) -> None:
    """An empty database upgrades to the head revision and reports it."""
    s = StateStore(db_url)
    assert s.current_revision() is None
    before, after = s.upgrade()
    assert (before, after) == (None, s.head_revision())
    s.close()


def test_models_and_migrations_agree(store: StateStore) -> None:
    """Alembic autogenerate finds no difference between the tables and the migrated schema."""
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_upgrade_from_0001_keeps_the_outbox_and_records_delivering_runs(db_url: str) -> None:
    """A database at 0001 with a sent and a pending item upgrades to head (0002): both stay as they were, the
    sent one with no delivering run (it is not known); from then on mark_delivered records the run that sent
    or failed an item; and the downgrade back to 0001 keeps the rows."""
    s = StateStore(db_url)
    command.upgrade(s.alembic_config(), "0001")
    columns = ("job", "kind", "unique_id", "payload", "status", "attempts", "created_at", "sent_at", "run_id")
    with s.transaction() as conn:  # the 0001 columns only: an INSERT names just the values given
        for uid, status in (("u-sent", "sent"), ("u-pending", "pending"), ("u-bad", "pending")):
            sent_at = T0 if status == "sent" else None
            conn.execute(
                sa.insert(outbox).values(
                    dict(zip(columns, ("shop", "event", uid, {}, status, 1, T0, sent_at, 1), strict=True))
                )
            )
    assert s.upgrade() == ("0001", "0002")

    def state() -> dict[str, tuple[str, int | None, int | None]]:
        with s.transaction() as conn:
            rows = conn.execute(
                sa.select(outbox.c.unique_id, outbox.c.status, outbox.c.run_id, outbox.c.delivery_run_id)
            )
            return {r.unique_id: (r.status, r.run_id, r.delivery_run_id) for r in rows}

    assert state() == {
        "u-sent": ("sent", 1, None),
        "u-pending": ("pending", 1, None),
        "u-bad": ("pending", 1, None),
    }
    ids = {i.unique_id: i.id for i in s.pending("shop", "event", limit=10)}
    s.mark_delivered([ids["u-pending"]], {ids["u-bad"]: "invalid email"}, T0, run_id=7)
    assert state() == {"u-sent": ("sent", 1, None), "u-pending": ("sent", 1, 7), "u-bad": ("failed", 1, 7)}
    command.downgrade(s.alembic_config(), "0001")
    assert s.current_revision() == "0001"
    with s.transaction() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one() == 3
    s.close()


def test_ensure_schema_upgrades_sqlite_but_asks_postgres_to_migrate(db_url: str) -> None:
    """A database that is behind is upgraded on SQLite and refused with a one-line hint on PostgreSQL."""
    s = StateStore(db_url)
    if s.dialect == "sqlite":
        s.ensure_schema()
        assert s.current_revision() == s.head_revision()
    else:
        with pytest.raises(StateError, match=r"run `etl db upgrade`$"):
            s.ensure_schema()
    s.close()


def test_watermark_never_moves_backwards_unless_forced(store: StateStore) -> None:
    """set_watermark keeps the maximum; force moves it back by hand."""
    assert store.set_watermark("j", "contacts", T0, T0)
    assert not store.set_watermark("j", "contacts", T0 - timedelta(hours=1), T0)
    assert store.watermarks("j") == {"contacts": T0}
    assert store.set_watermark("j", "contacts", T0 - timedelta(hours=1), T0, force=True)
    assert store.watermarks("j")["contacts"] == T0 - timedelta(hours=1)
    assert store.watermarks("j")["contacts"].tzinfo is not None


def test_snapshots_roundtrip_and_upsert(store: StateStore) -> None:
    """Snapshots are stored, loaded by id in one query, and replaced on upsert."""
    a = Snapshot("conversations", "1", T0, "d1", {"read": False, "tags": ["x"]})
    b = Snapshot("conversations", "2", T0, "d2", {"read": True})
    with store.transaction() as conn:
        store.save_snapshots(conn, "j", [a, b])
    with store.transaction() as conn:
        store.save_snapshots(
            conn, "j", [Snapshot("conversations", "1", T0 + timedelta(1), "d3", {"read": True})]
        )
        loaded = store.load_snapshots(conn, "j", "conversations", ["1", "2", "3"])
    assert set(loaded) == {"1", "2"}
    assert loaded["1"].digest == "d3" and loaded["1"].data == {"read": True}
    assert loaded["1"].updated_at == T0 + timedelta(1)
    assert store.snapshot_counts("j") == {"conversations": 2}


def test_an_older_snapshot_never_replaces_a_newer_one(store: StateStore) -> None:
    """Saving a snapshot older than the stored one keeps the stored one (concurrent backfill slices)."""
    newer = Snapshot("tickets", "7", T0 + timedelta(hours=1), "new", {"v": 2})
    with store.transaction() as conn:
        store.save_snapshots(conn, "j", [newer])
        store.save_snapshots(conn, "j", [Snapshot("tickets", "7", T0, "old", {"v": 1})])
        assert store.load_snapshots(conn, "j", "tickets", ["7"])["7"].digest == "new"


def test_outbox_dedupes_by_unique_id_and_tracks_status(store: StateStore) -> None:
    """Enqueueing the same unique_id twice keeps one row; sent/failed/retry move it through its states."""
    with store.transaction() as conn:
        n = store.enqueue(
            conn, "j", [OutboxEntry("event", "u1", {"a": 1}), OutboxEntry("event", "u2", {"a": 2})], None, T0
        )
        again = store.enqueue(
            conn,
            "j",
            [OutboxEntry("event", "u1", {"a": 9}), OutboxEntry("profile", "u1", {"p": 1})],
            None,
            T0,
        )
    assert (n, again) == ({"event": 2}, {"profile": 1})
    items = store.pending("j", "event", limit=10)
    assert [i.unique_id for i in items] == ["u1", "u2"] and items[0].payload == {"a": 1}
    store.mark_delivered([items[0].id], {items[1].id: "invalid email"}, T0)
    assert store.outbox_counts("j") == {"sent": 1, "failed": 1, "pending": 1}
    failed = store.outbox_items("j", "failed", 10)
    assert failed[0]["last_error"] == "invalid email" and failed[0]["attempts"] == 1
    assert store.retry_failed("j") == 1
    assert [i.unique_id for i in store.pending("j", "event", limit=10)] == ["u2"]


def test_pending_pages_in_id_order(store: StateStore) -> None:
    """pending() returns bounded chunks in queue order, continuing after the last id."""
    with store.transaction() as conn:
        store.enqueue(conn, "j", [OutboxEntry("event", f"u{i}", {"i": i}) for i in range(5)], None, T0)
    first = store.pending("j", "event", limit=2)
    rest = store.pending("j", "event", limit=10, after_id=first[-1].id)
    assert [i.payload["i"] for i in first + rest] == [0, 1, 2, 3, 4]


# -- id lists: one statement binds at most MAX_IDS_PER_STATEMENT of them -----------------------------------
MANY = 3 * MAX_IDS_PER_STATEMENT + 100  # several statements' worth


@contextmanager
def largest_statement(store: StateStore) -> Iterator[list[int]]:
    """Collects the number of parameters each single (not executemany) statement binds while inside."""
    bound: list[int] = []

    def record(_conn: Any, _cursor: Any, _sql: str, parameters: Any, _context: Any, many: bool) -> None:
        if not many:
            bound.append(len(parameters))

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield bound
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)


def test_load_snapshots_binds_a_long_id_list_in_bounded_statements(store: StateStore) -> None:
    """1,600 ids (1,200 stored, repeats among them) load exactly the stored snapshots, 500 ids a statement."""
    saved = [Snapshot("contacts", f"c{i}", T0, f"d{i}", {"i": i}) for i in range(1_200)]
    with store.transaction() as conn:
        store.save_snapshots(conn, "j", saved)
        store.save_snapshots(conn, "other", [Snapshot("contacts", "c0", T0, "x", {})])
    with largest_statement(store) as bound, store.transaction() as conn:
        loaded = store.load_snapshots(conn, "j", "contacts", [f"c{i}" for i in range(MANY)] + ["c1", "c2"])
    assert loaded == {s.object_id: s for s in saved}
    assert len(bound) == 4 and max(bound) <= MAX_IDS_PER_STATEMENT + 2  # + job and stream


def test_known_unique_ids_binds_a_long_key_list_in_bounded_statements(store: StateStore) -> None:
    """1,605 keys of two kinds find exactly the items queued, whatever their status, 500 ids a statement."""
    with store.transaction() as conn:
        store.enqueue(conn, "j", [OutboxEntry("event", f"e{i}", {}) for i in range(1_200)], None, T0)
        store.enqueue(conn, "j", [OutboxEntry("profile", "p1", {})], None, T0)
    store.mark_delivered([store.pending("j", "event", limit=1)[0].id], {}, T0)
    keys = [("event", f"e{i}") for i in range(MANY)] + [("profile", f"p{i}") for i in range(5)]
    with largest_statement(store) as bound:
        known = store.known_unique_ids("j", keys)
    assert known == {("event", f"e{i}") for i in range(1_200)} | {("profile", "p1")}
    assert len(bound) == 5 and max(bound) <= MAX_IDS_PER_STATEMENT + 2  # + job and kind


def test_mark_delivered_binds_a_long_id_list_in_bounded_statements(store: StateStore) -> None:
    """1,600 ids marked sent (1,200 of them queued, one failed beside them) mark exactly those."""
    with store.transaction() as conn:
        store.enqueue(conn, "j", [OutboxEntry("event", f"e{i}", {}) for i in range(1_201)], None, T0)
    *queued, rejected = store.pending("j", "event", limit=1_201)
    absent = [rejected.id + 1 + n for n in range(MANY - 1_200)]  # ids no row has
    with largest_statement(store) as bound:
        store.mark_delivered([i.id for i in queued] + absent, {rejected.id: "bad"}, T0)
    assert store.outbox_counts("j") == {"sent": 1_200, "failed": 1}
    assert (
        max(bound) <= MAX_IDS_PER_STATEMENT + 5
    )  # + the values set (status, sent_at, attempts, last_error, run)


def test_an_sqlite_build_binding_999_parameters_reads_and_marks_long_id_lists(tmp_path: Path) -> None:
    """On SQLite built before 3.32 (at most 999 parameters a statement), 1,600-id lists still work."""
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    # this machine's SQLite binds 250,000 parameters: lower that on each connection to an old build's, and
    # batch multi-row inserts the way SQLAlchemy does on such a build (it reads the version, not the limit)
    sa.event.listen(
        store.engine,
        "connect",
        lambda conn, _record: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999),
    )
    store.engine.dialect.insertmanyvalues_max_parameters = 999
    store.upgrade()
    saved = [Snapshot("contacts", f"c{i}", T0, "d", {}) for i in range(0, MANY, 7)]
    with store.transaction() as conn:
        store.save_snapshots(conn, "j", saved)
        store.enqueue(conn, "j", [OutboxEntry("event", s.object_id, {}) for s in saved], None, T0)
        loaded = store.load_snapshots(conn, "j", "contacts", [f"c{i}" for i in range(MANY)])
    known = store.known_unique_ids("j", [("event", f"c{i}") for i in range(MANY)])
    store.mark_delivered(
        [i.id for i in store.pending("j", "event", limit=MANY)] + list(range(10**6, 10**6 + MANY)), {}, T0
    )
    counts = store.outbox_counts("j")
    store.close()
    assert sorted(loaded) == sorted(s.object_id for s in saved)
    assert known == {("event", s.object_id) for s in saved}
    assert counts == {"sent": len(saved)}


def test_runs_are_recorded(store: StateStore) -> None:
    """A run is started, updated with counts and listed newest first."""
    r1 = store.start_run("j", "incremental", {"contacts": ["a", "b"]}, T0)
    r2 = store.start_run("j", "backfill", None, T0)
    store.update_run(r1, status="succeeded", finished_at=T0, counts={"contacts": {"objects": 3}})
    rows = store.runs("j", 10)
    assert [r.id for r in rows] == [r2, r1]
    assert rows[1].counts == {"contacts": {"objects": 3}} and rows[1].status == "succeeded"
    assert store.last_run("j", "incremental", "succeeded").id == r1


def test_lock_is_exclusive_until_it_expires(store: StateStore) -> None:
    """A second owner is refused while the lease lives and takes it over once it expired."""
    ttl = timedelta(minutes=10)
    store.acquire_lock("j", "a", ttl, T0)
    with pytest.raises(LockHeld, match="already running") as exc:
        store.acquire_lock("j", "b", ttl, T0 + timedelta(minutes=5))
    assert exc.value.exit_code == 75
    store.renew_lock("j", "a", ttl, T0 + timedelta(minutes=5))
    with pytest.raises(LockHeld):
        store.acquire_lock("j", "b", ttl, T0 + timedelta(minutes=14))
    store.acquire_lock("j", "b", ttl, T0 + timedelta(minutes=16))
    with pytest.raises(LockHeld, match="lost its lease"):
        store.renew_lock("j", "a", ttl, T0 + timedelta(minutes=16))
    store.release_lock("j", "b")
    assert store.lock_holder("j") is None


def test_leases_list_the_job_and_its_backfill_slices(store: StateStore) -> None:
    """leases() shows the job's lease and its backfill slices', not another job's whose name shares a prefix."""
    ttl = timedelta(minutes=10)
    store.acquire_lock("j", "cron", ttl, T0)
    store.acquire_lock("j:backfill:2026-01-01T00:00:00Z/2026-02-01T00:00:00Z/tickets", "pod-0", ttl, T0)
    store.acquire_lock("j_other", "cron", ttl, T0)
    assert [(name, owner) for name, owner, _ in store.leases("j")] == [
        ("j", "cron"),
        ("j:backfill:2026-01-01T00:00:00Z/2026-02-01T00:00:00Z/tickets", "pod-0"),
    ]


def test_unreachable_database_is_a_state_error() -> None:
    """A database that cannot be reached is a StateError (exit 5) without the password."""
    s = StateStore("postgresql+psycopg://etl:s3cret@127.0.0.1:1/etl")
    with pytest.raises(StateError) as exc:
        s.current_revision()
    assert exc.value.exit_code == 5 and "s3cret" not in str(exc.value)


def test_prune_deletes_only_old_sent_items(store: StateStore) -> None:
    """prune_sent removes items delivered before the cut-off and keeps newer, pending and failed ones."""
    with store.transaction() as conn:
        store.enqueue(conn, "j", [OutboxEntry("event", f"u{i}", {"i": i}) for i in range(4)], None, T0)
        store.enqueue(conn, "other", [OutboxEntry("event", "u0", {"i": 0})], None, T0)
    u0, u1, u2, _ = store.pending("j", "event", limit=10)
    store.mark_delivered([u0.id], {u2.id: "rejected"}, T0)  # sent long ago, and a failed one
    store.mark_delivered([u1.id], {}, T0 + timedelta(days=40))  # sent recently
    (other,) = store.pending("other", "event", limit=10)
    store.mark_delivered([other.id], {}, T0)
    assert store.prune_sent("j", T0 + timedelta(days=10)) == 1
    left = {i["unique_id"]: i["status"] for i in store.outbox_items("j", None, 10)}
    assert left == {"u1": "sent", "u2": "failed", "u3": "pending"}
    assert store.outbox_counts("other") == {"sent": 1}  # another job's items are untouched


def test_a_version_table_with_two_revisions_is_alembics_own_error(store: StateStore) -> None:
    """The revision is read with one query; several rows (branches) still end in Alembic's error, as before."""
    with store.transaction() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    with pytest.raises(CommandError, match="more than one head"):
        store.current_revision()


def test_mark_delivered_fails_items_one_statement_per_error_text(store: StateStore) -> None:
    """1,203 rejected items with three error texts (one longer than the 2,000 characters kept) are marked
    failed with their own text in one statement per text and 500 ids, not one statement per item."""
    with store.transaction() as conn:
        store.enqueue(conn, "j", [OutboxEntry("event", f"e{i}", {}) for i in range(1_204)], None, T0)
    items = store.pending("j", "event", limit=1_204)
    long = "x" * 2_500
    texts = {item.id: ("bad email", "bad phone", long)[n % 3] for n, item in enumerate(items[1:])}
    with largest_statement(store) as bound:
        store.mark_delivered([items[0].id], texts, T0, run_id=9)
    # sent: 1; failed: 401 per text, so ceil(401 / 500) = 1 statement each
    assert len(bound) == 1 + 3 and max(bound) <= MAX_IDS_PER_STATEMENT + 5
    with store.transaction() as conn:
        rows = conn.execute(sa.select(outbox.c.id, outbox.c.status, outbox.c.last_error, outbox.c.attempts,
                                      outbox.c.delivery_run_id)).all()  # fmt: skip
    got = {r.id: (r.status, r.last_error, r.attempts, r.delivery_run_id) for r in rows}
    expected = {i: ("failed", t[:2_000], 1, 9) for i, t in texts.items()} | {
        items[0].id: ("sent", None, 1, 9)
    }
    assert got == expected


def test_pending_takes_what_fits_a_byte_budget_and_always_one_item(store: StateStore) -> None:
    """Paging 40 items of about 100 to 3,000 bytes with a 5,000-byte budget gives each item once, in order,
    in chunks whose payloads fit the budget (measured here from the payloads themselves), except a chunk of
    one item alone larger than the budget; the item limit still applies."""
    sizes = [100 + (i * 977) % 2_900 for i in range(40)] + [9_000] + [200] * 3
    with store.transaction() as conn:
        entries = [OutboxEntry("event", f"u{i}", {"i": i, "pad": "x" * n}) for i, n in enumerate(sizes)]
        store.enqueue(conn, "j", entries, None, T0)
        store.enqueue(conn, "j", [OutboxEntry("profile", "p", {"pad": "x" * 10})], None, T0)
    budget, slack = 5_000, 40  # slack: the JSON around "pad" (and jsonb's spaces) in each stored payload
    chunks: list[list[int]] = []
    after = 0
    while items := store.pending("j", "event", limit=12, after_id=after, max_bytes=budget):
        chunks.append([item.payload["i"] for item in items])
        after = items[-1].id
    assert [i for chunk in chunks for i in chunk] == list(range(len(sizes)))
    for chunk, following in zip(chunks, [*chunks[1:], []], strict=True):
        held = sum(sizes[i] for i in chunk)
        assert len(chunk) <= 12
        assert held <= budget or len(chunk) == 1
        if following and len(chunk) < 12:  # stopped by the budget: the next item would not have fitted
            assert held + sizes[following[0]] + slack * (len(chunk) + 1) > budget
    assert [len(c) for c in chunks if len(c) == 1 and sizes[c[0]] > budget] == [1]  # the 9,000-byte item
    assert store.pending("j", "event", limit=5, after_id=after, max_bytes=budget) == []


def test_a_long_enqueue_is_sent_in_bounded_inserts_and_queues_each_item_once(store: StateStore) -> None:
    """260 entries in one call (25 repeats among them, 40 already queued) queue exactly the new ones, with
    each payload the call's last for its id; on SQLite no INSERT carries more than SQLITE_ROWS_PER_INSERT rows
    (each distinct row count is a prepared statement Python's sqlite3 keeps, ~1 KB per row)."""
    with store.transaction() as conn:
        store.enqueue(conn, "j", [OutboxEntry("event", f"e{i}", {"old": i}) for i in range(40)], None, T0)
    entries = [OutboxEntry("event", f"e{i}", {"n": i}) for i in range(235)]
    entries += [OutboxEntry("event", f"e{i}", {"n": i, "again": True}) for i in range(100, 125)]
    expected = {f"e{i}": {"old": i} for i in range(40)}
    for entry in entries:  # the outbox keeps an item queued before; of one call's repeats, the last
        if entry.unique_id not in expected or "old" not in expected[entry.unique_id]:
            expected[entry.unique_id] = dict(entry.payload)
    rows_per_insert: list[int] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.lstrip().upper().startswith("INSERT INTO OUTBOX"):
            rows_per_insert.append(sql.count("), (") + 1)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        with store.transaction() as conn:
            queued = store.enqueue(conn, "j", entries, None, T0)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert queued == {"event": 235 - 40}
    items = store.pending("j", "event", limit=1_000)
    assert {i.unique_id: i.payload for i in items} == expected
    if store.dialect == "sqlite":
        assert sum(rows_per_insert) == 235  # every distinct entry offered once (the 40 queued are ignored)
        assert max(rows_per_insert) <= SQLITE_ROWS_PER_INSERT < 235
