"""docs/design.md §5 end to end: a run rides out 429 storms, a server clock two minutes behind and 5xx, and loses nothing."""

from __future__ import annotations

from etl.models import RunOptions
from etl.pipeline import JobRun
from etl.sandbox.server import Faults
from etl.state import StateStore
from tests.run_fixtures import close, events_posted, execute, klaviyo_content, sandboxes


def test_a_run_survives_a_429_storm_a_skewed_server_clock_and_20_percent_5xx_at_once(
    store: StateStore,
) -> None:
    """12 consecutive 429s, server clocks 120 s behind and 20% 5xx on both APIs: the run succeeds (exit 0) and
    Klaviyo ends up holding exactly what a run without faults delivers, each event sent once."""
    with sandboxes(klaviyos=2) as boxes:
        execute(boxes, store, boxes.job("ref", klaviyo=1), RunOptions(), klaviyo=1)  # without faults
        boxes.intercom.server.faults = Faults(storm_requests=12, clock_skew=-120, error_rate=0.2, seed=5)
        boxes.klaviyo.faults = Faults(storm_requests=12, clock_skew=-120, error_rate=0.2, seed=4)
        services = boxes.services(store)
        try:
            JobRun(boxes.job("shop"), RunOptions(), services, clock=boxes.clock).execute()
        finally:
            close(services)
        intercom_stats, klaviyo_stats = services.intercom.stats, services.klaviyo.stats

        (run,) = store.runs("shop", 5)
        assert run.status == "succeeded" and run.error is None  # what `etl run` exits 0 on
        assert klaviyo_content(boxes.klaviyo) == klaviyo_content(boxes.klaviyos[1])
        assert len(boxes.klaviyo.events) > 0 and events_posted(boxes.klaviyo) == len(boxes.klaviyo.events)
        assert store.watermarks("shop") == store.watermarks("ref") != {}

        # the first request met the storm: each 429 waited for the reset by the server's clock (its Date header,
        # 120 s behind ours and standing still on a window boundary: 10 s), not by ours (which would give 1 s)
        assert boxes.intercom_time.waits[:12] == [10.0] * 12
        assert boxes.klaviyo_time.waits[:12] == [1.0] * 12  # Klaviyo's Retry-After: 1, as sent
        assert intercom_stats.throttled == 12 and klaviyo_stats.throttled == 12
        # and the 5xx were there too, each retried after a jittered backoff
        assert intercom_stats.by_status.get(503, 0) >= 3 and klaviyo_stats.by_status.get(503, 0) >= 1
        assert all(0.5 <= w <= 20.5 for w in boxes.intercom_time.waits[12:])
