"""One simulated participant's session (PROTOCOL §2, Sim-Dynamic) and the shared assessment.

A session = one persona × one domain (× one repeat): a blinded conversation with every arm at
once. The arms' display order and their letters A, B, … are drawn per conversation from a seed
derived from (run seed, participant, domain, repeat); the letters follow the display order unless
``protocol.letters = "independent"``. Each user message goes to every arm, each arm keeps its own
history, and the simulated user reads the replies in display order under their letters only.
Every judgement is schema-validated structured output; rankings are elicited as
successive best-of-the-remaining choices whose enum holds only the letters still
unranked, so a ranking is always a permutation by construction. With ``simulator.memory =
"session"`` each question also shows the participant's own earlier answers (by letter).

Where a ranking comes from: ``assess`` → ``Simulator.rank`` → one ``rank_next`` prompt per
place, each answered with a letter from the remaining ones.

The questions are the registered instruments (``simlab.instruments.INSTRUMENTS``): the built-ins
in their fixed order, then any added ones (per-turn ones after each turn's rating, end-of-
conversation ones after the bids), whose answers become ``answers`` rows (``answer_rows``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
from pydantic import BaseModel

from simlab.config import ArmConfig, Experiment, ModelSpec, ProtocolConfig, VariantConfig
from simlab.errors import LLMError, SimlabError, StructuredOutputError
from simlab.instruments import (
    INSTRUMENTS,
    Instrument,
    RankingInstrument,
    opening_schema,
    pick_schema,
    scores_note,
    stored_value,
)
from simlab.llm import LLMClient, affinity, call_context, recording
from simlab.llm.soft_tokens import load_bank
from simlab.personas import Persona, render_persona, summarize
from simlab.plan import SessionSpec, conversation_id
from simlab.prompts import Prompt, render, render_in, template_hash
from simlab.records import (
    AnswerRecord,
    BDMRecord,
    ConversationRecord,
    InstrumentRecord,
    JudgementRecord,
    LLMCallRecord,
    ParticipantRecord,
    SessionFailure,
    SessionRecord,
    TurnRecord,
)
from simlab.schema import IN_DOMAIN, LETTERS, LetterMode
from simlab.seeds import derive_seed, sampling_seed

__all__ = [
    "Assessment",
    "SessionFailed",
    "Simulator",
    "TranscriptTurn",
    "answer_rows",
    "arm_system_prompt",
    "ask_instrument",
    "assess",
    "bdm_draw",
    "blind",
    "conversation_id",
    "derive_seed",
    "failure_reason",
    "judgement_rows",
    "needs_summary",
    "opening_schema",
    "simulate_session",
    "transcript_text",
]

CONTEXT_MARGIN_TOKENS = 200
"""Tokens kept free beyond the fullest arm history and a reply: the chat template's own tokens and the
next user message, so a conversation ends before a request could overflow the context budget."""
GEN_ERROR_TEXT = "[This assistant could not produce a response because of a technical error.]"


class SessionFailed(SimlabError):
    """A session that could not complete; carries the ``SessionFailure`` to record."""

    def __init__(self, failure: SessionFailure) -> None:
        self.failure = failure
        super().__init__(f"{failure.conversation_id}: {failure.error_type}: {failure.reason}")


def blind(arms: Sequence[str], seed: int) -> dict[str, str]:
    """The arm→letter map of one conversation: a seeded random permutation."""
    order = np.random.default_rng(seed).permutation(len(arms))
    return {arms[int(i)]: LETTERS[pos] for pos, i in enumerate(order)}


def blind_display(arms: Sequence[str], seed: int, letters: LetterMode) -> tuple[dict[str, str], dict[str, int] | None]:
    """(arm→letter, arm→position or None) of one conversation.

    The display order is ``blind``'s permutation either way (so ``by_position`` conversations are
    the ones earlier versions made); ``independent`` draws the letters from a second seed."""
    by_position = blind(arms, seed)
    if letters == "by_position":
        return by_position, None
    positions = {arm: LETTERS.index(letter) + 1 for arm, letter in by_position.items()}
    return blind(arms, derive_seed(seed, "letters")), positions


def arm_system_prompt(arm: ArmConfig, persona: Persona, *, summary: str | None) -> Prompt | None:
    """The arm's system prompt, with the persona rendered if the arm is personalised."""
    if arm.system_prompt is None:
        return None
    variables: dict[str, Any] = {}
    if arm.personalisation in ("demographics", "profile", "summary"):  # soft tokens: no persona in the text
        variables["persona"] = render_persona(persona, arm.personalisation, summary=summary).text
    return render(arm.system_prompt, **variables)


