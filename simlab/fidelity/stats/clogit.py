"""The conditional logit (McFadden) solver: Newton with frequency weights per choice set, tested equal
to statsmodels' ``ConditionalLogit``, because 200 bootstrap refits with statsmodels' per-group loop are
far too slow at PRISM-X scale; identification and separation are decided from the design first."""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import expit

from simlab.fidelity.identify import (
    RANK_TOL,
    constant_columns,
    dependent_columns,
    describe_dependence,
    separating_direction,
)
from simlab.fidelity.registry import BootstrapWeights
from simlab.fidelity.stats.choice_sets import ChoiceSets, _scale_rows, compress
from simlab.fidelity.stats.errors import FitError
from simlab.fidelity.stats.progress import progress
from simlab.fidelity.stats.robust import ClogitFit, cluster_cov

__all__ = ["SEPARATION_LIMIT", "SeparationError", "check_identified", "clogit_draws", "fit_clogit", "separation_diffs"]


SEPARATION_LIMIT = 15.0
"""A maximum-likelihood coefficient beyond this (odds ratio > 3·10⁶) means the likelihood has
no maximum (perfect or quasi-complete separation): the penalised fit is used instead."""


class SeparationError(FitError):
    """The maximum-likelihood estimate diverges (some choices are perfectly predicted)."""



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
    return np.asarray(cs.X[cs.chosen_idx[cs.stratum[rows]]] - cs.X[rows])


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


_DRAW_BLOCK = 16
"""Bootstrap draws whose pattern weights are summed at once (``clogit_draws``)."""


def clogit_draws(
    cs: ChoiceSets,
    start: np.ndarray,
    counts: np.ndarray | BootstrapWeights,
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
    n_boot = counts.shape[0]
    weights: np.ndarray | None = None
    if use_small and n_boot:
        # M @ counts' in blocks of draws: the sparse product copies its dense operand into C order, a
        # whole (n_participants × n_boot) copy at once (160 MB at Chatbot-Arena scale); the same sums
        weights = np.vstack([np.asarray((m @ counts[i:i + _DRAW_BLOCK, : m.shape[1]].T).T)
                             for i in range(0, n_boot, _DRAW_BLOCK)])
    target = small if use_small else cs
    k = len(np.arange(cs.X.shape[1])[select])
    out = np.full((n_boot, k), np.nan)
    penalty: Literal["auto", "always"] = "always" if penalised else "auto"
    for b in progress(range(n_boot), n_boot, f"bootstrap draws ({k} coefficients)"):
        try:
            with np.errstate(all="ignore"):
                if weights is not None:
                    fit = fit_clogit(target, weights[b], start, penalty=penalty, robust=False, check_separation=False)
                else:
                    # the stratum weights of one replicate at a time (not an n_boot × n_rows matrix)
                    fit = fit_clogit(target, counts[b][cs.participant], start, max_iter=2, strict=False, penalty=penalty, robust=False,
                                     check_separation=False)
                out[b] = fit.params[select]
        except (FitError, np.linalg.LinAlgError, FloatingPointError):
            pass
    return out
