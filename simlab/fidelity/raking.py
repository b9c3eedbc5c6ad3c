"""Raking weights: the participants reweighted to a target population's margins (``--weights``).

The margins file is a CSV with columns ``attribute, level, share`` (shares sum to 1 per attribute,
e.g. census age and gender shares). Raking (iterative proportional fitting) scales the human
participants' weights, one attribute at a time, until the weighted share of every level equals its
margin; weights above ``MAX_WEIGHT`` × their mean are cut there and the rest raked again (trimming), so
one participant cannot carry the estimate. A simulated copy takes its human's weight (same
participant_id); simulated participants with no human copy are raked separately to the same margins.
Weights are scaled to mean 1 in each group.

>>> import pandas as pd
>>> people = pd.DataFrame({"age": ["young", "old", "old", "old"]})
>>> margins = {"age": {"young": 0.5, "old": 0.5}}
>>> rake(people, margins).weights.round(3).tolist()
[2.0, 0.667, 0.667, 0.667]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from simlab.errors import InputError
from simlab.fidelity.attributes import attribute_names, participant_attributes
from simlab.fidelity.subgroups_result import WeightsSummary
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["MAX_WEIGHT", "NOT_WEIGHTED", "SHARE_TOLERANCE", "UNWEIGHTED_ANALYSES", "Margins", "Raked",
           "participant_weights", "rake", "read_margins"]

MAX_WEIGHT = 5.0
"""Trimming cap: no weight above this many times the mean weight."""
SHARE_TOLERANCE = 1e-6
"""How far a margin's shares may sum from 1."""
TOLERANCE = 1e-10
MAX_ITER = 1000
MAX_TRIM_ROUNDS = 50

UNWEIGHTED_ANALYSES = frozenset({"topics", "user_traits", "gen_errors"})
"""Analyses that run unweighted under ``--weights`` (``NOT_WEIGHTED`` says why)."""

NOT_WEIGHTED: dict[str, str] = {
    "topics": "run unweighted: its permutation bootstrap rebuilds datasets from whole draw counts and its "
              "clustering and classifier fits take no weights",
    "user_traits": "run unweighted: it draws its own bootstrap",
    "gen_errors": "run unweighted: descriptive counts of generation errors",
    "dynamics (turn slopes)": "unweighted: the within-conversation least-squares fit with cluster-robust (CR2) "
                              "intervals takes no raking weights; the other dynamics measures are weighted",
    "agreement (placebo, variance split, mixed model)": "point estimates unweighted (their intervals come from "
                                                        "the weighted bootstrap): read them unweighted",
    "p-values of the conditional-logit fits (hierarchy, position, traits) and of the position excess":
        "from the fits' participant-clustered covariance with the raking weights as frequency weights (mean 1); "
        "the CIs are the weighted participant bootstrap",
}
"""What ``--weights`` does not weight, or weights approximately, and why (written to the result JSON)."""

Margins = Mapping[str, Mapping[str, float]]
"""attribute → level → share."""


@dataclass(frozen=True)
class _Row:
    row: int
    attribute: str
    level: str
    share: float


def read_margins(path: str | Path) -> tuple[dict[str, dict[str, float]], dict[tuple[str, str], int]]:
    """The margins in ``path`` and the file row of each (attribute, level); bad rows raise ``InputError``
    naming the file, row and field (rows count the header as 1)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", file=p)
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"not a readable CSV: {exc}", file=p) from exc
    for col in ("attribute", "level", "share"):
        if col not in frame.columns:
            raise InputError("missing required column", file=p, field=col)
    rows: list[_Row] = []
    for i, rec in enumerate(frame.to_dict("records")):
        row = i + 2
        attr, level, text = (str(rec[c]).strip() for c in ("attribute", "level", "share"))
        for col, v in (("attribute", attr), ("level", level)):
            if not v:
                raise InputError("missing value", file=p, row=row, field=col)
        try:
            share = float(text)
        except ValueError:
            raise InputError(f"{text!r} is not a number", file=p, row=row, field="share") from None
        if not math.isfinite(share) or share < 0:
            raise InputError(f"{text!r}: a share must be a finite number >= 0", file=p, row=row, field="share")
        rows.append(_Row(row, attr, level, share))
    if not rows:
        raise InputError("no margins (the file has no rows)", file=p)
    margins: dict[str, dict[str, float]] = {}
    where: dict[tuple[str, str], int] = {}
    for r in rows:
        if (r.attribute, r.level) in where:
            raise InputError(f"{r.attribute} = {r.level!r} is given twice (first on row {where[r.attribute, r.level]})",
                             file=p, row=r.row, field="level")
        margins.setdefault(r.attribute, {})[r.level] = r.share
        where[r.attribute, r.level] = r.row
    for attr, levels in margins.items():
        total = sum(levels.values())
        if abs(total - 1.0) > SHARE_TOLERANCE:
            last = max(where[attr, lv] for lv in levels)
            raise InputError(f"the shares of {attr} sum to {total:.6g}, not 1", file=p, row=last, field="share")
    return margins, where


@dataclass(frozen=True)
class Raked:
    """Raking weights of one group of participants (mean 1)."""

    weights: np.ndarray
    iterations: int
    trimmed: int
    max_error: float
    """The largest |weighted share − margin| left (0 up to ``TOLERANCE`` unless trimming bites)."""


def _ipf(codes: list[np.ndarray], targets: list[np.ndarray], w: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Iterative proportional fitting from ``w``: per attribute, scale each level's weights to its target share."""
    err = math.inf
    for it in range(1, MAX_ITER + 1):
        for c, t in zip(codes, targets):
            have = np.bincount(c, weights=w, minlength=t.size)
            factor = np.divide(t * w.sum(), have, out=np.zeros_like(t), where=have > 0)
            w = w * factor[c]
        err = max(float(np.abs(np.bincount(c, weights=w, minlength=t.size) / w.sum() - t).max())
                  for c, t in zip(codes, targets))
        if err < TOLERANCE:
            return w, it, err
    return w, MAX_ITER, err


