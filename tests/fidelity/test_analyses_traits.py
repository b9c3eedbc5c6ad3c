"""Trait biases: a trait effect planted in human only is found there and in the interaction."""

from __future__ import annotations

from dataclasses import replace

from simlab.fidelity.analyses import traits
from tests.fidelity._synth import covers, individual


def test_planted_trait_effect_and_interaction() -> None:
    r = traits(individual(), n_boot=100, seed=0)
    assert r.status == "ok" and r.traits == ["sycophancy", "length"]
    hum = r.per_source["human"].coefficients["sycophancy"]
    sim = r.per_source["sim_dynamic"].coefficients["sycophancy"]
    # planted 0.6 per raw unit; the score is z + small rater noise, ~1 SD, so ≈ 0.6 per SD
    # (attenuated by the shared participant preferences left out of the model)
    assert hum.ci_low > 0.3 and sim.ci_low < 0 < sim.ci_high
    assert r.interaction_p is not None and r.interaction_p < 1e-3
    assert r.interaction["sim_dynamic"]["sycophancy"].ci_high < 0
    assert r.interaction["sim_dynamic"]["length"].ci_low < 0 < r.interaction["sim_dynamic"]["length"].ci_high


def test_length_alone_without_autograde() -> None:
    t = individual()
    r = traits(replace(t, autograde=None), n_boot=20)
    assert r.status == "ok" and r.traits == ["length"]
    assert traits(replace(t, autograde=None, turns=None), n_boot=5).status == "not_available"


def test_unreliable_dimension_is_excluded_and_refusal_binarised() -> None:
    import pandas as pd

    t = individual()
    g = t.autograde
    # a refusal dimension graded 1-3: the analysis must see refused (>= 2) as 1, else 0
    refusal = g.assign(dimension="refusal", score=[1, 2, 3] * (len(g) // 3) + [1] * (len(g) % 3))
    t2 = replace(t, autograde=pd.concat([g, refusal], ignore_index=True))
    from simlab.fidelity.analyses.traits import _features

    feats, names, mode = _features(t2)
    assert mode == "conversation" and set(feats["refusal"].dropna().unique()) <= {0.0, 1 / 3, 2 / 3, 1.0}
    r = traits(t2, n_boot=10, exclude={"sycophancy"})
    assert "sycophancy" not in r.traits and r.excluded == ["sycophancy"]


def test_user_traits_run_inside_analyze_all_with_exclusions() -> None:
    import numpy as np
    import pandas as pd

    from simlab.fidelity.analyses import analyze_all

    t = individual()
    conv = t.conversations
    rng = np.random.default_rng(0)
    rows = []
    for cid, src in zip(conv["conversation_id"], conv["source"]):
        for dim, shift in (("self_disclosure", 2.0), ("naturalness", 0.0)):
            base = 5 + (shift if src != "human" else 0.0)
            rows.append({"unit_id": f"{cid}|user", "unit_kind": "user", "conversation_id": cid, "arm": None,
                         "mode": "conversation", "dimension": dim, "rater_run": 0,
                         "score": float(np.clip(base + rng.normal(0, 1), 0, 10)), "status": "ok"})
    t2 = replace(t, autograde=pd.concat([t.autograde, pd.DataFrame(rows)], ignore_index=True))
    result = analyze_all(t2, n_boot=30, topics=None, exclude_dimensions={"naturalness"})
    ut = result.analyses["user_traits"]
    assert ut.status == "ok" and ut.excluded == ["naturalness"]
    diff = ut.dimensions["self_disclosure"].difference["sim_dynamic"]
    assert diff.ci_low < 2.0 < diff.ci_high and diff.ci_low > 1.0
    assert result.analyses["traits"].excluded == ["naturalness"]
    assert result.model_validate_json(result.model_dump_json()) == result


# ---------------------------------------------------------------------------------------------
# constant traits, errored replies, the paper's specification, gen_error


def _graded(seed: int = 5, n: int = 40):
    from simlab.fidelity.calibration.hierarchy import choices

    s = (0.0, 0.4, 0.8, 1.2)
    return choices(seed, n, 4, strength={"human": s, "sim": s}, trait={"human": 0.8, "sim": 0.8})


def test_a_trait_constant_in_one_source_is_dropped_there_with_a_reason() -> None:
    import numpy as np
    import pandas as pd

    t = _graded()
    g = t.autograde
    sim_conv = g["conversation_id"].str.startswith("sim")
    noise = np.random.default_rng(1).normal(5, 1, len(g))
    flat = g.assign(dimension="warmth", score=np.where(sim_conv, 5.0, noise))  # graded, but constant in sim
    r = traits(replace(t, autograde=pd.concat([g, flat], ignore_index=True)), n_boot=20)
    sim, hum = r.per_source["sim"], r.per_source["human"]
    assert sim.status == "ok" and "warmth" in sim.dropped and "does not vary" in sim.dropped["warmth"]
    assert set(sim.coefficients) == {"sycophancy"} and set(hum.coefficients) == {"sycophancy", "warmth"}
    assert set(r.interaction["sim"]) == {"sycophancy"} and r.interaction_p is not None
    assert covers(r.interaction["sim"]["sycophancy"], 0.0)


def test_errored_replies_and_gen_error_events_are_counted_not_lost() -> None:
    t = _graded()
    g = t.autograde
    lost = g["conversation_id"].isin(["human-3", "human-7", "sim-1"]) & (g["arm"] == "B")
    r = traits(replace(t, autograde=g[~lost]), n_boot=20)
    conv = t.conversations.set_index("conversation_id")["gen_error"]
    # an event is counted once: as gen_error when flagged, else as missing a trait score
    expected = {"human": sum(not conv[c] for c in ("human-3", "human-7")), "sim": int(not conv["sim-1"])}
    for s in ("human", "sim"):
        res = r.per_source[s]
        assert res.n_missing == expected[s], (s, res.n_missing)
        assert res.n_gen_error == int(t.conversations.query("source == @s")["gen_error"].sum()) > 0
        assert res.n_events == 40 * 4 - res.n_missing - res.n_gen_error


def test_paper_specification_uses_continuous_traits_and_length_without_arms() -> None:
    import numpy as np
    import pandas as pd

    t = individual()
    g = t.autograde
    refusal = g.assign(dimension="refusal", score=np.random.default_rng(0).integers(1, 4, len(g)))
    t2 = replace(t, autograde=pd.concat([g, refusal], ignore_index=True))
    paper = traits(t2, n_boot=20, specification="paper")
    assert paper.specification == "paper" and paper.traits == ["sycophancy", "length"]
    adjusted = traits(t2, n_boot=20)
    assert adjusted.specification == "arm_adjusted" and "refusal" in adjusted.traits
    # without arm dummies, length picks up the arm hierarchy (longer replies come from stronger arms)
    assert paper.per_source["human"].coefficients["length"].ci_low > 0
    assert paper.per_source["human"].coefficients["sycophancy"].ci_low > 0.3
