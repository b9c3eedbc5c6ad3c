"""Small statistics helpers the field's libraries lack.

- ``bootstrap_counts``: a seeded bootstrap over participants as a matrix of draw counts, so a
  statistic is recomputed with participant weights instead of rebuilding data frames.
- ``ChoiceSets`` / ``fit_clogit``: a vectorised Newton solver for the conditional logit
  (McFadden) likelihood with frequency weights per choice set. It is validated against
  ``statsmodels.discrete.conditional_models.ConditionalLogit`` (tests assert equal params to
  1e-6); it exists because 200 bootstrap refits with statsmodels' per-group Python loop are far
  too slow at PRISM-X scale. Its p-values are cluster-robust (``cluster_cov``: sandwich clustered
  by participant, the meat built from each participant's summed choice-set scores). Whether the
  coefficients are identified, and whether the MLE exists, is decided from the design before the
  fit (``check_identified``, ``simlab.fidelity.identify``), never from a solver failing; without an
  MLE (separation) the fit uses a log-F(1,1) penalty and says so (``penalised``).
- ``jsd``, ``percentile_ci``, weighted correlations. (ICC(2,1) lives with the autograder that uses it.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps
from scipy.special import expit

from simlab.fidelity.identify import (
    RANK_TOL,
    constant_columns,
    dependent_columns,
    describe_dependence,
    separating_direction,
)
from simlab.fidelity.result import Estimate


class FitError(RuntimeError):
    """A model that could not be fitted (singular information matrix, no convergence)."""


def reason_for(exc: BaseException) -> str:
    """Why an analysis failed, in words a researcher can act on; the technical detail follows."""
    if isinstance(exc, FitError):
        return str(exc)
    text, name = str(exc), type(exc).__name__
    low = text.lower()
    if isinstance(exc, np.linalg.LinAlgError) or "singular" in low:
        why = ("the model could not be fitted: a predictor does not vary, or repeats another, in these data "
               "(e.g. one arm, one position or one turn only)")
    elif "separation" in low:
        why = "the model could not be fitted: some choices are perfectly predicted (perfect separation)"
    elif "converge" in low:
        why = "the model did not converge on these data"
    elif isinstance(exc, MemoryError):
        why = "the analysis ran out of memory"
    else:
        why = "the analysis stopped on an unexpected error; please report it with the command that produced it"
    return f"{why} ({name}: {text})" if text else f"{why} ({name})"


# ---------------------------------------------------------------------------------------------
# progress

_PROGRESS: ContextVar[bool] = ContextVar("simlab_fidelity_progress", default=False)
T = TypeVar("T")


@contextmanager
def show_progress(enabled: bool = True) -> Iterator[None]:
    """Within this block, long loops (bootstrap draws) show a progress bar on stderr."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_shown() -> bool:
    """Whether ``show_progress`` is on here."""
    return _PROGRESS.get()


def progress(items: Iterable[T], total: int, desc: str) -> Iterable[T]:
    """``items`` with a transient tqdm bar on stderr when ``show_progress`` is on, else as is."""
    if not _PROGRESS.get():
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="draw", leave=False, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5)


# ---------------------------------------------------------------------------------------------
# bootstrap over participants


def bootstrap_counts(n_participants: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_participants) how often each participant is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_boot, n_participants), dtype=np.float64)
    for b in range(n_boot):
        draw = rng.integers(0, n_participants, size=n_participants)
        out[b] = np.bincount(draw, minlength=n_participants)
    return out


@dataclass(frozen=True)
class Participants:
    """A fixed participant index shared by every analysis, so paired sources resample together."""

    ids: tuple[str, ...]
    counts: np.ndarray  # (n_boot, n_participants)

    @classmethod
    def from_ids(cls, ids: Sequence[object], n_boot: int, seed: int) -> Participants:
        uniq = tuple(sorted({str(i) for i in ids if not pd.isna(i)}))
        return cls(uniq, bootstrap_counts(len(uniq), n_boot, seed))

    @property
    def n_boot(self) -> int:
        return int(self.counts.shape[0])

    def index(self, ids: Sequence[object] | pd.Series) -> np.ndarray:
        """Position of each id in the participant index (all ids must be known)."""
        lookup = {p: i for i, p in enumerate(self.ids)}
        return np.fromiter((lookup[str(i)] for i in ids), dtype=np.int64, count=len(ids))


