"""analyses.ppi: human estimates sharpened by simulated participants (PPI++), on planted truths, the
estimator alone, the not-available paths and real human data (Dialogue-Eval)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from simlab.fidelity.analyses import analysis_context
from simlab.fidelity.analyses._prep import judgements_frame
from simlab.fidelity.analyses.ppi import participant_quantities, ppi
from simlab.fidelity.calibration import ppi as cal
from simlab.fidelity.ppi_result import PPIResult, PPITarget
from simlab.fidelity.registry import ANALYSES
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.stats.ppi import mean_of, ppi_mean, tuned_lambda
from simlab.tables import Tables

# ------------------------------------------------------------------------------ the estimator alone


def _normal(rng: np.random.Generator, n: int, big_n: int, rho: float, offset: float = 0.0):
    z = rng.normal(size=n)
    y = 1.0 + z
    f = offset + rho * z + np.sqrt(1 - rho**2) * rng.normal(size=n)
    g = offset + rng.normal(size=big_n)
    return y, f, g


def test_fixed_lambda_gives_the_two_ends() -> None:
    y, f, g = np.array([1.0, 2.0, 4.0]), np.array([1.5, 2.0, 3.5]), np.array([2.0, 3.0, 5.0, 6.0])
    assert ppi_mean(y, f, g, lam=0.0).value == pytest.approx(y.mean())  # humans only
    r = ppi_mean(y, f, g, lam=1.0)
    assert r.value == pytest.approx((y - f).mean() + np.r_[f, g].mean())  # the copies' error corrects all sims
    assert r.humans_value == pytest.approx(y.mean()) and r.n == 3 and r.n_sim_only == 4


def test_integer_weights_act_as_repeated_participants() -> None:
    rng = np.random.default_rng(3)
    y, f, g = _normal(rng, 30, 90, 0.7)
    w = rng.integers(1, 4, 30).astype(float)
    v = rng.integers(1, 4, 90).astype(float)
    weighted = ppi_mean(y, f, g, w=w, w_sim_only=v, lam=0.6)
    repeated = ppi_mean(np.repeat(y, w.astype(int)), np.repeat(f, w.astype(int)), np.repeat(g, v.astype(int)), lam=0.6)
    assert weighted.value == pytest.approx(repeated.value)
    assert mean_of(y, w) == pytest.approx(np.repeat(y, w.astype(int)).mean())
    assert tuned_lambda(y, f, g, np.ones(30) * 2, np.ones(90) * 2) == pytest.approx(tuned_lambda(y, f, g))
    with pytest.raises(ValueError, match="weights"):
        ppi_mean(y, f, g, w=-w)


@pytest.mark.parametrize(("rho", "offset"), [(0.7, 0.0), (0.0, 0.0), (0.0, 2.0), (0.9, -1.0)])
def test_small_monte_carlo_covers_the_human_mean(rho: float, offset: float) -> None:
    """400 datasets of 30 humans + 150 simulated-only: the PPI interval covers the humans' mean 1.0 in
    92–98% of them, whatever the simulator (informative, useless, biased), and is narrower only when the
    copies are informative."""
    rng = np.random.default_rng(11)
    hits, ratio, lams = 0, [], []
    for _ in range(400):
        r = ppi_mean(*_normal(rng, 30, 150, rho, offset))
        hits += r.ci_low <= 1.0 <= r.ci_high
        ratio.append((r.ci_high - r.ci_low) / (r.humans_ci_high - r.humans_ci_low))
        lams.append(r.lam)
    assert 0.92 <= hits / 400 <= 0.98
    if rho == 0:
        assert np.mean(lams) < 0.12 and np.mean(ratio) > 0.97  # λ̂ ≈ 0: the humans-only interval back
    else:
        assert np.mean(ratio) < 0.85 and np.mean(lams) > 0.5


def test_a_perfect_copy_is_worth_the_simulated_participants() -> None:
    rng = np.random.default_rng(5)
    truth = rng.normal(size=240)
    r = ppi_mean(truth[:40], truth[:40], truth[40:])
    assert r.lam == pytest.approx(1.0, abs=0.2) and r.copy_corr == pytest.approx(1.0)
    assert 100 < r.humans_saved < 300  # ≈ the 200 simulated-only participants
    assert r.effective_n == pytest.approx(r.n + r.humans_saved)


# ------------------------------------------------------------------------------ the analysis on planted data


def test_participant_quantities_split_ties_and_need_one_first_shown() -> None:
    j = pd.DataFrame({"conversation_id": ["c1"] * 3 + ["c2"] * 3, "participant_id": "p", "source": "human",
                      "arm": ["A", "B", "C"] * 2, "position": [1, 2, 3, 1, 1, 2], "rank_used": [1, 1, 3, 2, 1, 3]})
    q = participant_quantities(j, ["A", "B", "C"]).iloc[0]
    assert q["choice_share:A"] == pytest.approx(25.0) and q["choice_share:B"] == pytest.approx(75.0)
    assert q["choice_share:C"] == 0.0
    # c2 shows two responses first: only c1 counts (A shares first place with B: half the credit)
    assert q["first_shown_share"] == pytest.approx(50.0)
    assert q["first_shown_excess"] == pytest.approx(50.0 - 100 / 3)


def test_planted_truth_is_covered_and_a_good_simulator_narrows_the_interval() -> None:
    """12 planted datasets per simulator (fixed seeds): the humans' true first-shown excess and arm C
    choice share are covered by at least 22 of 24 intervals; the informative simulator's intervals are
    narrower than the humans-only ones, the useless one's are not, and its λ̂ is near 0."""
    for rho, offset in ((0.9, 0.0), (0.0, 1.0)):
        covered, ratios, lams = 0, [], []
        for seed in range(12):
            src = ppi(cal.planted(seed, True, rho=rho, offset=offset, n=40, n_sim_only=80, n_events=6)).per_source["sim"]
            for key, t in (("first_shown_excess", src.first_shown_excess), ("choice_share:C", src.choice_share["C"])):
                assert t is not None and t.ppi is not None and t.humans_only is not None and t.lam is not None
                covered += t.ppi.ci_low <= cal.truth(key, True) <= t.ppi.ci_high
                ratios.append((t.ppi.ci_high - t.ppi.ci_low) / (t.humans_only.ci_high - t.humans_only.ci_low))
                lams.append(t.lam)
        assert covered >= 22, (rho, covered)
        if rho > 0:
            assert np.mean(ratios) < 0.9 and np.mean(lams) > 0.4
        else:
            assert np.mean(ratios) > 0.97 and np.mean(lams) < 0.12


