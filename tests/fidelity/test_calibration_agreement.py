"""Calibration of the agreement comparisons: the planted truths are right, and a fast subset of
``benchmarks/calibration.py --analysis agreement`` (the full table: 200 reps per case). The
variance split (a descriptive, ~3 s per dataset for its 100 mixed-model refits) gets a few
datasets only."""

from __future__ import annotations

import numpy as np
import pytest

from simlab.fidelity.analyses._prep import judgements_frame, participants_of
from simlab.fidelity.analyses.agreement.common import _with_repeat
from simlab.fidelity.analyses.agreement.variance_split import _variance_split
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


def test_placebo_truth_by_monte_carlo() -> None:
    # the generator's tops have the marginals π_d, and own − mismatched agreement is q·(1 − Σπ_d²)
    rng = np.random.default_rng(2)
    n = 200_000
    gaps = []
    for d in range(len(cal.PLACEBO_PI)):
        dom = np.full(n, d)
        top_h = cal._copula_top(rng, rng.normal(size=n), dom)
        top_s = cal._copula_top(rng, rng.normal(size=n), dom)
        assert np.allclose(np.bincount(top_h, minlength=4) / n, cal.PLACEBO_PI[d], atol=0.005)
        top_s = np.where(rng.random(n) < cal.EFFECT_PLACEBO, top_h, top_s)
        other = np.roll(top_h, 1)  # another participant's human
        gaps.append(np.mean(top_s == top_h) - np.mean(top_s == other))
    share = np.array([4, 3, 2, 1]) / 10
    assert abs(share @ np.array(gaps) - cal.truth_placebo(True)) < 0.005 and cal.truth_placebo(False) == 0.0
    # a participant's human tops are correlated across domains (the taste the clustering must carry)
    taste = rng.normal(size=n)
    a, b = cal._copula_top(rng, taste, np.zeros(n, int)), cal._copula_top(rng, taste, np.zeros(n, int))
    assert np.mean(a == b) > np.sum(cal.PLACEBO_PI[0] ** 2) + 0.05


def test_variance_split_truth_by_point_estimates() -> None:
    # the REML point estimates of the repeat share average to the planted share (no bootstrap: fast)
    values = []
    for seed in range(30):
        t = cal.simulate_split(seed, True)
        j = _with_repeat(t, judgements_frame(t))
        vs = _variance_split(j[j["source"] == cal.SIM], participants_of(t, 1, seed))
        values.append(vs.share["repeat"].value)
    assert abs(np.mean(values) - cal.truth_split(True)) < 0.015  # SE ≈ 0.006
    assert cal.truth_split(False) == 0.0


SLOW = [c for c in all_cases(("agreement",)) if "variance split" not in c.name]


@pytest.mark.slow  # ≈ 60 s: 4 cases × 40 planted nulls and 40 planted effects
@pytest.mark.parametrize("case", SLOW, ids=lambda c: c.name.split(" (")[0])
def test_agreement_calibration_subset(case) -> None:
    r = run_case(case, 40)
    assert r.problems == [] and r.null_reported == r.effect_reported == 40
    # nominal 5% of 40 = 2; P(≥ 6 of 40 | 5%) ≈ 1%; a 15% rate (the old retest) gives ≥ 6 about half the time.
    # (top-1 gap: 5 of these first 40, 12 of 200 in the full table)
    assert r.null_significant <= 5
    assert r.coverage >= 0.85
    assert r.power >= 0.7


@pytest.mark.slow  # ≈ 7 s: 3 planted nulls and 3 planted effects, each 100 REML refits
def test_variance_split_calibration_subset() -> None:
    case = next(c for c in all_cases(("agreement",)) if "variance split" in c.name)
    assert case.boundary_null
    r = run_case(case, 3)
    assert r.problems == [] and r.null_reported == r.effect_reported == 3
    # no repeat variance: no CI claims one (the share's lower end stays at the optimiser's 0) ...
    assert r.null_significant == 0
    # ... and a planted one (share 0.13) is found and covered
    assert r.effect_significant == 3 and r.effect_covered == 3 and r.coverage == 1.0


@pytest.mark.slow  # ≈ 25 s: 200 planted nulls of the persona placebo
def test_placebo_permutation_carries_tastes_across_domains(monkeypatch) -> None:
    # humans and personas with strong tastes that hold across domains (copula ρ 0.9): a permutation
    # that shuffled each domain on its own rejected 11% of 600 such nulls at 5%; one shuffle of the
    # participants for all their domains keeps the false positives at the nominal rate (4.7%)
    monkeypatch.setattr(cal, "PLACEBO_RHO", 0.9)
    p = np.array([cal.measure_placebo(cal.simulate_placebo(s, False), s).p_value for s in
                  (1_000_003 * rep + 11 for rep in range(200))])
    assert np.isfinite(p).all()
    assert np.sum(p < 0.05) <= 15  # P(≥ 16 of 200 | 5%) ≈ 4%; at 11% the test fails with P ≈ 0.93
