"""The registries of user-added parts: duplicates, checks and entry points refused with names."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from simlab.registry import RegistrationError, Registry
from tests.conftest import installed_package


@dataclass(frozen=True)
class Part:
    name: str
    size: int = 1


def _check(part: Part) -> None:
    if part.size < 0:
        raise ValueError("size must be ≥ 0")


def test_register_get_iterate_in_order() -> None:
    reg: Registry[Part] = Registry("part", "simlab.test_parts_none", _check)
    reg.register(Part("a"))
    reg.register(Part("b"))
    assert reg.names() == ["a", "b"] and reg.get("b").name == "b" and "a" in reg and len(reg) == 2
    with pytest.raises(RegistrationError, match="unknown part 'c' \\(registered: a, b\\)"):
        reg.get("c")


def test_duplicate_and_bad_parts_are_refused_with_name_and_cause() -> None:
    reg: Registry[Part] = Registry("part", "simlab.test_parts_none", _check)
    reg.register(Part("a"))
    with pytest.raises(RegistrationError, match="part 'a': registered twice"):
        reg.register(Part("a", 2))
    reg.register(Part("a", 3), replace=True)
    assert reg.get("a").size == 3
    with pytest.raises(RegistrationError, match="part 'neg': size must be ≥ 0"):
        reg.register(Part("neg", -1))
    with pytest.raises(RegistrationError, match="has no name"):
        reg.register(object())  # type: ignore[arg-type]


def _dist(tmp: Path, group: str, lines: list[str], module: str, source: str) -> None:
    installed_package(tmp, "simlab-test-plugin", group, lines, {module: source})


def test_entry_points_register_and_a_failing_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    group = "simlab.test_parts"
    _dist(tmp_path, group, ["good = simlab_test_plugin_mod:parts", "mod = simlab_test_plugin_mod"],
          "simlab_test_plugin_mod",
          "from tests.test_registry import Part\n"
          "def parts():\n    return [Part('from_ep'), Part('from_ep2')]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[Part] = Registry("part", group, _check)
    assert reg.names() == ["from_ep", "from_ep2"]

    bad = tmp_path / "bad"
    bad.mkdir()
    _dist(bad, "simlab.test_parts_bad", ["broken = simlab_test_plugin_broken"], "simlab_test_plugin_broken",
          "raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(bad))
    reg2: Registry[Part] = Registry("part", "simlab.test_parts_bad")
    with pytest.raises(RegistrationError, match=r"entry point 'broken = simlab_test_plugin_broken' \(group "
                       r"simlab.test_parts_bad, package simlab-test-plugin\) failed to import: RuntimeError: no GPU"):
        reg2.names()
    sys.modules.pop("simlab_test_plugin_mod", None)
