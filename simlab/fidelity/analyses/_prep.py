"""Shared preparation: judgements with their used ranks, conditional-logit choice sets, the
participant minimum, the one reading of the ``gen_error`` flag every analysis excludes by, and the
relabelling of sources that keeps participants whole."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, TypeGuard

import numpy as np
import pandas as pd

from simlab.fidelity.stats import ChoiceSets, Participants
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = [
    "MIN_PARTICIPANTS",
    "arm_order",
    "choice_sets",
    "drop_gen_error",
    "dummies",
    "flag",
    "flagged_conversations",
    "gen_error_rows",
    "has_values",
    "judgements_frame",
    "participants_of",
    "relabel_swaps",
    "sim_sources",
    "too_few_participants",
]


def participants_of(tables: Tables, n_boot: int, seed: int, weights: Mapping[str, float] | None = None) -> Participants:
    """The participant index (union over judgements and conversations) with its bootstrap draws
    (weighted by ``weights``, raking weight per participant id, when given)."""
    ids: list[object] = list(tables.judgements["participant_id"].dropna().unique())
    if tables.conversations is not None and "participant_id" in tables.conversations.columns:
        ids += list(tables.conversations["participant_id"].dropna().unique())
    return Participants.from_ids(ids, n_boot, seed, weights)


def has_values(frame: pd.DataFrame | None, column: str) -> TypeGuard[pd.DataFrame]:
    return frame is not None and column in frame.columns and bool(frame[column].notna().any())


def judgements_frame(tables: Tables) -> pd.DataFrame:
    """Judgements with ``conversation_id`` as text, ``rank_used`` and ``ranked_best``.

    ``rank_used`` is ``rank`` where a conversation has one, else derived from
    ``rating_preference`` (higher rating = better; ties share the better rank, ``method="min"``).
    ``rank_derived`` marks the derived rows.
    """
    j = tables.judgements.copy()
    for col in ("source", "domain", "participant_id"):
        if col not in j.columns and tables.conversations is not None and col in tables.conversations.columns:
            j = j.merge(tables.conversations[["conversation_id", col]], on="conversation_id", how="left")
    for col in ("rank", "rating_preference", "position", "opening_choice", "wtp_bid"):
        if col not in j.columns:
            j[col] = np.nan
    j = j[j["participant_id"].notna() & j["arm"].notna()].reset_index(drop=True)
    j["conversation_id"] = j["conversation_id"].astype(str)  # one choice event per conversation
    rank = pd.to_numeric(j["rank"], errors="coerce")
    has_rank = rank.notna().groupby(j["conversation_id"]).transform("all")
    derived = j.groupby("conversation_id")["rating_preference"].rank(ascending=False, method="min")
    # an importer that filled ``rank`` from the ratings says so in ``rank_derived``
    given = j["rank_derived"].fillna(False).astype(bool) if "rank_derived" in j.columns else False
    j["rank_derived"] = (~has_rank & derived.notna()) | (has_rank & given)
    j["rank_used"] = rank.where(has_rank, derived)
    j["ranked_best"] = (j["rank_used"] == 1).where(j["rank_used"].notna())
    return j


def dummies(values: pd.Series, levels: Sequence[object], prefix: str) -> pd.DataFrame:
    """0/1 columns ``prefix[level]`` for each level (callers leave out the reference)."""
    codes = pd.Index(list(levels)).get_indexer(values)  # -1: not one of the levels
    onehot = np.zeros((len(values), len(levels)))
    hit = codes >= 0
    onehot[np.flatnonzero(hit), codes[hit]] = 1.0
    return pd.DataFrame(onehot, columns=[f"{prefix}[{lv}]" for lv in levels], index=values.index)


def choice_sets(
    frame: pd.DataFrame,
    features: Sequence[str],
    how: Literal["ranking"] | str,
    participants: Participants,
) -> ChoiceSets:
    """Choice sets for a conditional logit over the rows of ``frame`` grouped by conversation (one
    choice event each).

    ``how="ranking"``: the exploded ranking (rank-ordered / Plackett–Luce logit): each ranked
    row is chosen from the rows ranked the same or worse in its conversation (ties: Breslow, each tied
    row is chosen from a set that includes the others). Otherwise ``how`` names a boolean column
    and each true row is chosen from all rows of its conversation. Rows with a missing feature or
    outcome are dropped; one-alternative sets carry no information and are dropped.
    """
    key = "rank_used" if how == "ranking" else how
    # only the columns used: the frame may carry many more (every arm's dummy), each copy of it costs
    d = frame[list(dict.fromkeys([*features, key, "conversation_id", "participant_id"]))].reset_index(drop=True)
    ok = d[key].notna()
    for f in features:
        ok &= d[f].notna()
    d = d[ok].reset_index(drop=True)
    d["_row"] = np.arange(len(d))
    if how == "ranking":
        left = d[["_row", "conversation_id", "rank_used"]]
        m = left.merge(left, on="conversation_id", suffixes=("_c", "_a"))
        m = m[m["rank_used_a"] >= m["rank_used_c"]]
    else:
        chosen = d[how].astype(bool)
        m = d.loc[chosen, ["_row", "conversation_id"]].merge(d[["_row", "conversation_id"]], on="conversation_id", suffixes=("_c", "_a"))
    m = m[m.groupby("_row_c")["_row_a"].transform("size") >= 2]
    m = m.sort_values(["_row_c", "_row_a"], kind="stable")
    stratum, firsts = pd.factorize(m["_row_c"], sort=True)
    rows = m["_row_a"].to_numpy()
    X = np.empty((rows.size, len(features)))
    for i, f in enumerate(features):  # column by column: no whole-frame float copy before the row selection
        X[:, i] = d[f].to_numpy(dtype=float)[rows]
    chosen_rows = (m["_row_c"].to_numpy() == m["_row_a"].to_numpy())
    part = participants.index(d["participant_id"].to_numpy()[np.asarray(firsts)])
    return ChoiceSets(X=X, chosen=chosen_rows, stratum=stratum.astype(np.int64), participant=part, names=tuple(features))


def n_events(cs: ChoiceSets, frame: pd.DataFrame) -> int:
    return int(frame["conversation_id"].nunique()) if cs.n_strata else 0


def sim_sources(sources: Sequence[str]) -> list[str]:
    return [s for s in sources if s != HUMAN]


MIN_PARTICIPANTS = 10
"""A source (or comparison) with fewer participants than this is ``not_available`` in every analysis: a
participant bootstrap or a clustered standard error over a handful of people is not an interval anyone
should quote."""


def too_few_participants(frame: pd.DataFrame, minimum: int = MIN_PARTICIPANTS) -> str | None:
    """The reason a source's rows are too few people to analyse, or None when there are enough."""
    n = int(frame["participant_id"].nunique())
    if n < minimum:
        return f"only {n} participant(s) (at least {minimum} are needed for a participant-clustered interval)"
    return None


