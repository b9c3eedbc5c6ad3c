"""Fast calibration subset of the user_text comparisons (the full table: benchmarks/calibration.py),
and the generator's planted truths."""

from __future__ import annotations

import numpy as np
import pytest

from simlab.fidelity.calibration import run_case
from simlab.fidelity.calibration.user_text import CASES, SIM, simulate


def test_the_null_is_one_dataset_per_seed_and_the_effects_plant_what_they_say() -> None:
    assert simulate(7, False, "length") is simulate(7, False, "diversity")  # every case's null is the same data
    null, longer, narrower = simulate(8, False, "length"), simulate(8, True, "length"), simulate(8, True, "diversity")

    def mean_words(t, source):
        cids = set(t.conversations.loc[t.conversations["source"] == source, "conversation_id"])
        text = t.turns.loc[t.turns["conversation_id"].isin(cids), "text"]
        return float(np.mean([len(x.split()) for x in text])), len({w for x in text for w in x.split()})

    (h_len, _), (s_len, _) = mean_words(null, "human"), mean_words(null, SIM)
    assert abs(s_len - h_len) < 1.5 and 9 < h_len < 11  # 10 words on average in both sources
    assert mean_words(longer, SIM)[0] > 11.5  # 13 on average
    assert mean_words(narrower, SIM)[1] < 0.8 * mean_words(narrower, "human")[1]  # fewer distinct words


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_user_text_comparisons_are_calibrated_on_a_fast_subset(name: str) -> None:
    case = next(c for c in CASES if c.name == name)
    r = run_case(case, 30)
    assert r.null_reported == r.effect_reported == 30, r.problems
    assert r.null_significant <= 4  # P(≥ 5 of 30 | 5%) ≈ 2%
    assert r.coverage >= 0.85
