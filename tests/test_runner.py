"""simlab.runner: the one session runner (its end-to-end behaviour is tested through run_experiment
in test_run_cli.py and run_sim_judgement in test_sim_judgement.py; here what is its own)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from simlab.runner import GC_PACE, GC_THRESHOLDS, gc_for_many_sessions, run_sessions
from simlab.store import RunStore
from tests.test_store import make_session
from tests.virtual_clock import VirtualClockLoop, run_virtual


@pytest.fixture
def default_gc():
    old = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*old)


async def test_the_collector_is_tuned_while_sessions_run_and_put_back_after(tmp_path: Path, default_gc) -> None:
    seen = []

    async def session(pid: str):
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return make_session(pid)

    store = RunStore.create(tmp_path / "run", {"config": {}})
    outcome = await run_sessions(["p1", "p2"], session, store, concurrency=2, progress=False)
    store.close()
    assert outcome.failed == 0 and len(outcome.session_s) == 2
    # while the sessions ran: young collections rarer, the objects made before them frozen
    assert all(t == GC_THRESHOLDS and frozen > 0 for t, frozen in seen), seen
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


async def test_a_run_with_tune_gc_off_leaves_the_collector_as_the_caller_set_it(tmp_path: Path, default_gc) -> None:
    seen = []

    async def session(pid: str):
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return make_session(pid)

    store = RunStore.create(tmp_path / "run", {"config": {}})
    outcome = await run_sessions(["p1", "p2"], session, store, concurrency=2, progress=False, tune_gc=False)
    store.close()
    assert outcome.failed == 0 and seen == [((700, 10, 10), 0)] * 2


class Collections:
    """The collector's runs while it is open: each one's generation, and when it ran by the loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.runs: list[tuple[int, float]] = []

    @property
    def by_generation(self) -> list[int]:
        return [sum(1 for g, _ in self.runs if g == gen) for gen in range(3)]

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.runs.append((info["generation"], self.loop.time()))

    def __enter__(self) -> Collections:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def test_in_an_event_loop_young_and_middle_collections_go_by_its_clock(default_gc) -> None:
    period, middle_every = GC_PACE

    async def main(loop: VirtualClockLoop) -> None:
        t0 = loop.time()
        with gc_for_many_sessions(), Collections(loop) as paced:
            await asyncio.sleep(period * (2 * middle_every + 0.5))  # an idle loop: ~nothing allocated
        # by count (10,000 allocations) there would be none; by the clock, one every period, every
        # 3rd a middle one
        assert [g for g, _ in paced.runs] == [0, 0, 1, 0, 0, 1], paced.runs
        assert [t - t0 for _, t in paced.runs] == pytest.approx([period * k for k in range(1, 7)]), paced.runs
        with Collections(loop) as after:  # the run is over: no timer left behind
            await asyncio.sleep(period * (2 * middle_every + 0.5))
        assert after.by_generation[1] == 0 and sum(after.by_generation) <= 1, after.runs

    run_virtual(main)


def test_a_collector_the_user_turned_off_is_not_paced_either(default_gc) -> None:
    gc.set_threshold(0, 10, 10)

    async def main(loop: VirtualClockLoop) -> None:
        with gc_for_many_sessions(), Collections(loop) as paced:
            await asyncio.sleep(GC_PACE[0] * 4.5)
        assert paced.by_generation == [0, 0, 0]

    run_virtual(main)


def test_a_collector_the_user_set_is_respected(default_gc) -> None:
    gc.set_threshold(0, 10, 10)  # automatic collection off: not turned on by a run
    with gc_for_many_sessions():
        assert gc.get_threshold() == (0, 10, 10)
    gc.set_threshold(50_000, 5, 5)  # already rarer than ours: kept
    with gc_for_many_sessions():
        assert gc.get_threshold() == (50_000, 5, 5)
    gc.freeze()  # the user's own frozen objects stay frozen after a run
    try:
        n = gc.get_freeze_count()
        with gc_for_many_sessions():
            pass
        # not unfrozen (that leaves 0); a few frozen objects may die meanwhile and leave the permanent
        # generation, e.g. freed by pytest-xdist's I/O thread
        assert n - 1000 <= gc.get_freeze_count() <= n
    finally:
        gc.unfreeze()


def test_overlapping_runs_tune_once_and_the_last_to_end_puts_the_collector_back(default_gc) -> None:
    first, second = gc_for_many_sessions(), gc_for_many_sessions()
    first.__enter__()
    second.__enter__()
    assert gc.get_threshold() == GC_THRESHOLDS
    first.__exit__(None, None, None)  # the other run still goes on: still tuned
    assert gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
