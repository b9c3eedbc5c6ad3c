"""Descriptive measures the analyses share: Jensen–Shannon divergence, correlations and means with
bootstrap frequency weights, Kendall's τ-b."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["jsd", "kendall_tau", "weighted_corr", "weighted_mean"]


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
