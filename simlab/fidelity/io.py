"""Human data in: read the on-disk tables, validate them, normalise them.

The on-disk form is a directory with one file per table of ``simlab.records.TABLES``
(``judgements.csv|jsonl|parquet`` required; ``conversations``, ``turns``,
``participants``, ``bdm``, ``autograde`` optional), or a single judgements file.
Every ``Tables`` this module returns satisfies the invariant the analyses rely on
(see ``normalise``). Bad data raises ``InputError`` naming file, row and column.

Row numbers are what a user sees: for CSV the spreadsheet row (header = 1, so the
first record is row 2, which is also its line when no field spans lines); for JSONL
the line number; for Parquet the 1-based record number.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simlab.errors import InputError
from simlab.records import REQUIRED, TABLES
from simlab.schema import LETTERS, source_name_error
from simlab.tables import JUDGEMENT_COLUMNS, TABLE_NAMES, Tables

__all__ = [
    "FORMATS",
    "JUDGEMENT_COLUMNS",
    "TURN_COLUMNS",
    "load_human",
    "load_tables",
    "normalise",
    "read_file",
    "write_tables",
]

FORMATS = ("csv", "jsonl", "parquet")

TURN_COLUMNS: tuple[str, ...] = ("conversation_id", "turn", "role", "arm", "letter", "text", "turn_rating")

_ID_COLUMNS = ("conversation_id", "participant_id", "arm", "unit_id", "persona_id")
# instrument and value: an added instrument's answers (value is JSON text, never a number here)
_TEXT_COLUMNS = ("source", "domain", "letter", "role", "mode", "dimension", "text", "instrument", "value")
# Types and bounds come from the records (simlab.records): the loader checks human data against
# the same schema the run store enforces.
_HUMAN_TABLES = [t for name, t in TABLES.items() if name in TABLE_NAMES and name != "llm_calls"]
_INT_COLUMNS = tuple(sorted({c.name for t in _HUMAN_TABLES for c in t.columns if c.kind == "int"}))
# rank_derived: an importer's flag (ranks derived from ratings), not a stored column
_BOOL_COLUMNS = (*sorted({c.name for t in _HUMAN_TABLES for c in t.columns if c.kind == "bool"}), "rank_derived")
# column -> (low, high) inclusive bounds of a float column
_FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    c.name: (c.low if c.low is not None else -np.inf, c.high if c.high is not None else np.inf)
    for t in _HUMAN_TABLES for c in t.columns if c.kind == "float"
}
_POSITIVE_INTS = tuple(sorted({c.name for t in _HUMAN_TABLES for c in t.columns if c.kind == "int" and c.low == 1}))
_ROLES = ("user", "assistant")
_MISSING = ["", "na", "nan", "n/a", "null", "none", "<na>"]
_TRUE = {"true", "1", "yes", "y", "t", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "0.0"}


@dataclass(frozen=True)
class _Where:
    """Where a frame came from, for error messages: the file and each record's row number."""

    file: str
    rows: np.ndarray  # user-visible row number of each record, aligned with positions

    def fail(self, message: str, pos: int | None = None, field: str | None = None) -> InputError:
        row = int(self.rows[pos]) if pos is not None and len(self.rows) > pos else None
        return InputError(message, file=self.file, row=row, field=field)


def _where_for(file: str, n: int, first_row: int) -> _Where:
    return _Where(file, np.arange(first_row, first_row + n))


# ---------------------------------------------------------------- reading files