# ----------------------------------------------------------------------------- transcript


@dataclass
class TranscriptTurn:
    """One user message and the replies to it, by letter (what the user saw)."""

    user: str
    replies: dict[str, str]


def transcript_text(turns: Sequence[TranscriptTurn]) -> str:
    """The conversation as the participant saw it: the replies in display order (``replies``'
    insertion order), each under its letter."""
    return render(
        "simulator/transcript.j2",
        turns=[{"user": t.user, "replies": list(t.replies.items())} for t in turns],
    ).text


@dataclass
class Assessment:
    """The end-of-conversation judgements, by letter."""

    ranking: list[str]
    provenance_ranking: list[str]
    ratings: dict[str, dict[str, float]]
    bids: dict[str, float]
    """The willingness-to-pay (wtp) instrument's bid per letter, in dollars."""
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The end-of-conversation instruments beyond the built-in ones: instrument → letter → answer."""


# ----------------------------------------------------------------------------- the simulated user


@dataclass
class Simulator:
    """The simulated participant: its persona prompt, model and the calls of its session.

    ``calls`` is the session's ``recording()`` list: the client adds every call's record to it
    (the simulator's, the arms', a summary made for the session), labelled by ``call_context``.
    ``persona_text`` None: the no-persona control. With ``memory``, ``remember`` keeps the
    participant's answers and every later question (``task``) shows them after the transcript
    (``simulator/memory.j2``): the system prompt and the transcript before them stay a prefix
    that a server's prompt cache holds across the session's calls."""

    client: LLMClient
    spec: ModelSpec
    persona_text: str | None
    domain_instruction: str
    conversation_id: str
    seed: int
    wtp_max: float = 10.0
    memory: bool = False
    protocol: ProtocolConfig | None = None
    """The protocol the answer schemas are built from (None: the defaults with ``wtp_max``)."""
    prompts: str | Path | None = None
    """A variant's template folder, searched before simlab's for the simulator's prompts and the
    questions of instruments without a folder of their own."""
    turns: ModelSpec | None = None
    """The turn model that writes the messages (None: ``spec`` writes them too)."""
    end_marker: str | None = None
    """The turn model's end-of-conversation marker (see ``write``)."""
    calls: list[LLMCallRecord] = field(default_factory=list)
    instruments: list[InstrumentRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """The participant's own earlier answers in this conversation, oldest first."""
    _n: int = 0
    _system_prompt: Prompt | None = None

    def _system(self) -> Prompt:
        # the same for every call of the session: rendered once
        if self._system_prompt is None:
            self._system_prompt = render_in(self.prompts, "simulator/system.j2", persona=self.persona_text,
                                            domain_instruction=self.domain_instruction)
        return self._system_prompt

    def remember(self, note: str) -> None:
        """Keep one of the participant's answers for the questions that follow (memory = session)."""
        if self.memory:
            self.notes.append(note)

    def task(self, name: str, *, folder: str | Path | None = None, **variables: Any) -> Prompt:
        """A question's prompt, with the participant's earlier answers in it (none without memory);
        ``folder``: an instrument's own templates, searched before simlab's (else the variant's)."""
        return render_in(folder if folder is not None else self.prompts, name, memory=list(self.notes), **variables)

    def protocol_config(self) -> ProtocolConfig:
        """The protocol the answer schemas are built from."""
        return self.protocol if self.protocol is not None else ProtocolConfig(wtp_max=self.wtp_max)

    def _messages(self, task: Prompt) -> list[dict[str, str]]:
        return [{"role": "system", "content": self._system().text}, {"role": "user", "content": task.text}]

    def _prompt(self, task: Prompt) -> tuple[str, str]:
        # the call is the task (its hash covers the memory partial) and the simulator's system prompt
        system = self._system()
        return f"{task.name}+{system.name}", f"{task.hash}+{system.hash}"

    def _next_seed(self) -> int:
        self._n += 1
        return sampling_seed(derive_seed(self.seed, "sim", self._n))

    async def write(self, instrument: str, task: Prompt, *, may_end: bool = False) -> tuple[str | None, int]:
        """A free-text message (opening or next) by the turn model; an empty reply counts as a failed
        attempt. With an ``end_marker``: a message holding it is the participant's decision to stop
        when ``may_end`` (returned as None: the message it ends is never shown), else the marker is
        cut out (what is left must not be empty)."""
        spec = self.turns if self.turns is not None else self.spec
        attempts = self.client.schema_attempts(spec.endpoint)
        for attempt in range(1, attempts + 1):
            try:
                name, digest = self._prompt(task)
                with call_context(role="simulator", instrument=instrument):
                    res = await self.client.chat(spec, self._messages(task), seed=self._next_seed(),
                                                 prompt_name=name, prompt_hash=digest)
            except LLMError as exc:
                self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id, instrument=instrument,
                                                         attempts=attempt, status="error", error=str(exc)))
                exc.asked = _asked(instrument, task)
                raise
            raw = res.text
            if self.end_marker is not None and self.end_marker in raw:
                if may_end:
                    self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id,
                                                             instrument=instrument, attempts=attempt))
                    return None, res.call.completion_tokens
                raw = raw.replace(self.end_marker, " ")
            text = _clean_message(raw)
            if text:
                self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id,
                                                         instrument=instrument, attempts=attempt))
                return text, res.call.completion_tokens
        self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id, instrument=instrument,
                                                 attempts=attempts, status="schema_error",
                                                 error="empty message", raw_text=res.text))
        err = StructuredOutputError(f"{instrument}: the simulator wrote an empty message",
                                    raw_text=res.text, reason="empty message", attempts=attempts)
        err.asked = _asked(instrument, task)
        raise err

    async def ask(self, instrument: str, task: Prompt, schema: type[BaseModel]) -> BaseModel:
        """A schema-validated judgement; failures are logged with the raw text and re-raised."""
        try:
            name, digest = self._prompt(task)
            with call_context(role="simulator", instrument=instrument):
                res = await self.client.structured(self.spec, self._messages(task), schema, seed=self._next_seed(),
                                                   max_tokens=getattr(self.spec, "judgement_max_tokens", None),
                                                   prompt_name=name, prompt_hash=digest)
        except StructuredOutputError as exc:
            self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id, instrument=instrument,
                                                     attempts=max(1, exc.attempts), status="schema_error",
                                                     error=exc.reason, raw_text=exc.raw_text))
            exc.asked = _asked(instrument, task)
            raise
        except LLMError as exc:
            self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id, instrument=instrument,
                                                     attempts=max(1, exc.attempts), status="error", error=str(exc)))
            exc.asked = _asked(instrument, task)
            raise
        retried = "; ".join(res.call.schema_failures) or None  # why earlier attempts were rejected
        self.instruments.append(InstrumentRecord(conversation_id=self.conversation_id, instrument=instrument,
                                                 attempts=max(1, res.call.attempts), error=retried))
        return res.value

    async def rank(self, instrument: str, turns: Sequence[TranscriptTurn], letters: Sequence[str],
                   question: str, *, template: str = "simulator/rank_next.j2",
                   folder: str | Path | None = None) -> list[str]:
        """A full ranking by successive best-of-the-remaining choices (a permutation by construction)."""
        text = transcript_text(turns)
        ranked: list[str] = []
        remaining = list(letters)
        while len(remaining) > 1:
            task = self.task(template, folder=folder, transcript=text, question=question,
                             ranked=", ".join(ranked), remaining=", ".join(remaining))
            pick = await self.ask(f"{instrument}_{len(ranked) + 1}", task, pick_schema(remaining))
            ranked.append(pick.letter)  # type: ignore[attr-defined]
            remaining.remove(pick.letter)  # type: ignore[attr-defined]
        return ranked + remaining


