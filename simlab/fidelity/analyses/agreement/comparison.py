"""A simulated source against the matched humans: tie-aware top-1 agreement per instrument with the
gap to the human ceiling, Kendall τ of the rankings, and correlations of the ratings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS
from simlab.fidelity.analyses.agreement.ceiling import _ceiling_pair
from simlab.fidelity.analyses.agreement.common import (
    INSTRUMENTS,
    RATINGS,
    _agree,
    _centred,
    _corr_est,
    _first_conversations,
    _mean_est,
    _tops,
)
from simlab.fidelity.result import AgreementComparison, InstrumentAgreement
from simlab.fidelity.stats import Participants, weighted_corr

__all__: list[str] = []


def _instrument(
    m: pd.DataFrame, inst: str, participants: Participants, ceiling: dict[str, pd.Series]
) -> InstrumentAgreement | None:
    """Top-1 agreement on one instrument per match, and its gap to the closest human ceiling on the same
    matches (None: the instrument is not in both sources)."""
    per_match = _agree(m[f"top_{inst}_h"], m[f"top_{inst}_s"], m["key"])
    if per_match.empty:
        return None
    match_part = m.drop_duplicates("key").set_index("key")
    part = participants.index(match_part.loc[per_match.index, "participant_id"].to_numpy())
    out = InstrumentAgreement(top1=_mean_est(per_match["agree"].to_numpy(float), part, participants), n_tied=int(per_match["tied"].sum()))
    pair = _ceiling_pair(inst, set(ceiling))
    if pair is None:
        return out
    c = ceiling[pair].reindex(match_part.loc[per_match.index, "conversation_id_h"].to_numpy())
    ok = c.notna().to_numpy()
    if ok.sum() == 0:
        return out
    out.ceiling_pair = pair
    a, cv, pp = per_match["agree"].to_numpy(float)[ok], c.to_numpy(float)[ok], part[ok]
    out.ceiling = _mean_est(cv, pp, participants)
    # same participant draws for both: the CI of the gap carries the uncertainty of each
    out.gap = _mean_est(a - cv, pp, participants, null=0.0)
    if np.isfinite(out.gap.ci_high):
        out.reaches_ceiling = bool(out.gap.ci_high >= 0)
    return out


def _compare(h: pd.DataFrame, s: pd.DataFrame, participants: Participants, ceiling: dict[str, pd.Series]) -> AgreementComparison:
    """One simulated source ``s`` against the humans ``h``, match by match.

    A match is the first conversation of a participant × domain on each side (lowest ``repeat``),
    joined row by row on arm and keyed by the human conversation. Each simulated instrument is
    compared with the human ceiling of the closest human pair (``CLOSEST``) on the same matches, and
    the difference agreement − ceiling is bootstrapped with the same participant draws, so
    ``reaches_ceiling`` carries the uncertainty of both. ``n_events`` counts the matches."""
    h, s = _first_conversations(h), _first_conversations(s)
    cols = ["participant_id", "domain", "arm", "conversation_id", "rank_used", "rank_derived", "opening_choice", *RATINGS]
    m = h[cols].merge(s[cols], on=["participant_id", "domain", "arm"], suffixes=("_h", "_s"))
    if m.empty:
        return AgreementComparison(status="not_available", reason="no (participant_id, domain, arm) judged by both")
    n_part = int(m["participant_id"].nunique())
    if n_part < MIN_PARTICIPANTS:
        return AgreementComparison(status="not_available", n_events=int(m["conversation_id_h"].nunique()),
                                   reason=f"{n_part} participants matched (fewer than {MIN_PARTICIPANTS})")
    m["key"] = m["conversation_id_h"]
    for side in ("h", "s"):
        plain = m[[c for c in m.columns if c.endswith(f"_{side}")]].rename(columns=lambda c: c[:-2])
        tops = _tops(plain.assign(key=m["key"]), "key", derived_ranks=True)
        for inst in INSTRUMENTS:
            m[f"top_{inst}_{side}"] = tops[inst]
    out = AgreementComparison(n_events=int(m["key"].nunique()))
    match_part = m.drop_duplicates("key").set_index("key")["participant_id"]
    for inst in INSTRUMENTS:
        res = _instrument(m, inst, participants, ceiling)
        if res is not None:
            out.by_instrument[inst] = res
    best = out.by_instrument.get("ranked_best")
    if best is not None:
        out.top1, out.n_tied, out.reaches_ceiling = best.top1, best.n_tied, best.reaches_ceiling
        out.ceiling_pair, out.ceiling_gap = best.ceiling_pair, best.gap
        r = m[m["rank_used_h"].notna() & m["rank_used_s"].notna()]
        out.top1_chance = float((1 / r.groupby("key")["arm"].size()).mean())
    r = m[m["rank_used_h"].notna() & m["rank_used_s"].notna()]
    if not r.empty:
        # negated ranks so that larger = better in both
        tau = _tau_per_match(r.assign(nh=-r["rank_used_h"], ns=-r["rank_used_s"]), "key", "nh", "ns").dropna()
        if not tau.empty:
            tp = participants.index(match_part[tau.index].to_numpy())
            out.kendall_tau = _mean_est(tau.to_numpy(float), tp, participants)
            per = pd.Series(tau.to_numpy(), index=match_part[tau.index].to_numpy()).groupby(level=0).mean()
            out.kendall_tau_per_participant = _mean_est(per.to_numpy(float), participants.index(per.index.to_numpy()), participants)
    for col in RATINGS:
        x = m[[f"{col}_h", f"{col}_s", "participant_id", "key", "arm"]].dropna()
        if x["participant_id"].nunique() < MIN_PARTICIPANTS:
            continue
        part = participants.index(x["participant_id"].to_numpy())
        n = len(x)
        a, b = x[f"{col}_h"].to_numpy(float), x[f"{col}_s"].to_numpy(float)
        ra, rb = x[f"{col}_h"].rank().to_numpy(), x[f"{col}_s"].rank().to_numpy()
        ca, cb = _centred(x[f"{col}_h"], x["key"]), _centred(x[f"{col}_s"], x["key"])
        arm = pd.factorize(x["arm"])[0]

        def individual(w: np.ndarray, ca: np.ndarray = ca, cb: np.ndarray = cb, arm: np.ndarray = arm) -> float:
            # each source's arm means (recomputed per replicate) are shared preference, not individual
            sw = np.bincount(arm, weights=w)
            with np.errstate(invalid="ignore", divide="ignore"):
                ma, mb = np.bincount(arm, weights=w * ca) / sw, np.bincount(arm, weights=w * cb) / sw
            return weighted_corr(ca - ma[arm], cb - mb[arm], w)

        for field, (u, v) in (("pearson", (a, b)), ("spearman", (ra, rb)), ("pearson_within", (ca, cb))):
            getattr(out, field)[col] = _corr_est(_corr_of(u, v), n, part, participants)
        out.pearson_individual[col] = _corr_est(individual, n, part, participants)
    return out


def _corr_of(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray], float]:
    def stat(w: np.ndarray) -> float:
        return weighted_corr(a, b, w)

    return stat


def _arm_pairs(d: pd.DataFrame, key: str, a: str, b: str) -> pd.DataFrame:
    """Per ``key`` (a match), arm pairs (x < y) with sign of a and of b differences."""
    left = d[[key, "arm", a, b]]
    m = left.merge(left, on=key, suffixes=("_x", "_y"))
    m = m[m["arm_x"] < m["arm_y"]]
    return m.assign(sa=np.sign(m[f"{a}_x"] - m[f"{a}_y"]), sb=np.sign(m[f"{b}_x"] - m[f"{b}_y"]))


def _tau_per_match(d: pd.DataFrame, key: str, a: str, b: str) -> pd.Series:
    """Kendall τ-b per match (``key``) between columns a and b (vectorised over matches)."""
    m = _arm_pairs(d, key, a, b)
    g = m.assign(c=m["sa"] * m["sb"], na=(m["sa"] != 0).astype(float), nb=(m["sb"] != 0).astype(float)).groupby(key)[["c", "na", "nb"]].sum()
    den = np.sqrt(g["na"] * g["nb"])
    return (g["c"] / den).where(den > 0)
