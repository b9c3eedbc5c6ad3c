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
baselines shuffle arms within each conversation, which keeps the participant pairing. For the
humans any two conversations of the participant are paired (``pairing="conversation"``).

Controls, per simulated source. A conversation's ``repeat`` (0 = the first run of a
participant × domain, 1, 2, … further seeds) comes from the judgements or the conversations;
where neither has it, it is 0. "First event" above means the lowest repeat.

- Persona placebo (``persona_placebo``): per top-1 instrument, every simulated event (each
  repeat) agrees with its own human's event (``own``) and, on average, with the human events of
  every other participant of the same domain (``mismatched``: the exact mean of the permutation
  distribution over mismatched pairings). ``gap`` = own − mismatched is the individual agreement
  the persona explains. CI: participant bootstrap of the per-event gaps; p-value (one-sided):
  shuffles of the simulated↔human pairing of participants, one shuffle for all domains among the
  participants matched in the same domains (a participant's tastes carry across domains; shuffling
  each domain on its own was anti-conservative then). Events with no other participant in their
  domain are left out and counted.
- Simulator test–retest (``sim_retest``): the human retest run on the source's repeats, pairing
  conversations of the same participant and the same domain with a different ``repeat``
  (``pairing="repeat"``): the simulator's seed-to-seed consistency. Not available without repeats.
- Variance split (``variance_split``): the source's rating_preference in a linear mixed model
  fitted by REML: rating ~ C(arm) + C(domain), a random intercept per participant and a variance
  component for the conversation within the participant (statsmodels' MixedLM with groups =
  participant and a conversation ``vc_formula``; its restricted likelihood is evaluated in closed
  form here, ``_NestedReml``, and tests check the estimates against MixedLM's). Participant,
  repeat (conversation) and residual variances and shares, CIs from at most ``N_BOOT_MIXED``
  participant bootstrap refits (a participant drawn twice is two participants; failed or
  non-converged refits are counted): percentile intervals for the variances, and for the shares
  the normal interval on the logit scale with the refits' SD (``_share_estimate``: the percentile
  interval under-covered them). Only where some (participant, domain) has two or more
  conversations.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps
from scipy.optimize import minimize
from scipy.special import expit, logit

from simlab.fidelity.analyses._prep import HUMAN, has_values, judgements_frame, participants_of, sim_sources
from simlab.fidelity.identify import dependent_columns
from simlab.fidelity.result import (
    AgreementComparison,
    AgreementResult,
    CeilingResult,
    Estimate,
    InstrumentAgreement,
    PersonaPlacebo,
    PlaceboInstrument,
    RetestResult,
    SourceStatus,
    VarianceSplit,
)
from simlab.fidelity.stats import FitError, Participants, bootstrap, estimate, progress, reason_for, weighted_corr
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
N_BOOT_MIXED = 100  # at most this many mixed-model refits per variance split


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
    tops = _tops(h, "conversation_id", derived_ranks=False)
    out: dict[str, pd.DataFrame] = {}
    for a, b in combinations(INSTRUMENTS, 2):
        out[f"{a}~{b}"] = _agree(tops[a], tops[b], h["conversation_id"])
    return out


def _ceiling(h: pd.DataFrame, participants: Participants, seed: int) -> tuple[CeilingResult, dict[str, pd.Series]]:
    out = CeilingResult()
    ev_part = h.drop_duplicates("conversation_id").set_index("conversation_id")["participant_id"]
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
    """The rows of each (participant_id, domain)'s first conversation (lowest ``repeat``, then data order)."""
    ordered = j.sort_values("repeat", kind="stable") if "repeat" in j.columns else j
    first = ordered.drop_duplicates(["participant_id", "domain"])[["participant_id", "domain", "conversation_id"]]
    return j[j["conversation_id"].isin(first["conversation_id"])]


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
    c = ceiling[pair].reindex(ev_part.loc[ev.index, "conversation_id_h"].to_numpy())
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
    cols = ["participant_id", "domain", "arm", "conversation_id", "rank_used", "rank_derived", "opening_choice", *RATINGS]
    m = h[cols].merge(s[cols], on=["participant_id", "domain", "arm"], suffixes=("_h", "_s"))
    if m.empty:
        return AgreementComparison(status="not_available", reason="no (participant_id, domain, arm) judged by both")
    n_part = int(m["participant_id"].nunique())
    if n_part < MIN_PARTICIPANTS:
        return AgreementComparison(status="not_available", n_events=int(m["conversation_id_h"].nunique()),
                                   reason=f"{n_part} participants matched (fewer than {MIN_PARTICIPANTS})")
    m["key"] = m["conversation_id_h"]
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


