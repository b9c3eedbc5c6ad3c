"""Verdict sentences and tables are computed from the numbers (hand-built results)."""

from __future__ import annotations

import math

from simlab.fidelity.result import (
    AgreementComparison,
    AgreementResult,
    CeilingResult,
    DynamicsResult,
    DynamicsSource,
    Estimate,
    FidelityResult,
    GenErrorsArm,
    GenErrorsResult,
    GenErrorsSource,
    HierarchyComparison,
    HierarchyResult,
    HierarchySource,
    PositionFit,
    PositionOutcome,
    PositionResult,
)
from simlab.report.sections import build_sections, fmt_ci, fmt_p


def est(value: float, lo: float, hi: float, p: float | None = None, n: int = 50) -> Estimate:
    return Estimate(value=value, ci_low=lo, ci_high=hi, p_value=p, n=n)


def hierarchy(same: bool, tau: Estimate) -> HierarchyResult:
    src = HierarchySource(strengths={"A": est(0, 0, 0), "B": est(0.5, 0.1, 0.9)}, ordering=["B", "A"], n_events=40)
    return HierarchyResult(reference_arm="A", per_source={"human": src, "sim_dynamic": src},
                           vs_human={"sim_dynamic": HierarchyComparison(kendall_tau=tau, strength_corr=est(0.9, 0.5, 1),
                                                                       same_ordering=same)})


def position(p: float) -> PositionResult:
    fit_h = PositionFit(first_shown=est(0.29, -0.03, 0.62, 0.058), n_events=200)
    fit_s = PositionFit(first_shown=est(0.93, 0.59, 1.16, 1e-9), n_events=200)
    outcome = PositionOutcome(per_source={"human": fit_h, "sim_dynamic": fit_s},
                              interaction={"sim_dynamic": est(0.64, 0.32, 1.02, p)}, interaction_p=p)
    return PositionResult(outcomes={"ranked_best": outcome})


def verdicts(**analyses) -> dict[str, str]:
    result = FidelityResult(sources=["human", "sim_dynamic"], n_boot=10, seed=0, analyses=analyses)
    return {s.key: " ".join(s.verdicts) for s in build_sections(result)}


def test_hierarchy_verdict_follows_ordering_and_tau():
    assert ("The simulator (sim_dynamic) recovers the human arm ordering (Kendall τ = 0.67, 95% CI 0.33–1.00)."
            in verdicts(hierarchy=hierarchy(True, est(0.67, 0.33, 1.0)))["hierarchy"])
    v = verdicts(hierarchy=hierarchy(False, est(0.0, -0.67, 0.67)))["hierarchy"]
    assert "does not recover the human arm ordering" in v and "−0.67 to 0.67" in v
    assert "more than chance" in verdicts(hierarchy=hierarchy(False, est(0.67, 0.33, 1.0)))["hierarchy"]


def test_position_verdict_uses_interaction_p():
    v = verdicts(position=position(0.003))["position"]
    assert "position bias of sim_dynamic differs significantly from humans' (p = 0.003" in v
    v = verdicts(position=position(0.41))["position"]
    assert "does not differ significantly from humans' (p = 0.410" in v


def test_agreement_verdict_against_ceiling():
    def result(top1: Estimate, gap: Estimate, reaches: bool) -> AgreementResult:
        return AgreementResult(
            human_ceiling=CeilingResult(cross_instrument={"ranked_best~wtp_bid": est(0.6, 0.5, 0.7)}, ceiling=0.6,
                                        ceiling_pair="ranked_best~wtp_bid"),
            vs_human={"sim_dynamic": AgreementComparison(n_events=80, top1=top1, top1_chance=0.25,
                                                         ceiling_pair="ranked_best~wtp_bid", ceiling_gap=gap,
                                                         reaches_ceiling=reaches)})

    below = verdicts(agreement=result(est(0.3, 0.2, 0.4), est(-0.3, -0.42, -0.18), False))["agreement"]
    assert "People agree with themselves across ranked_best and wtp_bid in 60% of conversations" in below
    assert ("30% of 80 events (95% CI 20%–40%) — not above chance (25%); on the same conversations it is 30 points "
            "below the human ceiling (ranked_best vs wtp_bid; 95% CI −42 to −18 points), so it stays below it") in below
    above = verdicts(agreement=result(est(0.58, 0.5, 0.66), est(-0.02, -0.1, 0.06), True))["agreement"]
    assert "above chance (25%); on the same conversations it is 2 points below" in above and "so it reaches it" in above


