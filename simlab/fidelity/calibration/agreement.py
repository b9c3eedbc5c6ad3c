"""Calibration cases of individual agreement against the human ceiling.

Every generator: 80–160 participants, four conversations each (one per domain), four arms with
a shared hierarchy ``STRENGTHS`` plus individual preferences (SD 1), participants that differ in
how noisy they are and in their rating or bidding level (style).

1. **top-1 agreement − ceiling** (``ceiling_gap``): the human ranks the arms and bids on them in
   whole dollars (many $0 bids, some participants $0 on every arm: tied maxima); the simulator
   gives only ratings on the human's bid scale, so its ranked_best is its tied maxima. Null: the
   simulated copy reads the same preferences with the same noise as the human's own bid, so it
   agrees with the human's ranking exactly as often as the human's bid does (the ceiling pair
   ranked_best~wtp_bid): the gap is 0 by symmetry. Effect: the simulator knows the individual
   preferences only partly (correlation 0.3), truth by Monte Carlo.
2. **rating correlation beyond arm means** (``pearson_individual``): both sources rate 0–100 in
   steps of 5 (ties), with a rating level the simulated copy shares with its human (which a pooled
   correlation would count as agreement). Null: the simulator's individual preferences are
   independent of the human's (only the hierarchy is shared); truth 0. Effect: correlation 0.5.
3. **retest, rating style only** (``rating_corr_within``, permutation p): humans rate the same
   arms in four conversations with individual and per-conversation rating levels. Null: no arm
   preference at all (the pooled retest correlation is ≈ 0.7 from style alone); truth 0. Effect:
   hierarchy + individual preferences at half the scale, truth by Monte Carlo.

4. **persona placebo, ranked_best** (``persona_placebo[src].by_instrument["ranked_best"].gap``,
   permutation p): own-human agreement minus the mean agreement with the other humans of the
   domain. Generator ``simulate_placebo``: 60–120 participants in 1–4 domains, each domain with its
   own distribution π_d of the humans' top arm; 1–2 simulated runs (repeats) per participant and
   domain. A human's tops in their domains are correlated (a participant taste: Gaussian copula,
   ρ = 0.5, exact marginal π_d); the simulated copy has a taste of its own, as strong, that its runs
   share (the persona makes it consistent) but that knows nothing of the human's. Null: that is
   all (gap 0 by construction). Effect: each run picks its own human's top with probability
   ``EFFECT_PLACEBO``, else draws as under the null: the truth is q·(1 − Σπ_d²), averaged over the
   domains with their expected share of the conversations (``make_placebo``'s truth per domain). The
   tastes are what a permutation that shuffled each domain on its own did not carry: with ρ = 0.9
   it over-rejected the nulls, so the analysis shuffles participants across domains.
5. **variance split, repeat share** (``variance_split[src].share["repeat"]``): a descriptive, not a
   comparison. Generator ``synthetic.make_rating_repeats``: ``SPLIT_PARTICIPANTS`` participants × 2
   domains × 2 runs (repeats), 4 arms with fixed effects, participant SD 10, conversation (repeat)
   SD ``SPLIT_REPEAT_SD`` and residual SD 8; the truth is the planted share (the variances are
   exact: no clipping). The only test one makes of it is "is there any seed-to-seed variance": the
   null plants none (truth 0, on the boundary: a CI covers it exactly when it does not exclude it,
   so ``Case.boundary_null`` and the coverage is that of the effects), the effect the SD above; a
   second case plants a smaller SD (``SPLIT_REPEAT_SD_SMALL``), a share near the boundary.

5% of the simulated conversations are generation errors (flagged ``gen_error``, judged at
random): the analysis must drop them. Truths are for the conversations without errors
(cases 1–4).
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import pandas as pd
from scipy.stats import norm

from simlab.fidelity.analyses._prep import drop_gen_error, judgements_frame, participants_of
from simlab.fidelity.analyses.agreement import agreement
from simlab.fidelity.analyses.agreement.common import _with_repeat
from simlab.fidelity.analyses.agreement.variance_split import _variance_split
from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.synthetic import make_rating_repeats
from simlab.schema import DOMAINS
from simlab.tables import Tables

__all__ = [
    "CASES",
    "EFFECT_PLACEBO",
    "PLACEBO_PI",
    "PLACEBO_RHO",
    "SIM",
    "TRUTH_N",
    "measure_placebo",
    "simulate_placebo",
    "simulate_retest",
    "simulate_split",
    "simulate_top1",
    "truth_corr",
    "truth_placebo",
    "truth_retest",
    "truth_split",
    "truth_top1",
]

SIM = "sim_dynamic"
ARMS = ("GEN", "PROMPT", "DPFT", "PPFT")
STRENGTHS = np.array([0.0, 0.3, 0.7, 1.1])
N_BOOT = 200
GEN_ERROR = 0.05
TRUTH_N = 40_000  # participants of the Monte Carlo truths (SE ≈ 0.002)
EFFECT_TOP1 = 0.3  # correlation of the simulator's individual preferences with the human's (case 1)
EFFECT_CORR = 0.5  # the same for case 2
EFFECT_RETEST = 0.5  # scale of the arm preferences under case 3's effect


def _base(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per conversation (one per participant × domain): participant index, individual preferences (n, k), noise scale."""
    k, d = len(ARMS), len(DOMAINS)
    who = np.repeat(np.arange(n), d)
    pref = rng.normal(0.0, 1.0, (n, len(ARMS)))
    sigma = np.exp(rng.normal(0.0, 0.3, n))
    assert pref.shape[1] == k
    return who, pref, sigma


