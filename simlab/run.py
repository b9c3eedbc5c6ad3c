"""Batch runs: ``python -m simlab.run`` and ``await simlab.run_experiment(config)``.

One asyncio process drives every (participant, domain) session concurrently; model
calls are bounded per endpoint by the client layer. Each session is committed to the
run store in one transaction when it completes, so a killed run resumes with the same
command (the run directory is named from the experiment's hash) and redoes only what is
missing. Everything is validated before the run directory is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simlab import __version__
from simlab._files import write_text_atomic
from simlab.config import CONFIGS_DIR, Config, Experiment, Invocation, ProtocolConfig, load_config
from simlab.errors import (
    BackendUnavailable,
    ConfigError,
    InputError,
    exit_status,
)
from simlab.llm.cache import ResponseCache, check_cache_path
from simlab.llm.config import check_key_length
from simlab.llm.pricing import BudgetExhausted, Ledger, Pricing, PricingTable, load_pricing
from simlab.personas import Persona, load_persona_set, render_persona
from simlab.plan import SessionSpec, plan_sessions
from simlab.prompts import render
from simlab.records import SessionRecord
from simlab.runner import Outcome, PersonaSummaries, open_store, run_dir_for, run_sessions
from simlab.schema import DOMAINS
from simlab.store import FailureGroup
from simlab.store.damage import DiskFullError

# load_persona_set, run_dir_for: kept importable from here for scripts that used them
__all__ = ["RunSummary", "load_persona_set", "main", "run_dir_for", "run_experiment", "select"]



@dataclass
class RunSummary:
    """What a run did: the end-of-run summary's numbers."""

    run_dir: Path
    sessions_planned: int
    sessions_done_before: int
    sessions_completed: int
    sessions_failed: int
    wall_time_s: float
    tokens_by_arm: dict[str, int] = field(default_factory=dict)
    tokens_by_role: dict[str, int] = field(default_factory=dict)
    report: Path | None = None
    interrupted: bool = False
    failure_groups: list[FailureGroup] = field(default_factory=list)
    """Failed sessions grouped by cause, with one example each."""
    stopped: str | None = None
    """Why the run stopped early (an endpoint stopped answering); those sessions are still to do."""
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What was started for embedded endpoints (mode, fallback, replicas)."""
    gen_errors_by_arm: dict[str, tuple[int, int]] = field(default_factory=dict)
    """arm → (replies that were error notices, replies), over every stored session."""
    max_gen_error_rate: float = 1.0
    session_s: list[float] = field(default_factory=list)
    """Seconds each session of this call took (from taking its place under ``concurrency``)."""
    commit_s: list[float] = field(default_factory=list)
    """Seconds each session's store transaction took."""
    cost_usd: float = 0.0
    """USD of every call the store holds (the study so far)."""
    cost_by_role: dict[str, float] = field(default_factory=dict)
    """USD of the stored calls per role (arm, simulator, summary, judge)."""
    cost_by_arm: dict[str, float] = field(default_factory=dict)
    session_cost_usd: tuple[float, float] | None = None
    """(mean, max) USD of a completed session's own calls."""
    spent_usd: float = 0.0
    """USD of every reply this call received, sessions cut short by a stop included."""
    spent_total_usd: float = 0.0
    """USD the run has spent over all its calls (what ``budget_usd`` limits)."""
    budget_usd: float | None = None
    budget_stop: bool = False
    """The run stopped because its next call could have crossed ``budget_usd``."""
    cache_hits: int = 0
    cache_lookups: int = 0
    cache_saved_usd: float = 0.0
    """What the replies served from the response cache would have cost at today's prices."""
    unpriced: dict[str, int] = field(default_factory=dict)
    """``<endpoint>/<model>`` → stored calls counted as $0 because nothing prices that model."""
    uncosted_calls: int = 0
    """Stored calls written before costs were kept (no cost)."""

    @property
    def gen_error_alert(self) -> str | None:
        """Why the arms' failed generations make the run fail, or None."""
        over = [f"{arm} {e}/{n} ({e / n:.0%})" for arm, (e, n) in sorted(self.gen_errors_by_arm.items())
                if n and e / n > self.max_gen_error_rate]
        if not over:
            return None
        return (f"replies that are error notices exceed max_gen_error_rate = {self.max_gen_error_rate:g}: "
                f"{', '.join(over)}. The arm's endpoint failed these generations (see llm_calls.error); "
                "its judgements rate the notice, not a model reply")

    def text(self) -> str:
        lines = [
            f"run directory: {self.run_dir}",
            f"sessions: {self.sessions_completed} completed, {self.sessions_failed} failed, "
            f"of {self.sessions_planned} planned ({self.sessions_done_before} were already done)",
            f"wall time: {self.wall_time_s:.1f} s",
            "tokens per arm: " + (", ".join(f"{a}={n}" for a, n in sorted(self.tokens_by_arm.items())) or "none"),
            "tokens per role: " + (", ".join(f"{r}={n}" for r, n in sorted(self.tokens_by_role.items())) or "none"),
        ]
        for name, info in self.backends.items():
            if info.get("backend") == "vllm (launched)":
                lines.append(f"launched vLLM server '{name}': {info['version'] or 'vLLM'} serving "
                             f"{', '.join(info['served'])}; up in {info['startup_s']} s")
                continue
            lines.append(f"embedded server '{name}': {info['replicas']} × llama.cpp, {info['mode']} mode, "
                         f"{info['n_threads']} thread(s) each" + (f" ({info['fallback']})" if info.get("fallback") else ""))
        lines += self.cost_lines()
        if any(e for e, _ in self.gen_errors_by_arm.values()):
            lines.append("replies that are error notices per arm: " + ", ".join(
                f"{a}={e}/{n}" for a, (e, n) in sorted(self.gen_errors_by_arm.items())))
        if self.gen_error_alert:
            lines.append(f"FAILED: {self.gen_error_alert}")
        if self.failure_groups:
            lines.append("failed sessions by cause:")
            for g in self.failure_groups:
                lines.append(f"  {g.count} × {g.error_type}: {_clip(g.reason, 160)} (e.g. {g.example})")
            lines.append("  these are recorded with their reason and skipped on resume; "
                         "to redo them: the same command with --retry-failed")
        if self.report:
            lines.append(f"report: {self.report}")
        if self.interrupted:
            lines.append("interrupted: completed sessions are kept; run the same command to resume")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        if self.budget_stop:
            lines.append(f"  budget: ${self.spent_total_usd:.4f} of ${self.budget_usd:.4f} spent; the sessions in flight "
                         f"were not recorded and stay to do. To continue: python -m simlab.run --resume {self.run_dir} "
                         "--budget <a higher amount in USD>")
        return "\n".join(lines)

    def cost_lines(self) -> list[str]:
        """The summary's dollars: this call, the study, per session, per role and arm, unpriced models."""
        per_session = "" if self.session_cost_usd is None else (
            f"; per completed session ${self.session_cost_usd[0]:.4f} mean, ${self.session_cost_usd[1]:.4f} max")
        budget = "" if self.budget_usd is None else f" (budget ${self.budget_usd:.4f}, ${self.spent_total_usd:.4f} spent)"
        lines = [f"cost: ${self.spent_usd:.4f} this call; ${self.cost_usd:.4f} for the stored calls of the study"
                 f"{per_session}{budget}",
                 "cost per role: " + (", ".join(f"{r}=${c:.4f}" for r, c in sorted(self.cost_by_role.items())) or "none"),
                 "cost per arm: " + (", ".join(f"{a}=${c:.4f}" for a, c in sorted(self.cost_by_arm.items())) or "none")]
        if self.unpriced:
            lines.append("unpriced models, counted as $0 (give their prices in [pricing] or --pricing): " + ", ".join(
                f"{m} ({n} calls)" for m, n in sorted(self.unpriced.items())))
        if self.cache_lookups:
            lines.append(f"response cache: {self.cache_hits} of {self.cache_lookups} requests served from it "
                         f"({self.cache_hits / self.cache_lookups:.0%}), ${self.cache_saved_usd:.4f} saved")
        if self.uncosted_calls:
            lines.append(f"{self.uncosted_calls} stored calls have no cost (recorded before costs were kept)")
        return lines


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shard_of(participant_id: str, n: int) -> int:
    """The shard (0..n-1) a participant belongs to: a stable hash of the id, so a participant
    stays in its shard when the persona file is reordered or grows."""
    return int.from_bytes(hashlib.sha256(participant_id.encode()).digest()[:8], "big") % n