def test_missing_and_not_available_analyses_say_why():
    v = verdicts(position=PositionResult(status="not_available", reason="judgements have no display position"))
    assert v["position"] == "Not available: judgements have no display position."
    assert v["topics"] == "Not available: this analysis was not run."
    assert [s.key for s in build_sections(FidelityResult(sources=[], n_boot=1, seed=0, analyses={}))] == [
        "hierarchy", "agreement", "topics", "position", "dynamics", "traits"]


def test_reference_arm_row_and_number_formats():
    [s] = [s for s in build_sections(FidelityResult(sources=["human"], n_boot=1, seed=0,
                                                    analyses={"hierarchy": hierarchy(True, est(1, 1, 1))}))
           if s.key == "hierarchy"]
    rows = {(r.source, r.measure): r for r in s.rows}
    assert rows[("human", "strength A")].estimate == "0 (reference)"
    assert rows[("human", "strength B")].ci == "0.10–0.90"
    assert fmt_p(0.0004) == "p < 0.001" and fmt_p(0.0312) == "p = 0.031" and fmt_p(None) == "–"
    assert fmt_ci(est(0.1, -0.2, math.nan)) == "−0.20 to –"


# ---------------------------------------------------------------------------------------------
# order vs label, conversation length vs human, generation errors


def _sections(**analyses) -> dict[str, object]:
    result = FidelityResult(sources=["human", "sim_dynamic"], n_boot=10, seed=0, analyses=analyses)
    return {s.key: s for s in build_sections(result)}


def test_position_order_and_label_verdicts_and_rows():
    note = ("order and label can be told apart (in 75% of events the reply shown first is not labelled A): "
            "first_shown_joint and first_label are estimated together, each holding the other fixed")
    fit = dict(first_shown=est(0.4, 0.2, 0.6, 0.001), n_events=200, order_vs_label="separate", order_vs_label_note=note,
               label_mismatch_share=0.75, split_event_share=0.75, n_events_joint=200)
    outcome = PositionOutcome(
        per_source={"human": PositionFit(**fit, first_shown_joint=est(0.4, 0.2, 0.6, 0.001), first_label=est(0.0, -0.2, 0.2, 0.9)),
                    "sim_dynamic": PositionFit(**fit, first_shown_joint=est(0.45, 0.25, 0.65, 0.001),
                                               first_label=est(0.72, 0.5, 0.9, 1e-6))},
        first_shown_joint_vs_human={"sim_dynamic": est(0.05, -0.1, 0.2, 0.55)},
        first_label_vs_human={"sim_dynamic": est(0.72, 0.45, 0.99, 1e-5)})
    s = _sections(position=PositionResult(outcomes={"ranked_best": outcome}))["position"]
    v = " ".join(s.verdicts)
    assert ("For ranked best, the log-odds with which sim_dynamic picks the response shown first (label held fixed) are "
            "0.05 higher than people's (95% CI −0.10 to 0.20, p = 0.550; not significantly different from people); and "
            "the response labelled A (position held fixed) are 0.72 higher than people's (95% CI 0.45–0.99, "
            "p < 0.001).") in v
    assert f"Order or label, sim_dynamic: {note}." in v
    rows = {(r.source, r.measure): r for r in s.rows}
    assert rows[("sim_dynamic", "ranked best: labelled A, position held fixed (log-odds)")].estimate == "0.72"
    assert rows[("sim_dynamic − human", "ranked best: labelled A, position held fixed (difference)")].ci == "0.45–0.99"
    assert ("human", "ranked best: first shown, label held fixed (log-odds)") in rows


