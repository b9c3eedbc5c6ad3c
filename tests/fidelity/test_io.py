"""Loading, validating and normalising human tables (simlab.fidelity.io)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simlab.errors import InputError
from simlab.fidelity import load_human, load_tables, normalise, write_tables
from simlab.fidelity.io import JUDGEMENT_COLUMNS, TURN_COLUMNS
from simlab.tables import Tables

ARMS = ("GEN", "PROMPT", "DPFT", "PPFT")


def small_tables(n_participants: int = 3, seed: int = 1) -> Tables:
    """A complete human study: each participant × two domains × four arms."""
    rng = np.random.default_rng(seed)
    conversations, judgements, turns = [], [], []
    for p in range(n_participants):
        for domain in ("unguided", "values"):
            cid = f"c{p}-{domain}"
            conversations.append({"conversation_id": cid, "participant_id": f"p{p}", "source": "human",
                                  "domain": domain, "n_turns": 2})
            ranks = rng.permutation(4) + 1
            for k, arm in enumerate(ARMS):
                judgements.append({
                    "conversation_id": cid, "arm": arm, "letter": "ABCD"[k], "position": k + 1,
                    "opening_choice": bool(ranks[k] == 1), "provenance_guess": k == 0, "rank": int(ranks[k]),
                    "provenance_rank": k + 1, "rating_preference": float(rng.integers(0, 101)),
                    "rating_engagingness": 50.5, "rating_provenance": 10.0,
                    "wtp_bid": round(float(rng.uniform(0, 10)), 2),
                })
            for t in range(2):
                turns.append({"conversation_id": cid, "turn": t, "role": "user", "text": f"hello, {t}"})
                for k, arm in enumerate(ARMS):
                    turns.append({"conversation_id": cid, "turn": t, "role": "assistant", "arm": arm,
                                  "letter": "ABCD"[k], "text": "a reply, with \"quotes\"\nand a newline",
                                  "turn_rating": float(rng.integers(0, 101))})
    participants = pd.DataFrame({"participant_id": [f"p{p}" for p in range(n_participants)], "source": "human"})
    return Tables(judgements=pd.DataFrame(judgements), conversations=pd.DataFrame(conversations),
                  turns=pd.DataFrame(turns), participants=participants)


def write_judgements(tmp_path: Path, frame: pd.DataFrame, fmt: str = "csv") -> Path:
    path = tmp_path / f"judgements.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


def flat_judgements() -> pd.DataFrame:
    """Judgements that carry participant_id and domain themselves (no conversations file)."""
    tables = small_tables()
    return tables.judgements.merge(tables.conversations[["conversation_id", "participant_id", "domain"]])


# ------------------------------------------------------------------ good data


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_round_trip_every_format(tmp_path: Path, fmt: str) -> None:
    original = normalise(small_tables(), origin="test")
    write_tables(original, tmp_path / "human", fmt)
    assert (tmp_path / "human" / f"judgements.{fmt}").is_file()
    back = load_human(tmp_path / "human")
    for name in ("judgements", "conversations", "turns", "participants"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(original, name), check_dtype=True)


def test_invariant_columns_and_types() -> None:
    tables = normalise(small_tables(), origin="test")
    j = tables.judgements
    assert list(j.columns[: len(JUDGEMENT_COLUMNS)]) == list(JUDGEMENT_COLUMNS)
    for col in ("position", "rank", "provenance_rank"):
        assert str(j[col].dtype) == "Int64"
    for col in ("opening_choice", "provenance_guess"):
        assert str(j[col].dtype) == "boolean"
    for col in ("rating_preference", "rating_engagingness", "rating_provenance", "wtp_bid"):
        assert j[col].dtype == float
    assert list(tables.turns.columns[: len(TURN_COLUMNS)]) == list(TURN_COLUMNS)
    # user rows have no arm; assistant rows do
    assert tables.turns.loc[tables.turns.role == "user", "arm"].isna().all()
    assert tables.turns.loc[tables.turns.role == "assistant", "arm"].notna().all()


def test_single_judgements_file_defaults_and_builds_conversations(tmp_path: Path) -> None:
    frame = flat_judgements()[["conversation_id", "participant_id", "domain", "arm", "rank"]]
    tables = load_human(write_judgements(tmp_path, frame))
    assert (tables.judgements["source"] == "human").all()
    assert len(tables.conversations) == frame["conversation_id"].nunique()
    assert set(tables.participants["participant_id"]) == {"p0", "p1", "p2"}
    # optional columns are present, empty, and typed
    assert tables.judgements["wtp_bid"].isna().all() and tables.judgements["wtp_bid"].dtype == float
    assert str(tables.judgements["position"].dtype) == "Int64"
    assert tables.turns is None


def test_participant_source_domain_joined_from_conversations(tmp_path: Path) -> None:
    tables = small_tables()
    tables.judgements.drop(columns=[]).to_csv(tmp_path / "judgements.csv", index=False)
    tables.conversations.to_csv(tmp_path / "conversations.csv", index=False)
    loaded = load_human(tmp_path)
    j = loaded.judgements.merge(tables.conversations, on="conversation_id", suffixes=("", "_c"))
    assert (j["participant_id"] == j["participant_id_c"]).all()
    assert (j["domain"] == j["domain_c"]).all()
    assert set(j["source"]) == {"human"}


def test_numeric_ids_and_missing_spellings(tmp_path: Path) -> None:
    frame = pd.DataFrame({"conversation_id": [1, 1, 2, 2], "participant_id": [7, 7, 8, 8], "arm": ["a", "b", "a", "b"],
                          "rank": [1, 2, "NA", "NA"], "wtp_bid": ["", "3.5", "null", "10"]})
    tables = load_human(write_judgements(tmp_path, frame))
    j = tables.judgements
    assert j["conversation_id"].tolist() == ["1", "1", "2", "2"]
    assert j["participant_id"].tolist() == ["7", "7", "8", "8"]
    assert j["rank"].isna().tolist() == [False, False, True, True]  # a conversation may be unranked
    assert j["wtp_bid"].tolist()[1] == 3.5 and np.isnan(j["wtp_bid"].tolist()[0])


def test_run_like_tables_keep_their_source() -> None:
    tables = small_tables()
    sim = Tables(judgements=tables.judgements, conversations=tables.conversations.assign(source="sim_dynamic"))
    out = normalise(sim, origin="run", default_source=None)
    assert set(out.judgements["source"]) == {"sim_dynamic"}
    no_source = Tables(judgements=flat_judgements())
    with pytest.raises(InputError) as err:
        normalise(no_source, origin="run", default_source=None)
    assert err.value.field == "source"


def test_70k_rows_load(tmp_path: Path) -> None:
    """Scale: a 70k-row judgements file loads and validates (speed itself is a benchmark's job)."""
    n_conv = 17_500
    frame = pd.DataFrame({
        "conversation_id": np.repeat(np.arange(n_conv), 4).astype(str),
        "participant_id": np.repeat(np.arange(n_conv) // 4, 4).astype(str),
        "arm": np.tile(list(ARMS), n_conv),
        "rank": np.tile([2, 1, 4, 3], n_conv),
        "rating_preference": np.tile([10.0, 90.0, 0.0, 55.5], n_conv),
    })
    tables = load_human(write_judgements(tmp_path, frame))
    assert len(tables.judgements) == 70_000 and len(tables.conversations) == n_conv


# ------------------------------------------------------------------ bad data: file, row and column named


def _bad(frame: pd.DataFrame, pos: int, col: str, value: object) -> pd.DataFrame:
    frame = frame.copy()
    frame[col] = frame[col].astype(object)
    frame.iloc[pos, frame.columns.get_loc(col)] = value
    return frame


BAD_CASES = {
    # name: (edit the judgements, expected 0-based record, expected column, text in the message)
    "non_numeric_rating": (lambda f: _bad(f, 5, "rating_preference", "high"), 5, "rating_preference", "not a number"),
    "rating_above_100": (lambda f: _bad(f, 3, "rating_engagingness", 100.5), 3, "rating_engagingness", "0-100"),
    "negative_rating": (lambda f: _bad(f, 0, "rating_provenance", -1), 0, "rating_provenance", "0-100"),
    "bid_above_10": (lambda f: _bad(f, 9, "wtp_bid", 12), 9, "wtp_bid", "0-10"),
    "rank_not_permutation": (lambda f: _bad(f, 6, "rank", int(f["rank"].iloc[4])), 6, "rank", "permutation"),
    "rank_out_of_range": (lambda f: _bad(f, 4, "rank", 5), 4, "rank", "permutation"),
    "rank_not_integer": (lambda f: _bad(f, 2, "rank", 1.5), 2, "rank", "integer"),
    "rank_partly_missing": (lambda f: _bad(f, 7, "rank", None), 7, "rank", "missing"),
    "duplicated_arm": (lambda f: _bad(f, 5, "arm", f["arm"].iloc[4]), 5, "arm", "duplicated"),
    "bad_bool": (lambda f: _bad(f, 1, "opening_choice", "maybe"), 1, "opening_choice", "true/false"),
    "unknown_source": (lambda f: f.assign(source=["human"] * 10 + ["Human"] + ["human"] * (len(f) - 11)), 10, "source",
                       "spelled 'human'"),
    "missing_arm_value": (lambda f: _bad(f, 8, "arm", None), 8, "arm", "missing"),
    "position_zero": (lambda f: _bad(f, 11, "position", 0), 11, "position", "positive integer"),
}


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_values_name_file_row_and_column(tmp_path: Path, case: str, fmt: str) -> None:
    edit, pos, col, text = BAD_CASES[case]
    frame = edit(flat_judgements())
    if fmt == "parquet":
        frame = frame.astype({c: str for c in frame.columns if frame[c].dtype == object})
        frame = frame.replace({"None": None, "nan": None})
    path = write_judgements(tmp_path, frame, fmt)
    with pytest.raises(InputError) as err:
        load_human(path)
    row = pos + 2 if fmt == "csv" else pos + 1  # the spreadsheet row / the JSONL line / the record
    assert (err.value.file, err.value.row, err.value.field) == (str(path), row, col), str(err.value)
    assert text in err.value.message
    assert f"{path}:{row}" in str(err.value)


def test_missing_required_column(tmp_path: Path) -> None:
    path = write_judgements(tmp_path, flat_judgements().drop(columns=["arm"]))
    with pytest.raises(InputError) as err:
        load_human(path)
    assert (err.value.file, err.value.field) == (str(path), "arm")


def test_missing_participant_without_conversations(tmp_path: Path) -> None:
    path = write_judgements(tmp_path, flat_judgements().drop(columns=["participant_id"]))
    with pytest.raises(InputError) as err:
        load_human(path)
    assert err.value.field == "participant_id"


def test_conversation_missing_from_conversations_table(tmp_path: Path) -> None:
    tables = small_tables()
    tables.judgements.to_csv(tmp_path / "judgements.csv", index=False)
    tables.conversations.iloc[1:].to_csv(tmp_path / "conversations.csv", index=False)
    with pytest.raises(InputError) as err:
        load_human(tmp_path)
    assert err.value.file == str(tmp_path / "judgements.csv")
    assert (err.value.row, err.value.field) == (2, "conversation_id")


def test_participant_disagrees_with_conversations(tmp_path: Path) -> None:
    tables = small_tables()
    j = flat_judgements()
    j.loc[6, "participant_id"] = "someone-else"
    j.to_csv(tmp_path / "judgements.csv", index=False)
    tables.conversations.to_csv(tmp_path / "conversations.csv", index=False)
    with pytest.raises(InputError) as err:
        load_human(tmp_path)
    assert (err.value.row, err.value.field) == (8, "participant_id")


def test_bad_turn_rating_and_role(tmp_path: Path) -> None:
    tables = small_tables()
    turns = tables.turns.copy()
    turns.loc[3, "turn_rating"] = 140
    write_tables(Tables(judgements=tables.judgements, conversations=tables.conversations, turns=turns),
                 tmp_path / "a", "jsonl")
    with pytest.raises(InputError) as err:
        load_human(tmp_path / "a")
    assert (err.value.file, err.value.row, err.value.field) == (str(tmp_path / "a" / "turns.jsonl"), 4, "turn_rating")
    turns = tables.turns.copy()
    turns.loc[0, "role"] = "model"
    write_tables(Tables(judgements=tables.judgements, conversations=tables.conversations, turns=turns),
                 tmp_path / "b", "csv")
    with pytest.raises(InputError) as err:
        load_human(tmp_path / "b")
    assert (err.value.row, err.value.field) == (2, "role")


def test_malformed_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "judgements.jsonl"
    rows = [json.dumps({"conversation_id": "c", "participant_id": "p", "arm": a}) for a in "ab"]
    path.write_text(rows[0] + "\n" + '{"conversation_id": "c", "arm": \n' + rows[1] + "\n")
    with pytest.raises(InputError) as err:
        load_human(path)
    assert (err.value.file, err.value.row) == (str(path), 2)
    assert "malformed JSON" in err.value.message


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_non_utf8_file_names_the_line(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"judgements.{fmt}"
    if fmt == "csv":
        text = "conversation_id,participant_id,arm\nc,p,a\nc,p\xe9,b\n"
    else:
        text = '{"conversation_id": "c", "participant_id": "p", "arm": "a"}\n{"conversation_id": "c\xe9"}\n'
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as err:
        load_human(path)
    assert (err.value.file, err.value.row) == (str(path), 3 if fmt == "csv" else 2)
    assert "not UTF-8" in err.value.message


def test_no_judgements_in_directory(tmp_path: Path) -> None:
    small_tables().conversations.to_csv(tmp_path / "conversations.csv", index=False)
    with pytest.raises(InputError, match="no judgements"):
        load_human(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        load_human(tmp_path / "absent")


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "judgements.xlsx"
    path.write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        load_tables(path)


def test_write_tables_refuses_non_empty_and_writes_all_or_nothing(tmp_path: Path) -> None:
    tables = normalise(small_tables(), origin="test")
    out = write_tables(tables, tmp_path / "out", "parquet")
    with pytest.raises(InputError, match="not empty"):
        write_tables(tables, out, "csv")
    write_tables(tables, out, "csv", overwrite=True)
    assert sorted(p.suffix for p in out.iterdir()) == [".csv"] * 4
    # leftovers of the temporary directory never remain next to the output
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ------------------------------------------------------------------ compare: a real run store + human data


def _store_from(sim: Tables, run_dir: Path) -> None:
    """Write the rows of one simulated source through the real run store (as a run would)."""
    from simlab.records import ConversationRecord, JudgementRecord, ParticipantRecord, SessionRecord, TurnRecord
    from simlab.schema import IN_DOMAIN
    from simlab.store import RunStore

    j_cols = ["arm", "letter", "position", "opening_choice", "provenance_guess", "rank", "provenance_rank",
              "rating_preference", "rating_engagingness", "rating_provenance", "wtp_bid"]
    turns_by = dict(tuple(sim.turns.groupby("conversation_id")))
    with RunStore.create(run_dir, {"config": {"seed": 0}, "seed": 0}) as store:
        for conv in sim.conversations.itertuples():
            j = sim.judgements[sim.judgements["conversation_id"] == conv.conversation_id]
            rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in j[j_cols].to_dict("records")]
            t = turns_by[conv.conversation_id]
            store.write_session(SessionRecord(
                participant=ParticipantRecord(participant_id=conv.participant_id, source=conv.source),
                conversation=ConversationRecord(
                    conversation_id=conv.conversation_id, participant_id=conv.participant_id, source=conv.source,
                    domain=conv.domain, in_domain=conv.domain in IN_DOMAIN,
                    arm_letters=dict(zip(j["arm"], j["letter"], strict=True)),
                    n_turns=int((t["role"] == "user").sum())),
                judgements=[JudgementRecord(conversation_id=conv.conversation_id, **r) for r in rows],
                turns=[TurnRecord(conversation_id=conv.conversation_id,
                                  **{k: (None if pd.isna(v) else v) for k, v in r.items() if k != "conversation_id"})
                       for r in t[["conversation_id", "turn", "role", "arm", "letter", "text", "turn_rating"]]
                       .to_dict("records")],
            ))


def test_load_run_output_normalises(tmp_path: Path) -> None:
    from simlab.fidelity.synthetic import make_synthetic
    from simlab.store import load_run

    synthetic = make_synthetic(n_participants=6, seed=2)
    sim = synthetic.for_source("sim_dynamic")
    _store_from(sim, tmp_path / "run")
    run = normalise(load_run(tmp_path / "run"), origin=str(tmp_path / "run"), default_source=None)
    assert run.sources == ["sim_dynamic"]
    assert list(run.judgements.columns[: len(JUDGEMENT_COLUMNS)]) == list(JUDGEMENT_COLUMNS)
    assert len(run.judgements) == len(sim.judgements)
    expected = normalise(sim, origin="sim").judgements.sort_values(["conversation_id", "arm"]).reset_index(drop=True)
    got = run.judgements.sort_values(["conversation_id", "arm"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[list(JUDGEMENT_COLUMNS)], expected[list(JUDGEMENT_COLUMNS)], check_exact=False)


def test_compare_checks_its_inputs() -> None:
    from simlab.fidelity import compare

    human = normalise(small_tables(), origin="human")
    sim = Tables(judgements=human.judgements.assign(source="sim_dynamic"))
    with pytest.raises(InputError, match="appears in tables #1 and #2") as err:
        compare(human, sim)
    assert err.value.field == "conversation_id"
    with pytest.raises(InputError, match="no human data"):
        compare(Tables(judgements=flat_judgements().assign(source="sim_dynamic")))
    with pytest.raises(InputError, match="use compare"):
        from simlab.fidelity import analyze

        analyze(Tables(judgements=pd.concat([flat_judgements().assign(source="human"), flat_judgements().assign(
            source="sim_dynamic", conversation_id=lambda f: "s" + f["conversation_id"])])))


def test_compare_run_with_human(tmp_path: Path) -> None:
    from simlab.fidelity import compare
    from simlab.fidelity.synthetic import make_synthetic
    from simlab.store import load_run

    synthetic = make_synthetic(n_participants=10, seed=4)
    _store_from(synthetic.for_source("sim_dynamic"), tmp_path / "run")
    write_tables(synthetic.for_source("human"), tmp_path / "human", "csv")
    result = compare(load_run(tmp_path / "run"), load_human(tmp_path / "human"), n_boot=5, seed=1)
    assert sorted(result.sources) == ["human", "sim_dynamic"]
    assert result.n_boot == 5
    assert "hierarchy" in result.analyses


def test_a_header_only_human_file_is_refused_not_analysed(tmp_path):
    from simlab.errors import InputError
    from simlab.fidelity import load_human

    path = tmp_path / "judgements.csv"
    path.write_text("participant_id,conversation_id,arm,rank\n")
    with pytest.raises(InputError, match="no rows") as info:
        load_human(path)
    assert info.value.file == str(path)
    with pytest.raises(InputError, match="no rows"):
        load_human(tmp_path)  # the same file found in a directory
