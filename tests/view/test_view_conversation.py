"""The viewer's conversation page: a real stub-server run, its transcript by letter and by arm name, the
answers, persona, memory lines and model calls, a failed session's reasons, and the matched human's
conversation beside it (human data written by the fidelity loaders' on-disk form)."""

from __future__ import annotations

import html
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from simlab.fidelity import write_tables
from simlab.store import load_run
from simlab.tables import Tables
from tests.view.conftest import ViewServer


def _first(run: Path, source: str = "sim_dynamic") -> tuple[str, str, str, dict[str, str]]:
    """(conversation_id, participant_id, domain, arm_letters) of the run's first session."""
    import json

    with sqlite3.connect(run / "store.sqlite") as conn:
        cid, pid, domain, letters = conn.execute(
            "SELECT conversation_id, participant_id, domain, arm_letters FROM conversations WHERE source = ? "
            "ORDER BY conversation_id LIMIT 1", (source,)).fetchone()
    return cid, pid, domain, json.loads(letters)


def _url(run: Path, cid: str) -> str:
    return f"/runs/{quote(run.name, safe=':')}/sessions/{quote(cid, safe=':')}"


def human_copy(run: Path, out: Path, source: str | None = None) -> Path:
    """The run's sessions (of ``source``, else all) as human data (``source`` human, ``h-`` conversation
    ids, same participants and domains), written in the on-disk form ``--human`` reads."""
    t = load_run(run)
    keep = set(t.conversations["conversation_id"][t.conversations["source"] == source]) if source else None
    frames = {}
    for name in ("judgements", "conversations", "turns", "participants", "bdm"):
        frame = getattr(t, name).copy()
        if keep is not None and "conversation_id" in frame:
            frame = frame[frame["conversation_id"].isin(keep)]
        elif keep is not None:
            frame = frame[frame["source"] == source]
        if "conversation_id" in frame:
            frame["conversation_id"] = "h-" + frame["conversation_id"].astype(str)
        if "source" in frame:
            frame["source"] = "human"
        frames[name] = frame
    frames["turns"].loc[frames["turns"]["role"] == "user", "text"] = "HUMAN SAID: what should I cook tonight?"
    return write_tables(Tables(**frames), out, "csv")


@pytest.fixture(scope="module")
def human_data(view_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return human_copy(view_run, tmp_path_factory.mktemp("human") / "human")


def serve(runs: list[Path], human: Path | None = None) -> ViewServer:
    """A ``ViewServer`` built in a thread of its own: Playwright's sync API runs an event loop in the
    test's thread once the browser is up, and the server cannot start its loop there."""
    made: list[ViewServer] = []
    thread = threading.Thread(target=lambda: made.append(ViewServer(runs, human)))
    thread.start()
    thread.join(60)
    return made[0]


@pytest.fixture
def human_server(view_run: Path, human_data: Path) -> Iterator[ViewServer]:
    server = serve([view_run], human_data)
    yield server
    server.close()


def no_favicon(page: Any) -> Any:
    """``page`` with Chromium's own /favicon.ico request answered 204: the shared page template names no
    icon, and that 404 is not the page under test's."""
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204, body=""))
    return page


def test_unknown_sessions_and_runs_are_404(view_server, view_run: Path) -> None:
    status, headers, body = view_server.get(_url(view_run, "no-such-session"))
    assert status == 404 and "Content-Security-Policy" in headers
    assert "no session 'no-such-session'" in body and "sessions table" in body
    status, _, body = view_server.get("/runs/not-a-run/sessions/x")
    assert status == 404 and "no run 'not-a-run'" in body