def percentile_ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap draws, ignoring failed (NaN) replicates."""
    d = np.asarray(draws, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return (float(lo), float(hi))


MAX_FAILED_SHARE = 0.10
"""Above this share of failed bootstrap replicates a percentile CI is biased (the failures are not
random: they are the degenerate resamples), so it is withheld with a reason."""


def estimate(
    value: float, draws: np.ndarray | None, n: int, p_value: float | None = None
) -> Estimate:
    """An ``Estimate`` with a percentile CI from bootstrap draws (NaN CI when there are none).

    Failed replicates (NaN draws) are counted in ``n_failed``; above ``MAX_FAILED_SHARE`` of them
    the CI is withheld and ``note`` says why."""
    if draws is None:
        return Estimate(value=float(value), ci_low=float("nan"), ci_high=float("nan"), p_value=p_value, n=int(n))
    d = np.asarray(draws, dtype=float).ravel()
    failed = int(np.sum(~np.isfinite(d)))
    note = None
    if d.size and failed > MAX_FAILED_SHARE * d.size:
        lo, hi = float("nan"), float("nan")
        note = (f"CI withheld: {failed} of {d.size} bootstrap replicates failed to fit (more than "
                f"{MAX_FAILED_SHARE:.0%}), so the rest would be a biased sample")
    else:
        lo, hi = percentile_ci(d)
    return Estimate(value=float(value), ci_low=lo, ci_high=hi, p_value=p_value, n=int(n), n_failed=failed, note=note)


def bootstrap(
    stat: Callable[[np.ndarray], float | np.ndarray], row_participant: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Draws of ``stat(weights)`` where weights are each row's participant draw counts.

    A replicate whose statistic fails (``FitError``, ``FloatingPointError``, ``LinAlgError``)
    becomes NaN, so one degenerate resample does not sink the interval.
    """
    out: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for b in progress(range(counts.shape[0]), counts.shape[0], "bootstrap draws"):
        w = counts[b][row_participant]
        try:
            with np.errstate(all="ignore"):
                v = np.atleast_1d(np.asarray(stat(w), dtype=float))
            shape = v.shape
        except (FitError, FloatingPointError, np.linalg.LinAlgError, ValueError):
            v = None
        out.append(v)  # type: ignore[arg-type]
    if shape is None:
        return np.full((counts.shape[0], 1), np.nan)
    return np.vstack([v if v is not None else np.full(shape, np.nan) for v in out])


# ---------------------------------------------------------------------------------------------
# conditional logit


SPARSE_MIN_CELLS = 20_000
SPARSE_MAX_DENSITY = 0.2
"""A design of at least this many cells with at most this share of non-zeros is handled sparse."""


@dataclass(frozen=True, eq=False)
class _SparseDesign:
    x: sparse.csr_matrix  # (n_rows, p)
    x_chosen: sparse.csr_matrix  # (S, p)
    group: sparse.csr_matrix  # (S, n_rows): row r belongs to stratum s
    nz_row: np.ndarray  # row of each stored entry of x

    def xbar(self, prob: np.ndarray) -> sparse.csr_matrix:
        """(S, p) expected features per stratum under the row probabilities ``prob``."""
        xp = self.x.copy()
        xp.data = xp.data * prob[self.nz_row]
        return sparse.csr_matrix(self.group @ xp)


def _scale_rows(m: sparse.csr_matrix, w: np.ndarray) -> sparse.csr_matrix:
    out = m.copy()
    out.data = out.data * np.repeat(w, np.diff(m.indptr))
    return out


