"""A conditional-logit fit and its inference clustered by participant: the sandwich covariance,
t intervals and Wald tests, and several sources' fits stacked so their differences carry the
covariance a participant in several sources creates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy import stats as sps

from simlab.fidelity.result import Estimate
from simlab.fidelity.stats.choice_sets import ChoiceSets, _scale_rows
from simlab.fidelity.stats.errors import FitError

__all__ = ["ClogitFit", "cluster_cov", "linear", "lr_test", "participant_scores", "robust_estimate", "stack",
           "wald_test"]


@dataclass(frozen=True)
class ClogitFit:
    params: np.ndarray
    cov: np.ndarray
    """Model-based covariance: the inverse (penalised) information."""
    loglik: float
    """Log-likelihood of the data at ``params`` (without the penalty)."""
    n_iter: int
    cov_robust: np.ndarray | None = None
    """Sandwich covariance clustered by participant (None: fewer than 2 participants, or not asked)."""
    n_clusters: int = 0
    """Participants behind ``cov_robust``."""
    penalised: bool = False
    """True when the MLE diverged and this is the log-F(1,1)-penalised fit."""

    @property
    def bse(self) -> np.ndarray:
        return np.asarray(np.sqrt(np.clip(np.diag(self.cov), 0, None)))

    @property
    def robust_bse(self) -> np.ndarray | None:
        return None if self.cov_robust is None else np.sqrt(np.clip(np.diag(self.cov_robust), 0, None))

    @property
    def pvalues(self) -> np.ndarray:
        """Two-sided p-value of each coefficient = 0: cluster-robust (t with G − 1 degrees of
        freedom, G participants) when the fit has ``cov_robust``, else model-based (normal)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.cov_robust is not None:
                se = np.sqrt(np.clip(np.diag(self.cov_robust), 0, None))
                return np.asarray(2 * sps.t.sf(np.abs(self.params / se), self.n_clusters - 1))
            return np.asarray(2 * sps.norm.sf(np.abs(self.params / self.bse)))


def robust_estimate(fit: ClogitFit, i: int, draws: np.ndarray | None = None, level: float = 0.95) -> Estimate:
    """Coefficient ``i`` with the cluster-robust t interval (participants − 1 df) that matches its
    p-value. Used for sim − human comparisons: with 25–40 participants the percentile participant
    bootstrap covered too rarely in the calibration, this interval did not (figures in
    docs/benchmarks.md). ``draws`` only count failures."""
    if fit.cov_robust is None:
        raise ValueError("robust_estimate needs a fit with cov_robust")
    value = float(fit.params[i])
    se = float(np.sqrt(max(fit.cov_robust[i, i], 0.0)))
    half = float(sps.t.ppf(0.5 + level / 2, max(fit.n_clusters - 1, 1))) * se
    failed = int(np.sum(~np.isfinite(draws))) if draws is not None else 0
    return Estimate(value=value, ci_low=value - half, ci_high=value + half, p_value=float(fit.pvalues[i]),
                    n=int(fit.n_clusters), n_failed=failed,
                    note="95% CI: cluster-robust t interval by participant (participants − 1 df)")



