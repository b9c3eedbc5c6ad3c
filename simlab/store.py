"""The run store: one SQLite file per run (``runs/<run_id>/store.sqlite``), nothing lost.

A completed session is written in ONE transaction (all its rows or none), so a run
that is killed at any moment resumes with only whole sessions on disk and redoes the
missing ones. The run's resolved config, prompt hashes, model ids and seed live in
the ``meta`` table; resuming with a different config is refused with a message that
names every differing field. Readers get pandas frames (``load_run``) or files
(``export``).

Writing the same completed session twice is a no-op when the record is identical
(a resumed run may repeat a write) and raises ``DuplicateSessionError`` when it
differs (two different results for one session is a bug, never silently kept).

Concurrency: one process, writes from the event-loop thread (each write is a short
synchronous transaction, so coroutines cannot interleave inside one). Other
processes may read while a run writes (WAL). Shards write separate stores.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shlex
import sqlite3
import sys
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from simlab.errors import InputError, SimlabError, exit_status
from simlab.records import (
    TABLES,
    ArmRecord,
    AutogradeRecord,
    LLMCallRecord,
    SessionFailure,
    SessionRecord,
    columns_of_kind,
)
from simlab.tables import Tables, spreadsheet_safe_frame

STORE_FILE = "store.sqlite"
STORE_SCHEMA_VERSION = 3
# Tables whose shape changed since each older version; opening such a store rebuilds them in
# one transaction (their rows copied, the new columns at their defaults), so a run made by an
# older simlab resumes. 1 → 2: conversations gained repeat and arm_positions; the source CHECKs
# gained sim_dynamic_no_persona. 2 → 3: a conversation has one id name, conversation_id (the
# sessions and failures tables called it session_key, llm_calls' column is now recorded_with), so
# conversations is rebuilt too (its foreign key names the sessions column).
_V3 = ("sessions", "conversations", "failures", "llm_calls")
_MIGRATE: dict[int, tuple[str, ...]] = {1: ("participants", *_V3, "autograde"), 2: _V3}
_DEFAULTS = {("conversations", "repeat"): "0"}
# (table, new column) → its name in older stores
_RENAMED = {("sessions", "conversation_id"): "session_key", ("failures", "conversation_id"): "session_key",
            ("llm_calls", "recorded_with"): "session_key"}
# meta keys that must agree between a run and its resume (when present in either)
MATCHED_META = ("config", "prompt_hashes", "models", "seed")
RESUMABLE_KEYS = ("concurrency", "limit", "out_dir", "human", "max_gen_error_rate", "repeats", "ablate_persona")
"""Config keys that may differ between the resumes of a run and between the shards of a merge
(each shard writes to its own ``out_dir``): none of them changes a stored result (``repeats`` and
``ablate_persona`` add sessions next to the ones a run without them makes)."""
_SECRET_KEY = re.compile(r"(api_?key|secret|password|passwd|authorization|access_token|bearer)", re.I)
REDACTED = "<redacted>"

# The schema comes from the records (simlab.records.TABLES): SQL, column lists and dtypes.
_DDL = ";\n".join([
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    *(table.ddl() for table in TABLES.values()),
    "CREATE UNIQUE INDEX IF NOT EXISTS turns_key ON turns (conversation_id, turn, role, ifnull(arm, ''))",
    "CREATE INDEX IF NOT EXISTS llm_calls_recorded_with ON llm_calls (recorded_with)",
])

# Column order of each stored table (the record fields, minus nested lists).
COLUMNS: dict[str, tuple[str, ...]] = {name: table.names for name, table in TABLES.items()}
STORED_TABLES = (*COLUMNS, "meta")

# pandas dtypes for load_run; other columns stay object (str).
_BOOL = columns_of_kind("bool")
_INT = columns_of_kind("int")
_FLOAT = columns_of_kind("float")


class StoreError(SimlabError):
    """A run store used against its rules (e.g. two different results for one session)."""


class DuplicateSessionError(StoreError):
    """A session already complete in the store was written again with different content."""


class ConfigMismatchError(InputError):
    """Resuming a run with a config that differs from the one it was created with."""

    def __init__(self, store_path: str | Path, differences: list[str]) -> None:
        self.differences = differences
        listing = "; ".join(differences)
        super().__init__(
            f"the run was created with a different config ({len(differences)} difference(s), "
            f"stored != new): {listing}. Resume with the original config or start a new run id.",
            file=store_path,
        )


class CallCount(BaseModel):
    """Model calls and tokens of one (role, arm) pair."""

    model_config = ConfigDict(extra="forbid")
    role: str
    arm: str | None
    calls: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class FailureGroup(BaseModel):
    """Failed sessions that failed the same way: how many, and one of them as the example."""

    model_config = ConfigDict(extra="forbid")
    error_type: str
    reason: str
    """The example's reason as recorded."""
    count: int
    example: str
    """The example's conversation id."""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def group_failures(rows: Iterable[tuple[str, str, str]]) -> list[FailureGroup]:
    """(conversation_id, error_type, reason) rows → groups of one cause, largest first.

    Reasons that differ only in quoted text and numbers (the raw reply, a column, a time) are
    one cause.
    """
    groups: dict[tuple[str, str], FailureGroup] = {}
    for key, error_type, reason in rows:
        norm = _NUMBER.sub("N", _QUOTED.sub("'…'", reason or ""))[:300]
        g = groups.get((error_type, norm))
        if g is None:
            groups[(error_type, norm)] = FailureGroup(error_type=error_type, reason=reason or "", count=1, example=key)
        else:
            g.count += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.example))


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


