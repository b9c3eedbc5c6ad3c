"""Personas (PROTOCOL.md §3): who a simulated participant is, where that comes from, how it is shown.

A ``Persona`` holds one PRISM participant: demographics, stated preferences, free
text and their prior rated conversations. It comes from simlab's own JSONL
(``load_personas``) or from PRISM's ``survey.jsonl`` + ``conversations.jsonl``
(``load_prism``), and is shown to a model in one of three renderings
(``render_persona``). The ``summary`` rendering needs an LLM-written summary,
produced once per (persona, model, prompt) by ``summarize`` and cached on disk.

>>> personas = load_personas("personas/sample.jsonl")  # doctest: +SKIP
>>> render_persona(personas[0], "profile").text  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Collection, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from simlab._files import data_path, write_text_atomic
from simlab.errors import InputError, LLMError
from simlab.prompts import Prompt, render, template_hash
from simlab.schema import PRISM_DOMAINS, Rendering

__all__ = [
    "PREF_ATTRIBUTES",
    "Categorised",
    "Location",
    "Persona",
    "PriorConversation",
    "PriorTurn",
    "Rendering",
    "RENDERINGS",
    "ScoredResponse",
    "StatedPrefs",
    "SummaryArtefact",
    "input_hash",
    "load_holdout",
    "load_persona_set",
    "load_personas",
    "load_prism",
    "render_persona",
    "summarize",
    "summary_cache_path",
]

RENDERINGS: tuple[str, ...] = ("demographics", "profile", "summary")

# PRISM's conversation types, and the simlab domain each one is.
ConversationType = Literal["unguided", "values guided", "controversy guided"]

PREF_ATTRIBUTES: tuple[str, ...] = (
    "values",
    "creativity",
    "fluency",
    "factuality",
    "diversity",
    "safety",
    "personalisation",
    "helpfulness",
)

Pref = Annotated[int, Field(ge=0, le=100)]
Score = Annotated[int, Field(ge=1, le=100)]  # PRISM's slider: Terrible (1) to Perfect (100)
# Ids become cache file names, so keep them to a safe alphabet.
SafeId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]

_FORBID = ConfigDict(extra="forbid", frozen=True)
_IGNORE = ConfigDict(extra="ignore", frozen=True)  # third-party files carry many columns we do not use


def _number_to_str(value: Any) -> Any:
    # PRISM stores some answers as numbers in some exports (e.g. age); keep them as text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


class Location(BaseModel):
    """Where the participant was born and lives (PRISM's ``location`` object)."""

    model_config = _FORBID

    birth_country: str | None = None
    birth_countryISO: str | None = None
    birth_region: str | None = None
    birth_subregion: str | None = None
    reside_country: str | None = None
    reside_countryISO: str | None = None
    reside_region: str | None = None
    reside_subregion: str | None = None
    same_birth_reside_country: str | bool | None = None
    special_region: str | None = None


class Categorised(BaseModel):
    """A self-described answer with PRISM's categorised and simplified labels (religion, ethnicity)."""

    model_config = _FORBID

    self_described: str | None = None
    categorised: str | None = None
    simplified: str | None = None

    @property
    def label(self) -> str | None:
        """The structured label, falling back to the participant's own words."""
        return self.categorised or self.simplified or self.self_described


class StatedPrefs(BaseModel):
    """How important (0–100) each behaviour of an AI model is to the participant."""

    model_config = _FORBID

    values: Pref
    creativity: Pref
    fluency: Pref
    factuality: Pref
    diversity: Pref
    safety: Pref
    personalisation: Pref
    helpfulness: Pref


class ScoredResponse(BaseModel):
    """One model response the participant scored."""

    model_config = _FORBID

    content: str
    score: Score | None = None
    model_name: str | None = None


class PriorTurn(BaseModel):
    """One turn of a prior conversation: the participant's message and the responses they compared."""

    model_config = _FORBID

    turn: Annotated[int, Field(ge=0)]
    user_message: str
    chosen: ScoredResponse | None = None
    rejected: list[ScoredResponse] = []


class PriorConversation(BaseModel):
    """A conversation the participant had in PRISM, with what they chose over what."""

    model_config = _FORBID

    conversation_id: SafeId
    conversation_type: ConversationType
    opening_prompt: str
    turns: list[PriorTurn] = []
    open_feedback: str | None = None

    @property
    def domain(self) -> str:
        """The simlab domain (``values``, …) of PRISM's conversation type (``values guided``, …)."""
        return PRISM_DOMAINS[self.conversation_type]


MAX_TEXT_CHARS = 10_000
"""Longest ``self_description`` / ``system_string``: a persona's own words go into every prompt."""
MAX_RECORD_BYTES = 2 << 20
"""Longest persona record (one JSONL line, prior conversations included)."""


class Persona(BaseModel):
    """One participant to simulate: demographics, preferences, free text and prior conversations."""

    model_config = _FORBID

    persona_id: SafeId
    age: str | None
    gender: str | None
    education: str | None
    employment_status: str | None
    marital_status: str | None
    english_proficiency: str | None
    religion: Categorised | None
    ethnicity: Categorised | None
    location: Location | None
    lm_familiarity: str | None
    lm_frequency_use: str | None
    stated_prefs: StatedPrefs
    self_description: str = Field(max_length=MAX_TEXT_CHARS)
    system_string: str = Field(max_length=MAX_TEXT_CHARS)
    conversations: list[PriorConversation] = []

    @field_validator("age", mode="before")
    @classmethod
    def _age_as_text(cls, value: Any) -> Any:
        return _number_to_str(value)

    @field_validator("religion", "ethnicity", mode="before")
    @classmethod
    def _plain_categorised(cls, value: Any) -> Any:
        # A plain string is the participant's own answer.
        return {"self_described": value} if isinstance(value, str) else value

    @field_validator("location", mode="before")
    @classmethod
    def _plain_location(cls, value: Any) -> Any:
        # A plain string names where the participant lives.
        return {"reside_country": value} if isinstance(value, str) else value

    def without(self, conversation_ids: Collection[str]) -> Persona:
        """This persona with the given (hold-out) conversations removed."""
        drop = set(conversation_ids)
        if not drop:
            return self
        kept = [c for c in self.conversations if c.conversation_id not in drop]
        return self.model_copy(update={"conversations": kept})


# ---------------------------------------------------------------------------- loading

_M = TypeVar("_M", bound=BaseModel)


def _loc(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"])


def _validate(model: type[_M], obj: Any, file: Path, line: int) -> _M:
    """Validate one record; the first problem becomes an InputError naming file, line and field."""
    if not isinstance(obj, dict):
        raise InputError(f"expected a JSON object, got {type(obj).__name__}", file=file, row=line)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        got = "" if first["type"] == "missing" else f" (got {_short(first.get('input'))})"
        raise InputError(f"{first['msg']}{got}", file=file, row=line, field=_loc(first) or None) from None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed object) for each non-blank line."""
    if not path.is_file():
        raise InputError("file not found", file=path)
    with path.open("rb") as fh:
        for number, data in enumerate(fh, start=1):
            if len(data) > MAX_RECORD_BYTES:
                raise InputError(f"record of {len(data) / 2**20:.1f} MiB; the limit is {MAX_RECORD_BYTES >> 20} MiB "
                                 "(simlab.personas.MAX_RECORD_BYTES)", file=path, row=number)
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"not UTF-8 text (byte {exc.start + 1} of the line)", file=path, row=number) from None
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
                # a "\ud800" escape decodes to a lone surrogate: no valid text, and every model call
                # with it would fail to encode
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = exc.object[exc.start:exc.end].encode("utf-8", "backslashreplace").decode()
                raise InputError(f"text holds a lone surrogate ({bad}): not valid Unicode", file=path,
                                 row=number) from None
            except json.JSONDecodeError as exc:
                raise InputError(f"malformed JSON: {exc.msg} at column {exc.colno}", file=path, row=number) from None
            except RecursionError:
                raise InputError("JSON nested too deeply", file=path, row=number) from None
            yield number, obj


def load_personas(path: str | Path, *, holdout: Collection[str] = ()) -> list[Persona]:
    """Read simlab's persona JSONL (one ``Persona`` per line); drop ``holdout`` conversation ids.

    ``personas/sample.jsonl`` names simlab's own sample from any directory (``_files.data_path``)."""
    file = data_path(path)
    personas: list[Persona] = []
    seen: dict[str, int] = {}
    for number, obj in _read_jsonl(file):
        persona = _validate(Persona, obj, file, number)
        if persona.persona_id in seen:
            raise InputError(
                f"duplicate persona_id {persona.persona_id!r} (first on line {seen[persona.persona_id]})",
                file=file,
                row=number,
                field="persona_id",
            )
        seen[persona.persona_id] = number
        personas.append(persona.without(holdout))
    if not personas:
        raise InputError("no personas in file", file=file)
    return personas


def load_holdout(path: str | Path) -> frozenset[str]:
    """Hold-out conversation ids from a text file: one id per line; blank lines and ``#`` comments ignored."""
    file = Path(path)
    if not file.is_file():
        raise InputError("file not found", file=file)
    ids: set[str] = set()
    for number, raw in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if any(ch.isspace() for ch in text):
            raise InputError(f"one conversation id per line, got {text!r}", file=file, row=number, field="conversation_id")
        ids.add(text)
    return frozenset(ids)


class _PrismSurvey(BaseModel):
    """The columns of PRISM's ``survey.jsonl`` a persona uses (the rest are ignored)."""

    model_config = _IGNORE

    user_id: SafeId
    age: str | None
    gender: str | None
    education: str | None
    employment_status: str | None
    marital_status: str | None
    english_proficiency: str | None
    religion: dict[str, Any] | str | None
    ethnicity: dict[str, Any] | str | None
    location: dict[str, Any] | str | None
    lm_familiarity: str | None
    lm_frequency_use: str | None
    stated_prefs: dict[str, Any]
    self_description: str
    system_string: str

    @field_validator("age", mode="before")
    @classmethod
    def _age_as_text(cls, value: Any) -> Any:
        return _number_to_str(value)


class _PrismUtterance(BaseModel):
    model_config = _IGNORE

    turn: Annotated[int, Field(ge=0)]
    role: Literal["user", "model"]
    content: str
    model_name: str | None = None
    score: Score | None = None
    if_chosen: bool | None = None
    within_turn_id: int | None = None


class _PrismConversation(BaseModel):
    """The columns of PRISM's ``conversations.jsonl`` a persona uses."""

    model_config = _IGNORE

    user_id: str
    conversation_id: SafeId
    conversation_type: ConversationType
    opening_prompt: str
    conversation_history: list[_PrismUtterance]
    open_feedback: str | None = None


def _known_keys(value: Any, model: type[BaseModel]) -> Any:
    # PRISM's nested objects may carry keys we do not model (e.g. lm-categorised variants).
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k in model.model_fields}
    return value


