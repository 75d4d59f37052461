"""HTTP for both APIs: one session, timeouts, the one retry/pacing policy, response classification, scrubbing.

Policy (docs/design.md §5, §6):
- pace before hitting 429: when a response says the budget is spent (`X-RateLimit-Remaining: 0` with an
  epoch `X-RateLimit-Reset`, Intercom; `RateLimit-Remaining: 0` with a seconds `RateLimit-Reset`, Klaviyo),
  the next request waits until the reset;
- on 429 wait `Retry-After`, else until the reset, else the API's own window (`throttle_wait`, doubling while
  429s keep naming no wait); an epoch reset is read against the server's clock (its `Date` header) when it
  sends one, and every 429 waits at least MIN_THROTTLE_WAIT seconds, so a client clock running ahead of the
  server's cannot turn a 429 into a burst of immediate retries;
- retry 5xx, timeouts, connection errors and unreadable bodies with exponential backoff + jitter; waiting
  out a 429 is normal operation and does not grow that backoff;
- what bounds one request is the time spent retrying it (`retry_budget`, from its first failure): past it
  the caller's error class says what kept failing, for how long, and which setting waits longer;
- never retry any other 4xx: it is classified into the caller's error class with a one-line message;
- every retry is logged (a failure at warning, a 429's wait at info) with the API's host, the request and the
  reason, never a credential; a connection refused or a host not found to the end says to check `base_url`;
- never exceed the API's documented rate limit ourselves: a client given `rate_limits` reserves each try's
  moment with its `etl.pacing.Pacer` (one per client, shared by its threads) and waits for it, so a concurrent
  run paces instead of provoking 429s (which are still waited out: other clients may share the budget).
One client may be used by several threads at once: at most `concurrency` requests are in flight (the others
wait their turn), the connection pool keeps that many connections and a few spare, and the counters are
updated under a lock. The retry state, its budget and its log lines belong to each request.
tenacity drives the loop (retry/stop/wait/sleep hooks); the waits are computed here because tenacity's wait
strategies count every attempt, 429s included, and its delay-based stops read `time.monotonic`, not `clock`.
`sleep` and `clock` are injected so tests never patch time.
"""

from __future__ import annotations

import http.client
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Self
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tenacity import RetryCallState, Retrying

from etl import codec, logs
from etl.errors import EtlError
from etl.pacing import Limits, Pacer

DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds; every request has one
DEFAULT_RETRY_BUDGET = timedelta(minutes=10)  # docs/design.md §5: how long one request may keep failing
MAX_WAIT_SECONDS = 60.0  # never sleep longer than this for one header-driven wait
MIN_THROTTLE_WAIT = 1.0  # docs/design.md §5: every 429 waits at least this long, whatever the headers say
DEFAULT_THROTTLE_WAIT = 1.0  # a 429 that names no wait: Klaviyo's burst window is 1 s (rate limits guide)
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_JITTER = 0.5, 20.0, 0.5  # seconds: 0.5, 1, 2, … 20, plus up to 0.5
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
REFUSED, NOT_FOUND = "connection refused", "host not found"  # reasons that point at a wrong base_url
SPARE_CONNECTIONS = 2  # pooled beyond `concurrency`: a connection being closed never makes a new one wait

log = logs.get_logger("http")


class EnvOnceSession(requests.Session):
    """A `requests.Session` that reads the environment's proxy and CA-bundle settings once per scheme and host.

    requests reads `os.environ` (`*_proxy`, `no_proxy`, `REQUESTS_CA_BUNDLE`) again for every request: on a
    first sync of 10k objects that was about 7% of the process's CPU (docs/bench-results.md). A run's
    environment does not change while it runs, so the answer for one (scheme, host) is kept; threads sharing
    the session share the answers (a lock keeps the cache whole; two first readers may both compute one).

    Several threads may send through one session: it talks to one host, so urllib3's pool manager never
    evicts a pool another thread is using (psf/requests#1871), and the cookie jar locks itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._settings_lock = threading.Lock()

    def merge_environment_settings(
        self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        if proxies or not isinstance(url, str):  # per-request proxies: requests' own merge, as before
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = (urlsplit(url)[:2], stream, verify, cert, self.trust_env)
        with self._settings_lock:
            found = self._settings.get(key)
        if found is None:
            merged = dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
            with self._settings_lock:
                found = self._settings.setdefault(key, merged)
        return {**found, "proxies": dict(found["proxies"])}  # requests may change what it is given


@dataclass
class CallStats:
    """What the policy did, for run history and metrics; `add` counts, under a lock (threads share a client)."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0  # 429 responses
    waited_seconds: float = 0.0  # backoffs, 429 waits and pacing
    by_status: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add(
        self,
        *,
        calls: int = 0,
        retries: int = 0,
        throttled: int = 0,
        waited: float = 0.0,
        status: int | None = None,
    ) -> None:
        with self._lock:
            self.calls += calls
            self.retries += retries
            self.throttled += throttled
            self.waited_seconds += waited
            if status is not None:
                self.by_status[status] = self.by_status.get(status, 0) + 1


