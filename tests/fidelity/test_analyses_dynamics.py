"""Feedback dynamics: a planted turn slope recovered, none where none was planted."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

from simlab.fidelity.analyses import dynamics
from simlab.fidelity.analyses.dynamics import MIN_PARTICIPANTS, _Slopes
from simlab.fidelity.synthetic import make_synthetic
from simlab.tables import Tables
from tests.fidelity._synth import covers, null, planted


def test_planted_turn_slope_recovered() -> None:
    r = dynamics(planted(), n_boot=50, seed=0)
    assert r.status == "ok", r.reason
    sim, hum = r.per_source["sim_dynamic"], r.per_source["human"]
    assert covers(sim.slope, 2.0) and covers(hum.slope, 0.0)
    assert covers(sim.slope_window, 2.0) and covers(hum.slope_window, 0.0)
    assert covers(r.slope_diff_vs_human["sim_dynamic"], 2.0) and r.slope_diff_vs_human["sim_dynamic"].p_value < 1e-6
    assert covers(r.slope_diff_window_vs_human["sim_dynamic"], 2.0)
    assert r.window == 4 and r.model and "cluster" in r.model
    # descriptives: 2..6 user turns uniformly → mean 4; stops before 6 turns are user_ended (4/5)
    assert covers(hum.n_turns, 4.0) and covers(hum.early_stop_share, 0.8)
    assert set(hum.n_turns_shares) == {"2", "3", "4", "5", "6"} and abs(sum(hum.n_turns_shares.values()) - 1) < 1e-9
    assert 0 < hum.switch_rate.value < 1 and hum.ceiling_share.value < 0.01
    assert hum.n_participants == 200 and hum.n_gen_error is None  # make_synthetic's turns carry no gen_error


def test_levels_that_grow_with_conversation_length_are_no_slope() -> None:
    """Survivorship: later turns come only from long conversations. If long conversations are rated
    higher throughout, a model that compares levels across conversations finds a rise over turns;
    the within-conversation slope is exactly unchanged."""
    t = planted()
    n_turns = t.conversations.set_index("conversation_id")["n_turns"]
    turns = t.turns.assign(turn_rating=t.turns["turn_rating"] + 5.0 * t.turns["conversation_id"].map(n_turns))
    shifted = dynamics(replace(t, turns=turns), n_boot=20, seed=0)
    plain = dynamics(t, n_boot=20, seed=0)
    for s in ("human", "sim_dynamic"):
        assert abs(shifted.per_source[s].slope.value - plain.per_source[s].slope.value) < 1e-9
    assert covers(shifted.per_source["human"].slope, 0.0)  # planted: flat in human, +2 in sim_dynamic


def test_gen_error_replies_are_dropped_and_counted() -> None:
    t = planted()
    turns = t.turns.copy()
    # broken replies of the simulator, late in conversations, rated 0: they would steepen its fall
    flag = (turns["role"] == "assistant") & turns["conversation_id"].str.startswith("sim_dynamic") & (turns["turn"] >= 3)
    flag &= np.random.default_rng(0).random(len(turns)) < 0.3
    turns["gen_error"] = flag
    turns.loc[flag, "turn_rating"] = 0.0
    r = dynamics(replace(t, turns=turns), n_boot=20, seed=0)
    clean = dynamics(replace(t, turns=t.turns[~flag].reset_index(drop=True)), n_boot=20, seed=0)
    assert r.per_source["sim_dynamic"].n_gen_error == int(flag.sum()) > 0
    assert r.per_source["human"].n_gen_error == 0
    assert abs(r.slope_diff_vs_human["sim_dynamic"].value - clean.slope_diff_vs_human["sim_dynamic"].value) < 1e-9
    assert covers(r.slope_diff_vs_human["sim_dynamic"], 2.0)


def test_a_source_with_few_participants_is_not_available() -> None:
    t = make_synthetic(40, seed=5, autograde=False)
    few = {f"p{i:04d}" for i in range(MIN_PARTICIPANTS - 1)}
    conv = t.conversations
    keep = (conv["source"] == "human") | conv["participant_id"].isin(few)
    ids = set(conv.loc[keep, "conversation_id"])
    t = replace(t, conversations=conv[keep].reset_index(drop=True), turns=t.turns[t.turns["conversation_id"].isin(ids)])
    r = dynamics(t, n_boot=20, seed=0)
    sim = r.per_source["sim_dynamic"]
    assert sim.status == "not_available" and f"{MIN_PARTICIPANTS - 1} participants" in sim.reason
    assert sim.slope is None and not r.slope_diff_vs_human
    assert r.status == "ok" and r.per_source["human"].slope is not None


def test_slopes_equal_weighted_least_squares_with_conversation_dummies_and_cr2_by_participant() -> None:
    """The demeaned, weighted fit is weighted least squares with one dummy per conversation (statsmodels
    WLS), each conversation weighted by 1 / Σ(turn − its mean turn)², so its own slope counts once; the CI is that fit's CR2 sandwich by participant with Bell–McCaffrey
    degrees of freedom, computed densely with the dummies in the design."""
    from tests.fidelity.test_cluster_ols import _dense

    t = make_synthetic(12, turn_slope={"sim_dynamic": 1.0}, seed=3, autograde=False)
    d = t.turns[t.turns["role"] == "assistant"].merge(t.conversations[["conversation_id", "participant_id", "source"]])
    d = d[["conversation_id", "participant_id", "source", "turn", "arm", "turn_rating"]].reset_index(drop=True)
    fit = _Slopes(d, ["human", "sim_dynamic"])
    centred = d["turn"] - d.groupby("conversation_id")["turn"].transform("mean")
    spread = (centred**2).groupby(d["conversation_id"]).transform("sum")
    w = np.where(spread > 0, 1 / spread.where(spread > 0, 1.0), 0.0)
    assert len(set(spread)) > 2  # conversations of different lengths: the weights matter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dummies of one-turn conversations are empty: a pseudo-inverse fit
        wls = smf.wls("turn_rating ~ 0 + turn:C(source) + C(arm):C(source) + C(conversation_id)", d, weights=w).fit()
    c = np.array([-1.0 if n == "turn:C(source)[human]" else 1.0 if n == "turn:C(source)[sim_dynamic]" else 0.0
                  for n in wls.params.index])
    e = fit.contrast("sim_dynamic", "human")
    assert abs(e.value - float(c @ wls.params)) < 1e-8
    root = np.sqrt(w)
    value, se, df = _dense(wls.model.exog * root[:, None], d["turn_rating"].to_numpy(float) * root,
                           d["participant_id"].to_numpy(), d["conversation_id"].to_numpy(), c)
    assert abs(value - e.value) < 1e-8
    half = sps.t.ppf(0.975, df) * se
    assert abs(e.ci_low - (value - half)) < 1e-6 and abs(e.ci_high - (value + half)) < 1e-6
    assert f"{df:.1f} Bell–McCaffrey df" in (e.note or "")


def test_without_turns_only_conversation_level_measures() -> None:
    t = planted()
    r = dynamics(replace(t, turns=None), n_boot=20)
    assert r.status == "not_available"
    assert r.per_source["human"].n_turns is not None and r.per_source["human"].slope is None
    assert dynamics(replace(t, conversations=None), n_boot=5).status == "not_available"


def test_turn_that_does_not_vary_within_conversations_gives_no_slope_and_says_why() -> None:
    t = planted()
    r = dynamics(replace(t, turns=t.turns.assign(turn=1)), n_boot=5)
    assert r.status == "not_available"
    assert r.reason.startswith("no conversation has turn ratings at two different turns")


def test_a_model_that_cannot_be_fitted_says_why_in_words() -> None:
    t = planted()
    a = t.turns[t.turns["role"] == "assistant"]
    # each of turns 0–3 rates one arm, the same everywhere: turn and arm are one predictor
    arms = np.array(["GEN", "PROMPT", "DPFT", "PPFT"])
    one = a[(a["turn"] < 4) & (a["arm"] == arms[a["turn"].clip(upper=3).to_numpy()])]
    r = dynamics(replace(t, turns=one), n_boot=5)
    assert r.status == "failed"
    assert r.reason.startswith("turn-slope model: the model could not be fitted: arm[")
    assert "is a linear combination of turn[" in r.reason and "the turn repeats an arm" in r.reason


def test_real_human_data_without_turn_ratings(dialogue_eval_tables: Tables) -> None:
    r = dynamics(dialogue_eval_tables, n_boot=5)
    assert r.status == "not_available" and r.reason == "no turn ratings"
    assert r.per_source["human"].n_participants > MIN_PARTICIPANTS


# ---------------------------------------------------------------------------------------------
# conversation length and early stops against human


def test_planted_longer_conversations_and_fewer_user_stops_are_found() -> None:
    t = null()
    c = t.conversations.copy()
    sim = (c["source"] == "sim_dynamic").to_numpy()
    c.loc[sim, "n_turns"] += 1  # every simulated conversation one turn longer
    # half the simulator's conversations end by the context budget instead: user-ended share 0.8 → 0.4
    cut = sim & (np.random.default_rng(0).random(len(c)) < 0.5)
    c.loc[cut, "stop_reason"] = "context_limit"
    r = dynamics(replace(t, conversations=c), n_boot=20, seed=0)
    d = r.n_turns_diff_vs_human["sim_dynamic"]
    assert covers(d, 1.0) and d.ci_low > 0.5 and d.p_value < 1e-6 and abs(d.value - 1.0) < 0.2
    assert d.n == 150 and "cluster" in (d.note or "")
    hum, simr = r.per_source["human"], r.per_source["sim_dynamic"]
    assert abs(d.value - (simr.n_turns.value - hum.n_turns.value)) < 1e-9  # the difference of the two means
    e = r.early_stop_diff_vs_human["sim_dynamic"]
    assert covers(e, -0.4) and e.ci_high < -0.2
    assert abs(e.value - (simr.early_stop_share.value - hum.early_stop_share.value)) < 1e-9


def test_null_length_differences_cover_zero() -> None:
    r = dynamics(null(), n_boot=20, seed=0)
    assert covers(r.n_turns_diff_vs_human["sim_dynamic"], 0.0)
    assert covers(r.early_stop_diff_vs_human["sim_dynamic"], 0.0)
    assert "human" not in r.n_turns_diff_vs_human


def test_length_difference_is_statsmodels_ols_clustered_by_participant() -> None:
    t = make_synthetic(25, seed=4, autograde=False, sources=("human", "sim_dynamic", "sim_dynamic_no_persona"))
    r = dynamics(t, n_boot=5, seed=0)
    for s in ("sim_dynamic", "sim_dynamic_no_persona"):
        c = t.conversations[t.conversations["source"].isin(["human", s])].reset_index(drop=True)
        c = c.assign(sim=(c["source"] == s).astype(float), n_turns=c["n_turns"].astype(float))
        ref = smf.ols("n_turns ~ sim", c).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(c["participant_id"])[0]},
                                              use_t=True)
        e = r.n_turns_diff_vs_human[s]
        lo, hi = ref.conf_int().loc["sim"]
        assert abs(e.value - ref.params["sim"]) < 1e-10 and abs(e.ci_low - lo) < 1e-10 and abs(e.ci_high - hi) < 1e-10
        assert abs(e.p_value - ref.pvalues["sim"]) < 1e-10
        g = c["participant_id"].nunique()
        assert abs((hi - lo) / 2 / ref.bse["sim"] - sps.t.ppf(0.975, g - 1)) < 1e-9  # t with G − 1 df


def test_length_differences_without_turn_ratings_or_stop_reasons() -> None:
    t = null()
    r = dynamics(replace(t, turns=None, conversations=t.conversations.drop(columns="stop_reason")), n_boot=5)
    assert r.status == "not_available"  # no turn ratings …
    assert covers(r.n_turns_diff_vs_human["sim_dynamic"], 0.0)  # … the length comparison is still made
    assert r.early_stop_diff_vs_human == {}
