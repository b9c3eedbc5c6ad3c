"""``python -m simlab.fidelity``: import human data, compare simulated users with it.

Bad input prints one line naming file, row and field on stderr and exits with
status 2; nothing is written then (outputs go to a temporary path, renamed at the end).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from simlab._files import write_text_atomic
from simlab.errors import InputError, exit_status

__all__ = ["main"]

EXAMPLES = """\
examples:
  # Dialogue-Eval's three MTurk rounds -> the on-disk human-data form (one file per table)
  python -m simlab.fidelity import dialogue-eval ../shared/data/dialogue_eval data/dialogue_eval

  # PRISM's public files -> the same form
  python -m simlab.fidelity import prism conversations.jsonl data/prism --survey survey.jsonl

  # every fidelity analysis of a simulated run against human data, as JSON
  python -m simlab.fidelity analyze --human data/prism --run runs/demo --out fidelity.json

  # the analyses of the human data alone (no simulated source)
  python -m simlab.fidelity analyze --human data/dialogue_eval --out human.json

  # every comparison per age and gender group, and weighted to census margins (attribute,level,share)
  python -m simlab.fidelity analyze --human data/prism --run runs/demo --by age,gender --weights margins.csv --out f.json

The on-disk human-data format and the result JSON are described in docs/fidelity.md.
Analyses that packages register (entry-point group simlab.analyses) run too: see docs/extending.md.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simlab.fidelity",
        description="Measure how far simulated users are from real people: import human data into the "
        "record schema, then fit every fidelity analysis (PROTOCOL.md §5) per source and compare each "
        "simulated source with the human one.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser(
        "analyze",
        help="fit the analyses and write the result JSON",
        description="Load human data (and optionally a simulated run), fit every analysis per source with "
        "participant-bootstrap 95% CIs, compare each simulated source with human, write the result as JSON.",
    )
    analyze.add_argument("--human", required=True, type=Path, metavar="PATH",
                         help="human data: a directory with judgements.csv|jsonl|parquet (+ conversations, turns, "
                         "participants, autograde) or a single judgements file; source defaults to 'human'")
    sim = analyze.add_mutually_exclusive_group()
    sim.add_argument("--run", type=Path, metavar="RUN_DIR", help="a simlab run directory (runs/<run_id>)")
    sim.add_argument("--sim", type=Path, metavar="PATH",
                     help="simulated data in the on-disk form; its own 'source' column is kept (required)")
    analyze.add_argument("--n-boot", type=int, default=200, metavar="N",
                         help="bootstrap replicates over participants per CI (default: 200)")
    analyze.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap (default: 0)")
    analyze.add_argument("--topics", choices=["tfidf", "minilm"], default="tfidf",
                         help="text representation of the topic analysis (default: tfidf; minilm sentence "
                         "embeddings need the [topics] extra)")
    analyze.add_argument("--out", required=True, type=Path, metavar="FILE", help="where to write the result JSON")
    add_group_options(analyze)
    shown = analyze.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true", default=None,
                       help="progress bars on stderr (which analysis runs, bootstrap draws); the default when "
                       "stderr is a terminal")
    shown.add_argument("--quiet", dest="progress", action="store_false", help="no progress bars")

    imports = commands.add_parser("import", help="convert a public human dataset to the on-disk form",
                                  description="Convert a public human dataset to the on-disk human-data form "
                                  "(one file per table) that --human reads.")
    datasets = imports.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    de = datasets.add_parser("dialogue-eval", help="Dialogue-Eval (Ji et al., ACL 2022) MTurk CSVs",
                             description="Import Dialogue-Eval: SRC is one round's CSV or a directory of them "
                             "(FreeTopicRound1.csv, FreeTopicRound2.csv, IceBreaker.csv).")
    de.add_argument("src", type=Path, metavar="SRC", help="a Dialogue-Eval CSV or a directory of them")
    de.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output directory (must be empty or absent)")
    de.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv", help="file format (default: csv)")
    de.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    prism = datasets.add_parser("prism", help="PRISM conversations.jsonl (+ survey.jsonl)",
                                description="Import PRISM (Kirk et al. 2024): opening-turn ratings become "
                                "judgements, later turns' ratings become turn_rating.")
    prism.add_argument("conversations", type=Path, metavar="CONVERSATIONS_JSONL", help="PRISM conversations.jsonl")
    prism.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output directory (must be empty or absent)")
    prism.add_argument("--survey", type=Path, metavar="SURVEY_JSONL", help="PRISM survey.jsonl (participants)")
    prism.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv",
                       help="file format (default: csv)")
    prism.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    return parser


