"""Analysis 5: feedback dynamics — turn ratings over turns, preferred-arm switches, ceiling
ratings, conversation length and early stops, per source.

Turn slope: ``turn_rating ~ turn:source + C(arm):source + C(conversation_id)`` on the rows demeaned
within each conversation, so every conversation has its own level. That level absorbs the
participant × source intercept (a human and their simulated copy are different units) and the
conversation level, and it keeps survivorship out of the slope: long conversations may sit higher
or lower, only the change within a conversation counts. Each conversation's rows are weighted by
1 / Σ(turn − its mean turn)², so the slope is the mean of the conversations' own slopes (those rated
at two or more turns; arm effects estimated jointly), each counted once. Plain least squares
weighs a conversation by Σ(turn − mean)², which grows as the cube of its length: a few long
conversations then carried the slope, and with coarse ratings (thumbs, 5-point) and users who stop
after a poor turn the participant-clustered sandwich had few effective degrees of freedom and was
biased low (it over-rejected planted nulls in the calibration; docs/calibration.md has the rates
of this model). The 95% CI and p-value are cluster-robust by participant_id with the CR2 small-sample
correction and Bell–McCaffrey degrees of freedom (``simlab.fidelity.cluster_ols``), so
per-participant slopes and the correlation of a human's and their copy's slopes are not assumed
away. The same model on a balanced window (the first ``window`` rated turns of the conversations
that reach them) is reported next to it.

Held-out nulls (random splits of one population into the two sources: different people, no pairing).
There the human and simulated clusters are disjoint, and the CR2 contrast of the two slopes is a
Welch-type two-sample comparison of the participants' slope contributions, with Bell–McCaffrey df
counting the participants that carry each side; a pairing is neither assumed nor needed. A report of
10 "significant" differences in 100 such nulls (4 of 40, 6 of 60) did not reproduce: on 1,400
held-out nulls (a PRISM-shaped generator with a heaped 1–100 slider or thumbs, 2–22 rated turns
ending after poor ratings, mostly one or two conversations per participant, heavy-tailed levels and
slopes, 40–300 participants split 30–70%; and random worker splits of Dialogue-Eval's real ratings
in sequence) the rate was 4.3–6.0% per shape, 5.0% in all, and 10 of 100 is within sampling error of
the tabled 5.5% (P(≥ 10 | 5.5%) ≈ 5%; its Wilson interval is 5.5–17%). So the estimator stays; the
held-out shapes are calibration cases (``simlab.fidelity.calibration.dynamics``) that hold it to
the target.

Conversation length against human: per simulated source, mean ``n_turns`` minus
human's and the user-ended share minus human's, each the coefficient of ``y ~ 1 + sim`` fitted by
least squares on the conversations of human and that source (statsmodels OLS), with the same
participant-clustered CI and p-value (a human and their simulated copy are one cluster). Every
conversation counts, as in the per-source means (also those flagged ``gen_error`` or ended by the
context budget).

Replies flagged ``gen_error`` in the turns table are left out of every turn-rating measure. A
source with fewer than ``MIN_PARTICIPANTS`` participants is ``not_available``. The descriptive
shares use the participant bootstrap. A ceiling rating is ≥ 95.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS, gen_error_rows, has_values, participants_of
from simlab.fidelity.cluster_ols import ClusterOLS
from simlab.fidelity.identify import dependent_columns, describe_dependence
from simlab.fidelity.result import DynamicsResult, DynamicsSource, Estimate
from simlab.fidelity.stats import FitError, Participants, bootstrap, estimate, reason_for
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["MIN_PARTICIPANTS", "dynamics"]

CEILING = 95.0
MODEL = ("within-conversation weighted least squares: turn_rating ~ turn:source + C(arm):source + C(conversation_id), "
         "each conversation's own slope counted once; 95% CI and p-value: cluster-robust by "
         "participant_id (CR2, t with Bell–McCaffrey df)")
NOTE = "95% CI and p-value: cluster-robust by participant (CR1, t with G − 1 df), not bootstrap"
SLOPE_NOTE = ("95% CI and p-value: cluster-robust by participant (CR2, t with {df:.1f} Bell–McCaffrey df), "
              "not bootstrap")


def _ratio(num: np.ndarray, den: np.ndarray, part: np.ndarray, participants: Participants) -> Estimate | None:
    if den.sum() <= 0:
        return None
    draws = bootstrap(lambda w: (w * num).sum() / (w * den).sum(), part, participants.counts)[:, 0]
    w = participants.point(part)  # raking weights, or ones
    return estimate((w * num).sum() / (w * den).sum(), draws, int(np.unique(part).size))


def _turn_ratings(tables: Tables, conv: pd.DataFrame) -> tuple[pd.DataFrame | None, dict[str, int] | None]:
    """Rated assistant replies with participant and source, and the gen_error rows left out per source
    (None when the turns table has no gen_error column)."""
    if not has_values(tables.turns, "turn_rating"):
        return None, None
    t = tables.turns
    cols = ["conversation_id", "turn", "arm", "turn_rating"] + (["gen_error"] if "gen_error" in t.columns else [])
    r = t[(t["role"] == "assistant") & t["turn_rating"].notna()][cols]
    r = r.merge(conv[["conversation_id", "participant_id", "source"]], on="conversation_id", how="inner")
    r = r.assign(turn=pd.to_numeric(r["turn"]), turn_rating=pd.to_numeric(r["turn_rating"], errors="coerce"))
    r = r.dropna(subset=["turn_rating", "participant_id"])
    dropped = None
    if "gen_error" in r.columns:
        # a failed generation is rated as a failure, not as the arm at that turn
        bad = gen_error_rows(r)
        dropped = {str(s): int(n) for s, n in r.loc[bad, "source"].value_counts().items()}
        r = r[~bad].drop(columns="gen_error")
    return r.reset_index(drop=True), dropped


def _window(d: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows of the balanced window: the first k rated turns of the conversations with at least k,
    k = the smallest per-source median of rated turns per conversation (at least 2)."""
    turns = d.groupby("conversation_id")["turn"].transform("nunique")
    per_conv = d.assign(_n=turns).drop_duplicates("conversation_id")
    k = max(2, int(per_conv.groupby("source")["_n"].median().min()))
    order = d.groupby("conversation_id")["turn"].rank(method="dense")
    return d[(turns >= k) & (order <= k)].reset_index(drop=True), k


