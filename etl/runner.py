"""`etl run` over the jobs of jobs.yaml: open the state store, build each job's clients, run it, report.

One job's failure does not stop the others; the exit code is the worst (docs/design.md §3.1).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, TextIO

from etl import logs
from etl.config import JobSettings, Settings, secrets_for
from etl.errors import EtlError, ItemsRejected, UsageError, worst_exit_code
from etl.intercom import IntercomClient
from etl.klaviyo import KlaviyoClient
from etl.models import RunOptions, RunReport
from etl.pipeline import JobRun, Services
from etl.report import Progress, summary_table, write_metrics
from etl.state import StateStore

log = logs.get_logger("runner")


def writable_store(url: str) -> StateStore:
    """The state store at the newest schema (SQLite: created or upgraded; creating it is announced)."""
    store = StateStore(url)
    if not store.exists():  # a wrong path would otherwise start again from start_date, silently
        log.warning(
            "creating a new state database: none was there, so every job starts from its start_date "
            "(if yours lives elsewhere, point database_url at it)",
            extra={"fields": {"database": store.location}},
        )
    try:
        store.ensure_schema()
    except BaseException:
        store.close()
        raise
    return store


def open_store(url: str, *, dry_run: bool) -> StateStore | None:
    """The state store; in dry-run read-only, and None when the database does not exist or is empty."""
    if not dry_run:
        return writable_store(url)
    store = StateStore(url, read_only=True)
    try:
        if not store.exists() or store.current_revision() is None:
            store.close()
            return None
        store.check_schema()
    except BaseException:
        store.close()
        raise
    return store


def build_services(
    job: JobSettings, store: StateStore | None, dry_run: bool, environ: Mapping[str, str] | None = None
) -> Services:
    secrets = secrets_for(job, environ, klaviyo=not dry_run)
    logs.register_secret(secrets.intercom_token)
    logs.register_secret(secrets.klaviyo_api_key)
    intercom = IntercomClient(
        job.intercom.base_url,
        secrets.intercom_token,
        token_env=job.intercom.token_env,
        version=job.intercom.version,
        per_page=job.intercom.per_page,
        retry_budget=job.intercom.retry_budget,
    )
    klaviyo = None
    if not dry_run:
        klaviyo = KlaviyoClient(
            job.klaviyo.base_url,
            secrets.klaviyo_api_key,
            api_key_env=job.klaviyo.api_key_env,
            revision=job.klaviyo.revision,
            retry_budget=job.klaviyo.retry_budget,
        )
    return Services(store, intercom, klaviyo)


def run_jobs(
    settings: Settings, names: list[str], options: RunOptions, *, stderr: TextIO | None = None
) -> int:
    """Run the named jobs (all when none) in order; one job's failure does not stop the others.

    Returns the worst exit code. Each failure is printed as one line `etl: error: job X: …`.
    """
    stderr = stderr or sys.stderr
    jobs = settings.select(names)
    store = open_store(settings.database_url, dry_run=options.dry_run)
    sink_cm: Any = nullcontext(sys.stdout)
    if options.dry_run and options.output:
        try:
            sink_cm = open(options.output, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:  # the operator's path, not a bug: exit 2 before any work
            if store is not None:
                store.close()
            raise UsageError(f"--output: cannot write {options.output}: {exc.strerror or exc}") from None
    results: list[tuple[RunReport, int]] = []
    codes: list[int] = []
    try:
        with sink_cm as sink:
            for job in jobs:
                results.append(_run_one(job, store, options, sink, stderr))
    finally:
        if store is not None:
            if options.metrics_file and not options.dry_run:
                try:
                    write_metrics(options.metrics_file, results, store)
                except OSError as exc:  # the operator's path, not a bug: one line, exit 2
                    stderr.write(
                        f"etl: error: --metrics-file: cannot write {options.metrics_file}: {exc.strerror or exc}\n"
                    )
                    codes.append(UsageError.exit_code)
            store.close()
    return worst_exit_code([code for _, code in results] + codes)


def _run_one(
    job: JobSettings, store: StateStore | None, options: RunOptions, sink: TextIO, stderr: TextIO
) -> tuple[RunReport, int]:
    """One job for run_jobs: its report and exit code; every failure is one line on stderr, never a raise."""
    services: Services | None = None
    job_run: JobRun | None = None
    code = 0
    try:
        services = build_services(job, store, options.dry_run)
        job_run = JobRun(
            job, options, services, sink=sink, progress=Progress(enabled=stderr.isatty(), stream=stderr)
        )
        report = job_run.execute()
        stderr.write(summary_table(report) + "\n")
        if job_run.rejected:
            rejected = ItemsRejected(
                f"Klaviyo rejected {job_run.rejected} item(s); see `etl outbox {job.name} --status failed`"
            )
            stderr.write(f"etl: error: job {job.name}: {rejected}\n")
            code = rejected.exit_code
        return report, code
    except EtlError as exc:
        stderr.write(f"etl: error: job {job.name}: {logs.scrub(str(exc))}\n")
        code = exc.exit_code
    except (
        KeyboardInterrupt
    ):  # Ctrl-C or SIGTERM: what was done so far, then the CLI's one line and exit code
        if job_run is not None:
            stderr.write(summary_table(job_run.report) + "\n")
        raise
    except BrokenPipeError:  # nobody reads the dry-run's stdout any more (`| head`): the CLI ends quietly
        raise
    except Exception as exc:  # a bug in one job must not keep the others from running
        log.exception("unexpected error", extra={"fields": {"job": job.name}})
        stderr.write(
            f"etl: error: job {job.name}: unexpected error ({type(exc).__name__}: {logs.scrub(str(exc))[:200]}); "
            "this is a bug, please report it\n"
        )
        code = 1
    finally:
        if services is not None:
            services.close()
    return (job_run.report if job_run is not None else RunReport(job.name, "incremental")), code


def check_online(job: JobSettings) -> None:
    """Test both credentials against the APIs (one cheap read each)."""
    services = build_services(job, None, dry_run=False)
    try:
        services.intercom.admins()
        assert services.klaviyo is not None
        services.klaviyo.check()
    finally:
        services.close()
