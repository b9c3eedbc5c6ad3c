"""simlab.schema: the shared vocabulary's one definition of the refusal reading."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pandas as pd

from simlab import autograder
from simlab.schema import REFUSED_AT, binarise_refusal


def test_binarise_refusal_reads_a_grade_of_two_or_more_as_refused():
    s = pd.Series([1, 2, 3, np.nan])
    out = binarise_refusal(s)
    assert out.tolist()[:3] == [0.0, 1.0, 1.0] and np.isnan(out.iloc[3])
    assert [binarise_refusal(x) for x in (1.0, 2, np.float64(3))] == [0.0, 1.0, 1.0]
    assert math.isnan(binarise_refusal(float("nan"))) and math.isnan(binarise_refusal(None))
    assert REFUSED_AT == 2


def test_the_autograder_and_the_trait_analysis_use_the_one_definition():
    assert autograder.binarise_refusal is binarise_refusal
    # the package exports the function traits() under the module's name
    traits = importlib.import_module("simlab.fidelity.analyses.traits")
    assert traits.binarise_refusal is binarise_refusal
