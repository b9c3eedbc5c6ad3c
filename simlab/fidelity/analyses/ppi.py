"""Human estimates sharpened by simulated participants: prediction-powered inference (PPI++) of the
humans' arm hierarchy and position effect, per simulated source.

Setting: n human participants, their simulated copies (the same ``participant_id`` in a simulated
source) and N more simulated participants of that source with no human. Each target is the humans'
mean of a per-participant quantity (the participant is the unit, so the inference is clustered by
participant): per arm its **choice share** (the share of the participant's choice events in which the
arm was ranked best, ties splitting the event; arms not shown in an event get 0 there), the
**first-shown share** (the share in which the response shown first was ranked best) and the
**first-shown excess** (first-shown share − 1/k per event, k the event's responses: 0 without a
position effect). With every arm in every event (PRISM-X, Dialogue-Eval) the choice shares read as the
hierarchy: the order of the arms by share is the humans' order. Where each event shows a few arms of
many (an arena), an arm's share also reflects how often it was shown.

Per target the estimator is ``simlab.fidelity.stats.ppi.ppi_mean``: the humans' copies' errors correct
the mean of every simulated participant, weighted by λ̂ (PPI++'s variance-minimising value, clipped to
[0, 1]), so the CI covers the humans' mean whatever the simulator's quality and is narrower than the
humans-only one when the copies track their humans. Shares are in percent.

Events of conversations with a failed generation (``gen_error``) are dropped (as everywhere). A source
is ``not_available`` with fewer than ``MIN_PARTICIPANTS`` humans with a copy, or fewer than
``MIN_SIM_ONLY`` simulated participants without a human (with none, PPI is the humans-only estimate).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import (
    MIN_PARTICIPANTS,
    arm_order,
    drop_gen_error,
    judgements_frame,
    sim_sources,
)
from simlab.fidelity.ppi_result import PPIResult, PPISource, PPITarget
from simlab.fidelity.stats.ppi import ppi_mean
from simlab.fidelity.status import Estimate
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["MIN_SIM_ONLY", "participant_quantities", "ppi"]

MIN_SIM_ONLY = 2
"""Simulated participants without a human needed for a variance of their mean (their part of the
variance is scaled by λ̂² and their share of the simulated participants, so a few still help)."""
FIRST_SHOWN_SHARE = "first_shown_share"
FIRST_SHOWN_EXCESS = "first_shown_excess"
SHARE = "choice_share:"


def participant_quantities(j: pd.DataFrame, arms: list[str]) -> pd.DataFrame:
    """One row per (source, participant_id) with their quantities in percent: ``choice_share:<arm>`` per
    arm, ``first_shown_share`` and ``first_shown_excess`` (NaN for a participant with no event that
    shows one response first). ``j``: judgement rows with ``rank_used`` (``judgements_frame``).

    >>> j = pd.DataFrame({"conversation_id": ["c1", "c1", "c2", "c2"], "participant_id": "p", "source": "human",
    ...                   "arm": ["A", "B", "A", "B"], "position": [1, 2, 2, 1], "rank_used": [1, 2, 1, 2]})
    >>> participant_quantities(j, ["A", "B"]).iloc[0].to_dict()
    {'source': 'human', 'participant_id': 'p', 'choice_share:A': 100.0, 'choice_share:B': 0.0, 'first_shown_share': 50.0, 'first_shown_excess': 0.0}
    """
    e = j[j["rank_used"].notna()]
    conv, _ = pd.factorize(e["conversation_id"].astype(str))
    best = (e["rank_used"] == 1).to_numpy(float)
    k = np.bincount(conv)[conv].astype(float)
    n_best = np.bincount(conv, weights=best)[conv]
    keep = (k >= 2) & (n_best > 0)
    e, conv, best, k, n_best = e[keep], conv[keep], best[keep], k[keep], n_best[keep]
    credit = best / np.where(n_best > 0, n_best, 1.0)
    s_code, s_names = pd.factorize(e["source"].astype(str))
    p_code, p_names = pd.factorize(e["participant_id"].astype(str))
    keys, part = np.unique(s_code.astype(np.int64) * len(p_names) + p_code, return_inverse=True)
    n_part = len(keys)
    _, first_row = np.unique(conv, return_index=True)
    n_events = np.bincount(part[first_row], minlength=n_part).astype(float)
    out = pd.DataFrame({"source": np.asarray(s_names)[keys // len(p_names)],
                        "participant_id": np.asarray(p_names)[keys % len(p_names)]})
    arm = pd.Index(arms).get_indexer(e["arm"].astype(str))
    for i, a in enumerate(arms):
        hit = arm == i
        out[f"{SHARE}{a}"] = 100 * np.bincount(part[hit], weights=credit[hit], minlength=n_part) / n_events
    pos = pd.to_numeric(e["position"], errors="coerce").to_numpy() if "position" in e.columns else np.full(len(e), np.nan)
    first = pos == 1
    one = np.bincount(conv, weights=first.astype(float))[conv] == 1  # the event shows one response first
    first &= one
    n_first = np.bincount(part[first], minlength=n_part).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = np.where(n_first > 0, n_first, np.nan)
        out[FIRST_SHOWN_SHARE] = 100 * np.bincount(part[first], weights=credit[first], minlength=n_part) / shown
        out[FIRST_SHOWN_EXCESS] = 100 * np.bincount(part[first], weights=credit[first] - 1 / k[first],
                                                    minlength=n_part) / shown
    return out


def _estimates(r_value: float, r_lo: float, r_hi: float, n: int, note: str | None = None) -> Estimate:
    return Estimate(value=r_value, ci_low=r_lo, ci_high=r_hi, n=n, note=note)


def _target(y: np.ndarray, f: np.ndarray, g: np.ndarray, w: np.ndarray, v: np.ndarray) -> PPITarget:
    """PPI of one target: ``y``/``f``/``w`` per human with a copy, ``g``/``v`` per simulated-only participant
    (NaN: the participant has no value of this quantity)."""
    ok = np.isfinite(y) & np.isfinite(f)
    y, f, w = y[ok], f[ok], w[ok]
    g, v = g[np.isfinite(g)], v[np.isfinite(g)]
    if len(y) < MIN_PARTICIPANTS:
        return PPITarget(status="not_available", n=len(y), n_sim_only=len(g),
                         reason=f"only {len(y)} human(s) with a copy have this quantity (at least "
                                f"{MIN_PARTICIPANTS} are needed)")
    if len(g) < MIN_SIM_ONLY:
        return PPITarget(status="not_available", n=len(y), n_sim_only=len(g),
                         reason=f"only {len(g)} simulated participant(s) without a human have this quantity (at "
                                f"least {MIN_SIM_ONLY} are needed)")
    r = ppi_mean(y, f, g, w=w, w_sim_only=v)
    note = f"PPI++ with λ̂ = {r.lam:.2f}, {r.n} humans and {r.n_sim_only} simulated participants without a human"
    eff = r.effective_n
    return PPITarget(
        ppi=_estimates(r.value, r.ci_low, r.ci_high, r.n, note),
        humans_only=_estimates(r.humans_value, r.humans_ci_low, r.humans_ci_high, r.n),
        lam=r.lam, n=r.n, n_sim_only=r.n_sim_only,
        copy_corr=r.copy_corr if np.isfinite(r.copy_corr) else None,
        effective_n=eff if np.isfinite(eff) else None,
        humans_saved=r.humans_saved if np.isfinite(eff) else None,
    )


def _order(shares: Mapping[str, PPITarget], which: str) -> list[str]:
    values = {a: getattr(t, which).value for a, t in shares.items() if getattr(t, which) is not None}
    return sorted(values, key=lambda a: -values[a])


def _source(q: pd.DataFrame, source: str, arms: list[str], weight: pd.Series) -> PPISource:
    human = q[q["source"] == HUMAN].set_index("participant_id")
    sim = q[q["source"] == source].set_index("participant_id")
    paired = human.index.intersection(sim.index)
    sim_only = sim.index.difference(human.index)
    counts = {"n_humans": len(paired), "n_humans_without_copy": len(human.index.difference(sim.index)),
              "n_sim_only": len(sim_only)}
    if len(paired) < MIN_PARTICIPANTS:
        return PPISource(status="not_available", **counts,
                         reason=f"only {len(paired)} human participant(s) have a copy in {source} (at least "
                                f"{MIN_PARTICIPANTS} are needed for a participant-clustered interval)")
    if len(sim_only) < MIN_SIM_ONLY:
        return PPISource(status="not_available", **counts,
                         reason=f"{source} has {len(sim_only)} participant(s) without a human (at least {MIN_SIM_ONLY} "
                                "are needed: without them the simulated participants add nothing to the humans' own "
                                "estimate)")
    w = weight.reindex(paired).fillna(1.0).to_numpy(float)
    v = weight.reindex(sim_only).fillna(1.0).to_numpy(float)
    h, c, g = human.loc[paired], sim.loc[paired], sim.loc[sim_only]

    def target(col: str) -> PPITarget:
        return _target(h[col].to_numpy(float), c[col].to_numpy(float), g[col].to_numpy(float), w, v)

    shares = {a: target(f"{SHARE}{a}") for a in arms}
    return PPISource(**counts, choice_share=shares, order=_order(shares, "ppi"),
                     humans_only_order=_order(shares, "humans_only"),
                     first_shown_share=target(FIRST_SHOWN_SHARE), first_shown_excess=target(FIRST_SHOWN_EXCESS))


def ppi(tables: Tables, *, weights: Mapping[str, float] | pd.Series | None = None) -> PPIResult:
    """PPI of the humans' choice share per arm, first-shown share and first-shown excess, per simulated
    source. ``weights``: participant_id → weight (e.g. raking weights; a human and their copy share one;
    participants not listed weigh 1)."""
    j, _ = drop_gen_error(judgements_frame(tables), tables)
    j = j[j["rank_used"].notna()]
    if j.empty:
        return PPIResult(status="not_available", reason="no rankings or preference ratings to choose a best response")
    sources = sorted(j["source"].astype(str).unique())
    if HUMAN not in sources:
        return PPIResult(status="not_available", reason="no human participants: PPI estimates a human quantity")
    sims = sim_sources(sources)
    if not sims:
        return PPIResult(status="not_available", reason="no simulated source to sharpen the human estimates with")
    arms = arm_order(tables, j["arm"].unique())
    q = participant_quantities(j, arms)
    q["participant_id"] = q["participant_id"].astype(str)
    w = pd.Series(dtype=float) if weights is None else pd.Series(weights, dtype=float)
    w.index = w.index.astype(str)
    out = PPIResult(arms=arms, weighted=weights is not None)
    for s in sims:
        out.per_source[s] = _source(q, s, arms, w)
    return out
