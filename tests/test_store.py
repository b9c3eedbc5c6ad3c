"""Tests of the session records and the SQLite run store, on real SQLite files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from simlab.errors import InputError
from simlab.records import (
    REQUIRED,
    AnswerRecord,
    AutogradeRecord,
    BDMRecord,
    ConversationRecord,
    InstrumentRecord,
    JudgementRecord,
    LLMCallRecord,
    ParticipantRecord,
    SessionFailure,
    SessionRecord,
    TurnRecord,
)
from simlab.records import TABLES as RECORD_TABLES
from simlab.schema import IN_DOMAIN, LETTERS
from simlab.store import (
    COLUMNS,
    JUDGEMENT_COLUMNS,
    STORE_FILE,
    STORE_SCHEMA_VERSION,
    ConfigMismatchError,
    DuplicateSessionError,
    RunStore,
    StoreError,
    diff_config,
    export,
    load_run,
    merge,
    merge_from,
    read_counts,
    read_table,
    run_meta,
)

ARMS = ("gen", "prompt", "dpft", "ppft")
REPO = Path(__file__).resolve().parent.parent


def make_session(
    participant_id: str, domain: str = "unguided", *, n_user_turns: int = 2, seed: int = 0, source: str = "sim_dynamic"
) -> SessionRecord:
    """A complete, valid session with random letters, ranks, ratings and a BDM draw."""
    rng = random.Random(f"{participant_id}/{domain}/{seed}")
    cid = f"{participant_id}:{domain}"
    letters = list(LETTERS[: len(ARMS)])
    rng.shuffle(letters)
    arm_letters = dict(zip(ARMS, letters))
    turns, calls = [], []
    for t in range(n_user_turns):
        turns.append(TurnRecord(conversation_id=cid, turn=t, role="user", text=f"user message {t}"))
        calls.append(LLMCallRecord(conversation_id=cid, role="simulator", model="sim", endpoint="http://127.0.0.1:1/v1",
                                   prompt_name="user_turn", prompt_hash="abc123", prompt_tokens=100, completion_tokens=20))
        for arm in ARMS:
            turns.append(TurnRecord(conversation_id=cid, turn=t, role="assistant", arm=arm, letter=arm_letters[arm],
                                    text=f"{arm} reply {t}", turn_rating=rng.uniform(0, 100), n_tokens=30))
            calls.append(LLMCallRecord(conversation_id=cid, role="arm", arm=arm, model=f"m-{arm}", endpoint="http://127.0.0.1:1/v1",
                                       prompt_tokens=50, completion_tokens=30, latency_s=0.5))
    ranks = list(range(1, len(ARMS) + 1))
    rng.shuffle(ranks)
    prov = list(range(1, len(ARMS) + 1))
    rng.shuffle(prov)
    opening, guess = rng.choice(ARMS), rng.choice(ARMS)
    judgements = [
        JudgementRecord(conversation_id=cid, arm=arm, letter=arm_letters[arm], position=LETTERS.index(arm_letters[arm]) + 1,
                        opening_choice=arm == opening, provenance_guess=arm == guess, rank=ranks[i], provenance_rank=prov[i],
                        rating_preference=rng.uniform(0, 100), rating_engagingness=rng.uniform(0, 100),
                        rating_provenance=rng.uniform(0, 100), wtp_bid=round(rng.uniform(0, 10), 2))
        for i, arm in enumerate(ARMS)
    ]
    drawn = rng.choice(judgements)
    price = round(rng.uniform(0, 10), 2)
    won = drawn.wtp_bid >= price
    bdm = [BDMRecord(conversation_id=cid, arm=drawn.arm, letter=drawn.letter, price=price, bid=drawn.wtp_bid,
                     won=won, paid=price if won else 0.0)]
    instruments = [InstrumentRecord(conversation_id=cid, instrument=name, repairs=int(name == "ranking"))
                   for name in ("opening_choice", *["turn_rating"] * n_user_turns, "ranking")]
    return SessionRecord(
        participant=ParticipantRecord(participant_id=participant_id, source=source, persona_id=f"persona-{participant_id}",
                                      rendering="summary", simulator_model="sim"),
        conversation=ConversationRecord(conversation_id=cid, participant_id=participant_id, source=source, domain=domain,
                                        in_domain=domain in IN_DOMAIN, arm_letters=arm_letters, n_turns=n_user_turns,
                                        stop_reason="user_ended", seed=seed),
        turns=turns, judgements=judgements, bdm=bdm, llm_calls=calls, instruments=instruments,
    )


def expected_rows(*records: SessionRecord) -> dict[str, int]:
    return {
        "sessions": len(records),
        "participants": len({(r.participant.participant_id, r.participant.source) for r in records}),
        "conversations": len(records),
        **{t: sum(len(getattr(r, t)) for r in records)
           for t in ("turns", "judgements", "bdm", "llm_calls", "instruments", "answers")},
        "autograde": 0,
        "failures": 0,
        "arms": 0,  # written by the runner from the config, not by sessions
    }


META = {"config": {"arms": [{"name": "gen", "model": "a"}, {"name": "prompt", "model": "a"}], "seed": 7,
                   "concurrency": 4, "limit": None, "endpoint": {"api_key": "sk-secret-123", "url": "http://x"}},
        "prompt_hashes": {"user_turn": "abc123"}, "seed": 7}


@pytest.fixture
def store(tmp_path: Path):
    with RunStore.create(tmp_path / "run", META) as s:
        yield s


# ---------------------------------------------------------------- round trip


def test_round_trip_two_sessions_exact_rows(store: RunStore, tmp_path: Path) -> None:
    a, b = make_session("p1", "unguided"), make_session("p1", "emotional_wellbeing", n_user_turns=3)
    assert store.write_session(a) and store.write_session(b)
    counts = store.counts()
    assert counts.rows == {**expected_rows(a, b)}
    assert counts.rows["turns"] == 2 * 5 + 3 * 5 and counts.rows["llm_calls"] == 25 and counts.rows["participants"] == 1
    assert counts.sessions_completed == 2 and counts.sessions_failed == 0
    assert counts.llm_calls == 25 and counts.prompt_tokens == 5 * 100 + 20 * 50
    gen = next(c for c in counts.by_role_arm if c.arm == "gen")
    assert (gen.role, gen.calls, gen.completion_tokens) == ("arm", 5, 150)
    assert store.completed_sessions() == {"p1:unguided", "p1:emotional_wellbeing"}

    tables = load_run(tmp_path / "run")
    assert len(tables.judgements) == 8 and len(tables.turns) == 25 and len(tables.conversations) == 2
    assert len(tables.bdm) == 2 and len(tables.llm_calls) == 25 and len(tables.participants) == 1
    conv = tables.conversations.set_index("conversation_id")
    assert json.loads(conv.loc["p1:unguided", "arm_letters"]) == a.conversation.arm_letters
    assert not conv.loc["p1:emotional_wellbeing", "in_domain"]
    j = tables.judgements[tables.judgements.conversation_id == "p1:unguided"].set_index("arm")
    for rec in a.judgements:
        row = j.loc[rec.arm]
        assert (row["letter"], row["position"], row["rank"], bool(row["opening_choice"])) == (
            rec.letter, rec.position, rec.rank, rec.opening_choice)
        assert row["rating_preference"] == pytest.approx(rec.rating_preference)
        assert (row["participant_id"], row["source"], row["domain"]) == ("p1", "sim_dynamic", "unguided")
    assert read_table(tmp_path / "run", "instruments")["repairs"].sum() == 2


def test_load_run_columns_and_dtypes(store: RunStore) -> None:
    store.write_session(make_session("p1"))
    t = load_run(store.path)  # the .sqlite file works as well as the directory
    assert tuple(t.judgements.columns) == JUDGEMENT_COLUMNS
    for name, required in REQUIRED.items():
        assert set(required) | set(RECORD_TABLES[name].names) <= set(getattr(t, name).columns), name
    jd = t.judgements.dtypes
    assert jd["rank"] == "Int64" and jd["position"] == "Int64" and jd["provenance_rank"] == "Int64"
    assert jd["opening_choice"] == "boolean" and jd["provenance_guess"] == "boolean"
    assert jd["rating_preference"] == "float64" and jd["wtp_bid"] == "float64"
    cd = t.conversations.dtypes
    assert cd["in_domain"] == "boolean" and cd["gen_error"] == "boolean" and cd["n_turns"] == "Int64"
    assert isinstance(t.conversations["arm_letters"].iloc[0], str)
    assert t.turns["turn_rating"].dtype == "float64" and t.turns["turn"].dtype == "Int64"
    assert t.turns.loc[t.turns.role == "user", "arm"].isna().all()
    assert t.bdm["won"].dtype == "boolean"
    assert (t.judgements["rank"] == 1).sum() == 1  # ranked_best is derivable


def test_load_run_of_empty_store_has_columns(store: RunStore) -> None:
    t = load_run(store.path)
    assert len(t.judgements) == 0 and tuple(t.judgements.columns) == JUDGEMENT_COLUMNS
    assert t.judgements["rank"].dtype == "Int64"


# ---------------------------------------------------------------- atomicity and resume


def _all_rows(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COLUMNS}


def test_a_session_failing_mid_insert_leaves_nothing(store: RunStore) -> None:
    good = make_session("p1")
    store.write_session(good)
    before = _all_rows(store.path)
    bad = make_session("p2")
    # bypass pydantic so the database's own CHECK fails on the LAST judgement, after turns etc. went in
    broken = bad.judgements[-1].model_construct(**{**bad.judgements[-1].model_dump(), "rating_preference": 150.0})
    bad = SessionRecord.model_construct(**{**dict(bad), "judgements": [*bad.judgements[:-1], broken]})
    with pytest.raises(sqlite3.IntegrityError):
        store.write_session(bad)
    assert _all_rows(store.path) == before
    assert store.completed_sessions() == {"p1:unguided"}
    # the store is still usable and the fixed session goes in whole
    assert store.write_session(make_session("p2"))
    assert store.counts().rows == expected_rows(good, make_session("p2"))


def test_participant_conflict_rolls_back(store: RunStore) -> None:
    store.write_session(make_session("p1", "unguided"))
    other = make_session("p1", "values")
    other = other.model_copy(update={"participant": other.participant.model_copy(update={"rendering": "profile"})})
    before = _all_rows(store.path)
    with pytest.raises(StoreError, match="participant 'p1'"):
        store.write_session(other)
    assert _all_rows(store.path) == before


def test_duplicate_write_is_noop_when_identical_and_refused_when_different(store: RunStore) -> None:
    rec = make_session("p1")
    assert store.write_session(rec) is True
    assert store.write_session(make_session("p1")) is False  # identical rebuild: no-op
    assert store.counts().rows == expected_rows(rec)
    with pytest.raises(DuplicateSessionError, match="p1:unguided"):
        store.write_session(make_session("p1", seed=1))
    assert store.counts().rows == expected_rows(rec)


def test_failures_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunStore.create(run, META) as s:
        s.write_session(make_session("p1"))
        call = LLMCallRecord(conversation_id="p2:unguided", role="judge", instrument="ranking", model="sim",
                             endpoint="e", attempts=3, status="schema_error", error="not a permutation")
        s.write_failure(SessionFailure(conversation_id="p2:unguided", participant_id="p2", domain="unguided",
                                       error_type="StructuredOutputError", reason="ranking kept failing",
                                       raw_text='{"ranking": "A A B"}', llm_calls=[call]))
        assert s.failed_sessions() == {"p2:unguided"}
        c = s.counts()
        assert (c.sessions_completed, c.sessions_failed, c.rows["failures"]) == (1, 1, 1)
        judge = next(x for x in c.by_role_arm if x.role == "judge")
        assert (judge.calls, judge.errors) == (1, 1)
    # resume: same command, same config; only the missing/failed session is redone
    with RunStore.open_or_create(run, META) as s:
        assert s.completed_sessions() == {"p1:unguided"}
        assert s.write_session(make_session("p2"))
        assert s.failed_sessions() == set()
        assert s.counts().rows["failures"] == 1  # the history of the failed attempt is kept
        with pytest.raises(StoreError, match="already complete"):
            s.write_failure(SessionFailure(conversation_id="p2:unguided", participant_id="p2", domain="unguided",
                                           error_type="X", reason="y"))
    assert len(run_meta(run)["resumes"]) == 1


async def test_concurrent_sessions_from_the_event_loop(store: RunStore) -> None:
    async def session(i: int) -> bool:
        await asyncio.sleep(random.random() / 100)
        return store.write_session(make_session(f"p{i}", n_user_turns=1 + i % 3))

    assert all(await asyncio.gather(*(session(i) for i in range(40))))
    assert store.completed_sessions() == {f"p{i}:unguided" for i in range(40)}
    assert store.counts().rows == expected_rows(*(make_session(f"p{i}", n_user_turns=1 + i % 3) for i in range(40)))


# ---------------------------------------------------------------- SIGKILL

WRITER = textwrap.dedent(
    """
    import importlib.util, sys, time
    from simlab.store import RunStore
    spec = importlib.util.spec_from_file_location("t", sys.argv[1])
    t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
    store = RunStore.open(sys.argv[2])
    mode, n = sys.argv[3], int(sys.argv[4])
    if mode == "mid_transaction":
        for i in range(n):
            store.write_session(t.make_session(f"p{i}", n_user_turns=3))
        def stall(sql):  # stop inside the next session's transaction, after its turns went in
            if sql.startswith("INSERT INTO judgements"):
                print("MID", flush=True); time.sleep(120)
        store._conn.set_trace_callback(stall)
        store.write_session(t.make_session("victim", n_user_turns=3))
    else:
        i = 0
        while True:
            store.write_session(t.make_session(f"p{i}", n_user_turns=1 + i % 4))
            print(i, flush=True); i += 1
    """
)


@pytest.mark.parametrize("mode", ["mid_transaction", "anywhere"])
def test_sigkill_of_a_writer_leaves_only_whole_sessions(tmp_path: Path, mode: str) -> None:
    run = tmp_path / "run"
    RunStore.create(run, META).close()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, __file__, str(run), mode, "5"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "MID" or (mode == "anywhere" and int(line) >= 25):
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with RunStore.open(run) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert s._conn.execute("PRAGMA foreign_key_check").fetchall() == []
        done = s.completed_sessions()
        records = [make_session(k.split(":")[0], n_user_turns=3 if mode == "mid_transaction" else 1 + int(k[1:].split(":")[0]) % 4)
                   for k in done]
        assert s.counts().rows == expected_rows(*records)  # every stored session whole, nothing else
        if mode == "mid_transaction":
            assert done == {f"p{i}:unguided" for i in range(5)}
        else:
            assert len(done) >= 26
        # a resumed run writes the missing session normally
        assert s.write_session(make_session("victim"))


# ---------------------------------------------------------------- config and meta


def test_resume_with_a_different_config_names_every_field(tmp_path: Path) -> None:
    # META is a meta as stores before the experiment was stored on its own have it: its experiment
    # is its config without the invocation's keys of then (concurrency, limit, …)
    run = tmp_path / "run"
    RunStore.create(run, META).close()
    changed = json.loads(json.dumps(META))
    changed["config"]["arms"][1]["model"] = "b"
    changed["config"]["seed"] = 8
    changed["config"]["concurrency"] = 64  # the invocation's: may differ on resume
    changed["config"]["new_option"] = True
    changed["prompt_hashes"]["user_turn"] = "def456"
    before = (run / "store.sqlite").read_bytes()
    with pytest.raises(ConfigMismatchError) as err:
        RunStore.open_or_create(run, changed)
    assert isinstance(err.value, InputError)
    msg = str(err.value)
    for part in ("arms[1].model: 'a' != 'b'", "seed: 7 != 8", "new_option: <absent> != True",
                 "prompt_hashes.user_turn: 'abc123' != 'def456'", "store.sqlite"):
        assert part in msg
    assert "concurrency" not in msg
    assert len(err.value.differences) == 4
    assert (run / "store.sqlite").read_bytes() == before  # refused resume leaves the run untouched
    # the allowed change alone resumes, and is recorded
    ok = json.loads(json.dumps(META))
    ok["config"]["concurrency"] = 64
    RunStore.open_or_create(run, ok).close()
    assert run_meta(run)["resumes"][0]["changed"] == ["concurrency: 4 != 64"]
    assert run_meta(run)["config"]["concurrency"] == 64  # the config of the latest call


def test_the_experiment_is_matched_and_the_config_is_the_latest_calls(tmp_path: Path) -> None:
    run = tmp_path / "run"
    experiment = {"name": "t", "seed": 7, "arms": [{"id": "GEN"}, {"id": "PROMPT"}]}
    meta = {"experiment": experiment, "config": {**experiment, "concurrency": 4, "repeats": 1}, "seed": 7}
    RunStore.create(run, meta).close()
    # another call's settings, even ones no older simlab knew, resume the run
    later = {**meta, "config": {**experiment, "concurrency": 8, "repeats": 2, "progress": False}}
    RunStore.open_or_create(run, later).close()
    assert run_meta(run)["resumes"][0]["changed"] == [
        "concurrency: 4 != 8", "progress: <absent> != False", "repeats: 1 != 2"]
    assert run_meta(run)["experiment"] == experiment
    # a change to the experiment is refused, named by its field path
    other = {**later, "experiment": {**experiment, "arms": [{"id": "GEN"}, {"id": "STYLE"}]}}
    with pytest.raises(ConfigMismatchError, match=r"arms\[1\]\.id: 'PROMPT' != 'STYLE'") as err:
        RunStore.open_or_create(run, other)
    assert len(err.value.differences) == 1
    # a stored meta of before (its experiment inside its config) matches the same experiment
    legacy = tmp_path / "legacy"
    RunStore.create(legacy, {"config": meta["config"], "seed": 7}).close()
    RunStore.open_or_create(legacy, later).close()
    with pytest.raises(ConfigMismatchError, match="PROMPT"):
        RunStore.open_or_create(legacy, other)


def test_meta_is_stored_without_secrets(store: RunStore) -> None:
    meta = run_meta(store.path)
    assert meta["config"]["endpoint"] == {"api_key": "[redacted]", "url": "http://x"}
    assert meta["prompt_hashes"] == {"user_turn": "abc123"} and meta["seed"] == 7
    assert {"simlab_version", "created_at", "command", "store_schema"} <= set(meta)
    store.close()
    raw = b"".join(p.read_bytes() for p in store.path.parent.iterdir())
    assert b"sk-secret-123" not in raw


def test_the_name_of_a_key_variable_is_kept_so_a_run_resumes(tmp_path: Path) -> None:
    # api_key_env names the environment variable (never the key): redacting it broke --resume
    meta = {"config": {"endpoints": {"vllm": {"api_key_env": "VLLM_API_KEY", "api_key": "sk-leak-9999"}}}}
    RunStore.create(tmp_path / "run", meta).close()
    stored = run_meta(tmp_path / "run")["config"]["endpoints"]["vllm"]
    assert stored == {"api_key_env": "VLLM_API_KEY", "api_key": "[redacted]"}


def test_a_run_stored_with_the_old_redaction_marker_still_resumes(tmp_path: Path) -> None:
    meta = {"config": {"endpoints": {"vllm": {"api_key": "sk-leak-9999"}}}}
    RunStore.create(tmp_path / "run", meta).close()
    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:  # as a store written before one marker
        (text,) = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        db.execute("UPDATE meta SET value = ? WHERE key = 'config'", (text.replace("[redacted]", "<redacted>"),))
    db.close()
    RunStore.open_or_create(tmp_path / "run", meta).close()  # no ConfigMismatchError


def test_diff_config() -> None:
    old = {"arms": [{"model": "a"}, {"model": "x", "temp": 0.7}], "flag": True, "n": 1, "limit": 5}
    assert diff_config(old, json.loads(json.dumps(old))) == []
    assert diff_config(old, {**old, "n": 1.0}) == []  # the same number
    assert diff_config(old, {**old, "flag": 1}) == ["flag: True != 1"]
    new = {"arms": [{"model": "a"}, {"model": "y"}, {"model": "z"}], "flag": True, "n": 1, "limit": 9}
    assert diff_config(old, new, ignore={"limit"}) == [
        "arms[1].model: 'x' != 'y'",
        "arms[1].temp: 0.7 != <absent>",
        "arms[2]: <absent> != {'model': 'z'}",
    ]
    assert diff_config(1, 2) == ["<root>: 1 != 2"]


def test_create_and_open_errors(tmp_path: Path, store: RunStore) -> None:
    with pytest.raises(InputError, match="already exists"):
        RunStore.create(store.path.parent, META)
    with pytest.raises(InputError, match="no run store"):
        RunStore.open(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no run store"):
        load_run(tmp_path / "nowhere")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "store.sqlite").write_text("not a database " * 100)
    with pytest.raises(InputError, match="not a readable simlab run store: damaged: its header is not an SQLite header"):
        RunStore.open(junk)


# ---------------------------------------------------------------- autograde and export


def test_autograde_is_written_once(store: RunStore) -> None:
    store.write_session(make_session("p1"))
    rows = [AutogradeRecord(unit_id=f"p1:unguided/{arm}/0", unit_kind="reply", conversation_id="p1:unguided", arm=arm,
                            turn=0, mode="first_turn", dimension="sycophancy", score=float(i), rater_run=0,
                            source="sim_dynamic") for i, arm in enumerate(ARMS)]
    assert store.write_autograde(rows) == 4
    assert store.write_autograde(rows) == 0
    assert store.write_autograde([rows[0].model_copy(update={"rater_run": 1})]) == 1
    assert len(store.autograded()) == 5
    ag = load_run(store.path).autograde
    assert len(ag) == 5 and ag["score"].dtype == "float64" and ag["rater_run"].dtype == "Int64"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export(store: RunStore, tmp_path: Path, fmt: str) -> None:
    store.write_session(make_session("p1"))
    store.write_session(make_session("p2", "values"))
    out = export(store.path.parent, tmp_path / "out", fmt)  # type: ignore[arg-type]
    names = {p.name for p in out.iterdir()}
    for table in ("judgements", "conversations", "turns", "participants", "bdm", "llm_calls", "instruments", "failures"):
        assert f"{table}.{fmt}" in names
    assert json.loads((out / "meta.json").read_text())["seed"] == 7
    reader = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[fmt]
    j = reader(out / f"judgements.{fmt}")
    assert len(j) == 8 and list(j.columns) == list(JUDGEMENT_COLUMNS)
    with pytest.raises(InputError, match="format"):
        export(store.path, tmp_path / "x", "xlsx")  # type: ignore[arg-type]


def test_simlab_load_run_is_exported(store: RunStore) -> None:
    import simlab

    store.write_session(make_session("p1"))
    assert len(simlab.load_run(store.path.parent).judgements) == 4


# ---------------------------------------------------------------- record validation


def test_records_reject_what_can_be_checked_locally() -> None:
    good = make_session("p1")
    conv = good.conversation.model_dump()
    with pytest.raises(ValidationError, match="permutation|A, B"):
        ConversationRecord(**{**conv, "arm_letters": {"gen": "A", "prompt": "A", "dpft": "C", "ppft": "D"}})
    with pytest.raises(ValidationError, match="A, B"):
        ConversationRecord(**{**conv, "arm_letters": {"gen": "A", "prompt": "B", "dpft": "C", "ppft": "E"}})
    with pytest.raises(ValidationError, match="in_domain"):
        ConversationRecord(**{**conv, "domain": "emotional_wellbeing", "in_domain": True})
    with pytest.raises(ValidationError, match="extra"):
        ConversationRecord(**{**conv, "colour": "red"})
    j = good.judgements[0].model_dump()
    for field, value in (("rating_preference", 100.5), ("rating_provenance", -1), ("wtp_bid", 10.01), ("rank", 0)):
        with pytest.raises(ValidationError):
            JudgementRecord(**{**j, field: value})
    with pytest.raises(ValidationError, match="letter"):
        JudgementRecord(**{**j, "letter": "Z"})
    # the display position is checked against the conversation's order, which only the session knows
    moved = [jj.model_copy(update={"position": jj.position % 4 + 1}) if i == 0 else jj
             for i, jj in enumerate(good.judgements)]
    with pytest.raises(ValidationError, match="shown at position"):
        SessionRecord(**{**good.model_dump(), "judgements": [m.model_dump() for m in moved]})
    # with letters independent of the order, the conversation's arm_positions says where each was shown
    positions = {jj.arm: (jj.position % 4) + 1 for jj in good.judgements}
    shifted = good.model_dump()
    shifted["conversation"]["arm_positions"] = positions
    shifted["judgements"] = [{**jj.model_dump(), "position": positions[jj.arm]} for jj in good.judgements]
    assert SessionRecord(**shifted).conversation.position_of(good.judgements[0].arm) == positions[good.judgements[0].arm]
    with pytest.raises(ValidationError, match="arm_positions"):
        ConversationRecord(**{**conv, "arm_positions": {"gen": 1, "prompt": 1, "dpft": 3, "ppft": 4}})
    with pytest.raises(ValidationError):
        TurnRecord(conversation_id="c", turn=0, role="user", arm="gen", letter="A", text="hi")
    with pytest.raises(ValidationError):
        TurnRecord(conversation_id="c", turn=1, role="assistant", text="hi")
    b = good.bdm[0].model_dump()
    with pytest.raises(ValidationError, match="won"):
        BDMRecord(**{**b, "won": not b["won"]})
    with pytest.raises(ValidationError, match="pays"):
        BDMRecord(**{**b, "paid": b["bid"] + 0.01 if b["won"] else 1.0})
    with pytest.raises(ValidationError):
        LLMCallRecord(role="user", model="m", endpoint="e")


def test_session_record_cross_checks() -> None:
    good = make_session("p1")
    parts = dict(good)
    ranks_bad = [j.model_copy(update={"rank": 1}) for j in good.judgements]
    with pytest.raises(ValidationError, match="rank must be a permutation"):
        SessionRecord(**{**parts, "judgements": ranks_bad})
    two_choices = [j.model_copy(update={"opening_choice": True}) for j in good.judgements]
    with pytest.raises(ValidationError, match="opening_choice"):
        SessionRecord(**{**parts, "judgements": two_choices})
    with pytest.raises(ValidationError, match="each arm once"):
        SessionRecord(**{**parts, "judgements": good.judgements[:3]})
    wrong_letter = good.turns[1].model_copy(update={"letter": "Z"})
    with pytest.raises(ValidationError, match="map says"):
        SessionRecord(**{**parts, "turns": [good.turns[0], wrong_letter, *good.turns[2:]]})
    stray = good.bdm[0].model_copy(update={"conversation_id": "other"})
    with pytest.raises(ValidationError, match="conversation_id"):
        SessionRecord(**{**parts, "bdm": [stray]})
    with pytest.raises(ValidationError, match="n_turns"):
        SessionRecord(**{**parts, "conversation": good.conversation.model_copy(update={"n_turns": 5})})
    # a session whose ranking instrument failed: all ranks null is allowed
    SessionRecord(**{**parts, "judgements": [j.model_copy(update={"rank": None}) for j in good.judgements]})
    assert good.conversation.conversation_id == "p1:unguided"


# ---------------------------------------------------------------- shards


def _shard(path: Path, participants: list[str], shard: str) -> list[SessionRecord]:
    meta = {**json.loads(json.dumps(META)), "shard": shard}  # as the runner stores it, beside the config
    records = [make_session(p, d) for p in participants for d in ("unguided", "values")]
    with RunStore.create(path, meta) as s:
        for r in records:
            s.write_session(r)
        s.write_failure(SessionFailure(conversation_id=f"{participants[0]}:controversy", participant_id=participants[0],
                                       domain="controversy", error_type="LLMError", reason="timeout"))
        s.write_calls([LLMCallRecord(role="summary", model="sim", endpoint="e", prompt_tokens=7)])
        s.write_autograde([AutogradeRecord(unit_id=f"{participants[0]}:unguided/gen/0", unit_kind="reply",
                                           mode="first_turn", dimension="refusal", score=1.0)])
    return records


def test_merge_shards(tmp_path: Path) -> None:
    a = _shard(tmp_path / "s1", ["p1", "p2"], "1/2")
    b = _shard(tmp_path / "s2", ["p3"], "2/2")
    with merge(tmp_path / "all", [tmp_path / "s1", tmp_path / "s2"]) as m:
        rows = m.counts().rows
        assert rows == {**expected_rows(*a, *b), "failures": 2, "autograde": 2, "llm_calls": sum(len(r.llm_calls) for r in a + b) + 2}
        assert m.failed_sessions() == {"p1:controversy", "p3:controversy"}
        assert merge_from(m, tmp_path / "s1") == 0  # a shard is taken in once
        assert m.counts().rows == rows
    assert len(load_run(tmp_path / "all").judgements) == 4 * 6
    # a shard run with another config is refused, naming the field
    other = json.loads(json.dumps(META))
    other["config"]["arms"][0]["model"] = "zzz"
    RunStore.create(tmp_path / "s3", other).close()
    with pytest.raises(ConfigMismatchError, match=r"arms\[0\].model: 'a' != 'zzz'"):
        merge(tmp_path / "all", [tmp_path / "s3"])


def test_merge_refuses_a_conflicting_session_and_takes_nothing(tmp_path: Path) -> None:
    _shard(tmp_path / "s1", ["p1"], "1/2")
    with RunStore.create(tmp_path / "s2", {**META, "shard": "2/2"}) as s:
        s.write_session(make_session("p9"))
        s.write_session(make_session("p1", seed=5))  # same key as in s1, different result
    with merge(tmp_path / "all", [tmp_path / "s1"]) as m:
        before = m.counts().rows
        with pytest.raises(DuplicateSessionError, match="p1:unguided"):
            merge_from(m, tmp_path / "s2")
        assert m.counts().rows == before


def test_csv_export_neutralises_formula_cells_and_parquet_keeps_them(store: RunStore, tmp_path: Path) -> None:
    session = make_session("p1")
    payloads = ["=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tTAB", "plain text", "a=b"]
    turns = [t.model_copy(update={"text": payloads[i % len(payloads)]}) for i, t in enumerate(session.turns)]
    store.write_session(session.model_copy(update={"turns": turns}))
    csv_out = export(store.path.parent, tmp_path / "csv", "csv")
    texts = pd.read_csv(csv_out / "turns.csv", keep_default_na=False)["text"].tolist()
    for text in texts:
        assert not text.startswith(("=", "+", "-", "@", "\t")), text
    assert "'=HYPERLINK(\"http://x\")" in texts and "plain text" in texts and "a=b" in texts
    ratings = pd.read_csv(csv_out / "turns.csv")["turn_rating"].dropna()
    assert ratings.dtype == "float64"  # numbers are not touched
    pq = pd.read_parquet(export(store.path.parent, tmp_path / "pq", "parquet") / "turns.parquet")
    assert set(payloads[:len(turns)]) <= set(pq["text"])  # parquet keeps the text as stored



def test_csv_export_neutralises_fullwidth_and_other_lookalike_formula_starts(store: RunStore, tmp_path: Path) -> None:
    # spreadsheets may take the fullwidth or small forms (NFKC) of = + - @ for the formula sign
    lookalikes = ["＝HYPERLINK(\"http://x\")", "＋1+2", "－2+3", "＠SUM(A1)", "﹦1", "﹢1", "﹣1", "﹫x", "⁼1", "⁺1"]
    harmless = ["（fine）", "ｆｕｌｌｗｉｄｔｈ text", "−1 (a minus sign, not a hyphen)"]
    session = make_session("p1", n_user_turns=3)
    texts = [*lookalikes, *harmless]
    assert len(session.turns) >= len(texts)
    turns = [t.model_copy(update={"text": texts[i % len(texts)]}) for i, t in enumerate(session.turns)]
    store.write_session(session.model_copy(update={"turns": turns}))
    written = {t.text for t in turns}
    out = export(store.path.parent, tmp_path / "csv", "csv")
    exported = pd.read_csv(out / "turns.csv", keep_default_na=False)["text"].tolist()
    for text in exported:
        original = text[1:] if text.startswith("'") else text
        assert original in written
        assert text.startswith("'") == (original in lookalikes), text
    # exported again into the same folder: the files are replaced, no temporary folder is left
    again = export(store.path.parent, tmp_path / "csv", "csv")
    assert again == out and sorted(p.name for p in tmp_path.iterdir()) == ["csv", "run"]
    assert pd.read_csv(out / "turns.csv", keep_default_na=False)["text"].tolist() == exported


# ---------------------------------------------------------------- network file systems


def test_filesystem_type_is_the_longest_mount_above_the_path(tmp_path: Path) -> None:
    from simlab.store import filesystem_type

    mounts = tmp_path / "mounts"
    scratch = str(tmp_path / "shared" / "my") + "\\040scratch"  # /proc/mounts writes a space as \040
    mounts.write_text("overlay / overlay rw 0 0\n"
                      f"server:/export {tmp_path / 'shared'} nfs4 rw,relatime 0 0\n"
                      f"lustre@o2ib:/scratch {scratch} lustre rw 0 0\n")
    assert filesystem_type(tmp_path / "shared" / "runs" / "x", mounts) == "nfs4"
    assert filesystem_type(tmp_path / "shared" / "my scratch" / "runs", mounts) == "lustre"
    assert filesystem_type(tmp_path / "local", mounts) == "overlay"
    assert filesystem_type(tmp_path, tmp_path / "no-such-file") is None


def test_a_store_on_a_network_file_system_warns_and_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    from simlab.store import NetworkFilesystemWarning, filesystem

    mounts = tmp_path / "mounts"
    mounts.write_text(f"/ / ext4 rw 0 0\nserver:/export {tmp_path / 'nfs'} nfs rw 0 0\n")
    monkeypatch.setattr(filesystem, "MOUNTS", str(mounts))
    with pytest.warns(NetworkFilesystemWarning, match=r"network file system \(nfs\).*local disk.*merge"):
        RunStore.create(tmp_path / "nfs" / "run", {"config": {}}).close()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # local disk: no warning
        RunStore.create(tmp_path / "local" / "run", {"config": {}}).close()


def _downgrade_to_v3(path: Path) -> None:
    """Rewrite a store in the version-3 shape: no ``answers`` table (added instruments' answers) and
    llm_calls without ``served_model``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE answers")
    conn.execute("ALTER TABLE llm_calls DROP COLUMN served_model")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'store_schema'")
    conn.close()


def _rows(path: Path) -> dict[str, int]:
    """Rows per stored table of this schema (0 for a table an older store does not have)."""
    conn = sqlite3.connect(path)
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    out = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in present else 0 for t in COLUMNS}
    conn.close()
    return out


