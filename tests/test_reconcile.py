"""`etl reconcile` (docs/design.md §7.1) over loopback HTTP on SQLite and PostgreSQL: each kind of difference
planted by hand is named (exit 7), `--repair` makes Klaviyo hold exactly the expected events again under the
job's lease, and no watermark ever moves."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from etl.config import JobSettings
from etl.errors import worst_exit_code
from etl.models import RunOptions, iso_z
from etl.reconcile import ReconcileOptions, Reconciler, reconcile_jobs
from etl.state import StateStore, outbox, snapshots
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    START_DATE,
    T0,
    Sandboxes,
    close,
    execute,
    in_window,
    klaviyo_content,
    outbox_rows,
    sandboxes,
    settings,
    write_config,
)
from tests.run_fixtures import (
    invoke_cli as invoke,
)

OTHER = "other-host:4242:cafebabe"
# the fake Klaviyo's clock is real time while the clients' FastTime only pretends to wait: lift the
# aggregates' rate limit for tests that call the library directly (the CLI tests keep the real one)
UNPACED = {"aggregates_per_second": 10_000, "aggregates_per_minute": 100_000}


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(IC_ENV, IC_TOKEN)
    monkeypatch.setenv(KL_ENV, KL_KEY)


def reconcile(
    boxes: Sandboxes, url: str, job: JobSettings | None = None, quiet: bool = False, **options: Any
) -> tuple[int, str, str]:
    """reconcile_jobs on the sandboxes' fast clients and the workspace's clock: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = reconcile_jobs(
        settings(url, job or boxes.job()),
        [],
        ReconcileOptions(since=START_DATE, **options),
        stdout=out,
        stderr=err,
        clock=boxes.clock,
        services_for=lambda job, store: boxes.services(store),
        quiet=quiet,
    )
    return code, out.getvalue(), err.getvalue()


def delete_snapshots(store: StateStore, stream: str, *ids: str) -> None:
    where = [snapshots.c.job == "shop", snapshots.c.stream == stream]
    if ids:
        where.append(snapshots.c.object_id.in_(ids))
    with store.transaction() as conn:
        conn.execute(sa.delete(snapshots).where(*where))


def snapshot_at(store: StateStore, stream: str, object_id: str) -> datetime:
    with store.transaction() as conn:
        return store.load_snapshots(conn, "shop", stream, [object_id])[object_id].updated_at


