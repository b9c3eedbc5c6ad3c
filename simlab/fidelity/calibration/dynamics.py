"""Calibration cases of the feedback-dynamics comparison: turn slope, simulated − human.

The generator plants what a random-intercept model of the turn slope gets wrong:

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

Conversation length (``n_turns_diff_vs_human``, ``early_stop_diff_vs_human``), a second
generator (``simulate_length``): 60–120 participants with 1–4 conversations each (the same domains
for a human and their simulated copy). After each turn t < ``MAX_TURNS`` the conversation ends
with an arm error with probability ``ERROR_HAZARD`` (stop_reason ``error``, both sources alike),
else the user goes on with probability expit(η), else ends it (``user_ended``); at ``MAX_TURNS``
it stops at the cap (``max_turns``). η = base[source] + domain effect + participant propensity
(SD 1, correlated 0.6 between a human and their simulated copy, same marginal in both) +
conversation deviation (SD 0.5). Under ``effect=False`` both sources share the base; under
``effect=True`` the simulator's is ``LENGTH_EFFECT`` log-odds higher (it goes on longer). The truths
(difference of the expected mean turns per conversation, and of the user-ended share) are exact:
Gauss–Hermite quadrature over the normal η of each domain, averaged with each domain's expected
share of the conversations.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from simlab.fidelity.analyses import dynamics
from simlab.fidelity.calibration import Case, Measured
from simlab.schema import DOMAINS
from simlab.tables import Tables

__all__ = [
    "CASES",
    "DIALOGUE_EVAL_SHARE",
    "DIALOGUE_EVAL_SLIDERS",
    "DOMAIN_EFFECT",
    "HELDOUT_EFFECT",
    "LENGTH_BASE",
    "LENGTH_EFFECT",
    "SD_CONVERSATION",
    "SD_PARTICIPANT",
    "SIM",
    "dialogue_eval_dir",
    "measure_heldout",
    "simulate_dialogue_eval_split",
    "simulate_length",
    "simulate_prism_shape",
    "simulate_prism_thumbs",
    "truth_early",
    "truth_heldout",
    "truth_turns",
]

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


# ---------------------------------------------------------------------------------------------
# coarse turn ratings (thumbs, 5-point), rating-dependent stopping, one-conversation participants

COARSE_MAX_TURNS = 10
COARSE_SLOPE = -0.08
"""Mean change per turn of the latent rating (log-odds scale), human; the simulator's under the null."""
COARSE_EFFECT = 0.3
"""The simulator's extra latent change per turn (log-odds) under the effect."""
FIVE_POINT_CUTS = (-1.5, -0.5, 0.5, 1.5)
"""Cut points of the latent rating (logistic noise) into the 5-point scale 0, 25, 50, 75, 100."""


