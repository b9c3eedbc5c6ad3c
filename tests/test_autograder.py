"""Autograder: ICC(2,1) on textbook and planted data, grading end to end on the stub server,
out-of-scale replies, resume, the CLI, the human-vs-simulated user-trait comparison, and one
dimension on the real tiny model (slow)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest

from simlab.autograde import grade_run, main
from simlab.autograder import (
    DIMENSIONS,
    AutogradeOptions,
    Unit,
    grade_one,
    grade_schema,
    icc_2_1,
    icc_with_ci,
    reliability,
    reliability_table,
    reliable_dimensions,
    units_of,
)
from simlab.config import parse_config
from simlab.llm import LLMClient
from simlab.run import run_experiment
from simlab.store import RunStore, StoreError, load_run, read_table, run_meta
from simlab.testing import StubServer
from tests.conftest import REPO, stub_config

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)


def _long(matrix: np.ndarray, dimension: str, mode: str = "conversation") -> pd.DataFrame:
    n, k = matrix.shape
    return pd.DataFrame({
        "unit_id": np.repeat([f"u{i}" for i in range(n)], k), "rater_run": np.tile(np.arange(k), n),
        "score": matrix.ravel(), "dimension": dimension, "mode": mode, "status": "ok",
    })


def test_icc_matches_shrout_fleiss_textbook_value():
    # The paper's mean squares: BMS 11.24, JMS 32.49, EMS 1.02 (n = 6, k = 4) -> ICC(2,1) = .290
    bms, jms, ems, n, k = 11.24, 32.49, 1.02, 6, 4
    textbook = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    value, lo, hi = icc_with_ci(SHROUT_FLEISS, n_boot=200, seed=1)
    assert round(value, 3) == round(textbook, 3) == 0.290
    assert lo <= value <= hi
    [res] = reliability(_long(SHROUT_FLEISS, "specificity"), rater_runs=4, n_boot=100)
    assert round(res.icc, 3) == 0.290 and res.n_units == 6 and not res.reliable
    assert "below the threshold" in res.reason


def test_icc_2_1_perfect_agreement_is_one_and_rejects_missing():
    y = np.array([[1.0, 1.0], [2.0, 2.0], [5.0, 5.0]])
    assert icc_2_1(y) == pytest.approx(1.0)
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-4)
    with pytest.raises(ValueError):
        icc_2_1(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_reliability_recovers_planted_noise_and_orders_dimensions():
    rng = np.random.default_rng(7)
    n, sd_true = 200, 2.0
    truth = rng.normal(5, sd_true, n)
    noise = {"specificity": 0.5, "sycophancy": 1.5, "opinionatedness": 3.0}
    frames = [_long(truth[:, None] + rng.normal(0, s, (n, 3)), d) for d, s in noise.items()]
    frames.append(_long(rng.normal(5, 2, (n, 3)), "refusal"))  # no unit effect planted
    results = {r.dimension: r for r in reliability(pd.concat(frames), n_boot=400, seed=3)}
    for dim, s in noise.items():
        planted = sd_true**2 / (sd_true**2 + s**2)
        assert results[dim].ci_low <= planted <= results[dim].ci_high, (dim, planted, results[dim])
    assert results["specificity"].icc > results["sycophancy"].icc > results["opinionatedness"].icc
    assert results["refusal"].ci_low <= 0 <= results["refusal"].ci_high
    assert {d for d, r in results.items() if r.reliable} == {"specificity"}


def test_reliability_is_per_source_so_a_shift_between_sources_does_not_inflate_it():
    rng = np.random.default_rng(11)
    n, sd_true, sd_noise = 150, 1.0, 1.0  # planted ICC 0.5 in each source
    frames = []
    for source, shift in (("human", 0.0), ("sim_dynamic", 4.0)):
        truth = rng.normal(5 + shift, sd_true, n)
        f = _long(truth[:, None] + rng.normal(0, sd_noise, (n, 3)), "sycophancy")
        frames.append(f.assign(unit_id=source + f["unit_id"], source=source))
    both = pd.concat(frames)
    results = {r.source: r for r in reliability(both, n_boot=300, seed=2)}
    assert set(results) == {"human", "sim_dynamic"}
    for r in results.values():
        assert r.ci_low <= 0.5 <= r.ci_high and not r.reliable, r
    # pooled, the 4-point shift between sources would pass as agreement between raters
    [pooled] = reliability(both.drop(columns="source"), n_boot=50)
    assert pooled.source is None and pooled.icc > 0.75
    assert "sim_dynamic" in reliability_table(results.values())


def test_reliability_needs_complete_units_and_variance():
    one_run = _long(np.ones((5, 1)), "sycophancy")
    flat = _long(np.full((5, 3), 4.0), "refusal")
    res = {r.dimension: r for r in reliability(pd.concat([one_run, flat]))}
    assert res["sycophancy"].icc is None and not res["sycophancy"].reliable and "0 unit" in res["sycophancy"].reason
    assert res["refusal"].icc is None and not res["refusal"].reliable


# ----------------------------------------------------------------------------- stub server end to end


@pytest.fixture(scope="module")
def stub_run(tmp_path_factory):
    """A 2-persona × 1-domain Sim-Dynamic run on the stub server (the material to grade)."""
    tmp = tmp_path_factory.mktemp("autograde")
    with StubServer(seed=3) as server:
        # a judge that gives rationales (the quickstart config turns them off)
        cfg = stub_config(server, tmp, personas=str(REPO / "personas" / "sample.jsonl"), limit=2,
                          protocol={"domains": ["unguided"], "min_turns": 2, "max_turns": 2},
                          judge={"rationale": True})
        run_dir = tmp / "run"
        asyncio.run(run_experiment(cfg, run_dir=run_dir, progress=False, report=False))
        yield server, cfg, run_dir


async def test_grade_run_end_to_end_on_stub(stub_run):
    server, cfg, run_dir = stub_run
    options = AutogradeOptions(sample=3, n_boot=50)
    report = await grade_run(run_dir, options=options)
    units = units_of(load_run(run_dir))
    n_reply = sum(u.kind == "reply" for u in units)
    n_user = sum(u.kind == "user" for u in units)
    assert n_reply == 8 and n_user == 2  # 2 conversations × 4 arms; 2 user units
    rows = read_table(run_dir, "autograde")
    # run 0 for every unit; runs 1, 2 for min(3, units) sampled units, per dimension and mode
    expected = 0
    for dim in DIMENSIONS.values():
        k = n_reply if dim.kind == "reply" else n_user
        expected += 2 * (k + 2 * min(3, k))
    assert len(rows) == expected == report.run.planned == report.run.graded
    assert (rows["status"] == "ok").all()
    for name, dim in DIMENSIONS.items():
        s = rows.loc[rows["dimension"] == name, "score"]
        assert s.between(dim.low, dim.high).all()
    assert set(rows["source"]) == {"sim_dynamic"}
    assert rows["rationale"].str.len().gt(0).all()
    calls = read_table(run_dir, "llm_calls")
    assert (calls["role"] == "judge").sum() == expected
    judge_req = [r for r in server.requests if "annotator" in str(r.body["messages"][0]["content"])]
    assert len(judge_req) == expected and all(r.body["temperature"] == 0.7 for r in judge_req)
    stored = run_meta(run_dir)["autograde_reliability"]
    assert len(stored) == len(DIMENSIONS) * 2 and len(report.reliability) == len(stored)
    flagged_ok = {r.dimension for r in report.reliability if r.reliable}
    unreliable = {r.dimension for r in report.reliability if not r.reliable}
    assert reliable_dimensions(run_dir) == flagged_ok - unreliable
    text = report.text()
    assert "ICC(2,1)" in text and "stereotyping" in text

    again = await grade_run(run_dir, options=options)  # resume: nothing new
    assert again.run.graded == 0 and again.run.already_done == expected
    assert len(read_table(run_dir, "autograde")) == expected


async def test_out_of_scale_score_is_retried_then_recorded(tmp_path):
    unit = Unit("c1|GEN", "reply", "c1", "p1", "sim_dynamic", "GEN", ("Hello?",), ("Hi there.",))
    with StubServer(replies={"judge-m": ['{"rationale": "too high", "score": 11}',
                                         '{"rationale": "fine", "score": 4}']}) as server:
        cfg = stub_config(server, tmp_path, judge={"model": "judge-m"})
        client = LLMClient(cfg.endpoints)
        row, call = await grade_one(client, cfg.judge, unit, DIMENSIONS["sycophancy"], "first_turn", 0,
                                    persona=None, seed=1)
        assert row.status == "ok" and row.score == 4.0 and call.attempts == 2
    with StubServer(replies={"judge-m": ['{"rationale": "bad", "score": 2.5}']}) as server:
        cfg = stub_config(server, tmp_path, judge={"model": "judge-m"})
        row, call = await grade_one(LLMClient(cfg.endpoints), cfg.judge, unit, DIMENSIONS["refusal"],
                                    "first_turn", 0, persona=None, seed=1)
        assert row.status == "schema_error" and row.score is None
        assert "score" in row.rationale and "2.5" in row.rationale
        assert call.status == "schema_error" and call.role == "judge" and call.attempts == 3


async def test_a_judge_without_rationale_asks_for_the_score_alone_and_stores_no_rationale(tmp_path):
    unit = Unit("c1|GEN", "reply", "c1", "p1", "sim_dynamic", "GEN", ("Hello?",), ("Hi there.",))
    # a reply that still carries a rationale breaks the score-only schema: retried, not guessed
    with StubServer(replies={"judge-m": ['{"rationale": "chatty", "score": 3}', '{"score": 6.5}']}) as server:
        cfg = stub_config(server, tmp_path, judge={"model": "judge-m", "rationale": False})
        row, call = await grade_one(LLMClient(cfg.endpoints), cfg.judge, unit, DIMENSIONS["sycophancy"],
                                    "conversation", 0, persona=None, seed=1, rationale=cfg.judge.rationale)
        body = server.requests[-1].body
    assert row.status == "ok" and row.score == 6.5 and row.rationale is None and call.attempts == 2
    fmt = body["response_format"]
    schema = fmt.get("schema") or fmt["json_schema"]["schema"]
    assert set(schema["properties"]) == {"score"}
    system, task = (str(m["content"]) for m in body["messages"])
    assert "rationale" not in system and 'Give only the "score"' in task
    assert set(grade_schema(DIMENSIONS["refusal"]).model_fields) == {"rationale", "score"}


async def test_persona_aware_dimensions_see_the_profile_and_skip_without_one(tmp_path):
    unit = Unit("c1|user", "user", "c1", "p1", "human", None, ("I am a nurse, hello",))
    with StubServer() as server:
        cfg = stub_config(server, tmp_path)
        client = LLMClient(cfg.endpoints)
        await grade_one(client, cfg.judge, unit, DIMENSIONS["persona_parroting"], "first_turn", 0,
                        persona="PROFILE-MARKER nurse", seed=1)
        await grade_one(client, cfg.judge, unit, DIMENSIONS["self_disclosure"], "first_turn", 0,
                        persona="PROFILE-MARKER nurse", seed=1)
        seen = [str(r.body["messages"][1]["content"]) for r in server.requests]
    assert "PROFILE-MARKER" in seen[0] and "PROFILE-MARKER" not in seen[1]


def test_cli_prints_reliability_and_rejects_bad_input(stub_run, tmp_path, capsys):
    _, _, run_dir = stub_run
    assert main(["--run", str(run_dir), "--sample", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "reliability" in out and "ICC(2,1)" in out
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "no run store" in capsys.readouterr().err
    assert main(["--run", str(run_dir), "--dimensions", "charm"]) == 2
    assert "unknown dimension" in capsys.readouterr().err


def test_the_former_module_name_forwards_to_autograde_and_says_the_new_name(tmp_path, capsys):
    from simlab.judge import main as former_main

    assert former_main(["--run", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "python -m simlab.autograde" in err and "no run store" in err


def test_set_meta_roundtrip_and_fixed_keys(tmp_path):
    store = RunStore.create(tmp_path / "r", {"config": {"a": 1}, "seed": 0})
    store.set_meta("autograde_reliability", [{"dimension": "x", "icc": 0.5}])
    store.set_meta("autograde_reliability", [{"dimension": "y"}])
    assert store.meta()["autograde_reliability"] == [{"dimension": "y"}]
    for key in ("config", "experiment", "seed"):
        with pytest.raises(StoreError):
            store.set_meta(key, {})
    store.close()


# ----------------------------------------------------------------------------- user traits


# ----------------------------------------------------------------------------- real tiny model


@pytest.mark.slow
async def test_one_dimension_on_the_real_tiny_model(stub_run, tmp_path):
    import shutil
    import sqlite3

    from simlab.local import LocalServer

    _, cfg, run_dir = stub_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    db = sqlite3.connect(copy / "store.sqlite")  # drop the grades of the stub tests, if they ran first
    db.execute("DELETE FROM autograde")
    db.commit()
    db.close()
    data = cfg.public_dict()
    with LocalServer(n_ctx=4096) as server:
        data["endpoints"]["local"] = {"kind": "local", "base_url": server.base_url, "max_in_flight": 1}
        data["judge"] = {"endpoint": "local", "model": server.alias,
                         "sampling": {"temperature": 0.7, "max_tokens": 120}}
        local_cfg = parse_config(data)
        # one user-trait dimension, opening only: 2 units, both re-graded twice (6 calls)
        opts = AutogradeOptions(dimensions=("self_disclosure",), modes=("first_turn",), sample=2, n_boot=50)
        report = await grade_run(copy, config=local_cfg, options=opts, base_urls={"local": server.base_url})
    rows = read_table(copy, "autograde")
    new = rows[(rows["dimension"] == "self_disclosure") & (rows["mode"] == "first_turn")]
    assert report.run.graded == report.run.planned == len(new) == 6
    assert [r.dimension for r in report.reliability] == ["self_disclosure"]
    ok = new[new["status"] == "ok"]
    assert len(ok) >= 1 and ok["score"].between(0, 10).all()
    assert new.loc[new["status"] != "ok", "score"].isna().all()


async def test_a_one_turn_conversation_is_sent_as_its_opening_exchange_in_both_modes(tmp_path):
    """The prompt names the material, not the mode: one turn graded 'conversation' is the same prompt
    as 'first_turn' (a server's prompt cache serves it); two turns are not."""
    one = Unit("c1|GEN", "reply", "c1", "p1", "sim_dynamic", "GEN", ("hello",), ("hi there",))
    two = Unit("c2|GEN", "reply", "c2", "p1", "sim_dynamic", "GEN", ("hello", "and then?"), ("hi there", "then this"))
    with StubServer() as server:
        cfg = stub_config(server, tmp_path)
        client = LLMClient(cfg.endpoints)
        for unit in (one, two):
            for mode in ("first_turn", "conversation"):
                await grade_one(client, cfg.judge, unit, DIMENSIONS["specificity"], mode, 0, persona=None, seed=1)
        tasks = [str(r.body["messages"][1]["content"]) for r in server.requests]
    assert tasks[0] == tasks[1] and "opening exchange" in tasks[0]
    assert tasks[2] != tasks[3] and "whole conversation" in tasks[3] and "and then?" in tasks[3]
    assert "whole conversation" not in tasks[2] and "and then?" not in tasks[2]


async def test_grades_are_split_into_one_balanced_stream_per_replica(stub_run, tmp_path):
    """Two judge replicas: every conversation's grades go to one of them (its material and profile
    stay in that server's prompt cache) and both get work; persona-aware grades put the profile first."""
    _, _, run_dir = stub_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with sqlite3.connect(copy / "store.sqlite") as db:  # grades of the module's earlier tests: grade afresh
        db.execute("DELETE FROM autograde")
    units = units_of(load_run(copy))
    openings = {u.conversation_id: u.users[0] for u in units}
    with StubServer(seed=1) as a, StubServer(seed=2) as b:
        report = await grade_run(copy, options=AutogradeOptions(sample=0, modes=("first_turn",), n_boot=10),
                                 base_urls={"local": [a.base_url, b.base_url]})
        seen = {name: [str(r.body["messages"][1]["content"]) for r in s.requests] for name, s in (("a", a), ("b", b))}
    assert report.run.graded == report.run.planned > 0
    where: dict[str, set[str]] = {}
    for name, tasks in seen.items():
        for task in tasks:
            cid = next(c for c, text in openings.items() if text in task)
            where.setdefault(cid, set()).add(name)
    assert set(where) == set(openings) and all(len(v) == 1 for v in where.values())
    assert {n for v in where.values() for n in v} == {"a", "b"}  # 2 conversations of equal size: one each
    persona_tasks = [t for tasks in seen.values() for t in tasks if "<<<PROFILE" in t]
    assert persona_tasks and all(t.index("<<<PROFILE") < t.index("<<<CONVERSATION") for t in persona_tasks)


def test_streams_balance_estimated_work_longest_first():
    from simlab.autograder import _streams

    def unit(cid: str, n_chars: int) -> Unit:
        return Unit(f"{cid}|user", "user", cid, "p", "sim_dynamic", None, ("x" * n_chars,))

    dim = DIMENSIONS["self_disclosure"]
    jobs = [(unit(c, n), dim, "first_turn", 0) for c, n in (("big", 9000), ("mid1", 4000), ("mid2", 4000), ("s", 900))]
    stream = _streams(jobs, 2, {})
    # costs 9.7k, 4.7k, 4.7k, 1.6k: big alone, the two mid and the small one together (9.7k vs 11k)
    assert stream["big"] != stream["mid1"] == stream["mid2"] == stream["s"]
    assert set(_streams(jobs, 1, {}).values()) == {"autograde-stream:0"}