class _Slopes:
    """The within-conversation fit of one data set: slope per source, clustered by participant."""

    def __init__(self, d: pd.DataFrame, sources: list[str]) -> None:
        conv = d["conversation_id"].to_numpy()
        cols: dict[str, np.ndarray] = {}
        for s in sources:
            ins = (d["source"] == s).to_numpy(float)
            cols[f"turn[{s}]"] = ins * d["turn"].to_numpy(float)
            arms = sorted(d.loc[d["source"] == s, "arm"].dropna().astype(str).unique())
            for a in arms[1:]:  # arms[0] is the reference
                cols[f"arm[{s}][{a}]"] = ins * (d["arm"].astype(str) == a).to_numpy(float)
        X = pd.DataFrame(cols)
        # conversation fixed effects by demeaning within conversation (Frisch–Waugh)
        Xw = (X - X.groupby(conv).transform("mean")).to_numpy()
        yw = (d["turn_rating"] - d.groupby(conv)["turn_rating"].transform("mean")).to_numpy(float)
        # an arm rated alone in every conversation is absorbed by its level: leave it out
        keep = [i for i, c in enumerate(X.columns) if c.startswith("turn[") or np.abs(Xw[:, i]).max() > 1e-12]
        self.names = [str(X.columns[i]) for i in keep]
        Xw = Xw[:, keep]
        self.sources = [s for s in sources if np.abs(Xw[:, self.names.index(f"turn[{s}]")]).max() > 1e-12]
        if not self.sources:
            raise ValueError("no conversation has turn ratings at two different turns")
        # a source without within-conversation turn variation has no slope: its column goes
        drop = {f"turn[{s}]" for s in sources if s not in self.sources}
        keep = [i for i, n in enumerate(self.names) if n not in drop]
        self.names = [self.names[i] for i in keep]
        Xw = Xw[:, keep]
        pid = d["participant_id"].to_numpy()
        if pd.unique(pid).size < 2:
            raise FitError("the model could not be fitted: one participant only, no clustered inference")
        # each conversation's own slope counts once: its rows weighted by 1 / Σ(turn − its mean turn)², not by
        # Σ(turn − mean)² ~ n³ as plain least squares would, so a few long conversations do not carry the fit
        turn_col = Xw[:, [i for i, n in enumerate(self.names) if n.startswith("turn[")]].sum(axis=1)
        spread = pd.Series(turn_col * turn_col).groupby(conv).transform("sum").to_numpy()
        weight = np.where(spread > 0, 1.0 / np.where(spread > 0, spread, 1.0), 0.0)
        Xw = Xw * np.sqrt(weight)[:, None]
        yw = yw * np.sqrt(weight)
        dependent = dependent_columns(Xw.T @ Xw)
        if dependent:
            raise FitError(f"the model could not be fitted: {describe_dependence(dependent, self.names)} within "
                           "conversations (the turn repeats an arm: not identified in these data)")
        # CR2 by participant with Bell–McCaffrey degrees of freedom (simlab.fidelity.cluster_ols): the
        # conversation levels are nested in the participants, and long conversations dominate the slope
        self.fit = ClusterOLS(Xw, yw, pid, self.names)
        self.n_part = {s: int(d.loc[d["source"] == s, "participant_id"].nunique()) for s in self.sources}
        self.pid = {s: set(d.loc[d["source"] == s, "participant_id"]) for s in self.sources}

    def contrast(self, plus: str, minus: str | None = None) -> Estimate:
        """slope[plus] (− slope[minus]) with its cluster-robust 95% CI and p-value."""
        c = np.zeros(len(self.names))
        c[self.names.index(f"turn[{plus}]")] = 1.0
        n = self.n_part[plus]
        if minus is not None:
            c[self.names.index(f"turn[{minus}]")] = -1.0
            n = len(self.pid[plus] | self.pid[minus])
        r = self.fit.contrast(c)
        return Estimate(value=r.value, ci_low=r.ci_low, ci_high=r.ci_high, p_value=r.p_value, n=n,
                        note=SLOPE_NOTE.format(df=r.df))


