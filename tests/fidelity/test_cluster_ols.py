"""CR2 with Bell–McCaffrey degrees of freedom, against the dense textbook formulas with every fixed effect
as a dummy column, and against statsmodels' least-squares coefficients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sps

from simlab.fidelity.cluster_ols import ClusterOLS
from simlab.fidelity.stats import FitError


def _data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Unbalanced clusters (participants) holding 1–3 conversations (nested fixed effects) of 1–7 rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(25):
        for c in range(int(rng.integers(1, 4))):
            for t in range(int(rng.integers(1, 8))):
                rows.append((g, f"{g}-{c}", t, rng.integers(0, 3)))
    d = pd.DataFrame(rows, columns=["g", "conv", "turn", "arm"])
    x = np.column_stack([d["turn"], d["turn"] * (d["g"] % 2), d["arm"] == 1, d["arm"] == 2]).astype(float)
    y = 0.3 * d["turn"].to_numpy() + rng.normal(0, 1, len(d)) + rng.normal(0, 1, 25)[d["g"]]
    return x, y, d["g"].to_numpy(), d["conv"].to_numpy()


def _demean(a: np.ndarray, by: np.ndarray) -> np.ndarray:
    return np.asarray(a - pd.DataFrame(a).groupby(by).transform("mean").to_numpy().reshape(a.shape))


def _dense(x: np.ndarray, y: np.ndarray, g: np.ndarray, conv: np.ndarray, c: np.ndarray) -> tuple[float, float, float]:
    """(estimate, CR2 standard error, BM df) with the fixed effects as dummies, all N × N."""
    dums = pd.get_dummies(conv).to_numpy(float)
    full = np.column_stack([x, dums])
    m = np.linalg.pinv(full.T @ full)
    beta = m @ full.T @ y
    h = full @ m @ full.T
    resid_maker = np.eye(len(y)) - h
    e = resid_maker @ y
    cf = np.r_[c, np.zeros(dums.shape[1])]
    meat = np.zeros((full.shape[1], full.shape[1]))
    cols = []
    for k in np.unique(g):
        i = np.flatnonzero(g == k)
        vals, vecs = np.linalg.eigh(np.eye(i.size) - h[np.ix_(i, i)])
        inv_half = (vecs * np.where(vals > 1e-10, 1 / np.sqrt(np.clip(vals, 1e-10, None)), 0.0)) @ vecs.T
        z = full[i].T @ inv_half @ e[i]
        meat += np.outer(z, z)
        col = np.zeros(len(y))
        col[i] = inv_half @ full[i] @ m @ cf
        cols.append(resid_maker @ col)
    v = m @ meat @ m
    gm = np.column_stack(cols)
    gtg = gm.T @ gm
    return float(cf @ beta), float(np.sqrt(cf @ v @ cf)), float(np.trace(gtg) ** 2 / np.sum(gtg * gtg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cr2_and_bell_mccaffrey_df_equal_the_dense_formulas_with_the_fixed_effects_as_dummies(seed: int) -> None:
    x, y, g, conv = _data(seed)
    fit = ClusterOLS(_demean(x, conv), _demean(y, conv), g)
    for c in (np.array([1.0, 0, 0, 0]), np.array([1.0, -1.0, 0, 0]), np.array([0, 0, 1.0, -1.0])):
        value, se, df = _dense(x, y, g, conv, c)
        r = fit.contrast(c)
        assert r.value == pytest.approx(value, abs=1e-10)
        assert r.se == pytest.approx(se, rel=1e-8)
        assert r.df == pytest.approx(df, rel=1e-8)
        assert r.p_value == pytest.approx(2 * sps.t.sf(abs(value / se), df), rel=1e-6)
        half = sps.t.ppf(0.975, df) * se
        assert (r.ci_low, r.ci_high) == pytest.approx((value - half, value + half), rel=1e-8)


def test_coefficients_equal_statsmodels_and_cr2_is_wider_than_cr1_with_a_dominant_cluster() -> None:
    rng = np.random.default_rng(5)
    # one long conversation carries most of the slope's information: CR1 understates its variance
    lengths = [40] + [2] * 60
    g = np.repeat(np.arange(len(lengths)), lengths)
    t = np.concatenate([np.arange(n) for n in lengths]).astype(float)
    y = rng.normal(size=t.size)
    x, yy = _demean(t[:, None], g), _demean(y, g)
    fit = ClusterOLS(x, yy, g)
    cr1 = sm.OLS(yy, x).fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)
    np.testing.assert_allclose(fit.params, cr1.params, atol=1e-12)
    r = fit.contrast(np.array([1.0]))
    assert r.se > float(cr1.bse[0]) and r.df < 10  # a handful of effective clusters, not 60


def test_a_column_that_repeats_another_is_refused_by_name() -> None:
    x, y, g, conv = _data(0)
    bad = np.column_stack([x, 2 * x[:, 0] - x[:, 2]])
    with pytest.raises(FitError, match=r"not identified: x4 is a linear combination of x0, x2"):
        ClusterOLS(bad, y, g)
    with pytest.raises(FitError, match="one cluster"):
        ClusterOLS(x, y, np.zeros(len(y)))
