"""Calibration cases of the ``user_text`` comparisons: length, lexical diversity (MATTR), distinct-n of
openings, question share, last-message length and the user-ended share, simulated − human.

One generator (``simulate``) writes user messages from a Zipf vocabulary: ``N_PARTICIPANTS``
participants, each a human and their simulated copy (one participant_id), ``CONVERSATIONS``
conversations each with an opening and 0–3 later messages. Per participant, shared in part
(correlation 0.6) by their copy: a length level (log-normal, SD ``SD_LENGTH``), a question
propensity (log-odds, SD 1), a leaning to go on (log-odds, SD 1), and a personal word list that a
share ``OWN_SHARE`` of their words comes from (the copy shares half of it). Every other word comes
from the common Zipf vocabulary. Under ``effect=False`` both sources write alike (same
distributions, same parameters; one null dataset per seed serves every case). Under
``effect=True`` the simulator plants, by ``what``: ``length`` — messages ``LENGTH_EFFECT``× as long
on average, +``QUESTION_EFFECT`` log-odds of a question and +``END_EFFECT`` log-odds of ending the
conversation after each message (none of which touches the vocabulary); ``diversity`` — its common
words drawn from a vocabulary ``DIVERSITY_VOCAB`` times smaller and its personal lists half as long
(lengths untouched). The truth of the effect is the estimator's value on one dataset of
``TRUTH_N`` participants (fixed seed; computed once per process); of the null, 0.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import pandas as pd
from scipy.special import expit

from simlab.fidelity.calibration import Case, Measured
from simlab.fidelity.user_text_result import UserTextResult
from simlab.schema import HUMAN
from simlab.tables import Tables

__all__ = ["CASES", "SIM", "simulate"]

SIM = "sim_dynamic"
N_PARTICIPANTS = 80
CONVERSATIONS = 2
MAX_LATER = 3
VOCAB = 2000
ZIPF = 1.1
OWN_WORDS = 30
OWN_SHARE = 0.3
SD_LENGTH = 0.4
RHO = 0.6
LENGTH_EFFECT = 1.3
DIVERSITY_VOCAB = 4
QUESTION_EFFECT = 0.6
END_EFFECT = 0.8
N_BOOT = 200
TRUTH_N = 6000
WHAT = ("length", "diversity")


def _correlated(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    """(2, n) normal levels of a human and their copy, correlation ``RHO``."""
    z = rng.normal(0, sd, (2, n))
    z[1] = RHO * z[0] + np.sqrt(1 - RHO**2) * z[1]
    return z


def _zipf_cdf(v: int) -> np.ndarray:
    p = 1.0 / np.arange(1, v + 1) ** ZIPF
    return np.cumsum(p / p.sum())


def simulate(seed: int, effect: bool, what: str = "length", n: int = N_PARTICIPANTS) -> Tables:
    """Human + simulated user messages with ``what`` planted under the effect (module docstring).

    Kept per process: the cases of one planted effect share their datasets (and the null ones all
    cases), and so their analyses."""
    return _simulate(seed, what if effect else None, n)


@lru_cache(maxsize=None)
def _simulate(seed: int, what: str | None, n: int) -> Tables:
    rng = np.random.default_rng(seed)
    on = (False, what is not None)  # the simulator carries the effect, human never
    length = _correlated(rng, n, SD_LENGTH)
    asks = _correlated(rng, n, 1.0)
    stays = _correlated(rng, n, 1.0)
    own = rng.integers(0, 10 * VOCAB, (n, OWN_WORDS))  # personal words, ids apart from the common ones
    own_copy = np.where(rng.random((n, OWN_WORDS)) < 0.5, own, rng.integers(0, 10 * VOCAB, (n, OWN_WORDS)))
    conv_rows, turn_rows = [], []
    for s, src in enumerate((HUMAN, SIM)):
        diverse = what == "diversity" and on[s]
        common = _zipf_cdf(VOCAB // DIVERSITY_VOCAB if diverse else VOCAB)
        n_own = OWN_WORDS // 2 if diverse else OWN_WORDS
        mean_len = np.log(10.0) + (np.log(LENGTH_EFFECT) if what == "length" and on[s] else 0.0)
        q_shift = QUESTION_EFFECT if what == "length" and on[s] else 0.0
        e_shift = END_EFFECT if what == "length" and on[s] else 0.0
        words_own = own if s == 0 else own_copy
        for p in range(n):
            pid = f"p{p:05d}"
            for c in range(CONVERSATIONS):
                cid = f"{src}-{pid}-c{c}"
                k = 0
                while True:
                    m = 1 + rng.poisson(np.exp(mean_len + length[s, p] - SD_LENGTH**2 / 2) - 1)
                    mine = rng.random(m) < OWN_SHARE
                    ids = np.where(mine, 10 * VOCAB + words_own[p, rng.integers(0, n_own, m)],
                                   np.minimum(np.searchsorted(common, rng.random(m)), common.size - 1))
                    text = " ".join(f"w{i}" for i in ids)
                    if rng.random() < expit(-0.8 + asks[s, p] + q_shift):
                        text += "?"
                    turn_rows.append((cid, k, "user", text))
                    if k == MAX_LATER:
                        reason = "max_turns"
                        break
                    if rng.random() < expit(-0.5 + stays[s, p] - e_shift):
                        k += 1
                        continue
                    reason = "user_ended"
                    break
                conv_rows.append((cid, pid, src, k + 1, reason))
    conversations = pd.DataFrame(conv_rows, columns=["conversation_id", "participant_id", "source", "n_turns",
                                                     "stop_reason"])
    turns = pd.DataFrame(turn_rows, columns=["conversation_id", "turn", "role", "text"])
    judgements = pd.DataFrame({"conversation_id": conversations["conversation_id"],
                               "participant_id": conversations["participant_id"], "arm": "A"})
    return Tables(judgements=judgements, conversations=conversations, turns=turns)


_RESULTS: dict[tuple[int, int, int], tuple[Tables, UserTextResult]] = {}
"""user_text's result per (dataset, seed, n_boot), the dataset kept alive with it (so its id stays its own)."""


