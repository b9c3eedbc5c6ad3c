"""Every sim-vs-human comparison broken down by participant attributes (``--by age,gender``).

For each attribute and level, the registered analyses run again on that subgroup's participants (the
humans with the level and their simulated copies, which share the participant_id and so the level;
``simlab.fidelity.attributes``), and each comparison is flattened as the leaderboard flattens them
(``fidelity_index.flatten_comparisons``). Per comparison: the subgroup estimates with their CIs, Holm's
correction across the levels on the analyses' own p-values, and Cochran's Q of "the gap is the same in
every subgroup" (``Heterogeneity``). A level with fewer than ``MIN_PARTICIPANTS`` humans, or fewer in
every simulated source, is ``not_available`` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from scipy.stats import chi2

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS, sim_sources
from simlab.fidelity.attributes import UNKNOWN, participant_attributes
from simlab.fidelity.registry import AnalysisContext
from simlab.fidelity.status import Estimate
from simlab.fidelity.subgroups_result import (
    AttributeSubgroups,
    Heterogeneity,
    SubgroupComparison,
    SubgroupLevel,
    SubgroupsResult,
)
from simlab.schema import HUMAN
from simlab.tables import Tables

if TYPE_CHECKING:
    from simlab.fidelity.analyses.topics import Embedding

__all__ = ["NOT_IN_SUBGROUPS", "heterogeneity", "holm", "restrict", "subgroups"]

NOT_IN_SUBGROUPS = frozenset({"subgroups", "gen_errors"})
"""Analyses not re-run per subgroup: this one, and the descriptive generation-error table (no comparison)."""

Z95 = 1.959963984540054


def restrict(tables: Tables, keep: pd.DataFrame) -> Tables:
    """The rows of ``tables`` whose (source, participant_id) is a row of ``keep``; tables keyed only by
    conversation follow their conversations; ``arms`` is kept whole."""
    keys = set(zip(keep["source"].astype(str), keep["participant_id"].astype(str)))

    def mask(frame: pd.DataFrame) -> np.ndarray:
        pairs = zip(frame["source"].astype(str), frame["participant_id"].astype(str))
        return np.fromiter((p in keys for p in pairs), dtype=bool, count=len(frame))

    out: dict[str, pd.DataFrame | None] = {}
    conv_ids: set[str] | None = None
    if tables.conversations is not None and {"source", "participant_id"} <= set(tables.conversations.columns):
        c = tables.conversations
        conv_ids = set(c.loc[mask(c), "conversation_id"].astype(str))
    j = tables.judgements
    if conv_ids is None:
        conv_ids = set(j.loc[mask(j), "conversation_id"].astype(str))
    for name, frame in tables.items():
        if name == "arms":
            out[name] = frame
        elif {"source", "participant_id"} <= set(frame.columns):
            out[name] = frame[mask(frame)].reset_index(drop=True)
        elif "conversation_id" in frame.columns:
            out[name] = frame[frame["conversation_id"].astype(str).isin(conv_ids)].reset_index(drop=True)
        else:
            out[name] = frame
    return Tables(**out)


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (monotone, capped at 1).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    order = np.argsort(p, kind="stable")
    m = len(p)
    out = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        out[i] = running
    return [round(float(x), 12) for x in out]


def heterogeneity(estimates: Sequence[Estimate]) -> Heterogeneity | None:
    """Cochran's Q over independent subgroup estimates, each SE from its 95% CI (width / 2·1.96).

    >>> e = [Estimate(value=v, ci_low=v - 1.96, ci_high=v + 1.96, n=20) for v in (0.0, 2.0)]
    >>> h = heterogeneity(e)
    >>> (round(h.q, 3), h.df, round(h.p_value, 4))
    (2.0, 1, 0.1573)
    """
    vals, ses = [], []
    for e in estimates:
        se = (e.ci_high - e.ci_low) / (2 * Z95)
        if math.isfinite(e.value) and math.isfinite(se) and se > 0:
            vals.append(e.value)
            ses.append(se)
    if len(vals) < 2:
        return None
    v, w = np.array(vals), 1.0 / np.array(ses) ** 2
    pooled = float((w * v).sum() / w.sum())
    q = float((w * (v - pooled) ** 2).sum())
    df = len(vals) - 1
    return Heterogeneity(q=q, df=df, p_value=float(chi2.sf(q, df)), pooled=pooled)


def _levels(values: pd.Series) -> list[str]:
    """The levels in order, ``unknown`` last."""
    found = sorted(set(values.astype(str)) - {UNKNOWN})
    return found + ([UNKNOWN] if (values == UNKNOWN).any() else [])


def subgroups(tables: Tables, context: AnalysisContext, *, analyses: Sequence[str] | None = None) -> SubgroupsResult:
    """Every comparison per level of each attribute in ``context.by`` (module docstring).

    ``analyses``: only these registered analyses per subgroup (default: ``context.subgroup_analyses``, else
    every registered one but ``NOT_IN_SUBGROUPS``); the context's topics, weights and options pass on.
    """
    from simlab.fidelity.analyses import analyze_all
    from simlab.fidelity.fidelity_index import flatten_comparisons
    from simlab.fidelity.registry import ANALYSES

    by = list(context.by)
    attrs = participant_attributes(tables, by)
    sims = sim_sources(tables.sources)
    wanted = analyses if analyses is not None else context.subgroup_analyses
    names = [a.name for a in ANALYSES if a.name not in NOT_IN_SUBGROUPS and (wanted is None or a.name in wanted)]
    out = SubgroupsResult(min_participants=MIN_PARTICIPANTS, analyses=names)
    if HUMAN not in tables.sources or not sims:
        return out.model_copy(update={"status": "not_available",
                                      "reason": "subgroups compare simulated sources with human data: both are needed"})
    for attr in by:
        result = AttributeSubgroups()
        estimates: dict[str, dict[str, dict[str, Estimate]]] = {s: {} for s in sims}
        for level in _levels(attrs[attr]):
            keep = attrs[attrs[attr] == level]
            n = {s: int((keep["source"] == s).sum()) for s in tables.sources}
            short = [s for s in [HUMAN, *sims] if n.get(s, 0) < MIN_PARTICIPANTS]
            if HUMAN in short or all(s in short for s in sims):
                who = HUMAN if HUMAN in short else "every simulated source"
                result.levels[level] = SubgroupLevel(
                    n_participants=n, status="not_available",
                    reason=f"{who}: fewer than {MIN_PARTICIPANTS} participants with {attr} = {level!r}")
                continue
            result.levels[level] = SubgroupLevel(n_participants=n)
            sub = analyze_all(restrict(tables, keep), n_boot=context.n_boot, seed=context.seed,
                              topics=cast("Embedding | None", context.topics),
                              clusters_path=context.clusters_path, exclude_dimensions=context.exclude_dimensions,
                              only=names, weights=context.weights, progress=False)
            for s in sims:
                for key, est in flatten_comparisons(sub, s).items():
                    estimates[s].setdefault(key, {})[level] = est
        for s in sims:
            comps: dict[str, SubgroupComparison] = {}
            for key, per_level in sorted(estimates[s].items()):
                with_p = {lv: e.p_value for lv, e in per_level.items() if e.p_value is not None and math.isfinite(e.p_value)}
                adjusted = dict(zip(with_p, holm(list(with_p.values())))) if with_p else {}
                comps[key] = SubgroupComparison(levels=per_level, p_adjusted=adjusted,
                                                heterogeneity=heterogeneity(list(per_level.values())))
            result.comparisons[s] = comps
        out.attributes[attr] = result
    return out
