"""Instruments: the questions put to the simulated participant, one registered object each.

An ``Instrument`` says everything the protocol, the store, the loaders and the report need about
one question: its ``name`` (the ``instrument`` of its calls and stored answers), its Jinja2
``template`` (in simlab's prompts, or in the instrument's own ``folder``), the answer ``schema``
built from the conversation's letters and the protocol config, its ``scope`` (asked after each
turn, or once at the end of the conversation), how many model calls one asking makes, how its
reply becomes one answer per letter, and the line the participant remembers of it
(``simulator.memory = "session"``).

``INSTRUMENTS`` holds the built-ins in the order a session asks them (opening choice, turn
rating, stop decision, ranking, provenance ranking, ratings, willingness-to-pay bids) and every
instrument registered after them: from Python (``INSTRUMENTS.register(Instrument(...))``) or by
a package's entry point in the group ``simlab.instruments``. The built-ins' answers keep their
PRISM columns (judgements, turns); every other instrument's answers go to the long ``answers``
table (one row per conversation, letter, turn and instrument), so a new instrument needs no
store migration.

>>> [i.name for i in INSTRUMENTS if i.builtin]
['opening_choice', 'turn_rating', 'stop', 'ranking', 'provenance_ranking', 'ratings', 'wtp']
>>> INSTRUMENTS.get("ranking").calls(4)  # a ranking by successive picks: k - 1 calls
3
>>> stored_value(True)
('true', 1.0)
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from simlab.config import ProtocolConfig
from simlab.prompts import Prompt, prompts_dir, render_in
from simlab.registry import RegistrationError, Registry

__all__ = [
    "INSTRUMENTS",
    "Instrument",
    "RankingInstrument",
    "Scope",
    "bid_pattern",
    "bids_schema",
    "check_instrument",
    "instrument_meta",
    "opening_schema",
    "per_letter",
    "pick_schema",
    "ratings_schema",
    "scores_schema",
    "stop_schema",
    "stored_value",
]

Scope = Literal["turn", "end"]
"""``turn``: asked after each turn's rating (with the transcript so far); ``end``: once, after the
conversation."""
SchemaBuilder = Callable[[tuple[str, ...], ProtocolConfig], type[BaseModel]]
Answers = dict[str, Any]
"""One instrument's answer per letter."""


# ----------------------------------------------------------------------------- the answer schemas


def _closed(name: str, **fields: Any) -> type[BaseModel]:
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


# The schemas are built once per shape and reused: building a pydantic model per call was a
# large share of the client's CPU at 1,000 sessions in flight (and the client caches its JSON
# schema per model class).
def opening_schema(letters: Sequence[str]) -> type[BaseModel]:
    """The opening choice's answer: the preferred letter and the one thought personalised."""
    return _opening_schema(tuple(letters))


@functools.cache
def _opening_schema(letters: tuple[str, ...]) -> type[BaseModel]:
    L = Literal[letters]  # type: ignore[valid-type]
    return _closed("OpeningChoice", preferred=(L, ...), personalised=(L, ...))


def scores_schema(name: str, letters: Sequence[str], lo: float, hi: float, *, integer: bool = True) -> type[BaseModel]:
    """One bounded score per letter, fields in display order (the order a grammar makes them)."""
    return _scores_schema(name, tuple(letters), lo, hi, integer)


@functools.cache
def _scores_schema(name: str, letters: tuple[str, ...], lo: float, hi: float, integer: bool) -> type[BaseModel]:
    kind = int if integer else float
    fields: dict[str, Any] = {letter: (kind, Field(ge=lo, le=hi)) for letter in letters}
    return _closed(name, **fields)


def bid_pattern(wtp_max: float) -> str:
    """A regular expression for a bid in dollars and cents from 0.00 to ``wtp_max`` (≤ $10), e.g.
    ``^([0-9][.][0-9][0-9]|10[.]00)$``. Bids are strings of this shape because every backend's
    grammar enforces a pattern (llama.cpp ignores a number's minimum and maximum: SmolLM bid $15 on
    a $10 scale), and plain groups because llama.cpp's grammar takes no ``(?:``."""
    cents = round(wtp_max * 100)
    dollars, rest = divmod(cents, 100)
    whole = [f"[0-{dollars - 1}][.][0-9][0-9]"] if dollars >= 1 else []
    tens, units = divmod(rest, 10)
    last = f"0[0-{units}]" if tens == 0 else f"([0-{tens - 1}][0-9]|{tens}[0-{units}])"
    return "^(" + "|".join([*whole, f"{dollars}[.]{last}"]) + ")$"


