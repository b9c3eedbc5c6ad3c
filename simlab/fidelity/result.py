"""Result models of the fidelity analyses (PROTOCOL.md §5), JSON-serialisable.

Every number that carries uncertainty is an ``Estimate``; unless a field says otherwise its
95% CI is a percentile interval from a seeded bootstrap over participants (each replicate
resamples participant ids with replacement and refits). Every analysis result has a
``status``: ``"ok"``, ``"not_available"`` (the data it needs are absent; ``reason`` says which)
or ``"failed"`` (a model could not be fitted; ``reason`` says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, SerializeAsAny, field_validator

from simlab.fidelity.status import Estimate, SourceStatus, _Model
from simlab.fidelity.subgroups_result import WeightsSummary

__all__ = [
    "AgreementComparison",
    "AgreementResult",
    "AnalysisResult",
    "CeilingResult",
    "DynamicsResult",
    "DynamicsSource",
    "Estimate",
    "FidelityResult",
    "GenErrorsArm",
    "GenErrorsResult",
    "GenErrorsSource",
    "HierarchyComparison",
    "HierarchyResult",
    "HierarchySource",
    "InstrumentAgreement",
    "PersonaPlacebo",
    "PlaceboInstrument",
    "PositionFit",
    "PositionOutcome",
    "PositionResult",
    "PrismClusters",
    "RetestResult",
    "SourceStatus",
    "TopicUnit",
    "TopicsResult",
    "TraitsResult",
    "TraitsSource",
    "UnknownAnalysisResult",
    "UserTraitsDimension",
    "UserTraitsResult",
    "VarianceSplit",
]

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
    penalised: bool = False
    """True when the maximum-likelihood fit diverged (an arm always or never ranked above another:
    separation) and ``strengths`` come from a log-F(1,1)-penalised fit (finite, shrunk towards 0)."""
    n_gen_error: int = 0
    """Rankings (conversations) dropped because a generation failed there (``gen_error``)."""


class HierarchyComparison(_Model):
    """A simulated source's hierarchy against the human one."""

    kendall_tau: Estimate
    """Kendall τ-b between the two sources' arm strengths (orderings)."""
    strength_corr: Estimate
    """Pearson correlation of the arm strengths."""
    same_ordering: bool
    """Whether the point-estimate orderings are identical."""
    strength_diff: dict[str, Estimate] = Field(default_factory=dict)
    """Per arm (not the reference): simulated − human log-strength, both vs ``reference_arm``. CI and
    p-value: cluster-robust t (sandwich clustered by participant, so a human and their simulated copy
    are one cluster; participants − 1 df), null = same strength. (The percentile participant
    bootstrap covered too rarely here in the calibration; this interval matches its p-value.)"""
    strength_diff_p: float | None = None
    """Cluster-robust Wald test (F) that every arm's strength is the same in both sources."""
    note: str | None = None
    """Why ``strength_diff_p`` is missing, when it is."""


class HierarchyResult(SourceStatus):
    """Analysis 1: aggregate arm hierarchy per source and its agreement with humans."""

    reference_arm: str | None = None
    """Arm whose strength is fixed at 0: the config's first arm when the data say the order (a run's
    ``arms`` table), else the first in alphabetical order."""
    per_source: dict[str, HierarchySource] = Field(default_factory=dict)
    """Per source."""
    vs_human: dict[str, HierarchyComparison] = Field(default_factory=dict)
    """Per simulated source."""


# ---------------------------------------------------------------------------------------------
# 2. agreement vs the human ceiling


class InstrumentAgreement(_Model):
    """Top-1 agreement of a simulated source with the matched human on one instrument, against the
    human ceiling of the closest instrument pair on the same matches."""

    top1: Estimate
    """Tie-aware share of matches where both pick the same top arm: a match where either
    side's maximum is tied counts |A∩B| / (|A|·|B|), the chance that uniform tie-breaking makes them
    agree (chance level 1/k). 95% CI: participant bootstrap; n = participants."""
    n_tied: int = 0
    """Matches where either side's maximum is tied (they count fractionally, see ``top1``)."""
    ceiling_pair: str | None = None
    """The human instrument pair used as the ceiling ('a~b', see ``CeilingResult.cross_instrument``)."""
    ceiling: Estimate | None = None
    """The human's tie-aware agreement on ``ceiling_pair`` in the matches' human conversations."""
    gap: Estimate | None = None
    """top1 − ceiling on the matches that have both, with the same participant draws for both (so the
    CI carries the uncertainty of each); p_value: bootstrap test of gap = 0."""
    reaches_ceiling: bool | None = None
    """True when the CI of ``gap`` reaches 0 or lies above it (None: no ceiling or no CI)."""