@dataclass(frozen=True, eq=False)
class ChoiceSets:
    """Rows = alternatives; ``stratum`` sorted 0..S-1; exactly one ``chosen`` row per stratum."""

    X: np.ndarray  # (n_rows, p)
    chosen: np.ndarray  # (n_rows,) bool
    stratum: np.ndarray  # (n_rows,) int, non-decreasing
    participant: np.ndarray  # (S,) participant index of each stratum
    names: tuple[str, ...]

    @property
    def n_strata(self) -> int:
        return int(self.participant.shape[0])

    @cached_property
    def starts(self) -> np.ndarray:
        return np.flatnonzero(np.r_[True, np.diff(self.stratum) != 0])

    @cached_property
    def chosen_idx(self) -> np.ndarray:
        return np.flatnonzero(self.chosen)

    @cached_property
    def x_chosen(self) -> np.ndarray:
        return self.X[self.chosen_idx]

    @cached_property
    def sparse_design(self) -> _SparseDesign | None:
        """The design as sparse matrices when it is large and mostly zeros (arm and position
        dummies over many arms), else None: the likelihood's pieces then cost O(non-zeros)."""
        n, p = self.X.shape
        if n * p < SPARSE_MIN_CELLS or np.count_nonzero(self.X) > SPARSE_MAX_DENSITY * n * p:
            return None
        x = sparse.csr_matrix(self.X)
        x.sum_duplicates()
        g = sparse.csr_matrix((np.ones(n), (self.stratum, np.arange(n))), shape=(self.n_strata, n))
        return _SparseDesign(x, x[self.chosen_idx], g, np.repeat(np.arange(n), np.diff(x.indptr)))

    def check(self) -> None:
        s = self.stratum
        if s.size and (np.any(np.diff(s) < 0) or s[0] != 0 or s[-1] != self.n_strata - 1):
            raise ValueError("strata must be sorted and numbered 0..S-1")
        per = np.bincount(s[self.chosen], minlength=self.n_strata)
        if np.any(per != 1):
            raise ValueError("each stratum needs exactly one chosen alternative")


SEPARATION_LIMIT = 15.0
"""A maximum-likelihood coefficient beyond this (odds ratio > 3·10⁶) means the likelihood has
no maximum (perfect or quasi-complete separation): the penalised fit is used instead."""


