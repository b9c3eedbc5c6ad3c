"""Result models of the subgroup analysis (``analyses.subgroups``) and of raking weights, JSON-serialisable.

Apart from ``simlab.fidelity.result`` so the report and the result JSON read them without the
statistics libraries.
"""

from __future__ import annotations

from pydantic import Field

from simlab.fidelity.status import Estimate, SourceStatus, Status, _Model

__all__ = ["AttributeSubgroups", "Heterogeneity", "SubgroupComparison", "SubgroupLevel", "SubgroupsResult",
           "WeightsSummary"]

CORRECTION = ("Holm across the subgroups (levels) of each attribute, separately for each comparison and simulated "
              "source, on the per-subgroup p-values the analyses report; the heterogeneity test is one test per "
              "comparison and is not adjusted")


class SubgroupLevel(_Model):
    """One level of an attribute: its participants per source and whether it was analysed."""

    n_participants: dict[str, int] = Field(default_factory=dict)
    """Participants with this level, per source."""
    status: Status = "ok"
    """ok, or not_available below the minimum subgroup size (``reason`` says which source)."""
    reason: str | None = None


class Heterogeneity(_Model):
    """Cochran's Q of "the gap is the same in every subgroup": Q = Σ_g (θ_g − θ̄)² / se_g², with θ̄ the
    inverse-variance mean and se_g each subgroup's bootstrap SE (its 95% CI's width / 3.92); chi-squared
    with (subgroups − 1) df. The subgroups are disjoint sets of participants, so their estimates are
    independent."""

    q: float
    df: int
    p_value: float | None = None
    pooled: float | None = None
    """The inverse-variance mean θ̄ over the subgroups."""


class SubgroupComparison(_Model):
    """One sim-vs-human comparison re-estimated in each subgroup of one attribute."""

    levels: dict[str, Estimate] = Field(default_factory=dict)
    """Per analysed level, the comparison on that subgroup's participants (both sources)."""
    p_adjusted: dict[str, float] = Field(default_factory=dict)
    """Per level with a p-value, Holm-adjusted across the levels (``SubgroupsResult.correction``)."""
    heterogeneity: Heterogeneity | None = None
    """None when fewer than two levels have a finite estimate and CI."""


class AttributeSubgroups(_Model):
    """The subgroups of one attribute."""

    levels: dict[str, SubgroupLevel] = Field(default_factory=dict)
    comparisons: dict[str, dict[str, SubgroupComparison]] = Field(default_factory=dict)
    """Per simulated source, per comparison key (as the leaderboard flattens them, e.g.
    ``hierarchy.strength_diff.PROMPT``)."""


class SubgroupsResult(SourceStatus):
    """Every sim-vs-human comparison broken down by participant attributes (``--by``)."""

    attributes: dict[str, AttributeSubgroups] = Field(default_factory=dict)
    min_participants: int = 0
    """A level is analysed only with at least this many participants in every source."""
    analyses: list[str] = Field(default_factory=list)
    """The analyses re-run on each subgroup."""
    correction: str = CORRECTION
    """The multiplicity correction across subgroups."""


class WeightsSummary(_Model):
    """The raking weights an ``analyze --weights`` run used (docs/fidelity.md, "Weights")."""

    margins_file: str | None = None
    attributes: list[str] = Field(default_factory=list)
    n_participants: int = 0
    effective_n: float = 0.0
    """Kish's effective sample size (Σw)² / Σw² of the human participants."""
    max_weight: float = 0.0
    trimmed: int = 0
    """Weights cut at the cap (``raking.MAX_WEIGHT`` × the mean) and the rest re-raked."""
    iterations: int = 0
    not_weighted: dict[str, str] = Field(default_factory=dict)
    """Per analysis (or comparison) whose point estimate the weights do not reach, why."""
