"""Hierarchy: planted log-strengths recovered; Dialogue-Eval system ranking per free-topic round."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from simlab.fidelity.analyses import hierarchy
from simlab.tables import Tables
from tests.fidelity._synth import STRENGTHS, covers, null, planted


def test_planted_strengths_recovered_with_covering_cis() -> None:
    r = hierarchy(planted(), n_boot=100, seed=0)
    assert r.status == "ok" and r.reference_arm == "DPFT"
    for source in ("human", "sim_dynamic"):
        res = r.per_source[source]
        assert res.ordering == ["PPFT", "DPFT", "PROMPT", "GEN"]
        for arm, est in res.strengths.items():
            assert covers(est, STRENGTHS[arm] - STRENGTHS["DPFT"]), (source, arm, est)
    cmp = r.vs_human["sim_dynamic"]
    assert cmp.same_ordering and cmp.kendall_tau.value == 1.0 and cmp.strength_corr.value > 0.9


def test_no_hierarchy_when_none_planted() -> None:
    r = hierarchy(null(), n_boot=100, seed=0)
    for res in r.per_source.values():
        for est in res.strengths.values():
            assert covers(est, 0.0)


def test_derives_ranks_from_ratings_and_reports_missing_data() -> None:
    t = planted()
    derived = hierarchy(replace(t, judgements=t.judgements.assign(rank=np.nan)), n_boot=20)
    assert derived.per_source["human"].derived_ranks
    assert derived.per_source["human"].ordering[0] == "PPFT"
    bare = Tables(judgements=t.judgements.assign(rank=np.nan, rating_preference=np.nan))
    assert hierarchy(bare, n_boot=5).status == "not_available"


EXPECTED = ["biencoder", "polyencoder", "kvmemnn", "seq2seq", "lan_model", "qc"]


def test_dialogue_eval_system_ranking_in_both_free_topic_rounds(dialogue_eval_tables: Tables) -> None:
    t = dialogue_eval_tables
    for rnd in ("free_topic_round1", "free_topic_round2"):
        j = t.judgements[t.judgements["domain"] == rnd]
        r = hierarchy(replace(t, judgements=j), n_boot=50, seed=0).per_source["human"]
        order = r.ordering
        # no ranking was collected: the order comes from within-HIT standardised ratings
        assert r.derived_ranks and r.ordering_basis == "ratings"
        assert order == EXPECTED, (rnd, order)
        # the weak bots are reliably below the strong reference, on both scales
        assert all(r.strengths[a].ci_high < 0 for a in ("seq2seq", "lan_model", "qc"))
        assert all(r.rating_strengths[a].ci_high < 0 for a in ("seq2seq", "lan_model", "qc"))


# ---------------------------------------------------------------------------------------------
# sim − human strength differences, minimum participants, gen_error


def _two_sources(seed: int, sim_c: float, n: int = 60) -> Tables:
    from simlab.fidelity.calibration.hierarchy import choices

    base = (0.0, 0.3, 0.6, 0.9)
    return choices(seed, n, 4, strength={"human": base, "sim": (0.0, 0.3, sim_c, 0.9)}, preference_sd=0.8)


def test_strength_difference_recovered_and_null_not_significant() -> None:
    effect = hierarchy(_two_sources(1, 1.6), n_boot=100, seed=0).vs_human["sim"]
    d = effect.strength_diff["C"]
    # planted +1.0 (attenuated a little by the preference heterogeneity)
    assert 0.4 < d.ci_low and d.ci_high > 0.8 and d.p_value < 1e-3
    assert effect.strength_diff_p is not None and effect.strength_diff_p < 1e-3
    assert covers(effect.strength_diff["B"], 0.0)
    null = hierarchy(_two_sources(2, 0.6), n_boot=100, seed=0).vs_human["sim"]
    assert all(covers(e, 0.0) and e.p_value > 0.05 for e in null.strength_diff.values())
    assert null.strength_diff_p is not None and null.strength_diff_p > 0.05


def test_too_few_participants_and_gen_error_events_are_reported() -> None:
    t = _two_sources(3, 0.6, n=30)
    few = t.judgements["participant_id"].isin([f"p{i:04d}" for i in range(5)])
    small = replace(t, judgements=t.judgements[(t.judgements["source"] == "human") | few])
    r = hierarchy(small, n_boot=10)
    assert r.per_source["sim"].status == "not_available" and "5 participant" in (r.per_source["sim"].reason or "")
    assert r.per_source["human"].status == "ok" and "sim" not in r.vs_human
    flagged = t.conversations["gen_error"]
    n_flagged = int(flagged[t.conversations["source"] == "human"].sum())
    assert n_flagged > 0
    full = hierarchy(t, n_boot=10).per_source["human"]
    assert full.n_gen_error == n_flagged and full.n_events == 30 * 4 - n_flagged


def test_the_reference_arm_is_the_configs_first_when_the_run_says_the_order() -> None:
    import pandas as pd

    t = planted()
    assert hierarchy(t, n_boot=5).reference_arm == "DPFT"  # no order given: alphabetical
    order = pd.DataFrame({"arm": ["GEN", "PROMPT", "DPFT", "PPFT"], "description": None, "config_order": [0, 1, 2, 3]})
    r = hierarchy(replace(t, arms=order), n_boot=5)
    assert r.reference_arm == "GEN" and r.per_source["human"].strengths["GEN"].value == 0
    assert list(r.per_source["human"].strengths) == ["GEN", "PROMPT", "DPFT", "PPFT"]
