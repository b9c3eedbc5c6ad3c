"""Distributions: does each simulated source answer every numeric instrument with the humans' spread and
shape, or does it collapse onto a few safe answers?

Instruments (where each is read from): the final ratings ``rating_preference``, ``rating_engagingness``,
``rating_provenance`` and the bid ``wtp_bid`` (judgements; ``bid`` of the bdm table when the judgements
have no bids), the ranked position ``rank`` of each arm (judgements), ``turn_rating`` (turns, assistant
replies) and ``n_turns`` (conversations). Judgements of conversations flagged ``gen_error`` and replies
flagged ``gen_error`` are left out, as in the other analyses; every conversation counts for ``n_turns``.

Per instrument, per simulated source against ``human``, pooled over arms and per arm (ranks per arm only:
every ranking uses each rank once, so pooled ranks are alike by construction; ``n_turns`` pooled only):

- ``sd_ratio`` = SD(sim) / SD(human), every answer weighted equally. p-value of ratio = 1: the
  relabelling test (below) of the log ratio on answers centred at their source's mean, so a mean shift is
  not read as a spread difference. 95% CI: the ratios r0 that the same test does not reject at 5% once
  the simulated (centred) answers are divided by r0. The percentile interval of the shared participant
  bootstrap covered the true ratio in only 88% of planted datasets with 50 participants (BCa: 90%): an SD
  ratio's sampling distribution is skewed and heavy-tailed at that size; the inverted test covers as the
  test is calibrated. Spread collapse: the CI lies below 1.
- ``w1_excess`` = the plug-in Wasserstein-1 distance ``w1`` (``scipy.stats.wasserstein_distance`` with
  weights, computed here on the cumulative shares of the sorted answers so every bootstrap replicate is one
  matrix product) minus its mean under relabelling, ``w1_chance`` (the plug-in is > 0 for two samples of
  one distribution). Near 0 that removes the plug-in's bias; when the distributions differ, relabelling
  mixes them and ``w1_chance`` overstates the bias, so the value is conservative (low) in small samples.
  p-value: the share of relabellings whose plug-in is at least the observed one. 95% CI, for the distance
  itself: the percentile interval of the plug-in's bootstrap replicates, its lower end extended down to
  the corrected value, and to 0 unless the relabelling test rejects (the interval excludes 0 exactly when
  the test does).

The relabelling: the exchangeable unit is the participant, not the answer (a person's answers are
correlated). A participant with answers in both sources (a human and their simulated copy share a
participant_id) swaps the labels of all their answers with probability ½; participants with answers in
one source only have their labels permuted among themselves, keeping the number of participants per
source. Under "the simulator answers like people" (paired copies exchangeable with their humans, unpaired
participants exchangeable with each other) every relabelling is equally likely.

Each statistic is a function of participant weights ``w``: the point estimate at ``w = 1``, the bootstrap
replicates at the rows of ``participants.counts``, and the relabelling test at the point weights (so
survey weights can enter as other point weights). A comparison with fewer than ``MIN_PARTICIPANTS``
participants on either side is ``not_available``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from simlab.fidelity.analyses._prep import (
    MIN_PARTICIPANTS,
    arm_order,
    drop_gen_error,
    gen_error_rows,
    has_values,
    judgements_frame,
    participants_of,
    relabel_swaps,
    sim_sources,
)
from simlab.fidelity.distributions_result import (
    DistributionComparison,
    DistributionsResult,
    Histogram,
    InstrumentDistributions,
    collapsed,
)
from simlab.fidelity.result import Estimate
from simlab.fidelity.stats import Participants, estimate
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["N_PERM", "answers", "compare", "distributions", "w1_rows"]

N_PERM = 499
"""Relabellings per permutation test (p-value resolution 0.002)."""
JUDGEMENT_INSTRUMENTS = ("rating_preference", "rating_engagingness", "rating_provenance", "wtp_bid")
CELLS = 2_000_000
"""Largest (rows × distinct answers) block computed at once: replicates are taken in chunks below it."""
BINS = 20
ALPHA = 0.05


@dataclass(frozen=True)
class Answers:
    """One instrument's answers: value, source, arm (None for per-conversation ones), participant_id."""

    table: str
    column: str
    frame: pd.DataFrame  # columns value, source, arm, participant_id


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(frame[column], errors="coerce")


