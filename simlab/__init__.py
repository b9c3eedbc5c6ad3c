"""simlab: simulated users for PRISM-X style chatbot evaluations.

The public API is re-exported here; heavy modules are imported lazily so that
``import simlab`` stays fast and optional extras stay optional.
"""

from __future__ import annotations

import os

# litellm fetches a model cost map over the network at import unless told not to;
# offline that costs ~7 s of retries and warnings. Must be set before litellm loads.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "simlab.config",
    "load_config": "simlab.config",
    "LLMClient": "simlab.llm",
    "SimlabError": "simlab.errors",
    "InputError": "simlab.errors",
    "ConfigError": "simlab.errors",
    "run_experiment": "simlab.run",
    "simulate_session": "simlab.protocol",
    "load_run": "simlab.store",
    "Persona": "simlab.personas",
    "load_personas": "simlab.personas",
    "grade_run": "simlab.judge",
    "run_sim_judgement": "simlab.sim_judgement",
    "simulate_judgement": "simlab.sim_judgement",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    if name in {"fidelity", "report", "testing", "llm", "local", "autograder"}:
        return import_module(f"simlab.{name}")
    raise AttributeError(f"module 'simlab' has no attribute {name!r}")
