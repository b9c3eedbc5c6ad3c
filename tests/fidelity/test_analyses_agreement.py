"""Agreement vs ceiling: above chance with shared preferences, at chance without; tie-aware top-1;
per-pair ceiling without derived pairs; retest that rating style alone does not pass; gen_error
dropped; too few participants refused; Dialogue-Eval retest recovered."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from simlab.fidelity import import_prism
from simlab.fidelity.analyses import agreement
from simlab.fidelity.calibration.agreement import simulate_retest, simulate_top1
from simlab.tables import Tables
from tests.fidelity._synth import covers, individual, null


def test_shared_preferences_agree_above_chance_but_below_ceiling() -> None:
    r = agreement(individual(), n_boot=100, seed=0)
    c = r.vs_human["sim_dynamic"]
    assert c.n_events == 600 and c.top1_chance == 0.25
    assert c.top1.ci_low > 0.25 and c.kendall_tau.ci_low > 0
    assert c.pearson["rating_preference"].ci_low > 0 and covers(c.pearson["rating_provenance"], 0.0)
    # individual preferences are shared: agreement beyond the arm means, within conversations
    assert c.pearson_within["rating_preference"].ci_low > 0.2 and c.pearson_individual["rating_preference"].ci_low > 0.2
    assert covers(c.pearson_individual["rating_provenance"], 0.0)
    ceiling = r.human_ceiling
    assert ceiling.ceiling_pair == c.ceiling_pair == "ranked_best~rating_preference"
    assert set(ceiling.cross_instrument) >= {"ranked_best~wtp_bid", "ranked_best~opening_choice"}
    assert c.ceiling_gap.ci_high < 0 and c.ceiling_gap.p_value < 0.05 and c.reaches_ceiling is False
    assert c.by_instrument["wtp_bid"].ceiling_pair == "rating_preference~wtp_bid"
    rt = ceiling.retest
    assert rt.rating_corr_within.ci_low > 0.1 and rt.permutation_p < 0.01 and rt.within_arm_p < 0.01
    assert rt.pairwise_order.ci_low > rt.pairwise_order_baseline


def test_independent_sources_agree_at_chance() -> None:
    r = agreement(null(), n_boot=100, seed=0)
    c = r.vs_human["sim_dynamic"]
    assert covers(c.top1, 0.25) and covers(c.kendall_tau, 0.0)
    assert covers(c.pearson["rating_preference"], 0.0) and covers(c.pearson_within["rating_preference"], 0.0)
    rt = r.human_ceiling.retest
    assert covers(rt.rating_corr_within, 0.0) and rt.permutation_p > 0.01


def _bids(n: int, k: int, sim_bid: float, seed: int = 0) -> Tables:
    """Humans rank and bid; the simulated copy bids ``sim_bid`` (given as rating) on every arm."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n):
        for src in ("human", "sim_dynamic"):
            rank = rng.permutation(k) + 1
            for a in range(k):
                rows.append({"conversation_id": f"{src}-{p}", "participant_id": f"p{p}", "source": src, "domain": "d",
                             "arm": f"arm{a}", "rank": rank[a] if src == "human" else None,
                             "wtp_bid": 0.0 if src == "human" else None,
                             "rating_preference": sim_bid if src == "sim_dynamic" else None})
    return Tables(judgements=pd.DataFrame(rows))


def test_tied_maxima_agree_at_chance_not_always() -> None:
    # everyone bids $0 on every arm: the bid says nothing, so it agrees with the ranking 1 time in k
    r = agreement(_bids(30, 4, 0.0), n_boot=50, seed=0)
    pair = r.human_ceiling.cross_instrument["ranked_best~wtp_bid"]
    assert pair.value == 0.25 and r.human_ceiling.n_tied["ranked_best~wtp_bid"] == 30
    c = r.vs_human["sim_dynamic"]
    assert c.top1.value == 0.25 and c.n_tied == 30 and c.ceiling_pair == "ranked_best~wtp_bid"
    assert c.ceiling_gap.value == 0.0 and c.reaches_ceiling is True