@dataclass(frozen=True)
class Reply:
    """A response the caller accepted: status, headers and the body parsed once (None when empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any


class _Transient(Exception):
    """A failure worth retrying; `wait` is the server's own hint in seconds, if it gave one."""

    def __init__(self, reason: str, wait: float | None = None, *, throttled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.throttled = throttled  # a 429: waited out, never counted as a failure


@dataclass
class _Retries:
    """One request's retry state: since when it fails, and how often by kind (each kind has its own backoff)."""

    since: float | None = None  # our clock at the first failure
    failures: int = 0  # 5xx, timeouts, resets, unreadable bodies
    unhinted: int = 0  # 429s that named no wait
    last: _Transient | None = None


def format_duration(span: timedelta) -> str:
    """`10m0s`, `45s`, `1h30m0s`: the spelling of durations in messages (whole seconds)."""
    seconds = max(0, round(span.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7, e.g. `Sun, 01 Mar 2026 12:00:07 GMT`) as a UNIX time, or None."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def server_time(headers: Mapping[str, str], fallback: float) -> float:
    """The server's clock when it answered (its `Date` header), else `fallback` (ours).

    `Date` has whole seconds, truncated: a wait computed from it comes out up to a second long, never short.
    """
    moment = _http_date(headers.get("Date"))
    return fallback if moment is None else moment


def reset_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until the rate-limit window resets, from either header family, or None if unknown.

    `now` is the server's time (`server_time`): an epoch reset minus our own clock would be off by however
    far the two clocks disagree (a client two minutes ahead would never wait at all).
    """
    retry_after = _float(headers, "Retry-After")
    if retry_after is None:  # RFC 9110 §10.2.3 allows an HTTP-date too
        moment = _http_date(headers.get("Retry-After"))
        retry_after = None if moment is None else moment - now
    if retry_after is not None:
        return max(0.0, retry_after)
    epoch_reset = _float(headers, "X-RateLimit-Reset")  # Intercom: a UNIX time
    if epoch_reset is not None:
        return max(0.0, epoch_reset - now)
    delta_reset = _float(headers, "RateLimit-Reset")  # Klaviyo (IETF draft): seconds left in the window
    if delta_reset is not None:
        return max(0.0, delta_reset)
    return None


def budget_spent(headers: Mapping[str, str]) -> bool:
    """True when the response says no request is left in the current rate-limit window."""
    for name in ("X-RateLimit-Remaining", "RateLimit-Remaining"):
        remaining = _float(headers, name)
        if remaining is not None and remaining <= 0:
            return True
    return False


def connection_failure(exc: BaseException) -> str:
    """What a `requests.ConnectionError` was, in an operator's words (requests wraps urllib3's error, which
    wraps the socket's: the cause is found down the chain)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        cause = stack.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return REFUSED
        if isinstance(cause, socket.gaierror):
            return NOT_FOUND
        if isinstance(cause, ConnectionResetError | http.client.RemoteDisconnected):
            return "connection closed without a reply"
        stack += [cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args]
    return "connection error"


def host_of(url: str) -> str:
    """`host:port` of a URL, without any user or password written into it."""
    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def error_detail(response: requests.Response) -> str:
    """A short, single-line description of an error body (Intercom `errors[].message`, JSON:API `detail`)."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip().replace("\n", " ")[:200]
    parts: list[str] = []
    if isinstance(body, dict):
        for err in body.get("errors") or []:
            if isinstance(err, dict):
                text = err.get("detail") or err.get("message") or err.get("code") or err.get("title")
                if text:
                    parts.append(str(text))
        if not parts and body.get("message"):
            parts.append(str(body["message"]))
    return "; ".join(parts)[:300] or (response.text or "").strip().replace("\n", " ")[:200]


class HttpClient:
    """One API's session: base URL, fixed headers, the retry/pacing policy and error classification."""

    def __init__(
        self,
        *,
        service: str,
        base_url: str,
        headers: Mapping[str, str],
        error_class: type[EtlError],
        secret_env: str,
        credential: str = "token",  # what the variable holds, for messages ("token", "private API key")
        secrets: Collection[str] = (),
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        retry_budget: timedelta = DEFAULT_RETRY_BUDGET,
        budget_setting: str = "",  # the jobs.yaml key that raises the budget, for the give-up message
        base_url_setting: str = "",  # the jobs.yaml key of the URL, for "refused the connection"
        throttle_wait: float = DEFAULT_THROTTLE_WAIT,  # first wait after a 429 that names none
        # (method, path) -> (rate-limit bucket, its documented limits): paces every try (etl.pacing)
        rate_limits: Callable[[str, str], tuple[Hashable, Limits]] | None = None,
        concurrency: int = 1,  # requests in flight at most, from however many threads
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[float, float], float] = random.uniform,
        session: requests.Session | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.error_class = error_class
        self.secret_env = secret_env
        self.credential = credential
        self.secrets = tuple(s for s in secrets if s)
        self.timeout = timeout
        self.retry_budget = retry_budget
        self.budget_setting = budget_setting or f"{service.lower()}.retry_budget"
        self.base_url_setting = base_url_setting or f"{service.lower()}.base_url"
        self.throttle_wait = throttle_wait
        self.sleep = sleep
        self.clock = clock
        self.jitter = jitter
        self.stats = CallStats()
        self.session = session or EnvOnceSession()
        self.session.headers.update(headers)
        self.concurrency = max(1, concurrency)
        # requests' default pool keeps 10 connections per host: more threads than that would each open a
        # connection and discard it afterwards ("Connection pool is full"), a TCP handshake per request
        for prefix in ("https://", "http://"):
            adapter = HTTPAdapter(pool_maxsize=self.concurrency + SPARE_CONNECTIONS)
            self.session.mount(prefix, adapter)
        self._in_flight = threading.BoundedSemaphore(self.concurrency)
        self.pacer = Pacer(rate_limits) if rate_limits is not None else None
        self._not_before = 0.0  # clock time before which the next request must not start (pacing)
        self._not_before_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()

    # -- the policy -------------------------------------------------------------------------------
    def _pause(self, seconds: float, *, most: float = MAX_WAIT_SECONDS) -> None:
        seconds = min(max(seconds, 0.0), most)
        if seconds > 0:
            self.stats.add(waited=seconds)
            self.sleep(seconds)

    def _backoff(self, retries: _Retries) -> float:
        """The wait before the next try: the server's hint for a 429, else an exponential backoff."""
        failure = retries.last
        assert failure is not None
        if not failure.throttled:
            exponential = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (retries.failures - 1))
            return exponential + self.jitter(0, BACKOFF_JITTER)
        # no hint: one window of the API, doubling while 429s keep coming without one
        wait = failure.wait if failure.wait is not None else self.throttle_wait * 2 ** (retries.unhinted - 1)
        return max(MIN_THROTTLE_WAIT, min(wait, MAX_WAIT_SECONDS))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        accept: Collection[int] = (),
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one logical request with the policy; return 2xx responses and those in `accept`.

        Raises the client's `error_class` for every other outcome, with a one-line message.
        """
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        budget = self.retry_budget.total_seconds()
        retries = _Retries()

        def failed(state: RetryCallState) -> bool:
            # tenacity asks this first after every try, once: the one place that counts failures
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, _Transient):
                return False
            if retries.since is None:
                retries.since = self.clock()
            if exc.throttled:
                self.stats.add(throttled=1)
                retries.unhinted += exc.wait is None
            else:
                retries.failures += 1
            retries.last = exc
            return True

        def spent(state: RetryCallState) -> bool:
            # a microsecond of slack: the clock has moved by sums of float waits that land on the budget's end
            return retries.since is not None and self.clock() - retries.since >= budget - 1e-6

        def wait(state: RetryCallState) -> float:
            # the last try lands on the budget's end rather than after it; a 429 still waits its minimum
            assert retries.since is not None  # `failed` ran first
            left = budget - (self.clock() - retries.since)
            chosen = min(self._backoff(retries), max(left, 0.0))
            return max(chosen, MIN_THROTTLE_WAIT) if retries.last and retries.last.throttled else chosen

        def before_sleep(state: RetryCallState) -> None:
            # tenacity's own sleep is our injected `sleep`; count the wait it is about to do
            seconds = state.next_action.sleep if state.next_action is not None else 0.0
            self.stats.add(retries=1, waited=seconds)
            self._log_retry(method, url, retries, seconds)

        retrying = Retrying(
            retry=failed, stop=spent, wait=wait, sleep=self.sleep, before_sleep=before_sleep, reraise=True
        )
        try:
            for attempt in retrying:
                with attempt, self._in_flight:  # the backoff between tries holds no place
                    return self._send_once(method, url, json, params, data, accept, headers)
        except _Transient as exc:
            host = host_of(url)
            if exc.reason == REFUSED:  # nothing listens there: no wait makes that right
                raise self.error_class(
                    f"{self.service} at {host} refused the connection: check {self.base_url_setting} in jobs.yaml"
                ) from None
            if exc.reason == NOT_FOUND:
                raise self.error_class(
                    f"{self.service} host {urlsplit(url).hostname} was not found: "
                    f"check {self.base_url_setting} in jobs.yaml"
                ) from None
            raise self.error_class(
                f"{self.service} kept failing {method} {self._path(url)} for {format_duration(self.retry_budget)} "
                f"(last: {exc.reason}): try again later; raise {self.budget_setting} to wait longer"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _path(self, url: str) -> str:
        return url[len(self.base_url) :] if url.startswith(self.base_url) else url

    def _log_retry(self, method: str, url: str, retries: _Retries, wait: float) -> None:
        """One line per retry, so a failing API is never silent for the length of a retry budget: the host
        and request (a path holds no credential; scrubbed all the same) and why."""
        failure = retries.last
        assert failure is not None and retries.since is not None
        fields = {
            "host": host_of(url),
            "request": logs.scrub(f"{method} {urlsplit(url).path}", self.secrets),
            "reason": failure.reason,
            "wait_seconds": round(wait, 1),
            "failing_for_seconds": round(self.clock() - retries.since, 1),
        }
        if failure.throttled:  # waiting out a 429 is normal operation (pacing), not a failure
            log.info(f"{self.service} throttled the request; waiting", extra={"fields": fields})
        else:
            log.warning(f"{self.service} request failed; retrying", extra={"fields": fields})

    def _send_once(
        self,
        method: str,
        url: str,
        json: Any,
        params: Mapping[str, Any] | None,
        data: bytes | None,
        accept: Collection[int],
        headers: Mapping[str, str] | None,
    ) -> Reply:
        self._pause(self._not_before - self.clock())
        if self.pacer is not None:
            # the reservation is made once this request holds its place in flight and is sent right after
            # the wait: a request sent later than its moment could crowd a window (etl.pacing)
            self._pause(self.pacer.take(method, urlsplit(url).path, self.clock()), most=math.inf)
        self.stats.add(calls=1)
        try:
            response = self.session.request(
                method, url, json=json, params=params, data=data, timeout=self.timeout, headers=headers
            )
        except requests.Timeout:
            raise _Transient("timeout") from None
        except requests.ConnectionError as exc:
            raise _Transient(connection_failure(exc)) from None
        except requests.RequestException as exc:
            raise self.error_class(
                f"{self.service} request failed: {logs.scrub(type(exc).__name__, self.secrets)}"
            ) from None
        status = response.status_code
        self.stats.add(status=status)
        now = self.clock()
        server_now = server_time(response.headers, now)  # resets are the server's times, not ours
        if budget_spent(response.headers):
            wait = reset_wait(response.headers, server_now)
            with self._not_before_lock:  # another thread may have learnt of a later reset
                self._not_before = max(self._not_before, now + (wait if wait is not None else 1.0))
        if status == 429:
            raise _Transient("HTTP 429", reset_wait(response.headers, server_now), throttled=True)
        if status in RETRYABLE_STATUSES:
            raise _Transient(f"HTTP {status}")
        if 200 <= status < 300 or status in accept:
            body = None
            if response.content:
                try:
                    body = codec.loads(response.content)  # as response.json() reads it, ~3x faster (orjson)
                except ValueError:
                    if status not in (202, 204):
                        raise _Transient(f"unreadable response body (HTTP {status})") from None
            elif 200 <= status < 300 and status not in (202, 204):
                raise _Transient(f"empty response body (HTTP {status})")
            return Reply(status, response.headers, body)
        raise self.error_class(self._message(method, url, response))

    def _message(self, method: str, url: str, response: requests.Response) -> str:
        status = response.status_code
        path = self._path(url)
        detail = logs.scrub(error_detail(response), self.secrets)
        if status == 401:
            return (
                f"{self.service} rejected the credentials (401): set {self.secret_env} to a valid {self.credential}"
                + (f" ({detail})" if detail else "")
            )
        if status == 403:
            return (
                f"{self.service} refused access (403) to {method} {path}: give the {self.credential} in "
                f"{self.secret_env} the scopes this job needs" + (f" ({detail})" if detail else "")
            )
        return f"{self.service} rejected {method} {path} ({status})" + (f": {detail}" if detail else "")


class ApiClient:
    """What both API clients share: their HttpClient, its stats, closing (also as a context manager)."""

    http: HttpClient

    @property
    def stats(self) -> CallStats:
        return self.http.stats

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
