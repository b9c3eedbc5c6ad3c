"""Result models of the distribution comparison (``simlab.fidelity.analyses.distributions``): per numeric
instrument, each simulated source's spread against the humans' (``sd_ratio``) and the bias-corrected
Wasserstein-1 distance between the two distributions (``w1_excess``), pooled over arms and per arm.

>>> e = Estimate(value=0.6, ci_low=0.5, ci_high=0.7, p_value=0.001, n=40)
>>> c = DistributionComparison(sd_ratio=e, spread_collapse=collapsed(e))
>>> c.spread_collapse
True
>>> DistributionComparison.model_validate_json(c.model_dump_json()) == c
True
"""

from __future__ import annotations

import math

from pydantic import Field

from simlab.fidelity.status import Estimate, SourceStatus, _Model

__all__ = ["DistributionComparison", "DistributionsResult", "Histogram", "InstrumentDistributions", "collapsed"]


class Histogram(_Model):
    """One source's distribution of an instrument (every arm pooled), as the report draws it."""

    edges: list[float] = Field(default_factory=list)
    """Bin edges (one more than ``shares``); for a few distinct values, one bin centred on each."""
    shares: list[float] = Field(default_factory=list)
    """Share of the source's answers in each bin (each answer counts once)."""
    n: int = 0
    """Answers."""
    mean: float | None = None
    """Mean answer."""
    sd: float | None = None
    """Standard deviation of the answers (every answer weighted equally)."""


class DistributionComparison(SourceStatus):
    """A simulated source's answers to one instrument against the humans' (in one arm, or pooled)."""

    sd_ratio: Estimate | None = None
    """SD(simulated) / SD(human) of the answers, every answer weighted equally. p-value of ratio = 1: the
    relabelling test (whole participants swap source labels; a human and their copy swap all their
    answers) on answers centred at their source's mean, so a mean shift is not read as a spread
    difference; 95% CI: the ratios that test does not reject once the simulated answers are divided by
    them (test inversion; the participant bootstrap's percentile interval covered too rarely)."""
    w1: float | None = None
    """Plug-in Wasserstein-1 distance between the two distributions (in the instrument's units; > 0 for
    two samples of one distribution)."""
    w1_chance: float | None = None
    """Mean Wasserstein-1 distance under random relabelling of whole participants (what sampling alone
    gives)."""
    w1_excess: Estimate | None = None
    """``w1`` − ``w1_chance``: the bias-corrected distance (≈ 0 for one distribution; can fall below 0
    by chance; conservative when the distributions differ, as relabelling then mixes them). p-value: the
    relabelling test of the plug-in; 95% CI: the percentile participant-bootstrap interval of the plug-in,
    its lower end extended to the corrected value and, unless the test rejects, to 0."""
    n_human: int = 0
    """Human answers compared."""
    n_sim: int = 0
    """Simulated answers compared."""

    spread_collapse: bool | None = None
    """True when the CI of ``sd_ratio`` lies below 1: the simulated answers are less spread out than
    people's (None: no CI)."""


def collapsed(e: Estimate | None) -> bool | None:
    """Whether an ``sd_ratio`` says spread collapse: its CI lies below 1 (None without a CI).

    >>> collapsed(Estimate(value=0.6, ci_low=0.5, ci_high=0.7, n=40)), collapsed(None)
    (True, None)
    """
    if e is None or not (math.isfinite(e.ci_low) and math.isfinite(e.ci_high)):
        return None
    return e.ci_high < 1.0


class InstrumentDistributions(SourceStatus):
    """One numeric instrument: where it is read from and each simulated source against human."""

    table: str = ""
    """The table it is read from (judgements, turns, bdm, conversations)."""
    column: str = ""
    """Its column there."""
    per_arm_only: bool = False
    """True for ranks: every ranking uses each rank once, so pooled over arms every source has the same
    distribution; only the ranked position of each arm compares anything."""
    pooled: dict[str, DistributionComparison] = Field(default_factory=dict)
    """Per simulated source, every arm together."""
    per_arm: dict[str, dict[str, DistributionComparison]] = Field(default_factory=dict)
    """Per arm, per simulated source."""
    histograms: dict[str, Histogram] = Field(default_factory=dict)
    """Per source (human first), every arm together, on shared bins."""


class DistributionsResult(SourceStatus):
    """Spread and distance of each simulated source's answers from the humans', per numeric instrument."""

    instruments: dict[str, InstrumentDistributions] = Field(default_factory=dict)
    """Keyed by instrument (rating_preference, turn_rating, wtp_bid, rank, n_turns, …)."""
    n_perm: int = 0
    """Relabellings per permutation test."""
