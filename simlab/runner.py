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
import contextlib
import contextvars
import gc
import hashlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from simlab.config import Config, Experiment, experiment_hash
from simlab.errors import LLMError
from simlab.llm import LLMClient, call_context, recording
from simlab.personas import Persona, summarize
from simlab.prompts import all_hashes, template_hash
from simlab.protocol import SessionFailed, failure_reason
from simlab.records import ArmRecord, SessionFailure, SessionRecord
from simlab.store import STORE_FILE, RunStore

U = TypeVar("U")


def config_hash(config: Experiment, personas_path: str, shard: tuple[int, int]) -> str:
    """The hash that named a run directory before the experiment was hashed on its own: the
    config without the invocation's keys of then (``LEGACY_INVOCATION_KEYS``: what is left is the
    experiment), the persona file and the shard. ``run_dir_for`` still finds a run named by it."""
    data = config.experiment.public_dict()
    data.pop("simulators", None)  # as in experiment_hash: the runs of then had no variants
    data["_personas"] = personas_path
    data["_shard"] = list(shard)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def run_dir_for(experiment: Experiment, shard: tuple[int, int] = (0, 1), *, out_dir: str | Path | None = None) -> Path:
    """The run directory an experiment maps to (the same command always finds the same run):
    ``<out_dir>/<name>-<experiment_hash>``, with ``-shard<i>of<n>`` for one shard of several.

    ``out_dir``: the folder of run directories (default: a ``Config``'s ``out_dir``, else ``runs``).
    A run made before the experiment was hashed on its own is found under its old name
    (``config_hash``) when no run has the new one.
    """
    if out_dir is None:
        out_dir = experiment.out_dir if isinstance(experiment, Config) else "runs"
    suffix = f"-shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
    found = Path(out_dir) / f"{experiment.name}-{experiment_hash(experiment)}{suffix}"
    if not found.exists():
        legacy = Path(out_dir) / f"{experiment.name}-{config_hash(experiment, experiment.personas, shard)}{suffix}"
        if (legacy / STORE_FILE).exists():
            return legacy
    return found


def meta_for(config: Config, **extra: Any) -> dict[str, Any]:
    """What a run store records about the run that made it: the experiment (checked again on
    resume), the config of this call (replaced by each resume), prompt hashes (and the variants'
    own templates'), models, seed."""
    models = {a.id: f"{a.endpoint}/{a.model}" for a in config.arms}
    # the simulator's model, or each variant's (``simulator:<id>``; ``simulator:<id>:turns``: its turn model)
    if not config.simulators:
        models["simulator"] = f"{config.simulator.endpoint}/{config.simulator.model}"
    for v in config.simulators:
        models[f"simulator:{v.id}"] = f"{v.endpoint}/{v.model}"
        if v.turns is not None:
            models[f"simulator:{v.id}:turns"] = f"{v.turns.endpoint}/{v.turns.model}"
    models.update(judge=f"{config.judge.endpoint}/{config.judge.model}")
    folders = variant_prompt_hashes(config)
    return {"experiment": config.experiment.public_dict(), "config": config.public_dict(),
            "prompt_hashes": all_hashes(), "models": models, "seed": config.seed,
            **({"variant_prompts": folders} if folders else {}), **extra}


def variant_prompt_hashes(config: Experiment) -> dict[str, dict[str, str]]:
    """Each variant's own templates (its ``prompts`` folder) by name, with their hashes: a resume
    refuses a variant whose templates changed under the same id."""
    out: dict[str, dict[str, str]] = {}
    for v in config.simulators:
        if v.prompts is not None:
            root = Path(v.prompts)
            names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.j2"))
            out[v.id] = {name: template_hash(name, root) for name in names}
    return out


def open_store(run_dir: Path, config: Config, **extra: Any) -> RunStore:
    """The run's store (created, or resumed when its experiment matches), with its arms in config order.

    It records the registered instruments and reads the registered analyses (which loads both
    groups' entry points: a bad registration is refused here, before any model call, not when the
    report is written at the end)."""
    from simlab.fidelity.registry import ANALYSES
    from simlab.instruments import instrument_meta

    ANALYSES.names()
    store = RunStore.open_or_create(run_dir, meta_for(config, instruments=instrument_meta(), **extra))
    store.write_arms(ArmRecord(arm=a.id, description=a.description, config_order=i) for i, a in enumerate(config.arms))
    return store