def _coarse(seed: int, effect: bool, scale: str, paired: bool, n: int | None = None) -> Tables:
    """Coarse turn ratings as real feedback data have them (see ``COARSE_NOTE``)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(150, 401)) if n is None else n
    per_turn = 1 if scale == "binary" else len(ARMS)  # thumbs on one bot per conversation; 5-point on all four
    # participants: a human and (paired) their simulated copy, or (unpaired) a participant of one source only
    level = rng.normal(0, 1.0, (2, n))
    slope = rng.normal(0, 0.3, (2, n))
    if paired:
        level[1] = 0.6 * level[0] + 0.8 * level[1]
        slope[1] = 0.6 * slope[0] + 0.8 * slope[1]
    n_conv = np.where(rng.random((2, n)) < 0.7, 1, rng.integers(2, 5, (2, n)))  # most have one conversation
    if paired:
        n_conv[1] = n_conv[0]
    src = np.concatenate([np.zeros(n_conv[0].sum(), int), np.ones(n_conv[1].sum(), int)])
    who = np.concatenate([np.repeat(np.arange(n), n_conv[0]), np.repeat(np.arange(n), n_conv[1])])
    m = src.size
    mean_slope = np.array([COARSE_SLOPE, COARSE_SLOPE + (COARSE_EFFECT if effect else 0.0)])
    conv_level = rng.normal(0, 0.5, m)
    conv_slope = rng.normal(0, 0.3, m)
    arm_effect = np.array([0.0, 0.3, -0.2, 0.5])
    arm_of_conv = rng.integers(0, len(ARMS), m)
    rows_c, rows_t, rows_a, rows_y = [], [], [], []
    n_turns = np.zeros(m, int)
    alive = np.ones(m, bool)
    for t in range(COARSE_MAX_TURNS):
        c = np.flatnonzero(alive)
        arms = arm_of_conv[c][:, None] if per_turn == 1 else np.tile(np.arange(len(ARMS)), (c.size, 1))
        eta = (0.3 + level[src[c], who[c]] + conv_level[c] + (mean_slope[src[c]] + slope[src[c], who[c]] + conv_slope[c]) * t)[:, None]
        eta = eta + arm_effect[arms]
        if scale == "binary":
            y = (rng.random(eta.shape) < expit(eta)) * 100.0
        else:
            z = eta + rng.logistic(size=eta.shape)
            y = np.searchsorted(np.array(FIVE_POINT_CUTS), z) * 25.0
        rows_c.append(np.repeat(c, arms.shape[1]))
        rows_t.append(np.full(arms.size, t))
        rows_a.append(arms.ravel())
        rows_y.append(y.ravel())
        n_turns[c] += 1
        # the user goes on less often after a poor turn (rating-dependent stopping), never past the cap
        mood = y.mean(axis=1) / 100.0
        go_on = rng.random(c.size) < expit(0.5 - 2.0 * (1.0 - mood))
        alive[c[~go_on]] = False
        if t == COARSE_MAX_TURNS - 1:
            alive[:] = False
    prefix = ("human", SIM)
    pid = np.array([f"p{i:04d}" if paired else f"{prefix[s][0]}{i:04d}" for s, i in zip(src, who)])
    cid = np.array([f"{prefix[s]}-{p}-c{k}" for k, (s, p) in enumerate(zip(src, pid))])
    conversations = pd.DataFrame({
        "conversation_id": cid, "participant_id": pid, "source": np.array(["human", SIM])[src],
        "domain": "unguided", "n_turns": n_turns,
        "stop_reason": np.where(n_turns == COARSE_MAX_TURNS, "max_turns", "user_ended")})
    c = np.concatenate(rows_c)
    turns = pd.DataFrame({"conversation_id": cid[c], "turn": np.concatenate(rows_t), "role": "assistant",
                          "arm": np.array(ARMS)[np.concatenate(rows_a)], "text": "",
                          "turn_rating": np.concatenate(rows_y), "gen_error": False})
    k = len(ARMS)
    judgements = pd.DataFrame({"conversation_id": np.repeat(cid, k), "participant_id": np.repeat(pid, k),
                               "arm": np.tile(ARMS, m)})
    return Tables(judgements=judgements, conversations=conversations, turns=turns)


def simulate_binary(seed: int, effect: bool) -> Tables:
    """Thumbs up/down (0/100) on one bot per conversation, participants of one source each."""
    return _coarse(seed, effect, "binary", paired=False)


def simulate_five_point(seed: int, effect: bool) -> Tables:
    """5-point turn ratings (0, 25, …, 100) of all four arms, a human and their simulated copy."""
    return _coarse(seed, effect, "five_point", paired=True)


_TRUTH_N = 30_000
_TRUTHS: dict[tuple[str, bool, bool], float] = {}


def _pseudo_truth(scale: str, paired: bool, window: bool) -> float:
    """What the slope difference estimates under the effect: with rating-dependent stopping and
    coarse ratings the within-conversation slope is not the latent change per turn, so the truth is
    the estimator's value on one very large dataset (``_TRUTH_N`` participants per source, fixed
    seed; its standard error is a small fraction of a calibration dataset's). Computed once."""
    if (scale, paired, window) not in _TRUTHS:
        r = dynamics(_coarse(987_654_321, True, scale, paired, n=_TRUTH_N), n_boot=1, seed=0)
        _TRUTHS[(scale, paired, False)] = float(r.slope_diff_vs_human[SIM].value)
        _TRUTHS[(scale, paired, True)] = float(r.slope_diff_window_vs_human[SIM].value)
    return _TRUTHS[(scale, paired, window)]


