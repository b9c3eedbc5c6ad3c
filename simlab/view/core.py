"""What every page of the viewer shares: the runs it was given (read-only), the human data, the
Jinja2 environment (autoescaped, keys redacted), and the security headers of every response."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from simlab.report.templating import finalize
from simlab.store.connection import STORE_FILE
from simlab.store.readers import open_readonly

__all__ = ["CSP", "IN_PROGRESS_S", "STATE", "RunHandle", "ViewState", "conversation_url", "environment", "render",
           "security_headers"]

IN_PROGRESS_S = 60.0
"""A run whose write-ahead log changed this recently counts as in progress (its pages refresh)."""

# Strict: only the app's own script and stylesheet, no inline script, nothing from another origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@dataclass(frozen=True)
class RunHandle:
    """One run directory given on the command line; ``run_id`` is its folder name (unique per view)."""

    run_id: str
    path: Path

    def connect(self) -> sqlite3.Connection:
        """A new read-only connection to the run's store (the run may still be writing it)."""
        return open_readonly(self.path)

    def version(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        """(mtime, size) of the store file and of its write-ahead log: a cache built from the store
        is current while this is unchanged (a writer appends to the log, a checkpoint rewrites the file)."""
        return _stat(self.path / STORE_FILE), _stat(self.path / f"{STORE_FILE}-wal")

    def in_progress(self) -> bool:
        """Whether a run seems to be writing the store now: its write-ahead log holds pages written
        within ``IN_PROGRESS_S`` (a reader's log is empty; a finished run's writer removes or stops
        touching it)."""
        wal = _stat(self.path / f"{STORE_FILE}-wal")
        return wal is not None and wal[1] > 0 and time.time() - wal[0] / 1e9 < IN_PROGRESS_S


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def conversation_url(run_id: str, conversation_id: str) -> str:
    """The viewer's URL of one conversation (each part quoted whole: an id may hold ``/``, ``?`` or ``#``).

    >>> conversation_url("quickstart-1a2b", "p01:values")
    '/runs/quickstart-1a2b/sessions/p01:values'
    """
    return f"/runs/{quote(run_id, safe=':')}/sessions/{quote(conversation_id, safe=':')}"


@dataclass
class ViewState:
    """The runs and human data one viewer serves; nothing outside them is ever opened."""

    runs: dict[str, RunHandle]
    human: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Caches the pages keep between requests (keyed by page module)."""

    def run(self, run_id: str) -> RunHandle:
        """The run named in a URL, or 404: a URL cannot name a path, only a run given at start."""
        handle = self.runs.get(run_id)
        if handle is None:
            raise web.HTTPNotFound(text=f"no run {run_id!r} in this view")
        return handle


STATE: web.AppKey[ViewState] = web.AppKey("simlab_view_state", ViewState)


_ENV: Environment | None = None


def environment() -> Environment:
    """The viewer's templates (``simlab/view/templates``), autoescaped, undefined names an error."""
    global _ENV
    if _ENV is None:
        _ENV = Environment(loader=PackageLoader("simlab.view", "templates"),
                           autoescape=select_autoescape(enabled_extensions=("html", "j2"), default=True),
                           undefined=StrictUndefined, finalize=finalize, trim_blocks=True, lstrip_blocks=True)
        _ENV.globals["conversation_url"] = conversation_url
        _ENV.filters["segment"] = lambda text: quote(str(text), safe=":")
    return _ENV


def render(request: web.Request, template: str, **context: Any) -> web.Response:
    """A page from ``template`` (which extends ``_base.html.j2``), as an HTML response."""
    state = request.app[STATE]
    html = environment().get_template(template).render(runs=list(state.runs.values()), request=request, **context)
    return web.Response(text=html, content_type="text/html", charset="utf-8")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read-only (GET and HEAD only) and every response with a strict CSP and no sniffing."""
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # errors (404, 405) carry the same headers
        _secure(exc.headers)
        raise
    _secure(response.headers)
    return response


def _secure(headers: Any) -> None:
    headers["Content-Security-Policy"] = CSP
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