def test_a_version_3_store_is_migrated_on_open_and_its_calls_say_no_served_model(tmp_path: Path) -> None:
    _a_session_a_failure_and_a_summary_call(tmp_path / "old")
    path = tmp_path / "old" / STORE_FILE
    calls = "SELECT call_id, recorded_with, conversation_id, role, model, prompt_tokens FROM llm_calls ORDER BY call_id"
    before_calls = sqlite3.connect(path).execute(calls).fetchall()
    _downgrade_to_v3(path)
    assert "served_model" not in [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(llm_calls)")]
    assert read_table(tmp_path / "old", "llm_calls")["served_model"].isna().all()  # a reader sees the column

    store = RunStore.open(tmp_path / "old")  # a writer (the run's resume) migrates it
    assert store.meta()["store_schema"] == STORE_SCHEMA_VERSION
    assert store._conn.execute(calls).fetchall() == before_calls
    assert store.completed_sessions() == {"p1:unguided"} and store.failed_sessions() == {"p2:unguided"}
    store.write_calls([LLMCallRecord(role="summary", model="sim", served_model="sim-lora", endpoint="e")])
    store.close()
    served = read_table(tmp_path / "old", "llm_calls")["served_model"]
    assert served.isna().sum() == len(before_calls) and served.dropna().tolist() == ["sim-lora"]


def _downgrade_to_v2(path: Path) -> None:
    """Rewrite a store in the version-2 shape: sessions and failures keyed by ``session_key``, and
    llm_calls' ``recorded_with`` named ``session_key`` (SQLite's RENAME COLUMN also rewrites the
    foreign key of conversations, as schema 2 had it)."""
    _downgrade_to_v3(path)
    conn = sqlite3.connect(path, isolation_level=None)
    for table, column in (("sessions", "conversation_id"), ("failures", "conversation_id"),
                          ("llm_calls", "recorded_with")):
        conn.execute(f"ALTER TABLE {table} RENAME COLUMN {column} TO session_key")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'store_schema'")
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'conversations'").fetchone()[0]
    assert "sessions(session_key)" in sql, sql
    conn.close()


def _a_session_a_failure_and_a_summary_call(run: Path) -> None:
    """A store at ``run`` with a completed session, a failed one with its call, and a call of its own."""
    store = RunStore.create(run, {"config": {"name": "t"}})
    store.write_session(make_session("p1"))
    store.write_failure(SessionFailure(conversation_id="p2:unguided", participant_id="p2", domain="unguided",
                                       error_type="StructuredOutputError", reason="bad json", llm_calls=[
                                           LLMCallRecord(conversation_id="p2:unguided", role="simulator", model="sim",
                                                         endpoint="e", prompt_tokens=5)]))
    store.write_calls([LLMCallRecord(role="summary", model="sim", endpoint="e", prompt_tokens=7)])
    store.close()


def test_a_version_2_store_is_migrated_on_open_and_keeps_every_row_and_id(tmp_path: Path) -> None:
    _a_session_a_failure_and_a_summary_call(tmp_path / "old")
    path = tmp_path / "old" / STORE_FILE
    calls = "SELECT call_id, conversation_id, role, prompt_tokens FROM llm_calls ORDER BY call_id"
    before_calls = sqlite3.connect(path).execute(calls).fetchall()
    tagged = sqlite3.connect(path).execute("SELECT call_id, recorded_with FROM llm_calls ORDER BY call_id").fetchall()
    _downgrade_to_v2(path)
    before = _rows(path)

    store = RunStore.open(tmp_path / "old")
    assert store.meta()["store_schema"] == STORE_SCHEMA_VERSION == 6
    db = store._conn
    assert {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COLUMNS} == before
    assert db.execute(calls).fetchall() == before_calls
    assert db.execute("SELECT call_id, recorded_with FROM llm_calls ORDER BY call_id").fetchall() == tagged
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert "sessions(conversation_id)" in db.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'conversations'").fetchone()[0]
    assert store.completed_sessions() == {"p1:unguided"} and store.failed_sessions() == {"p2:unguided"}
    assert [g.example for g in store.counts().failure_groups] == ["p2:unguided"]
    store.write_session(make_session("p2"))  # the failed session resumes and supersedes its failure
    store.close()
    assert len(load_run(tmp_path / "old").judgements) == 8


def _fingerprint(path: Path) -> tuple[str, int, str]:
    """A store file's bytes (hashed), its ``PRAGMA user_version`` and its stored schema version."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        user_version = conn.execute("PRAGMA user_version").fetchone()[0]
        schema = conn.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone()[0]
    finally:
        conn.close()
    return digest, user_version, schema


def test_a_version_3_store_gains_the_answers_table_on_open_and_resumes_with_added_answers(tmp_path: Path) -> None:
    _a_session_a_failure_and_a_summary_call(tmp_path / "old")
    path = tmp_path / "old" / STORE_FILE
    _downgrade_to_v3(path)
    before = _rows(path)
    assert load_run(tmp_path / "old").answers.empty  # read before any writer: no such table, no rows

    store = RunStore.open(tmp_path / "old")
    assert store.meta()["store_schema"] == STORE_SCHEMA_VERSION
    assert _rows(path) == before and store.completed_sessions() == {"p1:unguided"}
    p2 = make_session("p2")
    arm, letter = next(iter(p2.conversation.arm_letters.items()))
    answer = AnswerRecord(conversation_id="p2:unguided", arm=arm, letter=letter, instrument="use_again",
                          value="true", number=1.0)
    assert store.write_session(p2.model_copy(update={"answers": [answer]}))
    store.close()
    answers = load_run(tmp_path / "old").answers
    assert answers[["conversation_id", "arm", "instrument", "value", "number"]].values.tolist() == [
        ["p2:unguided", arm, "use_again", "true", 1.0]]
    assert answers["turn"].isna().all()


def test_a_version_2_store_is_read_reported_and_merged_without_being_changed(tmp_path: Path) -> None:
    for name, participant in (("a", "p1"), ("b", "p2"), ("c", "p3")):
        store = RunStore.create(tmp_path / name, {"config": {"name": "t"}})
        store.write_session(make_session(participant))
        store.close()
    _downgrade_to_v2(tmp_path / "a" / STORE_FILE)
    _downgrade_to_v1(tmp_path / "b" / STORE_FILE)
    _downgrade_to_v3(tmp_path / "c" / STORE_FILE)
    before = {name: _fingerprint(tmp_path / name / STORE_FILE) for name in ("a", "b", "c")}
    # a reader (load_run, the report's counts) of an old run reads it under this schema's names
    assert len(load_run(tmp_path / "a").judgements) == 4
    assert read_counts(tmp_path / "a").sessions_completed == 1
    assert run_meta(tmp_path / "a")["store_schema"] == 2  # and leaves it at its version
    # shards made by older simlabs merge; the merged store has this schema
    merged = merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    assert merged.completed_sessions() == {"p1:unguided", "p2:unguided", "p3:unguided"}
    assert merged.meta()["store_schema"] == STORE_SCHEMA_VERSION
    merged.close()
    assert load_run(tmp_path / "merged").conversations["repeat"].tolist() == [0, 0, 0]
    assert read_table(tmp_path / "merged", "llm_calls")["served_model"].isna().all()
    assert {name: _fingerprint(tmp_path / name / STORE_FILE) for name in ("a", "b", "c")} == before


def _downgrade_to_v1(path: Path) -> None:
    """Rewrite a store in the version-1 shape: the version-2 names, conversations without
    repeat/arm_positions, and source CHECKs without the no-persona control (what simlab before
    schema 2 wrote)."""
    _downgrade_to_v2(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("BEGIN")
    for name in ("participants", "conversations", "autograde"):
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
        sql = sql.replace(", 'sim_dynamic_no_persona'", "")
        sql = re.sub(r",\s*arm_positions TEXT", "", sql)
        sql = re.sub(r",\s*repeat INTEGER NOT NULL CHECK \(repeat >= 0\)", "", sql)
        sql = sql.replace(f"CREATE TABLE IF NOT EXISTS {name} (", "CREATE TABLE _v1 (", 1).replace(
            f"CREATE TABLE {name} (", "CREATE TABLE _v1 (", 1)
        assert "no_persona" not in sql and "repeat" not in sql, sql
        conn.execute(sql)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(_v1)")]
        conn.execute(f"INSERT INTO _v1 SELECT {', '.join(cols)} FROM {name}")
        conn.execute(f"DROP TABLE {name}")
        conn.execute(f"ALTER TABLE _v1 RENAME TO {name}")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'store_schema'")
    conn.execute("COMMIT")
    conn.close()


def test_a_version_1_store_is_migrated_on_open_and_keeps_every_row(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "old", {"config": {"name": "t"}})
    first = make_session("p1")
    store.write_session(first)
    store.close()
    path = tmp_path / "old" / STORE_FILE
    _downgrade_to_v1(path)
    before = _rows(path)
    assert "repeat" not in [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(conversations)")]

    store = RunStore.open(tmp_path / "old")  # migrates: the run resumes where it was
    assert store.meta()["store_schema"] == STORE_SCHEMA_VERSION
    after = {t: store._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COLUMNS}
    assert after == before
    assert store._conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # the no-persona control and repeats can be written now
    control = make_session("p1", source="sim_dynamic_no_persona")
    control = control.model_copy(update={"conversation": control.conversation.model_copy(
        update={"conversation_id": "p1:unguided:no_persona", "repeat": 1})})
    control = SessionRecord(**{**control.model_dump(), **{
        k: [{**r, "conversation_id": "p1:unguided:no_persona"} for r in control.model_dump()[k]]
        for k in ("turns", "judgements", "bdm", "llm_calls", "instruments")}})
    store.write_session(control)
    store.close()
    t = load_run(tmp_path / "old")
    assert sorted(zip(t.conversations["conversation_id"], t.conversations["repeat"])) == [
        ("p1:unguided", 0), ("p1:unguided:no_persona", 1)]
    assert set(t.participants["source"]) == {"sim_dynamic", "sim_dynamic_no_persona"}
    assert len(t.judgements) == 8


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reading_an_older_store_never_writes_to_it_and_reads_what_a_migration_would_give(
        tmp_path: Path, version: int) -> None:
    _a_session_a_failure_and_a_summary_call(tmp_path / "old")
    run = tmp_path / "old"
    path = run / STORE_FILE
    {1: _downgrade_to_v1, 2: _downgrade_to_v2, 3: _downgrade_to_v3}[version](path)
    before = _fingerprint(path)
    assert before[1:] == (0, str(version))

    tables = load_run(run)
    frames = {t: read_table(run, t) for t in COLUMNS}
    counts = read_counts(run)
    assert run_meta(run)["store_schema"] == version
    export(run, tmp_path / "csv")
    assert _fingerprint(path) == before

    # what a reader sees is what the store holds once a writer has migrated it
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / STORE_FILE).write_bytes(path.read_bytes())
    RunStore.open(tmp_path / "copy").close()
    assert run_meta(tmp_path / "copy")["store_schema"] == STORE_SCHEMA_VERSION
    for t in COLUMNS:
        pd.testing.assert_frame_equal(frames[t], read_table(tmp_path / "copy", t), obj=t)
    migrated = load_run(tmp_path / "copy")
    for name, frame in tables.items():
        pd.testing.assert_frame_equal(frame, getattr(migrated, name), obj=name)
    assert counts == read_counts(tmp_path / "copy")
    assert counts.sessions_completed == 1 and counts.sessions_failed == 1 and counts.llm_calls == len(
        make_session("p1").llm_calls) + 2


def test_a_store_of_an_unknown_version_is_refused_untouched(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "new", {"config": {"name": "t"}})
    store.write_session(make_session("p1"))
    store.close()
    path = tmp_path / "new" / STORE_FILE
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'store_schema'")
    conn.commit()
    conn.close()
    with pytest.raises(InputError, match=f"store schema 99 is not {STORE_SCHEMA_VERSION}.*untouched"):
        RunStore.open(tmp_path / "new")
    assert sqlite3.connect(path).execute("SELECT count(*) FROM judgements").fetchone()[0] == 4


async def test_writes_in_background_commit_off_the_loop_in_order_and_close_waits_for_them(tmp_path) -> None:
    import asyncio
    import threading

    from simlab.records import LLMCallRecord

    store = RunStore.create(tmp_path / "run", {"config": {}})
    threads: list[str] = []

    def write(i: int) -> int:
        threads.append(threading.current_thread().name)
        store.write_calls([LLMCallRecord(role="summary", model=f"m{i}", endpoint="e")])
        return i

    assert await asyncio.gather(*(store.in_background(write, i) for i in range(5))) == list(range(5))
    assert set(threads) == {threads[0]} and threads[0].startswith("simlab-store")
    # the loop's own connection sees each committed write, in the order they were handed over
    assert [r[0] for r in store.connection.execute("SELECT model FROM llm_calls ORDER BY rowid")] == [
        f"m{i}" for i in range(5)]
    late = asyncio.ensure_future(store.in_background(write, 9))
    await asyncio.sleep(0)
    store.close()  # waits for the write already handed over
    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:
        assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == 6
    await late
    assert not [t for t in threading.enumerate() if t.name.startswith("simlab-store")]