def _prior_conversation(raw: _PrismConversation, file: Path, line: int) -> PriorConversation:
    """Fold PRISM's flat history into turns of (user message, chosen response, rejected responses)."""
    by_turn: dict[int, list[_PrismUtterance]] = {}
    for utterance in raw.conversation_history:
        by_turn.setdefault(utterance.turn, []).append(utterance)
    turns: list[PriorTurn] = []
    for turn in sorted(by_turn):
        users = [u for u in by_turn[turn] if u.role == "user"]
        models = sorted((u for u in by_turn[turn] if u.role == "model"), key=lambda u: u.within_turn_id or 0)
        if len(users) != 1:
            raise InputError(
                f"turn {turn} has {len(users)} user messages, expected 1", file=file, row=line, field="conversation_history"
            )
        chosen = [m for m in models if m.if_chosen]
        if len(chosen) > 1:
            raise InputError(
                f"turn {turn} has {len(chosen)} responses with if_chosen true", file=file, row=line, field="conversation_history"
            )

        def scored(u: _PrismUtterance) -> ScoredResponse:
            return ScoredResponse(content=u.content, score=u.score, model_name=u.model_name)

        turns.append(
            PriorTurn(
                turn=turn,
                user_message=users[0].content,
                chosen=scored(chosen[0]) if chosen else None,
                rejected=[scored(m) for m in models if not m.if_chosen],
            )
        )
    return PriorConversation(
        conversation_id=raw.conversation_id,
        conversation_type=raw.conversation_type,
        opening_prompt=raw.opening_prompt,
        turns=turns,
        open_feedback=raw.open_feedback,
    )


