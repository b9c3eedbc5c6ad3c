"""Sim-Judgement (PROTOCOL §4): the simulator, as participant p, judges p's actual conversations.

It reads the human's transcript (the same replies under the same letters the human saw) and
gives the full assessment of PROTOCOL §2: opening choice and provenance guess from the opening
turn only, then ranking, provenance ranking, ratings and bids on the whole transcript (the
Sim-Dynamic ``assess``), and a seeded BDM draw. Stored with ``source = "sim_judgement"``,
``participant_id`` = the human's, ``conversation_id`` = ``"<human conversation_id>#sj"``.
The human's turns are not copied (they are the human's text, not the simulator's).

Command: ``python -m simlab.sim_judgement`` (``simlab sim-judgement``). ``run_sim_judgement``
writes sessions to a run store like ``run_experiment`` (one transaction per session,
resumable). Every human conversation is validated before anything is written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from simlab.config import Config, load_config, parse_config
from simlab.errors import BackendUnavailable, ConfigError, InputError, LLMError, StructuredOutputError, exit_status
from simlab.llm import LLMClient, call_context, recording
from simlab.personas import Persona, render_persona
from simlab.plan import JUDGEMENT_SUFFIX, SessionSpec
from simlab.prompts import render
from simlab.protocol import (
    SessionFailed,
    Simulator,
    TranscriptTurn,
    answer_rows,
    assess,
    bdm_draw,
    failure_reason,
    judgement_rows,
    opening_schema,
    transcript_text,
)
from simlab.records import ConversationRecord, LLMCallRecord, ParticipantRecord, SessionFailure, SessionRecord
from simlab.runner import Outcome, PersonaSummaries, open_store, run_sessions
from simlab.schema import DOMAINS, IN_DOMAIN, LETTERS
from simlab.seeds import derive_seed
from simlab.tables import Tables

SUFFIX = JUDGEMENT_SUFFIX


@dataclass(frozen=True)
class HumanConversation:
    """A human's conversation as the simulator will read it."""

    conversation_id: str
    participant_id: str
    domain: str
    arm_letters: dict[str, str]
    turns: tuple[TranscriptTurn, ...]
    gen_error: bool = False


def _arm_letters(cid: str, conv_row: pd.Series | None, judgements: pd.DataFrame | None,
                 replies: pd.DataFrame) -> dict[str, str] | None:
    raw = conv_row.get("arm_letters") if conv_row is not None else None
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(f"conversation {cid!r}: arm_letters is not a JSON object: {raw[:60]!r}",
                             field="arm_letters") from None
    if isinstance(raw, Mapping) and raw:
        return {str(a): str(x) for a, x in raw.items()}
    for frame in (judgements, replies):
        if frame is not None and {"arm", "letter"} <= set(frame.columns):
            pairs = frame[frame["conversation_id"] == cid][["arm", "letter"]].dropna().drop_duplicates()
            if len(pairs):
                return {str(a): str(x) for a, x in zip(pairs["arm"], pairs["letter"])}
    return None


