"""The simulator leaderboard: every simulated source beside the humans on one fidelity index (0–100).

Each component is a vector statistic of a source (a share or mean per arm, per display position or per
conversation length), every one a ratio of participant sums, so the participant bootstrap is one matrix
product of the draw counts with those sums: no refit per draw. A source's score on a component is
100 · (1 − d²(source, humans) / d²(uniform-random participant, humans)), with d² the squared distance
minus its sampling noise; the index averages a row's components. docs/fidelity.md ("The fidelity index")
defines every piece so a reader can recompute it.

>>> from simlab.fidelity.synthetic import make_synthetic
>>> lb = leaderboard(make_synthetic(30, seed=1, preference_sd=1.0), n_boot=50, details=False, topics=None)
>>> [row.source for row in lb.leaderboard if row.kind == "humans"]
['humans']
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy.stats import norm

from simlab.errors import InputError
from simlab.fidelity.analyses._prep import (
    MIN_PARTICIPANTS,
    arm_order,
    drop_gen_error,
    gen_error_rows,
    judgements_frame,
)
from simlab.fidelity.analyses.agreement.ceiling import _ceiling_pairs
from simlab.fidelity.analyses.agreement.common import RATINGS, _with_repeat
from simlab.fidelity.io import normalise
from simlab.fidelity.leaderboard_result import (
    HUMANS_ROW,
    Component,
    ComponentInfo,
    HumanSplit,
    Leaderboard,
    LeaderboardRow,
    PairwiseTest,
)
from simlab.fidelity.registry import BootstrapWeights
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.stats import Participants, estimate
from simlab.fidelity.status import Estimate
from simlab.schema import HUMAN, WTP_CAP
from simlab.tables import Tables

if TYPE_CHECKING:
    from simlab.fidelity.analyses.topics import Embedding

__all__ = ["COMPONENTS", "MIN_MATCHED", "MIN_REFERENCE_Z", "flatten_comparisons", "leaderboard"]

MIN_MATCHED = MIN_PARTICIPANTS
"""Matched participants (same participant_id and domain in the source and the humans) the
``individual`` component needs."""

MIN_REFERENCE_Z = 3.0
"""A component enters the index only when the humans' distance from the uniform-random reference is at
least this many bootstrap SEs above 0: the score divides by that distance, so it must be a steady number
(at 3 SEs its own noise moves a score by at most a third of its distance from 100)."""

RATING_MAX = 100.0  # the rating sliders' scale is 0–100 (records.Rating)

COMPONENTS: dict[str, tuple[str, str]] = {
    "hierarchy": ("per arm, the mean final rank score (k − rank)/(k − 1) (1 = ranked best, 0 = worst)",
                  "a participant ranking at random (0.5 for every arm)"),
    "position": ("per display position, the share of conversations whose ranked-best reply was shown there",
                 "a participant ranking at random (1/k for every position)"),
    "opening": ("per arm, the share of conversations whose opening choice it was",
                "a participant choosing at random (1/k for every arm)"),
    "ratings": ("per arm, the mean final rating_preference on its 0–100 scale, as 0–1",
                "a participant rating at random (the scale's midpoint for every arm)"),
    "bids": ("per arm, the mean wtp_bid as a share of the cap",
             "a participant bidding at random (half the cap for every arm)"),
    "turns": ("the distribution of user turns per conversation (shares per count, with one bin below and one "
              "above the humans' observed range)",
              "a participant stopping at random (uniform over the humans' observed range)"),
    "individual": ("agreement of each participant's ranked-best arm with its matched human's (same participant_id "
                   "and domain), tie-aware",
                   "chance (1/k); 100 is the human self-consistency ceiling (agreement's ceiling pair)"),
}
"""Every component: (what is compared, what scores 0), in the order they are reported."""

_NEEDS = {"hierarchy": "rank", "position": "rank and position", "opening": "opening_choice",
          "ratings": "rating_preference", "bids": "wtp_bid", "turns": "n_turns"}


@dataclass(frozen=True)
class _Sums:
    """One component of one source as participant sums: per participant i and label j (an arm, a position,
    a turn count), the numerator and denominator of the ratio mean θ_j = Σ_i num_ij / Σ_i den_ij, and
    ``ref``, the numerator a uniformly random participant would have had on the same rows."""

    num: np.ndarray
    den: np.ndarray
    ref: np.ndarray

    def restrict(self, keep: np.ndarray) -> _Sums:
        """Only the participants where ``keep`` (a boolean per participant) is true."""
        k = keep[:, None]
        return _Sums(self.num * k, self.den * k, self.ref * k)

    def as_reference(self) -> _Sums:
        """The uniformly random participant on this source's rows."""
        return _Sums(self.ref, self.den, self.ref)


