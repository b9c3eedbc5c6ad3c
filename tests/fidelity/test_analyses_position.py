"""Position bias: planted in one source only; Dialogue-Eval's first-shown penalty."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from simlab.fidelity.analyses import position
from simlab.tables import Tables
from tests.fidelity._synth import covers, planted


def test_first_position_bias_found_only_where_planted() -> None:
    r = position(planted(), n_boot=100, seed=0)
    for outcome in ("ranked_best", "opening_choice", "ranking"):
        o = r.outcomes[outcome]
        assert o.status == "ok", (outcome, o.reason)
        sim, hum = o.per_source["sim_dynamic"].first_shown, o.per_source["human"].first_shown
        assert covers(sim, 0.8) and sim.ci_low > 0, (outcome, sim)
        assert covers(hum, 0.0), (outcome, hum)
        assert o.interaction_p is not None and o.interaction_p < 1e-3
        assert covers(o.interaction["sim_dynamic"], 0.8)
    # profile model: position 1 vs the last position carries the planted effect, others ≈ 0
    prof = r.outcomes["ranking"].per_source["sim_dynamic"].positions
    assert covers(prof["1"], 0.8) and covers(prof["2"], 0.0) and covers(prof["3"], 0.0)


def test_not_available_without_positions() -> None:
    t = planted()
    r = position(replace(t, judgements=t.judgements.assign(position=np.nan)), n_boot=5)
    assert r.status == "not_available" and "position" in (r.reason or "")


def test_dialogue_eval_first_shown_is_penalised(dialogue_eval_tables: Tables) -> None:
    # ranks there are derived from the ratings, so the full ranking is the informative outcome
    r = position(dialogue_eval_tables, n_boot=50, seed=0)
    first = r.outcomes["ranking"].per_source["human"].first_shown
    assert first is not None and first.value < 0 and first.ci_high < 0, first
    assert r.outcomes["opening_choice"].status == "not_available"


# ---------------------------------------------------------------------------------------------
# separation, the scale-free excess, every position, minimum participants (issue 12)


def test_a_source_that_always_picks_position_one_is_penalised_not_failed() -> None:
    from simlab.fidelity.calibration.hierarchy import choices

    t = choices(4, 30, 3, strength={"human": (0, 0.4, 0.8, 1.2), "sim": (0, 0.4, 0.8, 1.2)},
                lapse={"sim": 0.5})  # lapse·U(0, 2) ≥ 1 for half the participants … and below for the rest
    j = t.judgements
    always = j.assign(rank=np.where(j["source"] == "sim", j["position"], j["rank"]))  # sim ranks = display order
    o = position(replace(t, judgements=always), n_boot=50, seed=0).outcomes["ranked_best"]
    sim = o.per_source["sim"]
    assert sim.status == "ok" and sim.penalised
    assert 3 < sim.first_shown.value < 15 and sim.first_shown.p_value < 1e-6
    assert np.isfinite(sim.first_shown.ci_low) and sim.first_shown.n_failed == 0
    assert sim.first_shown_excess.value == pytest.approx(75.0, abs=3)  # 100% on top vs 25% by the arms
    assert o.excess_vs_human["sim"].ci_low > 60 and o.interaction_p < 1e-6


def test_excess_is_scale_free_where_the_log_odds_are_not() -> None:
    from simlab.fidelity.calibration.position import _less_noise, _outcome

    # same position heuristic, the simulator chooses its arms with half the noise
    o = _outcome(_less_noise(7, False, n=300), seed=0, n_boot=50)
    assert covers(o.excess_vs_human["sim"], 0.0) and o.excess_vs_human["sim"].p_value > 0.05
    hum = o.per_source["human"].first_shown_excess
    assert hum.ci_low > 5  # the heuristic itself is found (0.15 × 75 ≈ 11 points)
    eff = _outcome(_less_noise(8, True, n=300), seed=0, n_boot=50).excess_vs_human["sim"]
    assert eff.ci_low > 0 and eff.p_value < 0.05 and covers(eff, 9.0)  # truth 9.0 from large samples


def test_every_position_is_compared_with_a_joint_test() -> None:
    r = position(planted(), n_boot=30, seed=0).outcomes["ranked_best"]
    inter = r.positions_interaction["sim_dynamic"]
    assert set(inter) == {"1", "2", "3"}
    assert inter["1"].ci_low > 0.3 and covers(inter["2"], 0.0) and covers(inter["3"], 0.0)
    assert r.positions_interaction_p is not None and r.positions_interaction_p < 1e-3
    hum = r.per_source["human"]
    assert hum.n_gen_error == 0 and hum.penalised is False


def test_too_few_participants_is_not_available() -> None:
    t = planted()
    few = t.judgements["participant_id"].isin([f"p{i:04d}" for i in range(3)])
    r = position(replace(t, judgements=t.judgements[(t.judgements["source"] == "human") | few]), n_boot=5)
    o = r.outcomes["ranked_best"]
    assert o.per_source["sim_dynamic"].status == "not_available" and "3 participant" in o.per_source["sim_dynamic"].reason
    assert o.interaction == {} and o.interaction_p is None
