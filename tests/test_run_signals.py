"""`etl run` stopped by SIGTERM (Kubernetes ending a pod) or Ctrl-C records its run and releases its lease."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_records_the_run_frees_the_lease_and_exits_128_plus_its_number(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    """SIGTERM (Kubernetes stopping the pod) mid-run exits 143, Ctrl-C's SIGINT 130, as a shell reports a process
    the signal ended: the summary so far, then one line saying a new run resumes; the run history names the
    signal and the lease is free at once."""
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
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == (
        f"etl: error: interrupted by {signum.name}: the run is recorded as failed and its lease released; "
        "running again resumes"
    )
    assert "job shop (incremental)" in lines and "Traceback" not in stderr
    store = StateStore(url)
    (run,) = store.runs("shop", 5)
    assert run.status == "failed" and run.error == f"interrupted by {signum.name}"
    assert store.lock_holder("shop") is None
    store.close()
