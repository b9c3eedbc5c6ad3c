"""The participant bootstrap every analysis shares: a seeded matrix of draw counts per participant,
so a statistic is recomputed with participant weights instead of rebuilding data frames."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from simlab.fidelity.registry import BootstrapWeights
from simlab.fidelity.result import Estimate
from simlab.fidelity.stats.errors import FitError
from simlab.fidelity.stats.progress import progress

__all__ = ["MAX_FAILED_SHARE", "CountMatrix", "Participants", "bootstrap", "bootstrap_counts", "estimate", "percentile_ci"]


def bootstrap_counts(n_participants: int, n_boot: int, seed: int, dtype: type[np.generic] = np.float64) -> np.ndarray:
    """(n_boot, n_participants) how often each participant is drawn in each bootstrap replicate.

    ``dtype=np.uint8`` stores the same counts in an eighth of the memory; a count above 255 (in
    practice never: it needs 256 of n draws to hit one participant) widens the matrix instead."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n_boot, n_participants), dtype=dtype)
    for b in range(n_boot):
        draw = rng.integers(0, n_participants, size=n_participants)
        row = np.bincount(draw, minlength=n_participants)
        if np.issubdtype(out.dtype, np.integer) and row.size and row.max() > np.iinfo(out.dtype).max:
            out = out.astype(np.int64)
        out[b] = row
    return out


_ROW_BLOCK = 16
"""Replicates turned into float64 at once by ``CountMatrix @ x``."""


class CountMatrix:
    """The (n_boot, n_participants) bootstrap weights, stored as small integer draw counts (and the
    raking weights apart) and read as float64: at Chatbot-Arena scale the float64 matrix alone was
    160 MB. Indexing (``m[b]``, ``m[b, cols]``, ``m[i:j]``) returns the float64 values the full
    matrix would hold (count × weight, the same product); ``m @ x`` multiplies a block of
    replicates at a time.

    >>> m = CountMatrix(np.array([[2, 0], [1, 1]], dtype=np.uint8), np.array([0.5, 2.0]))
    >>> m[0].tolist(), (m @ np.array([1.0, 1.0])).tolist(), m.shape
    ([1.0, 0.0], [1.0, 2.5], (2, 2))
    """

    def __init__(self, draws: np.ndarray, weights: np.ndarray | None = None) -> None:
        self.draws = draws
        self.weights = weights

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.draws.shape[0]), int(self.draws.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        out = np.asarray(self.draws[key], dtype=np.float64)
        if self.weights is not None:
            # the weights broadcast to the matrix's shape (a view), indexed the same way
            out = out * np.broadcast_to(self.weights, self.draws.shape)[key]
        return out

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        n = self.shape[0]
        if n == 0:
            return np.asarray(np.zeros(self.shape) @ x)
        return np.concatenate([np.asarray(self[i:i + _ROW_BLOCK] @ x) for i in range(0, n, _ROW_BLOCK)])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The whole float64 matrix (for checks; the analyses read it a block at a time)."""
        return self[:] if dtype is None else self[:].astype(dtype)


@dataclass(frozen=True)
class Participants:
    """A fixed participant index shared by every analysis, so paired sources resample together.

    With raking ``weights`` (one per participant) the replicates' ``counts`` are draw counts × weights
    (a weighted participant bootstrap: the same draws as unweighted, so the two pair) and ``point``
    gives the point estimate's weights; without, ``point`` is all ones."""

    ids: tuple[str, ...]
    counts: CountMatrix  # (n_boot, n_participants)
    weights: np.ndarray | None = None  # (n_participants,) raking weights, already in ``counts``

    @classmethod
    def from_ids(cls, ids: Sequence[object], n_boot: int, seed: int,
                 weights: Mapping[str, float] | None = None) -> Participants:
        """``weights``: raking weight per participant id (every id needs one)."""
        uniq = tuple(sorted({str(i) for i in ids if not pd.isna(i)}))
        counts = bootstrap_counts(len(uniq), n_boot, seed, np.uint8)
        if weights is None:
            return cls(uniq, CountMatrix(counts))
        missing = [p for p in uniq if p not in weights]
        if missing:
            raise ValueError(f"{len(missing)} participant(s) have no weight (e.g. {missing[0]!r})")
        w = np.array([float(weights[p]) for p in uniq])
        return cls(uniq, CountMatrix(counts, w), w)

    def point(self, part: np.ndarray) -> np.ndarray:
        """The point estimate's weight of each row whose participant positions are ``part``: its
        participant's raking weight, or 1 when unweighted."""
        return np.ones(len(part)) if self.weights is None else self.weights[np.asarray(part, dtype=np.int64)]

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
    stat: Callable[[np.ndarray], float | np.ndarray], row_participant: np.ndarray, counts: np.ndarray | BootstrapWeights
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
