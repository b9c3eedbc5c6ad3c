"""The PPI calibration cases: their truths are the generator's, their CI widths are as the table says,
and a subset is calibrated (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from simlab.fidelity.analyses._prep import judgements_frame
from simlab.fidelity.analyses.ppi import participant_quantities
from simlab.fidelity.calibration import all_cases, run_case
from simlab.fidelity.calibration import ppi as cal

CASES = {c.name: c for c in all_cases(("ppi",))}


@pytest.mark.parametrize("effect", [False, True])
def test_truths_are_the_humans_population_means(effect: bool) -> None:
    """The integrated truth against the humans' mean in one large planted dataset (within 3.5 SE)."""
    t = cal.planted(77, effect, rho=0.9, n=3000, n_sim_only=2, n_events=4)
    q = participant_quantities(judgements_frame(t), list(cal.ARMS))
    h = q[q["source"] == "human"]
    for key in ("first_shown_excess", "choice_share:C"):
        se = h[key].std() / np.sqrt(len(h))
        assert abs(h[key].mean() - cal.truth(key, effect)) < 3.5 * se, key
    assert cal.truth("first_shown_excess", True) > cal.truth("first_shown_excess", False) + 5


def test_width_ratios_separate_informative_from_useless_simulators() -> None:
    assert len(CASES) == 4 and all(c.null_value == c.truth(False) for c in CASES.values())
    for name, case in CASES.items():
        ratio, lam = cal.width_ratio(case, 2)
        if "informative simulator" in name and "uninformative" not in name:
            assert ratio < 0.9 and lam > 0.4, name
        else:
            assert ratio > 0.97 and lam < 0.15, name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_ppi_is_calibrated_on_a_subset(name: str) -> None:
    r = run_case(CASES[name], 60)
    assert r.null_reported == r.effect_reported == 60
    assert r.false_positive_rate <= 0.12 and 0.88 <= r.coverage <= 1.0
