"""Analysis 2: individual agreement of each simulated source with the matched human, against
the human self-consistency ceiling.

Matching: a judgement event is (participant_id, domain); a simulated event is matched with the
human event of the same participant and domain (the first conversation of each, if repeated),
row by row on arm. Conversations flagged ``gen_error`` are dropped first (and counted).

Top-1 agreement is tie-aware: each side's "top" is the set of its tied maxima, and an event
counts |A ∩ B| / (|A|·|B|), the probability that breaking both sides' ties uniformly at random
makes them agree (a participant who bids $0 on every arm agrees at chance, 1/k, not always).

The ceiling is per instrument pair (ranked_best, argmax rating_preference, argmax wtp_bid,
opening_choice), each with its own participant-bootstrap CI. A pair that is one instrument by
construction is excluded with a reason: ranks derived from the ratings (``rank_derived``), or
one side's top always inside the other's (e.g. PRISM's choice is its highest score). A
simulated instrument is compared with the human ceiling of the closest human pair (``CLOSEST``)
on the same events, and the difference agreement − ceiling is bootstrapped with the same
participant draws, so ``reaches_ceiling`` carries the uncertainty of both.

Test–retest: a participant judged the same arm in two conversations. Ratings are centred per
conversation (a participant's rating level is style, not agreement) and the permutation
baselines shuffle arms within each conversation, which keeps the participant pairing.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import HUMAN, has_values, judgements_frame, participants_of, sim_sources
from simlab.fidelity.result import (
    AgreementComparison,
    AgreementResult,
    CeilingResult,
    Estimate,
    InstrumentAgreement,
    RetestResult,
)
from simlab.fidelity.stats import Participants, bootstrap, estimate, weighted_corr
from simlab.tables import Tables

RATINGS = ("rating_preference", "rating_engagingness", "rating_provenance", "wtp_bid")
INSTRUMENTS = ("ranked_best", "rating_preference", "wtp_bid", "opening_choice")
# The human pair whose agreement is the ceiling of a same-instrument comparison, nearest first:
# ranking and rating are one post-conversation judgement, the bid a costlier one, the opening
# choice an earlier moment.
CLOSEST = {
    "ranked_best": ("rating_preference", "wtp_bid", "opening_choice"),
    "rating_preference": ("ranked_best", "wtp_bid", "opening_choice"),
    "wtp_bid": ("rating_preference", "ranked_best", "opening_choice"),
    "opening_choice": ("ranked_best", "rating_preference", "wtp_bid"),
}
MIN_PARTICIPANTS = 10  # below this a participant-bootstrap CI is not trustworthy
MIN_EVENTS_CONSTRUCTION = 20  # informative events needed before "always nested" means one instrument
N_PERM = 200  # p-values down to 1/201: enough for "far better than chance"


# ---------------------------------------------------------------------------------------------
# bootstrap helpers


def _mean_draws(values: np.ndarray, part: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Participant-bootstrap draws of the mean of per-event values (vectorised over draws)."""
    n = counts.shape[1]
    s = np.bincount(part, weights=values, minlength=n)
    c = np.bincount(part, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ s) / (counts @ c)


def _boot_p(draws: np.ndarray, null: float) -> float | None:
    """Two-sided bootstrap p-value of value = null, the one that matches the percentile CI."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    tail = min(np.sum(d <= null), np.sum(d >= null))
    return float(min(1.0, (1 + 2 * tail) / (1 + d.size)))


def _mean_est(values: np.ndarray, part: np.ndarray, participants: Participants, null: float | None = None) -> Estimate:
    draws = _mean_draws(values, part, participants.counts)
    p = _boot_p(draws, null) if null is not None else None
    return estimate(float(values.mean()), draws, int(np.unique(part).size), p)


def _corr_est(stat: Callable[[np.ndarray], float], n_rows: int, part: np.ndarray, participants: Participants) -> Estimate:
    draws = bootstrap(stat, part, participants.counts)[:, 0]
    return estimate(stat(np.ones(n_rows)), draws, int(np.unique(part).size), _boot_p(draws, 0.0))


# ---------------------------------------------------------------------------------------------
# tie-aware tops


def _argmax_set(d: pd.DataFrame, key: str, col: str) -> pd.Series:
    """1 for the event's tied maxima of col, 0 for the other rows, NaN where the event has < 2 values."""
    v = pd.to_numeric(d[col], errors="coerce")
    g = v.groupby(d[key])
    top = (v == g.transform("max")).astype(float)
    return top.where(v.notna() & (g.transform("count") >= 2))


