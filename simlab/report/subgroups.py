"""The report's subgroup section (per attribute, each comparison's estimate in every subgroup with its
CI, the Holm-adjusted p across the subgroups and the heterogeneity test) and its weights section (the
raking weights, and the headline estimates weighted next to unweighted)."""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from simlab.fidelity.result import FidelityResult
from simlab.fidelity.status import Estimate
from simlab.fidelity.subgroups_result import SubgroupsResult
from simlab.report.sections import Row, Section, fmt, fmt_ci, fmt_p, new_section

__all__ = ["subgroups_section", "weights_section"]

ALPHA = 0.05


def subgroups_section(r: SubgroupsResult, turns: pd.DataFrame | None = None) -> Section:
    """One block of rows per attribute (its levels' sizes, then every comparison per level), and a
    sentence per attribute naming the comparisons whose gap differs between subgroups."""
    s = new_section("subgroups", r.status)
    s.verdicts.append(f"Multiplicity: {r.correction}. Subgroups below {r.min_participants} participants in a source "
                      "are not analysed.")
    for attr, a in r.attributes.items():
        sizes = "; ".join(f"{lv}: " + ", ".join(f"{src} {n}" for src, n in lv_info.n_participants.items())
                          + ("" if lv_info.status == "ok" else f" (not available: {lv_info.reason})")
                          for lv, lv_info in a.levels.items())
        s.verdicts.append(f"{attr} — participants per level: {sizes}.")
        for src, comps in a.comparisons.items():
            differ = [k for k, c in comps.items()
                      if c.heterogeneity is not None and c.heterogeneity.p_value is not None
                      and c.heterogeneity.p_value < ALPHA]
            s.verdicts.append(f"{attr}, {src}: " + (
                f"the gap differs between subgroups (heterogeneity p < {ALPHA}) for {', '.join(differ)}."
                if differ else f"no comparison's gap differs between subgroups at {ALPHA} (of {len(comps)})."))
            for key, c in comps.items():
                for lv, e in c.levels.items():
                    padj = c.p_adjusted.get(lv)
                    p = "" if padj is None else f"Holm {fmt_p(padj)}"
                    s.rows.append(Row(f"{attr} = {lv}", f"{src}: {key}", fmt(e.value), fmt_ci(e), p, str(e.n)))
                h = c.heterogeneity
                if h is not None:
                    s.rows.append(Row(f"{attr}: all levels", f"{src}: {key} — heterogeneity Q (df {h.df})", fmt(h.q),
                                      "", fmt_p(h.p_value)))
    return s


HEADLINE = ("hierarchy", "agreement", "position", "dynamics", "traits")
"""The analyses whose estimates the weights section shows weighted next to unweighted."""
MAX_WEIGHT_ROWS = 60


def _estimates(node: object, path: list[str], out: dict[str, Estimate]) -> None:
    """Every Estimate under ``node`` by its path of field names and keys."""
    if isinstance(node, Estimate):
        out[".".join(path)] = node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            _estimates(getattr(node, name), [*path, name], out)
    elif isinstance(node, dict):
        for key, value in node.items():
            _estimates(value, [*path, str(key)], out)


def weights_section(result: FidelityResult) -> Section:
    """The raking weights used, what they do not reach, and the headline estimates weighted next to
    unweighted (``result.weights``; nothing to show without them)."""
    w = result.weights
    s = Section(key="weights", title="Weights", question="Does the comparison change when the participants are "
                "raked to the target population's margins?", status="ok")
    if w is None:
        s.verdicts.append("Unweighted: no margins were given.")
        return s
    s.verdicts.append(
        f"Every estimate in this report is weighted: the {w.n_participants} human participants were raked to the margins "
        f"of {', '.join(w.attributes)} ({w.margins_file or 'given in Python'}); effective sample size "
        f"{w.effective_n:.1f}, largest weight {w.max_weight:.2f} × the mean, {w.trimmed} weight(s) trimmed. Simulated "
        "copies carry their human's weight.")
    for what, why in w.not_weighted.items():
        s.verdicts.append(f"Not weighted — {what}: {why}.")
    plain = result.analyses_unweighted or {}
    for name in HEADLINE:
        if name not in result.analyses or name not in plain:
            continue
        a: dict[str, Estimate] = {}
        b: dict[str, Estimate] = {}
        _estimates(result.analyses[name], [name], a)
        _estimates(plain[name], [name], b)
        for key, e in a.items():
            if key in b and len(s.rows) < MAX_WEIGHT_ROWS:
                u = b[key]
                s.rows.append(Row("weighted | unweighted", key, f"{fmt(e.value)} | {fmt(u.value)}",
                                  f"{fmt_ci(e)} | {fmt_ci(u)}", n=str(e.n)))
    return s