def bids_schema(letters: Sequence[str], wtp_max: float) -> type[BaseModel]:
    """One bid per letter (display order), a string of dollars and cents within the scale."""
    return _bids_schema(tuple(letters), float(wtp_max))


@functools.cache
def _bids_schema(letters: tuple[str, ...], wtp_max: float) -> type[BaseModel]:
    fields: dict[str, Any] = {letter: (str, Field(pattern=bid_pattern(wtp_max))) for letter in letters}
    return _closed("Bids", **fields)


@functools.cache
def stop_schema() -> type[BaseModel]:
    """The stop question's answer: continue the conversation or not."""
    return _closed("StopDecision", **{"continue": (bool, ...)})


def pick_schema(remaining: Sequence[str]) -> type[BaseModel]:
    """One place of a ranking: a letter from the ones still unranked."""
    return _pick_schema(tuple(remaining))


@functools.cache
def _pick_schema(remaining: tuple[str, ...]) -> type[BaseModel]:
    L = Literal[remaining]  # type: ignore[valid-type]
    return _closed("Pick", letter=(L, ...))


def ratings_schema(letters: Sequence[str]) -> type[BaseModel]:
    """The final ratings: preference, engagingness and provenance, 0–100 per letter."""
    return _ratings_schema(tuple(letters))


@functools.cache
def _ratings_schema(letters: tuple[str, ...]) -> type[BaseModel]:
    per = scores_schema("Scores", letters, 0, 100)
    return _closed("Ratings", preference=(per, ...), engagingness=(per, ...), provenance=(per, ...))


def per_letter(name: str, letters: Sequence[str], answer: Any) -> type[BaseModel]:
    """A schema with one field per letter (display order), each answering with ``answer`` (a type:
    ``bool``, ``Literal["yes", "no"]``, ``Annotated[int, Field(ge=1, le=5)]``, …): the usual shape
    of an added instrument's answer. Built once per (name, letters, answer).

    >>> per_letter("UseAgain", ["A", "B"], bool).model_json_schema()["required"]
    ['A', 'B']
    """
    return _per_letter_schema(name, tuple(letters), answer)


@functools.cache
def _per_letter_schema(name: str, letters: tuple[str, ...], answer: Any) -> type[BaseModel]:
    return _closed(name, **{letter: (answer, ...) for letter in letters})


def scores_note(scores: Mapping[str, Any], letters: Sequence[str]) -> str:
    """``A 70, B 55, …`` in display order (a memory note's compact form)."""
    return ", ".join(f"{letter} {scores[letter]:g}" for letter in letters)


# ----------------------------------------------------------------------------- the instrument


