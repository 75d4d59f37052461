"""initial schema: watermarks, snapshots, outbox, runs, locks

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSONData = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Stamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "watermarks",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("stream", sa.String(40), primary_key=True),
        sa.Column("value", Stamp, nullable=False),
        sa.Column("updated_at", Stamp, nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("stream", sa.String(40), primary_key=True),
        sa.Column("object_id", sa.String(100), primary_key=True),
        sa.Column("updated_at", Stamp, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("data", JSONData, nullable=False),
    )
    op.create_table(
        "outbox",
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
        sa.Column("created_at", Stamp, nullable=False),
        sa.Column("sent_at", Stamp, nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.UniqueConstraint("job", "kind", "unique_id", name="uq_outbox_job_kind_unique_id"),
        sa.CheckConstraint("kind IN ('event', 'profile')", name="ck_outbox_kind"),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="ck_outbox_status"),
    )
    op.create_index("ix_outbox_job_status_id", "outbox", ["job", "status", "id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("started_at", Stamp, nullable=False),
        sa.Column("finished_at", Stamp, nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("window", JSONData, nullable=True),
        sa.Column("counts", JSONData, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_runs_job_id", "runs", ["job", "id"])
    op.create_table(
        "locks",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("acquired_at", Stamp, nullable=False),
        sa.Column("expires_at", Stamp, nullable=False),
    )


def downgrade() -> None:
    for table in ("locks", "runs", "outbox", "snapshots", "watermarks"):
        op.drop_table(table)
