"""Test–retest of rating_preference: the same participant judging the same arm in two conversations
(the humans' ceiling) or in two runs of one participant × domain (a simulator's seed-to-seed consistency)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS, has_values
from simlab.fidelity.analyses.agreement.common import N_PERM, _centred, _corr_est, _mean_est
from simlab.fidelity.result import RetestResult
from simlab.fidelity.stats import Participants, weighted_corr

__all__: list[str] = []


def _shuffler(groups: np.ndarray) -> Callable[[np.random.Generator, np.ndarray], np.ndarray]:
    """A function that permutes values within each group (vectorised: one lexsort)."""
    base = np.argsort(groups, kind="stable")

    def shuffle(rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
        order = np.lexsort((rng.random(groups.size), groups))
        out = np.empty_like(v)
        out[base] = v[order]
        return out

    return shuffle


def _retest(h: pd.DataFrame, participants: Participants, seed: int, pairing: str = "conversation") -> RetestResult:
    """Test–retest of rating_preference. ``pairing="conversation"`` (the humans'): any two conversations
    of the participant that rated the arm; ``"repeat"``: two conversations of the same participant
    and domain with a different ``repeat`` (a simulator's seed-to-seed consistency).

    Ratings are centred per conversation (a participant's rating level is style, not agreement), and
    the permutation baselines shuffle arms within each conversation, which keeps the participant
    pairing."""
    col = "rating_preference"
    if not has_values(h, col):
        return RetestResult(status="not_available", reason="no rating_preference", pairing=pairing)
    by_repeat = pairing == "repeat"
    extra = ["domain", "repeat"] if by_repeat else []
    d = (h[h[col].notna()][["participant_id", "conversation_id", "arm", col, *extra]].drop_duplicates(["conversation_id", "arm"])
         .reset_index(drop=True))
    # centred per conversation: a participant's rating level is style, not agreement about arms
    d["c"] = _centred(d[col], d["conversation_id"])
    d["row"] = np.arange(len(d))
    pairs = d.merge(d, on=["participant_id", "arm", *extra[:1]], suffixes=("_1", "_2"))
    keep = pairs["conversation_id_1"] < pairs["conversation_id_2"]
    if by_repeat:
        keep &= pairs["repeat_1"] != pairs["repeat_2"]
    pairs = pairs[keep].reset_index(drop=True)
    n_part = int(pairs["participant_id"].nunique())
    if n_part < MIN_PARTICIPANTS:
        where = "in two runs (repeats) of the same domain" if by_repeat else "in two conversations"
        return RetestResult(status="not_available", n_pairs=len(pairs), pairing=pairing,
                            reason=f"{n_part} participants judged the same arm {where} (fewer than {MIN_PARTICIPANTS})")
    rng = np.random.default_rng(seed)
    i1, i2 = pairs["row_1"].to_numpy(), pairs["row_2"].to_numpy()
    raw, c = d[col].to_numpy(float), d["c"].to_numpy(float)
    part = participants.index(pairs["participant_id"].to_numpy())
    out = RetestResult(n_pairs=len(pairs), pairing=pairing)
    out.rating_corr = _corr_est(lambda w: weighted_corr(raw[i1], raw[i2], w), len(pairs), part, participants)
    out.rating_corr_within = _corr_est(lambda w: weighted_corr(c[i1], c[i2], w), len(pairs), part, participants)
    obs = out.rating_corr_within.value
    # arm pairs shared by the same two conversations: is their order the same both times?
    q = pairs.reset_index().rename(columns={"index": "i"})[["i", "participant_id", "conversation_id_1", "conversation_id_2", "arm"]]
    op = q.merge(q, on=["participant_id", "conversation_id_1", "conversation_id_2"], suffixes=("_x", "_y"))
    op = op[op["arm_x"] < op["arm_y"]]
    ix, iy = op["i_x"].to_numpy(), op["i_y"].to_numpy()

    def order(v: np.ndarray) -> np.ndarray:
        # tie-aware: a tie on either side agrees with probability 1/2
        return np.asarray(0.5 + 0.5 * np.sign(v[i1[ix]] - v[i1[iy]]) * np.sign(v[i2[ix]] - v[i2[iy]]))

    within_conversation = _shuffler(pd.factorize(d["conversation_id"])[0])
    within_arm = _shuffler(pd.factorize(d["arm"])[0])
    null_conversation = [within_conversation(rng, c) for _ in range(N_PERM)]
    null_arm = [within_arm(rng, c) for _ in range(N_PERM)]
    perm = np.array([weighted_corr(v[i1], v[i2]) for v in null_conversation])
    out.permutation_baseline = float(np.nanmean(perm))
    out.permutation_p = float((1 + np.sum(perm >= obs)) / (1 + N_PERM))
    arm_null = np.array([weighted_corr(v[i1], v[i2]) for v in null_arm])
    out.within_arm_baseline = float(np.nanmean(arm_null))
    out.within_arm_p = float((1 + np.sum(arm_null >= obs)) / (1 + N_PERM))
    if len(op) >= 3:
        agree = order(c)
        opart = participants.index(op["participant_id"].to_numpy())
        out.n_order_pairs = len(op)
        out.pairwise_order = _mean_est(agree, opart, participants)
        null = np.array([order(v).mean() for v in null_conversation])
        out.pairwise_order_baseline = float(null.mean())
        out.pairwise_order_p = float((1 + np.sum(null >= agree.mean())) / (1 + N_PERM))
    return out


def _sim_retest(s: pd.DataFrame, participants: Participants, seed: int) -> RetestResult:
    """Seed-to-seed test–retest of a simulated source (``_retest`` with ``pairing="repeat"``): conversations
    of the same participant and domain with a different ``repeat``; not available without repeats."""
    if not has_values(s, "rating_preference"):
        return RetestResult(status="not_available", reason="no rating_preference", pairing="repeat")
    runs = s.drop_duplicates("conversation_id").groupby(["participant_id", "domain"])["repeat"].nunique()
    if not bool((runs >= 2).any()):
        return RetestResult(status="not_available", pairing="repeat",
                            reason="no repeated conversations: every (participant, domain) was run once "
                                   "(repeat 0 only; a run with --repeats 2 or more has them)")
    return _retest(s, participants, seed, pairing="repeat")
