"""A study defined in Python, outside simlab: an ``Experiment`` built without a TOML file, the
invocations that run it (a pilot, then more repeats and the no-persona controls added to the same
run), and a session plan of its own run one ``SessionSpec`` at a time."""

from __future__ import annotations

from typing import Any

from simlab import Experiment, Invocation, SessionSpec
from simlab.plan import plan_sessions

__all__ = ["controls_only", "extension", "pilot", "study"]


def study(base_url: str, summaries: str, *, seed: int = 11) -> Experiment:
    """Two arms on one OpenAI-compatible server, one domain, one or two user turns."""
    model: dict[str, Any] = {"endpoint": "lab", "model": "m"}
    return Experiment.model_validate({
        "name": "outside",
        "seed": seed,
        "endpoints": {"lab": {"kind": "vllm", "base_url": base_url, "max_attempts": 2, "timeout_s": 10}},
        "arms": [{"id": "PLAIN", **model, "system_prompt": None},
                 {"id": "PROMPTED", **model, "personalisation": "profile"}],
        "simulator": model, "judge": model, "summary": {**model, "cache_dir": summaries},
        "protocol": {"domains": ["values"], "min_turns": 1, "max_turns": 2},
    })


def pilot(out_dir: str) -> Invocation:
    """The first call: two participants, one session each."""
    return Invocation(limit=2, out_dir=out_dir, concurrency=4, progress=False, report=False)


def extension(out_dir: str) -> Invocation:
    """A later call: the same participants twice more, and each session again without persona."""
    return pilot(out_dir).model_copy(update={"repeats": 3, "ablate_persona": True})


def controls_only(experiment: Experiment, personas: list[Any]) -> list[SessionSpec]:
    """A plan of one's own: only the no-persona controls of repeat 0."""
    return [s for s in plan_sessions(experiment, personas, ablate_persona=True) if s.no_persona and s.repeat == 0]