def select(personas: list[Persona], *, limit: int | None, shard: tuple[int, int]) -> list[Persona]:
    """First ``limit`` personas, then this shard's share (``shard_of`` each participant id)."""
    chosen = personas[:limit] if limit else personas
    i, n = shard
    return [p for p in chosen if n == 1 or shard_of(p.persona_id, n) == i]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}", field="shard") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n", field="shard")
    return i, n


def _needs_summary(config: Experiment) -> bool:
    from simlab.protocol import needs_summary

    return needs_summary(config)


def validate_plan(config: Experiment, personas: Sequence[Persona], shard: tuple[int, int] = (0, 1), *,
                  human: str | None = None) -> None:
    """Render every template a run will use with every persona, so errors surface before any write.

    ``human``: the invocation's human data (default: a ``Config``'s), which must exist. One shard
    of several may hold no participant (a small persona file split many ways): it runs no
    session, and its empty store merges like any other."""
    if not personas and shard[1] == 1:
        raise InputError("no personas selected (check --limit and the persona file)", file=config.personas)
    if human is None and isinstance(config, Config):
        human = config.human
    if human is not None and not Path(human).exists():
        raise InputError("no such file or directory (the human data for the report)", file=human, field="human")
    for name, ep in config.endpoints.items():
        if ep.api_key_env and not os.environ.get(ep.api_key_env):
            raise ConfigError(f"environment variable {ep.api_key_env} is not set (it holds the API key)",
                              field=f"endpoints.{name}.api_key_env")
        if ep.api_key_env:
            check_key_length(ep.api_key_env, os.environ[ep.api_key_env], field=f"endpoints.{name}.api_key_env")
    for domain in config.protocol.domains:
        render(f"domains/{domain}.j2")
    import jinja2

    from simlab.protocol import arm_system_prompt

    for i, arm in enumerate(config.arms if personas else ()):
        try:
            arm_system_prompt(arm, personas[0], summary="(the persona summary)")
        except jinja2.TemplateNotFound:
            raise ConfigError(f"no template {arm.system_prompt!r} in the prompt folder",
                              field=f"arms[{i}].system_prompt") from None
        except jinja2.TemplateError as exc:
            raise ConfigError(f"template {arm.system_prompt!r} does not render: {exc}",
                              field=f"arms[{i}].system_prompt") from None
    for i, arm in enumerate(config.arms):
        if arm.soft_tokens is not None:  # read now: a missing or malformed file stops the run before it starts
            from simlab.llm.soft_tokens import load_bank

            try:
                load_bank(arm.soft_tokens.embeddings, arm.soft_tokens.base_model)
            except ConfigError as exc:
                raise ConfigError(exc.message, file=exc.file, field=f"arms[{i}].soft_tokens") from None
    for persona in personas:
        renderings = {config.simulator_of(v).rendering for v in config.variant_ids}
        for rendering in {*renderings, *(a.personalisation for a in config.arms)} - {"none", "summary", "soft_tokens"}:
            render_persona(persona, rendering)  # type: ignore[arg-type]