def test_letters_by_default_arm_names_on_the_toggle(view_server, view_run: Path) -> None:
    cid, _, _, letters = _first(view_run)
    status, _, page = view_server.get(_url(view_run, cid))
    assert status == 200
    shown = [html.unescape(x) for x in __import__("re").findall(r'<span class="arm-label"[^>]*>([^<]*)</span>', page)]
    assert shown and set(shown) <= set(letters.values())
    assert f'href="{_url(view_run, cid)}?arms=1"' in page
    status, _, named = view_server.get(_url(view_run, cid) + "?arms=1")
    shown = [html.unescape(x) for x in __import__("re").findall(r'<span class="arm-label"[^>]*>([^<]*)</span>', named)]
    assert shown and set(shown) <= set(letters) and set(letters) <= set(shown)
    assert "Show letters" in named


def test_the_page_shows_answers_persona_memory_and_calls(view_server, view_run: Path) -> None:
    cid, pid, _, _ = _first(view_run)
    _, _, page = view_server.get(_url(view_run, cid))
    with sqlite3.connect(view_run / "store.sqlite") as conn:
        n_calls = conn.execute("SELECT count(*) FROM llm_calls WHERE conversation_id = ?", (cid,)).fetchone()[0]
        rank1 = conn.execute("SELECT letter FROM judgements WHERE conversation_id = ? AND rank = 1", (cid,)).fetchone()[0]
        stop = conn.execute("SELECT stop_reason FROM conversations WHERE conversation_id = ?", (cid,)).fetchone()[0]
    assert f"Model calls ({n_calls})" in page and page.count('<details class="call') == n_calls
    assert "simulator/system.j2" in page and "served:" in page  # template names and the served model
    assert "Final answers" in page and "BDM draw" in page
    assert f'data-letter="{rank1}"' in page
    assert f"persona <code>{pid}</code>" in page and "rendering <code>profile</code>" in page
    assert "Your ratings of the responses to your message 1:" in page  # the memory lines
    assert {"user_ended": "the participant ended it", "max_turns": "the turn cap"}[stop] in page
    assert f'/sessions?participant={pid}' in page


def test_untrusted_text_is_escaped_and_keys_redacted(view_server, view_run: Path) -> None:
    cid, _, _, _ = _first(view_run)
    _, _, page = view_server.get(_url(view_run, cid))
    assert "<script>document.title" not in page and "onerror=\"document" not in page
    assert "&lt;script&gt;document.title" in page
    assert "sk-ABCDEF1234567890xyz" not in page


def test_a_failed_session_shows_why(view_run: Path, tmp_path: Path) -> None:
    run = tmp_path / view_run.name
    shutil.copytree(view_run, run)
    with sqlite3.connect(run / "store.sqlite") as conn:
        conn.execute("INSERT INTO failures (conversation_id, participant_id, domain, error_type, reason, raw_text, "
                     "failed_at) VALUES ('sample09:un/guided?#1', 'sample09', 'unguided', 'SchemaError', "
                     "'the ranking reply broke its schema after 3 attempts', '<b>not json</b>', '2026-12-08T00:00:00')")
    server = serve([run])
    try:
        status, _, page = server.get(_url(run, "sample09:un/guided?#1"))
    finally:
        server.close()
    assert status == 200
    assert "This session failed" in page and "SchemaError" in page and "sample09:un/guided?#1" in page
    assert "the ranking reply broke its schema after 3 attempts" in page and "&lt;b&gt;not json&lt;/b&gt;" in page


def test_the_matched_human_is_beside_the_session(human_server, view_run: Path) -> None:
    cid, pid, domain, _ = _first(view_run)
    _, _, page = human_server.get(_url(view_run, cid))
    assert 'class="sides two"' in page and "Matched human" in page
    assert f"<code>h-{cid}</code>" in page and "HUMAN SAID: what should I cook tonight?" in page


def test_without_a_match_the_page_says_so(view_server, view_run: Path) -> None:
    cid, pid, domain, _ = _first(view_run)
    _, _, page = view_server.get(_url(view_run, cid))
    assert f"No human conversation of participant {pid!r} in domain {domain!r} in this run" in html.unescape(page)


