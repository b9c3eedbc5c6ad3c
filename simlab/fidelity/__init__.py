"""Fidelity: how far simulated users are from real people, on the same tables.

Data in (``load_human``, the importers), one call to compare a simulated run with
human data (``compare``), and the analyses behind it (``simlab.fidelity.analyses``).

>>> import simlab
>>> from simlab.fidelity import compare, load_human
>>> result = compare(simlab.load_run("runs/demo"), load_human("data/human"))  # doctest: +SKIP
>>> print(result.model_dump_json(indent=2))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simlab.errors import InputError
from simlab.fidelity.importers import import_dialogue_eval, import_prism
from simlab.fidelity.io import load_human, load_tables, normalise, write_tables
from simlab.tables import Tables, concat

if TYPE_CHECKING:
    from simlab.fidelity.analyses import analysis_context
    from simlab.fidelity.analyses.topics import Embedding
    from simlab.fidelity.fidelity_index import leaderboard
    from simlab.fidelity.result import FidelityResult

__all__ = [
    "FidelityResult",
    "analysis_context",
    "analyze",
    "analyze_all",
    "compare",
    "import_dialogue_eval",
    "import_prism",
    "leaderboard",
    "load_human",
    "load_tables",
    "normalise",
    "prepare_options",
    "write_tables",
]

# The analyses are imported on first use (they pull in statsmodels and scikit-learn).
_LAZY = {"FidelityResult": "simlab.fidelity.result", "analysis_context": "simlab.fidelity.analyses",
         "analyze_all": "simlab.fidelity.analyses", "leaderboard": "simlab.fidelity.fidelity_index"}

def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'simlab.fidelity' has no attribute {name!r}")


def compare(*tables: Tables, n_boot: int = 200, seed: int = 0, topics: Embedding | None = "tfidf",
            exclude_dimensions: Collection[str] = (), by: Sequence[str] = (),
            margins: str | Path | Mapping[str, Mapping[str, float]] | None = None) -> FidelityResult:
    """Fit every analysis per source and compare each simulated source with ``human``.

    ``tables`` are e.g. ``simlab.load_run(run_dir)`` and ``load_human(path)``; each
    must say its ``source``, at least one must hold human data, and conversation ids
    must not repeat across them. ``exclude_dimensions``: autograde dimensions below the
    reliability threshold (``simlab.autograder.unreliable_dimensions``). ``by``: participant
    attributes to break every comparison down by (``analyses.subgroups``). ``margins``: a margins CSV
    (or attribute → level → share) to rake the participants to: the analyses run weighted, and again
    unweighted into ``analyses_unweighted`` (``simlab.fidelity.raking``).
    """
    if not tables:
        raise TypeError("compare needs at least one Tables")
    parts = [normalise(t, origin=f"tables #{i + 1}", default_source=None) for i, t in enumerate(tables)]
    seen: dict[str, int] = {}
    for i, part in enumerate(parts, start=1):
        assert part.conversations is not None  # normalise() makes one
        for cid in part.conversations["conversation_id"]:
            if cid in seen and seen[cid] != i:
                raise InputError(
                    f"conversation {cid!r} appears in tables #{seen[cid]} and #{i}: ids must be unique across sources",
                    field="conversation_id",
                )
            seen[cid] = i
    merged = concat(*parts)
    if "human" not in merged.sources:
        raise InputError(f"no human data to compare with (sources: {', '.join(merged.sources) or 'none'})",
                         field="source")
    return _analyze_all(merged, n_boot=n_boot, seed=seed, topics=topics, exclude_dimensions=exclude_dimensions,
                        by=by, margins=margins)


def analyze(tables: Tables, *, n_boot: int = 200, seed: int = 0, topics: Embedding | None = "tfidf",
            exclude_dimensions: Collection[str] = (), by: Sequence[str] = (),
            margins: str | Path | Mapping[str, Mapping[str, float]] | None = None) -> FidelityResult:
    """Fit every analysis on each source of ``tables`` without comparing them: human data alone, or
    simulated sources side by side (a run and its no-persona control); ``compare`` compares
    simulated sources with human data."""
    part = normalise(tables, origin="tables", default_source=None)
    if not part.sources:
        raise InputError("no source to analyse", field="source")
    if "human" in part.sources and len(part.sources) > 1:
        raise InputError(f"analyze fits sources side by side without comparing (got {part.sources}); "
                         "use compare for human data with simulated", field="source")
    return _analyze_all(part, n_boot=n_boot, seed=seed, topics=topics, exclude_dimensions=exclude_dimensions,
                        by=by, margins=margins)


def prepare_options(tables: Tables, by: Sequence[str] = (),
                    margins: str | Path | Mapping[str, Mapping[str, float]] | None = None,
                    ) -> tuple[dict[str, float] | None, Any]:
    """Check ``by`` and ``margins`` against ``tables`` before any analysis runs (``InputError`` naming the
    file, row and field) and rake: (weight per participant_id, ``WeightsSummary``), or (None, None)."""
    from simlab.fidelity.attributes import check_attributes
    from simlab.fidelity.raking import NOT_WEIGHTED, participant_weights, read_margins

    check_attributes(tables, by)
    if margins is None:
        return None, None
    if isinstance(margins, str | Path):
        shares, where = read_margins(margins)
        weights, summary = participant_weights(tables, shares, margins_file=margins, where=where)
    else:
        weights, summary = participant_weights(tables, margins)
    return weights, summary.model_copy(update={"not_weighted": dict(NOT_WEIGHTED)})


def _analyze_all(tables: Tables, *, n_boot: int, seed: int, topics: Embedding | None,
                 exclude_dimensions: Collection[str] = (), by: Sequence[str] = (),
                 margins: str | Path | Mapping[str, Mapping[str, float]] | None = None) -> FidelityResult:
    from simlab.fidelity.analyses import analyze_all  # on first use, as in __getattr__

    weights, summary = prepare_options(tables, by, margins)
    result = analyze_all(tables, n_boot=n_boot, seed=seed, topics=topics, exclude_dimensions=exclude_dimensions,
                         by=by, weights=weights)
    if weights is None:
        return result
    plain = analyze_all(tables, n_boot=n_boot, seed=seed, topics=topics, exclude_dimensions=exclude_dimensions, by=by)
    return result.model_copy(update={"weights": summary, "analyses_unweighted": plain.analyses})