def pricing_of(settings: Config | Invocation) -> PricingTable:
    """The run's pricing table: the config's ``[pricing]`` with the ``pricing_file``'s prices over it
    (a bad file is a ``ConfigError`` naming it and the field, raised before anything is written; a
    ``cache`` path that cannot hold a response cache is refused here too)."""
    if settings.cache is not None:
        check_cache_path(settings.cache)
    table = settings.pricing
    if settings.pricing_file is not None:
        table = table.merged(load_pricing(settings.pricing_file))
    return table


def _check_writable(directory: Path, field: str) -> None:
    """Refuse an output place that is a file or cannot be written, before anything is made."""
    if directory.exists() and not directory.is_dir():
        raise InputError("is a file, not a directory for run output", file=directory, field=field)
    existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write here ({existing} is not writable)", file=directory, field=field)


def sessions_of(experiment: Experiment, invocation: Invocation, personas: Sequence[Persona]) -> list[SessionSpec]:
    """The sessions this invocation plans: every domain of each persona it selected, its repeats,
    and the no-persona controls if it asks for them (persona sessions first)."""
    return plan_sessions(experiment, personas, repeats=invocation.repeats, ablate_persona=invocation.ablate_persona)


def calls_per_session(k: int, turns: int, protocol: ProtocolConfig) -> int:
    """Model calls of a session with ``k`` arms that lasts ``turns`` user turns (no retries)."""
    from simlab.instruments import INSTRUMENTS

    # the opening and the next messages, k replies per turn, and every registered instrument's calls
    # (the built-ins: a rating per turn, the opening choice, the stop questions, two rankings of k-1
    # picks, the ratings and the bids)
    return 1 + (turns - 1) + turns * k + sum(i.count(k, turns, protocol) for i in INSTRUMENTS)


