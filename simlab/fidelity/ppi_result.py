"""Result models of ``analyses.ppi``: human estimates sharpened by simulated participants
(prediction-powered inference, PPI++; ``simlab.fidelity.stats.ppi``), per simulated source.

Every target is a mean over human participants of a per-participant quantity, in percent: an arm's
**choice share** (the share of the participant's choice events in which that arm was ranked best; ties
split the event), the **first-shown share** (the share in which the response shown first was ranked
best) and the **first-shown excess** (that share minus 1/k, k the event's number of responses, in
percentage points). Each has the PPI estimate and the humans-only estimate of the same humans, each
with its 95% CI, λ̂, the effective sample size and the humans saved (defined in ``PPITarget``).

>>> t = PPITarget(ppi=Estimate(value=31.0, ci_low=27.0, ci_high=35.0, n=40),
...               humans_only=Estimate(value=30.0, ci_low=25.0, ci_high=35.0, n=40),
...               lam=0.7, n=40, n_sim_only=200, effective_n=62.5, humans_saved=22.5)
>>> PPITarget.model_validate_json(t.model_dump_json()) == t
True
"""

from __future__ import annotations

from pydantic import Field

from simlab.fidelity.status import Estimate, SourceStatus

__all__ = ["PPIResult", "PPISource", "PPITarget"]


class PPITarget(SourceStatus):
    """One human mean estimated with the simulated participants (PPI) and without them (humans only)."""

    ppi: Estimate | None = None
    """The PPI++ estimate of the humans' mean: mean_humans(y − λf) + λ · mean_all_simulated(f), with its
    95% CI (CLT, participant-clustered; ``n`` counts the humans). Percent (choice shares, first-shown
    share) or percentage points (first-shown excess)."""
    humans_only: Estimate | None = None
    """The humans' own mean over the same humans and its 95% t interval: what the data say without any
    simulated participant."""
    lam: float | None = None
    """λ̂, PPI++'s power-tuning parameter, estimated from the data and clipped to [0, 1]: 0 = the
    simulator is ignored (the humans-only estimate), 1 = its copies' errors correct the mean of every
    simulated participant."""
    n: int = 0
    """Humans with a simulated copy (the humans behind both estimates)."""
    n_sim_only: int = 0
    """Simulated participants without a human."""
    copy_corr: float | None = None
    """Correlation of the humans' per-participant quantity with their copies' (None when either is
    constant): how informative the simulator is for this target."""
    effective_n: float | None = None
    """n · var(humans-only) / var(PPI): how many humans a humans-only estimate would need for the PPI
    estimate's precision."""
    humans_saved: float | None = None
    """``effective_n`` − n: how many extra humans the simulated participants were worth for this target
    (about 0 for an uninformative simulator, up to N for a perfect one; slightly negative when the
    estimated λ costs more than it gains)."""


class PPISource(SourceStatus):
    """PPI of the humans' arm hierarchy and position effect, sharpened by one simulated source."""

    n_humans: int = 0
    """Human participants with a copy in this source (with at least one choice event each)."""
    n_humans_without_copy: int = 0
    """Human participants without a copy in this source: left out of both estimates here."""
    n_sim_only: int = 0
    """This source's participants without a human."""
    choice_share: dict[str, PPITarget] = Field(default_factory=dict)
    """Per arm: its choice share among the humans, in percent (``PPIResult.arms`` order)."""
    order: list[str] = Field(default_factory=list)
    """The arms by their PPI choice share, highest first: the human arm hierarchy as PPI estimates it."""
    humans_only_order: list[str] = Field(default_factory=list)
    """The same order from the humans-only estimates."""
    first_shown_share: PPITarget | None = None
    """The share of the humans' choices that went to the response shown first, in percent."""
    first_shown_excess: PPITarget | None = None
    """The first-shown share minus 1/k per event (the share with no position effect), in percentage
    points: the human position effect."""


class PPIResult(SourceStatus):
    """Per simulated source, the human arm hierarchy and position effect estimated with its participants."""

    arms: list[str] = Field(default_factory=list)
    """Arms present, in the run's config order where the data say it (else alphabetical)."""
    weighted: bool = False
    """True when participant weights were given (every mean, λ̂ and variance is weighted)."""
    per_source: dict[str, PPISource] = Field(default_factory=dict)
    """Per simulated source."""
