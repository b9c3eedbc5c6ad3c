"""Sim-Judgement: the simulator judges small human transcripts written here, as each human."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from simlab.errors import InputError
from simlab.fidelity import load_human
from simlab.judge import main
from simlab.personas import load_personas
from simlab.sim_judgement import human_conversations, run_sim_judgement
from simlab.sim_judgement import main as sim_judgement_main
from simlab.store import load_run
from simlab.tables import Tables
from simlab.testing import StubServer
from tests.conftest import REPO, stub_config

PERSONAS = REPO / "personas" / "sample.jsonl"
MAPS = {
    "h1": {"GEN": "C", "PROMPT": "A", "SUMMARY": "D", "STYLE": "B"},
    "h2": {"GEN": "B", "PROMPT": "D", "SUMMARY": "A", "STYLE": "C"},
    "h3": {"GEN": "A", "PROMPT": "B", "SUMMARY": "C", "STYLE": "D"},
}
OWNER = {"h1": "sample01", "h2": "sample01", "h3": "sample02"}
DOMAIN = {"h1": "unguided", "h2": "values", "h3": "controversy"}


def human_tables(n_turns: int = 2) -> Tables:
    conv, turns, judg = [], [], []
    for cid, amap in MAPS.items():
        conv.append({"conversation_id": cid, "participant_id": OWNER[cid], "source": "human", "domain": DOMAIN[cid],
                     "arm_letters": json.dumps(amap), "n_turns": n_turns})
        for t in range(n_turns):
            turns.append({"conversation_id": cid, "turn": t, "role": "user", "arm": None, "letter": None,
                          "text": f"{cid} user message {t}"})
            for arm, letter in amap.items():
                turns.append({"conversation_id": cid, "turn": t, "role": "assistant", "arm": arm, "letter": letter,
                              "text": f"{cid} reply from {arm} at {t}"})
        ranks = {"A": 2, "B": 1, "C": 4, "D": 3}
        for arm, letter in amap.items():
            judg.append({"conversation_id": cid, "arm": arm, "letter": letter, "position": "ABCD".index(letter) + 1,
                         "rank": ranks[letter]})
    return Tables(judgements=pd.DataFrame(judg), conversations=pd.DataFrame(conv), turns=pd.DataFrame(turns))


@pytest.fixture
def human_dir(tmp_path):
    return human_tables().write(tmp_path / "human")


async def test_one_assessment_per_human_conversation_with_the_humans_letters(tmp_path, human_dir):
    with StubServer(seed=5) as server:
        cfg = stub_config(server, tmp_path)
        human = load_human(human_dir)
        personas = load_personas(PERSONAS)
        run_dir = tmp_path / "run"
        summary = await run_sim_judgement(cfg, human, personas, run_dir)
        assert (summary.planned, summary.completed, summary.failed) == (3, 3, 0)
        # the simulator saw the humans' replies under the humans' letters, opening choice on turn 0 only
        opening = [r for r in server.requests if "opening message" in str(r.body["messages"][-1]["content"])]
        assert len(opening) == 3
        for r in opening:
            text = str(r.body["messages"][-1]["content"])
            assert "user message 0" in text and "user message 1" not in text
        h1 = [str(r.body["messages"][-1]["content"]) for r in server.requests
              if "h1 user message 1" in str(r.body["messages"][-1]["content"])]
        assert h1 and all("Response C: h1 reply from GEN at 1" in t for t in h1)

        tables = load_run(run_dir)
        conv = tables.conversations
        assert sorted(conv["conversation_id"]) == ["h1#sj", "h2#sj", "h3#sj"]
        assert set(conv["source"]) == {"sim_judgement"}
        for row in conv.itertuples():
            human_id = row.conversation_id.removesuffix("#sj")
            assert json.loads(row.arm_letters) == MAPS[human_id]
            assert row.participant_id == OWNER[human_id] and row.domain == DOMAIN[human_id]
        j = tables.judgements
        assert len(j) == 12
        for row in j.itertuples():
            assert MAPS[row.conversation_id.removesuffix("#sj")][row.arm] == row.letter
        per = j.groupby("conversation_id")
        assert (per["rank"].apply(sorted).map(list) == pd.Series([[1, 2, 3, 4]] * 3, index=per.size().index)).all()
        assert (per["opening_choice"].sum() == 1).all() and (per["provenance_guess"].sum() == 1).all()
        assert j["wtp_bid"].between(0, 10).all() and len(tables.bdm) == 3
        assert tables.turns.empty  # the human's text is not re-stored as simulated text
        assert set(tables.participants["source"]) == {"sim_judgement"}

        n_requests = len(server.requests)
        again = await run_sim_judgement(cfg, human, personas, run_dir)  # resume: nothing to do
        assert again.done_before == 3 and again.completed == 3 and len(server.requests) == n_requests


def _broken(kind: str) -> Tables:
    t = human_tables()
    conv, turns, judg = t.conversations.copy(), t.turns.copy(), t.judgements.copy()
    if kind == "letters":
        conv.loc[conv["conversation_id"] == "h2", "arm_letters"] = None
        judg = judg.drop(columns=["letter", "position"])
        turns.loc[turns["conversation_id"] == "h2", "letter"] = None
    elif kind == "reply":
        turns = turns[~((turns["conversation_id"] == "h2") & (turns["turn"] == 1) & (turns["arm"] == "GEN"))]
    elif kind == "opening":
        turns = turns[~((turns["conversation_id"] == "h2") & (turns["turn"] == 0) & (turns["role"] == "user"))]
    return Tables(judgements=judg, conversations=conv, turns=turns)


@pytest.mark.parametrize("kind,message", [
    ("letters", "lacks letters"),
    ("reply", "lacks assistant replies at turn 1 for letter(s) B"),
    ("opening", "lacks a user opening"),
])
def test_a_conversation_lacking_what_the_assessment_needs_is_named(kind, message):
    with pytest.raises(InputError) as err:
        human_conversations(_broken(kind))
    assert "'h2'" in str(err.value) and message in str(err.value)


async def test_missing_persona_is_refused_before_anything_is_written(tmp_path, human_dir):
    personas = [p for p in load_personas(PERSONAS) if p.persona_id != "sample02"]
    with StubServer() as server:
        cfg = stub_config(server, tmp_path)
        with pytest.raises(InputError, match="'h3'.*'sample02' has no persona"):
            await run_sim_judgement(cfg, load_human(human_dir), personas, tmp_path / "run")
        assert not server.requests
    assert not (tmp_path / "run").exists()


def test_cli_sim_judgement(tmp_path, human_dir, capsys):
    with StubServer() as server:
        cfg = stub_config(server, tmp_path)
        toml = tmp_path / "cfg.toml"
        toml.write_text(_toml(cfg.public_dict()))
        rc = sim_judgement_main(["--human", str(human_dir), "--personas", str(PERSONAS), "--config", str(toml),
                                 "--run-dir", str(tmp_path / "run"), "--quiet"])
        out = capsys.readouterr().out
        assert rc == 0 and "3 completed" in out
        # the older name (python -m simlab.judge sim-judgement) runs the same command: all done before
        rc = main(["sim-judgement", "--human", str(human_dir), "--personas", str(PERSONAS), "--config", str(toml),
                   "--run-dir", str(tmp_path / "run"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "(3 were already done)" in out, out
    assert sim_judgement_main(["--human", str(tmp_path / "missing"), "--personas", str(PERSONAS)]) == 2
    assert main(["sim-judgement", "--human", str(tmp_path / "missing"), "--personas", str(PERSONAS)]) == 2


def _toml(data: dict) -> str:
    """A small TOML writer for the config dict (tomllib cannot write)."""
    lines: list[str] = []

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(v)

    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, list) and v and isinstance(v[0], dict):
            lines.append(f"{k} = {value(v)}")
        else:
            lines.append(f"{k} = {value(v)}")
    return "\n".join(lines) + "\n"


async def test_a_dead_endpoint_stops_sim_judgement_and_a_resume_does_the_rest(tmp_path, human_dir):
    # the same runner as run_experiment: the sessions in flight are not recorded as failed
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Dead:
        base_url = f"http://127.0.0.1:{port}/v1"

    human, personas, run_dir = load_human(human_dir), load_personas(PERSONAS), tmp_path / "run"
    cfg = stub_config(Dead, tmp_path, endpoints={"local": {"kind": "vllm", "base_url": Dead.base_url,
                                                           "max_attempts": 2, "dead_after_s": 1}})
    stopped = await run_sim_judgement(cfg, human, personas, run_dir)
    assert (stopped.completed, stopped.failed) == (0, 0) and "stopped answering" in (stopped.stopped or "")
    assert "stopped early: endpoint 'local'" in stopped.text()
    with StubServer() as server:  # the backend is back (as an override of the same config)
        done = await run_sim_judgement(cfg, human, personas, run_dir, base_urls={"local": server.base_url})
    assert (done.completed, done.failed, done.stopped) == (3, 0, None)