def _tops(d: pd.DataFrame, key: str, *, derived_ranks: bool) -> pd.DataFrame:
    """Per row, 1/0 for "in this event's top set" of each instrument (NaN: not available).

    ``derived_ranks``: in events whose ranks were derived from rating_preference, ranked_best is
    the tied maxima of the ratings (True) or not an instrument at all (False, for the ceiling).
    """
    out = pd.DataFrame(index=d.index)
    rank = pd.to_numeric(d["rank_used"], errors="coerce")
    g = rank.groupby(d[key])
    best = (rank == g.transform("min")).astype(float).where(rank.notna() & (g.transform("count") >= 2))
    derived = d["rank_derived"].fillna(False).astype(bool).groupby(d[key]).transform("any")
    rating_top = _argmax_set(d, key, "rating_preference")
    # an importer's tie-break (position, the chosen response) is not the participant's ranking
    out["ranked_best"] = best.where(~derived, rating_top if derived_ranks else np.nan)
    out["rating_preference"] = rating_top
    out["wtp_bid"] = _argmax_set(d, key, "wtp_bid")
    oc = d["opening_choice"].astype("boolean")
    has = oc.fillna(False).astype(bool).groupby(d[key]).transform("any")
    out["opening_choice"] = oc.fillna(False).astype(float).where(has)
    return out


def _agree(top_a: pd.Series, top_b: pd.Series, key: pd.Series) -> pd.DataFrame:
    """Per event: tie-aware agreement |A∩B|/(|A||B|), whether either side is tied, whether nested."""
    ok = top_a.notna() & top_b.notna()
    f = pd.DataFrame({"a": top_a[ok], "b": top_b[ok], "ab": top_a[ok] * top_b[ok], "k": 1.0, "key": key[ok]})
    g = f.groupby("key")[["a", "b", "ab", "k"]].sum()
    g = g[(g["a"] > 0) & (g["b"] > 0)]
    nested = g["ab"] == np.minimum(g["a"], g["b"])
    return pd.DataFrame({
        "agree": g["ab"] / (g["a"] * g["b"]),
        "tied": (g["a"] > 1) | (g["b"] > 1),
        "nested": nested,
        # nested although the larger top set leaves some arms out: the pair says something
        "informative": nested & (np.maximum(g["a"], g["b"]) < g["k"]),
    })


# ---------------------------------------------------------------------------------------------
# human ceiling


