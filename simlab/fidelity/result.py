"""Result models of the fidelity analyses (PROTOCOL.md §5), JSON-serialisable.

Every number that carries uncertainty is an ``Estimate``; unless a field says otherwise its
95% CI is a percentile interval from a seeded bootstrap over participants (each replicate
resamples participant ids with replacement and refits). Every analysis result has a
``status``: ``"ok"``, ``"not_available"`` (the data it needs are absent; ``reason`` says which)
or ``"failed"`` (a model could not be fitted; ``reason`` says why).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["ok", "not_available", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Estimate(_Model):
    """A point estimate with its 95% interval."""

    value: float
    """Point estimate on the full data."""
    ci_low: float
    """Lower end of the 95% CI (NaN when it could not be computed)."""
    ci_high: float
    """Upper end of the 95% CI."""
    p_value: float | None = None
    """Model-based p-value of value = 0 (or of the stated null), where one exists."""
    n: int
    """Units behind the estimate (participants, events or rows: see the field)."""
    n_failed: int = 0
    """Bootstrap replicates whose refit failed (e.g. a degenerate resample); they are left out of
    the CI, and above ``MAX_FAILED_SHARE`` of the replicates the CI is withheld (NaN)."""
    note: str | None = None
    """Why the CI is withheld, or how the estimate was obtained when that is not the default."""


class SourceStatus(_Model):
    """Status of one analysis for one source."""

    status: Status = "ok"
    """ok / not_available / failed."""
    reason: str | None = None
    """Why it is not ok."""


# ---------------------------------------------------------------------------------------------
# 1. hierarchy


class HierarchySource(SourceStatus):
    """Rank-ordered (Plackett–Luce) logit of one source."""

    strengths: dict[str, Estimate] = Field(default_factory=dict)
    """Arm log-strength relative to ``reference_arm`` (0 by definition for it)."""
    ordering: list[str] = Field(default_factory=list)
    """Arms from strongest to weakest."""
    n_events: int = 0
    """Rankings (conversations) used."""
    derived_ranks: bool = False
    """True when ranks were derived from rating_preference because rank was missing."""
    rating_strengths: dict[str, Estimate] = Field(default_factory=dict)
    """Per arm: mean within-conversation standardised rating_preference ((x − event mean) / event SD),
    minus the reference arm's; the ratings analogue of the conditional logit that keeps magnitudes."""
    ordering_basis: str = "ranking"
    """What ``ordering`` comes from: 'ranking' (the logit) or 'ratings' (rating_strengths, used when no
    ranking was collected and ranks were derived from ratings, which discards their magnitudes)."""


class HierarchyComparison(_Model):
    """A simulated source's hierarchy against the human one."""

    kendall_tau: Estimate
    """Kendall τ-b between the two sources' arm strengths (orderings)."""
    strength_corr: Estimate
    """Pearson correlation of the arm strengths."""
    same_ordering: bool
    """Whether the point-estimate orderings are identical."""


class HierarchyResult(SourceStatus):
    """Analysis 1: aggregate arm hierarchy per source and its agreement with humans."""

    reference_arm: str | None = None
    """Arm whose strength is fixed at 0 (first arm in sorted order)."""
    per_source: dict[str, HierarchySource] = Field(default_factory=dict)
    """Per source."""
    vs_human: dict[str, HierarchyComparison] = Field(default_factory=dict)
    """Per simulated source."""


# ---------------------------------------------------------------------------------------------
# 2. agreement vs the human ceiling


class AgreementComparison(SourceStatus):
    """Individual agreement of a simulated source with the matched human judgements."""

    n_events: int = 0
    """Matched (participant_id, domain) judgement events."""
    top1: Estimate | None = None
    """Share of events where both pick the same ranked_best arm."""
    top1_chance: float | None = None
    """Chance level 1/k (k = arms per event)."""
    kendall_tau: Estimate | None = None
    """Mean over events of Kendall τ-b between the two full rankings."""
    kendall_tau_per_participant: Estimate | None = None
    """Mean over participants of their mean per-event τ."""
    pearson: dict[str, Estimate] = Field(default_factory=dict)
    """Pooled Pearson correlation per rating/bid column (matched rows)."""
    spearman: dict[str, Estimate] = Field(default_factory=dict)
    """Pooled Spearman correlation per rating/bid column."""
    reaches_ceiling: bool | None = None
    """True when the top1 CI reaches the human cross-instrument ceiling (point estimate)."""


