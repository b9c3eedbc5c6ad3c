"""The report section of ``analyses.ppi``: per simulated source, the human estimates with the simulated
participants (PPI) beside the humans-only ones, λ̂ and how many humans the simulated participants were
worth. Text is escaped by the template like every section's.

>>> from simlab.fidelity.ppi_result import PPIResult
>>> ppi_section(PPIResult(status="not_available", reason="no simulated source")).verdicts
['Not available: no simulated source.']
"""

from __future__ import annotations

import math
import statistics

import pandas as pd

from simlab.fidelity.ppi_result import PPIResult, PPISource, PPITarget
from simlab.report import charts
from simlab.report.charts import Point
from simlab.report.sections import Row, Section, estimate_row, fmt, fmt_ci, new_section, unavailable

__all__ = ["ppi_section"]

HUMANS_ONLY = "humans only"


def _targets(src: PPISource, arms: list[str]) -> list[tuple[str, PPITarget]]:
    out: list[tuple[str, PPITarget]] = []
    if src.first_shown_excess is not None:
        out.append(("first-shown excess (points)", src.first_shown_excess))
    if src.first_shown_share is not None:
        out.append(("first-shown share (%)", src.first_shown_share))
    out += [(f"choice share of {a} (%)", src.choice_share[a]) for a in arms if a in src.choice_share]
    out += [(f"choice share of {a} (%)", t) for a, t in src.choice_share.items() if a not in arms]
    return out


def _saved(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else fmt(x, 0)


def _sentence(name: str, src: PPISource) -> str | None:
    parts = []
    ex = src.first_shown_excess
    if ex is not None and ex.status == "ok" and ex.ppi is not None and ex.humans_only is not None:
        parts.append(f"about {_saved(ex.humans_saved)} extra humans for the position effect (first-shown excess "
                     f"{fmt(ex.ppi.value, 1)} points, 95% CI {fmt_ci(ex.ppi, 1)}, against {fmt_ci(ex.humans_only, 1)} "
                     f"from the humans alone; λ̂ = {fmt(ex.lam)})")
    saved = [t.humans_saved for t in src.choice_share.values() if t.status == "ok" and t.humans_saved is not None]
    if saved:
        parts.append(f"about {_saved(statistics.median(saved))} for the arm hierarchy (median over the arms' choice "
                     "shares)")
    if not parts:
        return None
    return (f"With {name}, the simulated participants were worth " + " and ".join(parts)
            + f", beside {src.n_humans} humans ({src.n_sim_only} simulated participants without a human).")


def ppi_section(r: PPIResult, turns: pd.DataFrame | None = None) -> Section:
    """Verdicts (humans saved, the PPI order of the arms), rows per target and a forest chart."""
    s = new_section("ppi", r.status)
    if r.status != "ok":
        s.verdicts.append(unavailable(r.status, r.reason))
        return s
    points: list[Point] = []
    for name, src in r.per_source.items():
        if src.status != "ok":
            s.verdicts.append(f"{name}: {unavailable(src.status, src.reason)}")
            continue
        said = _sentence(name, src)
        if said:
            s.verdicts.append(said)
        if src.order:
            same = "the same as" if src.order == src.humans_only_order else "against"
            s.verdicts.append(f"With {name}, PPI orders the arms by the humans' choice share {' > '.join(src.order)} "
                              f"({same} {' > '.join(src.humans_only_order)} from the humans alone).")
        if src.n_humans_without_copy:
            s.verdicts.append(f"{src.n_humans_without_copy} human(s) without a copy in {name} are left out of both "
                              "estimates.")
        for label, t in _targets(src, r.arms):
            if t.status != "ok" or t.ppi is None or t.humans_only is None:
                s.rows.append(Row(name, label, "–", unavailable(t.status, t.reason)))
                continue
            s.rows.append(Row(name, f"{label}: PPI", fmt(t.ppi.value, 1), fmt_ci(t.ppi, 1),
                              n=f"{t.n} + {t.n_sim_only} sim"))
            s.rows.append(estimate_row(name, f"{label}: {HUMANS_ONLY}", t.humans_only, 1))
            s.rows.append(Row(name, f"{label}: λ̂ · humans saved", f"{fmt(t.lam)} · {_saved(t.humans_saved)}",
                              n=f"copy r = {fmt(t.copy_corr)}"))
            points.append(Point(f"{label} ({name})", f"PPI: {name}", t.ppi.value, t.ppi.ci_low, t.ppi.ci_high))
            points.append(Point(f"{label} ({name})", HUMANS_ONLY, t.humans_only.value, t.humans_only.ci_low,
                                t.humans_only.ci_high))
    if points:
        s.charts.append(charts.forest(points, title="Human estimates: with the simulated participants (PPI) and "
                                      "without", xlabel="percent (excess: points)"))
    return s