class SeparationError(FitError):
    """The maximum-likelihood estimate diverges (some choices are perfectly predicted)."""


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
        return np.sqrt(np.clip(np.diag(self.cov), 0, None))

    @property
    def robust_bse(self) -> np.ndarray | None:
        return None if self.cov_robust is None else np.sqrt(np.clip(np.diag(self.cov_robust), 0, None))

    @property
    def pvalues(self) -> np.ndarray:
        """Two-sided p-value of each coefficient = 0: cluster-robust (t with G − 1 degrees of
        freedom, G participants) when the fit has ``cov_robust``, else model-based (normal)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.cov_robust is not None:
                return 2 * sps.t.sf(np.abs(self.params / np.sqrt(np.clip(np.diag(self.cov_robust), 0, None))),
                                    self.n_clusters - 1)
            return 2 * sps.norm.sf(np.abs(self.params / self.bse))


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


def _clogit_pieces(
    cs: ChoiceSets, beta: np.ndarray, w: np.ndarray, starts: np.ndarray, need_hess: bool
) -> tuple[float, np.ndarray, np.ndarray | None]:
    sd = cs.sparse_design
    eta = cs.X @ beta if sd is None else sd.x @ beta
    m = np.maximum.reduceat(eta, starts)
    e = np.exp(eta - m[cs.stratum])
    den = np.add.reduceat(e, starts)
    p = e / den[cs.stratum]
    if sd is not None:
        ll = float(np.sum(w * (eta[cs.chosen_idx] - m - np.log(den))))
        xbar_s = sd.xbar(p)
        grad = sd.x_chosen.T @ w - xbar_s.T @ w
        hess = None
        if need_hess:
            wr = w[cs.stratum] * p
            hess = -((_scale_rows(sd.x, wr).T @ sd.x).toarray() - (_scale_rows(xbar_s, w).T @ xbar_s).toarray())
        return ll, np.asarray(grad, dtype=float), hess
    xbar = np.add.reduceat(p[:, None] * cs.X, starts)
    xc = cs.x_chosen
    ll = float(np.sum(w * (eta[cs.chosen_idx] - m - np.log(den))))
    grad = (w[:, None] * (xc - xbar)).sum(axis=0)
    hess = None
    if need_hess:
        wr = w[cs.stratum] * p
        hess = -((cs.X * wr[:, None]).T @ cs.X - (xbar * w[:, None]).T @ xbar)
    return ll, grad, hess


def _penalty(beta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """log-F(1,1) prior per coefficient, log density b/2 − log(1 + e^b): the likelihood of one
    pseudo-choice for and one against each feature (Greenland & Mansournia 2015). It keeps a
    separated fit finite and leaves a well-determined one practically unchanged."""
    sig = expit(beta)
    value = float(np.sum(beta / 2 - np.logaddexp(0.0, beta)))
    return value, 0.5 - sig, -np.diag(sig * (1 - sig))


def _newton_step(hess: np.ndarray, grad: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
    # Whether a rank-deficient matrix is "exactly singular" depends on the BLAS build and the
    # CPU's kernels, so every solve turns LinAlgError (or a non-finite step) into a FitError.
    try:
        with np.errstate(all="ignore"):
            step = np.linalg.solve(-hess, grad)
    except np.linalg.LinAlgError as exc:
        detail = str(exc)
    else:
        detail = "non-finite Newton step"
        if np.all(np.isfinite(step)):
            return step
    if beta is not None and np.max(np.abs(beta), initial=0.0) > 5:
        # information vanishes because fitted probabilities reach 0/1: the MLE is running away
        raise SeparationError(f"coefficients diverge (perfect separation): {detail}")
    raise FitError(f"singular information matrix (a feature does not vary within strata): {detail}")


def _newton(
    cs: ChoiceSets, w: np.ndarray, beta: np.ndarray, *, penalised: bool, max_iter: int, tol: float, strict: bool
) -> tuple[np.ndarray, float, np.ndarray, int]:
    """(params, data log-likelihood, Hessian of the objective, iterations) by Newton–Raphson with step halving."""
    starts = cs.starts

    def objective(b: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        ll, g, h = _clogit_pieces(cs, b, w, starts, True)
        assert h is not None  # asked for
        if not penalised:
            return ll, ll, g, h
        pv, pg, ph = _penalty(b)
        return ll + pv, ll, g + pg, h + ph

    with np.errstate(all="ignore"):
        obj, ll, grad, hess = objective(beta)
        if not np.isfinite(obj):
            raise FitError("log-likelihood is not finite at the start values")
        it = 0
        step = _newton_step(hess, grad, beta)
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is read after the loop
            t = 1.0
            for _ in range(30):
                new = beta + t * step
                o_new, ll_new, g_new, h_new = objective(new)
                if np.isfinite(o_new) and o_new >= obj - 1e-12 * abs(obj):
                    break
                t /= 2
            else:
                if np.max(np.abs(beta)) > 5:
                    raise SeparationError("coefficients diverge (perfect separation): line search failed")
                raise FitError("line search failed")
            beta, obj, ll, grad, hess = new, o_new, ll_new, g_new, h_new
            moved = np.max(np.abs(t * step))
            step = _newton_step(hess, grad, beta)  # the next step; its size says whether we are done
            if moved < 1e-9 or float(grad @ step) < tol:
                break
            if not penalised and np.max(np.abs(beta)) > 2 * SEPARATION_LIMIT:
                break  # no need to follow a divergent MLE further
        else:
            if strict:
                if not penalised and np.max(np.abs(beta)) > 5:
                    raise SeparationError(f"coefficients diverge (perfect separation): no convergence after {max_iter} Newton steps")
                raise FitError(f"no convergence after {max_iter} Newton steps")
    if not penalised and np.max(np.abs(beta)) > SEPARATION_LIMIT:
        raise SeparationError("coefficients diverge (perfect separation)")
    return beta, ll, hess, it


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


def _inverse_information(info: np.ndarray) -> np.ndarray:
    """The inverse of an information matrix, by the eigenvalues of its correlation-scaled form.

    The design was checked identified before the fit, so an eigenvalue below ``RANK_TOL`` here means
    the information vanished at the estimate (fitted probabilities of 0 or 1: near-separation in a
    resample), a ``FitError``; the tolerance, not a solver's failure, decides it."""
    with np.errstate(all="ignore"):
        d = np.diag(info)
        if not np.all(np.isfinite(info)) or np.any(d <= 0):
            raise FitError("the information matrix vanished at the estimate: some choices are perfectly predicted")
        s = 1.0 / np.sqrt(d)
        vals, vecs = np.linalg.eigh(info * s[:, None] * s[None, :])
    if not np.all(np.isfinite(vals)) or vals.min() < RANK_TOL * max(vals.max(), 1.0):
        raise FitError("the information matrix is (near) singular at the estimate: some choices are (nearly) "
                       "perfectly predicted")
    inv = (vecs / vals) @ vecs.T
    return np.asarray(inv * s[:, None] * s[None, :])