class RetestResult(SourceStatus):
    """Test–retest: a participant judged the same arm in two different conversations."""

    n_pairs: int = 0
    """Repeated (participant, arm) rating pairs."""
    rating_corr: Estimate | None = None
    """Pearson correlation of the repeated rating_preference values."""
    permutation_baseline: float | None = None
    """Mean correlation when the second ratings are shuffled across all pairs."""
    permutation_p: float | None = None
    """Share of shuffles with correlation ≥ observed (add-one)."""
    within_arm_baseline: float | None = None
    """Mean correlation when second ratings are shuffled among pairs of the same arm (stricter)."""
    within_arm_p: float | None = None
    """Add-one permutation p-value against the within-arm shuffle."""
    n_order_pairs: int = 0
    """Repeated arm pairs (a, b) both rated by the same participant in two conversations."""
    pairwise_order: Estimate | None = None
    """Share of repeated arm pairs whose order (untied) is the same both times."""
    pairwise_order_baseline: float | None = None
    """Mean agreement when the second conversation's orders are shuffled (≈ 0.5)."""
    pairwise_order_p: float | None = None
    """Add-one permutation p-value for pairwise order agreement."""


class CeilingResult(SourceStatus):
    """Human self-consistency ceiling."""

    cross_instrument: dict[str, Estimate] = Field(default_factory=dict)
    """Top-1 agreement between instruments, keyed 'a~b' (ranked_best, rating_preference, wtp_bid, opening_choice)."""
    ceiling: float | None = None
    """The ceiling used: mean of the cross-instrument top-1 agreements."""
    retest: RetestResult | None = None
    """Test–retest of the same arm judged twice."""


class AgreementResult(SourceStatus):
    """Analysis 2: individual agreement vs the human self-consistency ceiling."""

    human_ceiling: CeilingResult | None = None
    """Human self-consistency."""
    vs_human: dict[str, AgreementComparison] = Field(default_factory=dict)
    """Per simulated source."""


# ---------------------------------------------------------------------------------------------
# 3. topics


class TopicUnit(SourceStatus):
    """Topic analysis of one kind of text (opening prompts or all user turns)."""

    n_texts: dict[str, int] = Field(default_factory=dict)
    """Texts per source."""
    n_clusters: int = 0
    """KMeans clusters fitted on the pooled texts."""
    shares: dict[str, list[float]] = Field(default_factory=dict)
    """Per source, share of texts per cluster."""
    homogeneity: dict[str, Estimate] = Field(default_factory=dict)
    """Per source, mean pairwise cosine similarity of the embeddings."""
    jsd_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, Jensen–Shannon divergence (base 2) of cluster shares vs human."""
    auc_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, held-out (participant-grouped CV) logistic-regression AUC of human vs simulated; CI from a participant bootstrap of the out-of-fold scores."""


class PrismClusters(SourceStatus):
    """Opening prompts assigned to PRISM's human topic clusters (nearest centroid)."""

    clusters: list[str] = Field(default_factory=list)
    """Cluster labels (gpt_description), outlier cluster −1 excluded."""
    prism_shares: list[float] = Field(default_factory=list)
    """PRISM's human cluster sizes, normalised over the non-outlier clusters."""
    shares: dict[str, list[float]] = Field(default_factory=dict)
    """Per source, share of opening prompts assigned to each cluster."""
    jsd_vs_prism: dict[str, Estimate] = Field(default_factory=dict)
    """Per source, JSD (base 2) of its shares vs PRISM's."""


class TopicsResult(SourceStatus):
    """Analysis 3: topic divergence."""

    embedding: str = "tfidf"
    """tfidf or minilm."""
    opening: TopicUnit | None = None
    """Opening prompts (turn 0 user texts)."""
    all_user: TopicUnit | None = None
    """All user turns."""
    prism: PrismClusters | None = None
    """Assignment to PRISM's topic clusters."""


# ---------------------------------------------------------------------------------------------
# 4. position bias


class PositionFit(SourceStatus):
    """Conditional logit of a choice on position (with arm dummies), one source."""

    first_shown: Estimate | None = None
    """Log-odds of being chosen when shown first vs any later position (model: first_shown + arms)."""
    positions: dict[str, Estimate] = Field(default_factory=dict)
    """Per-position log-odds vs the last position (model: position dummies + arms)."""
    n_events: int = 0
    """Choice events used."""