def test_bad_human_data_is_named_on_the_page(view_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "human"
    bad.mkdir()
    (bad / "judgements.csv").write_text("conversation_id,arm,rank\nc1,GEN,seven\n")
    server = serve([view_run], bad)
    try:
        cid, _, _, _ = _first(view_run)
        status, _, page = server.get(_url(view_run, cid))
    finally:
        server.close()
    assert status == 200
    text = html.unescape(page)
    assert "The human data could not be read" in text and "judgements.csv" in text and "rank" in text


def test_in_the_browser_the_toggle_swaps_letters_and_names(watched, human_server, view_run: Path) -> None:
    cid, _, _, letters = _first(view_run)
    page = no_favicon(watched.page)
    page.goto(human_server.url + _url(view_run, cid))
    labels = page.locator("#simulated .arm-label")
    assert set(labels.all_inner_texts()) <= set(letters.values())
    assert page.locator("#human").is_visible() and page.locator("#simulated").is_visible()
    sim_box, human_box = page.locator("#simulated").bounding_box(), page.locator("#human").bounding_box()
    assert sim_box and human_box and human_box["x"] > sim_box["x"] + sim_box["width"] - 1  # side by side
    assert "HUMAN SAID" in page.locator("#human").inner_text()
    page.click("#arms-toggle")
    page.wait_for_url("**arms=1")
    assert set(page.locator("#simulated .arm-label").all_inner_texts()) == set(letters)
    page.click("#arms-toggle")
    page.wait_for_url(lambda url: "arms=1" not in url)
    assert set(page.locator("#simulated .arm-label").all_inner_texts()) == set(letters.values())
    assert page.locator("details.call").first.get_attribute("open") is None  # calls collapsed by default
    watched.assert_clean()


@pytest.mark.parametrize("version", [1, 3])
def test_a_store_of_an_older_simlab_still_shows_its_sessions(view_run: Path, tmp_path: Path, version: int) -> None:
    from tests.test_store import _downgrade_to_v1, _downgrade_to_v3

    run = tmp_path / view_run.name
    shutil.copytree(view_run, run)
    {1: _downgrade_to_v1, 3: _downgrade_to_v3}[version](run / "store.sqlite")
    before = (run / "store.sqlite").read_bytes()
    cid, _, _, letters = _first(run)
    server = serve([run])
    try:
        status, _, page = server.get(_url(run, cid))
        named = server.get(_url(run, cid) + "?arms=1")[2]
    finally:
        server.close()
    assert status == 200 and "Final answers" in page and "Model calls (" in page
    assert all(f'data-arm="{arm}"' in named for arm in letters)
    assert (run / "store.sqlite").read_bytes() == before  # read, never migrated


def test_a_human_session_in_the_run_itself_is_matched(view_run: Path, tmp_path: Path) -> None:
    run = tmp_path / view_run.name
    shutil.copytree(view_run, run)
    cid, pid, domain, letters = _first(run)
    with sqlite3.connect(run / "store.sqlite") as conn:
        conn.execute("INSERT INTO participants (participant_id, source) VALUES (?, 'human')", (pid,))
        conn.execute("INSERT INTO sessions (conversation_id, participant_id, source, domain, record_sha256, completed_at) "
                     "VALUES ('own-h', ?, 'human', ?, 'x', '2026-12-08T00:00:00')", (pid, domain))
        conn.execute("INSERT INTO conversations (conversation_id, participant_id, source, domain, in_domain, arm_letters, "
                     "repeat, n_turns, gen_error, max_turns_reached) SELECT 'own-h', participant_id, 'human', domain, "
                     "in_domain, arm_letters, 0, 1, 0, 0 "
                     "FROM conversations WHERE conversation_id = ?", (cid,))
        conn.execute("INSERT INTO turns (conversation_id, turn, role, text, gen_error) VALUES ('own-h', 0, 'user', "
                     "'a person of the run <i>itself</i>', 0)")
    server = serve([run])
    try:
        page = server.get(_url(run, cid))[2]
    finally:
        server.close()
    assert "<code>own-h</code>" in page and f"from run {run.name}" in page
    assert "a person of the run &lt;i&gt;itself&lt;/i&gt;" in page