def read_file(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Read one CSV/JSONL/Parquet file; returns the frame and each record's row number."""
    path = Path(path)
    fmt = _format_of(path)
    if fmt != "parquet":
        _check_utf8(path, fmt)
    try:
        if fmt == "csv":
            # Everything as text first so that type errors are ours to report, with a row.
            # only an empty cell is missing: "None" or "N/A" may be someone's answer text
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
            return frame, np.arange(2, len(frame) + 2)
        if fmt == "parquet":
            frame = pd.read_parquet(path)
            return frame, np.arange(1, len(frame) + 1)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {fmt.upper()}: {exc}", file=path) from exc
    return _read_jsonl(path)


def _check_utf8(path: Path, fmt: str) -> None:
    """Refuse a text file that is not UTF-8, naming the line of the first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {fmt.upper()}: {exc.strerror}", file=path) from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte {exc.start + 1}, {data[exc.start:exc.start + 1]!r}); "
                         "save the file as UTF-8", file=path, row=line) from None


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    records: list[dict[str, Any]] = []
    rows: list[int] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read JSONL: {exc}", file=path) from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg} at column {exc.colno}", file=path, row=lineno) from exc
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}", file=path, row=lineno)
        records.append(record)
        rows.append(lineno)
    return pd.DataFrame.from_records(records), np.asarray(rows, dtype=int)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    if suffix == "json":
        suffix = "jsonl"
    if suffix not in FORMATS:
        raise InputError(f"unknown file type {path.suffix!r}: use .csv, .jsonl or .parquet", file=path)
    return suffix


def _find_table_file(directory: Path, name: str) -> Path | None:
    found = [directory / f"{name}.{ext}" for ext in ("csv", "jsonl", "json", "parquet")]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise InputError(f"several files for table {name!r}: {', '.join(p.name for p in found)}", file=directory)
    return found[0] if found else None


# ---------------------------------------------------------------- public loaders


def load_human(path: str | Path) -> Tables:
    """Load human data from a directory of tables or a single judgements file.

    ``source`` defaults to ``human`` where the files lack it. Raises ``InputError``
    naming file, row and column for any bad value.

    >>> tables = load_human("../shared/data/my_study")  # doctest: +SKIP
    >>> tables.judgements[["participant_id", "arm", "rank"]].head()  # doctest: +SKIP
    """
    return load_tables(path, default_source="human")


def load_tables(path: str | Path, *, default_source: str | None = "human") -> Tables:
    """Load on-disk tables of any source; ``default_source=None`` requires a ``source`` column."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or directory", file=path)
    frames: dict[str, pd.DataFrame] = {}
    wheres: dict[str, _Where] = {}
    if path.is_dir():
        for name in TABLE_NAMES:
            file = _find_table_file(path, name)
            if file is None:
                continue
            frame, rows = read_file(file)
            frames[name], wheres[name] = frame, _Where(str(file), rows)
        if "judgements" not in frames:
            raise InputError("no judgements.csv, judgements.jsonl or judgements.parquet here", file=path)
    else:
        frame, rows = read_file(path)
        frames["judgements"], wheres["judgements"] = frame, _Where(str(path), rows)
    if frames["judgements"].empty:  # a header alone would "analyse" nothing and exit 0
        raise InputError("no rows (a header alone): nothing to analyse", file=wheres["judgements"].file)
    return _normalise(Tables(**frames), wheres, default_source=default_source)


def normalise(tables: Tables, *, origin: str, default_source: str | None = "human") -> Tables:
    """Validate ``tables`` and bring them to the invariant the analyses rely on.

    The returned ``judgements`` has every column of ``JUDGEMENT_COLUMNS`` (missing
    optional ones as NA; participant_id, source and domain joined in from
    ``conversations`` if absent), ids as ``str``, position/rank/provenance_rank as
    ``Int64``, opening_choice/provenance_guess as ``boolean``, ratings and bids as
    float. ``conversations`` (one row per conversation_id) and ``participants`` are
    built from judgements if absent. ``turns`` gets every column of ``TURN_COLUMNS``.
    Errors name ``origin`` and the table, and row = 1-based position in the frame.
    """
    wheres = {name: _where_for(f"{origin} [{name}]", len(frame), 1) for name, frame in tables.items()}
    return _normalise(tables, wheres, default_source=default_source)


