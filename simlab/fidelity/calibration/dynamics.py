"""Calibration cases of the feedback-dynamics comparison: turn slope, simulated − human.

The generator plants what broke the old random-intercept model (issue 12, finding 1):

- per-participant intercepts and turn slopes, correlated (ρ = 0.6) between a human and their
  simulated copy (one participant_id, two units);
- a conversation level, and a per-conversation arm effect that persists over its turns;
- 1–4 domains (conversations) per participant, 2–6 turns, 4 arms rated at every turn;
- survivorship: a conversation's length grows with its rating level, and simulated
  conversations run longer than human ones (a model that reads between-conversation levels
  as change over turns finds a slope difference that is not there);
- generation errors that grow with the turn and are more frequent in the simulator, their
  replies rated near 0 (flagged ``gen_error`` in the turns table: the analysis must drop them).

Under ``effect=False`` both sources have the same mean slope; under ``effect=True`` the
simulator's is ``EFFECT`` points per turn higher. Slopes, levels and lengths are independent of
each other apart from the level–length link, so the within-conversation slope estimates the
mean slope of each source and the difference estimates ``EFFECT`` exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from simlab.fidelity.analyses import dynamics
from simlab.fidelity.calibration import Case, Measured
from simlab.schema import DOMAINS
from simlab.tables import Tables

SIM = "sim_dynamic"
ARMS = ("GEN", "PROMPT", "DPFT", "PPFT")
HUMAN_SLOPE = -1.0
"""Mean human change of turn_rating per turn (points)."""
EFFECT = 1.0
"""Simulated − human mean slope under the planted effect (points per turn)."""
N_BOOT = 20
"""Draws of the descriptive shares only (the slopes are cluster-robust, not bootstrapped)."""


def simulate(seed: int, effect: bool) -> Tables:
    """Human + simulated turn ratings with the truth planted (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 121))
    rho = 0.6
    level = rng.normal(0, 8, (2, n))
    slope = rng.normal(0, 1.5, (2, n))
    # the simulated copy shares part of its participant's level and slope
    level[1] = rho * level[0] + np.sqrt(1 - rho**2) * level[1]
    slope[1] = rho * slope[0] + np.sqrt(1 - rho**2) * slope[1]
    mean_slope = (HUMAN_SLOPE, HUMAN_SLOPE + (EFFECT if effect else 0.0))
    base = (50.0, 56.0)
    longer = (0.4, 0.6)  # chance of each further turn: the simulator talks longer
    err = ((0.01, 0.0), (0.02, 0.02))  # gen_error share at turn 0 and its growth per turn
    arm_mean = rng.normal(0, 3, (2, len(ARMS)))
    k = len(ARMS)
    # conversations: source × participant × its first n_dom domains
    n_dom = rng.integers(1, len(DOMAINS) + 1, n)
    src = np.repeat([0, 1], n_dom.sum())
    who = np.tile(np.repeat(np.arange(n), n_dom), 2)
    dom = np.tile(np.concatenate([np.arange(m) for m in n_dom]), 2)
    m = src.size
    lvl = np.array(base)[src] + level[src, who] + rng.normal(0, 5, m)
    p_more = expit(np.log(np.array(longer) / (1 - np.array(longer)))[src] + 0.08 * (lvl - np.array(base)[src]))
    n_turns = 2 + rng.binomial(4, p_more)
    cid = np.array([f"{('human', SIM)[s]}-p{i:03d}-{DOMAINS[d]}" for s, i, d in zip(src, who, dom)])
    conversations = pd.DataFrame({
        "conversation_id": cid, "participant_id": [f"p{i:03d}" for i in who], "source": np.array(["human", SIM])[src],
        "domain": np.array(DOMAINS)[dom], "n_turns": n_turns,
        "stop_reason": np.where(n_turns == 6, "max_turns", "user_ended")})
    # turn ratings: one row per conversation × turn × arm
    c = np.repeat(np.arange(m), n_turns * k)
    turn = np.concatenate([np.repeat(np.arange(t), k) for t in n_turns])
    arm = np.tile(np.arange(k), int(n_turns.sum()))
    arm_here = arm_mean[src] + rng.normal(0, 3, (m, k))  # each conversation's take on the arms
    s_c = src[c]
    y = (lvl[c] + arm_here[c, arm] + (np.array(mean_slope)[s_c] + slope[s_c, who[c]]) * turn
         + rng.normal(0, 8, c.size))
    bad = rng.random(c.size) < np.array(err)[s_c, 0] + np.array(err)[s_c, 1] * turn
    y = np.where(bad, rng.uniform(0, 15, c.size), y)
    turns = pd.DataFrame({"conversation_id": cid[c], "turn": turn, "role": "assistant", "arm": np.array(ARMS)[arm],
                          "text": "", "turn_rating": np.clip(np.round(y), 0, 100), "gen_error": bad})
    judgements = pd.DataFrame({"conversation_id": np.repeat(cid, k),
                               "participant_id": np.repeat(conversations["participant_id"].to_numpy(), k),
                               "arm": np.tile(ARMS, m)})
    return Tables(judgements=judgements, conversations=conversations, turns=turns)


def _measured(tables: Tables, seed: int, window: bool) -> Measured:
    r = dynamics(tables, n_boot=N_BOOT, seed=seed)
    e = (r.slope_diff_window_vs_human if window else r.slope_diff_vs_human).get(SIM)
    return Measured(e, e.p_value if e is not None else None)


def measure_all(tables: Tables, seed: int) -> Measured:
    """slope_diff_vs_human of the simulated source, as dynamics reports it."""
    return _measured(tables, seed, False)


def measure_window(tables: Tables, seed: int) -> Measured:
    """slope_diff_window_vs_human of the simulated source."""
    return _measured(tables, seed, True)


def truth(effect: bool) -> float:
    return EFFECT if effect else 0.0


NOTE = ("60–120 participants, 1–4 conversations each, 2–6 turns, 4 arms rated per turn; per-participant "
        "intercepts (SD 8) and slopes (SD 1.5) correlated 0.6 between a human and their simulated copy; "
        "conversation level (SD 5) and per-conversation arm effects (SD 3); conversation length grows with its "
        "level, simulated conversations run longer; gen_error replies (more frequent late and in the simulator) "
        f"rated near 0. Effect: simulated slope {EFFECT:+g} points per turn vs human ({HUMAN_SLOPE:g}).")

CASES = [
    Case("dynamics", "turn slope, sim − human (all turns)", simulate, measure_all, truth, 0.0, NOTE),
    Case("dynamics", "turn slope, sim − human (balanced window)", simulate, measure_window, truth, 0.0, NOTE),
]
