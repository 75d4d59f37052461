"""docs/design.md §7 on PostgreSQL: the real CLI SIGKILLed at many points of a run — while paging, inside a page's
transaction between its outbox rows and its snapshots, during a profile import, between Klaviyo's acceptance
and marking sent, during a backfill slice — then run again: the sandbox Klaviyo holds exactly what an
uninterrupted run delivers into a Klaviyo of its own, nothing lost, nothing doubled.

Kill points are chosen by the sandbox's request counter (`SandboxServer.on_request`), so every run dies at the
same place; `make soak` sweeps many more of them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.crash_fixtures import KillPoint, Outcome, crash_and_recover, reference

pytestmark = pytest.mark.postgres

CONTACT = r"/contacts/[0-9a-f]+"
PROFILE_JOB = r"/api/profile-bulk-import-jobs/\w+"
# the run of the small sandbox workspace (10 a page): 5 contacts pages, 6 conversations pages (contact
# searches and GET /contacts/{id} inside their transactions), 2 tickets pages; then one profile import job
# and one events request
POINTS = [
    KillPoint("contacts page 2 asked", "intercom", "received", "POST", "/contacts/search", 2),
    KillPoint("contacts page 3, outbox written, snapshots not", "intercom", "transaction", "POST", "/contacts/search", 3),
    KillPoint("conversations page 3 answered", "intercom", "answering", "POST", "/conversations/search", 3),
    KillPoint("conversations page 4, outbox written, snapshots not", "intercom", "transaction", "POST", "/conversations/search", 4),
    KillPoint("a contact fetched inside a page transaction", "intercom", "received", "GET", CONTACT, 2),
    KillPoint("profile import not yet accepted", "klaviyo", "received", "POST", "/api/profile-bulk-import-jobs", 1),
    KillPoint("profile import complete, not marked sent", "klaviyo", "answering", "GET", PROFILE_JOB, 1),
    KillPoint("events not yet accepted", "klaviyo", "received", "POST", "/api/event-bulk-create-jobs", 1),
    KillPoint("events accepted, not marked sent", "klaviyo", "answering", "POST", "/api/event-bulk-create-jobs", 1),
    KillPoint("backfill conversations page 2 asked", "intercom", "received", "POST", "/conversations/search", 2, backfill=True),
    KillPoint("backfill contacts page 1, outbox written, snapshots not", "intercom", "transaction", "POST", "/contacts/search", 1, backfill=True),
    KillPoint("backfill events accepted, not marked sent", "klaviyo", "answering", "POST", "/api/event-bulk-create-jobs", 1, backfill=True),
]  # fmt: skip
WORKERS = 4  # crashes run side by side: most of a run's wall time is process start-up and import-job polls


def soak_points() -> list[KillPoint]:
    """Every search page, in each of its three moments, of an incremental run and a backfill; every contact
    fetched inside a page; every Klaviyo request at both moments."""
    points = []
    for backfill, pages in (
        (False, {"contacts": 5, "conversations": 6, "tickets": 2}),
        (True, {"contacts": 2, "conversations": 3, "tickets": 1}),
    ):
        tag = "backfill " if backfill else ""
        for stream, count in pages.items():
            for nth in range(1, count + 1):
                for stage in ("received", "answering", "transaction"):
                    path = f"/{stream}/search"
                    points.append(
                        KillPoint(
                            f"{tag}{stream} page {nth} {stage}",
                            "intercom",
                            stage,
                            "POST",
                            path,
                            nth,
                            backfill,
                        )
                    )
    for nth in range(1, 5):
        points.append(KillPoint(f"contact {nth} fetched", "intercom", "received", "GET", CONTACT, nth))
    for stage in ("received", "answering"):
        for method, path in (
            ("POST", "/api/profile-bulk-import-jobs"),
            ("GET", PROFILE_JOB),
            ("POST", "/api/event-bulk-create-jobs"),
        ):
            points.append(KillPoint(f"{method} {path} {stage}", "klaviyo", stage, method, path, 1))
    return points  # fmt: skip


def sweep(points: list[KillPoint], admin_url: str, workdir: Path) -> tuple[int, int]:
    """Every point crashed and recovered; returns (lost, doubled) over all of them, and asserts both are 0."""
    with ThreadPoolExecutor(WORKERS) as pool:
        references = {
            backfill: pool.submit(reference, admin_url, workdir, backfill) for backfill in (False, True)
        }
        outcomes: list[Outcome] = list(pool.map(lambda p: crash_and_recover(p, admin_url, workdir), points))
        expected = {backfill: future.result() for backfill, future in references.items()}
    lost = doubled = 0
    problems = []
    for outcome in outcomes:
        events, profiles = expected[outcome.point.backfill]
        missing, extra = events - outcome.events, outcome.events - events
        twice = outcome.stored_events - len(outcome.events)
        lost += len(missing)
        doubled += len(extra) + twice
        if missing or extra or twice or outcome.profiles != profiles or outcome.pending:
            problems.append(
                f"{outcome.point.name}: {len(missing)} lost, {len(extra)} extra, {twice} twice, "
                f"{outcome.pending} pending, profiles {'differ' if outcome.profiles != profiles else 'same'}"
            )
    held = sum(len(o.events) for o in outcomes)
    expected_events = sum(len(expected[o.point.backfill][0]) for o in outcomes)
    print(
        f"kill sweep: {len(points)} kill points, {expected_events} events expected, {held} held, "
        f"{lost} lost, {doubled} doubled"
    )
    assert not problems, problems
    return lost, doubled


def test_sigkill_at_any_point_then_a_rerun_delivers_exactly_the_uninterrupted_result(
    pg_admin_url: str, tmp_path: Path
) -> None:
    """Each kill point: a fresh PostgreSQL database and sandbox, the CLI killed there (exit -9), the lease left
    behind expired as its TTL would, one more run (exit 0); Klaviyo then holds the same events and profiles as
    a reference run's Klaviyo, none twice, and the outbox has nothing pending."""
    assert sweep(POINTS, pg_admin_url, tmp_path) == (0, 0)


@pytest.mark.soak
def test_soak_sigkill_at_every_page_and_request(pg_admin_url: str, tmp_path: Path) -> None:
    """The sweep above over every page, contact fetch and Klaviyo request (`make soak`; minutes)."""
    assert sweep(soak_points(), pg_admin_url, tmp_path) == (0, 0)