def truth_binary(effect: bool) -> float:
    return _pseudo_truth("binary", False, False) if effect else 0.0


def truth_binary_window(effect: bool) -> float:
    return _pseudo_truth("binary", False, True) if effect else 0.0


def truth_five_point(effect: bool) -> float:
    return _pseudo_truth("five_point", True, False) if effect else 0.0


def truth_five_point_window(effect: bool) -> float:
    return _pseudo_truth("five_point", True, True) if effect else 0.0


COARSE_NOTE = ("150–400 participants per source, 70% with one conversation (else 2–4), 1–{max} rated turns: after "
               "each turn the user goes on with probability expit(0.5 − 2·(1 − mean rating/100)), so poor turns end "
               "conversations; latent rating (log-odds) = participant level (SD 1) + conversation level (SD 0.5) + "
               "arm effect + (mean slope {slope:+g} + participant slope, SD 0.3, + conversation slope, SD 0.3)·turn. "
               "{what} Effect: the simulator's "
               "latent slope {effect:+g} per turn; the truth is the estimator's value on one dataset of 30,000 "
               "participants per source.")

# ---------------------------------------------------------------------------------------------
# conversation length and early stops

MAX_TURNS = 6
ERROR_HAZARD = 0.02
"""Chance that an arm error ends the conversation after a turn (stop_reason "error"), both sources."""
LENGTH_BASE = 0.8
"""Log-odds of going on after a turn (human; the simulator's under the null)."""
LENGTH_EFFECT = 0.5
"""The simulator's extra log-odds of going on under the effect."""
DOMAIN_EFFECT = (0.0, 0.3, -0.3, 0.6)
"""Log-odds of going on, per domain (DOMAINS order), in both sources."""
SD_PARTICIPANT, SD_CONVERSATION, RHO_LENGTH = 1.0, 0.5, 0.6


def _lengths(rng: np.random.Generator, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_turns, stop_reason) of conversations whose user goes on with log-odds ``eta``."""
    m = eta.size
    go_on = rng.random((m, MAX_TURNS - 1)) < expit(eta)[:, None]
    error = rng.random((m, MAX_TURNS - 1)) < ERROR_HAZARD
    stop = ~go_on | error  # after turn t + 1 (column t); an error comes before the user's decision
    first = np.where(stop.any(axis=1), stop.argmax(axis=1), MAX_TURNS - 1)
    n_turns = first + 1
    reason = np.where(n_turns == MAX_TURNS, "max_turns",
                      np.where(error[np.arange(m), np.minimum(first, MAX_TURNS - 2)], "error", "user_ended"))
    return n_turns, reason


def simulate_length(seed: int, effect: bool) -> Tables:
    """Human + simulated conversations with planted lengths and stop reasons (module docstring)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 121))
    prop = rng.normal(0, SD_PARTICIPANT, (2, n))
    prop[1] = RHO_LENGTH * prop[0] + np.sqrt(1 - RHO_LENGTH**2) * prop[1]  # the copy shares part of it
    n_dom = rng.integers(1, len(DOMAINS) + 1, n)
    src = np.repeat([0, 1], n_dom.sum())
    who = np.tile(np.repeat(np.arange(n), n_dom), 2)
    dom = np.tile(np.concatenate([np.arange(m) for m in n_dom]), 2)
    m = src.size
    base = np.array([LENGTH_BASE, LENGTH_BASE + (LENGTH_EFFECT if effect else 0.0)])
    eta = base[src] + np.array(DOMAIN_EFFECT)[dom] + prop[src, who] + rng.normal(0, SD_CONVERSATION, m)
    n_turns, reason = _lengths(rng, eta)
    cid = np.array([f"{('human', SIM)[s]}-p{i:03d}-{DOMAINS[d]}" for s, i, d in zip(src, who, dom)])
    conversations = pd.DataFrame({
        "conversation_id": cid, "participant_id": [f"p{i:03d}" for i in who], "source": np.array(["human", SIM])[src],
        "domain": np.array(DOMAINS)[dom], "n_turns": n_turns, "stop_reason": reason})
    k = len(ARMS)
    judgements = pd.DataFrame({"conversation_id": np.repeat(cid, k),
                               "participant_id": np.repeat(conversations["participant_id"].to_numpy(), k),
                               "arm": np.tile(ARMS, m)})
    return Tables(judgements=judgements, conversations=conversations)


