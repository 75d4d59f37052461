"""The state database's tables (docs/design.md §3.3): names fixed, columns refined through Alembic revisions.

SQLite by default, PostgreSQL in production; `etl.state.StateStore` is the only code that queries them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (which has no time zones) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class PostgresJSONB(sa.TypeDecorator[Any]):
    """PostgreSQL's JSONB, looked up when a PostgreSQL engine first uses it: SQLAlchemy's PostgreSQL dialect
    costs ~0.06 s of CPU to import, which a run on SQLite need not pay (the migrations name JSONB itself)."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        from sqlalchemy.dialects.postgresql import JSONB

        return dialect.type_descriptor(JSONB())


JSONData = sa.JSON().with_variant(PostgresJSONB(), "postgresql")

metadata = sa.MetaData()

watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("stream", sa.String(40), primary_key=True),
    sa.Column("value", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("stream", sa.String(40), primary_key=True),
    sa.Column("object_id", sa.String(100), primary_key=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("data", JSONData, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("unique_id", sa.String(500), nullable=False),
    sa.Column("payload", JSONData, nullable=False),
    sa.Column("status", sa.String(10), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("sent_at", UTCDateTime(), nullable=True),
    sa.Column("run_id", sa.Integer(), nullable=True),  # the run that queued the item
    sa.Column("delivery_run_id", sa.Integer(), nullable=True),  # the run that sent it, or saw it rejected
    sa.UniqueConstraint("job", "kind", "unique_id", name="uq_outbox_job_kind_unique_id"),
    sa.CheckConstraint("kind IN ('event', 'profile')", name="ck_outbox_kind"),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="ck_outbox_status"),
    sa.Index("ix_outbox_job_status_id", "job", "status", "id"),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(200), nullable=False),
    sa.Column("mode", sa.String(20), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("window", JSONData, nullable=True),
    sa.Column("counts", JSONData, nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Index("ix_runs_job_id", "job", "id"),
)

locks = sa.Table(
    "locks",
    metadata,
    sa.Column("job", sa.String(200), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("acquired_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)
