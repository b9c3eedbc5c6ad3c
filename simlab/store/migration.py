"""Stores written by an older simlab: a writer rebuilds their changed tables in place, once, in one
transaction (so an old run resumes); a reader sees them through temporary views under this
schema's names instead, so reading never writes to the file."""

from __future__ import annotations

import json
import sqlite3

from simlab.records import TABLES
from simlab.store.schema import DDL, STORE_SCHEMA_VERSION

__all__ = ["OLDER_VERSIONS", "legacy_views", "migrate"]

# Tables whose shape changed since each older version. 1 → 2: conversations gained repeat and
# arm_positions; the source CHECKs gained sim_dynamic_no_persona. 2 → 3: a conversation has one id
# name, conversation_id (the sessions and failures tables called it session_key, llm_calls' column
# is now recorded_with), so conversations is rebuilt too (its foreign key names the sessions column).
# 3 → 4: llm_calls gained served_model (NULL in older stores: which model answered was not kept), and
# the long ``answers`` table (instruments beyond the built-in ones) is new (``migrate`` creates it with
# the rest of the DDL). Later instruments add rows there, not columns. 4 → 5: a source is any source's
# name (simulator variants ``sim_dynamic:<id>``), so the tables with a source column lose their closed
# ``CHECK (source IN (...))``. 5 → 6: llm_calls gained cached_tokens, cost_usd and price_source (NULL in
# older stores: what their calls cost was not kept, and nothing guesses it).
_V3 = ("sessions", "conversations", "failures", "llm_calls")
_V5 = ("participants", "conversations", "autograde")
_CHANGED: dict[int, tuple[str, ...]] = {1: ("participants", *_V3, "autograde"), 2: (*_V3, "participants", "autograde"),
                                        3: ("llm_calls", *_V5), 4: (*_V5, "llm_calls"), 5: ("llm_calls",)}
OLDER_VERSIONS = frozenset(_CHANGED)
"""The store schema versions this simlab can migrate (writers) or read through views (readers)."""
# (table, new column) → its value where an older store has no such column
_DEFAULTS = {("conversations", "repeat"): "0"}
# (table, new column) → its name in older stores
_RENAMED = {("sessions", "conversation_id"): "session_key", ("failures", "conversation_id"): "session_key",
            ("llm_calls", "recorded_with"): "session_key"}


def _sources(conn: sqlite3.Connection, schema: str, name: str) -> list[tuple[str, str]]:
    """(column of this schema, the SQL expression giving it from the older ``schema.name``) for
    every column the older table can fill: kept, renamed, or a fixed default. The rowid alias
    (call and failure ids) comes first where the older table has it."""
    table = TABLES[name]
    old = [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({name})")]
    out = [(c, c) for c in ([table.rowid] if table.rowid and table.rowid in old else [])]
    for c in table.names:
        if c in old:
            out.append((c, c))
        elif _RENAMED.get((name, c)) in old:
            out.append((c, _RENAMED[(name, c)]))
        elif (name, c) in _DEFAULTS:
            out.append((c, _DEFAULTS[(name, c)]))
    return out


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Rebuild the tables whose shape changed since ``version`` (SQLite's table-rebuild recipe:
    new table, copy, drop, rename; foreign keys off meanwhile), all or nothing."""
    conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before BEGIN
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in _CHANGED[version]:
            table = TABLES[name]
            sources = _sources(conn, "main", name)  # columns the old table lacks take the new table's default
            conn.execute(table.ddl().replace(f"CREATE TABLE IF NOT EXISTS {name} (", f"CREATE TABLE _new_{name} (", 1))
            conn.execute(f"INSERT INTO _new_{name} ({', '.join(c for c, _ in sources)})"
                         f" SELECT {', '.join(e for _, e in sources)} FROM {name}")
            conn.execute(f"DROP TABLE {name}")
            conn.execute(f"ALTER TABLE _new_{name} RENAME TO {name}")
        for statement in DDL:  # indexes dropped with their tables
            conn.execute(statement)
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            raise sqlite3.IntegrityError(f"foreign keys broken after the rebuild: {bad[:3]}")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'store_schema'", (json.dumps(STORE_SCHEMA_VERSION),))
    except BaseException:
        conn.execute("ROLLBACK")
        conn.execute("PRAGMA foreign_keys=ON")
        raise
    conn.execute("COMMIT")
    conn.execute("PRAGMA foreign_keys=ON")


def legacy_views(conn: sqlite3.Connection, version: int, schema: str = "main") -> dict[str, str]:
    """Show the store ``schema`` (of store version ``version``) under this schema's names; returns
    stored table → the name to read it by, for the tables the store has.

    A changed table is read through a TEMP view (the temp database is the connection's own, so this
    works on a read-only connection and writes nothing to the store): for ``main`` the view takes the
    table's own name and shadows it, so unqualified SQL reads this schema; for an attached
    ``schema`` it is ``temp.<schema>_<table>``. A column the older table lacks reads as its default
    (NULL where the schema has none), as ``migrate`` would leave it.
    """
    present = {r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type = 'table'")}
    names = {name: f"{schema}.{name}" for name in TABLES if name in present}
    for name in _CHANGED.get(version, ()):
        if name not in present:
            continue
        given = dict(_sources(conn, schema, name))
        table = TABLES[name]
        columns = [*([table.rowid] if table.rowid else []), *table.names]
        exprs = ", ".join(f"{given[c]} AS {c}" if c in given
                          else f"rowid AS {c}" if c == table.rowid else f"NULL AS {c}" for c in columns)
        view = name if schema == "main" else f"{schema}_{name}"
        conn.execute(f"CREATE TEMP VIEW {view} AS SELECT {exprs} FROM {schema}.{name}")
        names[name] = f"temp.{view}"
    return names
