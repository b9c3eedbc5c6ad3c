"""One report section per PROTOCOL §5 analysis: verdict sentences, a table and a chart.

Verdicts are computed from the numbers only (CIs, p-values, the flags the analyses set),
so the sentence and the table can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from simlab.fidelity.result import (
    AgreementResult,
    DynamicsResult,
    Estimate,
    FidelityResult,
    HierarchyResult,
    PositionResult,
    TopicsResult,
    TraitsResult,
    UserTraitsResult,
)
from simlab.report import charts
from simlab.report.charts import Point

ALPHA = 0.05
TITLES = {
    "hierarchy": ("1. Aggregate hierarchy", "Do simulated users rank the arms in the same order as people?"),
    "agreement": ("2. Individual agreement vs the human ceiling",
                  "Does the simulator pick what the matched person picked, as often as people agree with themselves?"),
    "topics": ("3. Topic divergence", "Do simulated users talk about the same things as people?"),
    "position": ("4. Position bias", "Is the response shown first chosen more often, and more than by people?"),
    "dynamics": ("5. Feedback dynamics", "How do turn-by-turn ratings move over a conversation?"),
    "traits": ("6. Text-level trait biases", "Which response traits drive the choice of the best response?"),
    "user_traits": ("7. User traits (autograder)",
                    "Do simulated users write like people (sycophancy, self-disclosure, naturalness, …)?"),
}
ORDER = tuple(TITLES)
OPTIONAL = frozenset({"user_traits"})


@dataclass
class Row:
    """One line of a section's table."""

    source: str
    measure: str
    estimate: str
    ci: str = ""
    p: str = ""
    n: str = ""


@dataclass
class Section:
    """What the template renders for one analysis."""

    key: str
    title: str
    question: str
    status: str
    verdicts: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)  # SVG markup made by simlab.report.charts


# ------------------------------------------------------------------------------ formatting


