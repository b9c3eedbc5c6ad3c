"""Analysis 6: text-level trait biases — conditional logit of ranked_best on standardised reply
traits (autograde, unit_kind 'reply', averaged over rater runs and units) plus a standardised
length covariate (total assistant characters per conversation × arm). Standardisation uses the
pooled data so coefficients are comparable across sources. Without autograde, length alone.

Two specifications (``specification`` in the result):

- ``"arm_adjusted"`` (default): every autograded reply dimension (refusal binarised) + length,
  with arm dummies, so a trait effect is not confounded with which arm tends to have the trait.
- ``"paper"``: PROTOCOL §5.6 as the study states it — the continuous traits (every 0–10
  dimension; not the 1–3 refusal grade) + length, no arm dummies.

Per source, a trait that does not vary within that source's choice events cannot be estimated:
it is dropped for that source (with the reason in ``dropped``), not the whole source. Events
with a reply lacking a score (an errored or ungraded reply) are dropped whole and counted
(a choice among fewer arms is a different choice), as are events of conversations with a failed
generation (``gen_error``). Comparison with human: the per-source fits stacked (a pooled model
with source × trait terms) with a sandwich covariance clustered by participant; a Wald test of
every interaction; CIs from the paired participant bootstrap.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import (
    choice_sets,
    drop_gen_error,
    has_values,
    judgements_frame,
    participants_of,
    sim_sources,
    too_few_participants,
)
from simlab.fidelity.analyses.position import _design
from simlab.fidelity.result import TraitsResult, TraitsSource
from simlab.fidelity.stats import (
    ChoiceSets,
    ClogitFit,
    FitError,
    Participants,
    clogit_draws,
    estimate,
    fit_clogit,
    linear,
    robust_estimate,
    stack,
    wald_test,
)
from simlab.schema import HUMAN, binarise_refusal
from simlab.tables import Tables

__all__ = ["binarise_refusal", "traits"]

Specification = Literal["arm_adjusted", "paper"]
SPECIFICATIONS: tuple[Specification, ...] = ("arm_adjusted", "paper")
ORDINAL = ("refusal",)
"""Reply dimensions graded on a short ordinal scale (refusal 1–3), not continuous traits."""


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
            if "status" in g.columns:  # a failed grade has no score, whatever the row holds
                score = score.where(g["status"].fillna("ok") == "ok")
            # refusal is graded 1-3 and analysed binarised: refused when >= 2 (PROTOCOL §5.7)
            score = score.where(g["dimension"] != "refusal", binarise_refusal(score))
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
    f["arm"] = f["arm"].astype(str)
    names = [c for c in f.columns if c not in ("conversation_id", "arm")]
    return f, names, mode


def _varies(d: pd.DataFrame, name: str) -> bool:
    """Whether ``name`` differs between the arms of at least one event (else it has no effect to fit)."""
    spread = d.groupby("conversation_id")[name].agg(lambda x: x.max() - x.min())
    return bool((spread > 1e-12).any())


def _fit_source(
    sub: pd.DataFrame, names: list[str], arm_cols: list[str], participants: Participants
) -> tuple[TraitsSource, tuple[ChoiceSets, ClogitFit, list[str], np.ndarray] | None]:
    dropped = {n: "does not vary between the arms of any choice event in this source" for n in names if not _varies(sub, n)}
    used = [n for n in names if n not in dropped]
    if not used:
        return TraitsSource(status="not_available", reason="no trait varies within this source's choice events",
                            dropped=dropped), None
    cs = choice_sets(sub, [*used, *arm_cols], "ranked_best", participants)
    if cs.n_strata == 0:
        raise FitError("no choice events with two or more alternatives")
    fit = fit_clogit(cs, participants.point(cs.participant))
    draws = clogit_draws(cs, fit.params, participants.counts, slice(0, len(used)), penalised=fit.penalised)
    n_part = int(np.unique(cs.participant).size)
    res = TraitsSource(
        coefficients={n: estimate(fit.params[i], draws[:, i], n_part, float(fit.pvalues[i])) for i, n in enumerate(used)},
        n_events=int(sub["conversation_id"].nunique()),
        dropped=dropped,
        penalised=fit.penalised,
    )
    return res, (cs, fit, used, draws)


def traits(
    tables: Tables,
    *,
    n_boot: int = 200,
    seed: int = 0,
    participants: Participants | None = None,
    exclude: Collection[str] = (),
    specification: Specification = "arm_adjusted",
) -> TraitsResult:
    """Trait effects on ranked_best per source, and source × trait interactions vs human.

    ``exclude``: autograde dimensions to leave out (those below the reliability threshold).
    ``specification``: "arm_adjusted" (every dimension, arm dummies) or "paper" (continuous
    traits + length, no arm dummies); see the module docstring.
    """
    if specification not in SPECIFICATIONS:
        raise ValueError(f"specification must be one of {SPECIFICATIONS}, not {specification!r}")
    feats, names, mode = _features(tables, exclude)
    if feats is None:
        return TraitsResult(status="not_available", reason="no autograde reply scores and no assistant texts",
                            specification=specification)
    if specification == "paper":
        names = [n for n in names if n not in ORDINAL]
    participants = participants or participants_of(tables, n_boot, seed)
    j = judgements_frame(tables)
    if not j["ranked_best"].notna().any():
        return TraitsResult(status="not_available", reason="no ranked_best (no rank or rating_preference)",
                            specification=specification)
    j, gen_error = drop_gen_error(j, tables)
    j = j[j["ranked_best"].notna()].reset_index(drop=True)
    j["arm"] = j["arm"].astype(str)
    # left merge: a reply without scores stays visible, and its event is counted below
    j = j.merge(feats[["conversation_id", "arm", *names]], on=["conversation_id", "arm"], how="left")
    names = [n for n in names if j[n].notna().any() and j[n].std() > 0]
    if j.empty or not names:
        return TraitsResult(status="not_available", reason="no judgement rows with trait scores",
                            specification=specification)
    missing = j[names].isna().any(axis=1).groupby(j["conversation_id"]).transform("any")
    n_missing = j.loc[missing].groupby("source")["conversation_id"].nunique()
    j = j[~missing].reset_index(drop=True)
    for n in names:
        j[n] = (j[n] - j[n].mean()) / j[n].std()
    j["ranked_best"] = j["ranked_best"].astype(bool)
    out = TraitsResult(traits=names, excluded=sorted(exclude), mode=mode, specification=specification)
    sources = sorted(set(j["source"].unique()) | set(gen_error) | {str(s) for s in n_missing.index})
    arms_by_source = {s: sorted(j.loc[j["source"] == s, "arm"].unique()) for s in sources}
    fits: dict[str, tuple[ChoiceSets, ClogitFit, list[str], np.ndarray]] = {}
    for s in sources:
        sub = j[j["source"] == s].reset_index(drop=True)
        counts = {"n_gen_error": gen_error.get(s, 0), "n_missing": int(n_missing.get(s, 0))}
        few = too_few_participants(sub)
        if few:
            out.per_source[s] = TraitsSource(status="not_available", reason=few, **counts)
            continue
        arm_cols: list[str] = []
        if specification == "paper":
            d = sub
        else:
            d, arm_cols = _design(sub, {s: arms_by_source[s]}, pooled=False)
        try:
            res, fitted = _fit_source(d, names, arm_cols, participants)
        except FitError as exc:
            res, fitted = TraitsSource(status="failed", reason=str(exc)), None
        out.per_source[s] = res.model_copy(update=counts)
        if fitted is not None:
            fits[s] = fitted
    sims = [s for s in sim_sources(sources) if s in fits]
    if HUMAN in fits and sims:
        _interactions(out, fits, sims)
    return out


def _interactions(out: TraitsResult, fits: dict[str, tuple[ChoiceSets, ClogitFit, list[str], np.ndarray]],
                  sims: list[str]) -> None:
    """Source × trait interactions (sim − human) for the traits fitted in both, cluster-robust."""
    use = [HUMAN, *sims]
    both = stack([(fits[s][0], fits[s][1]) for s in use])
    offset = np.cumsum([0] + [fits[s][1].params.size for s in use])
    hused, hdraws = fits[HUMAN][2], fits[HUMAN][3]
    rows: list[tuple[str, str]] = []
    c_rows: list[np.ndarray] = []
    for s in sims:
        used = fits[s][2]
        for n in [n for n in hused if n in used]:
            c = np.zeros(both.params.size)
            c[offset[use.index(s)] + used.index(n)], c[hused.index(n)] = 1.0, -1.0
            rows.append((s, n))
            c_rows.append(c)
    if not rows:
        out.reason = "no trait is fitted in both human and a simulated source"
        return
    inter = linear(both, np.vstack(c_rows))
    for i, (s, n) in enumerate(rows):
        d = fits[s][3][:, fits[s][2].index(n)] - hdraws[:, hused.index(n)]
        out.interaction.setdefault(s, {})[n] = robust_estimate(inter, i, d)
    try:
        out.interaction_p = wald_test(inter, range(len(rows)))
    except FitError as exc:
        out.reason = f"no joint test of the source × trait interactions: {exc}"
