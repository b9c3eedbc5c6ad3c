"""PRISM-X-shaped synthetic data with planted effects, for tests and benchmarks.

The generative model, per conversation (one participant × domain × source) and arm:

    u = strengths[arm] + offset[participant, arm] + position_bias[source]·[position == 1]
        + trait_effect[source]·z[arm] + Gumbel noise

``rank`` orders u (so ranks follow a Plackett–Luce model with log-worth = the deterministic
part: the hierarchy and position analyses must recover exactly these numbers);
``opening_choice`` is the argmax of the same deterministic part with fresh Gumbel noise;
ratings and bids are noisy increasing functions of u. ``turn_rating`` = 50 + 8·strength +
participant effect + turn_slope[source]·turn + noise. Opening prompts draw a topic from a
uniform distribution, shifted towards topic 0 by ``topic_shift[source]``. ``offset`` is shared
by a participant's conversations in every source, so individual agreement and test–retest are
above chance when ``preference_sd`` > 0. ``z`` is one autograded trait ("sycophancy").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from simlab.schema import DOMAINS, LETTERS
from simlab.tables import Tables

__all__ = ["N_TOPICS", "make_arena", "make_placebo", "make_rating_repeats", "make_synthetic"]

DEFAULT_ARMS = ("GEN", "PROMPT", "DPFT", "PPFT")
N_TOPICS = 6
_TOPIC_WORDS = [[f"topic{t}word{i}" for i in range(10)] for t in range(N_TOPICS)]
_COMMON = ["what", "think", "about", "should", "people", "really", "would", "could", "life", "today"]


def make_synthetic(
    n_participants: int = 100,
    arms: Sequence[str] = DEFAULT_ARMS,
    strengths: Mapping[str, float] | None = None,
    position_bias: Mapping[str, float] | None = None,
    turn_slope: Mapping[str, float] | None = None,
    topic_shift: Mapping[str, float] | None = None,
    seed: int = 0,
    *,
    sources: Sequence[str] = ("human", "sim_dynamic"),
    domains: Sequence[str] = DOMAINS,
    preference_sd: float = 0.0,
    trait_effect: Mapping[str, float] | None = None,
    autograde: bool = True,
) -> Tables:
    """Synthetic ``Tables`` (participants shared across sources) with the planted effects.

    >>> t = make_synthetic(5, seed=1)
    >>> len(t.judgements) == 5 * 4 * 4 * 2
    True
    """
    rng = np.random.default_rng(seed)
    arms = list(arms)
    k = len(arms)
    strengths = dict(strengths or {a: 0.0 for a in arms})
    s_vec = np.array([strengths.get(a, 0.0) for a in arms])
    pids = np.array([f"p{i:04d}" for i in range(n_participants)])
    offset = rng.normal(0.0, preference_sd, size=(n_participants, k)) if preference_sd > 0 else np.zeros((n_participants, k))
    part_effect = rng.normal(0.0, 5.0, size=n_participants)

    conv_ids, conv_src, conv_pid, conv_dom, conv_pidx = [], [], [], [], []
    for src in sources:
        for pi, pid in enumerate(pids):
            for dom in domains:
                conv_ids.append(f"{src}-{pid}-{dom}")
                conv_src.append(src)
                conv_pid.append(pid)
                conv_dom.append(dom)
                conv_pidx.append(pi)
    n = len(conv_ids)
    pidx = np.array(conv_pidx)
    src_arr = np.array(conv_src)

    def per_source(m: Mapping[str, float] | None) -> np.ndarray:
        m = m or {}
        return np.array([m.get(s, 0.0) for s in conv_src])

    pos_b, slope, shift, trait_b = map(per_source, (position_bias, turn_slope, topic_shift, trait_effect))
    position = np.argsort(rng.random((n, k)), axis=1).argsort(axis=1) + 1  # (n, k) 1..k per arm
    z = rng.normal(size=(n, k))
    det = s_vec[None, :] + offset[pidx] + pos_b[:, None] * (position == 1) + trait_b[:, None] * z
    u = det + rng.gumbel(size=(n, k))
    rank = (-u).argsort(axis=1).argsort(axis=1) + 1
    opening = (det + rng.gumbel(size=(n, k))).argmax(axis=1)
    guess = rng.integers(0, k, size=n)
    prov_rank = np.argsort(rng.random((n, k)), axis=1).argsort(axis=1) + 1

    def clip(x: np.ndarray, lo: float, hi: float, dec: int = 1) -> np.ndarray:
        return np.asarray(np.round(np.clip(x, lo, hi), dec))

    rep = np.repeat(np.arange(n), k)
    arm_idx = np.tile(np.arange(k), n)
    judgements = pd.DataFrame(
        {
            "conversation_id": np.array(conv_ids)[rep],
            "participant_id": np.array(conv_pid)[rep],
            "source": src_arr[rep],
            "domain": np.array(conv_dom)[rep],
            "arm": np.array(arms)[arm_idx],
            "letter": np.array(list(LETTERS))[position.ravel() - 1],
            "position": position.ravel(),
            "opening_choice": (opening[rep] == arm_idx),
            "provenance_guess": (guess[rep] == arm_idx),
            "rank": rank.ravel(),
            "provenance_rank": prov_rank.ravel(),
            "rating_preference": clip(50 + 10 * u.ravel() + rng.normal(0, 5, n * k), 0, 100),
            "rating_engagingness": clip(50 + 8 * u.ravel() + rng.normal(0, 10, n * k), 0, 100),
            "rating_provenance": clip(rng.uniform(0, 100, n * k), 0, 100),
            "wtp_bid": clip(5 + 1.5 * u.ravel() + rng.normal(0, 1, n * k), 0, 10, 2),
        }
    )

    n_turns = rng.integers(2, 7, size=n)
    conversations = pd.DataFrame(
        {
            "conversation_id": conv_ids,
            "participant_id": conv_pid,
            "source": conv_src,
            "domain": conv_dom,
            "in_domain": [d != "emotional_wellbeing" for d in conv_dom],
            "n_turns": n_turns,
            "gen_error": False,
            "max_turns_reached": False,
            "stop_reason": np.where(n_turns == 6, "max_turns", "user_ended"),
        }
    )

    # turns: user rows then one assistant row per arm, for each turn
    topic_p = np.full(N_TOPICS, 1.0 / N_TOPICS)
    onehot = np.eye(N_TOPICS)[0]
    topic = np.array([rng.choice(N_TOPICS, p=(1 - sh) * topic_p + sh * onehot) for sh in shift])
    t_conv = np.repeat(np.arange(n), n_turns)
    t_turn = np.concatenate([np.arange(m) for m in n_turns])
    n_user = t_conv.size
    topic_w = rng.integers(0, 10, size=(n_user, 3))
    common_w = rng.integers(0, len(_COMMON), size=(n_user, 3))
    user_text = [
        " ".join([_TOPIC_WORDS[topic[c]][a], _COMMON[x], _TOPIC_WORDS[topic[c]][b], _COMMON[y], _TOPIC_WORDS[topic[c]][e], _COMMON[q]])
        for c, (a, b, e), (x, y, q) in zip(t_conv, topic_w, common_w)
    ]
    user = pd.DataFrame({"conversation_id": np.array(conv_ids)[t_conv], "turn": t_turn, "role": "user", "text": user_text})
    a_conv = np.repeat(t_conv, k)
    a_turn = np.repeat(t_turn, k)
    a_arm = np.tile(np.arange(k), n_user)
    rating = 50 + 8 * s_vec[a_arm] + part_effect[pidx[a_conv]] + slope[a_conv] * a_turn + rng.normal(0, 8, a_conv.size)
    lengths = np.clip(200 + 60 * s_vec[a_arm] + rng.normal(0, 40, a_conv.size), 20, None).astype(int)
    filler = "lorem ipsum dolor sit amet " * 40
    assistant = pd.DataFrame(
        {
            "conversation_id": np.array(conv_ids)[a_conv],
            "turn": a_turn,
            "role": "assistant",
            "arm": np.array(arms)[a_arm],
            "letter": np.array(list(LETTERS))[position[a_conv, a_arm] - 1],
            "text": [filler[:m] for m in lengths],
            "turn_rating": clip(rating, 0, 100),
        }
    )
    turns = pd.concat([user, assistant], ignore_index=True).sort_values(["conversation_id", "turn", "role"], kind="stable")

    grade = None
    if autograde:
        runs = 3
        g_conv = np.repeat(rep, runs)
        g_arm = np.repeat(arm_idx, runs)
        grade = pd.DataFrame(
            {
                "unit_id": [f"{conv_ids[c]}:{arms[a]}" for c, a in zip(g_conv, g_arm)],
                "mode": "conversation",
                "unit_kind": "reply",
                "conversation_id": np.array(conv_ids)[g_conv],
                "arm": np.array(arms)[g_arm],
                "dimension": "sycophancy",
                "score": np.round(3 + z.ravel()[np.repeat(np.arange(n * k), runs)] + rng.normal(0, 0.3, g_conv.size), 3),
                "rater_run": np.tile(np.arange(runs), n * k),
            }
        )
    participants = pd.DataFrame(
        {"participant_id": np.tile(pids, len(sources)), "source": np.repeat(list(sources), n_participants)}
    )
    return Tables(
        judgements=judgements,
        conversations=conversations,
        turns=turns.reset_index(drop=True),
        participants=participants,
        autograde=grade,
    )


def make_arena(
    n_events: int = 100_000,
    n_arms: int = 50,
    *,
    strength_sd: float = 1.0,
    position_bias: float = 0.0,
    source: str = "human",
    seed: int = 0,
) -> tuple[Tables, dict[str, float]]:
    """Arena-style pairwise votes with planted Bradley–Terry strengths, and those strengths.

    Each event (conversation) is its own participant and shows two distinct arms drawn uniformly,
    in random positions 1 and 2. The shown-first arm gets ``position_bias`` on the log-odds
    scale: P(A beats B) = expit(s_A − s_B + position_bias·[A first]), the Bradley–Terry model the
    hierarchy (a rank-ordered logit on two alternatives) and position analyses fit. Strengths
    are N(0, ``strength_sd``), the first arm's shifted to 0 (it is the analyses' reference).
    No ties: the record schema's ``rank`` is a permutation of 1..k within a conversation.

    >>> t, s = make_arena(200, 5, seed=1)
    >>> len(t.judgements) == 400 and s["arm00"] == 0.0
    True
    """
    rng = np.random.default_rng(seed)
    arms = [f"arm{i:02d}" for i in range(n_arms)]
    s = rng.normal(0.0, strength_sd, size=n_arms)
    s -= s[0]
    a = rng.integers(0, n_arms, size=n_events)
    b = (a + rng.integers(1, n_arms, size=n_events)) % n_arms  # a different arm, uniform
    a_first = rng.random(n_events) < 0.5
    logit = s[a] - s[b] + position_bias * np.where(a_first, 1.0, -1.0)
    a_wins = rng.random(n_events) < 1 / (1 + np.exp(-logit))
    rank_a = np.where(a_wins, 1, 2)
    conv = np.array([f"{source}-v{i:07d}" for i in range(n_events)])
    pid = np.array([f"u{i:07d}" for i in range(n_events)])
    judgements = pd.DataFrame(
        {
            "conversation_id": np.repeat(conv, 2),
            "participant_id": np.repeat(pid, 2),
            "source": source,
            "arm": np.array(arms)[np.column_stack([a, b]).ravel()],
            "position": np.column_stack([np.where(a_first, 1, 2), np.where(a_first, 2, 1)]).ravel(),
            "rank": np.column_stack([rank_a, 3 - rank_a]).ravel(),
        }
    )
    judgements["letter"] = np.array(list(LETTERS))[judgements["position"].to_numpy() - 1]
    conversations = pd.DataFrame({"conversation_id": conv, "participant_id": pid, "source": source})
    participants = pd.DataFrame({"participant_id": pid, "source": source})
    return (Tables(judgements=judgements, conversations=conversations, participants=participants),
            dict(zip(arms, s.tolist())))


def make_placebo(
    n_participants: int = 150,
    q: float = 0.4,
    pi: Sequence[float] | None = None,
    *,
    arms: Sequence[str] = DEFAULT_ARMS,
    domains: Sequence[str] = ("unguided", "values"),
    repeats: int = 1,
    sim_source: str = "sim_dynamic",
    seed: int = 0,
) -> Tables:
    """Humans and a simulated copy with a planted persona-placebo gap on the top-1 choice.

    Per participant × domain the human's top arm is drawn from ``pi`` (default uniform); each of the
    simulated copy's ``repeats`` runs there picks its own human's top arm with probability ``q``,
    else draws one from ``pi``. The other arms are ranked at random, and rating_preference =
    100 − 20·(rank − 1) (the same top, no ties). Agreement with one's own human is then
    q + (1 − q)·Σπ², with another human of the domain Σπ²: the true gap is q·(1 − Σπ²).
    ``conversations`` carry ``repeat`` (0, 1, …; the humans' is 0).

    >>> t = make_placebo(10, repeats=2, seed=1)
    >>> len(t.judgements) == 10 * 2 * (1 + 2) * 4
    True
    """
    rng = np.random.default_rng(seed)
    arms = list(arms)
    k = len(arms)
    p = np.full(k, 1.0 / k) if pi is None else np.asarray(pi, float) / np.sum(pi)
    conv_rows: list[dict[str, object]] = []
    tops: list[int] = []
    for i in range(n_participants):
        pid = f"p{i:04d}"
        for dom in domains:
            human_top = int(rng.choice(k, p=p))
            runs = [("human", 0, human_top)]
            for r in range(repeats):
                top = human_top if rng.random() < q else int(rng.choice(k, p=p))
                runs.append((sim_source, r, top))
            for src, r, top in runs:
                conv_rows.append({"conversation_id": f"{src}-{pid}-{dom}-r{r}", "participant_id": pid, "source": src,
                                  "domain": dom, "repeat": r, "n_turns": 2, "gen_error": False})
                tops.append(top)
    n = len(conv_rows)
    conversations = pd.DataFrame(conv_rows)
    rest = np.argsort(rng.random((n, k)), axis=1)  # a random order of the arms ...
    top_arr = np.array(tops)
    order = np.array([np.r_[t, [a for a in row if a != t]] for t, row in zip(top_arr, rest)])  # ... top first
    rank = order.argsort(axis=1) + 1  # (n, k): rank of each arm
    judgements = _per_arm(conversations, arms, rank=rank.ravel(),
                          rating_preference=(100 - 20 * (rank.ravel() - 1)).astype(float))
    return Tables(judgements=judgements, conversations=conversations)


def make_rating_repeats(
    n_participants: int = 50,
    repeats: int = 2,
    *,
    sd_participant: float = 10.0,
    sd_repeat: float = 5.0,
    sd_residual: float = 8.0,
    arms: Sequence[str] = DEFAULT_ARMS,
    arm_effects: Sequence[float] = (0.0, 3.0, 6.0, 9.0),
    domains: Sequence[str] = ("unguided", "values"),
    sim_source: str = "sim_dynamic",
    seed: int = 0,
) -> Tables:
    """Ratings with planted variance components, for the variance split and the simulator retest.

    Simulated source, ``repeats`` runs (conversations) per participant × domain:
    rating_preference = 50 + arm_effects[arm] + 2·[domain index] + u_participant + u_conversation + e,
    with u_participant ~ N(0, sd_participant²) shared by the participant's conversations,
    u_conversation ~ N(0, sd_repeat²) per conversation and e ~ N(0, sd_residual²) per arm. Humans (the
    same participants, one conversation per domain) follow the same model with their own draws.
    Ratings are not clipped (the truths stay exact); ranks are left to be derived from them.

    >>> t = make_rating_repeats(10, 3, seed=1)
    >>> int(t.conversations["repeat"].max()), len(t.judgements) == 10 * 2 * (1 + 3) * 4
    (2, True)
    """
    rng = np.random.default_rng(seed)
    arms = list(arms)
    k = len(arms)
    eff = np.asarray(arm_effects, float)
    conv_rows: list[dict[str, object]] = []
    level: list[float] = []
    for src, n_runs in (("human", 1), (sim_source, repeats)):
        u_part = rng.normal(0.0, sd_participant, n_participants)
        for i in range(n_participants):
            for di, dom in enumerate(domains):
                for r in range(n_runs):
                    conv_rows.append({"conversation_id": f"{src}-p{i:04d}-{dom}-r{r}", "participant_id": f"p{i:04d}",
                                      "source": src, "domain": dom, "repeat": r, "n_turns": 2, "gen_error": False})
                    level.append(50.0 + 2.0 * di + u_part[i] + rng.normal(0.0, sd_repeat))
    n = len(conv_rows)
    conversations = pd.DataFrame(conv_rows)
    rating = np.asarray(level)[:, None] + eff[None, :] + rng.normal(0.0, sd_residual, (n, k))
    judgements = _per_arm(conversations, arms, rating_preference=rating.ravel())
    return Tables(judgements=judgements, conversations=conversations)


def _per_arm(conversations: pd.DataFrame, arms: Sequence[str], **values: np.ndarray) -> pd.DataFrame:
    """Judgement rows, one per conversation × arm (arms vary fastest), with ``values`` in that order."""
    n = len(conversations)
    rep = np.repeat(np.arange(n), len(arms))
    cols = {c: conversations[c].to_numpy()[rep] for c in ("conversation_id", "participant_id", "source", "domain")}
    return pd.DataFrame({**cols, "arm": np.tile(np.array(list(arms)), n), **values})