class AgreementComparison(SourceStatus):
    """Individual agreement of a simulated source with the matched human judgements."""

    n_events: int = 0
    """Matches: a simulated conversation with the human conversation of the same participant and domain
    (the first of each, where repeated)."""
    top1: Estimate | None = None
    """Tie-aware share of matches where both pick the same ranked_best arm (= ``by_instrument
    ['ranked_best'].top1``; where the human's ranks were derived from ratings, their tied maxima)."""
    top1_chance: float | None = None
    """Chance level: mean over matches of 1/k (k = arms per match); tie-aware ``top1`` has this
    expectation when the two sides are independent."""
    n_tied: int = 0
    """Matches of ``top1`` where either side's maximum is tied (counted fractionally)."""
    ceiling_pair: str | None = None
    """The human instrument pair ``top1`` is compared with (closest usable pair to ranked_best)."""
    ceiling_gap: Estimate | None = None
    """top1 − the human ceiling of ``ceiling_pair`` on the same matches (same participant draws)."""
    by_instrument: dict[str, InstrumentAgreement] = Field(default_factory=dict)
    """Per instrument present in both sources (ranked_best, rating_preference and wtp_bid as their
    tied maxima, opening_choice): top-1 agreement, its ceiling pair and gap."""
    kendall_tau: Estimate | None = None
    """Mean over matches of Kendall τ-b between the two full rankings."""
    kendall_tau_per_participant: Estimate | None = None
    """Mean over participants of their mean per-match τ."""
    pearson: dict[str, Estimate] = Field(default_factory=dict)
    """Pooled Pearson correlation per rating/bid column (matched rows); mixes between-participant
    rating levels (style) into agreement: see ``pearson_within``."""
    spearman: dict[str, Estimate] = Field(default_factory=dict)
    """Pooled Spearman correlation per rating/bid column (same caveat as ``pearson``)."""
    pearson_within: dict[str, Estimate] = Field(default_factory=dict)
    """Primary rating agreement: Pearson correlation of ratings centred per conversation (each source's
    own mean of the conversation removed), so a participant's rating level is not agreement; shared arm
    preferences (the hierarchy) still count. p_value: bootstrap test of 0."""
    pearson_individual: dict[str, Estimate] = Field(default_factory=dict)
    """Like ``pearson_within`` with each source's arm means also removed (per bootstrap replicate):
    agreement beyond the population's arm means; 0 when the simulator knows only the hierarchy."""
    reaches_ceiling: bool | None = None
    """True when the CI of ``ceiling_gap`` (top1 − human ceiling) reaches 0 or lies above it."""


class RetestResult(SourceStatus):
    """Test–retest: a participant judged the same arm in two different conversations."""

    n_pairs: int = 0
    """Repeated (participant, arm) rating pairs."""
    rating_corr: Estimate | None = None
    """Pooled Pearson correlation of the repeated rating_preference values (includes each
    participant's rating level: see ``rating_corr_within``)."""
    rating_corr_within: Estimate | None = None
    """Primary: Pearson correlation of the repeated ratings centred per conversation (rating level,
    i.e. style, removed). The permutation p-values below test this one."""
    permutation_baseline: float | None = None
    """Mean ``rating_corr_within`` when arms are shuffled within each conversation (keeps the
    participant pairing: what rating style alone gives)."""
    permutation_p: float | None = None
    """Share of those shuffles with correlation ≥ observed (add-one): any arm preference at all."""
    within_arm_baseline: float | None = None
    """Mean ``rating_corr_within`` when centred ratings are shuffled among rows of the same arm
    (stricter: keeps the population's arm means)."""
    within_arm_p: float | None = None
    """Add-one permutation p-value against the within-arm shuffle: individual preference beyond the
    population's arm means."""
    n_order_pairs: int = 0
    """Repeated arm pairs (a, b) both rated by the same participant in two conversations."""
    pairwise_order: Estimate | None = None
    """Share of repeated arm pairs in the same order both times; a tie on either side counts 1/2."""
    pairwise_order_baseline: float | None = None
    """Mean agreement when arms are shuffled within each conversation (≈ 0.5)."""
    pairwise_order_p: float | None = None
    """Add-one permutation p-value for pairwise order agreement (same shuffles)."""
    pairing: str | None = None
    """Which conversations are paired: 'conversation' (any two conversations of the participant: the
    human retest) or 'repeat' (two runs of the same participant and domain with a different
    ``repeat``: a simulator's seed-to-seed consistency)."""


