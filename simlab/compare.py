"""``simlab compare``: which simulator is most human? Every simulated source of the given runs (and
of simulated data on disk) side by side against the same human data, on one fidelity index.

    simlab compare --human DATA RUN [RUN ...] [--sim NAME=PATH ...] [--out FILE] [--report FILE]

Each simulated source of each run (``sim_dynamic:<variant>``, ``sim_dynamic``, the no-persona
control, …) is one source; ``--sim NAME=PATH`` adds simulated data in the human-data format as the
source NAME. Bad input (a missing path, two sources with one name, conversation ids shared between
inputs, no human data) exits with status 2 naming the argument, file or field; nothing is written.

>>> from simlab.compare import parse_sim
>>> parse_sim("gpt-4o=exports/gpt4o")
('gpt-4o', PosixPath('exports/gpt4o'))
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simlab.errors import InputError, exit_status
from simlab.fidelity.leaderboard_result import HUMANS_ROW
from simlab.schema import HUMAN, source_name_error
from simlab.tables import Tables

if TYPE_CHECKING:
    from simlab.fidelity.analyses.topics import Embedding
    from simlab.fidelity.leaderboard_result import Leaderboard

__all__ = ["compare_simulators", "format_leaderboard", "load_sources", "main", "parse_sim"]

PathLike = str | os.PathLike[str]


def parse_sim(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--sim`` as (name, path); the name must be a valid simulated source's name."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise InputError(f"{value!r} is not NAME=PATH (e.g. --sim gpt-4o=exports/gpt4o)", field="--sim")
    _check_sim_name(name)
    return name, Path(path)


def _check_sim_name(name: str) -> None:
    if name.strip().lower() in (HUMAN, HUMANS_ROW):
        raise InputError(f"{name!r} cannot name simulated data: 'human' is the human data and 'humans' the "
                         "human split-half row", field="--sim")
    if (why := source_name_error(name)) is not None:
        raise InputError(why, field="--sim")


# ---------------------------------------------------------------------------------------------- loading


def _run_human(run: Path, meta: Mapping[str, Any]) -> str | None:
    config = meta.get("config")
    human = config.get("human") if isinstance(config, Mapping) else None
    return str(human) if human else None


def _simulated_only(tables: Tables) -> Tables:
    """``tables`` without its human-source rows (a run may hold the human data it was compared with)."""
    conv = tables.conversations
    human_ids = set(conv.loc[conv["source"] == HUMAN, "conversation_id"]) if conv is not None else set()
    out: dict[str, Any] = {}
    for name, frame in tables.items():
        if "source" in frame.columns:
            out[name] = frame[frame["source"] != HUMAN].reset_index(drop=True)
        elif human_ids and "conversation_id" in frame.columns:
            out[name] = frame[~frame["conversation_id"].isin(human_ids)].reset_index(drop=True)
    return replace(tables, **out)


def _renamed(tables: Tables, name: str) -> Tables:
    return replace(tables, **{t: frame.assign(source=name) for t, frame in tables.items() if "source" in frame.columns})


def _load_sim(name: str, data: PathLike | Tables, human_path: Path | None) -> Tables:
    """Simulated data in the human-data format as the source ``name``; refuses data that say they are human."""
    from simlab.fidelity import load_tables, normalise

    label = f"--sim {name}"
    if isinstance(data, Tables):
        tables = normalise(data, origin=label, default_source=name)
        where: str = label
    else:
        path = Path(data)
        if not path.exists():
            raise InputError(f"{label}: no such file or directory", file=path, field="--sim")
        if (path / "store.sqlite").is_file():
            raise InputError(f"{label}: is a run directory; give a run as RUN (its sources keep their names), "
                             "--sim takes data in the human-data format", file=path, field="--sim")
        if human_path is not None and path.resolve() == human_path.resolve():
            raise InputError(f"{label} is the --human data: simulated data must come from a simulator",
                             file=path, field="--sim")
        # files without a source column are this NAME's; a source column keeps its word until checked
        tables = load_tables(path, default_source=name)
        where = str(path)
    sources = tables.sources
    if HUMAN in sources:
        raise InputError(f"{label}: its rows say source 'human': simulated data must not be human data (pass "
                         "human data with --human; set the source column of simulated data to its simulator)",
                         file=where, field="source")
    if len(sources) > 1:
        raise InputError(f"{label}: holds several sources ({', '.join(sources)}); --sim takes one simulated "
                         "source's data (split it, or compare the run itself)", file=where, field="source")
    return _renamed(tables, name)


def _check_ids(parts: Sequence[tuple[str, Tables]]) -> None:
    """Conversation ids must not repeat across inputs: the same id in two would pair unrelated data."""
    seen: dict[str, str] = {}
    for label, tables in parts:
        assert tables.conversations is not None  # normalise() makes one
        for cid in tables.conversations["conversation_id"].astype(str):
            if cid in seen and seen[cid] != label:
                raise InputError(f"conversation {cid!r} is in both {seen[cid]} and {label}: conversation ids must be "
                                 "unique across inputs (the same data given twice?)", field="conversation_id")
            seen.setdefault(cid, label)


def load_sources(*, human: PathLike | Tables | None = None, runs: Sequence[PathLike] = (),
                 sims: Mapping[str, PathLike | Tables] | None = None) -> Tables:
    """The human data and every simulated source of ``runs`` and ``sims`` as one normalised ``Tables``.

    ``runs``: run directories; each simulated source of a run is a source (its ``human`` rows are
    not). ``sims``: source name → simulated data in the human-data format (a path, or ``Tables``),
    each loaded as that one source. ``human``: human data; None takes the one every run's config
    names. Raises ``InputError`` for two sources with one name, conversation ids shared between
    inputs, no human data or no simulated source.

    >>> tables = load_sources(human="data/prism", runs=["runs/variants"], sims={"gpt-4o": "exports/gpt4o"})  # doctest: +SKIP
    >>> tables.sources  # doctest: +SKIP
    ['gpt-4o', 'human', 'sim_dynamic:none', 'sim_dynamic:profile']
    """
    from simlab.fidelity import load_human, normalise
    from simlab.store import load_run, run_meta
    from simlab.tables import concat

    sims = dict(sims or {})
    for name in sims:
        _check_sim_name(name)
    run_paths = [Path(r) for r in runs]
    parts: list[tuple[str, Tables]] = []
    owner: dict[str, str] = {}  # source -> the input that holds it
    named_human: dict[str, str] = {}  # run -> the human data its config names

    def claim(source: str, label: str) -> None:
        if source in owner:
            raise InputError(f"two sources named {source!r}: in {owner[source]} and in {label} (give --sim another "
                             "NAME, or compare variants of one run)", field="source")
        owner[source] = label

    for run in run_paths:
        label = f"run {run}"
        if not run.is_dir() or not (run / "store.sqlite").is_file():
            raise InputError("not a run directory (no store.sqlite here)", file=run, field="RUN")
        meta = run_meta(run)
        tables = load_run(run)
        conv = tables.conversations
        sources = sorted(set(conv["source"].dropna()) - {HUMAN}) if conv is not None and len(conv) else []
        if not sources:
            raise InputError("the run holds no completed simulated session to compare", file=run, field="RUN")
        for source in sources:
            claim(source, label)
        if (h := _run_human(run, meta)) is not None:
            named_human[str(run)] = h
        parts.append((label, normalise(_simulated_only(tables), origin=str(run), default_source=None)))

    human_path: Path | None = None
    if human is None:
        if not run_paths:
            raise InputError("no human data: pass --human DATA", field="--human")
        missing = [str(r) for r in run_paths if str(r) not in named_human]
        if missing:
            raise InputError(f"no human data: pass --human DATA (the config of run {missing[0]} names none)",
                             file=missing[0], field="--human")
        named = {Path(h) for h in named_human.values()}
        if len(named) > 1:
            listing = "; ".join(f"run {r}: {h}" for r, h in named_human.items())
            raise InputError(f"the runs' configs name different human data ({listing}): pass --human DATA",
                             field="--human")
        human_path = named.pop()
        if not human_path.exists():
            raise InputError(f"the human data run {run_paths[0]}'s config names is not here (pass --human DATA)",
                             file=human_path, field="config.human")
        human = human_path
    if isinstance(human, Tables):
        human_tables = normalise(human, origin="--human", default_source=HUMAN)
        human_label = "--human"
    else:
        human_path = Path(human)
        human_label = f"--human {human_path}"
        if not human_path.exists():
            raise InputError("no such file or directory", file=human_path, field="--human")
        human_tables = load_human(human_path)
    if set(human_tables.sources) != {HUMAN}:
        raise InputError(f"the human data have sources {human_tables.sources}; expected only 'human'",
                         file=human_path or "--human", field="source")

    for name, data in sims.items():
        label = f"--sim {name}" + ("" if isinstance(data, Tables) else f"={data}")
        claim(name, label)
        parts.append((label, _load_sim(name, data, human_path)))
    if not owner:
        raise InputError("no simulated source to compare: give at least one RUN or --sim NAME=PATH", field="RUN")
    parts.insert(0, (human_label, human_tables))
    _check_ids(parts)
    return concat(*(t for _, t in parts))


def _excluded_dimensions(runs: Sequence[PathLike]) -> set[str]:
    """Autograde dimensions any run's stored reliability flags: kept out of the trait comparisons."""
    if not runs:
        return set()
    from simlab.autograder import unreliable_dimensions
    from simlab.store import run_meta

    out: set[str] = set()
    for run in runs:
        out |= unreliable_dimensions(run_meta(Path(run)))
    return out


