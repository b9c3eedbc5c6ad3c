"""``benchmarks/scale.py`` at a toy size: it runs end to end and ends with its JSON result
line, every session accounted for (its own asserts), faults included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"sessions", "concurrency", "wall_s", "sessions_per_s", "ideal_sessions_per_s", "ideal_basis",
        "ratio_vs_ideal", "cpu_ms_per_call", "peak_rss_mib", "loop_lag_p99_ms", "commit_ms_p99", "resume_s",
        "loop_lag_p50_ms", "loop_lag_p95_ms", "loop_stalled_in", "rss_at_checkpoint_mib", "rss_end_mib",
        "rss_end_vs_checkpoint"}


@pytest.mark.slow
def test_the_scale_benchmark_ends_with_the_json_line_and_accounts_for_every_session(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/scale.py"), "--sessions", "12", "--concurrency", "6", "--baseline", "3",
         "--client-calls", "60", "--latency", "0.05", "--per-token", "0", "--faults",
         "--fault-timeout", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result), KEYS - set(result)
    assert result["sessions"] == 12 and result["completed"] + result["failed"] == 12
    assert result["ideal_basis"] in ("little", "client") and result["ratio_vs_ideal"] > 0
    assert result["bare_transport"] in ("aiohttp", "aiohttp+post")
    assert all(len(result[f"gc{g}"]) == 3 for g in range(3))
    assert result["loop_lag_p50_ms"] <= result["loop_lag_p95_ms"] <= result["loop_lag_p99_ms"]
    assert result["rss_end_mib"] > 0 and all(isinstance(s, float) for _, s in result["loop_stalled_in"])
    assert result["fault_accounted"] == 1.0 and result["fault_duplicated"] == 0, result
    assert result["fault_completed"] + result["fault_failed"] == 12
