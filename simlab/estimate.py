"""What a study will cost before it runs (``--dry-run``): expected model calls, tokens and dollars per
component (each arm, the simulator, the persona-summary writer) and for the study, with a range.

Without a pilot the range comes from the protocol and the config alone: the calls of sessions of
``min_turns`` to ``max_turns`` turns; input tokens from the rendered prompt of a first call (about four
characters a token) up to the protocol's context budget per call; output from one token up to
``max_tokens`` per call. With ``--pilot k`` about k sessions run for real in a temporary directory
(and are thrown away); the study's figures are then their per-session mean times the sessions
planned, within the cheapest and the dearest pilot session times the sessions planned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from simlab.config import Experiment, ModelSpec
from simlab.llm.pricing import Pricing, Rate
from simlab.personas import Persona

__all__ = ["Estimate", "Line", "estimate_from_config", "estimate_from_pilot", "pilot_personas"]


@dataclass
class Line:
    """One component's expected calls, tokens and dollars: (low, expected, high) each."""

    component: str
    calls: tuple[float, float, float]
    input_tokens: tuple[float, float, float]
    output_tokens: tuple[float, float, float]
    usd: tuple[float, float, float]
    unpriced: bool = False


@dataclass
class Estimate:
    """The components' lines and how they were made (``basis``)."""

    basis: str
    lines: list[Line]

    @property
    def study(self) -> Line:
        """The sum of the components."""
        def total(attr: str) -> tuple[float, float, float]:
            values = [getattr(line, attr) for line in self.lines]
            return (sum(v[0] for v in values), sum(v[1] for v in values), sum(v[2] for v in values))

        return Line("study", total("calls"), total("input_tokens"), total("output_tokens"), total("usd"),
                    any(line.unpriced for line in self.lines))

    def text(self) -> str:
        """The table ``--dry-run`` prints."""
        def fmt(v: tuple[float, float, float], money: bool = False) -> str:
            def f(x: float) -> str:
                return f"${x:,.4f}" if money else f"{x:,.0f}"

            return f"{f(v[1])} ({f(v[0])}–{f(v[2])})"

        out = [f"estimate ({self.basis}): expected (low–high)"]
        for line in [*self.lines, self.study]:
            flag = " [unpriced: $0]" if line.unpriced and line.component != "study" else ""
            out.append(f"  {line.component}: calls {fmt(line.calls)}, input tokens {fmt(line.input_tokens)}, "
                       f"output tokens {fmt(line.output_tokens)}, USD {fmt(line.usd, True)}{flag}")
        return "\n".join(out)


def _rate(config: Experiment, pricing: Pricing, spec: ModelSpec) -> Rate:
    ep = config.endpoints[spec.endpoint]
    return pricing.rate(spec.endpoint, ep.kind, spec.model, ep.in_flight)


def _line(component: str, rate: Rate, calls: tuple[float, float], first_prompt: float, context: float,
          max_tokens: float) -> Line:
    lo_calls, hi_calls = calls
    mid_calls = (lo_calls + hi_calls) / 2
    inp = (lo_calls * first_prompt, mid_calls * (first_prompt + context) / 2, hi_calls * context)
    out = (lo_calls, mid_calls * max_tokens / 2, hi_calls * max_tokens)
    usd = tuple(rate.cost(int(i), int(o)) for i, o in zip(inp, out, strict=True))
    return Line(component, (lo_calls, mid_calls, hi_calls), inp, out, (usd[0], usd[1], usd[2]),
                rate.source == "unpriced")


def estimate_from_config(config: Experiment, personas: Sequence[Persona], n_sessions: int, pricing: Pricing,
                         session_calls: tuple[int, int]) -> Estimate:
    """The range a study's config implies (no model call is made); ``session_calls``: the model calls
    of a session of ``min_turns`` and of ``max_turns`` turns."""
    from simlab.protocol import arm_system_prompt, needs_summary

    p = config.protocol
    k = len(config.arms)
    context = float(p.context_budget_tokens)
    persona = personas[0] if personas else None
    lines = []
    for arm in config.arms:
        prompt = arm_system_prompt(arm, persona, summary="(the persona summary)") if persona is not None else None
        chars = len(getattr(prompt, "text", "") or "")
        lines.append(_line(f"arm {arm.id}", _rate(config, pricing, arm),
                           (n_sessions * p.min_turns, n_sessions * p.max_turns), chars / 4 + 16, context,
                           arm.sampling.max_tokens))
    sim_calls = [n_sessions * (calls - t * k) for calls, t in zip(session_calls, (p.min_turns, p.max_turns), strict=True)]
    variants = config.variant_ids
    for v in variants:
        sim = config.simulator_of(v)
        name = "simulator" if v is None else f"simulator {v}"
        share = 1 / len(variants)
        lines.append(_line(name, _rate(config, pricing, sim), (sim_calls[0] * share, sim_calls[1] * share),
                           200.0, context, max(sim.sampling.max_tokens, sim.judgement_max_tokens)))
    if needs_summary(config):
        n = float(len(personas))
        lines.append(_line("summary", _rate(config, pricing, config.summary), (n, n), 200.0, context,
                           config.summary.sampling.max_tokens))
    return Estimate("from the config: turns, the context budget and max_tokens; --pilot k for a measured one", lines)


def estimate_from_pilot(calls: pd.DataFrame, sessions: Sequence[str], n_sessions: int, n_personas: int,
                        n_pilot_personas: int) -> Estimate:
    """The study's figures from a pilot's stored calls (``calls``: its ``llm_calls`` table;
    ``sessions``: its completed sessions): per-session mean × ``n_sessions`` (range: the cheapest and
    dearest pilot session), the summaries' per-persona mean × ``n_personas``."""
    lines = []
    done = calls[calls["recorded_with"].isin(list(sessions))] if "recorded_with" in calls else calls.iloc[0:0]
    component = done["role"].astype(str).where(done["role"] != "arm", "arm " + done["arm"].astype(str))
    for name, group in done.groupby(component, sort=True):
        per = group.groupby("recorded_with")[["prompt_tokens", "completion_tokens", "cost_usd"]].sum()
        per = per.reindex(list(sessions), fill_value=0)
        n_calls = group.groupby("recorded_with").size().reindex(list(sessions), fill_value=0)

        def scaled(s: pd.Series) -> tuple[float, float, float]:
            return (float(s.min()) * n_sessions, float(s.mean()) * n_sessions, float(s.max()) * n_sessions)

        lines.append(Line(str(name), scaled(n_calls), scaled(per["prompt_tokens"]), scaled(per["completion_tokens"]),
                          scaled(per["cost_usd"].astype(float)), bool((group["price_source"] == "unpriced").any())))
    summaries = calls[calls["role"] == "summary"]
    if len(summaries) and n_pilot_personas:
        f = n_personas / n_pilot_personas

        def each(col: str) -> tuple[float, float, float]:
            v = float(summaries[col].astype(float).sum()) * f
            return (v, v, v)

        lines.append(Line("summary", (len(summaries) * f,) * 3, each("prompt_tokens"), each("completion_tokens"),
                          each("cost_usd"), bool((summaries["price_source"] == "unpriced").any())))
    return Estimate(f"from a pilot of {len(sessions)} sessions, scaled to {n_sessions}", lines)


def pilot_personas(personas: Sequence[Persona], k: int, sessions_per_persona: int) -> list[Persona]:
    """The first participants whose sessions make at least ``k`` (whole participants)."""
    return list(personas[: max(1, math.ceil(k / max(1, sessions_per_persona)))])
