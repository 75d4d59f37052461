"""`etl demo` and `etl sandbox serve`: the real job against the built-in sandbox, no credentials needed.

The demo starts a fake Intercom serving a generated workspace and a fake Klaviyo on loopback, writes a
jobs.yaml pointing at them (SQLite state in a work folder), runs the job, advances the workspace, runs it
again, and prints what Klaviyo received. Everything it runs is the production code path (`run_jobs`).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from etl.config import load_settings
from etl.models import RunOptions, iso_z
from etl.runner import run_jobs
from etl.sandbox.generator import Workspace
from etl.sandbox.intercom_server import IntercomSandbox, serve_intercom
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY, KlaviyoServer
from etl.sandbox.klaviyo_store import KlaviyoSettings

DEMO_TOKEN_ENV = "ETL_DEMO_INTERCOM_TOKEN"
DEMO_KEY_ENV = "ETL_DEMO_KLAVIYO_KEY"
HISTORY = timedelta(hours=3)  # the workspace's "now" starts this far in the past, so advancing stays past

JOBS_YAML = """\
# Written by `etl demo`: one job against the built-in sandbox on loopback.
database_url: sqlite:///{db}
jobs:
  demo:
    intercom:
      base_url: {intercom}
      token_env: {token_env}
    klaviyo:
      base_url: {klaviyo}
      api_key_env: {key_env}
    start_date: {start}
    lookback: 15m
"""


def _fast_klaviyo() -> KlaviyoSettings:
    # import jobs finish quickly so the demo stays well under a minute; limits stay Klaviyo's
    return KlaviyoSettings(queued_seconds=0.1, processing_seconds=0.2)


def run_demo(seed: int, workdir: Path | None, out: TextIO | None = None) -> int:
    """Run the demo; returns the exit code of the worst run."""
    out = out or sys.stdout
    folder = workdir or Path(tempfile.mkdtemp(prefix="etl-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    workspace = Workspace(seed=seed, start=now - HISTORY, contacts=150, conversations=250, tickets=80)
    intercom = IntercomSandbox(workspace).start()
    klaviyo = KlaviyoServer(_fast_klaviyo()).start()
    try:
        config = folder / "jobs.yaml"
        config.write_text(
            JOBS_YAML.format(
                db=folder / "etl-state.db",
                intercom=intercom.url,
                klaviyo=klaviyo.url,
                token_env=DEMO_TOKEN_ENV,
                key_env=DEMO_KEY_ENV,
                start=iso_z(now - timedelta(days=30)),
            )
        )
        os.environ[DEMO_TOKEN_ENV] = intercom.token
        os.environ[DEMO_KEY_ENV] = SANDBOX_API_KEY
        settings = load_settings(config)
        from etl.state import StateStore

        store = StateStore(settings.database_url)
        store.upgrade()
        store.close()
        out.write(
            f"etl demo: sandbox Intercom at {intercom.url}, Klaviyo at {klaviyo.url}; state in {folder}\n"
        )
        codes = []
        out.write("\n== run 1: first sight of the workspace (history since start_date) ==\n")
        out.flush()
        codes.append(run_jobs(settings, [], RunOptions()))
        first = len(klaviyo.events)
        changes = workspace.advance(timedelta(hours=1), activity=40)
        out.write(
            f"\n== workspace advanced: {len(changes)} changes (replies, ratings, reads, ticket states) ==\n"
        )
        out.write("== run 2: only what changed ==\n")
        out.flush()
        codes.append(run_jobs(settings, [], RunOptions()))
        out.write("\n== run 3: nothing changed, nothing sent ==\n")
        out.flush()
        before = len(klaviyo.events)
        codes.append(run_jobs(settings, [], RunOptions()))
        _describe(out, klaviyo, first, before, config)
        return max(codes)
    finally:
        intercom.stop()
        klaviyo.stop()


def _describe(out: TextIO, klaviyo: KlaviyoServer, first: int, second: int, config: Path) -> None:
    per_metric = Counter(e.metric for e in klaviyo.events)
    out.write("\nKlaviyo (sandbox) now holds:\n")
    for metric, n in sorted(per_metric.items()):
        out.write(f"  {n:5}  {metric}\n")
    out.write(f"  {len(klaviyo.profiles):5}  profiles\n")
    out.write(
        f"  events after run 1: {first}; after run 2: {second}; after run 3: {len(klaviyo.events)}\n"
        f"  requests: {klaviyo.count('POST', '/api/event-bulk-create-jobs')} event bulk creates, "
        f"{klaviyo.count('POST', '/api/profile-bulk-import-jobs')} profile import jobs\n"
    )
    out.write(
        "\nWhere to look (the state database stays):\n"
        f"  etl --config {config} runs\n"
        f"  etl --config {config} state show\n"
        f"  etl --config {config} outbox --limit 10\n"
    )


def serve_sandbox(
    seed: int,
    intercom_port: int,
    klaviyo_port: int,
    *,
    intercom_latency: float = 0.0,
    klaviyo_latency: float = 0.0,
    stop: threading.Event | None = None,
) -> None:
    """Start both fake servers for manual use and block until Ctrl-C (or `stop` is set).

    `*_latency`: seconds each request waits before it is answered (a real API's round trip); the rate
    limits stay the APIs' own.
    """
    start = datetime.now(UTC).replace(microsecond=0) - HISTORY
    intercom = serve_intercom(
        port=intercom_port, seed=seed, start=start, contacts=150, conversations=250, tickets=80
    )
    klaviyo = KlaviyoServer(_fast_klaviyo(), port=klaviyo_port).start()
    intercom.faults.latency, klaviyo.faults.latency = intercom_latency, klaviyo_latency
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        f"sandbox Intercom: {intercom.url}  (token: {intercom.token})\n"
        f"sandbox Klaviyo:  {klaviyo.url}  (api key: {SANDBOX_API_KEY})\n"
        "point a jobs.yaml at them, e.g.\n"
        f"  intercom: {{base_url: {intercom.url}, token_env: INTERCOM_ACCESS_TOKEN}}\n"
        f"  klaviyo: {{base_url: {klaviyo.url}, api_key_env: KLAVIYO_API_KEY}}\n"
        "Ctrl-C stops.",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        intercom.stop()
        klaviyo.stop()
