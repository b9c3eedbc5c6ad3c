"""The record schema (PROTOCOL.md §6): the tables humans and simulators both fill.

The words every table uses (sources, domains, stop reasons, roles, letters, the bid cap). The
tables themselves, their columns, types and bounds, are the records in ``simlab.records``
(``TABLES``; ``REQUIRED`` lists what human data must have).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "DOMAINS",
    "HUMAN",
    "IN_DOMAIN",
    "LETTERS",
    "NO_PERSONA",
    "PRISM_DOMAINS",
    "REFUSED_AT",
    "SOURCES",
    "WTP_CAP",
    "Domain",
    "GradeMode",
    "LetterMode",
    "Memory",
    "Rendering",
    "Role",
    "Source",
    "StopReason",
    "binarise_refusal",
]

Source = Literal["human", "sim_dynamic", "sim_judgement", "sim_dynamic_no_persona"]
HUMAN = "human"
"""The source of real people's data; every other source is simulated."""
SOURCES: tuple[str, ...] = ("human", "sim_dynamic", "sim_judgement", "sim_dynamic_no_persona")
NO_PERSONA = "sim_dynamic_no_persona"
"""The control source: Sim-Dynamic sessions whose simulator got no persona (``--ablate-persona``),
paired with the persona sessions of the same participant, domain, repeat and seed."""

Domain = Literal["unguided", "values", "controversy", "emotional_wellbeing"]
DOMAINS: tuple[str, ...] = ("unguided", "values", "controversy", "emotional_wellbeing")
IN_DOMAIN: frozenset[str] = frozenset({"unguided", "values", "controversy"})

StopReason = Literal["user_ended", "max_turns", "context_limit", "error"]
Role = Literal["user", "assistant"]
GradeMode = Literal["first_turn", "conversation"]
Rendering = Literal["demographics", "profile", "summary"]
"""How a persona is shown to the simulator or an arm (PROTOCOL §3)."""
Memory = Literal["session", "none"]
"""What the simulated participant sees of its own earlier answers in a conversation."""
LetterMode = Literal["by_position", "independent"]
"""How letters are given to the arms: the display position's letter (A shown first), or a
second permutation drawn independently of the display order."""

PRISM_DOMAINS: dict[str, str] = {"unguided": "unguided", "values guided": "values", "controversy guided": "controversy"}
"""PRISM's conversation_type → simlab's domain."""

REFUSED_AT = 2
"""The autograder grades refusal 1–3; analyses read it as refused when the grade is at least this."""


def binarise_refusal(score: Any) -> Any:
    """Refusal 1–3 → refused (1.0) when ≥ ``REFUSED_AT``, else 0.0; a missing grade stays NaN.
    Takes a number or a pandas Series (the one definition the autograder and the analyses use)."""
    if hasattr(score, "where"):  # a Series
        return (score >= REFUSED_AT).astype(float).where(score.notna())
    return float("nan") if score is None or score != score else float(score >= REFUSED_AT)


LETTERS = "ABCDEFGHIJ"

WTP_CAP = 10.0
"""Highest willingness-to-pay bid in dollars the records hold (PROTOCOL §2: $0–10). The records,
the store's CHECKs, the human-data loader and the config's ``protocol.wtp_max`` all use it."""
