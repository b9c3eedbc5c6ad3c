"""The record schema (PROTOCOL.md §6): the tables humans and simulators both fill.

The words every table uses (sources, domains, stop reasons, roles, letters, the bid cap). The
tables themselves, their columns, types and bounds, are the records in ``simlab.records``
(``TABLES``; ``REQUIRED`` lists what human data must have).
"""

from __future__ import annotations

from typing import Literal

Source = Literal["human", "sim_dynamic", "sim_judgement"]
SOURCES: tuple[str, ...] = ("human", "sim_dynamic", "sim_judgement")

Domain = Literal["unguided", "values", "controversy", "emotional_wellbeing"]
DOMAINS: tuple[str, ...] = ("unguided", "values", "controversy", "emotional_wellbeing")
IN_DOMAIN: frozenset[str] = frozenset({"unguided", "values", "controversy"})

StopReason = Literal["user_ended", "max_turns", "context_limit", "error"]
Role = Literal["user", "assistant"]
GradeMode = Literal["first_turn", "conversation"]

LETTERS = "ABCDEFGHIJ"

WTP_CAP = 10.0
"""Highest willingness-to-pay bid in dollars the records hold (PROTOCOL §2: $0–10). The records,
the store's CHECKs, the human-data loader and the config's ``protocol.wtp_max`` all use it."""