def test_position_confounded_labels_are_said():
    s = _sections(position=position(0.003))["position"]  # hand-built fits without order_vs_label: nothing said
    assert not any("Order or label" in v for v in s.verdicts)
    note = ("label and order are confounded: the letter is always the display position's letter (A shown first), so "
            "first_shown is one combined effect of being shown first and being labelled A")
    r = position(0.003)
    for fit in r.outcomes["ranked_best"].per_source.values():
        fit.order_vs_label, fit.order_vs_label_note = "confounded", note
    r.outcomes["ranked_best"].label_not_compared = {"sim_dynamic": "no sim − human difference of order and label: human: x"}
    v = _sections(position=r)["position"].verdicts
    assert f"Order or label, human: {note}." in v and f"Order or label, sim_dynamic: {note}." in v
    assert "sim_dynamic: no sim − human difference of order and label: human: x." in v


def test_first_shown_excess_is_shown_in_points_once():
    r = position(0.003)
    o = r.outcomes["ranked_best"]
    o.excess_vs_human = {"sim_dynamic": est(9.0, 4.0, 14.0, 0.002)}  # already percentage points
    o.per_source["sim_dynamic"].first_shown_excess = est(12.5, 8.0, 17.0, 1e-4)
    s = _sections(position=r)["position"]
    assert ("puts the first-shown response on top 9 points more often than people, beyond what the arms explain "
            "(95% CI 4 to 14 points, p = 0.002).") in " ".join(s.verdicts)
    rows = {(r.source, r.measure): r for r in s.rows}
    assert rows[("sim_dynamic − human", "ranked best: first shown, points (difference)")].estimate == "9.00"
    assert rows[("sim_dynamic", "ranked best: first shown, points above the arms' share")].ci == "8.00–17.00"


def test_conversation_length_and_early_stop_differences():
    d = DynamicsResult(per_source={"human": DynamicsSource(n_turns=est(4.0, 3.9, 4.1)),
                                   "sim_dynamic": DynamicsSource(n_turns=est(5.0, 4.9, 5.1))},
                       n_turns_diff_vs_human={"sim_dynamic": est(1.02, 0.86, 1.18, 1e-9)},
                       early_stop_diff_vs_human={"sim_dynamic": est(-0.4, -0.48, -0.32, 1e-8)})
    s = _sections(dynamics=d)["dynamics"]
    v = " ".join(s.verdicts)
    assert ("Conversations of sim_dynamic are 1.02 turns longer than people's on average (95% CI 0.86–1.18, p < 0.001, "
            "clustered by participant).") in v
    assert "sim_dynamic ends 40 points fewer of its conversations itself than people do (95% CI −48 to −32 points" in v
    rows = {(r.source, r.measure): r for r in s.rows}
    assert rows[("sim_dynamic − human", "turns per conversation (difference)")].estimate == "1.02"
    assert rows[("sim_dynamic − human", "share ended early by user, points (difference)")].estimate == "−40.00"


def test_the_slope_difference_says_which_slope_it_shows():
    d = DynamicsResult(per_source={"human": DynamicsSource(slope=est(-1.0, -1.5, -0.5, 1e-4)),
                                   "sim_dynamic": DynamicsSource(slope=est(0.5, 0.1, 0.9, 0.01))},
                       slope_diff_vs_human={"sim_dynamic": est(1.5, 0.9, 2.1, 1e-5)}, window=3,
                       slope_diff_window_vs_human={"sim_dynamic": est(1.2, 0.4, 2.0, 0.003)})
    s = _sections(dynamics=d)["dynamics"]
    v = " ".join(s.verdicts)
    assert ("Within a conversation (all rated turns; the mean of the conversations' own slopes, each counted once), "
            "the turn ratings of sim_dynamic move 1.50 points per turn faster than people's") in v
    assert "Counting only the first 3 turns of the conversations that reach them" in v
    measures = {r.measure for r in s.rows}
    assert {"rating change per turn, all turns (difference)", "rating change per turn, first 3 turns (difference)",
            "rating change per turn, all turns"} <= measures


