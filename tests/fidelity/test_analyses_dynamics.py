"""Feedback dynamics: a planted turn slope recovered, none where none was planted."""

from __future__ import annotations

from dataclasses import replace

from simlab.fidelity.analyses import dynamics
from tests.fidelity._synth import covers, planted


def test_planted_turn_slope_recovered() -> None:
    r = dynamics(planted(), n_boot=50, seed=0)
    assert r.status == "ok", r.reason
    sim, hum = r.per_source["sim_dynamic"], r.per_source["human"]
    assert covers(sim.slope, 2.0) and covers(hum.slope, 0.0)
    assert covers(r.slope_diff_vs_human["sim_dynamic"], 2.0) and r.slope_diff_vs_human["sim_dynamic"].p_value < 1e-6
    # descriptives: 2..6 user turns uniformly → mean 4; stops before 6 turns are user_ended (4/5)
    assert covers(hum.n_turns, 4.0) and covers(hum.early_stop_share, 0.8)
    assert 0 < hum.switch_rate.value < 1 and hum.ceiling_share.value < 0.01


def test_without_turns_only_conversation_level_measures() -> None:
    t = planted()
    r = dynamics(replace(t, turns=None), n_boot=20)
    assert r.status == "not_available"
    assert r.per_source["human"].n_turns is not None and r.per_source["human"].slope is None
    assert dynamics(replace(t, conversations=None), n_boot=5).status == "not_available"


def test_a_model_that_cannot_be_fitted_says_why_in_words() -> None:
    t = planted()
    r = dynamics(replace(t, turns=t.turns.assign(turn=1)), n_boot=5)  # turn does not vary: singular
    assert r.status == "failed"
    assert r.reason.startswith("mixed model of turn ratings: the model could not be fitted: a predictor does not vary")
