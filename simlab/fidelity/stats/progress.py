"""Progress bars for long loops (bootstrap draws), off unless a caller turns them on with
``show_progress``, so library use stays quiet and the CLI can still show how far it is."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

__all__ = ["progress", "progress_shown", "show_progress"]

_PROGRESS: ContextVar[bool] = ContextVar("simlab_fidelity_progress", default=False)
T = TypeVar("T")


@contextmanager
def show_progress(enabled: bool = True) -> Iterator[None]:
    """Within this block, long loops (bootstrap draws) show a progress bar on stderr."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_shown() -> bool:
    """Whether ``show_progress`` is on here."""
    return _PROGRESS.get()


def progress(items: Iterable[T], total: int, desc: str) -> Iterable[T]:
    """``items`` with a transient tqdm bar on stderr when ``show_progress`` is on, else as is."""
    if not _PROGRESS.get():
        return items
    from tqdm import tqdm

    bar: Iterable[T] = tqdm(items, total=total, desc=desc, unit="draw", leave=False, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
    return bar
