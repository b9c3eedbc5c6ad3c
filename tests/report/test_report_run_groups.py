"""``simlab report``'s ``--by`` / ``--weights`` on a real stub-server run: bad input exits 2 and writes no
report."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_report_by_without_human_data_and_bad_margins_exit_2_writing_nothing(
        run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simlab.report.__main__ import main

    out = tmp_path / "r.html"
    assert main(["--run", str(run_copy), "--out", str(out), "--by", "age"]) == 2
    assert "--human" in capsys.readouterr().err and not out.exists()
    margins = tmp_path / "m.csv"
    margins.write_text("attribute,level,share\nage,young,0.7\nage,old,0.7\n", encoding="utf-8")
    human = tmp_path / "human"
    from tests.test_sim_judgement import human_tables

    human_tables().write(human)
    assert main(["--run", str(run_copy), "--human", str(human), "--out", str(out), "--weights", str(margins),
                 "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert str(margins) in err and ":3:" in err and "share" in err and not out.exists()
