"""Trait biases: a trait effect planted in human only is found there and in the interaction."""

from __future__ import annotations

from dataclasses import replace

from simlab.fidelity.analyses import traits
from tests.fidelity._synth import individual


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
