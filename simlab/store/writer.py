"""``RunStore``: the one writer of a run's store. A completed session is committed in one transaction
(all its rows or none), so a killed run leaves only whole sessions and its resume redoes the rest.
Every row it writes has the run's API keys scrubbed from its text (``RunStore.redact``), so no
reply, call, failure, export or report of the run can hold one. A run's event loop hands its writes
to the store's writer thread (``RunStore.in_background``): a commit waits for the disk (fsync, a
WAL checkpoint) on that thread, not on the loop that drives the sessions."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from simlab.errors import InputError, SimlabError
from simlab.records import ArmRecord, AutogradeRecord, LLMCallRecord, SessionFailure, SessionRecord
from simlab.redaction import Redactor
from simlab.store.connection import STORE_FILE, connect, store_path
from simlab.store.creation import build_store, clear_leftovers, make_run_dir, remove_made, take_lock, unborn_store
from simlab.store.damage import disk_full, is_disk_full, quick_check
from simlab.store.lock import RunLock
from simlab.store.meta import (
    LATEST_META,
    MATCHED_META,
    ConfigMismatchError,
    added_variants,
    command_line,
    jsonable,
    latest_changes,
    meta_differences,
    now,
)
from simlab.store.migration import OLDER_VERSIONS, migrate
from simlab.store.readers import StoreCounts, store_counts
from simlab.store.schema import COLUMNS, DDL, STORE_SCHEMA_VERSION

__all__ = ["DuplicateSessionError", "RunStore", "StoreError"]

T = TypeVar("T")


class StoreError(SimlabError):
    """A run store used against its rules (e.g. two different results for one session)."""


class DuplicateSessionError(StoreError):
    """A session already complete in the store was written again with different content."""


def _row(record: BaseModel, columns: tuple[str, ...], **extra: Any) -> tuple[Any, ...]:
    data = {**record.model_dump(), **extra}
    return tuple(json.dumps(data[c], sort_keys=True) if isinstance(data[c], dict) else data[c] for c in columns)


ROWS_PER_INSERT = 100
"""Rows one INSERT statement carries. A session's rows go in a few statements, not one per row: on
the store's writer thread each statement gives up the interpreter's lock and waits to get it back
from the busy event loop (up to the 5 ms switch interval), which one per row made the writer's
bottleneck (23 against 56 sessions/s with a busy loop beside it)."""


def _insert(db: sqlite3.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (in ``COLUMNS[table]`` order) into ``table``, ``ROWS_PER_INSERT`` at a time."""
    cols = COLUMNS[table]
    one = f"({', '.join('?' * len(cols))})"
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        db.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES {', '.join([one] * len(chunk))}",
                   [v for row in chunk for v in row])