def participant_scores(cs: ChoiceSets, params: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """(n_participants, p): each participant's summed per-choice-set scores w·(x_chosen − E[x]),
    rows indexed by ``cs.participant`` (the shared participant index)."""
    w = np.ones(cs.n_strata) if weights is None else np.asarray(weights, dtype=float)
    n_part = int(cs.participant.max()) + 1 if cs.n_strata else 0
    sd = cs.sparse_design
    with np.errstate(all="ignore"):
        eta = cs.X @ params if sd is None else sd.x @ params
        m = np.maximum.reduceat(eta, cs.starts)
        e = np.exp(eta - m[cs.stratum])
        p = e / np.add.reduceat(e, cs.starts)[cs.stratum]
        if sd is not None:
            score_s = _scale_rows(sparse.csr_matrix(sd.x_chosen - sd.xbar(p)), w)
            owner = sparse.csr_matrix((np.ones(cs.n_strata), (cs.participant, np.arange(cs.n_strata))),
                                      shape=(n_part, cs.n_strata))
            return np.asarray((owner @ score_s).toarray())
        xbar = np.add.reduceat(p[:, None] * cs.X, cs.starts)
        score = w[:, None] * (cs.x_chosen - xbar)
    u = np.zeros((n_part, cs.X.shape[1]))
    np.add.at(u, cs.participant, score)
    return u


def _sandwich(bread: np.ndarray, u: np.ndarray, g: int) -> np.ndarray | None:
    if g < 2:
        return None
    with np.errstate(all="ignore"):
        v = bread @ (u.T @ u * (g / (g - 1))) @ bread
    return (v + v.T) / 2 if np.all(np.isfinite(v)) else None


def cluster_cov(cs: ChoiceSets, params: np.ndarray, cov: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray | None, int]:
    """Sandwich covariance clustered by participant, and the number of participants G.

    bread = ``cov`` (inverse information); meat = Σ over participants of the outer product of
    their summed per-choice-set scores (x_chosen − E[x]), times G / (G − 1). None when G < 2.
    Scores of a penalised fit are the data's alone (uncentred), which errs on the wide side.
    """
    w = np.ones(cs.n_strata) if weights is None else np.asarray(weights, dtype=float)
    g = int(np.unique(cs.participant[w > 0]).size)
    return _sandwich(cov, participant_scores(cs, params, w), g), g


def stack(parts: Sequence[tuple[ChoiceSets, ClogitFit]]) -> ClogitFit:
    """Several separately fitted conditional logits (e.g. one per source) as one fit.

    Params are concatenated and the model covariance is block-diagonal — the same as a pooled
    model with every coefficient interacted with the part, since strata never mix parts. The
    cluster-robust covariance is of all parts together: a participant present in several parts
    (a human and their simulated copy) makes the parts' estimates correlate, and a difference
    between sources must carry that covariance.
    """
    n = max(int(cs.participant.max()) + 1 for cs, _ in parts)
    us, ids = [], []
    for cs, fit in parts:
        u = participant_scores(cs, fit.params)
        us.append(np.vstack([u, np.zeros((n - u.shape[0], u.shape[1]))]))
        ids.append(np.unique(cs.participant))
    bread = _block_diag([fit.cov for _, fit in parts])
    g = int(np.unique(np.concatenate(ids)).size)
    return ClogitFit(
        params=np.concatenate([fit.params for _, fit in parts]), cov=bread,
        loglik=float(sum(fit.loglik for _, fit in parts)), n_iter=0,
        cov_robust=_sandwich(bread, np.hstack(us), g), n_clusters=g,
        penalised=any(fit.penalised for _, fit in parts),
    )


def _block_diag(blocks: Sequence[np.ndarray]) -> np.ndarray:
    from scipy.linalg import block_diag

    return np.asarray(block_diag(*blocks))


def linear(fit: ClogitFit, c: np.ndarray) -> ClogitFit:
    """The linear combinations ``c @ params`` (rows of ``c``) as a fit of their own, e.g. the
    differences between two sources' coefficients, for ``pvalues`` and ``wald_test``."""
    c = np.atleast_2d(np.asarray(c, dtype=float))
    rob = None if fit.cov_robust is None else c @ fit.cov_robust @ c.T
    return ClogitFit(c @ fit.params, c @ fit.cov @ c.T, float("nan"), 0, cov_robust=rob, n_clusters=fit.n_clusters,
                     penalised=fit.penalised)



def lr_test(full: ClogitFit, restricted: ClogitFit, df: int) -> float:
    """Likelihood-ratio test p-value of ``df`` restrictions. Ignores clustering: for comparisons
    across sources (one participant in several strata) use the cluster-robust ``wald_test``."""
    stat = max(0.0, 2 * (full.loglik - restricted.loglik))
    return float(sps.chi2.sf(stat, df))


def wald_test(fit: ClogitFit, idx: Sequence[int], *, robust: bool = True) -> float:
    """Wald test p-value that the coefficients ``idx`` (q of them) are jointly zero.

    ``robust`` (and the fit has ``cov_robust``): cluster-robust, W/q against F(q, G − 1) with G
    participants, the usual small-sample reference for clustered errors. Else model-based χ²(q).
    Raises ``FitError`` when the covariance of those coefficients is singular (e.g. more
    restrictions than participants).
    """
    idx = list(idx)
    b = fit.params[idx]
    use_robust = robust and fit.cov_robust is not None
    v = (fit.cov_robust if use_robust else fit.cov)[np.ix_(idx, idx)]  # type: ignore[index]
    with np.errstate(all="ignore"):
        vals, vecs = np.linalg.eigh(v)
    if not idx or not np.all(np.isfinite(vals)) or vals.min() <= 1e-12 * max(vals.max(), 1e-300):
        raise FitError(f"the covariance of the {len(idx)} tested coefficients is singular "
                       f"(more restrictions than the {fit.n_clusters} participants can identify?)")
    z = vecs.T @ b
    stat = float(np.sum(z * z / vals))
    q = len(idx)
    if use_robust:
        return float(sps.f.sf(stat / q, q, fit.n_clusters - 1))
    return float(sps.chi2.sf(stat, q))
