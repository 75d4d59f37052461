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
from etl.events import METRICS
from etl.intercom import IntercomClient
from etl.klaviyo import API_CATEGORY, KlaviyoClient, Metric
from etl.metrics import check_metrics_file, push_metrics, write_metrics
from etl.models import RunOptions, RunReport
from etl.pipeline import JobRun, Services
from etl.report import Progress
from etl.report import summary as summary_of
from etl.state import StateStore

log = logs.get_logger("runner")
NATIVE_INTEGRATION = "Intercom"  # integration.name of the metrics Klaviyo's own Intercom integration records


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
        concurrency=job.intercom.concurrency,
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
    settings: Settings,
    names: list[str],
    options: RunOptions,
    *,
    stderr: TextIO | None = None,
    summary: bool = True,
) -> int:
    """Run the named jobs (all when none) in order; one job's failure does not stop the others.

    Returns the worst exit code. Each failure is printed as one line `etl: error: job X: …` (a JSON line in
    JSON mode); each job's summary too unless `summary` is off (-q: cron mails whatever is printed), but a job with
    rejected items keeps it (docs/design.md §3.1).
    """
    stderr = stderr or sys.stderr
    jobs = settings.select(names)
    if options.metrics_file and not options.dry_run:
        check_metrics_file(options.metrics_file)  # a path it could not write fails now, before any work
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
    problems: list[str] = []
    try:
        with sink_cm as sink:
            for job in jobs:
                results.append(_run_one(job, store, options, sink, stderr, summary))
    finally:
        if store is not None:
            if not options.dry_run:
                problems = publish_metrics(options, results, store)
            store.close()
    for problem in problems:
        stderr.write(logs.error_line(problem, UsageError.exit_code) + "\n")
    code = worst_exit_code([code for _, code in results])
    # metrics that could not be written make a successful run exit 2; a failed run keeps its own code
    return UsageError.exit_code if problems and code == 0 else code


def publish_metrics(
    options: RunOptions, results: list[tuple[RunReport, int]], store: StateStore
) -> list[str]:
    """Write the metrics file and push to the Pushgateway, as asked; one message per failure."""
    problems = []
    if options.metrics_file:
        try:
            write_metrics(options.metrics_file, results, store)
        except OSError as exc:  # checked before the run, so the folder went away meanwhile
            problems.append(f"--metrics-file: cannot write {options.metrics_file}: {exc.strerror or exc}")
    if options.pushgateway:
        problems += push_metrics(options.pushgateway, results, store)
    return problems


def _run_one(
    job: JobSettings,
    store: StateStore | None,
    options: RunOptions,
    sink: TextIO,
    stderr: TextIO,
    summary: bool,
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
        if summary or job_run.rejected:  # -q: rejected items still come with their run's summary
            stderr.write(summary_of(report) + "\n")
        if job_run.rejected:
            rejected = ItemsRejected(
                f"Klaviyo rejected {job_run.rejected} item(s); see `etl outbox {job.name} --status failed`"
            )
            stderr.write(logs.error_line(str(rejected), rejected.exit_code, job=job.name) + "\n")
            code = rejected.exit_code
        return report, code
    except EtlError as exc:
        stderr.write(logs.error_line(str(exc), exc.exit_code, job=job.name) + "\n")
        code = exc.exit_code
    except (
        KeyboardInterrupt
    ):  # Ctrl-C or SIGTERM: what was done so far, then the CLI's one line and exit code
        if job_run is not None:
            stderr.write(summary_of(job_run.report) + "\n")
        raise
    except BrokenPipeError:  # nobody reads the dry-run's stdout any more (`| head`): the CLI ends quietly
        raise
    except Exception as exc:  # a bug in one job must not keep the others from running
        log.exception("unexpected error", extra={"fields": {"job": job.name}})
        message = f"unexpected error ({type(exc).__name__}: {logs.scrub(str(exc))[:200]}); this is a bug, please report it"
        stderr.write(logs.error_line(message, 1, job=job.name) + "\n")
        code = 1
    finally:
        if services is not None:
            services.close()
    return (job_run.report if job_run is not None else RunReport(job.name, options.mode)), code


def check_online(job: JobSettings) -> list[str]:
    """Test both credentials against the APIs (one cheap read each); then the lines about Klaviyo's native
    Intercom metrics that `etl check --online` prints (`native_metric_lines`)."""
    services = build_services(job, None, dry_run=False)
    try:
        services.intercom.admins()
        assert services.klaviyo is not None
        services.klaviyo.check()
        native = services.klaviyo.metrics(integration=NATIVE_INTEGRATION, flows=True)
        api = services.klaviyo.metrics(category=API_CATEGORY) if native else []
        return native_metric_lines(job, native, api or [])
    finally:
        services.close()


def native_metric_lines(job: JobSettings, native: list[Metric] | None, api: list[Metric]) -> list[str]:
    """Each native Intercom metric, the flows it triggers, and the API metric of the same name to re-point
    them to (docs/design.md §4): Klaviyo keeps one metric per name *and* sending mechanism, so a flow on
    the native metric never fires on the events etl sends. `native` is None when the key may not read
    metrics."""
    if native is None:
        return [
            f"{job.name}: native Intercom metrics not checked: the Klaviyo API key lacks the metrics:read scope"
        ]
    if not native:
        return [f"{job.name}: no native Intercom metrics in Klaviyo"]
    by_name = {metric.name: metric for metric in api}
    lines = [f"{job.name}: native Intercom metrics in Klaviyo; flows they trigger miss the events etl sends:"]
    for metric in sorted(native, key=lambda m: (m.name, m.id)):
        name = job.metric_names.get(metric.name, metric.name)
        target = by_name.get(name)
        if metric.name not in METRICS:
            lines.append(f"  {metric.name} [{metric.id}]: etl sends no such metric")
            where = "etl sends nothing to re-point it to"
        elif target is None:
            lines.append(
                f"  {metric.name} [{metric.id}] → API metric {name}: not created yet: run once first"
            )
            where = "re-point its trigger once that exists"
        else:
            lines.append(f"  {metric.name} [{metric.id}] → API metric {name} [{target.id}]")
            where = f"re-point its trigger to {target.id}"
        for flow in sorted(metric.flows, key=lambda f: (f.name, f.id)):
            lines.append(f'    flow "{flow.name}" [{flow.id}, {flow.status}]: {where}')
    return lines
