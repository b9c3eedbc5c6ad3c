"""Least squares with small-sample cluster-robust inference: CR2 with Bell–McCaffrey degrees of freedom.

The CR1 sandwich (statsmodels' ``cov_type="cluster"``) with t on G − 1 degrees of freedom assumes
every cluster carries a small share of the information. When a few clusters carry much of a
contrast (participants with many or long conversations), CR1 understates the variance, since each
such cluster pulls the fit towards itself and shrinks its own residuals, and G − 1 overstates the
degrees of freedom. CR2 (Bell & McCaffrey 2002) rescales each cluster's residuals by
(I − H_gg)^(−1/2), which makes the sandwich unbiased under independent homoskedastic errors, and
the Bell–McCaffrey degrees of freedom (as in Imbens & Kolesár 2016) count how many clusters
effectively carry the contrast. It corrects leverage, not a badly weighted estimator: the turn
slope also weights each conversation so that long ones do not dominate (``analyses.dynamics``).

Fixed effects nested in the clusters (conversation levels within participants) are absorbed by
demeaning before the fit: with nested fixed effects, the adjustment computed from the absorbed
design equals the full model's (Pustejovsky & Tipton 2018), and the degrees of freedom below use
the full model's residual maker. statsmodels has no CR2; tests check this against the dense
textbook formulas on small data, and against statsmodels' coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from simlab.fidelity.identify import dependent_columns, describe_dependence
from simlab.fidelity.stats import FitError

__all__ = ["ClusterOLS", "Contrast", "LEVERAGE_TOL"]

LEVERAGE_TOL = 1e-10
"""An eigenvalue of I − H_gg below this is 0 (a cluster that alone determines a direction of the
fit, leverage 1): its inverse square root is taken as 0 (Moore–Penrose), as that direction of the
cluster's residuals is 0 anyway."""


@dataclass(frozen=True)
class Contrast:
    """One linear combination c·β with its CR2 standard error and Bell–McCaffrey t reference."""

    value: float
    se: float
    df: float
    p_value: float
    ci_low: float
    ci_high: float


class ClusterOLS:
    """y ~ X by least squares, with the CR2 covariance clustered by ``groups``.

    ``X`` and ``y`` may be within-transformed (demeaned by fixed effects nested in the groups). The
    design's identification is checked first (``dependent_columns``): a column that repeats others
    raises ``FitError`` naming it, whatever the CPU."""

    def __init__(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str] | None = None) -> None:
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        self.names = names or [f"x{i}" for i in range(X.shape[1])]
        codes = pd.factorize(np.asarray(groups))[0]
        self.n_clusters = int(codes.max()) + 1 if codes.size else 0
        if self.n_clusters < 2:
            raise FitError("one cluster only: no cluster-robust inference")
        xtx = X.T @ X
        dependent = dependent_columns(xtx)
        if dependent:
            raise FitError(f"not identified: {describe_dependence(dependent, self.names)}")
        vals, vecs = np.linalg.eigh(xtx)
        self.bread = (vecs / vals) @ vecs.T  # (X'X)⁻¹, positive definite by the check above
        half = (vecs / np.sqrt(vals)) @ vecs.T  # (X'X)^(−1/2)
        self.params = self.bread @ (X.T @ y)
        resid = y - X @ self.params
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0, True])
        self._x: list[np.ndarray] = []
        self._u: list[np.ndarray] = []
        self._f: list[np.ndarray] = []
        z = np.zeros((self.n_clusters, X.shape[1]))
        for g in range(self.n_clusters):
            rows = order[bounds[g]:bounds[g + 1]]
            xg = X[rows]
            # I − H_gg = I − B B' with B = X_g (X'X)^(−1/2) = U S V': (I − H_gg)^(−1/2) = I + U diag(f) U'
            u, s, _ = np.linalg.svd(xg @ half, full_matrices=False)
            one_minus = 1.0 - s * s
            f = np.where(one_minus > LEVERAGE_TOL, 1.0 / np.sqrt(np.maximum(one_minus, LEVERAGE_TOL)), 0.0) - 1.0
            self._x.append(xg)
            self._u.append(u)
            self._f.append(f)
            z[g] = xg.T @ self._adjust(g, resid[rows])
        self.cov = self.bread @ (z.T @ z) @ self.bread
        self.cov = (self.cov + self.cov.T) / 2

    def _adjust(self, g: int, v: np.ndarray) -> np.ndarray:
        """(I − H_gg)^(−1/2) v for cluster g."""
        u = self._u[g]
        return np.asarray(v + u @ (self._f[g] * (u.T @ v)))

    def df(self, c: np.ndarray) -> float:
        """Bell–McCaffrey degrees of freedom of c·β: (tr G'G)² / ‖G'G‖²_F, where column g of G is the
        full residual maker applied to cluster g's (I − H_gg)^(−1/2) X_g (X'X)⁻¹ c. With absorbed fixed
        effects nested in the clusters, G'G = diag(‖u_g‖²) − W'(X'X)⁻¹W, W_g = X_g'u_g (all p × p work)."""
        mc = self.bread @ c
        d = np.empty(self.n_clusters)
        w = np.empty((self.n_clusters, c.size))
        for g in range(self.n_clusters):
            ug = self._adjust(g, self._x[g] @ mc)
            d[g] = ug @ ug
            w[g] = self._x[g].T @ ug
        k = w.T @ w
        mk = self.bread @ k
        quad = np.einsum("gi,ij,gj->g", w, self.bread, w)  # diagonal of W'MW
        trace = float(d.sum() - np.trace(mk))
        frob = float(d @ d - 2 * d @ quad + np.sum(mk * mk.T))
        return trace * trace / frob if frob > 0 else float(self.n_clusters - 1)

    def contrast(self, c: np.ndarray, level: float = 0.95) -> Contrast:
        """c·β with its CR2 standard error, Bell–McCaffrey t p-value (against 0) and interval."""
        c = np.asarray(c, dtype=float)
        value = float(c @ self.params)
        se = float(np.sqrt(max(float(c @ self.cov @ c), 0.0)))
        df = self.df(c)
        t = value / se if se > 0 else float("nan")
        half = float(sps.t.ppf(0.5 + level / 2, df)) * se
        p = float(2 * sps.t.sf(abs(t), df)) if np.isfinite(t) else float("nan")
        return Contrast(value=value, se=se, df=df, p_value=p, ci_low=value - half, ci_high=value + half)

