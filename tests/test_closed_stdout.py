"""A closed stdout (`etl run --dry-run | head`, the README's quick start) ends any command quietly, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.run_fixtures import IC_ENV, IC_TOKEN, KL_ENV, KL_KEY, sandboxes, write_config


def closed_stdout(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `etl ARGS` with a stdout pipe whose reading end is closed before the command writes anything,
    as `| head` leaves it once it has read its lines: every write to stdout fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
        return subprocess.run(
            [sys.executable, "-m", "etl", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            timeout=60,
        )
    finally:
        os.close(write_end)


def assert_quiet(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr
    for noise in ("etl: error", "Traceback", "BrokenPipeError", "Exception ignored"):
        assert noise not in proc.stderr


def test_dry_run_into_a_closed_pipe_ends_quietly_with_exit_0(tmp_path: Path) -> None:
    """`etl run --dry-run | head`: no "unexpected error … this is a bug", no traceback, exit 0."""
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job())
        proc = closed_stdout("--config", str(config), "run", "--dry-run", cwd=tmp_path)
    assert_quiet(proc)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["runs"]])
def test_any_command_into_a_closed_pipe_ends_quietly_with_exit_0(tmp_path: Path, args: list[str]) -> None:
    """The top-level help (written while click parses), a command's help and a command's table alike."""
    config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db")
    config.write_text(
        config.read_text()
        + "  shop:\n    intercom: {token_env: IC}\n    klaviyo: {api_key_env: KL}\n    start_date: 2026-01-01\n"
    )
    assert_quiet(closed_stdout("--config", str(config), *args, cwd=tmp_path))
