"""Calibration of ``analyses.ppi``: does the PPI interval cover the humans' truth, whatever the simulator?

Generator (``planted``): ``n`` humans, each with a simulated copy, and ``n_sim_only`` simulated
participants without a human; each participant makes ``n_events`` choices among ``ARMS`` shown in a
random order. Participant p's utility of arm a in an event is

    u = strength[a] + pref[p, a] + bonus[p]·[shown first] + Gumbel,

with ``pref`` ~ N(0, PREF_SD²) per arm and ``bonus`` ~ N(position, BONUS_SD²). A copy's latent values
(pref, bonus) are ``rho`` × its human's + √(1 − ρ²) × its own draw, so they have the humans'
distribution, correlated ``rho`` with their human's; the simulated-only participants draw theirs afresh.
A biased simulator adds ``offset`` to every simulated participant's bonus and to arm C's strength.

The truth is the humans' population mean of the quantity (not an estimator's limit): each participant's
expected share is a softmax average over the arm shown first, integrated over the participant
distribution with ``TRUTH_DRAWS`` draws (``truth``), in percent. Null and effect are two truths (no
mean position bonus and base strengths; a mean bonus of 1 and arm C 0.5 stronger, in humans and in an
informative simulator alike), and a "significant" null is a CI that excludes its own truth, so the false
positive rate is the non-coverage of the nulls. ``width_ratio`` measures the average PPI / humans-only CI
width on the same datasets (in the case notes).
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import pandas as pd

from simlab.fidelity.calibration import Case, Measured
from simlab.tables import Tables

__all__ = ["CASES", "planted", "truth", "width_ratio"]

ARMS = ("A", "B", "C", "D")
STRENGTH = (0.0, 0.4, 0.8, 1.2)
PREF_SD = 1.2
BONUS_SD = 1.5
EFFECT_BONUS = 1.0
EFFECT_C = 0.5
N_HUMANS = 60
N_SIM_ONLY = 180
N_EVENTS = 8
TRUTH_DRAWS = 400_000


def _strength(effect: bool, c_extra: float = 0.0) -> np.ndarray:
    s = np.array(STRENGTH, dtype=float)
    s[ARMS.index("C")] += (EFFECT_C if effect else 0.0) + c_extra
    return s


def _events(rng: np.random.Generator, pref: np.ndarray, bonus: np.ndarray, strength: np.ndarray, n_events: int,
            source: str, ids: list[str]) -> pd.DataFrame:
    n, k = pref.shape
    m = n * n_events
    p = np.repeat(np.arange(n), n_events)
    pos = np.argsort(rng.random((m, k)), axis=1).argsort(axis=1) + 1
    u = strength[None, :] + pref[p] + bonus[p, None] * (pos == 1) + rng.gumbel(size=(m, k))
    rank = (-u).argsort(axis=1).argsort(axis=1) + 1
    return pd.DataFrame({
        "conversation_id": np.repeat([f"{source}-{ids[i]}-{e}" for i in range(n) for e in range(n_events)], k),
        "participant_id": np.repeat(np.asarray(ids)[p], k), "source": source, "domain": "d",
        "arm": np.tile(ARMS, m), "position": pos.ravel(), "rank": rank.ravel(),
    })


def planted(seed: int, effect: bool, *, rho: float, offset: float = 0.0, n: int = N_HUMANS,
            n_sim_only: int = N_SIM_ONLY, n_events: int = N_EVENTS) -> Tables:
    """Humans (source ``human``), their copies and the simulated-only participants (source ``sim``)."""
    rng = np.random.default_rng(seed)
    k = len(ARMS)
    mean_bonus = EFFECT_BONUS if effect else 0.0
    pref_h, bonus_h = rng.normal(0, PREF_SD, (n, k)), rng.normal(0, BONUS_SD, n)
    mix = np.sqrt(1 - rho**2)
    pref_c = rho * pref_h + mix * rng.normal(0, PREF_SD, (n, k))
    bonus_c = rho * bonus_h + mix * rng.normal(0, BONUS_SD, n)
    pref_s, bonus_s = rng.normal(0, PREF_SD, (n_sim_only, k)), rng.normal(0, BONUS_SD, n_sim_only)
    humans = [f"p{i:04d}" for i in range(n)]
    strength_h = _strength(effect)
    # an informative simulator follows the humans' truth; an uninformative one keeps the null's strengths
    strength_s = _strength(effect if rho > 0 else False, offset)
    bonus_shift_s = (mean_bonus if rho > 0 else 0.0) + offset
    frames = [
        _events(rng, pref_h, mean_bonus + bonus_h, strength_h, n_events, "human", humans),
        _events(rng, pref_c, bonus_shift_s + bonus_c, strength_s, n_events, "sim", humans),
        _events(rng, pref_s, bonus_shift_s + bonus_s, strength_s, n_events, "sim",
                [f"s{i:04d}" for i in range(n_sim_only)]),
    ]
    return Tables(judgements=pd.concat(frames, ignore_index=True))


@lru_cache(maxsize=None)
def truth(target: str, effect: bool) -> float:
    """The humans' population mean of ``target`` ('first_shown_excess' in points, 'choice_share:C' in
    percent): each participant's expected share (a softmax averaged over the arm shown first), averaged
    over ``TRUTH_DRAWS`` participants drawn from the humans' distribution."""
    rng = np.random.default_rng(20261207)
    k = len(ARMS)
    v = _strength(effect)[None, :] + rng.normal(0, PREF_SD, (TRUTH_DRAWS, k))
    b = (EFFECT_BONUS if effect else 0.0) + rng.normal(0, BONUS_SD, TRUTH_DRAWS)
    ev = np.exp(v - v.max(axis=1, keepdims=True))
    eb = np.exp(np.minimum(b, 30.0))
    first = np.zeros(TRUTH_DRAWS)
    share = np.zeros((TRUTH_DRAWS, k))
    for a in range(k):  # arm a shown first
        x = ev.copy()
        x[:, a] *= eb
        prob = x / x.sum(axis=1, keepdims=True)
        first += prob[:, a] / k
        share += prob / k
    if target == "first_shown_excess":
        return float(100 * (first.mean() - 1 / k))
    arm = target.removeprefix("choice_share:")
    return float(100 * share[:, ARMS.index(arm)].mean())


