"""Calibration of the simulated-vs-human comparisons: does each one mean what it says?

A ``Case`` is one published comparison (e.g. "turn slope, simulated − human") with a data
generator that plants a known truth: under ``effect=False`` both sources share one truth
(with realistic heterogeneity: per-participant intercepts and slopes, ties, choices prone to
separation), under ``effect=True`` they differ by a known amount. ``run_case`` repeats both
many times and counts how often the comparison is "significant" at 5% (the false-positive
rate under the null, the power under the effect) and how often its 95% CI covers the truth.

``python benchmarks/calibration.py`` runs every registered case and writes
``docs/calibration.md``; ``tests/fidelity/test_calibration.py`` runs a fast subset.
Each built-in analysis keeps its cases in its own module here (``CASES``) and names them in its
registration (``simlab.fidelity.builtin``); any registered analysis may bring its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from simlab.fidelity.result import Estimate
from simlab.tables import Tables

ALPHA = 0.05


@dataclass(frozen=True)
class Measured:
    """What one comparison reported on one dataset."""

    estimate: Estimate | None
    """The comparison (None: the analysis did not report it, e.g. a failed fit)."""
    p_value: float | None = None
    """Its p-value against the null value (None: judge significance by the CI)."""


@dataclass(frozen=True)
class Case:
    """One comparison and its planted truth."""

    analysis: str
    """The analysis (hierarchy, agreement, position, dynamics, traits, topics)."""
    name: str
    """The comparison, in words (e.g. 'turn slope, sim − human')."""
    simulate: Callable[[int, bool], Tables]
    """(seed, effect) → human + simulated tables with the truth planted."""
    measure: Callable[[Tables, int], Measured]
    """(tables, seed) → the comparison as the analysis reports it."""
    truth: Callable[[bool], float]
    """The true value of the comparison without (False) and with (True) the effect."""
    null_value: float = 0.0
    """The value a significance test is against (the truth under no effect, usually 0)."""
    note: str = ""
    """What the generator plants (heterogeneity, ties, separation), for the table."""
    boundary_null: bool = False
    """The null truth is on the boundary of the parameter space (e.g. a variance of 0, for a descriptive
    that is not a comparison). A CI there covers it exactly when the CI does not exclude it, so the null
    datasets' coverage is 1 − their false-positive rate and says nothing more; ``coverage`` counts the
    effect datasets (an interior truth) only."""


@dataclass
class Calibration:
    """How a case behaved over ``reps`` planted nulls and ``reps`` planted effects."""

    case: Case
    reps: int
    null_significant: int = 0
    null_covered: int = 0
    null_reported: int = 0
    effect_significant: int = 0
    effect_covered: int = 0
    effect_reported: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def false_positive_rate(self) -> float:
        return self.null_significant / self.null_reported if self.null_reported else math.nan

    @property
    def power(self) -> float:
        return self.effect_significant / self.effect_reported if self.effect_reported else math.nan

    @property
    def covered(self) -> int:
        """Datasets whose CI covers the truth, of ``coverage_n`` (the effects only for a boundary null)."""
        return self.effect_covered + (0 if self.case.boundary_null else self.null_covered)

    @property
    def coverage_n(self) -> int:
        return self.effect_reported + (0 if self.case.boundary_null else self.null_reported)

    @property
    def coverage(self) -> float:
        """95% CI coverage of the truth, over nulls and effects together (effects only when the null
        truth is on the boundary, ``Case.boundary_null``)."""
        return self.covered / self.coverage_n if self.coverage_n else math.nan


def significant(m: Measured, null_value: float, *, boundary: bool = False) -> bool:
    """Significant at 5%: by the p-value when there is one, else by the CI excluding the null (with the
    null on the boundary, ``boundary``: the CI's lower end above it, since nothing lies below it; the
    REML optimiser's "zero" is ~2e-7, so a CI of refits that all sit there is not evidence)."""
    if m.p_value is not None and math.isfinite(m.p_value):
        return m.p_value < ALPHA
    e = m.estimate
    if e is None or not (math.isfinite(e.ci_low) and math.isfinite(e.ci_high)):
        return False
    return e.ci_low > null_value if boundary else not (e.ci_low <= null_value <= e.ci_high)


def covers(m: Measured, truth: float) -> bool:
    e = m.estimate
    return e is not None and math.isfinite(e.ci_low) and math.isfinite(e.ci_high) and e.ci_low <= truth <= e.ci_high


def one_rep(case: Case, rep: int, effect: bool) -> tuple[bool, bool, bool, str | None]:
    """(reported, significant, covered, problem) of one dataset; seeds differ per rep and arm."""
    seed = 1_000_003 * rep + (1 if effect else 0)
    try:
        m = case.measure(case.simulate(seed, effect), seed)
    except Exception as exc:  # noqa: BLE001 - a crash is a finding of the calibration, not its end
        return False, False, False, f"{type(exc).__name__}: {exc}"
    if m.estimate is None or not math.isfinite(m.estimate.value):
        return False, False, False, "not reported"
    return True, significant(m, case.null_value, boundary=case.boundary_null), covers(m, case.truth(effect)), None


def run_case(case: Case, reps: int, *, progress: Callable[[str], None] | None = None) -> Calibration:
    """``reps`` planted nulls and ``reps`` planted effects of ``case``."""
    import time

    out = Calibration(case, reps)
    t0 = time.perf_counter()
    for rep in range(reps):
        for effect in (False, True):
            reported, sig, cov, problem = one_rep(case, rep, effect)
            if problem and len(out.problems) < 5:
                out.problems.append(f"rep {rep} ({'effect' if effect else 'null'}): {problem}")
            if effect:
                out.effect_reported += reported
                out.effect_significant += sig
                out.effect_covered += cov
            else:
                out.null_reported += reported
                out.null_significant += sig
                out.null_covered += cov
        if progress:
            progress(f"{case.analysis}: {case.name}: {rep + 1}/{reps}")
    out.seconds = time.perf_counter() - t0
    return out


def all_cases(analyses: Collection[str] | None = None) -> list[Case]:
    """The calibration cases of the registered analyses (``simlab.fidelity.registry.ANALYSES``, each
    one's ``calibration()``), in registration order; ``analyses``: only these names (unknown names are
    refused with the registered ones)."""
    from simlab.fidelity.registry import ANALYSES

    wanted = None if analyses is None else [ANALYSES.get(name).name for name in analyses]
    cases: list[Case] = []
    for a in ANALYSES:
        if wanted is None or a.name in wanted:
            cases.extend(a.calibration())
    return cases


def calibrated() -> list[str]:
    """Names of the registered analyses that have calibration cases."""
    from simlab.fidelity.registry import ANALYSES

    return [a.name for a in ANALYSES if a.calibration()]


def binomial_ci(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion (how precise a rate from n repetitions is)."""
    if n == 0:
        return (math.nan, math.nan)
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


__all__ = ["ALPHA", "Calibration", "Case", "Measured", "all_cases", "binomial_ci", "calibrated", "covers", "run_case",
           "significant"]
