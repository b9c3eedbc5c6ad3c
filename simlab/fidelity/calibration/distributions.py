"""Calibration cases of the distribution comparison: ``sd_ratio`` and ``w1_excess`` of a simulated
source's final ratings against the humans', pooled over arms.

The generator (``simulate``): ``N_PARTICIPANTS`` people, each in ``N_CONVERSATIONS`` conversations rating 4
arms (``rating_preference``), each with a simulated copy. A human's rating = 50 + arm effect
(−6, −2, 2, 6) + participant level (SD 8) + conversation level (SD 4) + noise (SD 10); the simulated copy
shares its participant's level with correlation 0.6 and has its own conversation levels and noise, same
marginal distribution. Under the effect every deviation of the copy's rating from 50 is multiplied by
``COLLAPSE`` (the same mean, a 0.6 × narrower spread: a spread collapse), so the population SD ratio is
exactly ``COLLAPSE``. The distance's truth is the estimator's value on one dataset of ``BIG``
participants (its relabelling chance is ~0 there; the population W1 is 4.52 by quadrature); under the null
it is 0.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import pandas as pd

from simlab.fidelity.calibration import Case, Measured
from simlab.tables import Tables

__all__ = ["CASES", "COLLAPSE", "MILD", "SIM", "simulate"]

SIM = "sim_dynamic"
ARMS = ("GEN", "PROMPT", "DPFT", "PPFT")
ARM_EFFECT = np.array([-6.0, -2.0, 2.0, 6.0])
COLLAPSE = 0.6
"""SD(simulated) / SD(human) under the planted effect."""
N_PARTICIPANTS = 50
N_CONVERSATIONS = 2
N_BOOT = 200
N_PERM = 199
"""Relabellings per test (the case measures its p-value; fewer than the analysis's default keep the run short)."""
BIG = 20_000
MILD = 0.85
"""The SD ratio of the milder collapse (a power figure where it is not 100%)."""


def simulate(seed: int, effect: bool, n: int = N_PARTICIPANTS, collapse: float = COLLAPSE) -> Tables:
    """Human + simulated final ratings with the truth planted (see the module docstring); ``collapse``:
    the SD ratio under the effect."""
    rng = np.random.default_rng(seed)
    rho = 0.6
    level = rng.normal(0, 8, (2, n))
    level[1] = rho * level[0] + np.sqrt(1 - rho**2) * level[1]
    rows = []
    k = len(ARMS)
    for src in (0, 1):
        conv = np.repeat(np.arange(n), N_CONVERSATIONS)  # conversations of each participant
        dom = np.tile(np.arange(N_CONVERSATIONS), n)
        c_level = rng.normal(0, 4, conv.size)
        dev = (ARM_EFFECT[None, :] + level[src, conv][:, None] + c_level[:, None]
               + rng.normal(0, 10, (conv.size, k)))
        if src and effect:
            dev = collapse * dev
        name = ("human", SIM)[src]
        cid = np.array([f"{name}-p{i:05d}-{d}" for i, d in zip(conv, dom)])
        rows.append(pd.DataFrame({
            "conversation_id": np.repeat(cid, k), "participant_id": np.repeat([f"p{i:05d}" for i in conv], k),
            "source": name, "arm": np.tile(ARMS, conv.size), "rating_preference": (50 + dev).ravel()}))
    return Tables(judgements=pd.concat(rows, ignore_index=True))


def _measure(field: str, t: Tables, seed: int, n_boot: int = N_BOOT) -> Measured:
    from simlab.fidelity.analyses.distributions import distributions

    r = distributions(t, n_boot=n_boot, seed=seed, n_perm=N_PERM)
    c = r.instruments["rating_preference"].pooled.get(SIM)
    e = getattr(c, field) if c is not None else None
    return Measured(e, e.p_value if e is not None else None)


@lru_cache(maxsize=None)
def _big_w1() -> float:
    m = _measure("w1_excess", simulate(10_000_019, True, BIG), 0, 1)
    assert m.estimate is not None
    return float(m.estimate.value)


def _mild(seed: int, effect: bool) -> Tables:
    return simulate(seed, effect, collapse=MILD)


def _truth(field: str, effect: bool, collapse: float = COLLAPSE) -> float:
    if field == "sd_ratio":
        return collapse if effect else 1.0
    return _big_w1() if effect else 0.0


NOTE = (f"{N_PARTICIPANTS} participants, each with a simulated copy, × {N_CONVERSATIONS} conversations × 4 "
        "arms of rating_preference: arm effects ±2/±6, participant level (SD 8, correlated 0.6 between a human and "
        "their copy), conversation level (SD 4), noise (SD 10); same marginal in both sources. Effect: the "
        f"copy's deviations from the mean × {COLLAPSE} (spread collapse, same mean). {N_BOOT} bootstrap draws, "
        f"{N_PERM} relabellings.")

CASES = [
    Case(
        analysis="distributions",
        name="SD ratio sim / human, final ratings (spread collapse 0.6)",
        simulate=simulate,
        measure=partial(_measure, "sd_ratio"),
        truth=partial(_truth, "sd_ratio"),
        null_value=1.0,
        note=NOTE + " Truth: the population ratio (1, 0.6).",
    ),
    Case(
        analysis="distributions",
        name=f"SD ratio sim / human, final ratings (mild spread collapse {MILD})",
        simulate=_mild,
        measure=partial(_measure, "sd_ratio"),
        truth=partial(_truth, "sd_ratio", collapse=MILD),
        null_value=1.0,
        note=NOTE.replace(f"× {COLLAPSE}", f"× {MILD}") + f" Truth: the population ratio (1, {MILD}).",
    ),
    Case(
        analysis="distributions",
        name="W1 excess (bias-corrected Wasserstein-1), final ratings",
        simulate=simulate,
        measure=partial(_measure, "w1_excess"),
        truth=partial(_truth, "w1_excess"),
        note=NOTE + f" Truth: 0 under the null; under the effect the estimator on one dataset of {BIG:,} "
                    "participants.",
    ),
]