@dataclass(frozen=True)
class _Distance:
    value: float
    draws: np.ndarray  # (n_boot,)


def _distance(x: _Sums, y: _Sums, counts: np.ndarray | BootstrapWeights) -> _Distance | None:
    """Bias-corrected squared distance between the ratio means of x and y, and its bootstrap draws.

    d² = Σ_j (θx_j − θy_j)² − V, with V = Σ_j Var̂(θx_j − θy_j), the participant-clustered delta-method
    variance of the difference (paired: a participant in both moves both). A draw is the same squared
    distance on the resampled participants minus 2V: the resample's own noise (V in expectation) and the
    sample's, so the draws centre on the corrected estimate. None when no label has rows in both."""
    dx, dy = x.den.sum(axis=0), y.den.sum(axis=0)
    ok = (dx > 0) & (dy > 0)
    if not ok.any():
        return None
    xn, xd, yn, yd = x.num[:, ok], x.den[:, ok], y.num[:, ok], y.den[:, ok]
    tx, ty = xn.sum(axis=0) / dx[ok], yn.sum(axis=0) / dy[ok]
    resid = (xn - tx * xd) / dx[ok] - (yn - ty * yd) / dy[ok]
    active = (xd.sum(axis=1) + yd.sum(axis=1)) > 0
    n = int(active.sum())
    var = float((resid[active] ** 2).sum()) * (n / (n - 1) if n > 1 else 1.0)
    value = float(((tx - ty) ** 2).sum()) - var
    with np.errstate(invalid="ignore", divide="ignore"):
        bx = (counts @ xn) / (counts @ xd)
        by = (counts @ yn) / (counts @ yd)
    draws = ((bx - by) ** 2).sum(axis=1) - 2 * var
    return _Distance(value, np.asarray(draws, float))


def _label_sums(pidx: np.ndarray, label: np.ndarray, value: np.ndarray, den: np.ndarray, ref: np.ndarray,
                n_part: int, n_labels: int) -> _Sums:
    """Participant × label sums of row values (rows with label −1 are dropped)."""
    ok = label >= 0
    flat = pidx[ok] * n_labels + label[ok]
    size = n_part * n_labels

    def s(w: np.ndarray) -> np.ndarray:
        return np.bincount(flat, weights=w[ok], minlength=size).reshape(n_part, n_labels)

    return _Sums(s(value), s(den), s(ref))


@dataclass(frozen=True)
class _Data:
    """Everything the components read, prepared once: the judgements (gen_error dropped) and the
    conversations, with each row's participant position in the shared bootstrap index."""

    j: pd.DataFrame
    conv: pd.DataFrame
    participants: Participants
    arms: list[str]
    n_positions: int
    turn_range: tuple[int, int] | None


def _prepare(tables: Tables, participants: Participants) -> _Data:
    j, _ = drop_gen_error(judgements_frame(tables), tables)
    j = _with_repeat(tables, j)
    for col in RATINGS:
        if col not in j.columns:
            j[col] = np.nan
    j["pidx"] = participants.index(j["participant_id"].to_numpy())
    j["k"] = j.groupby("conversation_id")["arm"].transform("size").astype(float)
    conv = tables.conversations if tables.conversations is not None else pd.DataFrame(
        columns=["conversation_id", "participant_id", "source"])
    conv = conv[~gen_error_rows(conv) & conv["participant_id"].notna()].copy()
    conv["pidx"] = participants.index(conv["participant_id"].to_numpy()) if len(conv) else np.zeros(0, np.int64)
    if "n_turns" not in conv.columns:
        conv["n_turns"] = np.nan
    conv["n_turns"] = pd.to_numeric(conv["n_turns"], errors="coerce")
    h = j[j["source"] == HUMAN]
    pos = pd.to_numeric(h["position"], errors="coerce")
    hturns = conv.loc[conv["source"] == HUMAN, "n_turns"].dropna()
    turn_range = (int(hturns.min()), int(hturns.max())) if len(hturns) else None
    return _Data(j=j, conv=conv, participants=participants, arms=arm_order(tables, h["arm"].unique()),
                 n_positions=int(pos.max()) if pos.notna().any() else 0, turn_range=turn_range)


