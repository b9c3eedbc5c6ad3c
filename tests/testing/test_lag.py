"""The lag sampler sees a loop blocked by synchronous work, names the function that blocked it,
counts a long collection under its generation, and leaves nothing running when stopped."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

from simlab.testing.lag import LagSampler, percentile


def _blocking_sleep(seconds: float) -> None:
    time.sleep(seconds)  # holds the loop's thread, as a synchronous commit or a big JSON dump would


async def test_a_blocked_loop_is_measured_and_its_blocker_named() -> None:
    ticks: list[int] = []
    sampler = LagSampler(period=0.02, stall=0.03, every=0.005, on_tick=lambda: ticks.append(1))
    sampler.start()
    await asyncio.sleep(0.1)
    _blocking_sleep(0.3)
    await asyncio.sleep(0.1)
    sampler.stop()
    assert max(sampler.lags) >= 0.25 and percentile(sampler.lags, 0.5) < 0.05
    where, seconds = sampler.top(1)[0]
    assert "_blocking_sleep" in where and "test_lag.py" in where and 0.15 <= seconds <= 1.0, sampler.top()  # a 0.3 s block, with room for a loaded machine
    summary = sampler.summary()
    assert summary["lag_ms"]["max"] >= 250 and summary["stalled_in"][0][0] == where
    assert ticks  # the thread's once-a-second hook ran (its first tick is at once)
    assert not [t for t in threading.enumerate() if t.name == "lag-sampler"]
    assert sampler._on_gc not in gc.callbacks


async def test_a_long_collection_is_counted_under_its_generation() -> None:
    sampler = LagSampler(period=0.02, stall=0.0, every=0.005)
    sampler.start()
    garbage = []
    for _ in range(100_000):  # cycles, so the collection has work
        a: list[object] = []
        a.append(a)
        garbage.append(a)
    del garbage, a
    gc.collect(2)
    await asyncio.sleep(0.05)
    sampler.stop()
    assert sampler.gc_pauses[2] and any(k == "garbage collection, generation 2" for k, _ in sampler.top(10))
