"""The runs list and the run page: counts, failures by cause with their examples, calls/tokens/USD per
role and arm, endpoints and served models, the config with secrets redacted; read fresh while a run
writes; unknown run ids are 404; untrusted text renders as text."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from _payloads import REPLY_PAYLOAD

from simlab.records import SessionFailure
from simlab.store import RunStore
from simlab.store.readers import read_counts
from simlab.view.core import IN_PROGRESS_S
from tests.view.conftest import ViewServer

SECRET = "sk-live-0123456789abcdefXYZ"
PLAIN_SECRET = "hunter2-not-key-shaped"


def _fail(store: RunStore, participant: str, domain: str, reason: str) -> str:
    cid = f"{participant}:{domain}"
    store.write_failure(SessionFailure(conversation_id=cid, participant_id=participant, domain=domain,
                                       error_type="StructuredOutputError", reason=reason))
    return cid


@pytest.fixture
def failing_run(view_run: Path, tmp_path: Path) -> Path:
    """A copy of ``view_run`` with three failed sessions (two causes; one reason carries an HTML/JS
    payload) and, as an older simlab could have stored it, an endpoint ``api_key`` in its config."""
    run = tmp_path / "failing-run"
    shutil.copytree(view_run, run)
    with RunStore.open(run) as s:
        _fail(s, "sample01", "values", "ranking kept failing its schema: 'A A B'")
        _fail(s, "sample02", "values", "ranking kept failing its schema: 'C C'")
        _fail(s, "sample03", "values", f"the reply was {REPLY_PAYLOAD}")
    with sqlite3.connect(run / "store.sqlite") as conn:  # a store written before keys were redacted on write
        config = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
        config["endpoints"]["local"]["api_key"] = PLAIN_SECRET
        config["endpoints"]["local"]["headers"] = {"Authorization": f"Bearer {SECRET}"}
        conn.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
    conn.close()
    return run


@pytest.fixture
def failing_server(failing_run: Path):
    server = ViewServer([failing_run])
    yield server
    server.close()


def test_the_runs_list_shows_each_run_with_its_counts(view_run: Path, failing_run: Path) -> None:
    server = ViewServer([view_run, failing_run])
    try:
        status, _, body = server.get("/")
    finally:
        server.close()
    assert status == 200
    rows = re.findall(r'<a class="run-link" href="/runs/([^"]+)">.*?</a></td>\s*<td>[^<]*</td>\s*'
                      r'<td class="num">(\d+)</td>\s*<td class="num">(?:<a [^>]*>)?(\d+)', body, flags=re.S)
    done = read_counts(view_run).sessions_completed
    assert rows == [(view_run.name, str(done), "0"), ("failing-run", str(done), "3")]
    assert 'href="/runs/failing-run/sessions?status=failed"' in body


def test_the_run_page_has_counts_failures_costs_endpoints_and_the_config(failing_server, failing_run: Path) -> None:
    status, headers, body = failing_server.get("/runs/failing-run")
    assert status == 200 and "Content-Security-Policy" in headers
    counts = read_counts(failing_run)
    assert f"{counts.sessions_completed} completed</a>" in body and "3 failed</a>" in body
    # per source and domain: the failed sessions' source comes from their participant
    assert re.search(r"<td>sim_dynamic</td>\s*<td><a [^>]*>values</a></td>\s*<td class=\"num\">0</td>"
                     r"<td class=\"num\">3</td>", body)
    # failures grouped by cause (quoted text differs: one cause), largest first, each with a linked example
    section = body.split('id="failures"')[1].split("</section>")[0]
    groups = re.findall(r'<td class="num">(\d+)</td><td>StructuredOutputError</td>.*?<a href="([^"]+)">', section, re.S)
    assert groups == [("2", "/runs/failing-run/sessions/sample01:values"),
                      ("1", "/runs/failing-run/sessions/sample03:values")]
    # model calls per role and arm, as the store counts them
    for c in counts.by_role_arm:
        assert re.search(rf"<tr><td>{c.role}</td><td>{c.arm or '—'}</td><td class=\"num\">{c.calls}</td>", body), c
    # endpoints and the models they served
    assert re.search(r'<td rowspan="1">local</td><td rowspan="1">vllm</td>.*?<td>smollm2-135m</td><td>smollm2-135m</td>',
                     body, re.S)
    # the config, secrets redacted: a secret-named field's value and anything shaped like a key
    config = html.unescape(body.split('<pre class="config">')[1].split("</pre>")[0])
    assert '"api_key": "[redacted]"' in config and '"Authorization": "[redacted]"' in config
    assert PLAIN_SECRET not in body and SECRET not in body and "sk-ABCDEF" not in body
    assert '"name": "quickstart"' in config


def test_unknown_runs_are_404_and_urls_name_runs_only(view_server) -> None:
    for path in ("/runs/nope", "/runs/nope/sessions", "/runs/..%2F..%2Fetc", "/runs/%2Fetc%2Fpasswd/sessions"):
        status, headers, body = view_server.get(path)
        assert status == 404, path
        assert headers["Content-Security-Policy"]
        assert "root:" not in body


def test_untrusted_text_renders_as_text(failing_server) -> None:
    _, _, body = failing_server.get("/runs/failing-run")
    assert "<script>document" not in body and "<svg onload" not in body
    assert "&lt;script&gt;document.title=" in body and "&lt;svg onload=" in body


def test_a_run_in_progress_is_read_fresh_and_its_pages_reload(failing_run: Path) -> None:
    server = ViewServer([failing_run])
    try:
        _, _, before = server.get("/runs/failing-run")
        assert "3 failed</a>" in before and 'http-equiv="refresh"' not in before
        with RunStore.open(failing_run) as s:  # a run writing: its write-ahead log is fresh
            _fail(s, "sample01", "controversy", "the stop decision kept failing")
            _, _, during = server.get("/runs/failing-run")
            _, _, table = server.get("/runs/failing-run/sessions?status=failed")
            assert "4 failed</a>" in during and 'http-equiv="refresh"' in during
            assert "sample01:controversy" in table and 'http-equiv="refresh"' in table
        wal = failing_run / "store.sqlite-wal"  # the writer closed; a minute on, its log is old: no more reloads
        if wal.exists():
            os.utime(wal, (time.time() - IN_PROGRESS_S - 5,) * 2)
        _, _, after = server.get("/runs/failing-run")
        assert "4 failed</a>" in after and 'http-equiv="refresh"' not in after
    finally:
        server.close()


def test_the_run_page_in_a_browser(failing_server, browser, watched) -> None:
    page = watched.page
    page.goto(failing_server.url + "/")
    page.click("a.run-link >> text=failing-run")
    page.wait_for_url("**/runs/failing-run")
    assert page.locator("#failures tbody tr").count() == 2
    assert REPLY_PAYLOAD.split(" <script>")[0] in page.locator("#failures").inner_text()
    page.click("#counts >> text=3 failed")
    page.wait_for_url("**/runs/failing-run/sessions?status=failed")
    assert page.locator("table.sessions tbody tr").count() == 3
    watched.assert_clean()


@pytest.mark.parametrize("version", [1, 3])
def test_a_store_of_an_older_simlab_is_shown_and_never_changed(tmp_path: Path, version: int) -> None:
    from simlab.store.connection import STORE_FILE
    from tests.test_store import (
        _a_session_a_failure_and_a_summary_call,
        _downgrade_to_v1,
        _downgrade_to_v3,
        _fingerprint,
    )

    run = tmp_path / "old"
    _a_session_a_failure_and_a_summary_call(run)
    {1: _downgrade_to_v1, 3: _downgrade_to_v3}[version](run / STORE_FILE)
    before = _fingerprint(run / STORE_FILE)
    server = ViewServer([run])
    try:
        pages = {path: server.get(path) for path in ("/", "/runs/old", "/runs/old/sessions", "/runs/old/sessions?status=failed")}
    finally:
        server.close()
    assert all(status == 200 for status, _, _ in pages.values()), {p: s for p, (s, _, _) in pages.items()}
    assert "1 completed</a>" in pages["/runs/old"][2] and "1 failed</a>" in pages["/runs/old"][2]
    assert "1 session." in pages["/runs/old/sessions?status=failed"][2]
    assert _fingerprint(run / STORE_FILE) == before
