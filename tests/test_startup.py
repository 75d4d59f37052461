"""Start-up cost: `etl --help` imports click and the light modules only, and a run that finds nothing new in
Intercom imports only what it uses (no Alembic, no Prometheus client, no phonenumbers, no sandbox).

Asserted on the modules a real `etl` process imported, never on timings (docs/bench-results.md has those).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import phonenumbers
from alembic.config import Config
from alembic.script import ScriptDirectory

from etl.profiles import PHONE_REGIONS
from etl.schema import HEAD_REVISION, MIGRATIONS_DIR
from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, sandboxes, write_config

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
)


def etl_modules(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, set[str]]:
    """Run `etl ARGS` in a fresh interpreter: its exit code, its stderr and every module it imported."""
    probe = (
        "import json, runpy, sys\n"
        f"sys.argv = ['etl', *{list(args)!r}]\n"
        "code = 0\n"
        "try:\n"
        "    runpy.run_module('etl', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps(sorted(sys.modules)))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, proc.stderr, set(json.loads(proc.stdout.splitlines()[-1]))


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
        code, stderr, first = etl_modules("--config", config, "-q", "run", env=env)
        assert code == 0, stderr
        assert {"alembic", "phonenumbers"} <= first  # it migrated, and normalised the contacts' phones
        intercom, klaviyo = len(boxes.intercom.server.requests), len(boxes.klaviyo.requests)
        code, stderr, second = etl_modules("--config", config, "-q", "run", env=env)
        assert code == 0, stderr
        assert len(boxes.intercom.server.requests) > intercom  # it read Intercom, and found nothing new
        assert len(boxes.klaviyo.requests) == klaviyo  # so it had nothing to send
    assert stderr == ""  # -q, nothing rejected: cron mails nothing
    loaded = sorted(m for m in ONLY_SOMETIMES if m in second)
    assert loaded == []


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
