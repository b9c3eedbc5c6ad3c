"""Render a ``Leaderboard`` (``simlab compare``) to one self-contained HTML file: the leaderboard table,
the index and each component as forest plots with their CIs (the humans' split-half row drawn as the
reference), the pairwise tests with their correction, and an anchor per source (``#source-<slug>``)
with its components and comparisons.

Pure rendering, with the run report's conventions (``simlab.report.html``): every text autoescaped
(source names are untrusted), charts as inline SVG, no script, a Content-Security-Policy forbidding one.

>>> from simlab.fidelity.leaderboard_result import Leaderboard, LeaderboardRow
>>> from simlab.fidelity.status import Estimate
>>> lb = Leaderboard(n_boot=0, seed=0, leaderboard=[LeaderboardRow(source="sim_dynamic:a", kind="simulated",
...     n_participants=3, index=Estimate(value=50.0, ci_low=40.0, ci_high=60.0, n=3))])
>>> 'id="source-sim_dynamic-a"' in render_leaderboard_html(lb)
True
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from simlab.fidelity.leaderboard_result import HUMANS_ROW, Component, Leaderboard, PairwiseTest
from simlab.fidelity.status import Estimate
from simlab.report import charts
from simlab.report.templating import environment

__all__ = ["leaderboard_context", "render_leaderboard_html", "source_slugs", "write_leaderboard_html"]


def source_slugs(sources: Iterable[str]) -> dict[str, str]:
    """Each source's anchor slug (``sim_dynamic:profile`` → ``sim_dynamic-profile``): lower-case
    letters, digits, ``_`` and ``-`` only, distinct for distinct sources.

    >>> source_slugs(["sim_dynamic:A", "sim_dynamic.a", "<b>"])
    {'sim_dynamic:A': 'sim_dynamic-a', 'sim_dynamic.a': 'sim_dynamic-a-2', '<b>': 'b'}
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for source in dict.fromkeys(sources):
        base = re.sub(r"[^a-z0-9_]+", "-", source.lower()).strip("-") or "source"
        slug, i = base, 1
        while slug in taken:
            i += 1
            slug = f"{base}-{i}"
        taken.add(slug)
        out[source] = slug
    return out


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _fmt(x: float | None, digits: int = 1) -> str:
    return f"{x:.{digits}f}" if _finite(x) else "–"


def _g(x: float | None) -> str:
    return f"{x:.3g}" if _finite(x) else "–"


def _ci(e: Estimate | None, fmt: Any = _fmt) -> str:
    if e is None or not (_finite(e.ci_low) and _finite(e.ci_high)):
        return "–"
    return f"[{fmt(e.ci_low)}, {fmt(e.ci_high)}]"


def _component_names(lb: Leaderboard) -> list[str]:
    """The components in the order the leaderboard states them, then any only rows name."""
    names = [c.name for c in lb.components]
    for row in lb.leaderboard:
        names += [n for n in row.components if n not in names]
    return names


def _point(label: str, source: str, e: Estimate) -> charts.Point:
    return charts.Point(label=label, source=source, value=e.value, ci_low=e.ci_low, ci_high=e.ci_high)


def _charts(lb: Leaderboard, names: Sequence[str]) -> tuple[Markup, list[tuple[str, Markup]]]:
    order = [r.source for r in lb.leaderboard]
    humans = next((r for r in lb.leaderboard if r.kind == "humans"), None)
    refs = {"humans vs humans": humans.index.value} if humans is not None and _finite(humans.index.value) else {}
    points = [_point(r.source, r.source, r.index) for r in lb.leaderboard]
    # made by matplotlib, which escapes the text it is given: safe to inline
    index_chart = Markup(charts.forest(points, title="Fidelity index (95% CI)", xlabel="fidelity index (0–100)",
                                       refs=refs, dodge=False, colours=order))
    per_component = []
    for name in names:
        pts = [_point(r.source, r.source, c.score) for r in lb.leaderboard
               if (c := r.components.get(name)) is not None and c.score is not None and _finite(c.score.value)]
        if not pts:
            continue
        human_score = humans.components.get(name) if humans is not None else None
        crefs = {"humans vs humans": human_score.score.value} if human_score is not None and \
            human_score.score is not None and _finite(human_score.score.value) else {}
        per_component.append((name, Markup(charts.forest(pts, title=f"{name} (score, 95% CI)", xlabel="score (0–100)",
                                                          refs=crefs, dodge=False, colours=order))))
    return index_chart, per_component


