"""Fixtures of the viewer tests: a real stub-server run with HTML/JS payloads in its texts, the viewer
serving it on 127.0.0.1 (a real aiohttp server in a thread), and Playwright driving Debian's Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "report"))
from _payloads import PERSONA_MARK, PERSONA_PAYLOAD, REPLY_PAYLOAD  # noqa: E402

# Playwright on Debian's Chromium, the report tests' fixture (skips without it unless SIMLAB_REQUIRE_BROWSER=1)
from test_report_browser import browser  # noqa: E402, F401


def shared_data() -> Path:
    """``$SIMLAB_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("SIMLAB_SHARED_DATA") or REPO.parent / "shared" / "data")


def _script(body: dict[str, Any]) -> str | None:
    if body.get("response_format"):
        return None  # structured instruments: schema-generated JSON from the stub
    text = json.dumps(body, ensure_ascii=False)
    if PERSONA_MARK in text and "persona" in text.lower():
        return f"Hello, as I said: {PERSONA_PAYLOAD}"
    return REPLY_PAYLOAD


@pytest.fixture(scope="session")
def view_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run (stub server, quickstart protocol, 3 personas) whose replies and persona texts carry
    HTML/JS payloads."""
    from simlab.config import default_config, parse_config
    from simlab.run import run_experiment
    from simlab.testing import StubServer

    tmp = tmp_path_factory.mktemp("view_run")
    lines = (REPO / "personas" / "sample.jsonl").read_text().splitlines()[:3]
    personas = []
    for line in lines:
        p = json.loads(line)
        p["self_description"] = PERSONA_PAYLOAD
        personas.append(json.dumps(p))
    (tmp / "personas.jsonl").write_text("\n".join(personas) + "\n")
    with StubServer(script=_script) as srv:
        d = default_config().public_dict()
        d["endpoints"] = {"local": {"kind": "vllm", "base_url": srv.base_url}}
        d["out_dir"] = str(tmp / "runs")
        d["personas"] = str(tmp / "personas.jsonl")
        d["summary"]["cache_dir"] = str(tmp / "summaries")
        d["protocol"]["domains"] = ["unguided", "emotional_wellbeing"]  # 6 sessions: the filters have two domains
        summary = asyncio.run(run_experiment(parse_config(d), progress=False, report=False))
    return Path(summary.run_dir)


class ViewServer:
    """``simlab.view.make_app(runs, human)`` served on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, runs: list[Path], human: Path | None = None) -> None:
        from aiohttp import web

        from simlab.view import make_app

        self._app = make_app(runs, human=human)
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self._app, access_log=None)
        # the loop runs in its thread from the start: Playwright's sync API keeps a loop running in this one
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._runner.setup(), self._loop).result(30)
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(site.start(), self._loop).result(30)
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        """``GET path``: status, headers, body (plain urllib, no browser)."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture
def view_server(view_run: Path) -> Iterator[ViewServer]:
    """The viewer of ``view_run`` (no human data)."""
    server = ViewServer([view_run])
    yield server
    server.close()


class PageWatch:
    """A Playwright page that records console errors, page errors and every request's URL."""

    def __init__(self, browser: Any) -> None:  # noqa: F811 (the fixture's value)
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def assert_clean(self) -> None:
        """No console error, no page error, no request leaving 127.0.0.1, no payload executed."""
        assert not self.errors, self.errors
        assert not [m for m in self.console if m[0] == "error"], self.console
        assert all(u.startswith("http://127.0.0.1:") for u in self.requests), self.requests
        state = self.page.evaluate("() => ({title: document.title, pwned: document.querySelectorAll('[data-pwned]').length})")
        assert "PWNED" not in state["title"] and state["pwned"] == 0, state


@pytest.fixture
def watched(browser: Any) -> Iterator[PageWatch]:  # noqa: F811 (the fixture)
    watch = PageWatch(browser)
    yield watch
    watch.page.close()
