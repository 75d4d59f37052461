"""The command line: exit codes, one-line messages, and the state commands on a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from etl.cli import cli
from etl.models import OutboxEntry
from etl.state import StateStore, redact_url

ROOT = Path(__file__).resolve().parent.parent

JOBS = """
database_url: {url}
jobs:
  shop:
    intercom: {{base_url: "http://127.0.0.1:1", token_env: IC_TOKEN}}
    klaviyo: {{base_url: "http://127.0.0.1:1", api_key_env: KL_KEY}}
    start_date: 2026-01-01
"""


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(url=db_url))
    return path


# CliRunner's stderr is no terminal, so logs and error lines would be JSON: these tests read the text ones
TEXT = ("--log-format", "text")


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, [*TEXT, *args], env={"ETL_DATABASE_URL": "", **(env or {})})


def test_check_names_missing_env_vars_with_exit_2() -> None:
    """`etl check` on the example jobs.yaml lists exactly the unset variables."""
    result = invoke(
        "--config", str(ROOT / "jobs.yaml"), "check", env={"INTERCOM_ACCESS_TOKEN": "", "KLAVIYO_API_KEY": ""}
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "etl: error: 2 problems: jobs.intercom_to_klaviyo: environment variable INTERCOM_ACCESS_TOKEN is not set; "
        "jobs.intercom_to_klaviyo: environment variable KLAVIYO_API_KEY is not set"
    )


def test_check_passes_with_env_and_never_prints_secrets() -> None:
    """With both variables set the job is ok and the values appear nowhere."""
    result = invoke(
        "--config",
        str(ROOT / "jobs.yaml"),
        "check",
        env={"INTERCOM_ACCESS_TOKEN": "tok-SECRET-1", "KLAVIYO_API_KEY": "pk_SECRET_2"},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("intercom_to_klaviyo: ok (contacts, conversations, tickets;")
    assert "SECRET" not in result.output


def test_check_reports_the_database_state(config: Path, db_url: str) -> None:
    """`etl check` says whether the state database is behind, and up to date after `db upgrade`."""
    env = {"IC_TOKEN": "t", "KL_KEY": "k"}
    before = invoke("--config", str(config), "check", env=env)
    if db_url.startswith("sqlite"):  # `etl run` creates and upgrades an SQLite database by itself
        assert before.exit_code == 0
        assert before.stdout.splitlines()[-1].endswith(
            "(not created yet: `etl run` creates it (or `etl db upgrade`))"
        )
    else:  # on PostgreSQL `etl run` would stop with exit 5: a problem now
        assert before.exit_code == 2 and before.stdout == ""
        assert before.stderr.strip() == (
            "etl: error: database: revision none (empty), this etl needs 0002: run `etl db upgrade` (until then "
            "`etl run` stops with exit 5)"
        )
    invoke("--config", str(config), "db", "upgrade")
    after = invoke("--config", str(config), "check", env=env)
    assert after.stdout.splitlines()[-1].endswith("(revision 0002, up to date)")


def test_five_mistakes_one_line_exit_2_no_traceback(tmp_path: Path) -> None:
    """A jobs.yaml with five mistakes gives one line with all five, exit 2, and no traceback (real process)."""
    bad = tmp_path / "jobs.yaml"
    bad.write_text(
        "jobs:\n  shop:\n    intercom: {per_page: 999, base_url: 'http://example.com'}\n"
        "    klaviyo: {}\n    start_date: someday\n    lookback: 15 mins\n    colour: blue\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "etl", *TEXT, "--config", str(bad), "check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etl: error: 5 problems: ")
    for path in (
        "jobs.shop.colour",
        "jobs.shop.intercom.per_page",
        "jobs.shop.intercom.base_url",
        "jobs.shop.start_date",
        "jobs.shop.lookback",
    ):
        assert path in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    """No jobs.yaml says how to point at one."""
    result = invoke("--config", str(tmp_path / "nope.yaml"), "check")
    assert result.exit_code == 2
    assert "no such file; pass --config PATH, set ETL_CONFIG" in result.stderr


def test_db_upgrade_and_current(config: Path) -> None:
    """`db current` reports an empty database as behind; `db upgrade` brings it to head."""
    before = invoke("--config", str(config), "db", "current")
    assert (
        before.exit_code == 0
        and "revision none (empty), head 0002 (behind: run `etl db upgrade`)" in before.stdout
    )
    up = invoke("--config", str(config), "db", "upgrade")
    assert up.exit_code == 0 and "upgraded from empty to 0002" in up.stdout
    again = invoke("--config", str(config), "db", "upgrade")
    assert "already at revision 0002" in again.stdout
    assert "(up to date)" in invoke("--config", str(config), "db", "current").stdout


def test_state_set_and_show(config: Path) -> None:
    """A watermark set by hand shows up in `state show`; a wrong stream is exit 2."""
    invoke("--config", str(config), "db", "upgrade")
    ok = invoke("--config", str(config), "state", "set", "shop", "tickets", "2026-03-01T10:00:00+01:00")
    assert ok.exit_code == 0 and ok.stdout.strip() == "shop/tickets: watermark - -> 2026-03-01T09:00:00Z"
    shown = invoke("--config", str(config), "state", "show")
    assert "  tickets        2026-03-01T09:00:00Z  0" in shown.stdout
    assert "outbox: 0 pending, 0 failed, 0 sent" in shown.stdout
    bad = invoke("--config", str(config), "state", "set", "shop", "chats", "2026-03-01")
    assert bad.exit_code == 2
    assert "job 'shop' has no stream 'chats'" in bad.stderr
    unknown = invoke("--config", str(config), "state", "show", "nope")
    assert unknown.exit_code == 2 and "unknown job 'nope': jobs.yaml defines shop" in unknown.stderr


def test_runs_and_outbox_commands(config: Path, db_url: str) -> None:
    """`runs` lists recorded runs; `outbox --status failed` lists failed items and `outbox retry` re-queues them."""
    from datetime import UTC, datetime

    invoke("--config", str(config), "db", "upgrade")
    store = StateStore(db_url)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    run_id = store.start_run("shop", "incremental", None, now)
    store.update_run(
        run_id,
        status="succeeded",
        finished_at=now,
        counts={"tickets": {"objects": 4, "events": 3, "profiles": 1}},
    )
    with store.transaction() as conn:
        store.enqueue(
            conn,
            "shop",
            [OutboxEntry("event", "e1", {"x": 1}), OutboxEntry("event", "e2", {"x": 2})],
            run_id,
            now,
        )
    items = store.pending("shop", "event", limit=10)
    store.mark_delivered([items[0].id], {items[1].id: "Invalid email address"}, now)
    store.close()
    runs = invoke("--config", str(config), "runs")
    assert runs.exit_code == 0
    assert runs.stdout.splitlines()[1].split()[:9] == [
        str(run_id),
        "shop",
        "incremental",
        "2026-03-01T00:00:00Z",
        "2026-03-01T00:00:00Z",
        "succeeded",
        "4",
        "3",
        "1",
    ]
    failed = invoke("--config", str(config), "outbox", "shop", "--status", "failed")
    assert "e2" in failed.stdout and "Invalid email address" in failed.stdout and "e1" not in failed.stdout
    retried = invoke("--config", str(config), "outbox", "retry", "shop")
    assert retried.stdout.strip() == "shop: 1 failed item re-queued; the next run delivers them"
    assert (
        "outbox is empty for failed items"
        in invoke("--config", str(config), "outbox", "--status", "failed").stdout
    )


def test_run_on_postgres_behind_says_to_upgrade(config: Path, db_url: str) -> None:
    """State commands on a PostgreSQL database that is behind stop with exit 5 and the hint; SQLite upgrades."""
    result = invoke("--config", str(config), "state", "show")
    if db_url.startswith("sqlite"):
        assert result.exit_code == 0
    else:
        assert result.exit_code == 5
        assert result.stderr.strip().endswith("this etl needs 0002: run `etl db upgrade`")


def test_run_option_errors_are_usage_errors(config: Path) -> None:
    """Bad --since/--streams combinations are reported together with exit 2."""
    result = invoke(
        "--config", str(config), "run", "--since", "tomorrow", "--streams", "chats", "--output", "x"
    )
    assert result.exit_code == 2
    assert "--since: expected an ISO 8601 timestamp" in result.stderr
    assert (
        "--streams: expected a comma list of contacts, conversations, tickets, got 'chats'" in result.stderr
    )
    assert "--output only goes with --dry-run" in result.stderr


def test_help_lists_every_command() -> None:
    """Every command of docs/design.md §3.1 is in the help."""
    out = invoke("--help").stdout
    for name in ("run", "check", "db", "state", "runs", "outbox", "demo", "sandbox"):
        assert f"  {name} " in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["runs", "--limit", "0"],
            "etl: error: Invalid value for '--limit': 0 is not in the range 1<=x<=10000. "
            "(see `etl runs --help`)",
        ),
        (["nope"], "etl: error: No such command 'nope'. (see `etl --help`)"),
        (["run", "--bogus"], "etl: error: No such option '--bogus'. (see `etl run --help`)"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args: list[str], expected: str) -> None:
    """Click's usage errors come out as one line naming the help to read (real process)."""
    proc = subprocess.run([sys.executable, "-m", "etl", *TEXT, *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == expected


def test_outbox_prune_command(config: Path, db_url: str) -> None:
    """`etl outbox prune JOB --older-than` deletes old sent items; a bad duration is exit 2."""
    from datetime import UTC, datetime, timedelta

    invoke("--config", str(config), "db", "upgrade")
    store = StateStore(db_url)
    long_ago = datetime.now(UTC) - timedelta(days=100)
    with store.transaction() as conn:
        store.enqueue(
            conn, "shop", [OutboxEntry("event", "old", {}), OutboxEntry("event", "new", {})], None, long_ago
        )
    old, new = store.pending("shop", "event", limit=10)
    store.mark_delivered([old.id], {}, long_ago)
    store.mark_delivered([new.id], {}, datetime.now(UTC))
    store.close()
    pruned = invoke("--config", str(config), "outbox", "prune", "shop", "--older-than", "90d")
    assert pruned.exit_code == 0 and pruned.stdout.strip() == "shop: 1 sent item older than 90d deleted"
    listed = invoke("--config", str(config), "outbox", "shop")
    assert "new" in listed.stdout and "old" not in listed.stdout.split("\n", 1)[1]
    bad = invoke("--config", str(config), "outbox", "prune", "shop", "--older-than", "3 months")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "etl: error: --older-than: expected a duration like 15m, got '3 months'"


def test_outbox_is_a_group_whose_default_lists(tmp_path: Path, db_url: str) -> None:
    """`etl outbox JOB` lists; a job named like a subcommand is listed with `outbox list`; each subcommand
    has its own help; an option of another subcommand is a usage error, not silently ignored."""
    config = tmp_path / "jobs.yaml"
    config.write_text(JOBS.format(url=db_url).replace("  shop:", "  prune:"))
    assert invoke("--config", str(config), "db", "upgrade").exit_code == 0
    listed = invoke("--config", str(config), "outbox", "list", "prune")
    assert listed.exit_code == 0 and listed.stdout.strip() == "outbox is empty"
    retry_help = invoke("outbox", "retry", "--help")
    assert retry_help.exit_code == 0 and retry_help.stdout.startswith("Usage: cli outbox retry [OPTIONS] JOB")
    stray = subprocess.run(
        [
            sys.executable,
            "-m",
            "etl",
            *TEXT,
            "--config",
            str(config),
            "outbox",
            "prune",
            "--older-than",
            "3d",
        ],
        capture_output=True,
        text=True,
    )
    assert stray.returncode == 2
    assert stray.stderr.strip() == "etl: error: Missing argument 'JOB'. (see `etl outbox prune --help`)"
    ignored = subprocess.run(
        [sys.executable, "-m", "etl", *TEXT, "--config", str(config), "outbox", "--older-than", "3d"],
        capture_output=True,
        text=True,
    )
    assert ignored.returncode == 2
    assert (
        ignored.stderr.strip() == "etl: error: No such option '--older-than'. (see `etl outbox list --help`)"
    )


@pytest.mark.parametrize(("version", "code"), [("2.15", 2), ("2.9", 2), ("2.16", 0), ("2.17", 0)])
def test_check_refuses_an_intercom_version_before_2_16(tmp_path: Path, version: str, code: int) -> None:
    """`etl check` stops on an Intercom version older than 2.16 with the one-line reason and exit 2."""
    path = tmp_path / "jobs.yaml"
    path.write_text(
        JOBS.format(url="sqlite:///" + str(tmp_path / "s.db")).replace(
            "token_env: IC_TOKEN}", f'token_env: IC_TOKEN, version: "{version}"}}'
        )
    )
    result = invoke("--config", str(path), "check", env={"IC_TOKEN": "t", "KL_KEY": "k"})
    assert result.exit_code == code, result.output
    if code:
        assert result.stderr.strip() == (
            f"etl: error: jobs.shop.intercom.version: Intercom API version {version} is too old: 2.16 or later "
            "is required (older versions answer merged contacts with 404 and, before 2.12, send ticket_state "
            "as a bare string)"
        )
    else:
        assert result.stdout.startswith("shop: ok")


def test_db_commands_refuse_a_relative_sqlite_path_in_etl_database_url(tmp_path: Path) -> None:
    """Without a jobs.yaml, ETL_DATABASE_URL with a relative SQLite path is exit 2, and no file is created."""
    result = invoke(
        "--config", str(tmp_path / "none.yaml"), "db", "upgrade", env={"ETL_DATABASE_URL": "sqlite:///x.db"}
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "etl: error: ETL_DATABASE_URL: sqlite:///x.db is a relative SQLite path, which would depend on the "
        "working directory; give an absolute one (four slashes: sqlite:////var/lib/etl/state.db) or set "
        "database_url in jobs.yaml, where a relative path is relative to jobs.yaml"
    )
    assert not Path("x.db").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--since", "2099-01-01"],
            "etl: error: --since 2099-01-01T00:00:00Z is in the future: nothing has been updated in that window "
            "yet",
        ),
        (  # the year before start_date: what the Kubernetes backfill example used to do
            ["--since", "2025-01-01", "--until", "2025-02-01", "--dry-run"],
            "etl: error: job shop: the window [2025-01-01T00:00:00Z, 2025-02-01T00:00:00Z) ends before its "
            "start_date 2026-01-01T00:00:00Z, and no event older than start_date is ever emitted",
        ),
        (  # the window's end is its own start_date at the latest
            ["--since", "2025-12-01", "--until", "2026-01-01"],
            "etl: error: job shop: the window [2025-12-01T00:00:00Z, 2026-01-01T00:00:00Z) ends before its "
            "start_date 2026-01-01T00:00:00Z, and no event older than start_date is ever emitted",
        ),
    ],
)
def test_a_backfill_that_can_emit_nothing_is_refused(tmp_path: Path, args: list[str], expected: str) -> None:
    """A backfill in the future or entirely before start_date is exit 2 and one line, before any work."""
    path = tmp_path / "jobs.yaml"
    # a short retry budget: were the window not refused, the run would give up on the unreachable API soon
    path.write_text(
        JOBS.format(url=f"sqlite:///{tmp_path}/state.db").replace("IC_TOKEN}", "IC_TOKEN, retry_budget: 10s}")
    )
    result = invoke("--config", str(path), "run", *args, env={"IC_TOKEN": "t", "KL_KEY": "k"})
    assert result.exit_code == 2
    assert result.stderr.strip() == expected
    assert not (tmp_path / "state.db").exists()