def _mix(rng: np.random.Generator, pref: np.ndarray, rho: float) -> np.ndarray:
    """Preferences correlated ``rho`` with ``pref`` (same marginal)."""
    return np.asarray(rho * pref + np.sqrt(1 - rho**2) * rng.normal(0.0, 1.0, pref.shape))


def _tables(who: np.ndarray, columns: dict[str, dict[str, np.ndarray]], gen_error: dict[str, np.ndarray]) -> Tables:
    """Tables from per-source (conversations, k) arrays of judgement columns."""
    k, d = len(ARMS), len(DOMAINS)
    jr, cr = [], []
    for src, cols in columns.items():
        cid = np.array([f"{src}-p{p}-{i % d}" for i, p in enumerate(who)])
        frame = {"conversation_id": np.repeat(cid, k), "participant_id": np.repeat([f"p{p}" for p in who], k),
                 "source": src, "domain": np.repeat(np.array(DOMAINS)[np.arange(who.size) % d], k),
                 "arm": np.tile(ARMS, who.size)}
        frame.update({c: v.ravel() for c, v in cols.items()})
        jr.append(pd.DataFrame(frame))
        cr.append(pd.DataFrame({"conversation_id": cid, "participant_id": [f"p{p}" for p in who], "source": src,
                                "domain": np.array(DOMAINS)[np.arange(who.size) % d], "gen_error": gen_error[src]}))
    return Tables(judgements=pd.concat(jr, ignore_index=True), conversations=pd.concat(cr, ignore_index=True))


# ---------------------------------------------------------------------------------------------
# 1. top-1 agreement − ceiling


def _top1_core(rng: np.random.Generator, n: int, effect: bool) -> dict[str, np.ndarray]:
    who, pref, sigma = _base(rng, n)
    style = rng.normal(0.0, 1.0, n)  # bidding level: some participants bid $0 on everything
    sim_pref = _mix(rng, pref, EFFECT_TOP1) if effect else pref
    shape = (who.size, len(ARMS))

    def bid(p: np.ndarray) -> np.ndarray:
        u = STRENGTHS + p[who] + sigma[who, None] * rng.gumbel(size=shape)
        return np.asarray(np.clip(np.round(2 * u - 2 + style[who, None]), 0, 10))

    score = STRENGTHS + pref[who] + sigma[who, None] * rng.gumbel(size=shape)
    rank = (-score).argsort(axis=1).argsort(axis=1) + 1
    return {"who": who, "rank": rank, "bid_h": bid(pref), "bid_s": bid(sim_pref)}


