"""The `etl` command line (docs/design.md §3.1): click commands only.

Commands build objects and call the library; `EtlError` becomes an exit code in ONE place (`EtlGroup.invoke`).
Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from etl import __version__, logs
from etl.config import Settings, config_path, load_settings, missing_secrets, parse_duration, parse_timestamp
from etl.errors import ConfigError, EtlError, UsageError
from etl.models import STREAMS, RunOptions, iso_z
from etl.report import render_table
from etl.state import StateStore, redact_url


class EtlGroup(click.Group):
    """Turns every EtlError into its one-line message and exit code; a bug is exit 1 without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EtlError as exc:
            _fail(str(exc), exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:  # a bug: say so on one line; -v shows the traceback
            obj = ctx.obj if isinstance(ctx.obj, Cli) else None
            if obj is not None and obj.verbosity > 0:
                import traceback

                traceback.print_exc()
            _fail(
                f"unexpected error ({type(exc).__name__}: {logs.scrub(str(exc))[:300]}); "
                "this is a bug, please report it (run with -v for the traceback)",
                1,
            )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"etl: error: {logs.scrub(message)}", err=True)
    sys.exit(code)


@dataclass
class Cli:
    """What the top-level options decide, handed to every command."""

    config: str | None
    verbosity: int

    def settings(self) -> Settings:
        return load_settings(config_path(self.config, os.environ))

    def store(self, *, migrate_check: bool = True) -> StateStore:
        path = config_path(self.config, os.environ)
        if not path.exists() and os.environ.get("ETL_DATABASE_URL"):
            url = os.environ["ETL_DATABASE_URL"]  # db commands work without a jobs.yaml
        else:
            url = self.settings().database_url
        store = StateStore(url)
        click.get_current_context().call_on_close(store.close)  # no connection outlives the command
        if migrate_check:
            store.ensure_schema()
        return store


def _now() -> datetime:
    return datetime.now(UTC)


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
@click.option("-v", "--verbose", count=True, help="More logging (debug).")
@click.option("-q", "--quiet", count=True, help="Less logging (warnings only).")
@click.pass_context
def cli(ctx: click.Context, config: str | None, log_format: str | None, verbose: int, quiet: int) -> None:
    """Keep a Klaviyo account in step with an Intercom workspace.

    \b
    Examples:
      etl check                      validate jobs.yaml and the environment
      etl db upgrade                 create or migrate the state database
      etl run                        run every job incrementally
      etl run shop --dry-run         print what would be sent, touch nothing
      etl demo                       the whole job against the built-in sandbox
    """
    logs.configure(log_format, verbose - quiet)
    ctx.obj = Cli(config=config, verbosity=verbose - quiet)


