"""Participant attributes and the subgroup analysis (``--by``): attributes found across sources, a planted
subgroup-only gap recovered with its heterogeneity test, small subgroups not available, bad ``--by`` /
``--weights`` refused with nothing written, and real data: PRISM survey-shaped participants through the
command, Dialogue-Eval (no attributes) refused cleanly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simlab.errors import InputError
from simlab.fidelity.analyses import analysis_context
from simlab.fidelity.analyses.subgroups import heterogeneity, holm, restrict, subgroups
from simlab.fidelity.attributes import UNKNOWN, participant_attributes
from simlab.fidelity.calibration.subgroups import two_groups
from simlab.fidelity.status import Estimate
from simlab.tables import Tables
from tests.conftest import REPO


def test_attributes_own_row_then_the_humans_then_unknown() -> None:
    j = pd.DataFrame({"conversation_id": ["c1", "c2", "c3", "c4"], "participant_id": ["p1", "p1", "p2", "p3"],
                      "source": ["human", "sim", "sim", "human"], "arm": "A"})
    p = pd.DataFrame({"participant_id": ["p1", "p2", "p1"], "source": ["human", "sim", "sim"],
                      "age": ["18-24", "65+", None], "region": [None, "north", "south"]})
    a = participant_attributes(Tables(judgements=j, participants=p), ["age", "region"]).set_index(
        ["source", "participant_id"])
    assert a.loc[("sim", "p1"), "age"] == "18-24"  # missing on its own row: the human's
    assert a.loc[("sim", "p1"), "region"] == "south"  # its own row wins
    assert a.loc[("human", "p1"), "region"] == "south"  # the human lacks it: the copy's value
    assert a.loc[("sim", "p2"), "age"] == "65+"
    assert a.loc[("human", "p3"), "age"] == UNKNOWN and a.loc[("human", "p3"), "region"] == UNKNOWN


def test_by_an_attribute_no_participant_has_is_refused() -> None:
    t = two_groups(0, 12, 12, 0.0, 0.0, n_events=1)
    with pytest.raises(InputError, match="attribute 'gender'.*attributes: age") as err:
        participant_attributes(t, ["gender"])
    assert err.value.field == "--by"


def test_heterogeneity_and_holm_by_hand() -> None:
    se = np.array([0.5, 1.0, 0.25])
    v = np.array([0.2, 1.0, -0.1])
    est = [Estimate(value=x, ci_low=x - 1.959963984540054 * s, ci_high=x + 1.959963984540054 * s, n=20)
           for x, s in zip(v, se)]
    h = heterogeneity(est)
    w = 1 / se**2
    pooled = (w * v).sum() / w.sum()
    assert h is not None and h.df == 2
    assert h.pooled == pytest.approx(pooled) and h.q == pytest.approx((w * (v - pooled) ** 2).sum())
    from scipy.stats import chi2

    assert h.p_value == pytest.approx(chi2.sf(h.q, 2))
    assert holm([0.04, 0.01, 0.5]) == pytest.approx([0.08, 0.03, 0.5])
    assert heterogeneity(est[:1]) is None


def test_restrict_keeps_both_sources_of_the_subgroup() -> None:
    t = two_groups(1, 12, 12, 0.0, 0.0, n_events=2)
    keep = participant_attributes(t, ["age"]).query("age == 'old'")
    sub = restrict(t, keep)
    assert set(sub.judgements["participant_id"].str[0]) == {"o"}
    assert set(sub.judgements["source"]) == {"human", "sim"}
    assert set(sub.conversations["conversation_id"]) == set(sub.judgements["conversation_id"])


def test_planted_subgroup_only_gap_is_recovered() -> None:
    """The simulator likes arm C 1.5 more than people, for the old only."""
    t = two_groups(5, 30, 30, 0.0, 1.5)
    r = subgroups(t, analysis_context(t, n_boot=10, seed=0, topics=None, by=["age"]), analyses=["hierarchy"])
    assert r.status == "ok" and r.analyses == ["hierarchy"] and "Holm" in r.correction
    a = r.attributes["age"]
    assert {lv: x.n_participants for lv, x in a.levels.items()} == {
        "old": {"human": 30, "sim": 30}, "young": {"human": 30, "sim": 30}}
    c = a.comparisons["sim"]["hierarchy.strength_diff.C"]
    old, young = c.levels["old"], c.levels["young"]
    assert old.ci_low > 0.3 and old.ci_low < 1.5 < old.ci_high + 0.5
    assert young.ci_low < 0 < young.ci_high
    assert c.p_adjusted["old"] < 0.05 and c.p_adjusted["old"] >= old.p_value
    assert c.heterogeneity is not None and c.heterogeneity.p_value < 0.05


def test_small_subgroups_are_not_available_with_the_reason() -> None:
    t = two_groups(6, 20, 6, 0.0, 0.0, n_events=2)
    r = subgroups(t, analysis_context(t, n_boot=5, seed=0, topics=None, by=["age"]), analyses=["hierarchy"])
    old = r.attributes["age"].levels["old"]
    assert old.status == "not_available" and "fewer than 10 participants with age = 'old'" in (old.reason or "")
    c = r.attributes["age"].comparisons["sim"]["hierarchy.strength_diff.C"]
    assert set(c.levels) == {"young"} and c.heterogeneity is None


def test_subgroups_need_human_and_simulated_data() -> None:
    t = two_groups(7, 12, 12, 0.0, 0.0, n_events=1).for_source("human")
    r = subgroups(t, analysis_context(t, n_boot=5, seed=0, topics=None, by=["age"]), analyses=["hierarchy"])
    assert r.status == "not_available" and "both are needed" in (r.reason or "")


def test_subgroups_run_only_with_by() -> None:
    from simlab.fidelity.analyses import analyze_all

    t = two_groups(8, 12, 12, 0.0, 0.0, n_events=1)
    assert "subgroups" not in analyze_all(t, n_boot=5, topics=None, only=["hierarchy", "subgroups"]).analyses
    got = analyze_all(t, n_boot=5, topics=None, only=["hierarchy", "subgroups"], by=["age"]).analyses["subgroups"]
    assert got.status == "ok" and got.analyses == ["hierarchy"]


def test_subgroup_section_renders_a_row_per_level_and_the_heterogeneity() -> None:
    from simlab.report.subgroups import subgroups_section

    t = two_groups(5, 30, 30, 0.0, 1.5)
    r = subgroups(t, analysis_context(t, n_boot=10, seed=0, topics=None, by=["age"]), analyses=["hierarchy"])
    s = subgroups_section(r)
    measures = [(row.source, row.measure) for row in s.rows]
    assert ("age = old", "sim: hierarchy.strength_diff.C") in measures
    assert any(src == "age: all levels" and "heterogeneity" in m for src, m in measures)
    assert any("Holm" in v for v in s.verdicts)
    assert any("the gap differs between subgroups" in v and "hierarchy.strength_diff.C" in v for v in s.verdicts)


# ------------------------------------------------------------------------------ the command


def _fidelity(*argv: str) -> int:
    from simlab.fidelity.__main__ import main

    return main(list(argv))


def test_dialogue_eval_has_no_attributes_so_by_is_refused(dialogue_eval_on_disk: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.json"
    assert _fidelity("analyze", "--human", str(dialogue_eval_on_disk), "--by", "age", "--n-boot", "0", "--quiet",
                     "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "--by" in err and "no participant has the attribute 'age'" in err and "no participant attributes" in err
    assert not out.exists()


def _prism_files(tmp_path: Path, n: int = 24) -> tuple[Path, Path]:
    """PRISM-shaped files: n users with one conversation each rating four models, and their survey (age,
    gender, nested location), two of them without a survey record."""
    rng = np.random.default_rng(0)
    models = ["gpt-4", "claude-2", "llama-2-7b", "zephyr"]
    convs, survey = [], []
    for i in range(n):
        scores = rng.integers(1, 100, size=4)
        best = int(np.argmax(scores))
        history = [{"turn": 0, "role": "user", "content": f"question {i}", "model_provider": None, "model_name": None,
                    "score": None, "if_chosen": None, "within_turn_id": None}]
        history += [{"turn": 0, "role": "model", "content": "reply", "model_provider": "x", "model_name": m,
                     "score": int(s), "if_chosen": k == best, "within_turn_id": k}
                    for k, (m, s) in enumerate(zip(models, scores))]
        convs.append({"conversation_id": f"c{i}", "user_id": f"user{i}", "conversation_type": "unguided",
                      "opening_prompt": f"question {i}", "conversation_history": history})
        if i < n - 2:
            survey.append({"user_id": f"user{i}", "age": "18-24 years old" if i % 3 else "45-54 years old",
                           "gender": "Female" if i % 2 else "Male", "location": {"reside_country": "UK"}})
    c, s = tmp_path / "conversations.jsonl", tmp_path / "survey.jsonl"
    c.write_text("".join(json.dumps(r) + "\n" for r in convs), encoding="utf-8")
    s.write_text("".join(json.dumps(r) + "\n" for r in survey), encoding="utf-8")
    return c, s


def _prism_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """The PRISM files imported as human data, and a simulated copy of them (ratings reshuffled)."""
    from simlab.fidelity import load_human

    conv, survey = _prism_files(tmp_path)
    human = tmp_path / "data" / "prism"
    assert _fidelity("import", "prism", str(conv), str(human), "--survey", str(survey)) == 0
    h = load_human(human)
    rng = np.random.default_rng(1)
    j = h.judgements.copy()
    j["source"] = "sim_dynamic"
    j["conversation_id"] = "sim-" + j["conversation_id"].astype(str)
    j["rank"] = j.groupby("conversation_id")["rank"].transform(lambda r: rng.permutation(r.to_numpy()))
    c = h.conversations.copy()
    c["source"] = "sim_dynamic"
    c["conversation_id"] = "sim-" + c["conversation_id"].astype(str)
    sim = tmp_path / "sim"
    Tables(judgements=j, conversations=c).write(sim)
    return human, sim


def test_prism_survey_fields_work_out_of_the_box_and_bad_margins_write_nothing(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]) -> None:
    human, sim = _prism_workspace(tmp_path)
    out = tmp_path / "f.json"
    out.write_text("previous", encoding="utf-8")
    base = ["analyze", "--human", str(human), "--sim", str(sim), "--n-boot", "0", "--quiet", "--out", str(out)]
    assert _fidelity(*base, "--by", "region") == 2
    assert "no participant has the attribute 'region'" in capsys.readouterr().err
    bad = {
        "attribute,level,share\ngender,Female,0.6\ngender,Male,0.3\n": (":3:", "share", "sum to 0.9"),
        "attribute,level,share\ngender,Female,0.5\ngender,Male,0.5\ngender,Other,0.1\n": (":4:", "share", "sum to"),
        "attribute,level,share\ngender,Female,0.4\ngender,Male,0.4\ngender,Non-binary,0.2\n": (":4:", "level",
                                                                                              "infinite"),
        "attribute,level,share\ngender,Female,x\ngender,Male,0.5\n": (":2:", "share", "not a number"),
        "attribute,level,share\nregion,north,1\n": (":2:", "attribute", "no participant has the attribute"),
        # two users have no survey record: their gender is "unknown", which these margins do not name
        "attribute,level,share\ngender,Female,0.5\ngender,Male,0.5\n": ("", "level", "'unknown', which the margins"),
    }
    margins = tmp_path / "margins.csv"
    for text, (row, field, words) in bad.items():
        margins.write_text(text, encoding="utf-8")
        assert _fidelity(*base, "--weights", str(margins)) == 2, text
        err = capsys.readouterr().err
        assert str(margins) in err and field in err and words in err and row in err, (text, err)
    assert out.read_text(encoding="utf-8") == "previous"


@pytest.mark.slow
def test_prism_by_and_weights_through_the_command(tmp_path: Path) -> None:
    human, sim = _prism_workspace(tmp_path)
    margins = tmp_path / "margins.csv"
    margins.write_text("attribute,level,share\ngender,Female,0.45\ngender,Male,0.45\ngender,unknown,0.1\n",
                       encoding="utf-8")
    out = tmp_path / "f.json"
    assert _fidelity("analyze", "--human", str(human), "--sim", str(sim), "--by", "gender,age", "--weights",
                     str(margins), "--n-boot", "10", "--quiet", "--out", str(out)) == 0
    d = json.loads(out.read_text(encoding="utf-8"))
    g = d["analyses"]["subgroups"]["attributes"]["gender"]
    assert g["levels"]["Female"]["n_participants"] == {"human": 11, "sim_dynamic": 11}
    assert g["levels"]["unknown"]["status"] == "not_available"
    assert d["weights"]["attributes"] == ["gender"] and d["analyses_unweighted"]["hierarchy"]["status"] == "ok"


@pytest.mark.slow
def test_the_documented_subgroup_and_weight_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/fidelity.md's "Subgroups and weights" commands, in a workspace laid out as they assume."""
    text = (REPO / "docs" / "fidelity.md").read_text(encoding="utf-8")
    section = text[text.index("## Subgroups and weights"):]
    block = re.search(r"```text\n(.*?)```", section, flags=re.S)
    assert block is not None
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    human, sim = _prism_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)
    Path("margins.csv").write_text("attribute,level,share\ngender,Female,0.45\ngender,Male,0.45\ngender,unknown,0.1\n",
                                   encoding="utf-8")
    ran = 0
    for line in lines:
        if line.startswith("attribute,") or "," in line.split()[0]:
            continue  # the margins file's lines
        args = line.split()
        assert args[:3] == ["python", "-m", "simlab.fidelity"], line
        args = [a.replace("exported_run/", str(sim)) for a in args[3:]] + ["--n-boot", "0", "--quiet", "--topics",
                                                                          "tfidf"]
        if "--by" in args:  # only the cheap analyses in a default test: the options are what is checked here
            args[args.index("--by") + 1] = "gender"
        assert _fidelity(*args) == 0, line
        ran += 1
    assert ran >= 2
    d = json.loads(Path("fidelity.json").read_text(encoding="utf-8"))
    assert "subgroups" in d["analyses"] or d["weights"] is not None


