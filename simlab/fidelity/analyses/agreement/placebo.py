"""The persona placebo: a simulated participant's agreement with their own human against that with the
other humans of the same domain, the part of individual agreement the persona explains."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from simlab.fidelity.analyses._prep import MIN_PARTICIPANTS
from simlab.fidelity.analyses.agreement.common import (
    INSTRUMENTS,
    N_PERM,
    _first_conversations,
    _mean_draws,
    _mean_est,
    _tops,
)
from simlab.fidelity.result import PersonaPlacebo, PlaceboInstrument
from simlab.fidelity.stats import Participants, estimate

__all__: list[str] = []


def _top_matrix(d: pd.DataFrame, top: pd.Series) -> pd.DataFrame:
    """Conversations × arms, 1/0 for "in the conversation's top set" of one instrument (NaN: not judged /
    not available)."""
    f = pd.DataFrame({"conversation_id": d["conversation_id"], "arm": d["arm"].astype(str), "v": top})
    f = f[f["v"].notna()].drop_duplicates(["conversation_id", "arm"])
    return f.set_index(["conversation_id", "arm"])["v"].unstack()


def _pair_agreement(sim: np.ndarray, hum: np.ndarray) -> np.ndarray:
    """Tie-aware agreement |A∩B|/(|A||B|) of every simulated conversation (rows of ``sim``) with every
    human conversation (rows of ``hum``) on the arms both judged (NaN where either top set is empty there)."""
    s_in, h_in = ~np.isnan(sim), ~np.isnan(hum)
    s, h = np.nan_to_num(sim), np.nan_to_num(hum)
    inter, n_s, n_h = s @ h.T, s @ h_in.T.astype(float), s_in.astype(float) @ h.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_s > 0) & (n_h > 0), inter / (n_s * n_h), np.nan)


class _PlaceboDomain(NamedTuple):
    """One domain's used simulated conversations: participant, total agreement over the domain's humans
    and their count besides the own one, and the cells of the matched participants' humans."""

    domain: str
    pids: np.ndarray  # (conversations,)
    total: np.ndarray  # (conversations,)
    n_other: np.ndarray  # (conversations,)
    matched: np.ndarray  # (participants,) sorted
    cells: np.ndarray  # (conversations, participants): agreement with each matched participant's human