def test_state_set_refuses_a_future_watermark_unless_forced(config: Path) -> None:
    """A watermark in the future would keep the stream from being read until then: exit 2, or --force."""
    invoke("--config", str(config), "db", "upgrade")
    refused = invoke("--config", str(config), "state", "set", "shop", "tickets", "2099-01-01")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        "etl: error: TS 2099-01-01T00:00:00Z is in the future: no run would read tickets until then; "
        "pass --force if that is what you want"
    )
    forced = invoke("--config", str(config), "state", "set", "shop", "tickets", "2099-01-01", "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.strip() == "shop/tickets: watermark - -> 2099-01-01T00:00:00Z"


def test_state_set_takes_the_jobs_lease(config: Path, db_url: str) -> None:
    """While a run holds the job's lease, `state set` is exit 75 naming the holder and moves nothing (the run
    would overwrite it when it finishes); once the run is gone it moves the watermark and frees the lease."""
    from datetime import UTC, datetime, timedelta

    invoke("--config", str(config), "db", "upgrade")
    store = StateStore(db_url)
    try:
        store.acquire_lock("shop", "cron-host:4711:run", timedelta(minutes=10), datetime.now(UTC))
        (_, _, expires), *_ = store.leases("shop")
        refused = invoke("--config", str(config), "state", "set", "shop", "tickets", "2026-03-01")
        assert refused.exit_code == 75
        assert refused.stderr.strip() == (
            "etl: error: shop/tickets: watermark not moved: job 'shop' is already running (lease held by "
            f"cron-host:4711:run until {expires.isoformat()}); try again later"
        )
        assert store.watermarks("shop") == {}
        store.release_lock("shop", "cron-host:4711:run")
        moved = invoke("--config", str(config), "state", "set", "shop", "tickets", "2026-03-01")
        assert moved.exit_code == 0
        assert moved.stdout.strip() == "shop/tickets: watermark - -> 2026-03-01T00:00:00Z"
        assert store.lock_holder("shop") is None
    finally:
        store.close()


def test_check_lists_what_would_make_run_fail_in_one_line(tmp_path: Path) -> None:
    """A missing variable, a future start_date and a missing database directory: exit 2, one line, all three."""
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(url="sqlite:///no/such/dir/state.db").replace("2026-01-01", "2099-01-01"))
    result = invoke("--config", str(path), "check", env={"IC_TOKEN": "t"})
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "etl: error: 3 problems: jobs.shop: environment variable KL_KEY is not set; jobs.shop.start_date: "
        "2099-01-01T00:00:00Z is in the future: no run reads anything until then; database: directory "
        f"{tmp_path}/no/such/dir does not exist; create it or change database_url"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only directory, and so would `etl run`")
