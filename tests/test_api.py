"""The public API: docs/api.md lists exactly each public module's ``__all__``, every name resolves, and the
package is typed (``py.typed``)."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.conftest import REPO

API = REPO / "docs" / "api.md"


def _documented() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    module = None
    for line in API.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"## `([\w.]+)`$", line):
            module = m.group(1)
            out[module] = set()
        elif module and (m := re.match(r"\| `(\w+)` \|", line)):
            out[module].add(m.group(1))
    return out


def test_the_api_page_covers_the_public_modules() -> None:
    assert {"simlab", "simlab.fidelity", "simlab.report", "simlab.llm"} <= set(_documented())


@pytest.mark.parametrize("module", sorted(_documented()))
def test_the_api_page_lists_each_modules_all_and_every_name_resolves(module: str) -> None:
    mod = importlib.import_module(module)
    assert _documented()[module] == set(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_the_package_is_typed_and_its_lazy_names_are_declared_for_checkers() -> None:
    assert (REPO / "simlab" / "py.typed").is_file()
    init = (REPO / "simlab" / "__init__.py").read_text(encoding="utf-8")
    import simlab

    assert set(simlab.__all__) == {*simlab._LAZY, "__version__"}  # every lazy name is public, and only those
    checked = init.split("if TYPE_CHECKING:", 1)[1].split("\n\n", 1)[0]
    for name in simlab.__all__:
        if name != "__version__":
            assert re.search(rf"\b{name}\b", checked), f"{name} is not imported under TYPE_CHECKING"
