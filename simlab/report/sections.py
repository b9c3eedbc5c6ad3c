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
            s.verdicts.append(f"Humans agree with themselves across instruments in {fmt(100 * ceil_value, 0)}% of "
                              "choices (the ceiling).")
        rt = ceiling.retest
        if rt is not None and rt.status == "ok" and rt.rating_corr is not None:
            s.rows.append(_row("human", "test–retest rating correlation", rt.rating_corr))
            better = rt.permutation_p is not None and rt.permutation_p < ALPHA
            s.verdicts.append(
                f"Rating the same arm twice, people correlate r = {fmt(rt.rating_corr.value)} "
                f"(95% CI {fmt_ci(rt.rating_corr)}), {'well above' if better else 'not clearly above'} "
                f"the shuffled baseline ({fmt(rt.permutation_baseline)}, {fmt_p(rt.permutation_p)}).")
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
        if ceil_value is None:
            tail = "; there is no human ceiling to compare with"
        elif c.reaches_ceiling:
            tail = f" and reaches the human self-consistency ceiling of {fmt(100 * ceil_value, 0)}%"
        else:
            tail = f" but stays below the human self-consistency ceiling of {fmt(100 * ceil_value, 0)}%"
        s.verdicts.append(f"The simulator ({src}) picks the matched human's ranked-best arm in {share}{vs_chance}{tail}.")
        s.rows.append(_row(src, "top-1 agreement with human", t))
        points.append(Point(f"{src} vs human", src, t.value, t.ci_low, t.ci_high))
        if c.kendall_tau is not None:
            s.rows.append(_row(src, "Kendall τ of full rankings", c.kendall_tau))
        for col, e in c.pearson.items():
            s.rows.append(_row(src, f"Pearson r, {col}", e))
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
        for src, e in unit.jsd_vs_human.items():
            auc = unit.auc_vs_human.get(src)
            sentence = (f"The {name} of {src} diverge from humans' with JSD = {fmt(e.value)} "
                        f"(95% CI {fmt_ci(e)}, 0 = same topic mix, 1 = disjoint)")
            if auc is not None:
                told = "can" if auc.ci_low > 0.5 else "cannot reliably"
                sentence += (f"; a classifier {told} tell them from human text "
                             f"(AUC = {fmt(auc.value)}, 95% CI {fmt_ci(auc)})")
            s.verdicts.append(sentence + ".")
            s.rows.append(_row(src, f"JSD vs human, {name}", e))
            if auc is not None:
                s.rows.append(_row(src, f"classifier AUC, {name}", auc))
        for src, e in unit.homogeneity.items():
            s.rows.append(_row(src, f"homogeneity (mean cosine), {name}", e))
        if name == "opening prompts" and unit.shares:
            cats = [f"cluster {i + 1}" for i in range(unit.n_clusters)]
            s.charts.append(charts.grouped_bars(cats, unit.shares, title=f"Topic clusters of {name} ({r.embedding})",
                                                ylabel="share of texts"))
    if r.prism is not None and r.prism.status == "ok":
        for src, e in r.prism.jsd_vs_prism.items():
            s.rows.append(_row(src, "JSD vs PRISM topic clusters", e))
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
        for src, e in o.interaction.items():
            human = o.per_source.get("human")
            sim = o.per_source.get(src)
            both = ""
            if human and sim and human.first_shown and sim.first_shown:
                both = (f": first-shown log-odds {fmt(sim.first_shown.value)} vs {fmt(human.first_shown.value)}"
                        " for humans")
            verb = "differs significantly from" if _sig(e) else "does not differ significantly from"
            s.verdicts.append(f"For {label}, the position bias of {src} {verb} humans' ({fmt_p(e.p_value)}{both}).")
            s.rows.append(_row(f"{src} − human", f"{label}: first shown (interaction)", e))
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
    for src, e in r.slope_diff_vs_human.items():
        verb = "differs significantly from" if _sig(e) else "does not differ significantly from"
        s.verdicts.append(f"The rating trend of {src} {verb} humans' (difference {fmt(e.value)} per turn, "
                          f"{fmt_p(e.p_value)}).")
        s.rows.append(_row(f"{src} − human", "rating change per turn (interaction)", e))
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
    for src, t in r.per_source.items():
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
        if diff:
            s.verdicts.append(f"{src} weighs {', '.join(diff)} significantly differently from humans.")
        for k, e in per_trait.items():
            s.rows.append(_row(f"{src} − human", f"{k} (interaction)", e))
    if r.interaction_p is not None:
        s.verdicts.append(f"Joint test that simulated and human trait weights are equal: {fmt_p(r.interaction_p)}.")
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