def _component_sums(name: str, data: _Data, source: str) -> _Sums | str:
    """The participant sums of component ``name`` for ``source``, or why it has none."""
    n = len(data.participants.ids)
    if name == "turns":
        c = data.conv[(data.conv["source"] == source) & data.conv["n_turns"].notna()]
        if data.turn_range is None or c.empty:
            return "no n_turns recorded"
        lo, hi = data.turn_range
        width = hi - lo + 1
        # bin 0: below the humans' range, 1..width: each count, width + 1: above it
        b = np.clip(c["n_turns"].to_numpy(float) - lo + 1, 0, width + 1).astype(np.int64)
        pidx = c["pidx"].to_numpy(np.int64)
        n_labels = width + 2
        num = np.zeros((n, n_labels))
        np.add.at(num, (pidx, b), 1.0)
        per_part = np.bincount(pidx, minlength=n).astype(float)
        den = np.repeat(per_part[:, None], n_labels, axis=1)
        ref_share = np.r_[0.0, np.full(width, 1.0 / width), 0.0]
        return _Sums(num, den, per_part[:, None] * ref_share[None, :])
    j = data.j[data.j["source"] == source]
    arm_idx = pd.Index(data.arms).get_indexer(j["arm"].astype(str))
    pidx = j["pidx"].to_numpy(np.int64)
    k = j["k"].to_numpy(float)
    if name == "hierarchy":
        rank = pd.to_numeric(j["rank_used"], errors="coerce").to_numpy(float)
        ok = np.isfinite(rank) & (k >= 2) & (arm_idx >= 0)
        v = np.where(ok, (k - np.nan_to_num(rank)) / np.maximum(k - 1, 1), 0.0)
        return _label_sums(pidx, np.where(ok, arm_idx, -1), v, np.ones(len(j)), np.full(len(j), 0.5), n, len(data.arms))
    if name == "position":
        rank = pd.to_numeric(j["rank_used"], errors="coerce")
        pos = pd.to_numeric(j["position"], errors="coerce")
        top = (rank == rank.groupby(j["conversation_id"]).transform("min")).astype(float)
        n_top = top.groupby(j["conversation_id"]).transform("sum")
        ok = (rank.notna() & pos.notna() & (k >= 2) & (pos <= data.n_positions)).to_numpy()
        lab = np.where(ok, pos.fillna(0).to_numpy(float) - 1, -1).astype(np.int64)
        v = (top / n_top.where(n_top > 0, 1.0)).fillna(0.0).to_numpy(float)
        return _label_sums(pidx, lab, v, np.ones(len(j)), 1.0 / np.maximum(k, 1), n, data.n_positions)
    if name == "opening":
        oc = j["opening_choice"].astype("boolean")
        recorded = oc.fillna(False).astype(bool).groupby(j["conversation_id"]).transform("any").to_numpy(bool)
        ok = recorded & (arm_idx >= 0) & (k >= 2)
        v = oc.fillna(False).astype(float).to_numpy(float)
        return _label_sums(pidx, np.where(ok, arm_idx, -1), v, np.ones(len(j)), 1.0 / np.maximum(k, 1), n, len(data.arms))
    col, scale = ("rating_preference", RATING_MAX) if name == "ratings" else ("wtp_bid", WTP_CAP)
    x = pd.to_numeric(j[col], errors="coerce").to_numpy(float)
    ok = np.isfinite(x) & (arm_idx >= 0)
    return _label_sums(pidx, np.where(ok, arm_idx, -1), np.nan_to_num(x) / scale, np.ones(len(j)),
                       np.full(len(j), 0.5), n, len(data.arms))


def _n_with(s: _Sums) -> int:
    return int((s.den.sum(axis=1) > 0).sum())


@dataclass(frozen=True)
class _Score:
    """A component's score for one row, with draws (None: missing with ``reason``)."""

    value: float = math.nan
    draws: np.ndarray | None = None
    distance: _Distance | None = None
    reason: str | None = None

    def component(self, n: int) -> Component:
        if self.draws is None:
            return Component(reason=self.reason)
        dist = None if self.distance is None else estimate(self.distance.value, self.distance.draws, n)
        return Component(score=estimate(self.value, self.draws, n), distance=dist)


