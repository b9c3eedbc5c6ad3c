"""Analysis 1: aggregate arm hierarchy (rank-ordered / Plackett–Luce logit) per source.

Per source: arm log-strengths vs the reference arm (participant-bootstrap CIs; p-values
cluster-robust by participant; a penalised fit when the maximum-likelihood one diverges).
Against human: agreement of the orderings, and each arm's strength difference sim − human —
the source-specific fits stacked into one (a pooled model with arm × source) whose sandwich
covariance is clustered by participant, so a human and their simulated copy count as one
cluster; CIs from the same paired participant bootstrap. Events whose conversation has a
failed generation (``gen_error``) are dropped and counted; a source with fewer than
``MIN_PARTICIPANTS`` participants is not analysed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import (
    arm_order,
    choice_sets,
    drop_gen_error,
    dummies,
    judgements_frame,
    participants_of,
    sim_sources,
    too_few_participants,
)
from simlab.fidelity.result import Estimate, HierarchyComparison, HierarchyResult, HierarchySource
from simlab.fidelity.stats import (
    ChoiceSets,
    ClogitFit,
    FitError,
    Participants,
    bootstrap,
    clogit_draws,
    estimate,
    fit_clogit,
    kendall_tau,
    linear,
    robust_estimate,
    stack,
    wald_test,
    weighted_corr,
)
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["hierarchy"]

Fitted = tuple[ChoiceSets, ClogitFit, list[str], np.ndarray]
"""A source's choice sets, fit, the arms of its coefficients, and their bootstrap draws."""


def _fit_source(
    sub: pd.DataFrame, arms: list[str], ref: str, participants: Participants
) -> tuple[HierarchySource, np.ndarray | None, np.ndarray | None, Fitted | None]:
    """(result, strengths over ``arms`` incl. the 0 reference, bootstrap draws (n_boot, n_arms),
    the fit itself for the comparison with human)."""
    present = sorted(sub["arm"].astype(str).unique())
    few = too_few_participants(sub)
    if few:
        return HierarchySource(status="not_available", reason=few), None, None, None
    if ref not in present:
        return HierarchySource(status="failed", reason=f"reference arm {ref!r} never judged"), None, None, None
    others = [a for a in arms if a != ref and a in present]
    d = pd.concat([sub.reset_index(drop=True), dummies(sub["arm"].astype(str).reset_index(drop=True), others, "arm")], axis=1)
    names = [f"arm[{a}]" for a in others]
    cs = choice_sets(d, names, "ranking", participants)
    if cs.n_strata == 0:
        return HierarchySource(status="not_available", reason="no rankings with two or more arms"), None, None, None
    try:
        fit = fit_clogit(cs, participants.point(cs.participant))
    except FitError as exc:
        return HierarchySource(status="failed", reason=str(exc)), None, None, None
    draws = clogit_draws(cs, fit.params, participants.counts, penalised=fit.penalised)
    full = np.full(len(arms), np.nan)
    full_draws = np.full((draws.shape[0], len(arms)), np.nan)
    n_part = int(np.unique(cs.participant).size)
    strengths: dict[str, Estimate] = {}
    for i, a in enumerate(arms):
        if a == ref:
            full[i] = 0.0
            full_draws[:, i] = 0.0
            strengths[a] = Estimate(value=0.0, ci_low=0.0, ci_high=0.0, p_value=None, n=n_part)
        elif a in others:
            k = others.index(a)
            full[i] = fit.params[k]
            full_draws[:, i] = draws[:, k]
            strengths[a] = estimate(fit.params[k], draws[:, k], n_part, float(fit.pvalues[k]))
    ordering = [arms[i] for i in np.argsort(-np.nan_to_num(full, nan=-np.inf), kind="stable") if np.isfinite(full[i])]
    derived = bool(sub["rank_derived"].any())
    rating_strengths, rating_full, rating_draws = _rating_strengths(sub, arms, ref, participants)
    basis = "ranking"
    if derived and rating_full is not None:
        # ranks derived from ratings throw away how far apart the ratings were: order by the ratings
        basis = "ratings"
        full, full_draws = rating_full, rating_draws  # type: ignore[assignment]
        ordering = [arms[i] for i in np.argsort(-np.nan_to_num(full, nan=-np.inf), kind="stable") if np.isfinite(full[i])]
    res = HierarchySource(
        strengths=strengths,
        ordering=ordering,
        n_events=int(d.loc[d["rank_used"].notna(), "conversation_id"].nunique()),
        derived_ranks=derived,
        rating_strengths=rating_strengths,
        ordering_basis=basis,
        penalised=fit.penalised,
    )
    return res, full, full_draws, (cs, fit, others, draws)