def _retest(h: pd.DataFrame, participants: Participants, seed: int, pairing: str = "conversation") -> RetestResult:
    """Test–retest of rating_preference. ``pairing="conversation"`` (the humans'): any two conversations
    of the participant that rated the arm; ``"repeat"``: two conversations of the same participant
    and domain with a different ``repeat`` (a simulator's seed-to-seed consistency)."""
    col = "rating_preference"
    if not has_values(h, col):
        return RetestResult(status="not_available", reason="no rating_preference", pairing=pairing)
    by_repeat = pairing == "repeat"
    extra = ["domain", "repeat"] if by_repeat else []
    d = (h[h[col].notna()][["participant_id", "conversation_id", "arm", col, *extra]].drop_duplicates(["conversation_id", "arm"])
         .reset_index(drop=True))
    # centred per conversation: a participant's rating level is style, not agreement about arms
    d["c"] = _centred(d[col], d["conversation_id"])
    d["row"] = np.arange(len(d))
    pairs = d.merge(d, on=["participant_id", "arm", *extra[:1]], suffixes=("_1", "_2"))
    keep = pairs["conversation_id_1"] < pairs["conversation_id_2"]
    if by_repeat:
        keep &= pairs["repeat_1"] != pairs["repeat_2"]
    pairs = pairs[keep].reset_index(drop=True)
    n_part = int(pairs["participant_id"].nunique())
    if n_part < MIN_PARTICIPANTS:
        where = "in two runs (repeats) of the same domain" if by_repeat else "in two conversations"
        return RetestResult(status="not_available", n_pairs=len(pairs), pairing=pairing,
                            reason=f"{n_part} participants judged the same arm {where} (fewer than {MIN_PARTICIPANTS})")
    rng = np.random.default_rng(seed)
    i1, i2 = pairs["row_1"].to_numpy(), pairs["row_2"].to_numpy()
    raw, c = d[col].to_numpy(float), d["c"].to_numpy(float)
    part = participants.index(pairs["participant_id"].to_numpy())
    out = RetestResult(n_pairs=len(pairs), pairing=pairing)
    out.rating_corr = _corr_est(lambda w: weighted_corr(raw[i1], raw[i2], w), len(pairs), part, participants)
    out.rating_corr_within = _corr_est(lambda w: weighted_corr(c[i1], c[i2], w), len(pairs), part, participants)
    obs = out.rating_corr_within.value
    # arm pairs shared by the same two conversations: is their order the same both times?
    q = pairs.reset_index().rename(columns={"index": "i"})[["i", "participant_id", "conversation_id_1", "conversation_id_2", "arm"]]
    op = q.merge(q, on=["participant_id", "conversation_id_1", "conversation_id_2"], suffixes=("_x", "_y"))
    op = op[op["arm_x"] < op["arm_y"]]
    ix, iy = op["i_x"].to_numpy(), op["i_y"].to_numpy()

    def order(v: np.ndarray) -> np.ndarray:
        # tie-aware: a tie on either side agrees with probability 1/2
        return 0.5 + 0.5 * np.sign(v[i1[ix]] - v[i1[iy]]) * np.sign(v[i2[ix]] - v[i2[iy]])

    within_event = _shuffler(pd.factorize(d["conversation_id"])[0])
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
# controls: persona placebo, simulator retest, variance split


def _with_repeat(tables: Tables, j: pd.DataFrame) -> pd.DataFrame:
    """``j`` with an integer ``repeat``: the judgements', else the conversation's; missing is 0 (the first run)."""
    if "repeat" not in j.columns:
        conv = tables.conversations
        if conv is not None and "repeat" in conv.columns and "conversation_id" in conv.columns:
            r = pd.DataFrame({"conversation_id": conv["conversation_id"].astype(str), "repeat": conv["repeat"]})
            j = j.merge(r.drop_duplicates("conversation_id"), on="conversation_id", how="left")
        else:
            j = j.assign(repeat=0)
    return j.assign(repeat=pd.to_numeric(j["repeat"], errors="coerce").fillna(0).astype(int))


