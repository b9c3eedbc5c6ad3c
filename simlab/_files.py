"""Small file helpers shared across stages."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

__all__ = ["data_dir", "data_path", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


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
