"""Fast calibration subset of the distribution comparison (the full table: benchmarks/calibration.py).

With the same distribution in both sources (a human and their copy correlated), sd_ratio and the W1
excess must rarely be significant, and their CIs must cover the truth; a planted spread collapse (0.6)
must be found, a mild one (0.85) often."""

from __future__ import annotations

import pytest

from simlab.fidelity.calibration import run_case
from simlab.fidelity.calibration.distributions import CASES


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_distributions_are_calibrated_on_a_fast_subset(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    r = run_case(case, 30)
    assert r.null_reported == r.effect_reported == 30, r.problems
    assert r.null_significant <= 4  # P(≥ 5 of 30 | 5%) ≈ 2%
    assert r.coverage >= 0.85
    # the mild collapse (0.85) has 71.5% power in the 200-rep table: P(< 12 of 30) is tiny there
    assert r.power >= (0.4 if "mild" in name else 0.9)
