"""simlab: simulated users for PRISM-X style chatbot evaluations.

The public API is re-exported here; heavy modules are imported lazily so that
``import simlab`` stays fast and optional extras stay optional.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the lazy names below, typed for checkers and editors
    from simlab import autograder, fidelity, llm, local, report, testing  # noqa: F401 - lazy submodules
    from simlab.autograde import grade_run
    from simlab.compare import compare_simulators
    from simlab.config import Config, Experiment, Invocation, load_config
    from simlab.errors import ConfigError, InputError, SimlabError
    from simlab.llm import LLMClient
    from simlab.personas import Persona, load_personas
    from simlab.plan import SessionSpec
    from simlab.protocol import simulate_session
    from simlab.run import run_experiment
    from simlab.sim_judgement import run_sim_judgement, simulate_judgement
    from simlab.store import load_run

__version__ = "0.1.0"

_LAZY = {
    "Config": "simlab.config",
    "load_config": "simlab.config",
    "Experiment": "simlab.config",
    "Invocation": "simlab.config",
    "SessionSpec": "simlab.plan",
    "LLMClient": "simlab.llm",
    "SimlabError": "simlab.errors",
    "InputError": "simlab.errors",
    "ConfigError": "simlab.errors",
    "run_experiment": "simlab.run",
    "simulate_session": "simlab.protocol",
    "load_run": "simlab.store",
    "Persona": "simlab.personas",
    "load_personas": "simlab.personas",
    "grade_run": "simlab.autograde",
    "compare_simulators": "simlab.compare",
    "run_sim_judgement": "simlab.sim_judgement",
    "simulate_judgement": "simlab.sim_judgement",
}

__all__ = [
    "Config",
    "ConfigError",
    "Experiment",
    "InputError",
    "Invocation",
    "LLMClient",
    "Persona",
    "SessionSpec",
    "SimlabError",
    "__version__",
    "compare_simulators",
    "grade_run",
    "load_config",
    "load_personas",
    "load_run",
    "run_experiment",
    "run_sim_judgement",
    "simulate_judgement",
    "simulate_session",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in {"fidelity", "report", "testing", "llm", "local", "autograder"}:
        return import_module(f"simlab.{name}")
    raise AttributeError(f"module 'simlab' has no attribute {name!r}")
