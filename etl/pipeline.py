"""One run of one job: lock → windows → pages → transaction per page → delivery → watermark (DESIGN §1, §7)."""

from __future__ import annotations

from etl.config import JobSettings, Settings
from etl.errors import NotBuiltYet
from etl.models import RunOptions


def run_jobs(settings: Settings, names: list[str], options: RunOptions) -> int:
    """Run the named jobs (all when none) in order; returns the worst exit code."""
    settings.select(names)
    raise NotBuiltYet(
        "`etl run` is not built yet (issue 5); `etl check`, `db`, `state`, `runs`, `outbox` work"
    )


def check_online(job: JobSettings) -> None:
    """Test both credentials against the APIs."""
    raise NotBuiltYet("`etl check --online` is not built yet (issue 5)")