def _score(sim: _Sums, hum: _Sums, counts: np.ndarray | BootstrapWeights, scale: _Sums | None = None) -> _Score:
    """100 · (1 − d²(sim, hum) / d²(random, humans)) on the labels both have. The reference distance is
    the humans' (``scale``, default ``hum``): the humans row scores half A against half B and scales by
    all the humans, the steadier estimate of the same quantity."""
    scale = hum if scale is None else scale
    keep = (sim.den.sum(axis=0) > 0) & (hum.den.sum(axis=0) > 0)
    if not keep.any():
        return _Score(reason="no category (arm, position, turn count) in common with the humans")

    def cut(x: _Sums) -> _Sums:
        return _Sums(x.num[:, keep], x.den[:, keep], x.ref[:, keep])

    d_sh = _distance(cut(sim), cut(hum), counts)
    d_rh = _distance(cut(scale).as_reference(), cut(scale), counts)
    assert d_sh is not None and d_rh is not None  # keep is non-empty
    if d_rh.value <= 0:
        return _Score(reason="the humans are no farther from the uniform-random reference than sampling noise")
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = 100.0 * (1.0 - d_sh.draws / d_rh.draws)
    draws[~(d_rh.draws > 0)] = np.nan
    return _Score(100.0 * (1.0 - d_sh.value / d_rh.value), draws, d_sh)


@dataclass(frozen=True)
class _Individual:
    """Per participant, the matched agreement and its chance level for one source."""

    agree: np.ndarray
    chance: np.ndarray
    matches: np.ndarray


def _tops(j: pd.DataFrame) -> pd.DataFrame:
    """Each (participant, domain)'s first conversation: per arm, 1/0 for "in the ranked-best set"."""
    ordered = j.sort_values("repeat", kind="stable")
    first = ordered.drop_duplicates(["participant_id", "domain"])["conversation_id"]
    f = j[j["conversation_id"].isin(first)]
    rank = pd.to_numeric(f["rank_used"], errors="coerce")
    best = (rank == rank.groupby(f["conversation_id"]).transform("min")).astype(float)
    out = pd.DataFrame({"participant_id": f["participant_id"].astype(str), "domain": f["domain"].astype(str),
                        "arm": f["arm"].astype(str), "top": best, "pidx": f["pidx"]})
    return out[rank.notna().to_numpy()]


def _individual(data: _Data, source: str, human_tops: pd.DataFrame) -> _Individual | str:
    """Tie-aware agreement |A ∩ B| / (|A|·|B|) of the source's ranked-best set with its matched human's."""
    sim = _tops(data.j[data.j["source"] == source])
    m = sim.merge(human_tops.drop(columns="pidx"), on=["participant_id", "domain", "arm"], suffixes=("_s", "_h"))
    if m.empty:
        return f"no participant matched with a human (same participant_id and domain; fewer than {MIN_MATCHED})"
    m["ab"] = m["top_s"] * m["top_h"]
    g = m.groupby(["participant_id", "domain"]).agg(a=("top_s", "sum"), b=("top_h", "sum"), ab=("ab", "sum"),
                                                    k=("arm", "size"), pidx=("pidx", "first"))
    g = g[(g["a"] > 0) & (g["b"] > 0) & (g["k"] >= 2)]
    n_matched = int(g.index.get_level_values("participant_id").nunique())
    if n_matched < MIN_MATCHED:
        return f"{n_matched} participants matched with a human (same participant_id and domain; fewer than {MIN_MATCHED})"
    n = len(data.participants.ids)
    pidx = g["pidx"].to_numpy(np.int64)
    return _Individual(np.bincount(pidx, weights=(g["ab"] / (g["a"] * g["b"])).to_numpy(float), minlength=n),
                       np.bincount(pidx, weights=(1.0 / g["k"]).to_numpy(float), minlength=n),
                       np.bincount(pidx, minlength=n).astype(float))