def check_identified(cs: ChoiceSets, weights: np.ndarray | None = None) -> None:
    """Raise ``FitError`` naming the features whose coefficients the choice sets with a positive
    weight cannot identify: one that never varies within a choice set (exact comparison), or one that
    is a linear combination of the features before it within choice sets (``dependent_columns`` on
    the within-set-centred Gram matrix, the information at β = 0, with tolerance ``RANK_TOL``)."""
    w = np.ones(cs.n_strata) if weights is None else np.asarray(weights, dtype=float)
    used = w > 0
    if not used.any():
        raise FitError("no choice sets with a positive weight")
    flat = constant_columns(cs.X, cs.starts, used)
    if flat.any():
        names = ", ".join(n for n, f in zip(cs.names, flat) if f)
        raise FitError(f"not identified: {names} does not vary within any choice set in these data "
                       "(e.g. one arm, one position or one turn only)")
    with np.errstate(all="ignore"):
        _, _, hess = _clogit_pieces(cs, np.zeros(cs.X.shape[1]), w, cs.starts, True)
    assert hess is not None  # asked for
    dependent = dependent_columns(-hess)
    if dependent:
        raise FitError(f"not identified: {describe_dependence(dependent, cs.names)} within choice sets "
                       "(a predictor repeats others in these data)")


def separation_diffs(cs: ChoiceSets, weights: np.ndarray | None = None) -> np.ndarray:
    """x_chosen − x_alternative for every alternative not chosen, in choice sets with a positive weight."""
    w = np.ones(cs.n_strata) if weights is None else np.asarray(weights, dtype=float)
    rows = ~cs.chosen & (w[cs.stratum] > 0)
    return cs.X[cs.chosen_idx[cs.stratum[rows]]] - cs.X[rows]


def _direction_words(cs: ChoiceSets, direction: np.ndarray) -> str:
    big = np.abs(direction) > 1e-6 * np.max(np.abs(direction))
    return ", ".join(f"{'+' if d > 0 else '−'}{n}" for n, d, b in zip(cs.names, direction, big) if b)


