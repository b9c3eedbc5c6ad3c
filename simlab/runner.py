"""The one session runner behind ``run_experiment`` (Sim-Dynamic) and ``run_sim_judgement``.

Both open a run store, skip what it already holds, start the backends, make the persona
summaries once, then drive their sessions concurrently: a gate bounds the sessions in flight,
each finished session is committed in one transaction (whole or absent), a failed one is recorded
with its reason, Ctrl-C and SIGTERM stop the run keeping what is done, and an endpoint that stops
answering (``BackendUnavailable``) stops it too, leaving the sessions in flight to do. Only what
one session is differs between the two modes: the ``session`` coroutine given to ``run_sessions``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from simlab.config import Config
from simlab.llm import LLMClient, call_context, recording
from simlab.personas import Persona, summarize
from simlab.prompts import all_hashes, template_hash
from simlab.protocol import SessionFailed
from simlab.records import ArmRecord, SessionRecord
from simlab.store import RunStore

# Config keys that may change when a run is resumed (they do not change any result).
RESUMABLE_KEYS = ("concurrency", "limit", "out_dir", "human", "max_gen_error_rate")

U = TypeVar("U")


def config_hash(config: Config, personas_path: str, shard: tuple[int, int]) -> str:
    """What names a run: the config without its resumable keys, the persona file and the shard."""
    data = {k: v for k, v in config.public_dict().items() if k not in RESUMABLE_KEYS}
    data["_personas"] = personas_path
    data["_shard"] = list(shard)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def run_dir_for(config: Config, shard: tuple[int, int] = (0, 1)) -> Path:
    """The run directory a config maps to (the same command always finds the same run)."""
    suffix = f"-shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
    return Path(config.out_dir) / f"{config.name}-{config_hash(config, config.personas, shard)}{suffix}"


def meta_for(config: Config, **extra: Any) -> dict[str, Any]:
    """What a run store records about the run that made it (checked again on resume)."""
    models = {a.id: f"{a.endpoint}/{a.model}" for a in config.arms}
    models.update(simulator=f"{config.simulator.endpoint}/{config.simulator.model}",
                  judge=f"{config.judge.endpoint}/{config.judge.model}")
    return {"config": config.public_dict(), "prompt_hashes": all_hashes(), "models": models, "seed": config.seed,
            **extra}


def open_store(run_dir: Path, config: Config, **extra: Any) -> RunStore:
    """The run's store (created, or resumed when its config matches), with its arms in config order."""
    store = RunStore.open_or_create(run_dir, meta_for(config, **extra), ignore=RESUMABLE_KEYS)
    store.write_arms(ArmRecord(arm=a.id, description=a.description, config_order=i) for i, a in enumerate(config.arms))
    return store


async def persona_summaries(config: Config, client: LLMClient, personas: Sequence[Persona],
                            store: RunStore) -> dict[str, str]:
    """persona_id → LLM summary text (cached artefacts reused); records the artefacts in run meta."""
    out: dict[str, str] = {}
    artefacts = dict(store.meta().get("persona_summaries") or {})
    for persona in personas:

        async def generate(messages: list[dict[str, str]]) -> str:
            res = await client.chat(config.summary, messages, prompt_name="persona/summary_request.j2",
                                    prompt_hash=template_hash("persona/summary_request.j2"), seed=config.seed)
            return res.text

        with recording() as calls, call_context(role="summary", instrument="summary"):
            try:
                artefact = await summarize(persona, generate, model=config.summary.model,
                                           cache_dir=config.summary.cache_dir)
            finally:  # a failed summary call is recorded too
                store.write_calls(calls)
        out[persona.persona_id] = artefact.text
        # the summary is an artefact: record what made it (PROTOCOL §3)
        artefacts[persona.persona_id] = artefact.model_dump(mode="json", include={
            "model", "prompt_hash", "input_hash", "created_at"})
    store.set_meta("persona_summaries", artefacts)
    return out


@dataclass
class Outcome:
    """How ``run_sessions`` ended."""

    interrupted: bool = False
    """Ctrl-C or SIGTERM: the sessions in flight were cancelled (nothing of them is stored)."""
    failed: int = 0
    """Sessions recorded as failed in this call."""


async def run_sessions(
    units: Sequence[U],
    session: Callable[[U], Awaitable[SessionRecord]],
    store: RunStore,
    *,
    concurrency: int,
    desc: str = "sessions",
    progress: bool = True,
) -> Outcome:
    """Run ``session(unit)`` for every unit, at most ``concurrency`` at once, committing each result.

    A ``SessionFailed`` is recorded with its reason and the run goes on. Any other exception
    (``BackendUnavailable``: an endpoint stopped answering; or a bug) cancels the sessions in
    flight and is raised: nothing of them was stored, so a resume does them.
    """
    from tqdm import tqdm

    outcome = Outcome()
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(units), desc=desc, unit="session", disable=not progress or not units,
               dynamic_ncols=True, file=sys.stderr)

    async def one(unit: U) -> None:
        async with gate:
            try:
                record = await session(unit)
            except SessionFailed as exc:
                store.write_failure(exc.failure)
                outcome.failed += 1
                bar.set_postfix(failed=outcome.failed)
            else:
                store.write_session(record)  # one transaction: the session is whole or absent
            bar.update(1)

    tasks = [asyncio.ensure_future(one(u)) for u in units]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: Ctrl-C handled by asyncio.run
            pass
    waiter = asyncio.ensure_future(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(waiter)
            for t in done:
                if t is not waiter and t.exception() is not None:
                    for other in pending:
                        other.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    raise t.exception()  # type: ignore[misc]
            if stop.is_set():
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                outcome.interrupted = True
                return outcome
        return outcome
    finally:
        waiter.cancel()
        for t in tasks:
            t.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        bar.close()


__all__ = ["RESUMABLE_KEYS", "Outcome", "config_hash", "meta_for", "open_store", "persona_summaries", "run_dir_for",
           "run_sessions"]
