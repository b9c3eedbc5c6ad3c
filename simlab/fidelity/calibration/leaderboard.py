"""Calibration of the leaderboard (``simlab.fidelity.fidelity_index``): its index, the index's CI and the
paired test between two simulated sources.

Generator: humans from ``make_synthetic`` (arm strengths, per-participant preferences, a first-shown
bias of ``HUMAN_POSITION_BIAS``, 2 + Binomial(4, 0.3) user turns per conversation), and simulated variants planted on them with ``plant``: in each
conversation a ``copy`` variant takes its matched human's judgements (rank, ratings, bid, opening
choice, turns) with probability q and otherwise answers uniformly at random; a ``first_shown`` variant
ranks, rates and bids by display order with probability q. A variant sees the same display order as its
human. Both are simulated participants of the same ids, so the bootstrap pairs them.
The true index of a variant is its index on a very large sample of the same generator (``truth``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache, partial

import numpy as np
import pandas as pd
from scipy.stats import norm

from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.synthetic import make_synthetic
from simlab.schema import WTP_CAP
from simlab.tables import Tables, concat

__all__ = ["CASES", "N_PARTICIPANTS", "humans", "make_cases", "plant", "rank_first", "simulate", "truth"]

N_PARTICIPANTS = 100
N_BOOT = 200
DOMAINS = ("unguided", "values", "controversy", "emotional_wellbeing")
STRENGTHS = {"GEN": 0.0, "PROMPT": 0.7, "DPFT": 1.4, "PPFT": 2.1}
HUMAN_POSITION_BIAS = 1.0
Q_NULL = 0.6
"""Share of conversations both variants copy under the null (equal variants)."""
Q_CLOSER = 0.8
"""Share the closer variant copies under the effect (the other keeps ``Q_NULL``)."""
N_TRUTH = 20_000


def humans(n: int, seed: int) -> Tables:
    """Human-shaped data: ``n`` participants × ``DOMAINS`` (see the module docstring)."""
    t = make_synthetic(n, strengths=STRENGTHS, position_bias={"human": HUMAN_POSITION_BIAS}, seed=seed,
                       sources=("human",), domains=DOMAINS, preference_sd=1.0, autograde=False)
    assert t.conversations is not None
    # conversation lengths skewed towards short ones (make_synthetic's are uniform, as the reference is);
    # only the conversations table says it (the leaderboard's turns component reads n_turns there)
    rng = np.random.default_rng([seed, 3])
    conv = t.conversations.assign(n_turns=2 + rng.binomial(4, 0.3, len(t.conversations)))
    return Tables(judgements=t.judgements, conversations=conv, participants=t.participants)


def plant(human: Tables, variants: Mapping[str, tuple[str, float]], seed: int) -> Tables:
    """``human`` and, per ``name: (behaviour, q)``, a simulated source ``name`` of the same participants.

    ``copy``: each conversation copies its human's judgements and turn count with probability q, else
    answers uniformly at random (q = 0: a random participant). ``first_shown``: with probability q it
    ranks the arms in display order (rating 100 for the first shown down to 0 for the last, the bid
    likewise on its cap, opening choice the first shown), else at random."""
    rng = np.random.default_rng([seed, 7])
    hj = human.judgements.sort_values(["conversation_id", "position"]).reset_index(drop=True)
    assert human.conversations is not None
    hc = human.conversations
    conv_ids = hj["conversation_id"].unique()
    k = int(hj.groupby("conversation_id").size().max())
    n = len(conv_ids)
    has_turns = "n_turns" in hc.columns and bool(hc["n_turns"].notna().all())
    lo, hi = (int(hc["n_turns"].min()), int(hc["n_turns"].max())) if has_turns else (0, 0)
    parts = [Tables(judgements=hj, conversations=hc)]
    for name, (behaviour, q) in variants.items():
        j = hj.copy()
        use = rng.random(n) < q
        rows = np.repeat(use, k)
        rand_rank = (np.argsort(rng.random((n, k)), axis=1) + 1).ravel()
        pos = j["position"].to_numpy(int)
        random_vals = {
            "rank": rand_rank,
            "rating_preference": np.round(rng.uniform(0, 100, n * k), 1),
            "rating_engagingness": np.round(rng.uniform(0, 100, n * k), 1),
            "wtp_bid": np.round(rng.uniform(0, WTP_CAP, n * k), 2),
            "opening_choice": (np.arange(k)[None, :] == rng.integers(0, k, n)[:, None]).ravel(),
        }
        if behaviour == "copy":
            kept = {c: j[c].to_numpy() for c in random_vals}
        elif behaviour == "first_shown":
            by_order = (k - pos) / max(k - 1, 1)  # 1 for the first shown, 0 for the last
            kept = {"rank": pos, "rating_preference": 100.0 * by_order, "rating_engagingness": 100.0 * by_order,
                    "wtp_bid": WTP_CAP * by_order, "opening_choice": pos == 1}
        else:
            raise ValueError(f"unknown behaviour {behaviour!r} (copy, first_shown)")
        for col, r in random_vals.items():
            j[col] = np.where(rows, kept[col], r)
        j["opening_choice"] = pd.array(j["opening_choice"], dtype="boolean")  # NA where a human has none
        j["conversation_id"] = name + "-" + j["conversation_id"].astype(str)
        j["source"] = name
        c = hc.copy()
        c_use = pd.Series(use, index=conv_ids).loc[c["conversation_id"]].to_numpy()
        if has_turns:  # human data without turn counts (e.g. some imports) leave the variants without them too
            c["n_turns"] = np.where(c_use & (behaviour == "copy"), c["n_turns"], rng.integers(lo, hi + 1, len(c)))
        c["conversation_id"] = name + "-" + c["conversation_id"].astype(str)
        c["source"] = name
        parts.append(Tables(judgements=j, conversations=c))
    return concat(*parts)


def simulate(seed: int, effect: bool, n: int = N_PARTICIPANTS) -> Tables:
    """Humans and two copy variants, ``v1`` and ``v2``: both copy ``Q_NULL`` of their conversations
    under the null; under the effect ``v1`` copies ``Q_CLOSER``."""
    h = humans(n, seed)
    return plant(h, {"v1": ("copy", Q_CLOSER if effect else Q_NULL), "v2": ("copy", Q_NULL)}, seed)


@lru_cache(maxsize=None)
def truth(effect: bool, n: int = N_TRUTH) -> tuple[float, float]:
    """The true index of (v1, v2): their index on ``n`` participants of the same generator."""
    from simlab.fidelity.fidelity_index import leaderboard

    lb = leaderboard(simulate(12345, effect, n), n_boot=2, seed=0, details=False)
    idx = {r.source: r.index.value for r in lb.leaderboard}
    return idx["v1"], idx["v2"]


def _difference(t: Tables, seed: int) -> Measured:
    from simlab.fidelity.fidelity_index import leaderboard

    lb = leaderboard(t, n_boot=N_BOOT, seed=seed, details=False)
    test = next(p for p in lb.pairwise if p.measure == "index")
    d = test.difference
    if test.a == "v2":  # the test is in leaderboard order; the case measures v1 − v2
        d = d.model_copy(update={"value": -d.value, "ci_low": -d.ci_high, "ci_high": -d.ci_low})
    return Measured(d, test.p_adjusted)


def _index(n_truth: int, t: Tables, seed: int) -> Measured:
    from simlab.fidelity.fidelity_index import leaderboard

    lb = leaderboard(t, n_boot=N_BOOT, seed=seed, details=False)
    e = next(r for r in lb.leaderboard if r.source == "v1").index
    # against the null variant's true index, from the CI's normal-equivalent SE
    se = (e.ci_high - e.ci_low) / (2 * norm.ppf(0.975))
    p = float(2 * norm.sf(abs(e.value - truth(False, n_truth)[0]) / se)) if se > 0 else None
    return Measured(e, p)


def _difference_truth(n_truth: int, effect: bool) -> float:
    v1, v2 = truth(effect, n_truth)
    return v1 - v2


def _index_truth(n_truth: int, effect: bool) -> float:
    return truth(effect, n_truth)[0]


def rank_first(reps: int, n: int = N_PARTICIPANTS, seed0: int = 0) -> tuple[int, int]:
    """(datasets where v1, planted closer, tops the simulated rows; datasets) under the effect."""
    from simlab.fidelity.fidelity_index import leaderboard

    first = 0
    for rep in range(reps):
        seed = 1_000_003 * rep + 17 + seed0
        lb = leaderboard(simulate(seed, True, n), n_boot=N_BOOT, seed=seed, details=False)
        sims = [r.source for r in lb.leaderboard if r.kind == "simulated"]
        first += sims[0] == "v1"
    return first, reps


_NOTE = (f"{N_PARTICIPANTS} human participants × {len(DOMAINS)} domains × 4 arms (make_synthetic: arm strengths, "
         f"per-participant preferences SD 1, first-shown bias {HUMAN_POSITION_BIAS}, 2 + Binomial(4, 0.3) turns); variants v1, v2 copy their "
         f"matched human's judgements in a share q of conversations and answer at random otherwise; null: q = "
         f"{Q_NULL} for both; effect: q = {Q_CLOSER} for v1. Truth: the index on {N_TRUTH:,} participants. "
         f"{N_BOOT} bootstrap draws.")

def make_cases(n_truth: int = N_TRUTH) -> list[Case]:
    """The leaderboard's cases, their truths from ``n_truth`` participants (a fast test takes fewer)."""
    note = _NOTE.replace(f"{N_TRUTH:,}", f"{n_truth:,}")
    return [
        Case("leaderboard", "index difference of two variants, v1 − v2 (paired, Holm)", simulate, _difference,
             partial(_difference_truth, n_truth), note=note),
        Case("leaderboard", "index of a variant (v1); significant: differs from the null variant's true index",
             simulate, partial(_index, n_truth), partial(_index_truth, n_truth), note=note),
    ]


CASES = make_cases()
