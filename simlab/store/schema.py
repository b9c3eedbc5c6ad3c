"""The run store's SQL schema: the DDL, its version, and each table's columns and pandas dtypes.

Everything here derives from the records (``simlab.records.TABLES``), so the store, the loaders
and the analyses agree on one set of names and types.
"""

from __future__ import annotations

import pandas as pd

from simlab.records import TABLES, columns_of_kind

__all__ = ["COLUMNS", "DDL", "STORED_TABLES", "STORE_SCHEMA_VERSION", "typed"]

STORE_SCHEMA_VERSION = 6
"""Stored in the ``meta`` table (``store_schema``); ``simlab.store.migration`` knows the older ones."""

DDL: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    *(table.ddl() for table in TABLES.values()),
    "CREATE UNIQUE INDEX IF NOT EXISTS turns_key ON turns (conversation_id, turn, role, ifnull(arm, ''))",
    "CREATE INDEX IF NOT EXISTS llm_calls_recorded_with ON llm_calls (recorded_with)",
    "CREATE UNIQUE INDEX IF NOT EXISTS answers_key ON answers (conversation_id, instrument, ifnull(turn, -1), arm)",
)
"""Every statement that makes an empty store (each idempotent: IF NOT EXISTS)."""

COLUMNS: dict[str, tuple[str, ...]] = {name: table.names for name, table in TABLES.items()}
"""Column order of each stored table (the record fields, minus nested lists and the rowid alias)."""
STORED_TABLES = (*COLUMNS, "meta")

# pandas dtypes of the columns; other columns stay object (str)
_BOOL = columns_of_kind("bool")
_INT = columns_of_kind("int")
_FLOAT = columns_of_kind("float")


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the stored dtypes: booleans pandas ``boolean``, counts ``Int64``, floats
    ``float64``, everything else object (in place; returned for chaining)."""
    for col in frame.columns:
        if col in _BOOL:
            frame[col] = frame[col].astype("Int64").astype("boolean")
        elif col in _INT:
            frame[col] = frame[col].astype("Int64")
        elif col in _FLOAT:
            frame[col] = frame[col].astype("float64")
        else:
            frame[col] = frame[col].astype(object)
    return frame
