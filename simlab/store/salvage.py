"""``simlab store salvage RUN OUT``: copy every intact committed session of a damaged store into a
new run directory, which then opens, exports, reports and resumes (the resume redoes what was lost).

The damaged file is never written: salvage reads a copy of it (with a rebuilt header when its
header was zeroed or overwritten). Each table is read in rowid order, row by row; where SQLite
cannot read (a truncated tail, a corrupted page) the reader skips ahead to the next readable row
and remembers the rowids it could not read. A session's rows in a table were inserted together,
one after another, so rows lost between two readable rows belonged to the session of the row
before, the session of the row after, or sessions with no readable row in that table: those
sessions are lost; every other committed session (its ``sessions`` row, its participant, its
rows in every table) is copied in one transaction of its own. The new store is built beside OUT
and renamed into place only when complete, so a failed salvage leaves nothing at OUT.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from simlab.errors import InputError
from simlab.store.connection import STORE_FILE, closing, connect, store_path
from simlab.store.damage import check_header
from simlab.store.meta import meta_as_today, now
from simlab.store.migration import OLDER_VERSIONS, legacy_views
from simlab.store.schema import COLUMNS, DDL, STORE_SCHEMA_VERSION

__all__ = ["SalvageResult", "salvage"]

# a completed session's rows: these tables hold rows of completed sessions only (key: conversation_id)
_SESSION_TABLES = ("conversations", "turns", "judgements", "bdm", "instruments", "answers")
_SHOWN_IDS = 20


class SalvageResult(BaseModel):
    """What ``salvage`` copied and what it could not."""

    model_config = ConfigDict(extra="forbid")
    out: Path
    copied: int
    """Committed sessions copied whole."""
    lost: list[str]
    """Conversation ids of committed sessions (or sessions with rows) found damaged and not copied."""
    unreadable_session_rows: int
    """Rows of the ``sessions`` table that could not be read (their ids may be unknown)."""
    failures_copied: int
    header_rebuilt: bool
    """The file's header was zeroed or overwritten and salvage read it through a rebuilt one."""

    def text(self) -> str:
        """The lines ``simlab store salvage`` prints."""
        n = self.copied + len(self.lost)
        lines = [f"{self.out}: {self.copied} of {n} sessions copied, {len(self.lost)} lost"
                 + (" (read through a rebuilt SQLite header)" if self.header_rebuilt else "")]
        if self.lost:
            shown = ", ".join(self.lost[:_SHOWN_IDS]) + (f", … ({len(self.lost) - _SHOWN_IDS} more)"
                                                         if len(self.lost) > _SHOWN_IDS else "")
            lines.append(f"lost sessions: {shown}")
        if self.unreadable_session_rows:
            lines.append(f"{self.unreadable_session_rows} row(s) of the sessions table could not be read")
        lines.append(f"to redo what was lost: simlab run --resume {self.out}")
        return "\n".join(lines)