# ---------------------------------------------------------------- config comparison


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff(old: Any, new: Any, path: str, out: list[str]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: <absent> != {_short(new[key])}")
            elif key not in new:
                out.append(f"{sub}: {_short(old[key])} != <absent>")
            else:
                _diff(old[key], new[key], sub, out)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(old):
                out.append(f"{sub}: <absent> != {_short(new[i])}")
            elif i >= len(new):
                out.append(f"{sub}: {_short(old[i])} != <absent>")
            else:
                _diff(old[i], new[i], sub, out)
    # bool is an int in Python (True == 1); a flag turned into a number is still a change
    elif old != new or isinstance(old, bool) != isinstance(new, bool):
        out.append(f"{path or '<root>'}: {_short(old)} != {_short(new)}")


def diff_config(old: Any, new: Any, ignore: Iterable[str] = ()) -> list[str]:
    """Every field path where two JSON-like configs differ, as ``path: old != new``.

    ``ignore`` names top-level keys that may differ (e.g. concurrency on resume).

    >>> diff_config({"arms": [{"model": "a"}], "seed": 1}, {"arms": [{"model": "b"}], "seed": 1})
    ["arms[0].model: 'a' != 'b'"]
    """
    skip = set(ignore)
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        old = {k: v for k, v in old.items() if k not in skip}
        new = {k: v for k, v in new.items() if k not in skip}
    out: list[str] = []
    _diff(old, new, "", out)
    return out


def _jsonable(value: Any) -> Any:
    """A JSON round trip (models dumped, tuples → lists) with secret-looking keys redacted."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    plain = json.loads(json.dumps(value, default=str))
    return _redact(plain)


def _secret(key: Any, value: Any) -> bool:
    # "api_key_env" holds the *name* of the variable with the key, not the key: a resume needs it
    return bool(_SECRET_KEY.search(str(key))) and not str(key).endswith("_env") and value not in (None, "")


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if _secret(k, v) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _meta_differences(stored: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str]) -> tuple[list[str], list[str]]:
    """(differences that forbid a resume, differences in ``ignore``d config keys)."""
    new = {k: _jsonable(v) for k, v in new.items()}
    ignore = set(ignore)
    differences: list[str] = []
    allowed: list[str] = []
    for key in MATCHED_META:
        if key not in stored and key not in new:
            continue
        old_v, new_v = stored.get(key), new.get(key)
        if key == "config" and isinstance(old_v, dict) and isinstance(new_v, dict):
            differences += diff_config(old_v, new_v, ignore)
            allowed += diff_config({k: old_v.get(k) for k in ignore}, {k: new_v.get(k) for k in ignore})
        else:
            differences += diff_config({key: old_v}, {key: new_v})
    return differences, allowed


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the store


def _store_path(path: str | Path) -> Path:
    p = Path(path)
    return p / STORE_FILE if p.is_dir() or p.suffix != ".sqlite" else p


# File systems where SQLite's WAL (shared memory, byte-range locks) is unsafe: a shard's store
# must sit on local disk and be merged from there (``python -m simlab.store merge``).
NETWORK_FILESYSTEMS = frozenset({"nfs", "nfs4", "lustre", "cifs", "smb3", "smbfs", "gpfs", "beegfs", "ceph",
                                 "fuse.sshfs", "fuse.glusterfs", "glusterfs", "afs", "9p", "fuse.s3fs"})


class NetworkFilesystemWarning(UserWarning):
    """A run store on a network file system (SQLite WAL can corrupt or deadlock there)."""


MOUNTS = "/proc/mounts"


def filesystem_type(path: str | Path, mounts: str | Path | None = None) -> str | None:
    """The type of the file system holding ``path`` (the longest mount point above it), from
    ``mounts`` in /proc/mounts format; None where that cannot be read (not Linux)."""
    try:
        lines = Path(mounts or MOUNTS).read_text().splitlines()
    except OSError:
        return None
    target = Path(path).resolve()
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and (best is None or len(point.parts) > best[0]):
            best = (len(point.parts), fields[2])
    return best[1] if best else None


def _warn_if_network(path: Path) -> None:
    kind = filesystem_type(path.parent)
    if kind in NETWORK_FILESYSTEMS:
        warnings.warn(
            f"{path}: the run store is on a network file system ({kind}); SQLite's write-ahead log is not safe "
            "there. Write each run or shard to local disk (e.g. $TMPDIR on a compute node) and copy it, or merge "
            "shards with 'python -m simlab.store merge', afterwards (see examples/README.md)",
            NetworkFilesystemWarning, stacklevel=3)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Rebuild the tables whose shape changed since ``version`` (SQLite's table-rebuild recipe:
    new table, copy, drop, rename; foreign keys off meanwhile), all or nothing."""
    conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before BEGIN
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in _MIGRATE[version]:
            table = TABLES[name]
            old = [r[1] for r in conn.execute(f"PRAGMA table_info({name})")]
            conn.execute(table.ddl().replace(f"CREATE TABLE IF NOT EXISTS {name} (", f"CREATE TABLE _new_{name} (", 1))
            cols = [c for c in table.names if c in old or _RENAMED.get((name, c)) in old or (name, c) in _DEFAULTS]
            values = [c if c in old else _RENAMED[(name, c)] if _RENAMED.get((name, c)) in old
                      else _DEFAULTS[(name, c)] for c in cols]
            if table.rowid and table.rowid in old:  # keep the call and failure ids (a merge orders by them)
                cols, values = [table.rowid, *cols], [table.rowid, *values]
            conn.execute(f"INSERT INTO _new_{name} ({', '.join(cols)}) SELECT {', '.join(values)} FROM {name}")
            conn.execute(f"DROP TABLE {name}")
            conn.execute(f"ALTER TABLE _new_{name} RENAME TO {name}")
        for statement in filter(str.strip, _DDL.split(";")):  # indexes dropped with their tables
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


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if not readonly:
        _warn_if_network(path)
    if readonly:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    else:
        conn = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed session survives power loss too; one fsync per session is cheap
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _row(record: BaseModel, columns: tuple[str, ...], **extra: Any) -> tuple[Any, ...]:
    data = {**record.model_dump(), **extra}
    return tuple(json.dumps(data[c], sort_keys=True) if isinstance(data[c], dict) else data[c] for c in columns)


class RunStore:
    """A run's SQLite store. Create with ``create``/``open_or_create``, reopen with ``open``."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # -- lifecycle

    @classmethod
    def create(cls, run_dir: str | Path, meta: Mapping[str, Any]) -> RunStore:
        """Make ``run_dir`` and a new store in it holding ``meta`` (secrets redacted)."""
        path = Path(run_dir) / STORE_FILE
        if path.exists():
            raise InputError("a run store already exists here; resume it or choose a new run id", file=path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        full = {
            "simlab_version": _version(),
            "created_at": _now(),
            "command": command_line(),
            **{k: _jsonable(v) for k, v in meta.items()},
            "store_schema": STORE_SCHEMA_VERSION,
            "store_id": uuid.uuid4().hex,  # lets a merge recognise a shard it already took in
        }
        conn.execute("BEGIN IMMEDIATE")
        try:  # schema and meta together: a store either has both or does not exist
            for statement in filter(str.strip, _DDL.split(";")):
                conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in full.items()])
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("COMMIT")
        return cls(path, conn)

    @classmethod
    def open(cls, run_dir: str | Path) -> RunStore:
        """Open an existing store (``run_dir`` or the .sqlite file) for reading and writing."""
        path = _store_path(run_dir)
        if not path.exists():
            raise InputError("no run store here", file=path)
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(path)
            version = conn.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise InputError(f"not a simlab run store: {exc}", file=path) from exc
        found = None if version is None else json.loads(version[0])
        if found in _MIGRATE:
            try:
                _migrate(conn, found)
            except sqlite3.Error as exc:
                conn.close()
                raise InputError(f"store schema {found} could not be brought to {STORE_SCHEMA_VERSION} (nothing "
                                 f"was changed): {exc}", file=path) from exc
        elif found != STORE_SCHEMA_VERSION:
            conn.close()
            raise InputError(f"store schema {found} is not {STORE_SCHEMA_VERSION} (made by another simlab "
                             "version; its results are untouched)", file=path)
        return cls(path, conn)

    @classmethod
    def open_or_create(cls, run_dir: str | Path, meta: Mapping[str, Any], ignore: Iterable[str] = ()) -> RunStore:
        """Resume the run in ``run_dir`` if its config matches ``meta``, else create it.

        ``ignore``: top-level config keys allowed to change on resume (e.g. concurrency, limit).
        Raises ``ConfigMismatchError`` naming every other differing field.
        """
        if not (Path(run_dir) / STORE_FILE).exists():
            return cls.create(run_dir, meta)
        store = cls.open(run_dir)
        stored = store.meta()
        differences, allowed = _meta_differences(stored, meta, ignore)
        if differences:
            store.close()
            raise ConfigMismatchError(store.path, differences)
        resumes = stored.get("resumes", []) + [{"at": _now(), "command": command_line(), "changed": allowed}]
        store._conn.execute("INSERT OR REPLACE INTO meta VALUES ('resumes', ?)", (json.dumps(resumes),))
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- writes

    def write_session(self, record: SessionRecord) -> bool:
        """Commit one completed session atomically. True if written, False if already stored identically.

        Raises ``DuplicateSessionError`` if the session is stored with different content.
        """
        key = record.conversation.conversation_id
        digest = hashlib.sha256(record.model_dump_json().encode()).hexdigest()
        conv = record.conversation
        with self._transaction() as db:
            existing = db.execute("SELECT record_sha256 FROM sessions WHERE conversation_id = ?", (key,)).fetchone()
            if existing is not None:
                if existing[0] == digest:
                    return False
                raise DuplicateSessionError(f"session {key!r} is already complete in {self.path} with different content")
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (key, conv.participant_id, conv.source, conv.domain, digest, _now()),
            )
            self._upsert_participant(db, record)
            _insert(db, "conversations", [_row(conv, COLUMNS["conversations"])])
            _insert(db, "turns", [_row(t, COLUMNS["turns"]) for t in record.turns])
            _insert(db, "judgements", [_row(j, COLUMNS["judgements"]) for j in record.judgements])
            _insert(db, "bdm", [_row(b, COLUMNS["bdm"]) for b in record.bdm])
            _insert(db, "instruments", [_row(i, COLUMNS["instruments"]) for i in record.instruments])
            _insert(db, "llm_calls", [_row(c, COLUMNS["llm_calls"], recorded_with=key) for c in record.llm_calls])
        return True

    def _upsert_participant(self, db: sqlite3.Connection, record: SessionRecord) -> None:
        # one participant has a session per domain: the first writes the row, the rest must agree
        row = _row(record.participant, COLUMNS["participants"])
        stored = db.execute(
            "SELECT * FROM participants WHERE participant_id = ? AND source = ?", row[:2]
        ).fetchone()
        if stored is None:
            _insert(db, "participants", [row])
        elif tuple(stored) != row:
            raise StoreError(f"participant {row[0]!r} ({row[1]}) is stored as {tuple(stored)}, this session says {row}")

    def write_failure(self, failure: SessionFailure) -> None:
        """Record a session that failed as a whole (kept across resumes; a later success supersedes it)."""
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM sessions WHERE conversation_id = ?", (failure.conversation_id,)).fetchone():
                raise StoreError(f"session {failure.conversation_id!r} is already complete; not recording a failure")
            _insert(db, "failures", [_row(failure, COLUMNS["failures"], failed_at=_now())])
            _insert(
                db, "llm_calls", [_row(c, COLUMNS["llm_calls"], recorded_with=failure.conversation_id) for c in failure.llm_calls]
            )

    def write_arms(self, arms: Iterable[ArmRecord]) -> None:
        """Record the run's arms in config order (once: a resume has the same arms by its config)."""
        with self._transaction() as db:
            db.executemany(f"INSERT OR IGNORE INTO arms ({', '.join(COLUMNS['arms'])}) VALUES (?, ?, ?)",
                           [_row(a, COLUMNS["arms"]) for a in arms])

    def write_calls(self, calls: Iterable[LLMCallRecord]) -> None:
        """Record model calls that belong to no session (e.g. persona summaries)."""
        with self._transaction() as db:
            _insert(db, "llm_calls", [_row(c, COLUMNS["llm_calls"], recorded_with=None) for c in calls])

    def write_autograde(self, rows: Iterable[AutogradeRecord]) -> int:
        """Add autograder scores in one transaction; returns how many were new.

        A (unit_id, mode, dimension, rater_run) already stored is kept as is, so a
        resumed autograde pass never duplicates; repeat scoring uses a new rater_run.
        """
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                f"INSERT INTO autograde ({', '.join(COLUMNS['autograde'])}) VALUES ({', '.join('?' * len(COLUMNS['autograde']))})"
                " ON CONFLICT (unit_id, mode, dimension, rater_run) DO NOTHING",
                [_row(r, COLUMNS["autograde"]) for r in rows],
            )
            return db.total_changes - before

    def set_meta(self, key: str, value: Any) -> None:
        """Store (or replace) a derived result under ``key`` in the run's meta, e.g. the
        autograder's reliability. The keys a resume is checked against cannot be changed."""
        if key in MATCHED_META or key in ("store_schema", "store_id"):
            raise StoreError(f"meta key {key!r} is fixed when the run is created")
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(_jsonable(value))))

    # -- reads

    def meta(self) -> dict[str, Any]:
        """The run's metadata (config, prompt hashes, models, seed, version, created_at, command, …)."""
        return {k: json.loads(v) for k, v in self._conn.execute("SELECT key, value FROM meta")}

    def completed_sessions(self) -> set[str]:
        """Conversation ids of every session stored whole."""
        return {r[0] for r in self._conn.execute("SELECT conversation_id FROM sessions")}

    def failed_sessions(self) -> set[str]:
        """Conversation ids of sessions that failed and have not completed since."""
        return {
            r[0]
            for r in self._conn.execute(
                "SELECT DISTINCT conversation_id FROM failures WHERE conversation_id NOT IN (SELECT conversation_id FROM sessions)"
            )
        }

    def autograded(self) -> set[tuple[str, str, str, int]]:
        """(unit_id, mode, dimension, rater_run) of every stored autograde score."""
        return {tuple(r) for r in self._conn.execute("SELECT unit_id, mode, dimension, rater_run FROM autograde")}

    def counts(self) -> StoreCounts:
        """Sessions completed/failed, model calls and tokens per (role, arm), rows per table."""
        by = [
            CallCount(role=r[0], arm=r[1], calls=r[2], errors=r[3], prompt_tokens=r[4], completion_tokens=r[5])
            for r in self._conn.execute(
                "SELECT role, arm, count(*), sum(status != 'ok'), sum(prompt_tokens), sum(completion_tokens)"
                " FROM llm_calls GROUP BY role, arm ORDER BY role, arm"
            )
        ]
        present = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = {t: self._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if t in present else 0 for t in COLUMNS}
        latest = self._conn.execute(
            "SELECT conversation_id, error_type, reason FROM failures WHERE failure_id IN ("
            " SELECT max(failure_id) FROM failures WHERE conversation_id NOT IN (SELECT conversation_id FROM sessions)"
            " GROUP BY conversation_id) ORDER BY conversation_id"
        ).fetchall()
        gen = {str(r[0]): (int(r[1] or 0), int(r[2])) for r in self._conn.execute(
            "SELECT arm, sum(gen_error), count(*) FROM turns WHERE role = 'assistant' AND arm IS NOT NULL GROUP BY arm")}
        return StoreCounts(
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


    def merge_from(self, shard: str | Path) -> int:
        """Take in another store's sessions, failures, calls and scores; returns the new sessions.

        One transaction per shard; a shard already merged is skipped; a session stored in
        both with different content raises ``DuplicateSessionError`` and merges nothing.
        """
        path = _store_path(shard)
        shard_meta = run_meta(path)  # an older shard's store is brought to this schema here (the SQL below uses its names)
        if shard_meta.get("store_schema") != STORE_SCHEMA_VERSION:
            raise InputError(f"store schema {shard_meta.get('store_schema')} is not {STORE_SCHEMA_VERSION} (made by "
                             "another simlab version); nothing was merged", file=path)
        merged = self.meta().get("merged", [])
        if shard_meta.get("store_id") in {m["store_id"] for m in merged}:
            return 0
        db = self._conn
        db.execute("ATTACH DATABASE ? AS shard", (str(path),))  # not allowed inside a transaction
        try:
            with self._transaction():
                clash = db.execute(
                    "SELECT s.conversation_id FROM shard.sessions s JOIN main.sessions m USING (conversation_id)"
                    " WHERE s.record_sha256 != m.record_sha256"
                ).fetchall()
                if clash:
                    raise DuplicateSessionError(f"{path} and {self.path} hold different results for {[c[0] for c in clash]}")
                clash = db.execute(
                    "SELECT s.participant_id FROM shard.participants s JOIN main.participants m USING (participant_id, source)"
                    " WHERE s.persona_id IS NOT m.persona_id OR s.rendering IS NOT m.rendering"
                    " OR s.simulator_model IS NOT m.simulator_model"
                ).fetchall()
                if clash:
                    raise StoreError(f"{path} and {self.path} describe participants differently: {[c[0] for c in clash]}")
                db.execute("CREATE TEMP TABLE IF NOT EXISTS new_keys (k TEXT PRIMARY KEY)")
                db.execute("DELETE FROM temp.new_keys")
                db.execute(
                    "INSERT INTO temp.new_keys SELECT conversation_id FROM shard.sessions"
                    " WHERE conversation_id NOT IN (SELECT conversation_id FROM main.sessions)"
                )
                n_new = db.execute("SELECT count(*) FROM temp.new_keys").fetchone()[0]
                db.execute(
                    "INSERT INTO main.participants SELECT * FROM shard.participants s WHERE NOT EXISTS (SELECT 1 FROM"
                    " main.participants m WHERE m.participant_id = s.participant_id AND m.source = s.source)"
                )
                for table in ("sessions", "conversations", "turns", "judgements", "bdm", "instruments"):
                    cols = ", ".join(COLUMNS[table])
                    db.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM shard.{table}"
                        f" WHERE conversation_id IN (SELECT k FROM temp.new_keys)"
                    )
                cols = ", ".join(COLUMNS["llm_calls"])
                db.execute(
                    f"INSERT INTO main.llm_calls ({cols}) SELECT {cols} FROM shard.llm_calls WHERE recorded_with IS NULL"
                    " OR recorded_with IN (SELECT k FROM temp.new_keys)"
                    " OR recorded_with IN (SELECT conversation_id FROM shard.failures) ORDER BY call_id"
                )
                for table in ("failures", "autograde", "arms"):
                    cols = ", ".join(COLUMNS[table])
                    db.execute(
                        f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM shard.{table} WHERE true"
                        " ON CONFLICT DO NOTHING"
                    )
                merged.append({"store_id": shard_meta.get("store_id"), "path": str(path), "sessions": n_new, "at": _now()})
                db.execute("INSERT OR REPLACE INTO meta VALUES ('merged', ?)", (json.dumps(merged),))
        finally:
            db.execute("DETACH DATABASE shard")
        return n_new