class PersonaSummaries:
    """Each persona's LLM summary, made once, when the first of its sessions needs it.

    Made inside the sessions, under their concurrency bound, instead of all before them: one
    at a time up front, 2,000 summaries would leave a GPU fleet idle for an hour. A summary's
    call is recorded on its own (role ``summary``, no conversation), cached artefacts are
    reused, and ``save`` records the artefacts in the run's meta. A summary that cannot be
    made fails the sessions that need it, with the reason.
    """

    def __init__(self, config: Experiment, client: LLMClient, store: RunStore) -> None:
        self.config = config
        self.client = client
        self.store = store
        self._tasks: dict[str, asyncio.Task[str]] = {}
        self._artefacts: dict[str, Any] = dict(store.meta().get("persona_summaries") or {})
        self._made = 0

    async def get(self, persona: Persona, *, conversation_id: str, domain: str) -> str:
        """The summary text; raises ``SessionFailed`` for ``conversation_id`` if it cannot be made."""
        task = self._tasks.get(persona.persona_id)
        if task is None:
            # a fresh context: the summary's call is not one of the first session's calls
            task = asyncio.get_running_loop().create_task(self._make(persona), context=contextvars.Context())
            self._tasks[persona.persona_id] = task
        try:
            return await asyncio.shield(task)  # a cancelled session leaves the summary to the others
        except LLMError as exc:
            raise SessionFailed(SessionFailure(
                conversation_id=conversation_id, participant_id=persona.persona_id, domain=domain,
                error_type=type(exc).__name__, reason=f"persona summary: {failure_reason(exc)}",
            )) from exc

    async def _make(self, persona: Persona) -> str:
        config, client = self.config, self.client

        async def generate(messages: list[dict[str, str]]) -> str:
            res = await client.chat(config.summary, messages, prompt_name="persona/summary_request.j2",
                                    prompt_hash=template_hash("persona/summary_request.j2"), seed=config.seed)
            return res.text

        with recording() as calls, call_context(role="summary", instrument="summary"):
            try:
                artefact = await summarize(persona, generate, model=config.summary.model,
                                           cache_dir=config.summary.cache_dir)
            finally:  # a failed summary call is recorded too
                await self.store.in_background(self.store.write_calls, calls)
        # the summary is an artefact: record what made it (PROTOCOL §3)
        self._artefacts[persona.persona_id] = artefact.model_dump(mode="json", include={
            "model", "prompt_hash", "input_hash", "created_at"})
        self._made += 1
        return artefact.text

    def close(self) -> None:
        """Stop summaries still being made (the run ended) and record the artefacts made."""
        for task in self._tasks.values():
            task.cancel()
        if self._made:
            self.store.set_meta("persona_summaries", self._artefacts)


@dataclass
class Outcome:
    """How ``run_sessions`` ended."""

    interrupted: bool = False
    """Ctrl-C or SIGTERM: the sessions in flight were cancelled (nothing of them is stored)."""
    failed: int = 0
    """Sessions recorded as failed in this call."""
    session_s: list[float] = field(default_factory=list)
    """Seconds each finished session took, from taking its place under the concurrency bound."""
    commit_s: list[float] = field(default_factory=list)
    """Seconds each session's (or failure's) store transaction took."""


GC_THRESHOLDS = (10_000, 3, 33)
"""The collector's thresholds while sessions run (Python's defaults: 700, 10, 10): a backstop to
``GC_PACE`` for bursts of allocation between its ticks, and what still decides full collections
(Python's own rule: after 33 middle collections, once the old generation grew by 25%)."""

GC_PACE = (0.1, 3)
"""While sessions run in an event loop: a young collection every 0.1 s of the loop's clock, and
every 3rd of them a middle one. In CPython 3.11 the young generation's counter is allocations
minus deallocations of any tracked object, so at 1,000 sessions in flight, while finished
sessions' old objects die as fast as new ones are made, a young collection by count came only
when a great many objects had piled up, and the middle collections that followed were the event
loop's lag p99. On the loop's clock a young collection holds 0.1 s of objects and a middle one
0.3 s: shorter pauses and a lower lag p99 at the same sessions/s, for a little more of a core
spent collecting (figures in docs/benchmarks.md)."""