def _top_matrix(d: pd.DataFrame, top: pd.Series) -> pd.DataFrame:
    """Events × arms, 1/0 for "in the event's top set" of one instrument (NaN: not judged / not available)."""
    f = pd.DataFrame({"conversation_id": d["conversation_id"], "arm": d["arm"].astype(str), "v": top})
    f = f[f["v"].notna()].drop_duplicates(["conversation_id", "arm"])
    return f.set_index(["conversation_id", "arm"])["v"].unstack()


def _pair_agreement(sim: np.ndarray, hum: np.ndarray) -> np.ndarray:
    """Tie-aware agreement |A∩B|/(|A||B|) of every simulated event (rows of ``sim``) with every human
    event (rows of ``hum``) on the arms both judged (NaN where either top set is empty there)."""
    s_in, h_in = ~np.isnan(sim), ~np.isnan(hum)
    s, h = np.nan_to_num(sim), np.nan_to_num(hum)
    inter, n_s, n_h = s @ h.T, s @ h_in.T.astype(float), s_in.astype(float) @ h.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_s > 0) & (n_h > 0), inter / (n_s * n_h), np.nan)


class _PlaceboDomain(NamedTuple):
    """One domain's used simulated events: participant, total agreement over the domain's humans and
    their count besides the own one, and the cells of the matched participants' humans."""

    domain: str
    pids: np.ndarray  # (events,)
    total: np.ndarray  # (events,)
    n_other: np.ndarray  # (events,)
    matched: np.ndarray  # (participants,) sorted
    cells: np.ndarray  # (events, participants): agreement with each matched participant's human


