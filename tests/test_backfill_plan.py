"""`etl backfill-plan`: the slices of a backfill window for a Kubernetes Indexed Job, and the pure planner."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from etl.cli import cli
from etl.windows import add_months, plan_slices

JOBS = """
database_url: sqlite:///{tmp}/state.db
jobs:
  shop:
    intercom: {{base_url: "http://127.0.0.1:1", token_env: IC_TOKEN}}
    klaviyo: {{base_url: "http://127.0.0.1:1", api_key_env: KL_KEY}}
    start_date: 2026-01-01
  late:
    intercom: {{base_url: "http://127.0.0.1:1", token_env: IC_TOKEN}}
    klaviyo: {{base_url: "http://127.0.0.1:1", api_key_env: KL_KEY}}
    start_date: 2026-03-01
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(JOBS.format(tmp=tmp_path))
    return path


def plan(config: Path, *args: str):
    return CliRunner().invoke(cli, ["--log-format", "text", "--config", str(config), "backfill-plan", *args])


moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=0))


def assert_tiles(slices: tuple[tuple[datetime, datetime], ...], since: datetime, until: datetime) -> None:
    assert slices[0][0] == since and slices[-1][1] == until
    assert all(lo < hi for lo, hi in slices)  # no empty slice
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))  # no gap, no overlap


@given(moments, st.integers(1, 10**8), st.integers(1, 500))
def test_equal_slices_tile_the_window_on_whole_seconds(since: datetime, seconds: int, n: int) -> None:
    """--slices N: exactly N contiguous non-empty slices on whole seconds (what the printed flags can say)."""
    until = since + timedelta(seconds=seconds)
    if seconds < n:
        with pytest.raises(ValueError, match=f"cannot cut a window of {seconds} s into {n} slices"):
            plan_slices(since, until, slices=n)
        return
    slices = plan_slices(since, until, slices=n)
    assert len(slices) == n
    assert_tiles(slices, since, until)
    assert all(lo.microsecond == 0 for lo, _ in slices)
    lengths = [(hi - lo).total_seconds() for lo, hi in slices]
    assert max(lengths) - min(lengths) <= 1


@given(moments, st.integers(1, 4000), st.integers(1, 13), st.booleans())
def test_monthly_and_fixed_steps_tile_the_window(
    since: datetime, days: int, months: int, fixed: bool
) -> None:
    """--every 1mo / 7d: contiguous slices; every boundary but the last is a whole step from since."""
    until = since + timedelta(days=days, hours=3)
    if fixed:
        slices = plan_slices(since, until, step=timedelta(days=months))
        assert all(lo == since + k * timedelta(days=months) for k, (lo, _) in enumerate(slices))
    else:
        slices = plan_slices(since, until, months=months)
        assert all(lo == add_months(since, k * months) for k, (lo, _) in enumerate(slices))
    assert_tiles(slices, since, until)


def test_months_keep_the_day_or_take_the_months_last_one() -> None:
    """Jan 31 + 1 month is Feb 28 (29 in a leap year), and the next slice is back on Mar 31, not Mar 28."""
    since = datetime(2028, 1, 31, 6, tzinfo=UTC)
    starts = [lo for lo, _ in plan_slices(since, datetime(2028, 5, 1, tzinfo=UTC), months=1)]
    assert [s.date().isoformat() for s in starts] == ["2028-01-31", "2028-02-29", "2028-03-31", "2028-04-30"]
    assert add_months(datetime(2026, 11, 15, tzinfo=UTC), 14) == datetime(2028, 1, 15, tzinfo=UTC)


def test_plan_prints_one_line_of_flags_per_slice(config: Path) -> None:
    """Each line is the --since/--until of one slice, ready to append to `etl run`; --index picks one."""
    result = plan(config, "shop", "--since", "2026-01-01", "--until", "2026-04-15", "--every", "1mo")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "--since 2026-01-01T00:00:00Z --until 2026-02-01T00:00:00Z",
        "--since 2026-02-01T00:00:00Z --until 2026-03-01T00:00:00Z",
        "--since 2026-03-01T00:00:00Z --until 2026-04-01T00:00:00Z",
        "--since 2026-04-01T00:00:00Z --until 2026-04-15T00:00:00Z",
    ]
    one = plan(
        config, "shop", "--since", "2026-01-01", "--until", "2026-04-15", "--every", "1mo", "--index", "3"
    )
    assert one.stdout == "--since 2026-04-01T00:00:00Z --until 2026-04-15T00:00:00Z\n"


def test_plan_as_json_lines(config: Path) -> None:
    """--json: one object per slice with its index; --slices cuts equal parts."""
    result = plan(
        config, "--since", "2026-03-01", "--until", "2026-03-02T00:00:00+02:00", "--slices", "2", "--json"
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"index": 0, "since": "2026-03-01T00:00:00Z", "until": "2026-03-01T11:00:00Z"},
        {"index": 1, "since": "2026-03-01T11:00:00Z", "until": "2026-03-01T22:00:00Z"},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["late", "--since", "2026-01-01", "--until", "2026-04-01", "--every", "1mo"],
            "slice 0 of 3 (and 1 more slices): job late: the window [2026-01-01T00:00:00Z, "
            "2026-02-01T00:00:00Z) ends before its start_date 2026-03-01T00:00:00Z, and no event older than "
            "start_date is ever emitted; `etl run` would refuse it: cut another window",
        ),
        (
            ["shop", "--since", "2025-01-01", "--until", "2025-06-01", "--slices", "3"],
            "job shop: the window [2025-01-01T00:00:00Z, 2025-06-01T00:00:00Z) ends before its start_date "
            "2026-01-01T00:00:00Z, and no event older than start_date is ever emitted",
        ),
        (
            ["--since", "2099-01-01", "--until", "2099-02-01", "--slices", "3"],
            "--since 2099-01-01T00:00:00Z is in the future: nothing has been updated in that window yet",
        ),
        (
            ["shop", "--since", "2026-01-01", "--until", "2099-01-01", "--every", "20000d"],
            "slice 1 of 2: --since 2080-10-04T00:00:00Z is in the future: nothing has been updated in that window "
            "yet; `etl run` would refuse it: cut another window",
        ),
        (
            ["--since", "2026-01-01", "--until", "2026-02-01"],
            "give one of --slices N or --every DURATION (1mo, 7d, ...)",
        ),
        (
            ["--since", "2026-01-01", "--until", "2026-02-01", "--every", "monthly"],
            "--every: expected a duration like 15m, got 'monthly' (or months: 1mo)",
        ),
        (
            ["--since", "2026-02-01", "--until", "2026-01-01", "--slices", "2"],
            "--since must be earlier than --until",
        ),
        (
            ["--since", "2026-01-01", "--until", "2026-01-01T00:00:03", "--slices", "4"],
            "--slices/--every: cannot cut a window of 3 s into 4 slices of whole seconds",
        ),
        (
            ["shop", "--since", "2026-01-01", "--until", "2026-03-01", "--every", "1mo", "--index", "2"],
            "--index 2: the plan has 2 slices (0-1)",
        ),
        (["nope", "--since", "2026-01-01", "--until", "2026-03-01", "--slices", "2"], "unknown job"),
    ],
)
def test_plan_refuses_what_a_pod_would_fail_on(config: Path, args: list[str], message: str) -> None:
    """A window, or any slice, that `etl run` would refuse is exit 2 with one line, and nothing on stdout."""
    result = plan(config, *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("etl: error: ") and message in line