def test_weights_section_shows_weighted_next_to_unweighted() -> None:
    from simlab.fidelity.analyses import analyze_all
    from simlab.fidelity.calibration.subgroups import MARGINS
    from simlab.fidelity.raking import NOT_WEIGHTED, participant_weights
    from simlab.report.subgroups import weights_section

    t = two_groups(4, 42, 18, 0.0, 2.0, n_events=2)
    w, summary = participant_weights(t, MARGINS)
    weighted = analyze_all(t, n_boot=5, topics=None, weights=w, only=["hierarchy"])
    plain = analyze_all(t, n_boot=5, topics=None, only=["hierarchy"])
    result = weighted.model_copy(update={"weights": summary.model_copy(update={"not_weighted": NOT_WEIGHTED}),
                                         "analyses_unweighted": plain.analyses})
    s = weights_section(result)
    assert any("effective sample size" in v for v in s.verdicts)
    assert any(v.startswith("Not weighted — topics") for v in s.verdicts)
    row = next(r for r in s.rows if r.measure == "hierarchy.vs_human.sim.strength_diff.C")
    a, b = (float(x.replace("−", "-")) for x in row.estimate.split(" | "))
    assert a == pytest.approx(weighted.analyses["hierarchy"].vs_human["sim"].strength_diff["C"].value, abs=0.01)
    assert b == pytest.approx(plain.analyses["hierarchy"].vs_human["sim"].strength_diff["C"].value, abs=0.01)