def compare_simulators(*, human: PathLike | Tables | None = None, runs: Sequence[PathLike] = (),
                       sims: Mapping[str, PathLike | Tables] | None = None, n_boot: int = 200, seed: int = 0,
                       details: bool = True, topics: Embedding | None = "tfidf",
                       exclude_dimensions: Collection[str] | None = None) -> Leaderboard:
    """The leaderboard of every simulated source of ``runs`` and ``sims`` against ``human`` (see
    ``load_sources``): each source's fidelity index (0–100) and components with participant-bootstrap
    CIs, the humans' split-half row, and the paired tests between sources.

    ``exclude_dimensions``: autograde dimensions left out (default: those the runs' stored
    reliability flags as unreliable).

    >>> lb = compare_simulators(human="data/prism", runs=["runs/variants"], n_boot=500)  # doctest: +SKIP
    >>> [(row.source, round(row.index.value, 1)) for row in lb.leaderboard]  # doctest: +SKIP
    [('humans', 100.0), ('sim_dynamic:profile', 71.5), ('sim_dynamic:none', 52.3)]
    """
    if n_boot < 0:
        raise InputError("must be >= 0", field="n_boot")
    tables = load_sources(human=human, runs=runs, sims=sims)
    from simlab.fidelity.fidelity_index import leaderboard  # the statistics, once the inputs are known good
    excluded = _excluded_dimensions(runs) if exclude_dimensions is None else set(exclude_dimensions)
    result: Leaderboard = leaderboard(tables, n_boot=n_boot, seed=seed, details=details, topics=topics,
                                      exclude_dimensions=excluded)
    return result


