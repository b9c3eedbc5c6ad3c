"""Shared planted-effect datasets for the analysis tests (cached: generation is deterministic)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from simlab.fidelity.synthetic import make_synthetic
from simlab.tables import Tables

STRENGTHS = {"GEN": 0.0, "PROMPT": 0.3, "DPFT": 0.7, "PPFT": 1.1}


@lru_cache(maxsize=None)
def planted() -> Tables:
    """Hierarchy in both sources; first-position bias, turn slope and topic shift in sim_dynamic only."""
    return make_synthetic(
        200,
        strengths=STRENGTHS,
        position_bias={"sim_dynamic": 0.8},
        turn_slope={"sim_dynamic": 2.0},
        topic_shift={"sim_dynamic": 0.5},
        seed=11,
    )


@lru_cache(maxsize=None)
def individual() -> Tables:
    """Participant-specific preferences shared across sources; a trait effect in human only."""
    return make_synthetic(150, strengths=STRENGTHS, preference_sd=1.0, trait_effect={"human": 0.6}, seed=13)


@lru_cache(maxsize=None)
def null() -> Tables:
    """Nothing planted: equal arms, no biases, same topic distribution, independent participants."""
    return make_synthetic(150, seed=12)


def covers(est, value: float) -> bool:
    return bool(est.ci_low <= value <= est.ci_high) and np.isfinite(est.ci_low)