@contextlib.contextmanager
def gc_for_many_sessions() -> Iterator[None]:
    """Python's cyclic garbage collector tuned for the length of a run, then put back.

    With the default thresholds (700, 10, 10), at 1,000 sessions in flight long full collections
    took a large share of a run's time and were the event loop's lag p99 (docs/benchmarks.md), as
    each one traverses every transcript, record and frame in flight. While sessions run, the
    thresholds are ``GC_THRESHOLDS`` (full collections ~14x rarer), young and middle collections
    are paced by the running event loop (``GC_PACE``; none when entered outside a loop), and
    what exists before the first session (modules, personas, config) is frozen out of every
    collection. A collector the user turned off (threshold 0) or already made rarer, and objects
    the user froze, are left as they are (no pacing either). Runs that overlap in one process
    (e.g. two ``asyncio.gather``-ed runs) tune once: the last to end puts it back.
    """
    global _gc_runs, _gc_saved, _gc_pacer
    if _gc_runs == 0:
        old = gc.get_threshold()
        freeze = gc.get_freeze_count() == 0
        _gc_saved = (old, freeze)
        if freeze:
            gc.freeze()
        if 0 < old[0] < GC_THRESHOLDS[0]:  # not off, nor already rarer by the user's choice
            gc.set_threshold(*GC_THRESHOLDS)
            with contextlib.suppress(RuntimeError):  # no running loop: thresholds only
                _gc_pacer = asyncio.get_running_loop().call_later(GC_PACE[0], _gc_tick, 1)
    _gc_runs += 1
    try:
        yield
    finally:
        _gc_runs -= 1
        if _gc_runs == 0 and _gc_saved is not None:
            (old, freeze), _gc_saved = _gc_saved, None
            if _gc_pacer is not None:
                _gc_pacer.cancel()
                _gc_pacer = None
            gc.set_threshold(*old)
            if freeze:
                gc.unfreeze()


def _gc_tick(n: int) -> None:
    global _gc_pacer
    gc.collect(1 if n % GC_PACE[1] == 0 else 0)
    _gc_pacer = asyncio.get_running_loop().call_later(GC_PACE[0], _gc_tick, n + 1)


_gc_runs = 0  # runs in progress in this process
_gc_saved: tuple[tuple[int, int, int], bool] | None = None  # the collector's settings before the first of them
_gc_pacer: asyncio.TimerHandle | None = None  # the next paced collection


async def run_sessions(
    units: Sequence[U],
    session: Callable[[U], Awaitable[SessionRecord]],
    store: RunStore,
    *,
    concurrency: int,
    desc: str = "sessions",
    progress: bool = True,
    tune_gc: bool = True,
) -> Outcome:
    """Run ``session(unit)`` for every unit, at most ``concurrency`` at once, committing each result.

    A ``SessionFailed`` is recorded with its reason and the run goes on. Any other exception
    (``BackendUnavailable``: an endpoint stopped answering; or a bug) cancels the sessions in
    flight and is raised: nothing of them was stored, so a resume does them. ``tune_gc=False``
    runs with the garbage collector as the caller set it instead of ``gc_for_many_sessions``.
    """
    from tqdm import tqdm

    outcome = Outcome()
    bar = tqdm(total=len(units), desc=desc, unit="session", disable=not progress or not units,
               dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
    todo = iter(units)

    # ``concurrency`` workers take the units in turn: a task per unit, all waited on together,
    # cost O(units) per finished session (asyncio.wait re-arms every pending task), which at
    # 10,000 sessions was a third of the client's CPU
    async def worker() -> None:
        for unit in todo:
            t0 = time.perf_counter()
            try:
                record = await session(unit)
            except SessionFailed as exc:
                t1 = time.perf_counter()
                await store.in_background(store.write_failure, exc.failure)  # the disk waited for off the loop
                outcome.failed += 1
                bar.set_postfix(failed=outcome.failed, refresh=False)  # drawn with the next update
            else:
                t1 = time.perf_counter()
                # one transaction (the session is whole or absent), on the store's writer thread
                await store.in_background(store.write_session, record)
            outcome.session_s.append(t1 - t0)
            outcome.commit_s.append(time.perf_counter() - t1)
            bar.update(1)

    with gc_for_many_sessions() if tune_gc else contextlib.nullcontext():
        return await _drive(worker, len(units), concurrency, outcome, bar)


async def _drive(worker: Callable[[], Awaitable[None]], n_units: int, concurrency: int, outcome: Outcome,
                 bar: Any) -> Outcome:
    workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, n_units))]
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: Ctrl-C handled by asyncio.run
            pass
    waiter = asyncio.ensure_future(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = set(workers)
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
        for t in workers:
            t.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
        bar.close()


__all__ = ["GC_PACE", "GC_THRESHOLDS", "Outcome", "config_hash", "gc_for_many_sessions", "meta_for",
           "PersonaSummaries", "open_store", "run_dir_for", "run_sessions", "variant_prompt_hashes"]
