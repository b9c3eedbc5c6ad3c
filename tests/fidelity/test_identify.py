"""Identification decided from the design's structure, the same on every CPU and BLAS kernel."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from simlab.fidelity.identify import constant_columns, dependent_columns, describe_dependence, separating_direction
from simlab.fidelity.stats import ChoiceSets, FitError, SeparationError, fit_clogit


def _sets(n_strata: int, seed: int, k: int = 4) -> ChoiceSets:
    """Choice sets of k alternatives: arm dummies (arm 0 the reference) and a continuous feature."""
    rng = np.random.default_rng(seed)
    arm = np.tile(np.arange(k), n_strata)
    z = rng.normal(size=arm.size)
    util = np.array([0.0, 0.4, 0.8, 1.2])[arm] + 0.5 * z + rng.gumbel(size=arm.size)
    stratum = np.repeat(np.arange(n_strata), k)
    chosen = np.zeros(arm.size, bool)
    chosen[np.arange(n_strata) * k + util.reshape(n_strata, k).argmax(axis=1)] = True
    x = np.column_stack([(arm == a).astype(float) for a in range(1, k)] + [z])
    return ChoiceSets(x, chosen, stratum, np.arange(n_strata) // 3, ("arm[1]", "arm[2]", "arm[3]", "z"))


def _with(cs: ChoiceSets, col: np.ndarray, name: str) -> ChoiceSets:
    return ChoiceSets(np.c_[cs.X, col], cs.chosen, cs.stratum, cs.participant, (*cs.names, name))


def test_a_feature_constant_within_every_choice_set_is_named() -> None:
    cs = _sets(60, 0)
    level = np.repeat(np.random.default_rng(1).normal(size=60), 4)  # varies between sets, not within
    with pytest.raises(FitError, match=r"not identified: const does not vary within any choice set"):
        fit_clogit(_with(cs, np.ones(len(cs.X)), "const"))
    with pytest.raises(FitError, match=r"level does not vary within any choice set"):
        fit_clogit(_with(cs, level, "level"))
    # constancy is exact: nearly constant is still a (weakly) identified feature
    assert not constant_columns(np.r_[1.0, 1.0 + 1e-12][:, None], np.array([0]))[0]


def test_collinear_features_are_named_with_what_they_repeat() -> None:
    cs = _sets(60, 2)
    combo = 2 * cs.X[:, 3] - cs.X[:, 0] + np.repeat(np.arange(60.0), 4)  # + a per-set constant: still collinear
    with pytest.raises(FitError, match=r"combo is a linear combination of arm\[1\], z within choice sets"):
        fit_clogit(_with(cs, combo, "combo"))


def test_a_level_never_chosen_is_separation_found_before_the_fit() -> None:
    cs = _sets(80, 3)
    # arm 3 never chosen: move each of its wins to the reference arm
    chosen = cs.chosen.copy()
    won = np.flatnonzero(chosen & (cs.X[:, 2] == 1))
    chosen[won] = False
    chosen[won - 3] = True
    never = ChoiceSets(cs.X, chosen, cs.stratum, cs.participant, cs.names)
    direction = separating_direction(never.X[never.chosen_idx[never.stratum[~never.chosen]]] - never.X[~never.chosen])
    assert direction is not None and direction[2] < 0 and np.allclose(direction[[0, 1, 3]], 0, atol=1e-9)
    fit = fit_clogit(never)
    assert fit.penalised and fit.params[2] < -2 and np.all(np.isfinite(fit.bse))
    with pytest.raises(SeparationError, match=r"separation along −arm\[3\]"):
        fit_clogit(never, penalty="none")
    assert not fit_clogit(cs).penalised  # every arm chosen sometimes: the maximum-likelihood fit
    assert separating_direction(cs.X[cs.chosen_idx[cs.stratum[~cs.chosen]]] - cs.X[~cs.chosen]) is None


def test_bootstrap_weights_decide_identification_on_the_sets_they_keep() -> None:
    cs = _sets(40, 4)
    w = np.ones(cs.n_strata)
    w[cs.n_strata // 2:] = 0.0
    # the feature varies only in the dropped half: constant in every set that is kept
    only_dropped = np.where(cs.stratum >= cs.n_strata // 2, np.random.default_rng(0).normal(size=len(cs.X)), 0.0)
    fit_clogit(_with(cs, only_dropped, "late"))  # identified on all sets
    with pytest.raises(FitError, match="late does not vary"):
        fit_clogit(_with(cs, only_dropped, "late"), w)


def test_dependent_columns_keep_the_first_and_report_the_later() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    x = np.column_stack([a, b, a - 3 * b, np.zeros(50), b + 1e-3 * rng.normal(size=50)])  # the last: nearly b, not b
    dep = dependent_columns(x.T @ x)
    assert sorted(dep) == [2, 3]
    np.testing.assert_allclose(dep[2], [1.0, -3.0], atol=1e-8)
    assert describe_dependence(dep, ["a", "b", "c", "zero", "e"]) == "c is a linear combination of a, b; zero does not vary"


_VERDICTS = r"""
import json, sys
import numpy as np
from threadpoolctl import threadpool_info
sys.path.insert(0, sys.argv[1])
from tests.fidelity.test_identify import _sets, _with
from simlab.fidelity.stats import FitError, fit_clogit
out = {"kernel": sorted({str(i.get("architecture")) for i in threadpool_info() if i.get("internal_api") == "openblas"})}
cs = _sets(60, 0)
cases = {
    "ok": cs,
    "constant": _with(cs, np.ones(len(cs.X)), "const"),
    "collinear": _with(cs, 2 * cs.X[:, 3] - cs.X[:, 0], "combo"),
    "scaled_copy": _with(cs, cs.X[:, 3] * 3.7, "copy"),
}
for name, c in cases.items():
    try:
        f = fit_clogit(c)
        out[name] = ["fit", f.penalised, [round(float(v), 6) for v in f.params]]
    except FitError as exc:
        out[name] = ["FitError", str(exc)]
print(json.dumps(out))
"""


def _coretypes() -> list[str]:
    """OpenBLAS kernels every CPU of this architecture can run, other than the one it picks itself."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ["Prescott", "Nehalem"]  # SSE3 / SSE4.2 kernels: no AVX, no AVX-512, no AMX
    if machine in ("aarch64", "arm64"):
        return ["ARMV8"]
    return []


def test_verdicts_are_the_same_under_other_blas_kernels(tmp_path) -> None:
    """The same designs in subprocesses forced onto other OpenBLAS kernels (OPENBLAS_CORETYPE): the
    same identified/not-identified verdicts, reasons and estimates."""
    from tests.conftest import REPO

    results = {}
    for core in [None, *_coretypes()]:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        if core:
            env["OPENBLAS_CORETYPE"] = core
        proc = subprocess.run([sys.executable, "-c", _VERDICTS, str(REPO)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        results[core or "default"] = json.loads(proc.stdout)
    kernels = {k: tuple(v.pop("kernel")) for k, v in results.items()}
    if len(results) > 1 and len(set(kernels.values())) == 1 and kernels["default"]:
        pytest.fail(f"OPENBLAS_CORETYPE did not change the kernel ({kernels}): the test would prove nothing")
    first = results["default"]
    assert first["ok"][0] == "fit" and first["constant"][0] == first["collinear"][0] == first["scaled_copy"][0] == "FitError"
    for core, verdicts in results.items():
        assert verdicts == first, (core, kernels[core], verdicts)
