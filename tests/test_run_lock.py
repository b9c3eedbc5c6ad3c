"""One run, one writer: the run lock with real processes (a second run refused naming the holder, a
SIGKILLed holder leaving no lock), outputs that exist whole or not at all (stores, merges, exports
killed half-way) and places that cannot hold an output."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from simlab.errors import InputError
from simlab.store import RunStore, load_run, merge
from simlab.store.creation import unborn_store
from simlab.store.lock import WAIT_ENV, RunLocked, read_holder
from tests.conftest import REPO
from tests.test_run_cli import _completed, stub_toml

HOLD = """
import sys, time
from pathlib import Path
from simlab.store.lock import RunLock
lock = RunLock(Path(sys.argv[1]) / "store.sqlite").acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
print("released", flush=True)
time.sleep(60)
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def _holder(run_dir: Path, seconds: float = 60) -> subprocess.Popen[str]:
    """Another process holding ``run_dir``'s lock for ``seconds`` (then idle, lock released)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


META = {"config": {"arms": [{"name": "gen", "model": "a"}], "seed": 1}, "seed": 1}


def _a_store(run_dir: Path) -> None:
    RunStore.create(run_dir, META).close()


def test_a_held_run_refuses_every_writer_naming_the_holder_and_readers_still_read(tmp_path):
    run = tmp_path / "run"
    _a_store(run)
    proc = _holder(run)
    try:
        holder = read_holder(run / "run.lock")
        assert holder is not None and holder["pid"] == proc.pid and holder["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as refused:
            RunStore.open(run)
        text = str(refused.value)
        assert f"pid {proc.pid} on host {socket.gethostname()} since {holder['since']}" in text
        assert "s ago" in text and "Nothing was written" in text and f"{WAIT_ENV}=SECONDS" in text
        assert f"kill {proc.pid}" in text and str(run / "run.lock") in text
        with pytest.raises(RunLocked):
            RunStore.open_or_create(run, META)
        shard = tmp_path / "shard"
        _a_store(shard)
        with pytest.raises(RunLocked):
            merge(run, [shard])
        # readers never take the lock
        assert load_run(run).judgements.empty
        from simlab.store import export

        assert (export(run, tmp_path / "export") / "meta.json").exists()
    finally:
        _stop(proc)


@pytest.mark.slow
def test_a_sigkilled_holder_leaves_no_lock_and_a_waiter_gets_the_run_when_it_is_free(tmp_path):
    run = tmp_path / "run"
    _a_store(run)
    proc = _holder(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert (run / "run.lock").exists()  # the file stays, its lock went with the process
    # no wait asked: a lock still held would refuse at once (RunLocked), so opening proves it was dropped
    with RunStore.open(run) as store:
        assert read_holder(run / "run.lock")["pid"] == os.getpid()
        assert store.completed_sessions() == set()
    assert not (run / "run.lock").exists()  # a clean release removes the file
    # waiting: a writer that waits up to 20 s gets the run when the holder lets go (after 1 s); one that
    # waits 0.3 s for a holder that keeps it is refused, saying how long it waited
    proc = _holder(run, seconds=1.0)
    try:
        t0 = time.perf_counter()
        with RunStore.open(run, wait_lock=20):
            waited = time.perf_counter() - t0
        assert 0.5 < waited < 5, waited
    finally:
        _stop(proc)
    proc = _holder(run)
    try:
        with pytest.raises(RunLocked, match=r"is writing this run \(waited 0\.[3-9] s\): pid "):
            RunStore.open(run, wait_lock=0.3)
        out = subprocess.run([sys.executable, "-m", "simlab.store", "merge", str(run), str(run)], capture_output=True,
                             text=True, env=_env(**{WAIT_ENV: "0.5"}), timeout=60)
        # the command line: exit 2 with the holder named, no traceback
        assert out.returncode == 2 and "(waited 0.5 s)" in out.stderr, out.stderr
        assert f"pid {proc.pid} on host" in out.stderr and "Traceback" not in out.stderr
    finally:
        _stop(proc)


def test_one_process_may_open_its_own_run_twice(tmp_path):
    run = tmp_path / "run"
    _a_store(run)
    with RunStore.open(run) as first, RunStore.open(run) as second:
        assert first.meta() == second.meta()
        assert (run / "run.lock").exists()
    assert not (run / "run.lock").exists()


def _stub(delay: float):  # noqa: ANN202 (a generator of the stub's URL)
    """The stub server as its own process, slow enough that a run lasts a few seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "simlab.testing", "--delay", str(delay)], stdout=subprocess.PIPE,
                            text=True, env=_env())
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def slow_stub():
    yield from _stub(0.03)


@pytest.fixture
def slower_stub():
    yield from _stub(0.5)