def _placebo_permutations(domains: list[_PlaceboDomain], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the per-event gaps under ``N_PERM`` shuffles of the simulated↔human pairing.

    One shuffle serves every domain: a participant's simulated events get another participant's
    humans in all their domains at once, among the participants matched in the same set of domains
    (so the other has a human wherever they need one; a participant alone in their set keeps their own
    humans, which only makes the test conservative). A participant's tops carry across domains
    (a taste, in the human and in the persona), so their own-human agreements in two domains go
    together; shuffling each domain on its own broke that and over-rejected true nulls when both
    were strongly consistent (calibration, copula ρ = 0.9)."""
    perm_sum, perm_n = np.zeros(N_PERM), np.zeros(N_PERM)
    if not domains:
        return perm_sum, perm_n
    people = np.unique(np.concatenate([d.matched for d in domains]))
    where: dict[object, set[str]] = {}
    for d in domains:
        for p in d.matched:
            where.setdefault(p, set()).add(d.domain)
    strata = pd.factorize(pd.Series([frozenset(where[p]) for p in people]))[0]
    shuffle = np.tile(np.arange(people.size), (N_PERM, 1))  # shuffle[b, i]: whose humans participant i gets
    for k in range(int(strata.max()) + 1):
        members = np.flatnonzero(strata == k)
        shuffle[:, members] = members[np.argsort(rng.random((N_PERM, members.size)), axis=1)]
    for d in domains:
        column = np.full(people.size, -1)
        column[np.searchsorted(people, d.matched)] = np.arange(d.matched.size)
        to = column[shuffle[:, np.searchsorted(people, d.pids)]]  # (N_PERM, events); same stratum, so ≥ 0
        own_p = d.cells[np.arange(d.pids.size)[None, :], to]
        with np.errstate(invalid="ignore"):
            gap_p = own_p - (d.total[None, :] - own_p) / d.n_other[None, :]
        perm_sum += np.nansum(gap_p, axis=1)
        perm_n += np.isfinite(gap_p).sum(axis=1)
    return perm_sum, perm_n


def _placebo_instrument(
    h: pd.DataFrame, top_h: pd.Series, s: pd.DataFrame, top_s: pd.Series, participants: Participants,
    rng: np.random.Generator,
) -> PlaceboInstrument | None:
    """Own vs mismatched agreement on one instrument (None: the instrument is not in both sources).

    Per domain, the agreement of every simulated event with every human (first) event is one matrix;
    an event's own term is its participant's cell, its mismatched term the mean of the other
    participants' cells. A permutation gives each matched participant another's humans (the same
    other in every domain, ``_placebo_permutations``), so its own term becomes that cell and its
    mismatched term the mean of the rest."""
    hm, sm = _top_matrix(h, top_h), _top_matrix(s, top_s)
    if hm.empty or sm.empty:
        return None
    arms = hm.columns.union(sm.columns)
    hm, sm = hm.reindex(columns=arms), sm.reindex(columns=arms)
    h_ev = h.drop_duplicates("conversation_id").set_index("conversation_id").loc[hm.index, ["participant_id", "domain"]]
    s_ev = s.drop_duplicates("conversation_id").set_index("conversation_id").loc[sm.index, ["participant_id", "domain"]]
    own_l, mism_l, pid_l = [], [], []
    n_no_other = 0
    per_domain: list[_PlaceboDomain] = []
    for dom, sd in s_ev.groupby("domain", sort=True):
        hd = h_ev[h_ev["domain"] == dom]  # first events: one per participant
        hpos = {p: i for i, p in enumerate(hd["participant_id"])}
        own_j = np.array([hpos.get(p, -1) for p in sd["participant_id"]], dtype=np.int64)
        if not (own_j >= 0).any():
            continue
        a = _pair_agreement(sm.loc[sd.index].to_numpy(float), hm.loc[hd.index].to_numpy(float))
        rows = np.arange(len(sd))
        own = np.where(own_j >= 0, a[rows, np.maximum(own_j, 0)], np.nan)
        ok = np.isfinite(a)
        n_other = ok.sum(axis=1) - 1  # own is finite wherever it is used
        total = np.where(ok, a, 0.0).sum(axis=1)
        valid = np.isfinite(own)
        n_no_other += int((valid & (n_other == 0)).sum())
        use = valid & (n_other > 0)
        if not use.any():
            continue
        own_u, tot_u, oth_u = own[use], total[use], n_other[use]
        pids = sd["participant_id"].to_numpy()[use]
        own_l.append(own_u)
        mism_l.append((tot_u - own_u) / oth_u)
        pid_l.append(pids)
        matched = np.unique(pids)
        per_domain.append(_PlaceboDomain(str(dom), pids, tot_u, oth_u, matched,
                                         a[np.flatnonzero(use)][:, [hpos[p] for p in matched]]))
    perm_sum, perm_n = _placebo_permutations(per_domain, rng)
    if not own_l:
        if n_no_other:
            return PlaceboInstrument(status="not_available", n_no_other=n_no_other,
                                     reason="no other participant of the same domain to mismatch with")
        return None
    own_v, mism_v, pid = np.concatenate(own_l), np.concatenate(mism_l), np.concatenate(pid_l)
    n_part = int(np.unique(pid).size)
    if n_part < MIN_PARTICIPANTS:
        return PlaceboInstrument(status="not_available", n_events=own_v.size, n_no_other=n_no_other,
                                 reason=f"{n_part} participants matched with a human and a mismatched human "
                                        f"(fewer than {MIN_PARTICIPANTS})")
    gap = own_v - mism_v
    obs = float(gap.mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        null = perm_sum / perm_n
    p_perm = float((1 + np.sum(null >= obs - 1e-12)) / (1 + N_PERM))
    part = participants.index(pid)
    return PlaceboInstrument(
        own=_mean_est(own_v, part, participants),
        mismatched=_mean_est(mism_v, part, participants),
        gap=estimate(obs, _mean_draws(gap, part, participants.counts), n_part, p_perm),
        permutation_p=p_perm, n_events=int(own_v.size), n_no_other=n_no_other,
    )


def _placebo(h: pd.DataFrame, s: pd.DataFrame, participants: Participants, seed: int) -> PersonaPlacebo:
    """Persona placebo of one simulated source (all its events) against the humans' first events."""
    h = _first_events(h)
    out = PersonaPlacebo(n_perm=N_PERM)
    per_dom = h.drop_duplicates("conversation_id").groupby("domain")["participant_id"].nunique()
    sim_doms = set(s["domain"].dropna())
    out.single_domains = sorted(str(d) for d, n in per_dom.items() if n == 1 and d in sim_doms)
    th, ts = _tops(h, "conversation_id", derived_ranks=True), _tops(s, "conversation_id", derived_ranks=True)
    rng = np.random.default_rng(seed)
    for inst in INSTRUMENTS:
        res = _placebo_instrument(h, th[inst], s, ts[inst], participants, rng)
        if res is not None:
            out.by_instrument[inst] = res
    if not out.by_instrument:
        out.status, out.reason = "not_available", "no top-1 instrument judged by both sources in a shared domain"
    elif all(r.status != "ok" for r in out.by_instrument.values()):
        first = next(iter(out.by_instrument.values()))
        out.status, out.reason = "not_available", first.reason
    return out


def _sim_retest(s: pd.DataFrame, participants: Participants, seed: int) -> RetestResult:
    """Seed-to-seed test–retest of a simulated source (``_retest`` with ``pairing="repeat"``)."""
    if not has_values(s, "rating_preference"):
        return RetestResult(status="not_available", reason="no rating_preference", pairing="repeat")
    runs = s.drop_duplicates("conversation_id").groupby(["participant_id", "domain"])["repeat"].nunique()
    if not bool((runs >= 2).any()):
        return RetestResult(status="not_available", pairing="repeat",
                            reason="no repeated conversations: every (participant, domain) was run once "
                                   "(repeat 0 only; a run with --repeats 2 or more has them)")
    return _retest(s, participants, seed, pairing="repeat")


def _dummies(values: np.ndarray) -> np.ndarray:
    """0/1 columns of every level but the first (sorted)."""
    levels = np.unique(values)
    return (values[:, None] == levels[None, 1:]).astype(float)


class _NestedReml:
    """REML of y ~ X + (1 | participant) + (1 | conversation within participant), in closed form.

    The restricted likelihood statsmodels' ``MixedLM`` maximises for this model (groups = participant,
    a variance component per conversation; tests check the estimates against it), but each
    evaluation is a handful of array sums: V/σ² = I + γ_c·Σ_c 1_c1_cᵀ + γ_p·Σ_g 1_g1_gᵀ is inverted by
    Sherman–Morrison per conversation and per participant, so u'V⁻¹v only needs conversation sums of
    the columns of [X, y]. A participant bootstrap replicate is the same sums weighted by how often
    each participant is drawn (each copy an independent participant), so no data are copied. The two
    variance ratios γ ≥ 0 are found by bounded Powell (derivative-free: 2 parameters, cheap
    evaluations), which reaches a variance of 0 exactly. Why not MixedLM itself: a fit is many
    times slower, slowest when a variance is 0 (as for a simulator without persona), where its
    gradient methods stall short of the optimum (timings in docs/benchmarks.md)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, participant: np.ndarray, conversation: np.ndarray) -> None:
        m = np.column_stack([x, y])
        self.p = x.shape[1]
        conv = pd.factorize(conversation)[0]
        n_conv = int(conv.max()) + 1
        conv_first = np.zeros(n_conv, dtype=np.int64)
        conv_first[conv] = np.arange(conv.size)
        self.conv_part = participant[conv_first]  # participant of each conversation
        self.n_part = int(participant.max()) + 1
        self.member = sparse.csr_matrix((np.ones(n_conv), (self.conv_part, np.arange(n_conv))),
                                        shape=(self.n_part, n_conv))  # participant × conversation
        self.n_c = np.bincount(conv, minlength=n_conv).astype(float)
        self.s = np.zeros((n_conv, m.shape[1]))
        np.add.at(self.s, conv, m)
        self.ss = np.einsum("ci,cj->cij", self.s, self.s)  # per conversation, outer product of its sums
        self.mm = np.zeros((self.n_part, m.shape[1], m.shape[1]))
        np.add.at(self.mm, participant, np.einsum("ni,nj->nij", m, m))
        self.n_rows = np.bincount(participant, minlength=self.n_part).astype(float)

    def _criterion(self, gamma: np.ndarray, w: np.ndarray, keep: np.ndarray, mtm: np.ndarray) -> tuple[float, float]:
        """(−2 × profiled REML log-likelihood, σ̂²) at variance ratios ``gamma`` with participant weights ``w``."""
        g_p, g_c = float(gamma[0]), float(gamma[1])
        wc = w[self.conv_part]
        d = 1.0 / (1.0 + g_c * self.n_c)
        q = mtm - np.tensordot(wc * g_c * d, self.ss, axes=1)
        t = self.member @ (self.s * d[:, None])
        sg = self.member @ (self.n_c * d)
        kappa = g_p / (1.0 + g_p * sg)
        q -= (t * (w * kappa)[:, None]).T @ t
        logdet = float(np.sum(wc * np.log1p(g_c * self.n_c)) + np.sum(w * np.log1p(g_p * sg)))
        cols = np.r_[keep, True]
        q = q[np.ix_(cols, cols)]
        k = int(keep.sum())
        xvx, xvy, yvy = q[:k, :k], q[:k, k], q[k, k]
        chol = np.linalg.cholesky(xvx)
        z = np.linalg.solve(chol, xvy)
        rss = float(yvy - z @ z)
        dof = float(w @ self.n_rows) - k
        if not rss > 0 or dof <= 0:
            raise FitError("the ratings leave no residual variance to split")
        return dof * np.log(rss / dof) + logdet + 2 * float(np.sum(np.log(np.diag(chol)))), rss / dof

    def fit(self, w: np.ndarray | None = None, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(participant, repeat, residual) variances and the ratios γ (a warm start), participant weights ``w``."""
        w = np.ones(self.n_part) if w is None else np.asarray(w, float)
        mtm = np.tensordot(w, self.mm, axes=1)
        n = mtm[0, 0]  # the intercept column: weighted rows
        diag = np.diag(mtm)[: self.p]
        keep = np.r_[True, (diag[1:] > 0) & (diag[1:] < n)]  # dummies of levels absent (or everywhere) dropped
        # a dummy that repeats others in these weights (e.g. a domain met by one arm only) is dropped too:
        # the column space, and so the restricted likelihood, is unchanged, and no solver has to fail first
        idx = np.flatnonzero(keep)
        for j in dependent_columns(mtm[np.ix_(idx, idx)]):
            keep[idx[j]] = False

        def f(gamma: np.ndarray) -> float:
            return self._criterion(gamma, w, keep, mtm)[0]

        best = None
        for x0 in ([start] if start is not None else []) + [np.array([1.0, 0.5]), np.array([0.05, 0.05])]:
            res = minimize(f, x0, method="Powell", bounds=[(0.0, None), (0.0, None)],
                           options={"xtol": 1e-6, "ftol": 1e-10, "maxiter": 2000})
            if res.success and np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and (
                    best is None or res.fun < best.fun - 1e-9):
                best = res
            if best is not None and start is not None:
                break  # a warm start that converged is the answer; otherwise compare starts
        if best is None:
            raise FitError("the mixed model of the ratings did not converge")
        gamma = np.maximum(best.x, 0.0)
        sigma2 = self._criterion(gamma, w, keep, mtm)[1]
        return np.array([gamma[0] * sigma2, gamma[1] * sigma2, sigma2]), gamma


def _split_design(d: pd.DataFrame) -> np.ndarray:
    """Intercept, arm and domain dummies (first level left out), constant dummies dropped."""
    x = np.column_stack([np.ones(len(d)), _dummies(d["arm"].astype(str).to_numpy()),
                         _dummies(d["domain"].astype(str).to_numpy())])
    keep = np.r_[True, x[:, 1:].std(axis=0) > 0]
    return x[:, keep]


SPLIT_PARTS = ("participant", "repeat", "residual")
SHARE_EDGE = 1e-6
"""A share (or refit) this close to 0 or 1 is on the boundary: the REML optimiser stops within ~1e-6
of a zero variance ratio (a refit of a zero variance reports ~2e-7), where the logit is unbounded."""


def _share_estimate(value: float, draws: np.ndarray, n: int) -> Estimate:
    """A variance share with its 95% CI from the bootstrap refits: the normal interval on the logit
    scale with the refits' standard deviation there and a t quantile with n − 1 df (n participants).

    Why not the percentile interval: at 50 participants × 2 domains × 2 repeats it covered the planted
    shares too rarely (participant, repeat and residual shares 0.13–0.61; calibration and
    ``docs/calibration.md``): a share's sampling spread grows with it and its bootstrap spread is
    too narrow at few participants, and 2.5%/97.5% quantiles of at most ``N_BOOT_MIXED`` refits are
    noisy where their standard deviation is not. This interval's coverage was on target there. Where the
    share or a refit is on the boundary (``SHARE_EDGE``; the logit has no finite value) it stays the
    percentile interval, which includes the boundary, with its far end from ``_boundary_share``."""
    out = estimate(value, draws, n)
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    inside = SHARE_EDGE < value < 1 - SHARE_EDGE and d.size >= 2 and bool(np.all((d > SHARE_EDGE) & (d < 1 - SHARE_EDGE)))
    if not np.isfinite(out.ci_low) or n < 2 or d.size < 2:
        return out
    if not inside:
        return _boundary_share(out, value, d, n)
    half = float(sps.t.ppf(0.975, n - 1) * np.std(logit(d), ddof=1))
    return out.model_copy(update={
        "ci_low": float(expit(logit(value) - half)), "ci_high": float(expit(logit(value) + half)),
        "note": "95% CI: normal on the logit scale, bootstrap SD of the refits, t with participants − 1 df"})


def _boundary_share(out: Estimate, value: float, d: np.ndarray, n: int) -> Estimate:
    """A share whose estimate or some refits sit on the boundary: the percentile interval, with its
    far end widened to the normal interval on the square-root scale (distance from the near boundary,
    bootstrap SD, t with n − 1 df) when that reaches further.

    Why: refits pile up at the boundary, so the percentile interval's far end is too close: at a
    planted share of 0.037 (50 participants) it missed the truth from below far too often. The
    square root (an SD's scale) has a finite value at 0 and spreads the pile; only the far end is
    widened, so the near end, which says whether the share is above 0, stays the percentile's."""
    low_side = value < 0.5
    r = np.sqrt(np.clip(d if low_side else 1 - d, 0.0, 1.0))
    reach = (np.sqrt(max(value if low_side else 1 - value, 0.0)) + sps.t.ppf(0.975, n - 1) * np.std(r, ddof=1)) ** 2
    if low_side and min(reach, 1.0) > out.ci_high:
        return out.model_copy(update={"ci_high": float(min(reach, 1.0)), "note": BOUNDARY_NOTE})
    if not low_side and max(1 - reach, 0.0) < out.ci_low:
        return out.model_copy(update={"ci_low": float(max(1 - reach, 0.0)), "note": BOUNDARY_NOTE})
    return out


BOUNDARY_NOTE = ("95% CI: percentile of the bootstrap refits (some on the boundary), the far end widened to the "
                 "normal interval on the square-root scale")


def _variance_split(s: pd.DataFrame, participants: Participants) -> VarianceSplit:
    """Participant / repeat / residual variance of a simulated source's rating_preference."""
    col = "rating_preference"
    if not has_values(s, col):
        return VarianceSplit(status="not_available", reason="no rating_preference: nothing to split")
    d = (s[s[col].notna()].drop_duplicates(["conversation_id", "arm"])[["participant_id", "domain", "conversation_id", "arm", col]]
         .assign(participant_id=lambda f: f["participant_id"].astype(str)))
    d["domain"] = d["domain"].fillna("").astype(str)
    cells = d.groupby(["participant_id", "domain"])["conversation_id"].nunique()
    n_part = int(d["participant_id"].nunique())
    out = VarianceSplit(column=col, n_participants=n_part, n_conversations=int(d["conversation_id"].nunique()),
                        n_repeated=int((cells >= 2).sum()))
    if out.n_repeated == 0:
        out.status, out.reason = "not_available", (
            "every (participant, domain) has one conversation, so a repeat level cannot be told from the "
            "participant's (a run with --repeats 2 or more has them)")
        return out
    if n_part < MIN_PARTICIPANTS:
        out.status, out.reason = "not_available", f"{n_part} participants with ratings (fewer than {MIN_PARTICIPANTS})"
        return out
    members, local = np.unique(participants.index(d["participant_id"].to_numpy()), return_inverse=True)
    reml = _NestedReml(_split_design(d), d[col].to_numpy(float), local, d["conversation_id"].to_numpy())
    try:
        value, start = reml.fit()
    except (FitError, np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        out.status, out.reason = "failed", reason_for(exc)
        return out
    # participant bootstrap: the same sums weighted by how often each participant is drawn
    n_b = min(participants.n_boot, N_BOOT_MIXED)
    draws = np.full((n_b, 3), np.nan)
    for b in progress(range(n_b), n_b, "variance split refits"):
        w = participants.counts[b, members]
        if np.count_nonzero(w) < 2:
            continue  # NaN: counted as a failed refit
        try:
            with np.errstate(all="ignore"):
                draws[b] = reml.fit(w, start)[0]
        except (FitError, np.linalg.LinAlgError, ValueError, FloatingPointError):
            pass  # counted below as a failed refit
    out.n_boot, out.n_failed = n_b, int(np.sum(~np.isfinite(draws).all(axis=1)))
    total, total_b = value.sum(), draws.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares_b = draws / total_b
    for i, part in enumerate(SPLIT_PARTS):
        out.variance[part] = estimate(float(value[i]), draws[:, i], n_part)
        out.share[part] = _share_estimate(float(value[i] / total), shares_b[:, i], n_part)
    return out


R = TypeVar("R", bound=SourceStatus)


def _guarded(kind: type[R], run: Callable[..., R], *args: object) -> R:
    """``run(*args)``, or a ``kind`` that failed with the reason: a control must not sink the agreement analysis."""
    try:
        return run(*args)
    except Exception as exc:  # noqa: BLE001 - recorded as the control's failure
        return kind(status="failed", reason=reason_for(exc))


# ---------------------------------------------------------------------------------------------


def _drop_gen_errors(tables: Tables, j: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Judgements without the conversations flagged gen_error, and how many were dropped per source."""
    conv = tables.conversations
    if conv is None or "gen_error" not in conv.columns:
        return j, {}
    flag = conv["gen_error"].astype("boolean").fillna(False).astype(bool)
    bad = set(conv.loc[flag, "conversation_id"].astype(str))
    hit = j["conversation_id"].isin(bad)
    counts = j[hit].drop_duplicates("conversation_id")["source"].value_counts()
    return j[~hit], {str(k): int(v) for k, v in counts.items()}


def agreement(tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None) -> AgreementResult:
    """Individual agreement of each simulated source with human, the human ceiling, and per simulated
    source the controls: persona placebo, seed-to-seed retest and the variance split of its ratings."""
    participants = participants or participants_of(tables, n_boot, seed)
    j, dropped = _drop_gen_errors(tables, judgements_frame(tables))
    j = _with_repeat(tables, j)
    for col in RATINGS:
        if col not in j.columns:
            j[col] = np.nan
    sources = sorted(j["source"].unique())
    h = j[j["source"] == HUMAN]
    out = AgreementResult(n_gen_error=dropped)
    n_human = int(h["participant_id"].nunique())
    if n_human < MIN_PARTICIPANTS:
        out.status = "not_available"
        out.reason = (f"{n_human} human participants (fewer than {MIN_PARTICIPANTS})" if n_human
                      else "no human source")
        # the simulator's own consistency needs no human: its retest and variance split still stand
        for s in sim_sources(sources):
            sim = j[j["source"] == s]
            out.sim_retest[s] = _guarded(RetestResult, _sim_retest, sim, participants, seed)
            out.variance_split[s] = _guarded(VarianceSplit, _variance_split, sim, participants)
        return out
    out.human_ceiling, usable = _ceiling(h, participants, seed)
    for s in sim_sources(sources):
        sim = j[j["source"] == s]
        out.vs_human[s] = _compare(h, sim, participants, usable)
        out.persona_placebo[s] = _guarded(PersonaPlacebo, _placebo, h, sim, participants, seed)
        out.sim_retest[s] = _guarded(RetestResult, _sim_retest, sim, participants, seed)
        out.variance_split[s] = _guarded(VarianceSplit, _variance_split, sim, participants)
    return out
