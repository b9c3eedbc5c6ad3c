"""The viewer's runs pages: the list of runs given, and one run's overview."""

from __future__ import annotations

from aiohttp import web

from simlab.view.core import render

__all__ = ["setup"]


async def index(request: web.Request) -> web.Response:
    """Every run of this view."""
    return render(request, "index.html.j2")


def setup(app: web.Application) -> None:
    """Register this module's routes on ``app``."""
    app.router.add_get("/", index, name="index")
