"""Alembic migrations of the state database (installed as etl.migrations)."""