def _ceiling_events(h: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per usable human instrument pair 'a~b', per-event agreement (index: event)."""
    tops = _tops(h, "event", derived_ranks=False)
    out: dict[str, pd.DataFrame] = {}
    for a, b in combinations(INSTRUMENTS, 2):
        out[f"{a}~{b}"] = _agree(tops[a], tops[b], h["event"])
    return out


def _ceiling(h: pd.DataFrame, participants: Participants, seed: int) -> tuple[CeilingResult, dict[str, pd.Series]]:
    out = CeilingResult()
    ev_part = h.drop_duplicates("event").set_index("event")["participant_id"]
    derived_all = bool(h["rank_derived"].fillna(False).astype(bool).all())
    usable: dict[str, pd.Series] = {}
    for pair, ev in _ceiling_events(h).items():
        a, b = pair.split("~")
        if ev.empty:
            if "ranked_best" in (a, b) and derived_all and has_values(h, b if a == "ranked_best" else a):
                out.excluded[pair] = "ranks were derived from rating_preference (rank_derived): not a separate instrument"
            continue
        n_part = int(ev_part[ev.index].nunique())
        if n_part < MIN_PARTICIPANTS:
            out.excluded[pair] = f"{n_part} participants judged with both instruments (fewer than {MIN_PARTICIPANTS})"
            continue
        if bool(ev["nested"].all()) and int(ev["informative"].sum()) >= MIN_EVENTS_CONSTRUCTION:
            out.excluded[pair] = (f"one side's top is inside the other's in all {len(ev)} events: one instrument by "
                                  "construction (e.g. the choice is the highest score)")
            continue
        part = participants.index(ev_part[ev.index].to_numpy())
        out.cross_instrument[pair] = _mean_est(ev["agree"].to_numpy(float), part, participants)
        out.n_tied[pair] = int(ev["tied"].sum())
        usable[pair] = ev["agree"]
    best = _ceiling_pair("ranked_best", set(usable))
    if best is not None:
        out.ceiling_pair, out.ceiling = best, out.cross_instrument[best].value
    out.retest = _retest(h, participants, seed)
    if not out.cross_instrument and out.retest.status != "ok":
        out.status, out.reason = "not_available", "fewer than two usable instruments and no repeated judgements"
    return out, usable


def _ceiling_pair(instrument: str, usable: set[str]) -> str | None:
    """The closest usable human pair for a comparison on ``instrument``."""
    def key(a: str, b: str) -> str | None:
        for p in (f"{a}~{b}", f"{b}~{a}"):
            if p in usable:
                return p
        return None

    for other in CLOSEST[instrument]:
        if (p := key(instrument, other)) is not None:
            return p
    if instrument == "ranked_best":
        # derived ranks: the human's ranked_best is their rating_preference
        return _ceiling_pair("rating_preference", usable)
    return None


# ---------------------------------------------------------------------------------------------
# simulated vs human


def _first_events(j: pd.DataFrame) -> pd.DataFrame:
    first = j.drop_duplicates(["participant_id", "domain"])[["participant_id", "domain", "event"]]
    return j[j["event"].isin(first["event"])]


def _centred(v: pd.Series, key: pd.Series) -> np.ndarray:
    return (v - v.groupby(key).transform("mean")).to_numpy(float)


def _instrument(
    m: pd.DataFrame, inst: str, participants: Participants, ceiling: dict[str, pd.Series]
) -> InstrumentAgreement | None:
    ev = _agree(m[f"top_{inst}_h"], m[f"top_{inst}_s"], m["key"])
    if ev.empty:
        return None
    ev_part = m.drop_duplicates("key").set_index("key")
    part = participants.index(ev_part.loc[ev.index, "participant_id"].to_numpy())
    out = InstrumentAgreement(top1=_mean_est(ev["agree"].to_numpy(float), part, participants), n_tied=int(ev["tied"].sum()))
    pair = _ceiling_pair(inst, set(ceiling))
    if pair is None:
        return out
    c = ceiling[pair].reindex(ev_part.loc[ev.index, "event_h"].to_numpy())
    ok = c.notna().to_numpy()
    if ok.sum() == 0:
        return out
    out.ceiling_pair = pair
    a, cv, pp = ev["agree"].to_numpy(float)[ok], c.to_numpy(float)[ok], part[ok]
    out.ceiling = _mean_est(cv, pp, participants)
    # same participant draws for both: the CI of the gap carries the uncertainty of each
    out.gap = _mean_est(a - cv, pp, participants, null=0.0)
    if np.isfinite(out.gap.ci_high):
        out.reaches_ceiling = bool(out.gap.ci_high >= 0)
    return out


def _compare(h: pd.DataFrame, s: pd.DataFrame, participants: Participants, ceiling: dict[str, pd.Series]) -> AgreementComparison:
    h, s = _first_events(h), _first_events(s)
    cols = ["participant_id", "domain", "arm", "event", "rank_used", "rank_derived", "opening_choice", *RATINGS]
    m = h[cols].merge(s[cols], on=["participant_id", "domain", "arm"], suffixes=("_h", "_s"))
    if m.empty:
        return AgreementComparison(status="not_available", reason="no (participant_id, domain, arm) judged by both")
    n_part = int(m["participant_id"].nunique())
    if n_part < MIN_PARTICIPANTS:
        return AgreementComparison(status="not_available", n_events=int(m["event_h"].nunique()),
                                   reason=f"{n_part} participants matched (fewer than {MIN_PARTICIPANTS})")
    m["key"] = m["event_h"]
    for side in ("h", "s"):
        plain = m[[c for c in m.columns if c.endswith(f"_{side}")]].rename(columns=lambda c: c[:-2])
        tops = _tops(plain.assign(key=m["key"]), "key", derived_ranks=True)
        for inst in INSTRUMENTS:
            m[f"top_{inst}_{side}"] = tops[inst]
    out = AgreementComparison(n_events=int(m["key"].nunique()))
    ev_part = m.drop_duplicates("key").set_index("key")["participant_id"]
    for inst in INSTRUMENTS:
        res = _instrument(m, inst, participants, ceiling)
        if res is not None:
            out.by_instrument[inst] = res
    best = out.by_instrument.get("ranked_best")
    if best is not None:
        out.top1, out.n_tied, out.reaches_ceiling = best.top1, best.n_tied, best.reaches_ceiling
        out.ceiling_pair, out.ceiling_gap = best.ceiling_pair, best.gap
        r = m[m["rank_used_h"].notna() & m["rank_used_s"].notna()]
        out.top1_chance = float((1 / r.groupby("key")["arm"].size()).mean())
    r = m[m["rank_used_h"].notna() & m["rank_used_s"].notna()]
    if not r.empty:
        # negated ranks so that larger = better in both
        tau = _tau_per_event(r.assign(nh=-r["rank_used_h"], ns=-r["rank_used_s"]), "key", "nh", "ns").dropna()
        if not tau.empty:
            tp = participants.index(ev_part[tau.index].to_numpy())
            out.kendall_tau = _mean_est(tau.to_numpy(float), tp, participants)
            per = pd.Series(tau.to_numpy(), index=ev_part[tau.index].to_numpy()).groupby(level=0).mean()
            out.kendall_tau_per_participant = _mean_est(per.to_numpy(float), participants.index(per.index.to_numpy()), participants)
    for col in RATINGS:
        x = m[[f"{col}_h", f"{col}_s", "participant_id", "key", "arm"]].dropna()
        if x["participant_id"].nunique() < MIN_PARTICIPANTS:
            continue
        part = participants.index(x["participant_id"].to_numpy())
        n = len(x)
        a, b = x[f"{col}_h"].to_numpy(float), x[f"{col}_s"].to_numpy(float)
        ra, rb = x[f"{col}_h"].rank().to_numpy(), x[f"{col}_s"].rank().to_numpy()
        ca, cb = _centred(x[f"{col}_h"], x["key"]), _centred(x[f"{col}_s"], x["key"])
        arm = pd.factorize(x["arm"])[0]

        def individual(w: np.ndarray, ca: np.ndarray = ca, cb: np.ndarray = cb, arm: np.ndarray = arm) -> float:
            # each source's arm means (recomputed per replicate) are shared preference, not individual
            sw = np.bincount(arm, weights=w)
            with np.errstate(invalid="ignore", divide="ignore"):
                ma, mb = np.bincount(arm, weights=w * ca) / sw, np.bincount(arm, weights=w * cb) / sw
            return weighted_corr(ca - ma[arm], cb - mb[arm], w)

        for field, (u, v) in (("pearson", (a, b)), ("spearman", (ra, rb)), ("pearson_within", (ca, cb))):
            getattr(out, field)[col] = _corr_est(_corr_of(u, v), n, part, participants)
        out.pearson_individual[col] = _corr_est(individual, n, part, participants)
    return out


def _corr_of(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray], float]:
    def stat(w: np.ndarray) -> float:
        return weighted_corr(a, b, w)

    return stat


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


# ---------------------------------------------------------------------------------------------
# test–retest


def _shuffler(groups: np.ndarray) -> Callable[[np.random.Generator, np.ndarray], np.ndarray]:
    """A function that permutes values within each group (vectorised: one lexsort)."""
    base = np.argsort(groups, kind="stable")

    def shuffle(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
        order = np.lexsort((rng.random(groups.size), groups))
        out = np.empty_like(v)
        out[base] = v[order]
        return out

    return shuffle


def _retest(h: pd.DataFrame, participants: Participants, seed: int) -> RetestResult:
    col = "rating_preference"
    if not has_values(h, col):
        return RetestResult(status="not_available", reason="no rating_preference")
    d = h[h[col].notna()][["participant_id", "event", "arm", col]].drop_duplicates(["event", "arm"]).reset_index(drop=True)
    # centred per conversation: a participant's rating level is style, not agreement about arms
    d["c"] = _centred(d[col], d["event"])
    d["row"] = np.arange(len(d))
    pairs = d.merge(d, on=["participant_id", "arm"], suffixes=("_1", "_2"))
    pairs = pairs[pairs["event_1"] < pairs["event_2"]].reset_index(drop=True)
    n_part = int(pairs["participant_id"].nunique())
    if n_part < MIN_PARTICIPANTS:
        return RetestResult(status="not_available", n_pairs=len(pairs),
                            reason=f"{n_part} participants judged the same arm in two conversations (fewer than {MIN_PARTICIPANTS})")
    rng = np.random.default_rng(seed)
    i1, i2 = pairs["row_1"].to_numpy(), pairs["row_2"].to_numpy()
    raw, c = d[col].to_numpy(float), d["c"].to_numpy(float)
    part = participants.index(pairs["participant_id"].to_numpy())
    out = RetestResult(n_pairs=len(pairs))
    out.rating_corr = _corr_est(lambda w: weighted_corr(raw[i1], raw[i2], w), len(pairs), part, participants)
    out.rating_corr_within = _corr_est(lambda w: weighted_corr(c[i1], c[i2], w), len(pairs), part, participants)
    obs = out.rating_corr_within.value
    # arm pairs shared by the same two conversations: is their order the same both times?
    q = pairs.reset_index().rename(columns={"index": "i"})[["i", "participant_id", "event_1", "event_2", "arm"]]
    op = q.merge(q, on=["participant_id", "event_1", "event_2"], suffixes=("_x", "_y"))
    op = op[op["arm_x"] < op["arm_y"]]
    ix, iy = op["i_x"].to_numpy(), op["i_y"].to_numpy()

    def order(v: np.ndarray) -> np.ndarray:
        # tie-aware: a tie on either side agrees with probability 1/2
        return 0.5 + 0.5 * np.sign(v[i1[ix]] - v[i1[iy]]) * np.sign(v[i2[ix]] - v[i2[iy]])

    within_event = _shuffler(pd.factorize(d["event"])[0])
    within_arm = _shuffler(pd.factorize(d["arm"])[0])
    null_event = [within_event(rng, c) for _ in range(N_PERM)]
    null_arm = [within_arm(rng, c) for _ in range(N_PERM)]
    perm = np.array([weighted_corr(v[i1], v[i2]) for v in null_event])
    out.permutation_baseline = float(np.nanmean(perm))
    out.permutation_p = float((1 + np.sum(perm >= obs)) / (1 + N_PERM))
    arm_null = np.array([weighted_corr(v[i1], v[i2]) for v in null_arm])
    out.within_arm_baseline = float(np.nanmean(arm_null))
    out.within_arm_p = float((1 + np.sum(arm_null >= obs)) / (1 + N_PERM))
    if len(op) >= 3:
        agree = order(c)
        opart = participants.index(op["participant_id"].to_numpy())
        out.n_order_pairs = len(op)
        out.pairwise_order = _mean_est(agree, opart, participants)
        null = np.array([order(v).mean() for v in null_event])
        out.pairwise_order_baseline = float(null.mean())
        out.pairwise_order_p = float((1 + np.sum(null >= agree.mean())) / (1 + N_PERM))
    return out


# ---------------------------------------------------------------------------------------------


def _drop_gen_errors(tables: Tables, j: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Judgements without the conversations flagged gen_error, and how many were dropped per source."""
    conv = tables.conversations
    if conv is None or "gen_error" not in conv.columns:
        return j, {}
    flag = conv["gen_error"].astype("boolean").fillna(False).astype(bool)
    bad = set(conv.loc[flag, "conversation_id"].astype(str))
    hit = j["event"].isin(bad)
    counts = j[hit].drop_duplicates("event")["source"].value_counts()
    return j[~hit], {str(k): int(v) for k, v in counts.items()}


def agreement(tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None) -> AgreementResult:
    """Individual agreement of each simulated source with human, and the human ceiling."""
    participants = participants or participants_of(tables, n_boot, seed)
    j, dropped = _drop_gen_errors(tables, judgements_frame(tables))
    for col in RATINGS:
        if col not in j.columns:
            j[col] = np.nan
    sources = sorted(j["source"].unique())
    if HUMAN not in sources:
        return AgreementResult(status="not_available", reason="no human source", n_gen_error=dropped)
    h = j[j["source"] == HUMAN]
    out = AgreementResult(n_gen_error=dropped)
    n_human = int(h["participant_id"].nunique())
    if n_human < MIN_PARTICIPANTS:
        out.status, out.reason = "not_available", f"{n_human} human participants (fewer than {MIN_PARTICIPANTS})"
        return out
    out.human_ceiling, usable = _ceiling(h, participants, seed)
    for s in sim_sources(sources):
        out.vs_human[s] = _compare(h, j[j["source"] == s], participants, usable)
    return out
