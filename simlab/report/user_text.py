"""The report section of the ``user_text`` analysis: per simulated source, each measure of the users'
messages (its level, human's, and the difference with its 95% CI and p-value), a verdict sentence
per source, and a forest chart of the differences in standard form.

Every string from the data (source names, stop reasons) goes through the template's autoescaping or
the chart's own escaping: user text is untrusted, and so are the names around it.
"""

from __future__ import annotations

import math

import pandas as pd

from simlab.fidelity.result import Estimate
from simlab.fidelity.user_text_result import UserTextMeasure, UserTextResult
from simlab.report import charts
from simlab.report.charts import Point
from simlab.report.sections import Row, Section, fmt, fmt_ci, fmt_p, new_section, unavailable

__all__ = ["user_text_section"]

ALPHA = 0.05
_SHARES = ("question", "user_ended")
"""Measures that are shares: shown in percent (differences in percentage points)."""


def _is_share(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _SHARES


def _scaled(e: Estimate, by: float) -> Estimate:
    return e.model_copy(update={"value": by * e.value, "ci_low": by * e.ci_low, "ci_high": by * e.ci_high})


def _p(e: Estimate) -> str:
    return "" if e.p_value is None else fmt_p(e.p_value).removeprefix("p = ").replace("p < ", "<")


def _sig(e: Estimate) -> bool:
    if e.p_value is not None and math.isfinite(e.p_value):
        return e.p_value < ALPHA
    return math.isfinite(e.ci_low) and math.isfinite(e.ci_high) and (e.ci_low > 0 or e.ci_high < 0)


def _rows(src: str, what: str, key: str, m: UserTextMeasure) -> list[Row]:
    by, unit = (100.0, " (%)") if _is_share(key) else (1.0, "")
    digits = 1 if _is_share(key) else 2
    rows = []
    for who, e in ((src, m.source), ("human", m.human)):
        if e is not None:
            e = _scaled(e, by)
            rows.append(Row(who, f"{what}{unit}", fmt(e.value, digits), fmt_ci(e, digits), "", str(e.n)))
    if m.difference is not None:
        d = _scaled(m.difference, by)
        diff_unit = " (points)" if _is_share(key) else " (difference)"
        rows.append(Row(f"{src} − human", f"{what}{diff_unit}", fmt(d.value, digits), fmt_ci(d, digits), _p(d),
                        str(d.n)))
    elif m.reason:
        rows.append(Row(f"{src} − human", what, "–", m.reason))
    return rows


def _verdict(src: str, r: UserTextResult, measures: dict[str, UserTextMeasure]) -> str:
    """One sentence: which measures differ significantly from people's, and in which direction."""
    differ = []
    for key, m in measures.items():
        d = m.difference
        if d is None or not _sig(d):
            continue
        what = r.measures.get(key, key)
        if _is_share(key):
            differ.append(f"{what} {'higher' if d.value > 0 else 'lower'} by {fmt(abs(100 * d.value), 1)} points "
                          f"(95% CI {fmt(100 * d.ci_low, 1)} to {fmt(100 * d.ci_high, 1)})")
        else:
            differ.append(f"{what} {'higher' if d.value > 0 else 'lower'} by {fmt(abs(d.value), 2)} "
                          f"(95% CI {fmt_ci(d)}, {fmt_p(d.p_value)})")
    tested = sum(m.difference is not None for m in measures.values())
    if not tested:
        return f"{src}: no measure of the users' messages could be compared with people's."
    if not differ:
        return (f"The user messages of {src} do not differ significantly from people's on any of the {tested} "
                "measures compared (length, lexical diversity, diversity across participants, questions, endings).")
    return (f"The user messages of {src} differ from people's in {len(differ)} of {tested} measures: "
            + "; ".join(differ) + ".")


def user_text_section(r: UserTextResult, turns: pd.DataFrame | None = None) -> Section:
    """The section of a ``user_text`` result (any status: a not-ok one says why)."""
    s = new_section("user_text", r.status)
    if r.status != "ok":
        s.verdicts.append(unavailable(r.status, r.reason))
    for src, ps in r.per_source.items():
        if ps.status != "ok":
            s.verdicts.append(f"{src}: {unavailable(ps.status, ps.reason)}")
    points: list[Point] = []
    for src, comp in r.vs_human.items():
        if comp.status != "ok":
            s.verdicts.append(f"{src} vs human: {unavailable(comp.status, comp.reason)}")
        s.verdicts.append(_verdict(src, r, comp.measures))
        mattr = [m.difference for k, m in comp.measures.items() if k.endswith(".mattr") and m.difference is not None]
        if any(_sig(d) for d in mattr):
            s.verdicts.append(f"MATTR scores a participant's text shorter than the {r.window}-word window by its "
                              "type-token ratio, which falls as texts get longer: read a MATTR difference together "
                              "with the length rows.")
        for key, m in comp.measures.items():
            s.rows.extend(_rows(src, r.measures.get(key, key), key, m))
            d, h = m.difference, m.human
            # the chart puts every measure on one axis: the difference in units of human's level
            if d is not None and h is not None and math.isfinite(h.value) and abs(h.value) > 0:
                points.append(Point(key, src, d.value / abs(h.value), d.ci_low / abs(h.value),
                                    d.ci_high / abs(h.value)))
        for reason, e in comp.stop_reasons.items():
            s.rows.append(Row(f"{src} − human", f"share of conversations ending {reason} (points)",
                              fmt(100 * e.value, 1), fmt_ci(_scaled(e, 100.0), 1), _p(e), str(e.n)))
    if r.method:
        s.verdicts.append(f"Method: {r.method}.")
    if points:
        s.charts.append(charts.forest(points, title="Simulated − human, relative to the human level",
                                      xlabel="(sim − human) / |human|", refs={"0": 0.0}))
    return s