def human_conversations(tables: Tables) -> list[HumanConversation]:
    """The human conversations of ``tables`` (source 'human'), checked for what the assessment needs.

    Raises ``InputError`` naming the conversation and what it lacks: a domain, letters
    (arm_letters, or letters on judgements/turns), a user opening, or every arm's reply
    at every user turn.
    """
    human = tables.for_source("human") if tables.sources else tables
    conv, turns = human.conversations, human.turns
    if conv is None or conv.empty:
        raise InputError("no human conversations (a conversations table with source 'human' is needed)",
                         field="conversations")
    if turns is None or turns.empty:
        raise InputError("no turns: Sim-Judgement reads the human transcripts (turns table)", field="turns")
    out: list[HumanConversation] = []
    for _, row in conv.sort_values("conversation_id").iterrows():
        cid = str(row["conversation_id"])
        t = turns[turns["conversation_id"] == cid]
        replies = t[t["role"] == "assistant"]
        domain = row.get("domain")
        if pd.isna(domain) or str(domain) not in DOMAINS:
            raise InputError(f"conversation {cid!r}: domain {domain!r} is not one of {', '.join(DOMAINS)}",
                             field="domain")
        letters_map = _arm_letters(cid, row, human.judgements, replies)
        if not letters_map:
            raise InputError(f"conversation {cid!r} lacks letters: give arm_letters in conversations or a "
                             "letter per arm in judgements/turns", field="letter")
        letters = sorted(letters_map.values())
        if letters != list(LETTERS[: len(letters)]) or len(letters) < 2:
            raise InputError(f"conversation {cid!r}: letters {letters_map} are not A, B, … once each",
                             field="arm_letters")
        users = t[t["role"] == "user"].sort_values("turn")
        if users.empty or int(users["turn"].iloc[0]) != 0:
            raise InputError(f"conversation {cid!r} lacks a user opening (no user turn 0)", field="turns")
        transcript: list[TranscriptTurn] = []
        for turn, text in zip(users["turn"], users["text"]):
            at = replies[replies["turn"] == turn]
            got = {str(x): str(y) for x, y in zip(at["letter"], at["text"]) if not pd.isna(x) and not pd.isna(y)}
            got = dict(sorted(got.items()))  # shown in letter order (the transcript keeps this order)
            missing = [x for x in letters if x not in got]
            if missing:
                raise InputError(f"conversation {cid!r} lacks assistant replies at turn {int(turn)} for letter(s) "
                                 f"{', '.join(missing)}", field="turns")
            if pd.isna(text) or not str(text).strip():
                raise InputError(f"conversation {cid!r}: user turn {int(turn)} has no text", field="text")
            transcript.append(TranscriptTurn(user=str(text), replies=got))
        gen_error = bool(row.get("gen_error")) if not pd.isna(row.get("gen_error", None)) else False
        out.append(HumanConversation(cid, str(row["participant_id"]), str(domain), letters_map, tuple(transcript),
                                     gen_error))
    return out


def check_personas(conversations: Sequence[HumanConversation], personas: Mapping[str, Persona]) -> None:
    """Every conversation's participant must have a persona (persona_id == participant_id)."""
    for hc in conversations:
        if hc.participant_id not in personas:
            raise InputError(f"conversation {hc.conversation_id!r}: participant {hc.participant_id!r} has no "
                             "persona (persona_id must equal participant_id)", field="participant_id")


async def simulate_judgement(persona: Persona, human_conversation: HumanConversation, config: Config,
                             client: LLMClient, *, summary: str | None = None) -> SessionRecord:
    """The simulator's full assessment of one human conversation, as that human.

    Raises ``SessionFailed`` when the simulator's output still breaks its schema after retries.
    """
    spec = judgement_spec(persona, human_conversation, config.seed)
    with recording() as calls, call_context(conversation_id=spec.conversation_id):
        return await _simulate_judgement(spec, human_conversation, config, client, summary=summary, calls=calls)


def judgement_spec(persona: Persona, human_conversation: HumanConversation, run_seed: int) -> SessionSpec:
    """The session that judges ``human_conversation`` as ``persona``: its id and seed."""
    return SessionSpec(persona=persona, domain=human_conversation.domain, run_seed=run_seed,
                       judged=human_conversation.conversation_id)


