"""The viewer's sessions table: every conversation of a run (completed and failed), 50 a page,
sorted by a column header, filtered by a GET form; the whole state is in the URL, so a link
shares it and the back button restores it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from simlab.view.core import STATE, render
from simlab.view.runs import REFRESH_S
from simlab.view.session_index import PAGE_SIZE, SORTS, SessionFilter, index_of, parse_filter

__all__ = ["setup", "table_url"]


def table_url(run_id: str, f: SessionFilter, **change: str | int | None) -> str:
    """The URL of the table of ``run_id`` with the filters of ``f`` and its sort and page, each
    ``change`` replacing (or, with None, dropping) one parameter; defaults (sort by conversation,
    ascending, page 1) are left out.

    >>> table_url("r1", SessionFilter(domain=("values",), page=3), sort="rating", order="desc", page=None)
    '/runs/r1/sessions?domain=values&sort=rating&order=desc'
    """
    pairs = [*f.active(), ("sort", f.sort), ("order", f.order), ("page", str(f.page))]
    pairs = [(k, v) for k, v in pairs if k not in change]
    pairs += [(k, str(v)) for k, v in change.items() if v is not None]
    pairs = [(k, v) for k, v in pairs if (k, v) not in _DEFAULTS]
    query = urlencode(pairs)
    return f"/runs/{quote(run_id, safe=':')}/sessions" + (f"?{query}" if query else "")


_DEFAULTS = {("sort", "conversation"), ("order", "asc"), ("page", "1")}


async def sessions_page(request: web.Request) -> web.Response:
    """The sessions table of one run."""
    state = request.app[STATE]
    handle = state.run(request.match_info["run_id"])
    try:
        f = parse_filter(request.query)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad query parameter: {exc}. Remove it from the address or fix its value.") from None
    index = index_of(state, handle)
    page = index.page(f)
    choices = index.choices()
    for key, present in choices.items():  # a value named in the URL stays selectable, even if no session has it
        present.extend(v for v in map(str, getattr(f, key)) if v not in present)
    in_progress = handle.in_progress()
    headers = []
    for key, label in (("conversation", "conversation"), ("participant", "participant"), ("source", "source"),
                       ("domain", "domain"), ("chosen", "arms (chosen)"), ("status", "status"),
                       ("stop_reason", "stop reason"), ("n_turns", "turns"), ("rating", "ratings"),
                       ("gen_error", "gen_error")):
        current = f.sort == key
        order = "desc" if current and f.order == "asc" else "asc"
        headers.append({"key": key, "label": label, "url": table_url(handle.run_id, f, sort=key, order=order, page=None),
                        "current": current, "order": f.order if current else None})
    pages = {
        "first": table_url(handle.run_id, f, page=None) if page.page > 1 else None,
        "prev": table_url(handle.run_id, f, page=page.page - 1 if page.page > 2 else None) if page.page > 1 else None,
        "next": table_url(handle.run_id, f, page=page.page + 1) if page.page < page.pages else None,
        "last": table_url(handle.run_id, f, page=page.pages) if page.page < page.pages else None,
    }
    removals = [(k, v, table_url(handle.run_id, _without(f, k, v), page=None)) for k, v in f.active()]
    return render(request, "sessions.html.j2", run=handle, f=f, page=page, headers=headers, pages=pages,
                  removals=removals, choices=choices, page_size=PAGE_SIZE, sorts=list(SORTS),
                  clear_url=table_url(handle.run_id, SessionFilter(sort=f.sort, order=f.order)),
                  in_progress=in_progress, refresh=REFRESH_S if in_progress else None)


def _without(f: SessionFilter, key: str, value: str) -> SessionFilter:
    current = getattr(f, key)
    change: dict[str, Any] = {key: tuple(v for v in current if str(v) != value) if isinstance(current, tuple) else None}
    return replace(f, **change)


def setup(app: web.Application) -> None:
    """Register this module's routes on ``app``."""
    app.router.add_get("/runs/{run_id}/sessions", sessions_page, name="sessions")
