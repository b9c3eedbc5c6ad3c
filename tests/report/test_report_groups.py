"""The report's subgroup and weights sections: rendered in Chromium without errors, and ``simlab report``'s
``--by`` / ``--weights`` refusing bad input without writing a report."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_report_browser import _load, browser  # noqa: F401 - the Chromium fixture


def _result() -> object:
    from simlab.fidelity.analyses import analyze_all
    from simlab.fidelity.calibration.subgroups import MARGINS, two_groups
    from simlab.fidelity.raking import NOT_WEIGHTED, participant_weights

    t = two_groups(5, 30, 30, 0.0, 1.5, n_events=3)
    w, summary = participant_weights(t, MARGINS)
    only = ["hierarchy", "subgroups"]
    weighted = analyze_all(t, n_boot=5, topics=None, weights=w, only=only, by=["age"])
    plain = analyze_all(t, n_boot=5, topics=None, only=only, by=["age"])
    return weighted.model_copy(update={"weights": summary.model_copy(update={"not_weighted": NOT_WEIGHTED}),
                                       "analyses_unweighted": plain.analyses})


def test_subgroups_and_weights_render_in_chromium_without_errors(browser, tmp_path: Path) -> None:  # noqa: F811
    from simlab.report import write_html

    path = write_html(_result(), tmp_path / "groups.html")  # type: ignore[arg-type]
    html = path.read_text(encoding="utf-8")
    assert "Subgroups" in html and "Weights" in html and "heterogeneity Q" in html and "weighted | unweighted" in html
    state = _load(browser, path)
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert "age = old" in state["text"]


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