def _stored_config(conn: sqlite3.Connection) -> Any:
    """The config stored in a store's meta as plain data; None when missing or unreadable (the
    callers that need it say what is wrong with it)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        return json.loads(row[0]) if row else None
    except (sqlite3.Error, ValueError, TypeError):
        return None


def _version() -> str:
    from simlab import __version__

    return __version__


class RunStore:
    """A run's SQLite store, open for writing. Create with ``create``/``open_or_create``, reopen with
    ``open`` (which migrates a store of an older simlab); the readers in ``simlab.store.readers``
    read without writing."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock: RunLock | None = None) -> None:
        self.path = path
        self._main_conn = conn
        self._lock = lock
        self._writer: ThreadPoolExecutor | None = None  # started by the first in_background call
        self._writer_conn: sqlite3.Connection | None = None  # the writer thread's own connection
        self._writer_thread = 0
        self.redact = Redactor.of_config(_stored_config(conn))
        """The key values the run's config names (its endpoints' ``api_key_env``), read once when the
        store is opened: scrubbed from every record written. A caller using other endpoints (e.g.
        a judge pass with its own config) adds theirs with ``Redactor.adding``."""

    # -- lifecycle

    @classmethod
    def create(cls, run_dir: str | Path, meta: Mapping[str, Any], *, wait_lock: float | None = None) -> RunStore:
        """Make ``run_dir`` and a new store in it holding ``meta`` (secrets redacted).

        The store is built in a temporary file and renamed into place, so it either exists whole
        or not at all; if it cannot be made, the directories made for it are removed again.
        ``wait_lock``: seconds to wait for another process writing this run (``RunLock``)."""
        path = Path(run_dir) / STORE_FILE
        if path.exists() and not unborn_store(path):
            raise InputError("a run store already exists here; resume it or choose a new run id", file=path)
        made = make_run_dir(Path(run_dir))
        lock = take_lock(path, wait_lock, made)
        try:
            if path.exists() and not unborn_store(path):  # made by another process while we waited for the lock
                raise InputError("a run store already exists here; resume it or choose a new run id", file=path)
            clear_leftovers(path.parent)
            full = {
                "simlab_version": _version(),
                "created_at": now(),
                "command": command_line(),
                **{k: jsonable(v) for k, v in meta.items()},
                "store_schema": STORE_SCHEMA_VERSION,
                "store_id": uuid.uuid4().hex,  # lets a merge recognise a shard it already took in
            }
            build_store(path, DDL, [(k, json.dumps(v)) for k, v in full.items()])
            conn = connect(path)
        except BaseException:
            lock.release()
            remove_made(made)
            raise
        return cls(path, conn, lock)

    @classmethod
    def open(cls, run_dir: str | Path, *, wait_lock: float | None = None) -> RunStore:
        """Open an existing store (``run_dir`` or the .sqlite file) for reading and writing.

        A store made by an older simlab is migrated to this schema first (in one transaction).
        The run's lock is taken first: another process writing it is named and refused
        (``RunLocked``) unless it lets go within ``wait_lock`` seconds."""
        path = store_path(run_dir)
        if not path.exists():
            raise InputError("no run store here", file=path)
        lock = take_lock(path, wait_lock, [])
        try:
            quick_check(path)  # a damaged store is refused before anything is written to it
            return cls._open_locked(path, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, path: Path, lock: RunLock) -> RunStore:
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(path)
            version = conn.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise InputError(f"not a simlab run store: {exc}", file=path) from exc
        found = None if version is None else json.loads(version[0])
        if isinstance(found, int) and found in OLDER_VERSIONS:
            try:
                migrate(conn, found)
            except sqlite3.Error as exc:
                conn.close()
                raise InputError(f"store schema {found} could not be brought to {STORE_SCHEMA_VERSION} (nothing "
                                 f"was changed): {exc}", file=path) from exc
        elif found != STORE_SCHEMA_VERSION:
            conn.close()
            raise InputError(f"store schema {found} is not {STORE_SCHEMA_VERSION} (made by another simlab "
                             "version; its results are untouched)", file=path)
        return cls(path, conn, lock)

    @classmethod
    def open_or_create(cls, run_dir: str | Path, meta: Mapping[str, Any], *,
                       wait_lock: float | None = None) -> RunStore:
        """Resume the run in ``run_dir`` if its ``MATCHED_META`` (the experiment, prompts, models,
        seed) matches ``meta``, else create it.

        Raises ``ConfigMismatchError`` naming every differing field, ``RunLocked`` naming the
        process writing the run. A resume replaces the ``LATEST_META`` (the config of this call)
        and records what it changed.
        """
        # the lock first, then the look: two processes starting one run cannot both create it
        path = Path(run_dir) / STORE_FILE
        made = make_run_dir(Path(run_dir))
        lock = take_lock(path, wait_lock, made)
        try:
            created = not path.exists() or unborn_store(path)
            store = cls.create(run_dir, meta) if created else cls.open(run_dir)
        except BaseException:
            lock.release()
            remove_made(made)
            raise
        lock.release()  # the store holds the lock on its own from here
        if created:
            return store
        # the keys of this call's config too (a resume may name other variables than the stored config)
        store.redact = Redactor(store.redact.secrets | Redactor.of_config(jsonable(meta.get("config"))).secrets)
        stored = store.meta()
        differences = meta_differences(stored, meta)
        if differences:
            store.close()
            raise ConfigMismatchError(store.path, differences)
        changed = latest_changes(stored, meta)
        added = added_variants(stored, meta)
        # a call that adds simulator variants records their definitions: a later call must match them too
        kept = [*LATEST_META, *(("experiment", "models", "variant_prompts") if added else ())]
        resumes = stored.get("resumes", []) + [{"at": now(), "command": command_line(), "changed": changed,
                                                **({"added_variants": added} if added else {})}]
        with store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('resumes', ?)", (json.dumps(resumes),))
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [(k, json.dumps(jsonable(meta[k]))) for k in kept if k in meta])
        return store

    @property
    def _conn(self) -> sqlite3.Connection:
        """The connection of the calling thread: the writer thread has its own (SQLite serialises
        the two connections' transactions; each sees only what the other committed)."""
        if self._writer_conn is not None and threading.get_ident() == self._writer_thread:
            return self._writer_conn
        return self._main_conn

    def _open_writer(self) -> None:
        self._writer_conn = connect(self.path)
        self._writer_thread = threading.get_ident()

    async def in_background(self, write: Callable[..., T], *args: Any) -> T:
        """``write(*args)`` (one of this store's writes, e.g. ``write_session``) on the store's writer
        thread, awaited without blocking the event loop; writes run one at a time, in the order
        given. A write already started when its caller is cancelled still commits or rolls back
        whole (``close`` waits for it)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="simlab-store", initializer=self._open_writer)
        return await asyncio.get_running_loop().run_in_executor(self._writer, lambda: write(*args))

    def close(self) -> None:
        """Wait for the writes handed to the writer thread, then close both connections."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.submit(self._close_writer).result()
            writer.shutdown(wait=True)
        self._main_conn.close()
        if self._lock is not None:
            self._lock.release()

    def _close_writer(self) -> None:
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection (autocommit; write inside ``transaction``)."""
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT; rolled back on any exception).

        A write or commit that finds the disk full raises ``DiskFullError`` (after the rollback,
        so the store keeps only whole transactions)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:  # SQLite rolled back itself (e.g. on a full disk)
                    pass
            if isinstance(exc, (sqlite3.Error, OSError)) and is_disk_full(exc):
                raise disk_full(self.path, exc) from exc
            raise

    # -- writes

    def write_session(self, record: SessionRecord) -> bool:
        """Commit one completed session atomically. True if written, False if already stored identically.

        Raises ``DuplicateSessionError`` if the session is stored with different content.
        """
        record = self.redact.scrub_model(record)  # before the digest: a resume compares scrubbed content
        key = record.conversation.conversation_id
        # without answers of added instruments the digest is the one an older simlab stored
        digest = hashlib.sha256(record.model_dump_json(exclude=None if record.answers else {"answers"}).encode()).hexdigest()
        conv = record.conversation
        with self.transaction() as db:
            existing = db.execute("SELECT record_sha256 FROM sessions WHERE conversation_id = ?", (key,)).fetchone()
            if existing is not None:
                if existing[0] == digest:
                    return False
                raise DuplicateSessionError(f"session {key!r} is already complete in {self.path} with different content")
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (key, conv.participant_id, conv.source, conv.domain, digest, now()),
            )
            self._upsert_participant(db, record)
            _insert(db, "conversations", [_row(conv, COLUMNS["conversations"])])
            _insert(db, "turns", [_row(t, COLUMNS["turns"]) for t in record.turns])
            _insert(db, "judgements", [_row(j, COLUMNS["judgements"]) for j in record.judgements])
            _insert(db, "bdm", [_row(b, COLUMNS["bdm"]) for b in record.bdm])
            _insert(db, "instruments", [_row(i, COLUMNS["instruments"]) for i in record.instruments])
            _insert(db, "answers", [_row(a, COLUMNS["answers"]) for a in record.answers])
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
        failure = self.redact.scrub_model(failure)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM sessions WHERE conversation_id = ?", (failure.conversation_id,)).fetchone():
                raise StoreError(f"session {failure.conversation_id!r} is already complete; not recording a failure")
            _insert(db, "failures", [_row(failure, COLUMNS["failures"], failed_at=now())])
            _insert(
                db, "llm_calls", [_row(c, COLUMNS["llm_calls"], recorded_with=failure.conversation_id) for c in failure.llm_calls]
            )

    def write_arms(self, arms: Iterable[ArmRecord]) -> None:
        """Record the run's arms in config order (once: a resume has the same arms by its config)."""
        arms = [self.redact.scrub_model(a) for a in arms]
        with self.transaction() as db:
            db.executemany(f"INSERT OR IGNORE INTO arms ({', '.join(COLUMNS['arms'])}) VALUES (?, ?, ?)",
                           [_row(a, COLUMNS["arms"]) for a in arms])

    def write_calls(self, calls: Iterable[LLMCallRecord]) -> None:
        """Record model calls that belong to no session (e.g. persona summaries)."""
        calls = [self.redact.scrub_model(c) for c in calls]
        with self.transaction() as db:
            _insert(db, "llm_calls", [_row(c, COLUMNS["llm_calls"], recorded_with=None) for c in calls])

    def write_autograde(self, rows: Iterable[AutogradeRecord]) -> int:
        """Add autograder scores in one transaction; returns how many were new.

        A (unit_id, mode, dimension, rater_run) already stored is kept as is, so a
        resumed autograde pass never duplicates; repeat scoring uses a new rater_run.
        """
        rows = [self.redact.scrub_model(r) for r in rows]
        with self.transaction() as db:
            before = db.total_changes
            db.executemany(
                f"INSERT INTO autograde ({', '.join(COLUMNS['autograde'])}) VALUES ({', '.join('?' * len(COLUMNS['autograde']))})"
                " ON CONFLICT (unit_id, mode, dimension, rater_run) DO NOTHING",
                [_row(r, COLUMNS["autograde"]) for r in rows],
            )
            return db.total_changes - before

    def set_meta(self, key: str, value: Any) -> None:
        """Store (or replace) a derived result under ``key`` in the run's meta, e.g. the
        autograder's reliability. The keys a resume is checked against, and the config a call
        records (``LATEST_META``, replaced by the next resume), cannot be set this way."""
        if key in MATCHED_META or key in LATEST_META or key in ("store_schema", "store_id"):
            raise StoreError(f"meta key {key!r} is written by the run's calls, not set afterwards")
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(self.redact.scrub(jsonable(value)))))

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

    def cost_usd(self) -> float:
        """USD of every stored call (calls stored before costs were kept count $0)."""
        return float(self._conn.execute("SELECT total(cost_usd) FROM llm_calls").fetchone()[0])

    def counts(self) -> StoreCounts:
        """Sessions completed/failed, model calls and tokens per (role, arm), rows per table."""
        return store_counts(self._conn)
