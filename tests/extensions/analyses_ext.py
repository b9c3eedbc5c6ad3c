"""A fidelity analysis added from outside simlab: mean turn rating per arm, simulated − human.

Per source and arm, the mean ``turn_rating`` over every rated reply (replies flagged ``gen_error``
left out); per simulated source and arm, its mean minus human's. The 95% CI is a percentile
participant-clustered bootstrap on the analysis's shared draws (``context.participants``): each
replicate reweights every participant's ratings by how often the participant was drawn, so a
human and their simulated copy are resampled together.

Registered from Python with ``ANALYSES.register(TURN_RATING_GAP)``, or by a package entry point
``turn_rating_gap = tests.extensions.analyses_ext:TURN_RATING_GAP`` in the group ``simlab.analyses``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from pydantic import Field

from simlab.fidelity import analysis_context
from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.registry import Analysis, AnalysisContext, ReportSection
from simlab.fidelity.result import Estimate, SourceStatus
from simlab.fidelity.synthetic import make_synthetic
from simlab.report.sections import Row, Section, estimate_row, fmt, fmt_ci, new_section
from simlab.tables import Tables

__all__ = ["CASES", "TURN_RATING_GAP", "TurnRatingGap", "turn_rating_gap", "turn_rating_gap_section"]

NAME = "turn_rating_gap"


class TurnRatingGap(SourceStatus):
    """Mean turn rating per arm and each simulated source's difference from human."""

    mean: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per source, per arm: mean turn_rating (0–100) over rated replies."""
    vs_human: dict[str, dict[str, Estimate]] = Field(default_factory=dict)
    """Per simulated source, per arm: mean(source) − mean(human); n = participants with ratings in both."""
    n_ratings: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Per source, per arm: rated replies used."""


def _ratings(tables: Tables) -> pd.DataFrame | None:
    """One row per rated reply with its source, participant and arm."""
    turns, conv = tables.turns, tables.conversations
    if turns is None or conv is None or "turn_rating" not in turns.columns:
        return None
    t = turns[turns["turn_rating"].notna() & turns["arm"].notna()]
    if "gen_error" in t.columns:
        t = t[t["gen_error"].fillna(False).astype(bool) == False]  # noqa: E712 - a column, not a bool
    t = t.merge(conv[["conversation_id", "source", "participant_id"]], on="conversation_id", how="inner")
    return t[["source", "participant_id", "arm", "turn_rating"]] if len(t) else None


def turn_rating_gap(tables: Tables, context: AnalysisContext) -> TurnRatingGap:
    r = _ratings(tables)
    if r is None:
        return TurnRatingGap(status="not_available", reason="no turn ratings")
    draws = context.participants
    # per participant: sum and count of ratings of each (source, arm), on the bootstrap's index
    r = r.assign(p=draws.index(r["participant_id"]))
    cells = r.groupby(["source", "arm", "p"])["turn_rating"].agg(["sum", "count"])
    n_p = len(draws.ids)
    sums: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], np.ndarray] = {}
    for (src, arm), g in cells.groupby(level=["source", "arm"]):
        idx = g.index.get_level_values("p").to_numpy()
        sums[(src, arm)] = np.bincount(idx, weights=g["sum"].to_numpy(float), minlength=n_p)
        counts[(src, arm)] = np.bincount(idx, weights=g["count"].to_numpy(float), minlength=n_p)
    out = TurnRatingGap()
    for (src, arm), s in sums.items():
        out.mean.setdefault(src, {})[arm] = float(s.sum() / counts[(src, arm)].sum())
        out.n_ratings.setdefault(src, {})[arm] = int(counts[(src, arm)].sum())
    if "human" not in out.mean:
        return out
    w = draws.counts  # (n_boot, participants)
    for (src, arm), s in sums.items():
        if src == "human" or ("human", arm) not in sums:
            continue
        hs, hc, c = sums[("human", arm)], counts[("human", arm)], counts[(src, arm)]
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (w @ s) / (w @ c) - (w @ hs) / (w @ hc)
        finite = boot[np.isfinite(boot)]
        lo, hi = (np.quantile(finite, [0.025, 0.975]) if finite.size else (np.nan, np.nan))
        both = int(((c > 0) & (hc > 0)).sum())
        out.vs_human.setdefault(src, {})[arm] = Estimate(
            value=out.mean[src][arm] - out.mean["human"][arm], ci_low=float(lo), ci_high=float(hi), n=both,
            n_failed=int(boot.size - finite.size))
    return out


def turn_rating_gap_section(r: TurnRatingGap, turns: pd.DataFrame | None) -> Section:
    s = new_section(NAME, r.status)
    for src, arms in r.mean.items():
        for arm, m in arms.items():
            s.rows.append(Row(src, f"mean turn rating, {arm}", fmt(m, 1),
                              n=str(r.n_ratings.get(src, {}).get(arm, ""))))
    for src, arms in r.vs_human.items():
        for arm, e in arms.items():
            s.rows.append(estimate_row(f"{src} − human", f"mean turn rating, {arm}", e, 1))
        arm, e = max(arms.items(), key=lambda kv: abs(kv[1].value))
        s.verdicts.append(f"The largest gap: {src} rates {arm} {fmt(e.value, 1)} points differently from people "
                          f"on average (95% CI {fmt_ci(e, 1)}).")
    return s


def _planted(seed: int, effect: bool) -> Tables:
    """Synthetic human + simulated data; with ``effect`` the simulator rates GEN's replies ``EFFECT``
    points higher than its human does."""
    t = make_synthetic(30, seed=seed, arms=("GEN", "PROMPT"))
    assert t.turns is not None and t.conversations is not None
    if not effect:
        return t
    source = t.turns["conversation_id"].map(t.conversations.set_index("conversation_id")["source"])
    turns = t.turns.copy()
    turns.loc[(source == "sim_dynamic") & (turns["arm"] == "GEN"), "turn_rating"] += EFFECT
    return dataclasses.replace(t, turns=turns)


def _measured(tables: Tables, seed: int) -> Measured:
    r = turn_rating_gap(tables, analysis_context(tables, n_boot=200, seed=seed))
    return Measured(r.vs_human.get("sim_dynamic", {}).get("GEN"))


def _truth(effect: bool) -> float:
    return EFFECT if effect else 0.0


EFFECT = 5.0
# module-level functions: benchmarks/calibration.py sends cases to worker processes (pickled)
CASES = [Case(analysis=NAME, name="mean turn rating of GEN, sim − human", simulate=_planted, measure=_measured,
              truth=_truth,
              note=f"make_synthetic's turn ratings; the effect adds {EFFECT:g} points to the simulator's GEN ratings")]
"""Planted-truth cases for benchmarks/calibration.py."""


TURN_RATING_GAP = Analysis(
    name=NAME,
    result=TurnRatingGap,
    run=turn_rating_gap,
    section=ReportSection("8. Turn ratings per arm", "Do simulated users rate each arm's replies as high as people do?",
                          turn_rating_gap_section),
    applies=lambda tables, context: tables.turns is not None,
    calibration=lambda: CASES,
)
"""The analysis, ready to register."""
