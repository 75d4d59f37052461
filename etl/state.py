"""The state store: watermarks, snapshots, outbox, runs and locks. The only code that queries the state
database (docs/design.md §3.3); its tables are in `etl.tables`, its migrations in `etl.schema`.

SQLite by default, PostgreSQL in production; every statement here runs on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from etl import codec
from etl.errors import LockHeld, StateError
from etl.models import OutboxEntry, OutboxItem, Snapshot
from etl.schema import Migrations, describe_error, redact_url
from etl.tables import locks, metadata, outbox, runs, snapshots, watermarks

# Ids bound in one IN (...) list. A statement may bind at most 32,766 parameters on SQLite (999 before 3.32)
# and 65,535 on PostgreSQL, so a longer list is read or written in several statements.
MAX_IDS_PER_STATEMENT = 500
# Rows per multi-row INSERT on SQLite. SQLAlchemy sends a many-row insert with RETURNING (the outbox) as
# INSERT ... VALUES (...), (...) of up to `insertmanyvalues_page_size` rows (default 1,000), one SQL text per
# row count, and Python's sqlite3 keeps the last 128 texts of each connection prepared: ~1 KB of SQLite
# memory per row, so 1,000-row texts held up to ~128 MB per connection, filling up as a first sync met more
# distinct page sizes (measured: SQLite's own memory 28 MB after a 10k first sync; at 100k the process's
# malloc'd bytes grew to 152 MB). At 100 rows there are at most 100 such texts, ~100 KB each.
SQLITE_ROWS_PER_INSERT = 100
T = TypeVar("T")

__all__ = [
    "RunRow",
    "StateStore",
    "locks",
    "metadata",
    "outbox",
    "redact_url",
    "runs",
    "snapshots",
    "watermarks",
]


@dataclass(frozen=True)
class RunRow:
    id: int
    job: str
    mode: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    window: Any
    counts: Any
    error: str | None


class StateStore(Migrations):
    """Watermarks, snapshots, outbox, runs and locks of every job in one database."""

    def __init__(self, url: str, *, engine: Engine | None = None, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        try:
            if engine is None:
                engine = _engine(url, read_only)
        except (sa.exc.ArgumentError, ImportError, sa.exc.NoSuchModuleError) as exc:
            raise StateError(f"cannot use database {redact_url(url)}: {describe_error(exc)}") from None
        self.engine = engine
        self.dialect = engine.dialect.name

    def exists(self) -> bool:
        """False for an SQLite file that is not there yet (a dry-run must not create it)."""
        if self.dialect != "sqlite":
            return True
        database = sa.make_url(self.url).database
        return not database or database == ":memory:" or Path(database).exists()

    @property
    def location(self) -> str:
        """Where the database is, for messages: an SQLite file's absolute path, else the URL without password."""
        database = sa.make_url(self.url).database if self.dialect == "sqlite" else None
        if database and database != ":memory:" and not database.startswith("file:"):
            return str(Path(database).absolute())
        return redact_url(self.url)

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -----------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction; any database failure becomes a StateError (exit 5)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise StateError(f"state database {redact_url(self.url)} failed: {describe_error(exc)}") from None

    def _insert(self, table: sa.Table) -> Any:
        # imported here: SQLAlchemy's PostgreSQL dialect costs ~0.06 s of CPU to import, a run on SQLite need not
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    # -- watermarks -------------------------------------------------------------------------------
    def watermarks(self, job: str) -> dict[str, datetime]:
        with self.transaction() as conn:
            rows = conn.execute(
                sa.select(watermarks.c.stream, watermarks.c.value).where(watermarks.c.job == job)
            )
            return {r.stream: r.value for r in rows}

    def set_watermark(
        self, job: str, stream: str, value: datetime, now: datetime, *, force: bool = False
    ) -> bool:
        """Store the watermark; it never moves backwards unless `force` (manual `etl state set`).

        Returns True when the stored value changed.
        """
        with self.transaction() as conn:
            current = conn.execute(
                sa.select(watermarks.c.value).where(watermarks.c.job == job, watermarks.c.stream == stream)
            ).scalar_one_or_none()
            if current is not None and value <= current and not (force and value != current):
                return False
            self._upsert_watermark(conn, job, stream, value, now)
            return True

    def advance_watermarks(self, job: str, values: Mapping[str, datetime], now: datetime) -> list[str]:
        """Move these streams' watermarks forward, never backwards, in ONE transaction: one read of the job's
        watermarks, then an upsert per stream that moves (a run that found nothing new moves none). Returns
        the streams moved."""
        if not values:
            return []
        with self.transaction() as conn:
            rows = conn.execute(
                sa.select(watermarks.c.stream, watermarks.c.value).where(watermarks.c.job == job)
            )
            current = {r.stream: r.value for r in rows}
            moved = [s for s, v in values.items() if s not in current or v > current[s]]
            for stream in moved:
                self._upsert_watermark(conn, job, stream, values[stream], now)
        return moved

    def _upsert_watermark(
        self, conn: Connection, job: str, stream: str, value: datetime, now: datetime
    ) -> None:
        stmt = self._insert(watermarks).values(job=job, stream=stream, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["job", "stream"], set_={"value": value, "updated_at": now}
        )
        conn.execute(stmt)

    # -- snapshots --------------------------------------------------------------------------------
    def load_snapshots(
        self, conn: Connection, job: str, stream: str, ids: Iterable[str]
    ) -> dict[str, Snapshot]:
        """The stored snapshots of these objects (one query per MAX_IDS_PER_STATEMENT ids)."""
        found: dict[str, Snapshot] = {}
        for chunk in _chunks(list(dict.fromkeys(ids)), MAX_IDS_PER_STATEMENT):
            rows = conn.execute(
                sa.select(snapshots).where(
                    snapshots.c.job == job, snapshots.c.stream == stream, snapshots.c.object_id.in_(chunk)
                )
            )
            for r in rows:
                found[r.object_id] = Snapshot(stream, r.object_id, r.updated_at, r.digest, _json(r.data))
        return found

    def load_digests(self, conn: Connection, job: str, stream: str, ids: Iterable[str]) -> dict[str, str]:
        """Object id -> digest of the stored snapshots of these objects: the data column is neither read nor
        decoded (one query per MAX_IDS_PER_STATEMENT ids)."""
        found: dict[str, str] = {}
        for chunk in _chunks(list(dict.fromkeys(ids)), MAX_IDS_PER_STATEMENT):
            rows = conn.execute(
                sa.select(snapshots.c.object_id, snapshots.c.digest).where(
                    snapshots.c.job == job, snapshots.c.stream == stream, snapshots.c.object_id.in_(chunk)
                )
            )
            found.update((object_id, digest) for object_id, digest in rows)
        return found

    def save_snapshots(self, conn: Connection, job: str, items: Sequence[Snapshot]) -> None:
        """Upsert snapshots (one statement); a stored snapshot newer than the one given is kept.

        Runs of different leases (a backfill slice beside the incremental run) may read one object at
        different moments: the older read must not replace the newer one.
        """
        if not items:
            return
        rows = [
            {"job": job, "stream": s.stream, "object_id": s.object_id, "updated_at": s.updated_at,
             "digest": s.digest, "data": dict(s.data)}
            for s in items
        ]  # fmt: skip
        stmt = self._insert(snapshots)
        stmt = stmt.on_conflict_do_update(
            index_elements=["job", "stream", "object_id"],
            set_={
                "updated_at": stmt.excluded.updated_at,
                "digest": stmt.excluded.digest,
                "data": stmt.excluded.data,
            },
            where=snapshots.c.updated_at <= stmt.excluded.updated_at,
        )
        conn.execute(stmt, rows)

    def snapshot_counts(self, job: str) -> dict[str, int]:
        """Snapshots per stream of one job."""
        return self._count_by(snapshots, snapshots.c.stream, job)

    def _count_by(self, table: sa.Table, column: sa.Column[Any], job: str) -> dict[str, int]:
        with self.transaction() as conn:
            rows = conn.execute(sa.select(column, sa.func.count()).where(table.c.job == job).group_by(column))
            return {r[0]: r[1] for r in rows}

    # -- outbox -----------------------------------------------------------------------------------
    def enqueue(
        self,
        conn: Connection,
        job: str,
        items: Sequence[OutboxEntry],
        run_id: int | None,
        now: datetime,
        *,
        requeue: bool = False,
    ) -> dict[str, int]:
        """Queue entries; an item already in the outbox is left as it is, or, when the entry asks for it (a
        profile whose content went back to an earlier state) or `requeue` says so (replays), set pending again
        with the new payload.

        Returns how many rows were new (or re-queued) per kind.
        """
        unique = {(e.kind, e.unique_id): e for e in items}  # one statement may not hit a row twice
        insert = self._insert(outbox)
        keys = ["job", "kind", "unique_id"]
        inserted: dict[str, int] = {}
        for again in (False, True):
            rows = [
                {"job": job, "kind": e.kind, "unique_id": e.unique_id, "payload": dict(e.payload),
                 "status": "pending", "attempts": 0, "created_at": now, "run_id": run_id}
                for e in unique.values()
                if (requeue or e.requeue) == again
            ]  # fmt: skip
            if not rows:
                continue
            if again:
                stmt = insert.on_conflict_do_update(
                    index_elements=keys,
                    set_={
                        "payload": insert.excluded.payload,
                        "status": "pending",
                        "run_id": insert.excluded.run_id,
                    },
                ).returning(outbox.c.kind)
            else:
                stmt = insert.on_conflict_do_nothing(index_elements=keys).returning(outbox.c.kind)
            # RETURNING yields only the rows really inserted (rowcount is unreliable for executemany)
            for (kind,) in conn.execute(stmt, rows):
                inserted[kind] = inserted.get(kind, 0) + 1
        return inserted

    def known_unique_ids(self, job: str, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (kind, unique_id) are in the outbox already, in whatever status."""
        found: set[tuple[str, str]] = set()
        with self.transaction() as conn:
            for kind in {k for k, _ in keys}:
                ids = list(dict.fromkeys(u for k, u in keys if k == kind))
                for chunk in _chunks(ids, MAX_IDS_PER_STATEMENT):
                    rows = conn.execute(
                        sa.select(outbox.c.unique_id).where(
                            outbox.c.job == job, outbox.c.kind == kind, outbox.c.unique_id.in_(chunk)
                        )
                    )
                    found.update((kind, r.unique_id) for r in rows)
        return found

    def pending(
        self,
        job: str,
        kind: str,
        *,
        limit: int,
        after_id: int = 0,
        upto: int | None = None,
        max_bytes: int | None = None,
    ) -> list[OutboxItem]:
        """The next pending items of one kind, in queue order, at most `limit` (and ids up to `upto`, the
        high-water mark of a delivery round while reading); with `max_bytes`, only as many
        as have that many bytes of stored payload between them, and always at least one.

        The budget is what bounds a chunk's memory whatever the payloads' size: a payload read back is a tree
        of Python objects several times its text. The sizes are read first (ids and lengths only, streamed
        until the budget is spent), then the payloads of the items that fit.
        """
        where = (
            outbox.c.job == job,
            outbox.c.kind == kind,
            outbox.c.status == "pending",
            outbox.c.id > after_id,
            *((outbox.c.id <= upto,) if upto is not None else ()),
        )
        query = (
            sa.select(outbox.c.id, outbox.c.kind, outbox.c.unique_id, outbox.c.payload, outbox.c.attempts)
            .where(*where)
            .order_by(outbox.c.id)
            .limit(limit)
        )
        with self.transaction() as conn:
            if max_bytes is not None:
                last = None
                spent = 0
                sizes = conn.execute(
                    sa.select(outbox.c.id, self._payload_bytes())
                    .where(*where)
                    .order_by(outbox.c.id)
                    .limit(limit)
                )
                for item_id, size in sizes:
                    if last is not None and spent + size > max_bytes:
                        break
                    last, spent = item_id, spent + size
                sizes.close()
                if last is None:
                    return []
                query = query.where(outbox.c.id <= last)
            rows = conn.execute(query)
            return [OutboxItem(r.id, job, r.kind, r.unique_id, _json(r.payload), r.attempts) for r in rows]

    def _payload_bytes(self) -> sa.ColumnElement[int]:
        """The size of a stored payload in bytes: its text (SQLite) or jsonb's text of it (PostgreSQL)."""
        if self.dialect == "postgresql":
            return sa.func.octet_length(sa.cast(outbox.c.payload, sa.Text))
        return sa.func.length(sa.cast(outbox.c.payload, sa.LargeBinary))  # BLOB: bytes, not characters

    def mark_delivered(
        self, sent: Sequence[int], failed: Mapping[int, str], now: datetime, *, run_id: int | None = None
    ) -> None:
        """Mark items sent, or failed with Klaviyo's reason, in one transaction; `run_id` is the delivering
        run (`delivery_run_id`: which run sent an item, or saw it rejected, for `etl explain`)."""
        with self.transaction() as conn:
            for chunk in _chunks(list(sent), MAX_IDS_PER_STATEMENT):
                conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.id.in_(chunk))
                    .values(status="sent", sent_at=now, attempts=outbox.c.attempts + 1, last_error=None,
                            delivery_run_id=run_id)
                )  # fmt: skip
            # one statement per distinct error text (a rejected batch's items often share one), not per item
            by_error: dict[str, list[int]] = {}
            for item_id, error in failed.items():
                by_error.setdefault(error[:2000], []).append(item_id)
            for error, ids in by_error.items():
                for chunk in _chunks(ids, MAX_IDS_PER_STATEMENT):
                    conn.execute(
                        sa.update(outbox)
                        .where(outbox.c.id.in_(chunk))
                        .values(status="failed", attempts=outbox.c.attempts + 1, last_error=error,
                                delivery_run_id=run_id)
                    )  # fmt: skip

    def outbox_items(self, job: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        query = sa.select(
            outbox.c.id, outbox.c.job, outbox.c.kind, outbox.c.unique_id, outbox.c.status, outbox.c.attempts,
            outbox.c.last_error, outbox.c.created_at, outbox.c.sent_at,
        ).order_by(outbox.c.id).limit(limit)  # fmt: skip
        if job:
            query = query.where(outbox.c.job == job)
        if status:
            query = query.where(outbox.c.status == status)
        with self.transaction() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def outbox_counts(self, job: str) -> dict[str, int]:
        """Outbox items per status of one job."""
        return self._count_by(outbox, outbox.c.status, job)

    def last_outbox_id(self, job: str) -> int:
        """The newest outbox id of the job (0 when it has none): the high-water mark of an early delivery."""
        with self.transaction() as conn:
            return int(
                conn.execute(sa.select(sa.func.max(outbox.c.id)).where(outbox.c.job == job)).scalar() or 0
            )

    def pending_count(self, job: str) -> int:
        """The job's pending items (read from ix_outbox_job_status_id: sent items are not counted through)."""
        query = sa.select(sa.func.count()).where(outbox.c.job == job, outbox.c.status == "pending")
        with self.transaction() as conn:
            return int(conn.execute(query).scalar_one())

    def retry_failed(self, job: str) -> int:
        """Re-queue the job's failed items; returns how many."""
        with self.transaction() as conn:
            result = conn.execute(
                sa.update(outbox)
                .where(outbox.c.job == job, outbox.c.status == "failed")
                .values(status="pending", last_error=None)
            )
            return result.rowcount or 0

    def prune_sent(self, job: str, before: datetime) -> int:
        """Delete the job's items delivered before `before`; pending and failed ones are never touched.

        Harmless for correctness: unique_ids are deterministic, so a re-queued item is one Klaviyo dedupes.
        """
        with self.transaction() as conn:
            result = conn.execute(
                sa.delete(outbox).where(
                    outbox.c.job == job, outbox.c.status == "sent", outbox.c.sent_at < before
                )
            )
            return result.rowcount or 0

    # -- runs -------------------------------------------------------------------------------------
    def start_run(self, job: str, mode: str, window: Any, now: datetime) -> int:
        with self.transaction() as conn:
            result = conn.execute(
                sa.insert(runs)
                .values(job=job, mode=mode, started_at=now, status="running", window=window, counts={})
                .returning(runs.c.id)
            )
            return int(result.scalar_one())

    def update_run(self, run_id: int, **values: Any) -> None:
        with self.transaction() as conn:
            conn.execute(sa.update(runs).where(runs.c.id == run_id).values(**values))

    def update_run_window(self, conn: Connection, run_id: int, window: Any) -> None:
        """Record a run's window progress inside the caller's (page) transaction."""
        conn.execute(sa.update(runs).where(runs.c.id == run_id).values(window=window))

    def runs(self, job: str | None, limit: int, *, mode: str | None = None) -> list[RunRow]:
        query = sa.select(runs).order_by(runs.c.id.desc()).limit(limit)
        if job:
            query = query.where(runs.c.job == job)
        if mode:
            query = query.where(runs.c.mode == mode)
        with self.transaction() as conn:
            return [
                RunRow(r.id, r.job, r.mode, r.started_at, r.finished_at, r.status, _json(r.window),
                       _json(r.counts), r.error)
                for r in conn.execute(query)
            ]  # fmt: skip

    def last_run(self, job: str, mode: str, status: str) -> RunRow | None:
        query = (
            sa.select(runs)
            .where(runs.c.job == job, runs.c.mode == mode, runs.c.status == status)
            .order_by(runs.c.id.desc())
            .limit(1)
        )
        with self.transaction() as conn:
            r = conn.execute(query).first()
        if r is None:
            return None
        return RunRow(r.id, r.job, r.mode, r.started_at, r.finished_at, r.status, _json(r.window),
                      _json(r.counts), r.error)  # fmt: skip

    # -- locks ------------------------------------------------------------------------------------
    def acquire_lock(self, job: str, owner: str, ttl: timedelta, now: datetime) -> None:
        """Take the job's lease, or take over an expired one; LockHeld (exit 75) when another owner holds it."""
        expires = now + ttl
        with self.transaction() as conn:
            # preserve_rowcount: SQLAlchemy 2.1 on psycopg reports -1 for an INSERT without it, which sent
            # every run on PostgreSQL on to the UPDATE below (one statement more, same outcome)
            taken = conn.execute(
                self._insert(locks)
                .values(job=job, owner=owner, acquired_at=now, expires_at=expires)
                .on_conflict_do_nothing(index_elements=["job"])
                .execution_options(preserve_rowcount=True)
            ).rowcount
            if taken == 1:
                return
            stolen = conn.execute(
                sa.update(locks)
                .where(locks.c.job == job, sa.or_(locks.c.expires_at < now, locks.c.owner == owner))
                .values(owner=owner, acquired_at=now, expires_at=expires)
            ).rowcount
            if stolen == 1:
                return
            holder = conn.execute(
                sa.select(locks.c.owner, locks.c.expires_at).where(locks.c.job == job)
            ).first()
        detail = f" by {holder.owner} until {holder.expires_at.isoformat()}" if holder else ""
        raise LockHeld(f"job {job!r} is already running (lease held{detail}); try again later")

    def renew_lock(self, job: str, owner: str, ttl: timedelta, now: datetime) -> None:
        """Extend our lease; LockHeld if it was taken over (we were too slow to renew)."""
        with self.transaction() as conn:
            renewed = conn.execute(
                sa.update(locks)
                .where(locks.c.job == job, locks.c.owner == owner)
                .values(expires_at=now + ttl)
            ).rowcount
        if renewed != 1:
            raise LockHeld(f"job {job!r} lost its lease to another run; this run stops without advancing")

    def release_lock(self, job: str, owner: str) -> None:
        with self.transaction() as conn:
            conn.execute(sa.delete(locks).where(locks.c.job == job, locks.c.owner == owner))

    def lock_holder(self, job: str) -> tuple[str, datetime] | None:
        with self.transaction() as conn:
            row = conn.execute(sa.select(locks.c.owner, locks.c.expires_at).where(locks.c.job == job)).first()
        return (row.owner, row.expires_at) if row else None

    def leases(self, job: str) -> list[tuple[str, str, datetime]]:
        """Every lease of a job, its incremental one and its backfill slices': (name, owner, expires_at)."""
        query = sa.select(locks.c.job, locks.c.owner, locks.c.expires_at).where(
            sa.or_(locks.c.job == job, locks.c.job.startswith(f"{job}:backfill:", autoescape=True))
        )
        with self.transaction() as conn:
            return [(r.job, r.owner, r.expires_at) for r in conn.execute(query.order_by(locks.c.job))]

    # -- one object's story (etl explain) ---------------------------------------------------------
    def snapshot(self, job: str, stream: str, object_id: str) -> Snapshot | None:
        """The stored snapshot of one object, or None."""
        with self.transaction() as conn:
            return self.load_snapshots(conn, job, stream, [object_id]).get(object_id)

    def items_with_prefix(self, job: str, prefixes: Sequence[str]) -> list[dict[str, Any]]:
        """The job's outbox rows (every column) whose unique_id starts with one of `prefixes`, in queue order.

        A LIKE over the job's outbox: fine for one object's story, not for a loop over many.
        """
        if not prefixes:
            return []
        matches = [outbox.c.unique_id.startswith(prefix, autoescape=True) for prefix in prefixes]
        query = sa.select(outbox).where(outbox.c.job == job, sa.or_(*matches)).order_by(outbox.c.id)
        with self.transaction() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["payload"] = _json(row["payload"])
        return rows

    def contacts_with_email(self, job: str, address: str) -> list[str]:
        """Ids of the job's stored contacts whose snapshot has this (normalized) email, in id order.

        A scan of the job's contact snapshots: for one object's story only (who got a merged contact's events).
        """
        query = (
            sa.select(snapshots.c.object_id)
            .where(snapshots.c.job == job, snapshots.c.stream == "contacts",
                   snapshots.c.data["email"].as_string() == address)
            .order_by(snapshots.c.object_id)
        )  # fmt: skip
        with self.transaction() as conn:
            return [r.object_id for r in conn.execute(query)]

    # -- reconcile (docs/design.md §7.1) ------------------------------------------------------------
    def outbox_problems(self, job: str, pending_before: datetime) -> list[dict[str, Any]]:
        """The job's failed items and its items pending since before `pending_before` (stuck), in queue order:
        id, kind, unique_id, status, attempts, created_at, last_error (not the payload)."""
        query = (
            sa.select(outbox.c.id, outbox.c.kind, outbox.c.unique_id, outbox.c.status, outbox.c.attempts,
                      outbox.c.created_at, outbox.c.last_error)
            .where(outbox.c.job == job,
                   sa.or_(outbox.c.status == "failed",
                          sa.and_(outbox.c.status == "pending", outbox.c.created_at < pending_before)))
            .order_by(outbox.c.id)
        )  # fmt: skip
        with self.transaction() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def sent_events(
        self, job: str, *, sent_since: datetime, limit: int, after_id: int = 0
    ) -> list[OutboxItem]:
        """The next events Klaviyo accepted at or after `sent_since`, in queue order, at most `limit`."""
        with self.transaction() as conn:
            rows = conn.execute(
                sa.select(outbox.c.id, outbox.c.unique_id, outbox.c.payload, outbox.c.attempts)
                .where(outbox.c.job == job, outbox.c.kind == "event", outbox.c.status == "sent",
                       outbox.c.id > after_id, outbox.c.sent_at >= sent_since)
                .order_by(outbox.c.id)
                .limit(limit)
            )  # fmt: skip
            return [OutboxItem(r.id, job, "event", r.unique_id, _json(r.payload), r.attempts) for r in rows]

    def requeue_sent(self, job: str, ids: Sequence[int]) -> int:
        """Set these items of the job pending again where they are sent (Klaviyo lost them; it deduplicates
        what it still has); how many."""
        changed = 0
        with self.transaction() as conn:
            for chunk in _chunks(list(ids), 500):
                result = conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.job == job, outbox.c.status == "sent", outbox.c.id.in_(chunk))
                    .values(status="pending")
                )
                changed += result.rowcount or 0
        return changed

    def item_statuses(self, job: str, ids: Sequence[int]) -> dict[int, str]:
        """id → status of these items of the job (items no longer in the outbox are absent)."""
        found: dict[int, str] = {}
        with self.transaction() as conn:
            for chunk in _chunks(list(ids), 500):
                query = sa.select(outbox.c.id, outbox.c.status).where(
                    outbox.c.job == job, outbox.c.id.in_(chunk)
                )
                found.update((r.id, r.status) for r in conn.execute(query))
        return found