class PlaceboInstrument(SourceStatus):
    """Persona placebo on one top-1 instrument: agreement with one's own human against agreement with
    a different human of the same domain."""

    own: Estimate | None = None
    """Tie-aware top-1 agreement of each simulated conversation with its own human's (first) conversation
    of the same domain, mean over the simulated conversations used (every repeat counts). CI:
    participant bootstrap; n = participants."""
    mismatched: Estimate | None = None
    """The same simulated conversations' mean agreement with the human conversations of every other
    participant of the same domain (the exact mean of the mismatched-pairing permutation distribution)."""
    gap: Estimate | None = None
    """own − mismatched, per conversation then averaged: the part of individual agreement the persona
    explains (0 when the simulator knows only what is common to the domain's people). CI: participant
    bootstrap of the per-conversation gaps; p_value: the permutation p-value (``permutation_p``)."""
    permutation_p: float | None = None
    """Add-one one-sided p-value: share of shuffles of the simulated↔human pairing of participants
    whose gap is ≥ the observed one (``n_perm`` shuffles). One shuffle covers all domains: a
    participant gets another participant's humans in every domain at once, among participants
    matched in the same domains (their tastes carry across domains)."""
    n_events: int = 0
    """Simulated conversations used."""
    n_no_other: int = 0
    """Simulated conversations left out because no other participant of their domain has a human
    conversation with this instrument (e.g. a domain with one participant): they have no mismatched human."""


class PersonaPlacebo(SourceStatus):
    """Persona placebo of one simulated source, per top-1 instrument present in both sources."""

    by_instrument: dict[str, PlaceboInstrument] = Field(default_factory=dict)
    """Keyed ranked_best / rating_preference / wtp_bid / opening_choice (tied maxima as in
    ``InstrumentAgreement``)."""
    n_perm: int = 0
    """Permutations behind each ``permutation_p``."""
    single_domains: list[str] = Field(default_factory=list)
    """Domains with a single matched participant (no mismatched human: their conversations are left out)."""


class VarianceSplit(SourceStatus):
    """Variance of a simulated source's rating_preference split into participant, repeat and residual.

    Model, fitted by REML: rating ~ C(arm) + C(domain) fixed, a random intercept per participant and
    a variance component for the conversation within the participant (statsmodels' MixedLM model;
    its restricted likelihood is computed in closed form, see ``agreement.mixed_model.NestedReml``)."""

    column: str = "rating_preference"
    """The rating split."""
    variance: dict[str, Estimate] = Field(default_factory=dict)
    """Keyed 'participant' (the persona's rating level: random intercept), 'repeat' (a conversation's
    level within its participant: seed to seed when a (participant, domain)'s conversations are
    repeats; with several domains per participant it also holds a participant's domain-specific
    level, so it is an upper bound of the seed part) and 'residual' (per arm within a conversation,
    incl. individual arm preferences); rating points². CI: participant bootstrap (a participant drawn
    twice counts as two participants), ``n_boot`` refits; n = participants."""
    share: dict[str, Estimate] = Field(default_factory=dict)
    """Same keys: each variance over their sum. CI from the same refits: normal on the logit scale
    with the refits' SD and t(participants − 1); the percentile interval where the share or a refit
    is at the boundary 0 or 1."""
    n_participants: int = 0
    """Participants with ratings."""
    n_conversations: int = 0
    """Conversations with ratings."""
    n_repeated: int = 0
    """(participant, domain) cells with two or more conversations (what identifies 'repeat' apart from
    'participant')."""
    n_boot: int = 0
    """Bootstrap refits attempted (at most 100: each is a mixed-model fit)."""
    n_failed: int = 0
    """Refits that raised or did not converge; left out of the CIs (above 10% of ``n_boot`` the CIs are
    withheld, see ``Estimate.note``)."""