def fmt(x: float | None, digits: int = 2) -> str:
    """A number for humans ("–" when missing; a true minus sign)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}".replace("-", "−")


def fmt_p(p: float | None) -> str:
    """p-value as papers print it."""
    if p is None or not math.isfinite(p):
        return "–"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt_ci(e: Estimate, digits: int = 2, pct: bool = False) -> str:
    """'0.33–1.00', '33%–100%', or '−1.07 to −0.39' when a dash would read as a minus."""
    if pct:
        return f"{fmt(100 * e.ci_low, 0)}%–{fmt(100 * e.ci_high, 0)}%"
    sep = "–" if e.ci_low >= 0 else " to "
    return f"{fmt(e.ci_low, digits)}{sep}{fmt(e.ci_high, digits)}"


def _row(source: str, measure: str, e: Estimate | None, digits: int = 2) -> Row:
    if e is None:
        return Row(source, measure, "–")
    p = "" if e.p_value is None else fmt_p(e.p_value).removeprefix("p = ").replace("p < ", "<")
    return Row(source, measure, fmt(e.value, digits), fmt_ci(e, digits), p, str(e.n))


def _excludes_zero(e: Estimate) -> bool:
    return math.isfinite(e.ci_low) and math.isfinite(e.ci_high) and (e.ci_low > 0 or e.ci_high < 0)


def _sig(e: Estimate) -> bool:
    """Significant at 5%: by the model p-value when there is one, else by the CI."""
    return e.p_value < ALPHA if e.p_value is not None else _excludes_zero(e)


def _points_pct(e: Estimate) -> Estimate:
    """A share difference in percentage points (tables show points, not fractions)."""
    return e.model_copy(update={"value": 100 * e.value, "ci_low": 100 * e.ci_low, "ci_high": 100 * e.ci_high})


def unavailable(status: str, reason: str | None) -> str:
    """The sentence for an analysis that did not run."""
    lead = "Not available" if status == "not_available" else "Failed"
    return f"{lead}: {reason or 'no reason given'}."


def _points(items: dict[str, Estimate], source: str) -> list[Point]:
    return [Point(k, source, e.value, e.ci_low, e.ci_high) for k, e in items.items()]


# ------------------------------------------------------------------------------ 1. hierarchy


def hierarchy(r: HierarchyResult) -> Section:
    s = _section("hierarchy", r.status)
    points: list[Point] = []
    for src, h in r.per_source.items():
        if h.status != "ok":
            s.verdicts.append(f"{src}: {unavailable(h.status, h.reason)}")
            continue
        derived = " (ranks derived from preference ratings)" if h.derived_ranks else ""
        s.verdicts.append(f"{src} ranks the arms {' > '.join(h.ordering)} over {h.n_events} rankings{derived}.")
        for arm, e in h.strengths.items():
            if arm == r.reference_arm:
                s.rows.append(Row(src, f"strength {arm}", "0 (reference)", n=str(e.n)))
            else:
                s.rows.append(_row(src, f"strength {arm}", e))
        points += _points(h.strengths, src)
    for src, c in r.vs_human.items():
        t = c.kendall_tau
        ci = f"Kendall τ = {fmt(t.value)}, 95% CI {fmt_ci(t)}"
        if c.same_ordering:
            s.verdicts.append(f"The simulator ({src}) recovers the human arm ordering ({ci}).")
        elif _excludes_zero(t) and t.ci_low > 0:
            s.verdicts.append(f"The simulator ({src}) orders the arms differently from humans but agrees with them "
                              f"more than chance ({ci}).")
        else:
            s.verdicts.append(f"The simulator ({src}) does not recover the human arm ordering ({ci}).")
        s.rows.append(_row(f"{src} vs human", "Kendall τ of orderings", t))
        s.rows.append(_row(f"{src} vs human", "correlation of strengths", c.strength_corr))
        for arm, d in c.strength_diff.items():
            s.rows.append(_row(f"{src} − human", f"strength {arm} (vs {r.reference_arm})", d))
        if c.strength_diff:
            arm, d = max(c.strength_diff.items(), key=lambda kv: abs(kv[1].value))
            s.verdicts.append(
                f"The largest difference: {src} rates {arm} {fmt(math.exp(d.value))}× as strong relative to "
                f"{r.reference_arm} as people do (log-strength difference {fmt(d.value)}, 95% CI {fmt_ci(d)}); "
                f"test that every arm's strength is the same as people's: {fmt_p(c.strength_diff_p)} "
                "(clustered by participant).")
    for src, h in r.per_source.items():
        if h.penalised:
            s.verdicts.append(f"{src}: some arm is (almost) always or never chosen, so its strengths come from a "
                              "penalised fit (finite, shrunk towards 0).")
        if h.n_gen_error:
            s.verdicts.append(f"{src}: {h.n_gen_error} rankings of conversations with a failed generation were left out.")
    if points:
        ref = f" (vs {r.reference_arm} = 0)" if r.reference_arm else ""
        s.charts.append(charts.forest(points, title="Arm strength (Plackett–Luce log-worth)",
                                      xlabel=f"log-strength{ref}"))
    return s


# ------------------------------------------------------------------------------ 2. agreement


def agreement(r: AgreementResult) -> Section:
    s = _section("agreement", r.status)
    ceiling = r.human_ceiling
    ceil_value: float | None = None
    points: list[Point] = []
    if ceiling is not None and ceiling.status == "ok":
        ceil_value = ceiling.ceiling
        for pair, e in ceiling.cross_instrument.items():
            s.rows.append(_row("human", f"self-agreement {pair.replace('~', ' vs ')}", e))
            points.append(Point(pair.replace("~", " vs "), "human", e.value, e.ci_low, e.ci_high))
        if ceil_value is not None:
            pair = (ceiling.ceiling_pair or "").replace("~", " and ")
            s.verdicts.append(f"People agree with themselves across {pair or 'instruments'} in {fmt(100 * ceil_value, 0)}% "
                              "of conversations (the ceiling: ties count as the chance of agreeing).")
        for pair, why in ceiling.excluded.items():
            s.verdicts.append(f"Not a ceiling: {pair.replace('~', ' vs ')} ({why}).")
        rt = ceiling.retest
        within = rt.rating_corr_within if rt is not None else None
        retest = (within or rt.rating_corr) if rt is not None else None
        if rt is not None and rt.status == "ok" and retest is not None:
            s.rows.append(_row("human", "test–retest rating correlation" + (" (within conversation)" if within else ""),
                               retest))
            if rt.rating_corr is not None and within is not None:
                s.rows.append(_row("human", "test–retest rating correlation (pooled)", rt.rating_corr))
            better = rt.permutation_p is not None and rt.permutation_p < ALPHA
            s.verdicts.append(
                f"Rating the same arm again in another conversation, people correlate r = {fmt(retest.value)} "
                f"(95% CI {fmt_ci(retest)}{', rating style removed' if within else ''}), "
                f"{'well above' if better else 'not clearly above'} the shuffled baseline "
                f"({fmt(rt.permutation_baseline)}, {fmt_p(rt.permutation_p)}).")
    elif ceiling is not None:
        s.verdicts.append(f"Human ceiling: {unavailable(ceiling.status, ceiling.reason)}")
    for src, c in r.vs_human.items():
        if c.status != "ok" or c.top1 is None:
            s.verdicts.append(f"{src}: {unavailable(c.status, c.reason)}")
            continue
        t = c.top1
        share = f"{fmt(100 * t.value, 0)}% of {c.n_events} events (95% CI {fmt_ci(t, pct=True)})"
        chance = c.top1_chance
        vs_chance = ""
        if chance is not None:
            vs_chance = (" — above" if t.ci_low > chance else " — not above") + f" chance ({fmt(100 * chance, 0)}%)"
        gap = c.ceiling_gap
        if gap is None:
            tail = "; there is no human ceiling to compare with"
        else:
            where = "above" if gap.value > 0 else "below"
            verdict = "reaches" if c.reaches_ceiling else "stays below"
            tail = (f"; on the same conversations it is {fmt(abs(100 * gap.value), 0)} points {where} the human ceiling "
                    f"({(c.ceiling_pair or '').replace('~', ' vs ')}; 95% CI {fmt(100 * gap.ci_low, 0)} to "
                    f"{fmt(100 * gap.ci_high, 0)} points), so it {verdict} it")
        s.verdicts.append(f"The simulator ({src}) picks the matched human's best arm in {share}{vs_chance}{tail}.")
        s.rows.append(_row(src, "top-1 agreement with human", t))
        if gap is not None:
            s.rows.append(_row(src, "top-1 agreement − human ceiling", gap))
        for col, e in c.pearson_within.items():
            s.rows.append(_row(src, f"Pearson r within conversation, {col}", e))
        for col, e in c.pearson_individual.items():
            s.rows.append(_row(src, f"Pearson r beyond the arm means, {col}", e))
        if c.pearson_within:
            col, e = next(iter(c.pearson_within.items()))
            s.verdicts.append(f"Within a conversation, the {col} ratings of {src} correlate r = {fmt(e.value)} with "
                              f"its human's (95% CI {fmt_ci(e)}; a participant's rating level does not count).")
        points.append(Point(f"{src} vs human", src, t.value, t.ci_low, t.ci_high))
        if c.kendall_tau is not None:
            s.rows.append(_row(src, "Kendall τ of full rankings", c.kendall_tau))
        for col, e in c.pearson.items():
            s.rows.append(_row(src, f"Pearson r pooled, {col}", e))
    if any(r.n_gen_error.values()):
        s.verdicts.append("Conversations with a failed generation were left out: " + ", ".join(
            f"{src} {n}" for src, n in r.n_gen_error.items() if n) + ".")
    if points:
        refs = {"ceiling": ceil_value} if ceil_value is not None else {}
        chances = {c.top1_chance for c in r.vs_human.values() if c.top1_chance is not None}
        if len(chances) == 1:
            refs["chance"] = chances.pop()
        s.charts.append(charts.forest(points, title="Top-1 agreement", xlabel="share of events", refs=refs))
    return s


# ------------------------------------------------------------------------------ 3. topics


def topics(r: TopicsResult) -> Section:
    s = _section("topics", r.status)
    for name, unit in (("opening prompts", r.opening), ("all user turns", r.all_user)):
        if unit is None:
            continue
        if unit.status != "ok":
            s.verdicts.append(f"Topics of {name}: {unavailable(unit.status, unit.reason)}")
            continue
        for src, why in unit.unavailable.items():
            s.verdicts.append(f"Topics of {name}, {src}: not compared: {why}.")
        for src, e in unit.jsd_vs_human.items():
            auc = unit.auc_vs_human.get(src)
            corrected = unit.jsd_corrected_vs_human.get(src)
            if corrected is not None:
                sig = "" if _sig(corrected) else "; not significantly different from people"
                sentence = (f"The {name} of {src} differ in topic from people's by JSD {fmt(corrected.value, 3)} beyond "
                            f"what sampling alone gives (95% CI {fmt_ci(corrected, 3)}, permutation "
                            f"{fmt_p(corrected.p_value)}; 0 = the same topic mix{sig})")
            else:
                sentence = (f"The {name} of {src} diverge from humans' with JSD = {fmt(e.value)} "
                            f"(0 = same topic mix, 1 = disjoint; {fmt_p(e.p_value)})")
            if auc is not None:
                told = "can" if auc.ci_low > 0.5 else "cannot reliably"
                sentence += (f"; a classifier {told} tell them from human text "
                             f"(AUC = {fmt(auc.value)}, 95% CI {fmt_ci(auc)})")
            s.verdicts.append(sentence + ".")
            within = unit.jsd_within_domain.get(src)
            if within is not None:
                s.verdicts.append(f"Comparing like with like within each domain, the difference is JSD "
                                  f"{fmt(within.value, 3)} beyond chance (95% CI {fmt_ci(within, 3)}, {fmt_p(within.p_value)}), "
                                  "so a different mix of domains is not counted as a topic difference.")
                s.rows.append(_row(src, f"JSD beyond chance within domains, {name}", within, 3))
            if corrected is not None:
                s.rows.append(_row(src, f"JSD beyond chance, {name}", corrected, 3))
            s.rows.append(_row(src, f"JSD plug-in (biased upward), {name}", e, 3))
            if src in unit.jsd_chance_vs_human:
                s.rows.append(Row(src, f"JSD by chance alone, {name}", fmt(unit.jsd_chance_vs_human[src], 3)))
            for domain, d in unit.jsd_by_domain.get(src, {}).items():
                s.rows.append(_row(src, f"JSD beyond chance, {name}, {domain}", d, 3))
            if auc is not None:
                s.rows.append(_row(src, f"classifier AUC, {name}", auc))
        for src, e in unit.homogeneity.items():
            s.rows.append(_row(src, f"homogeneity (mean cosine), {name}", e))
        if name == "opening prompts" and unit.shares:
            cats = [f"cluster {i + 1}" for i in range(unit.n_clusters)]
            s.charts.append(charts.grouped_bars(cats, unit.shares, title=f"Topic clusters of {name} ({r.embedding or 'tfidf'})",
                                                ylabel="share of texts"))
    if r.prism is not None and r.prism.status == "ok":
        for src, e in r.prism.jsd_corrected_vs_human.items():
            s.verdicts.append(f"Over PRISM's human topic clusters, the opening topics of {src} differ from people's by "
                              f"JSD {fmt(e.value, 3)} beyond chance (95% CI {fmt_ci(e, 3)}).")
            s.rows.append(_row(src, "JSD beyond chance over PRISM's topic clusters", e, 3))
        for src, e in r.prism.jsd_vs_prism.items():
            s.rows.append(_row(src, "JSD vs PRISM's published cluster sizes (descriptive, includes sampling noise)", e, 3))
    if any(r.n_gen_error.values()):
        s.verdicts.append("User turns after a failed generation were left out: " + ", ".join(
            f"{src} {n}" for src, n in r.n_gen_error.items() if n) + ".")
    return s


# ------------------------------------------------------------------------------ 4. position


OUTCOME_NAMES = {"ranked_best": "ranked best", "opening_choice": "opening choice", "ranking": "full ranking"}


def position(r: PositionResult) -> Section:
    s = _section("position", r.status)
    points: list[Point] = []
    for outcome, o in r.outcomes.items():
        label = OUTCOME_NAMES.get(outcome, outcome)
        if o.status != "ok":
            s.verdicts.append(f"Position bias ({label}): {unavailable(o.status, o.reason)}")
            continue
        for src, fit in o.per_source.items():
            if fit.status != "ok" or fit.first_shown is None:
                s.verdicts.append(f"{src}, {label}: {unavailable(fit.status, fit.reason)}")
                continue
            e = fit.first_shown
            s.rows.append(_row(src, f"{label}: first shown (log-odds)", e))
            points.append(Point(label, src, e.value, e.ci_low, e.ci_high))
            if fit.first_shown_excess is not None:
                s.rows.append(_row(src, f"{label}: first shown, points above the arms' share", _points_pct(fit.first_shown_excess)))
        for src, e in o.excess_vs_human.items():
            more = "more" if e.value > 0 else "less"
            sig = "" if _sig(e) else "; not significantly different from people"
            s.verdicts.append(
                f"For {label}, {src} puts the first-shown response on top {fmt(abs(100 * e.value), 0)} points {more} "
                f"often than people, beyond what the arms explain (95% CI {fmt(100 * e.ci_low, 0)} to "
                f"{fmt(100 * e.ci_high, 0)} points, {fmt_p(e.p_value)}{sig}).")
            s.rows.append(_row(f"{src} − human", f"{label}: first shown, points (difference)", _points_pct(e)))
        for src, e in o.interaction.items():
            human = o.per_source.get("human")
            sim = o.per_source.get(src)
            both = ""
            if human and sim and human.first_shown and sim.first_shown:
                both = (f": first-shown log-odds {fmt(sim.first_shown.value)} vs {fmt(human.first_shown.value)}"
                        " for humans")
            if src not in o.excess_vs_human:
                verb = "differs significantly from" if _sig(e) else "does not differ significantly from"
                s.verdicts.append(f"For {label}, the position bias of {src} {verb} humans' ({fmt_p(e.p_value)}{both}).")
            s.rows.append(_row(f"{src} − human", f"{label}: first shown, log-odds (interaction; also grows when "
                               "choices are less noisy)", e))
        if o.positions_interaction_p is not None:
            s.rows.append(Row("sim − human", f"{label}: every position (joint test)", "", "",
                              fmt_p(o.positions_interaction_p).removeprefix("p = ").replace("p < ", "<")))
        if not o.interaction:
            for src, fit in o.per_source.items():
                if fit.first_shown is not None:
                    verb = "favours" if _sig(fit.first_shown) and fit.first_shown.value > 0 else (
                        "disfavours" if _sig(fit.first_shown) else "shows no significant bias for")
                    s.verdicts.append(f"For {label}, {src} {verb} the response shown first "
                                      f"(log-odds {fmt(fit.first_shown.value)}, {fmt_p(fit.first_shown.p_value)}).")
    if points:
        s.charts.append(charts.forest(points, title="Preference for the response shown first",
                                      xlabel="log-odds, first shown vs later", refs={"no bias": 0.0}))
    return s


# ------------------------------------------------------------------------------ 5. dynamics


def dynamics(r: DynamicsResult, turns: pd.DataFrame | None = None) -> Section:
    s = _section("dynamics", r.status)
    for src, d in r.per_source.items():
        if d.status != "ok":
            s.verdicts.append(f"{src}: {unavailable(d.status, d.reason)}")
            continue
        for measure, e in (("rating change per turn", d.slope), ("preferred-arm switch rate", d.switch_rate),
                           ("share of ratings ≥ 95", d.ceiling_share), ("turns per conversation", d.n_turns),
                           ("share ended early by user", d.early_stop_share)):
            if e is not None:
                s.rows.append(_row(src, measure, e))
        if d.slope is not None:
            trend = "rise" if _sig(d.slope) and d.slope.value > 0 else ("fall" if _sig(d.slope) else "stay flat")
            s.verdicts.append(f"Turn ratings of {src} {trend} over a conversation "
                              f"({fmt(d.slope.value, 2)} points per turn, 95% CI {fmt_ci(d.slope)}).")
    for src, d in r.per_source.items():
        if d.slope_window is not None:
            s.rows.append(_row(src, f"rating change per turn, first {r.window} turns", d.slope_window))
        if d.n_gen_error:
            s.verdicts.append(f"{src}: {d.n_gen_error} turn ratings of replies that failed to generate were left out.")
    for src, e in r.slope_diff_vs_human.items():
        faster = "faster" if e.value > 0 else "slower"
        sig = "" if _sig(e) else "; not significantly different from people"
        s.verdicts.append(f"Within a conversation, the turn ratings of {src} move {fmt(abs(e.value))} points per turn "
                          f"{faster} than people's (difference {fmt(e.value)}, 95% CI {fmt_ci(e)}, {fmt_p(e.p_value)}{sig}).")
        s.rows.append(_row(f"{src} − human", "rating change per turn (difference)", e))
        w = r.slope_diff_window_vs_human.get(src)
        if w is not None:
            s.verdicts.append(f"Counting only the first {r.window} turns of the conversations that reach them (the same "
                              f"conversations at every turn), the difference is {fmt(w.value)} (95% CI {fmt_ci(w)}).")
            s.rows.append(_row(f"{src} − human", f"rating change per turn, first {r.window} turns (difference)", w))
    if turns is not None and "turn_rating" in turns.columns and "source" in turns.columns:
        rated = turns.dropna(subset=["turn_rating"])
        if len(rated):
            means = rated.groupby(["source", "turn"])["turn_rating"].mean()
            series = {src: (list(g.index.get_level_values("turn") + 1), list(g.values))
                      for src, g in means.groupby(level="source")}
            s.charts.append(charts.lines(series, title="Mean turn rating by turn", xlabel="turn",
                                         ylabel="turn_rating (0–100)"))
    return s


# ------------------------------------------------------------------------------ 6. traits


def traits(r: TraitsResult) -> Section:
    s = _section("traits", r.status)
    if r.excluded:
        s.verdicts.append(f"Excluded as unreliable (inter-rater ICC(2,1) below the threshold): "
                          f"{', '.join(r.excluded)}.")
    points: list[Point] = []
    spec = {"paper": "the paper's specification (continuous traits and length)",
            "arm_adjusted": "traits and length with arm dummies"}.get(r.specification, r.specification)
    s.verdicts.append(f"Model: conditional logit of the best response on {spec}.")
    for src, t in r.per_source.items():
        for trait, why in t.dropped.items():
            s.verdicts.append(f"{src}: {trait} left out ({why}).")
        if t.status == "ok" and (t.n_missing or t.n_gen_error):
            s.verdicts.append(f"{src}: {t.n_missing} choices with an ungraded or errored reply and {t.n_gen_error} with "
                              "a failed generation were left out.")
        if t.status != "ok":
            s.verdicts.append(f"{src}: {unavailable(t.status, t.reason)}")
            continue
        sig = [k for k, e in t.coefficients.items() if _sig(e)]
        s.verdicts.append(f"{src} chooses by {', '.join(sig)}." if sig else
                          f"No trait significantly drives the choices of {src}.")
        for k, e in t.coefficients.items():
            s.rows.append(_row(src, f"{k} (log-odds per SD)", e))
        points += _points(t.coefficients, src)
    for src, per_trait in r.interaction.items():
        diff = [k for k, e in per_trait.items() if _sig(e)]
        for k in diff:
            e = per_trait[k]
            s.verdicts.append(f"Per SD more {k}, the odds that {src} picks a reply change by {fmt(math.exp(e.value))}× "
                              f"what people's do (95% CI {fmt(math.exp(e.ci_low))}–{fmt(math.exp(e.ci_high))}).")
        for k, e in per_trait.items():
            s.rows.append(_row(f"{src} − human", f"{k} (interaction)", e))
    if r.interaction_p is not None:
        s.verdicts.append(f"Joint test that simulated and human trait weights are equal: {fmt_p(r.interaction_p)} "
                          "(clustered by participant).")
    if points:
        s.charts.append(charts.forest(points, title="Trait weights in the choice of the best response",
                                      xlabel="log-odds per SD", refs={"0": 0.0}))
    return s


# ------------------------------------------------------------------------------ 7. user traits


def user_traits(r: UserTraitsResult) -> Section:
    s = _section("user_traits", r.status)
    if r.excluded:
        s.verdicts.append(f"Excluded as unreliable (inter-rater ICC(2,1) below the threshold): "
                          f"{', '.join(r.excluded)}.")
    points: list[Point] = []
    for dim, d in r.dimensions.items():
        for src, e in d.mean.items():
            s.rows.append(_row(src, f"{dim} (mean score)", e))
        for src, e in d.difference.items():
            s.rows.append(_row(f"{src} − human", f"{dim} (difference)", e))
            if _sig(e):
                direction = "more" if e.value > 0 else "less"
                s.verdicts.append(f"{src} shows {direction} {dim.replace('_', ' ')} than humans "
                                  f"(difference {fmt(e.value, 2)}, 95% CI {fmt_ci(e)}).")
        points += _points(d.difference, dim)
    if r.dimensions and not any(_sig(e) for d in r.dimensions.values() for e in d.difference.values()):
        s.verdicts.append("No user trait differs significantly between simulated and human users.")
    if points:
        s.charts.append(charts.forest(points, title="Simulated − human, per user trait", xlabel="score difference",
                                      refs={"0": 0.0}))
    return s


# ------------------------------------------------------------------------------ assembly


def _section(key: str, status: str) -> Section:
    title, question = TITLES[key]
    return Section(key=key, title=title, question=question, status=status)


_BUILDERS: dict[str, Callable[..., Section]] = {
    "hierarchy": hierarchy, "agreement": agreement, "topics": topics, "position": position, "traits": traits,
    "user_traits": user_traits,
}


def build_sections(result: FidelityResult, turns: pd.DataFrame | None = None) -> list[Section]:
    """Every PROTOCOL §5 analysis in order; missing or not-ok ones say why."""
    out = []
    for key in ORDER:
        r = result.analyses.get(key)
        if r is None and key in OPTIONAL:
            continue  # only there when the run was autograded
        if r is None:
            s = _section(key, "not_available")
            s.verdicts.append(unavailable("not_available", "this analysis was not run"))
        elif r.status != "ok":
            s = _section(key, r.status)
            s.verdicts.append(unavailable(r.status, r.reason))
        elif key == "dynamics":
            s = dynamics(r, turns)  # type: ignore[arg-type]
        else:
            s = _BUILDERS[key](r)
        if s.status == "ok" and not s.verdicts:
            s.verdicts.append("No estimates to report.")
        out.append(s)
    for key, r in result.analyses.items():  # analyses added after this report was written: status only
        if key not in TITLES:
            s = Section(key=key, title=key.replace("_", " ").capitalize(), question="", status=r.status)
            s.verdicts.append("Computed; see the result JSON." if r.status == "ok" else unavailable(r.status, r.reason))
            out.append(s)
    return out