# -- run ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option(
    "--dry-run", is_flag=True, help="Read Intercom and infer, print what would be sent; write nothing."
)
@click.option("--output", metavar="PATH", help="Dry-run output file (NDJSON); default stdout.")
@click.option(
    "--since", metavar="TS", help="Backfill from this time (ISO 8601 or date); never moves watermarks."
)
@click.option("--until", metavar="TS", help="Backfill up to this time (exclusive); default now.")
@click.option(
    "--replay", is_flag=True, help="Re-emit events for the window even where snapshots say nothing changed."
)
@click.option("--streams", metavar="LIST", help="Comma list of streams (default: the job's streams).")
@click.option(
    "--metrics-file", metavar="PATH", help="Write Prometheus text metrics here (node_exporter textfile)."
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
    from etl.runner import run_jobs

    # Kubernetes stops a pod with SIGTERM: end like Ctrl-C, so the run is recorded and its lease released
    signal.signal(signal.SIGTERM, _interrupt)
    options = _run_options(**flags)  # the options above, by name
    code = run_jobs(obj.settings(), list(jobs), options, quiet=obj.verbosity < 0)
    sys.exit(code)


def _run_options(
    dry_run: bool,
    output: str | None,
    since: str | None,
    until: str | None,
    replay: bool,
    streams: str | None,
    metrics_file: str | None,
) -> RunOptions:
    problems: list[str] = []

    def stamp(flag: str, value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
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
    if problems:
        raise ConfigError(problems)
    return RunOptions(dry_run, output, start, end, replay, chosen, metrics_file)


# -- check -------------------------------------------------------------------------------------------
@cli.command()
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.option("--online", is_flag=True, help="Also test both credentials against the APIs.")
@click.pass_obj
def check(obj: Cli, jobs: tuple[str, ...], online: bool) -> None:
    """Validate jobs.yaml and the environment (and, with --online, the credentials).

    \b
    Examples:
      etl check
      etl --config prod.yaml check shop --online
    """
    settings = obj.settings()
    selected = settings.select(list(jobs))
    problems: list[str] = []
    for job in selected:
        missing = missing_secrets(job, os.environ)
        for name in missing:
            problems.append(f"jobs.{job.name}: environment variable {name} is not set")
    if problems:
        raise ConfigError(problems)
    for job in selected:
        notes: list[str] = []
        if online:
            from etl.runner import check_online

            notes = check_online(job)
        click.echo(
            f"{job.name}: ok ({', '.join(job.streams)}; Intercom {job.intercom.base_url}, "
            f"Klaviyo {job.klaviyo.base_url}{'; credentials accepted' if online else ''})"
        )
        for line in notes:  # native Intercom metrics and the flows to re-point (docs/design.md §4)
            click.echo(line)
    click.echo(f"database: {redact_url(settings.database_url)} ({_database_status(settings.database_url)})")


def _database_status(url: str) -> str:
    """Whether the state database exists and is at the newest revision (read-only; exit 5 if unreachable)."""
    store = StateStore(url, read_only=True)
    try:
        if not store.exists():
            return "not created yet: run `etl db upgrade`"
        current, head = store.current_revision(), store.head_revision()
        if current == head:
            return f"revision {current}, up to date"
        return f"revision {current or 'none'}, behind: run `etl db upgrade`"
    finally:
        store.close()


# -- db ----------------------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Alembic migrations of the state database."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: Cli) -> None:
    """Create or migrate the state database to the newest schema."""
    store = obj.store(migrate_check=False)
    before, after = store.upgrade()
    if before == after:
        click.echo(f"{redact_url(store.url)}: already at revision {after}")
    else:
        click.echo(f"{redact_url(store.url)}: upgraded from {before or 'empty'} to {after}")


@db.command("current")
@click.pass_obj
def db_current(obj: Cli) -> None:
    """Show the database's schema revision and the newest one this etl knows."""
    store = obj.store(migrate_check=False)
    current, head = store.current_revision(), store.head_revision()
    state = "up to date" if current == head else "behind: run `etl db upgrade`"
    click.echo(f"{redact_url(store.url)}: revision {current or 'none (empty)'}, head {head} ({state})")


# -- state -------------------------------------------------------------------------------------------
@cli.group()
def state() -> None:
    """Inspect or move watermarks."""


@state.command("show")
@click.argument("jobs", nargs=-1, metavar="[JOB]...")
@click.pass_obj
def state_show(obj: Cli, jobs: tuple[str, ...]) -> None:
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
@click.pass_obj
def state_set(obj: Cli, job: str, stream: str, ts: str) -> None:
    """Move a watermark by hand (also backwards: the next run re-reads from there).

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
        value = parse_timestamp(ts)
    except ValueError as exc:
        raise UsageError(f"TS: {exc}") from None
    store = obj.store()
    before = store.watermarks(job).get(stream)
    store.set_watermark(job, stream, value, _now(), force=True)
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
            click.echo(
                json.dumps(
                    {
                        "id": r.id,
                        "job": r.job,
                        "mode": r.mode,
                        "started_at": iso_z(r.started_at) or "-",
                        "finished_at": iso_z(r.finished_at) or "-",
                        "status": r.status,
                        "window": r.window,
                        "counts": r.counts,
                        "error": r.error,
                    }
                )
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


class OutboxGroup(click.Group):
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
@click.pass_obj
def outbox_list(obj: Cli, job: str | None, status: str | None, limit: int) -> None:
    """List outbox items, newest first (the default: `etl outbox [JOB]` is `etl outbox list [JOB]`).

    \b
    Example:
      etl outbox shop --status failed
    """
    if job:
        obj.settings().select([job])
    items = obj.store().outbox_items(job, status, limit)
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

    Logs are kept to warnings (the summaries tell the story); -v shows the run's log lines too.
    """
    from etl.demo import run_demo

    if obj.verbosity <= 0:
        logging.getLogger(logs.LOGGER_NAME).setLevel(logging.WARNING)
    sys.exit(run_demo(seed=seed, workdir=Path(workdir) if workdir else None))


@cli.group()
def sandbox() -> None:
    """The built-in fake Intercom and Klaviyo servers."""


@sandbox.command("serve")
@click.option("--seed", default=7, show_default=True, help="Seed of the generated workspace.")
@click.option("--intercom-port", default=8701, show_default=True, help="Port of the fake Intercom.")
@click.option("--klaviyo-port", default=8702, show_default=True, help="Port of the fake Klaviyo.")
def sandbox_serve(seed: int, intercom_port: int, klaviyo_port: int) -> None:
    """Start the sandbox Intercom + Klaviyo servers on loopback for manual use (Ctrl-C stops).

    A port of 0 takes any free port; the URLs printed at start name the ports bound.
    """
    from etl.demo import serve_sandbox

    serve_sandbox(seed=seed, intercom_port=intercom_port, klaviyo_port=klaviyo_port)


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

    # Kubernetes stops a pod with SIGTERM: end like Ctrl-C, so the repair's lease is released
    signal.signal(signal.SIGTERM, _interrupt)
    options = ReconcileOptions.parse(**flags)  # every bad value at once, exit 2
    sys.exit(reconcile_jobs(obj.settings(), list(jobs), options, quiet=obj.verbosity < 0))


def main() -> None:
    """Entry point: click's usage errors become one line too (`etl: error: …`, exit 2)."""
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
    except click.Abort:
        _fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
