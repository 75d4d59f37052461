"""The Kubernetes examples in deploy/ stay true to the CLI and jobs.yaml."""

from __future__ import annotations

import itertools
import shlex
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from etl.cli import cli
from etl.config import parse_settings, parse_timestamp

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]["spec"]["containers"]


def test_configmap_holds_a_valid_jobs_yaml() -> None:
    """The ConfigMap's jobs.yaml parses with the database URL the Secret provides."""
    (config,) = [d for d in documents("configmap.yaml") if d["kind"] == "ConfigMap"]
    settings = parse_settings(
        config["data"]["jobs.yaml"], {"ETL_DATABASE_URL": "postgresql+psycopg://db/etl"}
    )
    assert list(settings.jobs) == ["intercom_to_klaviyo"]
    assert settings.database_url == "postgresql+psycopg://db/etl"


def test_cronjob_forbids_concurrency_and_runs_the_configured_job() -> None:
    """The CronJob never overlaps runs and names a job that the ConfigMap defines."""
    (cron,) = documents("cronjob.yaml")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = containers(cron)
    assert container["args"] == ["run", "intercom_to_klaviyo"]
    assert {"secretRef": {"name": "etl-secrets"}} in container["envFrom"]


@pytest.mark.parametrize("name", ["cronjob.yaml", "migrate-job.yaml"])
def test_container_args_are_valid_commands(name: str) -> None:
    """Each container's arguments are an etl command that exists (its --help succeeds)."""
    checked = []
    for doc in documents(name):
        for container in containers(doc):
            args = [a for a in container["args"] if not a.startswith("intercom_to")]
            result = CliRunner().invoke(cli, [*args, "--help"])
            assert result.exit_code == 0, result.output
            checked.append(args[0])
    assert checked, f"{name} has no container to check"


def test_backfill_slices_are_contiguous_months_after_start_date() -> None:
    """The Indexed Job's shell computes [since, until) slices that tile its months without gaps, none of them
    before the ConfigMap's start_date (`etl run` refuses a window that can emit nothing) or in the future."""
    import subprocess

    (job,) = documents("backfill-indexed-job.yaml")
    assert job["spec"]["completionMode"] == "Indexed"
    script = containers(job)[0]["args"][0].replace("exec etl", "echo")
    slices = []
    for index in range(job["spec"]["completions"]):
        out = subprocess.run(
            ["sh", "-c", script],
            env={"JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        words = shlex.split(out)
        slices.append((words[words.index("--since") + 1], words[words.index("--until") + 1]))
    assert slices[0][0] == "2026-01-01" and slices[-1][1] == "2026-07-01"
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
    (config,) = [d for d in documents("configmap.yaml") if d["kind"] == "ConfigMap"]
    settings = parse_settings(
        config["data"]["jobs.yaml"], {"ETL_DATABASE_URL": "postgresql+psycopg://db/etl"}
    )
    start_date = settings.jobs["intercom_to_klaviyo"].start_date
    # the Klaviyo revision the job speaks (2026-07-15) is the earliest "now" the example can meet
    for since, until in slices:
        assert (
            start_date <= parse_timestamp(since) < parse_timestamp(until) <= datetime(2026, 7, 15, tzinfo=UTC)
        )