# -- the planted differences, then --repair -----------------------------------------------------------
def test_each_planted_difference_is_named_and_repair_restores_exactly_the_expected_events(
    db_url: str, store: StateStore
) -> None:
    """A deleted snapshot and a contact and a conversation changed below the watermark are missed (a ticket
    touched in no tracked field is not), a profile pending for 2 h is stuck, a profile Klaviyo refused is
    failed, three events dropped from Klaviyo are lost: each is named and the exit is 7 (text, JSON, run
    history). Once the refusal is fixed and retried, --repair re-reads, re-sends and delivers: Klaviyo holds
    exactly the events it held before plus the missed reply (sent as a backfill), the next reconcile exits 0,
    and no watermark ever moved."""
    with sandboxes(max_profile_bytes=4_000, **UNPACED) as boxes:
        start = START_DATE.timestamp()  # objects updated before start_date are never read
        contacts = sorted((c for c in boxes.workspace.contacts.values() if c["updated_at"] >= start),
                          key=lambda c: c["updated_at"])  # fmt: skip
        big = next(c for c in contacts if "@" in (c.get("email") or ""))
        big["custom_attributes"]["notes"] = "n" * 5_000  # over this account's 4 KB profile limit
        execute(boxes, store, boxes.job(), RunOptions())
        marks = store.watermarks("shop")
        expected_events = klaviyo_content(boxes.klaviyo)[0]
        assert expected_events and set(marks) == {"contacts", "conversations", "tickets"}
        (failed,) = outbox_rows(store, "shop", status="failed")
        assert reconcile(boxes, db_url)[0] == 7  # the refused profile alone already differs

        conversation = min(
            (c for c in boxes.workspace.conversations.values() if c["updated_at"] >= start),
            key=lambda c: c["updated_at"],
        )
        delete_snapshots(store, "conversations", conversation["id"])
        changed = next(c for c in contacts if c is not big and c.get("email"))
        before = snapshot_at(store, "contacts", changed["id"])
        moment = int(marks["contacts"].timestamp()) - 3_600  # below the watermark: no run reads it again
        boxes.workspace.touch("contacts", changed["id"], moment)
        # a reply Intercom dates below the watermark: the job never reads it, and the repair must send it
        reply_at = int(marks["conversations"].timestamp()) - 7_200
        replied = next(
            c for c in boxes.workspace.conversations.values()
            if start <= c["created_at"] < reply_at and c is not conversation
            and (c["statistics"].get("last_contact_reply_at") or 0) < reply_at
            and any(e.unique_id.startswith(f"intercom:conversation:{c['id']}:") for e in boxes.klaviyo.events)
        )  # fmt: skip
        replied["statistics"]["last_contact_reply_at"] = replied["updated_at"] = reply_at
        # an update of nothing the job tracks (its snapshot stays older): in step, not missed
        top = int(marks["tickets"].timestamp())
        quiet = next(t for t in boxes.workspace.tickets.values() if start <= t["updated_at"] < top - 60)
        quiet["updated_at"] = top - 1
        stuck = next(
            r for r in outbox_rows(store, "shop", kind="profile", status="sent")
            if changed["id"] not in r["unique_id"]
        )  # fmt: skip
        with store.transaction() as conn:
            conn.execute(
                sa.update(outbox).where(outbox.c.id == stuck["id"])
                .values(status="pending", created_at=boxes.clock() - timedelta(hours=2))
            )  # fmt: skip
        settled = boxes.clock() - timedelta(hours=1)
        dropped: dict[tuple[str, str], int] = {}
        for event in sorted(boxes.klaviyo.events, key=lambda e: e.unique_id):
            day = (event.metric, event.time[:10])
            if day not in dropped and len(dropped) < 3 and datetime.fromisoformat(event.time) < settled:
                dropped[day] = 1
                assert boxes.klaviyo.store.forget_events([event.unique_id]) == 1

        code, text, errors = reconcile(boxes, db_url)
        assert (code, errors) == (7, "")
        lines = text.splitlines()
        assert lines[0] == "job shop: not in step: 3 missed, 1 stuck, 1 failed, 3 lost"
        assert f"  missed conversations {conversation['id']}: updated " in text
        assert (
            f"{conversation['id']}: updated {iso_z(datetime.fromtimestamp(conversation['updated_at'], T0.tzinfo))}, no snapshot"
            in text
        )
        assert (
            f"  missed contacts {changed['id']}: updated {iso_z(datetime.fromtimestamp(moment, T0.tzinfo))}, "
            f"snapshot of {iso_z(before)}"
        ) in lines
        assert (
            f"  stuck profile {stuck['unique_id']}: pending since {iso_z(boxes.clock() - timedelta(hours=2))}, "
            "1 attempt(s)"
        ) in lines
        assert f"  failed profile {failed['unique_id']}: {failed['last_error']}" in lines
        assert failed["last_error"].startswith("invalid: Profile payload is ")
        sent_per_day: dict[tuple[str, str], int] = {}
        for row in outbox_rows(store, "shop", kind="event", status="sent"):
            attributes = row["payload"]["attributes"]["events"]["data"][0]["attributes"]
            key = (attributes["metric"]["data"]["attributes"]["name"], attributes["time"][:10])
            sent_per_day[key] = sent_per_day.get(key, 0) + 1
        for metric, day in dropped:
            sent = sent_per_day[(metric, day)]
            assert (
                f"  lost {metric} {day}: Klaviyo counts {sent - 1} of the {sent} event(s) etl sent" in lines
            )
        assert (
            "  to repair: `etl reconcile shop --repair` re-reads what was missed, re-sends what Klaviyo "
            in text
        )
        assert (
            "  failed items: fix their cause, then `etl outbox retry shop`; the next run sends them" in lines
        )

        code, output, _ = reconcile(boxes, db_url, as_json=True)
        report = json.loads(output)
        assert code == 7 and report["in_step"] is False
        assert {(m["stream"], m["id"]) for m in report["missed"]} == {
            ("conversations", conversation["id"]),
            ("conversations", replied["id"]),
            ("contacts", changed["id"]),
        }
        assert [i["unique_id"] for i in report["stuck"]] == [stuck["unique_id"]]
        assert [(i["unique_id"], i["error"]) for i in report["failed"]] == [
            (failed["unique_id"], failed["last_error"])
        ]
        assert {(d["metric"], d["day"]) for d in report["days"] if d["lost"]} == set(dropped)
        (last, *_) = store.runs("shop", 10, mode="reconcile")
        assert (last.status, last.id) == ("differs", report["run_id"])
        assert last.counts["contacts"] == {
            "objects": report["streams"][0]["objects"],
            "missed": 1,
            "stuck": 1,
            "failed": 1,
        }
        assert sum(m["lost"] for m in last.counts["_metrics"].values()) == 3
        assert store.watermarks("shop") == marks

        boxes.klaviyo.settings.max_profile_bytes = 100_000  # the cause fixed; `etl outbox retry shop`
        assert store.retry_failed("shop") == 1
        code, text, errors = reconcile(boxes, db_url, repair=True)
        assert (code, errors) == (0, "")
        low, high = sorted([conversation["updated_at"], reply_at])
        reread = len(
            in_window(
                boxes, "conversations", *(datetime.fromtimestamp(t, T0.tzinfo) for t in (low, high + 1))
            )
        )
        resent = sum(sent_per_day[day] for day in dropped)
        # delivered: the re-sent events, the stuck and the retried profile, the changed contact's new profile
        # and the missed reply; the conversation whose snapshot was deleted queues nothing new
        assert text.splitlines()[0] == (
            f"job shop: repaired {reread + 1} object(s) re-read, {resent} event(s) re-sent, "
            f"{resent + 4} item(s) delivered; now in step"
        )
        events = klaviyo_content(boxes.klaviyo)[0]
        (new,) = [
            e
            for e in boxes.klaviyo.events
            if e.unique_id == f"intercom:conversation:{replied['id']}:replied:{reply_at}"
        ]
        assert (new.metric, new.time, new.backfill) == (
            "Replied to Conversation",
            iso_z(datetime.fromtimestamp(reply_at, T0.tzinfo), offset="+00:00"),
            True,
        )
        assert events - expected_events == {e for e in events if e[2] == new.unique_id}
        assert expected_events <= events  # the lost ones are back, nothing else changed
        profiles = boxes.klaviyo.profiles
        assert (
            profiles[changed["email"].strip().lower()]["properties"]["intercom_custom_attributes"]["touched"]
            == 1
        )
        assert (
            profiles[big["email"].strip().lower()]["properties"]["intercom_custom_attributes"]["notes"]
            == "n" * 5_000
        )
        assert (
            outbox_rows(store, "shop", status="pending") == outbox_rows(store, "shop", status="failed") == []
        )
        assert store.leases("shop") == []  # the job's lease and the backfills' were released
        assert [r.mode for r in store.runs("shop", 3)] == [
            "backfill",
            "backfill",
            "reconcile",
        ]  # newest first
        assert reconcile(boxes, db_url)[:2] == (0, reconcile(boxes, db_url)[1])
        assert reconcile(boxes, db_url)[1].splitlines()[0] == "job shop: in step"
        assert store.watermarks("shop") == marks


