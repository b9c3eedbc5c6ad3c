"""Calibration cases of individual agreement against the human ceiling (issue 12, finding 2).

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

5% of the simulated conversations are generation errors (flagged ``gen_error``, judged at
random): the analysis must drop them. Truths are for the conversations without errors.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd

from simlab.fidelity.analyses.agreement import agreement
from simlab.fidelity.calibration import Case, Measured
from simlab.schema import DOMAINS
from simlab.tables import Tables

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
    """Per event (participant × domain): participant index, individual preferences (n, k), noise scale."""
    k, d = len(ARMS), len(DOMAINS)
    who = np.repeat(np.arange(n), d)
    pref = rng.normal(0.0, 1.0, (n, len(ARMS)))
    sigma = np.exp(rng.normal(0.0, 0.3, n))
    assert pref.shape[1] == k
    return who, pref, sigma


def _mix(rng: np.random.Generator, pref: np.ndarray, rho: float) -> np.ndarray:
    """Preferences correlated ``rho`` with ``pref`` (same marginal)."""
    return rho * pref + np.sqrt(1 - rho**2) * rng.normal(0.0, 1.0, pref.shape)


def _tables(who: np.ndarray, columns: dict[str, dict[str, np.ndarray]], gen_error: dict[str, np.ndarray]) -> Tables:
    """Tables from per-source (events, k) arrays of judgement columns."""
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
        return np.clip(np.round(2 * u - 2 + style[who, None]), 0, 10)

    score = STRENGTHS + pref[who] + sigma[who, None] * rng.gumbel(size=shape)
    rank = (-score).argsort(axis=1).argsort(axis=1) + 1
    return {"who": who, "rank": rank, "bid_h": bid(pref), "bid_s": bid(sim_pref)}


def _agree(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tie-aware top-1 agreement per row of two (events, k) 0/1 top-set arrays."""
    return (a * b).sum(1) / (a.sum(1) * b.sum(1))


def _top(x: np.ndarray) -> np.ndarray:
    return (x == x.max(axis=1, keepdims=True)).astype(float)


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
        return np.clip(5 * np.round(x / 5), 0, 100)

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
    return x - x.mean(axis=0, keepdims=True)


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
]