def _ceiling_sums(data: _Data) -> tuple[np.ndarray, np.ndarray] | str:
    """Per participant, the sum and count of the human ceiling pair's agreement (agreement's ceiling)."""
    h = data.j[data.j["source"] == HUMAN]
    result, usable = _ceiling_pairs(h, data.participants)
    if result.ceiling_pair is None:
        return "no human self-consistency ceiling (" + (
            "; ".join(f"{k}: {v}" for k, v in result.excluded.items()) or "no pair of instruments") + ")"
    per_conv = usable[result.ceiling_pair]
    part = h.drop_duplicates("conversation_id").set_index("conversation_id")["pidx"]
    pidx = part[per_conv.index].to_numpy(np.int64)
    n = len(data.participants.ids)
    return (np.bincount(pidx, weights=per_conv.to_numpy(float), minlength=n),
            np.bincount(pidx, minlength=n).astype(float))


def _individual_score(ind: _Individual, ceiling: tuple[np.ndarray, np.ndarray], counts: np.ndarray | BootstrapWeights) -> _Score:
    """100 · (agreement − chance) / (ceiling − chance), each a ratio of participant sums."""
    cs, cn = ceiling
    a, c, top = ind.agree.sum() / ind.matches.sum(), ind.chance.sum() / ind.matches.sum(), cs.sum() / cn.sum()
    if not top > c:
        return _Score(reason=f"the human ceiling ({top:.3f}) is not above chance ({c:.3f})")
    with np.errstate(invalid="ignore", divide="ignore"):
        m = counts @ ind.matches
        a_b, c_b, top_b = (counts @ ind.agree) / m, (counts @ ind.chance) / m, (counts @ cs) / (counts @ cn)
        draws = 100.0 * (a_b - c_b) / (top_b - c_b)
    return _Score(float(100.0 * (a - c) / (top - c)), np.asarray(draws, float))


@dataclass
class _Row:
    source: str
    kind: str
    n: int
    scores: dict[str, _Score]
    index: float = math.nan
    index_draws: np.ndarray | None = None


def _combine(row: _Row, in_index: Sequence[str]) -> None:
    """The row's index: mean of its available in-index component scores (unclipped here)."""
    used = [row.scores[c] for c in in_index if row.scores[c].draws is not None]
    if not used:
        return
    row.index = float(np.mean([s.value for s in used]))
    row.index_draws = np.mean(np.vstack([s.draws for s in used if s.draws is not None]), axis=0)


def _clip(e: Estimate) -> Estimate:
    def c(v: float) -> float:
        return v if math.isnan(v) else min(100.0, max(0.0, v))

    return e.model_copy(update={"value": c(e.value), "ci_low": c(e.ci_low), "ci_high": c(e.ci_high)})


