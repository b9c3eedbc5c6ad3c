"""Instruments added from outside simlab (tests/extensions/instruments_ext.py, no edit of simlab):
registered from Python or by a package's entry point, asked in real sessions against the scripted
stub server on 127.0.0.1, stored in the long answers table of a real SQLite store, read back by
``load_run`` and the fidelity loaders, shown (escaped) in the run's report, resumable; and bad
registrations refused by name and cause, by the CLI with exit status 2 before any model call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ConfigDict, create_model

from simlab.fidelity.io import load_tables
from simlab.instruments import INSTRUMENTS, Instrument, per_letter
from simlab.prompts import template_hash
from simlab.registry import RegistrationError
from simlab.run import calls_per_session, run_experiment
from simlab.store import load_run, read_table, run_meta
from simlab.testing import StubServer
from tests.conftest import REPO, installed_package, stub_config
from tests.extensions.instruments_ext import TEMPLATES, USE_AGAIN, instruments
from tests.test_run_cli import stub_toml

ADDED = ("use_again", "clarity", "one_word")
WORD = "<b>bold</b>"  # a free-text answer the report must escape


@pytest.fixture
def added():
    parts = instruments()
    for part in parts:
        INSTRUMENTS.register(part)
    yield parts
    for part in parts:
        INSTRUMENTS.unregister(part.name)


def _schema(body: dict) -> tuple[str, list[str]]:
    spec = (body.get("response_format") or {}).get("json_schema") or {}
    return spec.get("name") or "", list((spec.get("schema") or {}).get("properties") or {})


def scripted(state: dict) -> object:
    """The stub's answers: a fixed word for ``one_word``; a ``use_again`` reply that breaks its
    schema while ``state["fail"]``; everything else generated from the schema."""

    def script(body: dict) -> str | None:
        name, letters = _schema(body)
        if name == "OneWord":
            return json.dumps({x: WORD for x in letters})
        if name == "UseAgain" and state.get("fail"):
            return json.dumps({x: "perhaps" for x in letters})
        return None

    return script


def run(cfg, **kw):
    return asyncio.run(run_experiment(cfg, progress=False, **kw))


def _protocol(turns: int) -> dict:
    return {"domains": ["values"], "min_turns": turns, "max_turns": turns}


def test_added_instruments_are_asked_stored_loaded_and_reported(added, tmp_path):
    with StubServer(script=scripted({})) as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol=_protocol(2))
        summary = run(cfg, report=True)
        bodies = [r.body for r in server.requests]
    assert summary.sessions_completed == 1 and summary.sessions_failed == 0
    t = load_run(summary.run_dir)
    k, conv = len(cfg.arms), t.conversations.iloc[0]
    letters = json.loads(conv["arm_letters"])
    assert conv["n_turns"] == 2
    answers = t.answers
    assert set(answers["instrument"]) == set(ADDED)
    assert (answers["conversation_id"] == conv["conversation_id"]).all()
    assert all(letters[arm] == letter for arm, letter in zip(answers["arm"], answers["letter"]))

    use = answers[answers["instrument"] == "use_again"]
    assert sorted(use["arm"]) == sorted(a.id for a in cfg.arms) and use["turn"].isna().all()
    assert set(use["value"]) <= {"true", "false"}
    assert (use["number"] == (use["value"] == "true").astype(float)).all()
    clarity = answers[answers["instrument"] == "clarity"]
    assert len(clarity) == k * 2 and sorted(set(clarity["turn"])) == [0, 1]  # after each of the 2 turns
    assert clarity["number"].between(1, 5).all()
    assert (clarity["value"] == clarity["number"].astype(int).astype(str)).all()
    word = answers[answers["instrument"] == "one_word"]
    assert set(word["value"]) == {json.dumps(WORD)} and word["number"].isna().all()

    # asked with their own templates (the memory partial included from simlab's prompts), each
    # logged as an instrument, and counted by the plan's call estimate
    assert sum("would you use this assistant again" in b["messages"][-1]["content"] for b in bodies) == 1
    assert sum("How clear was each response to your message 2" in b["messages"][-1]["content"] for b in bodies) == 1
    calls = t.llm_calls
    use_calls = calls[calls["instrument"] == "use_again"]
    assert use_calls["prompt_hash"].str.startswith(template_hash("use_again.j2", TEMPLATES) + "+").all()
    assert len(calls) == calls_per_session(k, 2, cfg.protocol)
    logged = read_table(summary.run_dir, "instruments")
    assert set(ADDED) <= set(logged["instrument"]) and (logged["status"] == "ok").all()
    assert {i["name"] for i in run_meta(summary.run_dir)["instruments"]} >= set(ADDED)

    # the fidelity loaders read the answers table back from files
    t.write(tmp_path / "tables")
    loaded = load_tables(tmp_path / "tables", default_source=None)
    assert loaded.answers is not None and len(loaded.answers) == len(answers)
    assert sorted(loaded.answers["value"]) == sorted(answers["value"])

    html = (summary.run_dir / "report.html").read_text()
    assert 'id="instruments"' in html and all(f"<h3>{name} " in html for name in ADDED)
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and WORD not in html
    assert "yes " in html  # use_again as a share of yes per arm


def test_a_reply_that_breaks_an_added_schema_fails_the_session_and_the_run_resumes(added, tmp_path):
    state = {"fail": True}
    with StubServer(script=scripted(state)) as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol=_protocol(1))
        first = run(cfg, report=False)
        assert first.sessions_completed == 0 and first.sessions_failed == 1
        failures = read_table(first.run_dir, "failures")
        assert "question 'use_again' (use_again.j2)" in failures["reason"].iloc[0]
        assert read_table(first.run_dir, "answers").empty  # nothing guessed, nothing half-stored

        state["fail"] = False
        cfg2 = stub_config(server, tmp_path, limit=2, protocol=_protocol(1))
        second = run(cfg2, report=False, retry_failed=True)
        assert second.sessions_completed == 2 and second.sessions_failed == 0
        n_requests = server.n_requests
        third = run(cfg2, report=False)  # everything done: no session is asked again
        assert third.sessions_done_before == 2 and server.n_requests == n_requests
    answers = load_run(second.run_dir).answers
    k = len(cfg.arms)
    assert answers.groupby("instrument").size().to_dict() == {"clarity": 2 * k, "one_word": 2 * k, "use_again": 2 * k}


def test_a_run_resumes_only_with_the_instruments_its_sessions_asked(added, tmp_path):
    from simlab.store import ConfigMismatchError

    with StubServer() as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol=_protocol(1))
        first = run(cfg, report=False)
        assert first.sessions_completed == 1
        one_word = INSTRUMENTS.get("one_word")
        INSTRUMENTS.unregister("one_word")  # a later call without it would leave the run half asked
        try:
            n_requests = server.n_requests
            with pytest.raises(ConfigMismatchError, match=r"instruments: the run's sessions asked the built-ins and "
                               r".*one_word \(end, .*these would ask the built-ins and clarity .*use_again"):
                run(stub_config(server, tmp_path, limit=2, protocol=_protocol(1)), report=False)
            assert server.n_requests == n_requests
        finally:
            INSTRUMENTS.register(one_word)
        again = run(stub_config(server, tmp_path, limit=2, protocol=_protocol(1)), report=False)
        assert again.run_dir == first.run_dir and again.sessions_done_before == 1 and again.sessions_completed == 2


def _dist(root: Path, lines: list[str], module: str | None = None, source: str = "") -> Path:
    """A package installed in ``root`` the way pip leaves it: a ``*.dist-info`` with entry points."""
    return installed_package(root, "simlab-instruments-ext", "simlab.instruments", lines,
                             {module: source} if module else None)


@pytest.fixture
def entry_point(tmp_path, monkeypatch):
    root = _dist(tmp_path / "site", ["ext = tests.extensions.instruments_ext:instruments"])
    monkeypatch.syspath_prepend(str(root))
    INSTRUMENTS.reload_entry_points()
    yield
    for name in ADDED:
        INSTRUMENTS.unregister(name)
    monkeypatch.undo()
    INSTRUMENTS.reload_entry_points()


def test_added_instruments_by_entry_point_are_asked_in_a_session(entry_point, tmp_path):
    assert INSTRUMENTS.names()[-3:] == list(ADDED)  # after the built-ins, in the order given
    with StubServer(script=scripted({})) as server:
        cfg = stub_config(server, tmp_path, limit=1, protocol=_protocol(1))
        summary = run(cfg, report=True)
    answers = load_run(summary.run_dir).answers
    assert answers.groupby("instrument").size().to_dict() == {name: len(cfg.arms) for name in sorted(ADDED)}
    assert "use_again" in (summary.run_dir / "report.html").read_text()


def test_bad_instruments_are_refused_with_the_name_and_the_cause(added):
    with pytest.raises(RegistrationError, match="instrument 'use_again': registered twice"):
        INSTRUMENTS.register(dataclasses.replace(USE_AGAIN, description="another"))
    with pytest.raises(RegistrationError, match=r"instrument 'nope': template 'nope\.j2' does not exist"):
        INSTRUMENTS.register(dataclasses.replace(USE_AGAIN, name="nope", template="nope.j2"))
    bad = create_model("Bad", __config__=ConfigDict(json_schema_extra={"type": 5}), A=(bool, ...))
    with pytest.raises(RegistrationError, match="instrument 'bad_schema': the answer schema is not a valid JSON schema"):
        INSTRUMENTS.register(dataclasses.replace(USE_AGAIN, name="bad_schema", schema=lambda letters, p: bad))
    with pytest.raises(RegistrationError, match="instrument 'a_dict': the schema builder gave .* not a pydantic model"):
        INSTRUMENTS.register(dataclasses.replace(USE_AGAIN, name="a_dict", schema=lambda letters, p: {"type": "object"}))
    with pytest.raises(RegistrationError, match="instrument 'scope': scope 'weekly' is not 'turn' or 'end'"):
        INSTRUMENTS.register(dataclasses.replace(USE_AGAIN, name="scope", scope="weekly"))  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="instrument 'has space': the name must be"):
        INSTRUMENTS.register(dataclasses.replace(USE_AGAIN, name="has space"))
    assert [n for n in INSTRUMENTS.names() if n not in ADDED][-1] == "wtp"  # none of them was kept
    ok = Instrument("fine", "use_again.j2", lambda letters, p: per_letter("Fine", letters, bool), folder=TEMPLATES)
    INSTRUMENTS.register(ok)
    INSTRUMENTS.unregister("fine")


def test_the_cli_refuses_a_bad_instrument_entry_point_with_exit_2_before_any_call(tmp_path):
    root = _dist(tmp_path / "site", ["broken = broken_instrument:instruments"], "broken_instrument",
                 "from simlab.instruments import Instrument, per_letter\n"
                 "def instruments():\n"
                 "    return [Instrument('broken_q', 'missing.j2', lambda letters, p: per_letter('B', letters, bool))]\n")
    with StubServer() as server:
        config = stub_toml(tmp_path, server.base_url)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}
        proc = subprocess.run([sys.executable, "-m", "simlab.run", "--config", str(config), "--limit", "1"],
                              cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert server.n_requests == 0, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "instrument 'broken_q'" in proc.stderr and "template 'missing.j2' does not exist" in proc.stderr
    assert not list((tmp_path / "runs").glob("*/store.sqlite"))  # refused before a store was made


async def test_sim_judgement_asks_the_added_end_of_conversation_instruments(added, tmp_path):
    from simlab.fidelity import load_human
    from simlab.personas import load_personas
    from simlab.sim_judgement import run_sim_judgement
    from tests.test_sim_judgement import PERSONAS, human_tables

    human = load_human(human_tables().write(tmp_path / "human"))
    with StubServer(script=scripted({})) as server:
        cfg = stub_config(server, tmp_path)
        summary = await run_sim_judgement(cfg, human, load_personas(PERSONAS), tmp_path / "run")
    assert summary.completed == 3
    answers = load_run(tmp_path / "run").answers
    # 3 human conversations × 4 arms; the per-turn clarity question belongs to held conversations only
    assert answers.groupby("instrument").size().to_dict() == {"one_word": 12, "use_again": 12}
    assert set(answers["conversation_id"]) == {"h1#sj", "h2#sj", "h3#sj"} and answers["turn"].isna().all()
