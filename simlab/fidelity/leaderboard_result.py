"""Result models of the simulator leaderboard (``simlab compare``): every simulated source beside
the humans on the same components and on one fidelity index (0–100), with participant-bootstrap
CIs, the human split-half row as the ceiling, and paired tests between sources.

The index and its components are defined in docs/fidelity.md ("The fidelity index"); the JSON a
``Leaderboard`` writes is what ``simlab compare --out`` writes.

>>> row = LeaderboardRow(source="sim_dynamic:profile", kind="simulated", n_participants=40,
...                      index=Estimate(value=71.5, ci_low=64.0, ci_high=78.2, n=40))
>>> row.model_dump(mode="json")["index"]["value"]
71.5
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from simlab.fidelity.result import FidelityResult
from simlab.fidelity.status import Estimate, _Model

__all__ = ["HUMANS_ROW", "Component", "ComponentInfo", "HumanSplit", "Leaderboard", "LeaderboardRow",
           "PairwiseTest"]

HUMANS_ROW = "humans"
"""The source name of the human split-half row ("humans vs humans"): the number every simulated
source is read against."""


class ComponentInfo(_Model):
    """One component of the index: what it measures and where its 0 and 100 are."""

    name: str
    """Its key in each row's ``components`` (e.g. ``hierarchy``, ``position``)."""
    description: str
    """What is compared between a source and the humans, in one sentence."""
    reference: str
    """What scores 0 (e.g. "a participant answering uniformly at random"); 100 is no more distance
    from the humans than another sample of the same humans (bias-corrected distance 0)."""
    in_index: bool = True
    """Whether it enters the index (False when the humans cannot be told from the reference on it)."""
    reason: str | None = None
    """Why it is left out of the index, when it is."""


class Component(_Model):
    """One component for one source: its score (0–100 scale) and the distance behind it."""

    score: Estimate | None = None
    """100 × (1 − distance / reference distance), with its participant-bootstrap CI; None when not
    available (``reason``)."""
    distance: Estimate | None = None
    """Bias-corrected squared distance between the source's and the humans' statistics (0: as far
    as two samples of the same people), with its CI."""
    reason: str | None = None
    """Why this component is not available for this source."""


class LeaderboardRow(_Model):
    """One source on the leaderboard."""

    source: str
    """The simulated source (``sim_dynamic:<variant>``, a ``--sim`` name, …), or ``humans`` for the
    human split-half row."""
    kind: Literal["simulated", "humans"]
    """``humans``: one half of the human participants compared with the other half."""
    n_participants: int
    """Participants of this source behind the row."""
    index: Estimate
    """The fidelity index (0–100) with its participant-bootstrap 95% CI; NaN when no component is
    available."""
    components: dict[str, Component] = Field(default_factory=dict)
    """The index's components for this source, by ``ComponentInfo.name``."""
    comparisons: dict[str, Estimate] = Field(default_factory=dict)
    """The fidelity analyses' comparisons of this source with the humans, flattened
    (``hierarchy.kendall_tau``, ``agreement.ceiling_gap``, ``position.ranking.excess_vs_human``,
    ``dynamics.slope_diff``, …), each with its CI as ``simlab fidelity analyze`` reports it."""
    missing: dict[str, str] = Field(default_factory=dict)
    """Index components left out of this row's index, with the reason (the index averages the rest)."""


class PairwiseTest(_Model):
    """"Source ``a`` is closer to the humans than source ``b``" on one measure, paired by participant."""

    a: str
    """The first source (higher on the leaderboard)."""
    b: str
    """The second source."""
    measure: str
    """``index`` or a component's name."""
    difference: Estimate
    """Score of a minus score of b, with its paired participant-bootstrap CI and unadjusted p-value."""
    p_adjusted: float
    """The p-value after the correction across pairs stated in ``Leaderboard.correction``."""
    closer: str | None = None
    """The source significantly closer to the humans after correction (at 5%), or None."""


class HumanSplit(_Model):
    """How the human participants were split for the ``humans`` row."""

    seed: int
    """Seed of the random split of participant ids into two halves."""
    n_participants: tuple[int, int]
    """Participants in each half."""


class Leaderboard(_Model):
    """Every simulated source against the humans: rows in descending index order, then the tests."""

    leaderboard: list[LeaderboardRow]
    """One row per simulated source and the ``humans`` row, highest index first (NaN last)."""
    components: list[ComponentInfo] = Field(default_factory=list)
    """The index's components, in the order they are reported."""
    pairwise: list[PairwiseTest] = Field(default_factory=list)
    """Every pair of simulated sources on the index and on each component."""
    correction: str = ""
    """The multiplicity correction applied to ``pairwise`` (e.g. Holm across the pairs, per measure)."""
    human_split: HumanSplit | None = None
    """The split behind the ``humans`` row (None when there are too few human participants)."""
    n_boot: int
    """Participant-bootstrap replicates behind every CI and test."""
    seed: int
    """Seed of the bootstrap."""
    details: FidelityResult | None = None
    """The full fidelity comparison behind ``comparisons`` (as ``simlab fidelity analyze`` writes it),
    when it was computed."""
