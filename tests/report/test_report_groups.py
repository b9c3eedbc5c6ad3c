"""The report's subgroup and weights sections rendered in Chromium without errors (``simlab report``'s
``--by`` / ``--weights``: test_report_run_groups.py, apart from the Chromium fixture's event loop)."""

from __future__ import annotations

from pathlib import Path

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
