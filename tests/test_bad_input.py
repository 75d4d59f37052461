"""Bad input from the APIs (issue 13): a run skips, counts and logs what it cannot use, or fails with the API's
exit code and one line; never a traceback, and nothing it could use is lost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from etl.errors import IntercomError, KlaviyoError
from etl.models import RunOptions
from etl.sandbox.server import Faults
from etl.state import StateStore
from tests.run_fixtures import (
    IC_ENV,
    IC_TOKEN,
    KL_ENV,
    KL_KEY,
    Sandboxes,
    execute,
    outbox_rows,
    sandboxes,
    write_config,
)

JOB_STATUS = r"GET /api/profile-bulk-import-jobs/[^/]+"
IMPORT_ERRORS = r"GET /api/profile-bulk-import-jobs/[^/]+/import-errors"


def served_conversations(boxes: Sandboxes, n: int) -> dict:
    """A real conversations search page of the sandbox, `n` conversations long, and the last one."""
    reply = requests.post(
        f"{boxes.intercom.url}/conversations/search",
        json={"query": {"field": "updated_at", "operator": ">", "value": 0}, "pagination": {"per_page": n}},
        headers={"Authorization": f"Bearer {IC_TOKEN}", "Intercom-Version": "2.16"},
        timeout=10,
    )
    reply.raise_for_status()
    return {**reply.json(), "pages": {"type": "pages", "page": 1, "per_page": n, "total_pages": 1}}


def test_a_page_with_malformed_objects_skips_counts_and_logs_each_by_id(tmp_path: Path) -> None:
    """Results without an id or a UNIX updated_at (or not objects at all) are skipped: the run exits 0, the
    usable ones are stored, the run's counts say `skipped:malformed`, and a warning names each one's id."""
    url = f"sqlite:///{tmp_path}/state.db"
    with sandboxes() as boxes:
        page = served_conversations(boxes, 3)
        good = [c["id"] for c in page["conversations"]]
        template = page["conversations"][0]
        junk = [
            None,
            "a string",
            {k: v for k, v in template.items() if k != "id"},
            {**template, "id": "bad-1", "updated_at": "yesterday"},
            {**template, "id": "bad-2", "updated_at": None},
            {k: v for k, v in {**template, "id": "bad-3"}.items() if k != "updated_at"},
            {**template, "id": "bad-4", "updated_at": {"at": 1}},
        ]
        page["conversations"] = [*page["conversations"], *junk]
        page["total_count"] = len(page["conversations"])
        boxes.intercom.server.faults = Faults(
            bodies={"POST /conversations/search": json.dumps(page).encode()}
        )
        # one reader: the fake serves this body to every search, so each time slice would see the junk again
        config = write_config(tmp_path / "jobs.yaml", url, boxes.job(concurrency=1))
        env = {**os.environ, IC_ENV: IC_TOKEN, KL_ENV: KL_KEY, "ETL_DATABASE_URL": ""}
        done = subprocess.run(
            [sys.executable, "-m", "etl", "--log-format", "json", "--config", str(config), "run"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line JSON: no traceback
    warned = [line for line in lines if line["message"] == "skipped a malformed Intercom object"]
    assert sorted((w["id"] or "-", w["reason"]) for w in warned) == [
        ("-", "no id"),
        ("-", "not an object (NoneType)"),
        ("-", "not an object (str)"),
        ("bad-1", "updated_at is not a UNIX time ('yesterday')"),
        ("bad-2", "updated_at is not a UNIX time ('None')"),
        ("bad-3", "updated_at is not a UNIX time ('None')"),
        ("bad-4", "updated_at is not a UNIX time (\"{'at': 1}\")"),
    ]
    assert all(w["level"] == "warning" and w["stream"] == "conversations" and w["since"] for w in warned)
    store = StateStore(url)
    try:
        (run,) = store.runs("shop", 5)
        assert run.status == "succeeded"
        assert run.counts["conversations"]["skipped:malformed"] == len(junk)
        assert run.counts["conversations"]["objects"] == len(good)
        assert store.snapshot_counts("shop")["conversations"] == len(good)
    finally:
        store.close()


def test_odd_unicode_and_large_attributes_reach_klaviyo_cleaned(db_url: str) -> None:
    """Lone surrogates (escaped in Intercom's JSON) become U+FFFD and NUL is dropped, so SQLite, PostgreSQL's
    jsonb and Klaviyo's UTF-8 all take them; RTL marks, emoji and a 60 KB attribute arrive unchanged."""
    store = StateStore(db_url)
    store.upgrade()
    try:
        with sandboxes() as boxes:
            contact = next(c for c in boxes.workspace.contacts.values() if "@" in (c.get("email") or ""))
            contact["name"] = "Zoë \u202eevil\u202c 🎉"
            contact["custom_attributes"] = {
                "notes": "n" * 60_000,
                "lone\ud800key": "half \udc00 pair",
                "nul": "a\x00b",
                "family": "👩‍👩‍👧 שלום",
            }
            execute(boxes, store, boxes.job(), RunOptions())
            (run,) = store.runs("shop", 5)
            assert run.status == "succeeded"
            sent = json.dumps(boxes.klaviyo.profiles, ensure_ascii=False)
        for value in (
            "half \ufffd pair",
            "lone\ufffdkey",
            '"ab"',
            "👩‍👩‍👧 שלום",
            "n" * 60_000,
            "\u202eevil\u202c 🎉",
        ):
            assert value in sent
        assert "\x00" not in sent and not re.search("[\ud800-\udfff]", sent)
        assert outbox_rows(store, "shop", status="pending") == []
    finally:
        store.close()


@pytest.mark.parametrize("body", [b"{}", b"[]", b'{"data": "job"}', b'{"data": {"attributes": null}}'])
def test_a_junk_import_job_status_is_exit_4_and_the_profiles_stay_pending(db_url: str, body: bytes) -> None:
    """A job status that is JSON but not a job is KlaviyoError (exit 4, one line); the next run delivers all."""
    store = StateStore(db_url)
    store.upgrade()
    try:
        with sandboxes() as boxes:
            boxes.klaviyo.faults = Faults(bodies={JOB_STATUS: body})
            with pytest.raises(KlaviyoError) as failure:
                execute(boxes, store, boxes.job(), RunOptions())
            assert failure.value.exit_code == 4
            assert re.fullmatch(
                r"Klaviyo answered GET /api/profile-bulk-import-jobs/\S+ with an unexpected body \(no "
                r"data\.attributes\); try again later \(its profiles stay pending and are resent\)",
                str(failure.value),
            )
            assert outbox_rows(store, "shop", kind="profile", status="pending")
            boxes.klaviyo.faults = Faults()
            execute(boxes, store, boxes.job(), RunOptions())
            assert outbox_rows(store, "shop", status="pending") == []
            assert len(boxes.klaviyo.profiles) == len(
                outbox_rows(store, "shop", kind="profile", status="sent")
            )
    finally:
        store.close()


def test_junk_import_errors_are_exit_4_or_name_no_profile(tmp_path: Path) -> None:
    """An import-errors reply without its data list is exit 4 with one line; entries that are not error
    objects, and a `next` link that is no URL, name no profile: none is marked failed, paging stops."""
    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.upgrade()
    status = b'{"data": {"type": "profile-bulk-import-job", "id": "x", "attributes": {"status": "complete", "failed_count": 2}}}'
    try:
        with sandboxes() as boxes:
            boxes.klaviyo.faults = Faults(bodies={JOB_STATUS: status, IMPORT_ERRORS: b'{"data": {}}'})
            with pytest.raises(KlaviyoError, match=r"import-errors with an unexpected body \(no data list\)"):
                execute(boxes, store, boxes.job(), RunOptions())
            junk = b'{"data": [null, "x", {"attributes": []}, {"attributes": {"source": 3}}], "links": {"next": 5}}'
            boxes.klaviyo.faults = Faults(bodies={JOB_STATUS: status, IMPORT_ERRORS: junk})
            execute(boxes, store, boxes.job(), RunOptions())
            assert outbox_rows(store, "shop", status="failed") == []
            assert outbox_rows(store, "shop", status="pending") == []
    finally:
        store.close()


@pytest.mark.parametrize(
    ("api", "request_line"), [("intercom", "POST /tickets/search"), ("klaviyo", JOB_STATUS)]
)
@pytest.mark.parametrize("body", [b"", b'{"type": "list", "data": [', b"\xff\xfe not UTF-8"])
def test_an_api_that_keeps_serving_unreadable_200s_fails_with_its_exit_code(
    tmp_path: Path, api: str, request_line: str, body: bytes
) -> None:
    """An empty, cut-off or undecodable 200 is retried (on the clients' fast clock) until the retry budget is
    spent, then the run fails with that API's exit code (3 or 4) and one line naming the request."""

    store = StateStore(f"sqlite:///{tmp_path}/state.db")
    store.upgrade()
    try:
        with sandboxes() as boxes:
            server = boxes.intercom.server if api == "intercom" else boxes.klaviyo
            server.faults = Faults(bodies={request_line: body})
            error = IntercomError if api == "intercom" else KlaviyoError
            with pytest.raises(error) as failure:
                execute(boxes, store, boxes.job(), RunOptions())
        message = str(failure.value)
        assert failure.value.exit_code == (3 if api == "intercom" else 4)
        what = "empty" if body == b"" else "unreadable"
        request = "POST /tickets/search" if api == "intercom" else r"GET /api/profile-bulk-import-jobs/\w+"
        assert re.fullmatch(
            rf"{api.capitalize()} kept failing {request} for 10m0s \(last: {what} response body \(HTTP 200\)\): "
            rf"try again later; raise {api}\.retry_budget to wait longer",
            message,
        ), message
        (run,) = store.runs("shop", 5)
        assert run.status == "failed" and run.error == message
    finally:
        store.close()
