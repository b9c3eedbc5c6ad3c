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

import math
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simlab.schema import IN_DOMAIN, LETTERS, WTP_CAP, Domain, GradeMode, Role, Source, StopReason

Rating = Annotated[float, Field(ge=0, le=100)]
Dollars = Annotated[float, Field(ge=0, le=WTP_CAP)]
Count = Annotated[int, Field(ge=0)]
CallRole = Literal["arm", "simulator", "judge", "summary"]
CallStatus = Literal["ok", "error", "schema_error"]
PriceSource = Literal["table", "litellm", "gpu_hour", "unpriced", "cache"]
"""Where a call's price came from: the run's pricing table, litellm's offline cost map, an endpoint's
GPU-hour price, nothing (``unpriced``: counted as $0 and listed as such), or the response cache
(``cache``: the reply was served from it, $0)."""


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
    arm_positions: dict[str, int] | None = None
    """Display order {arm: position} (1 = shown first) when it differs from the letters'
    order (``protocol.letters = "independent"``); None: the letter A is shown first, B second, …"""
    repeat: Count = 0
    """Which run of this participant × domain (``--repeats k``: 0 … k-1, each with its own seed)."""
    n_turns: Count
    """User turns including the opening."""
    gen_error: bool = False
    """Some arm's generation failed after its retries (its reply is an error notice)."""
    max_turns_reached: bool = False
    """The context budget ended the conversation (PROTOCOL §2 keeps this name for that flag); then
    ``stop_reason`` is ``context_limit``. The turn cap is ``stop_reason = "max_turns"``."""
    stop_reason: StopReason | None = None
    """Why it ended: ``user_ended`` (the simulated user stopped), ``max_turns`` (the turn cap),
    ``context_limit`` (the context budget), ``error``."""
    seed: int | None = None

    def position_of(self, arm: str) -> int:
        """Where ``arm`` was shown (1 = first)."""
        if self.arm_positions is not None:
            return self.arm_positions[arm]
        return LETTERS.index(self.arm_letters[arm]) + 1

    @model_validator(mode="after")
    def _check(self) -> ConversationRecord:
        letters = sorted(self.arm_letters.values())
        if letters != list(LETTERS[: len(letters)]) or not letters:
            raise ValueError(f"arm_letters must map the arms onto A, B, … exactly once, got {self.arm_letters}")
        if self.arm_positions is not None and (
                sorted(self.arm_positions) != sorted(self.arm_letters)
                or sorted(self.arm_positions.values()) != list(range(1, len(letters) + 1))):
            raise ValueError(f"arm_positions must map the arms onto 1..{len(letters)} exactly once, "
                             f"got {self.arm_positions}")
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
    """1 = shown first (letter A, unless the conversation's letters are independent of the order)."""
    opening_choice: bool | None = None
    provenance_guess: bool | None = None
    rank: Annotated[int, Field(ge=1)] | None = None
    provenance_rank: Annotated[int, Field(ge=1)] | None = None
    rating_preference: Rating | None = None
    rating_engagingness: Rating | None = None
    rating_provenance: Rating | None = None
    wtp_bid: Dollars | None = None
    """The bid in dollars and cents (0.00 to the protocol's ``wtp_max``)."""

    @model_validator(mode="after")
    def _check(self) -> JudgementRecord:
        if self.letter not in LETTERS:
            raise ValueError(f"letter {self.letter!r} is not one of {', '.join(LETTERS)}")
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
    served_model: str | None = None
    """The model name the server's reply gave (vLLM: the base model's or the LoRA adapter's), so the
    store says which model or adapter answered; None when the reply named none (or no reply came)."""
    endpoint: str
    prompt_name: str | None = None
    prompt_hash: str | None = None
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    latency_s: Annotated[float, Field(ge=0)] = 0.0
    attempts: Annotated[int, Field(ge=1)] = 1
    status: CallStatus = "ok"
    error: str | None = None
    cached_tokens: Count | None = None
    """Of ``prompt_tokens``, those the server said it read from its prompt cache (summed over attempts);
    None in stores written before costs were kept."""
    cost_usd: Annotated[float, Field(ge=0)] | None = None
    """USD of every reply this call received, retries and rejected replies included (``price_source``
    says how it was priced); None in stores written before costs were kept."""
    price_source: PriceSource | None = None
    """Where the price came from (``unpriced``: no price known, counted as $0)."""


class InstrumentRecord(_Record):
    """One elicitation instrument (opening_choice, turn_rating, ranking, …) of a conversation."""

    conversation_id: str
    instrument: str
    attempts: Annotated[int, Field(ge=1)] = 1
    repairs: Count = 0
    """Always 0 for simlab's own runs: a reply that breaks its schema is retried and then recorded as a
    failure, never repaired or guessed. The column stays so stored tables keep their shape."""
    status: CallStatus = "ok"
    error: str | None = None
    raw_text: str | None = None