def _placebo_permutations(domains: list[_PlaceboDomain], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the per-conversation gaps under ``N_PERM`` shuffles of the simulated↔human pairing.

    One shuffle serves every domain: a participant's simulated conversations get another participant's
    humans in all their domains at once, among the participants matched in the same set of domains
    (so the other has a human wherever they need one; a participant alone in their set keeps their own
    humans, which only makes the test conservative). A participant's tops carry across domains
    (a taste, in the human and in the persona), so their own-human agreements in two domains go
    together; shuffling each domain on its own broke that and over-rejected true nulls when both
    were strongly consistent (calibration, copula ρ = 0.9)."""
    perm_sum, perm_n = np.zeros(N_PERM), np.zeros(N_PERM)
    if not domains:
        return perm_sum, perm_n
    people = np.unique(np.concatenate([d.matched for d in domains]))
    where: dict[object, set[str]] = {}
    for d in domains:
        for p in d.matched:
            where.setdefault(p, set()).add(d.domain)
    strata = pd.factorize(pd.Series([frozenset(where[p]) for p in people]))[0]
    shuffle = np.tile(np.arange(people.size), (N_PERM, 1))  # shuffle[b, i]: whose humans participant i gets
    for k in range(int(strata.max()) + 1):
        members = np.flatnonzero(strata == k)
        shuffle[:, members] = members[np.argsort(rng.random((N_PERM, members.size)), axis=1)]
    for d in domains:
        column = np.full(people.size, -1)
        column[np.searchsorted(people, d.matched)] = np.arange(d.matched.size)
        to = column[shuffle[:, np.searchsorted(people, d.pids)]]  # (N_PERM, conversations); same stratum, so ≥ 0
        own_p = d.cells[np.arange(d.pids.size)[None, :], to]
        with np.errstate(invalid="ignore"):
            gap_p = own_p - (d.total[None, :] - own_p) / d.n_other[None, :]
        perm_sum += np.nansum(gap_p, axis=1)
        perm_n += np.isfinite(gap_p).sum(axis=1)
    return perm_sum, perm_n


def _placebo_instrument(
    h: pd.DataFrame, top_h: pd.Series, s: pd.DataFrame, top_s: pd.Series, participants: Participants,
    rng: np.random.Generator,
) -> PlaceboInstrument | None:
    """Own vs mismatched agreement on one instrument (None: the instrument is not in both sources).

    Per domain, the agreement of every simulated conversation with every human (first) conversation is
    one matrix; a simulated conversation's own term is its participant's cell, its mismatched term the
    mean of the other
    participants' cells. A permutation gives each matched participant another's humans (the same
    other in every domain, ``_placebo_permutations``), so its own term becomes that cell and its
    mismatched term the mean of the rest."""
    hm, sm = _top_matrix(h, top_h), _top_matrix(s, top_s)
    if hm.empty or sm.empty:
        return None
    arms = hm.columns.union(sm.columns)
    hm, sm = hm.reindex(columns=arms), sm.reindex(columns=arms)
    h_conv = h.drop_duplicates("conversation_id").set_index("conversation_id").loc[hm.index, ["participant_id", "domain"]]
    s_conv = s.drop_duplicates("conversation_id").set_index("conversation_id").loc[sm.index, ["participant_id", "domain"]]
    own_l, mism_l, pid_l = [], [], []
    n_no_other = 0
    per_domain: list[_PlaceboDomain] = []
    for dom, sd in s_conv.groupby("domain", sort=True):
        hd = h_conv[h_conv["domain"] == dom]  # first conversations: one per participant
        hpos = {p: i for i, p in enumerate(hd["participant_id"])}
        own_j = np.array([hpos.get(p, -1) for p in sd["participant_id"]], dtype=np.int64)
        if not (own_j >= 0).any():
            continue
        a = _pair_agreement(sm.loc[sd.index].to_numpy(float), hm.loc[hd.index].to_numpy(float))
        rows = np.arange(len(sd))
        own = np.where(own_j >= 0, a[rows, np.maximum(own_j, 0)], np.nan)
        ok = np.isfinite(a)
        n_other = ok.sum(axis=1) - 1  # own is finite wherever it is used
        total = np.where(ok, a, 0.0).sum(axis=1)
        valid = np.isfinite(own)
        n_no_other += int((valid & (n_other == 0)).sum())
        use = valid & (n_other > 0)
        if not use.any():
            continue
        own_u, tot_u, oth_u = own[use], total[use], n_other[use]
        pids = sd["participant_id"].to_numpy()[use]
        own_l.append(own_u)
        mism_l.append((tot_u - own_u) / oth_u)
        pid_l.append(pids)
        matched = np.unique(pids)
        per_domain.append(_PlaceboDomain(str(dom), pids, tot_u, oth_u, matched,
                                         a[np.flatnonzero(use)][:, [hpos[p] for p in matched]]))
    perm_sum, perm_n = _placebo_permutations(per_domain, rng)
    if not own_l:
        if n_no_other:
            return PlaceboInstrument(status="not_available", n_no_other=n_no_other,
                                     reason="no other participant of the same domain to mismatch with")
        return None
    own_v, mism_v, pid = np.concatenate(own_l), np.concatenate(mism_l), np.concatenate(pid_l)
    n_part = int(np.unique(pid).size)
    if n_part < MIN_PARTICIPANTS:
        return PlaceboInstrument(status="not_available", n_events=own_v.size, n_no_other=n_no_other,
                                 reason=f"{n_part} participants matched with a human and a mismatched human "
                                        f"(fewer than {MIN_PARTICIPANTS})")
    gap = own_v - mism_v
    obs = float(gap.mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        null = perm_sum / perm_n
    p_perm = float((1 + np.sum(null >= obs - 1e-12)) / (1 + N_PERM))
    part = participants.index(pid)
    return PlaceboInstrument(
        own=_mean_est(own_v, part, participants),
        mismatched=_mean_est(mism_v, part, participants),
        gap=estimate(obs, _mean_draws(gap, part, participants.counts), n_part, p_perm),
        permutation_p=p_perm, n_events=int(own_v.size), n_no_other=n_no_other,
    )


def _placebo(h: pd.DataFrame, s: pd.DataFrame, participants: Participants, seed: int) -> PersonaPlacebo:
    """Persona placebo of one simulated source (all its conversations) against the humans' first conversations.

    Per top-1 instrument, every simulated conversation (each repeat) agrees with its own human's
    conversation of the same domain (``own``) and, on average, with those of every other participant of
    the domain (``mismatched``: the exact mean of the permutation distribution over mismatched
    pairings). ``gap`` = own − mismatched is the individual agreement the persona explains. CI:
    participant bootstrap of the per-conversation gaps; p-value (one-sided): shuffles of the
    simulated↔human pairing of participants, one shuffle for all domains among the participants matched
    in the same domains (a participant's tastes carry across domains; shuffling each domain on its own
    was anti-conservative then). Conversations with no other participant in their domain are left out
    and counted (``n_no_other``); ``n_events`` counts the simulated conversations used."""
    h = _first_conversations(h)
    out = PersonaPlacebo(n_perm=N_PERM)
    per_dom = h.drop_duplicates("conversation_id").groupby("domain")["participant_id"].nunique()
    sim_doms = set(s["domain"].dropna())
    out.single_domains = sorted(str(d) for d, n in per_dom.items() if n == 1 and d in sim_doms)
    th, ts = _tops(h, "conversation_id", derived_ranks=True), _tops(s, "conversation_id", derived_ranks=True)
    rng = np.random.default_rng(seed)
    for inst in INSTRUMENTS:
        res = _placebo_instrument(h, th[inst], s, ts[inst], participants, rng)
        if res is not None:
            out.by_instrument[inst] = res
    if not out.by_instrument:
        out.status, out.reason = "not_available", "no top-1 instrument judged by both sources in a shared domain"
    elif all(r.status != "ok" for r in out.by_instrument.values()):
        first = next(iter(out.by_instrument.values()))
        out.status, out.reason = "not_available", first.reason
    return out
