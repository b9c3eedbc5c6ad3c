"""The viewer's aiohttp application: the shared state, the security middleware, the static files
and each page module's routes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from simlab.errors import InputError
from simlab.store.connection import STORE_FILE
from simlab.view import conversation, fidelity_page, runs, sessions
from simlab.view.core import STATE, RunHandle, ViewState, environment, security_headers
from simlab.view.session_index import index_of

__all__ = ["STATIC_DIR", "make_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


def make_app(run_dirs: Sequence[str | Path], human: str | Path | None = None) -> web.Application:
    """The viewer of ``run_dirs`` (run directories; two with one folder name are an input error) and,
    with ``human``, the human data (a fidelity import) whose conversations are shown side by side."""
    handles: dict[str, RunHandle] = {}
    for given in run_dirs:
        path = Path(given).resolve()
        if not (path / "store.sqlite").is_file():
            raise InputError("not a simlab run directory (no store.sqlite in it)", file=path)
        if path.name in handles:
            raise InputError(f"two runs named {path.name!r}: give each run once", file=path)
        handles[path.name] = RunHandle(run_id=path.name, path=path)
    app = web.Application(middlewares=[security_headers])
    app[STATE] = ViewState(runs=handles, human=None if human is None else Path(human).resolve())
    app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
    for page in (runs, sessions, conversation, fidelity_page):
        page.setup(app)
    app.on_startup.append(_warm)
    app.on_cleanup.append(_cool)
    return app


async def _warm(app: web.Application) -> None:
    # Before the first request: each run's sessions summary (so the first table answers at once) and,
    # in the background, its overview (the scans of every model call, seconds on a big run).
    state = app[STATE]
    env = environment()
    for name in env.list_templates(extensions=["j2"]):  # compiled once, not on a user's first visit
        env.get_template(name)
    tasks = []
    for handle in state.runs.values():
        try:
            index_of(state, handle)
        except sqlite3.DatabaseError as exc:
            raise InputError(f"not a readable simlab run store ({exc}); nothing was changed",
                             file=handle.path / STORE_FILE) from None
        task = asyncio.create_task(runs.overview(state, handle))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failure shows on the run's page
        tasks.append(task)
    state.extra["warming"] = tasks


async def _cool(app: web.Application) -> None:
    for task in app[STATE].extra.pop("warming", []):
        task.cancel()
    for _, index in app[STATE].extra.pop("session_index", {}).values():
        index.close()
