"""`etl run` stopped by SIGTERM (Kubernetes ending a pod) records its run and releases its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from etl.state import StateStore
from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, sandboxes, write_config


def test_sigterm_ends_the_run_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM mid-run exits 130 with one line, marks the run failed and frees the lease at once."""
    url = f"sqlite:///{tmp_path}/state.db"
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        boxes.intercom.faults.slow_seconds = 3.0
        boxes.intercom.faults.slow_rate = 1.0  # every Intercom reply takes 3 s: the run is surely mid-flight
        env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
        proc = subprocess.Popen([sys.executable, "-m", "etl", "--config", str(config), "run"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 20
        while not boxes.intercom.server.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert boxes.intercom.server.requests, "the run never reached Intercom"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == "etl: error: interrupted"
    store = StateStore(url)
    (run,) = store.runs("shop", 5)
    assert run.status == "failed" and run.error.startswith("KeyboardInterrupt")
    assert store.lock_holder("shop") is None
    store.close()