class CeilingResult(SourceStatus):
    """Human self-consistency ceiling."""

    cross_instrument: dict[str, Estimate] = Field(default_factory=dict)
    """Tie-aware top-1 agreement per instrument pair, keyed 'a~b' (ranked_best, rating_preference,
    wtp_bid, opening_choice), each with its own participant-bootstrap CI; n = participants."""
    n_tied: dict[str, int] = Field(default_factory=dict)
    """Per pair in ``cross_instrument``: human conversations where either instrument's maximum is tied."""
    excluded: dict[str, str] = Field(default_factory=dict)
    """Pairs left out, with the reason (one instrument by construction, e.g. ranks derived from the
    ratings; too few participants)."""
    ceiling: float | None = None
    """The ceiling of ranked_best: the value of ``ceiling_pair`` (pairs are not averaged)."""
    ceiling_pair: str | None = None
    """The pair behind ``ceiling``: the closest usable pair to ranked_best."""
    retest: RetestResult | None = None
    """Test–retest of the same arm judged twice."""


class AgreementResult(SourceStatus):
    """Analysis 2: individual agreement vs the human self-consistency ceiling."""

    human_ceiling: CeilingResult | None = None
    """Human self-consistency."""
    vs_human: dict[str, AgreementComparison] = Field(default_factory=dict)
    """Per simulated source."""
    n_gen_error: dict[str, int] = Field(default_factory=dict)
    """Per source, conversations dropped because they are flagged gen_error."""
    persona_placebo: dict[str, PersonaPlacebo] = Field(default_factory=dict)
    """Per simulated source: agreement with one's own human minus agreement with another human of
    the same domain (a control: the agreement the persona itself explains)."""
    sim_retest: dict[str, RetestResult] = Field(default_factory=dict)
    """Per simulated source: test–retest of its repeats (same participant and domain, different
    ``repeat``), next to the humans' ``human_ceiling.retest``."""
    variance_split: dict[str, VarianceSplit] = Field(default_factory=dict)
    """Per simulated source: its rating variance split into participant, repeat and residual."""


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
    n_participants: dict[str, int] = Field(default_factory=dict)
    """Participants with texts here, per source."""
    homogeneity: dict[str, Estimate] = Field(default_factory=dict)
    """Per source, mean pairwise cosine similarity of the embeddings."""
    jsd_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, plug-in Jensen–Shannon divergence (base 2) of cluster shares vs human.
    Biased upward (> 0 for two samples of one distribution), so its CI is withheld (NaN, see
    ``note``); p_value: participant-level permutation test of equal shares."""
    jsd_chance_vs_human: dict[str, float] = Field(default_factory=dict)
    """Per simulated source, mean plug-in JSD under the permutation null (source labels shuffled
    per participant): the divergence that sampling alone gives."""
    jsd_corrected_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, bias-corrected JSD = plug-in − chance (0 when both sources share one
    topic distribution; the value may fall below 0 by chance, the CI is limited to ≥ 0). CI:
    inversion of participant-bootstrap tests over worlds in which the sources differ by λ × the
    observed difference (see ``simlab.fidelity.analyses.topics``); p_value: the permutation test;
    n: participants."""
    jsd_by_domain: dict[str, dict[str, Estimate]] = Field(default_factory=dict)
    """Per simulated source, per domain (with ≥ 10 participants in both sources), the bias-corrected
    JSD within that domain (clusters shared across domains), CI and p-value as above."""
    jsd_within_domain: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, weighted mean of ``jsd_by_domain`` (weights ``domain_weights``): topic
    divergence that a different mix of domains cannot produce. p_value: permutation test of the
    weighted plug-in JSDs (participants keep their domains)."""
    domain_weights: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per simulated source, the weight of each domain in ``jsd_within_domain`` (its share of the
    two sources' texts among the domains used)."""
    unavailable: dict[str, str] = Field(default_factory=dict)
    """Per simulated source with no divergence or AUC here, why (e.g. fewer than 10 participants)."""
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
    domains: list[str] = Field(default_factory=list)
    """PRISM conversation types (domains) present in the human openings; ``jsd_vs_prism`` uses
    only these, each source weighted to the human mix of them."""
    jsd_vs_prism: dict[str, Estimate] = Field(default_factory=dict)
    """Per source, plug-in JSD (base 2) of its shares (in ``domains`` only, standardised to the
    human domain mix) vs PRISM's cluster sizes. Descriptive: biased upward by the source's sampling
    noise (percentile participant-bootstrap CI)."""
    jsd_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, plug-in JSD vs human over PRISM's clusters (CI withheld, as in ``TopicUnit``)."""
    jsd_chance_vs_human: dict[str, float] = Field(default_factory=dict)
    """Per simulated source, the permutation chance level of ``jsd_vs_human``."""
    jsd_corrected_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, bias-corrected JSD vs human over PRISM's clusters (as in ``TopicUnit``)."""
    jsd_by_domain: dict[str, dict[str, Estimate]] = Field(default_factory=dict)
    """Per simulated source and domain, bias-corrected JSD vs human over PRISM's clusters."""
    jsd_within_domain: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, weighted mean of ``jsd_by_domain`` (weights ``domain_weights``)."""
    domain_weights: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Per simulated source, the weight of each domain in ``jsd_within_domain``."""


