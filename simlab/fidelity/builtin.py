"""The built-in fidelity analyses (PROTOCOL.md §5), registered in the report's order: each one's
function, result model, when it applies, report section and calibration cases in one place.

``simlab.fidelity.registry`` imports this module the first time the registry is used (like an
entry point: it wires the analyses to the report's section builders, which the registry's readers
must not import). The analysis modules are imported when an analysis first runs, so reading a
result JSON or rendering a report does not load the statistics libraries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from simlab.fidelity import result as r
from simlab.fidelity.distributions_result import DistributionsResult
from simlab.fidelity.ppi_result import PPIResult
from simlab.fidelity.registry import ANALYSES, Analysis, AnalysisContext, ReportSection
from simlab.fidelity.user_text_result import UserTextResult
from simlab.report import distributions as report_distributions
from simlab.report import sections
from simlab.report.ppi_section import ppi_section
from simlab.report.user_text import user_text_section
from simlab.tables import Tables

__all__ = ["BUILTIN"]


def _participants(context: AnalysisContext) -> Any:
    """The shared bootstrap as the built-in analyses take it (``simlab.fidelity.stats.Participants``)."""
    from simlab.fidelity.stats import Participants

    p = context.participants
    if not isinstance(p, Participants):
        raise TypeError(f"the built-in analyses need simlab.fidelity.stats.Participants, got {type(p).__name__}")
    return p


def _hierarchy(tables: Tables, c: AnalysisContext) -> r.HierarchyResult:
    from simlab.fidelity.analyses.hierarchy import hierarchy

    return hierarchy(tables, participants=_participants(c))


def _agreement(tables: Tables, c: AnalysisContext) -> r.AgreementResult:
    from simlab.fidelity.analyses.agreement import agreement

    return agreement(tables, seed=c.seed, participants=_participants(c))


def _topics(tables: Tables, c: AnalysisContext) -> r.TopicsResult:
    from simlab.fidelity.analyses.topics import topics

    for embedding in ("tfidf", "minilm"):
        if c.topics == embedding:
            return topics(tables, seed=c.seed, topics=embedding, clusters_path=c.clusters_path,
                          participants=_participants(c))
    raise ValueError(f"unknown text representation for topics: {c.topics!r} (tfidf or minilm)")


def _position(tables: Tables, c: AnalysisContext) -> r.PositionResult:
    from simlab.fidelity.analyses.position import position

    return position(tables, participants=_participants(c))


def _dynamics(tables: Tables, c: AnalysisContext) -> r.DynamicsResult:
    from simlab.fidelity.analyses.dynamics import dynamics

    return dynamics(tables, participants=_participants(c))


def _traits(tables: Tables, c: AnalysisContext) -> r.TraitsResult:
    from simlab.fidelity.analyses.traits import traits

    return traits(tables, participants=_participants(c), exclude=c.exclude_dimensions)


def _users_autograded(tables: Tables, c: AnalysisContext) -> bool:
    g = tables.autograde
    return g is not None and "unit_kind" in g.columns and bool((g["unit_kind"] == "user").any())


def _user_traits(tables: Tables, c: AnalysisContext) -> r.UserTraitsResult:
    from simlab.fidelity.analyses.user_traits import user_traits

    g = tables.autograde
    reliable = None
    if c.exclude_dimensions and g is not None:
        reliable = set(g["dimension"].unique()) - set(c.exclude_dimensions)
    return user_traits(tables, n_boot=c.n_boot, seed=c.seed, reliable=reliable)


def _gen_errors(tables: Tables, c: AnalysisContext) -> r.GenErrorsResult:
    from simlab.fidelity.analyses.gen_errors import gen_errors

    return gen_errors(tables)


def _ppi(tables: Tables, c: AnalysisContext) -> PPIResult:
    from simlab.fidelity.analyses.ppi import ppi

    return ppi(tables, weights=c.weights)


def _user_text(tables: Tables, c: AnalysisContext) -> UserTextResult:
    from simlab.fidelity.analyses.user_text import user_text

    return user_text(tables, participants=_participants(c))


def _distributions(tables: Tables, c: AnalysisContext) -> DistributionsResult:
    from simlab.fidelity.analyses.distributions import distributions

    return distributions(tables, seed=c.seed, participants=_participants(c))


def _cases(module: str) -> Any:
    def cases() -> Sequence[Any]:
        from importlib import import_module

        found: Sequence[Any] = import_module(f"simlab.fidelity.calibration.{module}").CASES
        return found

    cases.__qualname__ = f"cases_of_{module}"
    return cases


BUILTIN = (
    Analysis("hierarchy", r.HierarchyResult, _hierarchy,
             ReportSection("1. Aggregate hierarchy", "Do simulated users rank the arms in the same order as people?",
                           sections.hierarchy),
             calibration=_cases("hierarchy")),
    Analysis("agreement", r.AgreementResult, _agreement,
             ReportSection("2. Individual agreement vs the human ceiling",
                           "Does the simulator pick what the matched person picked, as often as people agree with "
                           "themselves?", sections.agreement_any_status, build_not_ok=True),
             calibration=_cases("agreement")),
    Analysis("topics", r.TopicsResult, _topics,
             ReportSection("3. Topic divergence", "Do simulated users talk about the same things as people?",
                           sections.topics),
             applies=lambda tables, c: c.topics is not None, calibration=_cases("topics")),
    Analysis("position", r.PositionResult, _position,
             ReportSection("4. Position bias",
                           "Is the response shown first chosen more often, and more than by people?", sections.position),
             calibration=_cases("position")),
    Analysis("dynamics", r.DynamicsResult, _dynamics,
             ReportSection("5. Feedback dynamics", "How do turn-by-turn ratings move over a conversation?",
                           sections.dynamics_any_status, build_not_ok=True),
             calibration=_cases("dynamics")),
    Analysis("traits", r.TraitsResult, _traits,
             ReportSection("6. Text-level trait biases", "Which response traits drive the choice of the best response?",
                           sections.traits),
             calibration=_cases("traits")),
    # shown only when the run was autograded
    Analysis("user_traits", r.UserTraitsResult, _user_traits,
             ReportSection("7. User traits (autograder)",
                           "Do simulated users write like people (sycophancy, self-disclosure, naturalness, …)?",
                           sections.user_traits, optional=True),
             applies=_users_autograded),
    # optional: results made before it existed (and hand-built ones) have none
    Analysis("gen_errors", r.GenErrorsResult, _gen_errors,
             ReportSection("Generation errors", "How often did a generation fail, or the context budget end a "
                           "conversation, per source and arm?", sections.gen_errors, optional=True)),
    # optional: results made before it existed have none
    Analysis("ppi", PPIResult, _ppi,
             ReportSection("Human estimates sharpened by simulated participants (PPI)",
                           "How precisely do the humans plus the simulated participants estimate the humans' arm "
                           "hierarchy and position effect, and how many humans were the simulated ones worth?",
                           ppi_section, optional=True),
             calibration=_cases("ppi")),
    Analysis("user_text", UserTextResult, _user_text,
             ReportSection("The text of user turns", "Do simulated users write their messages like people: as long, as "
                           "varied, asking as often, ending the same way?", user_text_section, optional=True,
                           build_not_ok=True),
             calibration=_cases("user_text")),
    Analysis("distributions", DistributionsResult, _distributions,
             ReportSection("Distributions of the answers", "Do simulated users spread their ratings, bids, ranks and "
                           "conversation lengths like people, or collapse onto a few answers?",
                           report_distributions.section, optional=True),
             calibration=_cases("distributions")),
)
"""The built-in analyses, in the report's order."""

for _analysis in BUILTIN:
    ANALYSES.register(_analysis)


# --- participant subgroups (--by): runs only when attributes are given, after the analyses it re-runs
def _subgroups(tables: Tables, c: AnalysisContext) -> Any:
    from simlab.fidelity.analyses.subgroups import subgroups

    return subgroups(tables, c)


def _subgroup_cases() -> Sequence[Any]:
    from simlab.fidelity.calibration.subgroups import CASES

    found: Sequence[Any] = CASES
    return found


def _subgroups_registration() -> Analysis:
    from simlab.fidelity.subgroups_result import SubgroupsResult
    from simlab.report.subgroups import subgroups_section

    return Analysis("subgroups", SubgroupsResult, _subgroups,
                    ReportSection("Subgroups", "Is the simulator as close to people in every group of participants "
                                  "(age, gender, region, …)?", subgroups_section, optional=True),
                    applies=lambda tables, c: bool(c.by), calibration=_subgroup_cases)


ANALYSES.register(_subgroups_registration())
