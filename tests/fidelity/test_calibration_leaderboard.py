"""The leaderboard's calibration cases run end to end (a few repetitions, truths from a smaller
sample); the rates themselves come from ``benchmarks/calibration.py --analysis leaderboard``
(docs/calibration.md)."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from simlab.fidelity.calibration import leaderboard as cal
from simlab.fidelity.calibration import run_case
from tests.conftest import REPO

N_TRUTH = 200  # the benchmark's truths come from 20,000 participants; here the code path is what is tested


@pytest.mark.parametrize("which", [0, 1])
def test_each_leaderboard_case_runs_and_reports_every_dataset(which: int) -> None:
    case = cal.make_cases(n_truth=N_TRUTH)[which]
    r = run_case(case, 1)
    assert r.null_reported == r.effect_reported == 1, r.problems
    assert math.isfinite(case.truth(True)) and math.isfinite(case.truth(False))


def test_the_planted_truths_order_the_variants() -> None:
    # a variant copying its humans more often is truly closer: its large-sample index is higher
    null, effect = cal.truth(False, N_TRUTH), cal.truth(True, N_TRUTH)
    assert effect[0] > null[0] + 5 and abs(null[0] - null[1]) < 5


def test_rank_first_counts_datasets() -> None:
    first, reps = cal.rank_first(2, n=30)
    assert reps == 2 and 0 <= first <= 2


@pytest.mark.slow  # the truths from 20,000 participants: about a minute
def test_the_calibration_script_writes_the_leaderboard_rows(tmp_path):
    out = tmp_path / "calibration.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibration.py"), "--reps", "2", "--analysis",
                           "leaderboard", "--jobs", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    assert "| leaderboard | index difference of two variants, v1 − v2 (paired, Holm) | 2 |" in table
    assert "## Leaderboard: the variant planted closer ranks first" in table


@pytest.mark.slow  # a subprocess that also runs every analysis
def test_the_leaderboard_benchmark_runs_at_a_toy_size(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "leaderboard_bench.py"), "--variants", "2",
                           "--participants", "30", "--n-boot", "20", "--topics", "none", "--cli", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaderboard(details=False):" in done.stdout and "leaderboard(details=True):" in done.stdout
    assert "simlab compare --no-details:" in done.stdout and "simlab compare (with details):" in done.stdout
    assert (tmp_path / "leaderboard.json").is_file() and (tmp_path / "leaderboard.html").is_file()
    assert "humans" in done.stdout
    assert int(re.search(r"(\d+) paired tests", done.stdout).group(1)) >= 1  # the pair on the index at least
