"""The fidelity analyses (PROTOCOL.md §5), each callable alone on a ``Tables``: six comparisons
(``hierarchy``, ``agreement``, ``topics``, ``position``, ``dynamics``, ``traits``), ``user_traits``
when the autograder scored the users' messages, and the descriptive generation-error table
(``gen_errors``).

>>> from simlab.fidelity.synthetic import make_synthetic
>>> result = analyze_all(make_synthetic(30, seed=1), n_boot=20)
>>> sorted(result.analyses)
['agreement', 'dynamics', 'gen_errors', 'hierarchy', 'position', 'topics', 'traits']
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from simlab.fidelity.analyses._prep import participants_of
from simlab.fidelity.analyses.agreement import agreement
from simlab.fidelity.analyses.dynamics import dynamics
from simlab.fidelity.analyses.gen_errors import gen_errors
from simlab.fidelity.analyses.hierarchy import hierarchy
from simlab.fidelity.analyses.position import position
from simlab.fidelity.analyses.topics import Embedding, topics
from simlab.fidelity.analyses.traits import traits
from simlab.fidelity.result import AnalysisResult, FidelityResult
from simlab.tables import Tables

__all__ = ["agreement", "analyze_all", "dynamics", "gen_errors", "hierarchy", "position", "topics", "traits"]


def analyze_all(
    tables: Tables,
    *,
    n_boot: int = 200,
    seed: int = 0,
    topics: Embedding | None = "tfidf",  # noqa: F811 - parameter named as in the issue
    clusters_path: str | Path | None = None,
    exclude_dimensions: Collection[str] = (),
    progress: bool | None = None,
) -> FidelityResult:
    """Every analysis per source, each simulated source compared with ``human``.

    All analyses share one participant bootstrap (same seed, same draws), so paired sources
    are resampled together. ``topics=None`` skips the topic analysis. An analysis that raises
    unexpectedly is recorded as ``failed`` with the error, never sinking the others.
    ``exclude_dimensions``: autograde dimensions below the reliability threshold (left out of
    the trait and user-trait analyses). ``progress``: say on stderr which analysis runs and how far
    its bootstrap draws are (tqdm bars); None: as the enclosing ``stats.show_progress`` says (off
    by default).
    """
    participants = participants_of(tables, n_boot, seed)
    runs: dict[str, Callable[[], AnalysisResult]] = {
        "hierarchy": lambda: hierarchy(tables, participants=participants),
        "agreement": lambda: agreement(tables, seed=seed, participants=participants),
        "position": lambda: position(tables, participants=participants),
        "dynamics": lambda: dynamics(tables, participants=participants),
        "traits": lambda: traits(tables, participants=participants, exclude=exclude_dimensions),
        "gen_errors": lambda: gen_errors(tables),
    }
    g = tables.autograde
    if g is not None and "unit_kind" in g.columns and (g["unit_kind"] == "user").any():
        from simlab.fidelity.analyses.user_traits import user_traits

        reliable = None
        if exclude_dimensions:
            reliable = set(g["dimension"].unique()) - set(exclude_dimensions)
        runs["user_traits"] = lambda: user_traits(tables, n_boot=n_boot, seed=seed, reliable=reliable)
    if topics is not None:
        runs["topics"] = lambda: _topics(tables, seed=seed, topics=topics, clusters_path=clusters_path, participants=participants)
    results: dict[str, AnalysisResult] = {}
    from simlab.fidelity import result as r
    from simlab.fidelity.stats import progress_shown, reason_for, show_progress

    fallback = {"hierarchy": r.HierarchyResult, "agreement": r.AgreementResult, "position": r.PositionResult,
                "dynamics": r.DynamicsResult, "traits": r.TraitsResult, "topics": r.TopicsResult,
                "user_traits": r.UserTraitsResult, "gen_errors": r.GenErrorsResult}
    show = progress_shown() if progress is None else progress
    with show_progress(show):
        steps = _steps(list(runs), show)
        for name in steps:
            try:
                results[name] = runs[name]()
            except Exception as exc:  # noqa: BLE001 - one analysis failing must not lose the others
                results[name] = fallback[name](status="failed", reason=reason_for(exc))
    return FidelityResult(sources=tables.sources, n_boot=n_boot, seed=seed, analyses=dict(sorted(results.items())))


def _steps(names: list[str], show: bool) -> Iterator[str]:
    """The analyses' names in turn, with a bar on stderr naming the one that runs when ``show``."""
    if not show:
        yield from names
        return
    from tqdm import tqdm

    with tqdm(total=len(names), desc="fidelity", unit="analysis", file=sys.stderr, dynamic_ncols=True) as bar:
        for name in names:
            bar.set_postfix_str(name, refresh=True)
            yield name
            bar.update()


_topics = topics