def test_repair_holds_the_jobs_lease_and_a_check_does_not(db_url: str, store: StateStore) -> None:
    """With another run holding the job's lease, --repair exits 75 with one line and repairs nothing; a check
    needs no lease and runs (the lost event stays lost)."""
    with sandboxes(**UNPACED) as boxes:
        execute(boxes, store, boxes.job(), RunOptions())
        first = min(boxes.klaviyo.events, key=lambda e: e.time)
        boxes.klaviyo.store.forget_events([first.unique_id])
        store.acquire_lock("shop", OTHER, timedelta(minutes=10), boxes.clock())
        (_, expires) = store.lock_holder("shop") or ("", boxes.clock())
        code, text, errors = reconcile(boxes, db_url, repair=True)
        assert (code, text) == (75, "")
        assert errors == (
            f"etl: error: job shop: job 'shop' is already running (lease held by {OTHER} until "
            f"{expires.isoformat()}); try again later\n"
        )
        assert first.unique_id not in {e.unique_id for e in boxes.klaviyo.events}
        assert store.runs("shop", 5, mode="reconcile") == []  # like a run, nothing recorded before the lease
        code, text, _ = reconcile(boxes, db_url)
        assert code == 7 and text.splitlines()[0] == "job shop: not in step: 1 lost"
        assert store.lock_holder("shop") == (OTHER, expires)


