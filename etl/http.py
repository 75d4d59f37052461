"""HTTP for both APIs: one session, timeouts, the one retry/pacing policy, response classification, redaction.

Policy (docs/design.md §5, §6):
- pace before hitting 429: when a response says the budget is spent (`X-RateLimit-Remaining: 0` with an
  epoch `X-RateLimit-Reset`, Intercom; `RateLimit-Remaining: 0` with a seconds `RateLimit-Reset`, Klaviyo),
  the next request waits until the reset;
- on 429 wait `Retry-After`, else until the reset, else back off;
- retry 5xx, timeouts, connection errors and unreadable bodies with exponential backoff + jitter (tenacity);
- never retry any other 4xx: it is classified into the caller's error class with a one-line message.
`sleep` and `clock` are injected so tests never patch time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential, wait_random

from etl.errors import EtlError

DEFAULT_TIMEOUT = (5.0, 60.0)  # (connect, read) seconds; every request has one
MAX_ATTEMPTS = 8  # first try + 7 retries; a 429 storm of a few windows is survived
MAX_WAIT_SECONDS = 60.0  # never sleep longer than this for one header-driven wait
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass
class CallStats:
    """What the policy did, for run history and metrics."""

    calls: int = 0
    retries: int = 0
    throttled: int = 0  # 429 responses
    waited_seconds: float = 0.0
    by_status: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A response the caller accepted: status, headers and the body parsed once (None when empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any


class _Transient(Exception):
    """A failure worth retrying; `wait` is the server's own hint in seconds, if it gave one."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def redact(text: str, secrets: Collection[str]) -> str:
    """Replace every secret value in `text` (errors, logs) with `***`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def reset_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until the rate-limit window resets, from either header family, or None if unknown."""
    retry_after = _float(headers, "Retry-After")
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
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.error_class = error_class
        self.secret_env = secret_env
        self.credential = credential
        self.secrets = tuple(s for s in secrets if s)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.clock = clock
        self.stats = CallStats()
        self.session = session or requests.Session()
        self.session.headers.update(headers)
        self._not_before = 0.0  # clock time before which the next request must not start (pacing)

    def close(self) -> None:
        self.session.close()

    # -- the policy -------------------------------------------------------------------------------
    def _pause(self, seconds: float) -> None:
        seconds = min(max(seconds, 0.0), MAX_WAIT_SECONDS)
        if seconds > 0:
            self.stats.waited_seconds += seconds
            self.sleep(seconds)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Transient) and exc.wait is not None:
            return min(exc.wait, MAX_WAIT_SECONDS)
        # wait_exponential + wait_random, not wait_exponential_jitter: its `initial` is deprecated in
        # tenacity 9 (a DeprecationWarning) and its replacement `multiplier` does not exist in 8.x
        return float((wait_exponential(multiplier=0.5, max=20.0) + wait_random(0, 0.5))(state))

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        # tenacity's own sleep is our injected `sleep`; count the wait it is about to do
        if state.next_action is not None:
            self.stats.waited_seconds += state.next_action.sleep

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
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            sleep=self.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._send_once(method, url, json, params, data, accept, headers)
        except _Transient as exc:
            raise self.error_class(
                f"{self.service} kept failing {method} {path}: {exc.reason} after {self.max_attempts} "
                "attempts; try again later"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

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
        self.stats.calls += 1
        try:
            response = self.session.request(
                method, url, json=json, params=params, data=data, timeout=self.timeout, headers=headers
            )
        except requests.Timeout:
            raise _Transient("timeout") from None
        except requests.ConnectionError:
            raise _Transient("connection error") from None
        except requests.RequestException as exc:
            raise self.error_class(
                f"{self.service} request failed: {redact(type(exc).__name__, self.secrets)}"
            ) from None
        status = response.status_code
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        now = self.clock()
        if budget_spent(response.headers):
            wait = reset_wait(response.headers, now)
            self._not_before = now + (wait if wait is not None else 1.0)
        if status == 429:
            self.stats.throttled += 1
            raise _Transient("429 rate limited", reset_wait(response.headers, now))
        if status in RETRYABLE_STATUSES:
            raise _Transient(f"HTTP {status}")
        if 200 <= status < 300 or status in accept:
            body = None
            if response.content:
                try:
                    body = response.json()
                except ValueError:
                    if status not in (202, 204):
                        raise _Transient(f"unreadable response body (HTTP {status})") from None
            elif 200 <= status < 300 and status not in (202, 204):
                raise _Transient(f"empty response body (HTTP {status})")
            return Reply(status, response.headers, body)
        raise self.error_class(self._message(method, url, response))

    def _message(self, method: str, url: str, response: requests.Response) -> str:
        status = response.status_code
        path = url[len(self.base_url) :] if url.startswith(self.base_url) else url
        detail = redact(error_detail(response), self.secrets)
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
