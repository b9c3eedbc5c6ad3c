"""``simlab autograde`` (``python -m simlab.autograde``): grade a run's replies and user messages (and
human data) with the LLM judge, and measure the grades' reliability. The prompts and the scoring are
in ``simlab.autograder``; this module is the command and its Python entry point.

Python API: ``await grade_run(run_dir, human=..., options=AutogradeOptions(sample=50))`` and
``simlab.sim_judgement.run_sim_judgement``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simlab._files import data_path
from simlab.autograder import (
    META_KEY,
    MODES,
    AutogradeOptions,
    GradeSummary,
    ReliabilityResult,
    autograde,
    reliability,
    reliability_table,
)
from simlab.config import Config, load_config, parse_config
from simlab.errors import exit_status
from simlab.personas import Persona, render_persona

__all__ = ["GradeReport", "grade_run", "main"]


@dataclass
class GradeReport:
    """What ``grade_run`` did and the reliability of every (dimension, mode, source)."""

    run_dir: Path
    run: GradeSummary
    human: GradeSummary | None
    reliability: list[ReliabilityResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def excluded(self) -> list[str]:
        return sorted({r.dimension for r in self.reliability if not r.reliable})

    def text(self) -> str:
        lines = [f"run directory: {self.run_dir}", "run: " + self.run.text()]
        if self.human is not None:
            lines.append("human: " + self.human.text())
        lines += self.notes
        lines += ["", "reliability (ICC(2,1), two-way random, absolute agreement, single rater):",
                  reliability_table(self.reliability)]
        if self.excluded:
            lines.append(f"excluded from downstream analyses (below threshold in some mode): {', '.join(self.excluded)}")
        return "\n".join(lines)


def _profiles(personas: Sequence[Persona], ids: dict[str, str]) -> dict[str, str]:
    """participant_id → persona profile text, for participants whose persona is known."""
    by_id = {p.persona_id: p for p in personas}
    return {pid: render_persona(by_id[persona_id], "profile").text for pid, persona_id in ids.items()
            if persona_id in by_id}


async def grade_run(
    run_dir: str | Path,
    *,
    human: str | Path | None = None,
    personas: Sequence[Persona] | None = None,
    config: Config | None = None,
    options: AutogradeOptions = AutogradeOptions(),
    base_urls: dict[str, str | list[str]] | None = None,
    progress: bool = False,
) -> GradeReport:
    """Grade a run's conversations (and ``human`` data, stored with source 'human'), then store
    the reliability of every (dimension, mode, source) in the run meta and return it.

    ``config`` defaults to the run's stored config (its judge and endpoints are used);
    ``personas`` to the run config's persona set when that file exists (persona-aware
    dimensions need them; human participants match on persona_id == participant_id).
    """
    from simlab.fidelity import load_human
    from simlab.llm import LLMClient
    from simlab.local import serving
    from simlab.personas import load_persona_set
    from simlab.store import RunStore, load_run, read_table, run_meta

    run_dir = Path(run_dir)
    if config is None:
        config = parse_config(run_meta(run_dir)["config"], file=run_dir / "store.sqlite")
    notes: list[str] = []
    if personas is None:
        if data_path(config.personas).exists():
            personas = load_persona_set(config.personas)
        else:
            personas = []
            notes.append(f"note: persona file {config.personas} not found; persona-aware dimensions are skipped "
                         "(pass --personas)")
    run_tables = load_run(run_dir)
    human_tables = load_human(human) if human is not None else None  # validated before any grading
    ids = {}
    if run_tables.participants is not None:
        ids = {str(r.participant_id): str(r.persona_id) for r in run_tables.participants.itertuples()
               if r.persona_id is not None}
    profiles = _profiles(personas, ids)
    human_profiles = {}
    if human_tables is not None:
        conv = human_tables.conversations
        human_ids = {str(p): str(p) for p in conv["participant_id"].unique()} if conv is not None else {}
        human_profiles = _profiles(personas, human_ids)

    store = RunStore.open(run_dir)
    try:
        has_turns = run_tables.turns is not None and not run_tables.turns.empty
        with serving(config, base_urls=base_urls, log_dir=run_dir, only={config.judge.endpoint}) as backends:
            # closed at the end: an open aiohttp session prints "Unclosed client session" at exit
            # the run's prices and response cache: grades are priced like the run's calls, and a re-grade
            # of the same transcripts by the same judge is served from the cache
            from simlab.llm.cache import ResponseCache
            from simlab.llm.pricing import Ledger, Pricing, load_pricing

            table = config.pricing if config.pricing_file is None else config.pricing.merged(
                load_pricing(config.pricing_file))
            cache = None if config.cache is None else ResponseCache(config.cache, unseeded=config.cache_unseeded)
            async with LLMClient(config.endpoints, base_urls=backends.base_urls, ledger=Ledger(Pricing(table)),
                                 cache=cache, recovering=backends.recovering) as client:
                if has_turns:
                    run_summary = await autograde(run_tables, config, client, store, personas=profiles,
                                                  options=options, progress=progress)
                else:
                    run_summary = GradeSummary()
                    notes.append("note: the run has no turns to grade")
                human_summary = None
                if human_tables is not None:
                    human_summary = await autograde(human_tables, config, client, store, personas=human_profiles,
                                                    options=options, progress=progress)
        results = reliability(read_table(run_dir, "autograde"), threshold=options.threshold,
                              rater_runs=options.rater_runs, n_boot=options.n_boot, seed=config.seed)
        store.set_meta(META_KEY, [r.model_dump(mode="json") for r in results])
        store.set_meta("autograde_options", options.model_dump(mode="json"))
    finally:
        store.close()
    return GradeReport(run_dir=run_dir, run=run_summary, human=human_summary, reliability=results, notes=notes)


# ----------------------------------------------------------------------------- CLI


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def grade_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.autograde",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Autograde a run with the LLM judge and report how reliable each trait is.

Every arm's replies and every user's messages are scored on the traits of PROTOCOL §5.7
(model: sycophancy, relationship_seeking, specificity, opinionatedness, refusal 1-3,
stereotyping; user: user_sycophancy, user_relationship_seeking, self_disclosure,
naturalness, ecological_validity, persona_parroting) in two modes (first_turn,
conversation). A sample of units per trait and mode is scored three times; ICC(2,1) with a
bootstrap CI says whether the trait is reliable. Traits below the threshold are flagged and
left out of the fidelity trait analyses. Scores go to the run store's autograde table, the
reliability table to its meta (autograde_reliability). Re-running resumes: grades already
stored are not repeated.

Sim-Judgement (the simulator assesses real people's transcripts) is a command of its own:
  python -m simlab.sim_judgement --help""",
        epilog="""\
examples:
  python -m simlab.autograde --run runs/quickstart-1a2b3c4d5e
  python -m simlab.autograde --run RUN --human data/human --personas personas/prism.jsonl
  python -m simlab.autograde --run RUN --sample 20 --modes first_turn --dimensions refusal,specificity

exit status: 0 done, 1 some grades failed (stored with status schema_error/error), 2 bad input.""",
    )
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory (holds store.sqlite)")
    parser.add_argument("--human", metavar="PATH", help="human data (record-schema tables) to grade too (source 'human')")
    parser.add_argument("--personas", metavar="PATH", help="persona set for persona-aware traits "
                        "(default: the run config's; human participants match persona_id == participant_id)")
    parser.add_argument("--config", metavar="TOML", help="use this config's judge and endpoints (default: the run's)")
    parser.add_argument("--sample", type=int, default=50, metavar="N",
                        help="units per trait and mode scored three times for reliability (default 50)")
    parser.add_argument("--threshold", type=float, default=0.75, help="ICC(2,1) below this is unreliable (default 0.75)")
    parser.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)} (default both)")
    parser.add_argument("--dimensions", help="comma-separated traits to grade (default all)")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="judge sampling temperature (default 0.7: repeated ratings must be able to differ "
                             "for the ICC to mean anything; -1 keeps the config's judge temperature)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _grade_main(argv: list[str]) -> int:
    args = grade_parser().parse_args(argv)
    from simlab.personas import load_persona_set

    options = AutogradeOptions(
        sample=args.sample, threshold=args.threshold, temperature=None if args.temperature < 0 else args.temperature,
        modes=tuple(_csv(args.modes) or MODES),
        dimensions=tuple(_csv(args.dimensions) or ()) if args.dimensions else None,
    )
    options.dims()  # unknown names fail before any work
    config = load_config(args.config) if args.config else None
    personas = load_persona_set(args.personas) if args.personas else None
    report = asyncio.run(grade_run(args.run, human=args.human, personas=personas, config=config, options=options,
                                   progress=not args.quiet))
    print(report.text())
    failed = report.run.failed + (report.human.failed if report.human else 0)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return exit_status(lambda: _grade_main(argv))


if __name__ == "__main__":
    sys.exit(main())