def test_many_differences_are_listed_twenty_a_kind_and_every_one_in_json(store: StateStore) -> None:
    """Every conversation snapshot deleted: the text names the first 20 and says how many more, the JSON all
    of them; a small outbox chunk reads the same sent events as the default; stuck means older than --interval."""
    url = store.url
    with sandboxes(**UNPACED) as boxes:
        execute(boxes, store, boxes.job(), RunOptions())
        delete_snapshots(store, "conversations")
        mark = store.watermarks("shop")["conversations"]
        conversations = in_window(boxes, "conversations", START_DATE, mark)  # read up to the watermark
        code, text, _ = reconcile(boxes, url)
        assert code == 7
        listed = [line for line in text.splitlines() if line.startswith("  missed conversations ")]
        assert len(listed) == 20 and len(conversations) > 20
        assert f"  … and {len(conversations) - 20} more (--json lists them all)" in text.splitlines()
        report = json.loads(reconcile(boxes, url, as_json=True)[1])
        assert {m["id"] for m in report["missed"]} == conversations

        with (
            store.transaction() as conn
        ):  # queued 30 minutes ago: not stuck within an hour, stuck within 20 min
            conn.execute(
                sa.update(outbox).where(outbox.c.kind == "profile")
                .values(status="pending", created_at=boxes.clock() - timedelta(minutes=30))
            )  # fmt: skip
        profiles = len(outbox_rows(store, "shop", kind="profile"))
        assert len(json.loads(reconcile(boxes, url, as_json=True)[1])["stuck"]) == 0
        report = json.loads(reconcile(boxes, url, as_json=True, interval=timedelta(minutes=20))[1])
        assert len(report["stuck"]) == profiles > 0

        services = boxes.services(store)
        try:
            default = Reconciler(
                boxes.job(), ReconcileOptions(since=START_DATE), services, boxes.clock
            ).check()
            small = Reconciler(
                boxes.job(), ReconcileOptions(since=START_DATE), services, boxes.clock, chunk=7
            ).check()
        finally:
            close(services)
        assert sum(d.sent for d in default.days) > 7 * 3
        assert [(d.metric, d.day, d.sent, d.klaviyo, sorted(d.ids)) for d in small.days] == [
            (d.metric, d.day, d.sent, d.klaviyo, sorted(d.ids)) for d in default.days
        ]


def test_renamed_metrics_are_compared_under_the_name_klaviyo_knows(store: StateStore) -> None:
    """With metric_names, events land in Klaviyo's API metric of the new name; reconcile counts them there (in
    step, and with -q silent), and one dropped from Klaviyo is lost under that name (said even with -q)."""
    with sandboxes(**UNPACED) as boxes:
        job = boxes.job(metric_names={"Created Conversation": "Conversation Started"})
        execute(boxes, store, job, RunOptions())
        code, text, _ = reconcile(boxes, store.url, job)
        assert code == 0, text
        assert reconcile(boxes, store.url, job, quiet=True) == (0, "", "")  # -q: nothing to say, nothing said
        started = [e for e in boxes.klaviyo.events if e.metric == "Conversation Started"]
        assert started and not [e for e in boxes.klaviyo.events if e.metric == "Created Conversation"]
        table = {line.split()[0]: line for line in text.splitlines() if line.startswith("  Conversation ")}
        assert table["Conversation"].split()[2:] == [str(len(started)), str(len(started)), "0", "0"]
        dropped = min(started, key=lambda e: e.time)
        boxes.klaviyo.store.forget_events([dropped.unique_id])
        code, text, _ = reconcile(boxes, store.url, job, quiet=True)
        assert code == 7  # -q keeps the report of a job out of step
        assert f"  lost Conversation Started {dropped.time[:10]}: Klaviyo counts " in text