def plan_text(config: Experiment, personas: Sequence[Persona], run_dir: Path,
              invocation: Invocation | None = None) -> str:
    """The plan a dry run prints: sessions, expected calls, endpoints (``invocation``: a ``Config``'s by default)."""
    if invocation is None:
        invocation = config.invocation() if isinstance(config, Config) else Invocation()
    n_sessions = len(sessions_of(config, invocation, personas))
    k = len(config.arms)
    p = config.protocol
    lo, hi = calls_per_session(k, p.min_turns, p), calls_per_session(k, p.max_turns, p)
    summaries = len(personas) if _needs_summary(config) else 0
    extra = ""
    if invocation.repeats > 1 or invocation.ablate_persona:
        extra = (f" ({invocation.repeats} repeat(s)" + (" × with and without persona" if invocation.ablate_persona else "")
                 + ")")
    lines = [
        f"run directory: {run_dir}",
        f"participants: {len(personas)} × domains: {len(p.domains)} ({', '.join(p.domains)}) × arms: {k} "
        f"({', '.join(a.id for a in config.arms)})",
        f"sessions: {n_sessions}{extra}; user turns per session: {p.min_turns}–{p.max_turns}; "
        + (f"simulator memory: {config.simulator.memory}" if not config.simulators else
         "simulator variants: " + ", ".join(f"{v.id} ({v.rendering}, memory {v.memory})" for v in config.simulators))
        + f"; letters: {p.letters}",
        f"expected model calls: {n_sessions * lo}–{n_sessions * hi} (+{summaries} persona summaries, "
        f"+ schema retries)",
        "endpoints: " + ", ".join(
            f"{name}={ep.where}"
            + (f" + {len(ep.replica_urls)} replicas" if ep.replica_urls else "") + f" (in flight ≤ {ep.in_flight}"
            + (" each)" if ep.replica_urls else ")")
            for name, ep in config.endpoints.items()
        ),
    ]
    return "\n".join(lines)