def salvage(run: str | Path, out: str | Path) -> SalvageResult:
    """Copy every intact committed session of the store of ``run`` into a new run directory ``out``
    (which must not exist), with the run's meta; returns what was copied and lost."""
    src = store_path(run)
    target = Path(out)
    if not src.exists():
        raise InputError("no run store here", file=src)
    if target.exists():
        raise InputError("already exists; salvage writes a new run directory: give a path that does not exist",
                         file=target)
    if not target.parent.is_dir():
        raise InputError("the folder to hold the salvaged run does not exist", file=target.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.salvage-", dir=target.parent))
    try:
        copy = work / "damaged.sqlite"
        shutil.copyfile(src, copy)
        for suffix in ("-wal",):  # committed sessions not yet checkpointed live in the write-ahead log
            if Path(f"{src}{suffix}").exists():
                shutil.copyfile(f"{src}{suffix}", f"{copy}{suffix}")
        rebuilt = _rebuild_header(copy)
        _fit_to_length(copy)
        new_dir = work / "run"
        new_dir.mkdir()
        with closing(connect(copy, readonly=True)) as source:
            source.execute("PRAGMA cell_size_check=ON")  # a corrupted cell raises instead of reading garbage
            result = _copy(source, src, new_dir / STORE_FILE, target, rebuilt)
        new_dir.rename(target)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rebuild_header(file: Path) -> bool:
    """Give ``file`` a working SQLite header when its own is zeroed or overwritten (the first 100
    bytes; the schema's root page follows them); True if it did."""
    problem = check_header(file)
    if problem is None or "not an SQLite header" not in problem or file.stat().st_size < 512:
        return False
    size = file.stat().st_size
    wal = Path(f"{file}-wal").exists()
    for page_size in (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512):
        if size % page_size:
            continue
        head = bytearray(100)
        head[:16] = b"SQLite format 3\x00"
        struct.pack_into(">H", head, 16, 1 if page_size == 65536 else page_size)
        head[18] = head[19] = 2 if wal else 1
        head[21:24] = bytes((64, 32, 32))
        # change counter 1, page count 0 (taken from the file's size), schema cookie 1, format 4, UTF-8
        for offset, value in ((24, 1), (40, 1), (44, 4), (56, 1), (96, sqlite3.sqlite_version_info[0] * 1000000
                                                                    + sqlite3.sqlite_version_info[1] * 1000
                                                                    + sqlite3.sqlite_version_info[2])):
            struct.pack_into(">I", head, offset, value)
        with file.open("r+b") as f:
            f.write(head)
        try:
            with closing(connect(file, readonly=True)) as conn:
                conn.execute("SELECT key FROM meta LIMIT 1").fetchall()
            return True
        except sqlite3.DatabaseError:
            continue
    return False


def _fit_to_length(file: Path) -> None:
    """Make a truncated copy readable up to where it ends: drop a partial last page and give the
    header the pages that are there (SQLite refuses a file shorter than its header says; told
    otherwise, it would read the missing pages as zeros, which look like rows)."""
    with file.open("r+b") as f:
        head = f.read(100)
        if len(head) < 100 or not head.startswith(b"SQLite format 3\x00") or Path(f"{file}-wal").exists():
            return  # (with a write-ahead log, the log's last commit gives the size, not the header)
        page_size = struct.unpack(">H", head[16:18])[0]
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512 or page_size & (page_size - 1):
            return
        pages = file.stat().st_size // page_size
        if struct.unpack(">I", head[28:32])[0] <= pages:
            return
        f.truncate(pages * page_size)
        f.seek(28)
        f.write(struct.pack(">I", pages))
        f.seek(92)
        f.write(head[24:28])  # the page count is valid for this change counter


class _Table:
    """One table as read: its rows in rowid order, and the rowid ranges that could not be read."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.gaps: list[tuple[int | None, int | None]] = []
        """(last readable rowid before, first readable rowid after); None: the table's start or end."""


def _scan(conn: sqlite3.Connection, source: str, columns: tuple[str, ...]) -> _Table:
    """Read ``source`` (a table, or an older store's view) row by row, skipping what cannot be read.

    Rows come as (rowid, *columns). A view has no rowid to seek by: its rows are read in one pass
    (numbered in order) and what follows an unreadable row is lost."""
    table = _Table()
    cols = ", ".join(columns)
    if not source.startswith("main."):
        n = 0
        try:
            for row in conn.execute(f"SELECT {cols} FROM {source}"):
                n += 1
                table.rows.append((n, *row))
        except sqlite3.DatabaseError:
            table.gaps.append((n or None, None))
        return table
    sql = f"SELECT rowid, {cols} FROM {source} WHERE rowid > ? ORDER BY rowid"
    after = -(2**63)
    while True:
        try:
            for row in conn.execute(sql, (after,)):
                table.rows.append(tuple(row))
                after = row[0]
            return table
        except sqlite3.DatabaseError:
            last = after if table.rows and table.rows[-1][0] == after else None
            found = _next_readable(conn, sql, after)
            table.gaps.append((last, None if found is None else found))
            if found is None or found <= after:
                return table
            after = found - 1


def _readable_after(conn: sqlite3.Connection, sql: str, probe: int) -> int | None | bool:
    """The first rowid after ``probe`` if it reads (None: no row after it), False if it does not."""
    try:
        row = conn.execute(sql + " LIMIT 1", (probe,)).fetchone()
    except sqlite3.DatabaseError:
        return False
    return None if row is None else int(row[0])


def _next_readable(conn: sqlite3.Connection, sql: str, after: int) -> int | None:
    """The first readable rowid past a damaged stretch that starts after ``after`` (None: none):
    probes further and further ahead, then narrows to the nearest probe that reads."""
    start = max(after, 0)
    bad, step = start, 1
    while step < 2**62:
        got = _readable_after(conn, sql, start + step)
        if got is not False:
            good = start + step
            while good - bad > 1:  # the first probe that reads, between the last failing and this one
                mid = (bad + good) // 2
                if _readable_after(conn, sql, mid) is False:
                    bad = mid
                else:
                    good = mid
            result = _readable_after(conn, sql, good)
            return None if result is False else result
        bad, step = start + step, step * 2
    return None


def _copy(source: sqlite3.Connection, src: Path, path: Path, target: Path, rebuilt: bool) -> SalvageResult:
    meta = _read_meta(source, src)
    version = meta.get("store_schema")
    if version != STORE_SCHEMA_VERSION and not (isinstance(version, int) and version in OLDER_VERSIONS):
        raise InputError(f"store schema {version} is not {STORE_SCHEMA_VERSION} (made by another simlab version); "
                         "nothing was written", file=src)
    names = legacy_views(source, version) if version != STORE_SCHEMA_VERSION else {}
    present = {r[0] for r in _tolerant(source, "SELECT name FROM sqlite_master WHERE type = 'table'")}

    def read(name: str) -> _Table:
        if name not in present:
            return _Table()
        where = names.get(name, f"main.{name}")
        return _scan(source, where if where.startswith("temp.") else f"main.{name}", COLUMNS[name])

    tables = {name: read(name) for name in (*_SESSION_TABLES, "sessions", "participants", "llm_calls", "failures",
                                            "autograde", "arms")}
    lost = _lost_sessions(tables)
    sessions = {row[1]: row for row in tables["sessions"].rows if isinstance(row[1], str)}
    known = set(sessions) | {row[1] for t in _SESSION_TABLES for row in tables[t].rows if isinstance(row[1], str)}
    participants = {(row[1], row[2]): row for row in tables["participants"].rows}
    by_key: dict[str, dict[str, list[tuple[Any, ...]]]] = defaultdict(lambda: defaultdict(list))
    for name in _SESSION_TABLES:
        for row in tables[name].rows:
            by_key[row[1]][name].append(row)
    calls_of: dict[str | None, list[tuple[Any, ...]]] = defaultdict(list)
    recorded_with = COLUMNS["llm_calls"].index("recorded_with") + 1
    for row in tables["llm_calls"].rows:
        calls_of[row[recorded_with]].append(row)

    db = connect(path)
    try:
        out_meta = meta_as_today(meta) | {
            "store_schema": STORE_SCHEMA_VERSION, "store_id": uuid.uuid4().hex,
            "salvaged": {"from": str(src), "at": now(), "lost": sorted(known - set(sessions) | lost)}}
        # one transaction (the new store is renamed into place only when whole); a savepoint per
        # session, so a session that breaks the schema's checks is left out alone
        db.execute("BEGIN IMMEDIATE")
        for statement in DDL:
            db.execute(statement)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in out_meta.items()])
        copied: list[str] = []
        for key, srow in sessions.items():
            if key in lost or (srow[2], srow[3]) not in participants:
                lost.add(key)
                continue
            try:
                with _savepoint(db):
                    _put(db, "participants", [participants[(srow[2], srow[3])]], ignore=True)
                    _put(db, "sessions", [srow])
                    for name in _SESSION_TABLES:
                        _put(db, name, by_key[key][name])
                    _put(db, "llm_calls", calls_of[key])
                copied.append(key)
            except sqlite3.Error:  # garbage that reads but breaks the schema's checks: not intact
                lost.add(key)
        failures = _copy_rest(db, tables, calls_of, set(copied))
        lost |= known - set(copied)
        out_meta["salvaged"]["lost"] = sorted(lost)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('salvaged', ?)", (json.dumps(out_meta["salvaged"]),))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return SalvageResult(out=target, copied=len(copied), lost=sorted(lost), failures_copied=failures,
                         unreadable_session_rows=_unread(tables["sessions"]), header_rebuilt=rebuilt)