def _length_moments(eta_mean: float) -> tuple[float, float]:
    """(E n_turns, P(user_ended)) of one domain and source, over η ~ N(eta_mean, SD² + SD²), by
    Gauss–Hermite quadrature (exact to ~1e-12 for these smooth integrands)."""
    x, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    p = expit(eta_mean + np.hypot(SD_PARTICIPANT, SD_CONVERSATION) * x)
    q = (1 - ERROR_HAZARD) * p  # chance of each further turn
    t = np.arange(MAX_TURNS)[:, None]
    reach = q[None, :] ** t  # P(n_turns ≥ t + 1)
    mean = float(w @ reach.sum(axis=0))
    user_ended = float(w @ (reach[:-1] * (1 - ERROR_HAZARD) * (1 - p)[None, :]).sum(axis=0))
    return mean, user_ended


def _length_truth(which: int, effect: bool) -> float:
    if not effect:
        return 0.0  # one distribution of lengths and stop reasons in both sources
    d = len(DOMAINS)
    share = np.array([d - i for i in range(d)], float)  # domain i is held by those with > i domains
    share /= share.sum()  # expected share of the conversations in each domain (1–4 domains uniform)
    diff = [_length_moments(LENGTH_BASE + LENGTH_EFFECT + e)[which] - _length_moments(LENGTH_BASE + e)[which]
            for e in DOMAIN_EFFECT]
    return float(share @ np.array(diff))


def truth_turns(effect: bool) -> float:
    return _length_truth(0, effect)


def truth_early(effect: bool) -> float:
    return _length_truth(1, effect)


def measure_turns(tables: Tables, seed: int) -> Measured:
    """n_turns_diff_vs_human of the simulated source (cluster-robust OLS; no turn ratings here)."""
    e = dynamics(tables, n_boot=N_BOOT, seed=seed).n_turns_diff_vs_human.get(SIM)
    return Measured(e, e.p_value if e is not None else None)


def measure_early(tables: Tables, seed: int) -> Measured:
    """early_stop_diff_vs_human (user-ended share) of the simulated source."""
    e = dynamics(tables, n_boot=N_BOOT, seed=seed).early_stop_diff_vs_human.get(SIM)
    return Measured(e, e.p_value if e is not None else None)


NOTE = ("60–120 participants, 1–4 conversations each, 2–6 turns, 4 arms rated per turn; per-participant "
        "intercepts (SD 8) and slopes (SD 1.5) correlated 0.6 between a human and their simulated copy; "
        "conversation level (SD 5) and per-conversation arm effects (SD 3); conversation length grows with its "
        "level, simulated conversations run longer; gen_error replies (more frequent late and in the simulator) "
        f"rated near 0. Effect: simulated slope {EFFECT:+g} points per turn vs human ({HUMAN_SLOPE:g}).")

