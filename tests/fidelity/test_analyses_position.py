"""Position bias: planted in one source only; Dialogue-Eval's first-shown penalty."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

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
