"""Making a run's store so that it exists whole or not at all.

The schema and meta are written to a temporary file beside ``store.sqlite`` and renamed into
place, so a store that cannot be made (a full disk, an unwritable folder, a kill) leaves no empty
``store.sqlite`` behind that the next command would take for a damaged run; the run directories
made for it are removed again. A zero-byte or table-less ``store.sqlite`` (left by a simlab that
created stores in place) counts as not made yet.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from simlab.errors import InputError
from simlab.store.lock import RunLock

__all__ = ["MERGING_PREFIX", "build_store", "cannot_create", "clear_leftovers", "make_run_dir", "remove_made",
           "take_lock", "unborn_store"]

_SIDE_FILES = ("", "-wal", "-shm", "-journal")

MERGING_PREFIX = ".merging-"
"""The folder a merge into a new run builds its store in, renamed into place when every shard is in."""


def cannot_create(path: Path, exc: BaseException, what: str = "the run store") -> InputError:
    """The error for an output that cannot be made: the path, the system's reason, what to do."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return InputError(f"cannot create {what} here ({reason}); nothing was written. Choose a folder you can write "
                      "to on a local disk with free space (--out), or fix this one's permissions", file=path)


def make_run_dir(run_dir: Path) -> list[Path]:
    """Make ``run_dir`` and its missing parents; returns those made (outermost first)."""
    missing = [p for p in [run_dir, *run_dir.parents] if not p.exists()][::-1]
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError("is a file, not a run directory", file=run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_made(missing)
        raise cannot_create(run_dir, exc, "the run directory") from exc
    return missing


def remove_made(made: Sequence[Path]) -> None:
    """Remove the directories ``make_run_dir`` made, innermost first, where they are still empty."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            return


def take_lock(store_file: Path, wait: float | None, made: Sequence[Path]) -> RunLock:
    """The run's lock (``RunLock``), with an unusable lock file reported like an unwritable folder."""
    try:
        return RunLock(store_file, wait=wait).acquire()
    except OSError as exc:
        remove_made(made)
        raise cannot_create(store_file.parent, exc, "the run's lock file") from exc
    except BaseException:
        remove_made(made)
        raise


def unborn_store(path: Path) -> bool:
    """True for a ``store.sqlite`` that holds nothing: zero bytes, or a database without tables."""
    try:
        if path.stat().st_size == 0:
            wal = path.with_name(path.name + "-wal")
            return not wal.exists() or wal.stat().st_size == 0
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]) == 0
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return False  # unreadable or damaged: the opener says what is wrong with it


def build_store(path: Path, ddl: Iterable[str], meta_rows: Sequence[tuple[str, str]]) -> None:
    """Write a new store at ``path``: ``ddl`` and the ``meta`` rows in a temporary file, renamed into
    place. On any failure nothing is left (an ``InputError`` says why and what to do)."""
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".creating")
        os.close(fd)
        tmp = Path(name)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: the renamed store is in WAL mode
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in ddl:
                conn.execute(statement)
            conn.executemany("INSERT INTO meta VALUES (?, ?)", meta_rows)
            conn.execute("COMMIT")
        finally:
            conn.close()  # the last connection: SQLite folds the log into the file and removes it
        os.replace(tmp, path)
        tmp = None
        _sync_dir(path.parent)
    except (OSError, sqlite3.Error) as exc:
        raise cannot_create(path, exc) from exc
    finally:
        if tmp is not None:
            for suffix in _SIDE_FILES:
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)


def clear_leftovers(run_dir: Path) -> None:
    """Remove what a killed creation or merge left in ``run_dir`` (temporary stores, merge folders).
    Call with the run's lock held: nobody else is then building in it."""
    import shutil

    for leftover in run_dir.glob(".*.creating*"):
        leftover.unlink(missing_ok=True)
    for folder in run_dir.glob(f"{MERGING_PREFIX}*"):
        shutil.rmtree(folder, ignore_errors=True)


def _sync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it survives power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
