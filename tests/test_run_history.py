"""The run history records what each stream cost: pages, objects, API calls, retries and 429s."""

from __future__ import annotations

from etl.models import RunOptions
from etl.state import StateStore
from tests.run_fixtures import execute, sandboxes


def test_run_history_counts_api_calls_retries_and_429s_per_stream(db_url: str) -> None:
    """Two 429s met while reading contacts are counted on contacts, beside its pages and search calls."""
    store = StateStore(db_url)
    store.upgrade()
    with sandboxes() as boxes:
        boxes.intercom.faults.storm_requests = 2  # the first two requests (contacts' first page) get 429
        before = boxes.searches()
        execute(boxes, store, boxes.job(), RunOptions())
        searches = boxes.searches() - before
    (run,) = store.runs("shop", 5)
    contacts, tickets = run.counts["contacts"], run.counts["tickets"]
    assert (contacts["429s"], contacts["retries"]) == (2, 2)
    assert (tickets["429s"], tickets["retries"]) == (0, 0)
    assert contacts["api_calls"] >= contacts["pages"] + 2  # the throttled attempts are calls too
    assert sum(run.counts[s]["429s"] for s in ("contacts", "conversations", "tickets")) == 2
    assert run.counts["_api"]["intercom_429s"] == 2
    assert searches >= sum(run.counts[s]["pages"] for s in ("contacts", "conversations", "tickets"))
    assert any(key.startswith("events:") for key in run.counts["conversations"])
    store.close()
