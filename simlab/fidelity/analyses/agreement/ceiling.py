"""The human ceiling: how well one person's instruments agree with each other, the most a simulator of
that person can be expected to reach, per instrument pair and from test–retest."""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS, has_values
from simlab.fidelity.analyses.agreement.common import INSTRUMENTS, _agree, _mean_est, _tops
from simlab.fidelity.analyses.agreement.retest import _retest
from simlab.fidelity.result import CeilingResult
from simlab.fidelity.stats import Participants

__all__ = ["CLOSEST"]

# The human pair whose agreement is the ceiling of a same-instrument comparison, nearest first:
# ranking and rating are one post-conversation judgement, the bid a costlier one, the opening
# choice an earlier moment.
CLOSEST = {
    "ranked_best": ("rating_preference", "wtp_bid", "opening_choice"),
    "rating_preference": ("ranked_best", "wtp_bid", "opening_choice"),
    "wtp_bid": ("rating_preference", "ranked_best", "opening_choice"),
    "opening_choice": ("ranked_best", "rating_preference", "wtp_bid"),
}
MIN_CONVERSATIONS_CONSTRUCTION = 20  # informative conversations needed before "always nested" means one instrument


def _ceiling_conversations(h: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per human instrument pair 'a~b', the agreement in each conversation (index: conversation_id)."""
    tops = _tops(h, "conversation_id", derived_ranks=False)
    out: dict[str, pd.DataFrame] = {}
    for a, b in combinations(INSTRUMENTS, 2):
        out[f"{a}~{b}"] = _agree(tops[a], tops[b], h["conversation_id"])
    return out


def _ceiling(h: pd.DataFrame, participants: Participants, seed: int) -> tuple[CeilingResult, dict[str, pd.Series]]:
    """The human ceiling, and per usable instrument pair the agreement in each conversation.

    Per instrument pair (ranked_best, argmax rating_preference, argmax wtp_bid, opening_choice), each
    with its own participant-bootstrap CI. A pair that is one instrument by construction is excluded
    with a reason: ranks derived from the ratings (``rank_derived``), or one side's top always inside
    the other's (e.g. PRISM's choice is its highest score). The ceiling is the pair closest to
    ranked_best (``CLOSEST``); the retest of the humans' ratings is part of it."""
    out, usable = _ceiling_pairs(h, participants)
    out.retest = _retest(h, participants, seed)
    if not out.cross_instrument and out.retest.status != "ok":
        out.status, out.reason = "not_available", "fewer than two usable instruments and no repeated judgements"
    return out, usable


def _ceiling_pairs(h: pd.DataFrame, participants: Participants) -> tuple[CeilingResult, dict[str, pd.Series]]:
    """``_ceiling`` without the retest: the instrument pairs, the ceiling pair and its value (the
    leaderboard's ``individual`` component reads these alone)."""
    out = CeilingResult()
    conv_part = h.drop_duplicates("conversation_id").set_index("conversation_id")["participant_id"]
    derived_all = bool(h["rank_derived"].fillna(False).astype(bool).all())
    usable: dict[str, pd.Series] = {}
    for pair, per_conv in _ceiling_conversations(h).items():
        a, b = pair.split("~")
        if per_conv.empty:
            if "ranked_best" in (a, b) and derived_all and has_values(h, b if a == "ranked_best" else a):
                out.excluded[pair] = "ranks were derived from rating_preference (rank_derived): not a separate instrument"
            continue
        n_part = int(conv_part[per_conv.index].nunique())
        if n_part < MIN_PARTICIPANTS:
            out.excluded[pair] = f"{n_part} participants judged with both instruments (fewer than {MIN_PARTICIPANTS})"
            continue
        if bool(per_conv["nested"].all()) and int(per_conv["informative"].sum()) >= MIN_CONVERSATIONS_CONSTRUCTION:
            out.excluded[pair] = (f"one side's top is inside the other's in all {len(per_conv)} conversations: one instrument by "
                                  "construction (e.g. the choice is the highest score)")
            continue
        part = participants.index(conv_part[per_conv.index].to_numpy())
        out.cross_instrument[pair] = _mean_est(per_conv["agree"].to_numpy(float), part, participants)
        out.n_tied[pair] = int(per_conv["tied"].sum())
        usable[pair] = per_conv["agree"]
    best = _ceiling_pair("ranked_best", set(usable))
    if best is not None:
        out.ceiling_pair, out.ceiling = best, out.cross_instrument[best].value
    return out, usable


def _ceiling_pair(instrument: str, usable: set[str]) -> str | None:
    """The closest usable human pair for a comparison on ``instrument``."""
    def key(a: str, b: str) -> str | None:
        for p in (f"{a}~{b}", f"{b}~{a}"):
            if p in usable:
                return p
        return None

    for other in CLOSEST[instrument]:
        if (p := key(instrument, other)) is not None:
            return p
    if instrument == "ranked_best":
        # derived ranks: the human's ranked_best is their rating_preference
        return _ceiling_pair("rating_preference", usable)
    return None
