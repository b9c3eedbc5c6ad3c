"""Stats helpers: ICC(2,1) against Shrout & Fleiss (1979), JSD, bootstrap, the clogit solver vs statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.discrete.conditional_models import ConditionalLogit

from simlab.fidelity.analyses._prep import (
    choice_sets,
    dummies,
    judgements_frame,
    participants_of,
)
from simlab.fidelity.stats import (
    ChoiceSets,
    FitError,
    bootstrap_counts,
    fit_clogit,
    icc_2_1,
    jsd,
    percentile_ci,
    weighted_corr,
)
from simlab.fidelity.synthetic import make_synthetic

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])


def test_icc_2_1_matches_shrout_fleiss_table() -> None:
    assert round(icc_2_1(SHROUT_FLEISS), 2) == 0.29
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)


def test_icc_2_1_perfect_agreement_is_one_and_rejects_missing() -> None:
    y = np.array([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    assert icc_2_1(y) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        icc_2_1(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_jsd_of_known_distributions() -> None:
    assert jsd([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jsd([0.3, 0.7], [0.3, 0.7]) == pytest.approx(0.0)
    # hand computation: M = (0.75, 0.25); JSD = ½ KL(P‖M) + ½ KL(Q‖M), base 2
    p, q = np.array([1.0, 0.0]), np.array([0.5, 0.5])
    expected = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert jsd(p, q) == pytest.approx(expected)
    assert jsd([2, 2], [1, 3]) == pytest.approx(jsd([0.5, 0.5], [0.25, 0.75]))  # counts are normalised
    with pytest.raises(ValueError):
        jsd([1, 0], [1, 0, 0])


def test_bootstrap_counts_are_seeded_resamples() -> None:
    a, b = bootstrap_counts(50, 10, seed=3), bootstrap_counts(50, 10, seed=3)
    assert np.array_equal(a, b)
    assert np.all(a.sum(axis=1) == 50)
    assert not np.array_equal(a, bootstrap_counts(50, 10, seed=4))
    lo, hi = percentile_ci(np.r_[np.arange(101.0), np.nan])
    assert (lo, hi) == pytest.approx((2.5, 97.5))


def test_weighted_corr_equals_replicated_rows() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    w = rng.integers(0, 3, size=20).astype(float)
    rep = np.repeat(np.arange(20), w.astype(int))
    assert weighted_corr(x, y, w) == pytest.approx(np.corrcoef(x[rep], y[rep])[0, 1])


def _hierarchy_sets(n: int, seed: int) -> ChoiceSets:
    t = make_synthetic(n, strengths={"GEN": 0, "PROMPT": 0.3, "DPFT": 0.6, "PPFT": 1.0}, position_bias={"human": 0.4}, seed=seed, sources=("human",))
    j = judgements_frame(t)
    d = pd.concat([j, dummies(j["arm"], ["GEN", "PPFT", "PROMPT"], "arm"), dummies(j["position"], [1, 2, 3], "position")], axis=1)
    names = ["arm[GEN]", "arm[PPFT]", "arm[PROMPT]", "position[1]", "position[2]", "position[3]"]
    return choice_sets(d, names, "ranking", participants_of(t, 1, 0))


def test_clogit_solver_equals_statsmodels() -> None:
    cs = _hierarchy_sets(150, seed=5)  # 600 rankings, 1800 choice sets, 5400 rows
    ours = fit_clogit(cs)
    sm = ConditionalLogit(cs.chosen.astype(float), cs.X, groups=cs.stratum).fit(method="newton", maxiter=100, tol=1e-12, disp=0)
    np.testing.assert_allclose(ours.params, sm.params, atol=1e-6)
    np.testing.assert_allclose(ours.bse, sm.bse, atol=1e-6)
    assert ours.loglik == pytest.approx(sm.llf, abs=1e-6)


def test_clogit_weights_equal_replicated_strata() -> None:
    cs = _hierarchy_sets(40, seed=6)
    w = np.random.default_rng(1).integers(0, 3, size=cs.n_strata).astype(float)
    weighted = fit_clogit(cs, w)
    keep = np.repeat(np.arange(cs.n_strata), w.astype(int))
    rows = np.concatenate([np.flatnonzero(cs.stratum == s) for s in keep])
    stratum = np.repeat(np.arange(keep.size), np.bincount(cs.stratum)[keep])
    rep = ChoiceSets(cs.X[rows], cs.chosen[rows], stratum, cs.participant[keep], cs.names)
    np.testing.assert_allclose(weighted.params, fit_clogit(rep).params, atol=1e-8)


def test_clogit_reports_a_constant_feature_as_fit_error() -> None:
    cs = _hierarchy_sets(20, seed=7)
    bad = ChoiceSets(np.c_[cs.X, np.ones(len(cs.X))], cs.chosen, cs.stratum, cs.participant, (*cs.names, "const"))
    with pytest.raises(FitError):
        fit_clogit(bad)


def test_two_step_bootstrap_matches_full_refits() -> None:
    from simlab.fidelity.stats import clogit_draws

    cs = _hierarchy_sets(100, seed=8)
    rng = np.random.default_rng(2)
    cont = ChoiceSets(np.c_[cs.X, rng.normal(size=len(cs.X))], cs.chosen, cs.stratum, cs.participant, (*cs.names, "z"))
    full = fit_clogit(cont)
    counts = bootstrap_counts(100, 20, seed=1)
    fast = clogit_draws(cont, full.params, counts)
    exact = np.vstack([fit_clogit(cont, counts[b][cont.participant]).params for b in range(20)])
    np.testing.assert_allclose(fast, exact, atol=1e-4)


def test_reason_for_puts_words_before_the_exception() -> None:
    import numpy as np

    from simlab.fidelity.stats import FitError, reason_for

    try:
        np.linalg.inv(np.zeros((2, 2)))
    except np.linalg.LinAlgError as exc:
        assert reason_for(exc).startswith("the model could not be fitted") and "(LinAlgError: Singular matrix)" in reason_for(exc)
    assert reason_for(FitError("no choice sets or no features")) == "no choice sets or no features"
    assert reason_for(KeyError("arm")).startswith("the analysis stopped on an unexpected error; please report it")
