"""Fast calibration subset of the position comparisons (the full table: benchmarks/calibration.py).

The headline null: the simulator follows position exactly as often as people but chooses its
arms with half the noise. The scale-free first-shown excess (sim − human, percentage points)
must rarely be significant and its CI must cover the truth; the same for the log-odds
interaction when both sources have the same noise, and for near-deterministic (separated)
position choices. With letters independent of the display order, the sim − human differences of
order and of label (the joint model) must hold when the other effect differs between sources."""

from __future__ import annotations

import numpy as np
import pytest

from simlab.fidelity.calibration import position as cal
from simlab.fidelity.calibration import run_case
from simlab.fidelity.calibration.position import CASES

JOINT = [c.name for c in CASES if "letters independent" in c.name]


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES if c.name not in JOINT])
def test_position_comparison_is_calibrated_on_a_fast_subset(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    r = run_case(case, 40)
    assert r.null_reported == r.effect_reported == 40, r.problems
    assert r.null_significant <= 5  # P(≥ 6 of 40 | 5%) ≈ 1.4%; the old LR test (10–21%) fails at 15% with P ≈ 0.6
    assert r.coverage >= 0.85
    assert r.power >= 0.3


@pytest.mark.slow  # ≈ 8 s each: 25 planted nulls and 25 planted effects, each three conditional logits per source
@pytest.mark.parametrize("name", JOINT)
def test_order_and_label_differences_are_calibrated_on_a_fast_subset(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    r = run_case(case, 25)
    assert r.null_reported == r.effect_reported == 25, r.problems
    # ≤ 3 of 25: P(≥ 4 | 5%) ≈ 3.4%; a 15% rate fails with P ≈ 0.53
    assert r.null_significant <= 3
    # ≤ 7 of 50 outside the CI: P(≥ 8 | 5%) ≈ 0.3%; a 15% miss rate fails with P ≈ 0.48
    assert r.coverage >= 0.85
    assert r.power >= 0.25  # 45–54% over 200 reps


@pytest.mark.slow  # ≈ 5 s each: 16 large null datasets and 4 large effect datasets
@pytest.mark.parametrize(("simulate", "which", "stored"), [(cal._label, "first_label", cal.LABEL_TRUTH),
                                                           (cal._order, "first_shown_joint", cal.ORDER_TRUTH)])
def test_order_and_label_truths_on_large_samples(simulate, which: str, stored: float) -> None:
    # under each null the other effect differs between sources; log-odds are not collapsible, so
    # check that the estimand stays ≈ 0 (SE ≈ 0.01), and that the stored effect truths hold
    null = [cal._joint_value(which, simulate(20_000_019 + i, False, 2000)) for i in range(16)]
    assert abs(np.mean(null)) < 0.04
    effect = [cal._joint_value(which, simulate(30_000_019 + i, True, 2000)) for i in range(4)]
    assert abs(np.mean(effect) - stored) < 0.05
