"""What one completed session produces: typed records in the PROTOCOL §6 schema.

A session is one participant × one domain: one conversation with every arm, the
turns, the end-of-conversation judgements, the BDM draw, and the log of every model
call and elicitation instrument it took. The protocol builds a ``SessionRecord``;
the run store writes it in one transaction. Field names are the column names of
``simlab.schema``. Everything that can be checked without a database is checked
here (letters form a permutation, ranks are 1..k, ratings 0–100, bids $0–10).

>>> p = ParticipantRecord(participant_id="p1", source="sim_dynamic")
>>> p.persona_id is None
True
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simlab.schema import IN_DOMAIN, LETTERS, WTP_CAP, Domain, GradeMode, Role, Source, StopReason

Rating = Annotated[float, Field(ge=0, le=100)]
Dollars = Annotated[float, Field(ge=0, le=WTP_CAP)]
Count = Annotated[int, Field(ge=0)]
CallRole = Literal["arm", "simulator", "judge", "summary"]
CallStatus = Literal["ok", "error", "schema_error"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParticipantRecord(_Record):
    """One participant (a persona under one rendering and simulator, or a real person)."""

    participant_id: str
    source: Source
    persona_id: str | None = None
    rendering: str | None = None
    simulator_model: str | None = None


class ConversationRecord(_Record):
    """One conversation of a participant in one domain with every arm."""

    conversation_id: str
    participant_id: str
    source: Source
    domain: Domain
    in_domain: bool
    arm_letters: dict[str, str]
    """Blinding map {arm: letter}; the letters are A, B, … with none missing or repeated."""
    n_turns: Count
    """User turns including the opening."""
    gen_error: bool = False
    max_turns_reached: bool = False
    stop_reason: StopReason | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> ConversationRecord:
        letters = sorted(self.arm_letters.values())
        if letters != list(LETTERS[: len(letters)]) or not letters:
            raise ValueError(f"arm_letters must map the arms onto A, B, … exactly once, got {self.arm_letters}")
        if self.in_domain != (self.domain in IN_DOMAIN):
            raise ValueError(f"in_domain={self.in_domain} contradicts domain {self.domain!r}")
        return self


class TurnRecord(_Record):
    """One message: a user turn (arm and letter null) or one arm's reply."""

    conversation_id: str
    turn: Count
    """0 = the opening."""
    role: Role
    arm: str | None = None
    letter: str | None = None
    text: str
    turn_rating: Rating | None = None
    n_tokens: Count | None = None
    gen_error: bool = False

    @model_validator(mode="after")
    def _check(self) -> TurnRecord:
        if self.role == "user" and (self.arm is not None or self.letter is not None or self.turn_rating is not None):
            raise ValueError("a user turn has no arm, letter or turn_rating")
        if self.role == "assistant" and (self.arm is None or self.letter is None):
            raise ValueError("an assistant turn needs its arm and letter")
        return self


class JudgementRecord(_Record):
    """The participant's assessment of one arm in one conversation."""

    conversation_id: str
    arm: str
    letter: str
    position: Annotated[int, Field(ge=1)]
    """1 = shown first (A)."""
    opening_choice: bool | None = None
    provenance_guess: bool | None = None
    rank: Annotated[int, Field(ge=1)] | None = None
    provenance_rank: Annotated[int, Field(ge=1)] | None = None
    rating_preference: Rating | None = None
    rating_engagingness: Rating | None = None
    rating_provenance: Rating | None = None
    wtp_bid: Dollars | None = None

    @model_validator(mode="after")
    def _check(self) -> JudgementRecord:
        if self.letter not in LETTERS or LETTERS.index(self.letter) + 1 != self.position:
            raise ValueError(f"letter {self.letter!r} is not shown at position {self.position}")
        return self


class BDMRecord(_Record):
    """The Becker–DeGroot–Marschak draw: the drawn arm, its random price, and the outcome."""

    conversation_id: str
    arm: str
    letter: str
    price: Dollars
    bid: Dollars
    won: bool
    paid: Dollars

    @model_validator(mode="after")
    def _check(self) -> BDMRecord:
        if self.won != (self.bid >= self.price):
            raise ValueError(f"won={self.won} but bid {self.bid} vs price {self.price}")
        if self.paid != (self.price if self.won else 0.0):
            raise ValueError(f"paid {self.paid}: a winner pays the price, a loser nothing")
        return self