def fit_clogit(
    cs: ChoiceSets,
    weights: np.ndarray | None = None,
    start: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
    strict: bool = True,
    penalty: Literal["auto", "none", "always"] = "auto",
    robust: bool = True,
    check_separation: bool = True,
) -> ClogitFit:
    """Conditional logit by Newton–Raphson with step halving; maximum likelihood unless it diverges.

    ``weights`` are frequency weights per stratum (bootstrap counts): a weight of 2 is the same
    as the stratum appearing twice. ``penalty``: "auto" fits the MLE and, when it diverges
    (separation: a coefficient beyond ``SEPARATION_LIMIT`` or running away), refits with a
    log-F(1,1) penalty on every coefficient (``penalised=True``); "none" raises
    ``SeparationError`` instead; "always" fits the penalised model directly. ``robust`` adds the
    participant-clustered sandwich covariance (``cov_robust``).

    Identification is decided from the design before any solve (``check_identified``): a feature
    that never varies within a choice set, or that is a combination of others, raises ``FitError``
    naming it, on every CPU. ``check_separation`` looks for separation by a linear programme first
    (``separating_direction``: e.g. a level never chosen) and then fits the penalised model directly;
    bootstrap replicates turn it off and rely on the divergence of the MLE instead. Also raises
    ``FitError`` on non-convergence.
    """
    p = cs.X.shape[1]
    if cs.n_strata == 0 or p == 0:
        raise FitError("no choice sets or no features")
    w = np.ones(cs.n_strata) if weights is None else np.asarray(weights, dtype=float)
    check_identified(cs, w)
    beta0 = np.zeros(p) if start is None else np.array(start, dtype=float)
    penalised = penalty == "always"
    if not penalised and check_separation:
        direction = separating_direction(separation_diffs(cs, w))
        if direction is not None:
            if penalty == "none":
                raise SeparationError(f"coefficients diverge (perfect separation along {_direction_words(cs, direction)})")
            penalised = True
    try:
        beta, ll, hess, it = _newton(cs, w, beta0, penalised=penalised, max_iter=max_iter, tol=tol, strict=strict)
    except SeparationError:
        if penalty == "none":
            raise
        penalised = True
        beta, ll, hess, it = _newton(cs, w, np.zeros(p), penalised=True, max_iter=max_iter, tol=tol, strict=strict)
    cov = _inverse_information(-hess)
    v, g = cluster_cov(cs, beta, cov, w) if robust else (None, 0)
    return ClogitFit(beta, cov, ll, it, cov_robust=v, n_clusters=g, penalised=penalised)


def _unique_rows(a: np.ndarray, chunk: int = 16_384) -> tuple[np.ndarray, np.ndarray]:
    """(unique rows, index of each row's unique row), like ``np.unique(a, axis=0,
    return_inverse=True)`` but in hash order and without sorting wide rows: rows are grouped by
    a random projection (computed row by row, so equal rows get equal keys), and every row is
    checked equal to its group's first row; a collision falls back to ``np.unique``."""
    r = np.random.default_rng(20240601).normal(size=a.shape[1])
    key = np.concatenate([(a[i:i + chunk] * r).sum(axis=1) for i in range(0, a.shape[0], chunk)]) if a.size else np.zeros(0)
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = np.asarray(inv).ravel()
    same = all(np.array_equal(a[i:i + chunk], a[first[inv[i:i + chunk]]]) for i in range(0, a.shape[0], chunk))
    if same:
        return a[first], inv
    uniq, inv = np.unique(a, axis=0, return_inverse=True)
    return uniq, np.asarray(inv).ravel()


def compress(cs: ChoiceSets) -> tuple[ChoiceSets, sparse.csr_matrix]:
    """Identical choice sets (same rows, same chosen) merged into one pattern.

    Returns the pattern choice sets and the (n_patterns × n_participants) count matrix M, so a
    bootstrap replicate's pattern weights are ``M @ counts``. Designs of dummies only (arms,
    positions) shrink from thousands of strata to a few hundred patterns.
    """
    S, p = cs.n_strata, cs.X.shape[1]
    sizes = np.bincount(cs.stratum, minlength=S)
    pos = np.arange(cs.stratum.size) - cs.starts[cs.stratum]
    # each stratum as one row: its alternatives' features, chosen flag and a presence flag
    wide = np.zeros((S, int(sizes.max()), p + 2))
    wide[cs.stratum, pos, :p] = cs.X
    wide[cs.stratum, pos, p] = cs.chosen
    wide[cs.stratum, pos, p + 1] = 1.0
    flat = wide.reshape(S, -1)
    uniq, inv = _unique_rows(flat)
    u = uniq.reshape(len(uniq), -1, p + 2)
    present = u[:, :, p + 1] == 1.0
    stratum, _ = np.nonzero(present)
    small = ChoiceSets(
        X=u[present][:, :p], chosen=u[present][:, p] == 1, stratum=stratum.astype(np.int64),
        participant=np.zeros(len(uniq), dtype=np.int64), names=cs.names,
    )
    n_part = int(cs.participant.max()) + 1 if S else 0
    m = sparse.csr_matrix((np.ones(S), (inv, cs.participant)), shape=(len(uniq), n_part))
    return small, m