def _engine(url: str, read_only: bool) -> Engine:
    # JSON columns (payloads, snapshots, runs) through orjson: compact UTF-8 text, read back as json.loads
    # would read it (etl.codec); rows written by earlier versions (json.dumps' spacing) read the same
    json_io = {"json_serializer": codec.dumps_text, "json_deserializer": codec.loads}
    if url.startswith("sqlite"):
        database = sa.make_url(url).database
        if read_only and database and database != ":memory:":
            import sqlite3

            uri = f"file:{Path(database).resolve()}?mode=ro"
            return sa.create_engine(
                "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=30), **json_io
            )
        # wait for a writer, don't fail at once
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30},
            insertmanyvalues_page_size=SQLITE_ROWS_PER_INSERT,
            **json_io,
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    pg: dict[str, Any] = dict(json_io)
    if sa.make_url(url).get_driver_name() in ("psycopg", "psycopg2"):
        # no HSTORE column anywhere: without this, the psycopg dialects look the type up on the first
        # connection of every process (a savepoint, a catalogue query, its release: three more round trips)
        pg["use_native_hstore"] = False
    if read_only:
        return sa.create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"}, **pg)
    return sa.create_engine(url, **pg)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (etl state show) don't block the running job
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _json(value: Any) -> Any:
    """JSON columns come back parsed on both dialects; tolerate text from older drivers."""
    return codec.loads(value) if isinstance(value, str) else value


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
