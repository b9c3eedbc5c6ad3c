"""An event loop on a virtual clock, for tests of what the loop's clock paces (the client's pacer,
the runner's paced collections).

Its time passes only when the loop would wait for its next timer (it jumps there at once) or when
a test says the loop was kept busy (``block``): what such a test sees does not depend on how busy
the machine is. No real I/O: a request's timeout would pass at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._now = start
        select = self._selector.select  # type: ignore[attr-defined]

        def wait_no_time(timeout: float | None = None) -> Any:
            if timeout is not None and timeout > 0:
                self._now += timeout  # the wait for the next timer, over at once
                timeout = 0
            return select(timeout)

        self._selector.select = wait_no_time  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._now

    def block(self, seconds: float) -> None:
        """The loop's thread kept busy for ``seconds`` (a long callback, a collection): the
        callbacks due meanwhile run that much late."""
        self._now += seconds


def run_virtual(main: Callable[[VirtualClockLoop], Awaitable[T]]) -> T:
    """``main(loop)`` run to its end on a new ``VirtualClockLoop``."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