# ---------------------------------------------------------------------------------------------- output


def _num(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.1f}"


def format_leaderboard(lb: Leaderboard) -> str:
    """The leaderboard as a short plain-text table (source, index [95% CI], participants) and the
    pairwise verdicts on the index in a line or two: what ``simlab compare`` prints."""
    width = max([len("source"), *(len(r.source) for r in lb.leaderboard)])
    lines = [f"{'source':<{width}}  {'index':>6}  {'95% CI':<15}  {'participants':>12}"]
    for r in lb.leaderboard:
        ci = f"[{_num(r.index.ci_low)}, {_num(r.index.ci_high)}]"
        note = "  (humans vs humans: the ceiling)" if r.kind == "humans" else ""
        lines.append(f"{r.source:<{width}}  {_num(r.index.value):>6}  {ci:<15}  {r.n_participants:>12}{note}")
    tests = [t for t in lb.pairwise if t.measure == "index"]
    if tests:
        closer = [t for t in tests if t.closer is not None]
        said = "; ".join(f"{t.closer} closer than {t.b if t.closer == t.a else t.a} (adjusted p {t.p_adjusted:.3g})"
                         for t in closer) or "no pair differs"
        rest = len(tests) - len(closer)
        tail = f"; {rest} other pair(s) not different at 5%" if closer and rest else ""
        lines.append(f"pairwise on the index ({lb.correction or 'no correction'}): {said}{tail}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command

EXAMPLES = """\
examples:
  # every variant of a run against the human data its config names
  simlab compare runs/variants-1a2b3c4d5e --out leaderboard.json --report leaderboard.html

  # two runs and an exported simulator, against given human data
  simlab compare --human data/prism runs/a runs/b --sim gpt-4o=exports/gpt4o --n-boot 500

The fidelity index and the JSON are described in docs/fidelity.md ("Comparing simulators").
exit status: 0 done, 2 bad input (the message names the argument, file or field; nothing is written).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simlab compare",
        description="Put every simulated source of the given runs (and of --sim data) side by side against "
        "the same human data: each fidelity comparison with its CI, one fidelity index (0-100) per source with "
        "a participant-bootstrap CI, the humans' split-half row as the ceiling, and paired tests between "
        "sources. Prints the leaderboard; --out writes it as JSON, --report as a self-contained HTML report.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                        help="run directories (runs/<run_id>); each simulated source in them is a source")
    parser.add_argument("--human", type=Path, metavar="DATA",
                        help="human data (directory of tables or a judgements file); default: the human data "
                        "every RUN's config names")
    parser.add_argument("--sim", action="append", default=[], metavar="NAME=PATH",
                        help="simulated data in the human-data format, compared as the source NAME (repeatable)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the leaderboard as JSON")
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the comparison report (HTML)")
    parser.add_argument("--n-boot", type=int, default=200, metavar="N",
                        help="participant-bootstrap replicates per CI and test (default: 200)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the bootstrap and the human split "
                        "(default: 0)")
    parser.add_argument("--no-details", dest="details", action="store_false",
                        help="only the index and its components (skip each source's full comparisons)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    if args.n_boot < 0:
        raise InputError("must be >= 0", field="--n-boot")
    for flag, target in (("--out", args.out), ("--report", args.report)):
        if target is not None and target.is_dir():
            raise InputError(f"is a directory; {flag} takes a file name", file=target, field=flag)
    sims: dict[str, Path] = {}
    for value in args.sim:
        name, path = parse_sim(value)
        if name in sims:
            raise InputError(f"two --sim named {name!r} ({sims[name]} and {path})", field="--sim")
        sims[name] = path
    lb = compare_simulators(human=args.human, runs=args.runs, sims=sims, n_boot=args.n_boot, seed=args.seed,
                            details=args.details)
    from simlab._files import write_text_atomic

    # everything is rendered before anything is written: a failure leaves no half of the outputs
    json_text = lb.model_dump_json(indent=2) if args.out is not None else None
    html_text = None
    if args.report is not None:
        from simlab.report.leaderboard import render_leaderboard_html

        html_text = render_leaderboard_html(lb)
    print(format_leaderboard(lb))
    for target, text in ((args.out, json_text), (args.report, html_text)):
        if target is not None and text is not None:
            write_text_atomic(target, text)
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
