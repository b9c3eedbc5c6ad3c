"""Controls of the agreement analysis: persona placebo, the simulator's seed-to-seed
retest and the variance split of its ratings, on synthetic data with planted truths, in the report,
and on the real human data."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from simlab.fidelity.analyses import agreement
from simlab.fidelity.analyses._prep import judgements_frame, participants_of
from simlab.fidelity.analyses.agreement.common import _with_repeat
from simlab.fidelity.analyses.agreement.placebo import _placebo
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.synthetic import make_placebo, make_rating_repeats, make_synthetic
from simlab.report import render_html
from simlab.report.sections import build_sections
from simlab.tables import Tables
from tests.fidelity._synth import covers
from tests.report._payloads import PAYLOADS

SIM = "sim_dynamic"


def _gap_truth(q: float, pi: np.ndarray) -> float:
    return q * (1 - float(np.sum(pi**2)))


# ---------------------------------------------------------------------------------------------
# persona placebo


@pytest.mark.parametrize(("q", "pi"), [(0.4, (0.25, 0.25, 0.25, 0.25)), (0.4, (0.5, 0.3, 0.1, 0.1))])
def test_placebo_recovers_the_planted_gap(q: float, pi: tuple[float, ...]) -> None:
    truth = _gap_truth(q, np.array(pi))  # 0.3 uniform; 0.256 skewed (a 1/k chance baseline would be wrong)
    t = make_placebo(150, q=q, pi=pi, domains=("unguided", "values"), seed=3)
    pp = agreement(t, n_boot=200, seed=0).persona_placebo[SIM]
    assert pp.status == "ok" and pp.n_perm == 200 and pp.single_domains == []
    for inst in ("ranked_best", "rating_preference"):  # the ratings have the ranking's top
        r = pp.by_instrument[inst]
        assert r.n_events == 300 and r.n_no_other == 0 and r.gap.n == 150
        assert abs(r.gap.value - truth) < 0.06 and covers(r.gap, truth)
        assert abs(r.mismatched.value - float(np.sum(np.square(pi)))) < 0.03
        assert abs(r.own.value - r.mismatched.value - r.gap.value) < 1e-12
        assert r.permutation_p < 0.01 and r.gap.p_value == r.permutation_p


def test_placebo_without_persona_information_covers_zero() -> None:
    t = make_placebo(150, q=0.0, domains=("unguided", "values"), repeats=2, seed=4)
    r = agreement(t, n_boot=200, seed=0).persona_placebo[SIM].by_instrument["ranked_best"]
    assert r.n_events == 600 and covers(r.gap, 0.0) and r.permutation_p > 0.05
    assert abs(r.mismatched.value - 0.25) < 0.03


def _placebo_p(seed: int, q: float) -> float:
    t = make_placebo(150, q=q, domains=("unguided", "values"), repeats=1 + seed % 2, seed=1000 + seed)
    j = _with_repeat(t, judgements_frame(t))
    part = participants_of(t, 10, seed)
    res = _placebo(j[j["source"] == "human"], j[j["source"] == SIM], part, seed).by_instrument["ranked_best"]
    assert res.permutation_p is not None
    return res.permutation_p


def test_placebo_permutation_p_is_calibrated_under_the_null() -> None:
    # 40 null datasets (one and two repeats): a quick look; the slow test below takes 400
    p = np.array([_placebo_p(s, 0.0) for s in range(40)])
    assert np.sum(p < 0.05) <= 6  # P(≥ 7 of 40 | 5%) ≈ 0.3%
    assert 0.35 < np.mean(p) < 0.65  # roughly uniform (SD of the mean ≈ 0.046), not piled at 1


@pytest.mark.slow
def test_placebo_permutation_p_calibration_and_power_large() -> None:
    p0 = np.array([_placebo_p(s, 0.0) for s in range(400)])
    assert 0.025 <= np.mean(p0 < 0.05) <= 0.08
    p1 = np.array([_placebo_p(s, 0.15) for s in range(100)])  # true gap 0.11
    assert np.mean(p1 < 0.05) > 0.8


def test_placebo_single_participant_domain_is_dropped_and_counted() -> None:
    t = make_placebo(30, q=0.4, domains=("unguided",), seed=5)
    lone = make_placebo(1, q=0.4, domains=("controversy",), seed=6)  # participant p0000 only
    t = Tables(judgements=pd.concat([t.judgements, lone.judgements], ignore_index=True),
               conversations=pd.concat([t.conversations, lone.conversations], ignore_index=True))
    pp = agreement(t, n_boot=50, seed=0).persona_placebo[SIM]
    assert pp.single_domains == ["controversy"]
    r = pp.by_instrument["ranked_best"]
    assert r.n_events == 30 and r.n_no_other == 1


def test_placebo_too_few_matched_participants_is_not_available() -> None:
    t = make_placebo(30, q=0.4, seed=7)
    j, c = t.judgements, t.conversations
    keep = lambda f: (f["source"] == "human") | f["participant_id"].isin([f"p{i:04d}" for i in range(6)])  # noqa: E731
    pp = agreement(Tables(judgements=j[keep(j)], conversations=c[keep(c)]), n_boot=20, seed=0).persona_placebo[SIM]
    assert pp.status == "not_available" and "6 participants matched" in pp.reason
    assert pp.by_instrument["ranked_best"].status == "not_available"


# ---------------------------------------------------------------------------------------------
# simulator retest and variance split


def test_sim_retest_pairs_repeats_of_the_same_domain() -> None:
    r = agreement(make_rating_repeats(40, 3, seed=8), n_boot=50, seed=0)
    rt = r.sim_retest[SIM]
    # 40 participants × 2 domains × 4 arms × C(3, 2) repeat pairs: no pair across domains
    assert rt.status == "ok" and rt.pairing == "repeat" and rt.n_pairs == 40 * 2 * 4 * 3
    assert rt.rating_corr_within.ci_low > 0 and rt.permutation_p < 0.01  # the arm effects are shared
    human = r.human_ceiling.retest
    assert human.status == "ok" and human.pairing == "conversation" and human.n_pairs == 40 * 4  # as before


def test_sim_retest_without_repeats_is_not_available() -> None:
    r = agreement(make_rating_repeats(40, 1, seed=9), n_boot=20, seed=0)
    rt = r.sim_retest[SIM]
    assert rt.status == "not_available" and "no repeated conversations" in rt.reason
    # a store without the repeat column: every conversation is repeat 0, so nothing pairs
    t = make_rating_repeats(40, 2, seed=9)
    t = replace(t, conversations=t.conversations.drop(columns="repeat"))
    assert agreement(t, n_boot=20, seed=0).sim_retest[SIM].status == "not_available"


def _sim_only(t: Tables) -> Tables:
    """The simulated source of ``t`` alone, and a copy of it as the no-persona control (own ids)."""
    j = t.judgements[t.judgements["source"] == SIM]
    j = j.assign(rating_preference=j["rating_preference"].clip(0, 100))  # the schema's bounds (analyze checks them)
    c = t.conversations[t.conversations["source"] == SIM]
    ctl = "sim_dynamic_no_persona"
    j2 = j.assign(source=ctl, conversation_id=j["conversation_id"] + ":no_persona")
    c2 = c.assign(source=ctl, conversation_id=c["conversation_id"] + ":no_persona")
    return Tables(judgements=pd.concat([j, j2], ignore_index=True), conversations=pd.concat([c, c2], ignore_index=True))


def test_controls_of_a_run_without_human_data() -> None:
    # the simulator's own retest and variance split need no people; the comparison says why it is absent
    t = _sim_only(make_rating_repeats(30, 2, seed=21))
    r = agreement(t, n_boot=30, seed=0)
    assert r.status == "not_available" and r.reason == "no human source" and r.persona_placebo == {}
    for src in (SIM, "sim_dynamic_no_persona"):
        assert r.sim_retest[src].status == "ok" and r.variance_split[src].status == "ok", src
    result = FidelityResult(sources=[SIM, "sim_dynamic_no_persona"], n_boot=30, seed=0, analyses={"agreement": r})
    [s] = [s for s in build_sections(result) if s.key == "agreement"]
    text = " ".join(s.verdicts)
    assert "Agreement with people: Not available: no human source" in text
    assert "Run again with another seed (same participant and domain), sim_dynamic_no_persona's" in text
    assert {row.source for row in s.rows} == {SIM, "sim_dynamic_no_persona"}


def test_analyze_fits_a_run_and_its_no_persona_control_side_by_side() -> None:
    from simlab.errors import InputError
    from simlab.fidelity import analyze

    t = _sim_only(make_rating_repeats(30, 2, seed=22))
    res = analyze(t, n_boot=20, seed=0)
    assert res.sources == [SIM, "sim_dynamic_no_persona"]
    assert set(res.analyses["hierarchy"].per_source) == {SIM, "sim_dynamic_no_persona"}
    assert set(res.analyses["agreement"].variance_split) == {SIM, "sim_dynamic_no_persona"}
    with pytest.raises(InputError, match="use compare for human data with simulated"):
        analyze(make_synthetic(12, seed=1), n_boot=20)


def test_variance_split_recovers_the_planted_components() -> None:
    truth = {"participant": 10.0**2, "repeat": 5.0**2, "residual": 8.0**2}
    total = sum(truth.values())
    t = make_rating_repeats(50, 2, sd_participant=10, sd_repeat=5, sd_residual=8, seed=1)
    vs = agreement(t, n_boot=200, seed=0).variance_split[SIM]
    assert vs.status == "ok" and vs.n_participants == 50 and vs.n_conversations == 200 and vs.n_repeated == 100
    assert vs.n_boot == 100 and vs.n_failed <= 5
    for part, v in truth.items():
        assert covers(vs.variance[part], v), (part, vs.variance[part])
        assert covers(vs.share[part], v / total), (part, vs.share[part])
        assert vs.variance[part].n_failed == vs.n_failed
    assert abs(sum(e.value for e in vs.share.values()) - 1) < 1e-9


def _statsmodels_split(t: Tables, method: str | None = None) -> np.ndarray:
    """The specified model in statsmodels: rating ~ C(arm) + C(domain), (1 | participant) and a variance
    component of the conversation within participant, REML."""
    d = t.judgements[t.judgements["source"] == SIM]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm("rating_preference ~ C(arm) + C(domain)", d, groups="participant_id", re_formula="1",
                          vc_formula={"conv": "0 + C(conversation_id)"}).fit(
            reml=True, **({"method": [method], "maxiter": 4000} if method else {}))
    assert fit.converged
    return np.array([float(np.asarray(fit.cov_re)[0, 0]), float(fit.vcomp[0]), float(fit.scale)])


def _split(t: Tables) -> np.ndarray:
    vs = agreement(t, n_boot=10, seed=0).variance_split[SIM]
    return np.array([vs.variance[k].value for k in ("participant", "repeat", "residual")])


@pytest.mark.parametrize("seed", [2, 3])
def test_variance_split_equals_statsmodels_mixedlm(seed: int) -> None:
    # the closed-form REML gives MixedLM's estimates (MixedLM's own default optimiser, interior optimum)
    t = make_rating_repeats(30, 2 + seed % 2, seed=seed)
    got, want = _split(t), _statsmodels_split(t)
    assert np.allclose(got, want, rtol=2e-3), (got, want)


def test_variance_split_reaches_a_zero_variance() -> None:
    # no participant level (a simulator without persona): the estimate is 0, where MixedLM's gradient
    # optimisers stall; its Nelder–Mead gets there too, and the two agree
    t = make_rating_repeats(50, 2, sd_participant=0.0, seed=1)
    got, want = _split(t), _statsmodels_split(t, "nm")
    assert got[0] < 1e-6 and want[0] < 1e-3
    assert np.allclose(got[1:], want[1:], rtol=2e-3), (got, want)
    vs = agreement(t, n_boot=100, seed=0).variance_split[SIM]
    assert vs.n_failed == 0 and vs.share["participant"].ci_low < 1e-6


def test_variance_split_needs_repeats_and_ratings() -> None:
    r = agreement(make_rating_repeats(40, 1, seed=10), n_boot=20, seed=0)
    vs = r.variance_split[SIM]
    assert vs.status == "not_available" and "one conversation" in vs.reason and vs.variance == {}
    t = make_placebo(30, q=0.4, repeats=2, seed=11)
    j = t.judgements.copy()
    j.loc[j["source"] == SIM, "rating_preference"] = np.nan
    vs = agreement(replace(t, judgements=j), n_boot=20, seed=0).variance_split[SIM]
    assert vs.status == "not_available" and "no rating_preference" in vs.reason


# ---------------------------------------------------------------------------------------------
# report


def _payload_tables() -> Tables:
    """A placebo dataset whose simulated source, arms and a lone domain carry HTML payloads."""
    bad_src = "sim_" + PAYLOADS["script"]
    arms = ("GEN", PAYLOADS["img"], "DPFT", "PPFT")
    t = make_placebo(40, q=0.5, arms=arms, domains=("unguided",), repeats=2, sim_source=bad_src, seed=13)
    lone = make_placebo(1, q=0.5, arms=arms, domains=(PAYLOADS["svg"],), sim_source=bad_src, seed=14)
    j = pd.concat([t.judgements, lone.judgements], ignore_index=True)
    # rating levels per participant and conversation (the tops stay), so the variance split has something to split
    rng = np.random.default_rng(15)
    person = j["participant_id"].map(dict(zip(j["participant_id"].unique(), rng.normal(0, 10, 41))))
    conv = j["conversation_id"].map({c: rng.normal(0, 5) for c in j["conversation_id"].unique()})
    j["rating_preference"] += person + conv + rng.normal(0, 3, len(j))  # ranks are given: the tops stay
    return Tables(judgements=j, conversations=pd.concat([t.conversations, lone.conversations], ignore_index=True))


def test_report_shows_the_controls_escaped() -> None:
    t = _payload_tables()
    bad_src = "sim_" + PAYLOADS["script"]
    r = agreement(t, n_boot=30, seed=0)
    assert r.persona_placebo[bad_src].status == "ok" and r.variance_split[bad_src].status == "ok"
    result = FidelityResult(sources=sorted(t.judgements["source"].unique()), n_boot=30, seed=0,
                            analyses={"agreement": r})
    [s] = [s for s in build_sections(result) if s.key == "agreement"]
    measures = {(row.source, row.measure) for row in s.rows}
    for m in ("persona placebo, ranked_best: agreement with own human",
              "persona placebo, ranked_best: agreement with another human of the domain",
              "persona placebo, ranked_best: gap own − other",
              "test–retest rating correlation (within conversation), repeat vs repeat",
              "rating_preference variance share: participant", "rating_preference variance share: repeat",
              "rating_preference variance share: residual"):
        assert (bad_src, m) in measures, m
    text = " ".join(s.verdicts)
    assert "Persona placebo (" in text and "points that the persona explains" in text and "permutation p" in text
    assert "Run again with another seed" in text and "people rating the same arm" not in text  # humans: one conversation each
    assert "bootstrap refits of the mixed model" in text and "domains with a single participant" in text
    html = render_html(result, tables=t)
    assert "<script" not in html.lower() and "<img src=x" not in html and "<svg onload" not in html
    assert "&lt;script&gt;" in html and "&lt;svg onload" in html


def test_report_says_why_controls_are_missing() -> None:
    r = agreement(make_rating_repeats(40, 1, seed=15), n_boot=20, seed=0)
    result = FidelityResult(sources=["human", SIM], n_boot=20, seed=0, analyses={"agreement": r})
    [s] = [s for s in build_sections(result) if s.key == "agreement"]
    text = " ".join(s.verdicts)
    assert f"Seed-to-seed retest of {SIM}: Not available: no repeated conversations" in text
    assert f"Variance split of {SIM}'s rating_preference: Not available: every (participant, domain)" in text


# ---------------------------------------------------------------------------------------------
# real human data


def test_controls_on_real_human_data(dialogue_eval_tables: Tables) -> None:
    r = agreement(dialogue_eval_tables, n_boot=10, seed=0)
    assert r.status == "ok" and r.persona_placebo == {} and r.sim_retest == {} and r.variance_split == {}
    assert r.human_ceiling.retest.pairing == "conversation"
    # the same people relabelled as a simulated source (no persona code path): the copy agrees with
    # its own human far more than with another worker of the same round
    j, c = dialogue_eval_tables.judgements, dialogue_eval_tables.conversations
    src = "sim_dynamic_no_persona"
    copy = Tables(
        judgements=pd.concat([j, j.assign(source=src, conversation_id="copy-" + j["conversation_id"].astype(str))]),
        conversations=pd.concat([c, c.assign(source=src, conversation_id="copy-" + c["conversation_id"].astype(str))]),
    )
    r = agreement(copy, n_boot=10, seed=0)
    pp = r.persona_placebo[src]
    assert pp.status == "ok" and pp.by_instrument["ranked_best"].gap.value > 0.3
    assert r.sim_retest[src].status == "not_available"  # no repeat column: every conversation is repeat 0
    assert r.variance_split[src].status in ("ok", "failed")  # workers with two HITs in a round: it runs
    build_sections(FidelityResult(sources=["human", src], n_boot=10, seed=0, analyses={"agreement": r}))


def test_the_controls_benchmark_runs_and_recovers_its_truths() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "agreement_controls.py"
    out = subprocess.run([sys.executable, str(script), "--participants", "40", "--n-boot", "20"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "variance split" in lines[0] and "persona placebo" in lines[1], out.stdout
    assert "planted 100, 25, 64" in lines[0] and "planted 0.300" in lines[1]