async def _simulate_judgement(spec: SessionSpec, hc: HumanConversation, config: Config, client: LLMClient, *,
                              summary: str | None, calls: list[LLMCallRecord]) -> SessionRecord:
    persona = spec.persona
    conv_id, unit_seed = spec.conversation_id, spec.seed
    letters = sorted(hc.arm_letters.values())
    joined = ", ".join(letters)
    sim = Simulator(
        client=client, spec=config.simulator,
        persona_text=None if config.simulator.rendering == "none"
        else render_persona(persona, config.simulator.rendering, summary=summary).text,
        domain_instruction=render(f"domains/{hc.domain}.j2").text, conversation_id=conv_id, seed=unit_seed,
        wtp_max=config.protocol.wtp_max, memory=config.simulator.memory == "session", calls=calls,
        protocol=config.protocol,
    )
    try:
        opening = transcript_text(hc.turns[:1])  # the choice the human made before turn 1 existed
        pick = await sim.ask("opening_choice", sim.task("simulator/opening_choice.j2", transcript=opening,
                                                      n_arms=len(letters), letters=joined), opening_schema(letters))
        sim.remember(f"After the first responses you preferred {pick.preferred} and thought "  # type: ignore[attr-defined]
                     f"{pick.personalised} was the one personalised to you.")  # type: ignore[attr-defined]
        assessment = await assess(sim, hc.turns, letters)
    except (StructuredOutputError, LLMError) as exc:
        raise SessionFailed(SessionFailure(
            conversation_id=conv_id, participant_id=hc.participant_id, domain=hc.domain,
            error_type=type(exc).__name__, reason=failure_reason(exc),
            raw_text=getattr(exc, "raw_text", None), llm_calls=sim.calls,
        )) from exc
    judgements = judgement_rows(conv_id, hc.arm_letters, assessment, opening_pick=pick.preferred,  # type: ignore[attr-defined]
                                provenance_pick=pick.personalised)  # type: ignore[attr-defined]
    bdm = bdm_draw(hc.arm_letters, assessment.bids, derive_seed(unit_seed, "bdm"), config.protocol.wtp_max, conv_id)
    return SessionRecord(
        participant=ParticipantRecord(participant_id=hc.participant_id, source="sim_judgement",
                                      persona_id=persona.persona_id, rendering=config.simulator.rendering,
                                      simulator_model=config.simulator.model),
        conversation=ConversationRecord(
            conversation_id=conv_id, participant_id=hc.participant_id, source="sim_judgement",
            domain=hc.domain,
            in_domain=hc.domain in IN_DOMAIN, arm_letters=dict(hc.arm_letters), n_turns=len(hc.turns),
            gen_error=hc.gen_error, seed=unit_seed,
        ),
        judgements=judgements,
        bdm=[bdm],
        llm_calls=sim.calls,
        instruments=sim.instruments,
        answers=answer_rows(conv_id, hc.arm_letters, assessment.extra),
    )


@dataclass
class SimJudgementSummary:
    run_dir: Path
    planned: int
    done_before: int
    completed: int
    failed: int
    wall_time_s: float
    interrupted: bool = False
    """Ctrl-C or SIGTERM: completed sessions are kept; the same command resumes."""
    stopped: str | None = None
    """Why the run stopped early (an endpoint stopped answering); those sessions are still to do."""

    def text(self) -> str:
        lines = [f"run directory: {self.run_dir}",
                 f"sim-judgement sessions: {self.completed} completed, {self.failed} failed, of {self.planned} planned "
                 f"({self.done_before} were already done); wall time {self.wall_time_s:.1f} s"]
        if self.interrupted:
            lines.append("interrupted: completed sessions are kept; run the same command to resume")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)


