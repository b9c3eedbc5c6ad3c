"""Small file helpers shared across stages."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simlab.errors import InputError

__all__ = ["data_dir", "data_path", "folder_atomic", "write_text_atomic"]


def _unwritable(path: Path, exc: OSError) -> InputError:
    return InputError(f"cannot write here ({exc.strerror or exc}); nothing was written. Choose a folder you can "
                      "write to, with free space", file=path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    target = Path(path)
    if target.is_dir():
        raise InputError("is a folder, not a file to write", file=target)
    try:  # a place that cannot hold the file (under /proc, below a file, read-only) is bad input
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(target, exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@contextmanager
def folder_atomic(path: str | os.PathLike[str], *, last: str | None = None) -> Iterator[Path]:
    """A temporary folder beside ``path`` to write files into; when the block ends without an
    error they are moved to ``path``, otherwise removed. A process killed half-way leaves the old
    ``path`` (or none), never a folder of some new files that looks complete.

    A missing or empty ``path``, or one that holds only files of the names being written (an older
    output), is replaced by the new folder by renames of whole folders. Into a folder that holds
    other files each file is renamed in on its own: ``last`` (e.g. ``meta.json``) is removed first
    and moved in after the rest, so its presence says the folder is whole.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "export"
    >>> with folder_atomic(out) as tmp:
    ...     _ = (tmp / "a.csv").write_text("x\\n1\\n")
    >>> sorted(p.name for p in out.iterdir())
    ['a.csv']
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError("is a file, not a folder to write into", file=target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as exc:
        raise _unwritable(target, exc) from exc
    try:
        yield tmp
        try:
            names = sorted(p.name for p in tmp.iterdir())
            if not target.exists() or not any(target.iterdir()):
                os.replace(tmp, target)
                return
            if {p.name for p in target.iterdir()} <= set(names):  # an older output of the same kind: swap it
                old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
                os.replace(target, old / target.name)
                os.replace(tmp, target)  # killed just before this: the old output is kept in ``old``
                shutil.rmtree(old, ignore_errors=True)
                return
            if last is not None:
                (target / last).unlink(missing_ok=True)
                names = [n for n in names if n != last] + ([last] if last in names else [])
            for name in names:
                os.replace(tmp / name, target / name)
        except OSError as exc:
            raise _unwritable(target, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# The example configs, sample personas and prompt templates live at the repository's top level
# (configs/, personas/, prompts/); a wheel carries them as simlab/_data/<kind> (pyproject.toml).
DATA_KINDS = ("configs", "personas", "prompts")
_PACKAGE = Path(__file__).resolve().parent


@functools.cache  # an installation does not move while it runs; every prompt render asks
def data_dir(kind: str) -> Path:
    """Where simlab's own ``kind`` files are: inside an installed wheel, else in the repository."""
    if kind not in DATA_KINDS:
        raise ValueError(f"unknown data kind {kind!r}")
    bundled = _PACKAGE / "_data" / kind
    return bundled if bundled.is_dir() else _PACKAGE.parent / kind


def data_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as given when it exists; else, for a relative path into one of simlab's own data
    folders (``personas/sample.jsonl``), simlab's copy, so the defaults work from any directory.

    A path that names neither is returned as given: the caller's error then names it.
    """
    p = Path(path)
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] not in DATA_KINDS:
        return p
    own = data_dir(p.parts[0]).joinpath(*p.parts[1:])
    return own if own.exists() else p
