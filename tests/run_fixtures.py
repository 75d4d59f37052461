"""Builders shared by the run-mode tests: sandboxes on loopback, job settings, fast clients, database dumps."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from etl.cli import cli
from etl.config import IntercomSettings, JobSettings, KlaviyoSettings, Settings
from etl.errors import IntercomError
from etl.intercom import DEFAULT_CONCURRENCY, IntercomClient
from etl.klaviyo import KlaviyoClient
from etl.models import RunOptions
from etl.pipeline import JobRun, Services
from etl.sandbox.generator import Workspace
from etl.sandbox.intercom_server import IntercomSandbox
from etl.sandbox.intercom_server import IntercomSettings as SandboxIntercomSettings
from etl.sandbox.klaviyo_server import ALL_SCOPES, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings as SandboxKlaviyoSettings
from etl.state import StateStore, outbox

# Items queued that start a delivery round while reading: low, so that every run of these small workspaces
# delivers while it reads (the production default, 5,000, would never be reached here)
DELIVER_EVERY = 25
T0 = datetime(2026, 3, 1, tzinfo=UTC)  # the workspace's "now"; months before the real clock
START_DATE = T0 - timedelta(days=30)
IC_TOKEN = "ic-SECRET-token-4711"  # sandbox secrets, asserted absent from every output
KL_KEY = "pk_SECRET_key_0815"
IC_ENV, KL_ENV = "ETL_TEST_IC_TOKEN", "ETL_TEST_KL_KEY"
STREAMS = ("contacts", "conversations", "tickets")


def no_sleep(_seconds: float) -> None:
    """Polls go round at once. Not for retries: with the real clock a retry budget would take real minutes
    to run out; give clients a FastTime instead (as `Sandboxes.services` does)."""


class FastTime:
    """The clients' clock: real time plus every wait they asked for; the waits return at once and are recorded.

    Real time still passes (Klaviyo job polling), while retry budgets and rate-limit waits cost nothing.
    """

    def __init__(self) -> None:
        self.waits: list[float] = []
        self._slept = 0.0

    def clock(self) -> float:
        return time.time() + self._slept

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self._slept += max(seconds, 0.0)


class Sandboxes:
    """A fake Intercom serving a small generated workspace and one or more fake Klaviyo accounts."""

    def __init__(self, seed: int = 3, *, klaviyos: int = 1, **klaviyo_settings: Any) -> None:
        self.workspace = Workspace(seed=seed, start=T0, contacts=40, conversations=60, tickets=20)
        self.intercom_now = [1_000_000_000.0]  # the fake Intercom's rate-limit clock; tests move it
        self.intercom_time, self.klaviyo_time = FastTime(), FastTime()  # the clients' clocks (see services)
        self.intercom = IntercomSandbox(
            self.workspace, SandboxIntercomSettings(token=IC_TOKEN), clock=lambda: self.intercom_now[0]
        )
        settings = {"queued_seconds": 0, "processing_seconds": 0, **klaviyo_settings}
        self.klaviyos = [
            KlaviyoServer(SandboxKlaviyoSettings(api_keys={KL_KEY: ALL_SCOPES}, **settings))
            for _ in range(klaviyos)
        ]

    @property
    def klaviyo(self) -> KlaviyoServer:
        return self.klaviyos[0]

    def start(self) -> Sandboxes:
        self.intercom.start()
        for server in self.klaviyos:
            server.start()
        return self

    def stop(self) -> None:
        self.intercom.stop()
        for server in self.klaviyos:
            server.stop()

    def job(
        self,
        name: str = "shop",
        klaviyo: int = 0,
        per_page: int = 10,
        concurrency: int = DEFAULT_CONCURRENCY,
        deliver_every: int = DELIVER_EVERY,
        **extra: Any,
    ) -> JobSettings:
        return JobSettings(
            name=name,
            intercom=IntercomSettings(
                base_url=self.intercom.url, token_env=IC_ENV, per_page=per_page, concurrency=concurrency
            ),
            klaviyo=KlaviyoSettings(
                base_url=self.klaviyos[klaviyo].url, api_key_env=KL_ENV, deliver_every=deliver_every
            ),
            streams=STREAMS,
            start_date=START_DATE,
            **extra,
        )

    def services(
        self,
        store: StateStore | None,
        klaviyo: int | None = 0,
        per_page: int = 10,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> Services:
        """Clients as the CLI builds them, but on a FastTime each (`intercom_time`, `klaviyo_time`: the
        latest ones, with their waits) and with no poll interval."""
        self.intercom_time, self.klaviyo_time = FastTime(), FastTime()
        intercom = IntercomClient(
            self.intercom.url, IC_TOKEN, token_env=IC_ENV, per_page=per_page, concurrency=concurrency,
            sleep=self.intercom_time.sleep, clock=self.intercom_time.clock,
        )  # fmt: skip
        client = None
        if klaviyo is not None:
            client = KlaviyoClient(
                self.klaviyos[klaviyo].url, KL_KEY, api_key_env=KL_ENV, poll_interval=0,
                sleep=self.klaviyo_time.sleep, clock=self.klaviyo_time.clock,
            )  # fmt: skip
        return Services(store, intercom, client)

    def clock(self) -> datetime:
        """The run's wall clock: one second after the workspace's last change."""
        return datetime.fromtimestamp(self.workspace.now + 1, UTC)

    def searches(self) -> int:
        """POST …/search requests the fake Intercom has received so far."""
        return sum(1 for method, path in self.intercom.server.requests if path.endswith("/search"))


def execute(
    boxes: Sandboxes, store: StateStore, job: JobSettings, options: RunOptions, klaviyo: int = 0
) -> None:
    """One run of the job with fast clients, closed afterwards."""
    services = boxes.services(store, klaviyo=klaviyo, concurrency=job.intercom.concurrency)
    try:
        JobRun(job, options, services, clock=boxes.clock).execute()
    finally:
        close(services)


def cut_off(boxes: Sandboxes, store: StateStore, job: JobSettings, options: RunOptions) -> int:
    """Run `job` (after an uncut run of its copy "ref" into the last Klaviyo) with Intercom refusing from its 3rd
    conversations page on; returns how many searches the uncut run made."""
    first = len(boxes.intercom.server.requests)
    execute(boxes, store, dataclasses.replace(job, name="ref"), options, klaviyo=len(boxes.klaviyos) - 1)
    requests = boxes.intercom.server.requests[first:]
    conversation_pages = [i for i, (_, path) in enumerate(requests) if path == "/conversations/search"]
    assert len(conversation_pages) >= 4  # enough pages to stop in the middle
    # the fake Intercom's budget runs out at the 3rd conversations page and its clock stands still:
    # every retry gets a 429 until the client's retry budget (10 minutes on its FastTime) is spent
    boxes.intercom_now[0] += 10
    boxes.intercom.server.settings.rate_budget = conversation_pages[2]
    with pytest.raises(IntercomError) as failure:
        execute(boxes, store, job, options)
    # whichever request meets the spent budget first: with concurrent readers, a search slice or a lookup
    assert re.fullmatch(
        r"Intercom kept failing (POST|GET) /\S+ for 10m0s \(last: HTTP 429\): try again later; "
        r"raise intercom\.retry_budget to wait longer",
        str(failure.value),
    ), failure.value
    assert failure.value.exit_code == 3
    boxes.intercom_now[0] += 10
    boxes.intercom.server.settings.rate_budget = 1_666
    return sum(1 for _, path in requests if path.endswith("/search"))


@contextmanager
def sandboxes(seed: int = 3, **kwargs: Any) -> Iterator[Sandboxes]:
    boxes = Sandboxes(seed, **kwargs).start()
    try:
        yield boxes
    finally:
        boxes.stop()


def close(services: Services) -> None:
    services.close()


def settings(url: str, *jobs: JobSettings) -> Settings:
    return Settings(database_url=url, jobs={job.name: job for job in jobs})


def write_config(path: Path, url: str, *jobs: JobSettings) -> Path:
    """A jobs.yaml for these jobs (tokens by env var name only) and this state database."""
    lines = [f"database_url: {url}", "jobs:"]
    for job in jobs:
        lines += [
            f"  {job.name}:",
            f"    intercom: {{base_url: '{job.intercom.base_url}', token_env: {job.intercom.token_env}, "
            f"per_page: {job.intercom.per_page}, concurrency: {job.intercom.concurrency}}}",
            f"    klaviyo: {{base_url: '{job.klaviyo.base_url}', api_key_env: {job.klaviyo.api_key_env}, "
            f"deliver_every: {job.klaviyo.deliver_every}}}",
            f"    start_date: {job.start_date.isoformat()}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def dump(url: str) -> dict[str, list[str]]:
    """Every row of every table (sorted), or {} for an SQLite file that does not exist."""
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if not path or not Path(path).exists():
            return {}
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def outbox_rows(store: StateStore, job: str, **where: Any) -> list[dict[str, Any]]:
    """The job's outbox rows (all columns), in queue order, filtered by column values."""
    query = sa.select(outbox).where(outbox.c.job == job).order_by(outbox.c.id)
    for column, value in where.items():
        query = query.where(outbox.c[column] == value)
    with store.transaction() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def canonical(kind: str, unique_id: str, payload: Any) -> tuple[str, str, str]:
    return kind, unique_id, json.dumps(payload, sort_keys=True)


