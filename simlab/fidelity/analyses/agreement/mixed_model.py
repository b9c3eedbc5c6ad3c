"""The restricted likelihood (REML) of ratings with a random intercept per participant and per
conversation within participant, in closed form: statsmodels' MixedLM fits the same model, but too
slowly for a bootstrap of refits and short of the optimum where a variance is 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.optimize import minimize

from simlab.fidelity.identify import dependent_columns
from simlab.fidelity.stats import FitError

__all__ = ["NestedReml"]


class NestedReml:
    """REML of y ~ X + (1 | participant) + (1 | conversation within participant), in closed form.

    The restricted likelihood statsmodels' ``MixedLM`` maximises for this model (groups = participant,
    a variance component per conversation; tests check the estimates against it), but each
    evaluation is a handful of array sums: V/σ² = I + γ_c·Σ_c 1_c1_cᵀ + γ_p·Σ_g 1_g1_gᵀ is inverted by
    Sherman–Morrison per conversation and per participant, so u'V⁻¹v only needs conversation sums of
    the columns of [X, y]. A participant bootstrap replicate is the same sums weighted by how often
    each participant is drawn (each copy an independent participant), so no data are copied. The two
    variance ratios γ ≥ 0 are found by bounded Powell (derivative-free: 2 parameters, cheap
    evaluations), which reaches a variance of 0 exactly. Why not MixedLM itself: a fit is many
    times slower, slowest when a variance is 0 (as for a simulator without persona), where its
    gradient methods stall short of the optimum (timings in docs/benchmarks.md)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, participant: np.ndarray, conversation: np.ndarray) -> None:
        m = np.column_stack([x, y])
        self.p = x.shape[1]
        conv = pd.factorize(conversation)[0]
        n_conv = int(conv.max()) + 1
        conv_first = np.zeros(n_conv, dtype=np.int64)
        conv_first[conv] = np.arange(conv.size)
        self.conv_part = participant[conv_first]  # participant of each conversation
        self.n_part = int(participant.max()) + 1
        self.member = sparse.csr_matrix((np.ones(n_conv), (self.conv_part, np.arange(n_conv))),
                                        shape=(self.n_part, n_conv))  # participant × conversation
        self.n_c = np.bincount(conv, minlength=n_conv).astype(float)
        self.s = np.zeros((n_conv, m.shape[1]))
        np.add.at(self.s, conv, m)
        self.ss = np.einsum("ci,cj->cij", self.s, self.s)  # per conversation, outer product of its sums
        self.mm = np.zeros((self.n_part, m.shape[1], m.shape[1]))
        np.add.at(self.mm, participant, np.einsum("ni,nj->nij", m, m))
        self.n_rows = np.bincount(participant, minlength=self.n_part).astype(float)

    def _criterion(self, gamma: np.ndarray, w: np.ndarray, keep: np.ndarray, mtm: np.ndarray) -> tuple[float, float]:
        """(−2 × profiled REML log-likelihood, σ̂²) at variance ratios ``gamma`` with participant weights ``w``."""
        g_p, g_c = float(gamma[0]), float(gamma[1])
        wc = w[self.conv_part]
        d = 1.0 / (1.0 + g_c * self.n_c)
        q = mtm - np.tensordot(wc * g_c * d, self.ss, axes=1)
        t = self.member @ (self.s * d[:, None])
        sg = self.member @ (self.n_c * d)
        kappa = g_p / (1.0 + g_p * sg)
        q -= (t * (w * kappa)[:, None]).T @ t
        logdet = float(np.sum(wc * np.log1p(g_c * self.n_c)) + np.sum(w * np.log1p(g_p * sg)))
        cols = np.r_[keep, True]
        q = q[np.ix_(cols, cols)]
        k = int(keep.sum())
        xvx, xvy, yvy = q[:k, :k], q[:k, k], q[k, k]
        chol = np.linalg.cholesky(xvx)
        z = np.linalg.solve(chol, xvy)
        rss = float(yvy - z @ z)
        dof = float(w @ self.n_rows) - k
        if not rss > 0 or dof <= 0:
            raise FitError("the ratings leave no residual variance to split")
        return dof * np.log(rss / dof) + logdet + 2 * float(np.sum(np.log(np.diag(chol)))), rss / dof

    def fit(self, w: np.ndarray | None = None, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(participant, repeat, residual) variances and the ratios γ (a warm start), participant weights ``w``."""
        w = np.ones(self.n_part) if w is None else np.asarray(w, float)
        mtm = np.tensordot(w, self.mm, axes=1)
        n = mtm[0, 0]  # the intercept column: weighted rows
        diag = np.diag(mtm)[: self.p]
        keep = np.r_[True, (diag[1:] > 0) & (diag[1:] < n)]  # dummies of levels absent (or everywhere) dropped
        # a dummy that repeats others in these weights (e.g. a domain met by one arm only) is dropped too:
        # the column space, and so the restricted likelihood, is unchanged, and no solver has to fail first
        idx = np.flatnonzero(keep)
        for j in dependent_columns(mtm[np.ix_(idx, idx)]):
            keep[idx[j]] = False

        def f(gamma: np.ndarray) -> float:
            return self._criterion(gamma, w, keep, mtm)[0]

        best = None
        for x0 in ([start] if start is not None else []) + [np.array([1.0, 0.5]), np.array([0.05, 0.05])]:
            res = minimize(f, x0, method="Powell", bounds=[(0.0, None), (0.0, None)],
                           options={"xtol": 1e-6, "ftol": 1e-10, "maxiter": 2000})
            if res.success and np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and (
                    best is None or res.fun < best.fun - 1e-9):
                best = res
            if best is not None and start is not None:
                break  # a warm start that converged is the answer; otherwise compare starts
        if best is None:
            raise FitError("the mixed model of the ratings did not converge")
        gamma = np.maximum(best.x, 0.0)
        sigma2 = self._criterion(gamma, w, keep, mtm)[1]
        return np.array([gamma[0] * sigma2, gamma[1] * sigma2, sigma2]), gamma
