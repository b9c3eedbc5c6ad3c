"""Topics: a planted shift is divergent and detectable; the same distribution is not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from simlab.fidelity.analyses import analyze_all, topics
from simlab.fidelity.result import FidelityResult
from tests.fidelity._synth import null, planted


def test_planted_topic_shift_is_found() -> None:
    r = topics(planted(), n_boot=50, seed=0)
    assert r.status == "ok" and r.embedding == "tfidf"
    o = r.opening
    assert o.jsd_vs_human["sim_dynamic"].ci_low > 0
    assert o.auc_vs_human["sim_dynamic"].ci_low > 0.6
    # shifted towards one topic → simulated openings are more alike than human ones
    assert o.homogeneity["sim_dynamic"].ci_low > o.homogeneity["human"].ci_high
    assert r.all_user.auc_vs_human["sim_dynamic"].value > 0.6


def test_same_distribution_is_indistinguishable() -> None:
    r = topics(null(), n_boot=50, seed=0)
    auc = r.opening.auc_vs_human["sim_dynamic"]
    assert abs(auc.value - 0.5) < 0.06 and auc.ci_low < 0.5 + 0.02
    assert abs(r.all_user.auc_vs_human["sim_dynamic"].value - 0.5) < 0.06
    assert r.opening.jsd_vs_human["sim_dynamic"].value < 0.02


def test_prism_clusters_and_missing_inputs(tmp_path: Path) -> None:
    t = null()
    r = topics(t, n_boot=10, seed=0)
    if r.prism.status == "ok":  # shared data present
        assert len(r.prism.clusters) == len(r.prism.prism_shares) == len(r.prism.shares["human"])
        assert abs(sum(r.prism.shares["human"]) - 1) < 1e-9
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