def _mean_diff(y: np.ndarray, sim: np.ndarray, pid: np.ndarray) -> Estimate:
    """mean(y | sim) − mean(y | human) over conversations: OLS y ~ 1 + sim (statsmodels), 95% CI and
    p-value cluster-robust by participant (CR1, t with G − 1 df); n = participants."""
    X = np.column_stack([np.ones(y.size), sim.astype(float)])
    if dependent_columns(X.T @ X):
        raise FitError("the model could not be fitted: conversations of one source only")
    groups = pd.factorize(pid)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
    lo, hi = np.asarray(fit.conf_int(alpha=0.05))[1]
    return Estimate(value=float(fit.params[1]), ci_low=float(lo), ci_high=float(hi), p_value=float(fit.pvalues[1]),
                    n=int(groups.max() + 1), note=NOTE)


def _length_diffs(out: DynamicsResult, conv: pd.DataFrame) -> None:
    """Per simulated source with its own conversation-level measures: mean n_turns and the user-ended
    share minus human's, from the human and that source's conversations only."""
    human = out.per_source.get(HUMAN)
    if human is None or human.status != "ok":
        return
    for s, res in out.per_source.items():
        if s == HUMAN or res.status != "ok":
            continue
        c = conv[conv["source"].isin([HUMAN, s]) & conv["participant_id"].notna()]
        sim = (c["source"] == s).to_numpy()
        pid = c["participant_id"].astype(str).to_numpy()
        try:
            if res.n_turns is not None and human.n_turns is not None:
                v = pd.to_numeric(c["n_turns"], errors="coerce").to_numpy(float)
                ok = np.isfinite(v)
                out.n_turns_diff_vs_human[s] = _mean_diff(v[ok], sim[ok], pid[ok])
            if res.early_stop_share is not None and human.early_stop_share is not None:
                ok = c["stop_reason"].notna().to_numpy()
                early = (c["stop_reason"] == "user_ended").to_numpy(float)
                out.early_stop_diff_vs_human[s] = _mean_diff(early[ok], sim[ok], pid[ok])
        except (FitError, ValueError, np.linalg.LinAlgError) as exc:  # e.g. a degenerate cluster structure
            res.reason = f"no length difference from human: {reason_for(exc)}"


