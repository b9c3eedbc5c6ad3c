"""The modules held to mypy --strict's checks (pyproject.toml's override list) are real modules:
a renamed or split module cannot silently drop out of the list. CI runs ``mypy simlab`` itself."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO
from tests.test_imports import PACKAGE, module_name


def _strict_patterns() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    (strict,) = [o for o in config["tool"]["mypy"]["overrides"] if o.get("disallow_untyped_defs")]
    return list(strict["module"])


def test_every_strict_pattern_names_modules_of_the_package() -> None:
    modules = {module_name(f) for f in PACKAGE.rglob("*.py")}
    stale = [p for p in _strict_patterns()
             if not (p in modules or (p.endswith(".*") and any(m.startswith(p[:-1]) for m in modules)))]
    assert not stale, f"pyproject.toml's strict list names modules that do not exist: {stale}"


def test_the_strict_list_covers_most_of_the_package() -> None:
    modules = {module_name(f) for f in PACKAGE.rglob("*.py")}
    patterns = _strict_patterns()
    covered = {m for m in modules if m in patterns or any(p.endswith(".*") and m.startswith(p[:-1]) for p in patterns)}
    # the share may only grow: raise the floor when modules join the list
    assert len(covered) / len(modules) >= 0.97, sorted(modules - covered)
