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
    jsd,
    percentile_ci,
    weighted_corr,
)
from simlab.fidelity.synthetic import make_synthetic

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.


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


def test_clogit_draws_with_no_draws_is_empty() -> None:
    """n_boot = 0 (the calibration's cluster-robust cases ask for no bootstrap) gives no draws, on the
    compressed path too, rather than failing to stack zero blocks."""
    from simlab.fidelity.stats import CountMatrix, clogit_draws
    from simlab.fidelity.stats.clogit import compress

    cs = _hierarchy_sets(100, seed=8)
    small, _ = compress(cs)
    assert small.n_strata < 0.5 * cs.n_strata  # the compressed path is the one taken
    full = fit_clogit(cs)
    for counts in (bootstrap_counts(100, 0, seed=1), CountMatrix(bootstrap_counts(100, 0, seed=1, dtype=np.uint8))):
        assert clogit_draws(cs, full.params, counts).shape == (0, cs.X.shape[1])


def test_reason_for_puts_words_before_the_exception() -> None:
    import numpy as np

    from simlab.fidelity.stats import FitError, reason_for

    try:
        np.linalg.inv(np.zeros((2, 2)))
    except np.linalg.LinAlgError as exc:
        assert reason_for(exc).startswith("the model could not be fitted") and "(LinAlgError: Singular matrix)" in reason_for(exc)
    assert reason_for(FitError("no choice sets or no features")) == "no choice sets or no features"
    assert reason_for(KeyError("arm")).startswith("the analysis stopped on an unexpected error; please report it")


# ---------------------------------------------------------------------------------------------
# cluster-robust inference and separation


def _clustered_sets(n: int, seed: int, preference_sd: float = 1.5) -> ChoiceSets:
    """Rankings with strong per-participant arm preferences: strata of one participant correlate."""
    t = make_synthetic(n, strengths={"GEN": 0, "PROMPT": 0.3, "DPFT": 0.6, "PPFT": 1.0}, preference_sd=preference_sd,
                       seed=seed, sources=("human",))
    j = judgements_frame(t)
    d = pd.concat([j, dummies(j["arm"], ["GEN", "PPFT", "PROMPT"], "arm")], axis=1)
    return choice_sets(d, ["arm[GEN]", "arm[PPFT]", "arm[PROMPT]"], "ranking", participants_of(t, 1, 0))


def test_cluster_sandwich_equals_statsmodels_scores_and_information() -> None:
    cs = _clustered_sets(40, seed=3)
    ours = fit_clogit(cs)
    sm = ConditionalLogit(cs.chosen.astype(float), cs.X, groups=cs.stratum)
    # independent pieces: statsmodels' per-stratum scores and its Hessian at our estimate
    scores = np.vstack([sm.score_grp(g, ours.params) for g in range(cs.n_strata)])
    per_participant = pd.DataFrame(scores).groupby(cs.participant).sum().to_numpy()
    g = per_participant.shape[0]
    bread = np.linalg.inv(-sm.hessian(ours.params))
    expected = bread @ (per_participant.T @ per_participant) @ bread * g / (g - 1)
    assert ours.n_clusters == g == 40
    np.testing.assert_allclose(ours.cov_robust, expected, rtol=1e-4)  # statsmodels differentiates numerically


def test_cluster_robust_se_matches_participant_bootstrap_and_exceeds_naive() -> None:
    from simlab.fidelity.stats import clogit_draws

    cs = _clustered_sets(80, seed=4, preference_sd=2.0)
    fit = fit_clogit(cs)
    draws = clogit_draws(cs, fit.params, bootstrap_counts(80, 300, seed=2))
    boot_se = draws.std(axis=0, ddof=1)
    assert fit.robust_bse is not None
    # the two clustered answers agree; the model-based SE (independent strata) is too small
    np.testing.assert_allclose(fit.robust_bse, boot_se, rtol=0.25)
    assert np.all(fit.robust_bse > 1.15 * fit.bse)


def _always_first(n: int, seed: int) -> ChoiceSets:
    """Every ranked_best is the first-shown arm: the MLE of first_shown is +∞."""
    t = make_synthetic(n, seed=seed, sources=("human",), strengths={"GEN": 0, "PROMPT": 0.3, "DPFT": 0.6, "PPFT": 1.0})
    j = judgements_frame(t)
    j["first"] = (j["position"] == 1).astype(float)
    j["best"] = j["position"] == 1
    d = pd.concat([j, dummies(j["arm"], ["GEN", "PPFT", "PROMPT"], "arm")], axis=1)
    return choice_sets(d, ["first", "arm[GEN]", "arm[PPFT]", "arm[PROMPT]"], "best", participants_of(t, 1, 0))


