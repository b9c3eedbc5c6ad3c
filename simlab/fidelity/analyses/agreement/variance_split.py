"""The variance split of a simulated source's ratings into participant, repeat (seed-to-seed) and
residual parts, with participant-bootstrap intervals for the variances and their shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.special import expit, logit

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS, has_values
from simlab.fidelity.analyses.agreement.mixed_model import NestedReml
from simlab.fidelity.result import Estimate, VarianceSplit
from simlab.fidelity.stats import FitError, Participants, estimate, progress, reason_for

__all__ = ["BOUNDARY_NOTE", "N_BOOT_MIXED", "SHARE_EDGE", "SPLIT_PARTS"]

N_BOOT_MIXED = 100  # at most this many mixed-model refits per variance split


def _dummies(values: np.ndarray) -> np.ndarray:
    """0/1 columns of every level but the first (sorted)."""
    levels = np.unique(values)
    return np.asarray(values[:, None] == levels[None, 1:], dtype=float)


def _split_design(d: pd.DataFrame) -> np.ndarray:
    """Intercept, arm and domain dummies (first level left out), constant dummies dropped."""
    x = np.column_stack([np.ones(len(d)), _dummies(d["arm"].astype(str).to_numpy()),
                         _dummies(d["domain"].astype(str).to_numpy())])
    keep = np.r_[True, x[:, 1:].std(axis=0) > 0]
    return x[:, keep]


SPLIT_PARTS = ("participant", "repeat", "residual")
SHARE_EDGE = 1e-6
"""A share (or refit) this close to 0 or 1 is on the boundary: the REML optimiser stops within ~1e-6
of a zero variance ratio (a refit of a zero variance reports ~2e-7), where the logit is unbounded."""


def _share_estimate(value: float, draws: np.ndarray, n: int) -> Estimate:
    """A variance share with its 95% CI from the bootstrap refits: the normal interval on the logit
    scale with the refits' standard deviation there and a t quantile with n − 1 df (n participants).

    Why not the percentile interval: at 50 participants × 2 domains × 2 repeats it covered the planted
    shares too rarely (participant, repeat and residual shares 0.13–0.61; calibration and
    ``docs/calibration.md``): a share's sampling spread grows with it and its bootstrap spread is
    too narrow at few participants, and 2.5%/97.5% quantiles of at most ``N_BOOT_MIXED`` refits are
    noisy where their standard deviation is not. This interval's coverage was on target there. Where the
    share or a refit is on the boundary (``SHARE_EDGE``; the logit has no finite value) it stays the
    percentile interval, which includes the boundary, with its far end from ``_boundary_share``."""
    out = estimate(value, draws, n)
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    inside = SHARE_EDGE < value < 1 - SHARE_EDGE and d.size >= 2 and bool(np.all((d > SHARE_EDGE) & (d < 1 - SHARE_EDGE)))
    if not np.isfinite(out.ci_low) or n < 2 or d.size < 2:
        return out
    if not inside:
        return _boundary_share(out, value, d, n)
    half = float(sps.t.ppf(0.975, n - 1) * np.std(logit(d), ddof=1))
    return out.model_copy(update={
        "ci_low": float(expit(logit(value) - half)), "ci_high": float(expit(logit(value) + half)),
        "note": "95% CI: normal on the logit scale, bootstrap SD of the refits, t with participants − 1 df"})


def _boundary_share(out: Estimate, value: float, d: np.ndarray, n: int) -> Estimate:
    """A share whose estimate or some refits sit on the boundary: the percentile interval, with its
    far end widened to the normal interval on the square-root scale (distance from the near boundary,
    bootstrap SD, t with n − 1 df) when that reaches further.

    Why: refits pile up at the boundary, so the percentile interval's far end is too close: at a
    planted share of 0.037 (50 participants) it missed the truth from below far too often. The
    square root (an SD's scale) has a finite value at 0 and spreads the pile; only the far end is
    widened, so the near end, which says whether the share is above 0, stays the percentile's."""
    low_side = value < 0.5
    r = np.sqrt(np.clip(d if low_side else 1 - d, 0.0, 1.0))
    reach = (np.sqrt(max(value if low_side else 1 - value, 0.0)) + sps.t.ppf(0.975, n - 1) * np.std(r, ddof=1)) ** 2
    if low_side and min(reach, 1.0) > out.ci_high:
        return out.model_copy(update={"ci_high": float(min(reach, 1.0)), "note": BOUNDARY_NOTE})
    if not low_side and max(1 - reach, 0.0) < out.ci_low:
        return out.model_copy(update={"ci_low": float(max(1 - reach, 0.0)), "note": BOUNDARY_NOTE})
    return out


BOUNDARY_NOTE = ("95% CI: percentile of the bootstrap refits (some on the boundary), the far end widened to the "
                 "normal interval on the square-root scale")


def _variance_split(s: pd.DataFrame, participants: Participants) -> VarianceSplit:
    """Participant / repeat / residual variance of a simulated source's rating_preference.

    The linear mixed model rating ~ C(arm) + C(domain) with a random intercept per participant and a
    variance component for the conversation within the participant, fitted by REML (``NestedReml``:
    statsmodels' MixedLM with groups = participant and a conversation ``vc_formula``, in closed form).
    CIs from at most ``N_BOOT_MIXED`` participant-bootstrap refits (a participant drawn twice is two
    participants; failed or non-converged refits are counted): percentile intervals for the variances,
    ``_share_estimate`` for the shares. Only where some (participant, domain) has two or more
    conversations."""
    col = "rating_preference"
    if not has_values(s, col):
        return VarianceSplit(status="not_available", reason="no rating_preference: nothing to split")
    d = (s[s[col].notna()].drop_duplicates(["conversation_id", "arm"])[["participant_id", "domain", "conversation_id", "arm", col]]
         .assign(participant_id=lambda f: f["participant_id"].astype(str)))
    d["domain"] = d["domain"].fillna("").astype(str)
    cells = d.groupby(["participant_id", "domain"])["conversation_id"].nunique()
    n_part = int(d["participant_id"].nunique())
    out = VarianceSplit(column=col, n_participants=n_part, n_conversations=int(d["conversation_id"].nunique()),
                        n_repeated=int((cells >= 2).sum()))
    if out.n_repeated == 0:
        out.status, out.reason = "not_available", (
            "every (participant, domain) has one conversation, so a repeat level cannot be told from the "
            "participant's (a run with --repeats 2 or more has them)")
        return out
    if n_part < MIN_PARTICIPANTS:
        out.status, out.reason = "not_available", f"{n_part} participants with ratings (fewer than {MIN_PARTICIPANTS})"
        return out
    members, local = np.unique(participants.index(d["participant_id"].to_numpy()), return_inverse=True)
    reml = NestedReml(_split_design(d), d[col].to_numpy(float), local, d["conversation_id"].to_numpy())
    try:
        value, start = reml.fit()
    except (FitError, np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
        out.status, out.reason = "failed", reason_for(exc)
        return out
    # participant bootstrap: the same sums weighted by how often each participant is drawn
    n_b = min(participants.n_boot, N_BOOT_MIXED)
    draws = np.full((n_b, 3), np.nan)
    for b in progress(range(n_b), n_b, "variance split refits"):
        w = participants.counts[b, members]
        if np.count_nonzero(w) < 2:
            continue  # NaN: counted as a failed refit
        try:
            with np.errstate(all="ignore"):
                draws[b] = reml.fit(w, start)[0]
        except (FitError, np.linalg.LinAlgError, ValueError, FloatingPointError):
            pass  # counted below as a failed refit
    out.n_boot, out.n_failed = n_b, int(np.sum(~np.isfinite(draws).all(axis=1)))
    total, total_b = value.sum(), draws.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares_b = draws / total_b
    for i, part in enumerate(SPLIT_PARTS):
        out.variance[part] = estimate(float(value[i]), draws[:, i], n_part)
        out.share[part] = _share_estimate(float(value[i] / total), shares_b[:, i], n_part)
    return out

