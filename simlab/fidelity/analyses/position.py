"""Analysis 4: position bias — conditional logit of a choice on display position, arm dummies in.

Coding: ``first_shown`` = 1 when position == 1 (shown first), reference = every later
position, so the first-shown effect is one coefficient (log-odds). A second model per source
has a dummy per position with the LAST position as reference, to show the whole profile.

Order or label: the user sees each reply under a letter (A, B, …). Where the letter is the
display position's letter (A shown first: every human data set so far, and simulated runs with
``protocol.letters = "by_position"``), order and label are one effect and ``first_shown`` is
both; the result says so (``order_vs_label = "confounded"``). Where a source's letters vary
independently of the order (``protocol.letters = "independent"``: in at least
``MIN_SPLIT_SHARE`` of its events the reply shown first is not the one labelled A), a third
model has both ``first_shown`` and ``first_label`` (letter A) with the arm dummies, so each is
estimated holding the other fixed (``first_shown_joint``, ``first_label``), and each simulated
source's sim − human differences of both where the human side is separable too.

Log-odds are on the scale of each source's choice noise: a simulator that weighs position
exactly like people but chooses less noisily has larger log-odds for everything. So each
source also gets a scale-free measure, ``first_shown_excess``: the share of events whose
first-shown arm is chosen minus the share its arms alone predict (the fitted model with the
position term set to 0), in percentage points. Its sim − human difference is the headline.

Comparisons with human: a pooled model with source × position terms is the per-source fits
stacked (strata never mix sources), with a sandwich covariance clustered by participant (a
human and their simulated copy are one cluster); Wald tests of the first_shown interaction and
of every position's interaction. CIs: the shared participant bootstrap (paired across sources),
except the sim − human differences of order and label (``first_shown_joint_vs_human``,
``first_label_vs_human``): the cluster-robust t interval that matches their p-value.
Events of conversations with a failed generation (``gen_error``) are dropped and counted; a
source with fewer than ``MIN_PARTICIPANTS`` participants is not analysed; a source whose choices
are perfectly predicted by position (separation) gets a penalised fit (``penalised``).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps

from simlab.fidelity.analyses._prep import (
    choice_sets,
    drop_gen_error,
    dummies,
    has_values,
    judgements_frame,
    participants_of,
    sim_sources,
    too_few_participants,
)
from simlab.fidelity.result import Estimate, PositionFit, PositionOutcome, PositionResult
from simlab.fidelity.stats import (
    ChoiceSets,
    ClogitFit,
    FitError,
    Participants,
    clogit_draws,
    estimate,
    fit_clogit,
    linear,
    participant_scores,
    robust_estimate,
    stack,
    wald_test,
)
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["position"]

OUTCOMES = ("ranked_best", "opening_choice", "ranking")
MIN_SPLIT_SHARE = 0.05
"""A source whose events show the first reply under a letter other than A in fewer than this share
of its events has order and label confounded: a handful of such events (e.g. a few mis-recorded
letters) would make two near-collinear effects of little use, so one combined effect is reported."""
FIRST_LABEL = "A"


def _design(j: pd.DataFrame, arms_by_source: dict[str, list[str]], pooled: bool) -> tuple[pd.DataFrame, list[str]]:
    """Arm dummies (per source when pooled) with the first arm of each source as reference."""
    parts: list[pd.DataFrame] = []
    arm = j["arm"].astype(str)
    for s, arms in arms_by_source.items():
        d = dummies(arm, arms[1:], "arm").mul((j["source"] == s).to_numpy(dtype=float), axis=0)
        parts.append(d.set_axis([f"arm[{a}]" + (f":{s}" if pooled else "") for a in arms[1:]], axis=1))
    d = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=j.index)
    return pd.concat([j, d], axis=1), list(d.columns)


@dataclass
class _Model:
    """One fitted conditional logit of one source, with its bootstrap draws of every coefficient."""

    cs: ChoiceSets
    fit: ClogitFit
    draws: np.ndarray
    names: list[str]

    def est(self, name: str) -> Estimate:
        k = self.names.index(name)
        n = int(np.unique(self.cs.participant).size)
        return estimate(self.fit.params[k], self.draws[:, k], n, float(self.fit.pvalues[k]))


Fitted = list[tuple[bytes, ClogitFit, np.ndarray]]
"""Models already fitted in this analysis, by their choice sets' digest (``_digest``): a model on the
same choice sets is not refitted."""


def _digest(cs: ChoiceSets) -> bytes:
    """A digest of the choice sets' arrays (shapes, dtypes and bytes): equal choice sets, equal digests.
    Kept instead of the choice sets themselves, whose design is events × alternatives × features
    floats (≈ 80 MB a model at Chatbot-Arena scale, several models per analysis)."""
    h = hashlib.blake2b(digest_size=32)
    for x in (cs.X, cs.chosen, cs.stratum, cs.participant):
        a = np.ascontiguousarray(x)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.data)
    return h.digest()


def _fit(d: pd.DataFrame, feats: list[str], how: str, participants: Participants, done: Fitted | None = None) -> _Model:
    """The conditional logit of ``feats`` with its bootstrap draws. A model whose choice sets equal
    one in ``done`` (two positions only: the profile model is the first_shown model; two arms
    without ties: ranked_best is the whole ranking) reuses that fit and its draws: same data,
    same participant draws, so the same numbers, at no cost."""
    cs = choice_sets(d, feats, how, participants)
    if cs.n_strata == 0:
        raise FitError("no choice events with two or more alternatives")
    key = _digest(cs) if done is not None else b""
    for key0, fit0, draws0 in done or []:
        if key == key0:
            return _Model(cs, fit0, draws0, feats)
    fit = fit_clogit(cs, participants.point(cs.participant))
    model = _Model(cs, fit, clogit_draws(cs, fit.params, participants.counts, penalised=fit.penalised), feats)
    if done is not None:
        done.append((key, fit, model.draws))
    return model


@dataclass
class _Excess:
    """The first-shown excess of one source: value (a share), draws and per-participant influence."""

    value: float
    draws: np.ndarray
    influence: np.ndarray  # (n_participants,) over the shared participant index
    n: int


def _excess(d: pd.DataFrame, how: str, arm_cols: list[str], model: _Model, participants: Participants) -> _Excess:
    """Share of events whose first-shown arm is chosen minus the share the arm mix predicts.

    Prediction of event e: the model's choice probability of its first-shown arm with the
    position term set to 0 (softmax of the arm coefficients over the event's arms). Ties for
    the best place split the event's credit. Influence per participant (for a cluster-robust
    test): their events' residuals plus the delta-method term of the estimated arm coefficients.
    """
    chosen_col = "rank_used" if how == "ranking" else how
    e = d[d[chosen_col].notna() & d[arm_cols].notna().all(axis=1)].sort_values("conversation_id", kind="stable").reset_index(drop=True)
    chosen = (e["rank_used"] == 1) if how == "ranking" else e[how].astype(bool)
    g = e.groupby("conversation_id", sort=False)
    keep = (g["first_shown"].transform("sum") == 1) & (g["arm"].transform("size") >= 2) & (chosen.groupby(e["conversation_id"]).transform("sum") > 0)
    e, chosen = e[keep].reset_index(drop=True), chosen[keep].reset_index(drop=True)
    if e.empty:
        raise FitError("no events with one first-shown arm and a choice")
    code, _ = pd.factorize(e["conversation_id"], sort=False)
    starts = np.flatnonzero(np.r_[True, np.diff(code) != 0])
    first = e["first_shown"].to_numpy() == 1
    credit = chosen.to_numpy(float) / np.add.reduceat(chosen.to_numpy(float), starts)[code]
    observed = credit[first]  # one per event, in event order
    # arm dummies: mostly zeros when there are many arms, so kept sparse (a dense copy per step is
    # events × arms floats, hundreds of MB at Chatbot-Arena scale)
    a_sparse = sparse.csr_matrix(e[arm_cols].to_numpy(dtype=float) if arm_cols else np.zeros((len(e), 0)))
    arm_k = [model.names.index(c) for c in arm_cols]
    part = participants.index(e["participant_id"].to_numpy()[first])

    def predicted(beta_arm: np.ndarray) -> np.ndarray:
        eta = a_sparse @ beta_arm
        m = np.maximum.reduceat(eta, starts)
        x = np.exp(eta - m[code])
        return np.asarray(x / np.add.reduceat(x, starts)[code])

    beta = model.fit.params[arm_k]
    prob = predicted(beta)
    p_first = prob[first]
    # mean over events of d p_first / d beta_arm = p_first · (a_first − Σ_event prob · a), as sparse products
    grad_mean = (np.asarray(a_sparse[first].T @ p_first) - np.asarray(a_sparse.T @ (prob * p_first[code]))) / p_first.size
    resid = observed - p_first
    n_ev = resid.size
    value = float(np.average(resid, weights=participants.point(part)))  # raking weights, or ones
    n_part = len(participants.ids)
    influence = np.bincount(part, weights=(resid - value) / n_ev, minlength=n_part).astype(float)
    if arm_k:
        d_beta = np.zeros(model.fit.params.size)
        d_beta[arm_k] = grad_mean
        u = participant_scores(model.cs, model.fit.params)
        u = np.vstack([u, np.zeros((n_part - u.shape[0], u.shape[1]))])
        influence -= u @ (model.fit.cov @ d_beta)  # excess falls as the predicted share rises
    draws = np.full(participants.n_boot, np.nan)
    with np.errstate(all="ignore"):
        for b in range(participants.n_boot):
            bb = model.draws[b, arm_k]
            if not np.all(np.isfinite(bb)):
                continue
            w = participants.counts[b][part]
            if w.sum() > 0:
                draws[b] = float(np.sum(w * (observed - predicted(bb)[first])) / w.sum())
    return _Excess(value, draws, influence, int(np.unique(part).size))


def _robust_p(value: float, influence: np.ndarray) -> float:
    """Two-sided p of value = 0 from per-participant influences (sandwich, t with G − 1 df)."""
    g = int(np.count_nonzero(influence))
    if g < 2:
        return float("nan")
    se = float(np.sqrt(np.sum(influence**2) * g / (g - 1)))
    return float(2 * sps.t.sf(abs(value) / se, g - 1)) if se > 0 else float("nan")


def _pct(x: _Excess, p: float) -> Estimate:
    return estimate(100 * x.value, 100 * x.draws, x.n, p)


def _with_labels(j: pd.DataFrame) -> pd.DataFrame:
    """``first_label`` (1 = labelled A, NaN = no letter) and ``label_mismatch`` (the letter is not the
    display position's letter: A for position 1, B for 2, …; NaN = no letter)."""
    if "letter" not in j.columns:
        return j.assign(first_label=np.nan, label_mismatch=np.nan)
    letter = j["letter"].astype("string").str.strip().str.upper()
    letter = letter.where(letter != "")
    pos = j["position"].to_numpy(dtype=int)
    alphabet = np.array([*string.ascii_uppercase, ""])
    of_position = pd.Series(alphabet[np.where((pos >= 1) & (pos <= 26), pos - 1, 26)], index=j.index, dtype="string")
    known = letter.notna().to_numpy()
    return j.assign(first_label=np.where(known, (letter == FIRST_LABEL).fillna(False).to_numpy(float), np.nan),
                    label_mismatch=np.where(known, (letter != of_position).fillna(True).to_numpy(float), np.nan))


@dataclass
class _Labels:
    """How letters relate to display order in one source's events."""

    design: Literal["separate", "confounded", "no_labels"]
    mismatch: float | None
    split: float | None
    note: str


def _labels(d: pd.DataFrame) -> _Labels:
    """Whether order and label can be told apart in these rows (one source, one outcome)."""
    known = d["first_label"].notna()
    if not known.any():
        return _Labels("no_labels", None, None, "no letters recorded: first_shown is the effect of display order "
                       "(and of whatever label went with it)")
    mismatch = float(d.loc[known, "label_mismatch"].mean())
    e = d[d["first_label"].notna().groupby(d["conversation_id"]).transform("all")]
    firsts = e[e["first_shown"] == 1]
    split = float((firsts["first_label"] != 1).mean()) if len(firsts) else 0.0
    if split >= MIN_SPLIT_SHARE:
        return _Labels("separate", mismatch, split,
                       f"order and label can be told apart (in {100 * split:.0f}% of events the reply shown first is not "
                       f"labelled {FIRST_LABEL}): first_shown_joint and first_label are estimated together, each "
                       "holding the other fixed")
    if mismatch == 0:
        why = f"the letter is always the display position's letter ({FIRST_LABEL} shown first)"
    else:
        why = (f"the reply shown first is labelled {FIRST_LABEL} in {100 * (1 - split):.0f}% of events "
               f"(fewer than {100 * MIN_SPLIT_SHARE:.0f}% differ)")
    return _Labels("confounded", mismatch, split, f"label and order are confounded: {why}, so first_shown is one "
                   "combined effect of being shown first and being labelled " + FIRST_LABEL)


def _outcome(
    j: pd.DataFrame, how: str, participants: Participants, dropped: dict[str, int], *, profile: bool = True,
    done: Fitted | None = None,
) -> PositionOutcome:
    """One outcome's per-source fits and comparisons (``profile=False`` skips the per-position
    model, for the calibration of the first_shown measures alone)."""
    col = "rank_used" if how == "ranking" else how
    j = j[j[col].notna() & j["position"].notna()].reset_index(drop=True)
    if j.empty:
        return PositionOutcome(status="not_available", reason=f"no rows with both position and {col}")
    j["position"] = pd.to_numeric(j["position"]).astype(int)
    j["first_shown"] = (j["position"] == 1).astype(float)
    j = _with_labels(j)
    if how != "ranking":
        j[how] = j[how].astype(bool)
    out = PositionOutcome()
    sources = sorted(j["source"].unique())
    arms_by_source = {s: sorted(j.loc[j["source"] == s, "arm"].astype(str).unique()) for s in sources}
    firsts: dict[str, _Model] = {}
    profiles: dict[str, tuple[_Model, list[int]]] = {}
    excess: dict[str, _Excess] = {}
    joints: dict[str, _Model] = {}
    labels: dict[str, _Labels] = {}
    for s in sources:
        sub = j[j["source"] == s].reset_index(drop=True)
        few = too_few_participants(sub)
        if few:
            out.per_source[s] = PositionFit(status="not_available", reason=few, n_gen_error=dropped.get(s, 0))
            continue
        d, arm_cols = _design(sub, {s: arms_by_source[s]}, pooled=False)
        positions = sorted(d["position"].unique())
        lab = labels[s] = _labels(d)
        joint, n_joint = None, 0
        try:
            if lab.design == "separate":
                # events with a letter on every row: both effects holding the other (and the arms) fixed
                lettered = d[d["first_label"].notna().groupby(d["conversation_id"]).transform("all")].reset_index(drop=True)
                joint = _fit(lettered, ["first_shown", "first_label", *arm_cols], how, participants, done)
                n_joint = int(lettered["conversation_id"].nunique())
        except FitError as exc:
            lab.note += f"; the joint model could not be fitted: {exc}"
        try:
            first = _fit(d, ["first_shown", *arm_cols], how, participants, done)
            pos_levels = positions[:-1]
            prof = None
            if profile:
                pd_ = pd.concat([d, dummies(d["position"], pos_levels, "position")], axis=1)
                pnames = [f"position[{p}]" for p in pos_levels]
                prof = _fit(pd_, [*pnames, *arm_cols], how, participants, done)
            ex = _excess(d, how, arm_cols, first, participants)
        except FitError as exc:
            out.per_source[s] = PositionFit(status="failed", reason=str(exc), n_gen_error=dropped.get(s, 0))
            continue
        firsts[s], excess[s] = first, ex
        if prof is not None:
            profiles[s] = (prof, positions)
        if joint is not None:
            joints[s] = joint
        out.per_source[s] = PositionFit(
            first_shown=first.est("first_shown"),
            positions={str(p): prof.est(f"position[{p}]") for p in pos_levels} if prof is not None else {},
            first_shown_excess=_pct(ex, _robust_p(ex.value, ex.influence)),
            n_events=int(d["conversation_id"].nunique()),
            penalised=(first.fit.penalised or (prof is not None and prof.fit.penalised)
                       or (joint is not None and joint.fit.penalised)),
            n_gen_error=dropped.get(s, 0),
            order_vs_label=lab.design,
            order_vs_label_note=lab.note,
            label_mismatch_share=lab.mismatch,
            split_event_share=lab.split,
            first_shown_joint=joint.est("first_shown") if joint is not None else None,
            first_label=joint.est("first_label") if joint is not None else None,
            n_events_joint=n_joint if joint is not None else 0,
        )
    sims = [s for s in sim_sources(sources) if s in firsts]
    if HUMAN in firsts and sims:
        _compare(out, firsts, profiles, excess, sims)
    if sims:
        _compare_labels(out, joints, labels, sims)
    return out


def _compare_labels(out: PositionOutcome, joints: dict[str, _Model], labels: dict[str, _Labels], sims: list[str]) -> None:
    """sim − human differences of first_shown_joint and first_label (each pair stacked, sandwich
    clustered by participant; p-value and 95% CI: cluster-robust t with participants − 1 df), where
    both sides have the joint model; otherwise the reason, per simulated source whose own design is
    separable."""
    for s in sims:
        if s not in joints:
            continue
        if HUMAN not in joints:
            h, fit = labels.get(HUMAN), out.per_source.get(HUMAN)
            why = (h.note if h is not None else (fit.reason or "not analysed") if fit is not None
                   else "no human events with a display position in this outcome")
            out.label_not_compared[s] = f"no sim − human difference of order and label: human: {why}"
            continue
        use = [HUMAN, s]
        both = stack([(joints[x].cs, joints[x].fit) for x in use])
        k = len(joints[HUMAN].names)
        c = np.zeros((2, both.params.size))
        c[0, k], c[0, 0] = 1.0, -1.0  # first_shown
        c[1, k + 1], c[1, 1] = 1.0, -1.0  # first_label
        inter = linear(both, c)
        # the cluster-robust t interval that matches the p-value: the percentile participant bootstrap
        # of these differences covered too rarely at 40 participants (calibration), this one did not
        draws = joints[s].draws[:, :2] - joints[HUMAN].draws[:, :2]  # only count failed replicates
        out.first_shown_joint_vs_human[s] = robust_estimate(inter, 0, draws[:, 0])
        out.first_label_vs_human[s] = robust_estimate(inter, 1, draws[:, 1])


def _compare(
    out: PositionOutcome,
    firsts: dict[str, _Model],
    profiles: dict[str, tuple[_Model, list[int]]],
    excess: dict[str, _Excess],
    sims: list[str],
) -> None:
    """Source × position interactions vs human (cluster-robust Wald) and the excess differences."""
    use = [HUMAN, *sims]
    h = excess[HUMAN]
    for s in sims:
        x = excess[s]
        diff = _Excess(x.value - h.value, x.draws - h.draws, x.influence - h.influence, 0)
        diff.n = int(np.count_nonzero(diff.influence))
        out.excess_vs_human[s] = _pct(diff, _robust_p(diff.value, diff.influence))
    reasons: list[str] = []
    # first_shown: one coefficient per source, the difference is the interaction
    both = stack([(firsts[s].cs, firsts[s].fit) for s in use])
    offset = np.cumsum([0] + [len(firsts[s].names) for s in use])
    c = np.zeros((len(sims), both.params.size))
    for i, s in enumerate(sims):
        c[i, offset[use.index(s)]], c[i, 0] = 1.0, -1.0
    inter = linear(both, c)
    for i, s in enumerate(sims):
        d = firsts[s].draws[:, 0] - firsts[HUMAN].draws[:, 0]
        out.interaction[s] = estimate(inter.params[i], d, inter.n_clusters, float(inter.pvalues[i]))
    try:
        out.interaction_p = wald_test(inter, range(len(sims)))
    except FitError as exc:
        reasons.append(f"no joint test of first_shown × source: {exc}")
    if HUMAN not in profiles:
        if reasons:
            out.reason = "; ".join(reasons)
        return
    # every position: only sources shown the same positions (same reference) are comparable
    hprof, hpos = profiles[HUMAN]
    same = [s for s in sims if s in profiles and profiles[s][1] == hpos]
    reasons += [f"{s} shows other positions than human ({profiles[s][1]} vs {hpos}): no position-by-position comparison"
                for s in sims if s in profiles and s not in same]
    if same and len(hpos) > 1:
        use = [HUMAN, *same]
        both = stack([(profiles[s][0].cs, profiles[s][0].fit) for s in use])
        offset = np.cumsum([0] + [len(profiles[s][0].names) for s in use])
        levels = hpos[:-1]
        c = np.zeros((len(same) * len(levels), both.params.size))
        for i, s in enumerate(same):
            for k in range(len(levels)):
                c[i * len(levels) + k, offset[use.index(s)] + k], c[i * len(levels) + k, k] = 1.0, -1.0
        inter = linear(both, c)
        for i, s in enumerate(same):
            sprof = profiles[s][0]
            out.positions_interaction[s] = {
                str(p): estimate(inter.params[i * len(levels) + k], sprof.draws[:, k] - hprof.draws[:, k],
                                 inter.n_clusters, float(inter.pvalues[i * len(levels) + k]))
                for k, p in enumerate(levels)
            }
        try:
            out.positions_interaction_p = wald_test(inter, range(c.shape[0]))
        except FitError as exc:
            reasons.append(f"no joint test of position × source: {exc}")
    if reasons:
        out.reason = "; ".join(reasons)


def position(
    tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None
) -> PositionResult:
    """Position bias per source and outcome, with the source × position comparisons vs human."""
    if not has_values(tables.judgements, "position"):
        return PositionResult(status="not_available", reason="judgements have no display position")
    participants = participants or participants_of(tables, n_boot, seed)
    j, dropped = drop_gen_error(judgements_frame(tables), tables)
    out = PositionResult()
    done: Fitted = []
    for how in OUTCOMES:
        col = "rank_used" if how == "ranking" else how
        if not has_values(j, col):
            out.outcomes[how] = PositionOutcome(status="not_available", reason=f"no {col}")
            continue
        out.outcomes[how] = _outcome(j, how, participants, dropped, done=done)
    return out
