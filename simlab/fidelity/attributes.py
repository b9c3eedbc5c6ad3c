"""Participant attributes (age, gender, region, …) for every participant of every source.

The participants table holds them as extra columns (PRISM's importer with ``--survey`` writes the
survey fields there). A simulated participant shares its ``participant_id`` with the human it copies,
so an attribute missing from its own row is taken from the same participant_id in another source (the
human's survey record first). What is still missing becomes the explicit level ``unknown``, counted and
shown like any other level.

>>> import pandas as pd
>>> from simlab.tables import Tables
>>> j = pd.DataFrame({"conversation_id": ["c1", "c2", "c3"], "participant_id": ["p1", "p1", "p2"],
...                   "source": ["human", "sim_dynamic", "human"], "arm": ["A", "A", "A"]})
>>> p = pd.DataFrame({"participant_id": ["p1"], "source": ["human"], "age": ["18-24"]})
>>> participant_attributes(Tables(judgements=j, participants=p), ["age"])
        source participant_id      age
0        human             p1    18-24
1        human             p2  unknown
2  sim_dynamic             p1    18-24
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from simlab.errors import InputError
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["KEY_COLUMNS", "UNKNOWN", "attribute_names", "check_attributes", "participant_attributes", "source_participants"]

UNKNOWN = "unknown"
"""The level of a participant whose attribute is recorded nowhere."""

KEY_COLUMNS = ("source", "participant_id")
"""A participant of a source: a simulated copy and its human share the participant_id."""


def source_participants(tables: Tables) -> pd.DataFrame:
    """Every (source, participant_id) with judgements or conversations, sorted, ids as text."""
    frames = [tables.judgements]
    if tables.conversations is not None:
        frames.append(tables.conversations)
    keys = pd.concat([f[list(KEY_COLUMNS)] for f in frames if set(KEY_COLUMNS) <= set(f.columns)], ignore_index=True)
    keys = keys.dropna().astype(str).drop_duplicates()
    return keys.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


def attribute_names(tables: Tables) -> list[str]:
    """The participants table's columns that carry an attribute (not its keys), in table order."""
    p = tables.participants
    if p is None:
        return []
    return [str(c) for c in p.columns if c not in KEY_COLUMNS and p[c].notna().any()]


def check_attributes(tables: Tables, names: Sequence[str], *, field: str = "--by") -> None:
    """Refuse an attribute no participant has (``InputError`` naming ``field`` and the ones there are)."""
    have = attribute_names(tables)
    for name in names:
        if name not in have:
            listed = ", ".join(have) if have else "none: the data have no participant attributes"
            raise InputError(f"no participant has the attribute {name!r} (attributes: {listed})", field=field)


def _text(values: pd.Series) -> pd.Series:
    """Attribute values as text levels (a whole number stored as 25.0 reads 25); missing stays missing."""
    def one(v: object) -> object:
        if v is None or (isinstance(v, float) and v != v):
            return None
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        s = str(v).strip()
        return s if s else None

    return values.map(one)


def participant_attributes(tables: Tables, names: Sequence[str]) -> pd.DataFrame:
    """One row per (source, participant_id) of ``tables`` with one text column per attribute in ``names``.

    Each value is the participant's own participants-table row when it has one, else the same
    participant_id's value in another source (human first, then the other sources in name order), else
    ``UNKNOWN``. Refuses (``InputError``, field ``--by``) an attribute no participant has.
    """
    check_attributes(tables, names)
    out = source_participants(tables)
    p = tables.participants
    assert p is not None  # check_attributes found the attributes there
    cols = [c for c in p.columns if c in names]
    rows = p[[c for c in ("participant_id", "source") if c in p.columns] + cols].copy()
    rows["participant_id"] = rows["participant_id"].astype(str)
    if "source" not in rows.columns:
        rows["source"] = HUMAN
    rows["source"] = rows["source"].fillna(HUMAN).astype(str)
    for c in cols:
        rows[c] = _text(rows[c])
    rows = rows.drop_duplicates(list(KEY_COLUMNS), keep="first")
    own = out.merge(rows, on=list(KEY_COLUMNS), how="left")
    # the other sources' value for the same participant_id: human first
    rank = rows.assign(_human=(rows["source"] != HUMAN)).sort_values(["_human", "source"], kind="stable")
    for c in names:
        fallback = rank.dropna(subset=[c]).drop_duplicates("participant_id").set_index("participant_id")[c]
        own[c] = own[c].where(own[c].notna(), own["participant_id"].map(fallback)).fillna(UNKNOWN).astype(str)
    return own[[*KEY_COLUMNS, *names]]
