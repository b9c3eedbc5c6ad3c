"""Agreement vs ceiling: above chance with shared preferences, at chance without; Dialogue-Eval retest."""

from __future__ import annotations

from simlab.fidelity.analyses import agreement
from simlab.tables import Tables
from tests.fidelity._synth import covers, individual, null


def test_shared_preferences_agree_above_chance_but_below_ceiling() -> None:
    r = agreement(individual(), n_boot=100, seed=0)
    c = r.vs_human["sim_dynamic"]
    assert c.n_events == 600 and c.top1_chance == 0.25
    assert c.top1.ci_low > 0.25 and c.kendall_tau.ci_low > 0
    assert c.pearson["rating_preference"].ci_low > 0 and covers(c.pearson["rating_provenance"], 0.0)
    ceiling = r.human_ceiling
    assert ceiling.ceiling is not None and c.reaches_ceiling is False
    rt = ceiling.retest
    assert rt.rating_corr.ci_low > 0.1 and rt.permutation_p < 0.01 and rt.within_arm_p < 0.01
    assert rt.pairwise_order.ci_low > rt.pairwise_order_baseline


def test_independent_sources_agree_at_chance() -> None:
    r = agreement(null(), n_boot=100, seed=0)
    c = r.vs_human["sim_dynamic"]
    assert covers(c.top1, 0.25) and covers(c.kendall_tau, 0.0)
    assert covers(c.pearson["rating_preference"], 0.0)
    rt = r.human_ceiling.retest
    assert covers(rt.rating_corr, 0.0) and rt.permutation_p > 0.01


def test_dialogue_eval_retest_far_above_permutation_baseline(dialogue_eval_tables: Tables) -> None:
    r = agreement(dialogue_eval_tables, n_boot=100, seed=0)
    assert r.vs_human == {}
    rt = r.human_ceiling.retest
    assert rt.status == "ok" and rt.n_pairs > 1000
    assert rt.rating_corr.ci_low > rt.permutation_baseline + 0.3 and rt.permutation_p < 0.01
    assert rt.rating_corr.ci_low > rt.within_arm_baseline and rt.within_arm_p < 0.01
    assert rt.pairwise_order.ci_low > rt.pairwise_order_baseline and rt.pairwise_order_p < 0.01
    # Dialogue-Eval ranks are derived from its ratings: that instrument pair is no ceiling
    assert "ranked_best~rating_preference" not in r.human_ceiling.cross_instrument
