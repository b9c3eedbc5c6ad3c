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
# separation, the scale-free excess, every position, minimum participants


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


# ---------------------------------------------------------------------------------------------
# order vs label: letters drawn independently of the display order


ARMS = ("GEN", "PROMPT", "DPFT", "PPFT")
ARM_STRENGTH = np.array([0.0, 0.3, 0.7, 1.1])


def labelled(effects: dict[str, tuple[float, float]], *, n: int = 300, events: int = 4, seed: int = 0,
             independent: dict[str, bool] | None = None) -> Tables:
    """Rankings and opening choices with a planted (order, label) log-odds per source: utility =
    arm strength + order·[shown first] + label·[labelled A] + Gumbel. Letters are a permutation drawn
    independently of the display order unless ``independent[source]`` is False (then A is shown first)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    k = len(ARMS)
    judgements, conversations = [], []
    for src, (b_order, b_label) in effects.items():
        m = n * events
        pos = np.argsort(rng.random((m, k)), axis=1).argsort(axis=1) + 1
        own = (independent or {}).get(src, True)
        lab = np.argsort(rng.random((m, k)), axis=1).argsort(axis=1) + 1 if own else pos
        det = ARM_STRENGTH[None, :] + b_order * (pos == 1) + b_label * (lab == 1)
        rank = (-(det + rng.gumbel(size=(m, k)))).argsort(axis=1).argsort(axis=1) + 1
        opening = (det + rng.gumbel(size=(m, k))).argmax(axis=1)
        pid = np.repeat([f"p{i:04d}" for i in range(n)], events)
        cid = np.array([f"{src}-{i}" for i in range(m)])
        judgements.append(pd.DataFrame({
            "conversation_id": np.repeat(cid, k), "participant_id": np.repeat(pid, k), "source": src,
            "arm": np.tile(ARMS, m), "letter": np.array(list("ABCD"))[lab.ravel() - 1], "position": pos.ravel(),
            "rank": rank.ravel(), "opening_choice": (opening[:, None] == np.arange(k)).ravel()}))
        conversations.append(pd.DataFrame({"conversation_id": cid, "participant_id": pid, "source": src,
                                           "gen_error": False}))
    return Tables(judgements=pd.concat(judgements, ignore_index=True),
                  conversations=pd.concat(conversations, ignore_index=True))


HUMAN_ORDER = 0.4  # people: a modest order effect, no label effect


@pytest.mark.parametrize(("b_order", "b_label"), [(0.8, 0.0), (0.0, 0.8), (0.5, 0.8)],
                         ids=["order_only", "label_only", "both"])
def test_order_and_label_are_told_apart_where_letters_are_independent(b_order: float, b_label: float) -> None:
    t = labelled({"human": (HUMAN_ORDER, 0.0), "sim_dynamic": (b_order, b_label)}, seed=3)
    r = position(t, n_boot=100, seed=0)
    for outcome in ("ranked_best", "ranking"):
        o = r.outcomes[outcome]
        sim, hum = o.per_source["sim_dynamic"], o.per_source["human"]
        for fit in (sim, hum):
            assert fit.order_vs_label == "separate", fit.order_vs_label_note
            assert 0.7 < fit.label_mismatch_share < 0.8 and 0.7 < fit.split_event_share < 0.8  # 3/4 by design
            assert "can be told apart" in fit.order_vs_label_note and fit.n_events_joint == 1200
        assert covers(sim.first_shown_joint, b_order) and covers(sim.first_label, b_label), (outcome, sim)
        assert covers(hum.first_shown_joint, HUMAN_ORDER) and covers(hum.first_label, 0.0), (outcome, hum)
        assert abs(sim.first_shown_joint.value - b_order) < 0.2 and abs(sim.first_label.value - b_label) < 0.2
        d_order, d_label = o.first_shown_joint_vs_human["sim_dynamic"], o.first_label_vs_human["sim_dynamic"]
        assert covers(d_order, b_order - HUMAN_ORDER) and covers(d_label, b_label), (outcome, d_order, d_label)
        assert d_order.n == 300 and o.label_not_compared == {}
        for d in (d_order, d_label):  # the cluster-robust t interval that matches the p-value (calibration)
            assert d.note is not None and "cluster-robust t interval" in d.note
            assert abs((d.ci_low + d.ci_high) / 2 - d.value) < 1e-9 and (d.p_value < 0.05) == (d.ci_low > 0 or d.ci_high < 0)
        if b_label:
            assert sim.first_label.ci_low > 0.4 and d_label.p_value < 1e-3
        else:
            assert covers(sim.first_label, 0.0)
    # the existing outputs are still there
    o = r.outcomes["ranked_best"]
    assert o.per_source["sim_dynamic"].first_shown is not None and "sim_dynamic" in o.interaction
    assert "sim_dynamic" in o.excess_vs_human


def test_letters_that_follow_the_order_are_reported_as_confounded() -> None:
    r = position(planted(), n_boot=10, seed=0)
    for o in r.outcomes.values():
        for fit in o.per_source.values():
            assert fit.order_vs_label == "confounded" and fit.label_mismatch_share == 0.0
            assert fit.split_event_share == 0.0
            assert fit.order_vs_label_note.startswith("label and order are confounded: the letter is always")
            assert "one combined effect" in fit.order_vs_label_note
            assert fit.first_label is None and fit.first_shown_joint is None and fit.n_events_joint == 0
            assert fit.first_shown is not None  # the combined effect, as before
        assert o.first_label_vs_human == {} and o.first_shown_joint_vs_human == {} and o.label_not_compared == {}


def test_a_few_stray_letters_still_count_as_confounded() -> None:
    t = planted()
    j = t.judgements.copy()
    # swap the letters A and B in 2% of the simulator's conversations
    convs = j.loc[j["source"] == "sim_dynamic", "conversation_id"].unique()
    hit = j["conversation_id"].isin(np.random.default_rng(1).choice(convs, size=int(0.02 * len(convs)), replace=False))
    j.loc[hit, "letter"] = j.loc[hit, "letter"].map({"A": "B", "B": "A"}).fillna(j.loc[hit, "letter"])
    fit = position(replace(t, judgements=j), n_boot=5, seed=0).outcomes["ranked_best"].per_source["sim_dynamic"]
    assert fit.order_vs_label == "confounded" and 0 < fit.split_event_share < 0.05
    assert "fewer than 5% differ" in fit.order_vs_label_note and fit.first_label is None


def test_human_letters_by_position_give_no_label_difference_and_say_why() -> None:
    t = labelled({"human": (HUMAN_ORDER, 0.0), "sim_dynamic": (0.5, 0.8)}, seed=3, independent={"human": False})
    o = position(t, n_boot=30, seed=0).outcomes["ranked_best"]
    assert o.per_source["human"].order_vs_label == "confounded" and o.per_source["human"].first_label is None
    sim = o.per_source["sim_dynamic"]
    assert sim.order_vs_label == "separate" and covers(sim.first_label, 0.8)
    assert o.first_label_vs_human == {} and o.first_shown_joint_vs_human == {}
    assert "human: label and order are confounded" in o.label_not_compared["sim_dynamic"]
    assert "sim_dynamic" in o.interaction  # the combined first_shown is still compared


def test_without_letters_order_alone_and_said() -> None:
    t = planted()
    o = position(replace(t, judgements=t.judgements.drop(columns="letter")), n_boot=5, seed=0).outcomes["ranked_best"]
    fit = o.per_source["sim_dynamic"]
    assert fit.order_vs_label == "no_labels" and fit.label_mismatch_share is None
    assert fit.order_vs_label_note.startswith("no letters recorded") and fit.first_shown is not None