def _copy_rest(db: sqlite3.Connection, tables: dict[str, _Table], calls_of: dict[str | None, list[tuple[Any, ...]]],
               copied: set[str]) -> int:
    """Failures of sessions not completed (with their calls), calls of no session, autograde scores
    of copied sessions, and the arms; each row that breaks the schema is left out. Returns the
    failures copied."""
    n = 0
    suspect = _suspect_keys(tables["llm_calls"], COLUMNS["llm_calls"].index("recorded_with") + 1)
    key_at = COLUMNS["failures"].index("conversation_id") + 1
    for row in tables["failures"].rows:
        key = row[key_at]
        if key in copied or key in suspect:
            continue
        try:
            with _savepoint(db):
                _put(db, "failures", [row])
                _put(db, "llm_calls", calls_of.pop(key, []))
            n += 1
        except sqlite3.Error:
            pass
    unit_key = COLUMNS["autograde"].index("conversation_id") + 1
    for name, rows in (("llm_calls", calls_of.get(None, [])), ("arms", tables["arms"].rows),
                       ("autograde", [r for r in tables["autograde"].rows if r[unit_key] is None or r[unit_key] in copied])):
        for row in rows:
            try:
                _put(db, name, [row], ignore=True)
            except sqlite3.Error:
                pass
    return n


