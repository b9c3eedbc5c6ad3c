"""The turn slope on held-out nulls: shapes its other calibration cases were not tuned on.

A PRISM-shaped generator (heaped 1–100 slider or thumbs, 2–22 rated turns ending after poor
ratings, mostly one or two conversations per participant, heavy tails) and random worker splits of
Dialogue-Eval's real ratings in sequence; each splits one population into "human" and "simulated"
(different people, no pairing), so the true slope difference is 0. The rates at 200 datasets are in
docs/calibration.md (``benchmarks/calibration.py --analysis dynamics --case held-out``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simlab.fidelity.analyses.dynamics import _Slopes, _turn_ratings
from simlab.fidelity.calibration import dynamics as cal
from simlab.fidelity.calibration import run_case
from simlab.schema import HUMAN


def _slope_p(seed: int, make) -> float:  # type: ignore[no-untyped-def]
    """p-value of the simulated − human turn slope, from the model ``dynamics`` fits."""
    t = make(seed, False)
    r, _ = _turn_ratings(t, t.conversations)
    fit = _Slopes(r, [HUMAN, cal.SIM])
    return fit.contrast(cal.SIM, HUMAN).p_value


def test_prism_shape_is_prisms() -> None:
    t = cal.simulate_prism_shape(3, False)
    c, r = t.conversations, t.turns
    assert c is not None and r is not None
    assert c["n_turns"].between(2, cal.HELDOUT_MAX_TURNS).all() and 2.8 < c["n_turns"].mean() < 4.0
    per = c.groupby("participant_id").size()
    assert (per <= 2).mean() > 0.75  # most participants have one or two conversations
    # one population split: every participant in one source only, both sources present
    assert c.groupby("participant_id")["source"].nunique().max() == 1 and set(c["source"]) == {HUMAN, cal.SIM}
    y = r["turn_rating"]
    assert y.between(1, 100).all() and (y == 50).mean() > 0.1 and (y == 100).mean() > 0.02  # heaping
    first = r[r["turn"] == 0].groupby("conversation_id")["arm"].nunique()
    later = r[r["turn"] > 0].groupby("conversation_id")["arm"].nunique()
    assert (first == 4).all() and (later == 1).all()  # 4 arms first, then the one rated best
    thumbs = cal.simulate_prism_thumbs(3, False).turns
    assert thumbs is not None and set(thumbs["turn_rating"]) == {0.0, 100.0}


def test_effect_adds_the_planted_change_per_turn_to_the_simulated_replies() -> None:
    null, eff = cal.simulate_prism_shape(5, False), cal.simulate_prism_shape(5, True)
    assert null.turns is not None and eff.turns is not None and null.conversations is not None
    sim = null.turns["conversation_id"].isin(null.conversations.loc[null.conversations["source"] == cal.SIM,
                                                                    "conversation_id"])
    diff = (eff.turns["turn_rating"] - null.turns["turn_rating"]).to_numpy()
    assert np.allclose(diff, np.where(sim, cal.HELDOUT_EFFECT * null.turns["turn"], 0.0))
    assert cal.truth_heldout(True) == cal.HELDOUT_EFFECT and cal.truth_heldout(False) == 0.0


@pytest.mark.slow  # imports all three Dialogue-Eval rounds (≈ 3 s of CPU, more on a busy machine)
def test_dialogue_eval_split_is_real_ratings_of_disjoint_workers(dialogue_eval_dir: Path) -> None:
    t = cal.simulate_dialogue_eval_split(1, False)
    c, r = t.conversations, t.turns
    assert c is not None and r is not None
    assert c.groupby("participant_id")["source"].nunique().max() == 1 and set(c["source"]) == {HUMAN, cal.SIM}
    assert c["n_turns"].between(2, 6).all() and c["n_turns"].min() < 6 < c["n_turns"].max() + 1
    # the ratings are the workers' own slider values (slider 1 of the seven: fun)
    real = cal._dialogue_eval_ratings()
    assert set(r["turn_rating"]) <= set(real["score_fun"])
    assert c["participant_id"].nunique() == int(cal.DIALOGUE_EVAL_SHARE * real["participant_id"].nunique())


@pytest.mark.slow  # ≈ 40 s of CPU: 240 held-out nulls through the slope model
def test_false_positives_on_held_out_nulls() -> None:
    # 80 nulls per shape; ≤ 8 significant at 5% (P(≥ 9 | 5%) ≈ 2%; at 10% it fails with P ≈ 45%)
    for make in (cal.simulate_prism_shape, cal.simulate_prism_thumbs):
        p = np.array([_slope_p(seed, make) for seed in range(80)])
        assert (p < 0.05).sum() <= 8, make.__name__


@pytest.mark.slow  # 12 datasets through the whole dynamics analysis
def test_held_out_case_recovers_the_planted_change() -> None:
    case = next(c for c in cal.CASES if "PRISM-shaped slider" in c.name)
    r = run_case(case, 6)
    assert r.null_reported == r.effect_reported == 6, r.problems
    assert r.effect_significant >= 4 and r.covered >= 9  # power ≈ 90%, coverage ≈ 95% at 200 datasets