def answers(tables: Tables) -> dict[str, Answers]:
    """Every numeric instrument present in ``tables`` with its answers (see the module docstring)."""
    out: dict[str, Answers] = {}
    conv = tables.conversations
    j, _ = drop_gen_error(judgements_frame(tables), tables)
    for col in (*JUDGEMENT_INSTRUMENTS, "rank"):
        if has_values(j, col):
            out[col] = Answers("judgements", col, pd.DataFrame({
                "value": _numeric(j, col), "source": j["source"], "arm": j["arm"].astype(str),
                "participant_id": j["participant_id"]}))
    has_conv = conv is not None and {"conversation_id", "participant_id", "source"} <= set(conv.columns)
    if "wtp_bid" not in out and has_conv and has_values(tables.bdm, "bid"):
        assert tables.bdm is not None and conv is not None
        b = tables.bdm.merge(conv[["conversation_id", "participant_id", "source"]], on="conversation_id")
        b = b[~b["conversation_id"].astype(str).isin(set(conv.loc[gen_error_rows(conv), "conversation_id"].astype(str)))]
        out["wtp_bid"] = Answers("bdm", "bid", pd.DataFrame({
            "value": _numeric(b, "bid"), "source": b["source"], "arm": b["arm"].astype(str),
            "participant_id": b["participant_id"]}))
    if has_conv and has_values(tables.turns, "turn_rating"):
        assert tables.turns is not None and conv is not None
        t = tables.turns
        r = t[(t["role"] == "assistant") & t["turn_rating"].notna()]
        r = r[~gen_error_rows(r)]  # a failed generation is rated as a failure, not as the arm
        r = r.merge(conv[["conversation_id", "participant_id", "source"]], on="conversation_id")
        out["turn_rating"] = Answers("turns", "turn_rating", pd.DataFrame({
            "value": _numeric(r, "turn_rating"), "source": r["source"], "arm": r["arm"].astype(str),
            "participant_id": r["participant_id"]}))
    if has_conv and has_values(conv, "n_turns"):
        assert conv is not None
        out["n_turns"] = Answers("conversations", "n_turns", pd.DataFrame({
            "value": _numeric(conv, "n_turns"), "source": conv["source"], "arm": None,
            "participant_id": conv["participant_id"]}))
    kept = {k: Answers(a.table, a.column, a.frame.dropna(subset=["value", "participant_id", "source"]))
            for k, a in out.items()}
    return {k: a for k, a in kept.items() if not a.frame.empty}


