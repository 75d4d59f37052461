"""The `etl` command line (docs/design.md §3.1): click commands only.

Commands build objects and call the library; `EtlError` becomes an exit code in ONE place (`EtlGroup.invoke`).
Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from etl import __version__, logs
from etl.errors import ConfigError, EtlError, Interrupted, LockHeld, UsageError
from etl.models import STREAMS, RunOptions, iso_z
from etl.report import render_table

if TYPE_CHECKING:
    from etl.config import JobSettings, Settings
    from etl.state import StateStore

# etl.config, etl.state and etl.lease import SQLAlchemy, requests and YAML (~0.4 s of CPU):
# commands import them when they run, so `etl --help` starts with click alone (docs/bench-results.md)

_freeze_imports = False  # set by main(): this process is etl's own, not a test invoking the CLI in-process


@contextmanager
def _frozen_imports() -> Iterator[None]:
    """A command's libraries imported with the cyclic GC off, then frozen (`gc.freeze`).

    What SQLAlchemy, requests and etl's modules build at import (~50k objects) lives until the process ends,
    yet every full collection walks it again, and the interpreter collects twice on its way out: ~0.1 s of the
    CPU of a run that finds nothing new. Frozen, the collector skips it; what the command creates afterwards is
    collected as before. Only under main(): a test process keeps its collector to itself.
    """
    if not _freeze_imports:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


# glibc's malloc gives a thread that allocates while another does an arena of its own (up to 8 per core), and
# what is freed in one arena is never reused by another thread's: with the readers, the per-contact fan-out
# and the delivery thread, a first sync kept ~50 MB of freed memory spread over its arenas (malloc's own
# counts, 100k workspace; 15 MB with one arena). Two are enough: the GIL lets one thread run Python at a time.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # <malloc.h>


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before threads start; True when set. Elsewhere (musl, macOS, Windows), or
    when the operator chose MALLOC_ARENA_MAX themselves, nothing happens."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name (macOS)
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


class HelpGroup(click.Group):
    """A group whose help gives each command's whole first sentence: click cuts it to one line with "..."."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class EtlGroup(HelpGroup):
    """Turns every EtlError into its one-line message and exit code; a bug is exit 1 without a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        if ctx.parent is None:  # the top level: logging is set up before click looks for the command, so an
            p = ctx.params  # unknown command is a JSON line too under `--log-format json`
            logs.configure(p["log_format"], _verbosity(p["log_level"], p["verbose"], p["quiet"]))
        return rest

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:  # `etl --help | head`: the help is written while the arguments are parsed
            return super().make_context(*args, **kwargs)
        except BrokenPipeError:
            _stdout_closed()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EtlError as exc:
            _fail(str(exc), exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except BrokenPipeError:
            _stdout_closed()
        except KeyboardInterrupt as exc:
            stop = Interrupted.of(exc)
            if ctx.invoked_subcommand == "run":
                _fail(
                    f"{stop}: the run is recorded as failed and its lease released; running again resumes",
                    stop.exit_code,
                )
            _fail(str(stop), stop.exit_code)
        except Exception as exc:  # a bug: say so on one line; -v shows the traceback
            obj = ctx.obj if isinstance(ctx.obj, Cli) else None
            trace = None
            if obj is not None and obj.verbosity > 0:
                import traceback

                trace = traceback.format_exc()
            _fail(
                f"unexpected error ({type(exc).__name__}: {logs.scrub(str(exc))[:300]}); "
                "this is a bug, please report it (run with -v for the traceback)",
                1,
                trace,
            )


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _stdout_closed() -> NoReturn:
    """Whoever reads our stdout stopped (`etl run --dry-run | head`): end quietly with exit 0, like `cat`.

    Python ignores SIGPIPE, so the closed pipe arrives as BrokenPipeError on a write. What is still buffered
    for stdout would fail again when the interpreter flushes it at exit ("Exception ignored …", exit 120), so
    stdout is pointed at /dev/null first (the recipe of the Python docs, "Note on SIGPIPE").
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(0)


def _fail(message: str, code: int, trace: str | None = None) -> NoReturn:
    click.echo(logs.error_line(message, code, exception=trace), err=True)
    sys.exit(code)


