"""Analysis 5: feedback dynamics — turn ratings over turns, preferred-arm switches, ceiling
ratings, conversation length and early stops, per source.

Model: ``turn_rating ~ turn * C(source) + C(arm) + (1 | participant_id)`` (statsmodels MixedLM,
REML); arm is a fixed effect because arm differences are not part of the trajectory. Slopes and
their difference from human come with the model's 95% Wald CIs (refitting MixedLM 200 times is
too slow); the descriptive shares use the participant bootstrap. A ceiling rating is ≥ 95.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

from simlab.fidelity.analyses._prep import HUMAN, has_values, participants_of
from simlab.fidelity.result import DynamicsResult, DynamicsSource, Estimate
from simlab.fidelity.stats import Participants, bootstrap, estimate, reason_for
from simlab.tables import Tables

CEILING = 95.0


def _ratio(num: np.ndarray, den: np.ndarray, part: np.ndarray, participants: Participants) -> Estimate | None:
    if den.sum() <= 0:
        return None
    draws = bootstrap(lambda w: (w * num).sum() / (w * den).sum(), part, participants.counts)[:, 0]
    return estimate(num.sum() / den.sum(), draws, int(np.unique(part).size))


def _wald(value: float, se: float, p: float, n: int) -> Estimate:
    z = sps.norm.ppf(0.975)
    return Estimate(value=float(value), ci_low=float(value - z * se), ci_high=float(value + z * se), p_value=float(p), n=n)


def dynamics(
    tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None
) -> DynamicsResult:
    """Turn-level feedback per source and its difference from human."""
    conv = tables.conversations
    if conv is None or "participant_id" not in conv.columns:
        return DynamicsResult(status="not_available", reason="no conversations table")
    participants = participants or participants_of(tables, n_boot, seed)
    out = DynamicsResult()
    sources = sorted(conv["source"].dropna().unique())
    ratings = None
    if has_values(tables.turns, "turn_rating"):
        t = tables.turns
        ratings = t[(t["role"] == "assistant") & t["turn_rating"].notna()][["conversation_id", "turn", "arm", "turn_rating"]]
        ratings = ratings.merge(conv[["conversation_id", "participant_id", "source"]], on="conversation_id", how="inner")
        ratings = ratings.assign(turn=pd.to_numeric(ratings["turn"]), turn_rating=pd.to_numeric(ratings["turn_rating"], errors="coerce"))
        ratings = ratings.dropna(subset=["turn_rating"]).reset_index(drop=True)
    for s in sources:
        res = DynamicsSource()
        c = conv[conv["source"] == s]
        cpart = participants.index(c["participant_id"].to_numpy())
        if has_values(c, "n_turns"):
            nt = pd.to_numeric(c["n_turns"], errors="coerce").to_numpy(float)
            ok = np.isfinite(nt)
            res.n_turns = _ratio(nt[ok], np.ones(ok.sum()), cpart[ok], participants)
        if has_values(c, "stop_reason"):
            ok = c["stop_reason"].notna().to_numpy()
            early = (c["stop_reason"] == "user_ended").to_numpy(float)
            res.early_stop_share = _ratio(early[ok], np.ones(ok.sum()), cpart[ok], participants)
        if ratings is not None and (ratings["source"] == s).any():
            r = ratings[ratings["source"] == s]
            res.n_ratings = len(r)
            rpart = participants.index(r["participant_id"].to_numpy())
            res.ceiling_share = _ratio((r["turn_rating"] >= CEILING).to_numpy(float), np.ones(len(r)), rpart, participants)
            # preferred arm per turn (unique argmax only), then switches between consecutive turns
            mx = r.groupby(["conversation_id", "turn"])["turn_rating"].transform("max")
            top = r[r["turn_rating"] == mx]
            top = top[~top.duplicated(["conversation_id", "turn"], keep=False)]  # ties: no unique preference
            top = top.sort_values(["conversation_id", "turn"])
            same_conv = top["conversation_id"].to_numpy()[1:] == top["conversation_id"].to_numpy()[:-1]
            consecutive = same_conv & (np.diff(top["turn"].to_numpy()) == 1)
            switched = top["arm"].to_numpy()[1:] != top["arm"].to_numpy()[:-1]
            if consecutive.any():
                tp = participants.index(top["participant_id"].to_numpy()[1:][consecutive])
                res.switch_rate = _ratio(switched[consecutive].astype(float), np.ones(consecutive.sum()), tp, participants)
        elif ratings is None:
            res.reason = "no turn_rating"
        out.per_source[s] = res
    if ratings is None or ratings.empty:
        out.status, out.reason = "not_available", "no turn ratings"
        return out
    use = [s for s in sources if (ratings["source"] == s).any()]
    ref = HUMAN if HUMAN in use else use[0]
    d = ratings[ratings["source"].isin(use)]
    formula = "turn_rating ~ turn" if len(use) == 1 else f"turn_rating ~ turn * C(source, Treatment('{ref}'))"
    if d["arm"].nunique() > 1:
        formula += " + C(arm)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = smf.mixedlm(formula, d, groups=d["participant_id"]).fit(reml=True, method=["lbfgs"])
    except (np.linalg.LinAlgError, ValueError) as exc:
        out.status, out.reason = "failed", f"mixed model of turn ratings: {reason_for(exc)}"
        return out
    params, cov = fit.fe_params, fit.cov_params()
    n_part = {s: int(d.loc[d["source"] == s, "participant_id"].nunique()) for s in use}
    for s in use:
        names = ["turn"] + ([] if s == ref else [f"turn:C(source, Treatment('{ref}'))[T.{s}]"])
        g = np.zeros(len(params))
        for nm in names:
            g[list(params.index).index(nm)] = 1
        v = float(g @ params.to_numpy())
        se = float(np.sqrt(g @ cov.loc[params.index, params.index].to_numpy() @ g))
        out.per_source[s].slope = _wald(v, se, 2 * sps.norm.sf(abs(v / se)), n_part[s])
        if s != ref and ref == HUMAN:
            nm = names[1]
            out.slope_diff_vs_human[s] = _wald(params[nm], float(fit.bse_fe[nm]), float(fit.pvalues[nm]), n_part[s] + n_part[ref])
    if not fit.converged:
        out.reason = "MixedLM did not fully converge; read the slopes with care"
    return out