def _chunks(n: int, m: int) -> Iterator[slice]:
    step = max(1, CELLS // max(m, 1))
    for i in range(0, n, step):
        yield slice(i, min(n, i + step))


def w1_rows(mass_a: np.ndarray, mass_b: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance per row between two weighted samples on one sorted grid: ``mass_*`` (rows ×
    grid) the weight at each grid value, ``gaps`` the distances between consecutive grid values.

    >>> from scipy.stats import wasserstein_distance
    >>> grid = np.array([0.0, 1.0, 3.0])
    >>> a, b = np.array([[2.0, 1.0, 0.0]]), np.array([[0.0, 1.0, 1.0]])
    >>> round(float(w1_rows(a, b, np.diff(grid))[0]), 6), round(float(wasserstein_distance(grid, grid, a[0], b[0])), 6)
    (1.666667, 1.666667)
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        fa = np.cumsum(mass_a, axis=1)[:, :-1] / mass_a.sum(axis=1, keepdims=True)
        fb = np.cumsum(mass_b, axis=1)[:, :-1] / mass_b.sum(axis=1, keepdims=True)
        return np.asarray(np.abs(fa - fb) @ gaps, dtype=float)



def _counts(pi: np.ndarray, gi: np.ndarray, n_part: int, m: int) -> sparse.csr_matrix:
    """(participants × grid) how many answers each participant gave at each grid value."""
    return sparse.csr_matrix((np.ones(pi.size), (pi, gi)), shape=(n_part, m))


def _moments(weights: np.ndarray, n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """SD per row of participant ``weights`` from each participant's count, sum and sum of squares."""
    with np.errstate(divide="ignore", invalid="ignore"):
        tot = weights @ n
        mean = (weights @ s1) / tot
        return np.asarray(np.sqrt(np.maximum((weights @ s2) / tot - mean**2, 0.0)), dtype=float)


def _log_sd_ratio(sd_s: np.ndarray, sd_h: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(sd_s / sd_h)
    return np.where(np.isfinite(out), out, np.nan)


def compare(
    x_h: np.ndarray, part_h: np.ndarray, x_s: np.ndarray, part_s: np.ndarray, participants: Participants,
    rng: np.random.Generator, *, point: np.ndarray | None = None, n_perm: int = N_PERM,
) -> DistributionComparison:
    """``sd_ratio`` and ``w1_excess`` of simulated answers ``x_s`` against human answers ``x_h``; ``part_*``
    index each answer's participant in ``participants`` (whose bootstrap draws give the CIs). ``point``:
    the participant weights of the point estimate and the relabelling test (default: every participant 1).
    """
    n_h, n_s = int(np.unique(part_h).size), int(np.unique(part_s).size)
    out = DistributionComparison(n_human=int(x_h.size), n_sim=int(x_s.size))
    if min(n_h, n_s) < MIN_PARTICIPANTS:
        out.status = "not_available"
        out.reason = (f"{n_h} human and {n_s} simulated participants (at least {MIN_PARTICIPANTS} on each side "
                      "are needed for an interval clustered by participant)")
        return out
    pids, inv = np.unique(np.concatenate([part_h, part_s]), return_inverse=True)
    pi_h, pi_s = inv[: part_h.size], inv[part_h.size:]
    P = pids.size
    w0 = (np.ones(len(participants.ids)) if point is None else np.asarray(point, dtype=float))[pids]
    W = participants.counts[:, pids]  # (B, P): the shared draws of these participants
    n_all = int(P)

    # sd_ratio: per-participant moments, so every replicate and relabelling is a matrix product
    def moments(x: np.ndarray, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.bincount(pi, minlength=P).astype(float), np.bincount(pi, x, minlength=P),
                np.bincount(pi, x * x, minlength=P))

    mh, ms = moments(x_h, pi_h), moments(x_s, pi_s)
    sd_h0, sd_s0 = _moments(w0[None], *mh)[0], _moments(w0[None], *ms)[0]
    ratio = float(sd_s0 / sd_h0) if sd_h0 > 0 else float("nan")
    draws = np.exp(_log_sd_ratio(_moments(W, *ms), _moments(W, *mh)))
    has_h, has_s = mh[0] > 0, ms[0] > 0
    swaps = relabel_swaps(has_h, has_s, n_perm, rng, dtype=np.int8)
    # relabelling test of the log ratio on answers centred at their source's (point-weighted) mean
    ch = (x_h - float(w0[pi_h] @ x_h / w0[pi_h].sum()))
    cs = (x_s - float(w0[pi_s] @ x_s / w0[pi_s].sum()))
    ch_m, cs_m = moments(ch, pi_h), moments(cs, pi_s)
    obs = float(np.log(ratio)) if ratio > 0 else float("nan")
    out.sd_ratio = _scale_interval(estimate(ratio, draws, n_all), obs, [w0 * a for a in ch_m], [w0 * b for b in cs_m], swaps)
    if not sd_h0 > 0:  # every human gave the same answer: a ratio to 0 is not a number
        out.sd_ratio = None
        out.reason = "the human answers do not vary (SD 0): no SD ratio"
    out.spread_collapse = collapsed(out.sd_ratio)

    # w1: answers on one sorted grid, per-participant counts at each grid value
    grid = np.unique(np.concatenate([x_h, x_s]))
    if grid.size < 2:
        out.w1, out.w1_chance = 0.0, 0.0
        out.w1_excess = estimate(0.0, np.zeros(participants.n_boot), n_all, 1.0)
        return out
    gaps = np.diff(grid)
    C_h = _counts(pi_h, np.searchsorted(grid, x_h), P, grid.size)
    C_s = _counts(pi_s, np.searchsorted(grid, x_s), P, grid.size)
    CT_h, CT_s = C_h.T.tocsr(), C_s.T.tocsr()  # (grid × P): mass = (C.T @ w.T).T

    def w1_of(weights: np.ndarray) -> np.ndarray:
        res = np.empty(weights.shape[0])
        for sl in _chunks(weights.shape[0], grid.size):
            wt = weights[sl].T
            res[sl] = w1_rows(np.asarray(CT_h @ wt).T, np.asarray(CT_s @ wt).T, gaps)
        return res

    w1 = float(w1_of(w0[None])[0])
    boot = w1_of(W)
    # relabelling at the point weights: the human side gains swapped participants' simulated answers
    D = (CT_s - CT_h) @ sparse.diags(w0)  # (grid × P)
    tot_h, tot_s = CT_h @ w0, CT_s @ w0
    null_w1 = np.empty(n_perm)
    for sl in _chunks(n_perm, grid.size):
        moved = np.asarray(D @ swaps[sl].T.astype(float)).T  # (R, grid)
        null_w1[sl] = w1_rows(tot_h[None] + moved, tot_s[None] - moved, gaps)
    null_w1 = null_w1[np.isfinite(null_w1)]
    chance = float(null_w1.mean()) if null_w1.size else float("nan")
    p_w1 = float((1 + np.sum(null_w1 >= w1 - 1e-12)) / (1 + null_w1.size))
    value = w1 - chance
    pct = estimate(w1, boot, n_all, p_w1)
    # the CI is for the distance itself: the percentile interval of the plug-in's replicates, its lower end
    # reaching down to the corrected value (the plug-in's upward bias is largest near 0) and to 0 unless the
    # relabelling test rejects, so the interval excludes 0 exactly when the test does
    low = min(pct.ci_low, value) if np.isfinite(pct.ci_low) else pct.ci_low
    if np.isfinite(low) and p_w1 >= ALPHA:
        low = min(low, 0.0)
    out.w1, out.w1_chance = w1, chance
    out.w1_excess = pct.model_copy(update={"value": value, "ci_low": float(low)})
    return out


def _scale_interval(boot: Estimate, obs: float, h: list[np.ndarray], s: list[np.ndarray],
                    swaps: np.ndarray) -> Estimate:
    """``sd_ratio`` with its relabelling p-value (ratio = 1) and the 95% CI that inverts the same test: a
    ratio r0 is in the CI when, with the simulated answers (centred) divided by r0, the relabelling test
    does not reject at 5%. ``h``, ``s``: per-participant weighted count, sum and sum of squares of the
    centred answers of each side; ``boot``: the estimate with its bootstrap draws' spread."""
    if not np.isfinite(obs):
        return boot.model_copy(update={"ci_low": float("nan"), "ci_high": float("nan")})
    def by_rows(v: np.ndarray) -> np.ndarray:  # swaps @ v a block of rows at a time (no float copy of swaps)
        return np.concatenate([swaps[sl].astype(float) @ v for sl in _chunks(swaps.shape[0], swaps.shape[1])])

    A = [by_rows(a) for a in h]  # (R,) what swapped participants take away from the human side
    B = [by_rows(b) for b in s]
    tot_h = [float(a.sum()) for a in h]
    tot_s = [float(b.sum()) for b in s]
    spread = np.log(boot.ci_high / boot.ci_low) / 3.92 if boot.ci_low > 0 and np.isfinite(boot.ci_high) else 0.5
    spread = float(spread) if np.isfinite(spread) and spread > 0 else 0.5
    log_r0 = np.concatenate([[0.0], obs + spread * np.linspace(-4.0, 4.0, 161)])
    f = np.exp(-log_r0)[:, None]  # the simulated answers divided by r0: moment k scales by r0^-k

    def sd(n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(np.sqrt(np.maximum(s2 / n - (s1 / n) ** 2, 0.0)), dtype=float)

    sd_h = sd(*(tot_h[k] - A[k][None] + B[k][None] * f**k for k in range(3)))
    sd_s = sd(*((tot_s[k] - B[k][None]) * f**k + A[k][None] for k in range(3)))
    with np.errstate(divide="ignore", invalid="ignore"):
        null = np.log(sd_s / sd_h)  # (grid, R)
    stat = np.abs(obs - log_r0)[:, None]
    ok = np.isfinite(null)
    p = (1 + np.sum(ok & (np.abs(np.where(ok, null, 0.0)) >= stat - 1e-12), axis=1)) / (1 + ok.sum(axis=1))
    keep = np.flatnonzero(p[1:] >= ALPHA)
    grid = log_r0[1:]
    if keep.size == 0:
        lo = hi = obs
    else:
        lo, hi = grid[keep[0]], grid[keep[-1]]
    note = None
    if keep.size and (keep[0] == 0 or keep[-1] == grid.size - 1):
        note = "CI reaches the end of the ratios tried"
    return boot.model_copy(update={"ci_low": float(np.exp(lo)), "ci_high": float(np.exp(hi)),
                                   "p_value": float(p[0]), "note": note})


def _histograms(frame: pd.DataFrame, sources: list[str]) -> dict[str, Histogram]:
    """Each source's answers on shared bins: one per distinct value when there are few, else ``BINS``."""
    values = frame["value"].to_numpy(float)
    levels = np.unique(values)
    if levels.size <= 12:
        half = np.diff(levels).min() / 2 if levels.size > 1 else 0.5
        edges = np.concatenate([levels - half, [levels[-1] + half]])
        # bins centred on the values (neighbouring levels may be far apart: gaps between bins are fine)
        edge_list = [float(e) for e in edges]
        codes = np.searchsorted(levels, values)
        nbins = levels.size
    else:
        lo, hi = float(values.min()), float(values.max())
        edges = np.linspace(lo, hi, BINS + 1)
        edge_list = [float(e) for e in edges]
        codes = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, BINS - 1)
        nbins = BINS
    out: dict[str, Histogram] = {}
    for s in sources:
        hit = (frame["source"] == s).to_numpy()
        if not hit.any():
            continue
        c = np.bincount(codes[hit], minlength=nbins).astype(float)
        v = values[hit]
        out[s] = Histogram(edges=edge_list, shares=[float(x) for x in c / c.sum()], n=int(hit.sum()),
                           mean=float(v.mean()), sd=float(v.std()))
    return out


def _instrument(a: Answers, sims: list[str], arms: list[str], participants: Participants,
                rng: np.random.Generator, n_perm: int) -> InstrumentDistributions:
    f = a.frame
    res = InstrumentDistributions(table=a.table, column=a.column, per_arm_only=a.column == "rank")
    res.histograms = _histograms(f, [HUMAN, *sims])
    part = participants.index(f["participant_id"].to_numpy())
    x = f["value"].to_numpy(float)
    src = f["source"].to_numpy()
    arm = f["arm"].to_numpy() if f["arm"].notna().any() else None
    point = participants.point(np.arange(len(participants.ids)))  # raking weights under --weights, else ones

    def one(rows: np.ndarray, s: str) -> DistributionComparison:
        h, m = rows & (src == HUMAN), rows & (src == s)
        return compare(x[h], part[h], x[m], part[m], participants, rng, point=point, n_perm=n_perm)

    everything = np.ones(x.size, dtype=bool)
    for s in sims:
        if not res.per_arm_only:
            res.pooled[s] = one(everything, s)
    if arm is not None:
        for am in arms:
            rows = arm == am
            if rows.any():
                res.per_arm[am] = {s: one(rows, s) for s in sims}
    return res


def distributions(
    tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None,
    n_perm: int = N_PERM,
) -> DistributionsResult:
    """Spread (``sd_ratio``) and bias-corrected Wasserstein-1 distance (``w1_excess``) of every simulated
    source's answers from the humans', per numeric instrument, pooled and per arm."""
    found = answers(tables)
    if not found:
        return DistributionsResult(status="not_available", reason="no numeric instrument has answers")
    sources = sorted({str(s) for a in found.values() for s in a.frame["source"].unique()})
    if HUMAN not in sources:
        return DistributionsResult(status="not_available", reason="no human answers to compare with")
    sims = sim_sources(sources)
    if not sims:
        return DistributionsResult(status="not_available", reason="no simulated source to compare with human")
    participants = participants or participants_of(tables, n_boot, seed)
    # a stream of its own: ``seed`` also drives the bootstrap draws (and may have made the data)
    rng = np.random.default_rng([seed, 0xD157])
    arms = arm_order(tables, pd.concat([a.frame["arm"] for a in found.values()]).dropna().unique())
    out = DistributionsResult(n_perm=n_perm)
    for name, a in found.items():
        out.instruments[name] = _instrument(a, sims, arms, participants, rng, n_perm)
    return out
