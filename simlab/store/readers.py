"""Reading a run store: its tables as typed pandas frames (``load_run``, ``read_table``), its
metadata and counts, and export to files. Every reader opens the file read-only and never migrates;
a store written by an older simlab is read through views under this schema's names."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from simlab._files import folder_atomic
from simlab.errors import InputError
from simlab.store.connection import closing, connect, store_path
from simlab.store.damage import DamagedStoreError, check_header, is_damage, naming
from simlab.store.failures import FailureGroup, group_failures
from simlab.store.migration import OLDER_VERSIONS, legacy_views
from simlab.store.schema import COLUMNS, STORE_SCHEMA_VERSION, typed
from simlab.tables import JUDGEMENT_COLUMNS, Tables, spreadsheet_safe_frame

__all__ = [
    "CallCount",
    "StoreCounts",
    "cost_frame",
    "export",
    "load_run",
    "open_readonly",
    "read_counts",
    "read_table",
    "run_meta",
    "store_counts",
]


class CallCount(BaseModel):
    """Model calls and tokens of one (role, arm) pair."""

    model_config = ConfigDict(extra="forbid")
    role: str
    arm: str | None
    calls: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0
    """USD of these calls (those with a cost: see ``uncosted``)."""
    uncosted: int = 0
    """Calls with no cost kept (stored before costs were)."""


class StoreCounts(BaseModel):
    """What a run store holds: the end-of-run summary's numbers."""

    model_config = ConfigDict(extra="forbid")
    sessions_completed: int
    sessions_failed: int
    failure_groups: list[FailureGroup] = []
    """Sessions still failed, grouped by cause (their latest failure)."""
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    by_role_arm: list[CallCount]
    rows: dict[str, int]
    gen_errors_by_arm: dict[str, tuple[int, int]] = {}
    """arm → (replies that are error notices, replies) over the stored sessions."""
    cost_usd: float = 0.0
    """USD of every stored call (completed and failed sessions, summaries, grades)."""
    session_cost_usd: tuple[float, float] | None = None
    """(mean, max) USD of a completed session's own calls; None with no completed session."""
    unpriced: dict[str, int] = {}
    """``<endpoint>/<model>`` → stored calls priced at $0 because no price was known."""
    uncosted_calls: int = 0
    """Stored calls with no cost (written before costs were kept)."""


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the store of ``path`` (the run directory or its .sqlite file).

    Nothing done through it can change the file. A store of an older schema version is shown under
    this version's table and column names by temporary views (``simlab.store.migration``); the file
    keeps its version until a writer (a resume of the run) migrates it.
    """
    p = store_path(path)
    if not p.exists():
        raise InputError("no run store here", file=p)
    problem = check_header(p)  # a truncated or overwritten file: said before SQLite reads it
    if problem is not None:
        raise DamagedStoreError(p, problem)
    conn = connect(p, readonly=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone()
        found = None if row is None else json.loads(row[0])
    except (sqlite3.DatabaseError, ValueError) as exc:
        if is_damage(exc):
            conn.close()
            raise DamagedStoreError(p, str(exc)) from None
        return conn  # not a store: the caller says so in its own words
    if isinstance(found, int) and found in OLDER_VERSIONS:
        try:
            legacy_views(conn, found)
        except sqlite3.Error as exc:
            conn.close()
            raise InputError(f"store schema {found} (an older simlab's) cannot be read as schema "
                             f"{STORE_SCHEMA_VERSION} ({exc}); nothing was changed. Resuming the run with the "
                             "command that made it migrates the store", file=p) from exc
    return conn


_ORDER = {
    "participants": "participant_id, source",
    "conversations": "conversation_id",
    "turns": "conversation_id, turn, role DESC, letter",
    "bdm": "conversation_id",
    "llm_calls": "call_id",
    "instruments": "rowid",
    "answers": "conversation_id, instrument, turn, letter",
    "autograde": "unit_id, mode, dimension, rater_run",
    "failures": "failure_id",
    "sessions": "completed_at, conversation_id",
    "arms": "config_order",
}


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """One stored table as a typed DataFrame (also ``sessions``, ``instruments``, ``failures``)."""
    if table not in COLUMNS:
        raise InputError(f"unknown table {table!r}; stored tables: {', '.join(COLUMNS)}", field="table")
    with naming(path), closing(open_readonly(path)) as conn:
        cols = ", ".join(COLUMNS[table])
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return typed(pd.DataFrame(columns=list(COLUMNS[table])))  # a store made before the table existed
        return typed(pd.read_sql_query(f"SELECT {cols} FROM {table} ORDER BY {_ORDER.get(table, 'rowid')}", conn))


def load_run(path: str | Path) -> Tables:
    """A run's records as ``Tables`` (``path``: the run directory or its store.sqlite).

    Judgements carry participant_id, source and domain from their conversation;
    ``arm_letters`` is a JSON string; booleans are pandas ``boolean``, counts ``Int64``.
    """
    with naming(path), closing(open_readonly(path)) as conn:
        cols = ", ".join(f"c.{c}" if c in ("participant_id", "source", "domain") else f"j.{c}" for c in JUDGEMENT_COLUMNS)
        judgements = typed(
            pd.read_sql_query(
                f"SELECT {cols} FROM judgements j JOIN conversations c USING (conversation_id)"
                " ORDER BY j.conversation_id, j.position",
                conn,
            )
        )
    frames = {name: read_table(path, name)
              for name in ("participants", "conversations", "turns", "bdm", "autograde", "llm_calls", "arms", "answers")}
    return Tables(judgements=judgements, **frames)


def store_counts(conn: sqlite3.Connection) -> StoreCounts:
    """Sessions completed/failed, model calls and tokens per (role, arm), rows per table, of the
    store open on ``conn``."""
    by = [
        CallCount(role=r[0], arm=r[1], calls=r[2], errors=r[3], prompt_tokens=r[4], completion_tokens=r[5],
                  cost_usd=r[6], uncosted=r[7])
        for r in conn.execute(
            "SELECT role, arm, count(*), sum(status != 'ok'), sum(prompt_tokens), sum(completion_tokens),"
            " total(cost_usd), sum(cost_usd IS NULL) FROM llm_calls GROUP BY role, arm ORDER BY role, arm"
        )
    ]
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in present else 0 for t in COLUMNS}
    latest = conn.execute(
        "SELECT conversation_id, error_type, reason FROM failures WHERE failure_id IN ("
        " SELECT max(failure_id) FROM failures WHERE conversation_id NOT IN (SELECT conversation_id FROM sessions)"
        " GROUP BY conversation_id) ORDER BY conversation_id"
    ).fetchall()
    gen = {str(r[0]): (int(r[1] or 0), int(r[2])) for r in conn.execute(
        "SELECT arm, sum(gen_error), count(*) FROM turns WHERE role = 'assistant' AND arm IS NOT NULL GROUP BY arm")}
    per_session = [float(r[0]) for r in conn.execute(
        "SELECT total(cost_usd) FROM llm_calls WHERE recorded_with IN (SELECT conversation_id FROM sessions)"
        " GROUP BY recorded_with")]
    unpriced = {f"{r[0]}/{r[1]}": int(r[2]) for r in conn.execute(
        "SELECT endpoint, model, count(*) FROM llm_calls WHERE price_source = 'unpriced'"
        " GROUP BY endpoint, model ORDER BY endpoint, model")}
    return StoreCounts(
        cost_usd=sum(c.cost_usd for c in by),
        session_cost_usd=(sum(per_session) / len(per_session), max(per_session)) if per_session else None,
        unpriced=unpriced,
        uncosted_calls=sum(c.uncosted for c in by),
        gen_errors_by_arm=gen,
        sessions_completed=rows["sessions"],
        sessions_failed=len(latest),
        failure_groups=group_failures(latest),
        llm_calls=sum(c.calls for c in by),
        prompt_tokens=sum(c.prompt_tokens for c in by),
        completion_tokens=sum(c.completion_tokens for c in by),
        by_role_arm=by,
        rows=rows,
    )


def read_counts(path: str | Path) -> StoreCounts:
    """``RunStore.counts`` of a run, read through a read-only connection (a report changes nothing)."""
    with naming(path), closing(open_readonly(path)) as conn:
        return store_counts(conn)


def run_meta(path: str | Path) -> dict[str, Any]:
    """The run's metadata: resolved config, prompt hashes, models, seed, version, created_at, command."""
    with naming(path), closing(open_readonly(path)) as conn:
        try:
            rows = list(conn.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise DamagedStoreError(path, str(exc)) from None
            # a zero-byte, truncated, overwritten or foreign file where a store should be
            raise InputError(f"not a readable simlab run store ({exc}); nothing was changed",
                             file=store_path(path)) from None
    meta: dict[str, Any] = {}
    for key, value in rows:
        try:
            meta[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InputError(f"the stored value is not valid JSON ({exc}); the store is damaged, nothing was changed",
                             file=store_path(path), field=f"meta.{key}") from None
    if "config" not in meta:
        raise InputError("the run store has no stored config (not made by simlab run?)", file=store_path(path),
                         field="meta.config")
    return meta


def export(path: str | Path, out_dir: str | Path, fmt: Literal["csv", "parquet", "jsonl"] = "csv") -> Path:
    """Write a run's tables to ``out_dir`` (one file per table, plus instruments, failures and meta.json).

    CSV is for spreadsheets: text cells that would run as formulas (``=``, ``+``, ``-``, ``@``…)
    get a leading apostrophe. Parquet and JSONL keep every value as stored. The files are written
    to a temporary folder and moved in when all are there, ``meta.json`` last: an export killed
    half-way leaves the old one (or none)."""
    if fmt not in ("csv", "parquet", "jsonl"):
        raise InputError(f"unknown export format {fmt!r}; use csv, parquet or jsonl", field="fmt")
    run = load_run(path)  # a store that cannot be read stops the export before anything is made
    with folder_atomic(out_dir, last="meta.json") as out:
        run.write(out, fmt, spreadsheet_safe=True)
        for name in ("instruments", "failures"):
            frame, target = read_table(path, name), out / f"{name}.{fmt}"
            if fmt == "csv":
                spreadsheet_safe_frame(frame).to_csv(target, index=False)
            elif fmt == "jsonl":
                frame.to_json(target, orient="records", lines=True)
            else:
                frame.to_parquet(target, index=False)
        frame, target = cost_frame(path), out / f"costs.{fmt}"
        if fmt == "csv":
            frame.to_csv(target, index=False)
        elif fmt == "jsonl":
            frame.to_json(target, orient="records", lines=True)
        else:
            frame.to_parquet(target, index=False)
        (out / "meta.json").write_text(json.dumps(run_meta(path), indent=2, sort_keys=True))
    return Path(out_dir)


def cost_frame(path: str | Path) -> pd.DataFrame:
    """Calls, tokens and USD per (role, arm) of a run's stored calls (``cost_usd`` empty where no call
    of the row has a cost: stored before costs were kept)."""
    rows = [{"role": c.role, "arm": c.arm, "calls": c.calls, "prompt_tokens": c.prompt_tokens,
             "completion_tokens": c.completion_tokens, "cost_usd": None if c.uncosted >= c.calls else c.cost_usd}
            for c in read_counts(path).by_role_arm]
    return pd.DataFrame(rows, columns=["role", "arm", "calls", "prompt_tokens", "completion_tokens", "cost_usd"])