def test_result_fields_order_and_json_as_registered() -> None:
    t = cal.planted(1, True, rho=0.9, n=40, n_sim_only=30, n_events=2)
    r = ANALYSES.get("ppi").run(t, analysis_context(t, n_boot=5, topics=None))
    result = FidelityResult(sources=t.sources, n_boot=5, seed=0, analyses={"ppi": r})
    assert isinstance(r, PPIResult) and r.status == "ok" and r.arms == ["A", "B", "C", "D"] and not r.weighted
    src = r.per_source["sim"]
    assert (src.n_humans, src.n_humans_without_copy, src.n_sim_only) == (40, 0, 30)
    assert sorted(src.order) == ["A", "B", "C", "D"] and src.order[0] in ("C", "D")
    shares = [src.choice_share[a].ppi.value for a in src.order]  # type: ignore[union-attr]
    assert shares == sorted(shares, reverse=True)
    x = src.first_shown_excess
    assert x is not None and x.effective_n == pytest.approx(x.n + x.humans_saved)
    again = FidelityResult.model_validate_json(result.model_dump_json())
    assert again.analyses["ppi"] == r
    assert json.loads(result.model_dump_json())["analyses"]["ppi"]["per_source"]["sim"]["first_shown_excess"]["n"] == 40


def test_weights_enter_every_mean() -> None:
    t = cal.planted(2, False, rho=0.9, n_sim_only=60, n_events=4)
    ids = sorted(set(t.judgements["participant_id"]))
    ones = ppi(t, weights=dict.fromkeys(ids, 1.0))
    plain = ppi(t)
    assert ones.weighted and not plain.weighted
    assert ones.per_source == plain.per_source
    heavy = ppi(t, weights={i: (5.0 if i < "p0010" else 1.0) for i in ids})
    assert heavy.per_source["sim"].first_shown_excess != plain.per_source["sim"].first_shown_excess


def _drop(t: Tables, keep: pd.Series) -> Tables:
    return dataclasses.replace(t, judgements=t.judgements[keep].reset_index(drop=True))


def test_not_available_paths() -> None:
    t = cal.planted(3, False, rho=0.9, n=40, n_sim_only=20, n_events=3)
    j = t.judgements
    only_copies = ppi(_drop(t, ~j["participant_id"].str.startswith("s")))
    assert only_copies.status == "ok"
    s = only_copies.per_source["sim"]
    assert s.status == "not_available" and "0 participant(s) without a human" in (s.reason or "")
    few = ppi(_drop(t, ~j["participant_id"].isin([f"p{i:04d}" for i in range(35)])))
    assert few.per_source["sim"].status == "not_available" and "only 5 human participant(s)" in (
        few.per_source["sim"].reason or "")
    no_human = ppi(_drop(t, j["source"] == "sim"))
    assert no_human.status == "not_available" and "no human" in (no_human.reason or "")
    no_sim = ppi(_drop(t, j["source"] == "human"))
    assert no_sim.status == "not_available" and "no simulated source" in (no_sim.reason or "")
    unranked = ppi(dataclasses.replace(t, judgements=j.assign(rank=np.nan)))
    assert unranked.status == "not_available" and "rankings" in (unranked.reason or "")
    no_position = ppi(dataclasses.replace(t, judgements=j.drop(columns="position"))).per_source["sim"]
    assert no_position.status == "ok" and no_position.first_shown_excess is not None
    assert no_position.first_shown_excess.status == "not_available" and "0 human(s)" in (
        no_position.first_shown_excess.reason or "")
    assert no_position.choice_share["A"].status == "ok"


