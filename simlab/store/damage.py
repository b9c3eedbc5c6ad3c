"""Damaged stores: telling a truncated, overwritten or corrupted ``store.sqlite`` apart on open, so a
command stops with what is wrong and what to do (``simlab store salvage``) instead of a traceback,
and a full disk, so a writer stops saying which file system filled up.

Opening for writing (a resume, a merge into the run) runs SQLite's ``PRAGMA quick_check`` first,
read-only, so a damaged store is refused before anything is written to it. Readers check only the
file's header (a read of 100 bytes): a full check reads the whole file, which a report or an
export of a large run would pay on every open; damage met while reading is named by ``naming``.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simlab.errors import InputError, SimlabError
from simlab.store.connection import closing, connect, store_path

__all__ = [
    "DamagedStoreError",
    "DiskFullError",
    "check_header",
    "disk_full",
    "is_damage",
    "is_disk_full",
    "naming",
    "quick_check",
]

_MAGIC = b"SQLite format 3\x00"
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DamagedStoreError(InputError):
    """A run store whose file is damaged (truncated, overwritten, corrupted pages): names the file,
    what is wrong, and the ``simlab store salvage`` command that copies out what is intact."""

    def __init__(self, path: str | Path, what: str) -> None:
        file = store_path(path)
        run = file.parent if file.name == "store.sqlite" else file
        self.what = what
        todo = (f"Copy its intact sessions into a new run directory with 'simlab store salvage {run} "
                f"{run}-salvaged', then resume, export or report that one (a resume redoes the sessions that "
                "were lost)")
        if what.startswith("the file is empty"):  # a store whose creation was cut short holds nothing to copy
            todo = f"It holds nothing: delete {file} and run the command that made it again"
        super().__init__(f"not a readable simlab run store: damaged: {what}; nothing was changed. {todo}", file=file)


class DiskFullError(SimlabError):
    """A write that found its file system full (or the file-size limit reached): names the path and
    the free space, and says to free space and run the same command again (completed work is kept)."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = Path(path)
        self.free = _free_bytes(self.path)
        free = "unknown" if self.free is None else _size(self.free)
        super().__init__(
            f"disk full: writing {self.path} failed ({cause}); {free} free on its file system. Nothing "
            "half-written was kept: every completed session is stored whole. Free some space (or move the "
            "run directory to a larger disk), then run the same command again to continue where it stopped")


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size, power = float(n) / 1024, 0
    while size >= 1024 and power < 2:
        size, power = size / 1024, power + 1
    return f"{size:.1f} {('KiB', 'MiB', 'GiB')[power]}"


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` (a ``sqlite3`` error, or pandas' error wrapping one) says the file is damaged."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is None:
            continue
        if _code(e) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return True
        text = str(e)
        if "disk image is malformed" in text or "malformed database schema" in text or "file is not a database" in text:
            return True
    return False


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that found no space (SQLite's SQLITE_FULL, or ENOSPC/EDQUOT/EFBIG)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    if _code(exc) == _SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    # SQLite reports a write that failed with EFBIG (a file-size limit) as an I/O error
    return _code(exc) == _SQLITE_IOERR and isinstance(exc, sqlite3.OperationalError) and "disk I/O" in str(exc) \
        and _over_size_limit()


def _over_size_limit() -> bool:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return False


def disk_full(path: str | Path, exc: BaseException) -> DiskFullError:
    """The ``DiskFullError`` of a write to ``path`` that raised ``exc``."""
    cause = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
    if _code(exc) == _SQLITE_IOERR:  # how SQLite reports EFBIG: say which limit it met
        import resource

        cause += f": the file-size limit (ulimit -f) of {resource.getrlimit(resource.RLIMIT_FSIZE)[0]} bytes was reached"
    return DiskFullError(path, cause)


def check_header(path: str | Path) -> str | None:
    """What is wrong with the SQLite header of the store file of ``path`` (a read of 100 bytes and the
    file's size): empty, not SQLite's, truncated; None when the header looks whole."""
    file = store_path(path)
    size = file.stat().st_size
    wal = file.with_name(file.name + "-wal")
    if size == 0:
        # a store whose every page is still in its write-ahead log is not damaged
        return None if wal.exists() and wal.stat().st_size > 0 else "the file is empty (0 bytes)"
    with file.open("rb") as f:
        head = f.read(100)
    if len(head) < 100:
        return f"the file is truncated ({size} bytes, shorter than SQLite's 100-byte header)"
    if not head.startswith(_MAGIC):
        return "its header is not an SQLite header (zeroed or overwritten)"
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header gives an impossible page size ({page_size})"
    change_counter, pages, valid_for = (struct.unpack(">I", head[i:i + 4])[0] for i in (24, 28, 92))
    if wal.exists() and wal.stat().st_size > 0:
        # pages may be in the write-ahead log only (a checkpoint cut short by a full disk leaves the
        # file shorter than its header says, and whole with its log): SQLite's own check decides
        return None
    if size % page_size:
        return f"the file is truncated ({size} bytes, not a whole number of {page_size}-byte pages)"
    if pages and valid_for == change_counter and pages * page_size > size:
        return f"the file is truncated ({size} bytes of the {pages * page_size} its header gives)"
    return None


def quick_check(path: str | Path) -> None:
    """Raise ``DamagedStoreError`` unless the store of ``path`` passes its header check and SQLite's
    ``PRAGMA quick_check`` (every page and record well formed; reads the whole file, read-only)."""
    file = store_path(path)
    problem = check_header(file)
    if problem is not None:
        raise DamagedStoreError(file, problem)
    try:
        with closing(connect(file, readonly=True)) as conn:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise DamagedStoreError(file, str(exc)) from None
        raise
    if rows != ["ok"]:
        raise DamagedStoreError(file, "SQLite's check found " + "; ".join(rows))


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Turn damage met inside the block (an SQLite error saying the file is malformed, or pandas'
    error wrapping one) into a ``DamagedStoreError`` naming the store of ``path``, and a full disk
    (a reader of a store in WAL mode writes its shared-memory file) into a ``DiskFullError``."""
    try:
        yield
    except DamagedStoreError:
        raise
    except Exception as exc:
        if isinstance(exc, (sqlite3.DatabaseError, _pandas_database_error())):
            cause = exc.__cause__ if isinstance(exc.__cause__, sqlite3.Error) else exc  # pandas wraps SQLite's
            if is_damage(exc):
                raise DamagedStoreError(path, str(cause).split("\n")[0]) from None
            if is_disk_full(cause):
                raise disk_full(store_path(path), cause) from None
        raise


def _pandas_database_error() -> type[Exception]:
    from pandas.errors import DatabaseError

    error: type[Exception] = DatabaseError
    return error
