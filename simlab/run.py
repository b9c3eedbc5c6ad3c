"""Batch runs: ``python -m simlab.run`` and ``await simlab.run_experiment(config)``.

One asyncio process drives every (participant, domain) session concurrently; model
calls are bounded per endpoint by the client layer. Each session is committed to the
run store in one transaction when it completes, so a killed run resumes with the same
command (the run directory is named from the config's hash) and redoes only what is
missing. Everything is validated before the run directory is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simlab._files import data_path
from simlab.config import CONFIGS_DIR, Config, load_config
from simlab.errors import (
    BackendUnavailable,
    ConfigError,
    InputError,
    SimlabError,
    exit_status,
)
from simlab.personas import (
    Persona,
    load_holdout,
    load_personas,
    load_prism,
    render_persona,
    summarize,
)
from simlab.prompts import all_hashes, render
from simlab.schema import DOMAINS
from simlab.store import FailureGroup

# Config keys that may change when a run is resumed (they do not change any result).
RESUMABLE_KEYS = ("concurrency", "limit", "out_dir", "human", "max_gen_error_rate")


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
    backends: dict[str, dict] = field(default_factory=dict)
    """What was started for embedded endpoints (mode, fallback, replicas)."""
    gen_errors_by_arm: dict[str, tuple[int, int]] = field(default_factory=dict)
    """arm → (replies that were error notices, replies), over every stored session."""
    max_gen_error_rate: float = 1.0

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
            lines.append(f"embedded server '{name}': {info['replicas']} × llama.cpp, {info['mode']} mode, "
                         f"{info['n_threads']} thread(s) each" + (f" ({info['fallback']})" if info.get("fallback") else ""))
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
        return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def select(personas: list[Persona], *, limit: int | None, shard: tuple[int, int]) -> list[Persona]:
    """First ``limit`` personas, then this shard's share (every n-th, offset i)."""
    chosen = personas[:limit] if limit else personas
    i, n = shard
    return [p for k, p in enumerate(chosen) if k % n == i]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like i/n (e.g. 0/4), got {text!r}", field="shard") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n", field="shard")
    return i, n


def _config_hash(config: Config, personas_path: str, shard: tuple[int, int]) -> str:
    data = {k: v for k, v in config.public_dict().items() if k not in RESUMABLE_KEYS}
    data["_personas"] = personas_path
    data["_shard"] = list(shard)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def run_dir_for(config: Config, shard: tuple[int, int] = (0, 1)) -> Path:
    """The run directory a config maps to (the same command always finds the same run)."""
    suffix = f"-shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
    return Path(config.out_dir) / f"{config.name}-{_config_hash(config, config.personas, shard)}{suffix}"


def _needs_summary(config: Config) -> bool:
    from simlab.protocol import needs_summary

    return needs_summary(config)


def validate_plan(config: Config, personas: Sequence[Persona]) -> None:
    """Render every template a run will use with every persona, so errors surface before any write."""
    if not personas:
        raise InputError("no personas selected (check --limit/--shard and the persona file)", file=config.personas)
    if config.human is not None and not Path(config.human).exists():
        raise InputError("no such file or directory (the human data for the report)", file=config.human,
                         field="human")
    for name, ep in config.endpoints.items():
        if ep.api_key_env and not os.environ.get(ep.api_key_env):
            raise ConfigError(f"environment variable {ep.api_key_env} is not set (it holds the API key)",
                              field=f"endpoints.{name}.api_key_env")
    for domain in config.protocol.domains:
        render(f"domains/{domain}.j2")
    import jinja2

    from simlab.protocol import arm_system_prompt

    for i, arm in enumerate(config.arms):
        try:
            arm_system_prompt(arm, personas[0], summary="(the persona summary)")
        except jinja2.TemplateNotFound:
            raise ConfigError(f"no template {arm.system_prompt!r} in the prompt folder",
                              field=f"arms[{i}].system_prompt") from None
        except jinja2.TemplateError as exc:
            raise ConfigError(f"template {arm.system_prompt!r} does not render: {exc}",
                              field=f"arms[{i}].system_prompt") from None
    for persona in personas:
        for rendering in {config.simulator.rendering, *(a.personalisation for a in config.arms)} - {"none", "summary"}:
            render_persona(persona, rendering)  # type: ignore[arg-type]


