"""Fast calibration subset of the subgroup breakdown and of raking weights (the full table:
benchmarks/calibration.py --analysis subgroups).

With the same gap in both subgroups the heterogeneity test must rarely reject; with no gap the
Holm-adjusted subgroup estimate must rarely be significant; under weights the raked estimate's CI must
cover the weighted truth (on 50/50 samples), not the unweighted one."""

from __future__ import annotations

import pytest

from simlab.fidelity.calibration import run_case
from simlab.fidelity.calibration.subgroups import CASES


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_subgroups_and_weights_are_calibrated_on_a_fast_subset(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    r = run_case(case, 30)
    assert r.null_reported == r.effect_reported == 30, r.problems
    assert r.null_significant <= 4  # P(≥ 5 of 30 | 5%) ≈ 2%
    assert r.coverage >= 0.85
