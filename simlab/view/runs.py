"""The viewer's runs pages: the list of runs given (each with its counts), and one run's overview:
sessions per source and domain, failures grouped by cause, model calls, tokens and dollars per
role and arm, the endpoints and the models they served, and the stored config with secrets redacted."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from simlab.redaction import redact_fields
from simlab.store.connection import closing
from simlab.store.readers import StoreCounts, store_counts
from simlab.view.core import STATE, RunHandle, ViewState, render
from simlab.view.session_index import calls_by_endpoint, index_of, read_meta

__all__ = ["RunOverview", "overview", "setup"]

REFRESH_S = 10
"""Seconds between reloads of a page of a run in progress."""


@dataclass(frozen=True)
class RunOverview:
    """What the run page shows of one run."""

    completed: int
    failed: int
    by_source_domain: list[dict[str, Any]]
    """One row per (source, domain): completed and failed sessions."""
    counts: StoreCounts
    endpoints: list[dict[str, Any]]
    """One row per configured endpoint: its name, kind, address and the (model, served model) pairs it answered."""
    meta: dict[str, Any]
    """The stored metadata (config and the rest), secrets redacted."""


def _store_facts(handle: RunHandle) -> tuple[StoreCounts, list[tuple[str, str, str, int, int]], dict[str, Any]]:
    # the scans of every model call: on a connection of their own, so they can run off the server's thread
    with closing(handle.connect()) as conn:
        return store_counts(conn), calls_by_endpoint(conn), read_meta(conn)


async def overview(state: ViewState, handle: RunHandle) -> RunOverview:
    """The overview of ``handle``'s run, rebuilt when the store changed (kept in ``state.extra``)."""
    cache: dict[str, tuple[object, RunOverview]] = state.extra.setdefault("run_overview", {})
    version = handle.version()
    held = cache.get(handle.run_id)
    if held is not None and held[0] == version:
        return held[1]
    index = index_of(state, handle)
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for status, source, domain, n in index.counts():
        cell = cells.setdefault((source, domain), {"source": source, "domain": domain, "completed": 0, "failed": 0})
        cell[status] = cell.get(status, 0) + n
    # one scan per store version: a request arriving while it runs (or the start-up warm-up) waits for it
    pending: dict[str, tuple[object, asyncio.Future[Any]]] = state.extra.setdefault("run_overview_pending", {})
    scan = pending.get(handle.run_id)
    if scan is None or scan[0] != version:
        scan = (version, asyncio.get_running_loop().run_in_executor(None, _store_facts, handle))
        pending[handle.run_id] = scan
    try:
        counts, calls, stored = await asyncio.shield(scan[1])
    finally:
        if scan[1].done() and pending.get(handle.run_id) is scan:
            del pending[handle.run_id]
    meta = redact_fields(stored)
    served: dict[str, list[dict[str, Any]]] = {}
    for endpoint, model, served_model, n_calls, errors in calls:
        served.setdefault(endpoint, []).append({"model": model, "served_model": served_model, "calls": n_calls,
                                                "errors": errors})
    config = meta.get("config")
    configured = (config.get("endpoints") if isinstance(config, dict) else None) or {}
    endpoints = []
    for name in sorted(set(configured) | set(served)):
        given = configured.get(name)
        conf: dict[str, Any] = given if isinstance(given, dict) else {}
        endpoints.append({"name": name, "kind": conf.get("kind", ""), "base_url": conf.get("base_url", ""),
                          "models": served.get(name, [])})
    rows = sorted(cells.values(), key=lambda c: (c["source"], c["domain"]))
    result = RunOverview(completed=sum(c["completed"] for c in rows), failed=sum(c["failed"] for c in rows),
                         by_source_domain=rows, counts=counts, endpoints=endpoints, meta=meta)
    cache[handle.run_id] = (version, result)
    return result


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


async def index(request: web.Request) -> web.Response:
    """Every run of this view, with its sessions completed and failed."""
    state = request.app[STATE]
    rows = []
    for handle in state.runs.values():  # the sessions summary only: the list stays quick however many calls a run made
        index = index_of(state, handle)
        by_status = {"completed": 0, "failed": 0}
        for status, _, _, n in index.counts():
            by_status[status] = by_status.get(status, 0) + n
        rows.append({"run": handle, **by_status, "in_progress": handle.in_progress(),
                     "created_at": index.created_at()})
    refresh = REFRESH_S if any(r["in_progress"] for r in rows) else None
    return render(request, "index.html.j2", rows=rows, refresh=refresh)


async def run_page(request: web.Request) -> web.Response:
    """One run's overview."""
    state = request.app[STATE]
    handle = state.run(request.match_info["run_id"])
    o = await overview(state, handle)
    in_progress = handle.in_progress()
    config = o.meta.get("config")
    other = {k: _pretty(v) for k, v in o.meta.items() if k not in ("config", "experiment")}
    return render(request, "run.html.j2", run=handle, o=o, config=_pretty(config) if config is not None else None,
                  other=other, in_progress=in_progress, refresh=REFRESH_S if in_progress else None)


def setup(app: web.Application) -> None:
    """Register this module's routes on ``app``."""
    app.router.add_get("/", index, name="index")
    app.router.add_get("/runs/{run_id}", run_page, name="run")
