"""The one schema (simlab/records.py): the store's SQL, column lists and dtypes and the human-data
loader's types and bounds are derived from the records, so a bound cannot differ between them."""

from __future__ import annotations

import math
import sqlite3

import pytest

from simlab.config import parse_config
from simlab.fidelity import io as human_io
from simlab.records import REQUIRED, TABLES, ArmRecord, JudgementRecord, columns_of, float_bounds
from simlab.schema import WTP_CAP
from simlab.store import COLUMNS, RunStore, load_run, read_table


def test_every_stored_table_has_the_records_columns_in_order(tmp_path):
    with RunStore.create(tmp_path / "run", {"config": {}}) as store:
        conn = store._conn
        for name, table in TABLES.items():
            stored = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
            assert stored == ([table.rowid] if table.rowid else []) + list(table.names), name
            assert COLUMNS[name] == table.names


def test_the_sql_checks_are_the_records_bounds(tmp_path):
    """Every bounded column refuses, in SQLite itself, a value just outside the record's bound."""
    with RunStore.create(tmp_path / "run", {"config": {}}) as store:
        conn = store._conn
        conn.execute("PRAGMA foreign_keys = OFF")  # one column at a time, without parent rows
        tried = 0
        for name, table in TABLES.items():
            for col in table.columns:
                if col.low is None and col.high is None and not col.choices:
                    continue
                good = {c.name: _valid(c) for c in table.columns}
                for bad in _outside(col):
                    row = {**good, col.name: bad}
                    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                        conn.execute(f"INSERT INTO {name} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                                     list(row.values()))
                    tried += 1
        assert tried > 30


def _valid(col):
    if col.choices:
        return col.choices[0]
    if col.kind in ("int", "bool"):
        return int(col.low or 0)
    if col.kind == "float":
        return col.low or 0.0
    return "x"


def _outside(col):
    if col.choices:
        return ["not-a-choice"]
    out = []
    if col.low is not None:
        out.append(col.low - (1 if col.kind == "int" else 0.01))
    if col.high is not None:
        out.append(col.high + (1 if col.kind == "int" else 0.01))
    return out


def test_the_bid_cap_is_one_number_everywhere():
    wtp = {c.name: (c.low, c.high) for c in columns_of(JudgementRecord)}["wtp_bid"]
    assert wtp == (0.0, WTP_CAP) == human_io._FLOAT_BOUNDS["wtp_bid"] == float_bounds()["bid"]
    from simlab.config import default_config

    data = default_config().public_dict()
    data["protocol"]["wtp_max"] = WTP_CAP + 1
    with pytest.raises(Exception, match="wtp_max"):
        parse_config(data)


def test_the_loader_reads_the_records_types():
    assert set(human_io._INT_COLUMNS) >= {"position", "rank", "provenance_rank", "turn", "n_turns", "rater_run"}
    assert set(human_io._BOOL_COLUMNS) >= {"opening_choice", "provenance_guess", "gen_error", "won"}
    assert human_io._FLOAT_BOUNDS["turn_rating"] == (0.0, 100.0) and math.isinf(human_io._FLOAT_BOUNDS["score"][1])
    for name, required in REQUIRED.items():
        assert set(required) <= set(TABLES[name].names), name


def test_arms_are_stored_in_config_order_and_a_store_without_them_still_reads(tmp_path):
    with RunStore.create(tmp_path / "run", {"config": {}}) as store:
        store.write_arms([ArmRecord(arm="GEN", description="generic", config_order=0),
                          ArmRecord(arm="DPFT", description="tuned", config_order=1)])
        store.write_arms([ArmRecord(arm="GEN", description="changed?", config_order=5)])  # a resume: kept as is
    arms = load_run(tmp_path / "run").arms
    assert list(arms["arm"]) == ["GEN", "DPFT"] and list(arms["config_order"]) == [0, 1]
    assert arms["description"].iloc[0] == "generic"
    with sqlite3.connect(tmp_path / "run" / "store.sqlite") as db:
        db.execute("DROP TABLE arms")  # as a store made before the table existed
    assert read_table(tmp_path / "run", "arms").empty and load_run(tmp_path / "run").arms.empty