def _test(t: PairwiseTest) -> dict[str, str]:
    return {"a": t.a, "b": t.b, "measure": t.measure, "difference": _fmt(t.difference.value),
            "ci": _ci(t.difference), "p": _g(t.difference.p_value), "p_adjusted": _g(t.p_adjusted),
            "closer": t.closer or "no difference"}


def _component_row(name: str, c: Component | None, missing: str | None) -> dict[str, str]:
    if c is None:
        return {"name": name, "score": "–", "score_ci": "–", "distance": "–", "distance_ci": "–",
                "note": missing or "not computed"}
    note = c.reason or missing or ""
    return {"name": name, "score": _fmt(c.score.value if c.score else None), "score_ci": _ci(c.score),
            "distance": _g(c.distance.value if c.distance else None), "distance_ci": _ci(c.distance, _g),
            "note": note}


def leaderboard_context(lb: Leaderboard, *, with_charts: bool = True) -> dict[str, Any]:
    """What the leaderboard templates show: rows, charts, components, tests and each source's details."""
    names = _component_names(lb)
    slugs = source_slugs(r.source for r in lb.leaderboard)
    rows, details = [], []
    for r in lb.leaderboard:
        scores = [r.components.get(n) for n in names]
        rows.append({"source": r.source, "slug": slugs[r.source], "kind": r.kind, "index": _fmt(r.index.value),
                     "ci": _ci(r.index), "n": r.n_participants,
                     "components": [_fmt(c.score.value) if c is not None and c.score is not None else "–"
                                    for c in scores]})
        details.append({
            "source": r.source, "slug": slugs[r.source], "kind": r.kind, "index": _fmt(r.index.value),
            "ci": _ci(r.index), "n": r.n_participants,
            "components": [_component_row(n, r.components.get(n), r.missing.get(n)) for n in names],
            "comparisons": [{"name": k, "value": _g(e.value), "ci": _ci(e, _g), "p": _g(e.p_value), "n": e.n}
                            for k, e in sorted(r.comparisons.items())],
        })
    index_chart, component_charts = _charts(lb, names) if with_charts else (Markup(""), [])
    split = lb.human_split
    return {
        "rows": rows,
        "details": details,
        "component_names": names,
        "components": lb.components,
        "index_chart": index_chart,
        "component_charts": component_charts,
        "pairwise_index": [_test(t) for t in lb.pairwise if t.measure == "index"],
        "pairwise_components": [_test(t) for t in lb.pairwise if t.measure != "index"],
        "correction": lb.correction,
        "human_split": None if split is None else f"{split.n_participants[0]} and {split.n_participants[1]} "
                                                  f"participants, split seed {split.seed}",
        "n_boot": lb.n_boot,
        "seed": lb.seed,
        "n_simulated": sum(r.kind == "simulated" and r.source != HUMANS_ROW for r in lb.leaderboard),
    }


def render_leaderboard_html(lb: Leaderboard) -> str:
    """The comparison report of a ``Leaderboard`` (``simlab compare --report``) as an HTML string."""
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return environment().get_template("leaderboard.html.j2").render(lb=leaderboard_context(lb), generated_at=generated)


def write_leaderboard_html(lb: Leaderboard, path: str | os.PathLike[str]) -> Path:
    """Write the comparison report to ``path`` atomically; returns the path."""
    from simlab._files import write_text_atomic

    return write_text_atomic(path, render_leaderboard_html(lb))