def test_separation_gives_a_penalised_finite_significant_fit() -> None:
    from simlab.fidelity.stats import SeparationError, clogit_draws

    cs = _always_first(30, seed=1)
    with pytest.raises(SeparationError):
        fit_clogit(cs, penalty="none")
    fit = fit_clogit(cs)
    assert fit.penalised
    assert 3 < fit.params[0] < 15 and fit.pvalues[0] < 1e-6  # large, finite, significant
    assert np.all(np.abs(fit.params[1:]) < 1)  # the arms (no separation) stay near their truth
    draws = clogit_draws(cs, fit.params, bootstrap_counts(30, 20, seed=1), penalised=True)
    assert np.all(np.isfinite(draws)) and np.all(draws[:, 0] > 3)


def test_penalty_barely_moves_a_well_determined_fit() -> None:
    cs = _hierarchy_sets(100, seed=9)
    mle, pen = fit_clogit(cs), fit_clogit(cs, penalty="always")
    assert not mle.penalised and pen.penalised
    np.testing.assert_allclose(pen.params, mle.params, atol=0.02)


def test_wald_test_is_cluster_robust_and_refuses_a_singular_covariance() -> None:
    from simlab.fidelity.stats import wald_test

    cs = _clustered_sets(40, seed=5)
    fit = fit_clogit(cs)
    assert wald_test(fit, [1]) == pytest.approx(fit.pvalues[1], rel=1e-6)  # F(1, G−1) = t²(G−1)
    assert wald_test(fit, [0, 1, 2]) > 2 * wald_test(fit, [0, 1, 2], robust=False)  # clustering widens
    two = ChoiceSets(cs.X, cs.chosen, cs.stratum, np.minimum(cs.participant, 1), cs.names)
    fit2 = fit_clogit(two)
    assert fit2.n_clusters == 2
    with pytest.raises(FitError):
        wald_test(fit2, [0, 1, 2])  # three restrictions from two participants


def test_stacked_fits_equal_one_pooled_fit_with_source_interactions() -> None:
    from simlab.fidelity.stats import linear, stack

    a, b = _clustered_sets(30, seed=6), _clustered_sets(30, seed=7)  # same participant ids p0000…
    fa, fb = fit_clogit(a), fit_clogit(b)
    both = stack([(a, fa), (b, fb)])
    # the pooled model: block-diagonal features (every coefficient × source), strata concatenated
    p = a.X.shape[1]
    X = np.block([[a.X, np.zeros_like(a.X)], [np.zeros_like(b.X), b.X]])
    pooled = ChoiceSets(X, np.r_[a.chosen, b.chosen], np.r_[a.stratum, b.stratum + a.n_strata],
                        np.r_[a.participant, b.participant], (*a.names, *(f"{n}:b" for n in b.names)))
    direct = fit_clogit(pooled)
    np.testing.assert_allclose(both.params, direct.params, atol=1e-8)
    np.testing.assert_allclose(both.cov_robust, direct.cov_robust, rtol=1e-6, atol=1e-12)
    assert both.n_clusters == direct.n_clusters == 30
    # shared participants correlate the sources: the difference's variance is not the sum
    diff = linear(both, np.r_[-np.eye(p)[0], np.eye(p)[0]])
    assert diff.cov_robust is not None and both.cov_robust is not None
    assert not np.isclose(diff.cov_robust[0, 0], both.cov_robust[0, 0] + both.cov_robust[p, p], rtol=0.02)


# ---------------------------------------------------------------------------------------------
# the fast paths for many-arm pairwise data give the numbers of the general (dense) path