@contextmanager
def _savepoint(db: sqlite3.Connection) -> Iterator[None]:
    """Inside the salvage's transaction: the block's writes kept whole, or undone on an error."""
    db.execute("SAVEPOINT one")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK TO one")
        db.execute("RELEASE one")
        raise
    db.execute("RELEASE one")


def _put(db: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]], *, ignore: bool = False) -> None:
    """Insert rows as read (rowid first, dropped: the new store numbers its own rows). A text with a
    NUL character is what a zeroed page reads as, never what simlab stores: it raises."""
    if any(isinstance(v, str) and "\x00" in v for row in rows for v in row):
        raise sqlite3.DataError(f"a row of {table} holds NUL characters (a zeroed page)")
    if rows:
        cols = COLUMNS[table]
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        db.executemany(f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       [row[1:] for row in rows])


def _suspect_keys(table: _Table, key_at: int) -> set[Any]:
    """Keys of the rows on either side of each stretch that could not be read."""
    at = {row[0]: row[key_at] for row in table.rows}
    return {at[r] for gap in table.gaps for r in gap if r is not None and r in at}


def _lost_sessions(tables: dict[str, _Table]) -> set[str]:
    """Sessions some of whose rows may have been in a stretch that could not be read: the sessions
    of the rows around it, and, in a table with such a stretch, every session with no row in it."""
    sessions = {row[1] for row in tables["sessions"].rows}
    lost: set[str] = set()
    keyed = [(name, 1) for name in _SESSION_TABLES] + [("llm_calls", COLUMNS["llm_calls"].index("recorded_with") + 1)]
    for name, key_at in keyed:
        table = tables[name]
        if not table.gaps:
            continue
        lost |= _suspect_keys(table, key_at) & sessions
        lost |= sessions - {row[key_at] for row in table.rows}
    lost |= sessions - {row[1] for row in tables["conversations"].rows}  # committed without its conversation: damaged
    return lost


def _unread(table: _Table) -> int:
    """Rowids inside the table's unreadable stretches (rowids are consecutive, so these rows existed);
    an unreadable end counts one."""
    return sum(1 if b is None else max(b - (a or 0) - 1, 0) for a, b in table.gaps)


def _tolerant(conn: sqlite3.Connection, sql: str) -> list[tuple[Any, ...]]:
    try:
        return [tuple(r) for r in conn.execute(sql)]
    except sqlite3.DatabaseError:
        return []


def _read_meta(conn: sqlite3.Connection, src: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for _, key, value in _scan(conn, "main.meta", ("key", "value")).rows:
        try:
            meta[str(key)] = json.loads(value)
        except (TypeError, ValueError):
            continue
    if not isinstance(meta.get("config"), dict) or "store_schema" not in meta:
        raise InputError("the run's stored config (the meta table) cannot be read, so no run could resume from "
                         "what is left; nothing was written. Run the experiment again from its config file into a "
                         "new run directory (simlab run --config FILE --out DIR)", file=src)
    return meta
