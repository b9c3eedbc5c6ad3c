"""The distributions analysis: sd_ratio and the bias-corrected Wasserstein-1 distance per instrument, on
planted truths, small samples, real Dialogue-Eval workers and through the result JSON."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance

from simlab.fidelity.analyses import analysis_context
from simlab.fidelity.analyses._prep import relabel_swaps
from simlab.fidelity.analyses.distributions import answers, compare, distributions, w1_rows
from simlab.fidelity.calibration.distributions import COLLAPSE, SIM, simulate
from simlab.fidelity.distributions_result import DistributionsResult
from simlab.fidelity.registry import ANALYSES
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.stats import Participants
from simlab.fidelity.synthetic import make_synthetic
from simlab.tables import Tables


def _pooled(t: Tables, seed: int = 0, **kw: object):
    r = distributions(t, n_boot=200, seed=seed, n_perm=199, **kw)
    assert r.status == "ok", r.reason
    return r.instruments["rating_preference"].pooled[SIM]


def test_a_planted_spread_collapse_is_found_and_its_ratio_covered() -> None:
    c = _pooled(simulate(11, True, 80))
    e = c.sd_ratio
    assert e is not None and e.ci_low <= COLLAPSE <= e.ci_high and e.p_value is not None and e.p_value < 0.01
    assert c.spread_collapse is True
    w = c.w1_excess
    # population W1 of the planted mixtures is 4.52 (quadrature; see the calibration module)
    assert w is not None and w.p_value is not None and w.p_value < 0.01 and w.ci_low <= 4.52 <= w.ci_high
    assert c.w1 is not None and c.w1_chance is not None and math.isclose(w.value, c.w1 - c.w1_chance)


def test_the_null_has_no_collapse_and_covers_one() -> None:
    c = _pooled(simulate(12, False, 80))
    e, w = c.sd_ratio, c.w1_excess
    assert e is not None and e.ci_low <= 1.0 <= e.ci_high and c.spread_collapse is False
    assert w is not None and w.p_value is not None and w.p_value > 0.05 and w.ci_low <= 0.0 <= w.ci_high


def test_too_few_participants_is_not_available_with_the_reason() -> None:
    r = distributions(simulate(3, True, 6), n_boot=50, seed=0, n_perm=50)
    c = r.instruments["rating_preference"].pooled[SIM]
    assert c.status == "not_available" and "at least 10" in (c.reason or "") and c.sd_ratio is None
    only_human = Tables(judgements=simulate(3, False, 20).judgements.query("source == 'human'"))
    assert distributions(only_human, n_boot=20).status == "not_available"


def test_w1_rows_is_scipys_weighted_wasserstein() -> None:
    rng = np.random.default_rng(0)
    grid = np.sort(rng.normal(size=30))
    a, b = rng.random((5, 30)), rng.random((5, 30))
    ours = w1_rows(a, b, np.diff(grid))
    theirs = [wasserstein_distance(grid, grid, a[i], b[i]) for i in range(5)]
    assert np.allclose(ours, theirs)


def test_point_weights_give_the_weighted_statistics() -> None:
    """The point estimate is a function of participant weights: other weights give scipy's weighted W1
    and the weighted SD ratio (so survey weights can be plugged in)."""
    rng = np.random.default_rng(1)
    n = 30
    ids = [f"p{i}" for i in range(n)]
    part = Participants.from_ids(ids, 20, 0)
    ph, ps = np.repeat(np.arange(n), 3), np.repeat(np.arange(n), 3)
    xh, xs = rng.normal(50, 10, ph.size).round(), rng.normal(52, 6, ps.size).round()
    w = rng.uniform(0.5, 2.0, n)
    c = compare(xh, ph, xs, ps, part, rng, point=w, n_perm=50)
    assert c.w1 == pytest.approx(wasserstein_distance(xh, xs, w[ph], w[ps]))
    def sd(x: np.ndarray, wt: np.ndarray) -> float:
        m = np.average(x, weights=wt)
        return float(np.sqrt(np.average((x - m) ** 2, weights=wt)))
    assert c.sd_ratio is not None and c.sd_ratio.value == pytest.approx(sd(xs, w[ps]) / sd(xh, w[ph]))


def test_relabelling_swaps_pairs_and_permutes_the_unpaired() -> None:
    has_h = np.array([1, 1, 1, 1, 0, 0], bool)
    has_s = np.array([1, 1, 0, 0, 1, 1], bool)
    s = relabel_swaps(has_h, has_s, 400, np.random.default_rng(0), dtype=np.int8)
    assert 0.4 < s[:, :2].mean() < 0.6  # a pair swaps with probability ½
    unpaired = s[:, 2:].astype(bool)
    label = has_s[2:]
    # the unpaired are permuted among themselves: as many simulated ones after as before
    assert ((label ^ unpaired).sum(axis=1) == label.sum()).all() and unpaired.any()


def test_instruments_are_read_where_they_live() -> None:
    t = make_synthetic(20, seed=3)
    found = answers(t)
    assert {"rating_preference", "wtp_bid", "rank", "turn_rating", "n_turns"} <= set(found)
    assert found["turn_rating"].table == "turns" and found["n_turns"].table == "conversations"
    r = distributions(t, n_boot=30, seed=0, n_perm=50)
    rank, turns = r.instruments["rank"], r.instruments["n_turns"]
    assert rank.per_arm_only and not rank.pooled and set(rank.per_arm) == {"GEN", "PROMPT", "DPFT", "PPFT"}
    assert turns.pooled and not turns.per_arm
    assert list(r.instruments["turn_rating"].histograms) == ["human", "sim_dynamic"]


def test_gen_error_replies_and_conversations_are_left_out() -> None:
    t = make_synthetic(20, seed=4)
    assert t.turns is not None and t.conversations is not None
    turns = t.turns.assign(gen_error=False)
    bad = turns.index[(turns["role"] == "assistant")][:7]
    turns.loc[bad, "gen_error"] = True
    conv = t.conversations.copy()
    conv.loc[conv.index[:3], "gen_error"] = True
    t2 = Tables(judgements=t.judgements, conversations=conv, turns=turns)
    before, after = answers(t), answers(t2)
    assert len(after["turn_rating"].frame) == len(before["turn_rating"].frame) - 7
    flagged = set(conv["conversation_id"][:3])
    n_flagged = int(t.judgements["conversation_id"].isin(flagged).sum())
    assert len(after["rating_preference"].frame) == len(before["rating_preference"].frame) - n_flagged
    assert len(after["n_turns"].frame) == len(before["n_turns"].frame)  # every conversation counts here


def test_bids_come_from_the_bdm_table_when_the_judgements_have_none() -> None:
    t = make_synthetic(15, seed=5)
    assert t.conversations is not None
    j = t.judgements
    bdm = j[["conversation_id", "arm", "wtp_bid"]].rename(columns={"wtp_bid": "bid"})
    t2 = Tables(judgements=j.drop(columns="wtp_bid"), conversations=t.conversations, bdm=bdm)
    got = answers(t2)["wtp_bid"]
    assert got.table == "bdm" and len(got.frame) == len(j)


def _result(t: Tables, n_boot: int) -> FidelityResult:
    """The registered analysis run as ``analyze_all`` runs it, alone, in a result JSON's model."""
    out = ANALYSES.get("distributions").run(t, analysis_context(t, n_boot=n_boot))
    return FidelityResult(sources=t.sources, n_boot=n_boot, seed=0, analyses={"distributions": out})


