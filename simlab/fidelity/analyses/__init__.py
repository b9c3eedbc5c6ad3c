"""The fidelity analyses (PROTOCOL.md §5), each callable alone on a ``Tables``: six comparisons
(``hierarchy``, ``agreement``, ``topics``, ``position``, ``dynamics``, ``traits``), ``user_traits``
when the autograder scored the users' messages, and the descriptive generation-error table
(``gen_errors``), and ``ppi`` (the humans' hierarchy and position effect sharpened by simulated
participants). ``analyze_all`` runs every analysis registered in
``simlab.fidelity.registry.ANALYSES`` (these, then any a package or module adds).

>>> from simlab.fidelity.synthetic import make_synthetic
>>> result = analyze_all(make_synthetic(30, seed=1), n_boot=20)
>>> sorted(result.analyses)
['agreement', 'distributions', 'dynamics', 'gen_errors', 'hierarchy', 'position', 'ppi', 'topics', 'traits', 'user_text']
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from simlab.fidelity.analyses._prep import participants_of
from simlab.fidelity.analyses.agreement import agreement
from simlab.fidelity.analyses.dynamics import dynamics
from simlab.fidelity.analyses.gen_errors import gen_errors
from simlab.fidelity.analyses.hierarchy import hierarchy
from simlab.fidelity.analyses.position import position
from simlab.fidelity.analyses.ppi import ppi
from simlab.fidelity.analyses.topics import Embedding, topics
from simlab.fidelity.analyses.traits import traits
from simlab.fidelity.raking import UNWEIGHTED_ANALYSES
from simlab.fidelity.registry import ANALYSES, Analysis, AnalysisContext
from simlab.fidelity.result import FidelityResult, SourceStatus
from simlab.tables import Tables

__all__ = ["agreement", "analysis_context", "analyze_all", "dynamics", "gen_errors", "hierarchy", "position", "ppi", "topics", "traits"]


def analyze_all(
    tables: Tables,
    *,
    n_boot: int = 200,
    seed: int = 0,
    topics: Embedding | None = "tfidf",  # noqa: F811 - parameter named as in the issue
    clusters_path: str | Path | None = None,
    exclude_dimensions: Collection[str] = (),
    progress: bool | None = None,
    by: Collection[str] = (),
    weights: Mapping[str, float] | None = None,
    only: Collection[str] | None = None,
) -> FidelityResult:
    """Every registered analysis (``simlab.fidelity.registry.ANALYSES``) per source, each simulated
    source compared with ``human``.

    All analyses share one participant bootstrap (same seed, same draws), so paired sources
    are resampled together. ``topics=None`` skips the topic analysis. An analysis that raises
    unexpectedly is recorded as ``failed`` with the error, never sinking the others.
    ``exclude_dimensions``: autograde dimensions below the reliability threshold (left out of
    the trait and user-trait analyses). ``progress``: say on stderr which analysis runs and how far
    its bootstrap draws are (tqdm bars); None: as the enclosing ``stats.show_progress`` says (off
    by default). ``by``: participant attributes for the subgroup analysis (``analyses.subgroups``).
    ``weights``: raking weight per participant_id (``simlab.fidelity.raking``): every analysis runs
    weighted (its point estimate and the shared participant bootstrap). ``only``: run just these
    registered analyses.
    """
    from simlab.fidelity.stats import progress_shown, reason_for, show_progress

    analyses = [a for a in ANALYSES if only is None or a.name in only]  # registration problems surface here
    context = analysis_context(tables, n_boot=n_boot, seed=seed, topics=topics, clusters_path=clusters_path,
                               exclude_dimensions=exclude_dimensions, by=by, weights=weights)
    if only is not None:  # the subgroups re-run the same analyses
        context = replace(context, subgroup_analyses=tuple(only))
    plain = context
    if weights is not None:  # the analyses the weights cannot reach run unweighted (raking.NOT_WEIGHTED says so)
        plain = replace(context, participants=participants_of(tables, n_boot, seed), weights=None)
    results: dict[str, SourceStatus] = {}
    show = progress_shown() if progress is None else progress
    with show_progress(show):
        runs = []
        for a in analyses:
            try:
                if a.applies(tables, context):
                    runs.append(a)
            except Exception as exc:  # noqa: BLE001 - as below: recorded, the others go on
                results[a.name] = a.failed(f"deciding whether it applies: {reason_for(exc)}")
        for a in _steps(runs, show):
            try:
                out = a.run(tables, plain if a.name in UNWEIGHTED_ANALYSES else context)
                if not isinstance(out, a.result):
                    raise TypeError(f"returned {type(out).__name__}, not its result model {a.result.__name__}")
                results[a.name] = out
            except Exception as exc:  # noqa: BLE001 - one analysis failing must not lose the others
                results[a.name] = a.failed(reason_for(exc))
    return FidelityResult(sources=tables.sources, n_boot=n_boot, seed=seed, analyses=dict(sorted(results.items())))


def analysis_context(
    tables: Tables,
    *,
    n_boot: int = 200,
    seed: int = 0,
    topics: Embedding | None = "tfidf",  # noqa: F811 - as in analyze_all
    clusters_path: str | Path | None = None,
    exclude_dimensions: Collection[str] = (),
    by: Collection[str] = (),
    weights: Mapping[str, float] | None = None,
) -> AnalysisContext:
    """What ``analyze_all`` gives every analysis of ``tables``: the participant bootstrap drawn from
    ``seed`` and the options. For running one registered analysis alone (``analysis.run(tables,
    analysis_context(tables))``, e.g. in its calibration) with the numbers ``analyze_all`` gets."""
    return AnalysisContext(
        participants=participants_of(tables, n_boot, seed, weights), n_boot=n_boot, seed=seed, topics=topics,
        clusters_path=None if clusters_path is None else Path(clusters_path),
        exclude_dimensions=frozenset(exclude_dimensions), by=tuple(by), weights=weights,
    )


def _steps(analyses: list[Analysis], show: bool) -> Iterator[Analysis]:
    """The analyses in turn, with a bar on stderr naming the one that runs when ``show``."""
    if not show:
        yield from analyses
        return
    from tqdm import tqdm

    with tqdm(total=len(analyses), desc="fidelity", unit="analysis", file=sys.stderr, dynamic_ncols=True) as bar:
        for a in analyses:
            bar.set_postfix_str(a.name, refresh=True)
            yield a
            bar.update()