class LLMCallRecord(_Record):
    """One model call (after its retries): who made it, with which prompt, and what it cost."""

    conversation_id: str | None = None
    role: CallRole
    arm: str | None = None
    instrument: str | None = None
    model: str
    endpoint: str
    prompt_name: str | None = None
    prompt_hash: str | None = None
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    latency_s: Annotated[float, Field(ge=0)] = 0.0
    attempts: Annotated[int, Field(ge=1)] = 1
    status: CallStatus = "ok"
    error: str | None = None


class InstrumentRecord(_Record):
    """One elicitation instrument (opening_choice, turn_rating, ranking, …) of a conversation."""

    conversation_id: str
    instrument: str
    attempts: Annotated[int, Field(ge=1)] = 1
    repairs: Count = 0
    """Permutation repairs applied to the reply (e.g. a missing letter filled in)."""
    status: CallStatus = "ok"
    error: str | None = None
    raw_text: str | None = None


class AutogradeRecord(_Record):
    """One autograder score of one unit (a reply or a conversation) on one dimension."""

    unit_id: str
    unit_kind: str
    conversation_id: str | None = None
    arm: str | None = None
    turn: Count | None = None
    mode: GradeMode
    dimension: str
    score: float | None = None
    rater_run: Count = 0
    rationale: str | None = None
    status: CallStatus = "ok"
    source: Source | None = None


def _check_permutation(name: str, values: list[int | None]) -> None:
    present = [v for v in values if v is not None]
    if not present:
        return
    if len(present) != len(values) or sorted(present) != list(range(1, len(values) + 1)):
        raise ValueError(f"{name} must be a permutation of 1..{len(values)}, got {values}")


class SessionRecord(_Record):
    """Everything one completed session produced; written to the store in one transaction."""

    participant: ParticipantRecord
    conversation: ConversationRecord
    turns: list[TurnRecord] = []
    judgements: list[JudgementRecord] = []
    bdm: list[BDMRecord] = []
    llm_calls: list[LLMCallRecord] = []
    instruments: list[InstrumentRecord] = []

    @property
    def session_key(self) -> str:
        """The store's key for this session: the conversation id."""
        return self.conversation.conversation_id

    @model_validator(mode="after")
    def _check(self) -> SessionRecord:
        conv = self.conversation
        if (conv.participant_id, conv.source) != (self.participant.participant_id, self.participant.source):
            raise ValueError("conversation.participant_id/source differ from the participant's")
        children: list[Any] = [*self.turns, *self.judgements, *self.bdm, *self.instruments]
        children += [c for c in self.llm_calls if c.conversation_id is not None]
        for child in children:
            if child.conversation_id != conv.conversation_id:
                raise ValueError(
                    f"{type(child).__name__} has conversation_id {child.conversation_id!r}, "
                    f"not {conv.conversation_id!r}"
                )
        rows: list[Any] = [*self.turns, *self.judgements, *self.bdm]
        for row in rows:
            if row.arm is None:
                continue
            if conv.arm_letters.get(row.arm) != row.letter:
                raise ValueError(f"{type(row).__name__}: arm {row.arm!r} has letter {row.letter!r}, map says {conv.arm_letters}")
        if self.judgements:
            arms = [j.arm for j in self.judgements]
            if sorted(arms) != sorted(conv.arm_letters):
                raise ValueError(f"judgements must cover each arm once, got {arms}")
            _check_permutation("rank", [j.rank for j in self.judgements])
            _check_permutation("provenance_rank", [j.provenance_rank for j in self.judgements])
            for name in ("opening_choice", "provenance_guess"):
                picks = [getattr(j, name) for j in self.judgements]
                if any(p is not None for p in picks) and (None in picks or sum(picks) != 1):
                    raise ValueError(f"{name} must mark exactly one arm, got {picks}")
        n_user = len({t.turn for t in self.turns if t.role == "user"})
        if n_user and n_user != conv.n_turns:
            raise ValueError(f"n_turns={conv.n_turns} but {n_user} user turns recorded")
        return self


class SessionFailure(_Record):
    """A session that failed as a whole: why, the last raw reply, and the calls it spent."""

    session_key: str
    participant_id: str
    domain: Domain
    error_type: str
    reason: str
    raw_text: str | None = None
    llm_calls: list[LLMCallRecord] = []


__all__ = [
    "AutogradeRecord",
    "BDMRecord",
    "ConversationRecord",
    "InstrumentRecord",
    "JudgementRecord",
    "LLMCallRecord",
    "ParticipantRecord",
    "SessionFailure",
    "SessionRecord",
    "TurnRecord",
]
