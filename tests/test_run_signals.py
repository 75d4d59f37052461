"""`etl run` stopped by SIGTERM (Kubernetes ending a pod) records its run and releases its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from etl.sandbox.server import Faults
from etl.state import StateStore
from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, sandboxes, write_config


class Reached(Faults):
    """Faults that also tell the test when the first request arrived (drawn once per request, after recording)."""

    def __init__(self, **rates: float) -> None:
        super().__init__(**rates)
        self.reached = threading.Event()

    def draw(self) -> str | None:
        self.reached.set()
        return super().draw()


def test_sigterm_ends_the_run_like_ctrl_c(tmp_path: Path) -> None:
    """SIGTERM mid-run exits 130 with one line, marks the run failed and frees the lease at once."""
    url = f"sqlite:///{tmp_path}/state.db"
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        # every Intercom reply takes 3 s: once the first request arrived, the run is surely mid-flight
        faults = boxes.intercom.server.faults = Reached(slow_seconds=3.0, slow_rate=1.0)
        env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
        proc = subprocess.Popen(
            [sys.executable, "-m", "etl", "--log-format", "text", "--config", str(config), "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert faults.reached.wait(timeout=20), "the run never reached Intercom"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1] == "etl: error: interrupted"
    store = StateStore(url)
    (run,) = store.runs("shop", 5)
    assert run.status == "failed" and run.error.startswith("KeyboardInterrupt")
    assert store.lock_holder("shop") is None
    store.close()
