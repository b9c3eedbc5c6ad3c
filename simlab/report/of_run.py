"""The report of a run: load its store, run the fidelity analyses (against human data when
given), and render them with ``simlab.report.html``. This is pipeline work; ``html`` only
renders the results it is given. A run with several simulator variants and human data also gets
their leaderboard (``simlab.fidelity.fidelity_index``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simlab.errors import InputError
from simlab.fidelity.leaderboard_result import Leaderboard
from simlab.fidelity.result import FidelityResult
from simlab.report.html import write_html
from simlab.tables import Tables

__all__ = ["variant_sources", "write_run_report"]


def variant_sources(sources: list[str]) -> list[str]:
    """The Sim-Dynamic simulator variants among ``sources`` (``sim_dynamic`` or ``sim_dynamic:<id>``;
    not the no-persona controls): a run with two or more gets their leaderboard in its report.

    >>> variant_sources(["human", "sim_dynamic:a", "sim_dynamic_no_persona:a", "sim_dynamic:b"])
    ['sim_dynamic:a', 'sim_dynamic:b']
    """
    return [s for s in sources if s == "sim_dynamic" or s.startswith("sim_dynamic:")]


def write_run_report(run_dir: str | os.PathLike[str], *, human: str | None = None, out: str | None = None,
                     n_boot: int = 200, by: Sequence[str] = (), margins: str | os.PathLike[str] | None = None) -> Path:
    """Analyse a run (against ``human`` data when given) and write ``run_dir/report.html``.

    Without human data the report covers the run alone (``simlab.fidelity.analyze``). ``by``: participant
    attributes for the subgroup section; ``margins``: a margins CSV to weight every analysis by
    (``simlab.fidelity.raking``); both as ``simlab.fidelity.compare`` takes them.
    """
    from simlab.autograder import unreliable_dimensions
    from simlab.fidelity import analyze, compare, load_human, normalise
    from simlab.store import load_run, read_counts, run_meta
    from simlab.tables import concat

    if n_boot < 0:
        raise InputError("must be >= 0", field="--n-boot")
    run_path = Path(run_dir)
    if not (run_path / "store.sqlite").is_file() and not run_path.is_file():
        raise InputError(f"no run store found (expected {run_path / 'store.sqlite'})", file=run_path)
    run = load_run(run_path)
    meta: dict[str, Any] = run_meta(run_path)
    meta["run_id"] = run_path.name if run_path.is_dir() else run_path.parent.name
    meta["counts"] = read_counts(run_path).model_dump()
    seed = int(meta.get("seed") or 0)
    excluded = unreliable_dimensions(meta)  # below the ICC threshold: kept out of trait analyses
    board: Leaderboard | None = None
    if human:
        human_tables = load_human(human)
        meta["human"] = str(human)
        result = compare(run, human_tables, n_boot=n_boot, seed=seed, exclude_dimensions=excluded, by=by,
                         margins=None if margins is None else Path(margins))
        tables = concat(normalise(run, origin=str(run_path), default_source=None),
                        normalise(human_tables, origin=str(human)))
        if len(variant_sources(tables.sources)) >= 2:
            from simlab.fidelity.fidelity_index import leaderboard

            try:
                board = leaderboard(tables, n_boot=n_boot, seed=seed, details=False, exclude_dimensions=excluded)
            except InputError as exc:  # e.g. too few participants per variant yet: the rest of the report stands
                meta["leaderboard_note"] = f"Leaderboard not available: {exc.message}"
    else:
        if by or margins is not None:
            raise InputError("subgroups and weights compare with human data: give --human too", field="--by/--weights")
        tables = normalise(run, origin=str(run_path), default_source=None) if len(run.judgements) else run
        result = _run_only(tables, n_boot=n_boot, seed=seed, meta=meta, analyze=analyze, error=InputError,
                           excluded=excluded, run_dir=run_path if run_path.is_dir() else run_path.parent)
    target = Path(out) if out else (run_path if run_path.is_dir() else run_path.parent) / "report.html"
    return write_html(result, target, meta=meta, tables=tables, leaderboard=board)


def _run_only(tables: Tables, *, n_boot: int, seed: int, meta: dict[str, Any], analyze: Any,
              error: type[Exception], excluded: frozenset[str] | set[str] = frozenset(),
              run_dir: Path = Path("RUN_DIR")) -> FidelityResult:
    """Analyses of a run without human data: every source side by side (e.g. the simulator and its
    no-persona control), no comparison with people; the note says how to add people (``run_dir`` in
    the command it shows)."""
    sources = tables.sources
    if not sources:
        meta["note"] = "The run has no completed sessions yet: nothing to analyse."
        return FidelityResult(sources=[], n_boot=n_boot, seed=seed, analyses={})
    meta["note"] = ("No human data configured: this report describes the simulated run alone"
                    + (f" ({', '.join(sources)} side by side)." if len(sources) > 1 else ".")
                    + " The sections that compare with people (agreement, the text of user turns, distributions, "
                      f"PPI) need human answers: python -m simlab.report --run {run_dir} --human DATA "
                      "(docs/fidelity.md describes DATA's format).")
    try:
        result: FidelityResult = analyze(tables, n_boot=n_boot, seed=seed, exclude_dimensions=excluded)
        return result
    except error as exc:
        meta["note"] += f" Analyses could not run: {exc}"
        return FidelityResult(sources=sources, n_boot=n_boot, seed=seed, analyses={})