class TopicsResult(SourceStatus):
    """Analysis 3: topic divergence."""

    embedding: str | None = None
    """The embedding actually used: tfidf or minilm (None when none was, e.g. it could not be loaded)."""
    embedding_model: str | None = None
    """What computed it (the vectoriser, or the sentence model and the package version that shipped it)."""
    n_gen_error: dict[str, int] = Field(default_factory=dict)
    """Per source, conversations flagged ``gen_error``: their opening prompt is kept (written before
    any reply), their later user turns are left out of ``all_user`` (they may react to the error)."""
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
    """Log-odds of being chosen when shown first vs any later position (model: first_shown + arms).
    Where the letters follow the order (``order_vs_label`` 'confounded') it is also the effect of the
    label A; where they do not, the label is left out of this model (see ``first_shown_joint``)."""
    positions: dict[str, Estimate] = Field(default_factory=dict)
    """Per-position log-odds vs the last position (model: position dummies + arms)."""
    n_events: int = 0
    """Choice events used."""
    first_shown_excess: Estimate | None = None
    """Scale-free position bias, in percentage points: share of events whose first-shown arm is
    chosen minus the share its arms predict without position (the model above with first_shown
    set to 0). Unlike the log-odds it does not grow when choices get less noisy. p-value:
    cluster-robust (participant sandwich incl. the estimated arm strengths), null = 0."""
    penalised: bool = False
    """True when a maximum-likelihood fit diverged (choices perfectly predicted by position:
    separation) and the log-odds come from a log-F(1,1)-penalised fit (finite, shrunk towards 0)."""
    n_gen_error: int = 0
    """Events (conversations) dropped because a generation failed there (``gen_error``)."""
    order_vs_label: Literal["separate", "confounded", "no_labels"] | None = None
    """Whether display order and the letter label can be told apart in this source's events:
    'separate' (in at least 5% of events the reply shown first is not labelled A, e.g.
    ``protocol.letters = "independent"``: ``first_shown_joint`` and ``first_label`` are estimated),
    'confounded' (the letter follows the display order, A shown first: ``first_shown`` is one
    combined effect of order and label), 'no_labels' (no letters recorded)."""
    order_vs_label_note: str | None = None
    """The same in words, with the shares behind it (and why the joint model failed, if it did)."""
    label_mismatch_share: float | None = None
    """Share of rows (with a letter) whose letter is not their display position's letter (A for
    position 1, B for 2, …): 0 when letters follow the order, about (k − 1)/k when independent."""
    split_event_share: float | None = None
    """Share of events (every row with a letter) whose reply shown first is not labelled A: the
    events that tell order from label apart; below 5% the design counts as confounded."""
    first_shown_joint: Estimate | None = None
    """Only when ``order_vs_label`` is 'separate': log-odds of being chosen when shown first vs any
    later position, holding the label fixed (model: first_shown + first_label + arms, events with a
    letter on every row). CI: participant bootstrap; p-value: cluster-robust."""
    first_label: Estimate | None = None
    """Only when ``order_vs_label`` is 'separate': log-odds of being chosen when labelled A vs any
    other letter, holding the display position fixed (same model as ``first_shown_joint``)."""
    n_events_joint: int = 0
    """Choice events of the joint model (0 when it was not fitted)."""


