"""Admission control for one event loop (AIMD on the loop's lag): with many sessions in flight the
client's own CPU can limit a run, and the pacer keeps the queue of calls out of the event loop,
where it would delay every callback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import deque
from typing import Any

__all__ = ["LoopPacers", "Pacer"]


class Pacer:
    """Admission control on the event loop's lag: the client's own congestion signal.

    With many sessions in flight the client's CPU, not the servers, can limit a run: replies
    arrive faster than the loop processes them, callbacks queue for seconds, and every call's
    latency (and timeout) includes that queue. The pacer checks every ``PERIOD`` how late the
    loop runs a timer and bounds the calls in progress at once (AIMD, as TCP paces a network):
    the bound shrinks by a quarter while the lag is over ``TARGET`` and grows by a tenth while
    the lag is low and calls are waiting. Throughput stays what the CPU allows; the queue moves
    from the loop, where it delays everything, to the pacer, where it costs nothing.
    """

    PERIOD = 0.05
    TARGET = 0.05
    MIN = 8

    def __init__(self, loop: asyncio.AbstractEventLoop, start: int = 64) -> None:
        self.loop = loop
        self.limit = float(start)
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.ticking = False
        self.lags: list[float] = []  # recent lags (seconds), for diagnostics
        self.lowest = self.limit
        self.gc_s = 0.0  # time spent in the garbage collector while ticking
        self._gc_start = 0.0
        self._gc_at_tick = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # on the loop's clock, as the lag it is taken out of
        if phase == "start":
            self._gc_start = self.loop.time()
        else:
            self.gc_s += self.loop.time() - self._gc_start

    def _start_ticking(self) -> None:
        self.ticking = True
        # a collection's pause is not congestion: fewer calls in progress would not shorten it
        # (its length follows the sessions' heap), so it is taken out of the lag
        gc.callbacks.append(self._on_gc)
        self._gc_at_tick = self.gc_s
        nxt = self.loop.time() + self.PERIOD
        self.loop.call_at(nxt, self._tick, nxt)

    def _tick(self, due: float) -> None:
        paused = self.gc_s - self._gc_at_tick
        self._gc_at_tick = self.gc_s
        lag = max(0.0, self.loop.time() - due - paused)
        self.lags = [*self.lags[-99:], lag]
        if lag > self.TARGET:
            self.limit = max(self.MIN, self.limit * 0.75)
            self.lowest = min(self.lowest, self.limit)
        elif self.waiters:
            self.limit = self.limit * 1.1 + 1
        self._wake()
        if self.active or self.waiters:
            nxt = self.loop.time() + self.PERIOD
            self.loop.call_at(nxt, self._tick, nxt)
        else:
            self.ticking = False  # idle: no timer or collector callback left behind
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._on_gc)

    async def __aenter__(self) -> None:
        if not self.ticking:
            self._start_ticking()
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(fut)
        try:
            await fut  # the waker counted this call in ``active``
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.active -= 1
                self._wake()
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters and self.active < self.limit:
            fut = self.waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


class LoopPacers:
    """One client's pacers, one per event loop it is used on (a pacer's timer belongs to its loop)."""

    def __init__(self) -> None:
        self._pacers: dict[asyncio.AbstractEventLoop, Pacer] = {}

    def current(self) -> Pacer:
        """The running loop's pacer; pacers of loops closed since are dropped."""
        loop = asyncio.get_running_loop()
        pacer = self._pacers.get(loop)
        if pacer is None:
            for old in [lp for lp in self._pacers if lp.is_closed()]:
                with contextlib.suppress(ValueError):  # a loop closed while its pacer ticked
                    gc.callbacks.remove(self._pacers[old]._on_gc)
                del self._pacers[old]
            pacer = self._pacers[loop] = Pacer(loop)
        return pacer
