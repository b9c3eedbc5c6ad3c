"""The client layer's modules: each has one job, and their imports at module level form a DAG."""

from __future__ import annotations

import ast
import graphlib

from tests.conftest import REPO

LLM = REPO / "simlab" / "llm"
SPLIT = ("client", "recording", "dialects", "errors", "routing", "pacing", "transport")  # the client's parts


def _module_level_imports() -> dict[str, set[str]]:
    """simlab.llm module → the simlab.llm modules it imports at module level (not inside functions)."""
    names = {p.stem for p in LLM.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in LLM.glob("*.py"):
        deps: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["simlab", "llm"]:
                    deps |= {parts[2]} if len(parts) > 2 else {a.name for a in node.names} & names
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("simlab.llm.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def test_the_client_layers_modules_import_each_other_without_cycles():
    graph = _module_level_imports()
    assert set(SPLIT) <= set(graph)
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index("transport") < order.index("routing") < order.index("client")


def test_each_part_of_the_client_says_what_it_does_and_what_it_exports():
    import importlib

    for stem in SPLIT:
        module = importlib.import_module(f"simlab.llm.{stem}")
        assert module.__doc__ and module.__doc__.strip(), stem
        assert isinstance(getattr(module, "__all__", None), list), stem
        for name in module.__all__:
            assert hasattr(module, name), f"{stem}: {name}"