def _wait_for_holder(runs: Path, pid: int, timeout: float = 90) -> Path:
    """The run directory once process ``pid`` holds its lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lock in runs.glob("*/run.lock") if runs.exists() else ():
            if (read_holder(lock) or {}).get("pid") == pid and (lock.parent / "store.sqlite").exists():
                return lock.parent
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took a run's lock")


def _wait_for_sessions(store_dir: Path, n: int, timeout: float = 90) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(store_dir.glob("*/store.sqlite")) if store_dir.exists() else []
        if found and len(_completed(found[0])) >= n:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"the run never completed {n} sessions")


def _rows(store: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("sessions", "conversations", "judgements", "failures")}


@pytest.mark.slow
def test_a_second_run_on_a_live_run_is_refused_and_the_first_finishes_alone(tmp_path, slower_stub):
    cfg = stub_toml(tmp_path, slower_stub)
    args = [sys.executable, "-m", "simlab.run", "--config", str(cfg), "--limit", "3", "--concurrency", "2",
            "--quiet", "--no-report"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        store = _wait_for_holder(tmp_path / "runs", first.pid) / "store.sqlite"
        # the same command and a --resume of the run, both while the first writes it
        tries = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                 for argv in (args, [sys.executable, "-m", "simlab.run", "--resume", str(store.parent), "--quiet"])]
        refused = [(t.wait(120), t.communicate()[1]) for t in tries]
        assert first.poll() is None, "the first run ended before the others were tried: slow the stub down"
        for status, stderr in refused:
            assert status == 2, stderr
            assert f"pid {first.pid} on host {socket.gethostname()} since " in stderr
            assert "another simlab process is writing this run" in stderr and "Traceback" not in stderr
        out, err = first.communicate(timeout=180)
    finally:
        _stop(first)
    assert first.returncode == 0, err
    assert "sessions: 6 completed, 0 failed, of 6 planned" in out
    done = _completed(store)
    assert len(done) == len(set(done)) == 6
    rows = _rows(store)
    assert rows["sessions"] == rows["conversations"] == 6 and rows["judgements"] == 24 and rows["failures"] == 0
    assert not (store.parent / "run.lock").exists()


@pytest.mark.slow
def test_a_run_sigkilled_while_holding_the_lock_is_resumed_at_once(tmp_path, slow_stub):
    cfg = stub_toml(tmp_path, slow_stub)
    args = [sys.executable, "-m", "simlab.run", "--config", str(cfg), "--limit", "3", "--concurrency", "2",
            "--quiet", "--no-report"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        store = _wait_for_sessions(tmp_path / "runs", 2)
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        _stop(first)
    before = _completed(store)
    assert 2 <= len(before) < 6, f"killed too late ({len(before)} sessions done)"
    assert read_holder(store.parent / "run.lock")["pid"] == first.pid  # its name stays, its lock does not
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"({len(before)} were already done)" in again.stdout
    after = _completed(store)
    assert len(after) == len(set(after)) == 6 and set(before) <= set(after)
    rows = _rows(store)
    assert rows["sessions"] == rows["conversations"] == 6 and rows["judgements"] == 24


# -- outputs that cannot be made, and stores that exist whole or not at all


@pytest.mark.slow
def test_an_unwritable_out_is_a_clear_error_that_leaves_nothing(tmp_path):
    cfg = stub_toml(tmp_path, "http://127.0.0.1:9")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out, why in (("/proc/simlab-runs", "cannot create the run directory here"),
                     (str(blocker / "runs"), "--out")):
        res = subprocess.run([sys.executable, "-m", "simlab.run", "--config", str(cfg), "--out", out, "--limit", "1",
                              "--quiet"], cwd=REPO, capture_output=True, text=True, env=_env(), timeout=120)
        assert res.returncode == 2, res.stderr
        assert out in res.stderr and why in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not Path("/proc/simlab-runs").exists() and blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "stub.toml"]
    # a report or an export into /proc: the same
    run = tmp_path / "run"
    _a_store(run)
    for argv in (["simlab.report", "--run", str(run), "--out", "/proc/simlab/report.html"],
                 ["simlab.store", "export", str(run), "/proc/simlab-export"]):
        res = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, env=_env(),
                             timeout=120)
        assert res.returncode == 2 and "/proc/simlab" in res.stderr and "cannot write here" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr


def _fsize_limit(limit: int):  # noqa: ANN202 (a preexec function)
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


@pytest.mark.slow
def test_a_store_that_cannot_be_created_leaves_nothing_and_the_same_command_then_works(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "simlab.testing", "--delay", "0"], stdout=subprocess.PIPE,
                            text=True, env=_env())
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    try:
        cfg = stub_toml(tmp_path, url)
        args = [sys.executable, "-m", "simlab.run", "--config", str(cfg), "--limit", "1", "--domains", "values",
                "--quiet", "--no-report"]
        # files may not grow past 8 KiB: the store's schema does not fit (a full disk, as the store is made)
        full = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=_env(PYTHONDONTWRITEBYTECODE="1"),
                              timeout=120, preexec_fn=_fsize_limit(8192))
        assert full.returncode == 2, full.stderr
        assert "cannot create the run store here" in full.stderr and "nothing was written" in full.stderr
        assert "store.sqlite" in full.stderr and "Traceback" not in full.stderr
        assert not (tmp_path / "runs").exists()
        ok = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=120)
        assert ok.returncode == 0 and "sessions: 1 completed" in ok.stdout, ok.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_empty_store_left_by_an_older_simlab_counts_as_not_made(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "store.sqlite").write_bytes(b"")
    assert unborn_store(run / "store.sqlite")
    sqlite3.connect(tmp_path / "tableless.sqlite").execute("PRAGMA journal_mode=WAL").fetchone()
    assert unborn_store(tmp_path / "tableless.sqlite")
    with RunStore.open_or_create(run, META) as store:
        assert store.meta()["seed"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["store.sqlite"]  # no temporary file, no lock file
    with pytest.raises(InputError, match="a run store already exists here"):
        RunStore.create(run, {"seed": 1})


# -- killed half-way: the old output or none, never a part that looks whole


def _shards(tmp_path: Path, n_shards: int = 4, per_shard: int = 60) -> list[Path]:
    from tests.test_store import META as STORE_META
    from tests.test_store import make_session

    shards = []
    for i in range(n_shards):
        with RunStore.create(tmp_path / f"shard{i}", STORE_META) as s:
            for j in range(per_shard):
                s.write_session(make_session(f"p{i}-{j}", n_user_turns=3))
        shards.append(tmp_path / f"shard{i}")
    return shards


def _kill_at(argv: list[str], after: float) -> int:
    """Run ``argv``; SIGKILL it ``after`` seconds in (if still running). Its exit status."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        proc.wait(after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(30)