def _dense(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code path before the speed-ups: dense design, np.unique pattern compression."""
    from simlab.fidelity.stats import choice_sets as stats

    def unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        uniq, inv = np.unique(a, axis=0, return_inverse=True)
        return uniq, np.asarray(inv).ravel()

    monkeypatch.setattr(stats, "SPARSE_MIN_CELLS", 10**15)
    monkeypatch.setattr(stats, "_unique_rows", unique_rows)


def _arena_cs(n_events: int = 3000, n_arms: int = 20, seed: int = 4) -> tuple[ChoiceSets, np.ndarray]:
    from simlab.fidelity.synthetic import make_arena

    tables, _ = make_arena(n_events, n_arms, position_bias=0.3, seed=seed)
    j = judgements_frame(tables)
    arms = sorted(j["arm"].unique())
    d = pd.concat([j, dummies(j["arm"], arms[1:], "arm")], axis=1)
    d["first"] = (d["position"] == 1).astype(float)
    parts = participants_of(tables, 30, 0)
    return choice_sets(d, ["first", *[f"arm[{a}]" for a in arms[1:]]], "ranking", parts), parts.counts


def test_sparse_fit_equals_dense_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from simlab.fidelity.stats import clogit_draws

    cs, counts = _arena_cs()
    assert cs.sparse_design is not None  # 20 arms, 3000 events: the sparse path
    fast = fit_clogit(cs)
    fast_draws = clogit_draws(cs, fast.params, counts)
    _dense(monkeypatch)
    cs2, _ = _arena_cs()
    assert cs2.sparse_design is None
    slow = fit_clogit(cs2)
    slow_draws = clogit_draws(cs2, slow.params, counts)
    np.testing.assert_allclose(fast.params, slow.params, atol=1e-9)
    np.testing.assert_allclose(fast.cov, slow.cov, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fast.cov_robust, slow.cov_robust, rtol=1e-8, atol=1e-12)
    assert fast.loglik == pytest.approx(slow.loglik, rel=1e-12)
    # the same participant draws give the same bootstrap replicates
    np.testing.assert_allclose(fast_draws, slow_draws, atol=1e-7)


def test_unique_rows_groups_equal_rows_only() -> None:
    from simlab.fidelity.stats.choice_sets import _unique_rows

    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, size=(5000, 6)).astype(float)
    uniq, inv = _unique_rows(a)
    np.testing.assert_array_equal(uniq[inv], a)  # every row is its pattern
    assert len(uniq) == len(np.unique(a, axis=0))  # and no pattern is split


def test_hierarchy_and_position_fast_equal_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from simlab.fidelity.analyses import hierarchy, position
    from simlab.fidelity.synthetic import make_arena

    tables, truth = make_arena(3000, 20, position_bias=0.3, seed=5)
    parts = participants_of(tables, 30, 0)
    fast_h, fast_p = hierarchy(tables, participants=parts), position(tables, participants=parts)
    _dense(monkeypatch)
    slow_h, slow_p = hierarchy(tables, participants=parts), position(tables, participants=parts)
    for a, est in fast_h.per_source["human"].strengths.items():
        ref = slow_h.per_source["human"].strengths[a]
        assert est.value == pytest.approx(ref.value, abs=1e-6)
        assert (est.ci_low, est.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-6)
        assert est.p_value == pytest.approx(ref.p_value, abs=1e-6)
    for how in ("ranked_best", "ranking"):
        f, s = fast_p.outcomes[how].per_source["human"], slow_p.outcomes[how].per_source["human"]
        for x, y in ((f.first_shown, s.first_shown), (f.first_shown_excess, s.first_shown_excess),
                     (f.positions["1"], s.positions["1"])):
            assert (x.value, x.ci_low, x.ci_high, x.p_value) == pytest.approx((y.value, y.ci_low, y.ci_high, y.p_value), abs=1e-6)
    # and the planted Bradley–Terry strengths are recovered
    h = fast_h.per_source["human"]
    inside = [h.strengths[a].ci_low <= truth[a] <= h.strengths[a].ci_high for a in truth if a != "arm00"]
    assert sum(inside) >= len(inside) - 3


def test_compact_counts_read_as_the_float_matrix() -> None:
    """The uint8 draw counts (× raking weights) read, multiply and refit exactly as the float64
    matrix they replace: the same values, the same bootstrap and clogit replicates."""
    from simlab.fidelity.stats import CountMatrix, Participants, bootstrap, bootstrap_counts, clogit_draws

    ids = [f"p{i}" for i in range(40)]
    w = {p: 0.5 + (i % 7) / 3 for i, p in enumerate(ids)}
    plain, weighted = Participants.from_ids(ids, 25, 3), Participants.from_ids(ids, 25, 3, w)
    full = bootstrap_counts(40, 25, 3)  # the float64 matrix of the same draws
    assert plain.counts.draws.dtype == np.uint8 and plain.counts.draws.nbytes * 8 == full.nbytes
    wv = np.array([w[p] for p in sorted(ids)])
    part, y = np.arange(120) % 40, np.cos(np.arange(120))

    def stat(v: np.ndarray) -> float:
        return float((v * y).sum() / v.sum())

    for m, ref in ((plain.counts, full), (weighted.counts, full * wv[None, :])):
        assert isinstance(m, CountMatrix) and m.shape == ref.shape
        np.testing.assert_array_equal(np.asarray(m), ref)
        np.testing.assert_array_equal(m[3], ref[3])
        np.testing.assert_array_equal(m[4, [0, 5, 5, 39]], ref[4, [0, 5, 5, 39]])
        np.testing.assert_array_equal(m[2:19, :7], ref[2:19, :7])
        x = np.linspace(-1, 2, 40)
        np.testing.assert_allclose(m @ x, ref @ x, rtol=1e-12)
        np.testing.assert_allclose(m @ np.c_[x, x**2], ref @ np.c_[x, x**2], rtol=1e-12)
        np.testing.assert_array_equal(bootstrap(stat, part, m), bootstrap(stat, part, ref))
    cs, counts = _arena_cs()
    start = fit_clogit(cs).params
    np.testing.assert_allclose(clogit_draws(cs, start, counts), clogit_draws(cs, start, np.asarray(counts)),
                               rtol=1e-9, atol=1e-12)
