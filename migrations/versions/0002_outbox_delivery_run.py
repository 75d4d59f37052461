"""outbox.delivery_run_id: the run whose delivery last settled an item (sent it, or saw Klaviyo reject it)

`outbox.run_id` is the run that queued an item; `etl explain` also tells which run sent it (or failed it),
which the run that queued it need not be (a later run sends what an interrupted one left pending).
Items settled before this revision keep a null: their run is not known.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox", sa.Column("delivery_run_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("delivery_run_id")
