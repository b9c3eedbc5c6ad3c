"""``benchmarks/calibration.py`` (the script that writes docs/calibration.md) runs as documented,
here with a few repetitions of one analysis; the rates themselves are tested per analysis."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_the_calibration_script_writes_its_table(tmp_path):
    out = tmp_path / "calibration.md"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "calibration.py"), "--reps", "3", "--analysis",
                           "dynamics", "--jobs", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    assert "| dynamics | turn slope, sim − human (all turns) | 3 |" in table
    assert "python benchmarks/calibration.py --reps 3 --analysis dynamics" in table
    assert "false positives at 5%" in table and "## What each generator plants" in table


def test_case_runs_only_the_matching_comparisons(tmp_path):
    out = tmp_path / "calibration.md"
    script = str(REPO / "benchmarks" / "calibration.py")
    done = subprocess.run([sys.executable, script, "--reps", "2", "--analysis", "dynamics", "--case", "PRISM-shaped thumbs",
                           "--jobs", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| dynamics |")]
    assert len(rows) == 1 and "(held-out: PRISM-shaped thumbs, one population split) | 2 |" in rows[0]
    missing = subprocess.run([sys.executable, script, "--analysis", "dynamics", "--case", "no such comparison",
                              "--out", str(tmp_path / "none.md")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no such comparison" in missing.stderr
    assert not (tmp_path / "none.md").exists()