def test_the_result_survives_the_json_round_trip() -> None:
    t = make_synthetic(20, seed=6)
    res = _result(t, 20)
    d = res.analyses["distributions"]
    assert isinstance(d, DistributionsResult) and d.status == "ok"
    again = FidelityResult.model_validate_json(res.model_dump_json())
    assert isinstance(again.analyses["distributions"], DistributionsResult)
    a, b = again.analyses["distributions"], d
    assert a.model_dump_json() == b.model_dump_json()
    dumped = res.model_dump(mode="json")["analyses"]["distributions"]["instruments"]["rating_preference"]
    assert set(dumped["pooled"]["sim_dynamic"]["sd_ratio"]) >= {"value", "ci_low", "ci_high", "p_value"}
    assert "w1_excess" in dumped["per_arm"]["GEN"]["sim_dynamic"]


def test_results_written_before_the_analysis_still_read() -> None:
    t = make_synthetic(15, seed=7)
    data = _result(t, 10).model_dump(mode="json")
    del data["analyses"]["distributions"]
    old = FidelityResult.model_validate(data)
    assert "distributions" not in old.analyses


def test_dialogue_eval_workers_split_at_random_show_no_collapse(dialogue_eval_tables: Tables) -> None:
    """Real people against real people: a random half of the workers relabelled as a simulated source."""
    t = dialogue_eval_tables
    conv = t.conversations
    assert conv is not None
    workers = np.sort(conv["participant_id"].dropna().unique())
    rng = np.random.default_rng(0)
    sim = set(rng.choice(workers, workers.size // 2, replace=False))

    def relabel(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None or "participant_id" not in frame.columns:
            return frame
        return frame.assign(source=np.where(frame["participant_id"].isin(sim), SIM, "human"))

    split = Tables(judgements=relabel(t.judgements), conversations=relabel(conv), turns=t.turns)
    r = distributions(split, n_boot=100, seed=0, n_perm=199)
    assert r.status == "ok" and r.instruments, r.reason
    pooled = [c for inst in r.instruments.values() for c in inst.pooled.values() if c.status == "ok"]
    assert pooled
    assert not any(c.spread_collapse for c in pooled)
    assert all(c.sd_ratio is not None and c.sd_ratio.ci_low <= 1.0 <= c.sd_ratio.ci_high for c in pooled)


def test_humans_who_never_vary_get_no_ratio_but_a_distance() -> None:
    j = simulate(1, False, 20).judgements
    j = j.assign(rating_preference=j["rating_preference"].where(j["source"] != "human", 50.0))
    c = distributions(Tables(judgements=j), n_boot=20, n_perm=20).instruments["rating_preference"].pooled[SIM]
    assert c.sd_ratio is None and "SD 0" in (c.reason or "") and c.spread_collapse is None
    assert c.w1_excess is not None and c.w1_excess.value > 0
