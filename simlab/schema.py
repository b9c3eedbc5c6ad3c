"""The record schema (PROTOCOL.md §6): the tables humans and simulators both fill.

The words every table uses (sources, domains, stop reasons, roles, letters, the bid cap). The
tables themselves, their columns, types and bounds, are the records in ``simlab.records``
(``TABLES``; ``REQUIRED`` lists what human data must have).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

__all__ = [
    "DOMAINS",
    "HUMAN",
    "IN_DOMAIN",
    "LETTERS",
    "NO_PERSONA",
    "PRISM_DOMAINS",
    "REFUSED_AT",
    "SOURCES",
    "SOURCE_NAME",
    "VARIANT_ID",
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
    "source_name_error",
    "variant_source",
]

HUMAN = "human"
"""The source of real people's data; every other source is simulated."""
SOURCES: tuple[str, ...] = ("human", "sim_dynamic", "sim_judgement", "sim_dynamic_no_persona")
NO_PERSONA = "sim_dynamic_no_persona"
"""The control source: Sim-Dynamic sessions whose simulator got no persona (``--ablate-persona``),
paired with the persona sessions of the same participant, domain, repeat and seed."""
VARIANT_ID = r"[A-Za-z0-9_\-]{1,32}"
"""A simulator variant's id (``[[simulators]]``): letters, digits, ``_`` and ``-``."""
SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
"""Any source's name: the built-in ``SOURCES``, a variant's ``sim_dynamic:<id>`` (and its control
``sim_dynamic_no_persona:<id>``), or the name given to simulated data (``simlab compare --sim NAME=…``)."""


def variant_source(variant: str | None, *, no_persona: bool = False) -> str:
    """The source of a Sim-Dynamic session by simulator variant: ``sim_dynamic`` (one ``[simulator]``,
    variant None) or ``sim_dynamic:<id>``; the no-persona control's is ``sim_dynamic_no_persona[:<id>]``.

    >>> variant_source(None), variant_source("profile"), variant_source("profile", no_persona=True)
    ('sim_dynamic', 'sim_dynamic:profile', 'sim_dynamic_no_persona:profile')
    """
    base = NO_PERSONA if no_persona else "sim_dynamic"
    return base if variant is None else f"{base}:{variant}"


def source_name_error(name: object) -> str | None:
    """Why ``name`` cannot be a source, or None when it can: ``human`` is the one human source, and a
    simulated source's name is letters, digits and ``_.:-`` (at most 64), never a spelling of
    "human" (``Human`` would silently become a simulated source).

    >>> source_name_error("sim_dynamic:profile") is None, source_name_error("Human")
    (True, "'Human' is not a source: the human source is spelled 'human'")
    """
    if not isinstance(name, str) or not SOURCE_NAME.match(name):
        return (f"{name!r} is not a source name (letters, digits and _.:- , at most 64, starting with a letter "
                f"or digit; e.g. {', '.join(SOURCES)})")
    if name != HUMAN and name.strip().lower() == HUMAN:
        return f"{name!r} is not a source: the human source is spelled 'human'"
    return None


def _source_name(name: str) -> str:
    error = source_name_error(name)
    if error is not None:
        raise ValueError(error)
    return name


Source = Annotated[str, AfterValidator(_source_name)]
"""A record's ``source``: ``human`` or any simulated source's name (``source_name_error`` says why
not); the store keeps it as text without a closed list, so a run may hold any number of variants."""

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
