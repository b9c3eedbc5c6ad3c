"""Analysis 2: individual agreement of each simulated source with the matched human, against
the human self-consistency ceiling.

Matching: a judgement event is (participant_id, domain); a simulated event is matched with the
human event of the same participant and domain (the first conversation of each, if repeated),
row by row on arm. The ceiling: (a) cross-instrument top-1 agreement within the human source
(ranked_best vs argmax rating_preference vs argmax wtp_bid vs opening_choice; ranked_best vs
rating_preference is skipped when ranks were derived from the ratings); (b) test–retest where a
participant judged the same arm in two different conversations, against permutation baselines.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import HUMAN, has_values, judgements_frame, participants_of, sim_sources
from simlab.fidelity.result import AgreementComparison, AgreementResult, CeilingResult, Estimate, RetestResult
from simlab.fidelity.stats import Participants, bootstrap, estimate, weighted_corr

RATINGS = ("rating_preference", "rating_engagingness", "rating_provenance", "wtp_bid")
N_PERM = 200  # p-values down to 1/201: enough for "far better than chance"


def _mean_est(values: np.ndarray, part: np.ndarray, participants: Participants) -> Estimate:
    draws = bootstrap(lambda w: (w * values).sum() / w.sum(), part, participants.counts)[:, 0]
    return estimate(float(values.mean()), draws, int(np.unique(part).size))


def _event_pairs(d: pd.DataFrame, key: str, a: str, b: str) -> pd.DataFrame:
    """Per event, arm pairs (x < y) with sign of a and of b differences."""
    left = d[[key, "arm", a, b]]
    m = left.merge(left, on=key, suffixes=("_x", "_y"))
    m = m[m["arm_x"] < m["arm_y"]]
    return m.assign(sa=np.sign(m[f"{a}_x"] - m[f"{a}_y"]), sb=np.sign(m[f"{b}_x"] - m[f"{b}_y"]))


def _tau_per_event(d: pd.DataFrame, key: str, a: str, b: str) -> pd.Series:
    """Kendall τ-b per event between columns a and b (vectorised over events)."""
    m = _event_pairs(d, key, a, b)
    g = m.assign(c=m["sa"] * m["sb"], na=(m["sa"] != 0).astype(float), nb=(m["sb"] != 0).astype(float)).groupby(key)[["c", "na", "nb"]].sum()
    den = np.sqrt(g["na"] * g["nb"])
    return (g["c"] / den).where(den > 0)


def _top_overlap(d: pd.DataFrame, key: str, a: str, b: str) -> pd.Series:
    """Per event, share of a's top rows that are also b's top rows (ties give fractions)."""
    top = d[d[a]]
    return top.groupby(key)[b].mean()


def _argmax_flag(d: pd.DataFrame, key: str, col: str) -> pd.Series:
    return (d[col] == d.groupby(key)[col].transform("max")) & d[col].notna()


def _first_events(j: pd.DataFrame) -> pd.DataFrame:
    first = j.drop_duplicates(["participant_id", "domain"])[["participant_id", "domain", "event"]]
    return j[j["event"].isin(first["event"])]


def _compare(h: pd.DataFrame, s: pd.DataFrame, participants: Participants) -> AgreementComparison:
    h, s = _first_events(h), _first_events(s)
    cols = ["participant_id", "domain", "arm", "rank_used", "ranked_best", *RATINGS]
    m = h[cols].merge(s[cols], on=["participant_id", "domain", "arm"], suffixes=("_h", "_s"))
    if m.empty:
        return AgreementComparison(status="not_available", reason="no (participant_id, domain, arm) judged by both")
    m["key"] = m["participant_id"].astype(str) + "|" + m["domain"].astype(str)
    out = AgreementComparison(n_events=int(m["key"].nunique()))
    ev_part = m.drop_duplicates("key").set_index("key")["participant_id"]
    r = m[m["rank_used_h"].notna() & m["rank_used_s"].notna()].copy()
    if not r.empty:
        r["best_h"] = r["rank_used_h"] == 1
        r["best_s"] = r["rank_used_s"] == 1
        top = _top_overlap(r, "key", "best_s", "best_h")
        out.top1 = _mean_est(top.to_numpy(float), participants.index(ev_part[top.index].to_numpy()), participants)
        out.top1_chance = float((1 / r.groupby("key")["arm"].size()).mean())
        # negated ranks so that larger = better in both
        tau = _tau_per_event(r.assign(nh=-r["rank_used_h"], ns=-r["rank_used_s"]), "key", "nh", "ns").dropna()
        if not tau.empty:
            tp = participants.index(ev_part[tau.index].to_numpy())
            out.kendall_tau = _mean_est(tau.to_numpy(float), tp, participants)
            per = pd.Series(tau.to_numpy(), index=ev_part[tau.index].to_numpy()).groupby(level=0).mean()
            out.kendall_tau_per_participant = _mean_est(per.to_numpy(float), participants.index(per.index.to_numpy()), participants)
    for col in RATINGS:
        x = m[[f"{col}_h", f"{col}_s", "participant_id"]].dropna()
        if len(x) < 3:
            continue
        part = participants.index(x["participant_id"].to_numpy())
        for kind, (a, b) in {
            "pearson": (x[f"{col}_h"].to_numpy(float), x[f"{col}_s"].to_numpy(float)),
            "spearman": (x[f"{col}_h"].rank().to_numpy(), x[f"{col}_s"].rank().to_numpy()),
        }.items():
            def stat(w: np.ndarray, a: np.ndarray = a, b: np.ndarray = b) -> float:
                return weighted_corr(a, b, w)

            draws = bootstrap(stat, part, participants.counts)[:, 0]
            getattr(out, kind)[col] = estimate(weighted_corr(a, b), draws, int(np.unique(part).size))
    return out


def _permutation(obs: float, stat, rng: np.random.Generator, shuffles) -> tuple[float, float]:
    null = np.array([stat(shuffles(rng)) for _ in range(N_PERM)])
    return float(np.nanmean(null)), float((1 + np.sum(null >= obs)) / (1 + N_PERM))


def _retest(h: pd.DataFrame, participants: Participants, seed: int) -> RetestResult:
    col = "rating_preference" if has_values(h, "rating_preference") else None
    if col is None:
        return RetestResult(status="not_available", reason="no rating_preference")
    d = h[h[col].notna()][["participant_id", "event", "arm", col]]
    d = d.drop_duplicates(["participant_id", "event", "arm"])
    pairs = d.merge(d, on=["participant_id", "arm"], suffixes=("_1", "_2"))
    pairs = pairs[pairs["event_1"] < pairs["event_2"]].reset_index(drop=True)
    if len(pairs) < 3:
        return RetestResult(status="not_available", reason="no participant judged the same arm in two conversations")
    rng = np.random.default_rng(seed)
    x, y = pairs[f"{col}_1"].to_numpy(float), pairs[f"{col}_2"].to_numpy(float)
    part = participants.index(pairs["participant_id"].to_numpy())
    obs = weighted_corr(x, y)
    draws = bootstrap(lambda w: weighted_corr(x, y, w), part, participants.counts)[:, 0]
    out = RetestResult(n_pairs=len(pairs), rating_corr=estimate(obs, draws, int(np.unique(part).size)))
    out.permutation_baseline, out.permutation_p = _permutation(obs, lambda yy: weighted_corr(x, yy), rng, lambda g: g.permutation(y))
    arm_groups = [np.flatnonzero(pairs["arm"].to_numpy() == a) for a in pairs["arm"].unique()]

    def within(g: np.random.Generator) -> np.ndarray:
        yy = y.copy()
        for idx in arm_groups:
            yy[idx] = y[g.permutation(idx)]
        return yy

    out.within_arm_baseline, out.within_arm_p = _permutation(obs, lambda yy: weighted_corr(x, yy), rng, within)
    # pairwise order of two arms in two conversations of the same participant
    ev = _event_pairs(d.assign(_=d[col]), "event", col, "_")[["event", "arm_x", "arm_y", "sa"]]
    ev = ev.merge(d[["event", "participant_id"]].drop_duplicates("event"), on="event")
    ev = ev[ev["sa"] != 0]
    op = ev.merge(ev, on=["participant_id", "arm_x", "arm_y"], suffixes=("_1", "_2"))
    op = op[op["event_1"] < op["event_2"]]
    if len(op) >= 3:
        s1, s2 = op["sa_1"].to_numpy(), op["sa_2"].to_numpy()
        agree = (s1 == s2).astype(float)
        opart = participants.index(op["participant_id"].to_numpy())
        out.n_order_pairs = len(op)
        out.pairwise_order = _mean_est(agree, opart, participants)
        out.pairwise_order_baseline, out.pairwise_order_p = _permutation(
            float(agree.mean()), lambda ss: float(np.mean(s1 == ss)), rng, lambda g: g.permutation(s2)
        )
    return out


def _ceiling(h: pd.DataFrame, participants: Participants, seed: int) -> CeilingResult:
    d = h.copy()
    flags: dict[str, str] = {}
    if d["ranked_best"].notna().any():
        d["_ranked_best"] = d["ranked_best"].fillna(False).astype(bool) & d["ranked_best"].notna()
        flags["ranked_best"] = "_ranked_best"
    for col in ("rating_preference", "wtp_bid"):
        if has_values(d, col) and not (col == "rating_preference" and d["rank_derived"].all()):
            d[f"_{col}"] = _argmax_flag(d, "event", col)
            flags[col] = f"_{col}"
    if has_values(d, "opening_choice"):
        d["_opening_choice"] = d["opening_choice"].astype("boolean").fillna(False).astype(bool)
        flags["opening_choice"] = "_opening_choice"
    out = CeilingResult()
    ev_part = d.drop_duplicates("event").set_index("event")["participant_id"]
    for a, b in combinations(flags, 2):
        ok_events = d.groupby("event")[[flags[a], flags[b]]].any().all(axis=1)
        sub = d[d["event"].isin(ok_events[ok_events].index)]
        if sub.empty:
            continue
        top = _top_overlap(sub, "event", flags[a], flags[b])
        if {a, b} == {"ranked_best", "rating_preference"} and bool((top == 1).all()):
            # identical in every event: the ranks were derived from the ratings (e.g. Dialogue-Eval)
            out.reason = "ranked_best~rating_preference skipped: ranks agree with the ratings in every event (derived)"
            continue
        out.cross_instrument[f"{a}~{b}"] = _mean_est(top.to_numpy(float), participants.index(ev_part[top.index].to_numpy()), participants)
    if out.cross_instrument:
        out.ceiling = float(np.mean([e.value for e in out.cross_instrument.values()]))
    out.retest = _retest(h, participants, seed)
    if not out.cross_instrument and out.retest.status != "ok":
        out.status, out.reason = "not_available", "fewer than two instruments and no repeated judgements"
    return out


def agreement(tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None) -> AgreementResult:
    """Individual agreement of each simulated source with human, and the human ceiling."""
    participants = participants or participants_of(tables, n_boot, seed)
    j = judgements_frame(tables)
    sources = sorted(j["source"].unique())
    if HUMAN not in sources:
        return AgreementResult(status="not_available", reason="no human source")
    h = j[j["source"] == HUMAN]
    out = AgreementResult(human_ceiling=_ceiling(h, participants, seed))
    for s in sim_sources(sources):
        out.vs_human[s] = _compare(h, j[j["source"] == s], participants)
        c = out.human_ceiling.ceiling if out.human_ceiling is not None else None
        top = out.vs_human[s].top1
        if c is not None and top is not None:
            out.vs_human[s].reaches_ceiling = bool(top.ci_high >= c)
    return out