def load_prism(
    survey_path: str | Path, conversations_path: str | Path, *, holdout: Collection[str] = ()
) -> list[Persona]:
    """Build personas from PRISM's ``survey.jsonl`` and ``conversations.jsonl`` (one per ``user_id``).

    Conversations whose id is in ``holdout`` (evaluation targets) are left out of every persona.
    Every line of both files is validated before anything is returned.
    """
    survey_file, conv_file = Path(survey_path), Path(conversations_path)
    surveys: dict[str, tuple[int, _PrismSurvey]] = {}
    for number, obj in _read_jsonl(survey_file):
        row = _validate(_PrismSurvey, obj, survey_file, number)
        if row.user_id in surveys:
            raise InputError(
                f"duplicate user_id {row.user_id!r} (first on line {surveys[row.user_id][0]})",
                file=survey_file,
                row=number,
                field="user_id",
            )
        surveys[row.user_id] = (number, row)
    if not surveys:
        raise InputError("no participants in file", file=survey_file)

    conversations: dict[str, list[PriorConversation]] = {}
    seen: dict[str, int] = {}
    drop = set(holdout)
    for number, obj in _read_jsonl(conv_file):
        raw = _validate(_PrismConversation, obj, conv_file, number)
        if raw.conversation_id in seen:
            raise InputError(
                f"duplicate conversation_id {raw.conversation_id!r} (first on line {seen[raw.conversation_id]})",
                file=conv_file,
                row=number,
                field="conversation_id",
            )
        seen[raw.conversation_id] = number
        if raw.user_id not in surveys:
            raise InputError(f"user_id {raw.user_id!r} is not in {survey_file}", file=conv_file, row=number, field="user_id")
        conversation = _prior_conversation(raw, conv_file, number)
        if raw.conversation_id not in drop:
            conversations.setdefault(raw.user_id, []).append(conversation)

    personas: list[Persona] = []
    for user_id, (number, row) in surveys.items():
        record = {
            "persona_id": user_id,
            **row.model_dump(exclude={"user_id", "religion", "ethnicity", "location", "stated_prefs"}),
            "religion": _known_keys(row.religion, Categorised),
            "ethnicity": _known_keys(row.ethnicity, Categorised),
            "location": _known_keys(row.location, Location),
            # PRISM also has an optional free-text "other" preference; the protocol uses the eight.
            "stated_prefs": {k: v for k, v in row.stated_prefs.items() if k in PREF_ATTRIBUTES},
            "conversations": [c.model_dump() for c in conversations.get(user_id, [])],
        }
        persona = _validate(Persona, record, survey_file, number)
        personas.append(persona)
    return personas