def test_check_names_a_read_only_database_directory(tmp_path: Path) -> None:
    """SQLite writes its journal beside the database: a read-only directory fails every run, so check says so."""
    (tmp_path / "ro").mkdir()
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(url="sqlite:///ro/state.db"))
    (tmp_path / "ro").chmod(0o555)
    try:
        result = invoke("--config", str(path), "check", env={"IC_TOKEN": "t", "KL_KEY": "k"})
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"etl: error: database: directory {tmp_path}/ro is read-only; SQLite writes its journal beside state.db"
    )


@pytest.mark.parametrize("command", [["check"], ["run"], ["state", "show"]])
def test_an_unsupported_database_scheme_is_a_configuration_error(tmp_path: Path, command: list[str]) -> None:
    """`mysqlx://` is exit 2 naming what is expected, in every command, not exit 5 "Can't load plugin"."""
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(url="mysqlx://etl@db/etl"))
    result = invoke("--config", str(path), *command, env={"IC_TOKEN": "t", "KL_KEY": "k"})
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "etl: error: database_url: unsupported database mysqlx:// in 'mysqlx://etl@db/etl': expected "
        "sqlite:///etl-state.db or postgresql+psycopg://user@host/dbname"
    )


def test_check_refuses_a_metric_name_klaviyo_would_refuse(tmp_path: Path) -> None:
    """A metric name of 128 characters is exit 2 with its path (Klaviyo: "less than 128 characters")."""
    path = tmp_path / "jobs.yaml"
    text = JOBS.format(url=f"sqlite:///{tmp_path}/state.db")
    path.write_text(
        text + f'    metric_names: {{Created Ticket: "{"T" * 127}", Resolved Ticket: "{"R" * 128}"}}\n'
    )
    result = invoke("--config", str(path), "check", env={"IC_TOKEN": "t", "KL_KEY": "k"})
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "etl: error: jobs.shop.metric_names.Resolved Ticket: 128 characters; Klaviyo accepts metric names of at "
        "most 127"
    )


