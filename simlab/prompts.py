"""Prompt templates: every prompt simlab sends lives in ``prompts/`` as a Jinja2 file.

Templates render with ``StrictUndefined`` (a missing variable is an error, not an
empty string) and each carries a short hash of its source text, recorded with every
call that used it so a run can say exactly which prompt wording produced it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from simlab._files import data_dir

__all__ = ["Prompt", "all_hashes", "prompts_dir", "render", "render_in", "template_hash"]


def prompts_dir() -> Path:
    """Where templates live: ``$SIMLAB_PROMPTS_DIR``, else simlab's own (the repository's
    ``prompts/``, or the copy inside an installed wheel)."""
    env = os.environ.get("SIMLAB_PROMPTS_DIR")
    if env:
        return Path(env)
    return data_dir("prompts")


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: its text, the template's name and the template's hash."""

    name: str
    text: str
    hash: str


@lru_cache(maxsize=None)
def _env(root: str, extra: str | None = None) -> jinja2.Environment:
    # an extra folder (an instrument's own templates) is searched first, then simlab's, so its
    # templates can include simlab's partials (the transcript, the participant's memory)
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root if extra is None else [extra, root]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # prompts are plain text; HTML escaping happens in the report
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# (root, name) → (the template and what it includes, their stat stamps, the hash): rendering is
# on every model call's path, and parsing the templates again for each hash was a visible share
# of a 1,000-session run's CPU. An edited file changes its stamp and the hash is computed again.
_hashes: dict[tuple[str, str | None, str], tuple[tuple[str, ...], tuple[tuple[int, int], ...], str]] = {}


def _path(root: Path, extra: str | None, name: str) -> Path:
    """Where the template ``name`` is: in the extra folder if it has it, else under ``root``."""
    if extra is not None and (Path(extra) / name).is_file():
        return Path(extra) / name
    return root / name


def _stamps(root: Path, extra: str | None, files: Sequence[str]) -> tuple[tuple[int, int], ...]:
    out = []
    for f in files:
        st = os.stat(_path(root, extra, f))
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


@lru_cache(maxsize=4096)
def _paths(root: str, files: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.join(root, f) for f in files)


def template_hash(name: str, folder: str | Path | None = None) -> str:
    """sha256 (first 12 hex digits) of a template's source text and of every template it
    includes, imports or extends, recursively: editing a partial changes the hash of each
    template that uses it. A template that includes nothing hashes as its bytes alone.
    ``folder``: a folder searched before simlab's prompts (an instrument's own templates)."""
    root = prompts_dir()
    extra = None if folder is None else str(folder)
    key = (str(root), extra, name)
    cached = _hashes.get(key)
    if cached is not None:
        try:
            if extra is None:
                # each file's place is fixed without an extra folder: its stamp by its path string
                # (pathlib's parsing cost more than the stat on every call of a warm, cached rerun)
                current = tuple((st.st_mtime_ns, st.st_size) for st in map(os.stat, _paths(key[0], cached[0])))
            else:
                current = _stamps(root, extra, cached[0])
            if current == cached[1]:
                return cached[2]
        except OSError:
            pass  # a file went away: compute again (and raise there if the template did)
    deps = _included(str(root), extra, name)
    files = (name, *deps)
    stamps = _stamps(root, extra, files)
    h = hashlib.sha256(_path(root, extra, name).read_bytes())
    for dep in deps:
        h.update(b"\0" + dep.encode() + b"\0" + _path(root, extra, dep).read_bytes())
    digest = h.hexdigest()[:12]
    _hashes[key] = (files, stamps, digest)
    return digest


def _included(root: str, extra: str | None, name: str) -> list[str]:
    """Templates that ``name`` pulls in (directly or not), each once, in the order first met."""
    import jinja2.meta

    env = _env(root, extra)
    seen: list[str] = []
    todo = [name]
    while todo:
        current = todo.pop(0)
        source = _path(Path(root), extra, current).read_text(encoding="utf-8")
        for dep in jinja2.meta.find_referenced_templates(env.parse(source)):
            if dep is not None and dep != name and dep not in seen:  # None: a name known only at render time
                seen.append(dep)
                todo.append(dep)
    return seen


def render(name: str, **variables: object) -> Prompt:
    """Render ``prompts/<name>`` with ``variables``; raises on any undefined variable."""
    env = _env(str(prompts_dir()))
    text = env.get_template(name).render(**variables).strip()
    return Prompt(name=name, text=text, hash=template_hash(name))


def render_in(folder: str | Path | None, name: str, **variables: object) -> Prompt:
    """``render``, looking for ``name`` (and what it includes) in ``folder`` first, then in simlab's
    prompts: how an instrument defined outside simlab brings its own template."""
    if folder is None:
        return render(name, **variables)
    env = _env(str(prompts_dir()), str(folder))
    text = env.get_template(name).render(**variables).strip()
    return Prompt(name=name, text=text, hash=template_hash(name, folder))


def all_hashes() -> dict[str, str]:
    """Hash of every template, for the run's metadata."""
    root = prompts_dir()
    return {
        str(p.relative_to(root)): template_hash(str(p.relative_to(root)))
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in {".j2", ".md", ".txt"}
    }