def _per_letter(reply: BaseModel, letters: tuple[str, ...]) -> Answers:
    data = reply.model_dump()
    return {letter: data[letter] for letter in letters}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class Instrument:
    """One question put to the simulated participant.

    ``template``: the prompt's Jinja2 file, under ``folder`` if given (searched before simlab's
    prompts, so it can ``{% include "simulator/memory.j2" %}``), else under simlab's prompts. It
    renders with ``transcript``, ``letters`` ("A, B, C"), ``n_arms``, ``wtp_max`` ("10.00"),
    ``memory`` (the participant's earlier answers) and, for turn instruments, ``turn`` (1 = the
    opening). ``schema(letters, protocol)``: the pydantic model the reply must match (checked to
    be a JSON schema at registration). ``answers(reply, letters)``: the answer per letter (default:
    the reply's field of each letter). ``memory(answers, letters)``: the participant's note of it
    (default ``Your answers to '<name>': A yes, B no.``; None: nothing remembered).
    ``builtin``: answers kept in PRISM's columns; False (every added instrument): in the
    ``answers`` table."""

    name: str
    template: str
    schema: SchemaBuilder
    scope: Scope = "end"
    folder: Path | None = None
    answers: Callable[[BaseModel, tuple[str, ...]], Answers] = _per_letter
    memory: Callable[[Answers, tuple[str, ...]], str | None] | None = None
    show: Callable[[Any], str] = _show
    """An answer as the participant's note and the report show it."""
    builtin: bool = False
    description: str = ""
    per_ask: Callable[[int], int] = field(default=lambda k: 1, repr=False)
    """Model calls one asking makes with ``k`` arms (one, unless the instrument asks in steps)."""

    def calls(self, k: int) -> int:
        """Model calls one asking makes with ``k`` arms (no retries)."""
        return self.per_ask(k)

    def asked(self, turns: int, protocol: ProtocolConfig) -> int:
        """How often a session of ``turns`` user turns asks it."""
        return 1 if self.scope == "end" else turns

    def count(self, k: int, turns: int, protocol: ProtocolConfig) -> int:
        """Its model calls in a session with ``k`` arms and ``turns`` user turns (no retries)."""
        return self.calls(k) * self.asked(turns, protocol)

    def template_path(self) -> Path:
        """Where its template is (checked at registration)."""
        return (self.folder if self.folder is not None else prompts_dir()) / self.template

    def prompt(self, **variables: Any) -> Prompt:
        """The rendered question."""
        return render_in(self.folder, self.template, **variables)

    def note(self, answers: Answers, letters: tuple[str, ...]) -> str | None:
        """The participant's memory line of these answers (None: nothing to remember)."""
        if self.memory is not None:
            return self.memory(answers, letters)
        return f"Your answers to '{self.name}': " + ", ".join(f"{x} {self.show(answers[x])}" for x in letters) + "."


@dataclass(frozen=True)
class RankingInstrument(Instrument):
    """A full ranking by successive best-of-the-remaining picks (``k - 1`` calls, a permutation by
    construction): each pick renders ``template`` with ``question``, ``ranked`` and ``remaining``
    and is answered from ``pick_schema``. Its answer per letter is the letter's rank (1 = best)."""

    question: str = ""

    def calls(self, k: int) -> int:
        return k - 1


@dataclass(frozen=True)
class _Once(Instrument):
    """A turn instrument asked after the first turn only (the opening choice)."""

    def asked(self, turns: int, protocol: ProtocolConfig) -> int:
        return 1


@dataclass(frozen=True)
class _Stop(Instrument):
    """The stop decision: after each turn from ``min_turns`` on, except at the cap."""

    def asked(self, turns: int, protocol: ProtocolConfig) -> int:
        return sum(1 for t in range(1, turns + 1) if protocol.min_turns <= t < protocol.max_turns)


# ----------------------------------------------------------------------------- registration


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def stored_value(value: Any) -> tuple[str, float | None]:
    """(the answer as JSON text, its number or None): booleans are 1/0, numbers themselves."""
    text = json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return text, float(value)
    if isinstance(value, (int, float)):
        return text, float(value)
    return text, None


def check_instrument(part: Instrument) -> None:
    """Refuse an instrument simlab could not ask: raises ``TypeError``/``ValueError``/``LookupError``
    with the cause (the registry names the instrument)."""
    if not isinstance(part, Instrument):
        raise TypeError(f"is a {type(part).__name__}, not a simlab.instruments.Instrument")
    if not _NAME.fullmatch(part.name):
        raise ValueError("the name must be letters, digits and underscores, starting with a letter")
    if part.scope not in ("turn", "end"):
        raise ValueError(f"scope {part.scope!r} is not 'turn' or 'end'")
    path = part.template_path()
    if not path.is_file():
        raise LookupError(f"template {part.template!r} does not exist (looked for {path})")
    if isinstance(part, RankingInstrument):
        return  # its schema is pick_schema
    try:
        model = part.schema(("A", "B"), ProtocolConfig())
    except Exception as exc:  # noqa: BLE001 - a broken builder is the user's to see, with its cause
        raise TypeError(f"the schema builder failed: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"the schema builder gave {model!r}, not a pydantic model class")
    try:
        schema = model.model_json_schema()
    except Exception as exc:  # noqa: BLE001 - pydantic's own refusal (an arbitrary type, …)
        raise ValueError(f"the answer schema is not a JSON schema: {type(exc).__name__}: {exc}") from exc
    _check_json_schema(schema)


def _check_json_schema(schema: dict[str, Any]) -> None:
    try:
        import jsonschema
    except ImportError:  # optional: without it, pydantic's own generation is the check
        if schema.get("type") not in (None, "object"):
            raise ValueError(f"the answer schema's type is {schema.get('type')!r}, not an object") from None
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"the answer schema is not a valid JSON schema: {exc.message}") from exc