def test_help_gives_every_commands_whole_summary() -> None:
    """`etl --help` and each group's help show each command's first sentence whole, never cut with "..."."""
    from etl.cli import cli as group

    groups = {"": group, **{name: c for name, c in group.commands.items() if isinstance(c, click.Group)}}
    assert set(groups) == {"", "db", "outbox", "sandbox", "state"}
    for name, command_group in groups.items():
        out = invoke(*([name] if name else []), "--help").stdout.split("\nCommands:\n")[1]
        assert "..." not in out
        flat = " ".join(out.split())
        for sub, command in command_group.commands.items():
            summary = " ".join((command.help or "").split("\n\n")[0].split())
            assert f"{sub} {summary}" in flat


def test_help_says_timestamps_without_an_offset_are_utc() -> None:
    """--since, --until and `state set`'s TS: the help says what a naive timestamp means."""
    run_help = " ".join(invoke("run", "--help").stdout.split())
    assert "--since TS Backfill from this time (ISO 8601 or date; UTC unless it has an offset)" in run_help
    assert "--until TS Backfill up to this time (exclusive; UTC unless it has an offset)" in run_help
    set_help = " ".join(invoke("state", "set", "--help").stdout.split())
    assert (
        "TS is an ISO 8601 timestamp or date; without an offset (2026-03-01, 2026-03-01T09:00) it is UTC."
        in (set_help)
    )


