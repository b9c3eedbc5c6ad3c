"""Statistics helpers the field's libraries lack: the participant bootstrap, the conditional-logit
solver and its participant-clustered inference, descriptive measures, progress bars and fit errors.
The analyses import them from here; each lives in the module named for it."""

from __future__ import annotations

from simlab.fidelity.stats.bootstrap import (
    MAX_FAILED_SHARE,
    CountMatrix,
    Participants,
    bootstrap,
    bootstrap_counts,
    estimate,
    percentile_ci,
)
from simlab.fidelity.stats.choice_sets import SPARSE_MAX_DENSITY, SPARSE_MIN_CELLS, ChoiceSets, compress
from simlab.fidelity.stats.clogit import (
    SEPARATION_LIMIT,
    SeparationError,
    check_identified,
    clogit_draws,
    fit_clogit,
    separation_diffs,
)
from simlab.fidelity.stats.errors import FitError, reason_for
from simlab.fidelity.stats.measures import jsd, kendall_tau, weighted_corr, weighted_mean
from simlab.fidelity.stats.progress import progress, progress_shown, show_progress
from simlab.fidelity.stats.robust import (
    ClogitFit,
    cluster_cov,
    linear,
    lr_test,
    participant_scores,
    robust_estimate,
    stack,
    wald_test,
)

__all__ = [
    "MAX_FAILED_SHARE",
    "SEPARATION_LIMIT",
    "SPARSE_MAX_DENSITY",
    "SPARSE_MIN_CELLS",
    "ChoiceSets",
    "ClogitFit",
    "CountMatrix",
    "FitError",
    "Participants",
    "SeparationError",
    "bootstrap",
    "bootstrap_counts",
    "check_identified",
    "clogit_draws",
    "cluster_cov",
    "compress",
    "estimate",
    "fit_clogit",
    "jsd",
    "kendall_tau",
    "linear",
    "lr_test",
    "participant_scores",
    "percentile_ci",
    "progress",
    "progress_shown",
    "reason_for",
    "robust_estimate",
    "separation_diffs",
    "show_progress",
    "stack",
    "wald_test",
    "weighted_corr",
    "weighted_mean",
]