def clogit_draws(
    cs: ChoiceSets,
    start: np.ndarray,
    counts: np.ndarray,
    select: slice | list[int] = slice(None),
    *,
    penalised: bool = False,
) -> np.ndarray:
    """Bootstrap draws (n_boot, k) of the selected conditional-logit coefficients.

    Each replicate refits from ``start`` (warm start) with participant-count weights, on the
    compressed patterns when that shrinks the problem. ``penalised``: the full-data fit was
    penalised, so every replicate is too (same estimator); otherwise a replicate whose MLE
    diverges gets the penalised fit (a large finite value in the tail where it belongs, not a
    dropped replicate). A replicate that still fails is a NaN row.
    """
    small, m = compress(cs)
    use_small = small.n_strata < 0.5 * cs.n_strata
    counts = counts[:, : m.shape[1]] if use_small else counts
    weights = np.asarray((m @ counts.T).T) if use_small else counts[:, cs.participant]
    target = small if use_small else cs
    k = len(np.arange(cs.X.shape[1])[select])
    out = np.full((counts.shape[0], k), np.nan)
    penalty: Literal["auto", "always"] = "always" if penalised else "auto"
    for b in progress(range(counts.shape[0]), counts.shape[0], f"bootstrap draws ({k} coefficients)"):
        try:
            with np.errstate(all="ignore"):
                if use_small:
                    fit = fit_clogit(target, weights[b], start, penalty=penalty, robust=False, check_separation=False)
                else:
                    fit = fit_clogit(target, weights[b], start, max_iter=2, strict=False, penalty=penalty, robust=False,
                                     check_separation=False)
                out[b] = fit.params[select]
        except (FitError, np.linalg.LinAlgError, FloatingPointError):
            pass
    return out


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


# ---------------------------------------------------------------------------------------------
# divergences, reliability, correlations


def jsd(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, base: float = 2.0) -> float:
    """Jensen–Shannon divergence of two discrete distributions (normalised; base 2 → [0, 1])."""
    from scipy.spatial.distance import jensenshannon

    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape or a.sum() <= 0 or b.sum() <= 0 or np.any(a < 0) or np.any(b < 0):
        raise ValueError("jsd needs two non-negative vectors of the same length with positive sums")
    return float(jensenshannon(a, b, base=base)) ** 2  # scipy gives the distance, its square root


def weighted_corr(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """Pearson correlation with frequency weights (bootstrap counts)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=float)
    sw = w.sum()
    if sw <= 0:
        return float("nan")
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    dx, dy = x - mx, y - my
    vx, vy = (w * dx * dx).sum(), (w * dy * dy).sum()
    if vx <= 0 or vy <= 0:
        return float("nan")
    return float((w * dx * dy).sum() / np.sqrt(vx * vy))


def weighted_mean(x: np.ndarray, w: np.ndarray | None = None) -> float:
    x = np.asarray(x, dtype=float)
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=float)
    sw = w.sum()
    return float((w * x).sum() / sw) if sw > 0 else float("nan")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall τ-b (NaN when either side is constant)."""
    t = sps.kendalltau(np.asarray(x, float), np.asarray(y, float)).statistic
    return float(t)