def rake(levels: pd.DataFrame, margins: Margins, *, cap: float = MAX_WEIGHT) -> Raked:
    """Raking weights of the rows of ``levels`` (one text column per attribute of ``margins``) to the
    margins, trimmed at ``cap`` × the mean weight. Every level with a positive share must have a row and
    every row's level a margin (``ValueError`` otherwise: the weight would be infinite, or zero)."""
    codes, targets = [], []
    for attr, shares in margins.items():
        names = list(shares)
        idx = pd.Index(names).get_indexer(levels[attr].astype(str))
        if (idx < 0).any():
            bad = levels[attr].astype(str)[idx < 0].iloc[0]
            raise ValueError(f"{int((idx < 0).sum())} participant(s) have {attr} = {bad!r}, which the margins do not "
                             "name (give it a share, 0 to leave them out on purpose)")
        t = np.array([shares[n] for n in names], dtype=float)
        present = np.bincount(idx, minlength=len(names)) > 0
        empty = [n for n, ok, s in zip(names, present, t) if not ok and s > 0]
        if empty:
            raise ValueError(f"no participant has {attr} = {empty[0]!r} (share {shares[empty[0]]:g}): its weight would "
                             "be infinite")
        codes.append(idx)
        targets.append(t)
    w = np.ones(len(levels))
    total_iter, trimmed = 0, 0
    for _ in range(MAX_TRIM_ROUNDS):
        w, it, _err = _ipf(codes, targets, w)
        total_iter += it
        w = w / w.mean()
        over = w > cap * (1 + 1e-9)
        if not over.any():
            break
        trimmed = max(trimmed, int(over.sum()))
        w = _capped(w, cap)
    else:  # the margins and the cap disagree: the cap wins, and max_error says how far the margins are missed
        w = _capped(w, cap)
    err = max(float(np.abs(np.bincount(c, weights=w, minlength=t.size) / w.sum() - t).max())
              for c, t in zip(codes, targets)) if codes else 0.0
    return Raked(w / w.mean(), total_iter, trimmed, err)


def _capped(w: np.ndarray, cap: float) -> np.ndarray:
    """``w`` scaled to mean 1 with no weight above ``cap`` (cut, rescaled, until it holds)."""
    for _ in range(100):
        w = np.minimum(w / w.mean(), cap)
        if w.max() / w.mean() <= cap * (1 + 1e-9):
            break
    return np.asarray(w / w.mean(), dtype=float)


def participant_weights(tables: Tables, margins: Margins, *, margins_file: str | Path | None = None,
                        where: Mapping[tuple[str, str], int] | None = None) -> tuple[dict[str, float], WeightsSummary]:
    """Raking weight per participant_id of ``tables`` and a summary for the result JSON.

    Humans are raked to ``margins``; a simulated participant with a human copy (same participant_id) shares
    its weight; the other simulated participants are raked separately to the same margins. Problems raise
    ``InputError`` naming ``margins_file`` and, with ``where`` (``read_margins``'s rows), the row and field.
    """
    file = None if margins_file is None else Path(margins_file)
    have = attribute_names(tables)
    for attr in margins:
        if attr not in have:
            row = None if where is None else min(r for (a, _), r in where.items() if a == attr)
            listed = ", ".join(have) if have else "none: the data have no participant attributes"
            raise InputError(f"no participant has the attribute {attr!r} (attributes: {listed})", file=file, row=row,
                             field="attribute")
    attrs = participant_attributes(tables, list(margins))
    for (attr, level), row in (where or {}).items():
        if margins[attr][level] > 0 and not (attrs[attr] == level).any():
            raise InputError(f"no participant has {attr} = {level!r}: its weight would be infinite", file=file,
                             row=row, field="level")
    human = attrs[attrs["source"] == HUMAN].drop_duplicates("participant_id")
    rest = attrs[(attrs["source"] != HUMAN) & ~attrs["participant_id"].isin(human["participant_id"])]
    rest = rest.drop_duplicates("participant_id")
    out: dict[str, float] = {}
    summary = WeightsSummary(margins_file=None if file is None else str(file), attributes=list(margins))
    for who, group in (("human", human), ("simulated participants without a human copy", rest)):
        if group.empty:
            continue
        try:
            raked = rake(group.reset_index(drop=True), margins)
        except ValueError as exc:
            raise InputError(f"raking the {who}: {exc}", file=file, field="level") from exc
        out.update(zip(group["participant_id"].astype(str), raked.weights.tolist()))
        if who == "human" or human.empty:
            w = raked.weights
            summary = summary.model_copy(update={
                "n_participants": int(w.size), "effective_n": float(w.sum() ** 2 / (w ** 2).sum()),
                "max_weight": float(w.max()), "trimmed": raked.trimmed, "iterations": raked.iterations})
    return out, summary
