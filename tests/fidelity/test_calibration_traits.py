"""Fast calibration subset of the trait comparison (the full table: benchmarks/calibration.py).

With the same trait effect in both sources (per-participant slopes shared by a human and their
copy; and a near-deterministic trait that separates), the source × trait interaction must
rarely be significant and its CI must cover the truth."""

from __future__ import annotations

import pytest

from simlab.fidelity.calibration import run_case
from simlab.fidelity.calibration.traits import CASES


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_trait_interaction_is_calibrated_on_a_fast_subset(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    r = run_case(case, 30)
    assert r.null_reported == r.effect_reported == 30, r.problems
    assert r.null_significant <= 4  # P(≥ 5 of 30 | 5%) ≈ 2%
    assert r.coverage >= 0.85
    if "separation" not in name:  # 15 participants × 2 events: power ≈ 30% at best (full table)
        assert r.power >= 0.5
