"""Analysis 4: position bias — conditional logit of a choice on display position, arm dummies in.

Coding: ``first_shown`` = 1 when position == 1 (shown first, letter A), reference = every later
position, so the first-shown effect is one coefficient (log-odds). A second model per source
has a dummy per position with the LAST position as reference, to show the whole profile.
The pooled model (all sources; arm dummies per source, since strata never mix sources) adds
``first_shown × source`` for every simulated source; an LR test asks whether they are all 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import (
    HUMAN,
    choice_sets,
    dummies,
    has_values,
    judgements_frame,
    participants_of,
    sim_sources,
)
from simlab.fidelity.result import Estimate, PositionFit, PositionOutcome, PositionResult
from simlab.fidelity.stats import FitError, Participants, clogit_draws, estimate, fit_clogit, lr_test
from simlab.tables import Tables

OUTCOMES = ("ranked_best", "opening_choice", "ranking")


def _design(j: pd.DataFrame, arms_by_source: dict[str, list[str]], pooled: bool) -> tuple[pd.DataFrame, list[str]]:
    """Arm dummies (per source when pooled) with the first arm of each source as reference."""
    cols: dict[str, np.ndarray] = {}
    for s, arms in arms_by_source.items():
        for a in arms[1:]:
            name = f"arm[{a}]" + (f":{s}" if pooled else "")
            cols[name] = ((j["arm"].astype(str) == a) & (j["source"] == s)).astype(float).to_numpy()
    d = pd.DataFrame(cols, index=j.index)
    return pd.concat([j, d], axis=1), list(cols)


def _fit_one(d: pd.DataFrame, feats: list[str], how: str, participants: Participants, names: list[str]) -> dict[str, Estimate]:
    cs = choice_sets(d, feats, how, participants)
    if cs.n_strata == 0:
        raise FitError("no choice events with two or more alternatives")
    fit = fit_clogit(cs)
    draws = clogit_draws(cs, fit.params, participants.counts)
    n_part = int(np.unique(cs.participant).size)
    est = {nm: estimate(fit.params[feats.index(nm)], draws[:, feats.index(nm)], n_part, float(fit.pvalues[feats.index(nm)])) for nm in names}
    return est


def _outcome(j: pd.DataFrame, how: str, participants: Participants) -> PositionOutcome:
    col = "rank_used" if how == "ranking" else how
    j = j[j[col].notna() & j["position"].notna()].reset_index(drop=True)
    if j.empty:
        return PositionOutcome(status="not_available", reason=f"no rows with both position and {col}")
    j["position"] = pd.to_numeric(j["position"]).astype(int)
    j["first_shown"] = (j["position"] == 1).astype(float)
    if how != "ranking":
        j[how] = j[how].astype(bool)
    out = PositionOutcome()
    sources = sorted(j["source"].unique())
    arms_by_source = {s: sorted(j.loc[j["source"] == s, "arm"].astype(str).unique()) for s in sources}
    for s in sources:
        sub = j[j["source"] == s].reset_index(drop=True)
        d, arm_cols = _design(sub, {s: arms_by_source[s]}, pooled=False)
        positions = sorted(d["position"].unique())
        try:
            first = _fit_one(d, ["first_shown", *arm_cols], how, participants, ["first_shown"])
            pos_levels = positions[:-1]
            pd_ = pd.concat([d, dummies(d["position"], pos_levels, "position")], axis=1)
            pnames = [f"position[{p}]" for p in pos_levels]
            prof = _fit_one(pd_, [*pnames, *arm_cols], how, participants, pnames)
            out.per_source[s] = PositionFit(
                first_shown=first["first_shown"],
                positions={k.removeprefix("position[").removesuffix("]"): v for k, v in prof.items()},
                n_events=int(d["event"].nunique()),
            )
        except FitError as exc:
            out.per_source[s] = PositionFit(status="failed", reason=str(exc))
    sims = [s for s in sim_sources(sources) if out.per_source[s].status == "ok"]
    if HUMAN in sources and out.per_source[HUMAN].status == "ok" and sims:
        use = [HUMAN, *sims]
        pj = j[j["source"].isin(use)].reset_index(drop=True)
        d, arm_cols = _design(pj, {s: arms_by_source[s] for s in use}, pooled=True)
        inter = []
        for s in sims:
            d[f"first_shown:{s}"] = d["first_shown"] * (d["source"] == s)
            inter.append(f"first_shown:{s}")
        try:
            full_feats = ["first_shown", *inter, *arm_cols]
            cs = choice_sets(d, full_feats, how, participants)
            full = fit_clogit(cs)
            restricted_cs = choice_sets(d, ["first_shown", *arm_cols], how, participants)
            restricted = fit_clogit(restricted_cs)
            out.interaction_p = lr_test(full, restricted, len(inter))
            draws = clogit_draws(cs, full.params, participants.counts, slice(1, 1 + len(inter)))
            n_part = int(np.unique(cs.participant).size)
            for k, s in enumerate(sims):
                out.interaction[s] = estimate(full.params[1 + k], draws[:, k], n_part, float(full.pvalues[1 + k]))
        except FitError as exc:
            out.reason = f"pooled model failed: {exc}"
    return out


def position(
    tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None
) -> PositionResult:
    """Position bias per source and outcome, with the pooled source × first_shown test."""
    if not has_values(tables.judgements, "position"):
        return PositionResult(status="not_available", reason="judgements have no display position")
    participants = participants or participants_of(tables, n_boot, seed)
    j = judgements_frame(tables)
    out = PositionResult()
    for how in OUTCOMES:
        col = "rank_used" if how == "ranking" else how
        if not has_values(j, col):
            out.outcomes[how] = PositionOutcome(status="not_available", reason=f"no {col}")
            continue
        out.outcomes[how] = _outcome(j, how, participants)
    return out
