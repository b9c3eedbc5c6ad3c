"""The viewer's fidelity page: the report's analysis sections (verdicts, tables, charts) for one run,
computed with ``simlab.fidelity`` as ``simlab report --run`` computes them (against the ``--human``
data when given) and cached per version of the store and the human data, each linked to the sessions
behind it in the sessions table. Also ``/static/report.css``: the report's stylesheet, served as a
file because the viewer's Content-Security-Policy forbids inline styles."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from markupsafe import Markup, escape

from simlab.errors import InputError
from simlab.fidelity import analyze, compare, load_human, normalise
from simlab.fidelity.result import FidelityResult
from simlab.report.sections import Section, build_sections
from simlab.report.templating import environment as report_environment
from simlab.store.readers import load_run, run_meta
from simlab.tables import Tables, concat
from simlab.view.core import STATE, RunHandle, ViewState, render

__all__ = ["N_BOOT_KEY", "VIEW_N_BOOT", "Computed", "compute", "links_for", "setup", "svg_without_inline_style"]

VIEW_N_BOOT = 200
"""Bootstrap draws per CI on the fidelity page (the report's default; ``simlab report --n-boot`` for more)."""

_CACHE = "fidelity_page.results"
N_BOOT_KEY = "fidelity_page.n_boot"
"""``state.extra[N_BOOT_KEY]``: the draws to use instead of ``VIEW_N_BOOT`` (fast tests set a few)."""

# SVG presentation attributes: what matplotlib writes into style="…" can be written as attributes,
# which a Content-Security-Policy without 'unsafe-inline' still applies
_PRESENTATION = frozenset({
    "fill", "fill-opacity", "fill-rule", "stroke", "stroke-width", "stroke-opacity", "stroke-linecap",
    "stroke-linejoin", "stroke-dasharray", "stroke-dashoffset", "stroke-miterlimit", "opacity", "font-family",
    "font-size", "font-style", "font-weight", "text-anchor", "dominant-baseline", "clip-rule", "color",
    "visibility", "display", "letter-spacing", "word-spacing", "baseline-shift", "alignment-baseline",
    "paint-order", "shape-rendering", "text-rendering", "mix-blend-mode",
})
_STYLE_ATTR = re.compile(r'\sstyle="([^"]*)"')
_STYLE_ELEMENT = re.compile(r"<style[^>]*>(.*?)</style>", re.S)
_SVG_OPEN = re.compile(r"<svg\b")


def svg_without_inline_style(svg: str) -> str:
    """``svg`` (matplotlib's) with every ``style="…"`` attribute written as presentation attributes and
    its ``<style>`` element's defaults moved onto the root, so it draws the same under ``style-src 'self'``.

    >>> svg_without_inline_style('<svg><defs><style type="text/css">*{stroke-linecap: butt}</style></defs>'
    ...                          '<path style="fill: #ffffff; stroke: #000"/></svg>')
    '<svg stroke-linecap="butt"><defs></defs><path fill="#ffffff" stroke="#000"/></svg>'
    """
    root_defaults: list[str] = []

    def declarations(text: str) -> list[str]:
        out = []
        for part in text.split(";"):
            name, sep, value = part.partition(":")
            name, value = name.strip().lower(), value.strip()
            if sep and name in _PRESENTATION and value:
                out.append(f'{name}="{escape(value)}"')
        return out

    def element(m: re.Match[str]) -> str:
        body = m.group(1)
        if body.lstrip().startswith("*{") or body.lstrip().startswith("* {"):
            root_defaults.extend(declarations(body.strip()[1:].strip().strip("{}")))
        return ""

    def attribute(m: re.Match[str]) -> str:
        found = declarations(m.group(1).replace("&quot;", '"').replace("&#39;", "'"))
        return (" " + " ".join(found)) if found else ""

    out = _STYLE_ATTR.sub(attribute, _STYLE_ELEMENT.sub(element, svg))
    if root_defaults:  # inherited, so each element's own attribute still wins as its style did
        out = _SVG_OPEN.sub("<svg " + " ".join(root_defaults), out, count=1)
    return out


# ------------------------------------------------------------------------------ computing the results


@dataclass
class Computed:
    """One run's fidelity results as the page shows them."""

    sections: list[Section]
    sources: list[str]
    note: str
    n_boot: int
    arms: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    simulated: list[str] = field(default_factory=list)
    leaderboard_html: str = ""
    """The report's leaderboard of the run's simulator variants (two or more, with human data)."""
    leaderboard_note: str = ""


def _stamp(path: Path | None) -> tuple[Any, ...]:
    """What changes when a file (or any file of a folder) changes: names, sizes, mtimes."""
    if path is None:
        return ()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _store_stamp(handle: RunHandle) -> tuple[Any, ...]:
    # a run in progress writes the WAL file first: it counts as much as the store
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                 for p in (handle.path / "store.sqlite", handle.path / "store.sqlite-wal") if p.exists())


