"""Fast calibration subset of the dynamics comparisons (the full table: benchmarks/calibration.py).

With the same mean turn slope in both sources (per-participant slopes correlated between a human
and their simulated copy, survivorship in conversation length, gen_error replies), the slope
difference must rarely be significant and its 95% CI must cover the truth. The same for the
conversation-length differences (mean turns, user-ended share) with per-participant propensities
to go on shared by a human and their copy."""

from __future__ import annotations

import numpy as np
import pytest

from simlab.fidelity.analyses.dynamics import _Slopes, _turn_ratings
from simlab.fidelity.calibration import dynamics as cal
from simlab.fidelity.calibration import run_case
from simlab.fidelity.calibration.dynamics import CASES

REPS = 30


@pytest.mark.slow  # ≈ 20 s of CPU: 30 planted nulls and 30 planted effects, each a full dynamics()
def test_slope_difference_is_calibrated_on_a_fast_subset() -> None:
    case = next(c for c in CASES if "all turns" in c.name)
    r = run_case(case, REPS)
    assert r.null_reported == r.effect_reported == REPS, r.problems
    # ≤ 4/30 false positives: P(≥ 5 | 5%) ≈ 2%, while the old model (15%) fails with ≈ 48%
    assert r.null_significant <= 4
    assert r.coverage >= 0.85
    assert r.power >= 0.6  # the planted difference (0.5 points per turn) is found


def test_length_truths_are_the_generators() -> None:
    # the quadrature truths equal a large Monte Carlo of the generator's conversations, per η level
    rng = np.random.default_rng(0)
    sd = float(np.hypot(cal.SD_PARTICIPANT, cal.SD_CONVERSATION))
    for mu in (cal.LENGTH_BASE + cal.DOMAIN_EFFECT[2], cal.LENGTH_BASE + cal.LENGTH_EFFECT + cal.DOMAIN_EFFECT[3]):
        n_turns, reason = cal._lengths(rng, mu + sd * rng.normal(size=400_000))
        mean, user_ended = cal._length_moments(mu)
        assert abs(n_turns.mean() - mean) < 0.012 and abs((reason == "user_ended").mean() - user_ended) < 0.004
        assert set(reason) == {"user_ended", "max_turns", "error"}
    # and the domain weighting: 100 datasets' raw mean differences average to the truth (SE ≈ 0.02)
    diffs = []
    for seed in range(100):
        c = cal.simulate_length(seed, True).conversations
        m = c.groupby("source")["n_turns"].mean()
        diffs.append(m[cal.SIM] - m["human"])
    assert abs(np.mean(diffs) - cal.truth_turns(True)) < 0.06
    assert cal.truth_turns(True) > 0.3 and cal.truth_early(True) < -0.05 and cal.truth_turns(False) == 0.0


@pytest.mark.slow  # ≈ 5 s each: 200 planted nulls and 200 planted effects of the conversation-level comparison
@pytest.mark.parametrize("name", ["mean turns per conversation", "user-ended (early stop) share"])
def test_length_differences_are_calibrated(name: str) -> None:
    case = next(c for c in CASES if c.name.startswith(name))
    r = run_case(case, 200)
    assert r.null_reported == r.effect_reported == 200, r.problems
    # ≤ 17/200 false positives: P(≥ 18 | 5%) ≈ 1%; a 10% rate fails with P ≈ 0.7, 15% with P > 0.99
    assert r.null_significant <= 17
    assert r.coverage >= 0.92  # measured 94.4% (turns) and 94.8% (early stops) over 1000 reps
    assert r.power >= 0.5  # the planted difference (+0.49 turns, −10.5 pp user-ended) is found


def test_a_thumbs_null_with_stopping_on_ratings_is_rarely_significant() -> None:
    """Thumbs up/down (0/100) on one bot per conversation, users who stop after a poor turn, most with
    one conversation, human and simulated participants drawn from one population: the all-turns slope
    difference is significant at 5% in about 5% of 300 such nulls. Plain least squares with the CR1
    sandwich said "significant" in ~11% of them (a few long conversations carried the slope)."""
    significant = 0
    for seed in range(300):
        t = cal._coarse(seed, False, "binary", paired=False, n=60)
        ratings, _ = _turn_ratings(t, t.conversations)
        assert ratings is not None
        e = _Slopes(ratings, ["human", cal.SIM]).contrast(cal.SIM, "human")
        significant += e.p_value < 0.05
    # ≤ 24/300 (8%): P(≥ 25 | 5%) ≈ 1.5%; an 11% rate passes with P ≈ 4%
    assert significant <= 24, significant


@pytest.mark.slow  # ≈ 1 min each: 100 planted nulls and 100 planted effects, and the large-sample truth
@pytest.mark.parametrize("scale", ["thumbs", "5-point"])
def test_the_all_turns_slope_is_calibrated_on_coarse_ratings_with_stopping_on_ratings(scale: str) -> None:
    case = next(c for c in CASES if c.name == f"turn slope, sim − human (all turns; {scale}, stopping on ratings)")
    r = run_case(case, 100)
    assert r.null_reported == r.effect_reported == 100, r.problems
    # ≤ 10/100 false positives: P(≥ 11 | 5%) ≈ 1%; the old fit's ~11% fails with P ≈ 0.5
    assert r.null_significant <= 10
    assert r.coverage >= 0.88