class PositionOutcome(SourceStatus):
    """Position bias for one outcome."""

    per_source: dict[str, PositionFit] = Field(default_factory=dict)
    """Per source."""
    interaction: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, source × first_shown interaction (sim − human log-odds) in the pooled
    model; p-value cluster-robust (t, participants − 1 df)."""
    interaction_p: float | None = None
    """Cluster-robust Wald test (F, sandwich clustered by participant) that all source ×
    first_shown interactions are 0. (Not a likelihood-ratio test: that ignores that a participant
    makes several choices, and over-rejects.)"""
    excess_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, ``first_shown_excess`` sim − human in percentage points: how much more
    often the simulator puts the first-shown arm on top than people do, beyond what the arms
    explain. CI: paired participant bootstrap; p-value: cluster-robust. The headline comparison."""
    positions_interaction: dict[str, dict[str, Estimate]] = Field(default_factory=dict)
    """Per simulated source, per position (vs the last position): sim − human log-odds."""
    positions_interaction_p: float | None = None
    """Cluster-robust Wald test (F) that every source × position interaction is 0 (all positions,
    all simulated sources shown the same positions as human)."""
    first_shown_joint_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source where both it and human have order and label apart ('separate'):
    ``first_shown_joint`` sim − human (log-odds of order, label held fixed). p-value and 95% CI:
    cluster-robust t by participant (the two fits stacked; the percentile bootstrap under-covered)."""
    first_label_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, as ``first_shown_joint_vs_human``: ``first_label`` sim − human (log-odds
    of the label A, order held fixed)."""
    label_not_compared: dict[str, str] = Field(default_factory=dict)
    """Per simulated source with order and label apart but no sim − human difference of them: why
    (e.g. human's letters follow the display order, so its label and order are confounded)."""


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
    """turn_rating change per turn within a conversation, all rated turns (points per turn; model in
    ``DynamicsResult.model``). 95% CI and p-value of 0: cluster-robust by participant (t, G − 1 df);
    n = participants."""
    slope_window: Estimate | None = None
    """The same slope on the balanced window only (the first ``DynamicsResult.window`` rated turns of
    the conversations that reach them), so every turn comes from the same conversations."""
    switch_rate: Estimate | None = None
    """Share of consecutive turn pairs where the preferred arm (argmax turn_rating) changes."""
    ceiling_share: Estimate | None = None
    """Share of turn ratings ≥ 95 (the top 5% of the 0–100 slider)."""
    n_turns: Estimate | None = None
    """Mean conversation length (user turns incl. the opening)."""
    n_turns_shares: dict[str, float] = Field(default_factory=dict)
    """Share of conversations per length, keyed by the number of user turns ('2', '3', …)."""
    early_stop_share: Estimate | None = None
    """Share of conversations ended by the user (stop_reason user_ended), when recorded."""
    n_ratings: int = 0
    """Turn ratings used (replies flagged gen_error excluded)."""
    n_gen_error: int | None = None
    """Turn ratings left out because their reply is flagged gen_error (None: the turns table has no
    gen_error column)."""
    n_participants: int = 0
    """Participants of this source in the conversations table (fewer than 10: not_available)."""