def add_group_options(parser: argparse.ArgumentParser) -> None:
    """``--by`` and ``--weights``, shared with ``simlab report``."""
    parser.add_argument("--by", type=_attribute_list, default=(), metavar="ATTR[,ATTR…]",
                        help="participant attributes (columns of the participants table, e.g. PRISM's survey fields "
                        "age,gender,location_special_region) to break every sim-vs-human comparison down by: "
                        "analyses.subgroups in the result")
    parser.add_argument("--weights", type=Path, metavar="MARGINS_CSV",
                        help="target-population margins (CSV: attribute,level,share; shares sum to 1 per attribute): "
                        "the participants are raked to them and every analysis runs weighted; the result keeps "
                        "the unweighted analyses in analyses_unweighted")


def _attribute_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of attribute names, none empty")
    return names


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _import(args) if args.command == "import" else _analyze(args))


def _import(args: argparse.Namespace) -> int:
    from simlab.fidelity import import_dialogue_eval, import_prism, write_tables

    _check_out_dir(args.out_dir, args.force)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.dataset == "dialogue-eval":
            tables = import_dialogue_eval(args.src)
        else:
            tables = import_prism(args.conversations, args.survey)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    out = write_tables(tables, args.out_dir, args.format, overwrite=args.force)
    j = tables.judgements
    print(f"wrote {out}: {j['participant_id'].nunique()} participants, {j['conversation_id'].nunique()} "
          f"conversations, {len(j)} judgements, {0 if tables.turns is None else len(tables.turns)} turns")
    return 0


def _check_out_dir(out: Path, force: bool) -> None:
    # checked before the (slow) import so a mistake costs nothing
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise InputError("exists and is not an empty directory (use --force to replace it)", file=out)


def _analyze(args: argparse.Namespace) -> int:
    from simlab.fidelity import compare, load_human, load_tables
    from simlab.fidelity.registry import ANALYSES

    ANALYSES.names()  # a bad registration or entry point: exit 2 before any data is read
    if args.n_boot < 0:
        raise InputError("must be >= 0", field="--n-boot")
    if args.out.is_dir():
        raise InputError("is a directory; --out takes a file name", file=args.out)
    human = load_human(args.human)
    parts = [human]
    if args.run is not None:
        from simlab.store import load_run

        if not args.run.exists():
            raise InputError("no such run directory", file=args.run)
        parts.insert(0, load_run(args.run))
    elif args.sim is not None:
        sim = load_tables(args.sim, default_source=None)
        if "human" in sim.sources:
            raise InputError("--sim data has rows with source 'human'; simulated data must name its source",
                             file=args.sim, field="source")
        parts.insert(0, sim)
    if set(human.sources) != {"human"}:
        raise InputError(f"--human data has sources {human.sources}; expected only 'human'", file=args.human,
                         field="source")
    from simlab.fidelity.stats import show_progress

    shown = sys.stderr.isatty() if args.progress is None else args.progress
    options = {"by": args.by, "margins": args.weights}
    with show_progress(shown):
        if len(parts) > 1:
            result = compare(*parts, n_boot=args.n_boot, seed=args.seed, topics=args.topics, **options)
        else:
            from simlab.fidelity import analyze

            result = analyze(human, n_boot=args.n_boot, seed=args.seed, topics=args.topics, **options)
    write_text_atomic(args.out, result.model_dump_json(indent=2))
    print(f"wrote {args.out} (sources: {', '.join(result.sources)}; {args.n_boot} bootstrap replicates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
