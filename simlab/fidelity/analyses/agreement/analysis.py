"""The agreement analysis as one call: each simulated source against the matched humans, the human
ceiling, and per simulated source the controls, each control failing on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from simlab.fidelity.analyses._prep import (
    MIN_PARTICIPANTS,
    drop_gen_error,
    judgements_frame,
    participants_of,
    sim_sources,
)
from simlab.fidelity.analyses.agreement.ceiling import _ceiling
from simlab.fidelity.analyses.agreement.common import RATINGS, _with_repeat
from simlab.fidelity.analyses.agreement.comparison import _compare
from simlab.fidelity.analyses.agreement.placebo import _placebo
from simlab.fidelity.analyses.agreement.retest import _sim_retest
from simlab.fidelity.analyses.agreement.variance_split import _variance_split
from simlab.fidelity.result import AgreementResult, PersonaPlacebo, RetestResult, SourceStatus, VarianceSplit
from simlab.fidelity.stats import Participants, reason_for
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["agreement"]


R = TypeVar("R", bound=SourceStatus)


def _guarded(kind: type[R], run: Callable[..., R], *args: object) -> R:
    """``run(*args)``, or a ``kind`` that failed with the reason: a control must not sink the agreement analysis."""
    try:
        return run(*args)
    except Exception as exc:  # noqa: BLE001 - recorded as the control's failure
        return kind(status="failed", reason=reason_for(exc))


def agreement(tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None) -> AgreementResult:
    """Individual agreement of each simulated source with human, the human ceiling, and per simulated
    source the controls: persona placebo, seed-to-seed retest and the variance split of its ratings.

    Conversations flagged ``gen_error`` are dropped first (and counted per source). A simulated
    conversation is matched with the human conversation of the same participant and domain, row by row
    on arm (the first conversation of each where repeated: ``_compare``); the controls use every
    simulated conversation. A conversation's ``repeat`` comes from the judgements or the conversations,
    else it is 0. Fewer than ``MIN_PARTICIPANTS`` humans: ``not_available``, with the controls that need
    no human (retest, variance split) still run."""
    participants = participants or participants_of(tables, n_boot, seed)
    j, dropped = drop_gen_error(judgements_frame(tables), tables)
    j = _with_repeat(tables, j)
    for col in RATINGS:
        if col not in j.columns:
            j[col] = np.nan
    sources = sorted(j["source"].unique())
    h = j[j["source"] == HUMAN]
    out = AgreementResult(n_gen_error=dropped)
    n_human = int(h["participant_id"].nunique())
    if n_human < MIN_PARTICIPANTS:
        out.status = "not_available"
        out.reason = (f"{n_human} human participants (fewer than {MIN_PARTICIPANTS})" if n_human
                      else "no human source")
        # the simulator's own consistency needs no human: its retest and variance split still stand
        for s in sim_sources(sources):
            sim = j[j["source"] == s]
            out.sim_retest[s] = _guarded(RetestResult, _sim_retest, sim, participants, seed)
            out.variance_split[s] = _guarded(VarianceSplit, _variance_split, sim, participants)
        return out
    out.human_ceiling, usable = _ceiling(h, participants, seed)
    for s in sim_sources(sources):
        sim = j[j["source"] == s]
        out.vs_human[s] = _compare(h, sim, participants, usable)
        out.persona_placebo[s] = _guarded(PersonaPlacebo, _placebo, h, sim, participants, seed)
        out.sim_retest[s] = _guarded(RetestResult, _sim_retest, sim, participants, seed)
        out.variance_split[s] = _guarded(VarianceSplit, _variance_split, sim, participants)
    return out
