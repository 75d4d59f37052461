"""Start-up cost: `etl --help` imports click and the light modules only; a run that finds nothing new in
Intercom imports only what it uses (no Alembic, no Prometheus client, no phonenumbers, no sandbox) and keeps
the garbage collector off what its imports built.

Asserted on what a real `etl` process imported and froze, never on timings (docs/bench-results.md has those).
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import phonenumbers
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from etl.cli import cli
from etl.models import RunOptions
from etl.profiles import PHONE_REGIONS
from etl.schema import HEAD_REVISION, MIGRATIONS_DIR
from etl.state import StateStore
from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, execute, sandboxes, write_config

HEAVY = ("sqlalchemy", "requests", "yaml", "phonenumbers", "alembic", "tenacity", "prometheus_client")
# what a run needs only on some paths: migrating, --metrics-file/--pushgateway, a phone number to parse, a TTY,
# a PostgreSQL database; and what it never needs (the sandbox, the tests' JSON Schema checker)
ONLY_SOMETIMES = (
    "alembic",
    "prometheus_client",
    "phonenumbers",
    "rich",
    "sqlalchemy.dialects.postgresql",
    "etl.sandbox",
    "jsonschema",
    "etl.klaviyo_batches",  # cuts what is sent; a run with nothing pending sends nothing
)


@dataclass
class Probed:
    code: int
    stderr: str
    modules: set[str]  # every module the process imported
    frozen: int  # objects its cyclic GC no longer walks (gc.freeze)


def probe_etl(*args: str, env: dict[str, str] | None = None) -> Probed:
    """Run `etl ARGS` (as `python -m etl` does) in a fresh interpreter, and look at it when it is done."""
    probe = (
        "import gc, json, runpy, sys\n"
        f"sys.argv = ['etl', *{list(args)!r}]\n"
        "code = 0\n"
        "try:\n"
        "    runpy.run_module('etl', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'frozen': gc.get_freeze_count()}))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    seen = json.loads(proc.stdout.splitlines()[-1])
    return Probed(proc.returncode, proc.stderr, set(seen["modules"]), seen["frozen"])


def test_help_imports_no_io_library() -> None:
    """SQLAlchemy alone is ~0.3 s of CPU at import; the help must not pay for what only commands use."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['etl', '--help']\n"
        "try:\n"
        "    runpy.run_module('etl', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Keep a Klaviyo account in step" in proc.stdout  # the help was printed
    assert proc.stdout.splitlines()[-1] == "[]"


def test_a_run_with_nothing_new_imports_no_alembic_metrics_or_phone_library(tmp_path: Path) -> None:
    """The second run over an unchanged workspace finds the schema at head with one query and parses no phone
    number: Alembic (~0.2 s of CPU), prometheus_client and phonenumbers stay unimported, and so does SQLAlchemy's
    PostgreSQL dialect on SQLite. The first run, which creates the database, does import Alembic and
    phonenumbers: the probe sees them when they are there."""
    url = f"sqlite:///{tmp_path}/state.db"
    env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY}
    env.pop("ETL_DATABASE_URL", None)
    with sandboxes() as boxes:
        config = str(write_config(tmp_path / "jobs.yaml", url, boxes.job()))
        first = probe_etl("--config", config, "-q", "run", env=env)
        assert first.code == 0, first.stderr
        assert {
            "alembic",
            "phonenumbers",
        } <= first.modules  # it migrated, and normalised the contacts' phones
        intercom, klaviyo = len(boxes.intercom.server.requests), len(boxes.klaviyo.requests)
        second = probe_etl("--config", config, "-q", "run", env=env)
        assert second.code == 0, second.stderr
        assert len(boxes.intercom.server.requests) > intercom  # it read Intercom, and found nothing new
        assert len(boxes.klaviyo.requests) == klaviyo  # so it had nothing to send
    assert second.stderr == ""  # -q, nothing rejected: cron mails nothing
    loaded = sorted(m for m in ONLY_SOMETIMES if m in second.modules)
    assert loaded == []


def test_a_run_freezes_what_its_imports_built_but_not_in_a_test_process(tmp_path: Path) -> None:
    """`etl run` imports its libraries with the cyclic GC off and freezes what they built, so no collection
    walks those ~50k long-lived objects again (nor the two at interpreter exit); the CLI invoked in-process
    (CliRunner, as the tests do) leaves the caller's collector alone. Both runs stop at the missing jobs.yaml,
    after the imports."""
    missing = str(tmp_path / "missing.yaml")
    probed = probe_etl("--config", missing, "run")
    assert probed.code == 2 and "missing.yaml" in probed.stderr
    assert probed.frozen > 10_000
    result = CliRunner().invoke(cli, ["--config", missing, "run"])
    assert result.exit_code == 2, result.output
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_the_head_revision_a_run_compares_with_is_alembics_head() -> None:
    """A run compares the database's revision with etl.schema.HEAD_REVISION without loading Alembic: a new
    revision in migrations/ must move it, or every run would take an up-to-date database for a behind one."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION


def test_the_phone_regions_jobs_yaml_may_name_are_phonenumbers_own() -> None:
    """default_phone_region is checked against etl.profiles.PHONE_REGIONS without importing phonenumbers: it
    must stay the set phonenumbers parses (an upgrade that adds a region fails here until the list has it)."""
    assert frozenset(phonenumbers.SUPPORTED_REGIONS) == PHONE_REGIONS


def test_a_run_with_nothing_new_makes_one_statement_per_step(store: StateStore) -> None:
    """Beside reading the snapshots of the pages it read, a run that finds nothing new takes the lease, reads
    the watermarks, records the run, counts what is pending, reads the watermarks once more to find none
    moved, records the end and releases the lease: one statement each. Not: a read and a transaction per
    stream's watermark, a read per kind of an empty outbox, or on PostgreSQL an UPDATE after every INSERT of
    the lease (psycopg's rowcount came back -1) and a look-up of the HSTORE type on the first connection."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", statement)
        seen.append(f"{statement.split()[0]} {table[1] if table else '?'}")

    with sandboxes() as boxes:
        execute(boxes, store, boxes.job(), RunOptions())  # the first sync
        sa.event.listen(store.engine, "before_cursor_execute", record)
        execute(boxes, store, boxes.job(), RunOptions())  # the same workspace again
    assert "SELECT snapshots" in seen  # it did read the pages again
    assert [s for s in seen if s != "SELECT snapshots"] == [
        "INSERT locks",
        "SELECT watermarks",
        "INSERT runs",
        "SELECT outbox",
        "SELECT watermarks",
        "UPDATE runs",
        "DELETE locks",
    ]
    if store.dialect == "postgresql":
        assert store.engine.dialect.use_native_hstore is False  # type: ignore[attr-defined]
