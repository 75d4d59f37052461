"""`etl check --online` tests both credentials against the (sandbox) APIs and lists the native Intercom
metrics whose flows must be re-pointed at the API metrics etl sends to (docs/design.md §4)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner, Result

from etl.cli import cli
from etl.config import IntercomSettings, JobSettings, KlaviyoSettings
from etl.klaviyo import Flow, Metric
from etl.models import RunOptions
from etl.runner import native_metric_lines
from etl.sandbox.klaviyo_metrics import API_INTEGRATION
from etl.sandbox.klaviyo_server import ALL_SCOPES
from etl.state import StateStore
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    START_DATE,
    STREAMS,
    execute,
    sandboxes,
    write_config,
)


def check(config: Path, **env: str) -> Result:
    return CliRunner().invoke(
        cli,
        ["--log-format", "text", "--config", str(config), "check", "--online"],
        env={IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": "", **env},
    )


def test_check_online_accepts_good_credentials_and_names_a_bad_one(tmp_path: Path) -> None:
    """Good tokens pass; a wrong Intercom token is exit 3 and a wrong Klaviyo key exit 4, each naming its variable."""
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job())
        good = check(config)
        assert good.exit_code == 0, good.output
        assert "shop: ok" in good.stdout and "credentials accepted" in good.stdout
        bad_intercom = check(config, **{IC_ENV: "wrong-intercom-token"})
        assert bad_intercom.exit_code == 3
        assert bad_intercom.stderr.startswith(
            f"etl: error: Intercom rejected the credentials (401): set {IC_ENV}"
        )
        bad_klaviyo = check(config, **{KL_ENV: "pk_wrong_key"})
        assert bad_klaviyo.exit_code == 4
        assert bad_klaviyo.stderr.startswith(
            f"etl: error: Klaviyo rejected the credentials (401): set {KL_ENV}"
        )
        for result in (good, bad_intercom, bad_klaviyo):
            assert (
                "wrong" not in result.output and IC_TOKEN not in result.output and KL_KEY not in result.output
            )


def test_check_online_lists_native_intercom_flows_and_the_api_metric_to_re_point_them_to(
    tmp_path: Path,
) -> None:
    """Native "Created Conversation" and "Resolved Ticket" metrics with a flow each: before the first run their
    API metrics are "not created yet: run once first"; after it, each flow names the API metric to re-point
    its trigger to. The whole output is pinned; every request is one the spec allows (the sandbox checks)."""
    with sandboxes() as boxes:
        url = f"sqlite:///{tmp_path}/state.db"
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        created = boxes.klaviyo.metrics.seed("Created Conversation")
        resolved = boxes.klaviyo.metrics.seed("Resolved Ticket")
        follow_up = boxes.klaviyo.metrics.seed_flow(created.id, "Conversation follow-up")
        survey = boxes.klaviyo.metrics.seed_flow(resolved.id, "CSAT survey", status="draft")
        head = (
            f"shop: ok (contacts, conversations, tickets; Intercom {boxes.intercom.url}, "
            f"Klaviyo {boxes.klaviyo.url}; credentials accepted)\n"
            "shop: native Intercom metrics in Klaviyo; flows they trigger miss the events etl sends:\n"
        )

        before = check(config)
        assert before.exit_code == 0, before.output
        assert before.stdout == head + (
            f"  Created Conversation [{created.id}] → API metric Created Conversation: not created yet: "
            "run once first\n"
            f'    flow "Conversation follow-up" [{follow_up.id}, live]: re-point its trigger once that exists\n'
            f"  Resolved Ticket [{resolved.id}] → API metric Resolved Ticket: not created yet: run once first\n"
            f'    flow "CSAT survey" [{survey.id}, draft]: re-point its trigger once that exists\n'
            f"database: {url} (not created yet: `etl run` creates it (or `etl db upgrade`))\n"
        )

        store = StateStore(url)
        try:
            store.ensure_schema()
            execute(boxes, store, boxes.job(), RunOptions())
            revision = store.head_revision()
        finally:
            store.close()
        api = {m.name: m.id for m in boxes.klaviyo.metrics.metrics if m.integration == API_INTEGRATION}
        after = check(config)
        assert after.exit_code == 0, after.output
        assert after.stdout == head + (
            f"  Created Conversation [{created.id}] → API metric Created Conversation "
            f"[{api['Created Conversation']}]\n"
            f'    flow "Conversation follow-up" [{follow_up.id}, live]: re-point its trigger to '
            f"{api['Created Conversation']}\n"
            f"  Resolved Ticket [{resolved.id}] → API metric Resolved Ticket [{api['Resolved Ticket']}]\n"
            f'    flow "CSAT survey" [{survey.id}, draft]: re-point its trigger to {api["Resolved Ticket"]}\n'
            f"database: {url} (revision {revision}, up to date)\n"
        )
        listings = [(r.path, r.status) for r in boxes.klaviyo.received if r.path.startswith("/api/metrics")]
        assert [path for path, _ in listings] == [
            "/api/metrics?filter=equals%28integration.name%2C%22Intercom%22%29&include=flow-triggers",
            "/api/metrics?filter=equals%28integration.category%2C%22API%22%29",
        ] * 2
        assert {status for _, status in listings} == {200}


def test_check_online_without_metrics_read_or_native_metrics_says_so(tmp_path: Path) -> None:
    """No native Intercom metric: one line says so; a key without metrics:read still passes the credential
    check (the job does not need that scope) and the line says what was not checked."""
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job())
        none = check(config)
        assert none.exit_code == 0, none.output
        assert none.stdout.splitlines()[1] == "shop: no native Intercom metrics in Klaviyo"
        boxes.klaviyo.api_keys[KL_KEY] = ALL_SCOPES - {"metrics:read"}
        refused = check(config)
        assert refused.exit_code == 0, refused.output
        assert refused.stdout.splitlines()[1] == (
            "shop: native Intercom metrics not checked: the Klaviyo API key lacks the metrics:read scope"
        )


def test_native_metric_lines_follow_metric_names_and_name_what_etl_does_not_send() -> None:
    """A renamed metric is looked up under the name etl sends; a native metric etl has no rule for says so."""
    job = JobSettings(
        "shop", IntercomSettings(), KlaviyoSettings(), STREAMS, START_DATE,
        metric_names={"Created Conversation": "Conversation started"},
    )  # fmt: skip
    flow = Flow("f1", "Welcome", "manual")
    native = [
        Metric("n2", "Viewed Help Article", "Intercom", "Customer Support", (flow,)),
        Metric("n1", "Created Conversation", "Intercom", "Customer Support", (flow,)),
    ]
    api = [
        Metric("a1", "Conversation started", "API", "API"),
        Metric("a2", "Created Conversation", "API", "API"),
    ]
    assert native_metric_lines(job, native, api) == [
        "shop: native Intercom metrics in Klaviyo; flows they trigger miss the events etl sends:",
        "  Created Conversation [n1] → API metric Conversation started [a1]",
        '    flow "Welcome" [f1, manual]: re-point its trigger to a1',
        "  Viewed Help Article [n2]: etl sends no such metric",
        '    flow "Welcome" [f1, manual]: etl sends nothing to re-point it to',
    ]
