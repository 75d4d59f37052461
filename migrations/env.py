"""Alembic environment: runs against the engine `etl.state.StateStore` hands over (or ETL_DATABASE_URL)."""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from etl.tables import metadata

config = context.config
target_metadata = metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:  # plain `alembic -c migrations/alembic.ini …` by a developer
        engine = sa.create_engine(os.environ.get("ETL_DATABASE_URL", "sqlite:///etl-state.db"))
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite can't ALTER most things
        )
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `etl db upgrade`")
run_migrations_online()
