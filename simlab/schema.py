"""The record schema (PROTOCOL.md §6): the tables humans and simulators both fill.

One place for table and column names, so the run store, the fidelity module and
the report use the same word for the same thing. Columns marked optional may be
absent or all-null in human data (e.g. PRISM gives no display position).
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

# table -> (required columns, optional columns). Types in comments.
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "participants": (
        ("participant_id", "source"),  # str, Source
        ("persona_id", "rendering", "simulator_model"),  # str | None
    ),
    "conversations": (
        ("conversation_id", "participant_id", "source", "domain"),
        (
            "in_domain",  # bool
            "arm_letters",  # JSON object {arm: letter}
            "n_turns",  # int, user turns incl. the opening
            "gen_error",  # bool: any arm's generation failed after retries
            "max_turns_reached",  # bool: context budget ended it
            "stop_reason",  # StopReason
            "seed",  # int
        ),
    ),
    "turns": (
        ("conversation_id", "turn", "role", "text"),  # turn 0 = opening
        ("arm", "letter", "turn_rating", "n_tokens", "gen_error"),  # arm/letter null for user rows
    ),
    "judgements": (
        ("conversation_id", "arm"),
        (
            "letter",  # str A..
            "position",  # int, 1 = shown first (A)
            "opening_choice",  # bool: preferred at the opening turn
            "provenance_guess",  # bool: guessed personalised at the opening turn
            "rank",  # int, 1 = best; ranked_best = rank == 1
            "provenance_rank",  # int, 1 = most likely personalised
            "rating_preference",  # float 0-100
            "rating_engagingness",  # float 0-100
            "rating_provenance",  # float 0-100
            "wtp_bid",  # float $0-10
        ),
    ),
    "bdm": (
        ("conversation_id", "arm", "letter", "price", "bid", "won", "paid"),
        (),
    ),
    "autograde": (
        ("unit_id", "mode", "dimension", "score", "rater_run"),
        ("unit_kind", "conversation_id", "arm", "turn", "rationale", "status", "source"),
    ),
}
