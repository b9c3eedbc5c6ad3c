"""What the agreement analyses share: the instruments, each conversation's tie-aware top sets and
their agreement, participant-bootstrap means, and a conversation's ``repeat``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from simlab.fidelity.registry import BootstrapWeights
from simlab.fidelity.result import Estimate
from simlab.fidelity.stats import Participants, bootstrap, estimate
from simlab.tables import Tables

__all__ = ["INSTRUMENTS", "N_PERM", "RATINGS"]

RATINGS = ("rating_preference", "rating_engagingness", "rating_provenance", "wtp_bid")
INSTRUMENTS = ("ranked_best", "rating_preference", "wtp_bid", "opening_choice")
N_PERM = 200  # p-values down to 1/201: enough for "far better than chance"


def _mean_draws(values: np.ndarray, part: np.ndarray, counts: np.ndarray | BootstrapWeights) -> np.ndarray:
    """Participant-bootstrap draws of the mean of values with participants ``part`` (vectorised over draws)."""
    n = counts.shape[1]
    s = np.bincount(part, weights=values, minlength=n)
    c = np.bincount(part, minlength=n).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((counts @ s) / (counts @ c))


def _boot_p(draws: np.ndarray, null: float) -> float | None:
    """Two-sided bootstrap p-value of value = null, the one that matches the percentile CI."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    tail = min(np.sum(d <= null), np.sum(d >= null))
    return float(min(1.0, (1 + 2 * tail) / (1 + d.size)))


def _mean_est(values: np.ndarray, part: np.ndarray, participants: Participants, null: float | None = None) -> Estimate:
    draws = _mean_draws(values, part, participants.counts)
    p = _boot_p(draws, null) if null is not None else None
    w = participants.point(part)  # raking weights, or ones
    return estimate(float((w * values).sum() / w.sum()), draws, int(np.unique(part).size), p)


def _corr_est(stat: Callable[[np.ndarray], float], n_rows: int, part: np.ndarray, participants: Participants) -> Estimate:
    draws = bootstrap(stat, part, participants.counts)[:, 0]
    return estimate(stat(participants.point(part)), draws, int(np.unique(part).size), _boot_p(draws, 0.0))


def _argmax_set(d: pd.DataFrame, key: str, col: str) -> pd.Series:
    """1 for the tied maxima of col within each ``key``, 0 for the other rows, NaN where the key has < 2 values."""
    v = pd.to_numeric(d[col], errors="coerce")
    g = v.groupby(d[key])
    top = (v == g.transform("max")).astype(float)
    return top.where(v.notna() & (g.transform("count") >= 2))


def _tops(d: pd.DataFrame, key: str, *, derived_ranks: bool) -> pd.DataFrame:
    """Per row, 1/0 for "in the top set of its ``key``" of each instrument (NaN: not available). The
    key is a conversation, or in a comparison a match (keyed by its human conversation).

    ``derived_ranks``: in conversations whose ranks were derived from rating_preference, ranked_best
    is the tied maxima of the ratings (True) or not an instrument at all (False, for the ceiling).
    """
    out = pd.DataFrame(index=d.index)
    rank = pd.to_numeric(d["rank_used"], errors="coerce")
    g = rank.groupby(d[key])
    best = (rank == g.transform("min")).astype(float).where(rank.notna() & (g.transform("count") >= 2))
    derived = d["rank_derived"].fillna(False).astype(bool).groupby(d[key]).transform("any")
    rating_top = _argmax_set(d, key, "rating_preference")
    # an importer's tie-break (position, the chosen response) is not the participant's ranking
    out["ranked_best"] = best.where(~derived, rating_top if derived_ranks else np.nan)
    out["rating_preference"] = rating_top
    out["wtp_bid"] = _argmax_set(d, key, "wtp_bid")
    oc = d["opening_choice"].astype("boolean")
    has = oc.fillna(False).astype(bool).groupby(d[key]).transform("any")
    out["opening_choice"] = oc.fillna(False).astype(float).where(has)
    return out


def _agree(top_a: pd.Series, top_b: pd.Series, key: pd.Series) -> pd.DataFrame:
    """Per ``key`` (a conversation or a match): tie-aware agreement, whether either side is tied,
    whether one top set is inside the other.

    Each side's "top" is the set of its tied maxima, and a key counts |A ∩ B| / (|A|·|B|), the
    probability that breaking both sides' ties uniformly at random makes them agree (a participant
    who bids $0 on every arm agrees at chance, 1/k, not always)."""
    ok = top_a.notna() & top_b.notna()
    f = pd.DataFrame({"a": top_a[ok], "b": top_b[ok], "ab": top_a[ok] * top_b[ok], "k": 1.0, "key": key[ok]})
    g = f.groupby("key")[["a", "b", "ab", "k"]].sum()
    g = g[(g["a"] > 0) & (g["b"] > 0)]
    nested = g["ab"] == np.minimum(g["a"], g["b"])
    return pd.DataFrame({
        "agree": g["ab"] / (g["a"] * g["b"]),
        "tied": (g["a"] > 1) | (g["b"] > 1),
        "nested": nested,
        # nested although the larger top set leaves some arms out: the pair says something
        "informative": nested & (np.maximum(g["a"], g["b"]) < g["k"]),
    })


def _first_conversations(j: pd.DataFrame) -> pd.DataFrame:
    """The rows of each (participant_id, domain)'s first conversation (lowest ``repeat``, then data order):
    the conversation a match takes from each side."""
    ordered = j.sort_values("repeat", kind="stable") if "repeat" in j.columns else j
    first = ordered.drop_duplicates(["participant_id", "domain"])[["participant_id", "domain", "conversation_id"]]
    return j[j["conversation_id"].isin(first["conversation_id"])]


def _centred(v: pd.Series, key: pd.Series) -> np.ndarray:
    return np.asarray((v - v.groupby(key).transform("mean")).to_numpy(float))


def _with_repeat(tables: Tables, j: pd.DataFrame) -> pd.DataFrame:
    """``j`` with an integer ``repeat`` (0 = the first run of a participant × domain, 1, 2, … further
    seeds): the judgements', else the conversation's; missing is 0."""
    if "repeat" not in j.columns:
        conv = tables.conversations
        if conv is not None and "repeat" in conv.columns and "conversation_id" in conv.columns:
            r = pd.DataFrame({"conversation_id": conv["conversation_id"].astype(str), "repeat": conv["repeat"]})
            j = j.merge(r.drop_duplicates("conversation_id"), on="conversation_id", how="left")
        else:
            j = j.assign(repeat=0)
    return j.assign(repeat=pd.to_numeric(j["repeat"], errors="coerce").fillna(0).astype(int))
