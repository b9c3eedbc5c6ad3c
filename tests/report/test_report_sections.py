"""Verdict sentences and tables are computed from the numbers (hand-built results)."""

from __future__ import annotations

import math

from simlab.fidelity.result import (
    AgreementComparison,
    AgreementResult,
    CeilingResult,
    Estimate,
    FidelityResult,
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
