"""What holds up an event loop: its lag sampled on the loop's clock, and, from a thread of its own,
the loop thread's stack whenever the loop is late by more than a threshold (no profiler needed).

The benchmarks use it to find what blocks the loop (a synchronous commit, a big JSON dump, a
collection of the garbage collector); a stall seen while the collector runs is counted under its
generation, since the stack then shows only the allocation that set it off.
"""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["LagSampler", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0–1) of ``values`` by the nearest-rank rule (NaN when empty).

    >>> percentile([0.1, 0.2, 0.3, 0.4], 0.5)
    0.2
    """
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _where(frame: FrameType | None, depth: int) -> str:
    """The innermost ``depth`` frames of a stack, innermost last, as ``file:line function`` joined by " < "."""
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        name = code.co_filename.rsplit("/", 2)
        parts.append(f"{'/'.join(name[-2:])}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(parts)


class LagSampler:
    """The lag of the running event loop every ``period`` s (how late its wake-up came), and where
    its thread was whenever it was more than ``stall`` s late, sampled every ``every`` s.

    ``start()`` inside the loop, ``stop()`` when done; ``lags`` holds the lag samples (s),
    ``stalls`` the seconds of stall seen in each stack (the time since the thread's previous look,
    so a thread woken late by a busy machine still counts the whole stall),
    ``gc_pauses`` the collector's pauses by generation. A collection holds the interpreter's lock
    throughout, so the thread cannot look while it runs: a pause longer than ``stall`` is counted
    under its generation when it ends, and the thread's next look is skipped. ``on_tick`` (if given) is called from the
    sampling thread about once a second, e.g. to read the process's RSS away from the loop.
    """

    def __init__(self, period: float = 0.1, stall: float = 0.05, every: float = 0.01, depth: int = 6,
                 on_tick: Callable[[], None] | None = None) -> None:
        self.period, self.stall, self.every, self.depth = period, stall, every, depth
        self.on_tick = on_tick
        self.lags: list[float] = []
        self.stalls: defaultdict[str, float] = defaultdict(float)  # where → seconds
        self.gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_at: tuple[int, float] | None = None  # the collection running now: generation, start
        self._gc_ends = 0  # collections ended so far
        self._due = math.inf  # when the loop's next wake-up is due (time.monotonic)
        self._tid = 0
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_at = (info["generation"], time.perf_counter())
        elif self._gc_at is not None:
            generation, t0 = self._gc_at
            pause = time.perf_counter() - t0
            self.gc_pauses[generation].append(pause)
            if pause > self.stall:
                self.stalls[f"garbage collection, generation {generation}"] += pause
            self._gc_at = None
            self._gc_ends += 1

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lags.append(max(0.0, time.monotonic() - self._due))
        self._due = time.monotonic() + self.period
        self._handle = loop.call_later(self.period, self._beat, loop)

    def _watch(self) -> None:
        next_tick = time.monotonic()
        seen_gc = self._gc_ends
        last = time.monotonic()
        while not self._stop.wait(self.every):
            now = time.monotonic()
            collected, seen_gc = seen_gc != self._gc_ends, self._gc_ends
            stalled_since = max(last, self._due + self.stall)
            if now > stalled_since and not collected and self._gc_at is None:
                where = _where(sys._current_frames().get(self._tid), self.depth)
                self.stalls[where] += now - stalled_since
            last = now
            if self.on_tick is not None and now >= next_tick:
                next_tick = now + 1.0
                self.on_tick()

    def start(self) -> None:
        """Start sampling the running loop (call from inside it)."""
        loop = asyncio.get_running_loop()
        self._tid = threading.get_ident()
        self._due = time.monotonic() + self.period
        self._handle = loop.call_later(self.period, self._beat, loop)
        gc.callbacks.append(self._on_gc)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="lag-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (the figures stay)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._due = math.inf
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` places the loop was stalled in most, with the seconds of stall sampled there."""
        ranked = sorted(self.stalls.items(), key=lambda item: -item[1])[:n]
        return [(where, round(seconds, 2)) for where, seconds in ranked]

    def summary(self) -> dict[str, Any]:
        """Lag p50/p95/p99/max (ms), and where the loop stalled most."""
        ms = {name: round(percentile(self.lags, q) * 1e3, 1) for name, q in
              (("p50", 0.5), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))}
        return {"lag_ms": ms,
                "stalled_in": self.top()}