def _excluded(meta: Mapping[str, Any]) -> set[str]:
    """Autograde dimensions the run's stored reliability results flag (as ``simlab report`` leaves them out)."""
    stored = meta.get("autograde_reliability") or []
    return {str(r["dimension"]) for r in stored if isinstance(r, Mapping) and r.get("reliable") is False}


_ONE_AT_A_TIME = threading.Lock()  # matplotlib's pyplot (the charts) is not thread-safe


def compute(handle: RunHandle, human: Path | None, n_boot: int = VIEW_N_BOOT) -> Computed:
    """The run's analyses (compared with ``human`` when given) and the report's sections of them."""
    with _ONE_AT_A_TIME:
        return _compute(handle, human, n_boot)


def _compute(handle: RunHandle, human: Path | None, n_boot: int) -> Computed:
    run = load_run(handle.path)
    meta = run_meta(handle.path)
    seed = int(meta.get("seed") or 0)
    excluded = _excluded(meta)
    tables: Tables = run
    if human is not None:
        human_tables = load_human(human)
        tables = concat(normalise(run, origin=str(handle.path), default_source=None),
                        normalise(human_tables, origin=str(human)))
        result: FidelityResult = compare(run, human_tables, n_boot=n_boot, seed=seed, exclude_dimensions=excluded)
        note = f"Compared with the human data {human}."
        board_html, board_note = _leaderboard(tables, n_boot=n_boot, seed=seed, excluded=excluded)
    elif not len(run.judgements):
        return Computed(sections=[], sources=[], n_boot=n_boot,
                        note="The run has no completed sessions yet: nothing to analyse.")
    else:
        board_html = board_note = ""
        tables = normalise(run, origin=str(handle.path), default_source=None)
        note = ("No human data given (simlab view … --human DATA): the simulated run alone"
                + (f", {', '.join(tables.sources)} side by side." if len(tables.sources) > 1 else "."))
        try:
            result = analyze(tables, n_boot=n_boot, seed=seed, exclude_dimensions=excluded)
        except InputError as exc:
            return Computed(sections=[], sources=tables.sources, n_boot=n_boot,
                            note=f"{note} The analyses could not run: {exc}")
    turns = tables.turns
    if turns is not None and tables.conversations is not None and "source" not in turns.columns:
        turns = turns.merge(tables.conversations[["conversation_id", "source"]], on="conversation_id", how="left")
    sections = build_sections(result, turns)
    for s in sections:
        s.charts = [svg_without_inline_style(c) for c in s.charts]
    conv = run.conversations
    return Computed(
        sections=sections, sources=result.sources, note=note, n_boot=n_boot,
        arms=[str(a) for a in run.arms["arm"]] if run.arms is not None and len(run.arms) else
        sorted({str(a) for a in run.judgements["arm"].dropna()}),
        domains=sorted({str(d) for d in conv["domain"].dropna()}) if conv is not None else [],
        simulated=[s for s in (sorted({str(x) for x in conv["source"].dropna()}) if conv is not None else [])
                   if s != "human"],
        leaderboard_html=board_html, leaderboard_note=board_note,
    )


def _leaderboard(tables: Tables, *, n_boot: int, seed: int, excluded: set[str]) -> tuple[str, str]:
    """The report's leaderboard section of the simulator variants in ``tables`` (HTML without inline
    styles), or why there is none; empty for fewer than two variants, as in the report."""
    variants = [s for s in tables.sources if s == "sim_dynamic" or s.startswith("sim_dynamic:")]
    if len(variants) < 2:
        return "", ""
    from simlab.fidelity.fidelity_index import leaderboard
    from simlab.report.leaderboard import leaderboard_context

    try:
        board = leaderboard(tables, n_boot=n_boot, seed=seed, details=False, exclude_dimensions=excluded)
    except InputError as exc:  # e.g. too few participants per variant yet: the sections still stand
        return "", f"Leaderboard not available: {exc.message}"
    html = report_environment().get_template("_leaderboard.html.j2").render(lb=leaderboard_context(board))
    return svg_without_inline_style(html), ""