def write_tables(tables: Tables, out_dir: str | Path, fmt: str = "csv", *, overwrite: bool = False) -> Path:
    """Write ``tables`` to ``out_dir`` all or nothing: into a temporary sibling, then renamed.

    Refuses (``InputError``) a non-empty ``out_dir`` unless ``overwrite``.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}", field="format")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", file=out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError("directory is not empty (pass overwrite / --force to replace it)", file=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tables.write(tmp, fmt)  # type: ignore[arg-type]
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------- normalisation


def _normalise(tables: Tables, wheres: Mapping[str, _Where], *, default_source: str | None) -> Tables:
    out: dict[str, pd.DataFrame | None] = {}
    for f in fields(Tables):
        frame = getattr(tables, f.name)
        if frame is None:
            out[f.name] = None
            continue
        frame = frame.reset_index(drop=True)
        where = wheres[f.name]
        if f.name in REQUIRED:
            _require_columns(frame, REQUIRED[f.name], where, f.name, default_source)
        out[f.name] = _coerce(frame, where) if f.name != "llm_calls" else frame

    conversations = out["conversations"]
    judgements = out["judgements"]
    assert judgements is not None
    jw = wheres["judgements"]

    for name in ("judgements", "conversations", "participants"):
        frame = out[name]
        if frame is not None and "source" not in frame.columns and default_source is not None:
            if name != "judgements" or conversations is None:
                frame.insert(len(frame.columns), "source", default_source)

    for name in ("judgements", "conversations", "participants"):
        frame = out[name]
        if frame is not None and "source" in frame.columns:
            _check_sources(frame, wheres[name])

    if conversations is not None:
        _check_unique(conversations, ["conversation_id"], wheres["conversations"])
        judgements = _join_conversations(judgements, conversations, jw, wheres["conversations"])
    else:
        if "participant_id" not in judgements.columns:
            raise jw.fail("missing required column (no conversations table to take it from)", field="participant_id")
        if "source" not in judgements.columns:
            raise jw.fail("missing required column 'source'", field="source")
        if "domain" not in judgements.columns:
            judgements["domain"] = pd.Series(pd.NA, index=judgements.index, dtype=object)
        conversations = _conversations_from(judgements, jw)

    _check_not_null(judgements, ["conversation_id", "arm", "participant_id", "source"], jw)
    _check_unique(judgements, ["conversation_id", "arm"], jw)
    for col in ("rank", "provenance_rank"):
        if col in judgements.columns:
            _check_permutation(judgements, col, jw)

    for col in JUDGEMENT_COLUMNS:
        if col not in judgements.columns:
            judgements[col] = _empty_column(col, len(judgements))
    # joins may have produced another string dtype; one dtype for text everywhere
    for col in ("conversation_id", "participant_id", "source", "domain", "arm", "letter"):
        judgements[col] = _as_text(judgements[col])
        if col in conversations.columns:
            conversations[col] = _as_text(conversations[col])
    out["judgements"] = judgements[[*JUDGEMENT_COLUMNS, *[c for c in judgements.columns if c not in JUDGEMENT_COLUMNS]]]
    out["conversations"] = conversations

    # the same participant_id may appear once per source (a persona simulating a human participant)
    if out["participants"] is None:
        out["participants"] = conversations[["participant_id", "source"]].drop_duplicates().reset_index(drop=True)
    else:
        key = ["participant_id", "source"] if "source" in out["participants"].columns else ["participant_id"]
        _check_unique(out["participants"], key, wheres["participants"])

    turns = out["turns"]
    if turns is not None:
        _check_in(turns, "role", _ROLES, wheres["turns"])
        _check_known_conversations(turns, conversations, wheres["turns"])
        for col in TURN_COLUMNS:
            if col not in turns.columns:
                turns[col] = _empty_column(col, len(turns))
        for col in ("arm", "letter"):
            turns[col] = _as_text(turns[col])
        out["turns"] = turns[[*TURN_COLUMNS, *[c for c in turns.columns if c not in TURN_COLUMNS]]]
    return replace(tables, **out)


def _require_columns(
    frame: pd.DataFrame, required: tuple[str, ...], where: _Where, table: str, default_source: str | None
) -> None:
    for col in required:
        if col in frame.columns:
            continue
        if col == "source" and default_source is not None:
            continue
        # judgements may take participant/source/domain from conversations; checked later
        if table == "conversations" and col == "domain":
            continue
        raise where.fail(f"missing required column in {table} (has: {', '.join(map(str, frame.columns))})", field=col)


def _coerce(frame: pd.DataFrame, where: _Where) -> pd.DataFrame:
    """Give every known column its type; the first bad value raises with its row."""
    frame = frame.copy()
    for col in frame.columns:
        if col in _ID_COLUMNS:
            text = _as_text(frame[col])
            # an empty id is a missing one, in JSONL as in CSV (where "" is read as missing)
            blank = text.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
            frame[col] = text.where(~blank, None)
        elif col in _TEXT_COLUMNS:
            frame[col] = _as_text(frame[col])
        elif col in _INT_COLUMNS:
            frame[col] = _as_int(frame[col], where, col)
        elif col in _BOOL_COLUMNS:
            frame[col] = _as_bool(frame[col], where, col)
        elif col in _FLOAT_BOUNDS:
            frame[col] = _as_float(frame[col], where, col)
        elif frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            frame[col] = _infer(frame[col])
    return frame


def _infer(series: pd.Series) -> pd.Series:
    """An extra column read as text (CSV) gets back its number or true/false type, if every value has one."""
    if pd.api.types.infer_dtype(series, skipna=True) != "string":
        return series.astype(object) if series.notna().any() else series
    present = series.notna()
    numbers = pd.to_numeric(series, errors="coerce")
    if numbers[present].notna().all():
        return numbers
    lowered = series.str.lower()
    if lowered[present].isin(["true", "false"]).all():
        return (lowered == "true").astype("boolean").where(present, pd.NA)
    return series.astype(object)


def _as_text(series: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        values = series.astype(float)
        # ids read back as numbers: 3.0 -> "3", not "3.0"
        if (values.dropna() == values.dropna().round()).all():
            text = values.astype("Int64").astype(str)
        else:
            text = values.astype(str)
        return text.astype(object).where(series.notna(), None)
    if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"):
        return series.astype(object).where(series.notna(), None)
    out = series.astype(object)
    mask = out.notna()
    out[mask] = [_text(v) for v in out[mask]]
    return out.where(mask, None)


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _as_float(series: pd.Series, where: _Where, col: str) -> pd.Series:
    values = _to_number(series, where, col)
    low, high = _FLOAT_BOUNDS[col]
    bad = values.notna() & ~values.between(low, high)
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise where.fail(f"{values.iloc[pos]:g} is outside {low:g}-{high:g}", pos, col)
    return values.astype(float)


def _as_int(series: pd.Series, where: _Where, col: str) -> pd.Series:
    values = _to_number(series, where, col)
    bad = values.notna() & (values != np.round(values))
    if col in _POSITIVE_INTS:
        bad |= values.notna() & (values < 1)
    elif col == "turn":
        bad |= values.notna() & (values < 0)
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        need = "a positive integer" if col in _POSITIVE_INTS else "an integer"
        raise where.fail(f"{series.iloc[pos]!r} is not {need}", pos, col)
    return values.round().astype("Int64")


def _to_number(series: pd.Series, where: _Where, col: str) -> pd.Series:
    if series.dtype == bool:
        raise where.fail("expected a number, got true/false", 0, col)
    present = _present(series)
    values = pd.to_numeric(series.where(present), errors="coerce")
    bad = present & values.isna()
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise where.fail(f"{series.iloc[pos]!r} is not a number", pos, col)
    return values.astype(float)


def _present(series: pd.Series) -> pd.Series:
    """Not missing: NaN/None and the usual spellings of a missing value (NA, null, …) are missing."""
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return series.notna()
    return series.notna() & ~series.astype(str).str.strip().str.lower().isin(_MISSING)


def _as_bool(series: pd.Series, where: _Where, col: str) -> pd.Series:
    if series.dtype == bool or str(series.dtype) == "boolean":
        return series.astype("boolean")
    text = series.astype(str).str.strip().str.lower()
    present = _present(series)
    is_true, is_false = text.isin(_TRUE), text.isin(_FALSE)
    bad = present & ~is_true & ~is_false
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise where.fail(f"{series.iloc[pos]!r} is not true/false", pos, col)
    out = pd.Series(pd.NA, index=series.index, dtype="boolean")
    out[present & is_true] = True
    out[present & is_false] = False
    return out


def _empty_column(col: str, n: int) -> pd.Series:
    if col in _INT_COLUMNS:
        return pd.Series(pd.NA, index=range(n), dtype="Int64")
    if col in _BOOL_COLUMNS:
        return pd.Series(pd.NA, index=range(n), dtype="boolean")
    if col in _FLOAT_BOUNDS:
        return pd.Series(np.nan, index=range(n), dtype=float)
    return pd.Series(None, index=range(n), dtype=object)


def _check_not_null(frame: pd.DataFrame, cols: list[str], where: _Where) -> None:
    for col in cols:
        bad = frame[col].isna().to_numpy()
        if bad.any():
            raise where.fail("missing value", int(np.flatnonzero(bad)[0]), col)


def _check_in(frame: pd.DataFrame, col: str, allowed: tuple[str, ...], where: _Where) -> None:
    bad = (frame[col].notna() & ~frame[col].isin(allowed)).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise where.fail(f"{frame[col].iloc[pos]!r} is not one of {', '.join(allowed)}", pos, col)


def _check_sources(frame: pd.DataFrame, where: _Where) -> None:
    """Every source is ``human`` or a simulated source's name (``simlab.schema.source_name_error``)."""
    names = frame["source"].dropna().unique()
    bad = {n: why for n in names if (why := source_name_error(n)) is not None}
    if bad:
        pos = int(np.flatnonzero(frame["source"].isin(list(bad)).to_numpy())[0])
        raise where.fail(bad[frame["source"].iloc[pos]], pos, "source")