@dataclass
class Cli:
    """What the top-level options decide, handed to every command."""

    config: str | None
    verbosity: int

    def settings(self) -> Settings:
        from etl.config import config_path, load_settings

        return load_settings(config_path(self.config, os.environ))

    def store(self, *, migrate_check: bool = True) -> StateStore:
        from etl.config import ENV_DATABASE_URL, config_path, env_database_url

        path = config_path(self.config, os.environ)
        if not path.exists() and os.environ.get(ENV_DATABASE_URL):
            url = env_database_url(os.environ)  # db commands work without a jobs.yaml
        else:
            url = self.settings().database_url
        if not migrate_check:
            from etl.state import StateStore

            store = StateStore(url)
        else:
            from etl.runner import writable_store

            store = writable_store(url)  # says so when it creates the database
        click.get_current_context().call_on_close(store.close)  # no connection outlives the command
        return store


def _now() -> datetime:
    return datetime.now(UTC)


def _redacted(url: str) -> str:
    from etl.state import redact_url

    return redact_url(url)


# --json: one JSON object per line (NDJSON), times as ISO 8601 UTC (`…Z`) or null, as `etl runs --json` began
_json_option = click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line instead of the table (times in UTC)."
)


def _echo_json(record: dict[str, Any]) -> None:
    click.echo(json.dumps(record, ensure_ascii=False))


@click.group(cls=EtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="etl")
@click.option(
    "--config", "config", metavar="PATH", help="jobs.yaml to use (default: $ETL_CONFIG, then ./jobs.yaml)."
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log format (default: text on a TTY, else JSON).",
)
@click.option(
    "--log-level",
    type=click.Choice(list(logs.LOG_LEVELS)),
    help="Lowest level logged (default: info); below info hides each run's summary. Overrides -v/-q.",
)
@click.option("-v", "--verbose", count=True, help="More logging: --log-level debug.")
@click.option("-q", "--quiet", count=True, help="Less logging: --log-level warning (-qq: error).")
@click.pass_context
def cli(
    ctx: click.Context,
    config: str | None,
    log_format: str | None,
    log_level: str | None,
    verbose: int,
    quiet: int,
) -> None:
    """Keep a Klaviyo account in step with an Intercom workspace.

    \b
    Examples:
      etl check                      validate jobs.yaml and the environment
      etl db upgrade                 create or migrate the state database
      etl run                        run every job incrementally
      etl run shop --dry-run         print what would be sent, touch nothing
      etl demo                       the whole job against the built-in sandbox
    """
    ctx.obj = Cli(config=config, verbosity=_verbosity(log_level, verbose, quiet))


def _verbosity(log_level: str | None, verbose: int, quiet: int) -> int:
    """--log-level when given, else -v/-q: 1 debug, 0 info, -1 warning, -2 error."""
    return logs.LOG_LEVELS[log_level] if log_level else verbose - quiet


# -- run ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option(
    "--dry-run", is_flag=True, help="Read Intercom and infer, print what would be sent; write nothing."
)
@click.option("--output", metavar="PATH", help="Dry-run output file (NDJSON); default stdout.")
@click.option(
    "--since",
    metavar="TS",
    help="Backfill from this time (ISO 8601 or date; UTC unless it has an offset); never moves watermarks.",
)
@click.option(
    "--until",
    metavar="TS",
    help="Backfill up to this time (exclusive; UTC unless it has an offset); default now.",
)
@click.option(
    "--replay", is_flag=True, help="Re-emit events for the window even where snapshots say nothing changed."
)
@click.option("--streams", metavar="LIST", help="Comma list of streams (default: the job's streams).")
@click.option(
    "--metrics-file",
    metavar="PATH",
    help="Write Prometheus text metrics here (node_exporter textfile); other jobs' series in it are kept.",
)
@click.option(
    "--pushgateway",
    metavar="URL",
    help="Push the metrics to this Prometheus Pushgateway (one group per job and mode).",
)
@click.pass_obj
def run(obj: Cli, jobs: tuple[str, ...], **flags: Any) -> None:
    """Run jobs (all jobs when none is named).

    \b
    Examples:
      etl run                                    incremental run of every job
      etl run shop --since 2026-01-01 --until 2026-02-01   backfill January
      etl run shop --dry-run --output audit.ndjson
    """
    with _frozen_imports():
        from etl.runner import run_jobs
    if _freeze_imports:  # etl's own process (not a test invoking the CLI): before any thread starts
        limit_malloc_arenas()

    # Kubernetes stops a pod with SIGTERM: unwind like Ctrl-C, so the run is recorded and its lease released
    signal.signal(signal.SIGTERM, _interrupt)
    options = _run_options(**flags)  # the options above, by name
    settings = obj.settings()
    _refuse_empty_backfill(options, settings.select(list(jobs)), _now())
    code = run_jobs(settings, list(jobs), options, summary=obj.verbosity >= 0)
    sys.exit(code)