TRUE = frozenset({"true", "1", "1.0", "yes", "y", "t"})
FALSE = frozenset({"false", "0", "0.0", "no", "n", "f"})


def flag(values: pd.Series) -> pd.Series:
    """A flag column as 1.0 / 0.0 / NaN (not recorded), whatever it was stored as (bool, 0/1, text)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        num = pd.to_numeric(values, errors="coerce").astype(float)
        return num.where(num.isna(), (num != 0).astype(float))
    text = values.astype("string").str.strip().str.lower()
    out = pd.Series(np.nan, index=values.index)
    out[text.isin(TRUE).fillna(False).to_numpy(bool)] = 1.0
    out[text.isin(FALSE).fillna(False).to_numpy(bool)] = 0.0
    return out


def gen_error_rows(frame: pd.DataFrame) -> pd.Series:
    """Which rows of a conversations or turns table are flagged ``gen_error`` (bool, aligned with
    ``frame``): a flag not recorded (missing, or no such column) is not flagged."""
    if "gen_error" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return flag(frame["gen_error"]) == 1


def flagged_conversations(conversations: pd.DataFrame | None) -> set[str]:
    """The ids (as text) of the conversations flagged ``gen_error``: a failed generation was shown as an
    error notice, so what the participant did next is not a response to the arms' replies."""
    if conversations is None:
        return set()
    return set(conversations.loc[gen_error_rows(conversations), "conversation_id"].astype(str))


def drop_gen_error(j: pd.DataFrame, tables: Tables) -> tuple[pd.DataFrame, dict[str, int]]:
    """Judgement rows without the conversations flagged ``gen_error`` (``flagged_conversations``), and
    per source how many conversations were dropped: the choice among the arms of such a conversation
    is not a choice among replies (PROTOCOL §2, errors)."""
    bad = flagged_conversations(tables.conversations)
    if not bad:
        return j, {}
    hit = j["conversation_id"].astype(str).isin(bad)
    counts = j.loc[hit].groupby("source")["conversation_id"].nunique()
    return j[~hit].reset_index(drop=True), {str(s): int(n) for s, n in counts.items()}


def arm_order(tables: Tables, present: Iterable[object]) -> list[str]:
    """The arms present, in the run's config order (``tables.arms``) where it is known, then
    alphabetically: the first is the analyses' reference arm, and the report keeps this order."""
    arms = {str(a) for a in present if not pd.isna(a)}
    known: list[str] = []
    if tables.arms is not None and len(tables.arms) and "arm" in tables.arms:
        order = tables.arms.sort_values("config_order") if "config_order" in tables.arms else tables.arms
        known = [a for a in order["arm"].astype(str) if a in arms]
    return known + sorted(arms - set(known))


def relabel_swaps(has_h: np.ndarray, has_s: np.ndarray, n_perm: int, rng: np.random.Generator,
                  dtype: type[np.generic] = np.float64) -> np.ndarray:
    """(n_perm, P) 0/1: which participants move all their rows to the other source in each of
    ``n_perm`` relabellings (the permutation null of a sim − human comparison).

    A participant in both sources (a human and their simulated copy) swaps sides with probability
    1/2; participants in one source only have their labels permuted among themselves (so the number
    of participants per side is kept). ``dtype=np.int8`` keeps a byte per entry for many participants."""
    paired = has_h & has_s
    out = np.zeros((n_perm, has_h.size), dtype=dtype)
    out[:, paired] = rng.integers(0, 2, size=(n_perm, int(paired.sum())))
    single = np.flatnonzero(has_h ^ has_s)
    if single.size > 1:
        label = has_s[single]
        order = rng.random((n_perm, single.size)).argsort(axis=1)
        out[:, single] = label[order] != label
    return out
