"""Shared fixtures: a scripted stub server and configs pointing at it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from simlab.config import Config, default_config, parse_config
from simlab.testing import StubServer

REPO = Path(__file__).resolve().parent.parent

# Marks whose tests share module-scoped servers and a CPU-bound model: they run in one process
ONE_PROCESS_MARKS = ("vllm", "topics")


def selects_one_process_marks(markexpr: str) -> bool:
    """Whether a ``-m`` expression selects a test that carries only one of ``ONE_PROCESS_MARKS``."""
    from _pytest.mark.expression import Expression

    if not markexpr:
        return False
    expression = Expression.compile(markexpr)
    return any(expression.evaluate(lambda name, /, mark=mark, **kwargs: name == mark) for mark in ONE_PROCESS_MARKS)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (in the default addopts) runs in this one process when the vLLM or topics tests are
    selected: on two workers each worker started its own vLLM servers, side by side on 2 cores."""
    return 0 if selects_one_process_marks(config.getoption("markexpr") or "") else None


def shared_data() -> Path:
    return Path(os.environ.get("SIMLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def stub():
    with StubServer() as server:
        yield server


def stub_config(server: StubServer, tmp_path: Path, **overrides) -> Config:
    """The quickstart config, its endpoint replaced by the stub (vLLM dialect)."""
    data = default_config().public_dict()
    data["endpoints"] = {"local": {"kind": "vllm", "base_url": server.base_url, "max_attempts": 2,
                                   "timeout_s": 10}}
    data["out_dir"] = str(tmp_path / "runs")
    data["summary"]["cache_dir"] = str(tmp_path / "summaries")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return parse_config(data)


def installed_package(root: Path, name: str, group: str, entries: list[str], modules: dict[str, str] | None = None) -> Path:
    """A package installed in ``root`` the way pip leaves one: ``<name>-1.0.dist-info`` with its entry
    points (``entries``, lines ``name = module:attr``) in ``group``, and its modules' sources. Put
    ``root`` on ``sys.path`` (or ``PYTHONPATH``) and ``importlib.metadata`` finds it."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "\n".join(entries) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


PYTHON = sys.executable