def _holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (monotone, capped at 1)."""
    order = np.argsort(p)
    m = len(p)
    out = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def _pairwise(rows: Sequence[_Row], measures: Sequence[str]) -> list[PairwiseTest]:
    """Every pair of simulated rows (in leaderboard order) on each measure, Holm-adjusted per measure."""
    tests: list[PairwiseTest] = []
    sims = [r for r in rows if r.kind == "simulated"]
    for measure in measures:
        batch: list[tuple[str, str, float, np.ndarray, int]] = []
        for i, a in enumerate(sims):
            for b in sims[i + 1:]:
                if measure == "index":
                    va, da, vb, db = a.index, a.index_draws, b.index, b.index_draws
                else:
                    sa, sb = a.scores[measure], b.scores[measure]
                    va, da, vb, db = sa.value, sa.draws, sb.value, sb.draws
                if da is None or db is None:
                    continue
                batch.append((a.source, b.source, va - vb, da - db, max(a.n, b.n)))
        ps = []
        for _, _, diff, draws, _ in batch:
            d = draws[np.isfinite(draws)]
            se = float(np.std(d, ddof=1)) if d.size > 2 else math.nan
            ps.append(float(2 * norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0) if se == 0 else math.nan)
        adjusted = _holm([1.0 if math.isnan(p) else p for p in ps]) if ps else []
        for (a_src, b_src, diff, draws, n), p, padj in zip(batch, ps, adjusted):
            closer = None
            if padj < 0.05 and not math.isnan(p):
                closer = a_src if diff > 0 else b_src
            tests.append(PairwiseTest(a=a_src, b=b_src, measure=measure,
                                      difference=estimate(diff, draws, n, None if math.isnan(p) else p),
                                      p_adjusted=padj, closer=closer))
    return tests


def flatten_comparisons(result: FidelityResult, source: str) -> dict[str, Estimate]:
    """The comparisons of ``source`` with the humans in ``result``, one key per estimate.

    A key is the path through the result models with the source's own key left out, as are the
    containers ``vs_human`` and ``outcomes`` and the per-source fits (``per_source``): e.g.
    ``hierarchy.kendall_tau``, ``hierarchy.strength_diff.PROMPT``, ``position.ranking.excess_vs_human``,
    ``dynamics.slope_diff_vs_human``."""
    out: dict[str, Estimate] = {}

    def walk(node: Any, path: list[str], seen_source: bool) -> None:
        if isinstance(node, Estimate):
            if seen_source:
                out[".".join(path)] = node
            return
        if isinstance(node, BaseModel):
            for name in type(node).model_fields:
                if name != "per_source":
                    walk(getattr(node, name), path if name in ("vs_human", "outcomes") else [*path, name], seen_source)
            return
        if isinstance(node, dict):
            for key, value in node.items():
                if key == source:
                    walk(value, path, True)
                elif not (isinstance(key, str) and key in result.sources):
                    walk(value, [*path, str(key)], seen_source)

    for name, analysis in result.analyses.items():
        walk(analysis, [name], False)
    return out


def leaderboard(tables: Tables, *, n_boot: int = 200, seed: int = 0, details: bool = True,
                topics: Embedding | None = "tfidf", exclude_dimensions: Collection[str] = ()) -> Leaderboard:
    """Every simulated source of ``tables`` against its ``human`` source: one row per source with the
    index, its components and their participant-bootstrap CIs, the ``humans`` split-half row, and paired
    tests between the simulated sources (docs/fidelity.md, "The fidelity index").

    ``tables``: human data and one or more simulated sources, e.g.
    ``simlab.tables.concat(load_run(run), load_human(path))``. ``details``: also run every fidelity
    analysis (as ``simlab.fidelity.compare``) and flatten each source's comparisons into its row
    (``topics`` and ``exclude_dimensions`` are passed to them). Raises ``InputError`` (field ``source``)
    without human data, without a simulated source, or when the humans are fewer than
    ``MIN_PARTICIPANTS`` participants; a simulated source that small gets a row whose components say
    why they are not available (index NaN).
    """
    merged = normalise(tables, origin="tables", default_source=None)
    sources = merged.sources
    if HUMAN not in sources:
        raise InputError(f"no human data to compare with (sources: {', '.join(sources) or 'none'})", field="source")
    if HUMANS_ROW in sources:
        raise InputError(f"source {HUMANS_ROW!r} is the name of the human split-half row: rename that source",
                         field="source")
    sims = [s for s in sources if s != HUMAN]
    if not sims:
        raise InputError("no simulated source to put on the leaderboard (only human data)", field="source")
    j_all = merged.judgements
    # a simulated source with too few participants gets a row whose components say so (a small pilot run
    # still has its report); without enough humans nothing can be scored
    n_human = int(j_all.loc[j_all["source"] == HUMAN, "participant_id"].nunique())
    if n_human < MIN_PARTICIPANTS:
        raise InputError(f"the human data have {n_human} participant(s) with judgements (at least {MIN_PARTICIPANTS} "
                         "are needed for a participant-bootstrap interval)", field="source")
    ids: list[object] = list(j_all["participant_id"].dropna().unique())
    if merged.conversations is not None:
        ids += list(merged.conversations["participant_id"].dropna().unique())
    participants = Participants.from_ids(ids, n_boot, seed)
    counts = participants.counts
    data = _prepare(merged, participants)

    names = [c for c in COMPONENTS if c != "individual"]
    human_sums = {c: _component_sums(c, data, HUMAN) for c in names}
    infos: list[ComponentInfo] = []
    for c in names:
        desc, ref = COMPONENTS[c]
        hs = human_sums[c]
        reason = None
        if isinstance(hs, str) or _n_with(hs) < MIN_PARTICIPANTS:
            reason = f"the human data have no {_NEEDS[c]} (or fewer than {MIN_PARTICIPANTS} participants with it)"
        else:
            d_rh = _distance(hs.as_reference(), hs, counts)
            se = float(np.nanstd(d_rh.draws, ddof=1)) if d_rh is not None else math.nan
            if d_rh is None or not d_rh.value > MIN_REFERENCE_Z * se:
                reason = (f"the humans are too close to the reference to scale by: their bias-corrected distance from "
                          f"it is not {MIN_REFERENCE_Z:g} bootstrap SEs above 0")
        infos.append(ComponentInfo(name=c, description=desc, reference=ref, in_index=reason is None, reason=reason))
    human_tops = _tops(data.j[data.j["source"] == HUMAN])
    ceiling = _ceiling_sums(data)
    desc, ref = COMPONENTS["individual"]
    infos.append(ComponentInfo(name="individual", description=desc, reference=ref, in_index=not isinstance(ceiling, str),
                               reason=ceiling if isinstance(ceiling, str) else None))
    info_of = {i.name: i for i in infos}
    in_index = [i.name for i in infos if i.in_index]

    def missing_human(c: str) -> str:
        return info_of[c].reason or "not available"

    rows: list[_Row] = []
    for s in sims:
        scores: dict[str, _Score] = {}
        for c in names:
            hs = human_sums[c]
            if isinstance(hs, str) or not info_of[c].in_index:
                scores[c] = _Score(reason=missing_human(c))
                continue
            ss = _component_sums(c, data, s)
            if isinstance(ss, str) or _n_with(ss) < MIN_PARTICIPANTS:
                scores[c] = _Score(reason=f"{s} has no {_NEEDS[c]} (or fewer than {MIN_PARTICIPANTS} participants with it)")
            else:
                scores[c] = _score(ss, hs, counts)
        if isinstance(ceiling, str):
            scores["individual"] = _Score(reason=ceiling)
        else:
            ind = _individual(data, s, human_tops)
            scores["individual"] = _Score(reason=ind) if isinstance(ind, str) else _individual_score(ind, ceiling, counts)
        n_s = int(data.j.loc[data.j["source"] == s, "participant_id"].nunique())
        rows.append(_Row(s, "simulated", n_s, scores))

    human_ids = sorted({str(p) for p in data.j.loc[data.j["source"] == HUMAN, "participant_id"]})
    split = None
    if len(human_ids) >= 2 * MIN_PARTICIPANTS:
        perm = np.random.default_rng(seed).permutation(len(human_ids))
        half_a = {human_ids[i] for i in perm[: len(human_ids) // 2]}
        half_b = set(human_ids) - half_a
        in_a = np.array([p in half_a for p in participants.ids])
        in_b = np.array([p in half_b for p in participants.ids])
        split = HumanSplit(seed=seed, n_participants=(len(half_a), len(human_ids) - len(half_a)))
        hscores: dict[str, _Score] = {}
        for c in names:
            hs = human_sums[c]
            if isinstance(hs, str) or not info_of[c].in_index:
                hscores[c] = _Score(reason=missing_human(c))
            else:
                hscores[c] = _score(hs.restrict(in_a), hs.restrict(in_b), counts, hs)
        hscores["individual"] = _Score(reason="the two halves share no participant to match; the human ceiling is "
                                              "this component's 100 by definition")
        rows.append(_Row(HUMANS_ROW, "humans", split.n_participants[0], hscores))

    for r in rows:
        _combine(r, in_index)
    rows.sort(key=lambda r: (math.isnan(r.index), -r.index if not math.isnan(r.index) else 0.0))

    result: FidelityResult | None = None
    if details:
        from simlab.fidelity.analyses import analyze_all  # statsmodels and scikit-learn: on first use

        result = analyze_all(merged, n_boot=n_boot, seed=seed, topics=topics, exclude_dimensions=exclude_dimensions)

    out_rows = []
    for r in rows:
        index = _clip(estimate(r.index, r.index_draws, r.n))
        out_rows.append(LeaderboardRow(
            source=r.source, kind="humans" if r.kind == "humans" else "simulated", n_participants=r.n, index=index,
            components={c: r.scores[c].component(r.n) for c in COMPONENTS},
            comparisons=flatten_comparisons(result, r.source) if result is not None and r.kind == "simulated" else {},
            missing={c: r.scores[c].reason or "not available" for c in in_index if r.scores[c].draws is None}
            | {c: info_of[c].reason or "" for c in COMPONENTS if not info_of[c].in_index},
        ))
    return Leaderboard(
        leaderboard=out_rows, components=infos, pairwise=_pairwise(rows, ["index", *in_index]),
        correction=("Holm across the pairs of simulated sources, separately for the index and for each component; "
                    "p-values are two-sided from the paired bootstrap SE (normal), on the unclipped index"),
        human_split=split, n_boot=n_boot, seed=seed, details=result)
