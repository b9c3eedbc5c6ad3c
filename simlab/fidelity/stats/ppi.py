"""Prediction-powered inference of a mean of per-participant quantities (PPI++: Angelopoulos, Duchi and
Zrnic 2023, "PPI++: Efficient Prediction-Powered Inference"), with participant weights.

n humans have a quantity ``y`` (e.g. the share of their choices that went to the response shown first)
and a simulated copy whose quantity is ``f``; N more simulated participants have no human and only
their ``f``. The estimate of the humans' mean is

    θ̂ = mean_humans(y − λ f) + λ · mean_all_simulated(f)

(all simulated = the n copies and the N simulated-only participants). With λ = 0 it is the humans-only
mean; with λ = 1 the copies' error ``y − f`` corrects the mean of every simulated participant. It is
unbiased for any fixed λ and any simulator, because the copies' mean and the simulated-only mean estimate
the same thing (the copies and the simulated-only participants are simulated the same way). λ is the
PPI++ power-tuned value: the λ that minimises the estimate's variance, estimated on the humans
(``tuned_lambda``), clipped to [0, 1]. A useless simulator (``f`` unrelated to ``y``) gets λ ≈ 0 and the
humans-only interval back; a good one gets λ near 1 and an interval that shrinks towards what n + N humans
would give.

The unit is the participant: every quantity is one number per participant (their own mean over their
events), so the interval is participant-clustered. Participant weights (``w``: e.g. raking weights; 1 by
default) enter every mean, the tuning and the variance. The 95% interval is the CLT one with a
Welch–Satterthwaite t quantile (the two independent parts: the humans' and the simulated-only
participants'); λ is treated as known, which keeps coverage at 60 humans (``docs/calibration.md``)
and at 30 (the tests).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> truth = rng.normal(size=400)
>>> y, f = truth[:40] + rng.normal(0, 0.5, 40), truth[:40]  # 40 humans with a good copy each
>>> r = ppi_mean(y, f, truth[40:])  # and 360 simulated participants without a human
>>> 0.5 < r.lam <= 1.0, r.se < r.humans_se
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["PPIMean", "mean_of", "ppi_mean", "tuned_lambda"]


@dataclass(frozen=True)
class PPIMean:
    """The PPI estimate of one mean and the humans-only estimate beside it (same humans, same weights)."""

    value: float
    se: float
    ci_low: float
    ci_high: float
    lam: float
    """The power-tuning parameter λ used (0: the humans-only estimate)."""
    humans_value: float
    humans_se: float
    humans_ci_low: float
    humans_ci_high: float
    n: int
    """Humans with a simulated copy."""
    n_sim_only: int
    """Simulated participants without a human."""
    copy_corr: float
    """Weighted correlation of the humans' quantity with their copies' (NaN when either is constant)."""

    @property
    def effective_n(self) -> float:
        """Humans a humans-only estimate would need for the PPI estimate's variance:
        n · var(humans-only) / var(PPI)."""
        return self.n * self.humans_se**2 / self.se**2 if self.se > 0 else math.nan

    @property
    def humans_saved(self) -> float:
        """Effective sample size minus n: how many more humans the simulated participants were worth."""
        return self.effective_n - self.n


def _weights(w: np.ndarray | None, n: int) -> np.ndarray:
    if w is None:
        return np.ones(n)
    w = np.asarray(w, dtype=float)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum")
    return w


def mean_of(x: np.ndarray, w: np.ndarray | None = None) -> float:
    """The weighted mean of per-participant quantities (weights 1 by default).

    >>> mean_of(np.array([1.0, 3.0]), np.array([3.0, 1.0]))
    1.5
    """
    x = np.asarray(x, dtype=float)
    w = _weights(w, x.size)
    return float(np.sum(w * x) / w.sum())


def _kish(w: np.ndarray) -> float:
    """The effective number of participants behind weighted means: (Σw)² / Σw²."""
    return float(w.sum() ** 2 / np.sum(w**2))


def tuned_lambda(y: np.ndarray, f: np.ndarray, f_sim_only: np.ndarray, w: np.ndarray | None = None,
                 w_sim_only: np.ndarray | None = None) -> float:
    """PPI++'s variance-minimising λ, clipped to [0, 1].

    θ̂ = ȳ − λc(f̄ − f̃̄) with c the simulated-only participants' share of the simulated weight, so
    var(θ̂) = [var y − 2λc cov(y, f) + λ²c² var f] / n + λ²c² var f̃ / N, smallest at
    λ = cov(y, f) / (c · (var f + (n / N) var f̃)); with equal weights and var f = var f̃ that is the
    slope cov(y, f) / var f of the humans' quantity on their copies'. n and N are Kish effective sizes.
    """
    y, f, g = (np.asarray(a, dtype=float) for a in (y, f, f_sim_only))
    w, v = _weights(w, y.size), _weights(w_sim_only, g.size)
    p, q = w / w.sum(), v / v.sum()
    c = v.sum() / (w.sum() + v.sum())
    fc = f - np.sum(p * f)
    cov = float(np.sum(p * (y - np.sum(p * y)) * fc))
    denom = c * (float(np.sum(p * fc**2)) + _kish(w) / _kish(v) * float(np.sum(q * (g - np.sum(q * g)) ** 2)))
    if not denom > 0:
        return 0.0
    return float(np.clip(cov / denom, 0.0, 1.0))


def _t(df: float, alpha: float) -> float:
    return float(sps.t.ppf(1 - alpha / 2, df)) if df > 0 and math.isfinite(df) else math.nan


def ppi_mean(y: np.ndarray, f: np.ndarray, f_sim_only: np.ndarray, *, w: np.ndarray | None = None,
             w_sim_only: np.ndarray | None = None, lam: float | None = None, alpha: float = 0.05) -> PPIMean:
    """The PPI++ estimate of the humans' weighted mean of ``y`` (``f``: the humans' copies, in the same
    order; ``f_sim_only``: simulated participants without a human), with the humans-only one beside it.

    ``lam``: a fixed λ (default: ``tuned_lambda``). Variance: the sandwich of the per-participant
    influences, humans ``p_i[(y_i − ȳ) − λc(f_i − f̄)]`` and simulated-only participants
    ``q_j λc(f̃_j − f̃̄)`` (``p``, ``q`` the normalised weights), each part scaled by m/(m − 1) (m its
    participants), so with equal weights the humans-only part is the usual s²/n.
    """
    y, f, g = (np.asarray(a, dtype=float) for a in (y, f, f_sim_only))
    if y.shape != f.shape or y.ndim != 1:
        raise ValueError("y and f must be 1-D arrays of the same length (one value per human)")
    n, m = y.size, g.size
    if n < 2 or m < 2:
        raise ValueError(f"PPI needs at least 2 humans with a copy and 2 simulated-only participants (got {n}, {m})")
    w, v = _weights(w, n), _weights(w_sim_only, m)
    p, q = w / w.sum(), v / v.sum()
    c = v.sum() / (w.sum() + v.sum())
    lam = tuned_lambda(y, f, g, w, v) if lam is None else float(lam)
    y_bar, f_bar, g_bar = float(np.sum(p * y)), float(np.sum(p * f)), float(np.sum(q * g))
    value = y_bar - lam * c * (f_bar - g_bar)
    infl_h = p * ((y - y_bar) - lam * c * (f - f_bar))
    infl_s = q * lam * c * (g - g_bar)
    var_h = n / (n - 1) * float(np.sum(infl_h**2))
    var_s = m / (m - 1) * float(np.sum(infl_s**2))
    var = var_h + var_s
    df_h = _kish(w) - 1
    # Welch–Satterthwaite: the humans' part has n − 1 degrees of freedom, the simulated-only part N − 1
    df = var**2 / (var_h**2 / df_h + var_s**2 / (_kish(v) - 1)) if var > 0 else df_h
    se = math.sqrt(var)
    hse = math.sqrt(n / (n - 1) * float(np.sum((p * (y - y_bar)) ** 2)))
    tq, th = _t(df, alpha), _t(df_h, alpha)
    fc, yc = f - f_bar, y - y_bar
    sf, sy = float(np.sum(p * fc**2)), float(np.sum(p * yc**2))
    corr = float(np.sum(p * yc * fc) / math.sqrt(sf * sy)) if sf > 0 and sy > 0 else math.nan
    return PPIMean(value=value, se=se, ci_low=value - tq * se, ci_high=value + tq * se, lam=lam,
                   humans_value=y_bar, humans_se=hse, humans_ci_low=y_bar - th * hse, humans_ci_high=y_bar + th * hse,
                   n=n, n_sim_only=m, copy_corr=corr)
