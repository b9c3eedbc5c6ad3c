"""Small statistics helpers the field's libraries lack.

- ``bootstrap_counts``: a seeded bootstrap over participants as a matrix of draw counts, so a
  statistic is recomputed with participant weights instead of rebuilding data frames.
- ``ChoiceSets`` / ``fit_clogit``: a vectorised Newton solver for the conditional logit
  (McFadden) likelihood with frequency weights per choice set. It is validated against
  ``statsmodels.discrete.conditional_models.ConditionalLogit`` (tests assert equal params to
  1e-6); it exists because 200 bootstrap refits with statsmodels' per-group Python loop are far
  too slow at PRISM-X scale.
- ``jsd``, ``icc_2_1``, ``percentile_ci``, weighted correlations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sps

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
    for b in range(counts.shape[0]):
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

    def check(self) -> None:
        s = self.stratum
        if s.size and (np.any(np.diff(s) < 0) or s[0] != 0 or s[-1] != self.n_strata - 1):
            raise ValueError("strata must be sorted and numbered 0..S-1")
        per = np.bincount(s[self.chosen], minlength=self.n_strata)
        if np.any(per != 1):
            raise ValueError("each stratum needs exactly one chosen alternative")


@dataclass(frozen=True)
class ClogitFit:
    params: np.ndarray
    cov: np.ndarray
    loglik: float
    n_iter: int

    @property
    def bse(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0, None))

    @property
    def pvalues(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return 2 * sps.norm.sf(np.abs(self.params / self.bse))


def _clogit_pieces(
    cs: ChoiceSets, beta: np.ndarray, w: np.ndarray, starts: np.ndarray, need_hess: bool
) -> tuple[float, np.ndarray, np.ndarray | None]:
    eta = cs.X @ beta
    m = np.maximum.reduceat(eta, starts)
    e = np.exp(eta - m[cs.stratum])
    den = np.add.reduceat(e, starts)
    p = e / den[cs.stratum]
    xbar = np.add.reduceat(p[:, None] * cs.X, starts)
    xc = cs.x_chosen
    ll = float(np.sum(w * (eta[cs.chosen_idx] - m - np.log(den))))
    grad = (w[:, None] * (xc - xbar)).sum(axis=0)
    hess = None
    if need_hess:
        wr = w[cs.stratum] * p
        hess = -((cs.X * wr[:, None]).T @ cs.X - (xbar * w[:, None]).T @ xbar)
    return ll, grad, hess


def _newton_step(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    # Whether a rank-deficient matrix is "exactly singular" depends on the BLAS build and the
    # CPU's kernels, so every solve turns LinAlgError into the reasoned FitError.
    try:
        return np.linalg.solve(-hess, grad)
    except np.linalg.LinAlgError as exc:
        raise FitError(f"singular information matrix (a feature does not vary within strata): {exc}") from exc


def fit_clogit(
    cs: ChoiceSets,
    weights: np.ndarray | None = None,
    start: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-10,
    strict: bool = True,
) -> ClogitFit:
    """Maximum-likelihood conditional logit by Newton–Raphson with step halving.

    ``weights`` are frequency weights per stratum (bootstrap counts): a weight of 2 is the same
    as the stratum appearing twice. Raises ``FitError`` on a singular information matrix
    (e.g. a dummy that never varies within a stratum) or non-convergence.
    """
    p = cs.X.shape[1]
    w = np.ones(cs.n_strata) if weights is None else np.asarray(weights, dtype=float)
    beta = np.zeros(p) if start is None else np.array(start, dtype=float)
    starts = cs.starts
    if cs.n_strata == 0 or p == 0:
        raise FitError("no choice sets or no features")
    ll, grad, hess = _clogit_pieces(cs, beta, w, starts, True)
    assert hess is not None  # asked for
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is read after the loop
        step = _newton_step(hess, grad)
        t = 1.0
        for _ in range(30):
            new = beta + t * step
            ll_new, g_new, h_new = _clogit_pieces(cs, new, w, starts, True)
            assert h_new is not None
            if np.isfinite(ll_new) and ll_new >= ll - 1e-12 * abs(ll):
                break
            t /= 2
        else:
            raise FitError("line search failed")
        beta, ll, grad, hess = new, ll_new, g_new, h_new
        if np.max(np.abs(t * step)) < 1e-9 or float(grad @ _newton_step(hess, grad)) < tol:
            break
    else:
        if strict:
            raise FitError(f"no convergence after {max_iter} Newton steps")
    if np.max(np.abs(beta)) > 25:
        raise FitError("coefficients diverge (perfect separation)")
    try:
        cov = np.linalg.inv(-hess)
    except np.linalg.LinAlgError as exc:
        raise FitError(f"singular information matrix: {exc}") from exc
    if np.linalg.cond(-hess) > 1e12:
        raise FitError("information matrix is (near) singular: a feature does not vary within strata")
    return ClogitFit(beta, cov, ll, it)


def compress(cs: ChoiceSets) -> tuple[ChoiceSets, sparse.csr_matrix]:
    """Identical choice sets (same rows, same chosen) merged into one pattern.

    Returns the pattern choice sets and the (n_patterns × n_participants) count matrix M, so a
    bootstrap replicate's pattern weights are ``M @ counts``. Designs of dummies only (arms,
    positions) shrink from thousands of strata to a few hundred patterns.
    """
    S, p = cs.n_strata, cs.X.shape[1]
    sizes = np.bincount(cs.stratum, minlength=S)
    pos = np.arange(cs.stratum.size) - cs.starts[cs.stratum]
    wide = np.full((S, int(sizes.max()), p + 1), -1e300)
    wide[cs.stratum, pos, :p] = cs.X
    wide[cs.stratum, pos, p] = cs.chosen
    uniq, inv = np.unique(wide.reshape(S, -1), axis=0, return_inverse=True)
    inv = np.asarray(inv).ravel()
    u = uniq.reshape(len(uniq), -1, p + 1)
    present = u[:, :, p] > -1e299
    stratum, _ = np.nonzero(present)
    small = ChoiceSets(
        X=u[present][:, :p], chosen=u[present][:, p] == 1, stratum=stratum.astype(np.int64),
        participant=np.zeros(len(uniq), dtype=np.int64), names=cs.names,
    )
    n_part = int(cs.participant.max()) + 1 if S else 0
    m = sparse.csr_matrix((np.ones(S), (inv, cs.participant)), shape=(len(uniq), n_part))
    return small, m


def clogit_draws(cs: ChoiceSets, start: np.ndarray, counts: np.ndarray, select: slice | list[int] = slice(None)) -> np.ndarray:
    """Bootstrap draws (n_boot, k) of the selected conditional-logit coefficients.

    Each replicate refits from ``start`` (warm start) with participant-count weights, on the
    compressed patterns when that shrinks the problem. A failed replicate is a NaN row.
    """
    small, m = compress(cs)
    use_small = small.n_strata < 0.5 * cs.n_strata
    counts = counts[:, : m.shape[1]] if use_small else counts
    weights = np.asarray((m @ counts.T).T) if use_small else counts[:, cs.participant]
    target = small if use_small else cs
    k = len(np.arange(cs.X.shape[1])[select])
    out = np.full((counts.shape[0], k), np.nan)
    for b in range(counts.shape[0]):
        try:
            with np.errstate(all="ignore"):
                fit = fit_clogit(target, weights[b], start) if use_small else fit_clogit(target, weights[b], start, max_iter=2, strict=False)
                out[b] = fit.params[select]
        except (FitError, np.linalg.LinAlgError, FloatingPointError):
            pass
    return out


def lr_test(full: ClogitFit, restricted: ClogitFit, df: int) -> float:
    """Likelihood-ratio test p-value of ``df`` restrictions."""
    stat = max(0.0, 2 * (full.loglik - restricted.loglik))
    return float(sps.chi2.sf(stat, df))


def wald_test(fit: ClogitFit, idx: Sequence[int]) -> float:
    """Wald test p-value that the coefficients ``idx`` are jointly zero."""
    idx = list(idx)
    b = fit.params[idx]
    v = fit.cov[np.ix_(idx, idx)]
    stat = float(b @ np.linalg.solve(v, b))
    return float(sps.chi2.sf(stat, len(idx)))


# ---------------------------------------------------------------------------------------------
# divergences, reliability, correlations


def jsd(p: Sequence[float] | np.ndarray, q: Sequence[float] | np.ndarray, base: float = 2.0) -> float:
    """Jensen–Shannon divergence of two discrete distributions (normalised; base 2 → [0, 1])."""
    from scipy.spatial.distance import jensenshannon

    a, b = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if a.shape != b.shape or a.sum() <= 0 or b.sum() <= 0 or np.any(a < 0) or np.any(b < 0):
        raise ValueError("jsd needs two non-negative vectors of the same length with positive sums")
    return float(jensenshannon(a, b, base=base)) ** 2  # scipy gives the distance, its square root


def icc_2_1(ratings: np.ndarray | pd.DataFrame) -> float:
    """ICC(2,1) of Shrout & Fleiss (1979): two-way random effects, absolute agreement, one rater.

    ``ratings`` is targets × raters with no missing cells.
    """
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2 or not np.all(np.isfinite(y)):
        raise ValueError("icc_2_1 needs a complete targets × raters matrix with at least 2 of each")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    bms = ss_rows / (n - 1)
    jms = ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    return float((bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n))


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
