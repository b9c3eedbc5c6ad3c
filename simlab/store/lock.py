"""The run lock: one process writes a run at a time.

A writer (``simlab run`` and its resume, ``store merge`` into a run, ``autograde``,
``sim-judgement``) takes an exclusive ``flock`` on ``run.lock`` in the run directory for as long
as its store is open, then writes who it is (pid, host, since when, the command) into the file. A
second writer finds the lock taken and is refused with that holder named (``RunLocked``, exit
status 2), or waits for it when asked. The kernel releases the lock when the holder's process
ends, however it ends (SIGKILL included), so a dead holder never blocks a run; the file it leaves
is only read while someone holds the lock. Readers (``report``, ``export``, ``simlab view``) never
take it.

``flock`` is exact on a local disk. On NFS the Linux client turns it into a byte-range lock that
the server keeps while the client's lease lives; Lustre needs the ``flock`` mount option, without
which the lock cannot be taken (simlab then warns and writes unlocked). Stores belong on local disk
anyway (``simlab.store.filesystem``).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from simlab.errors import InputError
from simlab.store.meta import command_line, now

__all__ = ["LOCK_FILE", "WAIT_ENV", "RunLock", "RunLocked", "RunLockUnavailableWarning", "lock_path", "read_holder"]

LOCK_FILE = "run.lock"

WAIT_ENV = "SIMLAB_WAIT_LOCK"
"""Environment variable: seconds a writer waits for a run another process holds (default 0: refuse)."""

_POLL_S = 0.1


class RunLocked(InputError):
    """The run is being written by another live process (named in the message); nothing was written."""

    def __init__(self, path: Path, holder: dict[str, Any] | None, waited_s: float) -> None:
        self.holder = holder or {}
        who = describe_holder(self.holder)
        waited = f" (waited {waited_s:.1f} s)" if waited_s > 0 else ""
        pid = self.holder.get("pid")
        stop = f"stop it (kill {pid} on {self.holder.get('host', 'its host')}) and resume" if pid else "stop it"
        super().__init__(
            f"another simlab process is writing this run{waited}: {who}. Nothing was written. Run the command again "
            f"when it has finished (or with {WAIT_ENV}=SECONDS set, to wait for it), or {stop} with the same "
            "command; a process that ended, however it ended, holds no lock",
            file=path)


class RunLockUnavailableWarning(UserWarning):
    """The file system cannot take the run lock (e.g. Lustre without the ``flock`` mount option)."""


def lock_path(store_file: Path) -> Path:
    """The lock file of a store file: ``run.lock`` beside ``store.sqlite``, else ``<file>.lock``."""
    from simlab.store.connection import STORE_FILE

    name = LOCK_FILE if store_file.name == STORE_FILE else f"{store_file.name}.lock"
    return store_file.with_name(name)


def read_holder(path: Path) -> dict[str, Any] | None:
    """What the lock file says of its holder, or None (no file, or not written yet)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 123 on host node7 since 2026-12-08T02:00:00+00:00 (5 min ago), command 'simlab run'``."""
    if not holder:
        return "a process that has not written its name yet (it is starting)"
    since = str(holder.get("since", "?"))
    try:
        ago = (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(since)).total_seconds()
        since += f" ({_ago(ago)})"
    except ValueError:
        pass
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {since}, "
            f"command {holder.get('command', '?')!r}")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


# lock file (resolved) → [fd, holders in this process]: a process that opens one run twice (e.g. a
# merge that reopens its output) shares its own lock instead of refusing itself
_HELD: dict[str, list[int]] = {}
_HELD_GUARD = threading.Lock()


class RunLock:
    """An exclusive lock on a run, held from ``acquire`` to ``release`` (or the process's end).

    ``wait``: seconds to wait for another holder (None: ``$SIMLAB_WAIT_LOCK``, default 0 = refuse).

    >>> import tempfile
    >>> from pathlib import Path
    >>> run = Path(tempfile.mkdtemp())
    >>> lock = RunLock(run / "store.sqlite").acquire()
    >>> read_holder(run / "run.lock")["pid"] == os.getpid()
    True
    >>> lock.release()
    >>> (run / "run.lock").exists()
    False
    """

    def __init__(self, store_file: Path, *, wait: float | None = None) -> None:
        self.path = lock_path(store_file)
        self.wait = _wait_default() if wait is None else wait
        self._key: str | None = None

    def acquire(self) -> RunLock:
        """Take the lock; raises ``RunLocked`` naming the holder if it is not free within ``wait``."""
        key = str(self.path.resolve())
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                held[1] += 1
                self._key = key
                return self
        t0 = time.monotonic()
        while True:
            fd = self._try_lock()
            if fd is not None:
                break
            waited = time.monotonic() - t0
            if waited >= self.wait:
                raise RunLocked(self.path, self._holder(), waited)
            time.sleep(min(_POLL_S, max(self.wait - waited, 0.0)))
        if fd >= 0:  # -1: the file system cannot lock (warned); write unlocked
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": now(), "command": command_line()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = [fd, 1]
        self._key = key
        return self

    def _try_lock(self) -> int | None:
        """The locked fd of the lock file as it is now, None when another process holds it, -1 when
        the file system cannot lock."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    warnings.warn(f"{self.path}: this file system cannot take the run lock ({exc.strerror}); writing "
                                  "without it, so make sure no other process writes this run",
                                  RunLockUnavailableWarning, stacklevel=4)
                    return -1
                raise
            # the holder before us may have removed the file between our open and our lock: then the
            # lock is on a file nobody else will find, so take the one at the path again
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _holder(self) -> dict[str, Any] | None:
        # the holder writes its name just after taking the lock: give it a moment
        for _ in range(10):
            holder = read_holder(self.path)
            if holder:
                return holder
            time.sleep(0.05)
        return None

    def release(self) -> None:
        """Let go (the last holder in this process removes the file, then unlocks)."""
        key, self._key = self._key, None
        if key is None:
            return
        with _HELD_GUARD:
            held = _HELD[key]
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[key]
        fd = held[0]
        if fd >= 0:
            try:  # removed while still locked, so no one can take a lock on a file that is going away
                self.path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._key is not None


def _wait_default() -> float:
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"must be a number of seconds, got {text!r}", field=f"${WAIT_ENV}") from None
    if not value >= 0:
        raise InputError(f"must be 0 or more seconds, got {text!r}", field=f"${WAIT_ENV}")
    return value