class AnswerRecord(_Record):
    """One answer of an instrument beyond PRISM's (``simlab.instruments``) about one arm: a row of
    the long ``answers`` table, so adding an instrument adds rows, not columns."""

    conversation_id: str
    arm: str
    letter: str
    turn: Count | None = None
    """The turn it was asked after (0 = the opening) for a turn instrument; None at the end."""
    instrument: str
    value: str
    """The answer as JSON text (``true``, ``4``, ``"often"``, …)."""
    number: float | None = None
    """The answer as a number when it is one (a boolean as 1/0), for means and shares."""


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
    answers: list[AnswerRecord] = []
    """Answers of the instruments beyond the built-in ones."""

    @model_validator(mode="after")
    def _check(self) -> SessionRecord:
        conv = self.conversation
        if (conv.participant_id, conv.source) != (self.participant.participant_id, self.participant.source):
            raise ValueError("conversation.participant_id/source differ from the participant's")
        children: list[Any] = [*self.turns, *self.judgements, *self.bdm, *self.instruments, *self.answers]
        children += [c for c in self.llm_calls if c.conversation_id is not None]
        for child in children:
            if child.conversation_id != conv.conversation_id:
                raise ValueError(
                    f"{type(child).__name__} has conversation_id {child.conversation_id!r}, "
                    f"not {conv.conversation_id!r}"
                )
        rows: list[Any] = [*self.turns, *self.judgements, *self.bdm, *self.answers]
        for row in rows:
            if row.arm is None:
                continue
            if conv.arm_letters.get(row.arm) != row.letter:
                raise ValueError(f"{type(row).__name__}: arm {row.arm!r} has letter {row.letter!r}, map says {conv.arm_letters}")
        for j in self.judgements:
            if j.arm in conv.arm_letters and j.position != conv.position_of(j.arm):
                raise ValueError(f"JudgementRecord: arm {j.arm!r} was shown at position {conv.position_of(j.arm)}, "
                                 f"not {j.position}")
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

    conversation_id: str
    participant_id: str
    domain: Domain
    error_type: str
    reason: str
    raw_text: str | None = None
    llm_calls: list[LLMCallRecord] = []


class ArmRecord(_Record):
    """One arm of the run as the config declares it: its id, description and config order."""

    arm: str
    description: str | None = None
    config_order: Count
    """0 = the first arm in the config: the reference arm of the analyses and the report's order."""


# ---------------------------------------------------------------------------------------------
# The tables, derived from the records above: the store's SQL, its column lists and dtypes, and the
# human-data loader's types and bounds all come from here, so they cannot disagree.

ColumnKind = Literal["text", "int", "float", "bool", "json"]


@dataclass(frozen=True)
class Column:
    """One column of a stored table, as a record field declares it."""

    name: str
    kind: ColumnKind
    nullable: bool
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None

    def sql(self) -> str:
        kind = {"text": "TEXT", "json": "TEXT", "int": "INTEGER", "bool": "INTEGER", "float": "REAL"}[self.kind]
        checks = []
        if self.low is not None and self.high is not None:
            checks.append(f"{self.name} BETWEEN {self.low:g} AND {self.high:g}")
        elif self.low is not None:
            checks.append(f"{self.name} >= {self.low:g}")
        if self.choices:
            checks.append(f"{self.name} IN ({', '.join(repr(c) for c in self.choices)})")
        check = f" CHECK ({' AND '.join(checks)})" if checks else ""
        return f"{self.name} {kind}{'' if self.nullable else ' NOT NULL'}{check}"


def _unpack(annotation: Any) -> tuple[Any, bool, list[Any]]:
    """(base type, nullable, constraint metadata) through ``X | None`` and ``Annotated[X, Field(...)]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base, _, meta = _unpack(args[0])
        return base, True, meta
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        inner, nullable, meta = _unpack(base)
        for e in extra:  # a FieldInfo carries its constraints in .metadata
            meta += list(getattr(e, "metadata", [e]))
        return inner, nullable, meta
    return annotation, False, []


def columns_of(record: type[BaseModel], *, skip: Collection[str] = ()) -> tuple[Column, ...]:
    """The columns of a record's table: its scalar fields, in order, with their bounds and choices."""
    out = []
    for name, info in record.model_fields.items():
        if name in skip:
            continue
        base, nullable, meta = _unpack(info.annotation)
        meta += list(info.metadata)
        choices = None
        if typing.get_origin(base) is Literal:
            kind: ColumnKind = "text"
            choices = tuple(str(a) for a in typing.get_args(base))
        elif typing.get_origin(base) in (dict, list) or base in (dict, list):
            kind = "json"
        else:
            kind = {str: "text", int: "int", float: "float", bool: "bool"}[base]  # type: ignore[assignment]
        low = next((float(m.ge) for m in meta if getattr(m, "ge", None) is not None), None)
        high = next((float(m.le) for m in meta if getattr(m, "le", None) is not None), None)
        out.append(Column(name, kind, nullable, low, high, choices))
    return tuple(out)


