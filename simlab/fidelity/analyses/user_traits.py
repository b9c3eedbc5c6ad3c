"""User traits, human vs simulated: mean autograde score of the user's messages per source.

Reads autograde rows with unit_kind 'user' (averaged over rater runs per unit and mode), maps
each conversation to its participant, and per dimension reports each source's mean with a 95%
bootstrap CI over participants and each simulated source's difference from human (sim − human)
with its CI. Participants are resampled within each source (the sources' participants are
different people, or the same people in different roles, never paired rows).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from simlab.fidelity.result import Estimate, UserTraitsDimension, UserTraitsResult
from simlab.fidelity.stats import percentile_ci
from simlab.schema import HUMAN
from simlab.tables import Tables


def _participant_means(scores: pd.DataFrame) -> pd.Series:
    """Per participant: mean over their units (each unit first averaged over rater runs and modes)."""
    unit = scores.groupby(["participant_id", "unit_id"])["score"].mean()
    return unit.groupby(level="participant_id").mean()


def _boot_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return np.asarray(values[idx].mean(axis=1))


def user_traits(tables: Tables, *, n_boot: int = 1000, seed: int = 0,
                reliable: Iterable[str] | None = None) -> UserTraitsResult:
    """Per user-trait dimension: mean per source (CI over participants) and sim − human (CI).

    ``reliable``: if given, only these dimensions are compared (see
    ``simlab.autograder.reliable_dimensions``); the rest are listed as excluded.
    """
    g = tables.autograde
    if g is None or g.empty or tables.conversations is None:
        return UserTraitsResult(status="not_available", reason="no autograde scores or no conversations table")
    g = g[(g["unit_kind"] == "user") & g["score"].notna()]
    if "status" in g.columns:
        g = g[g["status"] == "ok"]
    if g.empty:
        return UserTraitsResult(status="not_available", reason="no user-trait scores")
    conv = tables.conversations.drop_duplicates("conversation_id").set_index("conversation_id")
    g = g.assign(participant_id=g["conversation_id"].map(conv["participant_id"]),
                 source=g["conversation_id"].map(conv["source"]).fillna(g.get("source")))
    g = g[g["participant_id"].notna() & g["source"].notna()]
    dims = sorted(g["dimension"].unique())
    excluded: list[str] = []
    if reliable is not None:
        keep = set(reliable)
        excluded = [d for d in dims if d not in keep]
        dims = [d for d in dims if d in keep]
    rng = np.random.default_rng(seed)
    out: dict[str, UserTraitsDimension] = {}
    for dim in dims:
        d = g[g["dimension"] == dim]
        res = UserTraitsDimension()
        draws: dict[str, np.ndarray] = {}
        points: dict[str, float] = {}
        for source, part in d.groupby("source", sort=True):
            means = _participant_means(part).to_numpy(dtype=float)
            points[str(source)] = float(means.mean())
            draws[str(source)] = _boot_mean(means, n_boot, rng)
            lo, hi = percentile_ci(draws[str(source)])
            res.mean[str(source)] = Estimate(value=points[str(source)], ci_low=lo, ci_high=hi, n=len(means))
        if HUMAN in points:
            for source in points:
                if source == HUMAN:
                    continue
                diff = draws[source] - draws[HUMAN]
                lo, hi = percentile_ci(diff)
                res.difference[source] = Estimate(value=points[source] - points[HUMAN], ci_low=lo, ci_high=hi,
                                                  n=res.mean[source].n + res.mean[HUMAN].n)
        out[dim] = res
    return UserTraitsResult(dimensions=out, excluded=excluded)


__all__ = ["UserTraitsDimension", "UserTraitsResult", "user_traits"]