def test_json_output_of_state_show_outbox_check_and_db_current(config: Path, db_url: str) -> None:
    """--json: one JSON object per line, times in UTC or null, like `etl runs --json`."""
    import json
    from datetime import UTC, datetime, timedelta

    env = {"IC_TOKEN": "t", "KL_KEY": "k"}
    assert json.loads(invoke("--config", str(config), "db", "current", "--json").stdout) == {
        "database": redact_url(db_url),
        "revision": None,
        "head": "0002",
        "up_to_date": False,
    }
    invoke("--config", str(config), "db", "upgrade")
    invoke("--config", str(config), "state", "set", "shop", "tickets", "2026-03-01T09:00")
    store = StateStore(db_url)
    now = datetime(2026, 3, 1, 10, tzinfo=UTC)
    with store.transaction() as conn:
        store.enqueue(conn, "shop", [OutboxEntry("event", "e1", {"x": 1})], None, now)
    store.acquire_lock("shop:backfill:w", "host:1:ab", timedelta(minutes=5), now)
    store.start_run("shop", "incremental", None, now)  # still running: no finished_at
    store.close()
    (run,) = map(json.loads, invoke("--config", str(config), "runs", "--json").stdout.splitlines())
    assert run["started_at"] == "2026-03-01T10:00:00Z" and run["finished_at"] is None
    (shown,) = map(json.loads, invoke("--config", str(config), "state", "show", "--json").stdout.splitlines())
    assert shown == {
        "job": "shop",
        "streams": {
            "contacts": {"watermark": None, "snapshots": 0},
            "conversations": {"watermark": None, "snapshots": 0},
            "tickets": {"watermark": "2026-03-01T09:00:00Z", "snapshots": 0},
        },
        "outbox": {"pending": 1, "failed": 0, "sent": 0},
        "leases": [{"name": "shop:backfill:w", "owner": "host:1:ab", "expires_at": "2026-03-01T10:05:00Z"}],
    }
    (item,) = map(json.loads, invoke("--config", str(config), "outbox", "shop", "--json").stdout.splitlines())
    assert {k: v for k, v in item.items() if k != "id"} == {
        "job": "shop",
        "kind": "event",
        "unique_id": "e1",
        "status": "pending",
        "attempts": 0,
        "last_error": None,
        "created_at": "2026-03-01T10:00:00Z",
        "sent_at": None,
    }
    checked = [
        json.loads(line)
        for line in invoke("--config", str(config), "check", "--json", env=env).stdout.splitlines()
    ]
    assert checked == [
        {
            "job": "shop",
            "streams": ["contacts", "conversations", "tickets"],
            "intercom": "http://127.0.0.1:1",
            "klaviyo": "http://127.0.0.1:1",
            "credentials": "not checked",
            "notes": [],
        },
        {
            "database": checked[1]["database"],
            "revision": "0002",
            "head": "0002",
            "status": "revision 0002, up to date",
        },
    ]


