"""Where a run's store file is and how it is opened: read-write for a writer (WAL, full sync), or
read-only (SQLite ``mode=ro``) for a reader, which then cannot change the file however it is used."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simlab.store.filesystem import warn_if_network

__all__ = ["STORE_FILE", "closing", "connect", "store_path"]

STORE_FILE = "store.sqlite"


def store_path(path: str | Path) -> Path:
    """The store file of ``path``: a run directory's ``store.sqlite``, or ``path`` itself if it is a .sqlite file."""
    p = Path(path)
    return p / STORE_FILE if p.is_dir() or p.suffix != ".sqlite" else p


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (callers BEGIN/COMMIT themselves) with foreign keys on.

    ``readonly``: SQLite opens the file with ``mode=ro``, so no statement (and no migration) can
    write to it. Otherwise the file is created if missing and put in WAL mode. Either way the
    connection takes URI file names, so a writer can ATTACH a shard read-only.
    """
    uri = path.resolve().as_uri()
    if readonly:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
    else:
        warn_if_network(path)
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed session survives power loss too; one fsync per session is cheap
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


@contextmanager
def closing(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``conn``, closed on leaving the block (sqlite3's own context manager commits, it does not close)."""
    try:
        yield conn
    finally:
        conn.close()
