"""Delivery: a job's pending outbox to Klaviyo in bounded chunks, profiles first (docs/design.md §6, §7).

An item is marked sent only after Klaviyo accepted it, and failed with Klaviyo's own words when rejected;
whatever a crash leaves pending goes out with the next run (Klaviyo deduplicates by unique_id).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from etl import logs
from etl.klaviyo import KlaviyoClient
from etl.models import RunReport
from etl.state import StateStore

log = logs.get_logger("delivery")

# Outbox items per delivery call. Large, so the client cuts requests by Klaviyo's count AND byte limits
# itself (a smaller chunk would add requests where bytes are the tighter limit); bounded, so memory is too.
PROFILE_CHUNK = 30_000
EVENT_CHUNK = 20_000


def deliver(
    store: StateStore,
    klaviyo: KlaviyoClient,
    job: str,
    report: RunReport,
    *,
    clock: Callable[[], datetime],
    check_lease: Callable[[], None],
    chunks: tuple[int, int] = (PROFILE_CHUNK, EVENT_CHUNK),
    run_id: int | None = None,
) -> None:
    """Send the job's pending outbox: profiles first (events name them), then events; counts go to `report`.

    Each item settled is marked with `run_id`, the delivering run (not always the one that queued it)."""
    for kind, chunk, send in (
        ("profile", chunks[0], klaviyo.send_profiles),
        ("event", chunks[1], klaviyo.send_events),
    ):
        after = 0
        while items := store.pending(job, kind, limit=chunk, after_id=after):
            check_lease()
            result = send(items)
            store.mark_delivered(result.sent, result.failed, clock(), run_id=run_id)
            report.delivery.add(kind, len(result.sent), len(result.failed))  # type: ignore[arg-type]
            if result.failed:
                log.warning(
                    "Klaviyo rejected items",
                    extra={"fields": {"job": job, "kind": kind, "rejected": len(result.failed)}},
                )
            after = items[-1].id