# ---------------------------------------------------------------------------- rendering

_TEMPLATES: dict[str, str] = {
    "demographics": "persona/demographics.j2",
    "profile": "persona/profile.j2",
    "summary": "persona/summary.j2",
}
SUMMARY_REQUEST = "persona/summary_request.j2"


def _template_vars(persona: Persona) -> dict[str, Any]:
    location = persona.location or Location()
    return {
        "persona": persona,
        "prefs": persona.stated_prefs.model_dump(),
        "religion": persona.religion.label if persona.religion else None,
        "ethnicity": persona.ethnicity.label if persona.ethnicity else None,
        "birth_country": location.birth_country,
        "reside_country": location.reside_country,
    }


def render_persona(persona: Persona, rendering: Rendering, *, summary: str | None = None) -> Prompt:
    """The persona as text, in one of the three renderings of PROTOCOL §3.

    ``demographics``: structured fields only; ``profile``: fields and the participant's
    own free text; ``summary``: an LLM summary made by ``summarize`` (pass its ``text``).
    """
    if rendering not in _TEMPLATES:
        raise ValueError(f"unknown rendering {rendering!r}; expected one of {RENDERINGS}")
    if rendering == "summary":
        if summary is None or not summary.strip():
            raise ValueError(
                f"rendering 'summary' of persona {persona.persona_id!r} needs summary=<text>; "
                "make one with simlab.personas.summarize(...)"
            )
        return render(_TEMPLATES["summary"], summary=summary.strip(), **_template_vars(persona))
    return render(_TEMPLATES[rendering], **_template_vars(persona))