# -- the command line ---------------------------------------------------------------------------------
WINDOW = ["--since", START_DATE.date().isoformat(), "--until", (T0 + timedelta(days=1)).date().isoformat()]


def test_the_command_prints_json_records_the_run_writes_gauges_and_exits_7_when_out_of_step(
    tmp_path: Path,
) -> None:
    """`etl reconcile` through the CLI, real clocks and the aggregates' real rate limit: in step it exits 0
    (JSON on stdout, a `reconcile` run in `etl runs`, zero gauges); an event dropped from Klaviyo makes it 7,
    with the lost gauge at 1."""
    url = f"sqlite:///{tmp_path}/state.db"
    metrics = tmp_path / "reconcile.prom"
    with sandboxes() as boxes:
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job())
        assert invoke("--config", str(config), "-q", "run").exit_code == 0
        result = invoke(
            "--config", str(config), "reconcile", "shop", *WINDOW, "--json", "--metrics-file", str(metrics)
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["in_step"] is True and [s["stream"] for s in report["streams"]] == [
            "contacts",
            "conversations",
            "tickets",
        ]
        assert sum(d["sent"] for d in report["days"]) == len(boxes.klaviyo.events) > 0
        assert boxes.klaviyo.count("POST", "/api/metric-aggregates", status=429) == 0
        gauges = {f.name: f.samples[0] for f in text_string_to_metric_families(metrics.read_text())}
        assert {name: (s.labels, s.value) for name, s in gauges.items()} == {
            f"etl_reconcile_{kind}": ({"job": "shop"}, 0.0) for kind in ("missed", "stuck", "failed", "lost")
        }
        runs = invoke("--config", str(config), "runs", "shop")
        assert (
            runs.stdout.splitlines()[1].split()[2] == "reconcile"
            and runs.stdout.splitlines()[1].split()[5] == "succeeded"
        )

        lost = max(boxes.klaviyo.events, key=lambda e: e.time if e.time < "2026-02-28T23" else "")
        boxes.klaviyo.store.forget_events([lost.unique_id])
        result = invoke("--config", str(config), "reconcile", *WINDOW, "--streams", "conversations,tickets",
                        "--metrics-file", str(metrics))  # fmt: skip
        assert result.exit_code == 7, result.output
        assert result.stdout.splitlines()[0] == "job shop: not in step: 1 lost"
        assert "  stream         read up to" in result.stdout and "\n  contacts " not in result.stdout
        assert f"  lost {lost.metric} {lost.time[:10]}: Klaviyo counts " in result.stdout
        assert 'etl_reconcile_lost{job="shop"} 1.0' in metrics.read_text()
        runs = invoke("--config", str(config), "runs", "shop", "--limit", "1")
        assert runs.stdout.splitlines()[1].split()[5] == "differs"


def test_bad_options_are_one_line_with_exit_2(tmp_path: Path) -> None:
    """Every bad value at once, before anything is read."""
    config = write_config(tmp_path / "jobs.yaml", f"sqlite:///{tmp_path}/state.db")
    result = invoke(
        "--config",
        str(config),
        "reconcile",
        "--since",
        "yesterday",
        "--settle",
        "5 minutes",
        "--streams",
        "chats",
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("etl: error: 3 problems: --since: ")
    assert (
        "; --settle: expected a duration like 15m, got '5 minutes'; --streams: expected a comma list of "
        in result.stderr
    )
    assert len(result.stderr.splitlines()) == 1


def test_out_of_step_outranks_a_held_lease_but_not_a_failure() -> None:
    """Over several jobs the worst code wins: 7 (look at it) over 75 (just retry), any failure over 7."""
    assert worst_exit_code([0, 75, 7]) == 7
    assert worst_exit_code([7, 4]) == 4
    assert worst_exit_code([6, 7]) == 7