def klaviyo_content(server: KlaviyoServer) -> tuple[set[tuple[Any, ...]], dict[str, Any]]:
    """What a Klaviyo account holds: its deduplicated events and its profiles."""
    events = {
        (e.profile, e.metric, e.unique_id, e.time, e.backfill, json.dumps(e.properties, sort_keys=True))
        for e in server.events
    }
    return events, server.profiles


def events_posted(server: KlaviyoServer) -> int:
    """How many events the accepted bulk-create requests carried (duplicates included)."""
    total = 0
    for received in server.received:
        if received.path.startswith("/api/event-bulk-create-jobs") and received.status == 202:
            groups = received.json()["data"]["attributes"]["events-bulk-create"]["data"]
            total += sum(len(g["attributes"]["events"]["data"]) for g in groups)
    return total


def in_window(boxes: Sandboxes, stream: str, since: datetime, until: datetime) -> set[str]:
    """Ids of the stream's live objects with since <= updated_at < until."""
    low, high = since.timestamp(), until.timestamp()
    return {str(o["id"]) for o in boxes.workspace.objects(stream) if low <= o["updated_at"] < high}


Clock = Callable[[], datetime]


class FakePushgateway:
    """A Pushgateway on loopback that records each request (method, path, body) and answers `status`."""

    def __init__(self, status: int = 200, answer: bytes = b"") -> None:
        self.requests: list[tuple[str, str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                fake.requests.append((self.command, self.path, body))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_PUT = do_POST = _record

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePushgateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def invoke_cli(*args: str) -> Result:
    """The real CLI through click's runner, with the sandboxes' tokens in the environment and text logs and
    error lines (CliRunner's stderr is no terminal: without `--log-format text` they would be JSON lines)."""
    if "--log-format" not in args:
        args = ("--log-format", "text", *args)
    env = {IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
    return CliRunner().invoke(cli, list(args), env=env)