class PositionOutcome(SourceStatus):
    """Position bias for one outcome."""

    per_source: dict[str, PositionFit] = Field(default_factory=dict)
    """Per source."""
    interaction: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, source × first_shown interaction (difference from human) in the pooled model."""
    interaction_p: float | None = None
    """Likelihood-ratio test p-value that all source × first_shown interactions are 0."""


class PositionResult(SourceStatus):
    """Analysis 4: position bias. Outcomes: ranked_best (PROTOCOL), opening_choice, and the full
    exploded ranking ('ranking', more power when only derived ranks exist)."""

    outcomes: dict[str, PositionOutcome] = Field(default_factory=dict)
    """Keyed ranked_best / opening_choice / ranking."""


# ---------------------------------------------------------------------------------------------
# 5. feedback dynamics


class DynamicsSource(SourceStatus):
    """Turn-by-turn feedback of one source."""

    slope: Estimate | None = None
    """turn_rating change per turn (MixedLM; 95% Wald CI, not bootstrap)."""
    switch_rate: Estimate | None = None
    """Share of consecutive turn pairs where the preferred arm (argmax turn_rating) changes."""
    ceiling_share: Estimate | None = None
    """Share of turn ratings ≥ 95 (the top 5% of the 0–100 slider)."""
    n_turns: Estimate | None = None
    """Mean conversation length (user turns incl. the opening)."""
    early_stop_share: Estimate | None = None
    """Share of conversations ended by the user (stop_reason user_ended), when recorded."""
    n_ratings: int = 0
    """Turn ratings used."""


class DynamicsResult(SourceStatus):
    """Analysis 5: turn_rating ~ turn * source + C(arm) + (1 | participant_id)."""

    per_source: dict[str, DynamicsSource] = Field(default_factory=dict)
    """Per source."""
    slope_diff_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, the turn × source interaction (MixedLM; Wald CI)."""


# ---------------------------------------------------------------------------------------------
# 6. trait biases


class TraitsSource(SourceStatus):
    """Conditional logit of ranked_best on standardised traits (+ length, arm dummies)."""

    coefficients: dict[str, Estimate] = Field(default_factory=dict)
    """Log-odds per 1 SD of each trait (and 'length')."""
    n_events: int = 0
    """Choice events used."""


class TraitsResult(SourceStatus):
    """Analysis 6: text-level trait biases."""

    traits: list[str] = Field(default_factory=list)
    """Features used (autograde dimensions and/or 'length')."""
    excluded: list[str] = Field(default_factory=list)
    """Autograde dimensions left out because their inter-rater reliability fell below the threshold."""
    mode: str | None = None
    """Autograde mode the trait scores come from ('conversation' preferred, else 'first_turn')."""
    per_source: dict[str, TraitsSource] = Field(default_factory=dict)
    """Per source."""
    interaction: dict[str, dict[str, Estimate]] = Field(default_factory=dict)
    """Per simulated source, per trait: source × trait interaction in the pooled model."""
    interaction_p: float | None = None
    """Likelihood-ratio test p-value that all source × trait interactions are 0."""


class UserTraitsDimension(_Model):
    """One user trait: mean per source and each simulated source's difference from human."""

    mean: dict[str, Estimate] = Field(default_factory=dict)
    """Per source: mean score (n = participants)."""
    difference: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source: mean(source) − mean(human)."""


class UserTraitsResult(SourceStatus):
    """Human-vs-simulated comparison of the autograded user traits."""

    dimensions: dict[str, UserTraitsDimension] = Field(default_factory=dict)
    excluded: list[str] = Field(default_factory=list)
    """Dimensions left out as unreliable."""


AnalysisResult = (
    HierarchyResult | AgreementResult | TopicsResult | PositionResult | DynamicsResult | TraitsResult
    | UserTraitsResult
)


class FidelityResult(_Model):
    """Every fidelity analysis of one ``Tables``: each simulated source compared with human."""

    sources: list[str]
    """Sources present."""
    n_boot: int
    """Bootstrap replicates per CI."""
    seed: int
    """Seed of the participant bootstrap (and of KMeans / CV splits)."""
    analyses: dict[str, AnalysisResult]
    """Keyed hierarchy / agreement / topics / position / dynamics / traits."""