def _slopes(d: pd.DataFrame, sources: list[str]) -> _Slopes | str:
    try:
        return _Slopes(d, sources)
    except (FitError, np.linalg.LinAlgError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith("no conversation"):
            return str(exc)
        return f"turn-slope model: {reason_for(exc)}"


def dynamics(
    tables: Tables, *, n_boot: int = 200, seed: int = 0, participants: Participants | None = None
) -> DynamicsResult:
    """Turn-level feedback per source and its difference from human."""
    conv = tables.conversations
    if conv is None or "participant_id" not in conv.columns:
        return DynamicsResult(status="not_available", reason="no conversations table")
    participants = participants or participants_of(tables, n_boot, seed)
    out = DynamicsResult(model=MODEL)
    sources = sorted(conv["source"].dropna().unique())
    ratings, dropped = _turn_ratings(tables, conv)
    usable: list[str] = []
    for s in sources:
        res = DynamicsSource()
        c = conv[conv["source"] == s]
        out.per_source[s] = res
        res.n_participants = int(c["participant_id"].nunique())
        if res.n_participants < MIN_PARTICIPANTS:
            res.status = "not_available"
            res.reason = (f"{res.n_participants} participants (at least {MIN_PARTICIPANTS} are needed for an "
                          "interval clustered by participant)")
            continue
        cpart = participants.index(c["participant_id"].to_numpy())
        if has_values(c, "n_turns"):
            v = pd.to_numeric(c["n_turns"], errors="coerce").to_numpy(float)
            ok = np.isfinite(v)
            if ok.any():
                res.n_turns = _ratio(v[ok], np.ones(ok.sum()), cpart[ok], participants)
                shares = pd.Series(v[ok].astype(int)).value_counts(normalize=True).sort_index()
                res.n_turns_shares = {str(k): float(x) for k, x in shares.items()}
        if has_values(c, "stop_reason"):
            ok = c["stop_reason"].notna().to_numpy()
            early = (c["stop_reason"] == "user_ended").to_numpy(float)
            res.early_stop_share = _ratio(early[ok], np.ones(ok.sum()), cpart[ok], participants)
        if ratings is None:
            res.reason = "no turn_rating"
            continue
        if dropped is not None:
            res.n_gen_error = dropped.get(str(s), 0)
        r = ratings[ratings["source"] == s]
        if r.empty:
            continue
        res.n_ratings = len(r)
        rpart = participants.index(r["participant_id"].to_numpy())
        res.ceiling_share = _ratio((r["turn_rating"] >= CEILING).to_numpy(float), np.ones(len(r)), rpart, participants)
        # preferred arm per turn (unique argmax only), then switches between consecutive turns
        mx = r.groupby(["conversation_id", "turn"])["turn_rating"].transform("max")
        top = r[r["turn_rating"] == mx]
        top = top[~top.duplicated(["conversation_id", "turn"], keep=False)]  # ties: no unique preference
        top = top.sort_values(["conversation_id", "turn"])
        same_conv = top["conversation_id"].to_numpy()[1:] == top["conversation_id"].to_numpy()[:-1]
        consecutive = same_conv & (np.diff(top["turn"].to_numpy()) == 1)
        switched = top["arm"].to_numpy()[1:] != top["arm"].to_numpy()[:-1]
        if consecutive.any():
            tp = participants.index(top["participant_id"].to_numpy()[1:][consecutive])
            res.switch_rate = _ratio(switched[consecutive].astype(float), np.ones(consecutive.sum()), tp, participants)
        usable.append(s)
    _length_diffs(out, conv)
    if ratings is None or ratings.empty:
        out.status, out.reason = "not_available", "no turn ratings"
        return out
    if not usable:
        out.status, out.reason = "not_available", f"no source has turn ratings from {MIN_PARTICIPANTS}+ participants"
        return out
    d = ratings[ratings["source"].isin(usable)].reset_index(drop=True)
    fit = _slopes(d, usable)
    if isinstance(fit, str):
        out.status = "failed" if fit.startswith("turn-slope model") else "not_available"
        out.reason = fit
        return out
    w, out.window = _window(d)
    wfit = _slopes(w, usable)
    for s in usable:
        res = out.per_source[s]
        if s not in fit.sources:
            res.reason = "no conversation has turn ratings at two different turns: no slope"
            continue
        res.slope = fit.contrast(s)
        if not isinstance(wfit, str) and s in wfit.sources:
            res.slope_window = wfit.contrast(s)
    if HUMAN in fit.sources:
        for s in fit.sources:
            if s == HUMAN:
                continue
            out.slope_diff_vs_human[s] = fit.contrast(s, HUMAN)
            if not isinstance(wfit, str) and {s, HUMAN} <= set(wfit.sources):
                out.slope_diff_window_vs_human[s] = wfit.contrast(s, HUMAN)
    return out
