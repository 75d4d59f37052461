"""`etl sandbox serve`: both fake servers answer on the ports they print until stopped."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

from etl.intercom import IntercomClient
from etl.klaviyo import KlaviyoClient
from etl.sandbox.intercom_server import DEFAULT_TOKEN
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY


def read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 60) -> str:
    """What the process printed up to `marker`; fails if it exits or stays silent for `timeout` seconds."""
    assert proc.stdout is not None
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
        assert chunk, f"no {marker!r} from etl sandbox serve; it printed {out!r}"
        out += chunk
    return out.decode()


def test_sandbox_serve_on_port_0_prints_the_bound_urls_and_stops_on_sigterm() -> None:
    """Port 0 binds free ports, the printed URLs name them, both APIs answer there, and SIGTERM stops it (exit 0)."""
    # port 0 lets the kernel pick when binding, so no other process can take the port between choice and bind
    args = ["sandbox", "serve", "--seed", "5", "--intercom-port", "0", "--klaviyo-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        printed = read_until(proc, b"Ctrl-C stops.")
        intercom = re.search(
            r"^sandbox Intercom: (http://127\.0\.0\.1:(\d+))  \(token: (\S+)\)$", printed, re.M
        )
        klaviyo = re.search(
            r"^sandbox Klaviyo:  (http://127\.0\.0\.1:(\d+))  \(api key: (\S+)\)$", printed, re.M
        )
        assert intercom and klaviyo, printed
        assert intercom[3] == DEFAULT_TOKEN and klaviyo[3] == SANDBOX_API_KEY
        assert 0 not in (int(intercom[2]), int(klaviyo[2])) and intercom[2] != klaviyo[2]
        with IntercomClient(intercom[1], intercom[3], token_env="T") as client:
            assert len(client.admins()) > 0
        with KlaviyoClient(klaviyo[1], klaviyo[3], api_key_env="K") as client:
            client.check()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, stderr) == (0, b"")  # a clean stop: no traceback, no error line