async def run_sim_judgement(
    config: Config,
    human_tables: Tables,
    personas: Sequence[Persona],
    run_dir: str | Path,
    *,
    base_urls: dict[str, str | list[str]] | None = None,
    retry_failed: bool = False,
    progress: bool = False,
    tune_gc: bool = True,
) -> SimJudgementSummary:
    """Judge every human conversation as its participant; write sessions to the store in ``run_dir``.

    Validates all conversations and persona matches first (``InputError``, nothing written).
    Resumes: sessions already stored (and, unless ``retry_failed``, failed ones) are skipped.
    Runs on the same session runner as ``run_experiment`` (``simlab.runner``).
    """
    from simlab.local import serving

    if config.simulators:
        # a judged conversation's id and source name no variant: one simulator judges
        raise ConfigError("Sim-Judgement runs one [simulator]; this config lists [[simulators]] variants "
                          "(run each variant's set-up as its own [simulator])", field="simulators")
    t0 = time.monotonic()
    conversations = human_conversations(human_tables)
    by_id = {p.persona_id: p for p in personas}
    check_personas(conversations, by_id)
    for hc in conversations:  # surface template errors before any write
        render(f"domains/{hc.domain}.j2")
        rendering = config.simulator.rendering
        if rendering != "summary" and rendering != "none":
            render_persona(by_id[hc.participant_id], rendering)
    run_dir = Path(run_dir)
    store = open_store(run_dir, config)
    done_before = store.completed_sessions()
    skip = done_before if retry_failed else done_before | store.failed_sessions()
    specs = [judgement_spec(by_id[hc.participant_id], hc, config.seed) for hc in conversations]
    todo = [(spec, hc) for spec, hc in zip(specs, conversations) if spec.conversation_id not in skip]
    outcome, stopped = Outcome(), None
    try:
        with serving(config, base_urls=base_urls, log_dir=run_dir, start=bool(todo),
                     only={config.simulator.endpoint, config.summary.endpoint}) as backends:
            client = LLMClient(config.endpoints, base_urls=backends.base_urls, recovering=backends.recovering)
            summaries = PersonaSummaries(config, client, store) if config.simulator.rendering == "summary" else None

            async def session(unit: tuple[SessionSpec, HumanConversation]) -> SessionRecord:
                spec, hc = unit
                summary = None if summaries is None else await summaries.get(
                    spec.persona, conversation_id=spec.conversation_id, domain=hc.domain)
                return await simulate_judgement(spec.persona, hc, config, client, summary=summary)

            try:
                outcome = await run_sessions(todo, session, store, concurrency=config.concurrency,
                                             desc="sim-judgement", progress=progress, tune_gc=tune_gc)
            finally:
                if summaries is not None:
                    summaries.close()
                await client.aclose()
    except BackendUnavailable as exc:
        stopped = str(exc)  # the sessions in flight stay to do: nothing about them was recorded
    finally:
        completed = store.completed_sessions()
        store.close()
    keys = {spec.conversation_id for spec in specs}
    return SimJudgementSummary(run_dir=run_dir, planned=len(keys), done_before=len(keys & done_before),
                               completed=len(keys & completed), failed=outcome.failed,
                               wall_time_s=time.monotonic() - t0, interrupted=outcome.interrupted, stopped=stopped)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.sim_judgement",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Sim-Judgement: the simulator, as each human participant (their persona), reads that person's
actual conversations (the same replies under the same letters) and gives the full assessment:
opening choice and provenance guess, ranking, provenance ranking, ratings and bids.
Sessions are stored with source sim_judgement and conversation_id <human id>#sj, in the run
directory of the config (the same one its Sim-Dynamic run uses), so the fidelity module
compares human, sim_judgement and sim_dynamic side by side. Every human conversation is
checked first (persona, letters, opening, every arm's reply); nothing is written if one fails.
Re-running resumes.""",
        epilog="""\
example:
  python -m simlab.sim_judgement --human data/human --personas personas/prism.jsonl

exit status: 0 done, 1 some sessions failed, 2 bad input.""",
    )
    parser.add_argument("--human", required=True, metavar="PATH", help="human data in the record schema (with turns)")
    parser.add_argument("--personas", required=True, metavar="PATH",
                        help="personas of the human participants (persona_id == participant_id)")
    parser.add_argument("--config", metavar="TOML", help="config (default: configs/local.toml)")
    parser.add_argument("--out", metavar="DIR", help="directory holding run directories (default: the config's)")
    parser.add_argument("--run-dir", metavar="DIR", help="write to this run directory instead")
    parser.add_argument("--retry-failed", action="store_true", help="also redo sessions that failed before")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from simlab.fidelity import load_human
    from simlab.personas import load_persona_set
    from simlab.runner import run_dir_for

    config = load_config(args.config)
    data = config.public_dict()
    data["personas"] = args.personas
    if args.out:
        data["out_dir"] = args.out
    config = parse_config(data, file=args.config or "configs/local.toml (with command-line overrides)")
    human = load_human(args.human)
    personas = load_persona_set(args.personas)
    run_dir = Path(args.run_dir) if args.run_dir else run_dir_for(config)
    summary = asyncio.run(run_sim_judgement(config, human, personas, run_dir, retry_failed=args.retry_failed,
                                            progress=not args.quiet))
    print(summary.text())
    if summary.interrupted:
        return 130
    return 1 if summary.failed or summary.stopped else 0


def main(argv: list[str] | None = None) -> int:
    return exit_status(lambda: _main(list(sys.argv[1:] if argv is None else argv)))


__all__ = ["HumanConversation", "SimJudgementSummary", "human_conversations", "run_sim_judgement",
           "simulate_judgement"]


if __name__ == "__main__":
    sys.exit(main())
