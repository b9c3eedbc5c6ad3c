"""A full disk: a run stops saying which file system filled, how much is free and what to do (exit
status 1), keeps only whole sessions (``PRAGMA integrity_check`` ok), and the same command completes
the run once there is space; ``store export`` and ``report`` say so without a traceback.

Real file systems: a tmpfs of a few hundred KiB (tmpfs honours its size and gives ENOSPC; needs
root and ``mount``, else skipped saying so), or a file-size limit (``RLIMIT_FSIZE``, EFBIG; needs
no root: Python ignores SIGXFSZ, so the write fails instead of killing the process)."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from simlab.store import RunStore
from simlab.store.damage import DiskFullError
from tests.conftest import REPO
from tests.test_run_cli import stub_toml
from tests.test_store import META, make_session


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (unmounted after)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount here ({exc}): a small file system for the disk-full test needs it")
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): the disk-full test needs root and mount "
                    "(the RLIMIT_FSIZE test covers the same without root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True, timeout=30)


def file_size_limit(limit: int) -> Callable[[], None]:
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


def simlab(*args: str, limit: int | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env, preexec_fn=None if limit is None else file_size_limit(limit))


def sessions_and_check(store: Path) -> tuple[list[str], str]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        keys = [r[0] for r in db.execute("SELECT conversation_id FROM sessions")]
        return keys, db.execute("PRAGMA integrity_check").fetchone()[0]


def test_a_full_disk_keeps_whole_sessions_and_says_where_and_what_to_do(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "256k") as disk:
        store = RunStore.create(disk / "run", META)
        written = 0
        with pytest.raises(DiskFullError) as full:
            for i in range(1000):
                store.write_session(make_session(f"p{i:04d}", n_user_turns=6))
                written += 1
        message = str(full.value)
        assert message.startswith(f"disk full: writing {disk / 'run' / 'store.sqlite'} failed (database or disk is full); ")
        assert " free on its file system" in message and "Free some space" in message
        assert "then run the same command again to continue where it stopped" in message
        assert 0 < written < 1000
        assert len(store.completed_sessions()) == written  # the session that met the full disk left nothing
        store.close()
        keys, check = sessions_and_check(disk / "run" / "store.sqlite")
        assert check == "ok" and len(keys) == written
        resize(disk, "16m")
        with RunStore.open(disk / "run") as again:  # space freed: the store takes the rest
            for i in range(written, written + 3):
                assert again.write_session(make_session(f"p{i:04d}", n_user_turns=6))
            assert len(again.completed_sessions()) == written + 3


def test_export_and_report_past_the_file_size_limit_say_disk_full_without_a_traceback(tmp_path: Path) -> None:
    with RunStore.create(tmp_path / "run", META) as store:
        for i in range(30):
            store.write_session(make_session(f"p{i:04d}", n_user_turns=6))
    out = simlab("simlab.store", "export", str(tmp_path / "run"), str(tmp_path / "export"), limit=65536)
    assert out.returncode == 1, out.stderr
    assert f"error: disk full: writing {tmp_path / 'export'} failed (File too large); " in out.stderr
    assert "Free some space" in out.stderr and "then run the same command again" in out.stderr
    assert "Traceback" not in out.stderr


def _run_until_full(tmp_path: Path, url: str, out_dir: Path, limit: int | None) -> tuple[list[str], list[str]]:
    cfg = stub_toml(tmp_path, url)
    command = ("simlab.run", "--config", str(cfg), "--repeats", "2", "--out", str(out_dir), "--quiet", "--no-report")
    first = simlab(*command, limit=limit)
    store = next(out_dir.glob("*/store.sqlite"))
    assert first.returncode == 1, first.stdout + first.stderr
    assert f"stopped early: disk full: writing {store} failed (" in first.stdout, first.stdout
    assert " free on its file system" in first.stdout and "run the same command again" in first.stdout
    assert "Traceback" not in first.stderr, first.stderr
    before, check = sessions_and_check(store)
    assert check == "ok" and 0 < len(before) < 12
    return list(command), before


@pytest.mark.slow
def test_a_run_whose_disk_fills_stops_and_the_same_command_completes_it(tmp_path: Path, stub) -> None:
    with small_disk(tmp_path / "disk", "400k") as disk:
        command, before = _run_until_full(tmp_path, stub.base_url, disk / "runs", None)
        resize(disk, "32m")
        done = simlab(*command)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"of 12 planned ({len(before)} were already done)" in done.stdout
        after, check = sessions_and_check(next((disk / "runs").glob("*/store.sqlite")))
        assert check == "ok" and len(after) == len(set(after)) == 12 and set(before) <= set(after)


@pytest.mark.slow
def test_a_run_past_the_file_size_limit_stops_and_the_same_command_completes_it(tmp_path: Path, stub) -> None:
    runs = tmp_path / "runs"
    command, before = _run_until_full(tmp_path, stub.base_url, runs, 400 * 1024)
    done = simlab(*command)
    assert done.returncode == 0, done.stdout + done.stderr
    after, check = sessions_and_check(next(runs.glob("*/store.sqlite")))
    assert check == "ok" and len(after) == len(set(after)) == 12 and set(before) <= set(after)
    run = next(runs.glob("*"))
    report = simlab("simlab.report", "--run", str(run), "--out", str(tmp_path / f"{uuid.uuid4().hex}.html"),
                    "--n-boot", "0", limit=4096)
    assert report.returncode == 1 and "error: disk full: writing " in report.stderr, report.stderr
    assert "Traceback" not in report.stderr


def test_any_command_meeting_a_full_disk_says_so_and_what_to_do(capsys) -> None:
    import errno

    from simlab.errors import exit_status

    def no_space() -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/report.html")

    def sqlite_full() -> int:
        raise sqlite3.OperationalError("database or disk is full")

    assert exit_status(no_space) == 1
    assert capsys.readouterr().err == ("error: disk full: writing /data/out/report.html failed (No space left on "
                                       "device). Free some space, then run the same command again (what was "
                                       "completed before is kept)\n")
    assert exit_status(sqlite_full) == 1
    assert "error: disk full: an SQLite write failed (database or disk is full). Free some space" in capsys.readouterr().err

    def other() -> int:
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):  # not a full disk: stays what it was
        exit_status(other)