LENGTH_NOTE = (f"60–120 participants, 1–4 conversations each (same domains for the copy), 1–{MAX_TURNS} turns: after "
               f"each turn an arm error ends it ({100 * ERROR_HAZARD:g}%, both sources), else the user goes on with "
               "log-odds = base + domain effect + participant propensity (SD 1, correlated 0.6 between a human and "
               "their simulated copy) + conversation deviation (SD 0.5), else ends it; null: same base. Effect: the "
               f"simulator goes on {LENGTH_EFFECT:+g} log-odds more; exact truths by quadrature "
               "(+{:.3f} turns, {:+.1f} pp user-ended).")

_BINARY_NOTE = COARSE_NOTE.format(
    max=COARSE_MAX_TURNS, slope=COARSE_SLOPE, effect=COARSE_EFFECT,
    what="Thumbs up/down (0/100) drawn from it, one bot per conversation; human and simulated participants are "
         "different people (a random split of one population, as in a relabelled human data set).")
_FIVE_NOTE = COARSE_NOTE.format(
    max=COARSE_MAX_TURNS, slope=COARSE_SLOPE, effect=COARSE_EFFECT,
    what="5-point ratings (0, 25, 50, 75, 100) of all four arms per turn, cut from it with logistic noise; a human "
         "and their simulated copy share level and slope (correlation 0.6) and their number of conversations.")

CASES = [
    Case("dynamics", "turn slope, sim − human (all turns)", simulate, measure_all, truth, 0.0, NOTE),
    Case("dynamics", "turn slope, sim − human (balanced window)", simulate, measure_window, truth, 0.0, NOTE),
    Case("dynamics", "turn slope, sim − human (all turns; thumbs, stopping on ratings)", simulate_binary,
         measure_all, truth_binary, 0.0, _BINARY_NOTE),
    Case("dynamics", "turn slope, sim − human (balanced window; thumbs, stopping on ratings)", simulate_binary,
         measure_window, truth_binary_window, 0.0, _BINARY_NOTE),
    Case("dynamics", "turn slope, sim − human (all turns; 5-point, stopping on ratings)", simulate_five_point,
         measure_all, truth_five_point, 0.0, _FIVE_NOTE),
    Case("dynamics", "turn slope, sim − human (balanced window; 5-point, stopping on ratings)", simulate_five_point,
         measure_window, truth_five_point_window, 0.0, _FIVE_NOTE),
    Case("dynamics", "mean turns per conversation, sim − human", simulate_length, measure_turns, truth_turns, 0.0,
         LENGTH_NOTE.format(truth_turns(True), 100 * truth_early(True))),
    Case("dynamics", "user-ended (early stop) share, sim − human", simulate_length, measure_early, truth_early, 0.0,
         LENGTH_NOTE.format(truth_turns(True), 100 * truth_early(True))),
]

# ---------------------------------------------------------------------------------------------
# held-out nulls: shapes the cases above were not tuned on (a PRISM-shaped generator written apart
# from them, and random participant splits of real human ratings in sequence)

HELDOUT_MAX_TURNS = 22
HELDOUT_EFFECT = 5.0
"""The simulator's extra change per turn under the effect (points), added to its rated replies after
they are drawn (not clipped), so the planted truth is exact whatever the stopping and heaping."""
HELDOUT_ARM = (0.0, 4.0, -3.0, 6.0)
"""Arm effects (points) of the PRISM-shaped generator, in ``ARMS`` order."""
N_CONV_SHARES = {1: 0.5, 2: 0.32, 3: 0.1, 4: 0.05, 6: 0.03}
"""Conversations per participant in the PRISM-shaped generator: most have one or two."""


def _heaped_slider(rng: np.random.Generator, y: np.ndarray) -> np.ndarray:
    """A 1–100 slider as people move it: 15% leave it at 50, 10% round to tens, half of those above
    85 push it to 100."""
    y = np.clip(np.round(y), 1, 100)
    u = rng.random(y.shape)
    y = np.where(u < 0.15, 50.0, np.where(u < 0.25, np.round(y / 10) * 10, y))
    y = np.where((y > 85) & (rng.random(y.shape) < 0.5), 100.0, y)
    return np.asarray(np.clip(y, 1, 100))