@dataclass(frozen=True)
class Table:
    """One stored table: its columns (from a record), keys and references."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    unique: tuple[str, ...] = ()
    references: tuple[tuple[str, str], ...] = ()
    """(columns, "table(columns)") foreign keys."""
    rowid: str | None = None
    """An INTEGER PRIMARY KEY column before the record's columns (call_id, failure_id)."""

    @property
    def names(self) -> tuple[str, ...]:
        """The columns a row is written with (without the rowid alias)."""
        return tuple(c.name for c in self.columns)

    def ddl(self) -> str:
        parts = ([f"{self.rowid} INTEGER PRIMARY KEY"] if self.rowid else []) + [c.sql() for c in self.columns]
        if self.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        if self.unique:
            parts.append(f"UNIQUE ({', '.join(self.unique)})")
        parts += [f"FOREIGN KEY ({cols}) REFERENCES {target}" for cols, target in self.references]
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n    " + ",\n    ".join(parts) + ")"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _TEXT(name: str, nullable: bool = False) -> Column:  # noqa: N802 - reads like the column kinds
    """A text column that no record model carries (session log and call bookkeeping)."""
    return Column(name, "text", nullable)


TABLES: dict[str, Table] = {
    "sessions": Table("sessions", (
        _TEXT("conversation_id"), _TEXT("participant_id"), *columns_of(ConversationRecord)[2:4],
        _TEXT("record_sha256"), _TEXT("completed_at")), primary_key=("conversation_id",)),
    "participants": Table("participants", columns_of(ParticipantRecord), primary_key=("participant_id", "source")),
    "arms": Table("arms", columns_of(ArmRecord), primary_key=("arm",)),
    "conversations": Table(
        "conversations", columns_of(ConversationRecord), primary_key=("conversation_id",),
        references=(("conversation_id", "sessions(conversation_id)"),
                    ("participant_id, source", "participants(participant_id, source)"))),
    "turns": Table("turns", columns_of(TurnRecord), references=(("conversation_id", "conversations(conversation_id)"),)),
    "judgements": Table("judgements", columns_of(JudgementRecord), primary_key=("conversation_id", "arm"),
                        references=(("conversation_id", "conversations(conversation_id)"),)),
    "bdm": Table("bdm", columns_of(BDMRecord), primary_key=("conversation_id", "arm"),
                 references=(("conversation_id", "conversations(conversation_id)"),)),
    # recorded_with: the conversation_id of the session or failure record a call was committed with
    # (NULL for calls recorded on their own: persona summaries, autograder grades); a shard merge
    # takes a session's calls with its session, and each call once
    "llm_calls": Table("llm_calls", (_TEXT("recorded_with", True), *columns_of(LLMCallRecord)), rowid="call_id"),
    "instruments": Table("instruments", columns_of(InstrumentRecord),
                         references=(("conversation_id", "conversations(conversation_id)"),)),
    "answers": Table("answers", columns_of(AnswerRecord),
                     references=(("conversation_id", "conversations(conversation_id)"),)),
    "autograde": Table("autograde", columns_of(AutogradeRecord), unique=("unit_id", "mode", "dimension", "rater_run")),
    "failures": Table("failures", (*columns_of(SessionFailure, skip={"llm_calls"}), _TEXT("failed_at")),
                      rowid="failure_id"),
}
"""Every stored table but ``meta`` (key, value)."""

# The columns human data must have per table (``simlab.fidelity.load_human``); the rest of each
# record's columns are optional there (e.g. PRISM gives no display position).
REQUIRED: dict[str, tuple[str, ...]] = {
    "participants": ("participant_id", "source"),
    "conversations": ("conversation_id", "participant_id", "source", "domain"),
    "turns": ("conversation_id", "turn", "role", "text"),
    "judgements": ("conversation_id", "arm"),
    "bdm": ("conversation_id", "arm", "letter", "price", "bid", "won", "paid"),
    "autograde": ("unit_id", "mode", "dimension", "score", "rater_run"),
    "answers": ("conversation_id", "arm", "instrument", "value"),
}


def columns_of_kind(kind: ColumnKind) -> frozenset[str]:
    """Every stored column of one kind (for dtypes when tables are read back)."""
    return frozenset(c.name for t in TABLES.values() for c in t.columns if c.kind == kind)


def float_bounds() -> dict[str, tuple[float, float]]:
    """Bounds of every float column (±inf where a side is open)."""
    out: dict[str, tuple[float, float]] = {}
    for t in TABLES.values():
        for c in t.columns:
            if c.kind == "float":
                out[c.name] = (c.low if c.low is not None else -math.inf, c.high if c.high is not None else math.inf)
    return out


__all__ = [
    "REQUIRED",
    "TABLES",
    "AnswerRecord",
    "ArmRecord",
    "AutogradeRecord",
    "BDMRecord",
    "Column",
    "ConversationRecord",
    "InstrumentRecord",
    "JudgementRecord",
    "LLMCallRecord",
    "ParticipantRecord",
    "PriceSource",
    "SessionFailure",
    "SessionRecord",
    "Table",
    "TurnRecord",
    "columns_of",
    "columns_of_kind",
    "float_bounds",
]