async def _computed(state: ViewState, handle: RunHandle) -> Computed:
    """The cached results for the store's and the human data's current version; computed in a worker
    thread (analyses take seconds) and once however many requests ask at the same time."""
    key = (handle.run_id, _store_stamp(handle), str(state.human), _stamp(state.human))
    cache: dict[Any, asyncio.Future[Computed]] = state.extra.setdefault(_CACHE, {})
    future = cache.get(key)
    if future is None:
        for old in [k for k in cache if k[0] == handle.run_id]:
            del cache[old]  # an older version of this run's store or human data
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, compute, handle, state.human,
                                      int(state.extra.get(N_BOOT_KEY, VIEW_N_BOOT)))
        cache[key] = future
    try:
        return await asyncio.shield(future)
    except Exception:
        cache.pop(key, None)  # the next request tries again (the data may have been fixed)
        raise


# ------------------------------------------------------------------------------ links to the sessions


def _sessions_link(run_id: str, **params: str) -> str:
    return f"/runs/{quote(run_id, safe='')}/sessions?{urlencode(params)}"


def links_for(run_id: str, key: str, c: Computed) -> list[tuple[str, str]]:
    """(label, sessions-table URL) of the sessions behind one section's comparison.

    >>> c = Computed(sections=[], sources=["sim_dynamic"], note="", n_boot=0, arms=["GEN"], simulated=["sim_dynamic"])
    >>> links_for("r1", "position", c)
    [('sim_dynamic: sessions where the first-shown arm was chosen', '/runs/r1/sessions?source=sim_dynamic&first_shown_chosen=1')]
    """
    if key == "position":
        return [(f"{s}: sessions where the first-shown arm was chosen",
                 _sessions_link(run_id, source=s, first_shown_chosen="1")) for s in c.simulated]
    if key in ("hierarchy", "agreement", "traits"):
        return [(f"arm {a}", _sessions_link(run_id, arm=a)) for a in c.arms]
    if key in ("dynamics", "distributions", "topics", "user_text"):
        return [(f"domain {d}", _sessions_link(run_id, domain=d)) for d in c.domains]
    if key == "gen_errors":
        return [("sessions with a generation error", _sessions_link(run_id, gen_error="1")),
                ("failed sessions", _sessions_link(run_id, status="failed"))]
    return []


# ------------------------------------------------------------------------------ the handlers


async def fidelity_page(request: web.Request) -> web.Response:
    """``/runs/{run_id}/fidelity``: the report's sections of the run with links to their sessions."""
    state = request.app[STATE]
    handle = state.run(request.match_info["run_id"])
    error = ""
    try:
        computed: Computed | None = await _computed(state, handle)
    except InputError as exc:
        computed, error = None, f"The analyses could not run: {exc}. Fix the data named and reload this page."
    except Exception as exc:  # noqa: BLE001 - the page says what failed; the other pages keep working
        computed, error = None, (f"The analyses failed: {type(exc).__name__}: {exc}. simlab report --run "
                                 f"{handle.path} shows the same analyses with the full traceback.")
    sections = []
    if computed is not None:
        sections = [{"s": s, "charts": [Markup(c) for c in s.charts],  # matplotlib's SVG, style attributes rewritten
                     "links": links_for(handle.run_id, s.key, computed)} for s in computed.sections]
    return render(request, "fidelity.html.j2", run=handle, computed=computed, sections=sections, error=error,
                  human=state.human,
                  leaderboard=Markup(computed.leaderboard_html) if computed is not None else "",  # report-escaped
                  failed_link=_sessions_link(handle.run_id, status="failed"),
                  domain_links=[] if computed is None else
                  [(d, _sessions_link(handle.run_id, domain=d)) for d in computed.domains])


_REPORT_CSS: str | None = None


async def report_css(request: web.Request) -> web.Response:
    """The report's stylesheet (``simlab/report/templates/_style.css.j2``) as a file of its own."""
    global _REPORT_CSS
    if _REPORT_CSS is None:
        _REPORT_CSS = report_environment().get_template("_style.css.j2").render()
    return web.Response(text=_REPORT_CSS, content_type="text/css", charset="utf-8")


def setup(app: web.Application) -> None:
    """Register the fidelity page and the report's stylesheet on ``app``."""
    app.router.add_get("/static/report.css", report_css, name="report_css")
    app.router.add_get("/runs/{run_id}/fidelity", fidelity_page, name="fidelity")