def _result(tables: Tables, seed: int, n_boot: int) -> UserTextResult:
    from simlab.fidelity.analyses.user_text import user_text

    key = (id(tables), seed, n_boot)
    if key not in _RESULTS:
        _RESULTS[key] = (tables, user_text(tables, n_boot=n_boot, seed=seed))
    return _RESULTS[key][1]


def measure(key: str, tables: Tables, seed: int, n_boot: int = N_BOOT) -> Measured:
    """The difference sim − human of measure ``key`` as ``user_text`` reports it."""
    comp = _result(tables, seed, n_boot).vs_human.get(SIM)
    e = comp.measures[key].difference if comp is not None else None
    return Measured(e, e.p_value if e is not None else None)


def truth(what: str, key: str, effect: bool) -> float:
    if not effect:
        return 0.0
    m = measure(key, simulate(987_654_321, True, what, n=TRUTH_N), 0, n_boot=1)
    assert m.estimate is not None
    return float(m.estimate.value)


NOTE = (f"{N_PARTICIPANTS} participants, each a human and their simulated copy, {CONVERSATIONS} conversations with "
        f"an opening and 0–{MAX_LATER} later messages; words from a Zipf vocabulary ({VOCAB} words, exponent {ZIPF}) "
        f"and {OWN_SHARE:.0%} from a personal list of {OWN_WORDS} (half shared by the copy); per-participant length "
        f"(log-normal SD {SD_LENGTH}), question and going-on propensities (SD 1 log-odds), correlated {RHO} with the "
        "copy. Effect: {effect}; truth: the estimator on one dataset of "
        f"{TRUTH_N} participants.")

_EFFECTS = {
    "length": (f"simulated messages {LENGTH_EFFECT}× as long on average, question log-odds +{QUESTION_EFFECT}, "
               f"log-odds of ending after a message +{END_EFFECT}"),
    "diversity": f"simulated common vocabulary {DIVERSITY_VOCAB}× smaller and personal lists half as long",
}


def _case(key: str, what: str, name: str) -> Case:
    return Case("user_text", name, partial(simulate, what=what), partial(measure, key), partial(truth, what, key), 0.0,
                NOTE.format(effect=_EFFECTS[what]))


CASES = [
    _case("opening.words", "length", "opening length (words), sim − human"),
    _case("later.words", "length", "later message length (words), sim − human"),
    _case("ending.last_words", "length", "last user message length (words), sim − human"),
    _case("opening.mattr", "diversity", "MATTR of openings, sim − human"),
    _case("later.mattr", "diversity", "MATTR of later messages, sim − human"),
    _case("opening.distinct_1", "diversity", "distinct-1 of openings (pairs of participants), sim − human"),
    _case("opening.distinct_2", "diversity", "distinct-2 of openings (pairs of participants), sim − human"),
    _case("opening.question", "length", "share of openings that are questions, sim − human"),
    _case("ending.user_ended", "length", "user-ended share, sim − human"),
]