async def run_experiment(
    experiment: Experiment,
    invocation: Invocation | None = None,
    *,
    personas: Sequence[Persona] | None = None,
    run_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    base_urls: dict[str, str | list[str]] | None = None,
    retry_failed: bool | None = None,
    progress: bool | None = None,
    report: bool | None = None,
    tune_gc: bool = True,
) -> RunSummary:
    """Run (or resume) an experiment as ``invocation`` says; returns the end-of-run summary.

    ``experiment`` may be a ``Config`` (a TOML file's): its settings (concurrency, limit, repeats,
    …) are then the invocation's unless ``invocation`` is given. ``shard``, ``retry_failed``,
    ``progress`` and ``report`` override the invocation's. ``personas``: these instead of the
    experiment's persona file (as selected by ``limit`` and ``shard``). ``base_urls`` overrides
    endpoint URLs (e.g. a server the caller started). Embedded local endpoints without a URL are
    started here and stopped at the end. ``tune_gc=False`` leaves Python's garbage collector as
    the caller set it (``simlab.runner.gc_for_many_sessions``).
    """
    from simlab.llm import LLMClient
    from simlab.local import serving
    from simlab.protocol import simulate_session

    t0 = time.monotonic()
    if invocation is None:
        invocation = experiment.invocation() if isinstance(experiment, Config) else Invocation()
    options = {"shard": shard, "retry_failed": retry_failed, "progress": progress, "report": report}
    invocation = Invocation.model_validate({**dict(invocation), **{k: v for k, v in options.items() if v is not None}})
    experiment = experiment.experiment
    config = Config.of(experiment, invocation)  # what the run's meta records as this call's config
    if personas is None:
        personas = select(load_persona_set(experiment.personas, experiment.holdout), limit=invocation.limit,
                          shard=invocation.shard)
    personas = list(personas)
    validate_plan(experiment, personas, invocation.shard, human=invocation.human)
    pricing = Pricing(pricing_of(invocation))
    run_dir = Path(run_dir) if run_dir else run_dir_for(experiment, invocation.shard, out_dir=invocation.out_dir)
    store = open_store(run_dir, config, personas=[p.persona_id for p in personas], shard=list(invocation.shard))
    # what the run spent before: the meta's running total (it also counts sessions a stop cut short),
    # or the stored calls' costs for a run whose last call ended before writing it
    spent_before = max(float(store.meta().get("spend_usd") or 0.0), store.cost_usd())
    ledger = Ledger(pricing, budget_usd=invocation.budget_usd, spent_before=spent_before)
    cache = None if invocation.cache is None else ResponseCache(invocation.cache, unseeded=invocation.cache_unseeded)
    budget_stop = False
    done_before = store.completed_sessions()
    skip = done_before if invocation.retry_failed else done_before | store.failed_sessions()
    planned = sessions_of(experiment, invocation, personas)
    todo = [spec for spec in planned if spec.conversation_id not in skip]
    n_planned = len(planned)
    interrupted = False
    stopped: str | None = None
    backend_info: dict[str, dict[str, Any]] = {}
    outcome = Outcome()
    try:
        with serving(experiment, base_urls=base_urls, log_dir=run_dir, start=bool(todo)) as backends:
            backend_info = backends.info()
            if backend_info:
                store.set_meta("backends", backend_info)
            client = LLMClient(experiment.endpoints, base_urls=backends.base_urls, ledger=ledger, cache=cache,
                               recovering=backends.recovering)
            summaries = PersonaSummaries(experiment, client, store) if _needs_summary(experiment) else None

            async def session(spec: SessionSpec) -> SessionRecord:
                summary = None if summaries is None else await summaries.get(
                    spec.persona, conversation_id=spec.conversation_id, domain=spec.domain)
                return await simulate_session(spec, experiment, client, summary=summary)

            try:
                outcome = await run_sessions(todo, session, store, concurrency=invocation.concurrency,
                                             progress=invocation.progress, tune_gc=tune_gc)
            finally:
                if summaries is not None:
                    summaries.close()
                await client.aclose()
                # the servers that died and were restarted, added to those of earlier calls on this run
                if backends.restarts:
                    store.set_meta("restarts", list(store.meta().get("restarts") or []) + backends.restarts)
            interrupted = outcome.interrupted
    except BackendUnavailable as exc:
        stopped = str(exc)  # the sessions in flight stay to do: nothing about them was recorded
    except BudgetExhausted as exc:
        stopped, budget_stop = str(exc), True  # as a backend gone: the sessions in flight stay to do
    except DiskFullError as exc:
        stopped = str(exc)  # the session being written was rolled back: it and those in flight stay to do
    finally:
        if ledger.spent:
            try:
                store.set_meta("spend_usd", spent_before + ledger.spent)
            except DiskFullError:  # the stored calls still give the spend
                pass
        if cache is not None:
            cache.close()
        counts = store.counts()
        store.close()
    summary = RunSummary(
        run_dir=run_dir,
        sessions_planned=n_planned,
        sessions_done_before=len(done_before),
        sessions_completed=counts.sessions_completed,
        sessions_failed=counts.sessions_failed,
        wall_time_s=time.monotonic() - t0,
        interrupted=interrupted,
        failure_groups=counts.failure_groups,
        stopped=stopped,
        backends=backend_info,
        gen_errors_by_arm=counts.gen_errors_by_arm,
        max_gen_error_rate=invocation.max_gen_error_rate,
        session_s=outcome.session_s,
        commit_s=outcome.commit_s,
        cost_usd=counts.cost_usd,
        session_cost_usd=counts.session_cost_usd,
        spent_usd=ledger.spent,
        spent_total_usd=spent_before + ledger.spent,
        budget_usd=invocation.budget_usd,
        budget_stop=budget_stop,
        cache_hits=cache.hits if cache is not None else 0,
        cache_lookups=cache.hits + cache.misses if cache is not None else 0,
        cache_saved_usd=cache.saved_usd if cache is not None else 0.0,
        unpriced=counts.unpriced,
        uncosted_calls=counts.uncosted_calls,
    )
    for c in counts.by_role_arm:
        tokens = c.prompt_tokens + c.completion_tokens
        summary.tokens_by_role[c.role] = summary.tokens_by_role.get(c.role, 0) + tokens
        summary.cost_by_role[c.role] = summary.cost_by_role.get(c.role, 0.0) + c.cost_usd
        if c.role == "arm" and c.arm:
            summary.tokens_by_arm[c.arm] = summary.tokens_by_arm.get(c.arm, 0) + tokens
            summary.cost_by_arm[c.arm] = summary.cost_by_arm.get(c.arm, 0.0) + c.cost_usd
    if invocation.report and not interrupted and not stopped:
        stamp = json.dumps({"completed": counts.sessions_completed, "failed": counts.sessions_failed,
                            "human": _file_stamp(invocation.human), "simlab": __version__})
        summary.report = _write_report(run_dir, invocation.human, stamp)
    return summary


