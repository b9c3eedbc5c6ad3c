"""write_run_report and the CLI on a real stub-server run whose texts carry XSS payloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _payloads import PAYLOADS, REPO

from simlab.report import write_run_report


def test_run_report_written_into_the_run_dir_with_header(run_copy: Path):
    path = write_run_report(run_copy, n_boot=10)
    assert path == run_copy / "report.html"
    html = path.read_text()
    assert not list(run_copy.glob(".report.html.*.tmp"))  # atomic write left no temp file
    assert f"Fidelity report: {run_copy.name}" in html
    for expected in ("No human data configured", "Model calls and tokens", "SUMMARY", "simulator/opening.j2",
                     "gen_error", "max_turns_reached", "run seed", "Transcripts", "emotional_wellbeing"):
        assert expected in html, expected


def test_payloads_are_escaped_and_keys_scrubbed(run_copy: Path):
    html = write_run_report(run_copy, n_boot=10).read_text()
    for name, payload in PAYLOADS.items():
        assert payload not in html, name
    assert "&lt;script&gt;document.title=&#34;PWNED-script&#34;&lt;/script&gt;" in html  # shown, as text
    assert "&lt;/textarea&gt;&lt;script&gt;" in html  # persona payload parroted by the simulated user
    assert "sk-ABCDEF1234567890" not in html and "[redacted]" in html


def test_cli_writes_report_and_exits_2_on_bad_input(run_copy: Path, tmp_path: Path):
    out = tmp_path / "x.html"
    cmd = [sys.executable, "-m", "simlab.report", "--run", str(run_copy), "--out", str(out), "--n-boot", "5"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and out.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "simlab.report", "--run", str(tmp_path / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no run store found" in bad.stderr and "Traceback" not in bad.stderr
    bad_human = subprocess.run(cmd[:-2] + ["--human", str(tmp_path / "missing")], cwd=REPO, capture_output=True,
                               text=True, timeout=60)
    assert bad_human.returncode == 2 and "missing" in bad_human.stderr, bad_human.stderr
    helped = subprocess.run([sys.executable, "-m", "simlab.report", "--help"], cwd=REPO, capture_output=True, text=True)
    assert helped.returncode == 0 and "--human" in helped.stdout and "exit status" in helped.stdout


@pytest.mark.slow  # ~40 s: every analysis on all of Dialogue-Eval
def test_run_report_with_real_human_data(run_copy: Path, dialogue_eval_dir: Path, tmp_path: Path):
    import warnings

    from simlab.fidelity import import_dialogue_eval, write_tables

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        human = write_tables(import_dialogue_eval(dialogue_eval_dir), tmp_path / "human", "csv")
    html = write_run_report(run_copy, human=str(human), n_boot=5).read_text()
    assert "sources: human, sim_dynamic" in html and "biencoder" in html
    assert "No human data configured" not in html
