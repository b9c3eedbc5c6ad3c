"""The report in real headless Chromium: loads without console errors, no injected script runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from _payloads import PAYLOADS

from simlab.report import write_run_report

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    """Playwright driving the system Chromium (skips without it unless SIMLAB_REQUIRE_BROWSER=1)."""
    required = os.environ.get("SIMLAB_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("SIMLAB_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright not installed")
    if not (Path(CHROMIUM).is_file() or shutil.which("chromium")):
        if required:
            pytest.fail(f"SIMLAB_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (source .ci/browser-deps)")
        pytest.skip("Chromium not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                              args=FLAGS)
        yield b
        b.close()


def _load(browser, path: Path, shot: Path | None = None) -> dict:
    """Open a file, collect console messages and page errors, report the DOM's tell-tales."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    messages: list[tuple[str, str]] = []
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: messages.append((m.type, m.text)))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_timeout(300)  # let any onerror/onload handler fire
    state = page.evaluate("""() => ({
        title: document.title,
        pwned: document.querySelectorAll('[data-pwned]').length,
        scripts: document.scripts.length,
        imgs: document.querySelectorAll('img').length,
        text: document.body.innerText,
    })""")
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    page.close()
    return dict(state, messages=messages, errors=errors, requests=[u for u in requests if u != path.as_uri()])


def test_payloads_do_not_execute_in_chromium(browser, run_copy: Path, tmp_path: Path):
    report = write_run_report(run_copy, n_boot=10)
    shot = tmp_path / "report.png"
    state = _load(browser, report, shot)
    assert state["title"].startswith("simlab fidelity report")
    assert state["pwned"] == 0 and state["scripts"] == 0 and state["imgs"] == 0
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert state["requests"] == []  # fully offline: nothing fetched
    assert PAYLOADS["script"] in state["text"]  # the payload is visible as text
    assert shot.stat().st_size > 50_000


def test_detector_catches_an_unescaped_payload(browser, tmp_path: Path):
    """Control: the same checks do fire on a page that embeds the payloads raw (so the test above can fail)."""
    page = tmp_path / "raw.html"
    page.write_text(f"<html><head><title>simlab fidelity report</title></head><body>{PAYLOADS['img']}"
                    f"{PAYLOADS['script']}</body></html>")
    state = _load(browser, page)
    assert state["title"] == "PWNED-script" and state["pwned"] == 1


def test_synthetic_comparison_report_renders_cleanly(browser, tmp_path: Path):
    from simlab.fidelity import compare
    from simlab.fidelity.synthetic import make_synthetic
    from simlab.report import write_html

    tables = make_synthetic(30, strengths={"GEN": 0, "PROMPT": 0.5, "DPFT": 1, "PPFT": 1.5},
                            position_bias={"sim_dynamic": 1.0}, preference_sd=1.0, seed=2)
    path = write_html(compare(tables, n_boot=10), tmp_path / "syn.html", tables=tables)
    shot = tmp_path / "syn.png"
    state = _load(browser, path, shot)
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert "6. Text-level trait biases" in state["text"] and shot.stat().st_size > 100_000