def _check_unique(frame: pd.DataFrame, cols: list[str], where: _Where) -> None:
    dup = frame.duplicated(cols, keep="first").to_numpy()
    if dup.any():
        pos = int(np.flatnonzero(dup)[0])
        key = ", ".join(f"{c}={frame[c].iloc[pos]!r}" for c in cols)
        raise where.fail(f"duplicated ({key})", pos, cols[-1])


def _check_permutation(frame: pd.DataFrame, col: str, where: _Where) -> None:
    """Within a conversation the ranks are 1..k (k = its arms), or all missing."""
    values = frame[col]
    group = frame["conversation_id"]
    n_missing = values.isna().groupby(group).transform("sum")
    n_arms = group.map(group.value_counts())
    partial = (values.isna() & (n_missing < n_arms)).to_numpy()
    if partial.any():
        pos = int(np.flatnonzero(partial)[0])
        raise where.fail(f"missing while other arms of conversation {group.iloc[pos]!r} have one", pos, col)
    # k ranks, each within 1..k and none repeated, are a permutation of 1..k
    out_of_range = (values.notna() & (values > n_arms)).to_numpy()
    repeated = (values.notna() & frame.duplicated(["conversation_id", col])).to_numpy()
    bad = out_of_range if out_of_range.any() else repeated
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        cid = group.iloc[pos]
        got = sorted(int(v) for v in values[group == cid].dropna())
        raise where.fail(f"{col}s of conversation {cid!r} are {got}, not a permutation of 1..{len(got)}", pos, col)


