"""The state database's schema: Alembic revisions applied, checked and reported (`etl db upgrade|current`).

Schema changes go only through revisions in `migrations/`; a test proves the tables and the migrations agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from etl.errors import StateError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"  # a source checkout
if not (MIGRATIONS_DIR / "env.py").exists():  # an installed wheel carries them as etl.migrations
    MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# The newest revision in migrations/versions. A run compares the database's revision with it in one query, so
# Alembic (~0.2 s of CPU to import) loads only to migrate: `etl db upgrade`, a fresh or a behind database.
# tests/test_startup.py pins it to the head Alembic finds in migrations/: a new revision must move it.
HEAD_REVISION = "0002"
VERSION_TABLE = "alembic_version"  # Alembic's default name; migrations/env.py keeps it


def redact_url(url: str) -> str:
    """The database URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid database URL>"


LOCKED_ADVICE = (
    "another process holds the SQLite file locked (a running etl, a sqlite3 shell, a backup): "
    "let it finish or stop it, then run again"
)
UNREACHABLE_ADVICE = (
    "check that the database server is up and reachable, then run again: nothing uncommitted was kept, "
    "and a run resumes where the last commit left it"
)


def describe_error(exc: BaseException) -> str:
    """A one-line description of a database error, never with its parameters (they may hold payload data),
    with what to do when the database is locked or unreachable (the cause is outside this process)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    line = (text[0] if text else type(exc).__name__)[:300]
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return line
    if "database is locked" in line:  # sqlite3's busy timeout ran out
        return f"{line}: {LOCKED_ADVICE}"
    if "sqlite" not in type(orig).__module__:  # a server closed, refused or dropped the connection
        return f"{line}: {UNREACHABLE_ADVICE}"
    return line


class Migrations:
    """Schema operations of a state store; `StateStore` provides `engine`, `url` and `dialect`."""

    engine: Engine
    url: str
    dialect: str

    def alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.attributes["engine"] = self.engine
        return cfg

    def current_revision(self) -> str | None:
        """The database's revision, None when it has no schema yet (what Alembic's MigrationContext says)."""
        try:
            with self.engine.connect() as conn:
                return _stored_revision(conn)
        except sa.exc.SQLAlchemyError as exc:
            raise StateError(
                f"cannot reach state database {redact_url(self.url)}: {describe_error(exc)}"
            ) from None

    def head_revision(self) -> str:
        return HEAD_REVISION

    def upgrade(self) -> tuple[str | None, str | None]:
        """Apply every pending migration; returns (before, after) revisions."""
        from alembic import command

        before = self.current_revision()
        try:
            command.upgrade(self.alembic_config(), "head")
        except sa.exc.SQLAlchemyError as exc:
            raise StateError(f"migrating {redact_url(self.url)} failed: {describe_error(exc)}") from None
        return before, self.current_revision()

    def check_schema(self) -> None:
        """StateError unless the schema is at head (read-only callers cannot upgrade)."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise StateError(
                f"state database {redact_url(self.url)} is at revision {current or 'none (empty)'}, "
                f"this etl needs {head}: run `etl db upgrade`"
            )

    def ensure_schema(self, *, auto_upgrade: bool | None = None) -> None:
        """Make sure the schema is at head: upgrade SQLite silently, else ask the operator to migrate."""
        current, head = self.current_revision(), self.head_revision()
        if current == head:
            return
        if auto_upgrade is None:
            auto_upgrade = self.dialect == "sqlite"
        if auto_upgrade:
            self.upgrade()
            return
        self.check_schema()


def _stored_revision(conn: Connection) -> str | None:
    """The revision in the version table: one query when the table is there (every run but the first)."""
    try:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except sa.exc.DBAPIError as exc:
        # no version table yet (a fresh database)? Each driver words that its own way ("no such table",
        # UndefinedTable), so ask the catalogue. A locked SQLite file would only wait its busy timeout again.
        if "database is locked" in str(exc.orig):
            raise
        conn.rollback()  # PostgreSQL refuses every statement of a transaction after a failed one
        if sa.inspect(conn).has_table(VERSION_TABLE):
            raise
        return None
    if len(rows) > 1:  # several heads (branches): Alembic's own error, as before
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(conn).get_current_revision()
    return rows[0] if rows else None