def _refuse_empty_backfill(options: RunOptions, jobs: list[JobSettings], now: datetime) -> None:
    """A backfill whose window can emit nothing is a mistake (a wrong year, a slice before start_date), not a
    quiet success: exit 2 before any work."""
    since = options.since
    if since is None:
        return
    if since >= now:
        raise ConfigError(
            f"--since {iso_z(since)} is in the future: nothing has been updated in that window yet"
        )
    until = min(options.until or now, now)
    problems = [
        f"job {job.name}: the window [{iso_z(since)}, {iso_z(until)}) ends before its start_date "
        f"{iso_z(job.start_date)}, and no event older than start_date is ever emitted"
        for job in jobs
        if until <= job.start_date
    ]
    if problems:
        raise ConfigError(problems)


def _run_options(
    dry_run: bool,
    output: str | None,
    since: str | None,
    until: str | None,
    replay: bool,
    streams: str | None,
    metrics_file: str | None,
    pushgateway: str | None,
) -> RunOptions:
    problems: list[str] = []

    def stamp(flag: str, value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            from etl.config import parse_timestamp

            return parse_timestamp(value)
        except ValueError as exc:
            problems.append(f"{flag}: {exc}")
            return None

    start, end = stamp("--since", since), stamp("--until", until)
    if until is not None and since is None:
        problems.append("--until needs --since (a backfill window is [since, until))")
    if start and end and start >= end:
        problems.append("--since must be earlier than --until")
    if output and not dry_run:
        problems.append("--output only goes with --dry-run")
    chosen: tuple[str, ...] | None = None
    if streams is not None:
        names = tuple(s.strip() for s in streams.split(",") if s.strip())
        bad = [s for s in names if s not in STREAMS]
        if bad or not names:
            problems.append(f"--streams: expected a comma list of {', '.join(STREAMS)}, got {streams!r}")
        chosen = names
    from etl.metrics import gateway_problem  # prometheus_client: only when `run` is called

    if pushgateway is not None and (problem := gateway_problem(pushgateway)):
        problems.append(problem)
    if problems:
        raise ConfigError(problems)
    return RunOptions(dry_run, output, start, end, replay, chosen, metrics_file, pushgateway)


# -- backfill-plan -----------------------------------------------------------------------------------
@cli.command("backfill-plan")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--since", metavar="TS", required=True, help="Start of the window (ISO 8601 or date; UTC).")
@click.option(
    "--until", metavar="TS", required=True, help="End of the window, exclusive (ISO 8601 or date; UTC)."
)
@click.option("--slices", type=click.IntRange(1, 10_000), help="Cut the window into this many equal slices.")
@click.option(
    "--every", metavar="DURATION", help="One slice per calendar month (1mo, 3mo) or duration (7d, 12h)."
)
@click.option(
    "--index", type=click.IntRange(0), help="Print only this slice (a Job's $JOB_COMPLETION_INDEX)."
)
@_json_option
@click.pass_obj
def backfill_plan(
    obj: Cli,
    jobs: tuple[str, ...],
    since: str,
    until: str,
    slices: int | None,
    every: str | None,
    index: int | None,
    as_json: bool,
) -> None:
    """Print the --since/--until slices of a backfill window, one line per slice (a Kubernetes Indexed Job).

    The slices tile [since, until) without gaps or overlaps. A window or slice that `etl run` would refuse
    (one ending before a job's start_date, or starting in the future) is refused here, before any pod runs.

    \b
    Examples:
      etl backfill-plan shop --since 2026-01-01 --until 2026-07-01 --every 1mo
      etl run shop $(etl backfill-plan shop --since 2026-01-01 --until 2026-07-01 --slices 6 --index 2)
    """
    from etl.config import parse_duration
    from etl.windows import plan_slices

    options = _run_options(
        dry_run=False,
        output=None,
        since=since,
        until=until,
        replay=False,
        streams=None,
        metrics_file=None,
        pushgateway=None,
    )  # the same checks as `run`
    assert options.since is not None and options.until is not None  # both flags are required
    if (slices is None) == (every is None):
        raise UsageError("give one of --slices N or --every DURATION (1mo, 7d, ...)")
    months, step = None, None
    if every is not None:
        text = every.strip()
        try:
            if text.endswith("mo") and text[:-2].isdigit():
                months = int(text[:-2])
            else:
                step = parse_duration(text)
        except ValueError as exc:
            raise UsageError(f"--every: {exc} (or months: 1mo)") from None
    try:
        plan = plan_slices(options.since, options.until, slices=slices, months=months, step=step)
    except ValueError as exc:
        raise UsageError(f"--slices/--every: {exc}") from None
    selected, now = obj.settings().select(list(jobs)), _now()
    _refuse_empty_backfill(options, selected, now)  # the whole window, exactly as `etl run` would
    refused: list[tuple[int, ConfigError]] = []
    for at, (lo, hi) in enumerate(plan):  # a pod would exit 2 on any of these: say so now, for all of them
        try:
            _refuse_empty_backfill(RunOptions(since=lo, until=hi), selected, now)
        except ConfigError as exc:
            refused.append((at, exc))
    if refused:
        at, first = refused[0]
        more = f" (and {len(refused) - 1} more slices)" if len(refused) > 1 else ""
        raise ConfigError(
            f"slice {at} of {len(plan)}{more}: {first}; `etl run` would refuse it: cut another window"
        )
    if index is not None and index >= len(plan):
        raise UsageError(f"--index {index}: the plan has {len(plan)} slices (0-{len(plan) - 1})")
    for at, (lo, hi) in enumerate(plan):
        if index is None or at == index:
            if as_json:
                _echo_json({"index": at, "since": iso_z(lo), "until": iso_z(hi)})
            else:
                click.echo(f"--since {iso_z(lo)} --until {iso_z(hi)}")


# -- check -------------------------------------------------------------------------------------------
@cli.command()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--online", is_flag=True, help="Also test both credentials against the APIs.")
@_json_option
@click.pass_obj
def check(obj: Cli, jobs: tuple[str, ...], online: bool, as_json: bool) -> None:
    """Validate jobs.yaml, the environment and the state database (and, with --online, the credentials).

    Exit 2 lists every problem that would make `etl run` fail.

    \b
    Examples:
      etl check
      etl --config prod.yaml check shop --online
    """
    settings = obj.settings()
    selected = settings.select(list(jobs))
    problems: list[str] = []
    now = _now()
    for job in selected:
        from etl.config import missing_secrets

        missing = missing_secrets(job, os.environ)
        for name in missing:
            problems.append(f"jobs.{job.name}: environment variable {name} is not set")
        if job.start_date > now:  # every window would be empty: runs succeed and send nothing
            problems.append(
                f"jobs.{job.name}.start_date: {iso_z(job.start_date)} is in the future: no run reads anything "
                "until then"
            )
    database = _database_status(settings.database_url)
    problems += database.problems
    if problems:
        raise ConfigError(problems)
    for job in selected:
        notes: list[str] = []
        if online:
            from etl.runner import check_online

            notes = check_online(job)
        if as_json:
            _echo_json(
                {
                    "job": job.name,
                    "streams": list(job.streams),
                    "intercom": job.intercom.base_url,
                    "klaviyo": job.klaviyo.base_url,
                    "credentials": "accepted" if online else "not checked",
                    "notes": notes,
                }
            )
            continue
        click.echo(
            f"{job.name}: ok ({', '.join(job.streams)}; Intercom {job.intercom.base_url}, "
            f"Klaviyo {job.klaviyo.base_url}{'; credentials accepted' if online else ''})"
        )
        for line in notes:  # native Intercom metrics and the flows to re-point (docs/design.md §4)
            click.echo(line)
    url = _redacted(settings.database_url)
    if as_json:
        _echo_json(
            {"database": url, "revision": database.revision, "head": database.head, "status": database.status}
        )
    else:
        click.echo(f"database: {url} ({database.status})")


@dataclass
class DatabaseStatus:
    status: str  # for the operator: what `etl run` will find, and do
    revision: str | None = None
    head: str | None = None
    problems: list[str] = field(default_factory=list)  # what would make `etl run` fail


def _database_status(url: str) -> DatabaseStatus:
    """What `etl run` will find in the state database, and what would make it fail (read-only; exit 5 if
    unreachable). On SQLite a missing or old schema is fine: `etl run` creates and upgrades it by itself."""
    from etl.state import StateStore

    store = StateStore(url, read_only=True)
    try:
        problems = _sqlite_file_problems(store) if store.dialect == "sqlite" else []
        head = store.head_revision()
        if not store.exists():
            return DatabaseStatus(
                "not created yet: `etl run` creates it (or `etl db upgrade`)", None, head, problems
            )
        current = store.current_revision()
        if current == head:
            return DatabaseStatus(f"revision {current}, up to date", current, head, problems)
        if store.dialect == "sqlite":
            status = f"revision {current or 'none'}, behind: `etl run` upgrades it (or `etl db upgrade`)"
            return DatabaseStatus(status, current, head, problems)
        problems.append(
            f"database: revision {current or 'none (empty)'}, this etl needs {head}: run `etl db upgrade` "
            "(until then `etl run` stops with exit 5)"
        )
        return DatabaseStatus(f"revision {current or 'none'}, behind", current, head, problems)
    finally:
        store.close()


def _sqlite_file_problems(store: StateStore) -> list[str]:
    """An SQLite database needs a directory that exists and that it may write (its -wal and -shm files live
    beside it), and a file it may write; without them every `etl run` fails with exit 5."""
    path = Path(store.location)
    if not path.is_absolute():  # in memory
        return []
    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        return [f"database: directory {path.parent} {what}; create it or change database_url"]
    problems = []
    if not os.access(path.parent, os.W_OK):
        problems.append(
            f"database: directory {path.parent} is read-only; SQLite writes its journal beside {path.name}"
        )
    if path.exists() and not os.access(path, os.W_OK):
        problems.append(f"database: {path} is read-only")
    return problems


# -- db ----------------------------------------------------------------------------------------------
@cli.group(cls=HelpGroup)
def db() -> None:
    """Alembic migrations of the state database."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: Cli) -> None:
    """Create or migrate the state database to the newest schema."""
    store = obj.store(migrate_check=False)
    before, after = store.upgrade()
    if before == after:
        click.echo(f"{_redacted(store.url)}: already at revision {after}")
    else:
        click.echo(f"{_redacted(store.url)}: upgraded from {before or 'empty'} to {after}")


@db.command("current")
@_json_option
@click.pass_obj
def db_current(obj: Cli, as_json: bool) -> None:
    """Show the database's schema revision and the newest one this etl knows."""
    store = obj.store(migrate_check=False)
    current, head = store.current_revision(), store.head_revision()
    if as_json:
        _echo_json(
            {
                "database": _redacted(store.url),
                "revision": current,
                "head": head,
                "up_to_date": current == head,
            }
        )
        return
    state = "up to date" if current == head else "behind: run `etl db upgrade`"
    click.echo(f"{_redacted(store.url)}: revision {current or 'none (empty)'}, head {head} ({state})")


# -- state -------------------------------------------------------------------------------------------
@cli.group(cls=HelpGroup)
def state() -> None:
    """Inspect or move watermarks."""


@state.command("show")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@_json_option
@click.pass_obj
def state_show(obj: Cli, jobs: tuple[str, ...], as_json: bool) -> None:
    """Watermarks, snapshot counts, outbox backlog and lock of each job.

    \b
    Example:
      etl state show shop
    """
    settings = obj.settings()
    store = obj.store()
    for job in settings.select(list(jobs)):
        marks, snaps = store.watermarks(job.name), store.snapshot_counts(job.name)
        backlog, leases = store.outbox_counts(job.name), store.leases(job.name)
        if as_json:
            _echo_json(
                {
                    "job": job.name,
                    "streams": {
                        s: {"watermark": iso_z(marks.get(s)), "snapshots": snaps.get(s, 0)}
                        for s in job.streams
                    },
                    "outbox": {k: backlog.get(k, 0) for k in ("pending", "failed", "sent")},
                    "leases": [
                        {"name": name, "owner": owner, "expires_at": iso_z(expires)}
                        for name, owner, expires in leases
                    ],
                }
            )
            continue
        click.echo(f"job {job.name}")
        rows = [[s, iso_z(marks.get(s)) or "-", str(snaps.get(s, 0))] for s in job.streams]
        click.echo(render_table(["stream", "watermark", "snapshots"], rows, indent="  "))
        click.echo(
            "  outbox: " + ", ".join(f"{backlog.get(k, 0)} {k}" for k in ("pending", "failed", "sent"))
        )
        if not leases:
            click.echo("  lock: free")
        for name, owner, expires in leases:
            what = "lock" if name == job.name else name[len(job.name) + 1 :]  # backfill:<window>
            click.echo(f"  {what}: held by {owner} until {iso_z(expires) or '-'}")


@state.command("set")
@click.argument("job")
@click.argument("stream")
@click.argument("ts")
@click.option(
    "--force", is_flag=True, help="Accept a watermark in the future (the stream is not read until then)."
)
@click.pass_obj
def state_set(obj: Cli, job: str, stream: str, ts: str, force: bool) -> None:
    """Move a watermark by hand (also backwards: the next run re-reads from there).

    TS is an ISO 8601 timestamp or date; without an offset (2026-03-01, 2026-03-01T09:00) it is UTC.

    \b
    Example:
      etl state set shop conversations 2026-03-01T00:00:00Z
    """
    settings = obj.settings()
    (selected,) = settings.select([job])
    if stream not in selected.streams:
        raise UsageError(
            f"job {job!r} has no stream {stream!r}; its streams are {', '.join(selected.streams)}"
        )
    try:
        from etl.config import parse_timestamp

        value = parse_timestamp(ts)
    except ValueError as exc:
        raise UsageError(f"TS: {exc}") from None
    if value > _now() and not force:  # runs read [watermark - lookback, now): none would read this stream
        raise UsageError(
            f"TS {iso_z(value)} is in the future: no run would read {stream} until then; "
            "pass --force if that is what you want"
        )
    store = obj.store()
    # the job's lease, as a run takes it: a run going now would overwrite the watermark when it finishes
    owner = f"etl-state-set:{socket.gethostname()}:{os.getpid()}"
    try:
        from etl.lease import LeaseKeeper

        with LeaseKeeper.held(store, job, owner, selected.lock_ttl, _now):
            before = store.watermarks(job).get(stream)
            store.set_watermark(job, stream, value, _now(), force=True)
    except LockHeld as exc:
        raise LockHeld(f"{job}/{stream}: watermark not moved: {exc}") from None
    click.echo(f"{job}/{stream}: watermark {iso_z(before) or '-'} -> {iso_z(value) or '-'}")


# -- runs / outbox -------------------------------------------------------------------------------------
@cli.command("runs")
@click.argument("job", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="How many runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run (with all counts).")
@click.pass_obj
def runs_cmd(obj: Cli, job: str | None, limit: int, as_json: bool) -> None:
    """Run history, newest first.

    \b
    Example:
      etl runs shop --limit 5
    """
    if job:
        obj.settings().select([job])
    rows = obj.store().runs(job, limit)
    if as_json:
        for r in rows:
            _echo_json(
                {
                    "id": r.id,
                    "job": r.job,
                    "mode": r.mode,
                    "started_at": iso_z(r.started_at),
                    "finished_at": iso_z(r.finished_at),
                    "status": r.status,
                    "window": r.window,
                    "counts": r.counts,
                    "error": r.error,
                }
            )
        return
    table = []
    for r in rows:
        totals: dict[str, int] = {}
        for per_stream in (r.counts or {}).values():
            if isinstance(per_stream, dict):
                for key in ("objects", "events", "profiles"):
                    totals[key] = totals.get(key, 0) + int(per_stream.get(key, 0) or 0)
        table.append(
            [
                str(r.id),
                r.job,
                r.mode,
                iso_z(r.started_at) or "-",
                iso_z(r.finished_at) or "-",
                r.status,
                str(totals.get("objects", 0)),
                str(totals.get("events", 0)),
                str(totals.get("profiles", 0)),
                (r.error or "")[:60],
            ]
        )
    if not table:
        click.echo("no runs yet")
        return
    header = ["id", "job", "mode", "started", "finished", "status", "objects", "events", "profiles", "error"]
    click.echo(render_table(header, table))


class OutboxGroup(HelpGroup):
    """`etl outbox [JOB]` lists; `etl outbox retry|prune JOB` act. An unknown first word is a JOB to list, so
    `etl outbox shop` works and a job that happens to be named `prune` is still listed by `etl outbox list prune`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if not args or (first not in self.commands and not any(a in ("-h", "--help") for a in args)):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@cli.group("outbox", cls=OutboxGroup)
def outbox() -> None:
    """Inspect the outbox; re-queue failed items; delete items Klaviyo accepted long ago.

    \b
    Examples:
      etl outbox shop --status failed
      etl outbox retry shop
      etl outbox prune shop --older-than 90d
    """


@outbox.command("list")
@click.argument("job", required=False)
@click.option("--status", type=click.Choice(["pending", "failed", "sent"]), help="Only items in this status.")
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="How many items."
)
@_json_option
@click.pass_obj
def outbox_list(obj: Cli, job: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """List outbox items, newest first (the default: `etl outbox [JOB]` is `etl outbox list [JOB]`).

    \b
    Example:
      etl outbox shop --status failed
    """
    if job:
        obj.settings().select([job])
    items = obj.store().outbox_items(job, status, limit)
    if as_json:
        for i in items:
            _echo_json({**i, "created_at": iso_z(i["created_at"]), "sent_at": iso_z(i["sent_at"])})
        return
    if not items:
        click.echo("outbox is empty" + (f" for {status} items" if status else ""))
        return
    rows = [
        [
            str(i["id"]),
            i["job"],
            i["kind"],
            i["unique_id"],
            i["status"],
            str(i["attempts"]),
            iso_z(i["created_at"]) or "-",
            (i["last_error"] or "")[:80],
        ]
        for i in items
    ]
    click.echo(
        render_table(["id", "job", "kind", "unique_id", "status", "attempts", "created", "last_error"], rows)
    )


@outbox.command("retry")
@click.argument("job")
@click.pass_obj
def outbox_retry(obj: Cli, job: str) -> None:
    """Re-queue the job's failed items; the next run delivers them.

    \b
    Example:
      etl outbox retry shop
    """
    obj.settings().select([job])
    n = obj.store().retry_failed(job)
    click.echo(f"{job}: {n} failed item{'s' if n != 1 else ''} re-queued; the next run delivers them")


@outbox.command("prune")
@click.argument("job")
@click.option(
    "--older-than",
    metavar="DURATION",
    default="30d",
    show_default=True,
    help="Delete sent items delivered longer ago than this.",
)
@click.pass_obj
def outbox_prune(obj: Cli, job: str, older_than: str) -> None:
    """Delete items Klaviyo accepted long ago (the outbox otherwise keeps them forever); pending and failed
    items are never deleted.

    \b
    Example:
      etl outbox prune shop --older-than 90d
    """
    obj.settings().select([job])
    try:
        from etl.config import parse_duration

        age = parse_duration(older_than)
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}") from None
    n = obj.store().prune_sent(job, _now() - age)
    click.echo(f"{job}: {n} sent item{'s' if n != 1 else ''} older than {older_than} deleted")


# -- demo / sandbox ----------------------------------------------------------------------------------
@cli.command()
@click.option("--seed", default=7, show_default=True, help="Seed of the generated workspace.")
@click.option(
    "--workdir", metavar="DIR", help="Where to keep the demo's state database (default: a temp dir)."
)
@click.pass_obj
def demo(obj: Cli, seed: int, workdir: str | None) -> None:
    """Run the whole job end to end against the built-in sandbox (no credentials needed).

    Logs are kept to warnings (the summaries tell the story); -v shows the run's log lines too. The demo is
    read by a person, so its lines are text unless --log-format says otherwise.
    """
    from etl.demo import run_demo

    if click.get_current_context().find_root().params.get("log_format") is None:
        logs.configure("text", obj.verbosity)
    if obj.verbosity <= 0:
        logging.getLogger(logs.LOGGER_NAME).setLevel(logging.WARNING)
    sys.exit(run_demo(seed=seed, workdir=Path(workdir) if workdir else None))


@cli.group(cls=HelpGroup)
def sandbox() -> None:
    """The built-in fake Intercom and Klaviyo servers."""


@sandbox.command("serve")
@click.option("--seed", default=7, show_default=True, help="Seed of the generated workspace.")
@click.option("--intercom-port", default=8701, show_default=True, help="Port of the fake Intercom.")
@click.option("--klaviyo-port", default=8702, show_default=True, help="Port of the fake Klaviyo.")
@click.option(
    "--intercom-latency-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Milliseconds each Intercom request waits before its answer (e.g. 250: a search page in the field).",
)
@click.option(
    "--klaviyo-latency-ms",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Milliseconds each Klaviyo request waits before its answer (e.g. 150).",
)
def sandbox_serve(
    seed: int, intercom_port: int, klaviyo_port: int, intercom_latency_ms: int, klaviyo_latency_ms: int
) -> None:
    """Start the sandbox Intercom + Klaviyo servers on loopback for manual use (Ctrl-C stops).

    A port of 0 takes any free port; the URLs printed at start name the ports bound. The latency flags add a
    real API's round trip to every request; the rate limits stay the APIs' own either way.
    """
    from etl.demo import serve_sandbox

    serve_sandbox(
        seed=seed,
        intercom_port=intercom_port,
        klaviyo_port=klaviyo_port,
        intercom_latency=intercom_latency_ms / 1000,
        klaviyo_latency=klaviyo_latency_ms / 1000,
    )


# -- explain -----------------------------------------------------------------------------------------
@cli.command()
@click.argument("kind", metavar="KIND")
@click.argument("object_id", metavar="ID")
@click.option("--job", "job_name", metavar="JOB", help="The job (default: the only job of jobs.yaml).")
@click.option("--live", is_flag=True, help="Also read it from Intercom now: what the next run would send.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@click.pass_obj
def explain(obj: Cli, kind: str, object_id: str, job_name: str | None, live: bool, as_json: bool) -> None:
    """One object's story: KIND contact|conversation|ticket; its snapshot, identity and outbox items (queued,
    sent when and by which run, or failed with Klaviyo's error); it queues and sends nothing.

    \b
    Examples:
      etl explain conversation 215 --job shop
      etl explain contact 6762f0d01bb69f9f2193bb7d --live
    """
    from etl import explain as story
    from etl.runner import build_services

    story.stream_of(kind)  # an unknown kind is a usage error before anything is opened
    job = story.pick_job(obj.settings(), job_name)
    store = obj.store()
    services = build_services(job, None, dry_run=True) if live else None  # needs the Intercom token only
    try:
        doc = story.explain(
            store, job, kind, object_id, intercom=services.intercom if services else None, clock=_now
        )
    finally:
        if services is not None:
            services.close()
    click.echo(json.dumps(doc, ensure_ascii=False) if as_json else story.render(doc))


# -- reconcile ---------------------------------------------------------------------------------------
@cli.command("reconcile")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--since", metavar="TS", help="Start of the window (default: 7 days before --until).")
@click.option("--until", metavar="TS", help="End of the window, exclusive (default: now).")
@click.option("--streams", metavar="LIST", help="Comma list of streams (default: the job's streams).")
@click.option(
    "--settle",
    metavar="DURATION",
    default="1h",
    show_default=True,
    help="Compare Klaviyo's counts only up to this long before now (they lag).",
)
@click.option(
    "--interval",
    metavar="DURATION",
    default="1h",
    show_default=True,
    help="Items pending longer than this (one run interval) are stuck.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job, with every difference.")
@click.option(
    "--repair",
    is_flag=True,
    help="Re-read what was missed, re-send what Klaviyo lacks, deliver (holds the lease).",
)
@click.option("--metrics-file", metavar="PATH", help="Write Prometheus gauges here (node_exporter textfile).")
@click.pass_obj
def reconcile(obj: Cli, jobs: tuple[str, ...], **flags: Any) -> None:
    """Check that Intercom, the state, the outbox and Klaviyo agree: exit 0 when in step, 7 when not.

    Lists objects Intercom has newer than the state (missed), outbox items pending too long (stuck) or
    rejected (failed), and metric-days Klaviyo counts fewer events of than were sent (lost).

    \b
    Examples:
      etl reconcile                            every job, the last 7 days
      etl reconcile shop --since 2026-01-01 --json
      etl reconcile shop --repair              re-read what was missed, re-send what Klaviyo lost
    """
    from etl.reconcile import ReconcileOptions, reconcile_jobs

    if _freeze_imports:  # its Intercom client fans requests out to threads too (`IntercomClient._fan_out`)
        limit_malloc_arenas()

    # Kubernetes stops a pod with SIGTERM: end like Ctrl-C, so the repair's lease is released
    signal.signal(signal.SIGTERM, _interrupt)
    options = ReconcileOptions.parse(**flags)  # every bad value at once, exit 2
    sys.exit(reconcile_jobs(obj.settings(), list(jobs), options, quiet=obj.verbosity < 0))


# Young objects allocated between two collections of the cyclic garbage collector (Python's default: 700). A
# run allocates millions of short-lived dicts that reference counting frees, yet each 700 allocations cost a
# collection, and every tenth of those a walk of everything older: measured on a first sync of 10k objects,
# 10-13% of the process's CPU went to collections, ~3% with this threshold. Garbage cycles wait a little
# longer to be collected; nothing else changes.
GC_YOUNG_THRESHOLD = 10_000


def main() -> None:
    """Entry point: click's usage errors become one line too (`etl: error: …`, exit 2)."""
    global _freeze_imports
    _freeze_imports = True
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    try:
        code = cli.main(prog_name="etl", standalone_mode=False)
    except click.ClickException as exc:  # bad flags, unknown commands, values out of range
        ctx: click.Context | None = getattr(exc, "ctx", None)
        help_instead = getattr(click.exceptions, "NoArgsIsHelpError", ())
        if isinstance(exc, help_instead) and ctx is not None:  # `etl db` alone: show its help, as click does
            click.echo(ctx.get_help(), err=True)
            sys.exit(exc.exit_code)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(exc.format_message().replace("\n", " ") + hint, exc.exit_code)
    except click.Abort:  # Ctrl-C while click parsed the arguments
        _fail(str(Interrupted(signal.SIGINT)), Interrupted(signal.SIGINT).exit_code)
    try:
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at interpreter exit
    except BrokenPipeError:
        _stdout_closed()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