def merge(out_dir: str | Path, shards: Iterable[str | Path], ignore: Iterable[str] = RESUMABLE_KEYS) -> RunStore:
    """Merge the stores of disjoint shards of one run (e.g. ``--shard i/n``) into ``out_dir``.

    Every shard must have the same config as the merged store, except the top-level
    keys in ``ignore`` (default: ``RESUMABLE_KEYS``); otherwise ``ConfigMismatchError``.
    """
    paths = [_store_path(p) for p in shards]
    if not paths:
        raise InputError("merge needs at least one shard store", field="shards")
    metas = [run_meta(p) for p in paths]
    base = {k: v for k, v in metas[0].items() if k in MATCHED_META}
    for path, meta in zip(paths, metas):
        differences, _ = _meta_differences(base, {k: v for k, v in meta.items() if k in MATCHED_META}, ignore)
        if differences:
            raise ConfigMismatchError(path, differences)
    target = RunStore.open_or_create(out_dir, base, ignore)
    for path in paths:
        target.merge_from(path)
    return target


def _insert(db: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        cols = COLUMNS[table]
        db.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)


def _version() -> str:
    from simlab import __version__

    return __version__


# ---------------------------------------------------------------- readers


def _open_readonly(path: str | Path) -> sqlite3.Connection:
    p = _store_path(path)
    if not p.exists():
        raise InputError("no run store here", file=p)
    conn = _connect(p, readonly=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone()
        found = None if row is None else json.loads(row[0])
    except (sqlite3.DatabaseError, ValueError):
        return conn  # not a store: the caller says so in its own words
    if isinstance(found, int) and found in _MIGRATE:
        # an older simlab's store (a report or analysis of an old run, a shard to merge): brought
        # to this schema once, losslessly, as a resume of it would; the readers use this schema's names
        conn.close()
        RunStore.open(p).close()
        conn = _connect(p, readonly=True)
    return conn


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
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


_ORDER = {
    "participants": "participant_id, source",
    "conversations": "conversation_id",
    "turns": "conversation_id, turn, role DESC, letter",
    "bdm": "conversation_id",
    "llm_calls": "call_id",
    "instruments": "rowid",
    "autograde": "unit_id, mode, dimension, rater_run",
    "failures": "failure_id",
    "sessions": "completed_at, conversation_id",
    "arms": "config_order",
}


def read_table(path: str | Path, table: str) -> pd.DataFrame:
    """One stored table as a typed DataFrame (also ``sessions``, ``instruments``, ``failures``)."""
    if table not in COLUMNS:
        raise InputError(f"unknown table {table!r}; stored tables: {', '.join(COLUMNS)}", field="table")
    with _closing(_open_readonly(path)) as conn:
        cols = ", ".join(COLUMNS[table])
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return _typed(pd.DataFrame(columns=list(COLUMNS[table])))  # a store made before the table existed
        return _typed(pd.read_sql_query(f"SELECT {cols} FROM {table} ORDER BY {_ORDER.get(table, 'rowid')}", conn))


JUDGEMENT_COLUMNS = (
    "conversation_id", "participant_id", "source", "domain", "arm", "letter", "position", "opening_choice",
    "provenance_guess", "rank", "provenance_rank", "rating_preference", "rating_engagingness",
    "rating_provenance", "wtp_bid",
)


def load_run(path: str | Path) -> Tables:
    """A run's records as ``Tables`` (``path``: the run directory or its store.sqlite).

    Judgements carry participant_id, source and domain from their conversation;
    ``arm_letters`` is a JSON string; booleans are pandas ``boolean``, counts ``Int64``.
    """
    with _closing(_open_readonly(path)) as conn:
        cols = ", ".join(f"c.{c}" if c in ("participant_id", "source", "domain") else f"j.{c}" for c in JUDGEMENT_COLUMNS)
        judgements = _typed(
            pd.read_sql_query(
                f"SELECT {cols} FROM judgements j JOIN conversations c USING (conversation_id)"
                " ORDER BY j.conversation_id, j.position",
                conn,
            )
        )
    frames = {name: read_table(path, name)
              for name in ("participants", "conversations", "turns", "bdm", "autograde", "llm_calls", "arms")}
    return Tables(judgements=judgements, **frames)


def command_line() -> str:
    """The command as the user typed it: ``python -m simlab.run --limit 1``, ``simlab run …``,
    not the path of the module file that ``sys.argv[0]`` holds."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    if len(argv) >= 3 and argv[1] == "-m":  # python -m simlab.run …
        return shlex.join([Path(argv[0]).name, *argv[1:]])
    if len(argv) >= 2 and Path(argv[1]).name == "simlab":  # the console script (a shebang runs python on it)
        return shlex.join(["simlab", *argv[2:]])
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def read_counts(path: str | Path) -> StoreCounts:
    """``RunStore.counts`` of a run, read through a read-only connection (a report changes nothing)."""
    with _closing(_open_readonly(path)) as conn:
        return RunStore(_store_path(path), conn).counts()


def run_meta(path: str | Path) -> dict[str, Any]:
    """The run's metadata: resolved config, prompt hashes, models, seed, version, created_at, command."""
    with _closing(_open_readonly(path)) as conn:
        try:
            rows = list(conn.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:
            # a zero-byte, truncated, overwritten or foreign file where a store should be
            raise InputError(f"not a readable simlab run store ({exc}); nothing was changed",
                             file=_store_path(path)) from None
    meta: dict[str, Any] = {}
    for key, value in rows:
        try:
            meta[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError) as exc:
            raise InputError(f"the stored value is not valid JSON ({exc}); the store is damaged, nothing was changed",
                             file=_store_path(path), field=f"meta.{key}") from None
    if "config" not in meta:
        raise InputError("the run store has no stored config (not made by simlab run?)", file=_store_path(path),
                         field="meta.config")
    return meta


def export(path: str | Path, out_dir: str | Path, fmt: Literal["csv", "parquet", "jsonl"] = "csv") -> Path:
    """Write a run's tables to ``out_dir`` (one file per table, plus instruments, failures and meta.json).

    CSV is for spreadsheets: text cells that would run as formulas (``=``, ``+``, ``-``, ``@``…)
    get a leading apostrophe. Parquet and JSONL keep every value as stored."""
    if fmt not in ("csv", "parquet", "jsonl"):
        raise InputError(f"unknown export format {fmt!r}; use csv, parquet or jsonl", field="fmt")
    out = load_run(path).write(out_dir, fmt, spreadsheet_safe=True)
    for name in ("instruments", "failures"):
        frame, target = read_table(path, name), out / f"{name}.{fmt}"
        if fmt == "csv":
            spreadsheet_safe_frame(frame).to_csv(target, index=False)
        elif fmt == "jsonl":
            frame.to_json(target, orient="records", lines=True)
        else:
            frame.to_parquet(target, index=False)
    (out / "meta.json").write_text(json.dumps(run_meta(path), indent=2, sort_keys=True))
    return out


@contextmanager
def _closing(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield conn
    finally:
        conn.close()


__all__ = [
    "ConfigMismatchError",
    "DuplicateSessionError",
    "RunStore",
    "StoreCounts",
    "StoreError",
    "diff_config",
    "export",
    "merge",
    "load_run",
    "read_table",
    "run_meta",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m simlab.store export RUN_DIR OUT_DIR`` / ``merge OUT_DIR SHARD_DIR…``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m simlab.store",
                                     description="Export a run's tables, or merge the stores of --shard i/n runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write every table of a run as CSV, Parquet or JSONL")
    ex.add_argument("run_dir")
    ex.add_argument("out_dir")
    ex.add_argument("--format", default="csv", choices=["csv", "parquet", "jsonl"])
    mg = sub.add_parser("merge", help="merge shard run directories into one run directory")
    mg.add_argument("out_dir")
    mg.add_argument("shards", nargs="+")
    args = parser.parse_args(argv)

    def body() -> int:
        if args.command == "export":
            print(export(args.run_dir, args.out_dir, args.format))
        else:
            with merge(args.out_dir, args.shards) as store:
                print(f"{args.out_dir}: {store.counts().sessions_completed} sessions")
        return 0

    return exit_status(body)


if __name__ == "__main__":
    sys.exit(main())