# ---------------------------------------------------------------------------- summary artefact


class SummaryArtefact(BaseModel):
    """An LLM-written persona summary with what made it (model, prompt hash, input hash)."""

    model_config = _FORBID

    persona_id: str
    text: Annotated[str, Field(min_length=1)]
    model: str
    prompt_hash: str
    input_hash: str
    created_at: datetime


Generate = Callable[[list[dict[str, str]]], Awaitable[str]]


def input_hash(persona: Persona) -> str:
    """sha256 of the persona's canonical JSON (sorted keys, no whitespace, UTF-8)."""
    canonical = json.dumps(persona.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def summary_cache_path(persona: Persona, *, model: str, cache_dir: str | Path) -> Path:
    """Where ``summarize`` caches this persona's summary by this model with the current prompt."""
    name = f"{persona.persona_id}-{_slug(model)}-{template_hash(SUMMARY_REQUEST)}-{input_hash(persona)[:12]}.json"
    return Path(cache_dir) / name




def _cached(path: Path, expected: dict[str, str]) -> SummaryArtefact | None:
    try:
        artefact = SummaryArtefact.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None  # absent or unreadable: make it again
    if any(getattr(artefact, key) != value for key, value in expected.items()):
        return None
    return artefact


async def summarize(persona: Persona, generate: Generate, *, model: str, cache_dir: str | Path) -> SummaryArtefact:
    """The persona's LLM summary (PROTOCOL §3), from the cache or from one call to ``generate``.

    ``generate`` takes OpenAI-style chat messages and returns the reply text. The result
    is cached under ``cache_dir`` keyed by persona, model, prompt hash and input hash, so a
    changed persona or prompt makes a new summary and an unchanged one is never paid twice.
    """
    prompt = render(SUMMARY_REQUEST, **_template_vars(persona))
    expected = {
        "persona_id": persona.persona_id,
        "model": model,
        "prompt_hash": prompt.hash,
        "input_hash": input_hash(persona),
    }
    path = summary_cache_path(persona, model=model, cache_dir=cache_dir)
    cached = _cached(path, expected)
    if cached is not None:
        return cached
    reply = await generate([{"role": "user", "content": prompt.text}])
    if not isinstance(reply, str) or not reply.strip():
        raise LLMError(f"empty summary reply from {model} for persona {persona.persona_id!r}")
    artefact = SummaryArtefact(text=reply.strip(), created_at=datetime.now(timezone.utc), **expected)
    write_text_atomic(path, artefact.model_dump_json(indent=2))
    return artefact


def load_persona_set(path: str | Path, holdout: str | Path | None = None) -> list[Persona]:
    """simlab JSONL, or a PRISM ``survey.jsonl`` (its ``conversations.jsonl`` beside it),
    without the hold-out conversations listed in ``holdout``."""
    held = load_holdout(holdout) if holdout else frozenset()
    p = data_path(path)
    if p.is_dir():
        p = p / "survey.jsonl"
    if p.name == "survey.jsonl":
        return load_prism(p, p.with_name("conversations.jsonl"), holdout=held)
    return load_personas(p, holdout=held)
