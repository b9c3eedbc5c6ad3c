"""The viewer's aiohttp application: the shared state, the security middleware, the static files
and each page module's routes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from simlab.errors import InputError
from simlab.view import conversation, fidelity_page, runs, sessions
from simlab.view.core import STATE, RunHandle, ViewState, security_headers

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
    return app
