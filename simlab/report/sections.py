"""One report section per registered analysis (``simlab.fidelity.registry.ANALYSES``, in its order):
verdict sentences, a table and a chart. The builders of the built-in ones are here (the PROTOCOL
§5 analyses and the descriptive generation-error table, ``gen_errors``: counts, no intervals);
``Section``, ``Row``, ``new_section`` and ``estimate_row`` are for the builders of added analyses.

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
    GenErrorsArm,
    GenErrorsResult,
    GenErrorsSource,
    HierarchyResult,
    PositionResult,
    SourceStatus,
    TopicsResult,
    TraitsResult,
    UserTraitsResult,
)
from simlab.report import charts
from simlab.report.charts import Point

__all__ = ["Row", "Section", "build_sections", "estimate_row", "fmt", "fmt_ci", "fmt_p", "new_section", "unavailable"]

ALPHA = 0.05


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


def estimate_row(source: str, measure: str, e: Estimate | None, digits: int = 2) -> Row:
    """A table row of an estimate: value, 95% CI, p-value and n."""
    if e is None:
        return Row(source, measure, "–")
    p = "" if e.p_value is None else fmt_p(e.p_value).removeprefix("p = ").replace("p < ", "<")
    return Row(source, measure, fmt(e.value, digits), fmt_ci(e, digits), p, str(e.n))


_row = estimate_row


def _excludes_zero(e: Estimate) -> bool:
    return math.isfinite(e.ci_low) and math.isfinite(e.ci_high) and (e.ci_low > 0 or e.ci_high < 0)


def _sig(e: Estimate) -> bool:
    """Significant at 5%: by the model p-value when there is one, else by the CI."""
    return e.p_value < ALPHA if e.p_value is not None else _excludes_zero(e)


def _points_pct(e: Estimate) -> Estimate:
    """A share difference in percentage points (tables show points, not fractions)."""
    return e.model_copy(update={"value": 100 * e.value, "ci_low": 100 * e.ci_low, "ci_high": 100 * e.ci_high})


_NO_HUMAN_REASONS = ("no human source", "no human participants", "no human answers")
"""How an analysis's reason begins when the data hold no human source at all (not when the humans
lack one measure): the report then says what the analysis needs and how to give it."""

_NEEDS_HUMAN = ("This analysis compares the simulated participants with real people, so it needs human "
                "data: write the report with --human DATA (docs/fidelity.md describes the format).")


def unavailable(status: str, reason: str | None) -> str:
    """The sentence for an analysis that did not run; one that needs people says how to add them.

    >>> unavailable("not_available", "no human source")  # doctest: +ELLIPSIS
    'Not available: no human source. This analysis compares ... needs human data: write the report with --human DATA ...'
    """
    lead = "Not available" if status == "not_available" else "Failed"
    text = f"{lead}: {reason or 'no reason given'}."
    if status == "not_available" and reason and reason.startswith(_NO_HUMAN_REASONS):
        text += " " + _NEEDS_HUMAN
    return text


def _points(items: dict[str, Estimate], source: str) -> list[Point]:
    return [Point(k, source, e.value, e.ci_low, e.ci_high) for k, e in items.items()]


# ------------------------------------------------------------------------------ 1. hierarchy


def hierarchy(r: HierarchyResult, turns: pd.DataFrame | None = None) -> Section:
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


def agreement(r: AgreementResult, turns: pd.DataFrame | None = None) -> Section:
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
    _agreement_controls(r, s)
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


def _agreement_controls(r: AgreementResult, s: Section) -> None:
    """The controls of the agreement section: persona placebo, seed-to-seed retest, variance split."""
    for src, pp in r.persona_placebo.items():
        if pp.status != "ok":
            s.verdicts.append(f"Persona placebo of {src}: {unavailable(pp.status, pp.reason)}")
            continue
        told = False
        for inst, pi in pp.by_instrument.items():
            if pi.status != "ok" or pi.own is None or pi.mismatched is None or pi.gap is None:
                s.verdicts.append(f"Persona placebo of {src}, {inst}: {unavailable(pi.status, pi.reason)}")
                continue
            s.rows.append(_row(src, f"persona placebo, {inst}: agreement with own human", pi.own))
            s.rows.append(_row(src, f"persona placebo, {inst}: agreement with another human of the domain", pi.mismatched))
            s.rows.append(_row(src, f"persona placebo, {inst}: gap own − other", pi.gap))
            if told:
                continue
            told = True
            g = pi.gap
            more = ("more than with a stranger" if pi.permutation_p is not None and pi.permutation_p < ALPHA
                    else "not clearly more than with a stranger")
            s.verdicts.append(
                f"Persona placebo ({src}, {inst}): the simulator agrees with its own human in {fmt(100 * pi.own.value, 0)}% "
                f"of {pi.n_events} events and with another person of the same domain in "
                f"{fmt(100 * pi.mismatched.value, 0)}%: a gap of {fmt(100 * g.value, 0)} points that the persona "
                f"explains (95% CI {fmt(100 * g.ci_low, 0)} to {fmt(100 * g.ci_high, 0)} points, permutation "
                f"{fmt_p(pi.permutation_p)}), {more} of the domain.")
        if pp.single_domains:
            s.verdicts.append(f"Persona placebo of {src}: domains with a single participant have no other human and "
                              f"were left out ({', '.join(pp.single_domains)}).")
    human = r.human_ceiling.retest if r.human_ceiling is not None else None
    h_est = None
    if human is not None and human.status == "ok":
        h_est = human.rating_corr_within or human.rating_corr
    for src, rt in r.sim_retest.items():
        e = rt.rating_corr_within or rt.rating_corr
        if rt.status != "ok" or e is None:
            s.verdicts.append(f"Seed-to-seed retest of {src}: {unavailable(rt.status, rt.reason)}")
            continue
        s.rows.append(_row(src, "test–retest rating correlation (within conversation), repeat vs repeat", e))
        if rt.pairwise_order is not None:
            s.rows.append(_row(src, "test–retest same order of arm pairs, repeat vs repeat", rt.pairwise_order))
        people = ""
        if h_est is not None:
            people = (f"; people rating the same arm in two of their conversations: r = {fmt(h_est.value)} "
                      f"(95% CI {fmt_ci(h_est)})")
        s.verdicts.append(
            f"Run again with another seed (same participant and domain), {src}'s ratings of the same arms correlate "
            f"r = {fmt(e.value)} (95% CI {fmt_ci(e)}, rating style removed; shuffled baseline {fmt(rt.permutation_baseline)}, "
            f"{fmt_p(rt.permutation_p)}){people}.")
    for src, vs in r.variance_split.items():
        if vs.status != "ok":
            s.verdicts.append(f"Variance split of {src}'s {vs.column}: {unavailable(vs.status, vs.reason)}")
            continue
        for part, e in vs.share.items():
            s.rows.append(_row(src, f"{vs.column} variance share: {part}", e))
        for part, e in vs.variance.items():
            s.rows.append(_row(src, f"{vs.column} variance: {part} (points²)", e, 1))
        parts = "; ".join(f"{part} {fmt(100 * e.value, 0)}% (95% CI {fmt_ci(e, pct=True)})" for part, e in vs.share.items())
        s.verdicts.append(
            f"Variance of {src}'s {vs.column} beyond the arms and domains: {parts}; {vs.n_participants} participants, "
            f"{vs.n_repeated} participant × domain cells run more than once; CIs from {vs.n_boot} bootstrap refits "
            f"of the mixed model, {vs.n_failed} of which failed or did not converge.")


# ------------------------------------------------------------------------------ 3. topics


def topics(r: TopicsResult, turns: pd.DataFrame | None = None) -> Section:
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


def _vs_people(what: str, e: Estimate) -> str:
    """'<what> are 0.72 higher than people's (95% CI …, p …)', or 'not significantly different …'."""
    direction = "higher" if e.value > 0 else "lower"
    sig = "" if _sig(e) else "; not significantly different from people"
    return (f"{what} are {fmt(abs(e.value))} {direction} than people's (95% CI {fmt_ci(e)}, "
            f"{fmt_p(e.p_value)}{sig})")


