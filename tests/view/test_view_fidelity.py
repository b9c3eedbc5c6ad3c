"""The viewer's fidelity page: the report's sections of a real stub-server run (12 participants, so the
analyses estimate and draw charts), against human data, under the viewer's strict CSP in Chromium,
each comparison linked to its sessions; the report's stylesheet served as a file."""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_view_conversation import human_copy, no_favicon, serve

from simlab.report.charts import Point, forest
from simlab.view.core import STATE, RunHandle
from simlab.view.fidelity_page import N_BOOT_KEY, _store_stamp, svg_without_inline_style
from tests.view.conftest import REPO, ViewServer

FAST_BOOT = 20  # the page's CIs from a few draws: the tests check the page, not the statistics


@pytest.fixture(scope="module")
def twelve_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the 12 sample personas in one domain, one turn (stub server)."""
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment
    from simlab.testing import StubServer

    tmp = tmp_path_factory.mktemp("twelve")
    with StubServer() as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(tmp / "runs")
        d["personas"] = str(REPO / "personas" / "sample.jsonl")
        d["summary"]["cache_dir"] = str(tmp / "summaries")
        d["protocol"]["domains"] = ["unguided"]
        d["protocol"]["max_turns"] = 1
        d["limit"] = 12
        summary = asyncio.run(run_experiment(parse_config(d), progress=False, report=False))
    return Path(summary.run_dir)


@pytest.fixture(scope="module")
def twelve_human(twelve_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return human_copy(twelve_run, tmp_path_factory.mktemp("twelve_human") / "human")


def _get(server: ViewServer, path: str) -> tuple[int, str]:
    """``GET path`` waiting as long as the analyses take (the fixture's client gives up after 30 s)."""
    import urllib.request

    with urllib.request.urlopen(server.url + path, timeout=600) as r:
        return r.status, r.read().decode()


def _fast(server: ViewServer) -> ViewServer:
    server._app[STATE].extra[N_BOOT_KEY] = FAST_BOOT
    return server


@pytest.fixture(scope="module")
def fidelity_server(twelve_run: Path, twelve_human: Path) -> Iterator[ViewServer]:
    """One viewer for the module: the analyses run once (the first request) and the rest read the cache."""
    server = _fast(serve([twelve_run], twelve_human))
    yield server
    server.close()


def test_charts_lose_their_inline_styles_and_keep_their_look() -> None:
    svg = forest([Point("GEN", "human", 0.1, 0.0, 0.2), Point("GEN", "sim_dynamic", 0.3, 0.1, 0.5)],
                 title="<b>t</b>", xlabel="x")
    assert 'style="' in svg and "<style" in svg  # what matplotlib writes
    out = svg_without_inline_style(svg)
    assert 'style="' not in out and "<style" not in out
    assert 'fill="#ffffff"' in out and 'stroke="#e69f00"' in out.lower()
    assert out.startswith('<svg stroke-linejoin="round" stroke-linecap="butt"')
    assert out.count("<text") == svg.count("<text") and "&lt;b&gt;t&lt;/b&gt;" in out


def test_the_report_stylesheet_is_a_file(view_server) -> None:
    status, headers, css = view_server.get("/static/report.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    assert ".verdicts" in css and ".analysis" in css and "{%" not in css
    status, _, body = view_server.get("/runs/nope/fidelity")
    assert status == 404 and "no run 'nope'" in body


def test_a_write_to_the_store_makes_a_new_cache_key(view_run: Path, tmp_path: Path) -> None:
    run = tmp_path / view_run.name
    shutil.copytree(view_run, run)
    handle = RunHandle(run_id=run.name, path=run)
    before = _store_stamp(handle)
    with sqlite3.connect(run / "store.sqlite") as conn:
        conn.execute("INSERT INTO failures (conversation_id, participant_id, domain, error_type, reason, failed_at) "
                     "VALUES ('x:unguided', 'x', 'unguided', 'Boom', 'because', '2026-12-08T00:00:00')")
    assert _store_stamp(handle) != before


@pytest.mark.slow  # the analyses of a second run: several seconds on 2 cores
def test_the_page_of_a_run_alone(view_server, view_run: Path) -> None:
    _fast(view_server)
    status, page = _get(view_server, f"/runs/{view_run.name}/fidelity")
    assert status == 200
    text = html.unescape(page)
    assert "No human data given (simlab view … --human DATA)" in text
    assert f"from {FAST_BOOT} bootstrap draws" in text and "--n-boot 2000" in text
    for title in ("1. Aggregate hierarchy", "4. Position bias", "5. Feedback dynamics"):
        assert title in text
    assert "only 3 participant(s)" in text  # the report's own "not available" sentence
    assert "<script>document.title" not in page
    assert f"/runs/{view_run.name}/sessions?source=sim_dynamic&amp;first_shown_chosen=1" in page
    assert f"/runs/{view_run.name}/sessions?arm=GEN" in page and f"/runs/{view_run.name}/sessions?status=failed" in page


@pytest.mark.slow  # the analyses of 12 participants against human data: several seconds on 2 cores
def test_results_are_computed_once_and_cached(fidelity_server, twelve_run: Path) -> None:
    url = f"/runs/{twelve_run.name}/fidelity"
    fidelity_server._app[STATE].extra.pop("fidelity_page.results", None)
    started = time.perf_counter()
    first = _get(fidelity_server, url)[1]
    cold = time.perf_counter() - started
    started = time.perf_counter()
    again = fidelity_server.get(url)[2]
    warm = time.perf_counter() - started
    assert warm < cold / 3 and warm < 1.0, (cold, warm)
    assert re.sub(r"\s+", " ", first) == re.sub(r"\s+", " ", again)
    cache = fidelity_server._app[STATE].extra["fidelity_page.results"]
    assert len(cache) == 1


@pytest.mark.slow  # the same analyses (computed once per module)
def test_the_page_against_human_data_in_the_browser(browser, fidelity_server, twelve_run: Path, watched) -> None:
    _get(fidelity_server, f"/runs/{twelve_run.name}/fidelity")  # the analyses, before the browser's timeout
    page = no_favicon(watched.page)
    page.goto(f"{fidelity_server.url}/runs/{twelve_run.name}/fidelity")
    assert "Compared with the human data" in page.locator(".fidelity-page .note").first.inner_text()
    charts = page.locator(".chart svg")
    assert charts.count() >= 2
    box = charts.first.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 50
    # the presentation attributes draw: the background is white, not the default black fill
    fill = page.evaluate("() => getComputedStyle(document.querySelector('.chart svg path')).fill")
    assert fill == "rgb(255, 255, 255)", fill
    verdicts = page.locator("#hierarchy .verdicts").inner_text()
    assert "Not available" not in verdicts or "human" in verdicts
    link = page.locator("#position .sessions-links a").first
    assert link.get_attribute("href") == f"/runs/{twelve_run.name}/sessions?source=sim_dynamic&first_shown_chosen=1"
    assert json.dumps(page.evaluate("() => document.styleSheets.length")) in ("2", "3")
    watched.assert_clean()


@pytest.mark.slow  # a run of two simulator variants and their leaderboard: tens of seconds on 2 cores
def test_two_variants_get_the_reports_leaderboard(tmp_path: Path) -> None:
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment
    from simlab.testing import StubServer

    with StubServer() as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(tmp_path / "runs")
        d["personas"] = str(REPO / "personas" / "sample.jsonl")
        d["summary"]["cache_dir"] = str(tmp_path / "summaries")
        d["protocol"]["domains"] = ["unguided"]
        d["protocol"]["max_turns"] = 1
        d["limit"] = 12
        del d["simulator"]
        d["simulators"] = [{"id": v, "rendering": "profile", "sampling": {"max_tokens": 60}} for v in ("a", "b")]
        # in a thread: Playwright's sync API may hold an event loop in this one
        done: list[Path] = []
        thread = threading.Thread(target=lambda: done.append(Path(asyncio.run(
            run_experiment(parse_config(d), progress=False, report=False)).run_dir)))
        thread.start()
        thread.join(300)
        run = done[0]
    human = human_copy(run, tmp_path / "human", source="sim_dynamic:a")
    server = _fast(serve([run], human))
    try:
        status, page = _get(server, f"/runs/{run.name}/fidelity")
    finally:
        server.close()
    assert status == 200
    assert 'id="leaderboard"' in page and "which simulator is most human?" in page
    assert "sim_dynamic:a" in page and "sim_dynamic:b" in page
    board = page[page.index('id="leaderboard"'):page.index('<nav class="sections">')]
    assert 'style="' not in board and "<style" not in board
    assert "Leaderboard not available" in board or "<svg" in board


def test_bad_human_data_is_named_on_the_page(view_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "human"
    bad.mkdir()
    (bad / "judgements.csv").write_text("conversation_id,arm,rank\nc1,GEN,seven\n")
    server = serve([view_run], bad)
    try:
        status, page = _get(server, f"/runs/{view_run.name}/fidelity")
    finally:
        server.close()
    assert status == 200
    text = html.unescape(page)
    assert "The analyses could not run:" in text and "judgements.csv" in text and "rank" in text
    assert "Fix the data named and reload this page." in text