def _prism_records(n_users: int, seed: int = 0) -> list[dict]:
    """PRISM-shaped conversations: the chosen response is the highest score (ties: any of them)."""
    rng = np.random.default_rng(seed)
    recs = []
    for u in range(n_users):
        for c, ctype in enumerate(("unguided", "values guided")):
            scores = rng.integers(1, 11, 4) * 10
            chosen = int(rng.choice(np.flatnonzero(scores == scores.max())))
            hist = [{"turn": 0, "role": "user", "content": "hi", "model_name": None, "score": None, "if_chosen": None,
                     "within_turn_id": None}]
            hist += [{"turn": 0, "role": "model", "content": "r", "model_provider": "x", "model_name": f"m{m}",
                      "score": int(scores[m]), "if_chosen": m == chosen, "within_turn_id": m} for m in range(4)]
            recs.append({"conversation_id": f"c{u}-{c}", "user_id": f"u{u}", "conversation_type": ctype,
                         "opening_prompt": "hi", "conversation_history": hist})
    return recs


def test_prism_shape_has_no_ceiling_by_construction(tmp_path: Path) -> None:
    path = tmp_path / "conversations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _prism_records(40)), encoding="utf-8")
    r = agreement(import_prism(path), n_boot=50, seed=0)
    ceiling = r.human_ceiling
    # ranks come from the scores and the choice is the highest score: no pair is two instruments
    assert ceiling.cross_instrument == {} and ceiling.ceiling is None
    assert "rank_derived" in ceiling.excluded["ranked_best~opening_choice"]
    assert "by construction" in ceiling.excluded["rating_preference~opening_choice"]
    assert ceiling.retest.status == "ok" and ceiling.retest.n_pairs == 40 * 4


def test_ceiling_gap_carries_both_uncertainties() -> None:
    # (the rates over many datasets are in test_calibration_agreement; this is the mechanism)
    # as consistent with the human as the human's own bid: the gap's CI covers 0 → reaches the ceiling
    same = agreement(simulate_top1(1, False), n_boot=200, seed=1).vs_human["sim_dynamic"]
    assert same.ceiling_pair == "ranked_best~wtp_bid" and covers(same.ceiling_gap, 0.0) and same.reaches_ceiling
    assert same.ceiling_gap.n >= 80 and same.n_tied > 0
    inst = same.by_instrument["ranked_best"]
    assert inst.ceiling is not None and inst.gap == same.ceiling_gap
    assert abs(inst.gap.value - (inst.top1.value - inst.ceiling.value)) < 0.01  # (nearly) the same events
    # the simulator knows the individual preferences only partly: below the ceiling
    worse = agreement(simulate_top1(1, True), n_boot=200, seed=1).vs_human["sim_dynamic"]
    assert worse.ceiling_gap.ci_high < 0 and worse.reaches_ceiling is False


def test_rating_style_alone_is_not_retest_agreement() -> None:
    for seed in (0, 1):
        rt = agreement(simulate_retest(seed, False), n_boot=100, seed=seed).human_ceiling.retest
        assert rt.rating_corr.value > 0.5  # pooled: the style is there
        assert covers(rt.rating_corr_within, 0.0) and rt.permutation_p > 0.05 and rt.within_arm_p > 0.05
        assert abs(rt.permutation_baseline) < 0.05 and rt.pairwise_order_p > 0.05
    rt = agreement(simulate_retest(0, True), n_boot=100, seed=0).human_ceiling.retest
    assert rt.rating_corr_within.ci_low > 0.15 and rt.permutation_p < 0.01


def test_gen_error_conversations_are_dropped_and_counted() -> None:
    t = individual()
    conv = t.conversations.copy()
    sim = conv.index[conv["source"] == "sim_dynamic"][::10]
    conv.loc[sim, "gen_error"] = True
    r = agreement(replace(t, conversations=conv), n_boot=20, seed=0)
    assert r.n_gen_error == {"sim_dynamic": len(sim)}
    assert r.vs_human["sim_dynamic"].n_events == 600 - len(sim)


def test_too_few_participants_is_not_available() -> None:
    r = agreement(_bids(6, 4, 0.0), n_boot=20, seed=0)
    assert r.status == "not_available" and "6 human participants" in r.reason
    t = _bids(30, 4, 5.0)
    j = t.judgements
    keep = (j["source"] == "human") | j["participant_id"].isin([f"p{i}" for i in range(5)])
    c = agreement(Tables(judgements=j[keep]), n_boot=20, seed=0).vs_human["sim_dynamic"]
    assert c.status == "not_available" and "5 participants matched" in c.reason