def test_dynamics_without_turn_ratings_still_shows_conversation_length():
    d = DynamicsResult(status="not_available", reason="no turn ratings",
                       per_source={"human": DynamicsSource(n_turns=est(4.0, 3.9, 4.1)),
                                   "sim_dynamic": DynamicsSource(n_turns=est(4.1, 3.9, 4.3))},
                       n_turns_diff_vs_human={"sim_dynamic": est(0.1, -0.2, 0.4, 0.5)})
    s = _sections(dynamics=d)["dynamics"]
    assert s.status == "not_available" and s.verdicts[0] == "Turn-rating measures: Not available: no turn ratings."
    assert "not significantly different from people" in " ".join(s.verdicts)
    assert [r.measure for r in s.rows if r.source == "human"] == ["turns per conversation"]
    bare = _sections(dynamics=DynamicsResult(status="not_available", reason="no conversations table"))["dynamics"]
    assert bare.verdicts == ["Not available: no conversations table."] and not bare.rows


def _gen_errors() -> GenErrorsResult:
    arm = dict(n_conversations=40, n_replies=160, n_conversation_gen_error=2, conversation_gen_error_share=0.05,
               n_max_turns_reached=0, max_turns_reached_share=0.0)
    sim = GenErrorsSource(
        n_conversations=40, n_replies=640, n_reply_gen_error=3, reply_gen_error_share=3 / 640, n_conversation_gen_error=2,
        conversation_gen_error_share=0.05, n_max_turns_reached=0, max_turns_reached_share=0.0,
        stop_reasons={"max_turns": 10, "user_ended": 30},
        per_arm={"GEN": GenErrorsArm(**arm, n_reply_gen_error=3, reply_gen_error_share=3 / 160, n_conversation_arm_error=2,
                                     arm_error_conversation_share=0.05),
                 "PPFT": GenErrorsArm(**arm, n_reply_gen_error=0, reply_gen_error_share=0.0, n_conversation_arm_error=0,
                                      arm_error_conversation_share=0.0)})
    human = GenErrorsSource(n_conversations=40, n_replies=600,
                            missing=["conversations.max_turns_reached", "conversations.stop_reason", "turns.gen_error"],
                            n_conversation_gen_error=1, conversation_gen_error_share=0.025,
                            per_arm={"PPFT": GenErrorsArm(n_conversations=40, n_replies=150),
                                     "GEN": GenErrorsArm(n_conversations=40, n_replies=150)})
    return GenErrorsResult(arms=["PPFT", "GEN"], per_source={"human": human, "sim_dynamic": sim})


def test_generation_errors_section():
    sections = build_sections(FidelityResult(sources=["human", "sim_dynamic"], n_boot=10, seed=0,
                                             analyses={"gen_errors": _gen_errors()}))
    assert sections[-1].key == "gen_errors" and sections[-1].title == "Generation errors"
    s = sections[-1]
    assert ("sim_dynamic: 40 conversations; 640 replies; 0.5% (3) of replies are error notices; 5.0% (2) of "
            "conversations are flagged gen_error; 0.0% (0) were ended by the context budget; stop reasons: "
            "max_turns 10, user_ended 30.") in s.verdicts
    assert ("Not recorded for human: the conversation flag max_turns_reached, stop_reason, gen_error per reply "
            "(turns table).") in s.verdicts
    rows = [(r.source, r.measure, r.estimate, r.n) for r in s.rows]
    # arms in config order (PPFT before GEN), whatever order the result's dict has
    arms = [m.split(":")[0] for src, m, _, _ in rows if src == "human" and m.endswith("replies flagged gen_error")]
    assert arms == ["all arms", "PPFT", "GEN"]
    assert ("sim_dynamic", "GEN: replies flagged gen_error", "1.9% (3)", "160") in rows
    assert ("sim_dynamic", "GEN: conversations with one of its replies flagged", "5.0% (2)", "40") in rows
    assert ("human", "GEN: replies flagged gen_error", "not recorded", "150") in rows
    assert ("human", "all arms: conversations flagged gen_error", "2.5% (1)", "40") in rows
    assert ("sim_dynamic", "stop_reason: user_ended", "30", "40") in rows
    assert not any(m.startswith("stop_reason") for src, m, _, _ in rows if src == "human")
    # absent from a result (older ones, hand-built ones): no section
    assert "gen_errors" not in _sections(hierarchy=hierarchy(True, est(1, 1, 1)))
