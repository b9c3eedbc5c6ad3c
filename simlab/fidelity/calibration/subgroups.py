"""Calibration of the subgroup breakdown (``--by``) and of raking weights (``--weights``).

The generator is ``hierarchy.choices`` run for two groups of participants (``age`` young / old, given in
the human participants table only, so the simulated copies take it by participant_id) whose simulator
gap in arm C's strength may differ: the comparison is hierarchy's arm C strength vs A, sim − human.

- heterogeneity: both groups share a gap of 0.5 (null) or only the old have it (effect); the estimate is
  the old − young difference of the subgroup estimates, its p the heterogeneity test's.
- subgroup-only gap: no gap (null) or a gap of 0.8 for the old only (effect); the estimate is the old
  subgroup's, its p Holm-adjusted across the two subgroups.
- weighted: the sample is 70% young but the margins say 50/50; the old have the simulator gap (effect)
  or nobody has (null); the estimate is the weighted one over everyone, whose truth (the same estimator on
  large 50/50 samples) differs from the unweighted truth (large 70/30 samples).
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import pandas as pd

from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.calibration.hierarchy import choices, large_sample_truth
from simlab.fidelity.status import Estimate
from simlab.tables import Tables

__all__ = ["CASES", "MARGINS", "two_groups"]

BASE = (0.0, 0.3, 0.6, 0.9)
N_BOOT = 0  # the hierarchy gap's CI and p are cluster-robust (analytic): no bootstrap draw changes them
MARGINS = {"age": {"young": 0.5, "old": 0.5}}
Z95 = 1.959963984540054


def two_groups(seed: int, n_young: int, n_old: int, gap_young: float, gap_old: float, n_events: int = 4) -> Tables:
    """Human and simulated rankings for young and old participants; the simulator likes arm C ``gap_*`` more
    than people do in each group. Per-participant preferences (SD 0.7) shared by a human and their copy."""
    parts = []
    for tag, n, gap, s in (("y", n_young, gap_young, seed), ("o", n_old, gap_old, seed + 7919)):
        sim = (BASE[0], BASE[1], BASE[2] + gap, BASE[3])
        t = choices(s, n, n_events, strength={"human": BASE, "sim": sim}, preference_sd=0.7)
        j, c = t.judgements.copy(), t.conversations
        assert c is not None
        c = c.copy()
        for f in (j, c):
            f["participant_id"] = tag + f["participant_id"].astype(str)
            f["conversation_id"] = tag + f["conversation_id"].astype(str)
        parts.append((j, c, tag))
    j = pd.concat([p[0] for p in parts], ignore_index=True)
    c = pd.concat([p[1] for p in parts], ignore_index=True)
    ids = c.loc[c["source"] == "human", "participant_id"].drop_duplicates()
    people = pd.DataFrame({"participant_id": ids, "source": "human",
                           "age": np.where(ids.str.startswith("y"), "young", "old")})
    return Tables(judgements=j, conversations=c, participants=people.reset_index(drop=True))


def _gap(t: Tables, seed: int, n_boot: int = N_BOOT, weights: dict[str, float] | None = None) -> Estimate | None:
    from simlab.fidelity.analyses._prep import participants_of
    from simlab.fidelity.analyses.hierarchy import hierarchy

    cmp = hierarchy(t, participants=participants_of(t, n_boot, seed, weights)).vs_human.get("sim")
    return cmp.strength_diff.get("C") if cmp is not None else None


def _levels(t: Tables, seed: int) -> tuple[dict[str, Estimate], dict[str, float], float | None]:
    """The old and young subgroup estimates, their Holm-adjusted p and the heterogeneity p."""
    from simlab.fidelity.analyses import analysis_context
    from simlab.fidelity.analyses.subgroups import subgroups

    r = subgroups(t, analysis_context(t, n_boot=N_BOOT, seed=seed, topics=None, by=["age"]), analyses=["hierarchy"])
    c = r.attributes["age"].comparisons.get("sim", {}).get("hierarchy.strength_diff.C")
    if c is None:
        return {}, {}, None
    h = c.heterogeneity
    return c.levels, c.p_adjusted, None if h is None else h.p_value


def _heterogeneity(t: Tables, seed: int) -> Measured:
    levels, _, p = _levels(t, seed)
    if "old" not in levels or "young" not in levels:
        return Measured(None)
    o, y = levels["old"], levels["young"]
    se = float(np.hypot((o.ci_high - o.ci_low) / (2 * Z95), (y.ci_high - y.ci_low) / (2 * Z95)))
    d = o.value - y.value
    return Measured(Estimate(value=d, ci_low=d - Z95 * se, ci_high=d + Z95 * se, n=o.n + y.n), p)


def _old_only(t: Tables, seed: int) -> Measured:
    levels, adjusted, _ = _levels(t, seed)
    e = levels.get("old")
    return Measured(e, adjusted.get("old"))


def _weighted(t: Tables, seed: int) -> Measured:
    from simlab.fidelity.raking import participant_weights

    w, _ = participant_weights(t, MARGINS)
    e = _gap(t, seed, weights=w)
    return Measured(e, e.p_value if e is not None else None)


def _hetero_data(seed: int, effect: bool, n: int = 30) -> Tables:
    return two_groups(seed, n, n, 0.0 if effect else 0.5, 0.5)


def _old_gap_data(seed: int, effect: bool, n: int = 30) -> Tables:
    return two_groups(seed, n, n, 0.0, 0.8 if effect else 0.0)


def _skewed(seed: int, effect: bool, n: int = 60, young_share: float = 0.7) -> Tables:
    n_young = int(round(n * young_share))
    return two_groups(seed, n_young, n - n_young, 0.0, 1.0 if effect else 0.0)


def _point(t: Tables) -> float:
    e = _gap(t, 0, 1)
    assert e is not None
    return e.value


# (case functions are module-level or partials of them: the benchmark pickles cases across processes)
@lru_cache(maxsize=None)
def _big(what: str) -> float:
    if what == "old_gap":  # the old subgroup's gap: the estimator on a large old-only sample
        return large_sample_truth(lambda s, e: two_groups(s, 0, 2000, 0.0, 0.8), _point, n=4)
    if what == "hetero":  # old − young: young have the base gap 0 under the effect
        old = large_sample_truth(lambda s, e: two_groups(s, 0, 2000, 0.0, 0.5), _point, n=4)
        return old
    share = {"weighted": 0.5, "unweighted": 0.7}[what]
    return large_sample_truth(lambda s, e: _skewed(s, True, 4000, share), _point, n=4)


def _truth(what: str, effect: bool) -> float:
    return _big(what) if effect else 0.0


CASES = [
    Case(
        analysis="subgroups",
        name="heterogeneity of arm C's gap across 2 subgroups (old − young)",
        simulate=_hetero_data,
        measure=_heterogeneity,
        truth=partial(_truth, "hetero"),
        note=("30 young + 30 old participants × 4 rankings of 4 arms per source (preferences SD 0.7 shared by a "
              "human and their copy; 5% gen_error events dropped); age in the human participants table only. Null: "
              "the simulator likes C 0.5 more in both groups (same gap); effect: only for the old. p: Cochran's Q; "
              "CI: old − young from the subgroup CIs."),
    ),
    Case(
        analysis="subgroups",
        name="subgroup-only gap: arm C sim − human in the old subgroup (Holm across 2)",
        simulate=_old_gap_data,
        measure=_old_only,
        truth=partial(_truth, "old_gap"),
        note=("As above; null: no gap in either group; effect: the simulator likes C 0.8 more for the old only "
              "(attenuated truth from large old-only samples). p: Holm-adjusted across the two subgroups."),
    ),
    Case(
        analysis="subgroups",
        name="raking weights: arm C sim − human, weighted to 50/50 age margins",
        simulate=_skewed,
        measure=_weighted,
        truth=partial(_truth, "weighted"),
        note=("60 participants × 4 rankings per source, 70% young (margins: 50/50); the simulator likes C 1.0 "
              "more for the old only (effect) or for nobody (null). Truth: the estimator on large 50/50 samples "
              "(0.39); the unweighted truth, on large 70/30 samples, is 0.22."),
    ),
]
