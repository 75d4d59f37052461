"""The lease that keeps one run per job (docs/design.md §7), renewed in the background while the run lives."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from etl import logs
from etl.errors import EtlError, LockHeld
from etl.state import StateStore

log = logs.get_logger("lease")


class LeaseKeeper:
    """Renews a lease from a background thread every third of its TTL while a run is alive.

    Long waits (a Klaviyo import job, a storm of retries) can outlast the TTL; renewing between pages alone
    would let a second run take over a live one. A lost lease is reported to the run at its next page.
    Any other failure in the thread (a bug, a driver error outside our StateError wrapping) ends the renewals,
    so it counts as a lost lease too: the run must not go on as if it still held a lease nobody renews.
    """

    def __init__(
        self,
        store: StateStore,
        name: str,
        owner: str,
        ttl: timedelta,
        clock: Callable[[], datetime],
        ticker: threading.Event | None = None,
    ) -> None:
        """`ticker` is what the keeper waits on between renewals (`wait(period)` true = stop, `set()` stops):
        a fresh Event by default; tests pass one they advance beat by beat, so no test sleeps for a TTL."""
        self.store, self.name, self.owner, self.ttl, self.clock = store, name, owner, ttl, clock
        self.lost: str | None = None
        self._stop = ticker if ticker is not None else threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease:{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 3):
            try:
                self.store.renew_lock(self.name, self.owner, self.ttl, self.clock())
            except LockHeld as exc:
                self.lost = str(exc)
                return
            except EtlError as exc:  # a database hiccup: try again at the next beat, the lease still holds
                log.warning(
                    "could not renew the lease", extra={"fields": {"lease": self.name, "error": str(exc)}}
                )
            except Exception as exc:  # whatever it was, nobody renews the lease any more
                reason = logs.scrub(f"{type(exc).__name__}: {exc}".replace("\n", " "))[:300]
                self.lost = (
                    f"renewing the lease of {self.name!r} failed ({reason}): another run could take the job over, "
                    "so this one stops without advancing"
                )
                log.error("the lease renewal failed", extra={"fields": {"lease": self.name, "error": reason}})
                return

    def check(self) -> None:
        if self.lost is not None:
            raise LockHeld(self.lost)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @classmethod
    @contextmanager
    def held(
        cls, store: StateStore, name: str, owner: str, ttl: timedelta, clock: Callable[[], datetime]
    ) -> Iterator[LeaseKeeper]:
        """Take the lease (LockHeld, exit 75, when another run holds it), renew it while the block runs,
        and release it at the end, whatever happened; a lease that cannot be released expires by itself."""
        store.acquire_lock(name, owner, ttl, clock())
        keeper = cls(store, name, owner, ttl, clock)
        try:
            yield keeper
        finally:
            keeper.stop()
            try:
                store.release_lock(name, owner)
            except EtlError:
                log.warning(
                    "could not release the lease; it expires by itself", extra={"fields": {"lease": name}}
                )