def _check_writable(directory: Path, field: str) -> None:
    """Refuse an output place that is a file or cannot be written, before anything is made."""
    if directory.exists() and not directory.is_dir():
        raise InputError("is a file, not a directory for run output", file=directory, field=field)
    existing = next((p for p in [directory, *directory.parents] if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write here ({existing} is not writable)", file=directory, field=field)


def plan_text(config: Config, personas: Sequence[Persona], run_dir: Path) -> str:
    n_sessions = len(personas) * len(config.protocol.domains)
    k = len(config.arms)
    p = config.protocol
    # per user turn: k arm replies + 1 turn rating + 1 next message; opening adds the choice;
    # assessment: 2 rankings of k-1 picks, ratings, bids.
    per_turn = k + 2
    fixed = 1 + 1 + 2 * (k - 1) + 2
    lo = fixed + p.min_turns * per_turn - 1
    hi = fixed + p.max_turns * per_turn - 1
    summaries = len(personas) if _needs_summary(config) else 0
    lines = [
        f"run directory: {run_dir}",
        f"participants: {len(personas)} × domains: {len(p.domains)} ({', '.join(p.domains)}) × arms: {k} "
        f"({', '.join(a.id for a in config.arms)})",
        f"sessions: {n_sessions}; user turns per session: {p.min_turns}–{p.max_turns}",
        f"expected model calls: {n_sessions * lo}–{n_sessions * hi} (+{summaries} persona summaries, "
        f"+ schema retries)",
        "endpoints: " + ", ".join(
            f"{name}={ep.base_url or 'embedded llama.cpp'} (in flight ≤ {ep.in_flight})"
            for name, ep in config.endpoints.items()
        ),
    ]
    return "\n".join(lines)


async def run_experiment(
    config: Config,
    *,
    personas: Sequence[Persona] | None = None,
    run_dir: str | Path | None = None,
    shard: tuple[int, int] = (0, 1),
    base_urls: dict[str, str | list[str]] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    report: bool = True,
) -> RunSummary:
    """Run (or resume) the experiment of ``config``; returns the end-of-run summary.

    ``base_urls`` overrides endpoint URLs (e.g. a server the caller started). Embedded
    local endpoints without a URL are started here and stopped at the end.
    """
    from simlab.llm import LLMClient
    from simlab.local import serving
    from simlab.protocol import conversation_id
    from simlab.store import RunStore

    t0 = time.monotonic()
    if personas is None:
        personas = select(load_persona_set(config.personas, config.holdout), limit=config.limit, shard=shard)
    personas = list(personas)
    validate_plan(config, personas)
    run_dir = Path(run_dir) if run_dir else run_dir_for(config, shard)
    models = {a.id: f"{a.endpoint}/{a.model}" for a in config.arms}
    models.update(simulator=f"{config.simulator.endpoint}/{config.simulator.model}",
                  judge=f"{config.judge.endpoint}/{config.judge.model}")
    meta = {"config": config.public_dict(), "prompt_hashes": all_hashes(), "models": models, "seed": config.seed,
            "personas": [p.persona_id for p in personas], "shard": list(shard)}
    store = RunStore.open_or_create(run_dir, meta, ignore=RESUMABLE_KEYS)
    done_before = store.completed_sessions()
    skip = done_before if retry_failed else done_before | store.failed_sessions()
    todo = [(p, d) for p in personas for d in config.protocol.domains if conversation_id(p.persona_id, d) not in skip]
    n_planned = len(personas) * len(config.protocol.domains)
    interrupted = False
    stopped: str | None = None
    backend_info: dict[str, dict] = {}
    try:
        with serving(config, base_urls=base_urls, log_dir=run_dir, start=bool(todo)) as backends:
            backend_info = backends.info()
            if backend_info:
                store.set_meta("backends", backend_info)
            client = LLMClient(config.endpoints, base_urls=backends.base_urls)
            summaries = await persona_summaries(config, client, personas, store) if todo and _needs_summary(config) else {}
            interrupted = await _run_sessions(config, client, store, todo, summaries, progress)
    except BackendUnavailable as exc:
        stopped = str(exc)  # the sessions in flight stay to do: nothing about them was recorded
    finally:
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
        max_gen_error_rate=config.max_gen_error_rate,
    )
    for c in counts.by_role_arm:
        tokens = c.prompt_tokens + c.completion_tokens
        summary.tokens_by_role[c.role] = summary.tokens_by_role.get(c.role, 0) + tokens
        if c.role == "arm" and c.arm:
            summary.tokens_by_arm[c.arm] = summary.tokens_by_arm.get(c.arm, 0) + tokens
    if report and not interrupted and not stopped:
        summary.report = _write_report(run_dir, config)
    return summary


async def persona_summaries(config: Config, client, personas, store) -> dict[str, str]:
    """persona_id → LLM summary text (cached artefacts reused); records the artefacts in run meta."""
    from simlab.protocol import Simulator

    out: dict[str, str] = {}
    artefacts = dict(store.meta().get("persona_summaries") or {})
    for persona in personas:
        sink = Simulator(client=client, spec=config.summary, persona_text="", domain_instruction="",
                         conversation_id="", seed=config.seed)

        async def generate(messages, _sink=sink):
            try:
                res = await client.chat(config.summary, messages, prompt_name="persona/summary_request.j2",
                                        seed=config.seed)
            except SimlabError as exc:
                _sink._log(getattr(exc, "call", None), "summary", role="summary")
                raise
            _sink._log(res.call, "summary", role="summary")
            return res.text

        artefact = await summarize(persona, generate, model=config.summary.model, cache_dir=config.summary.cache_dir)
        out[persona.persona_id] = artefact.text
        # the summary is an artefact: record what made it (PROTOCOL §3)
        artefacts[persona.persona_id] = artefact.model_dump(mode="json", include={
            "model", "prompt_hash", "input_hash", "created_at"})
        store.write_calls([c.model_copy(update={"conversation_id": None}) for c in sink.calls])
    store.set_meta("persona_summaries", artefacts)
    return out


async def _run_sessions(config, client, store, todo, summaries, progress: bool) -> bool:
    """Run the sessions; returns True if interrupted (Ctrl-C / SIGTERM)."""
    from tqdm import tqdm

    from simlab.protocol import SessionFailed, simulate_session

    gate = asyncio.Semaphore(config.concurrency)
    bar = tqdm(total=len(todo), desc="sessions", unit="session", disable=not progress or not todo,
               dynamic_ncols=True, file=sys.stderr)
    failed = 0

    async def one(persona: Persona, domain: str) -> None:
        nonlocal failed
        async with gate:
            try:
                record = await simulate_session(persona, domain, config, client,
                                                summary=summaries.get(persona.persona_id))
            except SessionFailed as exc:
                store.write_failure(exc.failure)
                failed += 1
                bar.set_postfix(failed=failed)
            else:
                store.write_session(record)  # one transaction: the session is whole or absent
            bar.update(1)

    tasks = [asyncio.ensure_future(one(p, d)) for p, d in todo]
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
                    # BackendUnavailable: the run stops, the other sessions stay to do;
                    # anything else is a bug, not a model failure: stop loudly
                    for other in pending:
                        other.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    raise t.exception()  # type: ignore[misc]
            if stop.is_set():
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return True
        return False
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


def _write_report(run_dir: Path, config: Config) -> Path | None:
    """The run's HTML report (with the human comparison when ``human`` is configured)."""
    try:
        from simlab.report import write_run_report
    except ImportError:
        return None
    return write_run_report(run_dir, human=config.human)


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
    from simlab.config import parse_config

    try:
        return parse_config(data, file=args.config or "configs/local.toml (with command-line overrides)")
    except InputError as exc:
        # the config itself was valid: a bad value came from an option, so name the option
        given = {"personas": args.personas, "limit": args.limit, "holdout": args.holdout,
                 "protocol.domains": args.domains, "concurrency": args.concurrency, "seed": args.seed,
                 "out_dir": args.out, "human": args.human}
        for field, value in given.items():
            if value is not None and exc.field and (exc.field == field or exc.field.startswith((f"{field}.", f"{field}["))):
                exc.file, exc.field = None, _OPTION_OF.get(field, f"--{field}")
                exc.message += f" (given: {value!r})"
        raise


_OPTION_OF = {"protocol.domains": "--domains", "out_dir": "--out"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run the PRISM-X experiment with simulated users.

With no arguments: the quickstart on the embedded local model (SmolLM2-135M via
llama.cpp, one single-thread server per core started on 127.0.0.1 for the run): 3 sample
personas × 2 domains × 4 demo arms, about 2.5 minutes on 2 CPU cores. Output goes to runs/<name>-<config hash>/
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
    parser.add_argument("--shard", default="0/1", help="run shard i of n (disjoint participants), e.g. 0/4")
    parser.add_argument("--resume", metavar="RUN_DIR", help="resume this run directory with its stored config")
    parser.add_argument("--retry-failed", action="store_true", help="also redo sessions that failed before")
    parser.add_argument("--dry-run", action="store_true", help="validate config and personas, print the plan, exit 0")
    parser.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


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
        validate_plan(config, personas)
    except InputError as exc:
        if exc.file is None:  # a config field: name the file it came from
            exc.file = config_file
        raise
    target = run_dir or run_dir_for(config, shard)
    _check_writable(Path(config.out_dir) if run_dir is None else target, "--out" if args.out else "out_dir")
    if args.dry_run:
        print(plan_text(config, personas, target))
        return 0
    summary = asyncio.run(run_experiment(config, personas=personas, run_dir=target, shard=shard,
                                         retry_failed=args.retry_failed, progress=not args.quiet,
                                         report=not args.no_report))
    print(summary.text())
    if summary.interrupted:
        return 130
    return 1 if summary.sessions_failed or summary.stopped or summary.gen_error_alert else 0


if __name__ == "__main__":
    sys.exit(main())