def _target(t: Tables) -> dict[str, object]:
    from simlab.fidelity.analyses.ppi import ppi

    src = ppi(t).per_source["sim"]
    return {"first_shown_excess": src.first_shown_excess, "choice_share:C": src.choice_share.get("C")}


def _measure(target: str, t: Tables, seed: int) -> Measured:
    from simlab.fidelity.ppi_result import PPITarget

    found = _target(t)[target]
    est = found.ppi if isinstance(found, PPITarget) else None
    return Measured(est, None)


def width_ratio(case: Case, reps: int) -> tuple[float, float]:
    """(mean PPI / humans-only CI width, mean λ̂) over ``reps`` nulls and ``reps`` effects of ``case``
    (the datasets ``run_case`` draws)."""
    from simlab.fidelity.ppi_result import PPITarget

    target = case.name.split(",")[0].strip()
    ratios, lams = [], []
    for rep in range(reps):
        for effect in (False, True):
            seed = 1_000_003 * rep + (1 if effect else 0)
            found = _target(case.simulate(seed, effect))[_KEY[target]]
            if isinstance(found, PPITarget) and found.ppi is not None and found.humans_only is not None:
                ratios.append((found.ppi.ci_high - found.ppi.ci_low)
                              / (found.humans_only.ci_high - found.humans_only.ci_low))
                lams.append(found.lam or 0.0)
    return float(np.mean(ratios)), float(np.mean(lams))


_KEY = {"first-shown excess (pp)": "first_shown_excess", "arm C choice share (%)": "choice_share:C"}


def _truth(target: str, effect: bool) -> float:
    return truth(target, effect)


def _case(target: str, label: str, rho: float, offset: float, note: str) -> Case:
    key = _KEY[target]
    return Case("ppi", f"{target}, {label}", partial(planted, rho=rho, offset=offset), partial(_measure, key),
                partial(_truth, key), null_value=truth(key, False), note=note)


_SETUP = (f"{N_HUMANS} humans with a copy + {N_SIM_ONLY} simulated-only participants × {N_EVENTS} choices "
          f"among 4 arms in random order; per-participant arm preferences (SD {PREF_SD}) and first-shown bonus "
          f"(SD {BONUS_SD}); truth = the humans' population mean (null: mean bonus 0; effect: mean bonus "
          f"{EFFECT_BONUS}, arm C +{EFFECT_C}); significant = the CI excludes the null's truth")

CASES = (
    _case("first-shown excess (pp)", "PPI, informative simulator (latent ρ 0.9)", 0.9, 0.0,
          f"{_SETUP}. Copies' latent values correlated 0.9 with their human's (per-participant excess correlated "
          "0.62 on average). Mean CI width PPI / humans-only 0.86, mean λ̂ 0.57 (``width_ratio``, 100 reps)."),
    _case("first-shown excess (pp)", "PPI, uninformative and biased simulator (ρ 0, bonus +1)", 0.0, 1.0,
          f"{_SETUP}. Copies independent of their human, every simulated bonus 1 higher and arm C 1 stronger, "
          "and the simulator does not follow the effect. Mean CI width PPI / humans-only 1.00, mean λ̂ 0.05."),
    _case("arm C choice share (%)", "PPI, informative simulator (latent ρ 0.9)", 0.9, 0.0,
          f"{_SETUP}. As the first informative case (per-participant share correlated 0.58). Mean CI width "
          "PPI / humans-only 0.84, mean λ̂ 0.60."),
    _case("arm C choice share (%)", "PPI, uninformative and biased simulator (ρ 0, C +1)", 0.0, 1.0,
          f"{_SETUP}. As the first uninformative case. Mean CI width PPI / humans-only 1.00, mean λ̂ 0.05."),
)
"""The cases (the width ratios and λ̂ in the notes: measured by ``width_ratio``, see docs/calibration.md)."""
