"""Result models of the ``user_text`` analysis (``simlab.fidelity.analyses.user_text``): the text of
the users' messages, simulated vs human, JSON-serialisable.

Apart from ``simlab.fidelity.result`` so the report's renderer and the result JSON can read them
without the analysis (which loads the statistics libraries).

>>> from simlab.fidelity.user_text_result import UserTextResult
>>> UserTextResult(status="not_available", reason="no turns table").model_dump()["per_source"]
{}
"""

from __future__ import annotations

from pydantic import Field

from simlab.fidelity.status import Estimate, SourceStatus, _Model

__all__ = ["UserTextComparison", "UserTextMeasure", "UserTextResult", "UserTextSource"]


class UserTextMeasure(_Model):
    """One measure of a simulated source against human: each source's level and the difference."""

    difference: Estimate | None = None
    """The source's level − human's. 95% CI and p_value of 0: the standard error of the participant
    bootstrap (the draws shared by every analysis; a human and their simulated copy share a
    participant_id and so are drawn together) × √(G/(G − 1)), t with G − 1 df; n = G, the
    participants in either source."""
    source: Estimate | None = None
    """The simulated source's level (its own bootstrap CI; n = its participants)."""
    human: Estimate | None = None
    """Human's level, computed the same way as the source's (for distinct-n at the same common size,
    so it may differ between comparisons)."""
    reason: str | None = None
    """Why the difference is missing (e.g. too few participants with such messages)."""


class UserTextSource(SourceStatus):
    """What one source's user messages hold (the counts behind its measures)."""

    n_participants: int = 0
    """Participants with at least one user message with text."""
    n_openings: int = 0
    """Opening messages (the first user message of each conversation, or of each chat with one arm
    when the user messages carry an arm, as in Dialogue-Eval)."""
    n_later: int = 0
    """User messages after the opening."""
    n_conversations: int = 0
    """Conversations (or chats) with a user message, whose last message is measured."""
    stop_reasons: dict[str, Estimate] = Field(default_factory=dict)
    """Share of conversations per ``stop_reason`` (those with one recorded), participant-bootstrap CI."""


class UserTextComparison(SourceStatus):
    """One simulated source against human, per measure (keys in ``UserTextResult.measures`` order)."""

    measures: dict[str, UserTextMeasure] = Field(default_factory=dict)
    """Per measure: e.g. ``opening.words``, ``later.mattr``, ``opening.distinct_2``, ``ending.user_ended``."""
    stop_reasons: dict[str, Estimate] = Field(default_factory=dict)
    """Per ``stop_reason``: the source's share of conversations − human's (fraction, bootstrap CI and p)."""


class UserTextResult(SourceStatus):
    """The text of user turns, each simulated source against human: length, lexical diversity
    (MATTR), diversity across participants (distinct-n of openings), questions, and how
    conversations end. Opening and later user messages are measured separately."""

    window: int = 50
    """MATTR window (words); a participant's text shorter than it is scored by its type-token ratio."""
    measures: dict[str, str] = Field(default_factory=dict)
    """Every measure's key with what it is, in words (the report's order)."""
    per_source: dict[str, UserTextSource] = Field(default_factory=dict)
    """Per source (human included): its counts, or why it has no user text."""
    vs_human: dict[str, UserTextComparison] = Field(default_factory=dict)
    """Per simulated source."""
    method: str | None = None
    """The tokenizer, the estimators and their inference, in words."""