def test_dialogue_eval_retest_far_above_permutation_baseline(dialogue_eval_tables: Tables) -> None:
    r = agreement(dialogue_eval_tables, n_boot=100, seed=0)
    assert r.vs_human == {} and r.n_gen_error.get("human", 0) > 0
    rt = r.human_ceiling.retest
    assert rt.status == "ok" and rt.n_pairs > 1000
    # the published retest result: pooled and within-conversation correlations far above the baselines
    assert rt.rating_corr.ci_low > 0.5 and rt.rating_corr_within.ci_low > rt.permutation_baseline + 0.3
    assert rt.permutation_p < 0.01 and rt.rating_corr_within.ci_low > rt.within_arm_baseline and rt.within_arm_p < 0.01
    assert rt.pairwise_order.ci_low > rt.pairwise_order_baseline and rt.pairwise_order_p < 0.01
    # Dialogue-Eval ranks are derived from its ratings: that instrument pair is no ceiling
    assert "ranked_best~rating_preference" not in r.human_ceiling.cross_instrument
    assert "rank_derived" in r.human_ceiling.excluded["ranked_best~rating_preference"]


def test_variance_shares_take_the_logit_interval_inside_and_the_percentile_at_the_boundary() -> None:
    from simlab.fidelity.analyses.agreement.variance_split import _share_estimate

    rng = np.random.default_rng(0)
    draws = 1 / (1 + np.exp(-rng.normal(np.log(0.15 / 0.85), 0.25, 100)))
    e = _share_estimate(0.15, draws, 50)
    assert e.note is not None and "logit" in e.note and e.ci_low < 0.15 < e.ci_high
    lo, hi = np.log(e.ci_low / (1 - e.ci_low)), np.log(e.ci_high / (1 - e.ci_high))
    assert abs((lo + hi) / 2 - np.log(0.15 / 0.85)) < 1e-9  # symmetric on the logit scale, wider at the top
    assert e.ci_high - 0.15 > 0.15 - e.ci_low
    # a refit at the boundary (the optimiser's zero) or a zero share: the percentile interval's near
    # end, down to 0; its far end only ever widened (square-root scale), never narrowed
    at_zero = np.r_[draws[:95], [2e-7, 0.0, 1e-8, 3e-7, 0.0]]
    for value, d in ((0.15, at_zero), (0.0, at_zero)):
        p = _share_estimate(value, d, 50)
        assert np.isclose(p.ci_low, np.quantile(d, 0.025)) and p.ci_low < 1e-6
        assert p.ci_high >= np.quantile(d, 0.975) - 1e-12
    # refits piled at 0 with a few small ones: the percentile's top falls below a small true share, the
    # square-root interval reaches it (the calibration's near-boundary case: 0.037, 87% -> 91.5% covered)
    piled = np.r_[np.full(40, 2e-7), rng.uniform(0.0, 0.02, 60)]
    w = _share_estimate(0.006, piled, 50)
    assert w.note is not None and "square-root" in w.note
    assert w.ci_high > np.quantile(piled, 0.975) and w.ci_high > 0.03 and w.ci_low < 1e-6
    # every refit at the optimiser's zero: not "above 0" (the calibration's test of a boundary null)
    z = _share_estimate(5e-13, np.full(100, 2e-7), 50)
    assert z.ci_low < 1e-6


def test_a_share_at_the_upper_boundary_widens_its_lower_end() -> None:
    """The mirror of the zero boundary: a share near 1 whose refits pile at 1 (the other variances at
    0) keeps the percentile's upper end and gets a lower end reaching further down."""
    from simlab.fidelity.analyses.agreement.variance_split import _share_estimate

    rng = np.random.default_rng(1)
    piled = np.r_[np.full(40, 1 - 2e-7), 1 - rng.uniform(0.0, 0.02, 60)]
    e = _share_estimate(0.994, piled, 50)
    assert e.note is not None and "square-root" in e.note
    assert e.ci_low < np.quantile(piled, 0.025) and e.ci_low < 0.97
    assert np.isclose(e.ci_high, np.quantile(piled, 0.975))