def test_the_readmes_shell_completion_commands_produce_a_script() -> None:
    """Each `_ETL_COMPLETE=<shell>_source etl` the README gives prints that shell's completion script for etl."""
    import re

    documented = re.findall(r"_ETL_COMPLETE=(\w+)_source etl", (ROOT / "README.md").read_text())
    assert documented == ["bash", "zsh", "fish"]
    expected = {
        "bash": "complete -o nosort -F _etl_completion etl",
        "zsh": "compdef _etl_completion etl",
        "fish": 'complete --no-files --command etl --arguments "(_etl_completion)"',
    }
    for shell in documented:
        proc = subprocess.run(
            [sys.executable, "-m", "etl"],
            env={**os.environ, "_ETL_COMPLETE": f"{shell}_source"},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0 and proc.stderr == ""
        assert expected[shell] in proc.stdout


def test_the_etl_process_collects_young_garbage_every_10000_allocations() -> None:
    """The entry point raises the collector's young-generation threshold (Python's 700 cost a first sync
    10-13% of its CPU in collections) and leaves the older generations' as they are."""
    probe = (
        "import gc, sys\n"
        "before = gc.get_threshold()\n"
        "from etl.cli import main\n"
        "sys.argv = ['etl', '--version']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(before, gc.get_threshold())\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "(700, 10, 10) (10000, 10, 10)"
