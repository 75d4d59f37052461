"""The shared base of the sandbox servers: a threaded HTTP server on loopback, JSON replies, fault injection.

Both fake APIs (Intercom, Klaviyo) subclass `SandboxHandler` and are started with `SandboxServer`.
The handler sets `disable_nagle_algorithm` (TCP_NODELAY): `http.server` writes headers and body separately,
and Nagle's algorithm with delayed ACKs would add ~40 ms to every response (docs/design.md §8).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


@dataclass
class Faults:
    """Fault switches, all off by default. Rates are probabilities per request (seeded, so reproducible)."""

    error_rate: float = 0.0  # reply 500/502/503 instead of handling
    storm_requests: int = 0  # the next N requests get 429 with rate-limit headers
    bare_429: bool = False  # every 429 (storm or rate limit) names no wait: no Retry-After, no *RateLimit-*
    clock_skew: float = 0.0  # seconds the server's clock is off the client's (-120: two minutes behind)
    reset_rate: float = 0.0  # close the connection without a reply
    slow_seconds: float = 0.0  # sleep this long before replying
    slow_rate: float = 0.0  # ... with this probability
    malformed_rate: float = 0.0  # reply 200 with a body that is not JSON
    empty_rate: float = 0.0  # reply 200 with an empty body
    # "METHOD /path" regex → the raw body of a 200 served instead of handling (a bad page, a junk job status)
    bodies: dict[str, bytes] = field(default_factory=dict)
    # seconds every request waits before it is handled: a real API's round trip (`etl sandbox serve
    # --intercom-latency-ms`, `make bench`); rate limits still count each request when it is handled
    latency: float = 0.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def body_for(self, request: str) -> bytes | None:
        """The fixed body switched on for this request ("POST /conversations/search"), if any."""
        return next((b for pattern, b in self.bodies.items() if re.fullmatch(pattern, request)), None)

    def draw(self) -> str | None:
        """The fault to inject into the next request, if any."""
        with self._lock:
            if self.storm_requests > 0:
                self.storm_requests -= 1
                return "storm"
            roll = self._rng.random
            for name, rate in (
                ("error", self.error_rate),
                ("reset", self.reset_rate),
                ("malformed", self.malformed_rate),
                ("empty", self.empty_rate),
                ("slow", self.slow_rate),
            ):
                if rate and roll() < rate:
                    return name
        return None


class SandboxHandler(BaseHTTPRequestHandler):
    """JSON helpers and fault injection; subclasses implement `route(method)`."""

    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: SandboxServer
    content_type: ClassVar[str] = "application/json"
    _raw_body = b""

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sandbox is used by tests and the demo; requests are recorded, not printed."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The `Date` header of every reply, from the server's own (possibly skewed) clock, as real servers do."""
        return super().date_time_string(self.server.now() if timestamp is None else timestamp)

    # -- entry points -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        self.server.entered()
        try:
            self._handle(method)
        finally:
            self.server.left()

    def _handle(self, method: str) -> None:
        # read the body before a fault fires: an unread body would poison the keep-alive connection
        length = int(self.headers.get("Content-Length") or 0)
        self._raw_body = self.rfile.read(length) if length else b""
        self.server.record(method, self.path)
        if self.server.notify("received", method, self.path):
            self._hang_up()
            return
        if self.server.faults.latency:
            time.sleep(self.server.faults.latency)
        fault = self.server.faults.draw()
        if fault == "reset":
            self._hang_up()
            return
        if fault == "slow":
            time.sleep(self.server.faults.slow_seconds)
        if fault == "error":
            self.send_json(503, self.error_body(503, "service_unavailable", "Sandbox fault injection"))
            return
        if fault == "storm":
            self.reply_throttled()
            return
        if fault == "malformed":
            self.send_raw(200, b'{"type": "list", "data": [', self.content_type)
            return
        if fault == "empty":
            self.send_raw(200, b"", self.content_type)
            return
        served = self.server.faults.body_for(f"{method} {self.path.split('?', 1)[0]}")
        if served is not None:
            self.send_raw(200, served, self.content_type)
            return
        self.route(method)

    def _hang_up(self) -> None:
        """Close the connection without a reply."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- for subclasses ---------------------------------------------------------------------------
    def route(self, method: str) -> None:
        raise NotImplementedError

    def error_body(self, status: int, code: str, message: str) -> dict[str, Any]:
        """The API's error body shape; subclasses override."""
        return {"errors": [{"code": code, "message": message}]}

    def reply_throttled(self) -> None:
        """A 429 in the API's own shape; subclasses override to add their rate-limit headers."""
        self.send_json(429, self.error_body(429, "rate_limit_exceeded", "Rate limit exceeded"))

    def read_body(self) -> bytes:
        """The request body (read once, before any fault was drawn)."""
        return self._raw_body

    def read_json(self) -> Any:
        """The request body as JSON, or raises ValueError."""
        raw = self.read_body()
        return json.loads(raw) if raw else None

    def send_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None, content_type: str | None = None
    ) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_raw(status, data, content_type or self.content_type, headers)

    def send_raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        if self.server.notify("answering", self.command, self.path):
            self._hang_up()  # the request was applied; its reply is never written
            return
        self.send_response(status)
        if data:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)


class SandboxServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 with an ephemeral port by default; `start()`/`stop()` from Python."""

    daemon_threads = True
    allow_reuse_address = True
    poll_interval = 0.05  # seconds serve_forever waits between shutdown checks: stop() returns this fast

    def __init__(self, handler: type[SandboxHandler], host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), handler)
        self.faults = Faults()
        self.clock: Callable[[], float] = time.time  # subclasses take an injected one
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        # on_request(stage, method, path) is called when a request was read ("received", before it is handled)
        # and when its reply is about to be written ("answering", the request applied); a true return hangs
        # up instead. Crash tests kill the client there: before a request took effect, or after it did but
        # before the client could learn so.
        self.on_request: Callable[[str, str, str], bool] | None = None
        self._requests_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # requests being handled now, and the most at once: tests of concurrent clients read `peak_in_flight`
        self.in_flight = self.peak_in_flight = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def now(self) -> float:
        """The server's clock: the injected one plus `faults.clock_skew` (rate-limit resets, `Date`)."""
        return self.clock() + self.faults.clock_skew

    def record(self, method: str, path: str) -> None:
        with self._requests_lock:
            self.requests.append((method, path))

    def entered(self) -> None:
        with self._requests_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def left(self) -> None:
        with self._requests_lock:
            self.in_flight -= 1

    def notify(self, stage: str, method: str, path: str) -> bool:
        """Calls `on_request`; true when the request is to be hung up on."""
        return self.on_request is not None and self.on_request(stage, method, path)

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.serve_forever, args=(self.poll_interval,), name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