def _agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tie-aware top-1 agreement per row of two (conversations, k) 0/1 top-set arrays."""
    return np.asarray((a * b).sum(1) / (a.sum(1) * b.sum(1)))


def _top(x: np.ndarray) -> np.ndarray:
    return np.asarray(x == x.max(axis=1, keepdims=True), dtype=float)


def simulate_top1(seed: int, effect: bool) -> Tables:
    rng = np.random.default_rng(seed)
    c = _top1_core(rng, int(rng.integers(80, 161)), effect)
    err = rng.random(c["who"].size) < GEN_ERROR
    sim = 10 * c["bid_s"]
    sim[err] = 10 * rng.integers(0, 11, (err.sum(), len(ARMS)))  # an error notice judged at random
    return _tables(c["who"], {"human": {"rank": c["rank"], "wtp_bid": c["bid_h"]},
                              SIM: {"rating_preference": sim}},
                   {"human": np.zeros(c["who"].size, bool), SIM: err})


@lru_cache(maxsize=None)
def truth_top1(effect: bool) -> float:
    if not effect:
        return 0.0  # same distribution of both sides by construction
    c = _top1_core(np.random.default_rng(7), TRUTH_N, True)
    best = (c["rank"] == 1).astype(float)
    return float(np.mean(_agree(best, _top(c["bid_s"])) - _agree(best, _top(c["bid_h"]))))


def measure_top1(tables: Tables, seed: int) -> Measured:
    c = agreement(tables, n_boot=N_BOOT, seed=seed).vs_human.get(SIM)
    e = c.ceiling_gap if c is not None and c.ceiling_pair == "ranked_best~wtp_bid" else None
    return Measured(e, e.p_value if e is not None else None)


# ---------------------------------------------------------------------------------------------
# 2. rating correlation beyond arm means


def _corr_core(rng: np.random.Generator, n: int, effect: bool) -> dict[str, np.ndarray]:
    who, pref, sigma = _base(rng, n)
    level = rng.normal(0.0, 12.0, n)  # shared by a human and their simulated copy
    scale = np.exp(rng.normal(0.0, 0.3, n))
    sim_pref = _mix(rng, pref, EFFECT_CORR if effect else 0.0)
    shape = (who.size, len(ARMS))

    def rate(p: np.ndarray, lv: np.ndarray, sc: np.ndarray) -> np.ndarray:
        x = 50 + lv[who, None] + sc[who, None] * (10 * (STRENGTHS + p[who]) + 8 * sigma[who, None] * rng.normal(size=shape))
        return np.asarray(np.clip(5 * np.round(x / 5), 0, 100))

    return {"who": who, "h": rate(pref, level, scale), "s": rate(sim_pref, 0.8 * level + 3, np.ones(n))}


def simulate_corr(seed: int, effect: bool) -> Tables:
    rng = np.random.default_rng(seed)
    c = _corr_core(rng, int(rng.integers(80, 161)), effect)
    err = rng.random(c["who"].size) < GEN_ERROR
    sim = c["s"].copy()
    sim[err] = 5 * rng.integers(0, 21, (err.sum(), len(ARMS)))
    return _tables(c["who"], {"human": {"rating_preference": c["h"]}, SIM: {"rating_preference": sim}},
                   {"human": np.zeros(c["who"].size, bool), SIM: err})


def _double_centred(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return np.asarray(x - x.mean(axis=0, keepdims=True))


@lru_cache(maxsize=None)
def truth_corr(effect: bool) -> float:
    if not effect:
        return 0.0  # independent beyond the shared arm means
    c = _corr_core(np.random.default_rng(8), TRUTH_N, True)
    return float(np.corrcoef(_double_centred(c["h"]).ravel(), _double_centred(c["s"]).ravel())[0, 1])


def measure_corr(tables: Tables, seed: int) -> Measured:
    c = agreement(tables, n_boot=N_BOOT, seed=seed).vs_human.get(SIM)
    e = c.pearson_individual.get("rating_preference") if c is not None else None
    return Measured(e, e.p_value if e is not None else None)


# ---------------------------------------------------------------------------------------------
# 3. retest: rating style alone is not agreement


def _retest_core(rng: np.random.Generator, n: int, effect: bool) -> dict[str, np.ndarray]:
    who, pref, sigma = _base(rng, n)
    level = rng.normal(0.0, 15.0, n)[who] + rng.normal(0.0, 5.0, who.size)  # participant + conversation
    arm = EFFECT_RETEST * (STRENGTHS + pref[who]) if effect else np.zeros((who.size, len(ARMS)))
    x = 50 + level[:, None] + 10 * arm + 8 * sigma[who, None] * rng.normal(size=arm.shape)
    return {"who": who, "r": np.clip(np.round(x), 0, 100)}


def simulate_retest(seed: int, effect: bool) -> Tables:
    rng = np.random.default_rng(seed)
    c = _retest_core(rng, int(rng.integers(80, 161)), effect)
    return _tables(c["who"], {"human": {"rating_preference": c["r"]}}, {"human": np.zeros(c["who"].size, bool)})


@lru_cache(maxsize=None)
def truth_retest(effect: bool) -> float:
    if not effect:
        return 0.0  # centred ratings of two conversations are independent
    c = _retest_core(np.random.default_rng(9), TRUTH_N, True)
    d = len(DOMAINS)
    r = c["r"].reshape(TRUTH_N, d, len(ARMS))
    r = r - r.mean(axis=2, keepdims=True)
    i, j = np.triu_indices(d, 1)
    return float(np.corrcoef(r[:, i].ravel(), r[:, j].ravel())[0, 1])


def measure_retest(tables: Tables, seed: int) -> Measured:
    ceiling = agreement(tables, n_boot=N_BOOT, seed=seed).human_ceiling
    rt = ceiling.retest if ceiling is not None else None
    e = rt.rating_corr_within if rt is not None else None
    return Measured(e, rt.permutation_p if rt is not None else None)


# ---------------------------------------------------------------------------------------------
# 4. persona placebo: own human vs another human of the domain

EFFECT_PLACEBO = 0.15  # chance that a simulated run picks its own human's top arm (case 4)
PLACEBO_PI = np.array([[0.4, 0.3, 0.2, 0.1],  # the humans' top-arm distribution per domain (DOMAINS order)
                       [0.25, 0.25, 0.25, 0.25],
                       [0.55, 0.2, 0.15, 0.1],
                       [0.3, 0.4, 0.2, 0.1]])
PLACEBO_RHO = 0.5  # copula correlation of a participant's tops across their conversations (human; simulator alike)


def _copula_top(rng: np.random.Generator, taste: np.ndarray, dom: np.ndarray) -> np.ndarray:
    """Top arm per conversation from π_dom, correlated through the participant ``taste`` (one per conversation)."""
    z = np.sqrt(PLACEBO_RHO) * taste + np.sqrt(1 - PLACEBO_RHO) * rng.normal(size=taste.size)
    cum = np.cumsum(PLACEBO_PI, axis=1)[dom]
    return np.asarray(np.minimum((norm.cdf(z)[:, None] > cum).sum(axis=1), len(ARMS) - 1))


def simulate_placebo(seed: int, effect: bool) -> Tables:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(60, 121)), len(ARMS)
    repeats = int(rng.integers(1, 3))
    n_dom = rng.integers(1, len(DOMAINS) + 1, n)
    who = np.repeat(np.arange(n), n_dom)  # human conversations: participant × their first n_dom domains
    dom = np.concatenate([np.arange(m) for m in n_dom])
    taste_h, taste_s = rng.normal(size=n), rng.normal(size=n)
    top_h = _copula_top(rng, taste_h[who], dom)
    s_conv = np.repeat(np.arange(who.size), repeats)  # simulated runs of each human conversation
    top_s = _copula_top(rng, taste_s[who[s_conv]], dom[s_conv])
    if effect:
        top_s = np.where(rng.random(s_conv.size) < EFFECT_PLACEBO, top_h[s_conv], top_s)
    err = rng.random(s_conv.size) < GEN_ERROR
    top_s[err] = rng.integers(0, k, err.sum())  # an error notice ranked at random

    def ranks(top: np.ndarray) -> np.ndarray:
        u = rng.random((top.size, k))
        u[np.arange(top.size), top] = 2.0  # the top first, the rest in random order
        return (-u).argsort(axis=1).argsort(axis=1) + 1

    rows = {"human": (who, dom, np.zeros(who.size, int), ranks(top_h), np.zeros(who.size, bool)),
            SIM: (who[s_conv], dom[s_conv], np.tile(np.arange(repeats), who.size), ranks(top_s), err)}
    jr, cr = [], []
    for src, (w, d, r, rank, bad) in rows.items():
        cid = np.array([f"{src}-p{p}-{DOMAINS[x]}-r{y}" for p, x, y in zip(w, d, r)])
        pid = np.array([f"p{p}" for p in w])
        jr.append(pd.DataFrame({"conversation_id": np.repeat(cid, k), "participant_id": np.repeat(pid, k),
                                "source": src, "domain": np.repeat(np.array(DOMAINS)[d], k),
                                "arm": np.tile(ARMS, w.size), "rank": rank.ravel()}))
        cr.append(pd.DataFrame({"conversation_id": cid, "participant_id": pid, "source": src,
                                "domain": np.array(DOMAINS)[d], "repeat": r, "gen_error": bad}))
    return Tables(judgements=pd.concat(jr, ignore_index=True), conversations=pd.concat(cr, ignore_index=True))


def truth_placebo(effect: bool) -> float:
    if not effect:
        return 0.0  # the simulator's tops are independent of every human's
    d = len(DOMAINS)
    share = np.array([d - i for i in range(d)], float)  # domain i is held by those with > i domains
    share /= share.sum()  # expected share of the conversations per domain (1–4 domains uniform)
    return float(EFFECT_PLACEBO * share @ (1 - (PLACEBO_PI**2).sum(axis=1)))


def measure_placebo(tables: Tables, seed: int) -> Measured:
    pp = agreement(tables, n_boot=N_BOOT, seed=seed).persona_placebo.get(SIM)
    r = pp.by_instrument.get("ranked_best") if pp is not None else None
    e = r.gap if r is not None else None
    return Measured(e, r.permutation_p if r is not None else None)


# ---------------------------------------------------------------------------------------------
# 5. variance split: the repeat share of the simulator's ratings

SPLIT_PARTICIPANTS = 50
SPLIT_SD = {"participant": 10.0, "residual": 8.0}
SPLIT_REPEAT_SD = 5.0  # the seed-to-seed (conversation within participant) SD under the effect
SPLIT_REPEAT_SD_SMALL = 2.5  # the same, near the boundary (share 0.037)
SPLIT_NULL_VALUE = 1e-6
"""A share's CI "excludes 0" when its lower end is above this: the REML optimiser stops within ~1e-6
of a zero variance ratio (``agreement.variance_split.SHARE_EDGE``; a report shows such a share as 0%)."""


def simulate_split(seed: int, effect: bool, repeat_sd: float = SPLIT_REPEAT_SD) -> Tables:
    return make_rating_repeats(SPLIT_PARTICIPANTS, 2, sd_participant=SPLIT_SD["participant"],
                               sd_repeat=repeat_sd if effect else 0.0, sd_residual=SPLIT_SD["residual"], seed=seed)


def truth_split(effect: bool, repeat_sd: float = SPLIT_REPEAT_SD) -> float:
    if not effect:
        return 0.0
    return repeat_sd**2 / (repeat_sd**2 + sum(v**2 for v in SPLIT_SD.values()))


def measure_split(tables: Tables, seed: int) -> Measured:
    """share["repeat"] of the simulated source, as ``agreement`` computes it (the variance split alone:
    the same frame and participant draws, without the comparisons with people)."""
    j, _ = drop_gen_error(judgements_frame(tables), tables)
    j = _with_repeat(tables, j)
    vs = _variance_split(j[j["source"] == SIM], participants_of(tables, N_BOOT, seed))
    return Measured(vs.share.get("repeat"))


CASES = [
    Case("agreement", "top-1 agreement − human ceiling (ranked_best vs ranked_best~wtp_bid)", simulate_top1,
         measure_top1, truth_top1, 0.0,
         "ranks vs whole-dollar bids with many $0 ties; null: simulator as consistent with its human as the "
         "human's bid; effect: individual preferences correlated 0.3; 5% gen_error conversations"),
    Case("agreement", "rating correlation beyond arm means (pearson_individual)", simulate_corr, measure_corr,
         truth_corr, 0.0,
         "0–100 ratings in steps of 5, a rating level shared by human and copy; null: only the hierarchy "
         "shared; effect: individual preferences correlated 0.5; 5% gen_error conversations"),
    Case("agreement", "test–retest within conversation-centred correlation (style-only null)", simulate_retest,
         measure_retest, truth_retest, 0.0,
         "participant and conversation rating levels; null: no arm preference (pooled r ≈ 0.7 from style); "
         "effect: hierarchy + individual preferences at half scale; p-value: within-conversation permutation"),
    Case("agreement", "persona placebo gap, ranked_best (own − mismatched human)", simulate_placebo,
         measure_placebo, truth_placebo, 0.0,
         "60–120 participants in 1–4 domains with their own top-arm distributions, 1–2 simulated runs each; the "
         "human's tops correlated across their domains (participant taste, copula ρ 0.5), the simulated copy "
         "with a taste of its own shared by its runs; null: nothing of the human's; effect: each run picks its "
         f"own human's top with probability {EFFECT_PLACEBO:g} (truth q·(1 − Σπ²) = "
         f"{truth_placebo(True):.3f}); CI: participant bootstrap; p-value: one-sided permutation of the "
         "sim↔human pairing of participants, one shuffle for all their domains (shuffling each domain on its own "
         "rejected 11% of 600 nulls at 5% with tastes of copula ρ 0.9, 4.7% now); 5% gen_error conversations"),
    Case("agreement", "variance split: repeat share of the simulator's ratings (descriptive)", simulate_split,
         measure_split, truth_split, SPLIT_NULL_VALUE,
         f"{SPLIT_PARTICIPANTS} participants × 2 domains × 2 runs of 4 arms, participant SD 10, residual SD 8 "
         f"(make_rating_repeats); null: no seed-to-seed variance (truth 0, on the boundary); effect: repeat SD "
         f"{SPLIT_REPEAT_SD:g} (share {truth_split(True):.3f}); significant = the CI's lower end above 1e-6 (the "
         "REML optimiser's 0); CI from 100 participant-bootstrap refits, normal on the logit scale (at the "
         "boundary: percentile, far end widened on the square-root scale)", boundary_null=True),
    Case("agreement", "variance split: repeat share near the boundary (descriptive)",
         partial(simulate_split, repeat_sd=SPLIT_REPEAT_SD_SMALL), measure_split,
         partial(truth_split, repeat_sd=SPLIT_REPEAT_SD_SMALL), SPLIT_NULL_VALUE,
         f"as above with repeat SD {SPLIT_REPEAT_SD_SMALL:g} under the effect (share "
         f"{truth_split(True, SPLIT_REPEAT_SD_SMALL):.3f}): some refits reach 0, where the CI is the percentile "
         "interval with its far end widened on the square-root scale (the percentile interval alone covered 87%: "
         "refits piled at 0 pulled its upper end below the truth)", boundary_null=True),
]
