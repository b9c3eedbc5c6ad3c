"""User traits (autograded user dimensions): a planted sim − human difference recovered, none when absent."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simlab.fidelity.analyses.user_traits import user_traits
from simlab.tables import Tables


def _user_scores(effect: float, seed: int) -> Tables:
    rng = np.random.default_rng(seed)
    conv, grades = [], []
    for source, shift in (("human", 0.0), ("sim_dynamic", effect)):
        for p in range(60):
            pid = f"{source}-p{p}"
            person = rng.normal(0, 1)
            for c in range(3):
                cid = f"{pid}-c{c}"
                conv.append({"conversation_id": cid, "participant_id": pid, "source": source, "domain": "values"})
                for r in range(2):
                    grades.append({"unit_id": f"{cid}|user", "unit_kind": "user", "conversation_id": cid,
                                   "mode": "conversation", "dimension": "self_disclosure", "rater_run": r,
                                   "score": 5 + shift + person + rng.normal(0, 1), "status": "ok", "source": source})
    return Tables(judgements=pd.DataFrame(), conversations=pd.DataFrame(conv), autograde=pd.DataFrame(grades))


def test_user_traits_recover_planted_difference_and_find_none_when_absent():
    res = user_traits(_user_scores(1.5, 1), n_boot=500, seed=2)
    diff = res.dimensions["self_disclosure"].difference["sim_dynamic"]
    assert diff.ci_low <= 1.5 <= diff.ci_high and diff.ci_low > 0
    assert res.dimensions["self_disclosure"].mean["human"].n == 60
    null = user_traits(_user_scores(0.0, 4), n_boot=500, seed=2).dimensions["self_disclosure"].difference
    assert null["sim_dynamic"].ci_low <= 0 <= null["sim_dynamic"].ci_high
    excluded = user_traits(_user_scores(0.0, 4), n_boot=10, reliable=set())
    assert excluded.dimensions == {} and excluded.excluded == ["self_disclosure"]
