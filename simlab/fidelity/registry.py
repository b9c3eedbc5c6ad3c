"""The fidelity analyses as registered objects: each one's name, result model, function, when it
applies, report section and calibration cases, in one ``Analysis``.

``analyze_all``, the result JSON (``FidelityResult``), the report (``build_sections``) and
``benchmarks/calibration.py`` iterate ``ANALYSES``. The built-in analyses are registered first, in
the report's order (``simlab.fidelity.builtin``, loaded like an entry point the first time the
registry is used, because it wires the analyses to the report's renderer); then the package entry
points of the group ``simlab.analyses``; a module may also register from Python::

    from simlab.fidelity.registry import ANALYSES, Analysis, ReportSection
    ANALYSES.register(Analysis(name="my_analysis", result=MyResult, run=my_function,
                               section=ReportSection("My analysis", "What does it ask?", my_section)))

A bad registration (a name registered twice, a result model that is not a pydantic model with
``status``/``reason`` or not JSON-serialisable, a function or section builder that is not callable)
raises ``RegistrationError`` naming the analysis and the cause.

>>> from simlab.fidelity.registry import ANALYSES
>>> ANALYSES.names()[:3]
['hierarchy', 'agreement', 'topics']
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from simlab.fidelity.status import SourceStatus
from simlab.registry import Registry, require_model
from simlab.tables import Tables

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "BootstrapWeights","ANALYSES", "Analysis", "AnalysisContext", "ParticipantDraws", "ReportSection", "check_analysis"]

BUILTIN_MODULE = "simlab.fidelity.builtin"
"""Registers the built-in analyses on import."""


class BootstrapWeights(Protocol):
    """The (n_boot, n_participants) bootstrap weights as analyses read them: ``w[b]`` (one
    replicate's float64 weights), ``w[b, cols]``, ``w[i:j]``, and ``w @ x``. A float64 array is one;
    ``simlab.fidelity.stats.CountMatrix`` stores the draw counts compactly and reads them the same."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> np.ndarray: ...

    def __matmul__(self, x: np.ndarray) -> np.ndarray: ...


class ParticipantDraws(Protocol):
    """The participant bootstrap every analysis shares (``simlab.fidelity.stats.Participants``): the
    participant ids and, per bootstrap replicate, how often each was drawn. A statistic recomputed
    with each row of ``counts`` as participant weights gives a participant-clustered bootstrap whose
    replicates pair with every other analysis's."""

    @property
    def ids(self) -> tuple[str, ...]: ...

    @property
    def counts(self) -> BootstrapWeights: ...

    @property
    def n_boot(self) -> int: ...

    def index(self, ids: Sequence[object] | pd.Series) -> np.ndarray: ...


@dataclass(frozen=True)
class AnalysisContext:
    """What every analysis of one ``analyze_all`` call shares besides the tables."""

    participants: ParticipantDraws
    """The shared participant bootstrap (drawn once from ``seed``, before any analysis runs)."""
    n_boot: int
    """Bootstrap replicates per CI."""
    seed: int
    """The run's analysis seed (KMeans, CV splits, permutations, own bootstraps derive from it)."""
    topics: str | None = "tfidf"
    """Text representation of the topic analysis ('tfidf' or 'minilm'); None: topics off."""
    clusters_path: Path | None = None
    """PRISM's topic clusters file, when given."""
    exclude_dimensions: frozenset[str] = frozenset()
    """Autograde dimensions below the reliability threshold (left out of trait analyses)."""
    by: tuple[str, ...] = ()
    """Participant attributes to break the comparisons down by (``--by``; the subgroup analysis)."""
    weights: Mapping[str, float] | None = None
    """Raking weight per participant_id (``--weights``; ``simlab.fidelity.raking``), already carried by
    ``participants``; None: unweighted."""
    subgroup_analyses: tuple[str, ...] | None = None
    """The analyses the subgroup analysis re-runs per subgroup (None: every one it can)."""


@dataclass(frozen=True)
class ReportSection:
    """An analysis's section of the HTML report.

    ``build(result, turns)`` returns a ``simlab.report.sections.Section`` (its verdict sentences,
    table rows and charts); ``turns`` are the report's turns with their source, or None. It is called
    for an ``ok`` result; for any status when ``build_not_ok`` (it may then return None for the
    default "not available: reason" section). ``optional``: the section is left out when the result
    has no entry for the analysis (instead of saying it was not run).
    """

    title: str
    question: str
    build: Callable[[Any, pd.DataFrame | None], Any]
    optional: bool = False
    build_not_ok: bool = False


def _always(tables: Tables, context: AnalysisContext) -> bool:
    return True


def _no_cases() -> Sequence[Any]:
    return ()


@dataclass(frozen=True)
class Analysis:
    """One fidelity analysis.

    ``run(tables, context)`` returns an instance of ``result`` (a pydantic model derived from
    ``SourceStatus``: ``status`` ok / not_available / failed, and ``reason``); if it raises, the
    analysis is recorded as ``result(status="failed", reason=...)`` and the others go on.
    ``applies(tables, context)``: whether it runs at all on these tables (e.g. user traits only when
    the users' messages were autograded); an analysis that does not apply has no entry in the result.
    ``calibration()``: its planted-truth cases (``simlab.fidelity.calibration.Case``), for
    ``benchmarks/calibration.py``.
    """

    name: str
    result: type[SourceStatus]
    run: Callable[[Tables, AnalysisContext], SourceStatus]
    section: ReportSection
    applies: Callable[[Tables, AnalysisContext], bool] = _always
    calibration: Callable[[], Sequence[Any]] = field(default=_no_cases)

    def failed(self, reason: str) -> SourceStatus:
        """This analysis's result recording that it failed."""
        return self.result(status="failed", reason=reason)


def check_analysis(a: Analysis) -> None:
    """Refuse an analysis that ``analyze_all``, the result JSON or the report could not use."""

    if not isinstance(a, Analysis):
        raise TypeError(f"is a {type(a).__name__}, not a simlab.fidelity.registry.Analysis")
    model = a.result
    require_model(model, SourceStatus, "result model", "its status and reason fields")
    _check_serialisable(model)
    for what, fn in (("function (run)", a.run), ("applies", a.applies), ("calibration", a.calibration)):
        if not callable(fn):
            raise TypeError(f"{what} is not callable: {fn!r}")
    s = a.section
    if not isinstance(s, ReportSection):
        raise TypeError(f"section is a {type(s).__name__}, not a ReportSection")
    if not isinstance(s.title, str) or not s.title.strip():
        raise ValueError("report section has no title")
    if not callable(s.build):
        raise TypeError(f"report section builder is not callable: {s.build!r}")


def _check_serialisable(model: type[BaseModel]) -> None:
    """The model has a JSON schema, and a failed result of it survives the JSON round trip."""
    name = model.__name__
    try:
        model.model_json_schema()
    except Exception as exc:  # noqa: BLE001 - pydantic raises several kinds; the cause is the user's to see
        raise TypeError(f"result model {name} is not JSON-serialisable: {type(exc).__name__}: {exc}") from exc
    try:
        failed = model(status="failed", reason="check")
        again = model.model_validate_json(failed.model_dump_json())
    except Exception as exc:  # noqa: BLE001 - as above
        raise TypeError(f"result model {name} cannot record a failure (status='failed', reason=...) and read it "
                        f"back from JSON: every field but status/reason needs a default ({type(exc).__name__}: "
                        f"{exc})") from exc
    if again != failed:
        raise TypeError(f"result model {name} does not read back what it writes to JSON")


class _AnalysisRegistry(Registry[Analysis]):
    """The registry with the built-ins registered first: on first use, before any other registration
    or entry point, so they keep the report's order."""

    def __init__(self) -> None:
        super().__init__("analysis", "simlab.analyses", check_analysis)
        self._builtins_loaded = False
        self._builtins_lock = threading.RLock()

    def _load_builtins(self) -> None:
        with self._builtins_lock:
            if self._builtins_loaded:
                return
            self._builtins_loaded = True  # first: the module registers through register() below
            import_module(BUILTIN_MODULE)

    def register(self, part: Analysis, *, replace: bool = False) -> Analysis:
        self._load_builtins()
        return super().register(part, replace=replace)

    def load_entry_points(self) -> None:
        self._load_builtins()
        super().load_entry_points()


ANALYSES: Registry[Analysis] = _AnalysisRegistry()
"""Every fidelity analysis, built-ins first in the report's order, then entry points and Python
registrations in the order they came."""
