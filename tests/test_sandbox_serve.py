"""`etl sandbox serve`: both fake servers answer on the ports given until stopped."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from etl.demo import serve_sandbox
from etl.intercom import IntercomClient
from etl.klaviyo import KlaviyoClient
from etl.sandbox.intercom_server import DEFAULT_TOKEN
from etl.sandbox.klaviyo_server import SANDBOX_API_KEY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sandbox_serve_answers_both_apis_until_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    """The served Intercom and Klaviyo accept their sandbox credentials, and stop when asked."""
    ic_port, kl_port = free_port(), free_port()
    stop = threading.Event()
    thread = threading.Thread(target=serve_sandbox, args=(5, ic_port, kl_port), kwargs={"stop": stop})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while f"127.0.0.1:{kl_port}" not in capsys.readouterr().out and time.monotonic() < deadline:
            time.sleep(0.05)
        with IntercomClient(f"http://127.0.0.1:{ic_port}", DEFAULT_TOKEN, token_env="T") as intercom:
            assert len(intercom.admins()) > 0
        klaviyo = KlaviyoClient(f"http://127.0.0.1:{kl_port}", SANDBOX_API_KEY, api_key_env="K")
        klaviyo.check()
        klaviyo.close()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", ic_port)) != 0  # the port is closed again