def _file_stamp(path: str | None) -> list[object] | None:
    if path is None:
        return None
    p = Path(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    return [path, *[(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()]]


REPORT_STAMP = ".report-stamp"
"""What the run's report.html was written from; a rerun that changes none of it keeps the report
(re-rendering a 10,000-session report costs more than the rest of a resume)."""


def _write_report(run_dir: Path, human: str | None, stamp: str) -> Path | None:
    """The run's HTML report (with the human comparison when ``human`` is configured), unless
    the one there was written from the same sessions, human data and simlab version."""
    try:
        from simlab.report import write_run_report
    except ImportError:
        return None
    existing, stamp_file = run_dir / "report.html", run_dir / REPORT_STAMP
    if existing.exists() and stamp_file.exists() and stamp_file.read_text(encoding="utf-8") == stamp:
        return existing
    path = write_run_report(run_dir, human=human)
    if path == existing:
        write_text_atomic(stamp_file, stamp)
    return path


def _apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    data = config.public_dict()
    if args.personas:
        data["personas"] = args.personas
    if args.limit is not None:
        data["limit"] = args.limit
    if args.holdout:
        data["holdout"] = args.holdout
    if args.domains is not None:  # --domains '' is an error (no domains), not the default
        data["protocol"]["domains"] = [d.strip() for d in args.domains.split(",") if d.strip()]
    if args.concurrency is not None:
        data["concurrency"] = args.concurrency
    if args.seed is not None:
        data["seed"] = args.seed
    if args.out:
        data["out_dir"] = args.out
    if args.human:
        data["human"] = args.human
    if args.repeats is not None:
        data["repeats"] = args.repeats
    if args.ablate_persona:
        data["ablate_persona"] = True
    if args.pricing is not None:
        data["pricing_file"] = args.pricing
    if args.budget is not None:
        data["budget_usd"] = args.budget
    if args.cache is not None:
        data["cache"] = args.cache
    from simlab.config import parse_config

    try:
        return parse_config(data, file=args.config or "configs/local.toml (with command-line overrides)")
    except InputError as exc:
        # the config itself was valid: a bad value came from an option, so name the option
        given = {"personas": args.personas, "limit": args.limit, "holdout": args.holdout,
                 "protocol.domains": args.domains, "concurrency": args.concurrency, "seed": args.seed,
                 "out_dir": args.out, "human": args.human, "repeats": args.repeats, "pricing_file": args.pricing,
                 "budget_usd": args.budget, "cache": args.cache}
        for field, value in given.items():
            if value is not None and exc.field and (exc.field == field or exc.field.startswith((f"{field}.", f"{field}["))):
                exc.file, exc.field = None, _OPTION_OF.get(field, f"--{field}")
                exc.message += f" (given: {value!r})"
        raise


_OPTION_OF = {"protocol.domains": "--domains", "out_dir": "--out", "pricing_file": "--pricing", "budget_usd": "--budget", "cache": "--cache"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run the PRISM-X experiment with simulated users.

With no arguments: the quickstart on the embedded local model (SmolLM2-135M via
llama.cpp, one single-thread server per core started on 127.0.0.1 for the run): 3 sample
personas × 2 domains × 4 demo arms, about 2.5 minutes on 2 CPU cores. Output goes to runs/<name>-<experiment hash>/
(store.sqlite, report.html). Running the same command again resumes that run and
does only the sessions that are missing.""",
        epilog="""\
examples:
  python -m simlab.run                                   # quickstart, embedded model
  python -m simlab.run --config configs/vllm.toml        # four arms on a vLLM server
  python -m simlab.run --config my.toml --dry-run        # validate and print the plan
  python -m simlab.run --config my.toml --shard 0/4      # one of four disjoint shards
  python -m simlab.run --resume runs/quickstart-1a2b3c4d5e

exit status: 0 done, 1 sessions failed (recorded; --retry-failed redoes them) or a
backend stopped answering (nothing lost: run the same command again once it is back),
2 bad input (config, personas, arguments), 130 interrupted (completed sessions kept).""",
    )
    parser.add_argument("--config", help="TOML config (default: configs/local.toml, the embedded quickstart)")
    parser.add_argument("--personas", help="persona JSONL, or a PRISM survey.jsonl (conversations.jsonl beside it)")
    parser.add_argument("--holdout", metavar="FILE",
                        help="conversation ids (one per line) to leave out of the personas (evaluation targets)")
    parser.add_argument("--limit", type=int, help="use only the first N personas")
    parser.add_argument("--domains", help=f"comma-separated subset of: {', '.join(DOMAINS)}")
    parser.add_argument("--concurrency", type=int, help="sessions in flight at once")
    parser.add_argument("--seed", type=int, help="run seed (letters, BDM draws, sampling seeds derive from it)")
    parser.add_argument("--out", help="directory that holds run directories (default: runs)")
    parser.add_argument("--human", help="human data directory to compare with in the report")
    parser.add_argument("--repeats", type=int, metavar="K",
                        help="run each participant × domain K times with different seeds (simulator test–retest)")
    parser.add_argument("--ablate-persona", action="store_true",
                        help="also run every session with a simulator that gets no persona (the control)")
    parser.add_argument("--pricing", metavar="FILE",
                        help="model prices (TOML/JSON: [models.\"<model>\"] input/output/cached_input USD per million "
                             "tokens, [endpoints.<name>] gpu_hour_usd)")
    parser.add_argument("--budget", type=_usd, metavar="USD",
                        help="stop before the run's spend (resumes included) could cross this many dollars")
    parser.add_argument("--cache", metavar="PATH",
                        help="response cache file shared across runs and processes: seeded requests it holds are "
                             "served from it, the rest stored in it")
    parser.add_argument("--shard", default="0/1", help="run shard i of n (disjoint participants), e.g. 0/4")
    parser.add_argument("--resume", metavar="RUN_DIR", help="resume this run directory with its stored config")
    parser.add_argument("--retry-failed", action="store_true", help="also redo sessions that failed before")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate config and personas, print the plan and the expected calls, tokens and dollars "
                             "per component (a range), exit 0")
    parser.add_argument("--pilot", type=_positive, metavar="K",
                        help="with --dry-run: run about K sessions for real in a temporary directory and scale their "
                             "calls, tokens and dollars to the study")
    parser.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _estimate(config: Config, invocation: Invocation, personas: Sequence[Persona], pilot: int | None) -> Any:
    """The dry run's estimate: from the config, or from a pilot of ``pilot`` sessions run in a
    temporary directory (removed afterwards)."""
    import tempfile

    from simlab.estimate import estimate_from_config, estimate_from_pilot, pilot_personas
    from simlab.store import read_table

    n_sessions = len(sessions_of(config.experiment, invocation, personas))
    if pilot is None:
        k, p = len(config.arms), config.protocol
        return estimate_from_config(config.experiment, personas, n_sessions, Pricing(pricing_of(config)),
                                    (calls_per_session(k, p.min_turns, p), calls_per_session(k, p.max_turns, p)))
    per_persona = len(sessions_of(config.experiment, invocation, personas[:1])) if personas else 1
    chosen = pilot_personas(personas, pilot, per_persona)
    with tempfile.TemporaryDirectory(prefix="simlab-pilot-") as tmp:
        quiet = invocation.model_copy(update={"progress": False, "report": False, "budget_usd": None})
        done = asyncio.run(run_experiment(config.experiment, quiet, personas=chosen, run_dir=Path(tmp) / "pilot"))
        if done.stopped:
            raise InputError(f"the pilot stopped: {done.stopped}", field="--pilot")
        sessions = read_table(done.run_dir, "sessions")["conversation_id"].tolist()
        return estimate_from_pilot(read_table(done.run_dir, "llm_calls"), sessions, n_sessions, len(personas),
                                   len(chosen))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of dollars: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be more than 0 dollars, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # sessions cancelled when a backend dies leave litellm coroutines unawaited: not the user's concern
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    return exit_status(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard)
    run_dir = None
    if args.resume:
        from simlab.config import parse_config
        from simlab.store import run_meta

        run_dir = Path(args.resume)
        stored_config = run_meta(run_dir)["config"]
        try:
            stored = parse_config(stored_config, file=run_dir / "store.sqlite")
        except InputError as exc:  # name the stored key, not a field of a file the user has
            exc.field = "meta.config" + (f".{exc.field}" if exc.field else "")
            raise
        config = load_config(args.config) if args.config else stored
        config = _apply_overrides(config, args)
        stored_shard = run_meta(run_dir).get("shard")
        if stored_shard and args.shard == "0/1":
            shard = (int(stored_shard[0]), int(stored_shard[1]))
    else:
        config = _apply_overrides(load_config(args.config), args)
    config_file = str(run_dir / "store.sqlite") if run_dir else (args.config or str(CONFIGS_DIR / "local.toml"))
    try:
        personas = select(load_persona_set(config.personas, config.holdout), limit=config.limit, shard=shard)
    except InputError as exc:
        if exc.row is None and not args.personas:  # the whole file is wrong: say where its path was set
            exc.message += f" (set by 'personas' in {config_file})"
        raise
    try:
        validate_plan(config, personas, shard, human=config.human)
        pricing_of(config)  # a bad pricing file or cache path stops the run here, before any call
    except InputError as exc:
        if exc.file is None:  # a config field: name the file it came from
            exc.file = config_file
        if exc.field == "cache" and args.cache is not None:  # given by the option, not the config
            exc.field = "--cache"
        raise
    target = run_dir or run_dir_for(config, shard)
    _check_writable(Path(config.out_dir) if run_dir is None else target, "--out" if args.out else "out_dir")
    if args.pilot is not None and not args.dry_run:
        raise ConfigError("--pilot K measures the estimate of a --dry-run: give --dry-run too", field="--pilot")
    if args.dry_run:
        plan_invocation = config.invocation(shard=shard)
        print(plan_text(config, personas, target, plan_invocation))
        print(_estimate(config, plan_invocation, personas, args.pilot).text())
        return 0
    invocation = config.invocation(shard=shard, retry_failed=args.retry_failed, progress=not args.quiet,
                                   report=not args.no_report)
    summary = asyncio.run(run_experiment(config.experiment, invocation, personas=personas, run_dir=target))
    print(summary.text())
    if summary.interrupted:
        return 130
    return 1 if summary.sessions_failed or summary.stopped or summary.gen_error_alert else 0


if __name__ == "__main__":
    sys.exit(main())