def _shifted(turns: pd.DataFrame, conversations: pd.DataFrame, effect: bool) -> pd.DataFrame:
    """The simulated source's ratings + ``HELDOUT_EFFECT`` × turn under the effect (exact truth)."""
    if not effect:
        return turns
    sim = turns["conversation_id"].isin(conversations.loc[conversations["source"] == SIM, "conversation_id"])
    return turns.assign(turn_rating=turns["turn_rating"] + np.where(sim, HELDOUT_EFFECT * turns["turn"], 0.0))


def _split(rng: np.random.Generator, n: int, share_human: float) -> np.ndarray:
    """A random relabelling of one population: True = human, else simulated (both non-empty)."""
    human = rng.random(n) < share_human
    human[:2] = [True, False]
    return np.asarray(rng.permutation(human))


def simulate_prism_shape(seed: int, effect: bool, scale: str = "slider", n: int | None = None) -> Tables:
    """PRISM-shaped turn ratings, one population split at random into human and simulated.

    120–300 participants, each with 1–6 conversations (half one, a third two); heavy-tailed
    (t with 3 df) participant levels and slopes, conversation deviations; 4 arms rated at the first
    turn, then two replies of the arm rated best there at every later turn; rated turns 2–22: after
    the second turn the user goes on less often after poor ratings (mean ≈ 3.4). Ratings on a heaped
    1–100 slider (``_heaped_slider``) or thumbs (0/100, logistic in the latent rating)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(120, 301)) if n is None else n
    human = _split(rng, n, float(rng.uniform(0.3, 0.7)))
    n_conv = rng.choice(list(N_CONV_SHARES), size=n, p=list(N_CONV_SHARES.values()))
    level = 50 + 15 * rng.standard_t(3, n) / np.sqrt(3)
    slope = -1.0 + 3.0 * rng.standard_t(3, n) / np.sqrt(3)
    who = np.repeat(np.arange(n), n_conv)
    m = who.size
    c_level = level[who] + rng.normal(0, 8, m)
    c_slope = slope[who] + rng.normal(0, 2, m)
    arm_effect = np.array(HELDOUT_ARM)
    rows_c, rows_t, rows_a, rows_y = [], [], [], []
    alive = np.arange(m)
    chosen = np.zeros(m, int)
    for t in range(HELDOUT_MAX_TURNS):
        arms = np.tile(np.arange(len(ARMS)), (alive.size, 1)) if t == 0 else np.repeat(chosen[alive][:, None], 2, 1)
        latent = (c_level[alive] + c_slope[alive] * t)[:, None] + arm_effect[arms] + 12 * rng.standard_t(4, arms.shape)
        y = (_heaped_slider(rng, latent) if scale == "slider"
             else (rng.random(arms.shape) < expit((latent - 50) / 12)) * 100.0)
        if t == 0:
            chosen[alive] = np.argmax(y + 1e-3 * rng.random(arms.shape), axis=1)
        rows_c.append(np.repeat(alive, arms.shape[1]))
        rows_t.append(np.full(arms.size, t))
        rows_a.append(arms.ravel())
        rows_y.append(y.ravel())
        if t >= 1:  # two rated turns at least; then poor ratings end conversations
            alive = alive[rng.random(alive.size) < expit(0.2 + 3.2 * (y.mean(axis=1) / 100 - 0.5))]
    c = np.concatenate(rows_c)
    turn = np.concatenate(rows_t)
    n_turns = np.zeros(m, int)
    np.maximum.at(n_turns, c, turn + 1)
    pid = np.array([f"p{i:04d}" for i in who])
    cid = np.array([f"c{k:05d}" for k in range(m)])
    conversations = pd.DataFrame({
        "conversation_id": cid, "participant_id": pid, "source": np.where(human[who], "human", SIM),
        "domain": "unguided", "n_turns": n_turns,
        "stop_reason": np.where(n_turns == HELDOUT_MAX_TURNS, "max_turns", "user_ended")})
    turns = pd.DataFrame({"conversation_id": cid[c], "turn": turn, "role": "assistant",
                          "arm": np.array(ARMS)[np.concatenate(rows_a)], "text": "",
                          "turn_rating": np.concatenate(rows_y), "gen_error": False})
    k = len(ARMS)
    judgements = pd.DataFrame({"conversation_id": np.repeat(cid, k), "participant_id": np.repeat(pid, k),
                               "arm": np.tile(ARMS, m)})
    return Tables(judgements=judgements, conversations=conversations, turns=_shifted(turns, conversations, effect))


def simulate_prism_thumbs(seed: int, effect: bool) -> Tables:
    """``simulate_prism_shape`` with thumbs up/down (0/100) instead of the slider."""
    return simulate_prism_shape(seed, effect, "thumbs")


DIALOGUE_EVAL_SLIDERS = ("interesting", "fun", "consistent", "fluent", "topic", "robotic", "repetitive")
"""Dialogue-Eval's seven sliders; robotic and repetitive are negative (used as 100 − x)."""
DIALOGUE_EVAL_SHARE = 0.6
"""Share of the Dialogue-Eval workers in each held-out dataset."""


