"""Dead means dead, at the scale of a run: a flaky server finishes in one run with every session
accounted for; a server that dies, or answers only in unusable shapes, stops the run within about
its window with nothing recorded as failed. Real stub servers in their own processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from simlab.run import run_experiment
from simlab.store import read_table
from simlab.testing import StubServer
from tests.conftest import stub_config

MIX = {"5xx": 0.2, "429": 0.1, "timeout": 0.05, "malformed": 0.05}


class _Stub:
    """``python -m simlab.testing`` in its own process (killed at the end: no wait for hung replies)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "simlab.testing", *args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().strip()
        assert self.base_url.startswith("http://127.0.0.1:"), self.base_url

    def __enter__(self) -> _Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _config(stub: _Stub, tmp_path, **endpoint):
    ep = {"kind": "vllm", "base_url": stub.base_url, "max_attempts": 3, "timeout_s": 0.5, **endpoint}
    return stub_config(stub, tmp_path, endpoints={"local": ep}, limit=10, repeats=5, concurrency=16,
                       protocol={"domains": ["values"], "min_turns": 2, "max_turns": 2})


@pytest.mark.slow  # ~30 s: 50 sessions, with 429s that ask for a second's wait
def test_a_flaky_server_finishes_in_one_run_with_every_session_accounted_for(tmp_path):
    # 20% 5xx, 10% 429, 5% timeouts, 5% malformed replies: about 60% of requests answered whole
    rates = [f"--fault-rate={k}={v}" for k, v in MIX.items()]
    with _Stub("--delay", "0.005", *rates) as stub:
        t0 = time.monotonic()
        cfg = _config(stub, tmp_path, dead_after_s=5, max_attempts=5)
        summary = asyncio.run(run_experiment(cfg, progress=False, report=False))
        took = time.monotonic() - t0
    assert summary.stopped is None, summary.stopped  # never taken for a dead backend
    assert summary.sessions_planned == 50
    assert summary.sessions_completed + summary.sessions_failed == 50, summary.text()
    failures = [g for g in summary.failure_groups]
    assert sum(g.count for g in failures) == summary.sessions_failed and all(g.reason for g in failures)
    print(f"fault mix: {summary.sessions_completed} completed, {summary.sessions_failed} failed in {took:.1f} s")


def test_a_server_that_dies_mid_run_stops_it_within_about_its_window_and_fails_nothing(tmp_path):
    with StubServer(delay=0.01) as stub:
        died: list[float] = []

        def kill_when_busy() -> None:  # dies once the run is well under way: refused from then on
            while stub.n_requests < 60:
                time.sleep(0.01)
            stub.die()
            died.append(time.monotonic())

        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        cfg = _config(stub, tmp_path, dead_after_s=2, timeout_s=2)
        summary = asyncio.run(run_experiment(cfg, progress=False, report=False))
        stopped_at = time.monotonic()
        killer.join(5)
    assert summary.stopped and "stopped answering: the connection was refused or dropped" in summary.stopped
    assert "(dead_after_s = 2)" in summary.stopped
    assert summary.sessions_failed == 0 and len(read_table(summary.run_dir, "failures")) == 0
    assert summary.sessions_completed < 50  # the sessions in flight stay to do
    assert 1.5 <= stopped_at - died[0] < 6, stopped_at - died[0]  # about the window, not max_attempts' backoff


def test_a_server_that_never_answers_in_a_usable_shape_stops_the_run_failing_nothing(tmp_path):
    with _Stub("--break-after", "0", "--break-how", "malformed") as stub:
        summary = asyncio.run(run_experiment(_config(stub, tmp_path, dead_after_s=1), progress=False, report=False))
    assert (summary.sessions_completed, summary.sessions_failed) == (0, 0)
    assert summary.stopped and "answers, but never in a usable shape" in summary.stopped
    assert 'a body that is not JSON' in summary.stopped and '{"detail": "Not Found"' in summary.stopped
    assert "run the same command again" in summary.text()