def position(r: PositionResult, turns: pd.DataFrame | None = None) -> Section:
    s = _section("position", r.status)
    points: list[Point] = []
    designs: dict[str, str] = {}  # per source: how order and label relate (the first outcome that says)
    not_compared: dict[str, str] = {}
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
                s.rows.append(_row(src, f"{label}: first shown, points above the arms' share", fit.first_shown_excess))
            if fit.order_vs_label_note and src not in designs:
                designs[src] = fit.order_vs_label_note
            if fit.first_shown_joint is not None and fit.first_label is not None:
                s.rows.append(_row(src, f"{label}: first shown, label held fixed (log-odds)", fit.first_shown_joint))
                s.rows.append(_row(src, f"{label}: labelled A, position held fixed (log-odds)", fit.first_label))
                if src not in o.first_label_vs_human and (src != "human" or not o.first_label_vs_human):
                    s.verdicts.append(
                        f"For {label}, {src} picks the response shown first with log-odds "
                        f"{fmt(fit.first_shown_joint.value)} (95% CI {fmt_ci(fit.first_shown_joint)}) and the response "
                        f"labelled A with log-odds {fmt(fit.first_label.value)} (95% CI {fmt_ci(fit.first_label)}), "
                        "each holding the other fixed.")
        for src, e in o.first_shown_joint_vs_human.items():
            s.rows.append(_row(f"{src} − human", f"{label}: first shown, label held fixed (difference)", e))
            parts = [_vs_people("the response shown first (label held fixed)", e)]
            lab = o.first_label_vs_human.get(src)
            if lab is not None:
                s.rows.append(_row(f"{src} − human", f"{label}: labelled A, position held fixed (difference)", lab))
                parts.append(_vs_people("the response labelled A (position held fixed)", lab))
            s.verdicts.append(f"For {label}, the log-odds with which {src} picks " + "; and ".join(parts) + ".")
        for src, why in o.label_not_compared.items():
            if src not in not_compared:
                not_compared[src] = why
        for src, e in o.excess_vs_human.items():  # already in percentage points (PositionOutcome.excess_vs_human)
            more = "more" if e.value > 0 else "less"
            sig = "" if _sig(e) else "; not significantly different from people"
            s.verdicts.append(
                f"For {label}, {src} puts the first-shown response on top {fmt(abs(e.value), 0)} points {more} "
                f"often than people, beyond what the arms explain (95% CI {fmt(e.ci_low, 0)} to "
                f"{fmt(e.ci_high, 0)} points, {fmt_p(e.p_value)}{sig}).")
            s.rows.append(_row(f"{src} − human", f"{label}: first shown, points (difference)", e))
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
    for src, note in designs.items():
        s.verdicts.append(f"Order or label, {src}: {note}.")
    for src, why in not_compared.items():
        s.verdicts.append(f"{src}: {why}.")
    if points:
        s.charts.append(charts.forest(points, title="Preference for the response shown first",
                                      xlabel="log-odds, first shown vs later", refs={"no bias": 0.0}))
    return s


