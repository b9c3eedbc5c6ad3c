"""Importers: Dialogue-Eval on the real files, PRISM on small files written here."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simlab.errors import InputError
from simlab.fidelity import import_dialogue_eval, import_prism, load_human
from simlab.fidelity.importers.dialogue_eval import REVERSED_SLIDERS, SLIDERS, round_name
from simlab.fidelity.importers.prism import rescale_score
from simlab.tables import Tables

BOTS = {"biencoder", "polyencoder", "kvmemnn", "seq2seq", "lan_model", "qc"}
ROUNDS = {"FreeTopicRound1.csv": 305, "FreeTopicRound2.csv": 296, "IceBreaker.csv": 290}


def _raw_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _answer(row: dict) -> dict:
    return json.loads(row["Answer.taskAnswers"])[0]


# ------------------------------------------------------------------ Dialogue-Eval, real files


def test_dialogue_eval_counts(dialogue_eval_dir: Path, dialogue_eval_tables: Tables) -> None:
    conv = dialogue_eval_tables.conversations
    for name, n_rows in ROUNDS.items():
        rows = _raw_rows(dialogue_eval_dir / name)
        assert len(rows) == n_rows
        # skipped, counted independently of the importer: no chats, or a bot shown twice
        empty = sum("task0" not in _answer(r) for r in rows)
        repeated = sum("task0" in _answer(r) and len({_answer(r)[f"task{i}"] for i in range(6)}) < 6 for r in rows)
        assert (conv["domain"] == round_name(Path(name))).sum() == n_rows - empty - repeated
    assert conv["conversation_id"].is_unique
    assert set(conv["domain"]) == {"free_topic_round1", "free_topic_round2", "ice_breaker"}


def test_dialogue_eval_arms_positions_ranks(dialogue_eval_tables: Tables) -> None:
    j = dialogue_eval_tables.judgements
    per_conv = j.groupby("conversation_id")
    assert (per_conv.size() == 6).all()
    assert (per_conv["arm"].nunique() == 6).all()
    assert set(j["arm"]) == BOTS
    assert (per_conv["position"].apply(sorted).map(tuple) == (1, 2, 3, 4, 5, 6)).all()
    assert (per_conv["rank"].apply(sorted).map(tuple) == (1, 2, 3, 4, 5, 6)).all()
    assert (j["letter"] == j["position"].map(dict(enumerate("ABCDEF", start=1)))).all()
    # rank 1 holds the highest preference; ranks fall as ratings fall
    best = j[j["rank"] == 1].set_index("conversation_id")["rating_preference"]
    assert (best.sort_index() == per_conv["rating_preference"].max().sort_index()).all()
    by_rank = j.sort_values(["conversation_id", "rank"])
    assert (by_rank.groupby("conversation_id")["rating_preference"].diff().dropna() <= 0).all()
    assert j["rating_preference"].between(0, 100).all()
    assert (j["source"] == "human").all()


def test_dialogue_eval_preference_formula(dialogue_eval_dir: Path, dialogue_eval_tables: Tables) -> None:
    row = _raw_rows(dialogue_eval_dir / "IceBreaker.csv")[0]
    answer = _answer(row)
    j = dialogue_eval_tables.judgements.set_index(["conversation_id", "arm"])
    for i in range(6):
        raw = [float(x) for x in answer[f"score{i}"].split("#") if x]
        expected = np.mean([100 - v if s in REVERSED_SLIDERS else v for s, v in zip(SLIDERS, raw, strict=True)])
        got = j.loc[(row["HITId"], answer[f"task{i}"])]
        assert got["rating_preference"] == pytest.approx(expected)
        assert [got[f"score_{s}"] for s in SLIDERS] == raw
        assert got["position"] == i + 1


def test_dialogue_eval_assignments_and_ties(dialogue_eval_tables: Tables) -> None:
    conv = dialogue_eval_tables.conversations
    # FreeTopicRound2 has HITs with two assignments: each is its own conversation
    several = conv[conv["conversation_id"].str.contains(":")]
    assert len(several) > 0 and (several["conversation_id"] == several["hit_id"] + ":" + several["assignment_id"]).all()
    # ties go to the earlier position
    j = dialogue_eval_tables.judgements
    tied = j[j.duplicated(["conversation_id", "rating_preference"], keep=False)]
    assert len(tied) > 0
    for _, group in tied.groupby(["conversation_id", "rating_preference"]):
        assert group.sort_values("position")["rank"].is_monotonic_increasing


def test_dialogue_eval_repeated_worker_bot_pairs(dialogue_eval_tables: Tables) -> None:
    j = dialogue_eval_tables.judgements
    pairs = j.groupby(["participant_id", "arm"])["conversation_id"].nunique()
    assert (pairs >= 2).sum() > 500  # test–retest material: the same worker rated the same bot twice
    assert j["participant_id"].nunique() < j["conversation_id"].nunique()


def test_dialogue_eval_turns(dialogue_eval_tables: Tables) -> None:
    t = dialogue_eval_tables.turns
    assert set(t["role"]) == {"user", "assistant"}
    assert t["arm"].notna().all() and t["letter"].notna().all()
    openings = t[(t["turn"] == 0) & (t["role"] == "user")]
    # one opening user message per (conversation, arm)
    assert len(openings) == len(dialogue_eval_tables.judgements)
    assert (openings["text"].str.len() > 0).all()
    assert t["turn_rating"].isna().all()


def test_dialogue_eval_hierarchy_is_visible(dialogue_eval_tables: Tables) -> None:
    """The published system order shows in mean preference in both free-topic rounds."""
    j = dialogue_eval_tables.judgements
    for domain in ("free_topic_round1", "free_topic_round2"):
        means = j[j["domain"] == domain].groupby("arm")["rating_preference"].mean()
        assert list(means.sort_values(ascending=False).index) == [
            "biencoder", "polyencoder", "kvmemnn", "seq2seq", "lan_model", "qc"]


def test_dialogue_eval_on_disk_round_trip(dialogue_eval_on_disk: Path, dialogue_eval_tables: Tables) -> None:
    back = load_human(dialogue_eval_on_disk)
    pd.testing.assert_frame_equal(back.judgements, dialogue_eval_tables.judgements)
    pd.testing.assert_frame_equal(back.turns, dialogue_eval_tables.turns)


# ------------------------------------------------------------------ Dialogue-Eval, bad files


def _hit(**answer_overrides: object) -> dict:
    answer: dict = {}
    for i, bot in enumerate(sorted(BOTS)):
        answer.update({f"task{i}": bot, f"score{i}": "50#60#70#80#90#10#20#", f"dialogue{i}": "u: hi###b: hello###"})
    answer.update(answer_overrides)
    return {"HITId": "H1", "WorkerId": "W1", "AssignmentId": "A1", "AssignmentStatus": "Submitted",
            "Answer.taskAnswers": json.dumps([answer])}


def _write_hits(path: Path, hits: list[dict]) -> Path:
    pd.DataFrame(hits).to_csv(path, index=False)
    return path


def test_dialogue_eval_small_file(tmp_path: Path) -> None:
    second = _hit()
    second.update(HITId="H2", WorkerId="W2", AssignmentId="A2")
    path = _write_hits(tmp_path / "FreeTopicRound1.csv", [_hit(), second])
    tables = import_dialogue_eval(path)
    assert len(tables.conversations) == 2 and len(tables.judgements) == 12
    # robotic 50 and repetitive 10 reversed: (50+60+70+80+90+90+20)/7
    assert tables.judgements["rating_preference"].iloc[0] == pytest.approx(460 / 7)
    assert tables.judgements.groupby("conversation_id")["rank"].apply(list).iloc[0] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("hit", "field", "text"),
    [
        ({"Answer.taskAnswers": '[{"task0": "qc", '}, "Answer.taskAnswers", "malformed JSON"),
        ({"Answer.taskAnswers": json.dumps({"a": 1}) + "x"}, "Answer.taskAnswers", "malformed JSON"),
        ({"Answer.taskAnswers": json.dumps([1, 2])}, "Answer.taskAnswers", "one object"),
        ("score3", "Answer.taskAnswers.score3", "missing"),
        ({"score2": "1#2#3#"}, "Answer.taskAnswers.score2", "expected 7"),
        ({"score1": "1#2#x#4#5#6#7#"}, "Answer.taskAnswers.score1", "non-numeric"),
        ({"score0": "1#2#300#4#5#6#7#"}, "Answer.taskAnswers.score0", "0-100"),
        ({"dialogue4": "hello###b: hi###"}, "Answer.taskAnswers.dialogue4", "'u:' or 'b:'"),
        ({"WorkerId": ""}, "WorkerId", "missing"),
    ],
)
def test_dialogue_eval_bad_rows(tmp_path: Path, hit: object, field: str, text: str) -> None:
    good = _hit()
    good.update(HITId="H0", AssignmentId="A0")
    if isinstance(hit, str):  # a field dropped from the answer
        bad = _hit()
        answer = json.loads(bad["Answer.taskAnswers"])[0]
        del answer[hit]
        bad["Answer.taskAnswers"] = json.dumps([answer])
    elif "Answer.taskAnswers" in hit or "WorkerId" in hit:
        bad = {**_hit(), **hit}
    else:
        bad = _hit(**hit)
    path = _write_hits(tmp_path / "IceBreaker.csv", [good, bad])
    with pytest.raises(InputError) as err:
        import_dialogue_eval(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 3, field), str(err.value)
    assert text in err.value.message


def test_dialogue_eval_missing_column_and_skips(tmp_path: Path) -> None:
    path = _write_hits(tmp_path / "x.csv", [{k: v for k, v in _hit().items() if k != "HITId"}])
    with pytest.raises(InputError) as err:
        import_dialogue_eval(path)
    assert err.value.field == "HITId"
    feedback_only = {**_hit(), "HITId": "H9", "Answer.taskAnswers": json.dumps([{"feedback": "nice"}])}
    path = _write_hits(tmp_path / "y.csv", [_hit(), feedback_only])
    with pytest.warns(UserWarning, match=r"skipped 1 row\(s\) whose answer holds no chats: \[3\]"):
        tables = import_dialogue_eval(path)
    assert len(tables.conversations) == 1


# ------------------------------------------------------------------ PRISM, small files in the public format


def _model(turn: int, name: str, score: int, chosen: bool, wid: int, text: str = "reply") -> dict:
    return {"turn": turn, "role": "model", "content": text, "model_provider": "x", "model_name": name,
            "score": score, "if_chosen": chosen, "within_turn_id": wid}


def _user(turn: int, text: str) -> dict:
    return {"turn": turn, "role": "user", "content": text, "model_provider": None, "model_name": None,
            "score": None, "if_chosen": None, "within_turn_id": None}


def prism_conversations() -> list[dict]:
    return [
        {"conversation_id": "c0", "user_id": "user0", "conversation_type": "unguided",
         "opening_prompt": "What should I cook tonight?", "open_feedback": "liked the first",
         "conversation_history": [
             _user(0, "What should I cook tonight?"),
             _model(0, "gpt-4", 90, True, 2), _model(0, "llama-2-7b", 40, False, 0),
             _model(0, "claude-2", 40, False, 1), _model(0, "zephyr", 1, False, 3),
             _user(1, "Something with rice?"),
             _model(1, "gpt-4", 100, True, 0), _model(1, "gpt-4", 70, False, 1),
             _user(2, "Thanks"),
             _model(2, "gpt-4", 55, False, 0), _model(2, "gpt-4", 60, True, 1),
         ]},
        {"conversation_id": "c1", "user_id": "user1", "conversation_type": "values guided",
         "opening_prompt": "Is it ok to lie?",
         "conversation_history": [
             _user(0, "Is it ok to lie?"),
             _model(0, "mistral", 20, False, 0), _model(0, "gpt-4", 70, True, 1),
             _user(1, "Why?"), _model(1, "gpt-4", 80, True, 0), _model(1, "gpt-4", 81, False, 1),
         ]},
        {"conversation_id": "c2", "user_id": "user0", "conversation_type": "controversy guided",
         "opening_prompt": "Abortion?",
         "conversation_history": [_user(0, "Abortion?"), _model(0, "a", 50, True, 0), _model(0, "b", 50, False, 1)]},
    ]


def prism_survey() -> list[dict]:
    return [
        {"user_id": "user0", "age": "25-34 years old", "gender": "Female",
         "location": {"birth_country": "UK", "reside_country": "UK"},
         "stated_prefs": {"values": 80, "fluency": 50}, "languages": ["en", "fr"], "self_description": "I cook."},
        {"user_id": "user2", "age": "65+ years old", "gender": "Male", "location": {"birth_country": "US"}},
    ]


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_prism_import(tmp_path: Path) -> None:
    conv_path = _jsonl(tmp_path / "conversations.jsonl", prism_conversations())
    survey_path = _jsonl(tmp_path / "survey.jsonl", prism_survey())
    tables = import_prism(conv_path, survey_path)
    c = tables.conversations.set_index("conversation_id")
    assert c["domain"].to_dict() == {"c0": "unguided", "c1": "values", "c2": "controversy"}
    assert c["participant_id"].to_dict() == {"c0": "user0", "c1": "user1", "c2": "user0"}
    assert c["n_turns"].tolist() == [3, 2, 1]

    j = tables.judgements.set_index(["conversation_id", "arm"])
    assert len(j) == 8  # opening turn only
    assert j.loc[("c0", "gpt-4"), "rating_preference"] == pytest.approx(rescale_score(90))
    assert j.loc[("c0", "zephyr"), "rating_preference"] == 0.0
    assert rescale_score(100) == 100.0
    assert j["opening_choice"].sum() == 3
    # ranks by score; the tie between llama-2-7b and claude-2 broken by within_turn_id
    assert j.loc["c0", "rank"].to_dict() == {"gpt-4": 1, "llama-2-7b": 2, "claude-2": 3, "zephyr": 4}
    # a tie with the chosen response: the chosen one ranks first
    assert j.loc["c2", "rank"].to_dict() == {"a": 1, "b": 2}
    assert j["position"].isna().all() and j["letter"].isna().all()

    t = tables.turns
    later = t[(t["conversation_id"] == "c0") & (t["turn"] == 2) & (t["role"] == "assistant")]
    assert later["turn_rating"].tolist() == pytest.approx([rescale_score(55), rescale_score(60)])
    assert later["arm"].tolist() == ["gpt-4", "gpt-4"]
    assert later["chosen"].tolist() == [False, True]
    assert t.loc[t["role"] == "user", "arm"].isna().all()
    assert t.loc[(t["turn"] == 0) & (t["role"] == "user"), "text"].tolist()[0] == "What should I cook tonight?"

    p = tables.participants.set_index("participant_id")
    assert set(p.index) == {"user0", "user1", "user2"}
    assert p.loc["user0", "location_birth_country"] == "UK"
    assert p.loc["user0", "stated_prefs_values"] == 80
    assert json.loads(p.loc["user0", "languages"]) == ["en", "fr"]
    assert (p["source"] == "human").all()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_prism_on_disk_round_trip(tmp_path: Path, fmt: str) -> None:
    from simlab.fidelity import write_tables

    tables = import_prism(_jsonl(tmp_path / "conversations.jsonl", prism_conversations()),
                          _jsonl(tmp_path / "survey.jsonl", prism_survey()))
    back = load_human(write_tables(tables, tmp_path / "out", fmt))
    pd.testing.assert_frame_equal(back.judgements, tables.judgements)
    cols = list(tables.turns.columns)[:7]
    pd.testing.assert_frame_equal(back.turns[cols], tables.turns[cols])


def _edit(k: int, **changes: object) -> list[dict]:
    records = prism_conversations()
    records[1]["conversation_history"][k].update(changes)
    return records


@pytest.mark.parametrize(
    ("records", "field", "text"),
    [
        (_edit(1, score=0), "conversation_history[1].score", "1-100"),
        (_edit(1, score="high"), "conversation_history[1].score", "1-100"),
        (_edit(2, model_name=None), "conversation_history[2].model_name", "missing"),
        (_edit(2, model_name="mistral"), "conversation_history[2].model_name", "twice"),
        (_edit(1, if_chosen="yes"), "conversation_history[1].if_chosen", "true/false"),
        (_edit(3, role="system"), "conversation_history[3].role", "'user' or 'model'"),
        (_edit(4, turn=-1), "conversation_history[4].turn", "turn number"),
        ([*prism_conversations()[:1], {**prism_conversations()[1], "conversation_type": "guided"}],
         "conversation_type", "not one of"),
        ([*prism_conversations()[:1], {**prism_conversations()[1], "user_id": None}], "user_id", "missing"),
        ([*prism_conversations()[:1], {**prism_conversations()[1], "conversation_history": []}],
         "conversation_history", "non-empty"),
        ([*prism_conversations()[:1], {**prism_conversations()[1], "conversation_id": "c0"}], "conversation_id",
         "duplicated"),
    ],
)
def test_prism_bad_records(tmp_path: Path, records: list[dict], field: str, text: str) -> None:
    path = _jsonl(tmp_path / "conversations.jsonl", records)
    with pytest.raises(InputError) as err:
        import_prism(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 2, field), str(err.value)
    assert text in err.value.message


def test_prism_malformed_line_and_survey(tmp_path: Path) -> None:
    path = tmp_path / "conversations.jsonl"
    path.write_text(json.dumps(prism_conversations()[0]) + "\n" + "{not json\n")
    with pytest.raises(InputError) as err:
        import_prism(path)
    assert (err.value.row, err.value.message.startswith("malformed JSON")) == (2, True)
    conv = _jsonl(tmp_path / "c.jsonl", prism_conversations())
    survey = _jsonl(tmp_path / "s.jsonl", [*prism_survey(), {"user_id": "user0"}])
    with pytest.raises(InputError) as err:
        import_prism(conv, survey)
    assert (err.value.file, err.value.row, err.value.field) == (str(survey), 3, "user_id")


def test_importer_warnings_are_not_errors(dialogue_eval_dir: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import_dialogue_eval(dialogue_eval_dir / "FreeTopicRound1.csv")
    assert any("skipped 1 row(s)" in str(w.message) for w in caught)


def test_derived_ranks_are_marked(dialogue_eval_tables: Tables, tmp_path: Path) -> None:
    assert dialogue_eval_tables.judgements["rank_derived"].all()
    assert str(dialogue_eval_tables.judgements["rank_derived"].dtype) == "boolean"
    tables = import_prism(_jsonl(tmp_path / "conversations.jsonl", prism_conversations()))
    assert tables.judgements["rank_derived"].all()