def dialogue_eval_dir() -> Path | None:
    """``$SIMLAB_SHARED_DATA/dialogue_eval`` or ``<repo>/../shared/data/dialogue_eval``, None when absent."""
    root = os.environ.get("SIMLAB_SHARED_DATA") or str(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    path = Path(root) / "dialogue_eval"
    return path if (path / "FreeTopicRound1.csv").is_file() else None


@functools.cache
def _dialogue_eval_ratings() -> pd.DataFrame:
    """Per Dialogue-Eval HIT, its six bots in the order shown with the seven slider scores."""
    from simlab.fidelity.importers.dialogue_eval import import_dialogue_eval

    path = dialogue_eval_dir()
    if path is None:
        raise FileNotFoundError("the Dialogue-Eval data are not at ../shared/data/dialogue_eval "
                                "(set SIMLAB_SHARED_DATA)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer reports the rows it skips
        j = import_dialogue_eval(path).judgements
    cols = [f"score_{s}" for s in DIALOGUE_EVAL_SLIDERS]
    return j[["conversation_id", "participant_id", "arm", "position", *cols]].sort_values(
        ["conversation_id", "position"]).reset_index(drop=True)


def simulate_dialogue_eval_split(seed: int, effect: bool) -> Tables:
    """Real human ratings in sequence, split at random by worker into "human" and "simulated".

    Dialogue-Eval has no turn ratings (one set of sliders per chat), but each HIT is one worker
    rating six chats one after another: the HIT is the conversation, the chat's place in it the turn
    and its bot the arm, the rating one of the seven sliders (the seed picks it). Informative length:
    after the second rated chat the worker goes on with probability expit(3·(rating/100 − 0.5)), so
    a poor rating cuts the sequence. The workers (663, most with one HIT, a few with up to 14) are split at random, half and
    half: two sources of different people with no pairing and the same truth. Each dataset takes a
    random ``DIALOGUE_EVAL_SHARE`` of the workers, so the datasets differ by more than the split."""
    rng = np.random.default_rng(seed)
    r = _dialogue_eval_ratings()
    workers = np.asarray(pd.unique(r["participant_id"]))
    r = r[r["participant_id"].isin(rng.choice(workers, int(DIALOGUE_EVAL_SHARE * workers.size), replace=False))]
    slider = DIALOGUE_EVAL_SLIDERS[seed % len(DIALOGUE_EVAL_SLIDERS)]
    y = r[f"score_{slider}"].to_numpy(float)
    y = 100.0 - y if slider in ("robotic", "repetitive") else y
    turn = r["position"].to_numpy(int) - 1
    go_on = rng.random(y.size) < expit(3.0 * (y / 100 - 0.5))
    # a HIT stops at the first chat (from the second on) after which the worker does not go on
    stop = pd.Series((turn >= 1) & ~go_on).groupby(r["conversation_id"].to_numpy()).cumsum().to_numpy()
    keep = (stop == 0) | ((stop == 1) & ((turn >= 1) & ~go_on))
    workers = np.asarray(pd.unique(r["participant_id"]))
    human = dict(zip(workers, _split(rng, workers.size, 0.5)))
    rk = r[keep]
    conv = rk.groupby("conversation_id", sort=True).agg(participant_id=("participant_id", "first"),
                                                          n_turns=("position", "size")).reset_index()
    conv["source"] = np.where(conv["participant_id"].map(human).astype(bool), "human", SIM)
    conv["domain"] = "unguided"
    conv["stop_reason"] = np.where(conv["n_turns"] == 6, "max_turns", "user_ended")
    turns = pd.DataFrame({"conversation_id": rk["conversation_id"].to_numpy(), "turn": turn[keep],
                          "role": "assistant", "arm": rk["arm"].to_numpy(), "text": "",
                          "turn_rating": y[keep], "gen_error": False})
    judgements = rk[["conversation_id", "participant_id", "arm"]].reset_index(drop=True)
    return Tables(judgements=judgements, conversations=conv, turns=_shifted(turns, conv, effect))


def truth_heldout(effect: bool) -> float:
    return HELDOUT_EFFECT if effect else 0.0


def measure_heldout(tables: Tables, seed: int) -> Measured:
    """slope_diff_vs_human of the simulated source on a held-out shape (all turns)."""
    return _measured(tables, seed, False)


_HELDOUT_WHAT = ("One population split at random into \"human\" and \"simulated\" (30–70% human): different people, "
                 "no pairing, the same truth. Effect: the simulator's rated replies + {effect:g} points × turn, added "
                 "after they are drawn (exact truth).")
_PRISM_NOTE = ("Held out (written apart from the cases above, PRISM's shape): 120–300 participants, half with one "
               "conversation, a third two, a few 3–6; 4 arms rated at the first turn, then two replies of the arm "
               "rated best there; 2–22 rated turns (mean ≈ 3.3), going on less often after poor ratings; heavy-tailed "
               "(t, 3 df) participant levels and slopes, t-distributed noise. {scale} ") + _HELDOUT_WHAT
_DIALOGUE_EVAL_NOTE = ("Held out, real human ratings: Dialogue-Eval (../shared/data, no turn ratings: each HIT is one "
                       "worker rating six chats in turn, so the HIT is the conversation, the chat's place the turn, "
                       "its bot the arm, one of the seven sliders the rating); a random 60% of the 663 workers, the "
                       "sequence cut after the second chat with probability 1 − expit(3·(rating/100 − 0.5)) per chat; "
                       "workers split at random half and half into \"human\" and \"simulated\". Effect: the "
                       "\"simulated\" ratings + {effect:g} points × turn (exact truth).")

CASES += [
    Case("dynamics", "turn slope, sim − human (held-out: PRISM-shaped slider, one population split)",
         simulate_prism_shape, measure_heldout, truth_heldout, 0.0,
         _PRISM_NOTE.format(scale="1–100 slider with heaping (15% left at 50, 10% rounded to tens, half of those "
                                  "above 85 pushed to 100).", effect=HELDOUT_EFFECT)),
    Case("dynamics", "turn slope, sim − human (held-out: PRISM-shaped thumbs, one population split)",
         simulate_prism_thumbs, measure_heldout, truth_heldout, 0.0,
         _PRISM_NOTE.format(scale="Thumbs up/down (0/100), logistic in the latent rating.", effect=HELDOUT_EFFECT)),
]
if dialogue_eval_dir() is not None:  # the real data are not part of the repository: the case runs where they are
    CASES.append(Case("dynamics", "turn slope, sim − human (held-out: Dialogue-Eval workers split at random)",
                      simulate_dialogue_eval_split, measure_heldout, truth_heldout, 0.0,
                      _DIALOGUE_EVAL_NOTE.format(effect=HELDOUT_EFFECT)))