class DynamicsResult(SourceStatus):
    """Analysis 5: turn ratings over turns. Slopes come from a within-conversation model
    (``model``): each conversation has its own level, which absorbs the participant × source and
    conversation levels and removes the survivorship of long conversations from the slope;
    inference is clustered by participant (slopes may vary per participant and correlate between a
    human and their simulated copy)."""

    model: str | None = None
    """The slope model and its inference, in words."""
    per_source: dict[str, DynamicsSource] = Field(default_factory=dict)
    """Per source."""
    slope_diff_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, slope(source) − slope(human) in points per turn, all rated turns (the mean
    of the conversations' own slopes, each counted once). 95% CI and p-value of 0:
    cluster-robust by participant_id (a human and their simulated copy are one cluster; CR2, t with
    Bell–McCaffrey df); n = participants in either source."""
    window: int | None = None
    """Rated turns in the balanced window: the smallest per-source median of rated turns per
    conversation (at least 2)."""
    slope_diff_window_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """``slope_diff_vs_human`` on the balanced window only."""
    n_turns_diff_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, mean conversation length (user turns) of the source − human's, over
    conversations (OLS n_turns ~ 1 + source on the two sources' conversations). 95% CI and p-value
    of 0: cluster-robust by participant_id (CR1, t with G − 1 df); n = participants in either source."""
    early_stop_diff_vs_human: dict[str, Estimate] = Field(default_factory=dict)
    """Per simulated source, share of conversations ended by the user (stop_reason user_ended) of the
    source − human's, as a fraction (same model and inference as ``n_turns_diff_vs_human``)."""


# ---------------------------------------------------------------------------------------------
# 6. trait biases


class TraitsSource(SourceStatus):
    """Conditional logit of ranked_best on standardised traits (+ length, arm dummies)."""

    coefficients: dict[str, Estimate] = Field(default_factory=dict)
    """Log-odds per 1 SD of each trait (and 'length'); p-values cluster-robust by participant."""
    n_events: int = 0
    """Choice events used."""
    dropped: dict[str, str] = Field(default_factory=dict)
    """Traits left out for this source only, with the reason (e.g. constant within its events)."""
    penalised: bool = False
    """True when the maximum-likelihood fit diverged (separation) and the coefficients come from a
    log-F(1,1)-penalised fit."""
    n_missing: int = 0
    """Choice events dropped because a reply in them has no trait score (errored or ungraded)."""
    n_gen_error: int = 0
    """Choice events dropped because a generation failed in that conversation (``gen_error``)."""


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
    """Per simulated source, per trait fitted in both: source × trait interaction (sim − human
    log-odds per 1 SD) in the pooled model; CI and p-value: cluster-robust t by participant."""
    interaction_p: float | None = None
    """Cluster-robust Wald test (F, sandwich clustered by participant) that all source × trait
    interactions are 0. (Not a likelihood-ratio test: that ignores clustering.)"""
    specification: str = "arm_adjusted"
    """'arm_adjusted': every autograded dimension + length, with arm dummies; 'paper': the
    continuous traits + length without arm dummies (PROTOCOL §5.6)."""


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


# ---------------------------------------------------------------------------------------------
# generation errors (descriptive)


class GenErrorsArm(_Model):
    """One arm of one source: its conversations and replies, and how many were flagged. Counts and
    shares are None when the data do not record that flag (see ``GenErrorsSource.missing``)."""

    n_conversations: int = 0
    """Conversations the arm took part in (it has a reply or a judgement there)."""
    n_replies: int | None = None
    """The arm's replies (assistant turns); None: no turns table for this source."""
    n_reply_gen_error: int | None = None
    """Replies flagged ``gen_error`` in the turns table (error notices shown instead of a reply)."""
    reply_gen_error_share: float | None = None
    """``n_reply_gen_error`` / replies with the flag recorded."""
    n_conversation_arm_error: int | None = None
    """Conversations with at least one reply of this arm flagged ``gen_error``."""
    arm_error_conversation_share: float | None = None
    """``n_conversation_arm_error`` / ``n_conversations``."""
    n_conversation_gen_error: int | None = None
    """Of the arm's conversations, those flagged ``gen_error`` (some arm's generation failed there)."""
    conversation_gen_error_share: float | None = None
    """``n_conversation_gen_error`` / the arm's conversations with the flag recorded."""
    n_max_turns_reached: int | None = None
    """Of the arm's conversations, those ended by the context budget (``max_turns_reached``)."""
    max_turns_reached_share: float | None = None
    """``n_max_turns_reached`` / the arm's conversations with the flag recorded."""


class GenErrorsSource(_Model):
    """One source over all arms, its arms, and how its conversations ended."""

    n_conversations: int = 0
    """Conversations of the source."""
    n_replies: int | None = None
    """Assistant replies of every arm (None: no turns table for this source)."""
    n_reply_gen_error: int | None = None
    """Replies flagged ``gen_error`` in the turns table."""
    reply_gen_error_share: float | None = None
    """``n_reply_gen_error`` / replies with the flag recorded."""
    n_conversation_gen_error: int | None = None
    """Conversations flagged ``gen_error``."""
    conversation_gen_error_share: float | None = None
    """``n_conversation_gen_error`` / conversations with the flag recorded."""
    n_max_turns_reached: int | None = None
    """Conversations ended by the context budget (``max_turns_reached``)."""
    max_turns_reached_share: float | None = None
    """``n_max_turns_reached`` / conversations with the flag recorded."""
    stop_reasons: dict[str, int] = Field(default_factory=dict)
    """Conversations per ``stop_reason`` (user_ended, max_turns, context_limit, error), when recorded."""
    n_stop_reason_missing: int = 0
    """Conversations without a ``stop_reason`` where the source records it for others."""
    missing: list[str] = Field(default_factory=list)
    """What this source's data do not record (absent, or empty for its rows): any of
    'conversations.gen_error', 'conversations.max_turns_reached', 'conversations.stop_reason',
    'turns.gen_error', 'turns (assistant replies)'; the counts that need it are None."""
    per_arm: dict[str, GenErrorsArm] = Field(default_factory=dict)
    """Per arm, in ``GenErrorsResult.arms`` order."""


class GenErrorsResult(SourceStatus):
    """Generation errors (PROTOCOL §2, errors): per source × arm, conversations, replies and the
    shares flagged ``gen_error`` (replies, turns table; conversations) and ``max_turns_reached``,
    and per source the ``stop_reason`` counts. Descriptive: no intervals."""

    arms: list[str] = Field(default_factory=list)
    """Arms present, in the run's config order where the data say it (else alphabetical)."""
    per_source: dict[str, GenErrorsSource] = Field(default_factory=dict)
    """Per source."""


AnalysisResult = SourceStatus
"""The result of any registered analysis (``simlab.fidelity.registry.ANALYSES``): its own model, derived
from ``SourceStatus``."""


class UnknownAnalysisResult(SourceStatus):
    """A result JSON's entry for an analysis that is not registered here (e.g. its package is not
    installed): kept as written, shown by its status only."""

    model_config = ConfigDict(extra="allow")


class FidelityResult(_Model):
    """Every fidelity analysis of one ``Tables``: each simulated source compared with human.

    Each entry of ``analyses`` is read back (from JSON or a dict) as the result model its analysis
    registered, whatever the analysis; results written before an analysis existed simply lack it.
    """

    sources: list[str]
    """Sources present."""
    n_boot: int
    """Bootstrap replicates per CI."""
    seed: int
    """Seed of the participant bootstrap (and of KMeans / CV splits)."""
    analyses: dict[str, SerializeAsAny[SourceStatus]]
    """Keyed by analysis name, one entry per registered analysis that ran: hierarchy / agreement /
    topics / position / dynamics / traits, user_traits (when autograded), gen_errors (the descriptive
    generation-error table), then any analysis a package or module registered."""
    # left out of the JSON when unweighted, so a result reads and writes as before weights existed
    weights: WeightsSummary | None = Field(default=None, exclude_if=lambda v: v is None)
    """With ``--weights``: the raking weights used; ``analyses`` are then weighted and
    ``analyses_unweighted`` holds the same analyses without the weights."""
    analyses_unweighted: dict[str, SerializeAsAny[SourceStatus]] | None = Field(default=None,
                                                                               exclude_if=lambda v: v is None)
    """With ``--weights``: every analysis again without the weights (same seed, same draws)."""

    @field_validator("analyses", "analyses_unweighted", mode="before")
    @classmethod
    def _by_registered_model(cls, value: Any) -> Any:
        """Each entry as its analysis's result model (looked up by name in the registry)."""
        if not isinstance(value, Mapping):
            return value
        from simlab.fidelity.registry import ANALYSES  # the registry's module imports this one

        out: dict[Any, Any] = {}
        for name, entry in value.items():
            if isinstance(entry, SourceStatus) or not isinstance(name, str):
                out[name] = entry
            elif name in ANALYSES:
                out[name] = ANALYSES.get(name).result.model_validate(entry)
            else:
                out[name] = UnknownAnalysisResult.model_validate(entry)
        return out
