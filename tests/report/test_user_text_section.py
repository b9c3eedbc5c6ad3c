"""The report section of the text of user turns: its table and verdict from a real analysis, untrusted
strings escaped, and the whole report in headless Chromium without console errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from _payloads import PAYLOADS
from test_report_browser import _load, browser  # noqa: F401 - the headless-Chromium fixture, used by name

from simlab.fidelity.analyses.user_text import user_text
from simlab.fidelity.calibration.user_text import SIM, simulate
from simlab.fidelity.result import FidelityResult
from simlab.fidelity.user_text_result import UserTextResult
from simlab.report.html import render_html
from simlab.report.sections import build_sections
from simlab.tables import Tables


def _hostile(effect: bool) -> Tables:
    """Planted longer simulated messages; user text and one stop_reason carry script payloads."""
    t = simulate(11, effect, "length")
    turns = t.turns.copy()
    turns.loc[turns.index[:5], "text"] = f"hello {PAYLOADS['script']} {PAYLOADS['img']}"
    conv = t.conversations.copy()
    conv.loc[conv.index[:3], "stop_reason"] = PAYLOADS["svg"]
    return Tables(judgements=t.judgements, conversations=conv, turns=turns)


def _section(r: UserTextResult):
    result = FidelityResult(sources=["human", SIM], n_boot=100, seed=0, analyses={"user_text": r})
    [s] = [s for s in build_sections(result) if s.key == "user_text"]
    return result, s


def test_section_rows_and_verdict_from_a_planted_length_difference() -> None:
    _, s = _section(user_text(simulate(11, True, "length"), n_boot=100, seed=0))
    assert s.title == "The text of user turns" and s.status == "ok"
    rows = {(r.source, r.measure): r for r in s.rows}
    diff = rows[(f"{SIM} − human", "opening message length (words) (difference)")]
    assert float(diff.estimate) > 2 and diff.n == "80"
    assert (f"{SIM} − human", "share of conversations ended by the user (points)") in rows
    v = " ".join(s.verdicts)
    assert f"The user messages of {SIM} differ from people's in" in v and "opening message length (words) higher by" in v
    assert s.charts and "<svg" in s.charts[0]
    assert any(v.startswith("MATTR scores a participant's text shorter than the 50-word window") for v in s.verdicts)


def test_null_verdict_and_not_available_sentence() -> None:
    _, s = _section(user_text(simulate(3, False, "length"), n_boot=100, seed=3))
    assert any("do not differ significantly from people's on any of the 12 measures" in v for v in s.verdicts)
    _, s = _section(UserTextResult(status="not_available", reason="no conversations table"))
    assert s.verdicts[0] == "Not available: no conversations table."


def test_results_without_the_analysis_have_no_section() -> None:
    """Results written before the analysis existed render as before: the section is optional."""
    result = FidelityResult(sources=[], n_boot=1, seed=0, analyses={})
    assert "user_text" not in [s.key for s in build_sections(result)]


def test_untrusted_strings_are_escaped_in_the_html() -> None:
    t = _hostile(True)
    result = FidelityResult(sources=t.sources, n_boot=50, seed=0, analyses={"user_text": user_text(t, n_boot=50)})
    html = render_html(result)
    assert "The text of user turns" in html
    assert PAYLOADS["svg"] not in html and "&lt;svg onload" in html  # the stop_reason row, escaped


@pytest.mark.browser
def test_report_with_the_section_in_chromium(browser, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    t = _hostile(True)
    result = FidelityResult(sources=t.sources, n_boot=50, seed=0, analyses={"user_text": user_text(t, n_boot=50)})
    path = tmp_path / "report.html"
    path.write_text(render_html(result, tables=t), encoding="utf-8")
    state = _load(browser, path)
    assert "The text of user turns" in state["text"] and "opening message length (words)" in state["text"]
    assert PAYLOADS["svg"] in state["text"]  # the hostile stop_reason, shown as text
    assert state["pwned"] == 0 and state["scripts"] == 0 and state["imgs"] == 0
    assert [m for m in state["messages"] if m[0] == "error"] == [] and state["errors"] == []
    assert state["requests"] == []