def _join_conversations(
    judgements: pd.DataFrame, conversations: pd.DataFrame, jw: _Where, cw: _Where
) -> pd.DataFrame:
    _check_known_conversations(judgements, conversations, jw)
    keys = conversations.set_index("conversation_id")
    for col in ("participant_id", "source", "domain"):
        if col not in keys.columns:
            if col == "domain":
                continue
            raise cw.fail("missing required column", field=col)
        joined = judgements["conversation_id"].map(keys[col])
        if col not in judgements.columns:
            judgements[col] = joined
            continue
        differs = (judgements[col].notna() & joined.notna() & (judgements[col] != joined)).to_numpy()
        if differs.any():
            pos = int(np.flatnonzero(differs)[0])
            raise jw.fail(
                f"{judgements[col].iloc[pos]!r} disagrees with the conversations table ({joined.iloc[pos]!r})", pos, col
            )
        judgements[col] = judgements[col].where(judgements[col].notna(), joined)
    return judgements


def _check_known_conversations(frame: pd.DataFrame, conversations: pd.DataFrame, where: _Where) -> None:
    unknown = (~frame["conversation_id"].isin(conversations["conversation_id"])).to_numpy()
    if unknown.any():
        pos = int(np.flatnonzero(unknown)[0])
        raise where.fail(
            f"conversation {frame['conversation_id'].iloc[pos]!r} is not in the conversations table", pos,
            "conversation_id",
        )


def _conversations_from(judgements: pd.DataFrame, where: _Where) -> pd.DataFrame:
    cols = ["conversation_id", "participant_id", "source", "domain"]
    conv = judgements[cols].drop_duplicates()
    clash = conv.duplicated("conversation_id").to_numpy()
    if clash.any():
        cid = conv["conversation_id"].iloc[int(np.flatnonzero(clash)[0])]
        sub = judgements[judgements["conversation_id"] == cid]
        col = next(c for c in cols[1:] if sub[c].nunique(dropna=False) > 1)
        pos = int(sub.index[sub[col].astype(str) != str(sub[col].iloc[0])][0])
        raise where.fail(f"conversation {cid!r} has several values of {col}", pos, col)
    return conv.reset_index(drop=True)


def letters(n: int) -> list[str]:
    """The first ``n`` display letters (A, B, …)."""
    if n > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} arms per conversation")
    return list(LETTERS[:n])