def _rating_strengths(
    sub: pd.DataFrame, arms: list[str], ref: str, participants: Participants
) -> tuple[dict[str, Estimate], np.ndarray | None, np.ndarray | None]:
    """Mean within-event standardised rating per arm relative to ``ref``, with participant-bootstrap draws."""
    r = pd.to_numeric(sub["rating_preference"], errors="coerce")
    ok = r.notna()
    if ok.sum() < 2:
        return {}, None, None
    d = sub.loc[ok, ["conversation_id", "arm", "participant_id"]].assign(r=r[ok].to_numpy())
    g = d.groupby("conversation_id")["r"]
    sd = g.transform("std")
    d = d.assign(z=((d["r"] - g.transform("mean")) / sd).where(sd > 0, 0.0))
    d = d[d.groupby("conversation_id")["r"].transform("size") >= 2]
    if d.empty or ref not in set(d["arm"].astype(str)):
        return {}, None, None
    arm_idx = np.array([arms.index(a) for a in d["arm"].astype(str)])
    pidx = participants.index(d["participant_id"])
    z = d["z"].to_numpy(dtype=float)
    onehot = np.zeros((len(z), len(arms)))
    onehot[np.arange(len(z)), arm_idx] = 1.0

    def stat(w: np.ndarray) -> np.ndarray:
        tot = (onehot * w[:, None]).sum(axis=0)
        m = np.where(tot > 0, (onehot * (w * z)[:, None]).sum(axis=0) / np.where(tot > 0, tot, 1), np.nan)
        return np.asarray(m - m[arms.index(ref)])

    full = stat(participants.point(pidx))
    draws = bootstrap(stat, pidx, participants.counts)
    n_part = int(np.unique(pidx).size)
    out = {a: estimate(full[i], draws[:, i], n_part) for i, a in enumerate(arms) if np.isfinite(full[i])}
    return out, full, draws


def hierarchy(
    tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None
) -> HierarchyResult:
    """Arm strengths per source from the rankings, and each simulated source against human."""
    participants = participants or participants_of(tables, n_boot, seed)
    j = judgements_frame(tables)
    if not j["rank_used"].notna().any():
        return HierarchyResult(status="not_available", reason="no rank and no rating_preference to derive one")
    j, dropped = drop_gen_error(j, tables)
    arms = arm_order(tables, j["arm"].unique())
    ref = arms[0]  # the config's first arm when the run says it (tables.arms), else the first alphabetically
    out = HierarchyResult(reference_arm=ref)
    strengths: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fits: dict[str, Fitted] = {}
    for source in sorted(set(j["source"].unique()) | set(dropped)):
        res, full, draws, fitted = _fit_source(j[j["source"] == source], arms, ref, participants)
        res.n_gen_error = dropped.get(str(source), 0)
        out.per_source[source] = res
        if full is not None and draws is not None:
            strengths[source] = (full, draws)
        if fitted is not None:
            fits[source] = fitted
    if HUMAN in strengths:
        h, hd = strengths[HUMAN]
        for s in sim_sources(list(strengths)):
            v, vd = strengths[s]
            both = np.isfinite(h) & np.isfinite(v)
            n = int(both.sum())
            if n < 3:
                continue
            taus = _tau_b_rows(hd[:, both], vd[:, both])
            cors = np.array([weighted_corr(hd[b, both], vd[b, both]) for b in range(hd.shape[0])])
            ho = [a for a, ok in zip(arms, both) if ok]
            same = sorted(ho, key=lambda a: -h[arms.index(a)]) == sorted(ho, key=lambda a: -v[arms.index(a)])
            out.vs_human[s] = HierarchyComparison(
                kendall_tau=estimate(kendall_tau(h[both], v[both]), taus, n),
                strength_corr=estimate(weighted_corr(h[both], v[both]), cors, n),
                same_ordering=same,
            )
            if HUMAN in fits and s in fits:
                _strength_diff(out.vs_human[s], fits[HUMAN], fits[s])
    return out


def _tau_b_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each row pair of two (B, k) arrays at once (NaN where a row is constant or
    has a NaN), the same as ``kendall_tau`` per row; a per-draw scipy call costs more than the fits."""
    i, j = np.triu_indices(x.shape[1], 1)
    sx, sy = np.sign(x[:, j] - x[:, i]), np.sign(y[:, j] - y[:, i])
    with np.errstate(all="ignore"):
        tau = (sx * sy).sum(axis=1) / np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1))
    bad = ~np.isfinite(x).all(axis=1) | ~np.isfinite(y).all(axis=1)
    return np.where(bad, np.nan, tau)


def _strength_diff(cmp: HierarchyComparison, human: Fitted, sim: Fitted) -> None:
    """Fill ``strength_diff`` (per arm, sim − human, vs the reference arm) and its joint test."""
    (hcs, hfit, harms, hdraws), (scs, sfit, sarms, sdraws) = human, sim
    common = [a for a in harms if a in sarms]
    if not common:
        return
    both = stack([(hcs, hfit), (scs, sfit)])
    c = np.zeros((len(common), both.params.size))
    for i, a in enumerate(common):
        c[i, harms.index(a)] = -1.0
        c[i, len(harms) + sarms.index(a)] = 1.0
    diff = linear(both, c)
    for i, a in enumerate(common):
        d = sdraws[:, sarms.index(a)] - hdraws[:, harms.index(a)]  # paired: one participant draw
        cmp.strength_diff[a] = robust_estimate(diff, i, d)
    try:
        cmp.strength_diff_p = wald_test(diff, range(len(common)))
    except FitError as exc:
        cmp.note = f"no joint test of the strength differences: {exc}"
