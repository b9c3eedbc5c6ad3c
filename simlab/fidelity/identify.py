"""Whether a model's coefficients are identified, decided from the data's structure before any solve.

Solvers and BLAS kernels differ between CPUs: the same rank-deficient matrix raises ``LinAlgError`` on
one and returns a finite, meaningless answer on another. So every fitted model in ``simlab.fidelity``
asks these questions of its design first, with exact comparisons where the structure is discrete
(a feature that never varies, a level never chosen) and a stated relative tolerance where it is not
(collinear features), and the verdict is the same on every CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.linalg import solve_triangular
from scipy.optimize import linprog

__all__ = [
    "RANK_TOL",
    "constant_columns",
    "dependent_columns",
    "describe_dependence",
    "separating_direction",
]

RANK_TOL = 1e-10
"""A column whose share of variance left after projecting it on the columns kept before it is below
this is a combination of them (the design's columns scaled to unit variance; 1e-10 in variance is
1e-5 in norm). Rounding differences between BLAS kernels are ~1e-15, far below; features a
researcher could tell apart sit far above."""


def constant_columns(x: np.ndarray, starts: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Per column of ``x`` (rows grouped in consecutive runs beginning at ``starts``): True when it
    takes one value within every group that ``keep`` (a bool per group) retains. Exact comparisons:
    no arithmetic, so no rounding."""
    if x.shape[0] == 0:
        return np.ones(x.shape[1], dtype=bool)
    same = np.maximum.reduceat(x, starts, axis=0) == np.minimum.reduceat(x, starts, axis=0)
    if keep is not None:
        same = same[np.asarray(keep, dtype=bool)]
    return np.asarray(np.all(same, axis=0), dtype=bool)


def dependent_columns(gram: np.ndarray, tol: float = RANK_TOL) -> dict[int, np.ndarray]:
    """Columns of a design that are linear combinations of columns before them, from its Gram
    matrix (X'WX, or a centred version of it).

    Returns {column: coefficients on the columns kept before it} (an empty dict: full rank). Columns
    are taken in order, so the first of two collinear features is kept and the later one reported. A
    column with zero variance is dependent on nothing (coefficients all 0)."""
    g = np.asarray(gram, dtype=float)
    p = g.shape[0]
    d = np.diag(g).copy()
    scale = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    c = g * scale[:, None] * scale[None, :]
    if np.all(d > 0):
        # fast path: each column's residual share is at least the smallest eigenvalue of c, so above the
        # tolerance no column can be dependent (the loop below would find none)
        lowest = float(np.linalg.eigvalsh(c)[0])
        if np.isfinite(lowest) and lowest >= tol:
            return {}
    kept: list[int] = []
    low = np.zeros((0, 0))
    out: dict[int, np.ndarray] = {}
    for j in range(p):
        if d[j] <= 0:
            out[j] = np.zeros(len(kept))
            continue
        if kept:
            v = solve_triangular(low, c[kept, j], lower=True)
            resid = float(c[j, j] - v @ v)
        else:
            v = np.zeros(0)
            resid = float(c[j, j])
        if resid < tol:
            # coefficients of the combination, in the original (unscaled) units
            coef = solve_triangular(low.T, v, lower=False) if kept else np.zeros(0)
            out[j] = coef * np.sqrt(d[j]) / np.sqrt(d[kept]) if kept else coef
            continue
        row = np.r_[v, np.sqrt(resid)]
        low = np.vstack([np.hstack([low, np.zeros((low.shape[0], 1))]), row[None, :]])
        kept.append(j)
    return out


def describe_dependence(dependent: dict[int, np.ndarray], names: Sequence[str]) -> str:
    """Words for ``dependent_columns``' answer: which features are not identified and why."""
    parts = []
    for j, coef in dependent.items():
        kept = [k for k in range(j) if k not in dependent]
        involved = [names[k] for k, a in zip(kept, coef) if abs(a) > 1e-6]
        if not involved:
            parts.append(f"{names[j]} does not vary")
        else:
            parts.append(f"{names[j]} is a linear combination of {', '.join(involved)}")
    return "; ".join(parts)


def separating_direction(diffs: np.ndarray) -> np.ndarray | None:
    """A direction β ≠ 0 with diffs @ β ≥ 0 in every row and > 0 in some, or None when there is none.

    ``diffs`` holds, per choice set and alternative not chosen, x_chosen − x_alternative. Such a β
    makes the conditional-logit likelihood grow without bound along it (complete or quasi-complete
    separation: e.g. a level never chosen), so the maximum-likelihood estimate does not exist. Found
    by a linear programme (scipy's HiGHS): maximise Σ diffs @ β subject to diffs @ β ≥ 0 and
    −1 ≤ β ≤ 1. Columns are scaled to a maximum of 1 first; a separating β scales up to the box
    (max |β| = 1), while without separation the optimum is β = 0 (any solver tolerance leaves it
    orders of magnitude below the 0.5 threshold). The design must be identified first
    (``dependent_columns`` empty): a direction in its null space would count as one."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return None
    d = d[np.any(d != 0, axis=1)]
    if d.shape[0] == 0:
        return None
    d = np.unique(d, axis=0)
    colmax = np.max(np.abs(d), axis=0)
    active = colmax > 0
    if not active.any():
        return None
    ds = d[:, active] / colmax[active]
    k = ds.shape[1]
    res = linprog(-ds.sum(axis=0), A_ub=-ds, b_ub=np.zeros(ds.shape[0]), bounds=[(-1.0, 1.0)] * k, method="highs")
    if res.status != 0 or res.x is None:
        return None
    beta = np.asarray(res.x)
    if np.max(np.abs(beta)) < 0.5 or -res.fun <= 1e-9:
        return None
    out = np.zeros(d.shape[1])
    out[active] = beta / colmax[active]
    return out