def _kill_points(argv: list[str], tries: int) -> list[float]:
    """Kill times spread over the last part of one whole run of ``argv`` (its start is the interpreter's)."""
    t0 = time.monotonic()
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True, env=_env(), timeout=300)
    whole = time.monotonic() - t0
    return [whole * (0.45 + 0.55 * k / tries) for k in range(tries)]


@pytest.mark.slow
def test_merge_export_and_report_killed_half_way_leave_the_old_output_or_none(tmp_path):
    shards = _shards(tmp_path)
    expected = {f"p{i}-{j}:unguided" for i in range(4) for j in range(60)}
    merged = tmp_path / "merged"
    merge_argv = [sys.executable, "-m", "simlab.store", "merge", str(merged), *map(str, shards)]
    outcomes = []
    for at in _kill_points(merge_argv, 4):
        shutil.rmtree(merged, ignore_errors=True)
        status = _kill_at(merge_argv, at)
        outcomes.append(status)
        store = merged / "store.sqlite"
        assert not store.exists() or set(_completed(store)) == expected, f"a partial merged store (killed at {at:.2f} s)"
        # beside the store at most the killed holder's run.lock and hidden work folders (the next merge clears them)
        seen = {p.name for p in merged.iterdir() if not p.name.startswith(".")} if merged.exists() else set()
        assert seen - {"run.lock"} <= {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm"}, seen
        if store.exists():
            with sqlite3.connect(store) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert -signal.SIGKILL in outcomes, f"no try was killed before it ended: {outcomes}"
    # the next merge clears what a killed one left and completes
    assert _kill_at(merge_argv, 300) == 0
    assert set(_completed(merged / "store.sqlite")) == expected
    # (this process's readers keep the store's -wal and -shm files open)
    assert {p.name for p in merged.iterdir()} - {"store.sqlite-wal", "store.sqlite-shm"} == {"store.sqlite"}

    # export: over an older export of the same kind (one shard's), killed at points through its writing
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "simlab.store", "export", str(shards[0]), str(out)], check=True, env=_env(),
                   capture_output=True, timeout=300)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    export_argv = [sys.executable, "-m", "simlab.store", "export", str(merged), str(out)]
    outcomes = []
    for at in _kill_points(export_argv, 4):
        outcomes.append(_kill_at(export_argv, at))
        if out.exists():
            files = {p.name: p.read_bytes() for p in out.iterdir()}
            if files != old:
                assert set(files) == set(old), "a partial export"
                sessions = len(pd.read_csv(out / "conversations.csv"))
                assert sessions == 240 and json.loads(files["meta.json"])["store_id"] == _meta(merged)["store_id"]
            # back to the old export for the next try
            shutil.rmtree(out)
        subprocess.run([sys.executable, "-m", "simlab.store", "export", str(shards[0]), str(out)], check=True,
                       env=_env(), capture_output=True, timeout=300)
    assert -signal.SIGKILL in outcomes, f"no try was killed before it ended: {outcomes}"

    # the report: the old report.html or a whole new one
    report = merged / "report.html"
    report.write_text("<html>the old report</html>")
    report_argv = [sys.executable, "-m", "simlab.report", "--run", str(merged), "--n-boot", "0"]
    outcomes = []
    for at in _kill_points(report_argv, 3):
        report.write_text("<html>the old report</html>")
        outcomes.append(_kill_at(report_argv, at))
        text = report.read_text()
        assert text == "<html>the old report</html>" or text.rstrip().endswith("</html>") and len(text) > 1000
    assert -signal.SIGKILL in outcomes, f"no try was killed before it ended: {outcomes}"


def _meta(run: Path) -> dict[str, object]:
    from simlab.store import run_meta

    return run_meta(run)
