"""`etl run` end to end through the real CLI against the sandboxes: exit codes, summary, logs, metrics, demo."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from etl.cli import cli
from etl.demo import DEMO_KEY_ENV, DEMO_TOKEN_ENV
from etl.models import RunOptions
from etl.runner import run_jobs
from etl.state import StateStore
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    STREAMS,
    FakePushgateway,
    dump,
    sandboxes,
    settings,
    write_config,
)

ENV = {IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
TEXT = ("--log-format", "text")  # CliRunner's stderr is no terminal: without this, JSON lines


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ENV, **(env or {})})


def json_records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def totals(counts: dict[str, Any], key: str) -> int:
    return sum(int(counts.get(stream, {}).get(key, 0)) for stream in STREAMS)


def test_run_exits_0_with_summary_json_logs_metrics_file_and_run_history(tmp_path: Path) -> None:
    """`etl run --metrics-file` exits 0: summary and JSON logs on stderr, Prometheus text, and `etl runs` shows it."""
    url = f"sqlite:///{tmp_path}/state.db"
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        metrics = tmp_path / "etl.prom"
        result = invoke("--config", str(config), "run", "--metrics-file", str(metrics))
        assert result.exit_code == 0, result.output
        assert result.stdout == ""
        records = json_records(result.stderr)
        assert len(records) == len(result.stderr.splitlines())  # JSON mode: every line is a JSON object
        created, *records = records  # the first run creates the database, and says so
        assert created["level"] == "warning" and created["database"] == f"{tmp_path}/state.db"
        read = [r for r in records if r["message"] == "stream read"]
        assert [r["stream"] for r in read] == list(STREAMS)
        assert {r["job"] for r in records} == {"shop"} and all(isinstance(r["run_id"], int) for r in read)
        for text in (result.output, repr(dump(url)), metrics.read_text()):
            assert IC_TOKEN not in text and KL_KEY not in text
        assert boxes.klaviyo.events
        emails = {c["email"].strip().lower() for c in boxes.workspace.contacts.values() if c.get("email")}
        assert emails and not [e for e in emails if e in result.stderr.lower()]  # no payload PII at INFO

    store = StateStore(url)
    (run,) = store.runs("shop", 5)
    store.close()
    (summary,) = [r for r in records if r["message"] == "run summary"]
    assert summary["level"] == "info" and (summary["job"], summary["mode"]) == ("shop", "incremental")
    assert summary["counts"] == run.counts and records[-1] is summary
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    (last,) = families["etl_last_success_timestamp_seconds"].samples
    assert last.labels == {"job": "shop", "mode": "incremental"} and last.value == run.finished_at.timestamp()
    events = {s.labels["metric"]: s.value for s in families["etl_events"].samples}
    expected: dict[str, float] = {}
    for stream in STREAMS:
        for key, n in run.counts.get(stream, {}).items():
            if key.startswith("events:"):
                expected[key[7:]] = expected.get(key[7:], 0) + n
    assert events == expected and events["Created Conversation"] > 0
    assert [s.value for s in families["etl_run_failed"].samples] == [0.0]
    objects = {s.labels["stream"]: s.value for s in families["etl_objects"].samples}
    assert objects == {s: run.counts[s]["objects"] for s in STREAMS}

    listing = invoke("--config", str(config), "runs")
    assert listing.exit_code == 0, listing.output
    header, row = listing.stdout.splitlines()
    assert header.split() == [
        "id",
        "job",
        "mode",
        "started",
        "finished",
        "status",
        "objects",
        "events",
        "profiles",
        "error",
    ]
    fields = row.split()
    assert fields[:3] == [str(run.id), "shop", "incremental"] and fields[5] == "succeeded"
    counts = [totals(run.counts, k) for k in ("objects", "events", "profiles")]
    assert fields[6:] == [str(n) for n in counts] and min(counts) > 0


def test_dry_run_prints_ndjson_to_output_or_stdout_and_creates_no_database(tmp_path: Path) -> None:
    """`etl run --dry-run --output FILE` fills FILE, without --output the same lines go to stdout; no database file."""
    database = tmp_path / "state.db"
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{database}", boxes.job())
        output = tmp_path / "audit.ndjson"
        to_file = invoke(
            "--log-format", "text", "--config", str(config), "run", "--dry-run", "--output", str(output)
        )
        assert to_file.exit_code == 0, to_file.output
        assert to_file.stdout == "" and "\njob shop (dry-run)\n" in to_file.stderr
        to_stdout = invoke("--config", str(config), "run", "--dry-run")
        assert to_stdout.exit_code == 0, to_stdout.output
        assert boxes.klaviyo.requests == []
    lines = output.read_text().splitlines()
    assert lines and to_stdout.stdout.splitlines() == lines
    assert all(sorted(json.loads(line)) == ["job", "kind", "payload", "unique_id"] for line in lines)
    assert not database.exists()
    for text in (output.read_text(), to_file.output, to_stdout.output):
        assert IC_TOKEN not in text and KL_KEY not in text


def test_wrong_intercom_token_exits_3_with_one_line_naming_the_variable(tmp_path: Path) -> None:
    """An Intercom 401 is exit 3 and one line naming the env var; neither token nor traceback is printed."""
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job())
        assert invoke("--config", str(config), "db", "upgrade").exit_code == 0  # no "creating" warning
        result = invoke(
            "--log-format", "text", "--config", str(config), "-q", "run", env={IC_ENV: "wrong-token-9876"}
        )
    assert result.exit_code == 3
    assert result.stderr == (
        f"etl: error: job shop: Intercom rejected the credentials (401): set {IC_ENV} to a valid token "
        "(Access Token Invalid)\n"
    )
    assert result.stdout == "" and "wrong-token-9876" not in result.output and IC_TOKEN not in result.output


def test_one_failing_job_does_not_stop_the_others_and_the_exit_code_is_the_worst(tmp_path: Path) -> None:
    """Three jobs: Intercom refuses the 1st (3), the 2nd succeeds, Klaviyo refuses the 3rd (4): exit 3, all ran.

    With `--log-format json` the errors and the summary are JSON lines like every other line on stderr."""
    url = f"sqlite:///{tmp_path}/state.db"
    with sandboxes() as boxes:
        first, second, third = (boxes.job(name) for name in ("first", "second", "third"))
        first = dataclasses.replace(first, intercom=dataclasses.replace(first.intercom, token_env="BAD_IC"))
        third = dataclasses.replace(third, klaviyo=dataclasses.replace(third.klaviyo, api_key_env="BAD_KL"))
        config = write_config(tmp_path / "jobs.yaml", url, first, second, third)
        metrics = tmp_path / "etl.prom"
        result = invoke(
            "--log-format",
            "json",
            "--config",
            str(config),
            "run",
            "--metrics-file",
            str(metrics),
            env={"BAD_IC": "nope-1234", "BAD_KL": "pk_nope_5678"},
        )
        assert result.exit_code == 3
        records = [json.loads(line) for line in result.stderr.splitlines()]  # each line is one JSON object
        errors = [
            {k: r[k] for k in ("logger", "job", "exit_code", "message")}
            for r in records
            if r["level"] == "error"
        ]
        assert errors == [
            {
                "logger": "etl",
                "job": "first",
                "exit_code": 3,
                "message": "Intercom rejected the credentials (401): set BAD_IC to a valid token (Access Token Invalid)",
            },
            {
                "logger": "etl",
                "job": "third",
                "exit_code": 4,
                "message": "Klaviyo rejected the credentials (401): set BAD_KL to a valid private API key "
                "(Incorrect authentication credentials.)",
            },
        ]
        assert [r["job"] for r in records if r["message"] == "run summary"] == ["second"]
        assert "Traceback" not in result.output
        assert "nope-1234" not in result.output and "pk_nope_5678" not in result.output
    store = StateStore(url)
    statuses = {r.job: r.status for r in store.runs(None, 10)}
    store.close()
    assert statuses == {"first": "failed", "second": "succeeded", "third": "failed"}
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    failed = {s.labels["job"]: s.value for s in families["etl_run_failed"].samples}
    assert failed == {"first": 1.0, "second": 0.0, "third": 1.0}
    assert [s.labels["job"] for s in families["etl_last_success_timestamp_seconds"].samples] == ["second"]


def test_quiet_or_a_log_level_above_info_hides_the_summary_and_log_level_wins_over_v_and_q(
    tmp_path: Path,
) -> None:
    """Cron mails whatever is printed: a successful run with -q, -qq or --log-level warning|error prints
    nothing; --log-level info overrides -q and brings back the summary and the info lines."""
    with sandboxes() as boxes:
        config = str(write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job()))
        assert invoke("--config", config, "db", "upgrade").exit_code == 0  # no "creating" warning
        quiet = [
            invoke(*flags, "--config", config, "run")
            for flags in (("-q",), ("-qq",), ("--log-level", "warning"), ("--log-level", "error", "-v"))
        ]
        text = invoke(*TEXT, "-q", "--log-level", "info", "--config", config, "run")
        json_mode = invoke("--log-format", "json", "--config", config, "-q", "run")
    assert [(r.exit_code, r.stderr) for r in quiet] == [(0, "")] * 4
    assert (
        text.exit_code == 0
        and "\njob shop (incremental)\n" in text.stderr
        and " info    run started" in text.stderr
    )
    assert (json_mode.exit_code, json_mode.stderr) == (0, "")


@pytest.mark.parametrize(
    "args",
    [["nope"], ["runs", "--limit", "0"], ["run", "--since", "yesterday-ish"]],
)
def test_usage_errors_under_log_format_json_are_json_lines(args: list[str], tmp_path: Path) -> None:
    """The container's `etl --log-format json …`: an unknown command, a bad value or flag is one JSON line."""
    config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db")
    proc = subprocess.run(
        [sys.executable, "-m", "etl", "--log-format", "json", "--config", str(config), *args],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    record = json.loads(line)
    assert (record["level"], record["exit_code"]) == ("error", 2) and record["message"]
    assert not record["message"].startswith("etl: error")


def test_an_intercom_nobody_listens_at_is_a_warning_per_retry_then_one_line_naming_base_url(
    tmp_path: Path,
) -> None:
    """A wrong port in intercom.base_url: the run is not silent while it retries (its shortest budget, 10 s), and
    ends with exit 3 and the setting to check; the token is in no line."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "jobs.yaml"
    config.write_text(
        f"database_url: sqlite:///{tmp_path}/state.db\njobs:\n  shop:\n"
        f"    intercom: {{base_url: 'http://127.0.0.1:{port}', token_env: {IC_ENV}, retry_budget: 10s}}\n"
        f"    klaviyo: {{base_url: 'http://127.0.0.1:{port}', api_key_env: {KL_ENV}}}\n"
        "    start_date: 2026-01-01\n"
    )
    result = invoke(*TEXT, "--config", str(config), "run")
    assert result.exit_code == 3
    *retries, error = result.stderr.splitlines()
    assert error == (
        f"etl: error: job shop: Intercom at 127.0.0.1:{port} refused the connection: "
        "check intercom.base_url in jobs.yaml"
    )
    warned = [line for line in retries if " warning Intercom request failed; retrying  " in line]
    assert len(warned) >= 4  # 0.5 + 1 + 2 + 4 s of backoff fit in 10 s before the last try
    assert all(
        f"host=127.0.0.1:{port} request=POST /contacts/search reason=connection refused wait_seconds=" in line
        for line in warned
    )
    assert IC_TOKEN not in result.output and KL_KEY not in result.output


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so the run shows progress bars."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_on_a_tty_are_stopped_before_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a TTY each stream gets a bar; the bars are stopped when the job ends, so nothing keeps redrawing."""
    monkeypatch.setenv(IC_ENV, IC_TOKEN)
    stdout = sys.stdout
    terminal = Terminal()
    with sandboxes() as boxes:
        code = run_jobs(
            settings(f"sqlite:///{tmp_path}/state.db", boxes.job()),
            [],
            RunOptions(dry_run=True, output=str(tmp_path / "out.ndjson")),
            stderr=terminal,
        )
    assert code == 0
    assert sys.stdout is stdout  # rich's redirection of stdout is undone
    for thread in [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]:
        thread.join(timeout=5)  # rich signals its redraw thread without joining it: a stopped one ends now
        assert not thread.is_alive(), "a progress bar was left redrawing"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert "\njob shop (dry-run)\n" in text  # the summary starts on its own line, after the bars
    final = text.split("\njob shop (dry-run)\n")[0].splitlines()[-3:]
    assert [line.split()[0] for line in final] == list(STREAMS)
    assert all(re.search(r" (\d+)/\1 ", line) for line in final)  # each bar shows done = total


def test_demo_prints_what_was_sent_and_where_to_look(tmp_path: Path) -> None:
    """`etl demo` runs three times against the sandbox and prints events per metric and where to look.

    How long it takes is measured by `make bench`, not asserted here.
    """
    result = invoke("demo", "--workdir", str(tmp_path), env={DEMO_TOKEN_ENV: None, DEMO_KEY_ENV: None})
    assert result.exit_code == 0, result.output
    out = result.stdout
    holds = out.split("Klaviyo (sandbox) now holds:\n")[1].split("\n\nWhere to look")[0].splitlines()
    counted = [re.fullmatch(r"\s+(\d+)  (.+)", line) for line in holds]
    metrics = {m[2]: int(m[1]) for m in counted if m and m[2] != "profiles"}
    assert {"Created Conversation", "Created Ticket", "Replied to Conversation"} <= set(metrics)
    assert any(m and m[2] == "profiles" and int(m[1]) > 0 for m in counted)
    after = re.search(r"events after run 1: (\d+); after run 2: (\d+); after run 3: (\d+)", out)
    assert after and int(after[1]) < int(after[2]) == int(after[3])  # run 3 saw no change and sent nothing
    assert sum(metrics.values()) == int(after[3])
    config = tmp_path / "jobs.yaml"
    assert f"Where to look (the state database stays):\n  etl --config {config} runs\n" in out
    runs = invoke("--config", str(config), "runs", "--json")
    assert [json.loads(line)["status"] for line in runs.stdout.splitlines()] == ["succeeded"] * 3


def test_unwritable_output_or_metrics_file_is_a_usage_error_before_any_work(tmp_path: Path) -> None:
    """`--output` or `--metrics-file` in a missing folder: exit 2 and one line naming the flag, not "a bug",
    and nothing run: no request to Intercom, no state database created, no run recorded as succeeded."""
    missing = tmp_path / "missing"
    database = tmp_path / "state.db"
    with sandboxes() as boxes:
        config = str(write_config(tmp_path / "jobs.yaml", f"sqlite:///{database}", boxes.job()))
        dry = invoke(
            *TEXT, "--config", config, "-q", "run", "--dry-run", "--output", str(missing / "out.ndjson")
        )
        assert dry.exit_code == 2
        assert dry.stderr == (
            f"etl: error: --output: cannot write {missing / 'out.ndjson'}: No such file or directory\n"
        )
        assert boxes.intercom.server.requests == []  # refused before any work
        metrics = invoke(*TEXT, "--config", config, "run", "--metrics-file", str(missing / "etl.prom"))
        assert boxes.intercom.server.requests == [] and boxes.klaviyo.requests == []
    assert (metrics.exit_code, metrics.stdout) == (2, "")
    assert metrics.stderr == (
        f"etl: error: --metrics-file: cannot write {missing / 'etl.prom'}: No such file or directory\n"
    )
    assert not database.exists()


def test_a_backfill_adds_its_own_last_success_beside_the_schedules(tmp_path: Path) -> None:
    """After an incremental run and a backfill, both share the metrics file, each with its own mode label."""
    url = f"sqlite:///{tmp_path}/state.db"
    metrics = tmp_path / "etl.prom"
    with sandboxes() as boxes:
        config = str(write_config(tmp_path / "jobs.yaml", url, boxes.job()))
        assert invoke("--config", config, "run", "--metrics-file", str(metrics)).exit_code == 0
        backfill = invoke(
            "--config",
            config,
            "run",
            "--since",
            "2026-01-01",
            "--until",
            "2026-02-01",
            "--metrics-file",
            str(metrics),
        )
        assert backfill.exit_code == 0, backfill.output
    store = StateStore(url)
    ends = {r.mode: r.finished_at.timestamp() for r in store.runs("shop", 5)}
    store.close()
    families = {f.name: f for f in text_string_to_metric_families(metrics.read_text())}
    last = {s.labels["mode"]: s.value for s in families["etl_last_success_timestamp_seconds"].samples}
    assert last == ends and set(last) == {"incremental", "backfill"}
    durations = families["etl_run_duration_seconds"].samples
    assert sorted(s.labels["mode"] for s in durations) == ["backfill", "incremental"]


def test_run_pushes_its_metrics_to_a_pushgateway_and_a_refused_push_exits_2(tmp_path: Path) -> None:
    """`--pushgateway URL`: one PUT of the run's series to the job's group; a Pushgateway answering 400 leaves
    the run succeeded in the history, prints one line after the summary and exits 2."""
    url = f"sqlite:///{tmp_path}/state.db"
    with sandboxes() as boxes:
        config = str(write_config(tmp_path / "jobs.yaml", url, boxes.job()))
        with FakePushgateway() as gateway:
            pushed = invoke("--config", config, "run", "--pushgateway", gateway.url)
        with FakePushgateway(400, b"inconsistent\n") as refusing:
            refused = invoke(*TEXT, "--config", config, "run", "--pushgateway", refusing.url)
    assert pushed.exit_code == 0, pushed.output
    ((method, path, body),) = gateway.requests
    assert (method, path) == ("PUT", "/metrics/job/shop/mode/incremental")
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert [s.value for s in families["etl_run_failed"].samples] == [0.0]
    assert {s.labels["stream"] for s in families["etl_objects"].samples} == set(STREAMS)
    assert refused.exit_code == 2
    host = refusing.url.removeprefix("http://")
    assert refused.stderr.splitlines()[-1] == (
        f"etl: error: --pushgateway: could not push the metrics of job shop to {host} (HTTP 400: inconsistent): "
        "check the URL and that the Pushgateway is up"
    )
    store = StateStore(url)
    assert [r.status for r in store.runs("shop", 5)] == ["succeeded", "succeeded"]
    store.close()


def test_a_pushgateway_url_that_is_no_url_is_refused_before_any_work(tmp_path: Path) -> None:
    """A malformed --pushgateway is exit 2 and one line, with nothing read from Intercom."""
    with sandboxes() as boxes:
        config = str(write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db", boxes.job()))
        result = invoke(*TEXT, "--config", config, "run", "--pushgateway", "ftp://pushgateway")
        assert boxes.intercom.server.requests == []
    assert (result.exit_code, result.stderr) == (
        2,
        "etl: error: --pushgateway: expected a URL like http://pushgateway:9091, got 'ftp://pushgateway'\n",
    )


def test_run_from_elsewhere_uses_the_database_beside_jobs_yaml_and_says_when_it_creates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another directory (cron: $HOME), `sqlite:///state.db` is the file beside jobs.yaml; the run that
    creates it says so in one warning with the absolute path, the next run does not; `etl check` shows it."""
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with sandboxes() as boxes:
        config = write_config(conf / "jobs.yaml", "sqlite:///state.db", boxes.job())
        first = invoke("--config", str(config), "run")
        second = invoke("--config", str(config), "run")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert (conf / "state.db").exists() and list(elsewhere.iterdir()) == []
    warnings = [r for r in json_records(first.stderr) if r["level"] == "warning"]
    assert [{k: v for k, v in r.items() if k != "ts"} for r in warnings] == [
        {
            "level": "warning",
            "logger": "etl.runner",
            "message": "creating a new state database: none was there, so every job starts from its start_date "
            "(if yours lives elsewhere, point database_url at it)",
            "database": str(conf / "state.db"),
        }
    ]
    assert [r for r in json_records(second.stderr) if r["level"] == "warning"] == []
    checked = invoke("--config", str(config), "check")
    assert checked.stdout.splitlines()[-1].startswith(f"database: sqlite:///{conf}/state.db (revision ")