def test_each_simulated_source_is_its_own_ppi() -> None:
    t = cal.planted(4, False, rho=0.9, n_sim_only=40, n_events=3)
    j = t.judgements
    other = j[j["source"] == "sim"].assign(source="sim_dynamic:b")
    other = other.assign(conversation_id="b-" + other["conversation_id"].astype(str))
    r = ppi(dataclasses.replace(t, judgements=pd.concat([j, other], ignore_index=True)))
    assert sorted(r.per_source) == ["sim", "sim_dynamic:b"]
    assert r.per_source["sim"] == r.per_source["sim_dynamic:b"]  # the same participants: the same PPI


# ------------------------------------------------------------------------------ real human data


def _split(t: Tables, copy_of: dict[str, str] | None, seed: int = 0) -> tuple[Tables, list[str]]:
    """A third of Dialogue-Eval's workers stay human, each with a simulated copy (their own data
    relabelled, or ``copy_of``'s worker's); every worker's data also appear relabelled as simulated-only
    participants when they are not in the human third."""
    j = judgements_frame(t)
    workers = sorted(j["participant_id"].astype(str).unique())
    rng = np.random.default_rng(seed)
    rng.shuffle(workers)
    humans = workers[: len(workers) // 3]
    h = j[j["participant_id"].isin(humans)]
    others = j[~j["participant_id"].isin(humans)].assign(source="sim")
    parts = [h, others]
    for human in humans:
        src = j[j["participant_id"] == (copy_of or {}).get(human, human)]
        parts.append(src.assign(source="sim", participant_id=human))
    sims = pd.concat(parts[1:], ignore_index=True)
    sims["conversation_id"] = "sim-" + sims["participant_id"].astype(str) + "-" + sims["conversation_id"].astype(str)
    cols = ["conversation_id", "participant_id", "source", "arm", "position", "rank"]
    return Tables(judgements=pd.concat([h, sims], ignore_index=True)[cols]), humans


def test_dialogue_eval_split_workers(dialogue_eval_tables: Tables) -> None:
    """Real people as both sides: a third of the workers are the humans, the rest simulated-only.

    With each human's copy being their own ratings (a perfect simulator) λ̂ ≈ 1, the PPI estimate is
    (near) the mean over every worker, it orders the bots as the published system ranking, and its
    interval is far narrower (humans saved ≈ the other workers). With each human's copy being another
    human worker's data (an uninformative simulator of the same population) λ̂ ≈ 0 and the interval is
    the humans-only one: real heterogeneity, ties and unequal numbers of HITs per worker."""
    t, humans = _split(dialogue_eval_tables, None)
    r = ppi(t)
    assert r.status == "ok"
    src = r.per_source["sim"]
    assert src.n_humans == len(humans) and src.n_sim_only > 2 * len(humans) - 5
    assert src.order == ["biencoder", "polyencoder", "kvmemnn", "seq2seq", "lan_model", "qc"]
    pooled = participant_quantities(judgements_frame(dialogue_eval_tables), r.arms)
    for arm, target in src.choice_share.items():
        assert isinstance(target, PPITarget) and target.ppi is not None and target.humans_only is not None
        assert target.lam is not None and target.lam > 0.85
        assert target.ppi.ci_low <= pooled[f"choice_share:{arm}"].mean() <= target.ppi.ci_high
        assert target.ppi.ci_high - target.ppi.ci_low < 0.8 * (target.humans_only.ci_high - target.humans_only.ci_low)
        assert target.humans_saved is not None and target.humans_saved > 0.5 * src.n_sim_only
    shuffled = humans[1:] + humans[:1]  # each human's copy is the next human's data
    t2, _ = _split(dialogue_eval_tables, dict(zip(humans, shuffled, strict=True)))
    useless = ppi(t2).per_source["sim"]
    lams = [x.lam for x in useless.choice_share.values() if x.lam is not None]
    assert len(lams) == 6 and np.mean(lams) < 0.2
    for x in useless.choice_share.values():
        assert x.ppi is not None and x.humans_only is not None
        assert x.ppi.ci_high - x.ppi.ci_low > 0.85 * (x.humans_only.ci_high - x.humans_only.ci_low)
