"""Analysis 6: text-level trait biases — conditional logit of ranked_best on standardised reply
traits (autograde, unit_kind 'reply', averaged over rater runs and units) plus a standardised
length covariate (total assistant characters per conversation × arm), with arm dummies so a
trait effect is not confounded with which arm tends to have the trait. Standardisation uses the
pooled data so coefficients are comparable across sources. Pooled model: source × trait terms
for every simulated source, LR test of all of them. Without autograde, length alone is used.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import (
    HUMAN,
    choice_sets,
    has_values,
    judgements_frame,
    participants_of,
    sim_sources,
)
from simlab.fidelity.analyses.position import _design
from simlab.fidelity.result import TraitsResult, TraitsSource
from simlab.fidelity.stats import FitError, Participants, clogit_draws, estimate, fit_clogit, lr_test
from simlab.tables import Tables


def _features(tables: Tables, exclude: Collection[str] = ()) -> tuple[pd.DataFrame | None, list[str], str | None]:
    """(conversation_id, arm) × feature table, the feature names, and the autograde mode used."""
    parts: list[pd.DataFrame] = []
    g = tables.autograde
    mode = None
    if g is not None and {"unit_kind", "conversation_id", "arm", "dimension", "score"} <= set(g.columns):
        g = g[(g["unit_kind"] == "reply") & g["arm"].notna() & ~g["dimension"].isin(list(exclude))]
        if "mode" in g.columns and g["mode"].notna().any():
            # one mode, not an average of two different readings of a reply
            mode = "conversation" if (g["mode"] == "conversation").any() else str(g["mode"].dropna().iloc[0])
            g = g[g["mode"] == mode]
        if not g.empty:
            score = pd.to_numeric(g["score"], errors="coerce")
            # refusal is graded 1-3 and analysed binarised: refused when >= 2 (PROTOCOL §5.7)
            score = score.where(g["dimension"] != "refusal", (score >= 2).astype(float).where(score.notna()))
            piv = g.assign(score=score).pivot_table(
                index=["conversation_id", "arm"], columns="dimension", values="score", aggfunc="mean"
            )
            piv.columns = [str(c) for c in piv.columns]
            parts.append(piv)
    if has_values(tables.turns, "text"):
        t = tables.turns
        a = t[(t["role"] == "assistant") & t["arm"].notna()]
        if not a.empty:
            parts.append(a.assign(length=a["text"].fillna("").astype(str).str.len()).groupby(["conversation_id", "arm"])[["length"]].sum())
    if not parts:
        return None, [], mode
    f = pd.concat(parts, axis=1).reset_index()
    names = [c for c in f.columns if c not in ("conversation_id", "arm")]
    return f, names, mode


def traits(
    tables: Tables,
    *,
    n_boot: int = 200,
    seed: int = 0,
    participants: Participants | None = None,
    exclude: Collection[str] = (),
) -> TraitsResult:
    """Trait effects on ranked_best per source, and source × trait interactions vs human.

    ``exclude``: autograde dimensions to leave out (those below the reliability threshold).
    """
    feats, names, mode = _features(tables, exclude)
    if feats is None:
        return TraitsResult(status="not_available", reason="no autograde reply scores and no assistant texts")
    participants = participants or participants_of(tables, n_boot, seed)
    j = judgements_frame(tables)
    if not j["ranked_best"].notna().any():
        return TraitsResult(status="not_available", reason="no ranked_best (no rank or rating_preference)")
    j = j.merge(feats, on=["conversation_id", "arm"], how="inner")
    names = [n for n in names if j[n].notna().any() and j[n].std() > 0]
    if j.empty or not names:
        return TraitsResult(status="not_available", reason="no judgement rows with trait scores")
    for n in names:
        j[n] = (j[n] - j[n].mean()) / j[n].std()
    j = j[j["ranked_best"].notna()].reset_index(drop=True)
    j["ranked_best"] = j["ranked_best"].astype(bool)
    out = TraitsResult(traits=names, excluded=sorted(exclude), mode=mode)
    sources = sorted(j["source"].unique())
    arms_by_source = {s: sorted(j.loc[j["source"] == s, "arm"].astype(str).unique()) for s in sources}
    for s in sources:
        sub = j[j["source"] == s].reset_index(drop=True)
        d, arm_cols = _design(sub, {s: arms_by_source[s]}, pooled=False)
        try:
            cs = choice_sets(d, [*names, *arm_cols], "ranked_best", participants)
            if cs.n_strata == 0:
                raise FitError("no choice events with two or more alternatives")
            fit = fit_clogit(cs)
            draws = clogit_draws(cs, fit.params, participants.counts, slice(0, len(names)))
            n_part = int(np.unique(cs.participant).size)
            out.per_source[s] = TraitsSource(
                coefficients={n: estimate(fit.params[i], draws[:, i], n_part, float(fit.pvalues[i])) for i, n in enumerate(names)},
                n_events=int(d["event"].nunique()),
            )
        except FitError as exc:
            out.per_source[s] = TraitsSource(status="failed", reason=str(exc))
    sims = [s for s in sim_sources(sources) if out.per_source[s].status == "ok"]
    if HUMAN in out.per_source and out.per_source[HUMAN].status == "ok" and sims:
        use = [HUMAN, *sims]
        pj = j[j["source"].isin(use)].reset_index(drop=True)
        d, arm_cols = _design(pj, {s: arms_by_source[s] for s in use}, pooled=True)
        inter = []
        for s in sims:
            for n in names:
                d[f"{n}:{s}"] = d[n] * (d["source"] == s)
                inter.append(f"{n}:{s}")
        try:
            cs = choice_sets(d, [*names, *inter, *arm_cols], "ranked_best", participants)
            full = fit_clogit(cs)
            restricted = fit_clogit(choice_sets(d, [*names, *arm_cols], "ranked_best", participants))
            out.interaction_p = lr_test(full, restricted, len(inter))
            k0 = len(names)
            draws = clogit_draws(cs, full.params, participants.counts, slice(k0, k0 + len(inter)))
            n_part = int(np.unique(cs.participant).size)
            for i, nm in enumerate(inter):
                n, s = nm.rsplit(":", 1)
                out.interaction.setdefault(s, {})[n] = estimate(full.params[k0 + i], draws[:, i], n_part, float(full.pvalues[k0 + i]))
        except FitError as exc:
            out.reason = f"pooled model failed: {exc}"
    return out
