"""Calibration cases of the topic divergence (opening prompts, TF-IDF, as ``topics()`` runs it).

Generator: ``N_TOPICS`` topics, each with its own words (plus filler words shared by all);
each domain has its own population topic distribution (``DOMAIN_SHARES``). A participant has
their own topic tendency per domain, θ ~ Dirichlet(``CONCENTRATION`` · π_domain), and 1–2
conversations per domain; their simulated copy (same participant_id, its own 1–2
conversations per domain) draws from the same θ under the null, and from
(1 − ``SHIFT``)·θ + ``SHIFT``·[topic 0] under the effect. One participant in five has no
simulated copy. The truth is the JSD of the population shares; it does not depend on how
KMeans splits or merges topics 1–5 (their sim/human ratio is the same, 1 − ``SHIFT``), as long
as topic 0 is not merged with another.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from simlab.fidelity.analyses._prep import participants_of
from simlab.fidelity.analyses.topics import Divergence, _Embedder, clusters, divergence, user_texts
from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.stats import jsd
from simlab.tables import Tables

__all__ = ["CASES"]

N_PARTICIPANTS = 60
N_BOOT = 200
N_TOPICS = 6
DOMAINS = ("unguided", "values", "controversy", "emotional_wellbeing")
DOMAIN_SHARES = np.array([
    [0.30, 0.25, 0.20, 0.10, 0.10, 0.05],
    [0.10, 0.30, 0.25, 0.15, 0.10, 0.10],
    [0.15, 0.10, 0.15, 0.35, 0.15, 0.10],
    [0.20, 0.05, 0.10, 0.10, 0.25, 0.30],
])
CONCENTRATION = 3.0
"""Participants' own topic tendencies: small = strong heterogeneity (clustered texts)."""
SHIFT = 0.25
_WORDS = [[f"t{t}w{i}" for i in range(12)] for t in range(N_TOPICS)]
_FILLER = ["what", "think", "about", "should", "people", "really", "would", "could", "life", "today", "why", "how"]


def _shifted(p: np.ndarray) -> np.ndarray:
    return np.asarray((1 - SHIFT) * p + SHIFT * np.eye(N_TOPICS)[0])


def simulate(seed: int, effect: bool) -> Tables:
    """Opening prompts of humans and their simulated copies (see the module docstring)."""
    rng = np.random.default_rng([seed, 1])  # not the stream the analysis draws from with the same seed
    conv_rows, turn_rows = [], []
    for i in range(N_PARTICIPANTS):
        pid = f"p{i:03d}"
        sources = ("human", "sim") if rng.random() >= 0.2 else ("human",)
        for d, dom in enumerate(DOMAINS):
            theta = rng.dirichlet(CONCENTRATION * DOMAIN_SHARES[d])
            for src in sources:
                p = _shifted(theta) if (effect and src == "sim") else theta
                for c in range(int(rng.integers(1, 3))):
                    cid = f"{src}-{pid}-{dom}-{c}"
                    topic = int(rng.choice(N_TOPICS, p=p))
                    words = list(rng.choice(_WORDS[topic], size=3)) + list(rng.choice(_FILLER, size=3))
                    rng.shuffle(words)
                    conv_rows.append({"conversation_id": cid, "participant_id": pid, "source": src, "domain": dom})
                    turn_rows.append({"conversation_id": cid, "turn": 0, "role": "user", "text": " ".join(words)})
    conversations = pd.DataFrame(conv_rows)
    judgements = pd.DataFrame({"conversation_id": pd.Series(dtype=str), "participant_id": pd.Series(dtype=str)})
    return Tables(judgements=judgements, conversations=conversations, turns=pd.DataFrame(turn_rows))


def _divergence(tables: Tables, seed: int, domains: bool) -> Divergence:
    texts = user_texts(tables)
    assert texts is not None
    opening = texts[texts["turn"] == 0].reset_index(drop=True)
    participants = participants_of(tables, N_BOOT, seed)
    e = _Embedder("tfidf", opening["text"].tolist())(opening["text"].tolist())
    with threadpool_limits(1):  # the benchmark runs one process per core; KMeans threads only contend
        labels, k = clusters(e, seed)
        src = opening["source"].to_numpy()
        return divergence(labels, k, participants.index(opening["participant_id"].to_numpy()), src == "sim",
                          opening["domain"].to_numpy(), participants, seed, domains=domains)


def _pooled(tables: Tables, seed: int) -> Measured:
    d = _divergence(tables, seed, domains=False)
    return Measured(d.corrected, d.corrected.p_value)


def _within(tables: Tables, seed: int) -> Measured:
    d = _divergence(tables, seed, domains=True)
    return Measured(d.within, d.within.p_value if d.within is not None else None)


def _truth_pooled(effect: bool) -> float:
    p = DOMAIN_SHARES.mean(axis=0)  # every domain has the same expected number of texts
    return jsd(p, _shifted(p)) if effect else 0.0


def _truth_within(effect: bool) -> float:
    return float(np.mean([jsd(p, _shifted(p)) for p in DOMAIN_SHARES])) if effect else 0.0


_NOTE = (f"{N_PARTICIPANTS} participants (1 in 5 without a simulated copy), {len(DOMAINS)} domains with their own "
         f"topic mix, 1–2 opening prompts per participant, domain and source; per-participant topic tendencies "
         f"Dirichlet({CONCENTRATION:g}·π_domain) shared by the simulated copy; effect: {SHIFT:.0%} of the simulated "
         f"prompts moved to topic 0; TF-IDF + KMeans as in topics(); {N_BOOT} bootstrap draws")

CASES = [
    Case("topics", "opening JSD beyond chance (bias-corrected), sim vs human", simulate, _pooled, _truth_pooled,
         note=_NOTE),
    Case("topics", "opening JSD within domains (weighted), sim vs human", simulate, _within, _truth_within,
         note=_NOTE),
]
