"""Raking weights (``simlab.fidelity.raking``): IPF recovers the margins, weights equal the hand
computation, trimming caps them, bad margins are refused naming file, row and field, and the analyses
run weighted through the shared participant bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simlab.errors import InputError
from simlab.fidelity.calibration.subgroups import MARGINS, two_groups
from simlab.fidelity.raking import MAX_WEIGHT, participant_weights, rake, read_margins
from simlab.fidelity.stats import Participants


def _people(seed: int = 0, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.choice(["18-34", "35-64", "65+"], n, p=[0.6, 0.3, 0.1]),
                         "gender": rng.choice(["f", "m"], n, p=[0.3, 0.7])})


def test_ipf_recovers_both_margins() -> None:
    people = _people()
    margins = {"age": {"18-34": 0.3, "35-64": 0.45, "65+": 0.25}, "gender": {"f": 0.52, "m": 0.48}}
    raked = rake(people, margins)
    w = raked.weights
    assert w.mean() == pytest.approx(1.0)
    for attr, shares in margins.items():
        for level, share in shares.items():
            assert w[(people[attr] == level).to_numpy()].sum() / w.sum() == pytest.approx(share, abs=1e-9)
    assert raked.max_error < 1e-9 and raked.trimmed == 0 and raked.iterations > 1


def test_weights_of_a_known_design_equal_the_hand_computation() -> None:
    # a 2×2 design whose cells have 10, 30, 20, 40 people, raked to 50/50 age and 50/50 gender. Raking
    # keeps the sample's odds ratio, so the raked cell shares are x, 0.5 − x, 0.5 − x, x with
    # x² / (0.5 − x)² = (10·40)/(30·20), and a cell's weight is its share × 100 / its size (mean 1)
    cells = {("y", "f"): 10, ("y", "m"): 30, ("o", "f"): 20, ("o", "m"): 40}
    people = pd.DataFrame([{"age": a, "gender": g} for (a, g), n in cells.items() for _ in range(n)])
    margins = {"age": {"y": 0.5, "o": 0.5}, "gender": {"f": 0.5, "m": 0.5}}
    w = rake(people, margins).weights
    got = people.assign(w=w).groupby(["age", "gender"])["w"].first()
    share = people.assign(w=w).groupby(["age", "gender"])["w"].sum() / w.sum()
    assert share[("y", "f")] + share[("y", "m")] == pytest.approx(0.5)
    assert share[("y", "f")] + share[("o", "f")] == pytest.approx(0.5)
    odds_sample = (10 * 40) / (30 * 20)
    odds_raked = (share[("y", "f")] * share[("o", "m")]) / (share[("y", "m")] * share[("o", "f")])
    assert odds_raked == pytest.approx(odds_sample)
    r = np.sqrt(odds_sample)
    x = 0.5 * r / (1 + r)
    assert got[("y", "f")] == pytest.approx(x * 100 / 10)
    assert got[("o", "m")] == pytest.approx(x * 100 / 40)
    assert got[("y", "m")] == pytest.approx((0.5 - x) * 100 / 30)
    assert got[("o", "f")] == pytest.approx((0.5 - x) * 100 / 20)


def test_trimming_caps_extreme_weights() -> None:
    people = pd.DataFrame({"age": ["rare"] + ["common"] * 99})
    raked = rake(people, {"age": {"rare": 0.5, "common": 0.5}})
    assert raked.weights.max() <= MAX_WEIGHT * raked.weights.mean() + 1e-9
    assert raked.trimmed == 1


def test_rake_refuses_a_level_without_participants_or_a_level_without_margin() -> None:
    people = pd.DataFrame({"age": ["a", "a", "b"]})
    with pytest.raises(ValueError, match="infinite"):
        rake(people, {"age": {"a": 0.5, "b": 0.3, "c": 0.2}})
    with pytest.raises(ValueError, match="do not name"):
        rake(people, {"age": {"a": 1.0}})
    # a share of 0 for a level nobody has is fine
    assert rake(people, {"age": {"a": 0.5, "b": 0.5, "c": 0.0}}).weights.tolist() == pytest.approx([0.75, 0.75, 1.5])


def _margins(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "margins.csv"
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize(("text", "row", "field", "words"), [
    ("attribute,level,share\nage,young,0.5\nage,old,0.4\n", 3, "share", "sum to 0.9"),
    ("attribute,level,share\nage,young,half\nage,old,0.5\n", 2, "share", "not a number"),
    ("attribute,level,share\nage,young,-0.5\nage,old,1.5\n", 2, "share", ">= 0"),
    ("attribute,level,share\nage,young,0.5\nage,young,0.5\n", 3, "level", "twice"),
    ("attribute,level\nage,young\n", None, "share", "missing required column"),
])
def test_bad_margins_name_file_row_and_field(tmp_path: Path, text: str, row: int | None, field: str,
                                              words: str) -> None:
    path = _margins(tmp_path, text)
    with pytest.raises(InputError, match=words) as err:
        read_margins(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), row, field)


def test_margins_naming_what_no_participant_has(tmp_path: Path) -> None:
    t = two_groups(1, 12, 12, 0.0, 0.0, n_events=1)
    path = _margins(tmp_path, "attribute,level,share\nage,young,0.4\nage,old,0.4\nage,middle,0.2\n")
    shares, where = read_margins(path)
    with pytest.raises(InputError, match="infinite") as err:
        participant_weights(t, shares, margins_file=path, where=where)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 4, "level")
    path = _margins(tmp_path, "attribute,level,share\nregion,north,1.0\n")
    shares, where = read_margins(path)
    with pytest.raises(InputError, match="attribute 'region'") as err:
        participant_weights(t, shares, margins_file=path, where=where)
    assert (err.value.row, err.value.field) == (2, "attribute")


def test_simulated_copies_take_their_humans_weight() -> None:
    t = two_groups(2, 21, 9, 0.0, 0.0, n_events=1)
    w, summary = participant_weights(t, MARGINS)
    young = [p for p in w if p.startswith("y")]
    old = [p for p in w if p.startswith("o")]
    # one weight per participant_id: the human and the simulated copy share it; 50/50 of 21 young, 9 old
    assert len(w) == 30 and summary.n_participants == 30
    assert w[young[0]] == pytest.approx(0.5 * 30 / 21) and w[old[0]] == pytest.approx(0.5 * 30 / 9)
    assert summary.effective_n == pytest.approx(sum(w.values()) ** 2 / sum(v * v for v in w.values()))


def test_simulated_participants_without_a_human_are_raked_on_their_own() -> None:
    t = two_groups(3, 12, 12, 0.0, 0.0, n_events=1)
    j = t.judgements.copy()
    c = t.conversations.copy()
    extra_j = j[(j["source"] == "sim") & j["participant_id"].isin(["yp0000", "yp0001", "op0000"])].copy()
    extra_c = c[(c["source"] == "sim") & c["participant_id"].isin(["yp0000", "yp0001", "op0000"])].copy()
    for f in (extra_j, extra_c):
        f["participant_id"] = "new-" + f["participant_id"]
        f["conversation_id"] = "new-" + f["conversation_id"]
    people = pd.concat([t.participants, pd.DataFrame({"participant_id": ["new-yp0000", "new-yp0001", "new-op0000"],
                                                      "source": "sim", "age": ["young", "young", "old"]})])
    from simlab.tables import Tables

    t2 = Tables(judgements=pd.concat([j, extra_j]), conversations=pd.concat([c, extra_c]), participants=people)
    w, _ = participant_weights(t2, MARGINS)
    assert w["new-yp0000"] == pytest.approx(0.75) and w["new-op0000"] == pytest.approx(1.5)
    assert w["yp0000"] == pytest.approx(1.0)  # the humans are balanced already


def test_weighted_bootstrap_carries_the_weights() -> None:
    p = Participants.from_ids(["a", "b", "c"], 5, 0, {"a": 2.0, "b": 1.0, "c": 0.5})
    plain = Participants.from_ids(["a", "b", "c"], 5, 0)
    assert np.allclose(np.asarray(p.counts), np.asarray(plain.counts) * np.array([2.0, 1.0, 0.5]))  # the same draws, weighted
    assert p.point(np.array([0, 2, 2])).tolist() == [2.0, 0.5, 0.5]
    assert plain.point(np.array([0, 2])).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="no weight"):
        Participants.from_ids(["a", "z"], 5, 0, {"a": 1.0})


def test_weighted_estimate_moves_towards_the_population() -> None:
    """The simulator is off for the old only; the sample is 70% young, the margins 50/50: the weighted gap
    is larger than the unweighted one (same draws, so the two pair)."""
    from simlab.fidelity.analyses import analyze_all

    t = two_groups(4, 42, 18, 0.0, 2.0, n_events=3)
    w, _ = participant_weights(t, MARGINS)
    weighted = analyze_all(t, n_boot=10, topics=None, weights=w, only=["hierarchy"])
    plain = analyze_all(t, n_boot=10, topics=None, only=["hierarchy"])
    gap = weighted.analyses["hierarchy"].vs_human["sim"].strength_diff["C"]
    assert gap.value > plain.analyses["hierarchy"].vs_human["sim"].strength_diff["C"].value + 0.2
    assert gap.ci_low < gap.value < gap.ci_high


@pytest.mark.slow
def test_compare_with_margins_keeps_the_unweighted_analyses() -> None:
    from dataclasses import replace

    from simlab.fidelity import compare

    t = two_groups(4, 42, 18, 0.0, 2.0, n_events=3)
    result = compare(replace(t.for_source("sim"), participants=None), t.for_source("human"), n_boot=10, seed=0,
                     topics=None, margins=MARGINS)
    assert result.weights is not None and result.analyses_unweighted is not None
    assert "topics" in result.weights.not_weighted
    back = type(result).model_validate_json(result.model_dump_json())
    assert back.analyses_unweighted is not None and set(back.analyses_unweighted) == set(result.analyses_unweighted)
    assert json.loads(result.model_dump_json())["weights"]["attributes"] == ["age"]


def test_distributions_user_text_and_ppi_take_the_raking_weights() -> None:
    """Weights of 1 leave each analysis as it is unweighted; uneven weights move its point estimates (PPI's
    weighted means are tested in test_analyses_ppi.py: here its data have no simulated-only participant, so
    it only says it was given the weights)."""
    import numpy as np

    from simlab.fidelity.analyses import analyze_all
    from simlab.fidelity.synthetic import make_synthetic

    t = make_synthetic(40, seed=1)
    assert t.conversations is not None
    ids = sorted(set(t.conversations["participant_id"]))
    rng = np.random.default_rng(0)
    uneven = {p: float(rng.choice([0.5, 2.0])) for p in ids}
    names = ["distributions", "user_text", "ppi"]
    plain = analyze_all(t, n_boot=20, topics=None, only=names)
    ones = analyze_all(t, n_boot=20, topics=None, only=names, weights=dict.fromkeys(ids, 1.0))
    moved = analyze_all(t, n_boot=20, topics=None, only=names, weights=uneven)
    for name in names:
        assert plain.analyses[name].status == "ok", (name, plain.analyses[name].reason)
        same = ones.analyses[name].model_dump(exclude={"weighted"})
        assert same == plain.analyses[name].model_dump(exclude={"weighted"}), name
        if name != "ppi":
            assert moved.analyses[name].model_dump(exclude={"weighted"}) != same, name
    assert moved.analyses["ppi"].weighted