INSTRUMENTS: Registry[Instrument] = Registry("instrument", "simlab.instruments", check_instrument)
"""Every instrument, the built-ins first in the order a session asks them."""


def _ranks(ranking: Sequence[str]) -> Answers:
    return {letter: i + 1 for i, letter in enumerate(ranking)}


def _ranking_order(answers: Answers) -> list[str]:
    return sorted(answers, key=lambda letter: answers[letter])


def _ratings(reply: BaseModel, letters: tuple[str, ...]) -> Answers:
    scales = {scale: getattr(reply, scale).model_dump() for scale in ("preference", "engagingness", "provenance")}
    return {letter: {scale: v[letter] for scale, v in scales.items()} for letter in letters}


def _ratings_note(answers: Answers, letters: tuple[str, ...]) -> str:
    return "Your final ratings: " + "; ".join(
        f"{scale} {scores_note({x: answers[x][scale] for x in letters}, letters)}"
        for scale in ("preference", "engagingness", "provenance")) + "."


_BUILTINS: tuple[Instrument, ...] = (
    _Once("opening_choice", "simulator/opening_choice.j2", lambda letters, p: opening_schema(letters), scope="turn",
          builtin=True, description="after the first turn: the preferred reply and the one thought personalised"),
    Instrument("turn_rating", "simulator/turn_rating.j2",
               lambda letters, p: scores_schema("TurnRating", letters, 0, 100), scope="turn", builtin=True,
               memory=lambda a, letters: None, description="each turn: every reply rated 0–100"),
    _Stop("stop", "simulator/stop.j2", lambda letters, p: stop_schema(), scope="turn", builtin=True,
          memory=lambda a, letters: None, description="after each turn from min_turns on: continue or stop"),
    RankingInstrument("ranking", "simulator/rank_next.j2", lambda letters, p: pick_schema(letters), builtin=True,
                      question="Which remaining response do you prefer most overall?",
                      memory=lambda a, letters: f"Your overall ranking, best first: {', '.join(_ranking_order(a))}.",
                      description="the replies ranked by overall preference"),
    RankingInstrument("provenance_ranking", "simulator/rank_next.j2", lambda letters, p: pick_schema(letters),
                      builtin=True,
                      question="Which remaining response is most likely to have been personalised to you?",
                      memory=lambda a, letters: "Your ranking by how likely each was personalised to you: "
                                                f"{', '.join(_ranking_order(a))}.",
                      description="the replies ranked by how likely each was personalised"),
    Instrument("ratings", "simulator/ratings.j2", lambda letters, p: ratings_schema(letters), builtin=True,
               answers=_ratings, memory=_ratings_note,
               description="preference, engagingness and provenance, 0–100 per reply"),
    # dollars and cents, as "7.50" (see bid_pattern); the BDM price is drawn in cents too
    Instrument("wtp", "simulator/wtp.j2", lambda letters, p: bids_schema(letters, p.wtp_max), builtin=True,
               answers=lambda reply, letters: {x: float(getattr(reply, x)) for x in letters},
               memory=lambda a, letters: None, description="willingness-to-pay bid per reply (BDM)"),
)
for _instrument in _BUILTINS:
    INSTRUMENTS.register(_instrument)


def instrument_meta() -> list[dict[str, Any]]:
    """Every registered instrument (name, scope, template, its hash): what a run records. Reading
    the registry loads its entry points, so a bad one is refused here, before any model call."""
    from simlab.prompts import template_hash

    out = []
    for inst in INSTRUMENTS:
        try:
            digest = template_hash(inst.template, inst.folder)
        except OSError as exc:
            raise RegistrationError(f"instrument '{inst.name}': template {inst.template!r}: {exc}") from exc
        out.append({"name": inst.name, "scope": inst.scope, "template": inst.template, "hash": digest,
                    "builtin": inst.builtin})
    return out
