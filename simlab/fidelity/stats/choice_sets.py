"""Choice sets, the data of a conditional logit (one chosen alternative per set), with the sparse form
and the pattern compression that keep many-arm designs and bootstrap refits cheap."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import sparse

__all__ = ["SPARSE_MAX_DENSITY", "SPARSE_MIN_CELLS", "ChoiceSets", "compress"]


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
        return np.asarray(self.X[self.chosen_idx])

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
