"""The sandbox's latency switch: every request waits the configured time, and the rate limits stay real."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import requests

from etl.sandbox.intercom_server import DEFAULT_TOKEN, IntercomSandbox, IntercomSettings
from tests.test_sandbox_serve import read_until


def _timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    reply = requests.get(url, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}, timeout=10)
    return time.perf_counter() - start, reply.status_code


def test_latency_delays_every_request_and_the_rate_limit_still_counts_it() -> None:
    """0.2 s of latency makes each answer take at least 0.2 s; past the budget it is still a 429."""
    # a fixed server clock: the 10-second rate window cannot roll over between the requests
    with IntercomSandbox(settings=IntercomSettings(rate_budget=2), clock=lambda: 1_800_000_000.0) as sandbox:
        quick, status = _timed_get(f"{sandbox.url}/admins")
        assert status == 200 and quick < 0.2
        sandbox.faults.latency = 0.2
        slow = [_timed_get(f"{sandbox.url}/admins") for _ in range(2)]
    assert all(seconds >= 0.2 for seconds, _ in slow), slow
    assert [status for _, status in slow] == [200, 429]  # the budget of 2 per window: latency hides no call


def test_sandbox_serve_latency_flags_slow_both_servers() -> None:
    """`--intercom-latency-ms 300 --klaviyo-latency-ms 200`: each server answers no faster than its flag."""
    args = ["sandbox", "serve", "--intercom-port", "0", "--klaviyo-port", "0"]
    args += ["--intercom-latency-ms", "300", "--klaviyo-latency-ms", "200"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        printed = read_until(proc, b"Ctrl-C stops.")
        intercom = re.search(r"^sandbox Intercom: (\S+)", printed, re.M)
        klaviyo = re.search(r"^sandbox Klaviyo:  (\S+)", printed, re.M)
        assert intercom and klaviyo, printed
        intercom_seconds, intercom_status = _timed_get(f"{intercom[1]}/admins")
        klaviyo_seconds, _ = _timed_get(f"{klaviyo[1]}/api/metrics")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert intercom_status == 200
    assert 0.3 <= intercom_seconds < 2 and 0.2 <= klaviyo_seconds < 0.3 + 1, (
        intercom_seconds,
        klaviyo_seconds,
    )
    assert klaviyo_seconds < intercom_seconds


def test_sandbox_serve_refuses_a_negative_latency() -> None:
    """A negative latency is a usage error (exit 2) naming the flag, before any server starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "etl", "sandbox", "serve", "--klaviyo-latency-ms", "-5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--klaviyo-latency-ms" in proc.stderr
