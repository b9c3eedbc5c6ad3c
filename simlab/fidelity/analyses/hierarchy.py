"""Analysis 1: aggregate arm hierarchy (rank-ordered / Plackett–Luce logit) per source."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import (
    HUMAN,
    choice_sets,
    dummies,
    judgements_frame,
    participants_of,
    sim_sources,
)
from simlab.fidelity.result import Estimate, HierarchyComparison, HierarchyResult, HierarchySource
from simlab.fidelity.stats import (
    FitError,
    Participants,
    bootstrap,
    clogit_draws,
    estimate,
    fit_clogit,
    kendall_tau,
    weighted_corr,
)
from simlab.tables import Tables


def _fit_source(
    sub: pd.DataFrame, arms: list[str], ref: str, participants: Participants
) -> tuple[HierarchySource, np.ndarray | None, np.ndarray | None]:
    """(result, strengths over ``arms`` incl. the 0 reference, bootstrap draws (n_boot, n_arms))."""
    present = sorted(sub["arm"].astype(str).unique())
    if ref not in present:
        return HierarchySource(status="failed", reason=f"reference arm {ref!r} never judged"), None, None
    others = [a for a in arms if a != ref and a in present]
    d = pd.concat([sub.reset_index(drop=True), dummies(sub["arm"].astype(str).reset_index(drop=True), others, "arm")], axis=1)
    names = [f"arm[{a}]" for a in others]
    cs = choice_sets(d, names, "ranking", participants)
    if cs.n_strata == 0:
        return HierarchySource(status="not_available", reason="no rankings with two or more arms"), None, None
    try:
        fit = fit_clogit(cs)
    except FitError as exc:
        return HierarchySource(status="failed", reason=str(exc)), None, None
    draws = clogit_draws(cs, fit.params, participants.counts)
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
        n_events=int(d.loc[d["rank_used"].notna(), "event"].nunique()),
        derived_ranks=derived,
        rating_strengths=rating_strengths,
        ordering_basis=basis,
    )
    return res, full, full_draws


def _rating_strengths(
    sub: pd.DataFrame, arms: list[str], ref: str, participants: Participants
) -> tuple[dict[str, Estimate], np.ndarray | None, np.ndarray | None]:
    """Mean within-event standardised rating per arm relative to ``ref``, with participant-bootstrap draws."""
    r = pd.to_numeric(sub["rating_preference"], errors="coerce")
    ok = r.notna()
    if ok.sum() < 2:
        return {}, None, None
    d = sub.loc[ok, ["event", "arm", "participant_id"]].assign(r=r[ok].to_numpy())
    g = d.groupby("event")["r"]
    sd = g.transform("std")
    d = d.assign(z=((d["r"] - g.transform("mean")) / sd).where(sd > 0, 0.0))
    d = d[d.groupby("event")["r"].transform("size") >= 2]
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
        return m - m[arms.index(ref)]

    full = stat(np.ones(len(z)))
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
    arms = sorted(j["arm"].astype(str).unique())
    ref = arms[0]
    out = HierarchyResult(reference_arm=ref)
    strengths: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in sorted(j["source"].unique()):
        res, full, draws = _fit_source(j[j["source"] == source], arms, ref, participants)
        out.per_source[source] = res
        if full is not None and draws is not None:
            strengths[source] = (full, draws)
    if HUMAN in strengths:
        h, hd = strengths[HUMAN]
        for s in sim_sources(list(strengths)):
            v, vd = strengths[s]
            both = np.isfinite(h) & np.isfinite(v)
            n = int(both.sum())
            if n < 3:
                continue
            taus = np.array([kendall_tau(hd[b, both], vd[b, both]) for b in range(hd.shape[0])])
            cors = np.array([weighted_corr(hd[b, both], vd[b, both]) for b in range(hd.shape[0])])
            ho = [a for a, ok in zip(arms, both) if ok]
            same = sorted(ho, key=lambda a: -h[arms.index(a)]) == sorted(ho, key=lambda a: -v[arms.index(a)])
            out.vs_human[s] = HierarchyComparison(
                kendall_tau=estimate(kendall_tau(h[both], v[both]), taus, n),
                strength_corr=estimate(weighted_corr(h[both], v[both]), cors, n),
                same_ordering=same,
            )
    return out
