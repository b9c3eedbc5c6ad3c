"""Calibration of the agreement comparisons: the planted truths are right, and a fast subset of
``benchmarks/calibration.py --analysis agreement`` (the full table: 200 reps per case)."""

from __future__ import annotations

import numpy as np
import pytest

from simlab.fidelity.calibration import agreement as cal
from simlab.fidelity.calibration import all_cases, run_case


def test_null_truths_are_zero_by_monte_carlo() -> None:
    # the cases claim a truth of 0 under the null by symmetry; check it on a large sample
    rng = np.random.default_rng(1)
    c = cal._top1_core(rng, cal.TRUTH_N, False)
    best = (c["rank"] == 1).astype(float)
    gap = cal._agree(best, cal._top(c["bid_s"])) - cal._agree(best, cal._top(c["bid_h"]))
    assert abs(gap.mean()) < 0.01 and (c["bid_h"].max(axis=1) == 0).mean() > 0.05  # ties: all-$0 events
    c = cal._corr_core(rng, cal.TRUTH_N, False)
    assert abs(np.corrcoef(cal._double_centred(c["h"]).ravel(), cal._double_centred(c["s"]).ravel())[0, 1]) < 0.01
    assert np.corrcoef(c["h"].ravel(), c["s"].ravel())[0, 1] > 0.3  # the shared rating level a pooled r would count
    assert cal.truth_top1(True) < -0.05 and cal.truth_corr(True) > 0.2 and cal.truth_retest(True) > 0.2


@pytest.mark.slow  # ≈ 60 s: 3 cases × 40 planted nulls and 40 planted effects
@pytest.mark.parametrize("case", all_cases(("agreement",)), ids=lambda c: c.name.split(" (")[0])
def test_agreement_calibration_subset(case) -> None:
    r = run_case(case, 40)
    assert r.problems == [] and r.null_reported == r.effect_reported == 40
    # nominal 5% of 40 = 2; P(≥ 6 of 40 | 5%) ≈ 1%; a 15% rate (the old retest) gives ≥ 6 about half the time.
    # (top-1 gap: 5 of these first 40, 12 of 200 in the full table)
    assert r.null_significant <= 5
    assert r.coverage >= 0.85
    assert r.power >= 0.7