def _asked(instrument: str, task: Prompt) -> str:
    return f"question '{instrument}' ({task.name})"


def failure_reason(exc: BaseException) -> str:
    """A failed session's reason: which question was asked, then what went wrong."""
    reason = getattr(exc, "reason", None) or str(exc)
    asked = exc.asked if isinstance(exc, LLMError) else None
    return f"{asked}: {reason}" if asked else reason


def _clean_message(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


async def ask_instrument(sim: Simulator, instrument: Instrument, turns: Sequence[TranscriptTurn],
                         letters: Sequence[str], **variables: Any) -> dict[str, Any]:
    """Ask one instrument about a transcript; its answer per letter. A reply that breaks the schema
    after its retries raises (the session fails with the reason; nothing is guessed).

    The template gets ``transcript``, ``letters``, ``n_arms``, ``wtp_max``, the participant's
    ``memory`` and ``variables`` (a turn instrument's ``turn``)."""
    shown = tuple(letters)
    if isinstance(instrument, RankingInstrument):
        ranking = await sim.rank(instrument.name, turns, shown, instrument.question, template=instrument.template,
                                 folder=instrument.folder)
        return {letter: i + 1 for i, letter in enumerate(ranking)}
    protocol = sim.protocol_config()
    task = sim.task(instrument.template, folder=instrument.folder, transcript=transcript_text(turns),
                    letters=", ".join(shown), n_arms=len(shown), wtp_max=f"{protocol.wtp_max:.2f}", **variables)
    reply = await sim.ask(instrument.name, task, instrument.schema(shown, protocol))
    return instrument.answers(reply, shown)


async def assess(sim: Simulator, turns: Sequence[TranscriptTurn], letters: Sequence[str]) -> Assessment:
    """The end-of-conversation assessment (PROTOCOL §2) of a transcript, by letter: every registered
    end-of-conversation instrument in registration order (the built-ins first: ranking, provenance
    ranking, ratings, bids), each remembered by the participant before the next is asked.

    Used by both modes: Sim-Dynamic on its own conversation, Sim-Judgement on a human's.
    """
    shown = tuple(letters)
    answers: dict[str, dict[str, Any]] = {}
    for instrument in INSTRUMENTS:
        if instrument.scope != "end":
            continue
        answers[instrument.name] = await ask_instrument(sim, instrument, turns, shown)
        note = instrument.note(answers[instrument.name], shown)
        if note:
            sim.remember(note)
    ratings = answers["ratings"]
    return Assessment(
        ranking=sorted(shown, key=lambda x: answers["ranking"][x]),
        provenance_ranking=sorted(shown, key=lambda x: answers["provenance_ranking"][x]),
        ratings={scale: {x: ratings[x][scale] for x in shown} for scale in ("preference", "engagingness", "provenance")},
        bids={x: float(answers["wtp"][x]) for x in shown},
        extra={name: a for name, a in answers.items() if not INSTRUMENTS.get(name).builtin},
    )


def answer_rows(conv_id: str, arm_letters: Mapping[str, str], answers: Mapping[str, Mapping[str, Any]], *,
                turn: int | None = None) -> list[AnswerRecord]:
    """The ``answers`` rows of added instruments' answers (instrument → letter → answer), per arm."""
    rows = []
    for name, per_letter in answers.items():
        for arm, letter in sorted(arm_letters.items(), key=lambda kv: kv[1]):
            if letter not in per_letter:
                continue
            value, number = stored_value(per_letter[letter])
            rows.append(AnswerRecord(conversation_id=conv_id, arm=arm, letter=letter, turn=turn, instrument=name,
                                     value=value, number=number))
    return rows


def bdm_draw(arm_letters: dict[str, str], bids: dict[str, float], seed: int, wtp_max: float,
             conversation_id: str) -> BDMRecord:
    """Becker–DeGroot–Marschak: draw one arm and a price; the user buys at the price if bid ≥ price."""
    rng = np.random.default_rng(seed)
    arms = sorted(arm_letters)
    arm = arms[int(rng.integers(len(arms)))]
    price = round(float(rng.uniform(0, wtp_max)), 2)
    bid = bids[arm_letters[arm]]
    won = bid >= price
    return BDMRecord(conversation_id=conversation_id, arm=arm, letter=arm_letters[arm], price=price, bid=bid,
                     won=won, paid=price if won else 0.0)


def judgement_rows(conv_id: str, arm_letters: dict[str, str], a: Assessment, *,
                   opening_pick: str | None, provenance_pick: str | None,
                   arm_positions: dict[str, int] | None = None) -> list[JudgementRecord]:
    rows = []
    for arm, letter in sorted(arm_letters.items(), key=lambda kv: kv[1]):
        position = arm_positions[arm] if arm_positions is not None else LETTERS.index(letter) + 1
        rows.append(JudgementRecord(
            conversation_id=conv_id, arm=arm, letter=letter, position=position,
            opening_choice=None if opening_pick is None else letter == opening_pick,
            provenance_guess=None if provenance_pick is None else letter == provenance_pick,
            rank=a.ranking.index(letter) + 1,
            provenance_rank=a.provenance_ranking.index(letter) + 1,
            rating_preference=float(a.ratings["preference"][letter]),
            rating_engagingness=float(a.ratings["engagingness"][letter]),
            rating_provenance=float(a.ratings["provenance"][letter]),
            wtp_bid=float(a.bids[letter]),
        ))
    return rows


# ----------------------------------------------------------------------------- Sim-Dynamic


@dataclass
class _ArmState:
    arm: ArmConfig
    letter: str
    messages: list[dict[str, str]]
    system_hash: str | None = None
    context_tokens: int = 0


@overload
async def simulate_session(session: SessionSpec, config: Experiment, client: LLMClient, /, *,
                           summary: str | None = None) -> SessionRecord: ...
@overload
async def simulate_session(persona: Persona, domain: str, config: Experiment, client: LLMClient, /, *,
                           summary: str | None = None, repeat: int = 0, no_persona: bool = False) -> SessionRecord: ...
async def simulate_session(session: SessionSpec | Persona, *args: Any, summary: str | None = None, repeat: int = 0,
                           no_persona: bool = False) -> SessionRecord:
    """Run one Sim-Dynamic session end to end and return its records.

    ``simulate_session(spec, config, client)`` runs the session ``spec`` (a ``SessionSpec``: its
    persona, domain, repeat, whether it is the no-persona control, and so its conversation id and
    seed). ``simulate_session(persona, domain, config, client, repeat=0, no_persona=False)`` is the
    same with the spec made from these: ``repeat`` is which run of this participant × domain (its
    own seed; 0 is the only one without ``repeats``); ``no_persona`` the control, whose simulator
    gets no persona (source ``sim_dynamic_no_persona``), sharing the seed, letters and arms of the
    persona session.

    A config whose simulator or arms render the persona as a summary needs one: pass it as
    ``summary``, or the session makes it (or reads it from ``config.summary.cache_dir``) itself.

    Raises ``SessionFailed`` (carrying a ``SessionFailure`` with the reason, the raw reply
    and the calls spent) when the simulator's output still breaks its schema after retries,
    and ``BackendUnavailable`` (nothing to record: the session is still to do) when an
    endpoint stops answering. The session's calls stay on one replica of each endpoint.
    """
    if isinstance(session, SessionSpec):
        if len(args) != 2 or repeat or no_persona:
            raise TypeError("simulate_session(spec, config, client, *, summary=None): the spec holds the "
                            "domain, repeat and no_persona")
        config, client = args
        spec = session
    else:
        if len(args) != 3:
            raise TypeError("simulate_session(persona, domain, config, client, *, summary=None, repeat=0, "
                            "no_persona=False)")
        domain, config, client = args
        spec = SessionSpec(persona=session, domain=domain, repeat=repeat, no_persona=no_persona, run_seed=config.seed)
    if spec.run_seed != config.seed or spec.judged is not None:
        raise ValueError(f"{spec.conversation_id}: the session was planned for run seed {spec.run_seed}"
                         + (" as a Sim-Judgement session" if spec.judged is not None else "")
                         + f"; this is a Sim-Dynamic session of an experiment with seed {config.seed}")
    conv_id = spec.conversation_id
    with affinity(conv_id), recording() as calls, call_context(conversation_id=conv_id):
        if summary is None and needs_summary(config):
            summary = await persona_summary(spec.persona, config, client)
        return await _simulate_session(spec, config, client, summary=summary, calls=calls)


def needs_summary(config: Experiment) -> bool:
    """Whether a simulator (of any variant) or an arm renders the persona as its LLM summary (PROTOCOL §3)."""
    return (any(config.simulator_of(v).rendering == "summary" for v in config.variant_ids)
            or any(a.personalisation == "summary" for a in config.arms))


async def persona_summary(persona: Persona, config: Experiment, client: LLMClient) -> str:
    """The persona's summary by ``config.summary`` (cached on disk; see ``personas.summarize``)."""

    async def generate(messages: list[dict[str, str]]) -> str:
        with call_context(role="summary", instrument="summary"):
            res = await client.chat(config.summary, messages, prompt_name="persona/summary_request.j2",
                                    prompt_hash=template_hash("persona/summary_request.j2"), seed=config.seed)
        return res.text

    artefact = await summarize(persona, generate, model=config.summary.model, cache_dir=config.summary.cache_dir)
    return artefact.text


async def _simulate_session(spec: SessionSpec, config: Experiment, client: LLMClient, *,
                            summary: str | None, calls: list[LLMCallRecord]) -> SessionRecord:
    persona, domain, repeat, no_persona = spec.persona, spec.domain, spec.repeat, spec.no_persona
    pid = persona.persona_id
    conv_id, source, seed = spec.conversation_id, spec.source, spec.seed
    arm_ids = [a.id for a in config.arms]
    p = config.protocol
    arm_letters, arm_positions = blind_display(arm_ids, seed, p.letters)
    simulator = config.simulator_of(spec.variant)
    turns = simulator.turns if isinstance(simulator, VariantConfig) else None
    persona_text = (None if no_persona or simulator.rendering == "none"
                    else render_persona(persona, simulator.rendering, summary=summary).text)
    sim = Simulator(
        client=client, spec=simulator, persona_text=persona_text,
        domain_instruction=render(f"domains/{domain}.j2").text, conversation_id=conv_id,
        seed=seed, wtp_max=p.wtp_max, memory=simulator.memory == "session", calls=calls, protocol=p,
        prompts=simulator.prompts if isinstance(simulator, VariantConfig) else None,
        turns=turns, end_marker=turns.end_marker if turns is not None else None,
    )
    states = []
    for arm in config.arms:
        system = arm_system_prompt(arm, persona, summary=summary)  # the arms see the participant either way
        msgs = [{"role": "system", "content": system.text}] if system else []
        states.append(_ArmState(arm=arm, letter=arm_letters[arm.id], messages=msgs,
                                system_hash=system.hash if system else None))
    # the user reads the replies in display order; their letters in that order
    shown = sorted(states, key=lambda st: arm_positions[st.arm.id] if arm_positions else st.letter)
    letters = tuple(st.letter for st in shown)

    turn_rows: list[TurnRecord] = []
    transcript: list[TranscriptTurn] = []
    gen_error = False
    max_turns_reached = False
    stop_reason = "max_turns"
    opening_pick = provenance_pick = None
    opening_choice, turn_rating, stop = (INSTRUMENTS.get(n) for n in ("opening_choice", "turn_rating", "stop"))
    added_turn = [i for i in INSTRUMENTS if i.scope == "turn" and not i.builtin]
    added_answers: list[AnswerRecord] = []

    async def reply(state: _ArmState, turn: int) -> tuple[str, int | None, bool]:
        try:
            # each arm's thread is its own stream: the four replies of a turn can go to different
            # replicas, and each thread's history stays in one replica's prompt cache
            with affinity(f"{conv_id}|{state.arm.id}"), call_context(role="arm", arm=state.arm.id, instrument="reply"):
                call_seed = sampling_seed(derive_seed(seed, state.arm.id, turn))
                if state.arm.soft_tokens is not None:
                    # the participant's soft tokens before the chat, as prompt embeddings; which soft
                    # tokens (the participant's own or the generic e0) goes in the call's prompt_name
                    bank = load_bank(state.arm.soft_tokens.embeddings, state.arm.soft_tokens.base_model)
                    embeds, generic = bank.prompt_embeds(pid, state.messages)
                    res = await client.complete_embeds(
                        state.arm, embeds, seed=call_seed, prompt_hash=state.system_hash, tag={"arm": state.arm.id},
                        prompt_name=f"{state.arm.system_prompt}+soft_tokens:{'e0' if generic else 'own'}")
                else:
                    res = await client.chat(state.arm, state.messages, seed=call_seed,
                                            prompt_name=state.arm.system_prompt, prompt_hash=state.system_hash,
                                            tag={"arm": state.arm.id})
        except LLMError:
            return GEN_ERROR_TEXT, None, True
        state.context_tokens = res.call.prompt_tokens + res.call.completion_tokens
        text = res.text.strip()
        if not text:  # an empty completion is a failed generation, not a reply
            return GEN_ERROR_TEXT, res.call.completion_tokens, True
        return text, res.call.completion_tokens, False

    try:
        opening, n_tok = await sim.write("opening", render_in(sim.prompts, "simulator/opening.j2"))
        message = opening or ""  # the opening never ends the conversation (may_end is False)
        turn = 0
        while True:
            turn_rows.append(TurnRecord(conversation_id=conv_id, turn=turn, role="user", text=message, n_tokens=n_tok))
            for s in states:
                s.messages.append({"role": "user", "content": message})
            answers = await asyncio.gather(*(reply(s, turn) for s in states))
            for s, (text, _tokens, failed) in zip(states, answers):
                # the arm's own history keeps what the user saw, error notice included
                s.messages.append({"role": "assistant", "content": text})
                gen_error |= failed
            replies = {s.letter: s.messages[-1]["content"] for s in shown}  # display order
            transcript.append(TranscriptTurn(user=message, replies=replies))
            ttext = transcript_text(transcript)
            joined = ", ".join(letters)
            if turn == 0:
                pick = await sim.ask(opening_choice.name, sim.task(
                    opening_choice.template, folder=opening_choice.folder, transcript=ttext, n_arms=len(letters),
                    letters=joined), opening_choice.schema(letters, p))
                opening_pick, provenance_pick = pick.preferred, pick.personalised  # type: ignore[attr-defined]
                sim.remember(f"After the first responses you preferred {opening_pick} and thought {provenance_pick} "
                             "was the one personalised to you.")
            n_done = turn + 1
            rated = await sim.ask(turn_rating.name, sim.task(turn_rating.template, folder=turn_rating.folder,
                                                             transcript=ttext, letters=joined),
                                  turn_rating.schema(letters, p))
            sim.remember(f"Your ratings of the responses to your message {n_done}: "
                         f"{scores_note(rated.model_dump(), letters)}.")
            for instrument in added_turn:  # added per-turn questions, after the turn's rating
                answer = await ask_instrument(sim, instrument, transcript, letters, turn=n_done)
                added_answers += answer_rows(conv_id, arm_letters, {instrument.name: answer}, turn=turn)
                note = instrument.note(answer, letters)
                if note:
                    sim.remember(note)
            for s, (text, tokens, failed) in zip(states, answers):
                turn_rows.append(TurnRecord(conversation_id=conv_id, turn=turn, role="assistant", arm=s.arm.id,
                                            letter=s.letter, text=text, n_tokens=tokens, gen_error=failed,
                                            turn_rating=float(getattr(rated, s.letter))))
            if n_done >= p.max_turns:
                stop_reason = "max_turns"
                break
            if n_done >= p.min_turns and sim.end_marker is None:
                # the stop decision is its own question, asked after the rating (as in the study); a
                # turn model with an end marker decides in its next message instead
                decision = await sim.ask(stop.name, sim.task(stop.template, folder=stop.folder, transcript=ttext,
                                                             n_done=n_done, max_turns=p.max_turns),
                                         stop.schema(letters, p))
                if not getattr(decision, "continue"):
                    stop_reason = "user_ended"
                    break
                sim.remember(f"After your message {n_done} you chose to continue the conversation.")
            # the context budget: the fullest arm history plus a reply must still fit
            biggest = max(s.context_tokens for s in states)
            if biggest + max(s.arm.sampling.max_tokens for s in states) + CONTEXT_MARGIN_TOKENS > p.context_budget_tokens:
                stop_reason, max_turns_reached = "context_limit", True
                break
            written, n_tok = await sim.write("next_message", sim.task(
                "simulator/next_message.j2", transcript=ttext, n_arms=len(letters), letters=joined),
                may_end=n_done >= p.min_turns)
            if written is None:  # the end marker: the participant stops, the message it ends is not sent
                stop_reason = "user_ended"
                break
            message = written
            turn += 1
        assessment = await assess(sim, transcript, letters)
    except (StructuredOutputError, LLMError) as exc:
        raise SessionFailed(SessionFailure(
            conversation_id=conv_id, participant_id=pid, domain=domain,
            error_type=type(exc).__name__, reason=failure_reason(exc),
            raw_text=getattr(exc, "raw_text", None), llm_calls=sim.calls,
        )) from exc

    judgements = judgement_rows(conv_id, arm_letters, assessment, opening_pick=opening_pick,
                                provenance_pick=provenance_pick, arm_positions=arm_positions)
    bdm = bdm_draw(arm_letters, assessment.bids, derive_seed(seed, "bdm"), p.wtp_max, conv_id)
    return SessionRecord(
        participant=ParticipantRecord(participant_id=pid, source=source, persona_id=pid,
                                      rendering=None if no_persona else simulator.rendering,
                                      simulator_model=simulator.model),
        conversation=ConversationRecord(
            conversation_id=conv_id, participant_id=pid, source=source, domain=domain,
            in_domain=domain in IN_DOMAIN, arm_letters=arm_letters, arm_positions=arm_positions, repeat=repeat,
            n_turns=len(transcript), gen_error=gen_error,
            max_turns_reached=max_turns_reached, stop_reason=stop_reason, seed=seed,
        ),
        turns=turn_rows,
        judgements=judgements,
        bdm=[bdm],
        llm_calls=sim.calls,
        instruments=sim.instruments,
        answers=[*added_answers, *answer_rows(conv_id, arm_letters, assessment.extra)],
    )