# ------------------------------------------------------------------------------ 5. dynamics


def _has_lengths(r: DynamicsResult) -> bool:
    """The conversation-level measures exist (they do without turn ratings)."""
    return any(d.n_turns is not None or d.early_stop_share is not None for d in r.per_source.values())


def dynamics(r: DynamicsResult, turns: pd.DataFrame | None = None) -> Section:
    s = _section("dynamics", r.status)
    if r.status != "ok":  # shown for its conversation-level measures: say why the turn-rating ones are absent
        s.verdicts.append(f"Turn-rating measures: {unavailable(r.status, r.reason)}")
    for src, d in r.per_source.items():
        if d.status != "ok":
            s.verdicts.append(f"{src}: {unavailable(d.status, d.reason)}")
            continue
        for measure, e in (("rating change per turn, all turns", d.slope), ("preferred-arm switch rate", d.switch_rate),
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
        s.verdicts.append(f"Within a conversation (all rated turns; the mean of the conversations' own slopes, each "
                          f"counted once), the turn ratings of {src} move {fmt(abs(e.value))} points per turn "
                          f"{faster} than people's (difference {fmt(e.value)}, 95% CI {fmt_ci(e)}, {fmt_p(e.p_value)}{sig}).")
        s.rows.append(_row(f"{src} − human", "rating change per turn, all turns (difference)", e))
        w = r.slope_diff_window_vs_human.get(src)
        if w is not None:
            s.verdicts.append(f"Counting only the first {r.window} turns of the conversations that reach them (the same "
                              f"conversations at every turn), the difference is {fmt(w.value)} (95% CI {fmt_ci(w)}).")
            s.rows.append(_row(f"{src} − human", f"rating change per turn, first {r.window} turns (difference)", w))
    for src, e in r.n_turns_diff_vs_human.items():
        longer = "longer" if e.value > 0 else "shorter"
        sig = "" if _sig(e) else "; not significantly different from people"
        s.verdicts.append(f"Conversations of {src} are {fmt(abs(e.value))} turns {longer} than people's on average "
                          f"(95% CI {fmt_ci(e)}, {fmt_p(e.p_value)}, clustered by participant{sig}).")
        s.rows.append(_row(f"{src} − human", "turns per conversation (difference)", e))
    for src, e in r.early_stop_diff_vs_human.items():
        more = "more" if e.value > 0 else "fewer"
        sig = "" if _sig(e) else "; not significantly different from people"
        s.verdicts.append(f"{src} ends {fmt(abs(100 * e.value), 0)} points {more} of its conversations itself than "
                          f"people do (95% CI {fmt(100 * e.ci_low, 0)} to {fmt(100 * e.ci_high, 0)} points, "
                          f"{fmt_p(e.p_value)}{sig}).")
        s.rows.append(_row(f"{src} − human", "share ended early by user, points (difference)", _points_pct(e)))
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


def traits(r: TraitsResult, turns: pd.DataFrame | None = None) -> Section:
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


def user_traits(r: UserTraitsResult, turns: pd.DataFrame | None = None) -> Section:
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


# ------------------------------------------------------------------------------ generation errors


MISSING_WORDS = {
    "conversations.gen_error": "the conversation flag gen_error",
    "conversations.max_turns_reached": "the conversation flag max_turns_reached",
    "conversations.stop_reason": "stop_reason",
    "turns.gen_error": "gen_error per reply (turns table)",
    "turns (assistant replies)": "the replies (no turns table)",
}


def _flagged(n: int | None, share: float | None) -> str:
    """'4.0% (12)', or 'not recorded'."""
    if n is None or share is None:
        return "not recorded"
    return f"{100 * share:.1f}% ({n})"


def _cell_rows(src: str, who: str, c: GenErrorsArm | GenErrorsSource, n_conv: int) -> list[Row]:
    rows = [Row(src, f"{who}: replies flagged gen_error", _flagged(c.n_reply_gen_error, c.reply_gen_error_share),
                n="–" if c.n_replies is None else str(c.n_replies))]
    if isinstance(c, GenErrorsArm):
        rows.append(Row(src, f"{who}: conversations with one of its replies flagged",
                        _flagged(c.n_conversation_arm_error, c.arm_error_conversation_share), n=str(n_conv)))
    rows.append(Row(src, f"{who}: conversations flagged gen_error",
                    _flagged(c.n_conversation_gen_error, c.conversation_gen_error_share), n=str(n_conv)))
    rows.append(Row(src, f"{who}: conversations ended by the context budget (max_turns_reached)",
                    _flagged(c.n_max_turns_reached, c.max_turns_reached_share), n=str(n_conv)))
    return rows


def gen_errors(r: GenErrorsResult, turns: pd.DataFrame | None = None) -> Section:
    """Per source a sentence and what it does not record; rows per source (all arms, then each arm in
    config order) and the stop reasons. Counts, not estimates: the n column is the denominator."""
    s = _section("gen_errors", r.status)
    for src, g in r.per_source.items():
        said = [f"{g.n_conversations} conversations"]
        if g.n_replies is not None:
            said.append(f"{g.n_replies} replies")
        if g.reply_gen_error_share is not None:
            said.append(f"{_flagged(g.n_reply_gen_error, g.reply_gen_error_share)} of replies are error notices")
        if g.conversation_gen_error_share is not None:
            said.append(f"{_flagged(g.n_conversation_gen_error, g.conversation_gen_error_share)} of conversations "
                        "are flagged gen_error")
        if g.max_turns_reached_share is not None:
            said.append(f"{_flagged(g.n_max_turns_reached, g.max_turns_reached_share)} were ended by the context budget")
        if g.stop_reasons:
            said.append("stop reasons: " + ", ".join(f"{k} {v}" for k, v in g.stop_reasons.items()))
        s.verdicts.append(f"{src}: " + "; ".join(said) + ".")
        if g.missing:
            s.verdicts.append(f"Not recorded for {src}: {', '.join(MISSING_WORDS.get(m, m) for m in g.missing)}.")
        s.rows += _cell_rows(src, "all arms", g, g.n_conversations)
        for arm in [a for a in r.arms if a in g.per_arm] + [a for a in g.per_arm if a not in r.arms]:
            a = g.per_arm[arm]
            s.rows += _cell_rows(src, arm, a, a.n_conversations)
        for reason, n in g.stop_reasons.items():
            s.rows.append(Row(src, f"stop_reason: {reason}", str(n), n=str(g.n_conversations)))
        if g.stop_reasons and g.n_stop_reason_missing:
            s.rows.append(Row(src, "stop_reason: not recorded", str(g.n_stop_reason_missing), n=str(g.n_conversations)))
    return s


# ------------------------------------------------------------------------------ assembly


def new_section(key: str, status: str) -> Section:
    """An empty section of the analysis ``key`` with its registered title and question."""
    from simlab.fidelity.registry import ANALYSES

    if key in ANALYSES:
        rs = ANALYSES.get(key).section
        return Section(key=key, title=rs.title, question=rs.question, status=status)
    return Section(key=key, title=key.replace("_", " ").capitalize(), question="", status=status)


_section = new_section


def agreement_any_status(r: AgreementResult, turns: pd.DataFrame | None = None) -> Section | None:
    """The agreement section; without a comparison with people (not_available), the simulator's own
    controls when there are any (None otherwise: the status sentence)."""
    if r.status == "ok":
        return agreement(r, turns)
    if r.status == "not_available" and (r.sim_retest or r.variance_split):
        s = _section("agreement", r.status)
        s.verdicts.append(f"Agreement with people: {unavailable(r.status, r.reason)}")
        _agreement_controls(r, s)
        return s
    return None


def dynamics_any_status(r: DynamicsResult, turns: pd.DataFrame | None = None) -> Section | None:
    """The dynamics section; without turn ratings (not_available) still its conversation-length
    measures when there are any (None otherwise: the status sentence)."""
    if r.status == "ok" or (r.status == "not_available" and _has_lengths(r)):
        return dynamics(r, turns)
    return None


def build_sections(result: FidelityResult, turns: pd.DataFrame | None = None) -> list[Section]:
    """One section per registered analysis (``simlab.fidelity.registry.ANALYSES``) in registration
    order: the PROTOCOL §5 analyses, the generation errors (when computed), then analyses packages
    added; missing or not-ok ones say why, and so does a builder that fails. Entries of analyses not
    registered here are shown by their status."""
    from simlab.fidelity.registry import ANALYSES

    out = []
    for a in ANALYSES:
        key = a.name
        r = result.analyses.get(key)
        if r is None and a.section.optional:
            continue  # e.g. user traits of a run that was not autograded
        if r is None:
            s = _section(key, "not_available")
            s.verdicts.append(unavailable("not_available", "this analysis was not run"))
        else:
            s = _built(a.section.build, key, r, turns, a.section.build_not_ok)
        if s.status == "ok" and not s.verdicts:
            s.verdicts.append("No estimates to report.")
        out.append(s)
    for key, r in result.analyses.items():  # analyses not registered in this process: status only
        if key not in ANALYSES:
            s = _section(key, r.status)
            s.verdicts.append("Computed; see the result JSON." if r.status == "ok" else unavailable(r.status, r.reason))
            out.append(s)
    return out


def _built(build: Callable[..., object], key: str, r: SourceStatus, turns: pd.DataFrame | None,
           not_ok: bool) -> Section:
    """The section a builder makes of ``r``; the status sentence when it has nothing to say or fails."""
    built: object = None
    if r.status == "ok" or not_ok:
        try:
            built = build(r, turns)
            if built is not None and not isinstance(built, Section):
                raise TypeError(f"the section builder returned {type(built).__name__}, not a Section")
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the report
            s = _section(key, r.status)
            s.verdicts.append(f"The report section failed: {type(exc).__name__}: {exc}")
            return s
    if isinstance(built, Section):
        return built
    s = _section(key, r.status)
    s.verdicts.append(unavailable(r.status, r.reason) if r.status != "ok" else "Computed; see the result JSON.")
    return s
